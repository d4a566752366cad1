//! Two `sealpost server` processes share the machine's PostgreSQL and NATS behind a small
//! TCP load balancer. One node is killed with SIGKILL in the middle of a stream of sends: the
//! clients carry on through the other node, and every message the server acknowledged reaches
//! the recipient's application exactly once, in order. Skipped unless
//! `SEALPOST_TEST_DATABASE_URL` is set (CI sets it).
//!
//! The second test runs its own PostgreSQL and NATS (the machine's are shared with other tests)
//! and puts two nodes through every fault of the kind an operator sees, while a live subscriber
//! reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{Front, Node, OwnNats, OwnPostgres};
use sealpost_sdk::{Client, Connection, Event, EventId, Live, Subscription};
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen within seconds, before it fails
/// instead of hanging. Not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// What Alice's history says she sent Bob, once every send of hers is settled (by a sync).
async fn sent_to_bob(alice: &mut Client) -> Vec<String> {
    alice.sync().await.unwrap();
    alice
        .messages("@bob", 10_000)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            Event::Message {
                text,
                failed,
                unconfirmed,
                ..
            } => {
                assert!(!unconfirmed, "{text} settled");
                failed.is_none().then_some(text)
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_loses_no_acknowledged_message() {
    let Ok(base) = std::env::var("SEALPOST_TEST_DATABASE_URL") else {
        eprintln!("SEALPOST_TEST_DATABASE_URL is not set: skipping");
        return;
    };
    let nats =
        std::env::var("SEALPOST_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let database = sealpost_server::storage::postgres::scratch_schema(&base)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The first node creates the directory key; the second uses the same data directory, so
    // the same key.
    let args = ["--database", &database, "--nats", &nats];
    let mut first = Node::start(&dir.path().join("server"), &args);
    let second = Node::start(&dir.path().join("server"), &args);
    let front = Front::start(vec![first.addr, second.addr]).await.url();

    let mut alice = Client::register(&dir.path().join("alice"), &front, "alice", None)
        .await
        .unwrap();
    let bob_home = dir.path().join("bob");
    drop(
        Client::register(&bob_home, &front, "bob", None)
            .await
            .unwrap(),
    );

    // Alice streams messages; the first node dies after the 60th acknowledgement. Sends that
    // fail are not sent again by hand: a send whose answer was lost stays in Alice's outbox and
    // is posted again, as the same ciphertext, by her next send.
    let total = 200;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (progress, mut seen) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let sender = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut failures = 0;
            for i in 0..total {
                let text = format!("m{i:04}");
                match alice.send("@bob", &text).await {
                    Ok(_) => {
                        let mut acked = acked.lock().unwrap();
                        acked.push(text);
                        let _ = progress.send(acked.len());
                    }
                    Err(_) => failures += 1,
                }
            }
            (failures, alice)
        })
    };
    while let Some(n) = seen.recv().await {
        if n >= 60 {
            break;
        }
    }
    first.kill();
    let (failures, mut alice) = tokio::time::timeout(Duration::from_secs(120), sender)
        .await
        .unwrap()
        .unwrap();
    // Whatever is still unconfirmed is settled now, and Alice's history says what was sent.
    let confirmed = sent_to_bob(&mut alice).await;
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= total - 5,
        "the stream carried on through the other node: {} acknowledged, {failures} failed",
        acked.len()
    );

    // Bob catches up through whichever node is alive.
    let mut bob = Client::open(&bob_home, None).unwrap();
    loop {
        if bob.sync().await.unwrap().is_empty() {
            break;
        }
    }
    let history: Vec<String> = bob
        .messages("@alice", 10_000)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            Event::Message { text, .. } => Some(text),
            _ => None,
        })
        .collect();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for t in &history {
        *count.entry(t.as_str()).or_default() += 1;
    }
    for t in &acked {
        assert_eq!(count.get(t.as_str()), Some(&1), "{t} delivered once");
    }
    assert!(count.values().all(|n| *n == 1), "nothing twice");
    assert_eq!(
        history, confirmed,
        "Bob has exactly what Alice's history says was sent, including sends whose answer was lost"
    );
    eprintln!(
        "{} sent, {} acknowledged, {failures} failed when the node died, {} delivered",
        total,
        acked.len(),
        history.len()
    );
    let mut sorted = history.clone();
    sorted.sort();
    assert_eq!(history, sorted, "in the order sent");
}

/// The fault the next round of [`faults_on_two_nodes_lose_nothing_and_show_nothing_twice`] puts
/// the cluster through.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// NATS hangs (SIGSTOP), its connections open.
    PauseNats,
    /// NATS is killed and started again: every node closes its push connections.
    KillNats,
    /// PostgreSQL goes down (every connection cut) and comes back.
    RestartPostgres,
    /// Both at once: the catch-up that follows NATS's return meets a database that is down.
    PostgresDownWhileNatsRestarts,
    /// A node is killed (SIGKILL) and started again.
    KillNode(usize),
}

/// Texts from Alice that `sub` shows, up to and including `until`.
async fn read_until(sub: &mut Subscription, seen: &mut Vec<(EventId, String)>, until: &str) {
    loop {
        let event = tokio::time::timeout(HANG_GUARD, sub.next())
            .await
            .unwrap_or_else(|_| panic!("{until:?} did not arrive"))
            .unwrap();
        if let Event::Message { from, text, .. } = event.event
            && from == "@alice"
        {
            let done = text == until;
            seen.push((event.event_id, text));
            if done {
                return;
            }
        }
    }
}

/// Sends `text`; if the send does not go through (the cluster is still coming back), it is in
/// Alice's outbox or refused, and the next attempt settles it first. Gives up after `tries`.
async fn send_through(alice: &mut Client, text: &str, tries: usize) -> bool {
    for _ in 0..tries {
        match alice.send("@bob", text).await {
            Ok(_) => return true,
            Err(sealpost_sdk::Error::Unconfirmed { .. }) => {
                // Kept: the next sync settles it.
                if alice.sync().await.is_ok() {
                    return true;
                }
            }
            Err(_) => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_two_nodes_lose_nothing_and_show_nothing_twice() {
    if std::env::var("SEALPOST_TEST_DATABASE_URL").is_err() {
        eprintln!("SEALPOST_TEST_DATABASE_URL is not set: skipping");
        return;
    }
    let Some(pg) = OwnPostgres::start() else {
        return;
    };
    let Some(mut nats) = OwnNats::start() else {
        return;
    };
    let database = sealpost_server::storage::postgres::scratch_schema(&pg.url())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let nats_url = nats.url();
    let args = ["--database", database.as_str(), "--nats", nats_url.as_str()];
    let data = dir.path().join("server");
    let mut nodes = [Node::start(&data, &args), Node::start(&data, &args)];
    let front = Front::start(nodes.iter().map(|n| n.addr).collect()).await;
    let url = front.url();

    let mut alice = Client::register(&dir.path().join("alice"), &url, "alice", None)
        .await
        .unwrap();
    let bob = Client::register(&dir.path().join("bob"), &url, "bob", None)
        .await
        .unwrap();
    alice.send("@bob", "hello").await.unwrap();

    // Bob is a live client: it keeps its push connection through the faults, and a
    // subscription reads its event log.
    let live = Live::new(bob).unwrap();
    let shutdown = CancellationToken::new();
    let runner = {
        let (live, shutdown) = (live.clone(), shutdown.clone());
        tokio::spawn(async move { live.run(shutdown).await })
    };
    let disconnected = {
        let mut connection = live.connection();
        tokio::spawn(async move {
            let mut times = 0;
            while connection.changed().await.is_ok() {
                if matches!(*connection.borrow(), Connection::Disconnected { .. }) {
                    times += 1;
                }
            }
            times
        })
    };
    let mut sub = live.subscribe(EventId::START);
    let mut seen = Vec::new();
    read_until(&mut sub, &mut seen, "hello").await;

    let faults = [
        Fault::PauseNats,
        Fault::KillNats,
        Fault::RestartPostgres,
        Fault::PostgresDownWhileNatsRestarts,
        Fault::KillNode(0),
        Fault::KillNode(1),
    ];
    for (round, fault) in faults.into_iter().enumerate() {
        // Texts before, during and after the fault; a send that fails is not sent again by
        // hand (whatever it left in the outbox is settled by the next one).
        for i in 0..3 {
            let _ = alice.send("@bob", &format!("r{round} before {i}")).await;
        }
        match fault {
            Fault::PauseNats => nats.pause(true),
            Fault::KillNats => nats.kill(),
            Fault::RestartPostgres => pg.stop(),
            Fault::PostgresDownWhileNatsRestarts => {
                pg.stop();
                nats.kill();
                nats.restart().unwrap();
                // Bob's node closes his push connection once NATS is back; his catch-up then
                // meets the database down, and he keeps trying.
                let mut connection = live.connection();
                let storage_down = connection.wait_for(|c| {
                    matches!(c, Connection::Disconnected { reason, .. } if reason.contains("storage"))
                });
                tokio::time::timeout(HANG_GUARD, storage_down)
                    .await
                    .expect("the catch-up met the database down")
                    .unwrap();
            }
            Fault::KillNode(n) => nodes[n].kill(),
        }
        for i in 0..3 {
            if let Err(e) = alice.send("@bob", &format!("r{round} during {i}")).await {
                eprintln!("{fault:?}: a send failed: {e}");
            }
        }
        match fault {
            Fault::PauseNats => nats.pause(false),
            Fault::KillNats => nats.restart().unwrap(),
            Fault::RestartPostgres | Fault::PostgresDownWhileNatsRestarts => pg.start_again(),
            Fault::KillNode(n) => {
                nodes[n] = Node::start(&data, &args);
                front.point_to(nodes.iter().map(|n| n.addr).collect());
            }
        }
        // After each fault the subscriber is back and gets the next text.
        let marker = format!("r{round} after {fault:?}");
        assert!(
            send_through(&mut alice, &marker, 20).await,
            "{fault:?}: Alice could not send again"
        );
        read_until(&mut sub, &mut seen, &marker).await;
    }
    shutdown.cancel();
    tokio::time::timeout(HANG_GUARD, runner)
        .await
        .unwrap()
        .unwrap();
    // The watch ends with the last handle to the live client.
    drop((sub, live));
    let disconnections = tokio::time::timeout(HANG_GUARD, disconnected)
        .await
        .unwrap()
        .unwrap();

    // Everything Alice's history says was sent reached Bob's subscriber once, in order; nothing
    // else did.
    let sent = sent_to_bob(&mut alice).await;
    let ids: Vec<EventId> = seen.iter().map(|(id, _)| *id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "each event once, in order"
    );
    let shown: Vec<String> = seen.into_iter().map(|(_, t)| t).collect();
    assert_eq!(shown, sent);
    assert!(
        disconnections >= 1,
        "killing the node that held the push connection was shown as a disconnection"
    );
    eprintln!(
        "{} texts through {} faults, {disconnections} disconnection(s) shown",
        shown.len(),
        faults.len()
    );
}
