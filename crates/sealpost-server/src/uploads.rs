//! Files over HTTP: resumable uploads after the IETF draft (draft-ietf-httpbis-resumable-upload)
//! and fetching by the members of the file's group.
//!
//! - `POST /v1/groups/{group}/blobs` with `Upload-Length` starts an upload (a member of the group
//!   only), answers `201` with `Location: /v1/uploads/{id}`, and takes the first bytes if the
//!   body has any.
//! - `HEAD /v1/uploads/{id}` says where it stands (`Upload-Offset`, `Upload-Complete`);
//!   `PATCH /v1/uploads/{id}` with `Upload-Offset` continues it from there; `DELETE` cancels it.
//!   Only the device that started it reaches it.
//! - `GET /v1/blobs/{id}` (with `Range: bytes=N-` to resume) serves a finished file to the
//!   current member devices of its group; `POST /v1/blobs/{id}/received` says the device has
//!   it, and the last recipient's deletes it.
//!
//! Bodies are streamed, never held whole: what arrives is stored every [`UPLOAD_CHUNK`] bytes,
//! and what is stored survives an interrupted request. Anyone else, and a file that does not
//! exist, get the same 404.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures_util::StreamExt as _;
use openmls_traits::random::OpenMlsRand as _;
use sealpost_proto::{DeviceIdentity, GroupId, UploadStatus};

use crate::error::ApiFailure;
use crate::http::{AppState, Authenticated, is_member, parse_path, within};
use crate::storage::{BlobId, BlobRecord, NewBlob, StoreError};

/// Bytes of an upload stored at a time (and so the most an interruption loses).
pub const UPLOAD_CHUNK: usize = 1024 * 1024;
/// Bytes of a file read from storage at a time while serving it.
pub const READ_CHUNK: usize = 256 * 1024;

const UPLOAD_LENGTH: &str = "upload-length";
const UPLOAD_OFFSET: &str = "upload-offset";
const UPLOAD_COMPLETE: &str = "upload-complete";
const UPLOAD_LIMIT: &str = "upload-limit";

fn not_found() -> ApiFailure {
    ApiFailure::not_found(
        "no such file: it never existed, is not for this device, or was deleted (after every recipient fetched it, or after the server's retention time)",
    )
}

fn blob_id(s: &str) -> Result<BlobId, ApiFailure> {
    hex::decode(s)
        .ok()
        .and_then(|b| BlobId::try_from(b).ok())
        .ok_or_else(|| ApiFailure::bad_request("invalid file id in the path"))
}

/// A structured-field integer header (`Upload-Length: 42`).
fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiFailure> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    ApiFailure::bad_request(&format!("the {name} header must be a whole number"))
                })
        })
        .transpose()
}

/// A structured-field boolean header (`Upload-Complete: ?1`); absent means false.
fn flag(headers: &HeaderMap, name: &str) -> Result<bool, ApiFailure> {
    match headers.get(name).map(HeaderValue::as_bytes) {
        None | Some(b"?0") => Ok(false),
        Some(b"?1") => Ok(true),
        Some(_) => Err(ApiFailure::bad_request(&format!(
            "the {name} header must be ?1 or ?0"
        ))),
    }
}

fn status_of(record: &BlobRecord, offset: u64, finished: bool) -> UploadStatus {
    UploadStatus {
        id: hex::encode(record.id),
        length: record.length,
        offset,
        finished,
    }
}

/// The draft's headers for an upload's state, with the same in JSON where there is a body.
fn upload_headers(status: &UploadStatus) -> [(&'static str, String); 3] {
    [
        (UPLOAD_OFFSET, status.offset.to_string()),
        (
            UPLOAD_COMPLETE,
            if status.finished { "?1" } else { "?0" }.to_owned(),
        ),
        (UPLOAD_LENGTH, status.length.to_string()),
    ]
}

/// Stores the body's bytes from `offset` on, every [`UPLOAD_CHUNK`], and what arrived before an
/// interruption too. The offset reached.
async fn receive(
    state: &AppState,
    record: &BlobRecord,
    mut offset: u64,
    body: Body,
) -> Result<u64, ApiFailure> {
    let idle = Duration::from_millis(state.settings.request_read_timeout_ms);
    let mut stream = body.into_data_stream();
    let mut buffer = BytesMut::new();
    let outcome = loop {
        match tokio::time::timeout(idle, stream.next()).await {
            Ok(None) => break Ok(()),
            Err(_) => {
                break Err(ApiFailure::bad_request(
                    "the upload's bytes stopped coming: continue it from its Upload-Offset",
                ));
            }
            Ok(Some(Err(_))) => {
                break Err(ApiFailure::bad_request(
                    "the upload was interrupted: continue it from its Upload-Offset",
                ));
            }
            Ok(Some(Ok(data))) => {
                let end = offset
                    .saturating_add(buffer.len() as u64)
                    .saturating_add(data.len() as u64);
                if end > record.length {
                    break Err(StoreError::TooLong.into());
                }
                buffer.extend_from_slice(&data);
                if buffer.len() >= UPLOAD_CHUNK {
                    offset = state
                        .blobs
                        .append_blob(record.id, offset, buffer.split().freeze())
                        .await?;
                }
            }
        }
    };
    if !buffer.is_empty() {
        offset = state
            .blobs
            .append_blob(record.id, offset, buffer.freeze())
            .await?;
    }
    outcome.map(|()| offset)
}

/// Finishes an upload whose every byte is stored: the group's other member devices, as they are
/// now, are the ones that must fetch it.
async fn finish(
    state: &AppState,
    me: &DeviceIdentity,
    record: &BlobRecord,
) -> Result<(), ApiFailure> {
    let devices = state.delivery.store().group_devices(record.group).await?;
    if !devices.contains(&me.device_id) {
        state.blobs.delete_blob(record.id).await?;
        return Err(ApiFailure::forbidden(
            "this device left the file's group before the upload finished: the file was deleted",
        ));
    }
    let recipients = devices.into_iter().filter(|d| *d != me.device_id).collect();
    state.blobs.finish_blob(record.id, recipients).await?;
    Ok(())
}

/// Stores what the request brought and finishes the upload once it is whole. The answer says
/// where it stands.
async fn continue_upload(
    state: &AppState,
    me: &DeviceIdentity,
    record: &BlobRecord,
    offset: u64,
    complete: bool,
    body: Body,
) -> Result<UploadStatus, ApiFailure> {
    let offset = receive(state, record, offset, body).await?;
    let finished = offset == record.length;
    if finished {
        finish(state, me, record).await?;
    } else if complete {
        return Err(ApiFailure::bad_request(&format!(
            "the upload ended (Upload-Complete: ?1) at {offset} of its {} bytes: send the rest from there",
            record.length
        )));
    }
    Ok(status_of(record, offset, finished))
}

/// `POST /v1/groups/{group}/blobs`: starts an upload.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/blobs",
    summary = "Start uploading an encrypted file for a group's members (resumable, after the IETF resumable-uploads draft)",
    description = "The body may carry the first bytes (or all). Answers with Location: /v1/uploads/{id}, Upload-Offset and Upload-Complete. The file counts against the account's quota until every other member device has fetched it.",
    security(("bearer" = [])),
    params(("group" = sealpost_proto::GroupId, Path, description = "the group's id (32 hex digits)"), ("Upload-Length" = u64, Header, minimum = 1, description = "the whole file's length"), ("Upload-Complete" = Option<String>, Header, pattern = "^\\?[01]$", description = "?1 if the body holds the rest of the file")),
    request_body(content = crate::openapi::Octets, content_type = "application/octet-stream", description = "the first bytes of the file, or none"),
    responses((status = 201, description = "started", body = sealpost_proto::UploadStatus), (status = 403, description = "not a member of the group", body = sealpost_proto::ApiError), (status = 429, description = "too many files from this device", body = sealpost_proto::ApiError), (status = 413, description = "the file is larger than this server takes, or would pass the account's quota", body = sealpost_proto::ApiError))
)]
pub async fn create(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiFailure> {
    let group: GroupId = parse_path(&group, "group id")?;
    let length = number(&headers, UPLOAD_LENGTH)?.ok_or_else(|| {
        ApiFailure::bad_request("an upload needs its length first: send the Upload-Length header")
    })?;
    let complete = flag(&headers, UPLOAD_COMPLETE)?;
    let max = state.settings.max_file_bytes;
    if length == 0 {
        return Err(ApiFailure::bad_request("an empty file needs no upload"));
    }
    if length > max {
        return Err(ApiFailure::too_large(&format!(
            "the file is larger than this server's limit of {} MiB",
            max / (1024 * 1024)
        )));
    }
    within(&state.limits.sends, &me, 1, "messages and files sent")?;
    if !is_member(&state, &me, group).await? {
        return Err(ApiFailure::forbidden("not a member of this group"));
    }
    let id: BlobId = state
        .auth
        .crypto()
        .random_array()
        .map_err(|_| ApiFailure::internal())?;
    let record = BlobRecord {
        id,
        group,
        uploader: me.device_id,
        username: me.username.clone(),
        length,
        offset: 0,
        finished: false,
    };
    state
        .blobs
        .create_blob(
            NewBlob {
                id,
                group,
                uploader: me.device_id,
                username: me.username.clone(),
                length,
            },
            state.settings.file_quota_bytes,
        )
        .await?;
    let status = continue_upload(&state, &me, &record, 0, complete, body).await?;
    let location = format!("/v1/uploads/{}", status.id);
    let mut response = (
        StatusCode::CREATED,
        upload_headers(&status),
        [
            (header::LOCATION.as_str(), location),
            (UPLOAD_LIMIT, format!("max-size={max}")),
        ],
        Json(status),
    )
        .into_response();
    no_store(&mut response);
    Ok(response)
}

fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The upload `id`, if this device started it.
async fn own_upload(
    state: &AppState,
    me: &DeviceIdentity,
    id: &str,
) -> Result<BlobRecord, ApiFailure> {
    let id = blob_id(id)?;
    state
        .blobs
        .blob(id)
        .await?
        .filter(|r| r.uploader == me.device_id)
        .ok_or_else(not_found)
}

/// `HEAD /v1/uploads/{id}`: where the upload stands.
#[utoipa::path(
    head,
    path = "/v1/uploads/{upload}",
    summary = "Where an upload stands (Upload-Offset, Upload-Complete in the headers); the uploading device only",
    security(("bearer" = [])),
    params(("upload" = String, Path, pattern = "^[0-9a-f]{32}$", description = "the upload's id, as its creation answered")),
    responses((status = 204, description = "its state, in the headers"), (status = 404, description = "no such upload of this device"))
)]
pub async fn offset(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiFailure> {
    let record = own_upload(&state, &me, &id).await?;
    let status = status_of(&record, record.offset, record.finished);
    let mut response = (StatusCode::NO_CONTENT, upload_headers(&status)).into_response();
    no_store(&mut response);
    Ok(response)
}

/// `PATCH /v1/uploads/{id}`: continues the upload from `Upload-Offset`.
#[utoipa::path(
    patch,
    path = "/v1/uploads/{upload}",
    summary = "Continue an upload from Upload-Offset",
    security(("bearer" = [])),
    params(("upload" = String, Path, pattern = "^[0-9a-f]{32}$", description = "the upload's id, as its creation answered"), ("Upload-Offset" = u64, Header, description = "where the body's bytes go: the offset the server stands at"), ("Upload-Complete" = Option<String>, Header, pattern = "^\\?[01]$", description = "?1 if the body holds the rest of the file")),
    request_body(content((crate::openapi::Octets = "application/octet-stream"), (crate::openapi::Octets = "application/partial-upload")), description = "the next bytes of the file (the IETF draft names the type application/partial-upload; the server takes any)"),
    responses((status = 200, description = "stored", body = sealpost_proto::UploadStatus), (status = 404, description = "no such upload of this device", body = sealpost_proto::ApiError), (status = 409, description = "the offset is not where the upload stands", body = sealpost_proto::ApiError))
)]
pub async fn append(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiFailure> {
    let record = own_upload(&state, &me, &id).await?;
    let offset = number(&headers, UPLOAD_OFFSET)?.ok_or_else(|| {
        ApiFailure::bad_request("say where the bytes go: send the Upload-Offset header")
    })?;
    let complete = flag(&headers, UPLOAD_COMPLETE)?;
    if record.finished {
        return Err(StoreError::Conflict.into());
    }
    if offset != record.offset {
        return Err(StoreError::OffsetMismatch {
            current: record.offset,
        }
        .into());
    }
    let status = continue_upload(&state, &me, &record, offset, complete, body).await?;
    let mut response = (StatusCode::OK, upload_headers(&status), Json(status)).into_response();
    no_store(&mut response);
    Ok(response)
}

/// `DELETE /v1/uploads/{id}`: cancels the upload (or deletes the finished file).
#[utoipa::path(
    delete,
    path = "/v1/uploads/{upload}",
    summary = "Cancel an upload, or delete a file one sent",
    security(("bearer" = [])),
    params(("upload" = String, Path, pattern = "^[0-9a-f]{32}$", description = "the upload's id, as its creation answered")),
    responses((status = 204, description = "deleted"), (status = 404, description = "no such upload of this device", body = sealpost_proto::ApiError))
)]
pub async fn cancel(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    let record = own_upload(&state, &me, &id).await?;
    state.blobs.delete_blob(record.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `Range: bytes=N-`: where to start. Other forms are ignored (the whole file is sent).
fn range_start(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::RANGE)?.to_str().ok()?;
    let from = value.strip_prefix("bytes=")?.strip_suffix('-')?;
    from.parse().ok()
}

/// `GET /v1/blobs/{id}`: a finished file, for a current member device of its group.
#[utoipa::path(
    get,
    path = "/v1/blobs/{blob}",
    summary = "Fetch a finished encrypted file; current member devices of its group only",
    security(("bearer" = [])),
    params(("blob" = String, Path, pattern = "^[0-9a-f]{32}$", description = "the file's id (its upload's id)"), ("Range" = Option<String>, Header, pattern = "^bytes=[0-9]+-$", description = "bytes=N- to resume from octet N")),
    responses((status = 200, description = "the file", body = crate::openapi::Octets, content_type = "application/octet-stream"), (status = 206, description = "the file from the range's start", body = crate::openapi::Octets, content_type = "application/octet-stream"), (status = 404, description = "no such file for this device", body = sealpost_proto::ApiError))
)]
pub async fn fetch(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiFailure> {
    let id = blob_id(&id)?;
    let record = state
        .blobs
        .blob(id)
        .await?
        .filter(|r| r.finished)
        .ok_or_else(not_found)?;
    if !is_member(&state, &me, record.group).await? {
        return Err(not_found());
    }
    let length = record.length;
    let from = range_start(&headers).unwrap_or(0);
    if from >= length {
        return Err(ApiFailure::bad_request(&format!(
            "the range starts at or past the file's end ({length} bytes)"
        )));
    }
    let blobs = state.blobs.clone();
    let stream = futures_util::stream::try_unfold(from, move |at| {
        let blobs = blobs.clone();
        async move {
            if at >= length {
                return Ok(None);
            }
            let data = blobs
                .read_blob(id, at, READ_CHUNK)
                .await
                .map_err(std::io::Error::other)?;
            if data.is_empty() {
                return Err(std::io::Error::other("the file ended early"));
            }
            let next = at + data.len() as u64;
            Ok(Some((data, next)))
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length - from));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if from > 0 {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {from}-{}/{length}", length - 1)) {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    no_store(&mut response);
    Ok(response)
}

/// `POST /v1/blobs/{id}/received`: this device has the file (stored where it keeps it); the
/// last recipient's deletes it from the server.
#[utoipa::path(
    post,
    path = "/v1/blobs/{blob}/received",
    summary = "This device has the file; the last recipient's deletes it from the server",
    security(("bearer" = [])),
    params(("blob" = String, Path, pattern = "^[0-9a-f]{32}$", description = "the file's id (its upload's id)")),
    responses((status = 204, description = "recorded"))
)]
pub async fn received(
    State(state): State<AppState>,
    Authenticated(me): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    let id = blob_id(&id)?;
    state.blobs.blob_received(id, me.device_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
