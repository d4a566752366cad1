//! `sealpost web`: the chat as a web page, served by the user's own client process on loopback.
//! The keys never leave this process: the page is a thin layer that calls the client's methods
//! ([`crate::rpc`], the same the command line, the daemon and `sealpost chat` run) and reads
//! the profile's events.
//!
//! Who may use it:
//! - only loopback addresses are served, and a request must name this listener as its `Host`
//!   (a DNS-rebinding page names its own) and carry no `Origin` but this page's own (see
//!   [`Loopback`]);
//! - a request for `/api/` that the browser says comes from another page (`Sec-Fetch-Site`
//!   other than `same-origin`; another port of this machine is the same site, so the cookie
//!   would go along with what such a page embeds) is refused;
//! - the address printed at start carries a random token that works once: it is exchanged for
//!   a cookie (`HttpOnly`, `SameSite=Strict`, named after the port) holding another random
//!   secret, and every other request needs that cookie;
//! - every answer carries a strict Content-Security-Policy (scripts, styles and images from
//!   this page only; nothing else is fetched, nothing embeds it) and is never cached;
//! - files a peer sent are only ever downloaded (`attachment`, `application/octet-stream`,
//!   `nosniff`): nothing of theirs runs in this page's origin.
//!
//! The page itself (`index.html`, `app.js`, `app.css`) is embedded in the binary: plain
//! JavaScript modules, no toolchain, nothing from elsewhere.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use sealpost_sdk::Live;
use zeroize::Zeroizing;

use crate::daemon_http::{Loopback, random_token, refuse, rpc_request, same_secret};
use crate::rpc::{self, RpcError};
use crate::session::Session;

/// The event log consumer whose place the page keeps: security alerts are marked seen only
/// once the user acknowledged them, so a page opened later shows those not acknowledged yet.
const CONSUMER: &str = "web";

/// Largest upload taken (the server has its own limit, 100 MiB by default; the SDK says so
/// clearly when a file is over it).
const MAX_UPLOAD: usize = 4 << 30;

/// What every answer says about itself.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

#[derive(Clone)]
struct Web {
    live: Live,
    loopback: Arc<Loopback>,
    /// The token in the printed address, until it is used.
    token: Arc<Mutex<Option<Zeroizing<String>>>>,
    /// The cookie's secret.
    secret: Arc<Zeroizing<String>>,
    /// The cookie's name (with the port: two profiles served on two ports keep theirs apart).
    cookie: Arc<String>,
    /// Where uploads and downloads pass through (in the profile, only the user can enter).
    spool: Arc<PathBuf>,
    /// Ends the event streams, so that a graceful shutdown does not wait for them forever.
    shutdown: tokio_util::sync::CancellationToken,
}

/// Runs the web app on `listen` (loopback only) until SIGINT or SIGTERM.
pub async fn run(session: Session, listen: SocketAddr) -> Result<()> {
    let (live, home) = match session {
        Session::Local { live, home } => (live, home),
        Session::Remote(_) => bail!(
            "another sealpost process (a daemon, listen, chat or web) holds this profile: stop \
             it first; while the web app runs, it serves other commands on the profile itself"
        ),
    };
    let listener = crate::daemon_http::bind_loopback(listen, "sealpost web").await?;
    let addr = listener.local_addr()?;
    let spool = home.join("web");
    crate::daemon::private_dir(&spool)?;
    let token = Zeroizing::new(random_token()?);
    let held = crate::daemon::Held::start(&home, &live)?;
    let web = Web {
        live: live.clone(),
        loopback: Arc::new(Loopback::new(addr)),
        token: Arc::new(Mutex::new(Some(token.clone()))),
        secret: Arc::new(Zeroizing::new(random_token()?)),
        cookie: Arc::new(format!("sealpost_web_{}", addr.port())),
        spool: Arc::new(spool),
        shutdown: held.shutdown.clone(),
    };
    let me = live.lock().await.whoami();
    println!(
        "Sealpost for {} on http://{addr}: open this address in your browser (it works once; \
         start again for a new one):\n\n    http://{addr}/?token={token}\n\nOnly this computer \
         can reach it. Ctrl-C stops it.",
        me.username,
        token = token.as_str()
    );
    let served = axum::serve(listener, router(web))
        .with_graceful_shutdown(held.shutdown.clone().cancelled_owned())
        .await
        .context("the web app stopped");
    held.stop().await;
    served
}

fn router(web: Web) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(|| asset("text/javascript", APP_JS)))
        .route("/app.css", get(|| asset("text/css", APP_CSS)))
        .route("/api/rpc", post(rpc_call))
        .route("/api/events", get(events))
        .route(
            "/api/upload",
            post(upload).layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/api/download/{message}", get(download))
        .route("/api/qr", get(qr))
        .layer(middleware::from_fn_with_state(web.clone(), guard))
        .layer(axum::extract::DefaultBodyLimit::max(4 << 20))
        .with_state(web)
}

/// The checks every request passes (see the module docs), and the headers every answer gets.
async fn guard(State(web): State<Web>, req: Request, next: Next) -> Response {
    if let Some(refused) = web.loopback.refusal(req.headers()) {
        return with_headers(refused);
    }
    // A request that changes something must say where it comes from (browsers always do).
    if req.method() != Method::GET && !req.headers().contains_key(header::ORIGIN) {
        return with_headers(refuse(
            StatusCode::FORBIDDEN,
            "requests without an Origin are refused",
        ));
    }
    // A page on another port of this machine is the same site, so the cookie goes along with
    // what it embeds (an image, say): the browser's Sec-Fetch-Site tells such a request from
    // the page's own.
    let fetched_from = req
        .headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok());
    if req.uri().path().starts_with("/api/")
        && fetched_from.is_some_and(|site| site != "same-origin")
    {
        return with_headers(refuse(
            StatusCode::FORBIDDEN,
            "requests from other web pages are refused",
        ));
    }
    let login = req.uri().path() == "/" && req.uri().query().is_some_and(|q| q.contains("token="));
    if !login && !has_cookie(req.headers(), &web.cookie, &web.secret) {
        return with_headers(
            (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "Open the address `sealpost web` printed (it works once; start `sealpost web` \
                 again for a new one).\n",
            )
                .into_response(),
        );
    }
    with_headers(next.run(req).await)
}

fn with_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn has_cookie(headers: &HeaderMap, name: &str, secret: &str) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .any(|(n, v)| n == name && same_secret(v, secret))
}

#[derive(Deserialize)]
struct Login {
    token: Option<String>,
}

/// The page; with the printed token (once), the cookie first.
async fn index(State(web): State<Web>, Query(login): Query<Login>, headers: HeaderMap) -> Response {
    let Some(given) = login.token else {
        return page("text/html; charset=utf-8", INDEX);
    };
    let taken = {
        let mut token = web.token.lock().unwrap_or_else(|e| e.into_inner());
        match token.as_deref() {
            Some(t) if same_secret(&given, t) => token.take().is_some(),
            _ => false,
        }
    };
    if !taken {
        // Already used (or never right): a browser that has the cookie goes on.
        if has_cookie(&headers, &web.cookie, &web.secret) {
            return (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
        }
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "This address was used already: start `sealpost web` again for a new one.\n",
        )
            .into_response();
    }
    let cookie = format!(
        "{}={}; HttpOnly; SameSite=Strict; Path=/",
        web.cookie,
        web.secret.as_str()
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_owned()),
            (header::SET_COOKIE, cookie),
        ],
    )
        .into_response()
}

async fn asset(kind: &'static str, body: &'static str) -> Response {
    page(kind, body)
}

fn page(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// A method call. Files go through `/api/upload` and `/api/download` instead: a call that
/// names a path on this computer is refused.
async fn rpc_call(State(web): State<Web>, body: axum::body::Bytes) -> Response {
    rpc_request(&body, async |method, params: Value| {
        let names_a_path = ["file", "out", "avatar"]
            .iter()
            .any(|k| params.get(k).is_some_and(|v| !v.is_null()));
        if method == "download" || names_a_path {
            return Err(RpcError::params(
                "files go through /api/upload and /api/download here",
            ));
        }
        rpc::dispatch(&web.live, method, params).await
    })
    .await
}

/// The events of the profile's log not acknowledged by the page (`event`), the server
/// connection's state (`connection`) and file transfers (`transfer`), as Server-Sent Events.
async fn events(State(web): State<Web>) -> Response {
    let sub = web.live.subscribe_as(CONSUMER);
    let log = futures_util::stream::unfold(sub, |mut sub| async move {
        let e = sub.next().await.ok()?;
        let event = SseEvent::default()
            .event("event")
            .id(e.event_id.to_string())
            .json_data(&e)
            .ok()?;
        Some((event, sub))
    });
    let watch = |rx, name: &'static str| {
        futures_util::stream::unfold((rx, true), move |(mut rx, first)| async move {
            if !first {
                tokio::sync::watch::Receiver::changed(&mut rx).await.ok()?;
            }
            let event = SseEvent::default()
                .event(name)
                .json_data(&*rx.borrow_and_update())
                .ok()?;
            Some((event, (rx, false)))
        })
    };
    let connection = watch(web.live.connection(), "connection");
    let transfers = watch_transfers(web.live.transfers());
    let all =
        futures_util::stream::select(futures_util::stream::select(log, connection), transfers)
            .map(Ok::<_, Infallible>)
            .take_until(web.shutdown.clone().cancelled_owned());
    Sse::new(all)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn watch_transfers(
    rx: tokio::sync::watch::Receiver<Option<sealpost_sdk::Transfer>>,
) -> impl futures_util::Stream<Item = SseEvent> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let event = SseEvent::default()
            .event("transfer")
            .json_data(&*rx.borrow_and_update())
            .ok()?;
        Some((event, rx))
    })
}

#[derive(Deserialize)]
struct Upload {
    to: String,
    name: String,
    #[serde(default)]
    caption: String,
}

/// A file to send: the body is the file, written to the spool as it comes (memory stays
/// bounded), sent, and removed.
async fn upload(State(web): State<Web>, Query(q): Query<Upload>, body: Body) -> Response {
    let answer = async {
        let name = file_name(&q.name).ok_or_else(|| {
            RpcError::params("the file's name must be a name (no path, no control characters)")
        })?;
        let dir = tempfile::Builder::new()
            .prefix("upload-")
            .tempdir_in(&*web.spool)
            .map_err(|e| RpcError::params(format!("cannot spool the upload: {e}")))?;
        let path = dir.path().join(name);
        let spooled = async {
            let mut file = tokio::fs::File::create(&path).await?;
            let mut body = body.into_data_stream();
            while let Some(chunk) = body.next().await {
                file.write_all(&chunk.map_err(std::io::Error::other)?)
                    .await?;
            }
            file.flush().await
        };
        spooled
            .await
            .map_err(|e| RpcError::params(format!("the upload broke off: {e}")))?;
        let file = path.to_string_lossy().into_owned();
        rpc::dispatch(
            &web.live,
            "send",
            json!({ "to": q.to, "file": file, "caption": q.caption }),
        )
        .await
    };
    match answer.await {
        Ok(sent) => Json(json!({ "result": sent })).into_response(),
        Err(error) => Json(json!({ "error": error })).into_response(),
    }
}

/// `name` if it is a plain file name.
fn file_name(name: &str) -> Option<&str> {
    let plain = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control);
    plain.then_some(name)
}

/// A message's file: fetched, checked and decrypted by the client into the spool, then handed
/// to the browser as a download (never shown in the page), and removed.
async fn download(State(web): State<Web>, UrlPath(message): UrlPath<String>) -> Response {
    let fetched = async {
        let dir = tempfile::Builder::new()
            .prefix("download-")
            .tempdir_in(&*web.spool)
            .map_err(|e| RpcError::params(format!("cannot spool the download: {e}")))?;
        let out = dir.path().to_string_lossy().into_owned();
        let saved = rpc::dispatch(
            &web.live,
            "download",
            json!({ "message": message, "out": out }),
        )
        .await?;
        let path = PathBuf::from(saved["path"].as_str().unwrap_or_default());
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| RpcError::params(format!("cannot read the file saved: {e}")))?;
        // Open, it stays readable; gone from the disk once sent.
        drop(dir);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        Ok::<_, RpcError>((file, name))
    };
    match fetched.await {
        Ok((file, name)) => {
            let ascii: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || ".-_ ".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let disposition = format!(
                "attachment; filename=\"{ascii}\"; filename*=UTF-8''{}",
                percent(&name)
            );
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                Body::from_stream(tokio_util::io::ReaderStream::new(file)),
            )
                .into_response()
        }
        Err(error) => (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response(),
    }
}

/// RFC 8187 encoding of a file name.
fn percent(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[derive(Deserialize)]
struct QrText {
    text: String,
}

/// A safety number's QR code, as SVG.
async fn qr(Query(q): Query<QrText>) -> Response {
    let digits = q.text.chars().all(|c| c.is_ascii_digit()) && q.text.len() <= 100;
    let code = digits
        .then(|| qrcode::QrCode::new(q.text.as_bytes()).ok())
        .flatten();
    match code {
        Some(code) => (
            [(header::CONTENT_TYPE, "image/svg+xml")],
            code.render::<qrcode::render::svg::Color>()
                .min_dimensions(200, 200)
                .build(),
        )
            .into_response(),
        None => refuse(StatusCode::BAD_REQUEST, "a QR code is made of digits only"),
    }
}
