//! A malicious server between clients: it drops, reorders, replays, replaces and invents
//! deliveries, withholds a device's own commit, and splits a group in two. Each case checks that
//! the client shows what happened (a gap, a late text, an unreadable item, an alert) and never
//! shows anything the server made up as a message. The cases and the attacks they come from are
//! listed in `docs/security-tests.md`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::{Interceptor, People, TestServer, alerts, group_of, texts, u};
use sealpost_proto::{ClaimKeyPackagesResponse, CommitUpload, Delivery, DeliveryKind, GroupId};
use sealpost_sdk::{Client, CommitForgery, Error, Event, KeyPackageForgery, SecurityAlert, Suite};
use sealpost_server::storage::FetchRequest;
use tls_codec::Deserialize as _;

/// Everything in a group's log, straight from the server's store.
async fn group_log(server: &TestServer, member: &Client, group: GroupId) -> Vec<Delivery> {
    server
        .store
        .fetch(
            member.whoami().device,
            FetchRequest {
                inbox_after: Some(u64::MAX >> 1),
                groups: vec![(group, 0)],
                limit: 1000,
            },
        )
        .await
        .unwrap()
        .deliveries
}

fn unreadable(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Undecryptable { .. }))
        .count()
}

fn gaps(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Gap { missing, .. } => Some(*missing),
            _ => None,
        })
        .collect()
}

fn late(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message {
                text, late: true, ..
            } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn t(from: &str, text: &str) -> (String, String) {
    (from.to_owned(), text.to_owned())
}

/// A one-shot switch for a rewrite rule.
fn armed() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(true))
}

/// Alice talks to Bob directly; Bob's every request goes through the interceptor.
async fn pair(people: &People, server: &TestServer) -> (Client, Client, Interceptor) {
    let mut alice = people.register(server, "alice").await;
    let mitm = Interceptor::start(&server.url).await;
    let mut bob = people.register_at(&mitm.url, "bob").await;
    alice.send("@bob", "one").await.unwrap();
    assert_eq!(texts(&bob.sync().await.unwrap()), vec![t("@alice", "one")]);
    (alice, bob, mitm)
}

/// Alice, Bob and Carol; the one named `through` talks through the interceptor.
async fn three(people: &People, server: &TestServer, through: &str) -> ([Client; 3], Interceptor) {
    let mitm = Interceptor::start(&server.url).await;
    let mut clients = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let url = if name == through {
            &mitm.url
        } else {
            &server.url
        };
        clients.push(people.register_at(url, name).await);
    }
    let Ok(clients) = clients.try_into() else {
        unreachable!()
    };
    (clients, mitm)
}

#[tokio::test]
async fn a_dropped_text_shows_as_a_gap() {
    let server = TestServer::start().await;
    let people = People::new();
    let (mut alice, mut bob, mitm) = pair(&people, &server).await;
    alice.send("@bob", "two").await.unwrap();
    alice.send("@bob", "three").await.unwrap();
    let once = armed();
    mitm.rewrite_sync(move |ds| {
        if once.swap(false, Ordering::SeqCst) {
            let i = ds.iter().position(|d| d.kind == DeliveryKind::Group);
            ds.remove(i.unwrap());
        }
    });
    let events = bob.sync().await.unwrap();
    assert_eq!(texts(&events), vec![t("@alice", "three")]);
    assert_eq!(gaps(&events), vec![1], "{events:?}");
    assert!(
        matches!(events.first(), Some(Event::Gap { from, .. }) if from == "@alice"),
        "the gap comes before the text after it: {events:?}"
    );
    // Kept with the history, too.
    let history = bob.messages("@alice", 10).unwrap();
    assert_eq!(gaps(&history), vec![1], "{history:?}");
}

#[tokio::test]
async fn reordered_texts_show_a_gap_then_the_late_one() {
    let server = TestServer::start().await;
    let people = People::new();
    let (mut alice, mut bob, mitm) = pair(&people, &server).await;
    alice.send("@bob", "two").await.unwrap();
    alice.send("@bob", "three").await.unwrap();
    // The server swaps the two texts in its log.
    mitm.rewrite_sync(|ds| {
        let group: Vec<usize> = (0..ds.len())
            .filter(|&i| ds[i].kind == DeliveryKind::Group)
            .collect();
        if let [a, b] = group[..] {
            let first = ds[a].payload.clone();
            ds[a].payload = ds[b].payload.clone();
            ds[b].payload = first;
        }
    });
    let events = bob.sync().await.unwrap();
    assert_eq!(
        texts(&events),
        vec![t("@alice", "three"), t("@alice", "two")]
    );
    assert_eq!(gaps(&events), vec![1], "{events:?}");
    assert_eq!(late(&events), vec!["two".to_string()], "{events:?}");
}

#[tokio::test]
async fn a_replayed_message_is_never_shown_twice_even_after_a_restart() {
    let server = TestServer::start().await;
    let people = People::new();
    let (mut alice, mut bob, mitm) = pair(&people, &server).await;
    let log = group_log(&server, &alice, group_of(&alice, "@bob")).await;
    let old = log.last().unwrap().payload.clone(); // "one", already read

    // In place of the next text, the server hands "one" again.
    let replay = |mitm: &Interceptor| {
        let old = old.clone();
        let once = armed();
        mitm.rewrite_sync(move |ds| {
            if let Some(d) = ds.iter_mut().find(|d| d.kind == DeliveryKind::Group)
                && once.swap(false, Ordering::SeqCst)
            {
                d.payload = old.clone();
            }
        });
    };
    replay(&mitm);
    alice.send("@bob", "two").await.unwrap();
    let events = bob.sync().await.unwrap();
    assert!(texts(&events).is_empty(), "{events:?}");
    assert_eq!(unreadable(&events), 1, "{events:?}");

    // Again after the client was closed and opened: the spent key stays spent.
    mitm.clear();
    drop(bob);
    let mut bob = Client::open(&people.home("bob"), None).unwrap();
    replay(&mitm);
    alice.send("@bob", "three").await.unwrap();
    let events = bob.sync().await.unwrap();
    assert!(texts(&events).is_empty(), "{events:?}");
    assert_eq!(unreadable(&events), 1, "{events:?}");

    // And what Alice sends next shows the two texts the server kept back.
    mitm.clear();
    alice.send("@bob", "four").await.unwrap();
    let events = bob.sync().await.unwrap();
    assert_eq!(texts(&events), vec![t("@alice", "four")]);
    assert_eq!(gaps(&events), vec![2], "{events:?}");
}

/// What a malicious server has at hand to put into Bob's conversation with Alice: things of
/// another conversation Bob is in (Carol's #other), and an old item of this one.
struct Material {
    /// The Welcome that brought Bob into #other.
    welcome: Vec<u8>,
    /// #other's first commit.
    other_commit: Vec<u8>,
    /// A text in #other.
    other_message: Vec<u8>,
    /// The first commit of Bob's conversation with Alice (epoch 0), already applied.
    old_commit: Vec<u8>,
}

/// The server replaces the next text from Alice to Bob with `forge(material, alice)`. Bob must
/// show one unreadable item and nothing else, post nothing in answer (no receipt, though his
/// receipts are on), and keep working: Alice's next text arrives after a gap of one, and #other
/// still works both ways. Returns what Bob's sync of the forged item showed.
async fn forged_into_the_log(forge: impl FnOnce(&Material, &mut Client) -> Vec<u8>) -> Vec<Event> {
    let server = TestServer::start().await;
    let people = People::new();
    let (mut alice, mut bob, mitm) = pair(&people, &server).await;
    // With receipts on, Bob answers what he reads, and nothing else.
    bob.set_preferences(sealpost_sdk::Preferences {
        receipts: true,
        typing: true,
    })
    .unwrap();
    let mut carol = people.register(&server, "carol").await;
    carol
        .create_group("other", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    carol.send("#other", "elsewhere").await.unwrap();
    let other_log = group_log(&server, &carol, group_of(&carol, "#other")).await;
    let inbox = FetchRequest {
        inbox_after: Some(0),
        groups: Vec::new(),
        limit: 1000,
    };
    let welcome = server
        .store
        .fetch(bob.whoami().device, inbox)
        .await
        .unwrap()
        .deliveries
        .into_iter()
        .rev()
        .find(|d| d.kind == DeliveryKind::Inbox)
        .unwrap();
    let own_log = group_log(&server, &alice, group_of(&alice, "@bob")).await;
    let material = Material {
        welcome: welcome.payload.as_slice().to_vec(),
        other_commit: other_log[0].payload.as_slice().to_vec(),
        other_message: other_log.last().unwrap().payload.as_slice().to_vec(),
        old_commit: own_log[0].payload.as_slice().to_vec(),
    };
    assert_eq!(
        texts(&bob.sync().await.unwrap()),
        vec![t("@carol", "elsewhere")]
    );
    // His receipt for it comes back in #other's log: taken now, so that the rewrite below
    // finds Alice's text first.
    assert!(texts(&bob.sync().await.unwrap()).is_empty());
    let epoch = bob.epoch("@alice").unwrap();

    let forged = forge(&material, &mut alice);
    alice.send("@bob", "real").await.unwrap();
    let once = armed();
    mitm.rewrite_sync(move |ds| {
        if let Some(d) = ds.iter_mut().find(|d| d.kind == DeliveryKind::Group)
            && once.swap(false, Ordering::SeqCst)
        {
            d.payload = forged.clone().into();
        }
    });
    mitm.take_seen();
    let forged_events = bob.sync().await.unwrap();
    let events = &forged_events;
    assert!(texts(events).is_empty(), "{events:?}");
    assert_eq!(unreadable(events), 1, "{events:?}");
    assert!(alerts(events).is_empty(), "{events:?}");
    // Reading it made Bob post nothing but his cursors: no answer, no receipt, no commit.
    let posted: Vec<_> = mitm
        .take_seen()
        .into_iter()
        .filter(|s| s.method == "POST" && s.path != "/v1/sync" && s.path != "/v1/ack")
        .collect();
    assert!(posted.is_empty(), "{posted:?}");
    // Nothing changed: both conversations work on.
    assert_eq!(bob.conversations().unwrap().len(), 2);
    assert_eq!(bob.epoch("@alice").unwrap(), epoch);
    alice.send("@bob", "still fine").await.unwrap();
    let events = bob.sync().await.unwrap();
    assert_eq!(texts(&events), vec![t("@alice", "still fine")]);
    assert_eq!(gaps(&events), vec![1]);
    bob.send("#other", "here too").await.unwrap();
    assert_eq!(
        texts(&carol.sync().await.unwrap()),
        vec![t("@bob", "here too")]
    );
    forged_events
}

#[tokio::test]
async fn garbage_in_a_group_log_is_unreadable() {
    forged_into_the_log(|_, _| vec![0xde, 0xad, 0xbe, 0xef]).await;
}

#[tokio::test]
async fn an_empty_delivery_is_unreadable() {
    forged_into_the_log(|_, _| Vec::new()).await;
}

#[tokio::test]
async fn a_plaintext_system_message_from_the_server_is_never_shown() {
    forged_into_the_log(|_, _| {
        br#"{"type":"text","body":"Your account is locked: verify it at example.com","n":2}"#
            .to_vec()
    })
    .await;
}

#[tokio::test]
async fn a_welcome_put_into_a_group_log_is_unreadable() {
    forged_into_the_log(|m, _| m.welcome.clone()).await;
}

#[tokio::test]
async fn a_commit_of_another_group_is_refused() {
    forged_into_the_log(|m, _| m.other_commit.clone()).await;
}

#[tokio::test]
async fn a_message_of_another_group_is_refused() {
    forged_into_the_log(|m, _| m.other_message.clone()).await;
}

#[tokio::test]
async fn an_old_commit_replayed_changes_nothing() {
    forged_into_the_log(|m, _| m.old_commit.clone()).await;
}

/// Alice, a member, makes a commit whose tree does not hold together and signs and tags it as
/// members do; the server (which would refuse it: `hostile_input`) delivers it anyway. Bob must
/// refuse it for that reason, keep his epoch, and carry on (the checks of `forged_into_the_log`).
async fn a_broken_tree_is_refused(forgery: CommitForgery, reason: &str) {
    let events =
        forged_into_the_log(|_, alice| alice.forge_commit_unchecked("@bob", forgery).unwrap())
            .await;
    let reasons: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Undecryptable { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        reasons.len() == 1 && reasons[0].contains(reason),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_members_commit_with_a_bad_parent_hash_is_refused() {
    a_broken_tree_is_refused(CommitForgery::ParentHash, "parent hash").await;
}

#[tokio::test]
async fn a_members_commit_whose_path_is_short_is_refused() {
    a_broken_tree_is_refused(CommitForgery::ShortPath, "length").await;
}

#[tokio::test]
async fn a_welcome_announced_for_another_group_or_replayed_changes_nothing() {
    let server = TestServer::start().await;
    let people = People::new();
    let ([mut alice, mut bob, mut carol], mitm) = three(&people, &server, "bob").await;

    // The Welcome into #one is announced as being for Carol's #decoy (every time Bob fetches
    // it: he fetches again after looking up the members it names).
    carol
        .create_group("decoy", &[u("alice")], Suite::Classic)
        .await
        .unwrap();
    let decoy = group_of(&carol, "#decoy");
    mitm.rewrite_sync(move |ds| {
        for d in ds.iter_mut().filter(|d| d.kind == DeliveryKind::Inbox) {
            d.group_id = *decoy.as_bytes();
        }
    });
    alice
        .create_group("one", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    let events = bob.sync().await.unwrap();
    assert!(
        !events.iter().any(|e| matches!(e, Event::Joined { .. })),
        "{events:?}"
    );
    assert!(bob.conversations().unwrap().is_empty());
    mitm.clear();

    // An honest Welcome into #two; later the server hands it over again.
    alice
        .create_group("two", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    let kept: Arc<Mutex<Option<Delivery>>> = Arc::default();
    let keep = kept.clone();
    mitm.rewrite_sync(move |ds| {
        if let Some(d) = ds.iter().find(|d| d.kind == DeliveryKind::Inbox) {
            keep.lock().unwrap().get_or_insert(d.clone());
        }
    });
    let events = bob.sync().await.unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Joined { .. }))
            .count(),
        1
    );
    alice.send("#two", "first").await.unwrap();
    assert_eq!(
        texts(&bob.sync().await.unwrap()),
        vec![t("@alice", "first")]
    );
    let epoch = bob.epoch("#two").unwrap();
    mitm.clear();
    let mut again = kept.lock().unwrap().clone().unwrap();
    again.inbox_seq += 1000;
    let once = armed();
    mitm.rewrite_sync(move |ds| {
        if once.swap(false, Ordering::SeqCst) {
            ds.insert(0, again.clone());
        }
    });
    alice.send("#two", "second").await.unwrap();
    let events = bob.sync().await.unwrap();
    assert!(
        !events.iter().any(|e| matches!(e, Event::Joined { .. })),
        "{events:?}"
    );
    assert_eq!(texts(&events), vec![t("@alice", "second")]);
    assert_eq!(bob.epoch("#two").unwrap(), epoch);
    assert_eq!(bob.conversations().unwrap().len(), 1);
}

#[tokio::test]
async fn ciphertexts_only_show_their_padding_bucket() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut bob = people.register(&server, "bob").await;
    let mitm = Interceptor::start(&server.url).await;
    let mut alice = people.register_at(&mitm.url, "alice").await;
    alice.send("@bob", "hello").await.unwrap();
    bob.sync().await.unwrap();
    mitm.take_seen();
    let lengths = [1, 50, 100, 400, 800, 2000, 3500];
    for n in lengths {
        alice.send("@bob", &"x".repeat(n)).await.unwrap();
    }
    let sizes: Vec<usize> = mitm
        .take_seen()
        .into_iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/messages"))
        .map(|s| s.len)
        .collect();
    assert_eq!(sizes.len(), lengths.len(), "{sizes:?}");
    // Three buckets (256, 1024, 4096 bytes of plaintext), one constant overhead.
    assert!(sizes[..3].iter().all(|&s| s == sizes[0]), "{sizes:?}");
    assert!(sizes[3..5].iter().all(|&s| s == sizes[3]), "{sizes:?}");
    assert!(sizes[5..].iter().all(|&s| s == sizes[5]), "{sizes:?}");
    assert_eq!(sizes[3] - sizes[0], 1024 - 256, "{sizes:?}");
    assert_eq!(sizes[5] - sizes[3], 4096 - 1024, "{sizes:?}");
    // And they are all readable.
    assert_eq!(texts(&bob.sync().await.unwrap()).len(), lengths.len());
}

/// Bob adds Carol to `#club` (Alice's, with Bob), and the server accepts the commit but keeps
/// it — and, while `hide` is set, everything after it in the group's log — from Bob, who is
/// told (`withheld_commit`).
async fn bobs_commit_withheld(
    people: &People,
    server: &TestServer,
) -> ([Client; 3], Interceptor, Arc<AtomicBool>) {
    let ([mut alice, mut bob, carol], mitm) = three(people, server, "bob").await;
    alice
        .create_group("club", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    bob.sync().await.unwrap();
    let group = group_of(&alice, "#club");
    let known = group_log(server, &alice, group)
        .await
        .last()
        .unwrap()
        .group_seq;
    let hide = armed();
    let hiding = hide.clone();
    mitm.rewrite_sync(move |ds| {
        if hiding.load(Ordering::SeqCst) {
            ds.retain(|d| d.kind != DeliveryKind::Group || d.group_seq <= known);
        }
    });
    let refused = bob.add_members("#club", &[u("carol")]).await;
    assert!(
        matches!(
            refused,
            Err(Error::Security {
                alert: SecurityAlert::WithheldCommit,
                ..
            })
        ),
        "{refused:?}"
    );
    ([alice, bob, carol], mitm, hide)
}

#[tokio::test]
async fn a_withheld_commit_raises_an_alert_and_merges_when_it_arrives() {
    let server = TestServer::start().await;
    let people = People::new();
    // Bob's commit is accepted, and kept from Bob.
    let ([mut alice, mut bob, mut carol], _mitm, hide) =
        bobs_commit_withheld(&people, &server).await;
    // Nothing is built on top of it while it is missing.
    let again = bob.add_members("#club", &[u("carol")]).await;
    assert!(matches!(again, Err(Error::ChangePending)), "{again:?}");
    // The others have it, so Carol is in.
    assert!(
        carol
            .sync()
            .await
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::Joined { .. }))
    );
    // Once it comes back, Bob merges it and carries on at the others' epoch.
    hide.store(false, Ordering::SeqCst);
    let events = bob.sync().await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::MemberAdded { member, .. } if member == "@carol")),
        "{events:?}"
    );
    let history = bob.messages("#club", 20).unwrap();
    assert_eq!(
        alerts(&history),
        vec![SecurityAlert::WithheldCommit],
        "{history:?}"
    );
    alice.sync().await.unwrap();
    assert_eq!(bob.epoch("#club").unwrap(), alice.epoch("#club").unwrap());
    bob.send("#club", "all here").await.unwrap();
    assert_eq!(
        texts(&alice.sync().await.unwrap()),
        vec![t("@bob", "all here")]
    );
    assert!(texts(&carol.sync().await.unwrap()).contains(&t("@bob", "all here")));
}

#[tokio::test]
async fn a_group_split_in_two_is_seen_as_a_fork_on_both_sides() {
    let server = TestServer::start().await;
    let people = People::new();
    let ([mut alice, mut bob, mut carol], mitm) = three(&people, &server, "carol").await;
    let _dave = people.register(&server, "dave").await;
    let _erin = people.register(&server, "erin").await;
    alice
        .create_group("club", &[u("bob"), u("carol")], Suite::Classic)
        .await
        .unwrap();
    bob.sync().await.unwrap();
    carol.sync().await.unwrap();
    let group = group_of(&alice, "#club");
    let known = group_log(&server, &alice, group)
        .await
        .last()
        .unwrap()
        .group_seq;

    // Bob's commit (adding Dave) is what everyone else sees at #known+1; Carol is shown none
    // of it, and her own commit (adding Erin) is "accepted" at the same place, for her alone.
    let theirs: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let hers = theirs.clone();
    mitm.rewrite_sync(move |ds| {
        let commit = hers.lock().unwrap().clone();
        ds.retain(|d| d.kind != DeliveryKind::Group || d.group_seq <= known || commit.is_some());
        if let Some(commit) = commit
            && let Some(d) = ds.iter_mut().find(|d| d.group_seq == known + 1)
        {
            d.payload = commit.into();
        }
    });
    let hers = theirs.clone();
    mitm.answer(
        "POST",
        &format!("/v1/groups/{group}/commits"),
        move |body| {
            let upload = CommitUpload::tls_deserialize_exact(body).unwrap();
            *hers.lock().unwrap() = Some(upload.commit.as_slice().to_vec());
            let posted = serde_json::json!({ "seq": known + 1, "sent_at": 0 });
            (200, posted.to_string().into_bytes())
        },
    );
    bob.add_members("#club", &[u("dave")]).await.unwrap();
    alice.sync().await.unwrap();
    carol.add_members("#club", &[u("erin")]).await.unwrap();
    assert_eq!(carol.epoch("#club").unwrap(), bob.epoch("#club").unwrap());

    // Messages across the split: unreadable, and a fork alert on each side, once.
    alice.send("#club", "from A").await.unwrap();
    bob.send("#club", "from B").await.unwrap();
    let events = carol.sync().await.unwrap();
    assert!(texts(&events).is_empty(), "{events:?}");
    assert_eq!(alerts(&events), vec![SecurityAlert::Fork], "{events:?}");
    assert!(unreadable(&events) >= 2, "{events:?}");
    carol.send("#club", "from C").await.unwrap();
    let events = bob.sync().await.unwrap();
    assert_eq!(texts(&events), vec![t("@alice", "from A")]);
    assert_eq!(alerts(&events), vec![SecurityAlert::Fork], "{events:?}");
    let events = alice.sync().await.unwrap();
    assert_eq!(texts(&events), vec![t("@bob", "from B")]);
    assert_eq!(alerts(&events), vec![SecurityAlert::Fork], "{events:?}");
}

#[tokio::test]
async fn an_external_join_from_leaked_group_info_is_refused() {
    use openmls::prelude::{
        BasicCredential, CredentialWithKey, LeafNodeParameters, MlsMessageBodyIn, MlsMessageIn,
    };
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_traits::OpenMlsProvider as _;
    use openmls_traits::types::SignatureScheme;
    use tls_codec::Serialize as _;

    let server = TestServer::start().await;
    let people = People::new();
    let ([mut alice, mut bob, _carol], mitm) = three(&people, &server, "bob").await;
    alice
        .create_group("club", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    bob.sync().await.unwrap();
    let members = bob.members("#club").unwrap().len();
    let epoch = bob.epoch("#club").unwrap();

    // Mallory holds the group's current public state and joins on her own.
    let leaked = alice.export_group_info_unchecked("#club").unwrap();
    let MlsMessageBodyIn::GroupInfo(info) = MlsMessageIn::tls_deserialize_exact(&leaked)
        .unwrap()
        .extract()
    else {
        panic!("not a GroupInfo")
    };
    let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
    let mallory = sealpost_proto::DeviceIdentity {
        username: u("mallory"),
        device_id: "0123456789abcdef0123456789abcdef".parse().unwrap(),
    };
    let credential = CredentialWithKey {
        credential: BasicCredential::new(mallory.to_credential_bytes()).into(),
        signature_key: signer.public().into(),
    };
    let suites: Vec<_> = Suite::ALL.iter().map(|s| s.ciphersuite()).collect();
    let capabilities = openmls::prelude::Capabilities::new(
        None,
        Some(&suites),
        Some(&[openmls::prelude::ExtensionType::LastResort]),
        None,
        None,
    );
    let (_, bundle) = openmls::prelude::MlsGroup::external_commit_builder()
        .build_group(&provider, info, credential)
        .unwrap()
        .leaf_node_parameters(
            LeafNodeParameters::builder()
                .with_capabilities(capabilities)
                .build(),
        )
        .load_psks(provider.storage())
        .unwrap()
        .build(provider.rand(), provider.crypto(), &signer, |_| true)
        .unwrap()
        .finalize(&provider)
        .unwrap();
    let (commit, _, _) = bundle.into_contents();
    let commit = commit.tls_serialize_detached().unwrap();

    // The server hands it to Bob in place of Alice's next text.
    alice.send("#club", "hidden").await.unwrap();
    let once = armed();
    mitm.rewrite_sync(move |ds| {
        if let Some(d) = ds.iter_mut().find(|d| d.kind == DeliveryKind::Group)
            && once.swap(false, Ordering::SeqCst)
        {
            d.payload = commit.clone().into();
        }
    });
    let events = bob.sync().await.unwrap();
    assert_eq!(
        alerts(&events),
        vec![SecurityAlert::ExternalJoin],
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::MemberAdded { .. })),
        "{events:?}"
    );
    assert_eq!(bob.members("#club").unwrap().len(), members);
    assert_eq!(bob.epoch("#club").unwrap(), epoch);
    mitm.clear();
    alice.send("#club", "after").await.unwrap();
    assert_eq!(
        texts(&bob.sync().await.unwrap()),
        vec![t("@alice", "after")]
    );
}

/// The server keeps the first key package of Bob's it hands out through `mitm`, and hands it
/// out again to every later claim.
fn replay_bobs_first_key_package(mitm: &Interceptor) {
    let kept: Mutex<Option<Vec<u8>>> = Mutex::default();
    mitm.rewrite("/v1/users/bob/key-packages", move |_, body| {
        let mut claimed: ClaimKeyPackagesResponse = serde_json::from_slice(&body).unwrap();
        let mut kept = kept.lock().unwrap();
        for c in &mut claimed.key_packages {
            c.key_package = kept.get_or_insert(c.key_package.clone()).clone();
        }
        serde_json::to_vec(&claimed).unwrap()
    });
}

#[tokio::test]
async fn a_key_package_handed_out_twice_is_refused() {
    let server = TestServer::start().await;
    let people = People::new();
    let ([mut alice, mut bob, _carol], mitm) = three(&people, &server, "alice").await;
    replay_bobs_first_key_package(&mitm);
    alice
        .create_group("one", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    let refused = alice.create_group("two", &[u("bob")], Suite::Classic).await;
    assert!(
        matches!(
            refused,
            Err(Error::Security {
                alert: SecurityAlert::ReusedKeyPackage,
                ..
            })
        ),
        "{refused:?}"
    );
    // Nothing was created (all or nothing).
    assert!(matches!(
        alice.members("#two"),
        Err(Error::UnknownConversation(_))
    ));
    // With honest key packages Bob is added, and is in both conversations.
    mitm.clear();
    alice
        .create_group("two", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    let joined = bob
        .sync()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e, Event::Joined { .. }))
        .count();
    assert_eq!(joined, 2);
}

/// The server hands the same one-time key package of Bob's to Alice and to Carol, who both add
/// him; neither can tell (each saw it once). Bob joins Alice's conversation, and for Carol's
/// says that the server handed his key package out twice (`reused_key_package`) instead of
/// showing an unreadable item; once Carol removes him and adds him again with an honest key
/// package, he joins hers too.
#[tokio::test]
async fn a_key_package_handed_to_two_adders_is_caught_by_its_owner() {
    let server = TestServer::start().await;
    let people = People::new();
    let mitm = Interceptor::start(&server.url).await;
    let mut alice = people.register_at(&mitm.url, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    let mut carol = people.register_at(&mitm.url, "carol").await;
    replay_bobs_first_key_package(&mitm);
    alice
        .create_group("one", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    carol
        .create_group("two", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    let events = bob.sync().await.unwrap();
    let joined: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Joined { conversation, .. } => Some(conversation.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(joined, vec!["#one"], "{events:?}");
    assert_eq!(
        alerts(&events),
        vec![SecurityAlert::ReusedKeyPackage],
        "{events:?}"
    );
    assert_eq!(unreadable(&events), 0, "{events:?}");
    assert_eq!(bob.conversations().unwrap().len(), 1);
    // Bob works on in the conversation he joined.
    alice.send("#one", "hello").await.unwrap();
    assert_eq!(
        texts(&bob.sync().await.unwrap()),
        vec![t("@alice", "hello")]
    );
    // Carol adds him again with an honest key package.
    mitm.clear();
    carol.remove_members("#two", &[u("bob")]).await.unwrap();
    carol.add_members("#two", &[u("bob")]).await.unwrap();
    carol.send("#two", "welcome back").await.unwrap();
    let events = bob.sync().await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Joined { conversation, .. } if conversation == "#two")),
        "{events:?}"
    );
    assert_eq!(texts(&events), vec![t("@carol", "welcome back")]);
    assert!(alerts(&events).is_empty(), "{events:?}");
}

/// The server hands Alice a key package of Bob's with `forgery` in it (signed by Bob's device,
/// so only Alice's own checks can catch it). She refuses it with `reason` (and `alert`) before
/// changing anything, and with an honest key package adds Bob, who reads what follows.
async fn a_forged_key_package_is_refused(
    forgery: KeyPackageForgery,
    reason: &str,
    alert: Option<SecurityAlert>,
) {
    let server = TestServer::start().await;
    let people = People::new();
    let ([mut alice, mut bob, _carol], mitm) = three(&people, &server, "alice").await;
    alice
        .create_group("room", &[], Suite::Classic)
        .await
        .unwrap();
    let epoch = alice.epoch("#room").unwrap();
    let forged = bob.forge_key_package_unchecked(forgery).unwrap();
    mitm.rewrite("/v1/users/bob/key-packages", move |_, body| {
        let mut claimed: ClaimKeyPackagesResponse = serde_json::from_slice(&body).unwrap();
        for c in &mut claimed.key_packages {
            c.key_package = forged.clone();
        }
        serde_json::to_vec(&claimed).unwrap()
    });
    mitm.take_seen();
    let refused = alice.add_members("#room", &[u("bob")]).await;
    match (&refused, alert) {
        (Err(Error::Protocol(message)), None)
        | (
            Err(Error::Security {
                detail: message, ..
            }),
            Some(_),
        ) => assert!(
            message.contains("key package") && message.contains(reason),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    if let (Err(Error::Security { alert: got, .. }), Some(alert)) = (&refused, alert) {
        assert_eq!(*got, alert);
    }
    assert_eq!(alice.members("#room").unwrap().len(), 1);
    assert_eq!(alice.epoch("#room").unwrap(), epoch);
    let posted = mitm.take_seen();
    assert!(
        posted.iter().all(|r| !r.path.ends_with("/commits")),
        "{posted:?}"
    );
    mitm.clear();
    alice.add_members("#room", &[u("bob")]).await.unwrap();
    alice.send("#room", "after").await.unwrap();
    let events = bob.sync().await.unwrap();
    assert_eq!(
        texts(&events),
        [("@alice".to_string(), "after".to_string())]
    );
}

#[tokio::test]
async fn an_expired_key_package_is_refused() {
    a_forged_key_package_is_refused(KeyPackageForgery::Expired, "it has expired", None).await;
}

#[tokio::test]
async fn a_key_package_with_an_all_zero_init_key_is_refused() {
    a_forged_key_package_is_refused(
        KeyPackageForgery::ZeroInitKey,
        "its init key is not a public key anything can be encrypted to",
        Some(SecurityAlert::UnusableKey),
    )
    .await;
}

#[tokio::test]
async fn a_key_package_whose_leaf_has_a_low_order_key_is_refused() {
    a_forged_key_package_is_refused(
        KeyPackageForgery::LowOrderLeafKey,
        "its encryption key is not a public key anything can be encrypted to",
        Some(SecurityAlert::UnusableKey),
    )
    .await;
}

/// Case 24 for several epochs: while Bob's commit is kept from him, the others go on (two more
/// people added, one removed, texts in between), all of it kept from Bob too. He builds nothing
/// on his missing commit; once the server lets the log through he takes every epoch in order,
/// reads every text once with no gap, and ends at the others' epoch.
#[tokio::test]
async fn a_commit_withheld_for_several_epochs_is_caught_up_in_order() {
    let server = TestServer::start().await;
    let people = People::new();
    let ([mut alice, mut bob, mut carol], _mitm, hide) =
        bobs_commit_withheld(&people, &server).await;
    let mut dave = people.register(&server, "dave").await;
    let _erin = people.register(&server, "erin").await;
    let stuck = bob.epoch("#club").unwrap();

    alice.sync().await.unwrap();
    carol.sync().await.unwrap();
    alice.send("#club", "one").await.unwrap();
    alice.add_members("#club", &[u("dave")]).await.unwrap();
    carol.sync().await.unwrap();
    carol.send("#club", "two").await.unwrap();
    alice.sync().await.unwrap();
    alice.add_members("#club", &[u("erin")]).await.unwrap();
    alice.remove_members("#club", &[u("erin")]).await.unwrap();
    alice.send("#club", "three").await.unwrap();
    let ahead = alice.epoch("#club").unwrap();
    assert_eq!(ahead, stuck + 4);

    // Still kept from him: Bob shows nothing and stays where he was.
    let quiet = bob.sync().await.unwrap();
    assert!(texts(&quiet).is_empty(), "{quiet:?}");
    assert_eq!(bob.epoch("#club").unwrap(), stuck);

    hide.store(false, Ordering::SeqCst);
    let events = bob.sync().await.unwrap();
    assert_eq!(
        texts(&events),
        vec![t("@alice", "one"), t("@carol", "two"), t("@alice", "three")]
    );
    assert_eq!(unreadable(&events), 0, "{events:?}");
    assert!(gaps(&events).is_empty(), "{events:?}");
    assert!(
        !alerts(&events).contains(&SecurityAlert::Fork),
        "{events:?}"
    );
    assert_eq!(bob.epoch("#club").unwrap(), ahead);
    bob.send("#club", "back").await.unwrap();
    for reader in [&mut alice, &mut carol, &mut dave] {
        assert!(texts(&reader.sync().await.unwrap()).contains(&t("@bob", "back")));
    }
}

/// A malicious member (Alice, with no check of her own) adds Bob with a leaf key nothing can be
/// encrypted to. Carol refuses the commit (`unusable_key`), stays at her epoch and shows nobody
/// added; her other conversations carry on.
#[tokio::test]
async fn a_commit_giving_a_member_an_unusable_key_is_refused_by_the_others() {
    let server = TestServer::start().await;
    let people = People::new();
    let ([mut alice, mut bob, mut carol], _mitm) = three(&people, &server, "nobody").await;
    alice
        .create_group("room", &[u("carol")], Suite::Classic)
        .await
        .unwrap();
    carol.sync().await.unwrap();
    let epoch = carol.epoch("#room").unwrap();
    let forged = bob
        .forge_key_package_unchecked(KeyPackageForgery::LowOrderLeafKey)
        .unwrap();
    alice
        .add_key_package_unchecked("#room", &forged)
        .await
        .unwrap();
    let events = carol.sync().await.unwrap();
    assert_eq!(
        alerts(&events),
        vec![SecurityAlert::UnusableKey],
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::MemberAdded { .. })),
        "{events:?}"
    );
    assert_eq!(carol.epoch("#room").unwrap(), epoch);
    assert_eq!(carol.members("#room").unwrap().len(), 2);
    bob.send("@carol", "elsewhere").await.unwrap();
    assert_eq!(
        texts(&carol.sync().await.unwrap()),
        vec![t("@bob", "elsewhere")]
    );
}
