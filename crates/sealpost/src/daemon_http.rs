//! `sealpost daemon --http 127.0.0.1:PORT`: the daemon's methods over HTTP on loopback —
//! `POST /api/v1/rpc` (one JSON-RPC request), `GET /api/v1/events` (Server-Sent Events) and
//! `GET /api/v1/check` — the shape signal-cli's users know. A daemon serving several profiles
//! serves them all on one endpoint; `?profile=@user` picks one.
//!
//! The user's own browser can reach a loopback port, so a web page must not be able to use it:
//! - only loopback addresses are served;
//! - the `Host` header must name the loopback address and port (a DNS-rebinding page sends its
//!   own host name);
//! - a request that carries an `Origin` (every cross-origin request a browser makes, and every
//!   POST) is refused unless it is this endpoint's own origin;
//! - every call but `check` needs `Authorization: Bearer <token>`, a random token kept in
//!   `daemon-http.token` in each profile served, readable by the user only (mode 0600). A page
//!   cannot read the file, and a browser does not add the header by itself.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use sealpost_sdk::{EventId, Live};

use crate::rpc::{self, RpcError};

/// Largest request body (a JSON-RPC request).
const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Clone)]
struct Http {
    /// The profiles served, by `@username`.
    profiles: std::sync::Arc<Vec<(String, Live)>>,
    token: String,
    /// Whom it answers.
    loopback: std::sync::Arc<Loopback>,
    /// Ends the event streams, so that a graceful shutdown does not wait for them forever.
    shutdown: CancellationToken,
}

/// Where the token is kept.
pub fn token_file(home: &Path) -> PathBuf {
    home.join("daemon-http.token")
}

/// Makes a new random token and writes it into each profile, readable by the user only.
fn new_token(homes: &[&Path]) -> Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let token = random_token()?;
    for home in homes {
        let path = token_file(home);
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        file.write_all(token.as_bytes())?;
    }
    Ok(token)
}

/// 32 random bytes from the operating system (through the crypto provider the SDK uses), as
/// hex.
pub(crate) fn random_token() -> Result<String> {
    use rustls::crypto::ring::default_provider;
    let mut raw = [0u8; 32];
    default_provider()
        .secure_random
        .fill(&mut raw)
        .map_err(|_| anyhow::anyhow!("no randomness from the operating system"))?;
    Ok(hex::encode(raw))
}

/// The endpoint, bound and not yet served.
pub struct Bound {
    listener: tokio::net::TcpListener,
    token: String,
    /// Where it listens, e.g. `http://127.0.0.1:7583`.
    pub url: String,
}

/// Binds `addr` (loopback only) and writes a fresh token into each of `homes`.
pub async fn bind(homes: &[&Path], addr: SocketAddr) -> Result<Bound> {
    let listener = bind_loopback(addr, "--http").await?;
    let token = new_token(homes)?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok(Bound {
        listener,
        token,
        url,
    })
}

/// Binds `addr`, refusing anything but loopback (`flag` names the option, for the error).
pub(crate) async fn bind_loopback(addr: SocketAddr, flag: &str) -> Result<tokio::net::TcpListener> {
    if !addr.ip().is_loopback() {
        bail!(
            "{flag} serves loopback only (127.0.0.1 or [::1]), not {}: this process holds your keys",
            addr.ip()
        );
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// The `Host` values a loopback listener answers to, and the origins that are its own.
pub(crate) struct Loopback {
    hosts: Vec<String>,
    origins: Vec<String>,
}

impl Loopback {
    /// For a listener on `addr`.
    pub(crate) fn new(addr: SocketAddr) -> Loopback {
        let port = addr.port();
        let hosts: Vec<String> = match addr {
            SocketAddr::V4(_) => vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")],
            SocketAddr::V6(_) => vec![format!("[::1]:{port}"), format!("localhost:{port}")],
        };
        let origins = hosts.iter().map(|h| format!("http://{h}")).collect();
        Loopback { hosts, origins }
    }

    /// Refuses a request whose `Host` is not this listener's (a DNS-rebinding page sends its
    /// own host name), or that carries an `Origin` other than its own (a request from another
    /// web page).
    pub(crate) fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if !self.hosts.iter().any(|h| h == host) {
            return Some(refuse(
                StatusCode::MISDIRECTED_REQUEST,
                "this endpoint answers to its loopback address only",
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let own = origin
                .to_str()
                .is_ok_and(|o| self.origins.iter().any(|mine| mine == o));
            if !own {
                return Some(refuse(
                    StatusCode::FORBIDDEN,
                    "requests from other web pages are refused",
                ));
            }
        }
        None
    }
}

/// Serves `profiles` (each `@username` with its live client) until `shutdown`.
pub async fn serve(
    bound: Bound,
    profiles: Vec<(String, Live)>,
    shutdown: CancellationToken,
) -> Result<()> {
    let Bound {
        listener, token, ..
    } = bound;
    let state = Http {
        profiles: std::sync::Arc::new(profiles),
        token,
        loopback: std::sync::Arc::new(Loopback::new(listener.local_addr()?)),
        shutdown: shutdown.clone(),
    };
    let app = Router::new()
        .route("/api/v1/rpc", post(rpc_call))
        .route("/api/v1/events", get(events))
        .route("/api/v1/check", get(|| async { "ok" }))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("the HTTP endpoint failed")
}

pub(crate) fn refuse(status: StatusCode, why: &str) -> Response {
    (status, Json(json!({ "error": why }))).into_response()
}

/// The checks every request passes before it reaches the client (see the module docs).
async fn guard(State(http): State<Http>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    if let Some(refused) = http.loopback.refusal(headers) {
        return refused;
    }
    if req.uri().path() != "/api/v1/check" && !authorized(headers, &http.token) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <the token in daemon-http.token in the profile>",
        );
    }
    next.run(req).await
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
    else {
        return false;
    };
    same_secret(given, token)
}

/// Whether `given` is `secret`, compared in constant time.
pub(crate) fn same_secret(given: &str, secret: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    given.len() == secret.len() && bool::from(given.as_bytes().ct_eq(secret.as_bytes()))
}

/// Which profile a request is for: `?profile=@user` (or `user`); needed when several are served.
#[derive(Deserialize)]
struct Pick {
    profile: Option<String>,
}

impl Http {
    fn live(&self, pick: Option<&str>) -> Result<&Live, RpcError> {
        let names = || {
            self.profiles
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (pick, self.profiles.as_slice()) {
            (None, [(_, live)]) => Ok(live),
            (None, _) => Err(RpcError::params(format!(
                "this daemon serves several profiles: add ?profile=<one of {}> to the URL",
                names()
            ))),
            (Some(pick), all) => {
                let wanted = format!("@{}", pick.trim_start_matches('@'));
                all.iter()
                    .find(|(name, _)| *name == wanted)
                    .map(|(_, live)| live)
                    .ok_or_else(|| {
                        RpcError::params(format!(
                            "this daemon does not serve that profile; it serves {}",
                            names()
                        ))
                    })
            }
        }
    }
}

/// One JSON-RPC request, one answer (subscriptions are `GET /api/v1/events`).
async fn rpc_call(
    State(http): State<Http>,
    Query(pick): Query<Pick>,
    body: axum::body::Bytes,
) -> Response {
    rpc_request(&body, async |method, params| {
        let live = http.live(pick.profile.as_deref())?;
        rpc::dispatch(live, method, params).await
    })
    .await
}

/// Answers the JSON-RPC request in `body` with what `call` makes of its method and params
/// (subscriptions are the event stream's, not a call's).
pub(crate) async fn rpc_request(
    body: &[u8],
    call: impl AsyncFnOnce(&str, Value) -> Result<Value, RpcError>,
) -> Response {
    #[derive(Deserialize)]
    struct Call {
        #[serde(default)]
        id: Value,
        method: String,
        #[serde(default)]
        params: Value,
    }
    let call_made: Call = match serde_json::from_slice(body) {
        Ok(c) => c,
        Err(e) => {
            let error = RpcError::params(format!("not a JSON-RPC request: {e}"));
            return Json(json!({ "jsonrpc": "2.0", "id": null, "error": error })).into_response();
        }
    };
    let answer = match call_made.method.as_str() {
        "subscribe" | "unsubscribe" => Err(RpcError::no_method(&format!(
            "{} (over HTTP, read the event stream)",
            call_made.method
        ))),
        method => call(method, call_made.params).await,
    };
    let body = match answer {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": call_made.id, "result": result }),
        Err(error) => json!({ "jsonrpc": "2.0", "id": call_made.id, "error": error }),
    };
    Json(body).into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    /// Resume after this event id.
    after: Option<u64>,
    /// Or: what this consumer has not marked seen.
    consumer: Option<String>,
    /// The profile, when several are served.
    profile: Option<String>,
}

/// The event log as Server-Sent Events: `id:` is the event id, so a client that reconnects
/// with `Last-Event-ID` resumes where it stopped.
async fn events(
    State(http): State<Http>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Response {
    let live = match http.live(q.profile.as_deref()) {
        Ok(live) => live.clone(),
        Err(e) => return (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let sub = match (q.consumer, resume.or(q.after)) {
        (Some(consumer), None) => live.subscribe_as(&consumer),
        (_, after) => live.subscribe(EventId(after.unwrap_or(0))),
    };
    // After an error the stream ends: the client reconnects with `Last-Event-ID`.
    let stream = futures_util::stream::unfold(Some(sub), |sub| async move {
        let mut sub = sub?;
        let (event, next) = match sub.next().await {
            Ok(e) => (
                SseEvent::default()
                    .event("event")
                    .id(e.event_id.to_string())
                    .json_data(&e),
                Some(sub),
            ),
            Err(e) => (
                SseEvent::default()
                    .event("error")
                    .json_data(RpcError::from(e)),
                None,
            ),
        };
        let event = event.unwrap_or_else(|_| SseEvent::default().event("error"));
        Some((Ok::<_, Infallible>(event), next))
    });
    let stream = futures_util::StreamExt::take_until(stream, http.shutdown.cancelled_owned());
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
