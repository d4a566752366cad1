//! A real server on an ephemeral loopback port with a temporary SQLite store.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers"
)]

use std::path::{Path, PathBuf};

use sealpost_sdk::Client;
use sealpost_server::Settings;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct TestServer {
    pub url: String,
    pub data: PathBuf,
    pub addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("server");
        let mut s = Self::start_at(&data, "127.0.0.1:0").await;
        s._dir = Some(dir);
        s
    }

    /// Starts a server on `data`, listening on `addr`.
    pub async fn start_at(data: &Path, addr: &str) -> TestServer {
        Self::start_full(data, addr, |_| {}).await
    }

    /// Starts a server with adjusted settings on a temporary store.
    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Self::start_full(&dir.path().join("server"), "127.0.0.1:0", adjust).await;
        s._dir = Some(dir);
        s
    }

    async fn start_full(data: &Path, addr: &str, adjust: impl FnOnce(&mut Settings)) -> TestServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut settings = Settings {
            data: data.to_owned(),
            listen: addr,
            ..Settings::default()
        };
        adjust(&mut settings);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            sealpost_server::run(settings, listener, token)
                .await
                .unwrap()
        });
        TestServer {
            url: format!("http://{addr}"),
            data: data.to_owned(),
            addr,
            shutdown,
            task: Some(task),
            _dir: None,
        }
    }

    /// Stops the server and waits until it has stopped.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct People {
    pub dir: tempfile::TempDir,
}

impl People {
    pub fn new() -> People {
        People {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn home(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn register(&self, server: &TestServer, name: &str) -> Client {
        Client::register(&self.home(name), &server.url, name, None)
            .await
            .unwrap()
    }
}

pub fn texts(events: &[sealpost_sdk::Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            sealpost_sdk::Event::Message { from, text, .. } => Some((from.clone(), text.clone())),
            _ => None,
        })
        .collect()
}

pub fn u(name: &str) -> sealpost_sdk::Username {
    sealpost_sdk::Username::new(name).unwrap()
}
