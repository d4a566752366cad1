//! A real server on an ephemeral loopback port with a temporary SQLite store.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers"
)]

use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use sealpost_sdk::Client;
use sealpost_server::Settings;
use sealpost_server::directory::KeyDirectory;
use sealpost_server::storage::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct TestServer {
    pub url: String,
    pub data: PathBuf,
    pub addr: std::net::SocketAddr,
    /// The server's store: tests use it to play a compromised server.
    pub store: Arc<dyn Store>,
    /// The server's key directory: likewise.
    pub directory: Arc<KeyDirectory>,
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

    pub async fn start_full(
        data: &Path,
        addr: &str,
        adjust: impl FnOnce(&mut Settings),
    ) -> TestServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut settings = Settings {
            data: data.to_owned(),
            listen: addr,
            directory_interval_ms: 5,
            ..Settings::default()
        };
        adjust(&mut settings);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let server = sealpost_server::Server::open(settings).await.unwrap();
        let store = server.store();
        let directory = server.directory();
        let task = tokio::spawn(async move { server.serve(listener, token).await.unwrap() });
        TestServer {
            url: format!("http://{addr}"),
            data: data.to_owned(),
            addr,
            store,
            directory,
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
        self.register_at(&server.url, name).await
    }

    /// Registers through any URL (e.g. an [`Interceptor`]'s).
    pub async fn register_at(&self, url: &str, name: &str) -> Client {
        Client::register(&self.home(name), url, name, None)
            .await
            .unwrap()
    }
}

/// The group behind `conversation` as `client` sees it.
pub fn group_of(client: &Client, conversation: &str) -> sealpost_proto::GroupId {
    client
        .conversations()
        .unwrap()
        .into_iter()
        .find(|c| c.conversation == conversation)
        .unwrap()
        .id
        .parse()
        .unwrap()
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

/// The security alerts among `events`, in order.
pub fn alerts(events: &[sealpost_sdk::Event]) -> Vec<sealpost_sdk::SecurityAlert> {
    events
        .iter()
        .filter_map(|e| match e {
            sealpost_sdk::Event::Security { alert, .. } => Some(*alert),
            _ => None,
        })
        .collect()
}

pub fn u(name: &str) -> sealpost_sdk::Username {
    sealpost_sdk::Username::new(name).unwrap()
}

/// What the interceptor does with the answers to requests whose path starts with a prefix.
type Rewrite = Arc<dyn Fn(&str, Vec<u8>) -> Vec<u8> + Send + Sync>;

/// An answer made up by the interceptor from the request body: `(status, JSON body)`.
type Answer = Arc<dyn Fn(&[u8]) -> (u16, Vec<u8>) + Send + Sync>;

#[derive(Clone, Default)]
struct Rules {
    /// `(path prefix, other upstream)`: such requests go to another server.
    routes: Vec<(String, String)>,
    /// `(path prefix, rewrite)`: the answer body is rewritten.
    rewrites: Vec<(String, Rewrite)>,
    /// `(method, path prefix, answer)`: answered here; the server never sees the request.
    answers: Vec<(String, String, Answer)>,
}

/// One request that went through the interceptor.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The request body's length.
    pub len: usize,
}

/// A man in the middle between a client and a server, for playing a malicious server: it can
/// send some requests to another server and rewrite any answer. HTTP only (no WebSocket).
pub struct Interceptor {
    pub url: String,
    rules: Arc<Mutex<Rules>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    shutdown: CancellationToken,
}

impl Interceptor {
    pub async fn start(upstream: &str) -> Interceptor {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rules = Arc::new(Mutex::new(Rules::default()));
        let shutdown = CancellationToken::new();
        let http = reqwest::Client::new();
        let upstream = upstream.to_owned();
        let shared = rules.clone();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let rules = shared.lock().unwrap().clone();
            let http = http.clone();
            let upstream = upstream.clone();
            let log = log.clone();
            async move { forward(http, &upstream, rules, req, &log).await }
        });
        let token = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
                .unwrap()
        });
        Interceptor {
            url: format!("http://{addr}"),
            rules,
            seen,
            shutdown,
        }
    }

    /// Answers `method` requests under `prefix` itself, from the request body.
    pub fn answer(
        &self,
        method: &str,
        prefix: &str,
        f: impl Fn(&[u8]) -> (u16, Vec<u8>) + Send + Sync + 'static,
    ) {
        let mut rules = self.rules.lock().unwrap();
        rules
            .answers
            .push((method.to_owned(), prefix.to_owned(), Arc::new(f)));
    }

    /// Rewrites the deliveries of every `/v1/sync` answer.
    pub fn rewrite_sync(
        &self,
        f: impl Fn(&mut Vec<sealpost_proto::Delivery>) + Send + Sync + 'static,
    ) {
        self.rewrite("/v1/sync", move |_, body| {
            let mut batch = sealpost_proto::SyncBatch::decode(&body).unwrap();
            f(&mut batch.deliveries);
            batch.encode().unwrap()
        });
    }

    /// The requests seen since the last call, oldest first.
    pub fn take_seen(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    /// Sends requests under `prefix` to `upstream` instead.
    pub fn route(&self, prefix: &str, upstream: &str) {
        let mut rules = self.rules.lock().unwrap();
        rules.routes.push((prefix.to_owned(), upstream.to_owned()));
    }

    /// Rewrites the answers to requests under `prefix`.
    pub fn rewrite(
        &self,
        prefix: &str,
        f: impl Fn(&str, Vec<u8>) -> Vec<u8> + Send + Sync + 'static,
    ) {
        let mut rules = self.rules.lock().unwrap();
        rules.rewrites.push((prefix.to_owned(), Arc::new(f)));
    }

    /// Back to an honest relay.
    pub fn clear(&self) {
        *self.rules.lock().unwrap() = Rules::default();
    }
}

impl Drop for Interceptor {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn forward(
    http: reqwest::Client,
    upstream: &str,
    rules: Rules,
    req: axum::extract::Request,
    seen: &Mutex<Vec<Seen>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let base = rules
        .routes
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix.as_str()))
        .map_or(upstream, |(_, other)| other.as_str());
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap();
    let method_name = method.to_string();
    let note = |status: u16| {
        seen.lock().unwrap().push(Seen {
            method: method_name.clone(),
            path: path.clone(),
            status,
            len: body.len(),
        });
    };
    if let Some((_, _, answer)) = rules
        .answers
        .iter()
        .find(|(m, prefix, _)| *m == method_name && path.starts_with(prefix.as_str()))
    {
        let (status, bytes) = answer(&body);
        note(status);
        let mut response =
            (axum::http::StatusCode::from_u16(status).unwrap(), bytes).into_response();
        response.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        return response;
    }
    let mut out = http
        .request(method, format!("{base}{path}"))
        .body(body.to_vec());
    for name in [
        axum::http::header::AUTHORIZATION,
        axum::http::header::CONTENT_TYPE,
    ] {
        if let Some(v) = headers.get(&name) {
            out = out.header(name, v);
        }
    }
    let answer = out.send().await.unwrap();
    let status = answer.status().as_u16();
    note(status);
    let content_type = answer
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let mut bytes = answer.bytes().await.unwrap().to_vec();
    for (prefix, f) in &rules.rewrites {
        if path.starts_with(prefix.as_str()) {
            bytes = f(&path, bytes);
        }
    }
    let mut response = (axum::http::StatusCode::from_u16(status).unwrap(), bytes).into_response();
    if let Some(ct) = content_type {
        response
            .headers_mut()
            .insert(axum::http::header::CONTENT_TYPE, ct.parse().unwrap());
    }
    response
}

/// splitmix64: test input generation only, reproducible from the printed seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// One of `items` (not empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// One mangled copy of a message from `material` (bit flips, overwritten bytes, cuts, growth,
/// a stretch of another message spliced in, length fields set high, a repeated tail), never
/// equal to any of them.
pub fn mangle(rng: &mut Rng, material: &[Vec<u8>]) -> Vec<u8> {
    loop {
        let mut m = material[rng.below(material.len())].clone();
        for _ in 0..1 + rng.below(4) {
            let len = m.len().max(1);
            match rng.below(7) {
                0 => {
                    let i = rng.below(len);
                    if let Some(b) = m.get_mut(i) {
                        *b ^= 1 << rng.below(8);
                    }
                }
                1 => {
                    let i = rng.below(len);
                    if let Some(b) = m.get_mut(i) {
                        *b = rng.next() as u8;
                    }
                }
                2 => m.truncate(rng.below(len)),
                3 => {
                    let at = rng.below(len).min(m.len());
                    let extra: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
                    m.splice(at..at, extra);
                }
                4 => {
                    // A stretch of another message in place of one of this one.
                    let other = &material[rng.below(material.len())];
                    let from = rng.below(other.len().max(1)).min(other.len());
                    let take = rng.below(other.len() - from + 1);
                    let at = rng.below(len).min(m.len());
                    let end = (at + rng.below(take + 1)).min(m.len());
                    m.splice(at..end, other[from..from + take].iter().copied());
                }
                5 => {
                    // A length field (or anything) set to the largest one-byte or varint value.
                    let i = rng.below(len);
                    if let Some(b) = m.get_mut(i) {
                        *b = [0xff, 0x3f, 0x7f, 0xbf][rng.below(4)];
                    }
                }
                _ => {
                    // Everything after a point repeated.
                    let at = rng.below(len).min(m.len());
                    let tail = m[at..].to_vec();
                    m.extend(tail);
                }
            }
        }
        if !material.contains(&m) {
            return m;
        }
    }
}

/// The number in the environment variable `name`, or `default`.
pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed in the environment variable `name`, or a new one from the clock; printed, so that
/// a failing run can be replayed.
pub fn seed(name: &str) -> u64 {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let seed = setting(name, clock);
    println!("seed {seed} ({name}={seed} replays it)");
    seed
}
