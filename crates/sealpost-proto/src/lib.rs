//! Wire types shared by the Sealpost server and its clients.
//!
//! Nothing in this crate knows a key or a plaintext: it names things (users, devices, groups),
//! describes the JSON control API, frames the binary deliveries that carry opaque MLS bytes, and
//! defines the padding buckets that hide the exact length of a message.
//!
//! Types that come from the network are parsed, never trusted: every identifier has a validating
//! constructor, and every binary frame decodes through `tls_codec` with exact-length checks.
#![forbid(unsafe_code)]

mod api;
mod delivery;
pub mod directory;
mod ids;
pub mod link;
pub mod mimi;
mod padding;

pub use api::{
    AckRequest, ApiError, ChallengeRequest, ChallengeResponse, CiphersuiteQuery,
    ClaimKeyPackagesResponse, ClaimedKeyPackage, CommitUpload, DeviceInfo, ErrorCode, GroupExpiry,
    KeyPackageStock, Limits, PostedResponse, RegisterRequest, SyncRequest, TokenRequest,
    TokenResponse, UploadKeyPackagesRequest, UploadStatus, UserInfo, auth_challenge_message, b64,
    device_certificate_message,
};
pub use delivery::{Delivery, DeliveryKind, FrameError, SyncBatch};
pub use ids::{DeviceId, DeviceIdentity, GroupId, IdError, Username};
pub use padding::{PADDING_BUCKETS, PaddingError, pad, padded_len, unpad};

/// The protocol version carried in URLs (`/v1/...`).
pub const API_VERSION: &str = "v1";
