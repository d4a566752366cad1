//! MIMI content, read from every decrypted message once messages carry it: no input panics,
//! and whatever is accepted encodes back to exactly the bytes it was read from (the draft's
//! deterministic encoding), and reads again to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost_proto::mimi::{Content, DerivedValues};

fuzz_target!(|data: &[u8]| {
    if let Ok(content) = Content::decode(data) {
        let again = content.encode();
        assert_eq!(again, data);
        assert_eq!(Content::decode(&again).unwrap(), content);
    }
    if let Ok(values) = DerivedValues::decode(data) {
        assert_eq!(values.encode(), data);
    }
});
