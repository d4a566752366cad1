//! Two `sealpost server` processes share the machine's PostgreSQL and NATS behind a small
//! TCP load balancer. One node is killed with SIGKILL in the middle of a stream of sends: the
//! clients carry on through the other node, and every message the server acknowledged reaches
//! the recipient's application exactly once, in order. Skipped unless
//! `SEALPOST_TEST_DATABASE_URL` is set (CI sets it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Front, Node};
use sealpost_sdk::{Client, Event};

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
    alice.sync().await.unwrap();
    let confirmed: Vec<String> = alice
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
        .collect();
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
