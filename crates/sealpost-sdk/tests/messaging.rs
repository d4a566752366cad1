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

    alice.send("@bob", "hello bob").await.unwrap();
    let events = bob.sync().await.unwrap();
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
