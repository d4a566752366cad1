//! Linked devices and out-of-band verification, against a real server.

use crate::common::{People, TestServer, texts, u};
use sealpost_proto::{DeliveryKind, GroupId};
use sealpost_sdk::{
    Client, DeviceChange, Error, Event, LinkStep, PendingLink, SecurityAlert, Suite,
};
use sealpost_server::storage::FetchRequest;

fn linked(step: LinkStep) -> Client {
    match step {
        LinkStep::Linked(c) => *c,
        LinkStep::Waiting(_) => panic!("expected the link to be approved"),
    }
}

#[tokio::test]
async fn a_linked_device_receives_new_messages_and_a_removed_one_reads_nothing_after() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    alice
        .create_group("team", &[u("bob")], Suite::Pq)
        .await
        .unwrap();
    alice.send("@bob", "before the phone").await.unwrap();
    bob.sync().await.unwrap();

    let pending = PendingLink::start(&people.home("alice-phone"), &server.url, "alice", None)
        .await
        .unwrap();
    let phone_id = pending.device_id();
    // A wrong code changes nothing: the account still has one device, the phone still waits.
    let wrong = alice.approve_link("ABCD-EFGH-JKMN-PQRS").await;
    assert!(matches!(wrong, Err(Error::NoLinkWaiting)), "{wrong:?}");
    assert_eq!(alice.devices().await.unwrap().len(), 1);
    let pending = match pending.try_finish().await.unwrap() {
        LinkStep::Waiting(p) => *p,
        LinkStep::Linked(_) => panic!("linked without approval"),
    };
    let code = pending.code();
    assert_eq!(alice.approve_link(&code).await.unwrap(), phone_id);
    let mut phone = linked(pending.try_finish().await.unwrap());
    assert_eq!(alice.devices().await.unwrap().len(), 2);
    // The phone joins both conversations, under the names alice's first device uses.
    let joined: Vec<String> = phone
        .sync()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            Event::Joined { conversation, .. } => Some(conversation),
            _ => None,
        })
        .collect();
    assert_eq!(joined.len(), 2, "{joined:?}");
    let names: Vec<String> = phone
        .conversations()
        .unwrap()
        .into_iter()
        .map(|c| c.conversation)
        .collect();
    assert!(
        names.contains(&"#team".to_owned()) && names.contains(&"@bob".to_owned()),
        "{names:?}"
    );

    // Bob is told, and new messages reach both of alice's devices.
    let at_bob = bob.sync().await.unwrap();
    assert!(
        at_bob
            .iter()
            .any(|e| matches!(e, Event::DeviceAdded { member, device_id, .. }
                if member == "@alice" && *device_id == Some(phone_id))),
        "{at_bob:?}"
    );
    bob.send("#team", "hello both").await.unwrap();
    bob.send("@alice", "just you").await.unwrap();
    let mut at_alice = Vec::new();
    for device in [&mut alice, &mut phone] {
        let events = device.sync().await.unwrap();
        let got = texts(&events);
        assert!(
            got.contains(&("@bob".into(), "hello both".into())),
            "{got:?}"
        );
        assert!(got.contains(&("@bob".into(), "just you".into())), "{got:?}");
        if at_alice.is_empty() {
            at_alice = events;
        }
    }
    // The first device sees the link in its account's directory history.
    assert!(
        at_alice.iter().any(|e| matches!(
            e,
            Event::AccountDevice {
                change: DeviceChange::Added,
                device_id,
                ..
            } if *device_id == Some(phone_id)
        )),
        "{at_alice:?}"
    );
    phone.send("#team", "from the phone").await.unwrap();
    assert_eq!(
        texts(&bob.sync().await.unwrap()),
        vec![("@alice".into(), "from the phone".into())]
    );
    assert_eq!(
        texts(&alice.sync().await.unwrap()),
        vec![("@alice".into(), "from the phone".into())]
    );

    // Conversations started after the link include the account's other devices.
    alice
        .create_group("later", &[u("bob")], Suite::Pq)
        .await
        .unwrap();
    let joined = phone.sync().await.unwrap();
    assert!(
        joined
            .iter()
            .any(|e| matches!(e, Event::Joined { conversation, .. } if conversation == "#later")),
        "{joined:?}"
    );

    // Removing the phone: gone from the directory and from every conversation.
    alice.remove_device(phone_id).await.unwrap();
    assert_eq!(alice.devices().await.unwrap().len(), 1);
    assert!(bob.sync().await.unwrap().iter().any(
        |e| matches!(e, Event::DeviceRemoved { member, device_id, .. }
                if member == "@alice" && *device_id == Some(phone_id))
    ));
    bob.send("#team", "after removal").await.unwrap();
    assert!(
        phone.sync().await.is_err(),
        "a removed device cannot sign in"
    );
    // Even handed the ciphertext, the phone cannot read it.
    let team = alice
        .conversations()
        .unwrap()
        .into_iter()
        .find(|c| c.conversation == "#team")
        .unwrap();
    let group: GroupId = team.id.as_str().parse().unwrap();
    let alice_device = alice.whoami().device;
    let batch = server
        .store
        .fetch(
            alice_device,
            FetchRequest {
                inbox_after: Some(u64::MAX >> 1),
                groups: vec![(group, 0)],
                limit: 1000,
            },
        )
        .await
        .unwrap();
    let last = batch
        .deliveries
        .iter()
        .rev()
        .find(|d| d.kind == DeliveryKind::Group)
        .unwrap();
    let events = phone
        .receive_unchecked("#team", last.group_seq, last.payload.as_slice())
        .unwrap();
    assert!(texts(&events).is_empty(), "{events:?}");
    // Unreadable; and since the phone never saw the commit that removed it, a message from a
    // later epoch is also a warning that changes were kept from it.
    assert!(
        matches!(
            events.as_slice(),
            [
                Event::Security {
                    alert: SecurityAlert::Fork,
                    ..
                },
                Event::Undecryptable { .. }
            ]
        ),
        "{events:?}"
    );
    assert_eq!(
        texts(&alice.sync().await.unwrap()),
        vec![("@bob".into(), "after removal".into())]
    );
}

#[tokio::test]
async fn removing_unknown_or_own_devices_is_refused() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let me = alice.whoami().device;
    let own = alice.remove_device(me).await;
    assert!(matches!(own, Err(Error::OwnDevice)), "{own:?}");
    let nobody = alice.own_device(&"0".repeat(32)).await.unwrap();
    let unknown = alice.remove_device(nobody).await;
    assert!(
        matches!(unknown, Err(Error::UnknownDevice(_))),
        "{unknown:?}"
    );
    let bad = alice.own_device("nope").await;
    assert!(matches!(bad, Err(Error::BadDeviceId(_))), "{bad:?}");
    // A prefix is found among the account's devices, or refused.
    assert_eq!(alice.own_device(&me.short()).await.unwrap(), me);
    let other = if me.short().starts_with('0') {
        "1111"
    } else {
        "0000"
    };
    let none = alice.own_device(other).await;
    assert!(matches!(none, Err(Error::UnknownDevice(_))), "{none:?}");
    assert_eq!(alice.devices().await.unwrap().len(), 1);
    // A link request for an account that does not exist is refused up front.
    assert!(matches!(
        PendingLink::start(&people.home("x"), &server.url, "nobody", None).await,
        Err(Error::UnknownUser(_))
    ));
}

#[tokio::test]
async fn a_verified_contacts_new_account_key_blocks_sending_until_confirmed() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    let at_alice = alice.verification(&u("bob")).await.unwrap();
    let at_bob = bob.verification(&u("alice")).await.unwrap();
    assert_eq!(at_alice.safety_number, at_bob.safety_number);
    assert!(!at_alice.verified);
    let wrong = alice.confirm_verification(&u("bob"), "12345").await;
    assert!(matches!(wrong, Err(Error::WrongSafetyNumber(_))));
    assert!(!alice.verification(&u("bob")).await.unwrap().verified);
    let confirmed = alice
        .confirm_verification(&u("bob"), &at_bob.safety_number)
        .await
        .unwrap();
    assert!(confirmed.verified);
    alice.send("@bob", "verified hello").await.unwrap();

    // The compromised server gives bob another account key in the directory.
    let db = rusqlite::Connection::open(server.data.join("server.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    db.execute(
        "UPDATE accounts SET account_key = ?1 WHERE username = 'bob'",
        [vec![9u8; 32]],
    )
    .unwrap();
    db.execute(
        "INSERT INTO directory_pending (username, ticket) VALUES ('bob', 1000000)",
        [],
    )
    .unwrap();
    server.directory.wait_published().await;
    alice.sync().await.unwrap();
    let blocked = alice.send("@bob", "are you still you?").await;
    assert!(
        matches!(
            blocked,
            Err(Error::Security {
                alert: SecurityAlert::VerifiedKeyChanged,
                ..
            })
        ),
        "{blocked:?}"
    );
    let again = alice.verification(&u("bob")).await.unwrap();
    assert!(again.changed && !again.verified);
    assert_ne!(again.safety_number, at_alice.safety_number);
    // Still blocked until the new number is confirmed; then sending works again.
    assert!(alice.send("@bob", "still blocked").await.is_err());
    alice
        .confirm_verification(&u("bob"), &again.safety_number)
        .await
        .unwrap();
    alice.send("@bob", "confirmed again").await.unwrap();
}

#[tokio::test]
async fn a_server_that_swaps_the_link_request_or_the_approval_is_caught() {
    let server = TestServer::start().await;
    let mitm = crate::common::Interceptor::start(&server.url).await;
    let people = People::new();
    let mut alice = people.register_at(&mitm.url, "alice").await;

    // The server hands alice its own HPKE key instead of the new device's.
    let pending = PendingLink::start(&people.home("phone"), &mitm.url, "alice", None)
        .await
        .unwrap();
    mitm.rewrite("/v1/links/", |path, body| {
        if path.ends_with("/approval") {
            return body;
        }
        let mut req: sealpost_proto::link::LinkRequest = serde_json::from_slice(&body).unwrap();
        req.hpke_key[0] ^= 1;
        serde_json::to_vec(&req).unwrap()
    });
    let swapped = alice.approve_link(&pending.code()).await;
    assert!(
        matches!(
            swapped,
            Err(Error::Security {
                alert: SecurityAlert::InvalidProof,
                ..
            })
        ),
        "{swapped:?}"
    );
    assert_eq!(
        alice.devices().await.unwrap().len(),
        1,
        "nothing was approved"
    );

    // Honest request, but the server alters the approval on its way to the new device.
    mitm.clear();
    mitm.rewrite("/v1/links/", |path, body| {
        if !path.ends_with("/approval") {
            return body;
        }
        let mut a: sealpost_proto::link::LinkApproval = serde_json::from_slice(&body).unwrap();
        a.ciphertext[0] ^= 1;
        serde_json::to_vec(&a).unwrap()
    });
    alice.approve_link(&pending.code()).await.unwrap();
    let forged = pending.try_finish().await;
    assert!(
        matches!(
            forged,
            Err(Error::Security {
                alert: SecurityAlert::InvalidProof,
                ..
            })
        ),
        "{}",
        forged.err().map(|e| e.to_string()).unwrap_or_default()
    );
}

/// The operator replaces bob's account key with one it holds and certifies a device of its own
/// under it (made on a shadow server, where "bob" is the operator's). The device is real: its
/// key packages carry bob's name and are signed by the device key the new account key certifies.
async fn operator_takes_over_bob(server: &TestServer) {
    let shadow = TestServer::start().await;
    let shadow_people = People::new();
    drop(shadow_people.register(&shadow, "bob").await);
    let db = rusqlite::Connection::open(server.data.join("server.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    db.execute(
        "ATTACH DATABASE ?1 AS shadow",
        [shadow.data.join("server.db").to_str().unwrap()],
    )
    .unwrap();
    db.execute_batch(
        "UPDATE accounts SET account_key =
             (SELECT account_key FROM shadow.accounts WHERE username = 'bob')
             WHERE username = 'bob';
         INSERT INTO devices (device_id, username, device_key, certificate, created_at)
             SELECT device_id, username, device_key, certificate, created_at FROM shadow.devices;
         INSERT INTO key_packages (device_id, ciphersuite, last_resort, data)
             SELECT device_id, ciphersuite, last_resort, data FROM shadow.key_packages;
         INSERT INTO directory_pending (username, ticket) VALUES ('bob', 1000000);",
    )
    .unwrap();
    server.directory.wait_published().await;
}

/// The security events of a kind in `client`'s log that the front end `consumer` has not seen.
fn unseen_alerts(client: &Client, consumer: &str) -> Vec<SecurityAlert> {
    client
        .unseen_events(consumer, usize::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            Event::Security { alert, .. } => Some(alert),
            _ => None,
        })
        .collect()
}

/// Defect: after the operator replaced a verified contact's account key, `send` was refused but
/// `group create … --member @bob` added the operator's device and sent it the group's name; for
/// a contact seen but not verified, the operator's device silently took the real one's place.
/// Now every path goes through one trust gate, refusals are events, and nothing is created.
#[tokio::test]
async fn an_operator_who_replaces_an_account_key_gets_no_device_into_any_conversation() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    let mut carol = people.register(&server, "carol").await;
    // Alice verified bob; carol has only seen him (a conversation, no safety number).
    let number = bob.verification(&u("alice")).await.unwrap().safety_number;
    alice
        .confirm_verification(&u("bob"), &number)
        .await
        .unwrap();
    alice.send("@bob", "hi bob").await.unwrap();
    carol.send("@bob", "hi bob, carol here").await.unwrap();
    alice
        .create_group("friends", &[u("carol")], Suite::Pq)
        .await
        .unwrap();
    let real_bob = bob.whoami().device;
    assert_eq!(texts(&bob.sync().await.unwrap()).len(), 2);

    operator_takes_over_bob(&server).await;
    alice.sync().await.unwrap();
    carol.sync().await.unwrap();

    // Group create: refused before anything is made; the refusal is an event.
    let created = alice.create_group("g", &[u("bob")], Suite::Pq).await;
    assert!(
        matches!(
            created,
            Err(Error::Security {
                alert: SecurityAlert::VerifiedKeyChanged,
                ..
            })
        ),
        "{created:?}"
    );
    assert!(
        alice
            .conversations()
            .unwrap()
            .iter()
            .all(|c| c.conversation != "#g"),
        "nothing is left behind"
    );
    assert_eq!(
        unseen_alerts(&alice, "ui"),
        [SecurityAlert::VerifiedKeyChanged]
    );
    // Group add and send: refused too, and shown once (the alert is not raised again).
    let added = alice.add_members("#friends", &[u("bob")]).await;
    assert!(matches!(added, Err(Error::Security { .. })), "{added:?}");
    assert!(alice.send("@bob", "still there?").await.is_err());
    assert_eq!(alice.members("#friends").unwrap().len(), 2);
    assert_eq!(unseen_alerts(&alice, "ui").len(), 1);

    // Carol never verified bob: his new key is still not the one she saw, and is refused.
    let created = carol.create_group("h", &[u("bob")], Suite::Classic).await;
    assert!(
        matches!(
            created,
            Err(Error::Security {
                alert: SecurityAlert::AccountKeyChanged,
                ..
            })
        ),
        "{created:?}"
    );
    assert_eq!(
        unseen_alerts(&carol, "ui"),
        [SecurityAlert::AccountKeyChanged]
    );
    assert!(
        carol
            .conversations()
            .unwrap()
            .iter()
            .all(|c| c.conversation != "#h")
    );
    // Carol can still write to the real bob in their conversation; nobody else reads it.
    carol.send("@bob", "only you").await.unwrap();
    let members: Vec<sealpost_sdk::DeviceId> = carol
        .members("@bob")
        .unwrap()
        .into_iter()
        .filter(|m| !m.you)
        .map(|m| m.device)
        .collect();
    assert_eq!(members, [real_bob]);
    assert_eq!(
        texts(&bob.sync().await.unwrap()),
        [("@carol".to_owned(), "only you".to_owned())]
    );
}
