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

use std::collections::HashMap;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sealpost_sdk::{Client, Event};

/// A `sealpost server` process.
struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Node {
    fn start(data: &Path, database: &str, nats: &str) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sealpost"))
            .args(["server", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(["--database", database, "--nats", nats])
            .env("SEALPOST_DIRECTORY_INTERVAL_MS", "5")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Readiness: the server prints its address once it listens.
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().unwrap().unwrap();
        let addr = line
            .rsplit("http://")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::thread::spawn(move || lines.for_each(drop));
        Node { child, addr }
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A load balancer: each new connection goes to the first node that accepts it.
async fn balancer(nodes: Vec<SocketAddr>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let nodes = nodes.clone();
            tokio::spawn(async move {
                for node in nodes {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(node).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    addr
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
    let mut first = Node::start(&dir.path().join("server"), &database, &nats);
    let second = Node::start(&dir.path().join("server"), &database, &nats);
    let front = format!("http://{}", balancer(vec![first.addr, second.addr]).await);

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
    // fail are not retried: only what the server acknowledged is promised.
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
            failures
        })
    };
    while let Some(n) = seen.recv().await {
        if n >= 60 {
            break;
        }
    }
    first.kill();
    let failures = tokio::time::timeout(Duration::from_secs(120), sender)
        .await
        .unwrap()
        .unwrap();
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
