//! `sealpost daemon`: the live client of one profile, served over JSON-RPC 2.0 on a Unix socket
//! (one JSON object per line, both ways; docs/jsonrpc.md). `sealpost listen` serves the same
//! socket while it runs. The socket's path is written to `daemon.json` in the profile, where
//! every other `sealpost` command looks for it when the profile is locked, and goes through the
//! daemon instead of failing.
//!
//! The socket is made in a directory only the user can enter (`$XDG_RUNTIME_DIR/sealpost`, or
//! the profile's own `run/`), and is itself mode 0600: other users on the machine cannot talk
//! to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use sealpost_sdk::{EventId, Live, LoggedEvent};

use crate::rpc::{self, RpcError};

/// Longest request line taken (a text is at most 1 MiB on the server; its JSON form fits).
const MAX_LINE: usize = 4 * 1024 * 1024;
/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// Lines queued for a connection's writer before the tasks producing them wait.
const QUEUE: usize = 256;

/// What `daemon.json` in the profile says.
#[derive(Debug, Serialize, Deserialize)]
pub struct DaemonFile {
    /// The socket.
    pub socket: PathBuf,
    /// The process serving it.
    pub pid: u32,
}

fn daemon_file(home: &Path) -> PathBuf {
    home.join("daemon.json")
}

/// The socket path used when none is given: in the user's runtime directory, named after the
/// profile (so that several profiles can each have a daemon).
pub fn default_socket(home: &Path) -> PathBuf {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    std::fs::canonicalize(home)
        .unwrap_or_else(|_| home.to_owned())
        .hash(&mut h);
    let name = format!("{:016x}.sock", h.finish());
    // The runtime directory when there is one (it must exist: the session made it, private to
    // the user); otherwise the profile's own `run/`.
    match std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
    {
        Some(dir) => dir.join("sealpost").join(name),
        None => home.join("run").join(name),
    }
}

/// A directory only this user can enter.
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", dir.display()))
}

/// What a process that holds a profile (`listen`, `chat`, `web`) runs beside its own work: the
/// live client's server connection, and the daemon's socket, so that other commands on the
/// profile go through it. Both run until [`shutdown`](Self::shutdown) is cancelled, which
/// SIGINT and SIGTERM do.
pub struct Held {
    /// Cancelled to stop.
    pub shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl Held {
    /// Starts both for `live`, the profile in `home`.
    pub fn start(home: &Path, live: &Live) -> Result<Held> {
        let shutdown = CancellationToken::new();
        let socket = Socket::bind(home, &default_socket(home))?;
        let signals = crate::cli::Signals::install()?;
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn({
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    _ = signals.cancel_on_first(shutdown.clone()) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        });
        tasks.spawn({
            let (live, shutdown) = (live.clone(), shutdown.clone());
            async move { live.run(shutdown).await }
        });
        tasks.spawn({
            let (live, shutdown) = (live.clone(), shutdown.clone());
            async move { socket.serve(live, shutdown).await }
        });
        Ok(Held { shutdown, tasks })
    }

    /// Stops both, and waits for them (the socket and `daemon.json` are gone after).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The Unix socket of a daemon, bound and announced in the profile; removed again on drop.
pub struct Socket {
    listener: UnixListener,
    path: PathBuf,
    home: PathBuf,
}

impl Socket {
    /// Binds `path` (mode 0600, in a directory only the user can enter) and writes
    /// `daemon.json`. Call it while holding the profile: a socket left by a daemon that was
    /// killed is replaced.
    pub fn bind(home: &Path, path: &Path) -> Result<Socket> {
        use std::os::unix::fs::PermissionsExt as _;
        if let Some(dir) = path.parent() {
            private_dir(dir)?;
        }
        // Whoever made this file held the profile before us, and is gone.
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
        let file = DaemonFile {
            socket: path.to_owned(),
            pid: std::process::id(),
        };
        std::fs::write(daemon_file(home), serde_json::to_vec(&file)?)
            .context("cannot write daemon.json in the profile")?;
        Ok(Socket {
            listener,
            path: path.to_owned(),
            home: home.to_owned(),
        })
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until `shutdown`, then waits for them to finish.
    pub async fn serve(&self, live: Live, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = self.listener.accept() => a,
            };
            let Ok((stream, _)) = accepted else { continue };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Full: refused at once rather than left waiting.
                drop(stream);
                continue;
            };
            let (live, shutdown) = (live.clone(), shutdown.clone());
            tracker.spawn(async move {
                let (read, write) = stream.into_split();
                serve_connection(live, read, write, shutdown).await;
                drop(slot);
            });
        }
        tracker.close();
        tracker.wait().await;
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(daemon_file(&self.home));
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A request as it arrives.
#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    jsonrpc: Option<String>,
    /// Absent for a notification (no answer is sent).
    #[serde(default)]
    id: Option<Value>,
    method: String,
    #[serde(default)]
    params: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeParams {
    /// Resume after this event.
    #[serde(default)]
    after: Option<EventId>,
    /// Or: everything this consumer has not marked seen (with `events.seen`).
    #[serde(default)]
    consumer: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeParams {
    subscription: u64,
}

fn response(id: &Value, result: Result<Value, RpcError>) -> String {
    let v = match result {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err(error) => json!({ "jsonrpc": "2.0", "id": id, "error": error }),
    };
    v.to_string()
}

/// Reads one line of at most [`MAX_LINE`] bytes; `None` at the end of the stream.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<bool>> {
    use tokio::io::AsyncReadExt as _;
    buf.clear();
    let n = (&mut *reader)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE {
        // Too long: skip the rest of it.
        loop {
            buf.clear();
            let n = (&mut *reader)
                .take(MAX_LINE as u64)
                .read_until(b'\n', buf)
                .await?;
            if n == 0 || buf.ends_with(b"\n") {
                return Ok(Some(false));
            }
        }
    }
    Ok(Some(true))
}

/// One connection: requests are answered as they finish (several may run at once; each has
/// the client to itself while it runs), notifications for its subscriptions are sent as events
/// are appended.
async fn serve_connection<R, W>(live: Live, read: R, mut write: W, shutdown: CancellationToken)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
    let done = shutdown.child_token();
    let writer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if write.write_all(line.as_bytes()).await.is_err()
                || write.write_all(b"\n").await.is_err()
            {
                break;
            }
        }
    });
    let tasks = TaskTracker::new();
    let mut subscriptions: HashMap<u64, CancellationToken> = HashMap::new();
    let next_subscription = AtomicU64::new(1);
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        let got = tokio::select! {
            _ = done.cancelled() => break,
            got = read_line(&mut reader, &mut line) => got,
        };
        let fits = match got {
            Ok(Some(fits)) => fits,
            Ok(None) | Err(_) => break,
        };
        if !fits {
            let error = RpcError::params(format!("a request is longer than {MAX_LINE} bytes"));
            let _ = tx.send(response(&Value::Null, Err(error))).await;
            continue;
        }
        let request: Request = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                let error = RpcError {
                    code: -32700,
                    message: format!("not a JSON-RPC request: {e}"),
                    data: rpc::ErrorData {
                        kind: "parse".into(),
                        alert: None,
                    },
                };
                let _ = tx.send(response(&Value::Null, Err(error))).await;
                continue;
            }
        };
        if request.jsonrpc.as_deref() != Some("2.0") {
            let error = RpcError::params("\"jsonrpc\": \"2.0\" is missing");
            let _ = tx
                .send(response(&request.id.unwrap_or(Value::Null), Err(error)))
                .await;
            continue;
        }
        let id = request.id;
        match request.method.as_str() {
            "subscribe" => {
                let p: Result<SubscribeParams, _> = serde_json::from_value(match request.params {
                    Value::Null => json!({}),
                    v => v,
                });
                let result = p.map_err(RpcError::params).map(|p| {
                    let n = next_subscription.fetch_add(1, Ordering::Relaxed);
                    let stop = done.child_token();
                    subscriptions.insert(n, stop.clone());
                    let sub = match (&p.consumer, p.after) {
                        (Some(consumer), _) => live.subscribe_as(consumer),
                        (None, after) => live.subscribe(after.unwrap_or(EventId::START)),
                    };
                    tasks.spawn(stream_events(live.clone(), sub, n, tx.clone(), stop));
                    json!({ "subscription": n })
                });
                if let Some(id) = &id {
                    let _ = tx.send(response(id, result)).await;
                }
            }
            "unsubscribe" => {
                let p: Result<UnsubscribeParams, _> = serde_json::from_value(request.params);
                let result = p.map_err(RpcError::params).map(|p| {
                    let found = subscriptions.remove(&p.subscription);
                    if let Some(stop) = &found {
                        stop.cancel();
                    }
                    json!({ "unsubscribed": found.is_some() })
                });
                if let Some(id) = &id {
                    let _ = tx.send(response(id, result)).await;
                }
            }
            _ => {
                let (live, tx) = (live.clone(), tx.clone());
                tasks.spawn(async move {
                    let result = rpc::dispatch(&live, &request.method, request.params).await;
                    if let Some(id) = id {
                        let _ = tx.send(response(&id, result)).await;
                    }
                });
            }
        }
    }
    done.cancel();
    tasks.close();
    tasks.wait().await;
    drop(tx);
    let _ = writer.await;
}

/// Sends subscription `n`'s events, and the connection's state when it changes, until `stop`.
async fn stream_events(
    live: Live,
    mut sub: sealpost_sdk::Subscription,
    n: u64,
    tx: mpsc::Sender<String>,
    stop: CancellationToken,
) {
    let mut connection = live.connection();
    connection.mark_changed();
    let mut transfers = live.transfers();
    loop {
        let line = tokio::select! {
            _ = stop.cancelled() => return,
            changed = transfers.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(transfer) = transfers.borrow_and_update().clone() else {
                    continue;
                };
                json!({
                    "jsonrpc": "2.0",
                    "method": "progress",
                    "params": { "subscription": n, "transfer": transfer },
                })
            }
            changed = connection.changed() => {
                if changed.is_err() {
                    return;
                }
                let state = connection.borrow_and_update().clone();
                json!({
                    "jsonrpc": "2.0",
                    "method": "connection",
                    "params": { "subscription": n, "connection": state },
                })
            }
            event = sub.next() => match event {
                Ok(event) => event_notification(n, &event),
                Err(e) => json!({
                    "jsonrpc": "2.0",
                    "method": "error",
                    "params": { "subscription": n, "error": RpcError::from(e) },
                }),
            },
        };
        if tx.send(line.to_string()).await.is_err() {
            return;
        }
    }
}

fn event_notification(subscription: u64, event: &LoggedEvent) -> Value {
    json!({
        "jsonrpc": "2.0",
        "method": "event",
        "params": { "subscription": subscription, "event": event },
    })
}

/// A connection to a running daemon, as the command line uses it.
pub struct Remote {
    requests: mpsc::Sender<(Value, oneshot::Sender<Value>)>,
    notifications: tokio::sync::Mutex<mpsc::Receiver<Value>>,
    next_id: AtomicU64,
}

impl Remote {
    /// Connects to the daemon that `daemon.json` in `home` names; `None` if there is none, or
    /// it does not answer (it is gone, or still starting).
    pub async fn connect(home: &Path) -> Option<Remote> {
        let file: DaemonFile =
            serde_json::from_slice(&std::fs::read(daemon_file(home)).ok()?).ok()?;
        let stream = UnixStream::connect(&file.socket).await.ok()?;
        Some(Remote::over(stream))
    }

    fn over(stream: UnixStream) -> Remote {
        let (read, mut write) = stream.into_split();
        let (requests, mut queued) = mpsc::channel::<(Value, oneshot::Sender<Value>)>(16);
        let (notify, notifications) = mpsc::channel::<Value>(QUEUE);
        let pending: Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Value>>>> = Arc::default();
        let waiting = pending.clone();
        tokio::spawn(async move {
            while let Some((request, answer)) = queued.recv().await {
                if let Some(id) = request["id"].as_u64()
                    && let Ok(mut p) = waiting.lock()
                {
                    p.insert(id, answer);
                }
                let line = format!("{request}\n");
                if write.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let Some(id) = v["id"].as_u64() else {
                    // A notification (an answer without an id is an error about a line the
                    // daemon could not read: nothing waits for it).
                    if v.get("method").is_some() && notify.send(v).await.is_err() {
                        return;
                    }
                    continue;
                };
                let answer = pending.lock().ok().and_then(|mut p| p.remove(&id));
                if let Some(answer) = answer {
                    let _ = answer.send(v);
                }
            }
        });
        Remote {
            requests,
            notifications: tokio::sync::Mutex::new(notifications),
            next_id: AtomicU64::new(1),
        }
    }

    /// Calls a method; an error the daemon answered is an [`RpcError`] (downcast it).
    pub async fn call(&self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let (answer, answered) = oneshot::channel();
        if self.requests.send((request, answer)).await.is_err() {
            bail!("the daemon closed the connection");
        }
        let Ok(mut v) = answered.await else {
            bail!("the daemon closed the connection without answering (it may have stopped)");
        };
        if let Some(error) = v.get_mut("error") {
            let error: RpcError = serde_json::from_value(error.take())
                .context("the daemon's error answer does not parse")?;
            return Err(error.into());
        }
        Ok(v["result"].take())
    }

    /// The next notification (`event`, `connection`, `error`); `None` once the daemon is gone.
    pub async fn notification(&self) -> Option<Value> {
        self.notifications.lock().await.recv().await
    }
}
