//! mls-rs, a second MLS implementation, in a Sealpost conversation with Sealpost's own clients
//! (openmls), through a real server on an ephemeral port: a Welcome, application messages,
//! and commits (add, remove, self-update, a leave proposal committed by reference) in both
//! directions, every side ending in the same epoch.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use sealpost_interop::{Member, Seen};
use sealpost_proto::GroupId;
use sealpost_sdk::{Client, ClientSettings, Event, Suite, Username};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A real server on an ephemeral loopback port, with its SQLite store in a temporary directory.
struct Server {
    url: String,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = sealpost_server::Server::open(sealpost_server::Settings {
            data: dir.path().join("server"),
            listen: addr,
            directory_interval_ms: 5,
            ..sealpost_server::Settings::default()
        })
        .await
        .unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move { server.serve(listener, token).await.unwrap() });
        Server {
            url: format!("http://{addr}"),
            stop,
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn u(name: &str) -> Username {
    Username::new(name).unwrap()
}

fn texts(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { from, text, .. } => Some((from.clone(), text.clone())),
            _ => None,
        })
        .collect()
}

fn text(group: GroupId, from: &str, text: &str) -> Seen {
    Seen::Text {
        group,
        from: u(from),
        text: text.into(),
    }
}

/// No security alert, no message that failed to open: the openmls side took everything.
fn clean(events: &[Event]) {
    for e in events {
        assert!(
            !matches!(
                e,
                Event::Security { .. } | Event::Undecryptable { .. } | Event::Unsupported { .. }
            ),
            "{e:?}"
        );
    }
}

async fn sync(client: &mut Client) -> Vec<Event> {
    let events = client.sync().await.unwrap();
    clean(&events);
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mls_rs_interop_a_conversation_of_both_implementations() {
    let server = Server::start().await;
    let homes = tempfile::tempdir().unwrap();
    let mut alice = Client::register(&homes.path().join("alice"), &server.url, "alice", None)
        .await
        .unwrap();
    let mut carol = Client::register(&homes.path().join("carol"), &server.url, "carol", None)
        .await
        .unwrap();
    let mut dave = Client::register(&homes.path().join("dave"), &server.url, "dave", None)
        .await
        .unwrap();
    let mut bob = Member::register(&server.url, "bob").await.unwrap();

    // openmls creates the group and adds the mls-rs member; it joins from the Welcome (with the
    // ratchet tree in it) and reads the conversation's name.
    let info = alice
        .create_group("interop", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    let group: GroupId = info.id.as_str().parse().unwrap();
    let seen = bob.sync().await.unwrap();
    assert_eq!(seen.first(), Some(&Seen::Joined(group)), "{seen:?}");
    assert!(
        seen.iter()
            .any(|s| matches!(s, Seen::Other { media_type, .. }
            if media_type == "application/vnd.sealpost.conversation+cbor")),
        "{seen:?}"
    );
    assert_eq!(bob.epoch(group).unwrap(), alice.epoch("#interop").unwrap());
    assert_eq!(bob.members(group).unwrap(), [u("alice"), u("bob")]);

    // Application messages, both ways.
    alice.send("#interop", "hello from openmls").await.unwrap();
    let seen = bob.sync().await.unwrap();
    assert!(
        seen.contains(&text(group, "alice", "hello from openmls")),
        "{seen:?}"
    );
    bob.send(group, "hello from mls-rs").await.unwrap();
    let events = sync(&mut alice).await;
    assert_eq!(
        texts(&events),
        [("@bob".to_owned(), "hello from mls-rs".to_owned())]
    );

    // An mls-rs self-update, which openmls follows; then both talk in the new epoch.
    let before = bob.epoch(group).unwrap();
    bob.update(group).await.unwrap();
    let seen = bob.sync().await.unwrap();
    assert!(
        seen.iter()
            .any(|s| matches!(s, Seen::Commit { committer, .. } if *committer == u("bob"))),
        "{seen:?}"
    );
    assert_eq!(bob.epoch(group).unwrap(), before + 1);
    sync(&mut alice).await;
    assert_eq!(alice.epoch("#interop").unwrap(), before + 1);
    alice.send("#interop", "after your update").await.unwrap();
    let seen = bob.sync().await.unwrap();
    assert!(
        seen.contains(&text(group, "alice", "after your update")),
        "{seen:?}"
    );

    // An openmls self-update (the renewal before a send), which mls-rs follows.
    alice.set_settings(ClientSettings {
        self_update_after: std::time::Duration::ZERO,
        ..ClientSettings::default()
    });
    alice.send("#interop", "after my update").await.unwrap();
    let seen = bob.sync().await.unwrap();
    assert!(
        seen.iter()
            .any(|s| matches!(s, Seen::Commit { committer, .. } if *committer == u("alice"))),
        "{seen:?}"
    );
    assert!(
        seen.contains(&text(group, "alice", "after my update")),
        "{seen:?}"
    );
    alice.set_settings(ClientSettings::default());
    assert_eq!(bob.epoch(group).unwrap(), alice.epoch("#interop").unwrap());

    // mls-rs adds an openmls member, who joins from mls-rs's Welcome: openmls checks the new
    // leaf against the key directory on both openmls sides.
    bob.add(group, "carol", "interop").await.unwrap();
    let events = sync(&mut carol).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Joined { conversation, by } if conversation == "#interop" && by == "@bob")),
        "{events:?}"
    );
    let events = sync(&mut alice).await;
    assert!(
        events.iter().any(|e| matches!(e, Event::MemberAdded { member, by, .. } if member == "@carol" && by == "@bob")),
        "{events:?}"
    );
    carol.send("#interop", "hi, I am carol").await.unwrap();
    let seen = bob.sync().await.unwrap();
    assert!(
        seen.contains(&text(group, "carol", "hi, I am carol")),
        "{seen:?}"
    );
    assert_eq!(
        texts(&sync(&mut alice).await),
        [("@carol".to_owned(), "hi, I am carol".to_owned())]
    );

    // An openmls member leaves: its Remove proposal, committed by reference by another openmls
    // member; mls-rs keeps the proposal and takes the commit that refers to it.
    carol.leave("#interop").await.unwrap();
    sync(&mut alice).await;
    let seen = bob.sync().await.unwrap();
    assert!(
        seen.iter()
            .any(|s| matches!(s, Seen::Proposal { from, .. } if *from == u("carol"))),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| matches!(s, Seen::Commit { committer, removed, .. }
            if *committer == u("alice") && *removed == [u("carol")])),
        "{seen:?}"
    );
    assert_eq!(bob.members(group).unwrap(), [u("alice"), u("bob")]);

    // openmls adds an openmls member; then mls-rs removes it.
    alice.add_members("#interop", &[u("dave")]).await.unwrap();
    let seen = bob.sync().await.unwrap();
    assert!(
        seen.iter()
            .any(|s| matches!(s, Seen::Commit { committer, added, .. }
            if *committer == u("alice") && *added == [u("dave")])),
        "{seen:?}"
    );
    sync(&mut dave).await;
    dave.send("#interop", "dave here").await.unwrap();
    assert!(
        bob.sync()
            .await
            .unwrap()
            .contains(&text(group, "dave", "dave here"))
    );
    bob.remove(group, "dave").await.unwrap();
    bob.sync().await.unwrap();
    let events = sync(&mut dave).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Removed { by, .. } if by == "@bob")),
        "{events:?}"
    );
    let events = sync(&mut alice).await;
    assert!(
        events.iter().any(|e| matches!(e, Event::MemberRemoved { member, by, .. } if member == "@dave" && by == "@bob")),
        "{events:?}"
    );
    assert_eq!(bob.epoch(group).unwrap(), alice.epoch("#interop").unwrap());
    bob.send(group, "still here").await.unwrap();
    assert_eq!(
        texts(&sync(&mut alice).await),
        [("@bob".to_owned(), "still here".to_owned())]
    );

    // openmls removes the mls-rs member.
    alice.remove_members("#interop", &[u("bob")]).await.unwrap();
    let seen = bob.sync().await.unwrap();
    assert_eq!(seen, [Seen::Removed(group)]);
    assert!(bob.groups().is_empty());
}
