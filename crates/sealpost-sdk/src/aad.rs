//! What a Sealpost message carries in its MLS authenticated data: tagged records, each a 4-byte
//! tag and a fixed-length body. Authenticated with the message, but readable without decrypting
//! it — which is the point of the fork check: a message from a forked group does not decrypt.

/// The newest key directory root the sender verified: epoch (8 bytes) and root (32 bytes).
const ROOT_TAG: &[u8; 4] = b"SPd1";
/// The sender's fork check for the MLS epoch it sent in (16 bytes).
const FORK_TAG: &[u8; 4] = b"SPf1";

/// Length of the fork check.
pub(crate) const FORK_CHECK_LEN: usize = 16;

/// The MLS exporter label the fork check is derived under.
pub(crate) const FORK_CHECK_LABEL: &str = "sealpost fork check";

/// The records of one message's authenticated data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Aad {
    /// Directory epoch and root.
    pub root: Option<(u64, [u8; 32])>,
    /// An MLS exporter value of the sender's epoch: members in the same epoch of the same group
    /// derive the same one; members of a forked group do not.
    pub fork: Option<[u8; FORK_CHECK_LEN]>,
}

impl Aad {
    /// The bytes to set as authenticated data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        if let Some((epoch, root)) = &self.root {
            out.extend_from_slice(ROOT_TAG);
            out.extend_from_slice(&epoch.to_be_bytes());
            out.extend_from_slice(root);
        }
        if let Some(fork) = &self.fork {
            out.extend_from_slice(FORK_TAG);
            out.extend_from_slice(fork);
        }
        out
    }

    /// Reads the records it knows; an unknown tag or a short record ends the reading (what came
    /// before it is kept). Never fails: a message without records simply carries none.
    pub fn parse(mut bytes: &[u8]) -> Aad {
        let mut aad = Aad::default();
        while let Some((tag, rest)) = bytes.split_first_chunk::<4>() {
            if tag == ROOT_TAG && aad.root.is_none() {
                let Some((epoch, rest)) = rest.split_first_chunk::<8>() else {
                    break;
                };
                let Some((root, rest)) = rest.split_first_chunk::<32>() else {
                    break;
                };
                aad.root = Some((u64::from_be_bytes(*epoch), *root));
                bytes = rest;
            } else if tag == FORK_TAG && aad.fork.is_none() {
                let Some((fork, rest)) = rest.split_first_chunk::<FORK_CHECK_LEN>() else {
                    break;
                };
                aad.fork = Some(*fork);
                bytes = rest;
            } else {
                break;
            }
        }
        aad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_junk_reads_as_nothing() {
        let full = Aad {
            root: Some((7, [1; 32])),
            fork: Some([2; FORK_CHECK_LEN]),
        };
        assert_eq!(Aad::parse(&full.encode()), full);
        assert_eq!(full.encode().len(), 64);
        let fork_only = Aad {
            root: None,
            fork: Some([3; FORK_CHECK_LEN]),
        };
        assert_eq!(Aad::parse(&fork_only.encode()), fork_only);
        assert_eq!(Aad::parse(b""), Aad::default());
        assert_eq!(Aad::parse(b"junk that is no record"), Aad::default());
        // A record cut short is not read; the whole one before it is.
        let bytes = full.encode();
        let cut = Aad::parse(&bytes[..bytes.len() - 1]);
        assert_eq!(cut.root, full.root);
        assert_eq!(cut.fork, None);
        assert_eq!(Aad::parse(&bytes[..43]), Aad::default());
        // A record repeated is not read twice (the first one counts).
        let mut twice = full.encode();
        twice.extend_from_slice(&full.encode());
        assert_eq!(Aad::parse(&twice), full);
    }
}
