//! A real server on an ephemeral loopback port with a temporary SQLite store.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers"
)]

pub mod profile;
pub mod stateful;

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
    /// What `/metrics` says now.
    pub async fn metrics(&self) -> String {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

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
        .as_str()
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
    /// `(method, path prefix, bytes, times)`: the server gets only the first bytes of the body
    /// (as if the connection broke there), and the client a 502 from "a proxy"; `times` counts
    /// down the requests still to cut.
    cuts: Vec<Cut>,
    /// The same for answers: the client gets the server's answer, headers and all, but its body
    /// breaks off after the first bytes.
    answer_cuts: Vec<Cut>,
}

type Cut = (String, String, usize, Arc<std::sync::atomic::AtomicUsize>);

fn cut_rule(method: &str, prefix: &str, keep: usize, times: usize) -> Cut {
    (
        method.to_owned(),
        prefix.to_owned(),
        keep,
        Arc::new(std::sync::atomic::AtomicUsize::new(times)),
    )
}

/// Whether a request is the next of `cuts` to cut: after how many bytes.
fn next_cut(cuts: &[Cut], method: &str, path: &str) -> Option<usize> {
    cuts.iter().find_map(|(m, prefix, keep, times)| {
        let take = m == method
            && path.starts_with(prefix.as_str())
            && times
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok();
        take.then_some(*keep)
    })
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

    /// Cuts the body of the next `times` `method` requests under `prefix` after `keep` bytes
    /// (see `Rules::cuts`).
    pub fn cut(&self, method: &str, prefix: &str, keep: usize, times: usize) {
        let rule = cut_rule(method, prefix, keep, times);
        self.rules.lock().unwrap().cuts.push(rule);
    }

    /// Breaks off the answers to the next `times` `method` requests under `prefix` after
    /// `keep` bytes of their body (see `Rules::answer_cuts`).
    pub fn cut_answer(&self, method: &str, prefix: &str, keep: usize, times: usize) {
        let rule = cut_rule(method, prefix, keep, times);
        self.rules.lock().unwrap().answer_cuts.push(rule);
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
    let cut = next_cut(&rules.cuts, &method_name, &path);
    let sent = cut.map_or(&body[..], |keep| &body[..keep.min(body.len())]);
    let mut out = http
        .request(method, format!("{base}{path}"))
        .body(sent.to_vec());
    for (name, v) in &headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "transfer-encoding"
        ) {
            out = out.header(name, v);
        }
    }
    let answer = out.send().await.unwrap();
    if cut.is_some() {
        note(502);
        return (axum::http::StatusCode::BAD_GATEWAY, "cut").into_response();
    }
    let status = answer.status().as_u16();
    note(status);
    let answer_headers = answer.headers().clone();
    let mut bytes = answer.bytes().await.unwrap().to_vec();
    for (prefix, f) in &rules.rewrites {
        if path.starts_with(prefix.as_str()) {
            bytes = f(&path, bytes);
        }
    }
    let status = axum::http::StatusCode::from_u16(status).unwrap();
    if let Some(keep) = next_cut(&rules.answer_cuts, &method_name, &path) {
        // The headers promise the whole body; the connection breaks after `keep` bytes.
        bytes.truncate(keep);
        let broken: [Result<Vec<u8>, std::io::Error>; 2] =
            [Ok(bytes), Err(std::io::Error::other("cut"))];
        let mut response = axum::response::Response::new(axum::body::Body::from_stream(
            futures_util::stream::iter(broken),
        ));
        *response.status_mut() = status;
        for (name, v) in &answer_headers {
            response.headers_mut().insert(name, v.clone());
        }
        return response;
    }
    let mut response = (status, bytes).into_response();
    for (name, v) in &answer_headers {
        if !matches!(name.as_str(), "content-length" | "transfer-encoding") {
            response.headers_mut().insert(name, v.clone());
        }
    }
    response
}

/// Where generated test input comes from: a seeded generator ([`Rng`]) or a fuzzer's bytes
/// ([`Tape`]).
pub trait Draw {
    fn next(&mut self) -> u64;

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// One of `items` (not empty).
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// splitmix64: test input generation only, reproducible from the printed seed.
pub struct Rng(pub u64);

impl Draw for Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A fuzzer's input read as a sequence of draws, two bytes each, so that a change to the input
/// changes a choice or two and not all of them (what lets a coverage-guided fuzzer build on
/// what it found); once the bytes run out, a generator seeded from all of them goes on.
pub struct Tape<'a> {
    data: &'a [u8],
    rest: Rng,
}

impl<'a> Tape<'a> {
    pub fn new(data: &'a [u8]) -> Tape<'a> {
        let seed = data.iter().fold(data.len() as u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        Tape {
            data,
            rest: Rng(seed),
        }
    }
}

impl Draw for Tape<'_> {
    fn next(&mut self) -> u64 {
        match self.data {
            [a, b, rest @ ..] => {
                self.data = rest;
                u64::from(u16::from_le_bytes([*a, *b]))
            }
            _ => self.rest.next(),
        }
    }
}

/// One mangled copy of a message from `material` (bit flips, overwritten bytes, cuts, growth,
/// a stretch of another message spliced in, length fields set high, a repeated tail), never
/// equal to any of them.
pub fn mangle(rng: &mut impl Draw, material: &[Vec<u8>]) -> Vec<u8> {
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

/// Everything the server holds for `member`: its Welcomes and the whole log of `group`.
pub async fn logged(
    server: &TestServer,
    member: &Client,
    group: sealpost_proto::GroupId,
) -> Vec<Vec<u8>> {
    server
        .store
        .fetch(
            member.whoami().device,
            sealpost_server::storage::FetchRequest {
                inbox_after: Some(0),
                groups: vec![(group, 0)],
                limit: 1000,
            },
        )
        .await
        .unwrap()
        .deliveries
        .into_iter()
        .map(|d| d.payload.as_slice().to_vec())
        .collect()
}

/// A conversation of Alice's with Bob, for fuzzing Bob's receive path with a real group state.
pub struct BusyRoom {
    /// `#name`.
    pub room: String,
    /// What the server holds for Bob: the Welcome, texts of this and earlier epochs, commits
    /// that add and remove members, all taken by Bob; and last `fresh`.
    pub material: Vec<Vec<u8>>,
    /// A text of the current epoch Bob has not been handed yet ("untouched").
    pub fresh: Vec<u8>,
    /// Bob's epoch and roster once he took the rest.
    pub epoch: u64,
    pub members: Vec<sealpost_sdk::MemberInfo>,
}

/// Makes `#name` in `suite` with a log that has a bit of everything (see [`BusyRoom`]).
pub async fn busy_room(
    server: &TestServer,
    [alice, bob, carol]: [&mut Client; 3],
    name: &str,
    suite: sealpost_sdk::Suite,
) -> BusyRoom {
    let room = format!("#{name}");
    alice.create_group(name, &[u("bob")], suite).await.unwrap();
    alice.send(&room, "first").await.unwrap();
    alice.add_members(&room, &[u("carol")]).await.unwrap();
    carol.sync().await.unwrap();
    carol.send(&room, "from carol").await.unwrap();
    alice.sync().await.unwrap();
    alice.remove_members(&room, &[u("carol")]).await.unwrap();
    alice.send(&room, "second").await.unwrap();
    bob.sync().await.unwrap();
    alice.send(&room, "untouched").await.unwrap();
    let material = logged(server, bob, group_of(bob, &room)).await;
    BusyRoom {
        fresh: material.last().unwrap().clone(),
        material,
        epoch: bob.epoch(&room).unwrap(),
        members: bob.members(&room).unwrap(),
        room,
    }
}

/// What a receive path may show for what no member sent (a mangled delivery): unreadable
/// items, gaps and fork alerts, nothing else. `Ok` with the number of fork alerts.
pub fn nothing_shown(events: &[sealpost_sdk::Event]) -> Result<usize, String> {
    use sealpost_sdk::{Event, SecurityAlert};
    let mut alerted = 0;
    for e in events {
        match e {
            Event::Undecryptable { .. } | Event::Gap { .. } => {}
            Event::Security {
                alert: SecurityAlert::Fork,
                ..
            } => alerted += 1,
            other => return Err(format!("showed {other:?}")),
        }
    }
    Ok(alerted)
}

/// Real WebSocket send frames of `client`'s: four texts into each conversation of `targets`,
/// encrypted (its ratchet moves on) but not sent. A send frame is an 8-byte id, the 16-byte
/// group id, then the MLS message.
pub async fn send_frames(client: &mut Client, targets: [&str; 2]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for target in targets {
        let batch = client.bench_prepare(target, 4, "material").await.unwrap();
        let group: sealpost_proto::GroupId = batch.group.parse().unwrap();
        for (i, m) in batch.messages.iter().enumerate() {
            let mut frame = (i as u64).to_be_bytes().to_vec();
            frame.extend_from_slice(group.as_bytes());
            frame.extend_from_slice(m);
            frames.push(frame);
        }
    }
    frames
}

/// A guard against hanging on a WebSocket, not a timing assertion.
const WS_GUARD: std::time::Duration = std::time::Duration::from_secs(30);

/// The next text frame (an answer to a send), past pushes and pings; `None` once the
/// connection is closed.
pub async fn next_text<S>(ws: &mut S, guard: std::time::Duration) -> Option<String>
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(guard, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => return Some(t.as_str().to_owned()),
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// A signed-in WebSocket on which a test sends raw send frames, one at a time.
pub struct FrameSocket(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

impl FrameSocket {
    /// Connects to the server at `url` with the session `token` and waits until subscribed.
    pub async fn open(url: &str, token: &str) -> FrameSocket {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut req = format!("{}/v1/ws", url.replacen("http", "ws", 1))
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(
            next_text(&mut ws, WS_GUARD).await.as_deref(),
            Some("subscribed")
        );
        FrameSocket(ws)
    }

    /// Sends `frame` and reads its answer: `Ok(true)` if it was taken (a sequence number),
    /// `Ok(false)` if refused with a clear error, `Err` for anything else (the connection
    /// closed, an answer that is not JSON, an internal or unavailable error).
    pub async fn send(&mut self, frame: Vec<u8>) -> Result<bool, String> {
        use futures_util::SinkExt as _;
        self.0
            .send(tokio_tungstenite::tungstenite::Message::Binary(
                frame.into(),
            ))
            .await
            .map_err(|e| format!("the frame was not sent: {e}"))?;
        let answer = next_text(&mut self.0, WS_GUARD)
            .await
            .ok_or("the server closed the connection")?;
        let v: serde_json::Value =
            serde_json::from_str(&answer).map_err(|_| format!("not JSON: {answer:?}"))?;
        if v.get("seq").is_some() {
            return Ok(true);
        }
        let code = v["error"]["code"].as_str().unwrap_or_default();
        if code.is_empty() || code == "internal" || code == "unavailable" {
            return Err(format!("answered {v}"));
        }
        Ok(false)
    }
}

/// A runtime for what is not a `#[tokio::test]` (the fuzz targets in `fuzz/`).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// For the fuzz targets: runs `f` on the world (a server, clients, a runtime) that `make` made
/// for the first input and that is kept for the rest of the process.
pub fn in_world<W: 'static>(make: impl FnOnce() -> W, f: impl FnOnce(&mut W)) {
    thread_local! {
        static WORLD: std::cell::RefCell<Option<Box<dyn std::any::Any>>> =
            const { std::cell::RefCell::new(None) };
    }
    WORLD.with(|w| {
        let mut w = w.borrow_mut();
        let world = w.get_or_insert_with(|| Box::new(make()));
        f(world.downcast_mut::<W>().unwrap());
    });
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

/// The value of one series (`name` or `name{labels}`) in a `/metrics` text, if it is there.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
