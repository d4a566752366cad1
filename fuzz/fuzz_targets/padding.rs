//! Padding, read from every decrypted message: no input panics; padding anything and removing
//! it gives it back, at a bucket's length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost_proto::{pad, padded_len, unpad};

fuzz_target!(|data: &[u8]| {
    let _ = unpad(data);
    let padded = pad(data).unwrap();
    assert_eq!(padded.len(), padded_len(data.len()));
    assert_eq!(unpad(&padded).unwrap(), data);
});
