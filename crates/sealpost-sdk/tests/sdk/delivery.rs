//! Ordering, conflicts, restarts and bad input, against a real server.

use crate::common::{Interceptor, People, TestServer, alerts, texts, u};
use sealpost_sdk::{Client, ClientSettings, Error, Event, Suite};

#[tokio::test]
async fn offline_recipient_catches_up_in_order() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    alice
        .create_group("news", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    for i in 0..30 {
        alice.send("#news", &format!("item {i}")).await.unwrap();
    }
    let got: Vec<String> = texts(&bob.sync().await.unwrap())
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let want: Vec<String> = (0..30).map(|i| format!("item {i}")).collect();
    assert_eq!(got, want);
    assert!(
        bob.sync().await.unwrap().is_empty(),
        "nothing is delivered twice"
    );
}

#[tokio::test]
async fn competing_commits_converge() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    let mut carol = people.register(&server, "carol").await;
    let mut dave = people.register(&server, "dave").await;
    alice
        .create_group("race", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    bob.sync().await.unwrap();
    // Both commit at the same epoch; one wins, the other re-syncs and retries on its own.
    let (carol_name, dave_name) = ([u("carol")], [u("dave")]);
    let (a, b) = tokio::join!(
        alice.add_members("#race", &carol_name),
        bob.add_members("#race", &dave_name)
    );
    a.unwrap();
    b.unwrap();
    for c in [&mut alice, &mut bob, &mut carol, &mut dave] {
        c.sync().await.unwrap();
        let mut members: Vec<String> = c
            .members("#race")
            .unwrap()
            .into_iter()
            .map(|m| m.member)
            .collect();
        members.sort();
        assert_eq!(members, ["@alice", "@bob", "@carol", "@dave"]);
    }
    dave.send("#race", "all in").await.unwrap();
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(
            texts(&c.sync().await.unwrap()),
            vec![("@dave".to_string(), "all in".to_string())]
        );
    }
}

#[tokio::test]
async fn server_restart_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let mut server = TestServer::start_at(&data, "127.0.0.1:0").await;
    let addr = server.addr.to_string();
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    alice.send("@bob", "before restart").await.unwrap();
    server.stop().await;

    // Server down: the client says so and keeps what it has.
    let err = alice.send("@bob", "while down").await.unwrap_err();
    assert!(matches!(err, Error::ServerUnreachable { .. }), "{err}");
    assert_eq!(
        texts(&alice.messages("@bob", 10).unwrap()),
        vec![("@alice".into(), "before restart".into())]
    );

    let _server = TestServer::start_at(&data, &addr).await;
    alice.send("@bob", "after restart").await.unwrap();
    let got: Vec<String> = texts(&bob.sync().await.unwrap())
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(got, ["before restart", "after restart"]);
}

#[tokio::test]
async fn reopened_client_neither_loses_nor_duplicates() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    alice.send("@bob", "one").await.unwrap();
    assert_eq!(texts(&bob.sync().await.unwrap()).len(), 1);
    drop(bob);
    alice.send("@bob", "two").await.unwrap();
    let mut bob = Client::open(&people.home("bob"), None).unwrap();
    let got = texts(&bob.sync().await.unwrap());
    assert_eq!(got, vec![("@alice".to_string(), "two".to_string())]);
    assert_eq!(texts(&bob.messages("@alice", 10).unwrap()).len(), 2);
}

#[tokio::test]
async fn registration_errors() {
    let server = TestServer::start().await;
    let people = People::new();
    people.register(&server, "alice").await;
    let taken = Client::register(&people.home("alice2"), &server.url, "alice", None).await;
    assert!(
        matches!(taken, Err(Error::Server { .. })),
        "a taken username is refused"
    );
    let invalid = Client::register(&people.home("x"), &server.url, "Not Valid", None).await;
    assert!(matches!(invalid, Err(Error::InvalidId(_))));
    let again = Client::register(&people.home("alice"), &server.url, "alice", None).await;
    assert!(matches!(again, Err(Error::AlreadyRegistered(_))));
}

#[tokio::test]
async fn unknown_user_and_conversation() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let err = alice.send("@nobody", "hi").await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(matches!(
        alice.send("#nothing", "hi").await,
        Err(Error::UnknownConversation(_))
    ));
    assert!(
        alice
            .conversations()
            .unwrap()
            .iter()
            .all(|c| c.members <= 1)
    );
}

#[tokio::test]
async fn locked_and_corrupt_profiles() {
    let server = TestServer::start().await;
    let people = People::new();
    let alice = people.register(&server, "alice").await;
    assert!(matches!(
        Client::open(&people.home("alice"), None),
        Err(Error::ProfileLocked)
    ));
    drop(alice);
    Client::open(&people.home("alice"), None).unwrap();
    std::fs::write(people.home("alice").join("profile.db"), vec![0x42; 8192]).unwrap();
    let _ = std::fs::remove_file(people.home("alice").join("profile.db-wal"));
    assert!(matches!(
        Client::open(&people.home("alice"), None),
        Err(Error::Store(_))
    ));
    assert!(matches!(
        Client::open(&people.home("nobody"), None),
        Err(Error::NotRegistered)
    ));
}

#[tokio::test]
async fn history_is_encrypted_at_rest() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    let secret = "plaintext-that-must-not-be-on-disk-91c4";
    alice.send("@bob", secret).await.unwrap();
    bob.sync().await.unwrap();
    for name in ["alice", "bob"] {
        for entry in std::fs::read_dir(people.home(name)).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{name}'s store holds the plaintext"
            );
        }
    }
}

#[tokio::test]
async fn bad_http_input_gets_clear_errors() {
    let server = TestServer::start().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let post =
        |path: &str, body: Vec<u8>| http.post(format!("{}{path}", server.url)).body(body).send();
    let r = post("/v1/accounts", b"{not json".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "bad_request");
    let r = post("/v1/accounts", vec![b'a'; 2 * 1024 * 1024])
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = post("/v1/auth/challenge", br#"{"device_id":"zz"}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post("/v1/auth/token", br#"{"device_id":"00112233445566778899aabbccddeeff","challenge":"AAAA","signature":"AAAA"}"#.to_vec()).await.unwrap();
    assert_eq!(r.status(), 401);
    let r = post(
        "/v1/groups/00112233445566778899aabbccddeeff/messages",
        vec![1, 2, 3],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401, "unauthenticated");
    let r = http
        .get(format!("{}/openapi.json", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap();
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("sealpost_request_duration_seconds_count{route=\"/openapi.json\",method=\"GET\",status=\"200\"} 1")
    );
}

#[tokio::test]
async fn live_push_delivers_without_polling() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    alice.send("@bob", "first").await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::spawn(async move {
        let mut seen = Vec::new();
        bob.listen("test", |e| {
            let e = &e.event;
            if let Event::Message { text, .. } = e {
                seen.push(text.clone());
                let _ = tx.send(text.clone());
            }
            seen.len() < 3
        })
        .await
        .unwrap();
        seen
    });
    assert_eq!(rx.recv().await.unwrap(), "first"); // caught up on connect
    alice.send("@bob", "second").await.unwrap();
    alice.send("@bob", "third").await.unwrap();
    assert_eq!(listener.await.unwrap(), ["first", "second", "third"]);
}

#[tokio::test]
async fn server_limits_give_clear_errors_and_change_nothing() {
    let server = TestServer::start_with(|s| {
        s.key_package_claims_per_minute = 2;
        s.max_group_size = 2;
    })
    .await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    people.register(&server, "carol").await;
    people.register(&server, "dave").await;
    alice
        .create_group("pair", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    // A third member would exceed the group limit: refused before carol's key package is
    // claimed, the group unchanged.
    let err = alice.add_members("#pair", &[u("carol")]).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::GroupTooLarge {
                devices: 3,
                limit: 2
            }
        ),
        "{err}"
    );
    assert_eq!(alice.members("#pair").unwrap().len(), 2);
    alice.send("#pair", "still two").await.unwrap();
    assert_eq!(
        texts(&bob.sync().await.unwrap()),
        vec![("@alice".to_string(), "still two".to_string())]
    );
    // The claim limit (2 per minute): dave's is the second claim, carol's the third, refused.
    alice.send("@dave", "hi").await.unwrap();
    let err = alice.send("@carol", "hi").await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Server {
                code: sealpost_proto::ErrorCode::RateLimited,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn leaves_are_renewed_on_schedule() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    alice.send("@bob", "first").await.unwrap();
    bob.sync().await.unwrap();
    let before = alice.epoch("@bob").unwrap();
    alice.set_settings(sealpost_sdk::ClientSettings {
        self_update_after: std::time::Duration::ZERO,
        ..Default::default()
    });
    alice.send("@bob", "second").await.unwrap();
    let after = alice.epoch("@bob").unwrap();
    assert_eq!(after, before + 1, "a self-update commit preceded the send");
    assert_eq!(
        texts(&bob.sync().await.unwrap()),
        vec![("@alice".to_string(), "second".to_string())]
    );
    assert_eq!(bob.epoch("@alice").unwrap(), after);
}

#[tokio::test]
async fn key_packages_are_replenished_when_low() {
    let server = TestServer::start().await;
    let people = People::new();
    let settings = sealpost_sdk::ClientSettings {
        key_packages_target: 3,
        key_packages_low: 2,
        ..Default::default()
    };
    let mut bob = Client::register_with(&people.home("bob"), &server.url, "bob", None, settings)
        .await
        .unwrap();
    for name in ["alice", "carol", "dave"] {
        let mut c = people.register(&server, name).await;
        c.send("@bob", "hi").await.unwrap(); // each claims one of bob's key packages
    }
    let events = bob.sync().await.unwrap();
    assert_eq!(texts(&events).len(), 3);
    let token = bob.bench_prepare("@alice", 0, "").await.unwrap().token;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::Client::new()
        .get(format!("{}/v1/key-packages?ciphersuite=79", server.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let stock = r.json::<serde_json::Value>().await.unwrap()["stock"]
        .as_u64()
        .unwrap();
    assert_eq!(stock, 3, "bob's stock was topped up to its target");
}

/// Alice (through an interceptor) and Bob in `#crew`; Alice renews her leaf before each send,
/// so every send of hers starts with a commit.
async fn crew_through(people: &People, server: &TestServer) -> (Client, Client, Interceptor) {
    let mitm = Interceptor::start(&server.url).await;
    let mut alice = people.register_at(&mitm.url, "alice").await;
    let mut bob = people.register(server, "bob").await;
    alice
        .create_group("crew", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    bob.sync().await.unwrap();
    alice.set_settings(ClientSettings {
        self_update_after: std::time::Duration::ZERO,
        ..Default::default()
    });
    (alice, bob, mitm)
}

/// Nothing in `client`'s history of `#crew` that it could not read or that alarmed it.
fn all_readable(client: &Client) {
    for event in client.messages("#crew", 1_000).unwrap() {
        assert!(
            !matches!(event, Event::Undecryptable { .. } | Event::Security { .. }),
            "{event:?}"
        );
    }
}

#[tokio::test]
async fn a_commit_that_never_reached_the_server_is_posted_again() {
    let server = TestServer::start().await;
    let people = People::new();
    let (mut alice, mut bob, mitm) = crew_through(&people, &server).await;
    // A load balancer whose node behind died: 502, and the server never saw the commit.
    mitm.answer("POST", "/v1/groups/", |_| (502, b"Bad Gateway".to_vec()));
    let epoch = alice.epoch("#crew").unwrap();
    let err = alice.send("#crew", "first").await.unwrap_err();
    assert!(
        matches!(err, Error::ServerUnreachable { .. }),
        "a proxy's 502 leaves the outcome unknown, not refused: {err}"
    );
    mitm.clear();
    // The next send posts the staged commit again, then sends.
    alice.send("#crew", "second").await.unwrap();
    assert_eq!(
        texts(&bob.sync().await.unwrap()),
        vec![("@alice".into(), "second".into())]
    );
    assert!(alice.epoch("#crew").unwrap() > epoch);
    assert_eq!(bob.epoch("#crew").unwrap(), alice.epoch("#crew").unwrap());
    all_readable(&alice);
    all_readable(&bob);
}

#[tokio::test]
async fn a_lost_answer_leaves_nothing_unreadable_or_doubled() {
    let server = TestServer::start().await;
    let people = People::new();
    let (mut alice, mut bob, mitm) = crew_through(&people, &server).await;
    // The server takes the messages; the answers are lost on the way back.
    mitm.rewrite("/v1/groups/", |path, body| {
        if path.ends_with("/messages") {
            b"\x00".to_vec()
        } else {
            body
        }
    });
    assert!(alice.send("#crew", "first").await.is_err());
    assert!(alice.send("#crew", "second").await.is_err());
    // Then a commit's answer (the send's leaf renewal) is lost too.
    mitm.rewrite("/v1/groups/", |_, _| b"\x00".to_vec());
    assert!(alice.send("#crew", "third").await.is_err());
    mitm.clear();
    alice.send("#crew", "fourth").await.unwrap();
    let got = bob.sync().await.unwrap();
    assert!(alerts(&got).is_empty(), "{got:?}");
    let shown: Vec<String> = texts(&got).into_iter().map(|(_, t)| t).collect();
    // "first" was stored and left unconfirmed; "second" and "third" stopped at it (each
    // operation posts the unconfirmed text again first) before they were encrypted; "fourth"
    // settled it.
    assert_eq!(shown, ["first", "fourth"]);
    assert!(
        !got.iter().any(|e| matches!(e, Event::Gap { .. })),
        "{got:?}"
    );
    assert_eq!(bob.epoch("#crew").unwrap(), alice.epoch("#crew").unwrap());
    alice.sync().await.unwrap();
    all_readable(&alice);
    all_readable(&bob);
}

#[tokio::test]
async fn an_add_that_never_reached_the_server_is_posted_again_with_its_welcome() {
    let server = TestServer::start().await;
    let people = People::new();
    let (mut alice, mut bob, mitm) = crew_through(&people, &server).await;
    let mut carol = people.register(&server, "carol").await;
    mitm.answer("POST", "/v1/groups/", |_| (502, b"Bad Gateway".to_vec()));
    let err = alice.add_members("#crew", &[u("carol")]).await.unwrap_err();
    assert!(matches!(err, Error::ServerUnreachable { .. }), "{err}");
    mitm.clear();
    // Alice's next commit (her leaf renewal before a send) first posts the add again, with the
    // Welcome that lets Carol in.
    alice.send("#crew", "welcome, carol").await.unwrap();
    let got = carol.sync().await.unwrap();
    assert!(
        texts(&got).contains(&("@alice".into(), "welcome, carol".into())),
        "{got:?}"
    );
    bob.sync().await.unwrap();
    let epoch = alice.epoch("#crew").unwrap();
    assert_eq!(bob.epoch("#crew").unwrap(), epoch);
    assert_eq!(carol.epoch("#crew").unwrap(), epoch);
    all_readable(&carol);
}

/// Ann and Ben (through an interceptor) in `#crew`; while Ben is away Ann removes him, adds him
/// back and writes "back".
async fn removed_and_added_back(
    people: &People,
    server: &TestServer,
) -> (Client, Client, Interceptor) {
    let mitm = Interceptor::start(&server.url).await;
    let mut ann = people.register(server, "ann").await;
    let mut ben = people.register_at(&mitm.url, "ben").await;
    ann.create_group("crew", &[u("ben")], Suite::Classic)
        .await
        .unwrap();
    ben.sync().await.unwrap();
    ann.send("#crew", "before").await.unwrap();
    ann.remove_members("#crew", &[u("ben")]).await.unwrap();
    ann.add_members("#crew", &[u("ben")]).await.unwrap();
    ann.send("#crew", "back").await.unwrap();
    (ann, ben, mitm)
}

/// Ben is removed and added back while the group's log is held up on its way to him (a slow
/// node, a lagging replica): his sync brings the Welcome without the removal before it. The
/// Welcome waits, unacknowledged, and when the log comes he takes the removal, then rejoins.
#[tokio::test]
async fn a_welcome_that_arrives_before_the_removal_it_follows_waits_for_it() {
    let server = TestServer::start().await;
    let people = People::new();
    let (ann, mut ben, mitm) = removed_and_added_back(&people, &server).await;
    mitm.rewrite_sync(|ds| ds.retain(|d| d.kind != sealpost_proto::DeliveryKind::Group));
    let early = ben.sync().await.unwrap();
    assert!(early.is_empty(), "{early:?}");
    mitm.clear();
    let events = ben.sync().await.unwrap();
    assert!(
        events.iter().any(|e| matches!(e, Event::Removed { .. }))
            && events.iter().any(|e| matches!(e, Event::Joined { .. })),
        "{events:?}"
    );
    assert_eq!(
        texts(&events),
        vec![
            ("@ann".to_string(), "before".to_string()),
            ("@ann".to_string(), "back".to_string())
        ]
    );
    assert_eq!(ben.epoch("#crew").unwrap(), ann.epoch("#crew").unwrap());
}

/// Ben is removed and added back while he is away for longer than the server keeps its log:
/// the log up to the add (his removal with it) is gone when he comes back, and his sync brings
/// the Welcome and what was written after it. He rejoins and reads it (before, he took the
/// Welcome for a replay and stayed behind in the epoch of his removal, reading nothing).
#[tokio::test]
async fn a_welcome_whose_log_the_server_no_longer_has_is_taken() {
    let server = TestServer::start().await;
    let people = People::new();
    let (mut ann, mut ben, mitm) = removed_and_added_back(&people, &server).await;
    // What the server still has after its retention purge: the entries of the log up to the
    // add are gone; the Welcome and the log after the add are not.
    mitm.rewrite_sync(|ds| {
        let Some(add) = ds
            .iter()
            .find(|d| d.kind == sealpost_proto::DeliveryKind::Inbox)
            .map(|w| w.group_seq)
        else {
            return;
        };
        ds.retain(|d| d.kind == sealpost_proto::DeliveryKind::Inbox || d.group_seq > add);
    });
    let events = ben.sync().await.unwrap();
    assert!(
        events.iter().any(|e| matches!(e, Event::Joined { .. })),
        "{events:?}"
    );
    assert_eq!(
        texts(&events),
        vec![("@ann".to_string(), "back".to_string())]
    );
    assert!(alerts(&events).is_empty(), "{events:?}");
    assert_eq!(ben.epoch("#crew").unwrap(), ann.epoch("#crew").unwrap());
    // And the conversation goes on both ways.
    mitm.clear();
    ben.send("#crew", "here again").await.unwrap();
    assert_eq!(
        texts(&ann.sync().await.unwrap()),
        vec![("@ben".to_string(), "here again".to_string())]
    );
}

/// Carol sends while the commit adding Dan has not reached her yet, so her text is encrypted
/// to the members before Dan. Dan, who joined after that epoch, shows nothing for it (before,
/// an unreadable item); the others read it.
#[tokio::test]
async fn a_text_to_the_members_before_someone_joined_is_not_unreadable_for_them() {
    let server = TestServer::start().await;
    let people = People::new();
    let mitm = Interceptor::start(&server.url).await;
    let mut ann = people.register(&server, "ann").await;
    let mut carol = people.register_at(&mitm.url, "carol").await;
    let mut dan = people.register(&server, "dan").await;
    ann.create_group("crew", &[u("carol")], Suite::Classic)
        .await
        .unwrap();
    carol.sync().await.unwrap();
    ann.add_members("#crew", &[u("dan")]).await.unwrap();
    let once = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    mitm.rewrite_sync(move |ds| {
        if once.swap(false, std::sync::atomic::Ordering::SeqCst) {
            ds.retain(|d| d.kind != sealpost_proto::DeliveryKind::Group);
        }
    });
    carol.send("#crew", "from before dan").await.unwrap();
    mitm.clear();
    let at_dan = dan.sync().await.unwrap();
    assert!(
        at_dan.iter().any(|e| matches!(e, Event::Joined { .. })),
        "{at_dan:?}"
    );
    assert!(
        !at_dan
            .iter()
            .any(|e| matches!(e, Event::Undecryptable { .. } | Event::Message { .. })),
        "{at_dan:?}"
    );
    assert_eq!(
        texts(&ann.sync().await.unwrap()),
        vec![("@carol".to_string(), "from before dan".to_string())]
    );
    carol.send("#crew", "now with dan").await.unwrap();
    assert_eq!(
        texts(&dan.sync().await.unwrap()),
        vec![("@carol".to_string(), "now with dan".to_string())]
    );
}

/// Ann adds Ben and the answer to her commit is lost; her next sync finds the commit taken and
/// merges it. She still tells Ben what the conversation is (before, only a re-post did), so he
/// sees `#crew`, not an unnamed conversation.
#[tokio::test]
async fn an_add_whose_answer_was_lost_still_names_the_conversation() {
    let server = TestServer::start().await;
    let people = People::new();
    let mitm = Interceptor::start(&server.url).await;
    let mut ann = people.register_at(&mitm.url, "ann").await;
    let mut ben = people.register(&server, "ben").await;
    ann.create_group("crew", &[], Suite::Classic).await.unwrap();
    mitm.rewrite("/v1/groups/", |path, body| {
        if path.ends_with("/commits") {
            b"\x00".to_vec()
        } else {
            body
        }
    });
    assert!(ann.add_members("#crew", &[u("ben")]).await.is_err());
    mitm.clear();
    ann.sync().await.unwrap();
    assert_eq!(ann.members("#crew").unwrap().len(), 2);
    let events = ben.sync().await.unwrap();
    let names: Vec<String> = ben
        .conversations()
        .unwrap()
        .into_iter()
        .map(|c| c.conversation)
        .collect();
    assert_eq!(names, ["#crew"], "{events:?}");
}

/// The next text a subscription shows (a guard against a hang, not a wait for readiness).
async fn next_text(sub: &mut sealpost_sdk::Subscription) -> String {
    loop {
        let e = tokio::time::timeout(std::time::Duration::from_secs(60), sub.next())
            .await
            .expect("an event within a minute")
            .unwrap();
        if let Event::Message { text, .. } = e.event {
            return text;
        }
    }
}

/// Defect: a listener whose session token had expired never reconnected: the WebSocket's 401
/// was retried for ever without signing in again, so after a server restart (or a NATS blip,
/// which closes every push connection) a listener older than the token went silent. The live
/// client forgets a refused token and signs in again, and comes back after the server does.
#[tokio::test]
async fn a_live_client_whose_session_expired_comes_back_after_a_restart() {
    let mut server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let bob = people.register(&server, "bob").await;
    alice.send("@bob", "before").await.unwrap();
    let live = sealpost_sdk::Live::new(bob).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let runner = tokio::spawn({
        let (live, shutdown) = (live.clone(), shutdown.clone());
        async move { live.run(shutdown).await }
    });
    let mut sub = live.subscribe(sealpost_sdk::EventId::START);
    assert_eq!(next_text(&mut sub).await, "before");

    // Every session ends (as when tokens expire), and the server restarts: the push
    // connection drops, and the token the live client holds is refused.
    let (data, addr) = (server.data.clone(), server.addr.to_string());
    server.stop().await;
    rusqlite::Connection::open(data.join("server.db"))
        .unwrap()
        .execute("DELETE FROM sessions", [])
        .unwrap();
    let _restarted = TestServer::start_at(&data, &addr).await;
    alice.send("@bob", "after").await.unwrap();
    assert_eq!(next_text(&mut sub).await, "after");
    // Back, and saying so.
    assert!(matches!(
        *live.connection().borrow(),
        sealpost_sdk::Connection::Connected { .. }
    ));
    shutdown.cancel();
    runner.await.unwrap();
}

/// Defect: when a sync batch arrived out of order, the earlier message was skipped for good (the
/// cursor had passed it). The batch is taken in the server's order.
#[tokio::test]
async fn a_batch_that_arrives_reordered_loses_nothing() {
    let server = TestServer::start().await;
    let mitm = Interceptor::start(&server.url).await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register_at(&mitm.url, "bob").await;
    alice.send("@bob", "one").await.unwrap();
    bob.sync().await.unwrap();
    for text in ["two", "three", "four"] {
        alice.send("@bob", text).await.unwrap();
    }
    mitm.rewrite_sync(|deliveries| deliveries.reverse());
    let got: Vec<String> = texts(&bob.sync().await.unwrap())
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(got, ["two", "three", "four"]);
    mitm.clear();
    assert!(bob.sync().await.unwrap().is_empty());
}

/// A text the server refuses is kept in the sender's history marked not sent (with why), and
/// its number is used again, so the recipient sees no gap.
#[tokio::test]
async fn a_refused_text_is_marked_not_sent_and_leaves_no_gap() {
    let server = TestServer::start().await;
    let mitm = Interceptor::start(&server.url).await;
    let people = People::new();
    let mut alice = people.register_at(&mitm.url, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    alice.send("@bob", "first").await.unwrap();
    mitm.answer("POST", "/v1/groups/", |_| {
        let refusal = r#"{"code":"rate_limited","message":"slow down"}"#;
        (429, refusal.as_bytes().to_vec())
    });
    let refused = alice.send("@bob", "refused").await;
    assert!(matches!(refused, Err(Error::Server { .. })), "{refused:?}");
    mitm.clear();
    alice.send("@bob", "second").await.unwrap();
    let history = alice.messages("@bob", 10).unwrap();
    let states: Vec<(&str, Option<&str>)> = history
        .iter()
        .filter_map(|e| match e {
            Event::Message { text, failed, .. } => Some((text.as_str(), failed.as_deref())),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        [
            ("first", None),
            ("refused", Some("the server refused: slow down")),
            ("second", None)
        ]
    );
    let got = bob.sync().await.unwrap();
    assert_eq!(
        texts(&got),
        [
            ("@alice".to_owned(), "first".to_owned()),
            ("@alice".to_owned(), "second".to_owned())
        ]
    );
    assert!(
        !got.iter().any(|e| matches!(e, Event::Gap { .. })),
        "{got:?}"
    );
}

/// Alice's texts in `@bob`, each with whether it is unconfirmed and why it failed.
fn sent_states(alice: &Client) -> Vec<(String, bool, Option<String>)> {
    alice
        .messages("@bob", 100)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            Event::Message {
                text,
                unconfirmed,
                failed,
                ..
            } => Some((text, unconfirmed, failed)),
            _ => None,
        })
        .collect()
}

/// Bob's whole history with Alice is `expected`, each once, and readable.
async fn bob_has(bob: &mut Client, expected: &[&str]) {
    bob.sync().await.unwrap();
    let history = bob.messages("@alice", 100).unwrap();
    for event in &history {
        assert!(
            !matches!(event, Event::Undecryptable { .. } | Event::Gap { .. }),
            "{history:?}"
        );
    }
    let shown: Vec<String> = texts(&history).into_iter().map(|(_, t)| t).collect();
    assert_eq!(shown, expected);
}

/// Alice (through an interceptor) has sent Bob "first"; both are up to date.
async fn talking_through_a_proxy() -> (TestServer, People, Interceptor, Client, Client) {
    let server = TestServer::start().await;
    let mitm = Interceptor::start(&server.url).await;
    let people = People::new();
    let mut alice = people.register_at(&mitm.url, "alice").await;
    let bob = people.register(&server, "bob").await;
    alice.send("@bob", "first").await.unwrap();
    alice.sync().await.unwrap();
    (server, people, mitm, alice, bob)
}

/// The server stores a text and its answer is lost (a node dies on the way back): the send
/// says it is unconfirmed, and the next sync posts the same ciphertext again, which the server
/// answers from the first copy. Bob gets the text once; Alice's history says it was sent.
#[tokio::test]
async fn a_send_whose_answer_was_lost_is_settled_by_the_next_sync_and_stored_once() {
    let (_server, _people, mitm, mut alice, mut bob) = talking_through_a_proxy().await;
    mitm.rewrite("/v1/groups/", |path, body| {
        if path.ends_with("/messages") {
            b"\x00".to_vec()
        } else {
            body
        }
    });
    let lost = alice.send("@bob", "stored, answer lost").await;
    assert!(matches!(lost, Err(Error::Unconfirmed { .. })), "{lost:?}");
    assert_eq!(
        sent_states(&alice)[1],
        ("stored, answer lost".into(), true, None)
    );
    // While the answers are still lost, the next operation stops at the unconfirmed text
    // (nothing is built on a state it may be missing from), and it stays unconfirmed.
    assert!(alice.sync().await.is_err());
    assert!(sent_states(&alice)[1].1);
    mitm.clear();
    let events = alice.sync().await.unwrap();
    assert!(
        matches!(events.as_slice(), [Event::Sent { conversation, .. }] if conversation == "@bob"),
        "{events:?}"
    );
    assert_eq!(
        sent_states(&alice),
        [
            ("first".into(), false, None),
            ("stored, answer lost".into(), false, None)
        ]
    );
    bob_has(&mut bob, &["first", "stored, answer lost"]).await;
    // The conversation goes on, numbered as before.
    alice.send("@bob", "third").await.unwrap();
    bob_has(&mut bob, &["first", "stored, answer lost", "third"]).await;
}

/// A text that never reached the server (a proxy answers 502 for a dead node) is posted by the
/// next sync; one whose retry the server refuses is marked not sent, with an event, and leaves
/// the recipient no gap.
#[tokio::test]
async fn an_unconfirmed_send_is_posted_again_or_marked_not_sent() {
    let (_server, _people, mitm, mut alice, mut bob) = talking_through_a_proxy().await;
    mitm.answer("POST", "/v1/groups/", |_| (502, b"Bad Gateway".to_vec()));
    let lost = alice.send("@bob", "never arrived").await;
    assert!(matches!(lost, Err(Error::Unconfirmed { .. })), "{lost:?}");
    mitm.clear();
    let events = alice.sync().await.unwrap();
    assert!(
        matches!(events.as_slice(), [Event::Sent { .. }]),
        "{events:?}"
    );
    bob_has(&mut bob, &["first", "never arrived"]).await;

    mitm.answer("POST", "/v1/groups/", |_| (502, b"Bad Gateway".to_vec()));
    let lost = alice.send("@bob", "refused on retry").await;
    assert!(matches!(lost, Err(Error::Unconfirmed { .. })), "{lost:?}");
    mitm.clear();
    mitm.answer("POST", "/v1/groups/", |_| {
        let refusal = r#"{"code":"forbidden","message":"not a member of this group"}"#;
        (403, refusal.as_bytes().to_vec())
    });
    let events = alice.sync().await.unwrap();
    assert!(
        matches!(events.as_slice(), [Event::NotSent { reason, .. }] if reason.contains("not a member")),
        "{events:?}"
    );
    mitm.clear();
    alice.send("@bob", "last").await.unwrap();
    assert_eq!(
        sent_states(&alice)[2..],
        [
            (
                "refused on retry".into(),
                false,
                Some("the server refused: not a member of this group".into())
            ),
            ("last".into(), false, None)
        ]
    );
    bob_has(&mut bob, &["first", "never arrived", "last"]).await;
}

/// A server that keeps failing on one message (`internal`, so it may have stored it) would hold
/// up every sync for good: each sync posts the unconfirmed message first. The user can give up
/// on it; it is then shown as not sent (with why), its number stays spent, and syncing and
/// sending work again.
#[tokio::test]
async fn an_unconfirmed_message_can_be_given_up_and_no_longer_holds_up_the_profile() {
    let (_server, _people, mitm, mut alice, mut bob) = talking_through_a_proxy().await;
    mitm.answer("POST", "/v1/groups/", |_| {
        let failure = r#"{"code":"internal","message":"internal error"}"#;
        (500, failure.as_bytes().to_vec())
    });
    let lost = alice.send("@bob", "stuck").await;
    assert!(matches!(lost, Err(Error::Unconfirmed { .. })), "{lost:?}");
    assert!(
        alice.sync().await.is_err(),
        "the stuck message holds up syncing"
    );
    let stuck = alice.unconfirmed().unwrap();
    assert_eq!(stuck.len(), 1);
    assert_eq!(stuck[0].conversation, "@bob");
    assert!(stuck[0].id.is_some());

    assert_eq!(alice.give_up_unconfirmed("@bob").unwrap(), 1);
    assert!(alice.unconfirmed().unwrap().is_empty());
    let events = alice.sync().await.unwrap();
    assert!(
        matches!(events.as_slice(), [Event::NotSent { reason, .. }] if reason.contains("stopped trying")),
        "{events:?}"
    );
    let states = sent_states(&alice);
    assert_eq!(states[1].0, "stuck");
    assert!(!states[1].1, "no longer unconfirmed");
    assert!(
        states[1]
            .2
            .as_deref()
            .is_some_and(|r| r.contains("some may have received it"))
    );
    mitm.clear();
    alice.send("@bob", "after").await.unwrap();
    bob.sync().await.unwrap();
    let shown: Vec<String> = texts(&bob.messages("@alice", 100).unwrap())
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(shown, ["first", "after"]);
}

/// A commit the server stored whose answer was lost, then its retry refused as late (409) with
/// an answer that is not the server's own (a proxy's, or garbled): the refusal of the retry
/// says nothing of the first post, so the commit stays pending and is merged when it comes
/// back. (Found by the stateful fuzz, seed 1796548093978649360: the commit was dropped, came
/// back as "created by this client but does not match the pending commit", and the device
/// stayed behind for good.)
#[tokio::test]
async fn a_stored_commit_whose_retry_gets_a_foreign_refusal_stays_pending() {
    let server = TestServer::start().await;
    let people = People::new();
    let (mut alice, mut bob, mitm) = crew_through(&people, &server).await;
    let garble_commits = |path: &str, body: Vec<u8>| {
        if path.ends_with("/commits") {
            b"\x00".to_vec()
        } else {
            body
        }
    };
    // The leaf renewal before "first" is stored; its answer is lost.
    mitm.rewrite("/v1/groups/", garble_commits);
    assert!(alice.send("#crew", "first").await.is_err());
    // Alice's syncs are held back (the group's log left out), so she does not see it come
    // back; the retry is refused as late, and that answer is garbled too.
    mitm.rewrite_sync(|ds| ds.retain(|d| d.kind != sealpost_proto::DeliveryKind::Group));
    assert!(alice.send("#crew", "second").await.is_err());
    mitm.clear();
    alice.send("#crew", "third").await.unwrap();
    let got = bob.sync().await.unwrap();
    assert!(
        texts(&got).contains(&("@alice".to_owned(), "third".to_owned())),
        "{got:?}"
    );
    all_readable(&alice);
    all_readable(&bob);
    assert_eq!(alice.epoch("#crew").unwrap(), bob.epoch("#crew").unwrap());
}
