//! Key-directory proofs as the server hands them out (akd's protobuf encoding): no input panics,
//! and whatever decodes encodes back and decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost_proto::directory::{
    decode_audit_proof, decode_history_proof, decode_lookup_proof, encode_audit_proof,
    encode_history_proof, encode_lookup_proof,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = decode_lookup_proof(data) {
        assert!(decode_lookup_proof(&encode_lookup_proof(&p)).is_ok());
    }
    if let Ok(p) = decode_history_proof(data) {
        assert!(decode_history_proof(&encode_history_proof(&p)).is_ok());
    }
    if let Ok(p) = decode_audit_proof(data) {
        assert!(decode_audit_proof(&encode_audit_proof(&p)).is_ok());
    }
});
