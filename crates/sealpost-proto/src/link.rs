//! Linking a new device to an existing account.
//!
//! The new device shows a code that carries an 80-bit secret the server never sees. From it both
//! devices derive the link id (under which the server keeps the request) and a MAC key. The new
//! device's request (its device key, an HPKE key and its key packages) carries a MAC under that
//! key, so the approving device knows the request is the one on the screen in front of it; the
//! approval (a certificate by the account key, and the account's key material sealed with HPKE to
//! the new device) carries one too, so the new device knows it comes from whoever read the code.
//! A server that swaps either side cannot produce the MAC.

use serde::{Deserialize, Serialize};

use crate::api::b64;
use crate::ids::{DeviceId, Username};

/// `POST /v1/links`: a new device waits to be approved.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LinkRequest {
    /// Derived from the code's secret (hex).
    pub link_id: String,
    /// The account to join.
    pub username: Username,
    /// The new device.
    pub device_id: DeviceId,
    /// Its Ed25519 public key.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub device_key: Vec<u8>,
    /// Its HPKE public key for the approval.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub hpke_key: Vec<u8>,
    /// Its first key packages (signed with `device_key`).
    #[serde(with = "b64::list")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<crate::api::Base64>))]
    pub key_packages: Vec<Vec<u8>>,
    /// MAC over [`link_request_message`] with the code's MAC key.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub tag: Vec<u8>,
}

/// `POST /v1/links/{id}/approve` and `GET /v1/links/{id}/approval`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LinkApproval {
    /// The account key's certificate over the new device key.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub certificate: Vec<u8>,
    /// HPKE encapsulated key.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub kem_output: Vec<u8>,
    /// HPKE ciphertext of the account's key material.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub ciphertext: Vec<u8>,
    /// MAC over [`link_approval_message`] with the code's MAC key.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub tag: Vec<u8>,
}

fn push_field(m: &mut Vec<u8>, field: &[u8]) {
    m.extend_from_slice(&(field.len() as u64).to_be_bytes());
    m.extend_from_slice(field);
}

/// What the request's MAC covers (length-prefixed fields, domain-separated).
pub fn link_request_message(r: &LinkRequest) -> Vec<u8> {
    let mut m = b"sealpost link request v1\0".to_vec();
    push_field(&mut m, r.link_id.as_bytes());
    push_field(&mut m, r.username.as_str().as_bytes());
    push_field(&mut m, r.device_id.as_bytes());
    push_field(&mut m, &r.device_key);
    push_field(&mut m, &r.hpke_key);
    for kp in &r.key_packages {
        push_field(&mut m, kp);
    }
    m
}

/// What the approval's MAC covers.
pub fn link_approval_message(link_id: &str, a: &LinkApproval) -> Vec<u8> {
    let mut m = b"sealpost link approval v1\0".to_vec();
    push_field(&mut m, link_id.as_bytes());
    push_field(&mut m, &a.certificate);
    push_field(&mut m, &a.kem_output);
    push_field(&mut m, &a.ciphertext);
    m
}

/// Why a link code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a link code is 16 letters and digits (dashes and spaces are ignored)")]
pub struct BadLinkCode;

/// The code's alphabet: Crockford's base32 (no I, L, O, U).
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Shows a 10-byte secret as `XXXX-XXXX-XXXX-XXXX`.
pub fn encode_link_code(secret: &[u8; 10]) -> String {
    let mut bits: u128 = 0;
    for b in secret {
        bits = bits << 8 | u128::from(*b);
    }
    let mut out = String::with_capacity(19);
    for i in 0..16 {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        let index = (bits >> (75 - 5 * i)) & 31;
        out.push(char::from(ALPHABET[index as usize]));
    }
    out
}

/// Reads a code back (case-insensitive; O reads as 0, I and L as 1).
pub fn decode_link_code(code: &str) -> Result<[u8; 10], BadLinkCode> {
    let mut bits: u128 = 0;
    let mut n = 0;
    for c in code.chars().filter(|c| !matches!(c, '-' | ' ')) {
        let c = match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            other => other,
        };
        let value = ALPHABET
            .iter()
            .position(|a| char::from(*a) == c)
            .ok_or(BadLinkCode)?;
        bits = bits << 5 | value as u128;
        n += 1;
        if n > 16 {
            return Err(BadLinkCode);
        }
    }
    if n != 16 {
        return Err(BadLinkCode);
    }
    let mut out = [0u8; 10];
    for (i, b) in out.iter_mut().enumerate() {
        *b = (bits >> (72 - 8 * i)) as u8;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn codes_round_trip(secret in any::<[u8; 10]>()) {
            let code = encode_link_code(&secret);
            prop_assert_eq!(code.len(), 19);
            prop_assert_eq!(decode_link_code(&code), Ok(secret));
            prop_assert_eq!(decode_link_code(&code.to_lowercase().replace('-', " ")), Ok(secret));
        }

        #[test]
        fn junk_is_refused_not_a_panic(s in ".{0,40}") {
            let _ = decode_link_code(&s);
        }
    }

    #[test]
    fn wrong_lengths_and_letters_are_refused() {
        assert_eq!(decode_link_code("ABCD-EFGH-JKMN-PQR"), Err(BadLinkCode));
        assert_eq!(decode_link_code("ABCD-EFGH-JKMN-PQRSV"), Err(BadLinkCode));
        assert_eq!(decode_link_code("ABCD-EFGH-JKMN-PQRU"), Err(BadLinkCode));
        assert_eq!(
            decode_link_code("0O1I-L000-0000-0000"),
            decode_link_code("0011-1000-0000-0000")
        );
    }
}
