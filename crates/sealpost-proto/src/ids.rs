//! Identifiers. Each is a newtype with a validating constructor, so a value of the type is
//! always well-formed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// A username must be 3–32 characters of `a-z`, `0-9` and `_`, starting with a letter.
    #[error("invalid username: use 3 to 32 characters from a-z, 0-9 and _, starting with a letter")]
    Username,
    /// A device id is 32 lowercase hexadecimal characters.
    #[error("invalid device id: expected 32 lowercase hexadecimal characters")]
    DeviceId,
    /// A group id is 32 lowercase hexadecimal characters.
    #[error("invalid group id: expected 32 lowercase hexadecimal characters")]
    GroupId,
    /// A device identity is `username:deviceid`.
    #[error("invalid device identity: expected username:deviceid")]
    DeviceIdentity,
}

/// An account's handle: lowercase, no phone number, no e-mail address.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(String);

impl Username {
    /// Longest accepted username, in bytes.
    pub const MAX_LEN: usize = 32;

    /// Validates `s` as a username.
    pub fn new(s: &str) -> Result<Self, IdError> {
        let ok_len = (3..=Self::MAX_LEN).contains(&s.len());
        let mut chars = s.chars();
        let ok_first = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let ok_rest = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok_len && ok_first && ok_rest {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::Username)
        }
    }

    /// The username as text, without the `@`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

impl FromStr for Username {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

/// A JSON string matching `pattern`, for the OpenAPI document.
#[cfg(feature = "openapi")]
fn string_schema(pattern: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .into()
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Username {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema("^[a-z][a-z0-9_]{2,31}$")
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Username {}

/// Declares a 16-byte identifier shown as 32 lowercase hex characters.
macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $err:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 16]);

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                string_schema("^[0-9a-f]{32}$")
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}

        impl $name {
            /// Wraps raw bytes.
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            /// Parses a byte slice of exactly 16 bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
                <[u8; 16]>::try_from(bytes).map(Self).map_err(|_| $err)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// A short prefix for display (8 hex characters).
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                if s.len() != 32 || s.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err($err);
                }
                let mut out = [0u8; 16];
                hex::decode_to_slice(s, &mut out).map_err(|_| $err)?;
                Ok(Self(out))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(
    /// A device: one MLS leaf, one signing key. Chosen at random by the device.
    DeviceId,
    IdError::DeviceId
);
hex_id!(
    /// A conversation: one MLS group. Chosen at random by its creator; equals the MLS group id.
    GroupId,
    IdError::GroupId
);

impl Serialize for Username {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Username {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Username::new(&s).map_err(serde::de::Error::custom)
    }
}

/// What an MLS credential names: the account and the device. Encoded as `username:deviceid`
/// in the identity field of the device's basic credential.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct DeviceIdentity {
    /// The account.
    pub username: Username,
    /// The device within the account.
    pub device_id: DeviceId,
}

impl DeviceIdentity {
    /// The bytes stored in an MLS basic credential.
    pub fn to_credential_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// Parses the bytes of an MLS basic credential.
    pub fn from_credential_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        let s = std::str::from_utf8(bytes).map_err(|_| IdError::DeviceIdentity)?;
        s.parse()
    }
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.username, self.device_id)
    }
}

impl FromStr for DeviceIdentity {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let (user, device) = s.split_once(':').ok_or(IdError::DeviceIdentity)?;
        Ok(Self {
            username: user.parse().map_err(|_| IdError::DeviceIdentity)?,
            device_id: device.parse().map_err(|_| IdError::DeviceIdentity)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn usernames() {
        for good in ["alice", "bob_2", "abc", "a23456789012345678901234567890ab"] {
            assert!(Username::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ab",
            "Alice",
            "1abc",
            "_abc",
            "al ice",
            "alice@x",
            "ålice",
            "a234567890123456789012345678901ab",
        ] {
            assert_eq!(Username::new(bad), Err(IdError::Username), "{bad}");
        }
    }

    #[test]
    fn hex_ids_reject_uppercase_and_wrong_length() {
        assert!(
            "00112233445566778899aabbccddeeff"
                .parse::<DeviceId>()
                .is_ok()
        );
        assert!(
            "00112233445566778899AABBCCDDEEFF"
                .parse::<DeviceId>()
                .is_err()
        );
        assert!("0011".parse::<GroupId>().is_err());
        assert!(
            "zz112233445566778899aabbccddeeff"
                .parse::<GroupId>()
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn device_identity_roundtrip(bytes in any::<[u8; 16]>(), name in "[a-z][a-z0-9_]{2,31}") {
            let id = DeviceIdentity { username: Username::new(&name).unwrap(), device_id: DeviceId::from_bytes(bytes) };
            let back = DeviceIdentity::from_credential_bytes(&id.to_credential_bytes()).unwrap();
            prop_assert_eq!(back, id);
        }

        #[test]
        fn device_identity_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = DeviceIdentity::from_credential_bytes(&bytes);
        }

        #[test]
        fn group_id_json_roundtrip(bytes in any::<[u8; 16]>()) {
            let id = GroupId::from_bytes(bytes);
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<GroupId>(&json).unwrap(), id);
        }
    }
}
