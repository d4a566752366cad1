//! The client side of the server's HTTP API.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use sealpost_proto::directory::{
    AuditResponse, BatchLookupRequest, BatchLookupResponse, DirectoryKeys, HistoryResponse,
    LookupResponse, SignedRoot,
};
use sealpost_proto::link::{LinkApproval, LinkRequest};
use sealpost_proto::{
    AckRequest, ApiError, ChallengeRequest, ChallengeResponse, ClaimKeyPackagesResponse,
    CommitUpload, DeviceId, ErrorCode, GroupId, KeyPackageStock, Limits, PostedResponse,
    RegisterRequest, SyncBatch, SyncRequest, TokenRequest, TokenResponse, UploadKeyPackagesRequest,
    UploadStatus, Username, auth_challenge_message,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tls_codec::Serialize as _;

use crate::error::Error;

/// The longest one request of a file transfer may take (a piece of an upload, or a download).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);

/// Signs authentication challenges (the device key).
pub trait ChallengeSigner: Send + Sync {
    /// Signs `message` with the device key.
    fn sign_challenge(&self, message: &[u8]) -> Result<Vec<u8>, Error>;
}

/// A connection to one server.
pub struct Api {
    base: String,
    http: reqwest::Client,
    device: DeviceId,
    token: Option<String>,
    /// When the token expires (unix seconds).
    token_expires: u64,
    /// Whether the token was issued since the session was restored (and so is worth keeping).
    signed_in: bool,
    /// What the server accepts, once asked.
    limits: Option<Limits>,
}

/// A session token kept in the profile between commands (sealed like the rest of it), so that
/// a one-shot command does not sign in every time.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct SavedSession {
    pub token: String,
    pub expires_at: u64,
}

enum Body {
    None,
    Json(Vec<u8>),
    Raw(Vec<u8>),
}

impl Api {
    /// A client for `base` (e.g. `http://127.0.0.1:7443`) acting as `device`.
    pub fn new(base: &str, device: DeviceId) -> Result<Self, Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            // The server closes a connection that has been idle for its read timeout (30 s by
            // default); one kept longer here can be closed under a request that then fails.
            .pool_idle_timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| Error::Protocol(format!("cannot build the HTTP client: {e}")))?;
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::BadServerUrl);
        }
        Ok(Self {
            base,
            http,
            device,
            token: None,
            token_expires: 0,
            signed_in: false,
            limits: None,
        })
    }

    /// The WebSocket URL for push.
    pub fn ws_url(&self) -> String {
        let rest = self.base.strip_prefix("http").unwrap_or(&self.base);
        format!("ws{rest}/v1/ws")
    }

    /// What the server accepts (asked once); `None` from a server that does not say.
    pub async fn limits(&mut self) -> Result<Option<Limits>, Error> {
        if let Some(limits) = self.limits {
            return Ok(Some(limits));
        }
        match self
            .call(Method::GET, "/v1/limits", Body::None)
            .await
            .and_then(decode_json::<Limits>)
        {
            Ok(limits) => {
                self.limits = Some(limits);
                Ok(Some(limits))
            }
            Err(Error::Server {
                code: ErrorCode::NotFound,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Forgets the session token (the server refused it): the next call signs in again.
    pub fn forget_token(&mut self) {
        self.token = None;
    }

    /// The current token, signing in if needed.
    pub async fn token(&mut self, signer: &dyn ChallengeSigner) -> Result<String, Error> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let ch: ChallengeResponse = self
            .call(
                Method::POST,
                "/v1/auth/challenge",
                Body::Json(json(&ChallengeRequest {
                    device_id: self.device,
                })?),
            )
            .await
            .and_then(decode_json)?;
        let signature =
            signer.sign_challenge(&auth_challenge_message(&self.device, &ch.challenge))?;
        let req = TokenRequest {
            device_id: self.device,
            challenge: ch.challenge,
            signature,
        };
        let tok: TokenResponse = self
            .call(Method::POST, "/v1/auth/token", Body::Json(json(&req)?))
            .await
            .and_then(decode_json)
            .map_err(|e| match e {
                // The server's word for a device it no longer has (removed from its account):
                // signing in again cannot help.
                Error::Server {
                    code: ErrorCode::Unauthorized,
                    message,
                } if message == "unknown device" => Error::DeviceRemoved,
                other => other,
            })?;
        self.token = Some(tok.token.clone());
        self.token_expires = tok.expires_at;
        self.signed_in = true;
        Ok(tok.token)
    }

    /// Takes up a session saved by an earlier command, unless it is about to expire (the
    /// server refusing it anyway makes the next call sign in again).
    pub(crate) fn restore_session(&mut self, saved: SavedSession) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if saved.expires_at > now + 60 {
            self.token = Some(saved.token);
            self.token_expires = saved.expires_at;
        }
    }

    /// The session to save, if a new one was issued since it was restored (once).
    pub(crate) fn new_session(&mut self) -> Option<SavedSession> {
        if !std::mem::take(&mut self.signed_in) {
            return None;
        }
        self.token.clone().map(|token| SavedSession {
            token,
            expires_at: self.token_expires,
        })
    }

    fn request(&self, method: Method, path: &str, body: Body) -> reqwest::RequestBuilder {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        match body {
            Body::None => req,
            Body::Json(b) => req.header("content-type", "application/json").body(b),
            Body::Raw(b) => req
                .header("content-type", "application/octet-stream")
                .body(b),
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> Error {
        Error::ServerUnreachable {
            url: self.base.clone(),
            reason: short_reason(e),
        }
    }

    /// Sends a request; a refusal is an error. A rate limit that the server says lifts within
    /// [`RETRY_WITHIN`] (its `Retry-After`) is waited out once, and the request sent again: a
    /// burst a moment over the limit goes through a moment later instead of failing.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        let again = req.try_clone();
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        let resp = match (again, soon(&resp)) {
            (Some(again), Some(wait)) => {
                tokio::time::sleep(wait).await;
                again.send().await.map_err(|e| self.unreachable(&e))?
            }
            _ => resp,
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(e) => Err(Error::Server {
                code: e.code,
                message: e.message,
            }),
            // A refused token, whoever said it: sign in again.
            Err(_) if status == StatusCode::UNAUTHORIZED => Err(Error::Server {
                code: ErrorCode::Unauthorized,
                message: format!("HTTP {status}"),
            }),
            // Not the server's own answer (it answers every refusal in JSON): a proxy or load
            // balancer in front of it (a 502 when the node behind died mid-request, a 503 or 504
            // when none answered), or an answer damaged on the way. Whether the server took the
            // request is unknown, as when the connection breaks: a refusal that is not the
            // server's must not make the client drop what it may have stored.
            Err(_) => Err(Error::ServerUnreachable {
                url: self.base.clone(),
                reason: format!("HTTP {status} from something in front of the server"),
            }),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Body) -> Result<Vec<u8>, Error> {
        let resp = self.send(self.request(method, path, body)).await?;
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        Ok(bytes.to_vec())
    }

    /// An authenticated request built by `build`; signs in again once if the token was refused.
    async fn authed_request(
        &mut self,
        signer: &dyn ChallengeSigner,
        build: impl Fn(&Self) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Error> {
        self.token(signer).await?;
        match self.send(build(self)).await {
            Err(Error::Server {
                code: ErrorCode::Unauthorized,
                ..
            }) => {
                self.token = None;
                self.token(signer).await?;
                self.send(build(self)).await
            }
            other => other,
        }
    }

    /// An answer's JSON body.
    async fn json_body<T: DeserializeOwned>(&self, resp: reqwest::Response) -> Result<T, Error> {
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        decode_json(bytes.to_vec())
    }

    /// An authenticated call; signs in again once if the token was refused.
    async fn authed(
        &mut self,
        signer: &dyn ChallengeSigner,
        method: Method,
        path: &str,
        body: impl Fn() -> Body,
    ) -> Result<Vec<u8>, Error> {
        let resp = self
            .authed_request(signer, |api| api.request(method.clone(), path, body()))
            .await?;
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        Ok(bytes.to_vec())
    }

    /// Tells the server to keep the group's messages and files at most `seconds` (0: the
    /// retention time only).
    pub async fn set_group_expiry(
        &mut self,
        s: &dyn ChallengeSigner,
        group: GroupId,
        seconds: u64,
    ) -> Result<(), Error> {
        let body = json(&sealpost_proto::GroupExpiry { seconds })?;
        self.authed(
            s,
            Method::PUT,
            &format!("/v1/groups/{group}/expiry"),
            || Body::Json(body.clone()),
        )
        .await
        .map(|_| ())
    }

    /// Starts uploading a file of `length` bytes for the members of `group`.
    pub async fn create_upload(
        &mut self,
        s: &dyn ChallengeSigner,
        group: GroupId,
        length: u64,
    ) -> Result<UploadStatus, Error> {
        let path = format!("/v1/groups/{group}/blobs");
        let resp = self
            .authed_request(s, |api| {
                api.request(Method::POST, &path, Body::None)
                    .header("upload-length", length)
                    .header("upload-complete", "?0")
            })
            .await?;
        self.json_body(resp).await
    }

    /// Where an upload stands.
    pub async fn upload_status(
        &mut self,
        s: &dyn ChallengeSigner,
        id: &str,
    ) -> Result<UploadStatus, Error> {
        let path = format!("/v1/uploads/{id}");
        let resp = self
            .authed_request(s, |api| api.request(Method::HEAD, &path, Body::None))
            .await?;
        let number = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| Error::Protocol(format!("an upload's state without {name}")))
        };
        Ok(UploadStatus {
            id: id.to_owned(),
            length: number("upload-length")?,
            offset: number("upload-offset")?,
            finished: resp
                .headers()
                .get("upload-complete")
                .is_some_and(|v| v.as_bytes() == b"?1"),
        })
    }

    /// Appends `data` to an upload at `offset` (`last`: it ends the upload).
    pub async fn append_upload(
        &mut self,
        s: &dyn ChallengeSigner,
        id: &str,
        offset: u64,
        data: bytes::Bytes,
        last: bool,
    ) -> Result<UploadStatus, Error> {
        let path = format!("/v1/uploads/{id}");
        let resp = self
            .authed_request(s, |api| {
                api.request(Method::PATCH, &path, Body::None)
                    .header("content-type", "application/partial-upload")
                    .header("upload-offset", offset)
                    .header("upload-complete", if last { "?1" } else { "?0" })
                    .timeout(TRANSFER_TIMEOUT)
                    .body(data.clone())
            })
            .await?;
        self.json_body(resp).await
    }

    /// Cancels an upload.
    pub async fn cancel_upload(&mut self, s: &dyn ChallengeSigner, id: &str) -> Result<(), Error> {
        let path = format!("/v1/uploads/{id}");
        self.authed_request(s, |api| api.request(Method::DELETE, &path, Body::None))
            .await
            .map(|_| ())
    }

    /// Starts fetching a file, from `from` on; the answer's body is read as it comes. An
    /// answer that does not start at `from` is refused.
    pub async fn fetch_blob(
        &mut self,
        s: &dyn ChallengeSigner,
        id: &str,
        from: u64,
    ) -> Result<reqwest::Response, Error> {
        let path = format!("/v1/blobs/{id}");
        let resp = self
            .authed_request(s, |api| {
                let req = api
                    .request(Method::GET, &path, Body::None)
                    .timeout(TRANSFER_TIMEOUT);
                if from > 0 {
                    req.header("range", format!("bytes={from}-"))
                } else {
                    req
                }
            })
            .await?;
        let starts_at_from = from == 0
            || (resp.status() == reqwest::StatusCode::PARTIAL_CONTENT
                && resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with(&format!("bytes {from}-"))));
        if !starts_at_from {
            return Err(Error::Protocol(format!(
                "the server did not continue the file from byte {from} as asked"
            )));
        }
        Ok(resp)
    }

    /// The next piece of a file being fetched; `None` at its end.
    pub async fn next_piece(
        &self,
        resp: &mut reqwest::Response,
    ) -> Result<Option<bytes::Bytes>, Error> {
        resp.chunk().await.map_err(|e| self.unreachable(&e))
    }

    /// Tells the server this device has the file.
    pub async fn blob_received(&mut self, s: &dyn ChallengeSigner, id: &str) -> Result<(), Error> {
        let path = format!("/v1/blobs/{id}/received");
        self.authed(s, Method::POST, &path, || Body::None)
            .await
            .map(|_| ())
    }

    /// Registers the account and this device.
    pub async fn register(&self, req: &RegisterRequest) -> Result<(), Error> {
        self.call(Method::POST, "/v1/accounts", Body::Json(json(req)?))
            .await
            .map(|_| ())
    }

    /// The directory's public keys (pinned at registration).
    pub async fn directory_keys(&self) -> Result<DirectoryKeys, Error> {
        self.call(Method::GET, "/v1/directory/keys", Body::None)
            .await
            .and_then(decode_json)
    }

    /// The signed root of an epoch, or the latest one.
    pub async fn directory_root(&self, epoch: Option<u64>) -> Result<SignedRoot, Error> {
        let path = match epoch {
            Some(e) => format!("/v1/directory/roots/{e}"),
            None => "/v1/directory/root".to_owned(),
        };
        self.call(Method::GET, &path, Body::None)
            .await
            .and_then(decode_json)
    }

    /// A lookup proof for `user`'s current directory entry.
    pub async fn directory_lookup(
        &mut self,
        s: &dyn ChallengeSigner,
        user: &Username,
    ) -> Result<LookupResponse, Error> {
        self.authed(
            s,
            Method::GET,
            &format!("/v1/directory/lookup/{user}"),
            || Body::None,
        )
        .await
        .and_then(decode_json)
    }

    /// Lookup proofs for several users at one epoch.
    pub async fn directory_batch_lookup(
        &mut self,
        s: &dyn ChallengeSigner,
        users: &[Username],
    ) -> Result<BatchLookupResponse, Error> {
        let body = json(&BatchLookupRequest {
            usernames: users.to_vec(),
        })?;
        self.authed(s, Method::POST, "/v1/directory/lookups", || {
            Body::Json(body.clone())
        })
        .await
        .and_then(decode_json)
    }

    /// A proof of every version of `user`'s directory entry.
    pub async fn directory_history(
        &mut self,
        s: &dyn ChallengeSigner,
        user: &Username,
    ) -> Result<HistoryResponse, Error> {
        self.authed(
            s,
            Method::GET,
            &format!("/v1/directory/history/{user}"),
            || Body::None,
        )
        .await
        .and_then(decode_json)
    }

    /// The append-only proof from epoch `from` to `from + 1`.
    pub async fn directory_audit(&self, from: u64) -> Result<AuditResponse, Error> {
        self.call(
            Method::GET,
            &format!("/v1/directory/audit?from={from}"),
            Body::None,
        )
        .await
        .and_then(decode_json)
    }

    /// Files a new device's link request.
    pub async fn link_request(&self, req: &LinkRequest) -> Result<(), Error> {
        self.call(Method::POST, "/v1/links", Body::Json(json(req)?))
            .await
            .map(|_| ())
    }

    /// Reads a waiting link request of this account.
    pub async fn link_pending(
        &mut self,
        s: &dyn ChallengeSigner,
        link_id: &str,
    ) -> Result<LinkRequest, Error> {
        self.authed(s, Method::GET, &format!("/v1/links/{link_id}"), || {
            Body::None
        })
        .await
        .and_then(decode_json)
    }

    /// Approves a waiting link request.
    pub async fn link_approve(
        &mut self,
        s: &dyn ChallengeSigner,
        link_id: &str,
        approval: &LinkApproval,
    ) -> Result<(), Error> {
        let body = json(approval)?;
        self.authed(
            s,
            Method::POST,
            &format!("/v1/links/{link_id}/approve"),
            || Body::Json(body.clone()),
        )
        .await
        .map(|_| ())
    }

    /// The approval of this (new) device's link request.
    pub async fn link_approval(
        &mut self,
        s: &dyn ChallengeSigner,
        link_id: &str,
    ) -> Result<LinkApproval, Error> {
        self.authed(
            s,
            Method::GET,
            &format!("/v1/links/{link_id}/approval"),
            || Body::None,
        )
        .await
        .and_then(decode_json)
    }

    /// Removes another device of this account.
    pub async fn remove_device(
        &mut self,
        s: &dyn ChallengeSigner,
        device: DeviceId,
    ) -> Result<(), Error> {
        self.authed(s, Method::DELETE, &format!("/v1/devices/{device}"), || {
            Body::None
        })
        .await
        .map(|_| ())
    }

    /// Claims one key package of the suite per device of `user`.
    pub async fn claim_key_packages(
        &mut self,
        s: &dyn ChallengeSigner,
        user: &Username,
        suite: u16,
    ) -> Result<ClaimKeyPackagesResponse, Error> {
        self.authed(
            s,
            Method::POST,
            &format!("/v1/users/{user}/key-packages?ciphersuite={suite}"),
            || Body::None,
        )
        .await
        .and_then(decode_json)
    }

    /// Uploads key packages.
    pub async fn upload_key_packages(
        &mut self,
        s: &dyn ChallengeSigner,
        kps: Vec<Vec<u8>>,
    ) -> Result<(), Error> {
        let body = json(&UploadKeyPackagesRequest { key_packages: kps })?;
        self.authed(s, Method::POST, "/v1/key-packages", || {
            Body::Json(body.clone())
        })
        .await
        .map(|_| ())
    }

    /// This device's single-use key-package stock on the server, for one suite.
    pub async fn key_package_stock(
        &mut self,
        s: &dyn ChallengeSigner,
        suite: u16,
    ) -> Result<u64, Error> {
        let stock: KeyPackageStock = self
            .authed(
                s,
                Method::GET,
                &format!("/v1/key-packages?ciphersuite={suite}"),
                || Body::None,
            )
            .await
            .and_then(decode_json)?;
        Ok(stock.stock)
    }

    /// Registers a new group from its GroupInfo.
    pub async fn create_group(
        &mut self,
        s: &dyn ChallengeSigner,
        group_info: Vec<u8>,
    ) -> Result<(), Error> {
        self.authed(s, Method::POST, "/v1/groups", || {
            Body::Raw(group_info.clone())
        })
        .await
        .map(|_| ())
    }

    /// Posts an application message or a leave proposal.
    pub async fn post_message(
        &mut self,
        s: &dyn ChallengeSigner,
        group: GroupId,
        msg: Vec<u8>,
    ) -> Result<PostedResponse, Error> {
        self.authed(
            s,
            Method::POST,
            &format!("/v1/groups/{group}/messages"),
            || Body::Raw(msg.clone()),
        )
        .await
        .and_then(decode_json)
    }

    /// Posts a commit and its Welcome.
    pub async fn post_commit(
        &mut self,
        s: &dyn ChallengeSigner,
        group: GroupId,
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
    ) -> Result<PostedResponse, Error> {
        let upload = CommitUpload {
            commit: commit.into(),
            welcome: welcome.unwrap_or_default().into(),
        };
        let body = upload
            .tls_serialize_detached()
            .map_err(|_| Error::Protocol("cannot encode the commit".into()))?;
        self.authed(
            s,
            Method::POST,
            &format!("/v1/groups/{group}/commits"),
            || Body::Raw(body.clone()),
        )
        .await
        .and_then(decode_json)
    }

    /// Fetches deliveries after the given cursors.
    pub async fn sync(
        &mut self,
        s: &dyn ChallengeSigner,
        req: &SyncRequest,
    ) -> Result<SyncBatch, Error> {
        let body = json(req)?;
        let bytes = self
            .authed(s, Method::POST, "/v1/sync", || Body::Json(body.clone()))
            .await?;
        SyncBatch::decode(&bytes).map_err(|_| Error::Protocol("malformed sync batch".into()))
    }

    /// Acknowledges what is committed locally.
    pub async fn ack(&mut self, s: &dyn ChallengeSigner, req: &AckRequest) -> Result<(), Error> {
        let body = json(req)?;
        self.authed(s, Method::POST, "/v1/ack", || Body::Json(body.clone()))
            .await
            .map(|_| ())
    }
}

/// The longest wait for a rate limit to lift that a request waits out by itself; a longer one
/// is an error that says when to try again.
pub const RETRY_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// For a 429 whose `Retry-After` (in seconds) is at most [`RETRY_WITHIN`]: how long to wait.
fn soon(resp: &reqwest::Response) -> Option<std::time::Duration> {
    if resp.status() != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let seconds: u64 = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let wait = std::time::Duration::from_secs(seconds);
    (wait <= RETRY_WITHIN).then_some(wait)
}

fn json(v: &impl Serialize) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|e| Error::Protocol(e.to_string()))
}

fn decode_json<T: DeserializeOwned>(bytes: Vec<u8>) -> Result<T, Error> {
    serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(format!("unexpected JSON: {e}")))
}

fn short_reason(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "connection refused or unreachable".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else {
        "connection failed".into()
    }
}
