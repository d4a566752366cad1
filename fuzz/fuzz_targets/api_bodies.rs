//! JSON bodies of the HTTP API, in both directions, and the identifiers and link codes parsed
//! from text: no input panics, and a parsed identifier prints back to what was parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost_proto::directory::{
    AuditResponse, BatchLookupRequest, BatchLookupResponse, HistoryResponse, LookupResponse,
    SignedRoot,
};
use sealpost_proto::{
    AckRequest, ApiError, ChallengeRequest, ClaimKeyPackagesResponse, DeviceId, DeviceIdentity,
    GroupId, PostedResponse, RegisterRequest, SyncRequest, TokenRequest, UploadKeyPackagesRequest,
    Username,
};

fn json<T: serde::de::DeserializeOwned>(data: &[u8]) {
    let _ = serde_json::from_slice::<T>(data);
}

fuzz_target!(|data: &[u8]| {
    json::<RegisterRequest>(data);
    json::<ChallengeRequest>(data);
    json::<TokenRequest>(data);
    json::<UploadKeyPackagesRequest>(data);
    json::<SyncRequest>(data);
    json::<AckRequest>(data);
    json::<ClaimKeyPackagesResponse>(data);
    json::<PostedResponse>(data);
    json::<ApiError>(data);
    json::<SignedRoot>(data);
    json::<LookupResponse>(data);
    json::<BatchLookupRequest>(data);
    json::<BatchLookupResponse>(data);
    json::<HistoryResponse>(data);
    json::<AuditResponse>(data);
    let _ = DeviceIdentity::from_credential_bytes(data);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(u) = s.parse::<Username>() {
            assert_eq!(u.to_string(), s);
        }
        if let Ok(g) = s.parse::<GroupId>() {
            assert_eq!(g.to_string().parse::<GroupId>().unwrap(), g);
        }
        if let Ok(d) = s.parse::<DeviceId>() {
            assert_eq!(d.to_string().parse::<DeviceId>().unwrap(), d);
        }
        let _ = sealpost_proto::link::decode_link_code(s);
    }
});
