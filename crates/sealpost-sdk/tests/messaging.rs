//! End-to-end messaging through a real server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use common::{People, TestServer, texts, u};
use sealpost_sdk::{Event, Suite};

#[tokio::test]
async fn one_to_one_both_ways() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;

    let sent = alice.send("@bob", "hello bob").await.unwrap();
    let events = bob.sync().await.unwrap();
    // Both ends derive the same MIMI message id: 0x01 (SHA-256) and 31 octets of the hash.
    let id = |e: &Event| match e {
        Event::Message { id, .. } => id.as_str().to_owned(),
        other => panic!("not a message: {other:?}"),
    };
    let received = events
        .iter()
        .find(|e| matches!(e, Event::Message { .. }))
        .unwrap();
    assert_eq!(id(&sent), id(received));
    assert!(
        id(&sent).starts_with("01") && id(&sent).len() == 64,
        "{sent:?}"
    );
    assert!(events.iter().any(|e| matches!(e, Event::Joined { conversation, by } if conversation == "@alice" && by == "@alice")), "{events:?}");
    assert_eq!(
        texts(&events),
        vec![("@alice".to_string(), "hello bob".to_string())]
    );

    bob.send("@alice", "hi alice").await.unwrap();
    let events = alice.sync().await.unwrap();
    assert_eq!(
        texts(&events),
        vec![("@bob".to_string(), "hi alice".to_string())]
    );

    // Both see the same history, oldest first; nothing twice.
    let a = texts(&alice.messages("@bob", 100).unwrap());
    let b = texts(&bob.messages("@alice", 100).unwrap());
    assert_eq!(a, b);
    assert_eq!(a.len(), 2);
    assert!(bob.sync().await.unwrap().is_empty());
}

#[tokio::test]
async fn group_add_remove_leave_on_both_suites() {
    for suite in [Suite::Classic, Suite::Pq] {
        let server = TestServer::start().await;
        let people = People::new();
        let names = ["ann", "ben", "cat", "dan", "eve"];
        let mut c = Vec::new();
        for n in names {
            c.push(people.register(&server, n).await);
        }
        let info = c[0]
            .create_group("team", &[u("ben"), u("cat"), u("dan"), u("eve")], suite)
            .await
            .unwrap();
        assert_eq!(info.conversation, "#team");
        assert_eq!(info.members, 5);
        assert_eq!(info.ciphersuite, suite);

        c[0].send("#team", "welcome all").await.unwrap();
        for client in c.iter_mut().skip(1) {
            let events = client.sync().await.unwrap();
            assert_eq!(
                texts(&events),
                vec![("@ann".into(), "welcome all".into())],
                "{suite:?}"
            );
            assert_eq!(client.members("#team").unwrap().len(), 5);
        }

        // Remove eve: she sees her removal and cannot read what follows.
        c[0].remove_members("#team", &[u("eve")]).await.unwrap();
        let events = c[4].sync().await.unwrap();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Removed { by, .. } if by == "@ann")),
            "{events:?}"
        );
        c[1].send("#team", "after eve left").await.unwrap();
        let events = c[4].sync().await.unwrap();
        assert!(
            texts(&events).is_empty(),
            "a removed member reads nothing: {events:?}"
        );
        assert!(c[4].send("#team", "still here?").await.is_err());

        // Dan leaves: another member commits his removal; he is out.
        c[3].sync().await.unwrap();
        c[3].leave("#team").await.unwrap();
        for client in c.iter_mut().take(3) {
            client.sync().await.unwrap();
        }
        c[2].send("#team", "dan is gone").await.unwrap();
        let events = c[3].sync().await.unwrap();
        assert!(
            !texts(&events).iter().any(|(_, t)| t == "dan is gone"),
            "{events:?}"
        );
        for client in c.iter_mut().take(3) {
            client.sync().await.unwrap();
            assert_eq!(client.members("#team").unwrap().len(), 3, "{suite:?}");
        }
        let history = texts(&c[1].messages("#team", 100).unwrap());
        assert_eq!(
            history.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
            vec!["welcome all", "after eve left", "dan is gone"]
        );
    }
}

/// Ann and Ben in `#crew`, both caught up.
async fn crew(
    people: &People,
    server: &TestServer,
) -> (sealpost_sdk::Client, sealpost_sdk::Client) {
    let mut ann = people.register(server, "ann").await;
    let mut ben = people.register(server, "ben").await;
    ann.create_group("crew", &[u("ben")], Suite::Classic)
        .await
        .unwrap();
    ben.sync().await.unwrap();
    (ann, ben)
}

#[tokio::test]
async fn a_removed_member_added_again_rejoins_and_reads_what_follows() {
    let server = TestServer::start().await;
    let people = People::new();
    let (mut ann, mut ben) = crew(&people, &server).await;
    ann.remove_members("#crew", &[u("ben")]).await.unwrap();
    ben.sync().await.unwrap();
    ann.send("#crew", "while ben is out").await.unwrap();
    ann.add_members("#crew", &[u("ben")]).await.unwrap();
    let events = ben.sync().await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Joined { conversation, .. } if conversation == "#crew")),
        "{events:?}"
    );
    assert!(
        texts(&events).is_empty(),
        "nothing from while he was out: {events:?}"
    );
    assert_eq!(ben.epoch("#crew").unwrap(), ann.epoch("#crew").unwrap());
    assert_eq!(ben.members("#crew").unwrap().len(), 2);
    ann.send("#crew", "welcome back").await.unwrap();
    assert_eq!(
        texts(&ben.sync().await.unwrap()),
        vec![("@ann".to_string(), "welcome back".to_string())]
    );
    ben.send("#crew", "glad to be back").await.unwrap();
    assert_eq!(
        texts(&ann.sync().await.unwrap()),
        vec![("@ben".to_string(), "glad to be back".to_string())]
    );
}

/// Found by the stateful fuzz (`tests/stateful.rs`): Ben, offline, is removed and added back;
/// his one sync brings the removal (in the group's log) and the Welcome (in his inbox) at once.
/// He takes the removal first, then rejoins (before, the Welcome passed for a replay and he
/// never rejoined); and his next text follows his earlier ones (before, his numbering started
/// again and Ann showed it as late).
#[tokio::test]
async fn a_member_removed_and_added_again_while_offline_rejoins_and_stays_in_order() {
    let server = TestServer::start().await;
    let people = People::new();
    let (mut ann, mut ben) = crew(&people, &server).await;
    ben.send("#crew", "before").await.unwrap();
    ann.sync().await.unwrap();
    ann.remove_members("#crew", &[u("ben")]).await.unwrap();
    ann.send("#crew", "while ben is out").await.unwrap();
    ann.add_members("#crew", &[u("ben")]).await.unwrap();
    ann.send("#crew", "back").await.unwrap();

    let events = ben.sync().await.unwrap();
    let removed = events
        .iter()
        .position(|e| matches!(e, Event::Removed { .. }));
    let joined = events
        .iter()
        .position(|e| matches!(e, Event::Joined { conversation, .. } if conversation == "#crew"));
    assert!(
        matches!((removed, joined), (Some(r), Some(j)) if r < j),
        "{events:?}"
    );
    assert_eq!(
        texts(&events),
        vec![("@ann".to_string(), "back".to_string())]
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Undecryptable { .. } | Event::Security { .. })),
        "{events:?}"
    );
    assert_eq!(ben.epoch("#crew").unwrap(), ann.epoch("#crew").unwrap());

    ben.send("#crew", "after").await.unwrap();
    let got = ann.sync().await.unwrap();
    assert!(
        got.iter().any(|e| matches!(
            e,
            Event::Message { text, late: false, .. } if text == "after"
        )),
        "{got:?}"
    );
    assert!(
        !got.iter().any(|e| matches!(e, Event::Gap { .. })),
        "{got:?}"
    );
}

/// A member who names the group something no Sealpost client makes — a name that would print
/// as the start of another sender's line — is not followed: the group keeps its name, and the
/// others are told a name was refused. A valid new name is taken.
#[tokio::test]
async fn a_group_name_that_could_forge_a_line_is_not_taken() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    alice
        .create_group("club", &[u("bob")], sealpost_sdk::Suite::Classic)
        .await
        .unwrap();
    bob.sync().await.unwrap();
    let names = |c: &sealpost_sdk::Client| -> Vec<String> {
        c.conversations()
            .unwrap()
            .into_iter()
            .map(|c| c.conversation)
            .collect()
    };
    assert_eq!(names(&bob), ["#club"]);
    // (Alice's own name for it changes with each try: she names it by its id.)
    let id = alice.conversations().unwrap()[0].id.clone();
    for forged in [
        "x] @carol: the code is 4471",
        "club\n[@carol] @carol: hi",
        "club~0011",
        "@carol",
        "\u{1b}[2Jclub",
    ] {
        alice.rename_unchecked(id.as_str(), forged).await.unwrap();
        let events = bob.sync().await.unwrap();
        assert!(
            matches!(
                events.as_slice(),
                [sealpost_sdk::Event::Undecryptable { .. }]
            ),
            "{forged:?}: {events:?}"
        );
        assert_eq!(names(&bob), ["#club"], "{forged:?}");
    }
    alice
        .rename_unchecked(id.as_str(), "book-club")
        .await
        .unwrap();
    bob.sync().await.unwrap();
    assert_eq!(names(&bob), ["#book-club"]);
}

#[tokio::test]
async fn content_this_version_cannot_show_is_kept_and_shown_as_unsupported() {
    use sealpost_proto::mimi::{Content, Disposition, Extensions, NestedPart, Part};
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    alice.send("@bob", "first").await.unwrap();
    bob.sync().await.unwrap();

    // What a later version or another MIMI client might send: a media type this one does not
    // know, and an extension it does not know.
    let mut extensions = Extensions::default();
    extensions
        .insert(
            sealpost_proto::mimi::ExtensionKey::Text("future".into()),
            sealpost_proto::mimi::Value::Bool(true),
        )
        .unwrap();
    let content = Content {
        salt: [9; 16],
        replaces: None,
        topic_id: Vec::new(),
        expires: None,
        in_reply_to: None,
        extensions,
        body: NestedPart {
            disposition: Disposition::RENDER,
            language: String::new(),
            part: Part::Single {
                content_type: "application/x-hologram".into(),
                content: vec![0, 1, 2, 3],
            },
        },
    };
    alice
        .send_content_unchecked("@bob", content.clone())
        .await
        .unwrap();
    alice.send("@bob", "after").await.unwrap();

    let events = bob.sync().await.unwrap();
    let unsupported: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Unsupported { from, what, id, .. } => Some((from, what, id)),
            _ => None,
        })
        .collect();
    assert_eq!(unsupported.len(), 1, "{events:?}");
    let (from, what, id) = unsupported[0];
    assert_eq!(from, "@alice");
    assert_eq!(what, "content of type application/x-hologram");
    // Its id is the draft's, with Sealpost's URIs (docs/protocol.md).
    let room = bob.conversations().unwrap()[0].id.clone();
    let expected = content.id(
        "mimi://sealpost.invalid/u/alice",
        &format!("mimi://sealpost.invalid/r/{room}"),
    );
    assert_eq!(id.as_str(), hex::encode(expected));
    // Nothing else was lost, and no gap is reported for the unnumbered message.
    assert_eq!(texts(&events), vec![("@alice".into(), "after".into())]);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Gap { .. } | Event::Undecryptable { .. }))
    );
    // The history keeps it, in place.
    let history = bob.messages("@alice", 10).unwrap();
    let at = history
        .iter()
        .position(|e| matches!(e, Event::Unsupported { what, .. } if what.contains("hologram")))
        .unwrap_or_else(|| panic!("{history:?}"));
    assert!(matches!(&history[at - 1], Event::Message { text, .. } if text == "first"));
    assert!(matches!(&history[at + 1], Event::Message { text, .. } if text == "after"));
}
