//! The one place where errors become HTTP answers. Messages are for people and never contain
//! message content, keys or tokens.

use std::time::Duration;

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sealpost_proto::{ApiError, ErrorCode};

use crate::storage::StoreError;

/// An API failure: a code and a human-readable message.
#[derive(Debug)]
pub struct ApiFailure {
    code: ErrorCode,
    message: String,
    /// For a 429: when to try again (the `Retry-After` header).
    retry_after: Option<Duration>,
}

impl ApiFailure {
    /// A failure with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    /// 400.
    pub fn bad_request(message: &str) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    /// 401.
    pub fn unauthorized(message: &str) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }
    /// 403.
    pub fn forbidden(message: &str) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    /// 404.
    pub fn not_found(message: &str) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    /// 413.
    pub fn too_large(message: &str) -> Self {
        Self::new(ErrorCode::TooLarge, message)
    }
    /// 429: `what` is over its limit until `wait` has passed (said in the message and in the
    /// `Retry-After` header, in whole seconds rounded up).
    pub fn rate_limited(what: &str, wait: Duration) -> Self {
        let wait = Duration::from_secs(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
            .max(Duration::from_secs(1));
        let mut failure = Self::new(
            ErrorCode::RateLimited,
            format!("{what}: try again in {}", in_words(wait)),
        );
        failure.retry_after = Some(wait);
        failure
    }
    /// 503.
    pub fn unavailable(message: &str) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    /// 500: a bug. Details go to the log, not to the client.
    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal server error")
    }

    /// The JSON body of this failure.
    pub fn to_api_error(&self) -> ApiError {
        ApiError {
            code: self.code,
            message: self.message.clone(),
        }
    }

    fn status(&self) -> StatusCode {
        match self.code {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict | ErrorCode::EpochConflict => StatusCode::CONFLICT,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::NoKeyPackage => StatusCode::NOT_FOUND,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<crate::directory::DirectoryError> for ApiFailure {
    fn from(e: crate::directory::DirectoryError) -> Self {
        match e {
            crate::directory::DirectoryError::NotFound => {
                Self::not_found("not in the key directory")
            }
            other => {
                tracing::error!(error = %other, "key directory failure");
                Self::internal()
            }
        }
    }
}

impl From<StoreError> for ApiFailure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::new(ErrorCode::Conflict, "already exists"),
            StoreError::EpochConflict { current } => Self::new(
                ErrorCode::EpochConflict,
                format!("the group is at epoch {current}: fetch, process and retry"),
            ),
            StoreError::NotMember => Self::forbidden("not a member of this group"),
            StoreError::NotFound => Self::not_found("not found"),
            StoreError::OffsetMismatch { current } => Self::new(
                ErrorCode::Conflict,
                format!("the upload stands at offset {current}: continue from there"),
            ),
            StoreError::TooLong => {
                Self::too_large("more bytes than the upload's declared length (Upload-Length)")
            }
            StoreError::QuotaExceeded { quota } => Self::too_large(&format!(
                "this account's files on the server would pass its quota of {} MiB: wait until its recipients have fetched the files it sent",
                quota / (1024 * 1024)
            )),
            StoreError::Full => Self::unavailable("too many requests are waiting: retry later"),
            StoreError::Backend(detail) => {
                tracing::warn!(%detail, "storage failure");
                Self::unavailable(
                    "the server cannot store anything at the moment (its storage failed); nothing was stored: try again later",
                )
            }
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = self.retry_after.map(|wait| wait.as_secs().to_string());
        let body = Json(ApiError {
            code: self.code,
            message: self.message,
        });
        match retry_after {
            Some(secs) => (status, [(header::RETRY_AFTER, secs)], body).into_response(),
            None => (status, body).into_response(),
        }
    }
}

/// A wait of whole seconds as a person would say it: "8 seconds", "30 minutes", "2 hours"
/// (rounded up).
fn in_words(wait: Duration) -> String {
    let secs = wait.as_secs();
    let (n, unit) = match secs {
        0..120 => (secs, "second"),
        120..7200 => (secs.div_ceil(60), "minute"),
        _ => (secs.div_ceil(3600), "hour"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}
