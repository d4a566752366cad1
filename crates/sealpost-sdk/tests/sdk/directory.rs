//! The key directory against a server that lies: each test plays one kind of compromised server
//! (directly through its store, through an interceptor between client and server, or as a fork
//! of the server's data) and checks that the client refuses or alerts, and keeps working.

use crate::common::{Interceptor, People, TestServer, alerts, texts, u};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use openmls::prelude::{BasicCredential, CredentialWithKey, KeyPackage, MlsMessageOut};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::types::SignatureScheme;
use sealpost_proto::directory::{BatchLookupResponse, LookupResponse, SignedRoot};
use sealpost_proto::{ClaimKeyPackagesResponse, DeviceId, DeviceIdentity};
use sealpost_sdk::{Client, Error, Event, SecurityAlert, Suite};
use sealpost_server::storage::{DeviceRecord, KeyPackageRecord};
use tls_codec::Serialize as _;

fn device_of(client: &Client) -> DeviceId {
    client.whoami().device
}

/// A valid key package for `user`'s `device`, made with a key that is not the device's.
fn forged_key_package(user: &str, device: DeviceId, suite: Suite) -> (Vec<u8>, Vec<u8>) {
    let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
    let credential = CredentialWithKey {
        credential: BasicCredential::new(
            DeviceIdentity {
                username: u(user),
                device_id: device,
            }
            .to_credential_bytes(),
        )
        .into(),
        signature_key: signer.public().into(),
    };
    let suites: Vec<_> = Suite::ALL.iter().map(|s| s.ciphersuite()).collect();
    let bundle = KeyPackage::builder()
        .leaf_node_capabilities(openmls::prelude::Capabilities::new(
            None,
            Some(&suites),
            Some(&[openmls::prelude::ExtensionType::LastResort]),
            None,
            None,
        ))
        .mark_as_last_resort()
        .build(suite.ciphersuite(), &provider, &signer, credential)
        .unwrap();
    let bytes = MlsMessageOut::from(bundle.key_package().clone())
        .tls_serialize_detached()
        .unwrap();
    (bytes, signer.to_public_vec())
}

type Tamper = fn(&mut LookupResponse);

/// `tamper` applied to a directory answer: one lookup's (`lookup/{user}`) or every proof of a
/// batch's (`lookups`), each with the batch's root.
fn tampered(body: &[u8], tamper: Tamper) -> Vec<u8> {
    if let Ok(mut one) = serde_json::from_slice::<LookupResponse>(body) {
        tamper(&mut one);
        return serde_json::to_vec(&one).unwrap();
    }
    let mut batch: BatchLookupResponse = serde_json::from_slice(body).unwrap();
    let root = batch.root.clone();
    for named in &mut batch.proofs {
        let mut one = LookupResponse {
            root: root.clone(),
            proof: std::mem::take(&mut named.proof),
        };
        tamper(&mut one);
        named.proof = one.proof;
        batch.root = one.root;
    }
    serde_json::to_vec(&batch).unwrap()
}

fn security_alert<T: std::fmt::Debug>(result: Result<T, Error>) -> SecurityAlert {
    match result {
        Err(Error::Security { alert, .. }) => alert,
        other => panic!("expected a security error, got {other:?}"),
    }
}

/// As a compromised server: lists `device` under Bob with `certificate` and a last-resort key
/// package for it, and publishes the directory. The device key is `device_key`, or else the
/// key package's own.
async fn list_device_under_bob(
    server: &TestServer,
    device: DeviceId,
    device_key: Option<Vec<u8>>,
    certificate: Vec<u8>,
) {
    let (kp, kp_key) = forged_key_package("bob", device, Suite::Pq);
    let device_key = device_key.unwrap_or(kp_key);
    server
        .store
        .add_device(
            DeviceRecord {
                device_id: device,
                username: u("bob"),
                device_key,
                certificate,
            },
            vec![KeyPackageRecord {
                ciphersuite: u16::from(Suite::Pq.ciphersuite()),
                last_resort: true,
                data: kp,
            }],
        )
        .await
        .unwrap();
    server.directory.wait_published().await;
}

/// Alice makes `#team` with Bob; the devices it holds.
async fn team_with_bob(alice: &mut Client) -> Vec<sealpost_sdk::DeviceId> {
    alice
        .create_group("team", &[u("bob")], Suite::Pq)
        .await
        .unwrap();
    alice
        .members("#team")
        .unwrap()
        .into_iter()
        .map(|m| m.device)
        .collect()
}

#[tokio::test]
async fn a_device_nobody_approved_alerts_its_owner_and_is_not_trusted_by_peers() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    assert!(alerts(&bob.sync().await.unwrap()).is_empty());

    // The compromised server lists a device of its own under bob, with a certificate bob's
    // account key never made, and key packages for it.
    let rogue = DeviceId::from_bytes([0xee; 16]);
    list_device_under_bob(&server, rogue, None, vec![7; 64]).await;

    // Bob's device sees it at its next sync, once.
    let events = bob.sync().await.unwrap();
    assert_eq!(alerts(&events), vec![SecurityAlert::UnapprovedDevice]);
    assert!(alerts(&bob.sync().await.unwrap()).is_empty());

    // Alice adds bob: the rogue device is shown and left out; bob's real device is added.
    let members = team_with_bob(&mut alice).await;
    assert!(members.contains(&device_of(&bob)));
    assert!(!members.contains(&rogue));
    let shown = alerts(&alice.sync().await.unwrap());
    assert!(
        shown.contains(&SecurityAlert::UnapprovedDevice),
        "{shown:?}"
    );
    assert!(
        shown.contains(&SecurityAlert::UnverifiedMember),
        "{shown:?}"
    );
    alice.send("#team", "only bob reads this").await.unwrap();
    let got = bob.sync().await.unwrap();
    assert_eq!(
        texts(&got),
        vec![("@alice".to_owned(), "only bob reads this".to_owned())]
    );
}

#[tokio::test]
async fn a_key_package_whose_key_is_not_in_the_directory_is_refused() {
    let server = TestServer::start().await;
    let mitm = Interceptor::start(&server.url).await;
    let people = People::new();
    let mut alice = people.register_at(&mitm.url, "alice").await;
    let bob = people.register(&server, "bob").await;
    let (forged, _) = forged_key_package("bob", device_of(&bob), Suite::Pq);
    mitm.rewrite("/v1/users/bob/key-packages", move |_, body| {
        let mut claimed: ClaimKeyPackagesResponse = serde_json::from_slice(&body).unwrap();
        for c in &mut claimed.key_packages {
            c.key_package = forged.clone();
        }
        serde_json::to_vec(&claimed).unwrap()
    });
    let refused = alice.create_group("team", &[u("bob")], Suite::Pq).await;
    assert_eq!(security_alert(refused), SecurityAlert::UnverifiedMember);
    // Nothing was created (all or nothing), and alice keeps working once the server behaves.
    assert!(matches!(
        alice.members("#team"),
        Err(Error::UnknownConversation(_))
    ));
    mitm.clear();
    alice
        .create_group("team", &[u("bob")], Suite::Pq)
        .await
        .unwrap();
    assert_eq!(alice.members("#team").unwrap().len(), 2);
}

#[tokio::test]
async fn a_commit_adding_a_device_outside_the_directory_is_refused_and_changes_nothing() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let bob = people.register(&server, "bob").await;
    let mut carol = people.register(&server, "carol").await;
    carol
        .create_group("team", &[u("alice")], Suite::Pq)
        .await
        .unwrap();
    alice.sync().await.unwrap();
    let epoch = alice.epoch("#team").unwrap();

    // A ghost device of bob's that the server registered but never put in the directory.
    let ghost = DeviceId::from_bytes([0x99; 16]);
    let (kp, ghost_key) = forged_key_package("bob", ghost, Suite::Pq);
    let db = rusqlite::Connection::open(server.data.join("server.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    db.execute(
        "INSERT INTO devices (device_id, username, device_key, certificate, created_at) VALUES (?1, 'bob', ?2, ?3, 0)",
        rusqlite::params![ghost.as_bytes(), ghost_key, vec![0u8; 64]],
    )
    .unwrap();
    // Carol (a malicious or broken member) adds it; the server accepts the commit.
    carol.add_key_package_unchecked("#team", &kp).await.unwrap();
    carol.send("#team", "after the ghost joined").await.unwrap();

    let events = alice.sync().await.unwrap();
    assert_eq!(alerts(&events), vec![SecurityAlert::UnverifiedMember]);
    assert!(texts(&events).is_empty(), "{events:?}");
    // Alice did not move to the ghost's epoch, and her profile still works.
    assert_eq!(alice.epoch("#team").unwrap(), epoch);
    assert_eq!(alice.members("#team").unwrap().len(), 2);
    assert!(alerts(&alice.sync().await.unwrap()).is_empty());
    alice.send("@bob", "still here").await.unwrap();
    drop(bob);
}

#[tokio::test]
async fn tampered_truncated_and_rolled_back_directory_answers_are_refused() {
    let server = TestServer::start().await;
    let mitm = Interceptor::start(&server.url).await;
    let people = People::new();
    let mut alice = people.register_at(&mitm.url, "alice").await;
    let _bob = people.register(&server, "bob").await;
    alice.sync().await.unwrap();

    let cases: [(&str, Tamper, SecurityAlert); 4] = [
        (
            "flipped proof byte",
            |r| {
                let n = r.proof.len() / 2;
                r.proof[n] ^= 1;
            },
            SecurityAlert::InvalidProof,
        ),
        (
            "truncated proof",
            |r| r.proof.truncate(r.proof.len() / 2),
            SecurityAlert::InvalidProof,
        ),
        (
            "root not signed by the pinned key",
            |r| r.root.root[0] ^= 1,
            SecurityAlert::InvalidProof,
        ),
        (
            "signature of another epoch",
            |r| r.root.epoch += 1,
            SecurityAlert::InvalidProof,
        ),
    ];
    for (name, tamper, expected) in cases {
        mitm.clear();
        // Both ways of asking: adding someone looks their entry up in a batch, and then on its
        // own when the batch did not give a usable one.
        mitm.rewrite("/v1/directory/lookup", move |_, body| {
            tampered(&body, tamper)
        });
        let refused = alice.send("@bob", "hello").await;
        assert_eq!(security_alert(refused), expected, "{name}");
        assert!(
            alice
                .conversations()
                .unwrap()
                .iter()
                .all(|c| c.members <= 1),
            "{name}: nobody may have been added"
        );
    }

    // A rolled-back answer: a lookup recorded now, replayed after a newer epoch was verified.
    mitm.clear();
    let recorded = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        bool,
        Vec<u8>,
    >::new()));
    let record = recorded.clone();
    mitm.rewrite("/v1/directory/lookup", move |path, body| {
        let batch = path.starts_with("/v1/directory/lookups");
        record.lock().unwrap().entry(batch).or_insert(body).clone()
    });
    alice.send("@bob", "hello").await.unwrap();
    let _carol = people.register(&server, "carol").await;
    let newer: SignedRoot = reqwest::get(format!("{}/v1/directory/root", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    alice.sync().await.unwrap(); // verifies the newer epoch
    assert!(newer.epoch > 1);
    let refused = alice.create_group("later", &[u("bob")], Suite::Pq).await;
    assert_eq!(security_alert(refused), SecurityAlert::DirectoryRollback);
    // It is also shown with the next sync's events.
    let events = alice.sync().await.unwrap();
    assert_eq!(alerts(&events), vec![SecurityAlert::DirectoryRollback]);

    // The latest root going backwards is shown at sync.
    mitm.clear();
    let old_root = reqwest::get(format!("{}/v1/directory/roots/1", server.url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    mitm.rewrite("/v1/directory/root", move |_, _| old_root.clone());
    let events = alice.sync().await.unwrap();
    assert_eq!(alerts(&events), vec![SecurityAlert::DirectoryRollback]);
    // Honest again: everything works.
    mitm.clear();
    assert!(alerts(&alice.sync().await.unwrap()).is_empty());
    alice.send("@bob", "works").await.unwrap();
}

#[tokio::test]
async fn two_roots_for_one_epoch_are_a_split_view_that_both_sides_see() {
    let people = People::new();
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2) = (dir.path().join("one"), dir.path().join("two"));
    let mut one = TestServer::start_at(&d1, "127.0.0.1:0").await;
    let addr = one.addr.to_string();
    let mitm = Interceptor::start(&one.url).await;
    let mut alice = people.register_at(&mitm.url, "alice").await;
    let mut bob = people.register(&one, "bob").await;
    // Signed in before the fork, so that both copies know alice's session.
    alice.sync().await.unwrap();
    one.stop().await;
    // The fork: a copy of the server's data, the same directory key, a different future.
    std::fs::create_dir_all(&d2).unwrap();
    for entry in std::fs::read_dir(&d1).unwrap() {
        let entry = entry.unwrap();
        // The files' directory (`blobs`) is empty here; the new server makes its own.
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), d2.join(entry.file_name())).unwrap();
        }
    }
    let one = TestServer::start_at(&d1, &addr).await;
    let two = TestServer::start_at(&d2, "127.0.0.1:0").await;
    people.register(&one, "carol").await;
    people.register(&two, "dave").await;
    // Alice's directory answers come from the fork; everything else from the real server.
    mitm.route("/v1/directory/", &two.url);
    alice.sync().await.unwrap();
    bob.sync().await.unwrap();

    alice.send("@bob", "hi bob").await.unwrap();
    let at_bob = bob.sync().await.unwrap();
    assert_eq!(texts(&at_bob), vec![("@alice".into(), "hi bob".into())]);
    assert!(
        alerts(&at_bob).contains(&SecurityAlert::SplitView),
        "{at_bob:?}"
    );
    bob.send("@alice", "hi alice").await.unwrap();
    let at_alice = alice.sync().await.unwrap();
    assert!(
        alerts(&at_alice).contains(&SecurityAlert::SplitView),
        "{at_alice:?}"
    );
}

#[tokio::test]
async fn the_auditor_verifies_every_epoch_across_a_restart_and_remembers_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let mut server = TestServer::start_at(&data, "127.0.0.1:0").await;
    let addr = server.addr.to_string();
    let people = People::new();
    people.register(&server, "alice").await;
    people.register(&server, "bob").await;
    let state = dir.path().join("audit.json");
    let first = sealpost_sdk::audit::audit(&server.url, &state, None)
        .await
        .unwrap();
    assert_eq!(first.from, 0);
    assert!(first.to >= 2, "{first:?}");
    assert_eq!(first.verified, first.to);

    server.stop().await;
    let server = TestServer::start_at(&data, &addr).await;
    people.register(&server, "carol").await;
    let second = sealpost_sdk::audit::audit(&server.url, &state, None)
        .await
        .unwrap();
    assert_eq!(second.from, first.to);
    assert_eq!(second.to, first.to + 1);
    assert_eq!(second.verified, 1);

    // A state file of another server is refused, not overwritten.
    let other = TestServer::start().await;
    assert!(matches!(
        sealpost_sdk::audit::audit(&other.url, &state, None).await,
        Err(Error::AuditOfAnotherServer { .. })
    ));
}

#[tokio::test]
async fn lookups_of_unknown_users_and_damaged_bodies_are_clear_errors() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let err = alice.send("@nobody", "hi").await.unwrap_err();
    assert!(err.to_string().contains("@nobody"), "{err}");
    let http = reqwest::Client::new();
    for path in [
        "/v1/directory/roots/notanumber",
        "/v1/directory/audit?from=x",
        "/v1/directory/audit",
    ] {
        let status = http
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 400, "{path}");
    }
    // Epochs past what the database stores (above 2^63 - 1) are as unknown as any other; the
    // API fuzz found that one gave 500.
    for epoch in ["999", "13657157903827980288", "18446744073709551615"] {
        let status = http
            .get(format!("{}/v1/directory/roots/{epoch}", server.url))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 404, "{epoch}");
    }
    let keys: serde_json::Value = http
        .get(format!("{}/v1/directory/keys", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = STANDARD
        .decode(keys["signing_key"].as_str().unwrap())
        .unwrap();
    assert_eq!(key.len(), 32);
}

#[tokio::test]
async fn commits_pushed_to_a_listening_device_are_verified_too() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    let _carol = people.register(&server, "carol").await;
    bob.create_group("team", &[u("alice")], Suite::Pq)
        .await
        .unwrap();
    // Alice listens; her first event (caught up on connect) says she is connected.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::spawn(async move {
        let mut seen = Vec::new();
        let result = alice
            .listen("test", |e| {
                let e = &e.event;
                seen.push(e.clone());
                let _ = tx.send(());
                !matches!(e, Event::MemberAdded { .. })
            })
            .await;
        (result, seen)
    });
    rx.recv().await.unwrap();
    // Carol's leaf arrives over the push connection and needs her directory entry.
    bob.add_members("#team", &[u("carol")]).await.unwrap();
    let (result, seen) = listener.await.unwrap();
    result.unwrap();
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::MemberAdded { member, .. } if member == "@carol")),
        "{seen:?}"
    );
}

/// Matrix (2022): a homeserver could make a device whose id was another key's fingerprint, and
/// a client verifying that "device" vouched for a key it never compared. Here the server lists
/// under Bob a device whose id is the start of Bob's account key, whose device key *is* Bob's
/// account key, and which carries the certificate Bob's account key made for his real device.
/// Device ids and keys are fixed-length fields under one account signature, and safety numbers
/// cover account keys alone, so nothing of it is trusted and nothing verified changes.
#[tokio::test]
async fn a_device_id_equal_to_another_keys_fingerprint_gains_no_trust() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    let shown = alice.verification(&u("bob")).await.unwrap();
    alice
        .confirm_verification(&u("bob"), &shown.safety_number)
        .await
        .unwrap();

    let record = server.store.user(&u("bob")).await.unwrap().unwrap();
    let real = record.devices[0].clone();
    let confused = DeviceId::from_slice(&record.account_key[..16]).unwrap();
    list_device_under_bob(
        &server,
        confused,
        Some(record.account_key.clone()),
        real.certificate.clone(),
    )
    .await;

    // Bob is told, and his device list shows it as not certified.
    assert_eq!(
        alerts(&bob.sync().await.unwrap()),
        vec![SecurityAlert::UnapprovedDevice]
    );
    let listed = bob.devices().await.unwrap();
    let entry = listed.iter().find(|d| d.device == confused).unwrap();
    assert!(!entry.certified);
    assert!(listed.iter().any(|d| d.you && d.certified));

    // Alice's verification of Bob is untouched: the same number, still verified.
    let after = alice.verification(&u("bob")).await.unwrap();
    assert_eq!(after.safety_number, shown.safety_number);
    assert!(after.verified && !after.changed, "{after:?}");

    // And the device is not added with Bob.
    let members = team_with_bob(&mut alice).await;
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members.contains(&device_of(&bob)));
    assert!(!members.contains(&confused));
    alice.send("#team", "for bob's device").await.unwrap();
    assert_eq!(
        texts(&bob.sync().await.unwrap()),
        vec![("@alice".to_owned(), "for bob's device".to_owned())]
    );
}
