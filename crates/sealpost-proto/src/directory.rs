//! The key directory's wire format: what a directory entry holds, how an epoch root is signed,
//! and the JSON bodies that carry akd proofs (protobuf, base64 inside JSON).
//!
//! The directory maps a username (the akd label) to a [`DirectoryEntry`] (the akd value): the
//! account key and every current device with the account key's certificate over it. The server
//! publishes changes in epochs; each epoch's root hash is signed with the server's directory key,
//! whose public half a client pins when it registers.

use akd_core::configuration::DomainLabel;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use tls_codec::{Deserialize as _, Serialize as _, TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

use crate::api::b64;
use crate::ids::{DeviceId, Username};

/// akd's domain separation for Sealpost's directory.
#[derive(Clone, Copy, Debug)]
pub struct SealpostDirectory;

impl DomainLabel for SealpostDirectory {
    fn domain_label() -> &'static [u8] {
        b"sealpost key directory v1"
    }
}

/// The akd configuration shared by the server and every verifier.
pub type DirectoryConfig = akd_core::ExperimentalConfiguration<SealpostDirectory>;

/// Why directory data was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// A field or proof does not parse.
    #[error("malformed directory data: {0}")]
    Malformed(&'static str),
    /// An epoch root's signature does not verify under the pinned directory key.
    #[error("the directory root of epoch {0} is not signed by this server's directory key")]
    BadRootSignature(u64),
}

/// One device in a directory entry.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct DirectoryDevice {
    /// The device id (16 bytes).
    pub device_id: [u8; 16],
    /// Its public signing key (its MLS credential key).
    pub device_key: VLBytes,
    /// The account key's signature over [`device_certificate_message`](crate::device_certificate_message).
    pub certificate: VLBytes,
}

impl DirectoryDevice {
    /// The device id.
    pub fn id(&self) -> DeviceId {
        DeviceId::from_bytes(self.device_id)
    }
}

/// The value stored under a username: the account key and the current device set.
#[derive(Debug, Clone, PartialEq, Eq, TlsSerialize, TlsDeserialize, TlsSize)]
pub struct DirectoryEntry {
    /// The account's public key.
    pub account_key: VLBytes,
    /// Its devices, sorted by id, no id twice.
    pub devices: Vec<DirectoryDevice>,
}

impl DirectoryEntry {
    /// The canonical encoding (devices sorted by id).
    pub fn encode(&self) -> Vec<u8> {
        let mut sorted = self.clone();
        sorted.devices.sort_by_key(|d| d.device_id);
        sorted.devices.dedup_by_key(|d| d.device_id);
        sorted.tls_serialize_detached().unwrap_or_default()
    }

    /// Parses an entry; refuses trailing bytes and any order but the canonical one.
    pub fn decode(bytes: &[u8]) -> Result<Self, DirectoryError> {
        let entry = Self::tls_deserialize_exact(bytes)
            .map_err(|_| DirectoryError::Malformed("directory entry"))?;
        if !entry
            .devices
            .windows(2)
            .all(|w| w[0].device_id < w[1].device_id)
        {
            return Err(DirectoryError::Malformed("directory entry device order"));
        }
        Ok(entry)
    }

    /// Whether the account key certified this device for `username`.
    pub fn certifies(&self, username: &Username, device: &DirectoryDevice) -> bool {
        let Ok(key) = <[u8; 32]>::try_from(self.account_key.as_slice()) else {
            return false;
        };
        let Ok(key) = VerifyingKey::from_bytes(&key) else {
            return false;
        };
        let Ok(signature) = Signature::from_slice(device.certificate.as_slice()) else {
            return false;
        };
        let message =
            crate::device_certificate_message(username, &device.id(), device.device_key.as_slice());
        key.verify_strict(&message, &signature).is_ok()
    }

    /// The device with this id, if the entry lists it.
    pub fn device(&self, id: DeviceId) -> Option<&DirectoryDevice> {
        self.devices.iter().find(|d| d.device_id == *id.as_bytes())
    }
}

/// Domain separation for the directory key's signature over an epoch root.
pub fn directory_root_message(epoch: u64, root: &[u8]) -> Vec<u8> {
    let mut m = b"sealpost directory root v1\0".to_vec();
    m.extend_from_slice(&epoch.to_be_bytes());
    m.extend_from_slice(root);
    m
}

/// `GET /v1/directory/keys`: the public keys a client pins at registration.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryKeys {
    /// Ed25519 key that signs epoch roots.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub signing_key: Vec<u8>,
    /// The VRF public key that hides labels in the tree.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub vrf_key: Vec<u8>,
}

/// An epoch's root hash with the server's signature over it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRoot {
    /// The directory epoch.
    pub epoch: u64,
    /// The root hash (32 bytes).
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub root: Vec<u8>,
    /// Ed25519 signature over [`directory_root_message`].
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub signature: Vec<u8>,
}

impl SignedRoot {
    /// Checks the signature under `signing_key`; returns the root hash.
    pub fn verify(&self, signing_key: &[u8]) -> Result<[u8; 32], DirectoryError> {
        let root: [u8; 32] = self
            .root
            .as_slice()
            .try_into()
            .map_err(|_| DirectoryError::Malformed("root hash length"))?;
        let key: [u8; 32] = signing_key
            .try_into()
            .map_err(|_| DirectoryError::Malformed("directory key length"))?;
        let key = VerifyingKey::from_bytes(&key)
            .map_err(|_| DirectoryError::Malformed("directory key"))?;
        let signature = Signature::from_slice(&self.signature)
            .map_err(|_| DirectoryError::BadRootSignature(self.epoch))?;
        key.verify_strict(&directory_root_message(self.epoch, &root), &signature)
            .map_err(|_| DirectoryError::BadRootSignature(self.epoch))?;
        Ok(root)
    }
}

/// `GET /v1/directory/lookup/{username}`: the latest value's proof at the latest epoch.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LookupResponse {
    /// The epoch the proof is for.
    pub root: SignedRoot,
    /// akd `LookupProof`, protobuf.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub proof: Vec<u8>,
}

/// Most usernames in one batch lookup.
pub const MAX_BATCH_LOOKUP: usize = 256;

/// `POST /v1/directory/lookups`: several users' lookup proofs at one epoch.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchLookupRequest {
    /// At most [`MAX_BATCH_LOOKUP`].
    pub usernames: Vec<Username>,
}

/// One user's proof in a batch.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamedProof {
    /// The user.
    pub username: Username,
    /// akd `LookupProof`, protobuf.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub proof: Vec<u8>,
}

/// The answer to [`BatchLookupRequest`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchLookupResponse {
    /// The epoch every proof is for.
    pub root: SignedRoot,
    /// The proofs of the users in the directory.
    pub proofs: Vec<NamedProof>,
    /// The users not in the directory.
    pub missing: Vec<Username>,
}

/// `GET /v1/directory/history/{username}`: every version's proof at the latest epoch.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryResponse {
    /// The epoch the proof is for.
    pub root: SignedRoot,
    /// akd `HistoryProof`, protobuf.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub proof: Vec<u8>,
}

/// `GET /v1/directory/audit?from=E`: the append-only proof from epoch `E` to `E + 1`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditResponse {
    /// Epoch `E`.
    pub from: SignedRoot,
    /// Epoch `E + 1`.
    pub to: SignedRoot,
    /// akd `AppendOnlyProof`, protobuf.
    #[serde(with = "b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::api::Base64))]
    pub proof: Vec<u8>,
}

/// `GET /v1/directory/audit?from=E`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct AuditQuery {
    /// The first epoch.
    pub from: u64,
}

/// The akd label of a username.
pub fn directory_label(username: &Username) -> akd_core::AkdLabel {
    akd_core::AkdLabel(username.as_str().as_bytes().to_vec())
}

fn encode_proto<M: protobuf::Message>(message: M) -> Vec<u8> {
    message.write_to_bytes().unwrap_or_default()
}

fn decode_proto<M, T>(bytes: &[u8], what: &'static str) -> Result<T, DirectoryError>
where
    M: protobuf::Message,
    T: for<'a> TryFrom<&'a M>,
{
    let message = M::parse_from_bytes(bytes).map_err(|_| DirectoryError::Malformed(what))?;
    T::try_from(&message).map_err(|_| DirectoryError::Malformed(what))
}

use akd_core::proto::specs::types as pb;

/// Encodes a lookup proof for the wire.
pub fn encode_lookup_proof(proof: &akd_core::LookupProof) -> Vec<u8> {
    encode_proto(pb::LookupProof::from(proof))
}

/// Decodes a lookup proof from the wire.
pub fn decode_lookup_proof(bytes: &[u8]) -> Result<akd_core::LookupProof, DirectoryError> {
    decode_proto::<pb::LookupProof, _>(bytes, "lookup proof")
}

/// Encodes a key-history proof for the wire.
pub fn encode_history_proof(proof: &akd_core::HistoryProof) -> Vec<u8> {
    encode_proto(pb::HistoryProof::from(proof))
}

/// Decodes a key-history proof from the wire.
pub fn decode_history_proof(bytes: &[u8]) -> Result<akd_core::HistoryProof, DirectoryError> {
    decode_proto::<pb::HistoryProof, _>(bytes, "history proof")
}

/// Encodes an append-only proof for the wire.
pub fn encode_audit_proof(proof: &akd_core::AppendOnlyProof) -> Vec<u8> {
    encode_proto(pb::AppendOnlyProof::from(proof))
}

/// Decodes an append-only proof from the wire.
pub fn decode_audit_proof(bytes: &[u8]) -> Result<akd_core::AppendOnlyProof, DirectoryError> {
    decode_proto::<pb::AppendOnlyProof, _>(bytes, "audit proof")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: u8) -> DirectoryDevice {
        DirectoryDevice {
            device_id: [id; 16],
            device_key: vec![id; 32].into(),
            certificate: vec![0; 64].into(),
        }
    }

    #[test]
    fn entries_are_canonical() {
        let entry = DirectoryEntry {
            account_key: vec![7; 32].into(),
            devices: vec![device(2), device(1), device(2)],
        };
        let bytes = entry.encode();
        let back = DirectoryEntry::decode(&bytes).unwrap();
        assert_eq!(back.devices, vec![device(1), device(2)]);
        let unsorted = DirectoryEntry {
            account_key: vec![7; 32].into(),
            devices: vec![device(2), device(1)],
        };
        let raw = unsorted.tls_serialize_detached().unwrap();
        assert!(DirectoryEntry::decode(&raw).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(DirectoryEntry::decode(&trailing).is_err());
    }

    #[test]
    fn root_signatures_are_checked() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        use ed25519_dalek::Signer as _;
        let root = [3u8; 32];
        let signed = SignedRoot {
            epoch: 5,
            root: root.to_vec(),
            signature: key.sign(&directory_root_message(5, &root)).to_vec(),
        };
        let public = key.verifying_key().to_bytes();
        assert_eq!(signed.verify(&public).unwrap(), root);
        let mut other_epoch = signed.clone();
        other_epoch.epoch = 6;
        assert_eq!(
            other_epoch.verify(&public),
            Err(DirectoryError::BadRootSignature(6))
        );
        let mut other_root = signed.clone();
        other_root.root[0] ^= 1;
        assert!(other_root.verify(&public).is_err());
        let mut short = signed;
        short.signature.pop();
        assert!(short.verify(&public).is_err());
    }
}
