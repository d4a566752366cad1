//! A client killed (SIGKILL) in the middle of a sync, again and again, neither loses nor
//! duplicates a message: each delivery is committed locally in one transaction, and the server
//! is acknowledged only after that.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::process::{Command, Stdio};
use std::time::Duration;

use sealpost_sdk::{Client, Event};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_sync_neither_loses_nor_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = sealpost_server::Settings {
        listen: addr,
        data: dir.path().join("server"),
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(sealpost_server::run(settings, listener, shutdown.clone()));
    let url = format!("http://{addr}");

    let bob_home = dir.path().join("bob");
    drop(
        Client::register(&bob_home, &url, "bob", None)
            .await
            .unwrap(),
    );
    let mut alice = Client::register(&dir.path().join("alice"), &url, "alice", None)
        .await
        .unwrap();
    let total = 300;
    for i in 0..total {
        alice.send("@bob", &format!("m{i:04}")).await.unwrap();
    }

    // Kill bob's client at different points of its catch-up.
    let mut killed_early = 0;
    for round in 0..12u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sealpost"))
            .arg("--home")
            .arg(&bob_home)
            .arg("sync")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Fault injection, not a readiness wait: a different kill point each round.
        tokio::time::sleep(Duration::from_millis(15 + round * 25)).await;
        if child.try_wait().unwrap().is_none() {
            killed_early += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert!(
        killed_early > 0,
        "at least one sync was killed while running"
    );

    // A last, complete sync; then the history holds each message exactly once, in order.
    let out = Command::new(env!("CARGO_BIN_EXE_sealpost"))
        .arg("--home")
        .arg(&bob_home)
        .arg("sync")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bob = Client::open(&bob_home, None).unwrap();
    let texts: Vec<String> = bob
        .messages("@alice", 10_000)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            Event::Message { text, .. } => Some(text),
            _ => None,
        })
        .collect();
    let want: Vec<String> = (0..total).map(|i| format!("m{i:04}")).collect();
    assert_eq!(texts, want);
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
