//! Test hook: key packages a broken or malicious device publishes. Each is signed correctly by
//! the device, so only the adding client's own checks can refuse it. Built only with the
//! `test-hooks` feature.

use openmls::ciphersuite::signature::SignContent;
use openmls::prelude::{KeyPackage, LeafNodeParameters, Lifetime, MlsMessageOut};
use openmls_traits::OpenMlsProvider as _;
use openmls_traits::crypto::OpenMlsCrypto as _;
use openmls_traits::signatures::Signer;
use openmls_traits::storage::{CURRENT_VERSION, Entity, StorageProvider as _, traits};
use openmls_traits::types::HashType;
use serde::{Deserialize, Serialize};
use tls_codec::{Deserialize as _, SecretVLBytes, Serialize as _, Size as _, VLBytes};

use crate::client::{Client, capabilities, credential_for, load_group, mls_id, now_ms, serialize};
use crate::error::Error;
use crate::model::Suite;

/// An X25519 point of order 8 (RFC 7748 §7 names such points): a Diffie-Hellman with it gives
/// zero whatever the private key, so HPKE to it (RFC 9180 §7.1.4) must fail.
const ORDER_EIGHT_POINT: [u8; 32] = [
    0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a,
    0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00,
];

/// What is wrong with a forged key package (all in the classic suite).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPackageForgery {
    /// Its lifetime ended a day ago.
    Expired,
    /// Its HPKE init key, which the Welcome is encrypted to, is all zeros.
    ZeroInitKey,
    /// Its leaf's encryption key, which later commits encrypt to, is a low-order point.
    LowOrderLeafKey,
}

/// What is wrong with a forged commit: a self-update of the forging device's leaf (a new leaf
/// and a path to the root), signed by the device and tagged with the epoch's membership key as
/// a member's commit is, so only the tree checks of a server or a member can refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitForgery {
    /// The new leaf's parent hash does not match the path it comes with (the leaf is signed
    /// again over the altered hash): RFC 9420 §7.9.2.
    ParentHash,
    /// The path has one node fewer than the sender's filtered direct path: RFC 9420 §12.4.2.
    ShortPath,
    /// Nothing wrong: the commit goes through the same signing and tagging as the others (the
    /// control, which a server and members must take).
    Unaltered,
}

/// The part of openmls's stored message secrets that tags a member's PublicMessage.
#[derive(Serialize, Deserialize)]
struct StoredSecrets {
    message_secrets: CurrentSecrets,
}

#[derive(Serialize, Deserialize)]
struct CurrentSecrets {
    membership_key: StoredKey,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    secret: StoredSecret,
}

#[derive(Serialize, Deserialize)]
struct StoredSecret {
    value: SecretVLBytes,
}

impl Entity<CURRENT_VERSION> for StoredSecrets {}
impl traits::MessageSecrets<CURRENT_VERSION> for StoredSecrets {}

/// Signs `content` as RFC 9420 §5.1.2 `SignWithLabel` does, returned as a `<V>` field.
fn sign_with_label(key: &impl Signer, label: &str, content: &[u8]) -> Result<Vec<u8>, Error> {
    let signed = SignContent::new(label, content.to_vec().into())
        .tls_serialize_detached()
        .map_err(forged)?;
    let signature = key
        .sign(&signed)
        .map_err(|e| Error::Hook(format!("{e:?}")))?;
    VLBytes::new(signature)
        .tls_serialize_detached()
        .map_err(forged)
}

fn forged(e: tls_codec::Error) -> Error {
    Error::Hook(format!("forging: {e}"))
}

/// The length of the `<V>` field that starts `bytes`, prefix included.
fn field_len(bytes: &[u8]) -> Result<usize, Error> {
    let field = VLBytes::tls_deserialize(&mut &bytes[..]).map_err(forged)?;
    Ok(field.tls_serialized_len())
}

/// Where `needle` first stands in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Result<usize, Error> {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .ok_or_else(|| Error::Hook("forging: a field is not where it should be".into()))
}

impl Client {
    /// A commit of this device to `target` with `forgery` in it, signed and tagged as a member
    /// signs and tags its own, for the current epoch. Changes nothing in this device's state.
    #[doc(hidden)]
    pub fn forge_commit_unchecked(
        &mut self,
        target: &str,
        forgery: CommitForgery,
    ) -> Result<Vec<u8>, Error> {
        let group = self.resolve(target)?;
        let key = &self.identity.device_key;
        let mut out = None;
        // The self-update is made in a transaction that is then rolled back: the device keeps
        // its epoch and its keys, as if the commit had been made elsewhere.
        let _: Result<(), Error> = self.profile.atomically(|_, _, p| {
            out = Some((|| {
                let mut g = load_group(p, group)?;
                let context = g
                    .public_group()
                    .group_context()
                    .tls_serialize_detached()
                    .map_err(forged)?;
                let own_index = g.own_leaf_index().u32();
                let bundle = g
                    .self_update(p, key, LeafNodeParameters::default())
                    .map_err(Error::mls)?;
                let mut bytes = serialize(bundle.commit())?;
                let leaf = g
                    .pending_commit()
                    .and_then(|c| c.update_path_leaf_node())
                    .ok_or_else(|| Error::Hook("forging: the update has no path".into()))?
                    .clone();
                let secrets: StoredSecrets = p
                    .storage()
                    .message_secrets(&mls_id(group))
                    .map_err(Error::mls)?
                    .ok_or_else(|| Error::Hook("forging: no message secrets".into()))?;
                // MLSMessage = version wire_format PublicMessage; PublicMessage = FramedContent
                // auth membership_tag; the commit's path (leaf, nodes) ends the FramedContent.
                let leaf_bytes = leaf.tls_serialize_detached().map_err(forged)?;
                let leaf_at = find(&bytes, &leaf_bytes)?;
                let mut leaf_end = leaf_at + leaf_bytes.len();
                match forgery {
                    CommitForgery::ParentHash => {
                        let hash = leaf.parent_hash().unwrap_or_default();
                        bytes[leaf_at + find(&leaf_bytes, hash)?] ^= 0x01;
                        // LeafNodeTBS of a commit's leaf: the leaf without its signature, the
                        // group id and the leaf's index.
                        let tbs_end = leaf_end - leaf.signature().tls_serialized_len();
                        let mut tbs = bytes[leaf_at..tbs_end].to_vec();
                        tbs.extend(g.group_id().tls_serialize_detached().map_err(forged)?);
                        tbs.extend(own_index.to_be_bytes());
                        let signature = sign_with_label(key, "LeafNodeTBS", &tbs)?;
                        bytes.splice(tbs_end..leaf_end, signature.iter().copied());
                        leaf_end = tbs_end + signature.len();
                    }
                    CommitForgery::ShortPath => {
                        // nodes<V>; UpdatePathNode = encryption_key<V> encrypted_path_secret<V>.
                        let nodes_len = field_len(&bytes[leaf_end..])?;
                        let nodes =
                            VLBytes::tls_deserialize(&mut &bytes[leaf_end..]).map_err(forged)?;
                        let nodes = nodes.as_slice();
                        let (mut at, mut last) = (0, 0);
                        while at < nodes.len() {
                            last = at;
                            at += field_len(&nodes[at..])?;
                            at += field_len(&nodes[at..])?;
                        }
                        let shorter = VLBytes::new(nodes[..last].to_vec())
                            .tls_serialize_detached()
                            .map_err(forged)?;
                        bytes.splice(leaf_end..leaf_end + nodes_len, shorter);
                    }
                    CommitForgery::Unaltered => {}
                }
                // The FramedContent ends with the path's nodes; then come its signature, its
                // confirmation tag and its membership tag.
                let content_end = leaf_end + field_len(&bytes[leaf_end..])?;
                let signature_len = field_len(&bytes[content_end..])?;
                let tag_at = content_end + signature_len;
                let confirmation = bytes[tag_at..tag_at + field_len(&bytes[tag_at..])?].to_vec();
                // FramedContentTBS = version wire_format FramedContent GroupContext.
                let mut tbs = bytes[..content_end].to_vec();
                tbs.extend(&context);
                let signature = sign_with_label(key, "FramedContentTBS", &tbs)?;
                // AuthenticatedContentTBM = FramedContentTBS FramedContentAuthData.
                let mut tbm = tbs;
                tbm.extend(&signature);
                tbm.extend(&confirmation);
                let membership_key = secrets.message_secrets.membership_key.secret.value;
                let tag = p
                    .crypto()
                    .hmac(HashType::Sha2_256, membership_key.as_slice(), &tbm)
                    .map_err(|e| Error::Hook(format!("forging: {e:?}")))?;
                bytes.truncate(content_end);
                bytes.extend(signature);
                bytes.extend(confirmation);
                bytes.extend(
                    VLBytes::new(tag.as_slice().to_vec())
                        .tls_serialize_detached()
                        .map_err(forged)?,
                );
                Ok(bytes)
            })());
            Err(Error::Hook("rolled back".into()))
        });
        out.unwrap_or_else(|| Err(Error::Hook("forging: nothing was made".into())))
    }

    /// A key package of this device with `forgery` in it, signed as the device signs its own.
    #[doc(hidden)]
    pub fn forge_key_package_unchecked(
        &mut self,
        forgery: KeyPackageForgery,
    ) -> Result<Vec<u8>, Error> {
        let p = &self.profile.mls.provider;
        let key = &self.identity.device_key;
        let mut builder = KeyPackage::builder().leaf_node_capabilities(capabilities());
        if forgery == KeyPackageForgery::Expired {
            let now = now_ms() / 1000;
            builder = builder.key_package_lifetime(Lifetime::init(now - 2 * 86_400, now - 86_400));
        }
        let bundle = builder
            .build(
                Suite::Classic.ciphersuite(),
                p,
                key,
                credential_for(&self.identity.device_identity(), key),
            )
            .map_err(Error::mls)?;
        let kp = bundle.key_package();
        let mut bytes = kp.tls_serialize_detached().map_err(forged)?;
        // KeyPackage = version (2) suite (2) init_key<V> leaf_node extensions<V> signature<V>;
        // both signatures are Ed25519, so they have the same encoded length.
        let leaf = kp.leaf_node().tls_serialize_detached().map_err(forged)?;
        let sig_len = kp.leaf_node().signature().tls_serialized_len();
        let (init_at, leaf_at) = (5, 37);
        assert_eq!(&bytes[init_at..init_at + 32], kp.hpke_init_key().as_slice());
        assert_eq!(&bytes[leaf_at..leaf_at + leaf.len()], &leaf[..]);
        match forgery {
            KeyPackageForgery::Expired => {}
            KeyPackageForgery::ZeroInitKey => bytes[init_at..init_at + 32].fill(0),
            KeyPackageForgery::LowOrderLeafKey => {
                // LeafNode = encryption_key<V> ... signature<V>; signed without its signature.
                let key_at = leaf_at + 1;
                bytes[key_at..key_at + 32].copy_from_slice(&ORDER_EIGHT_POINT);
                let tbs_end = leaf_at + leaf.len() - sig_len;
                let signature = sign_with_label(key, "LeafNodeTBS", &bytes[leaf_at..tbs_end])?;
                bytes.splice(tbs_end..leaf_at + leaf.len(), signature);
            }
        }
        let tbs_end = bytes.len() - sig_len;
        let signature = sign_with_label(key, "KeyPackageTBS", &bytes[..tbs_end])?;
        bytes.splice(tbs_end.., signature);
        let mut message = serialize(&MlsMessageOut::from(kp.clone()))?;
        let header = message.len() - kp.tls_serialized_len();
        message.truncate(header);
        message.extend(bytes);
        Ok(message)
    }
}
