//! The JSON control API. MLS payloads inside JSON are base64 (standard alphabet, padded);
//! bulk MLS traffic (sends, commits, deliveries) travels as raw bytes instead (see `delivery`).

use serde::{Deserialize, Serialize};
use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

use crate::ids::{DeviceId, GroupId, Username};

/// Serde helpers for base64 byte fields.
pub mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Encodes bytes as base64.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    /// Decodes base64 into bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <&str>::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }

    /// Serde helpers for a list of base64 strings.
    pub mod list {
        use super::*;
        use serde::ser::SerializeSeq;

        /// Encodes each element as base64.
        pub fn serialize<S: Serializer>(items: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(items.len()))?;
            for item in items {
                seq.serialize_element(&STANDARD.encode(item))?;
            }
            seq.end()
        }

        /// Decodes each element from base64.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
            let items = Vec::<String>::deserialize(d)?;
            items
                .iter()
                .map(|s| STANDARD.decode(s).map_err(serde::de::Error::custom))
                .collect()
        }
    }
}

/// Octets carried in JSON as standard base64 (padded): how the OpenAPI document names a
/// `#[serde(with = "b64")]` field.
#[cfg(feature = "openapi")]
pub struct Base64;

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Base64 {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[A-Za-z0-9+/]*={0,2}$"))
            .content_encoding("base64")
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Base64 {}

/// Domain separation for the account key's signature over a device key.
pub fn device_certificate_message(
    username: &Username,
    device_id: &DeviceId,
    device_key: &[u8],
) -> Vec<u8> {
    let mut m = b"sealpost device certificate v1\0".to_vec();
    m.extend_from_slice(username.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(device_id.as_bytes());
    m.extend_from_slice(device_key);
    m
}

/// Domain separation for the device key's signature over an authentication challenge.
pub fn auth_challenge_message(device_id: &DeviceId, challenge: &[u8]) -> Vec<u8> {
    let mut m = b"sealpost auth challenge v1\0".to_vec();
    m.extend_from_slice(device_id.as_bytes());
    m.extend_from_slice(challenge);
    m
}

/// `POST /v1/accounts`: creates an account and its first device.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The handle asked for.
    pub username: Username,
    /// The account's Ed25519 public key.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub account_key: Vec<u8>,
    /// The first device.
    pub device_id: DeviceId,
    /// The device's Ed25519 public key (its MLS signature key).
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub device_key: Vec<u8>,
    /// The account key's signature over [`device_certificate_message`].
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub device_certificate: Vec<u8>,
    /// MLS key packages (serialized `MlsMessage`s): single-use ones, and one last-resort package
    /// per ciphersuite (used when the single-use stock of that suite is empty).
    #[serde(with = "b64::list")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<crate::api::Base64>))]
    pub key_packages: Vec<Vec<u8>>,
}

/// `POST /v1/auth/challenge`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeRequest {
    /// The device that wants to sign in.
    pub device_id: DeviceId,
}

/// The server's answer to a [`ChallengeRequest`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeResponse {
    /// Random bytes to sign (see [`auth_challenge_message`]).
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub challenge: Vec<u8>,
    /// Unix seconds after which the challenge is refused.
    pub expires_at: u64,
}

/// `POST /v1/auth/token`: exchanges a signed challenge for a bearer token.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRequest {
    /// The device signing in.
    pub device_id: DeviceId,
    /// The challenge the server gave.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub challenge: Vec<u8>,
    /// The device key's Ed25519 signature over [`auth_challenge_message`].
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub signature: Vec<u8>,
}

/// A bearer token for the `Authorization` header. Secret: never logged.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The token.
    pub token: String,
    /// Unix seconds after which the token is refused.
    pub expires_at: u64,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// `POST /v1/key-packages`: adds to this device's stock.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadKeyPackagesRequest {
    /// New key packages; a last-resort one replaces the previous last-resort package of its suite.
    #[serde(with = "b64::list")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<crate::api::Base64>))]
    pub key_packages: Vec<Vec<u8>>,
}

/// Selects a ciphersuite by its MLS code point (query string `?ciphersuite=N`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct CiphersuiteQuery {
    /// The MLS ciphersuite code point.
    pub ciphersuite: u16,
}

/// How many single-use key packages of one suite the server holds for the calling device.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct KeyPackageStock {
    /// Unclaimed single-use key packages.
    pub stock: u64,
}

/// One device's key package, claimed for adding it to a group.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimedKeyPackage {
    /// The device it belongs to.
    pub device_id: DeviceId,
    /// The serialized key package (`MlsMessage`).
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub key_package: Vec<u8>,
}

/// `POST /v1/users/{username}/key-packages`: one key package per device of the user.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimKeyPackagesResponse {
    /// The user.
    pub username: Username,
    /// One entry per device.
    pub key_packages: Vec<ClaimedKeyPackage>,
}

/// A device as the server lists it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device.
    pub device_id: DeviceId,
    /// Its Ed25519 public key.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub device_key: Vec<u8>,
    /// The account key's signature over it.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub device_certificate: Vec<u8>,
}

/// `GET /v1/users/{username}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserInfo {
    /// The user.
    pub username: Username,
    /// The account's Ed25519 public key.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub account_key: Vec<u8>,
    /// The account's devices.
    pub devices: Vec<DeviceInfo>,
}

/// `GET /v1/limits`: what this server accepts, for clients to check before they send.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    /// The largest request body, in bytes (an encrypted message, a commit, a Welcome).
    pub max_body_bytes: u64,
    /// The largest file, in bytes as uploaded (encrypted); 0 from a server without files.
    #[serde(default)]
    pub max_file_bytes: u64,
    /// The largest commit upload (a commit and its Welcome), bytes; 0 from a server that
    /// takes commits within `max_body_bytes` only.
    #[serde(default)]
    pub max_handshake_bytes: u64,
    /// The most devices in one group; 0 when the server does not say.
    #[serde(default)]
    pub max_group_size: u64,
}

/// `PUT /v1/groups/{group}/expiry`: the most the server keeps the group's messages and files,
/// delivered or not (its members' disappearing-messages timer).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GroupExpiry {
    /// Seconds, at most [`GroupExpiry::MAX`]; 0 for the server's retention time only.
    pub seconds: u64,
}

impl GroupExpiry {
    /// The longest disappearing-messages timer: a year (the MIMI draft's `expires` is a 32-bit
    /// number of seconds). Clients take no longer timer, and the server sets none.
    pub const MAX: u64 = 365 * 24 * 3600;
}

/// Where an upload stands: the answer to creating or continuing one. The headers of the IETF
/// resumable-uploads draft (`Upload-Offset`, `Upload-Complete`) say the same.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadStatus {
    /// The file's id (32 hex digits), under which its group's members fetch it
    /// (`GET /v1/blobs/{id}`) and its uploader continues it (`/v1/uploads/{id}`).
    pub id: String,
    /// Its declared length.
    pub length: u64,
    /// How many of its bytes the server has stored.
    pub offset: u64,
    /// Whether every byte is there and it can be fetched.
    pub finished: bool,
}

/// The answer to a send or a commit: where the server put it in the group's log.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PostedResponse {
    /// The message's sequence number in its group's log.
    pub seq: u64,
    /// Server time of acceptance, unix milliseconds.
    pub sent_at: u64,
}

/// `POST /v1/sync`: asks for everything after the given cursors. Groups left out start from the
/// server's last acknowledged cursor for this device.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncRequest {
    /// Last inbox sequence number the client has committed locally.
    #[serde(default)]
    pub inbox_after: Option<u64>,
    /// Last group-log sequence number the client has committed locally, per group.
    #[serde(default)]
    pub groups: Vec<(GroupId, u64)>,
    /// At most this many deliveries (the server caps it).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `POST /v1/ack`: the client has committed these locally; the server may drop them once all
/// recipients have.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AckRequest {
    /// Inbox cursor.
    #[serde(default)]
    pub inbox: Option<u64>,
    /// Group cursors.
    #[serde(default)]
    pub groups: Vec<(GroupId, u64)>,
}

/// `POST /v1/groups/{id}/commits` body (binary, TLS presentation language): a commit and, when it
/// adds members, the Welcome the server hands to their inboxes.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct CommitUpload {
    /// The commit as a serialized `MlsMessage` (a PublicMessage).
    pub commit: VLBytes,
    /// The Welcome as a serialized `MlsMessage`; empty when the commit adds nobody.
    pub welcome: VLBytes,
}

/// Machine-readable error codes of the API.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request was malformed.
    BadRequest,
    /// Missing, bad or expired credentials.
    Unauthorized,
    /// The caller may not do this (e.g. not a member of the group).
    Forbidden,
    /// No such user, device or group.
    NotFound,
    /// The username is taken, or the object exists.
    Conflict,
    /// A commit lost the race for its epoch: fetch, process and retry.
    EpochConflict,
    /// The body or a field is too large.
    TooLarge,
    /// Slow down.
    RateLimited,
    /// The user has no key package left.
    NoKeyPackage,
    /// The server cannot serve right now.
    Unavailable,
    /// A bug on the server.
    Internal,
}

/// The body of every error answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people. Never contains message content or secrets.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tls_codec::{Deserialize as _, Serialize as _};

    proptest! {
        #[test]
        fn commit_upload_roundtrip(commit in proptest::collection::vec(any::<u8>(), 0..300),
                                   welcome in proptest::collection::vec(any::<u8>(), 0..300)) {
            let up = CommitUpload { commit: commit.into(), welcome: welcome.into() };
            let bytes = up.tls_serialize_detached().unwrap();
            prop_assert_eq!(CommitUpload::tls_deserialize_exact(bytes).unwrap(), up);
        }

        #[test]
        fn commit_upload_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = CommitUpload::tls_deserialize_exact(bytes);
        }
    }

    #[test]
    fn bad_base64_is_an_error() {
        let json = r#"{"key_packages":["!!!"]}"#;
        assert!(serde_json::from_str::<UploadKeyPackagesRequest>(json).is_err());
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = TokenResponse {
            token: "secret-token".into(),
            expires_at: 1,
        };
        assert!(!format!("{t:?}").contains("secret-token"));
    }
}
