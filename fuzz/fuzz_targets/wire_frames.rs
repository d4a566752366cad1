//! The binary frames a client reads from the server (deliveries, sync batches) and the server
//! reads from a client (commit uploads), and directory entries: no input panics, and whatever
//! decodes encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost_proto::directory::DirectoryEntry;
use sealpost_proto::{CommitUpload, Delivery, SyncBatch};
use tls_codec::{Deserialize as _, Serialize as _};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Delivery::decode(data) {
        assert_eq!(d.encode().unwrap(), data);
    }
    if let Ok(b) = SyncBatch::decode(data) {
        assert_eq!(b.encode().unwrap(), data);
    }
    if let Ok(u) = CommitUpload::tls_deserialize_exact(data) {
        assert_eq!(u.tls_serialize_detached().unwrap(), data);
    }
    if let Ok(e) = DirectoryEntry::decode(data) {
        // Only the canonical encoding decodes.
        assert_eq!(e.encode(), data);
    }
});
