//! Binary delivery frames: what the server hands a device, over `POST /v1/sync` and as WebSocket
//! push frames. Encoded in the TLS presentation language, as MLS itself is.

use tls_codec::{Deserialize as _, Serialize as _, TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

use crate::ids::GroupId;

/// Where a delivery comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
#[repr(u8)]
pub enum DeliveryKind {
    /// The device's own inbox (a Welcome).
    Inbox = 1,
    /// A group's log (application message, proposal or commit).
    Group = 2,
}

/// One item for a device. `payload` is a serialized `MlsMessage`, opaque to the server.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct Delivery {
    /// Inbox or group log.
    pub kind: DeliveryKind,
    /// The inbox sequence number (inbox) or 0 (group).
    pub inbox_seq: u64,
    /// The group (for a Welcome: the group it joins).
    pub group_id: [u8; 16],
    /// The group-log sequence number (for a Welcome: that of the commit that added the device).
    pub group_seq: u64,
    /// Server time of acceptance, unix milliseconds. Informational: not authenticated.
    pub sent_at: u64,
    /// The MLS message.
    pub payload: VLBytes,
}

impl Delivery {
    /// The group as a typed id.
    pub fn group(&self) -> GroupId {
        GroupId::from_bytes(self.group_id)
    }

    /// Encodes the frame.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        self.tls_serialize_detached().map_err(|_| FrameError)
    }

    /// Decodes one frame; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        Self::tls_deserialize_exact(bytes).map_err(|_| FrameError)
    }
}

/// The answer to `POST /v1/sync`.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct SyncBatch {
    /// Inbox items first, then group items, each source in sequence order.
    pub deliveries: Vec<Delivery>,
    /// 1 when the server has more beyond the limit: ask again.
    pub more: u8,
}

impl SyncBatch {
    /// Encodes the batch.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        self.tls_serialize_detached().map_err(|_| FrameError)
    }

    /// Decodes a batch; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        Self::tls_deserialize_exact(bytes).map_err(|_| FrameError)
    }
}

/// A frame did not decode (or could not be encoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed delivery frame")]
pub struct FrameError;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn delivery() -> impl Strategy<Value = Delivery> {
        (
            any::<bool>(),
            any::<u64>(),
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(
                |(inbox, inbox_seq, group_id, group_seq, sent_at, payload)| Delivery {
                    kind: if inbox {
                        DeliveryKind::Inbox
                    } else {
                        DeliveryKind::Group
                    },
                    inbox_seq,
                    group_id,
                    group_seq,
                    sent_at,
                    payload: payload.into(),
                },
            )
    }

    proptest! {
        #[test]
        fn delivery_roundtrip(d in delivery()) {
            prop_assert_eq!(Delivery::decode(&d.encode().unwrap()).unwrap(), d);
        }

        #[test]
        fn batch_roundtrip(ds in proptest::collection::vec(delivery(), 0..5), more in 0u8..2) {
            let b = SyncBatch { deliveries: ds, more };
            prop_assert_eq!(SyncBatch::decode(&b.encode().unwrap()).unwrap(), b);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Delivery::decode(&bytes);
            let _ = SyncBatch::decode(&bytes);
        }
    }

    #[test]
    fn unknown_kind_is_refused() {
        let d = Delivery {
            kind: DeliveryKind::Group,
            inbox_seq: 0,
            group_id: [0; 16],
            group_seq: 1,
            sent_at: 0,
            payload: vec![1].into(),
        };
        let mut bytes = d.encode().unwrap();
        bytes[0] = 9;
        assert_eq!(Delivery::decode(&bytes), Err(FrameError));
    }
}
