//! Padding of application plaintext to size buckets, so that the server sees only which bucket a
//! message falls in, never its exact length.
//!
//! Layout of a padded buffer: a 4-byte big-endian length `n`, the `n` content bytes, then zero
//! bytes up to the bucket size. MLS encrypts the whole buffer.

/// The bucket sizes in bytes. A body larger than the last bucket is padded to a multiple of it.
pub const PADDING_BUCKETS: [usize; 6] = [256, 1024, 4096, 16_384, 65_536, 262_144];

const HEADER: usize = 4;

/// A padded buffer did not unpad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PaddingError {
    /// Shorter than its header or than the length it claims.
    #[error("padded message is truncated")]
    Truncated,
    /// The padding bytes were not all zero.
    #[error("padded message has non-zero padding")]
    BadPadding,
    /// The content is larger than 4 GiB.
    #[error("message is too large to pad")]
    TooLarge,
}

/// The padded size for a body of `len` bytes.
pub fn padded_len(len: usize) -> usize {
    let need = len + HEADER;
    let last = PADDING_BUCKETS[PADDING_BUCKETS.len() - 1];
    PADDING_BUCKETS
        .iter()
        .copied()
        .find(|b| *b >= need)
        .unwrap_or_else(|| need.div_ceil(last) * last)
}

/// Pads `body` to its bucket.
pub fn pad(body: &[u8]) -> Result<Vec<u8>, PaddingError> {
    let n = u32::try_from(body.len()).map_err(|_| PaddingError::TooLarge)?;
    let mut out = Vec::with_capacity(padded_len(body.len()));
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(body);
    out.resize(padded_len(body.len()), 0);
    Ok(out)
}

/// Removes the padding added by [`pad`].
pub fn unpad(padded: &[u8]) -> Result<&[u8], PaddingError> {
    let (header, rest) = padded
        .split_at_checked(HEADER)
        .ok_or(PaddingError::Truncated)?;
    let mut len = [0u8; HEADER];
    len.copy_from_slice(header);
    let n = u32::from_be_bytes(len) as usize;
    let (body, padding) = rest.split_at_checked(n).ok_or(PaddingError::Truncated)?;
    if padding.iter().any(|b| *b != 0) {
        return Err(PaddingError::BadPadding);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bucket_edges() {
        assert_eq!(pad(b"").unwrap().len(), 256);
        assert_eq!(pad(&[1; 252]).unwrap().len(), 256);
        assert_eq!(pad(&[1; 253]).unwrap().len(), 1024);
        assert_eq!(pad(&[1; 300_000]).unwrap().len(), 2 * 262_144);
    }

    proptest! {
        #[test]
        fn roundtrip(body in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let p = pad(&body).unwrap();
            prop_assert!(PADDING_BUCKETS.contains(&p.len()));
            prop_assert_eq!(unpad(&p).unwrap(), &body[..]);
        }

        #[test]
        fn unpad_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = unpad(&bytes);
        }
    }

    #[test]
    fn nonzero_padding_is_refused() {
        let mut p = pad(b"hi").unwrap();
        p[100] = 1;
        assert_eq!(unpad(&p), Err(PaddingError::BadPadding));
    }
}
