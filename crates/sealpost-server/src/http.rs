//! The HTTP and WebSocket API (axum). Handlers are thin: parse, authenticate, call the delivery
//! service or the store, map the answer.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::SinkExt as _;
use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn, ProtocolVersion};
use sealpost_proto::directory::{AuditQuery, BatchLookupRequest, MAX_BATCH_LOOKUP};
use sealpost_proto::link::{LinkApproval, LinkRequest};
use sealpost_proto::{
    AckRequest, ChallengeRequest, CiphersuiteQuery, ClaimKeyPackagesResponse, ClaimedKeyPackage,
    DeviceIdentity, DeviceInfo, GroupId, KeyPackageStock, RegisterRequest, SyncRequest,
    TokenRequest, UploadKeyPackagesRequest, UserInfo, Username, device_certificate_message,
};
use serde::de::DeserializeOwned;
use tls_codec::Deserialize as _;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::config::Settings;
use crate::delivery::{ALLOWED_CIPHERSUITES, DeliveryService, credential_device};
use crate::directory::KeyDirectory;
use crate::error::ApiFailure;
use crate::metrics::{Metrics, RequestLabels};
use crate::ratelimit::{Limits, RateLimiter, client_address};
use crate::storage::{DeviceRecord, FetchRequest, KeyPackageRecord, NewAccount};

/// Most key packages in one upload.
pub const MAX_KEY_PACKAGES_PER_UPLOAD: usize = 200;
/// Most deliveries in one sync answer.
pub const MAX_SYNC_LIMIT: u32 = 1000;
/// WebSocket read buffer (tungstenite's default, 128 KiB, is zero-filled on every read).
pub const WS_READ_BUFFER: usize = 8 * 1024;
/// Most sends in flight on one WebSocket connection; past it the server stops reading.
pub const MAX_WS_INFLIGHT: usize = 64;
/// Header of a send over the WebSocket: request id (8 bytes, big-endian) and group id (16 bytes).
pub const WS_SEND_HEADER: usize = 24;

/// Shared state of all handlers.
#[derive(Clone)]
pub struct AppState {
    /// Delivery logic.
    pub delivery: Arc<DeliveryService>,
    /// Sign-in.
    pub auth: Arc<Auth>,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// WebSocket connection slots.
    pub ws_slots: Arc<Semaphore>,
    /// In-flight request slots.
    pub request_slots: Arc<Semaphore>,
    /// Rate limits.
    pub limits: Arc<Limits>,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// The key directory.
    pub directory: Arc<KeyDirectory>,
    /// New devices waiting to be linked.
    pub links: Arc<crate::links::LinkBook>,
    /// Encrypted files.
    pub blobs: Arc<dyn crate::storage::BlobStore>,
}

/// A JSON body whose rejection is one of our errors.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiFailure;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiFailure> {
        let bytes = RawBody::from_request(req, state).await?.0;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            ApiFailure::bad_request(&format!("invalid JSON body: {}", e.classify_text()))
        })
    }
}

/// A query string whose rejection (a parameter missing or malformed) is one of our JSON errors,
/// not the framework's plain text.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiFailure;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiFailure> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| {
                ApiFailure::bad_request(&format!("invalid query string: {}", e.body_text()))
            })
    }
}

trait Classify {
    fn classify_text(&self) -> &'static str;
}
impl Classify for serde_json::Error {
    fn classify_text(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "a field is missing or has a bad value",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// A raw body whose rejection (e.g. too large) is one of our errors. A client gets
/// `request_read_timeout_ms` to send it, so that a slow sender cannot hold a request slot.
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiFailure;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiFailure> {
        read_body(req, state, state.settings.max_body_bytes)
            .await
            .map(RawBody)
    }
}

/// The body of a commit upload: it has its own limit, derived from the largest group
/// ([`Settings::max_handshake_bytes`](crate::Settings::max_handshake_bytes)).
pub struct HandshakeBody(pub Bytes);

impl FromRequest<AppState> for HandshakeBody {
    type Rejection = ApiFailure;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiFailure> {
        read_body(req, state, state.settings.max_handshake_bytes())
            .await
            .map(HandshakeBody)
    }
}

/// Reads a request body of at most `limit` bytes within the read timeout.
async fn read_body(req: Request, state: &AppState, limit: usize) -> Result<Bytes, ApiFailure> {
    let deadline = Duration::from_millis(state.settings.request_read_timeout_ms);
    tokio::time::timeout(deadline, axum::body::to_bytes(req.into_body(), limit))
        .await
        .map_err(|_| ApiFailure::bad_request("the request body came too slowly"))?
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiFailure::too_large("the request body is too large")
            } else {
                ApiFailure::bad_request("could not read the request body")
            }
        })
}

/// The signed-in device making the request.
pub struct Authenticated(pub DeviceIdentity);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiFailure;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiFailure> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiFailure::unauthorized("missing bearer token"))?;
        let device = state
            .auth
            .authenticate(state.delivery.store().as_ref(), token)
            .await?;
        Ok(Authenticated(device))
    }
}

/// Counts `n` events of device `me` against `limiter`; over the limit, a 429 naming `what`.
pub(crate) fn within(
    limiter: &RateLimiter<sealpost_proto::DeviceId>,
    me: &DeviceIdentity,
    n: u32,
    what: &str,
) -> Result<(), ApiFailure> {
    limiter.check_n(&me.device_id, n).map_err(|wait| {
        ApiFailure::rate_limited(&format!("too many {what} from this device"), wait)
    })
}

pub(crate) fn parse_path<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, ApiFailure> {
    s.parse()
        .map_err(|_| ApiFailure::bad_request(&format!("invalid {what} in the path")))
}

/// An answer with nothing to say but its status.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Empty {}

/// The answer to registering a group.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct GroupCreated {
    group_id: GroupId,
}

/// The answer of a node that is ready.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Ready {
    /// The storage answered.
    #[schema(value_type = String, pattern = "^ok$")]
    storage: &'static str,
    /// The key directory's latest epoch.
    directory_epoch: u64,
    /// NATS answered ("ok"), or this node runs alone ("not used").
    #[schema(value_type = String, pattern = "^(ok|not used)$")]
    nats: &'static str,
}

/// The API's routes, once: the router is built from this list, and a test holds the OpenAPI
/// document to it (every route documented, nothing documented that is not served).
macro_rules! api_routes {
    ($($method:ident $path:literal => $handler:expr,)*) => {
        fn with_api_routes(router: Router<AppState>) -> Router<AppState> {
            router$(.route($path, axum::routing::$method($handler)))*
        }

        /// Every `(path, method)` the router serves but `/openapi.json`.
        #[cfg(test)]
        pub(crate) fn routes() -> &'static [(&'static str, &'static str)] {
            &[$(($path, stringify!($method)),)*]
        }
    };
}

api_routes! {
    get "/healthz" => healthz,
    get "/readyz" => readyz,
    get "/metrics" => metrics,
    post "/v1/accounts" => register,
    post "/v1/auth/challenge" => challenge,
    post "/v1/auth/token" => token,
    get "/v1/users/{username}" => user,
    post "/v1/users/{username}/key-packages" => claim_key_packages,
    post "/v1/key-packages" => upload_key_packages,
    get "/v1/key-packages" => key_package_stock,
    post "/v1/groups" => create_group,
    post "/v1/groups/{group}/messages" => post_message,
    post "/v1/groups/{group}/commits" => post_commit,
    put "/v1/groups/{group}/expiry" => set_group_expiry,
    post "/v1/groups/{group}/blobs" => crate::uploads::create,
    head "/v1/uploads/{upload}" => crate::uploads::offset,
    patch "/v1/uploads/{upload}" => crate::uploads::append,
    delete "/v1/uploads/{upload}" => crate::uploads::cancel,
    get "/v1/blobs/{blob}" => crate::uploads::fetch,
    post "/v1/blobs/{blob}/received" => crate::uploads::received,
    post "/v1/sync" => sync,
    post "/v1/ack" => ack,
    get "/v1/ws" => websocket,
    post "/v1/links" => link_request,
    get "/v1/links/{link}" => link_pending,
    post "/v1/links/{link}/approve" => link_approve,
    get "/v1/links/{link}/approval" => link_approval,
    delete "/v1/devices/{device}" => remove_device,
    get "/v1/limits" => limits,
    get "/v1/directory/keys" => directory_keys,
    get "/v1/directory/root" => directory_latest_root,
    get "/v1/directory/roots/{epoch}" => directory_root,
    get "/v1/directory/lookup/{username}" => directory_lookup,
    post "/v1/directory/lookups" => directory_batch_lookup,
    get "/v1/directory/history/{username}" => directory_history,
    get "/v1/directory/audit" => directory_audit,
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.max_body_bytes;
    with_api_routes(Router::new())
        .route("/openapi.json", get(openapi))
        .fallback(|| async { ApiFailure::not_found("no such endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), limit_and_log))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// The header that carries a request's id, both ways.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request id for the logs: the client's (or its proxy's) `X-Request-Id` if it is 1 to 64
/// letters, digits and `-_.:` (nothing that could forge a log line), else this process's id and
/// a counter.
fn request_id(req: &Request) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(
            || {
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("{:x}-{n:x}", std::process::id())
            },
            str::to_owned,
        )
}

/// Every request: the limits on requests in progress and per client address, then the handler;
/// each answer is logged (in a span carrying the request's id, which the answer also carries)
/// and counted by route, method and status.
async fn limit_and_log(State(state): State<AppState>, req: Request, next: Next) -> Response {
    use tracing::Instrument as _;
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let id = request_id(&req);
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = limited(&state, req, next, &method, &path)
        .instrument(span.clone())
        .await;
    let status = response.status();
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(%method, %path, status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(%method, %path, status = status.as_u16(), "request");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        state.metrics.refusals("body_size").inc();
    }
    state.metrics.record_request(
        RequestLabels {
            route: path,
            method: method.as_str().to_owned(),
            status: status.as_u16(),
        },
        started.elapsed(),
    );
    response
}

async fn limited(
    state: &AppState,
    req: Request,
    next: Next,
    method: &Method,
    path: &str,
) -> Response {
    let Ok(_permit) = state.request_slots.clone().try_acquire_owned() else {
        state.metrics.refusals("inflight_requests").inc();
        return ApiFailure::unavailable("the server is busy: retry shortly").into_response();
    };
    // Requests made before signing in count against the address they come from.
    let per_address = match (method, path) {
        (&Method::POST, "/v1/accounts") => Some((
            &state.limits.registrations,
            "too many accounts registered from your address",
        )),
        (&Method::POST, "/v1/auth/challenge" | "/v1/links") => Some((
            &state.limits.sign_ins,
            "too many sign-ins from your address",
        )),
        _ => None,
    };
    if let Some((limiter, message)) = per_address {
        let peer = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0);
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let address = client_address(peer, forwarded, state.settings.trust_forwarded_for);
        if let Err(wait) = limiter.check(&address) {
            return ApiFailure::rate_limited(message, wait).into_response();
        }
    }
    next.run(req).await
}

#[utoipa::path(
    get,
    path = "/healthz",
    summary = "Liveness: the process answers",
    responses((status = 200, description = "alive", body = String, content_type = "text/plain"))
)]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(
    get,
    path = "/metrics",
    summary = "Metrics in the OpenMetrics text format (Prometheus)",
    responses((status = 200, description = "the metrics", body = String, content_type = "application/openmetrics-text"))
)]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let queued = state.delivery.hub().queued_frames();
    state
        .metrics
        .push_queue_frames
        .set(i64::try_from(queued).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
}

fn validate_key_package(
    auth: &Auth,
    bytes: &[u8],
    owner: &DeviceIdentity,
    device_key: &[u8],
) -> Result<KeyPackageRecord, ApiFailure> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|_| ApiFailure::bad_request("a key package is not an MLS message"))?;
    let MlsMessageBodyIn::KeyPackage(kp) = msg.extract() else {
        return Err(ApiFailure::bad_request("expected an MLS KeyPackage"));
    };
    let kp = kp
        .validate(auth.crypto(), ProtocolVersion::Mls10)
        .map_err(|e| ApiFailure::bad_request(&format!("a key package does not verify: {e:?}")))?;
    let leaf = kp.leaf_node();
    let ok = ALLOWED_CIPHERSUITES.contains(&kp.ciphersuite())
        && credential_device(leaf.credential()).as_ref() == Some(owner)
        && leaf.signature_key().as_slice() == device_key;
    if ok {
        Ok(KeyPackageRecord {
            ciphersuite: kp.ciphersuite().into(),
            last_resort: kp.last_resort(),
            data: bytes.to_vec(),
        })
    } else {
        Err(ApiFailure::bad_request(
            "a key package belongs to another device or uses an unsupported ciphersuite",
        ))
    }
}

/// Checks the account key's certificate over a device key.
fn check_certificate(
    auth: &Auth,
    account_key: &[u8],
    username: &Username,
    device_id: sealpost_proto::DeviceId,
    device_key: &[u8],
    certificate: &[u8],
) -> Result<(), ApiFailure> {
    let message = device_certificate_message(username, &device_id, device_key);
    if auth.verify(account_key, &message, certificate) {
        Ok(())
    } else {
        Err(ApiFailure::bad_request(
            "the device certificate does not verify under the account key",
        ))
    }
}

/// Checks a new device's first key packages: at most [`MAX_KEY_PACKAGES_PER_UPLOAD`], each
/// signed by the device for its own identity, and a last-resort one among them.
fn validate_first_key_packages(
    auth: &Auth,
    username: &Username,
    device_id: sealpost_proto::DeviceId,
    device_key: &[u8],
    key_packages: &[Vec<u8>],
) -> Result<Vec<KeyPackageRecord>, ApiFailure> {
    if key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
        return Err(ApiFailure::too_large(
            "too many key packages in one request",
        ));
    }
    let owner = DeviceIdentity {
        username: username.clone(),
        device_id,
    };
    let records = key_packages
        .iter()
        .map(|kp| validate_key_package(auth, kp, &owner, device_key))
        .collect::<Result<Vec<_>, _>>()?;
    if !records.iter().any(|kp| kp.last_resort) {
        return Err(ApiFailure::bad_request("include a last-resort key package"));
    }
    Ok(records)
}

#[utoipa::path(
    post,
    path = "/v1/accounts",
    summary = "Register an account and its first device",
    request_body = sealpost_proto::RegisterRequest,
    responses((status = 201, description = "registered, and published in the key directory", body = Empty), (status = 409, description = "the username is taken, or the device is registered already", body = sealpost_proto::ApiError), (status = 429, description = "too many registrations from this address", body = sealpost_proto::ApiError))
)]
async fn register(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<impl IntoResponse, ApiFailure> {
    if req.account_key.len() != 32 || req.device_key.len() != 32 {
        return Err(ApiFailure::bad_request(
            "keys must be 32-byte Ed25519 public keys",
        ));
    }
    check_certificate(
        &state.auth,
        &req.account_key,
        &req.username,
        req.device_id,
        &req.device_key,
        &req.device_certificate,
    )?;
    let key_packages = validate_first_key_packages(
        &state.auth,
        &req.username,
        req.device_id,
        &req.device_key,
        &req.key_packages,
    )?;
    state
        .delivery
        .store()
        .create_account(NewAccount {
            username: req.username.clone(),
            account_key: req.account_key,
            device: DeviceRecord {
                device_id: req.device_id,
                username: req.username,
                device_key: req.device_key,
                certificate: req.device_certificate,
            },
            key_packages,
        })
        .await
        .map_err(|e| match e {
            crate::storage::StoreError::Conflict => ApiFailure::new(
                sealpost_proto::ErrorCode::Conflict,
                "that username is taken (or this device is registered already)",
            ),
            other => other.into(),
        })?;
    // The account exists for others once its directory entry is published.
    state.directory.wait_published().await;
    Ok((StatusCode::CREATED, Json(Empty {})))
}

/// A new device asks to join an account; it waits for one of the account's devices.
#[utoipa::path(
    post,
    path = "/v1/links",
    summary = "A new device asks to join an account (it waits for a device of the account to approve)",
    request_body = sealpost_proto::link::LinkRequest,
    responses((status = 201, description = "waiting", body = Empty), (status = 404, description = "no such account", body = sealpost_proto::ApiError), (status = 409, description = "the device is registered already, or the code is in use", body = sealpost_proto::ApiError), (status = 429, description = "too many sign-ins from this address", body = sealpost_proto::ApiError))
)]
async fn link_request(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LinkRequest>,
) -> Result<impl IntoResponse, ApiFailure> {
    if req.device_key.len() != 32 || req.link_id.len() != 20 || req.tag.len() != 32 {
        return Err(ApiFailure::bad_request(
            "a link request has a 32-byte Ed25519 key, a 20-character id and a 32-byte tag",
        ));
    }
    if req.hpke_key.is_empty() || req.hpke_key.len() > 2048 {
        return Err(ApiFailure::bad_request("invalid HPKE key"));
    }
    let store = state.delivery.store();
    if store.user(&req.username).await?.is_none() {
        return Err(ApiFailure::not_found("no such account"));
    }
    if store.device(req.device_id).await?.is_some() {
        return Err(ApiFailure::new(
            sealpost_proto::ErrorCode::Conflict,
            "this device is registered already",
        ));
    }
    validate_first_key_packages(
        &state.auth,
        &req.username,
        req.device_id,
        &req.device_key,
        &req.key_packages,
    )?;
    state.links.put(req).await?;
    Ok((StatusCode::CREATED, Json(Empty {})))
}

/// A device of the account reads a waiting request.
#[utoipa::path(
    get,
    path = "/v1/links/{link}",
    summary = "A device of the account reads a waiting link request",
    security(("bearer" = [])),
    params(("link" = String, Path, description = "the link code's id (20 characters)")),
    responses((status = 200, description = "the request", body = sealpost_proto::link::LinkRequest), (status = 404, description = "no such request for this account", body = sealpost_proto::ApiError))
)]
async fn link_pending(
    State(state): State<AppState>,
    Authenticated(who): Authenticated,
    Path(link): Path<String>,
) -> Result<impl IntoResponse, ApiFailure> {
    let req = state.links.request(&link).await?;
    if req.username != who.username {
        return Err(ApiFailure::not_found(
            "no device is waiting to be linked with this code (wrong code, or it expired)",
        ));
    }
    Ok(Json(req))
}

/// A device of the account approves: the new device is registered and published.
#[utoipa::path(
    post,
    path = "/v1/links/{link}/approve",
    summary = "A device of the account approves the new device",
    security(("bearer" = [])),
    params(("link" = String, Path, description = "the link code's id (20 characters)")),
    request_body = sealpost_proto::link::LinkApproval,
    responses((status = 200, description = "approved: the device is registered and published", body = Empty), (status = 403, description = "not a device of the account", body = sealpost_proto::ApiError), (status = 404, description = "no such request", body = sealpost_proto::ApiError), (status = 409, description = "approved already", body = sealpost_proto::ApiError))
)]
async fn link_approve(
    State(state): State<AppState>,
    Authenticated(who): Authenticated,
    Path(link): Path<String>,
    ApiJson(approval): ApiJson<LinkApproval>,
) -> Result<impl IntoResponse, ApiFailure> {
    let req = state.links.request(&link).await?;
    if req.username != who.username {
        return Err(ApiFailure::forbidden(
            "only a device of the account can approve",
        ));
    }
    let store = state.delivery.store();
    let account = store
        .user(&req.username)
        .await?
        .ok_or_else(|| ApiFailure::not_found("no such account"))?;
    check_certificate(
        &state.auth,
        &account.account_key,
        &req.username,
        req.device_id,
        &req.device_key,
        &approval.certificate,
    )?;
    let key_packages = validate_first_key_packages(
        &state.auth,
        &req.username,
        req.device_id,
        &req.device_key,
        &req.key_packages,
    )?;
    store
        .add_device(
            DeviceRecord {
                device_id: req.device_id,
                username: req.username.clone(),
                device_key: req.device_key.clone(),
                certificate: approval.certificate.clone(),
            },
            key_packages,
        )
        .await?;
    state.links.approve(&link, approval).await?;
    state.directory.wait_published().await;
    Ok(Json(Empty {}))
}

/// The new device fetches its approval.
#[utoipa::path(
    get,
    path = "/v1/links/{link}/approval",
    summary = "The new device fetches its approval",
    security(("bearer" = [])),
    params(("link" = String, Path, description = "the link code's id (20 characters)")),
    responses((status = 200, description = "the approval", body = sealpost_proto::link::LinkApproval), (status = 403, description = "the approval is for another device", body = sealpost_proto::ApiError), (status = 404, description = "no such request, or not approved yet", body = sealpost_proto::ApiError))
)]
async fn link_approval(
    State(state): State<AppState>,
    Authenticated(who): Authenticated,
    Path(link): Path<String>,
) -> Result<impl IntoResponse, ApiFailure> {
    let (req, approval) = state.links.approval(&link).await?;
    if req.device_id != who.device_id {
        return Err(ApiFailure::forbidden("this approval is for another device"));
    }
    approval
        .map(Json)
        .ok_or_else(|| ApiFailure::not_found("not approved yet"))
}

/// A device of the account removes another one (never itself).
#[utoipa::path(
    delete,
    path = "/v1/devices/{device}",
    summary = "Remove another device of the account (never the calling one)",
    security(("bearer" = [])),
    params(("device" = sealpost_proto::DeviceId, Path, description = "a device id (32 hex digits)")),
    responses((status = 204, description = "removed"), (status = 404, description = "the account has no such device", body = sealpost_proto::ApiError))
)]
async fn remove_device(
    State(state): State<AppState>,
    Authenticated(who): Authenticated,
    Path(device): Path<String>,
) -> Result<impl IntoResponse, ApiFailure> {
    let device: sealpost_proto::DeviceId = parse_path(&device, "device id")?;
    if device == who.device_id {
        return Err(ApiFailure::bad_request(
            "a device cannot remove itself: remove it from another device of the account",
        ));
    }
    state
        .delivery
        .store()
        .remove_device(&who.username, device)
        .await
        .map_err(|e| match e {
            crate::storage::StoreError::NotFound => {
                ApiFailure::not_found("your account has no such device")
            }
            other => other.into(),
        })?;
    state.auth.forget_device(device);
    state.directory.wait_published().await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/limits",
    summary = "What this server accepts (clients check a message's size before sending it)",
    responses((status = 200, description = "the limits", body = sealpost_proto::Limits))
)]
async fn limits(State(state): State<AppState>) -> impl IntoResponse {
    Json(sealpost_proto::Limits {
        max_body_bytes: state.settings.max_body_bytes as u64,
        max_file_bytes: state.settings.max_file_bytes,
        max_handshake_bytes: state.settings.max_handshake_bytes() as u64,
        max_group_size: state.settings.max_group_size as u64,
    })
}

#[utoipa::path(
    get,
    path = "/v1/directory/keys",
    summary = "The key directory's public keys (VRF and root signing key)",
    responses((status = 200, description = "the keys", body = sealpost_proto::directory::DirectoryKeys))
)]
async fn directory_keys(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.directory.keys().clone())
}

#[utoipa::path(
    get,
    path = "/v1/directory/root",
    summary = "The latest signed directory root",
    responses((status = 200, description = "the signed root", body = sealpost_proto::directory::SignedRoot), (status = 404, description = "nothing published yet", body = sealpost_proto::ApiError))
)]
async fn directory_latest_root(
    State(state): State<AppState>,
) -> Result<impl IntoResponse, ApiFailure> {
    Ok(Json(state.directory.root(None).await?))
}

#[utoipa::path(
    get,
    path = "/v1/directory/roots/{epoch}",
    summary = "The signed directory root of an epoch",
    params(("epoch" = u64, Path, description = "the epoch")),
    responses((status = 200, description = "the signed root", body = sealpost_proto::directory::SignedRoot), (status = 404, description = "no such epoch", body = sealpost_proto::ApiError))
)]
async fn directory_root(
    State(state): State<AppState>,
    Path(epoch): Path<String>,
) -> Result<impl IntoResponse, ApiFailure> {
    let epoch: u64 = parse_path(&epoch, "epoch")?;
    Ok(Json(state.directory.root(Some(epoch)).await?))
}

#[utoipa::path(
    get,
    path = "/v1/directory/lookup/{username}",
    summary = "A user's directory entry with its lookup proof (counts against the lookup limit)",
    security(("bearer" = [])),
    params(("username" = sealpost_proto::Username, Path, description = "a username, without the @")),
    responses((status = 200, description = "the entry and its proof", body = sealpost_proto::directory::LookupResponse), (status = 404, description = "no such user", body = sealpost_proto::ApiError), (status = 429, description = "too many lookups from this device", body = sealpost_proto::ApiError))
)]
async fn directory_lookup(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    Path(username): Path<String>,
) -> Result<impl IntoResponse, ApiFailure> {
    let username: Username = parse_path(&username, "username")?;
    within(&state.limits.lookups, &me, 1, "lookups")?;
    Ok(Json(state.directory.lookup(&username).await?))
}

#[utoipa::path(
    post,
    path = "/v1/directory/lookups",
    summary = "Several users' lookup proofs at one epoch (each name counts against the lookup limit)",
    security(("bearer" = [])),
    request_body = sealpost_proto::directory::BatchLookupRequest,
    responses((status = 200, description = "the proofs", body = sealpost_proto::directory::BatchLookupResponse), (status = 404, description = "no such user", body = sealpost_proto::ApiError), (status = 429, description = "too many lookups from this device", body = sealpost_proto::ApiError))
)]
async fn directory_batch_lookup(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    ApiJson(req): ApiJson<BatchLookupRequest>,
) -> Result<impl IntoResponse, ApiFailure> {
    if req.usernames.is_empty() || req.usernames.len() > MAX_BATCH_LOOKUP {
        return Err(ApiFailure::bad_request(&format!(
            "give 1 to {MAX_BATCH_LOOKUP} usernames"
        )));
    }
    let mut users = req.usernames;
    users.sort();
    users.dedup();
    within(&state.limits.lookups, &me, users.len() as u32, "lookups")?;
    Ok(Json(state.directory.batch_lookup(&users).await?))
}

#[utoipa::path(
    get,
    path = "/v1/directory/history/{username}",
    summary = "A user's key history with its proof (counts against the lookup limit)",
    security(("bearer" = [])),
    params(("username" = sealpost_proto::Username, Path, description = "a username, without the @")),
    responses((status = 200, description = "the history and its proof", body = sealpost_proto::directory::HistoryResponse), (status = 404, description = "no such user", body = sealpost_proto::ApiError), (status = 429, description = "too many lookups from this device", body = sealpost_proto::ApiError))
)]
async fn directory_history(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    Path(username): Path<String>,
) -> Result<impl IntoResponse, ApiFailure> {
    let username: Username = parse_path(&username, "username")?;
    within(&state.limits.lookups, &me, 1, "lookups")?;
    Ok(Json(state.directory.history(&username).await?))
}

#[utoipa::path(
    get,
    path = "/v1/directory/audit",
    summary = "Append-only proofs from an epoch on, for auditors",
    params(("from" = u64, Query, description = "the first epoch to prove")),
    responses((status = 200, description = "the audit proofs", body = sealpost_proto::directory::AuditResponse), (status = 404, description = "no such epoch", body = sealpost_proto::ApiError))
)]
async fn directory_audit(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<impl IntoResponse, ApiFailure> {
    Ok(Json(state.directory.audit(q.from).await?))
}

#[utoipa::path(
    post,
    path = "/v1/auth/challenge",
    summary = "Get a challenge to sign, to sign in",
    request_body = sealpost_proto::ChallengeRequest,
    responses((status = 200, description = "the challenge", body = sealpost_proto::ChallengeResponse), (status = 429, description = "too many sign-ins from this address", body = sealpost_proto::ApiError))
)]
async fn challenge(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ChallengeRequest>,
) -> Result<impl IntoResponse, ApiFailure> {
    Ok(Json(
        state
            .auth
            .challenge(state.delivery.store().as_ref(), req.device_id)
            .await?,
    ))
}

#[utoipa::path(
    post,
    path = "/v1/auth/token",
    summary = "Exchange a signed challenge for a session token",
    request_body = sealpost_proto::TokenRequest,
    responses((status = 200, description = "a token for `Authorization: Bearer`", body = sealpost_proto::TokenResponse), (status = 401, description = "the signature, the challenge or the device is not right", body = sealpost_proto::ApiError))
)]
async fn token(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<impl IntoResponse, ApiFailure> {
    Ok(Json(
        state
            .auth
            .token(state.delivery.store().as_ref(), req)
            .await?,
    ))
}

#[utoipa::path(
    get,
    path = "/v1/users/{username}",
    summary = "An account's key and devices (counts against the lookup limit)",
    security(("bearer" = [])),
    params(("username" = sealpost_proto::Username, Path, description = "a username, without the @")),
    responses((status = 200, description = "the account", body = sealpost_proto::UserInfo), (status = 404, description = "no such user", body = sealpost_proto::ApiError), (status = 429, description = "too many lookups from this device", body = sealpost_proto::ApiError))
)]
async fn user(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    Path(username): Path<String>,
) -> Result<impl IntoResponse, ApiFailure> {
    let username: Username = parse_path(&username, "username")?;
    within(&state.limits.lookups, &me, 1, "lookups")?;
    let user = state
        .delivery
        .store()
        .user(&username)
        .await?
        .ok_or_else(|| ApiFailure::not_found("no such user"))?;
    Ok(Json(UserInfo {
        username: user.username,
        account_key: user.account_key,
        devices: user
            .devices
            .into_iter()
            .map(|d| DeviceInfo {
                device_id: d.device_id,
                device_key: d.device_key,
                device_certificate: d.certificate,
            })
            .collect(),
    }))
}

#[utoipa::path(
    post,
    path = "/v1/users/{username}/key-packages",
    summary = "Claim one key package per device of a user (counts against the claim limit)",
    security(("bearer" = [])),
    params(("username" = sealpost_proto::Username, Path, description = "a username, without the @"), ("ciphersuite" = u16, Query, description = "the MLS ciphersuite code point")),
    responses((status = 200, description = "one key package per device", body = sealpost_proto::ClaimKeyPackagesResponse), (status = 404, description = "no such user, or no key package left (code no_key_package)", body = sealpost_proto::ApiError), (status = 429, description = "too many claims from this device", body = sealpost_proto::ApiError))
)]
async fn claim_key_packages(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    Path(username): Path<String>,
    ApiQuery(q): ApiQuery<CiphersuiteQuery>,
) -> Result<impl IntoResponse, ApiFailure> {
    let username: Username = parse_path(&username, "username")?;
    within(&state.limits.claims, &me, 1, "key-package claims")?;
    let claimed = state
        .delivery
        .store()
        .claim_key_packages(&username, q.ciphersuite)
        .await
        .map_err(|e| match e {
            crate::storage::StoreError::NotFound => ApiFailure::not_found("no such user"),
            other => other.into(),
        })?;
    if claimed.is_empty() {
        return Err(ApiFailure::new(
            sealpost_proto::ErrorCode::NoKeyPackage,
            "the user has no key package",
        ));
    }
    Ok(Json(ClaimKeyPackagesResponse {
        username,
        key_packages: claimed
            .into_iter()
            .map(|(device_id, key_package)| ClaimedKeyPackage {
                device_id,
                key_package,
            })
            .collect(),
    }))
}

#[utoipa::path(
    post,
    path = "/v1/key-packages",
    summary = "Add key packages to this device's stock",
    security(("bearer" = [])),
    request_body = sealpost_proto::UploadKeyPackagesRequest,
    responses((status = 204, description = "stored"))
)]
async fn upload_key_packages(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    ApiJson(req): ApiJson<UploadKeyPackagesRequest>,
) -> Result<impl IntoResponse, ApiFailure> {
    if req.key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
        return Err(ApiFailure::too_large(
            "too many key packages in one request",
        ));
    }
    let store = state.delivery.store();
    let device = store
        .device(me.device_id)
        .await?
        .ok_or_else(|| ApiFailure::unauthorized("unknown device"))?;
    let key_packages = req
        .key_packages
        .iter()
        .map(|kp| validate_key_package(&state.auth, kp, &me, &device.device_key))
        .collect::<Result<Vec<_>, _>>()?;
    store.add_key_packages(me.device_id, key_packages).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/key-packages",
    summary = "How many single-use key packages of a suite are left for this device",
    security(("bearer" = [])),
    params(("ciphersuite" = u16, Query, description = "the MLS ciphersuite code point")),
    responses((status = 200, description = "the stock", body = sealpost_proto::KeyPackageStock))
)]
async fn key_package_stock(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    ApiQuery(q): ApiQuery<CiphersuiteQuery>,
) -> Result<impl IntoResponse, ApiFailure> {
    Ok(Json(KeyPackageStock {
        stock: state
            .delivery
            .store()
            .key_package_stock(me.device_id, q.ciphersuite)
            .await?,
    }))
}

#[utoipa::path(
    post,
    path = "/v1/groups",
    summary = "Register a new group from its epoch-0 GroupInfo (with its ratchet tree)",
    security(("bearer" = [])),
    request_body(content = crate::openapi::Octets, content_type = "application/octet-stream", description = "a TLS-encoded MLSMessage holding a GroupInfo (RFC 9420)"),
    responses((status = 201, description = "registered", body = GroupCreated), (status = 409, description = "the group exists", body = sealpost_proto::ApiError))
)]
async fn create_group(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    RawBody(body): RawBody,
) -> Result<impl IntoResponse, ApiFailure> {
    let group = state.delivery.create_group(&me, &body).await?;
    Ok((StatusCode::CREATED, Json(GroupCreated { group_id: group })))
}

#[utoipa::path(
    post,
    path = "/v1/groups/{group}/messages",
    summary = "Post an application message (PrivateMessage) or a leave proposal",
    description = "Idempotent for a retry: the same application message posted again by the device that posted it last (a retry whose answer was lost) is not stored again, and is answered with the sequence number and time of the first post.",
    security(("bearer" = [])),
    params(("group" = sealpost_proto::GroupId, Path, description = "the group's id (32 hex digits)")),
    request_body(content = crate::openapi::Octets, content_type = "application/octet-stream", description = "a TLS-encoded MLSMessage (RFC 9420)"),
    responses((status = 200, description = "appended to the group's log", body = sealpost_proto::PostedResponse), (status = 403, description = "not a member of the group", body = sealpost_proto::ApiError), (status = 404, description = "no such group", body = sealpost_proto::ApiError), (status = 409, description = "the message is for another epoch", body = sealpost_proto::ApiError), (status = 429, description = "too many messages from this device", body = sealpost_proto::ApiError))
)]
async fn post_message(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    Path(group): Path<String>,
    RawBody(body): RawBody,
) -> Result<impl IntoResponse, ApiFailure> {
    let group: GroupId = parse_path(&group, "group id")?;
    within(&state.limits.sends, &me, 1, "messages sent")?;
    Ok(Json(
        state
            .delivery
            .post_message(&me, group, body.to_vec())
            .await?,
    ))
}

#[utoipa::path(
    post,
    path = "/v1/groups/{group}/commits",
    summary = "Post a commit (and its Welcome); one commit per epoch wins",
    security(("bearer" = [])),
    params(("group" = sealpost_proto::GroupId, Path, description = "the group's id (32 hex digits)")),
    request_body(content = crate::openapi::Octets, content_type = "application/octet-stream", description = "TLS-encoded struct { opaque commit<V>; opaque welcome<V>; }"),
    responses((status = 200, description = "appended to the group's log", body = sealpost_proto::PostedResponse), (status = 403, description = "not a member of the group", body = sealpost_proto::ApiError), (status = 404, description = "no such group", body = sealpost_proto::ApiError), (status = 409, description = "another commit won this epoch (code epoch_conflict)", body = sealpost_proto::ApiError), (status = 429, description = "too many messages from this device", body = sealpost_proto::ApiError))
)]
async fn post_commit(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    Path(group): Path<String>,
    HandshakeBody(body): HandshakeBody,
) -> Result<impl IntoResponse, ApiFailure> {
    let group: GroupId = parse_path(&group, "group id")?;
    within(&state.limits.sends, &me, 1, "messages sent")?;
    Ok(Json(state.delivery.post_commit(&me, group, &body).await?))
}

/// Whether `me` is a current member device of `group`.
pub(crate) async fn is_member(
    state: &AppState,
    me: &DeviceIdentity,
    group: GroupId,
) -> Result<bool, ApiFailure> {
    Ok(state
        .delivery
        .store()
        .group_devices(group)
        .await?
        .contains(&me.device_id))
}

#[utoipa::path(
    put,
    path = "/v1/groups/{group}/expiry",
    summary = "Keep the group's messages and files at most this long, delivered or not (its members' disappearing-messages timer); 0 for the retention time only",
    security(("bearer" = [])),
    params(("group" = sealpost_proto::GroupId, Path, description = "the group's id (32 hex digits)")),
    request_body = sealpost_proto::GroupExpiry,
    responses((status = 204, description = "set"), (status = 403, description = "not a member of the group", body = sealpost_proto::ApiError), (status = 429, description = "too many messages from this device", body = sealpost_proto::ApiError))
)]
async fn set_group_expiry(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    Path(group): Path<String>,
    ApiJson(expiry): ApiJson<sealpost_proto::GroupExpiry>,
) -> Result<StatusCode, ApiFailure> {
    let group: GroupId = parse_path(&group, "group id")?;
    if expiry.seconds > sealpost_proto::GroupExpiry::MAX {
        return Err(ApiFailure::bad_request(
            "a group's messages are kept at most a year (31536000 seconds)",
        ));
    }
    within(&state.limits.sends, &me, 1, "messages sent")?;
    if !is_member(&state, &me, group).await? {
        return Err(ApiFailure::forbidden("not a member of this group"));
    }
    state
        .delivery
        .store()
        .set_group_expiry(group, expiry.seconds)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/v1/sync",
    summary = "Fetch deliveries after the given cursors",
    security(("bearer" = [])),
    request_body = sealpost_proto::SyncRequest,
    responses((status = 200, description = "a TLS-encoded SyncBatch", body = crate::openapi::Octets, content_type = "application/octet-stream"))
)]
async fn sync(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    ApiJson(req): ApiJson<SyncRequest>,
) -> Result<impl IntoResponse, ApiFailure> {
    let limit = req.limit.unwrap_or(MAX_SYNC_LIMIT).clamp(1, MAX_SYNC_LIMIT);
    let batch = state
        .delivery
        .store()
        .fetch(
            me.device_id,
            FetchRequest {
                inbox_after: req.inbox_after,
                groups: req.groups,
                limit,
            },
        )
        .await?;
    let bytes = batch.encode().map_err(|_| ApiFailure::internal())?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        bytes,
    ))
}

/// How long each readiness check may take.
const READY_WITHIN: Duration = Duration::from_secs(2);

/// Readiness, for load balancers and orchestrators (`/healthz` is liveness: the process
/// answers). 200 once this node can serve: it is not shutting down, its storage answers with
/// the key directory's latest root, and NATS (on several nodes) answers a round trip, each
/// within [`READY_WITHIN`]; else 503 naming what is not ready.
#[utoipa::path(
    get,
    path = "/readyz",
    summary = "Readiness: not shutting down; the storage, the key directory and (on several nodes) NATS answer within 2 s",
    responses((status = 200, description = "ready", body = Ready), (status = 503, description = "not ready, and why", body = sealpost_proto::ApiError))
)]
async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiFailure> {
    let not_ready = |what: &str| ApiFailure::unavailable(&format!("not ready: {what}"));
    if state.shutdown.is_cancelled() {
        return Err(not_ready("shutting down"));
    }
    let epoch = match tokio::time::timeout(READY_WITHIN, state.directory.root(None)).await {
        Ok(Ok(root)) => root.epoch,
        Ok(Err(crate::directory::DirectoryError::NotFound)) => {
            return Err(not_ready(
                "the key directory has not published its first epoch",
            ));
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: storage failure");
            return Err(not_ready("the storage does not answer"));
        }
        Err(_) => return Err(not_ready("the storage did not answer within 2 s")),
    };
    let nats = match state.delivery.hub().remote_reachable(READY_WITHIN).await {
        None => "not used",
        Some(true) => "ok",
        Some(false) => return Err(not_ready("NATS did not answer within 2 s")),
    };
    Ok(Json(Ready {
        storage: "ok",
        directory_epoch: epoch,
        nats,
    }))
}

#[utoipa::path(
    post,
    path = "/v1/ack",
    summary = "Acknowledge what the device has committed locally",
    security(("bearer" = [])),
    request_body = sealpost_proto::AckRequest,
    responses((status = 204, description = "recorded"))
)]
async fn ack(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    ApiJson(req): ApiJson<AckRequest>,
) -> Result<impl IntoResponse, ApiFailure> {
    state.delivery.store().ack(me.device_id, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/ws",
    summary = "WebSocket: a text frame 'subscribed', then one binary TLS-encoded Delivery per frame; sends go the other way",
    security(("bearer" = [])),
    responses((status = 101, description = "switching protocols"), (status = 400, description = "not a WebSocket handshake"), (status = 426, description = "not a WebSocket handshake"), (status = 429, description = "too many connections from this device", body = sealpost_proto::ApiError))
)]
async fn websocket(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiFailure> {
    within(&state.limits.connects, &me, 1, "connections")?;
    let Ok(permit) = state.ws_slots.clone().try_acquire_owned() else {
        state.metrics.refusals("open_connections").inc();
        return Err(ApiFailure::unavailable("too many connections: retry later"));
    };
    let ws = ws
        // tungstenite zero-fills its whole read buffer on every read: keep it small.
        .read_buffer_size(WS_READ_BUFFER)
        .max_message_size(state.settings.max_body_bytes + WS_SEND_HEADER)
        .max_frame_size(state.settings.max_body_bytes + WS_SEND_HEADER);
    Ok(ws.on_upgrade(move |socket| async move {
        state.metrics.connections.inc();
        push_loop(socket, me, &state).await;
        state.metrics.connections.dec();
        drop(permit);
    }))
}

/// The WebSocket connection: pushes deliveries to the device, and takes sends from it.
///
/// A send is a binary frame `request id (u64, big-endian) ‖ group id (16 bytes) ‖ MLS message`,
/// handled exactly like `POST /v1/groups/{id}/messages`; once the message is durable (or refused)
/// the server answers with a text frame `{"id":…,"seq":…,"sent_at":…}` or
/// `{"id":…,"error":{"code":…,"message":…}}`. Answers may come in any order.
async fn push_loop(mut socket: WebSocket, me: DeviceIdentity, state: &AppState) {
    let mut sub = state.delivery.hub().subscribe(me.device_id);
    // Frames accepted by other nodes (several nodes sharing the database).
    let mut remote = state.delivery.hub().subscribe_remote(&me.device_id).await;
    // Tell the client it is subscribed: anything appended from now on will be pushed, so a sync
    // started after this frame misses nothing.
    if socket
        .send(Message::Text("subscribed".into()))
        .await
        .is_err()
    {
        return;
    }
    let (answers_tx, mut answers) = tokio::sync::mpsc::channel::<String>(MAX_WS_INFLIGHT);
    let inflight = Arc::new(Semaphore::new(MAX_WS_INFLIGHT));
    let period = Duration::from_secs(30);
    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            frame = sub.frames.recv() => {
                let Some(frame) = frame else { break }; // dropped as too slow
                if !written(write_queued(&mut socket, Message::Binary(frame), &mut sub.frames, &mut answers)).await {
                    break;
                }
            }
            frame = next_remote(&mut remote) => {
                // NATS ended the subscription: reconnecting makes the client catch up.
                let Some(frame) = frame else { break };
                state.metrics.frames_pushed.inc();
                if !written(socket.send(Message::Binary(frame.payload))).await {
                    break;
                }
            }
            answer = answers.recv() => {
                let Some(answer) = answer else { break };
                if !written(write_queued(&mut socket, Message::Text(answer.into()), &mut sub.frames, &mut answers)).await {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Binary(request))) => {
                    // Back-pressure: with MAX_WS_INFLIGHT sends pending, stop reading.
                    let Ok(permit) = inflight.clone().acquire_owned().await else { break };
                    let (delivery, limits, me, tx) = (state.delivery.clone(), state.limits.clone(), me.clone(), answers_tx.clone());
                    tokio::spawn(async move {
                        let answer = ws_send(&delivery, &limits, &me, &request).await;
                        let _ = tx.send(answer).await;
                        drop(permit);
                    });
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {} // pings are answered by the library; text is ignored
            },
            _ = keepalive.tick() => {
                if !written(socket.send(Message::Ping(Bytes::new()))).await {
                    break;
                }
            }
            () = state.shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                break;
            }
        }
    }
}

/// Frames written in one flush at most, so that a connection whose queue refills as fast as it
/// drains still reads its incoming frames, pings and shutdown in between.
/// A write to a WebSocket that does not finish in this time ends the connection: the client
/// stopped reading, and the server does not hold its frames for it (it catches up when it
/// connects again).
const WS_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a write to the WebSocket finished, in time and without error.
async fn written(write: impl Future<Output = Result<(), axum::Error>>) -> bool {
    matches!(
        tokio::time::timeout(WS_WRITE_TIMEOUT, write).await,
        Ok(Ok(()))
    )
}

const MAX_BURST: usize = 256;

/// Writes `first`, then the deliveries and answers already queued (up to [`MAX_BURST`]), in one
/// flush: one system call for a burst instead of one a frame.
async fn write_queued(
    socket: &mut WebSocket,
    first: Message,
    frames: &mut mpsc::Receiver<Bytes>,
    answers: &mut mpsc::Receiver<String>,
) -> Result<(), axum::Error> {
    socket.feed(first).await?;
    for _ in 1..MAX_BURST {
        if let Ok(frame) = frames.try_recv() {
            socket.feed(Message::Binary(frame)).await?;
        } else if let Ok(answer) = answers.try_recv() {
            socket.feed(Message::Text(answer.into())).await?;
        } else {
            break;
        }
    }
    socket.flush().await
}

/// The next frame from another node; never, on a single node.
async fn next_remote(remote: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    use futures_util::StreamExt as _;
    match remote {
        Some(sub) => sub.next().await,
        None => std::future::pending().await,
    }
}

async fn ws_send(
    delivery: &DeliveryService,
    limits: &Limits,
    me: &DeviceIdentity,
    request: &[u8],
) -> String {
    let (id, result) = match request.split_at_checked(WS_SEND_HEADER) {
        Some((header, payload)) => {
            let mut id = [0u8; 8];
            id.copy_from_slice(&header[..8]);
            let result = match GroupId::from_slice(&header[8..]) {
                Ok(group) => match within(&limits.sends, me, 1, "messages sent") {
                    Ok(()) => delivery.post_message(me, group, payload.to_vec()).await,
                    Err(e) => Err(e),
                },
                Err(_) => Err(ApiFailure::bad_request("invalid group id")),
            };
            (u64::from_be_bytes(id), result)
        }
        None => (
            0,
            Err(ApiFailure::bad_request(
                "a send frame starts with a 24-byte header",
            )),
        ),
    };
    let value = match result {
        Ok(p) => serde_json::json!({ "id": id, "seq": p.seq, "sent_at": p.sent_at }),
        Err(e) => serde_json::json!({ "id": id, "error": e.to_api_error() }),
    };
    value.to_string()
}
