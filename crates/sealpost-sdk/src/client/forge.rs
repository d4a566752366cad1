//! Test hook: key packages a broken or malicious device publishes. Each is signed correctly by
//! the device, so only the adding client's own checks can refuse it. Built only with the
//! `test-hooks` feature.

use openmls::ciphersuite::signature::SignContent;
use openmls::prelude::{KeyPackage, Lifetime, MlsMessageOut};
use openmls_traits::signatures::Signer;
use tls_codec::{Serialize as _, Size as _, VLBytes};

use super::{Client, capabilities, credential_for, now_ms, serialize};
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

impl Client {
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
        let forged = |e: tls_codec::Error| Error::Invalid(format!("forging a key package: {e}"));
        let mut bytes = kp.tls_serialize_detached().map_err(forged)?;
        // KeyPackage = version (2) suite (2) init_key<V> leaf_node extensions<V> signature<V>;
        // both signatures are Ed25519, so they have the same encoded length.
        let leaf = kp.leaf_node().tls_serialize_detached().map_err(forged)?;
        let sig_len = kp.leaf_node().signature().tls_serialized_len();
        let (init_at, leaf_at) = (5, 37);
        assert_eq!(&bytes[init_at..init_at + 32], kp.hpke_init_key().as_slice());
        assert_eq!(&bytes[leaf_at..leaf_at + leaf.len()], &leaf[..]);
        let sign = |label: &str, content: &[u8]| -> Result<Vec<u8>, Error> {
            let signed = SignContent::new(label, content.to_vec().into())
                .tls_serialize_detached()
                .map_err(forged)?;
            let signature = key
                .sign(&signed)
                .map_err(|e| Error::Invalid(format!("{e:?}")))?;
            VLBytes::new(signature)
                .tls_serialize_detached()
                .map_err(forged)
        };
        match forgery {
            KeyPackageForgery::Expired => {}
            KeyPackageForgery::ZeroInitKey => bytes[init_at..init_at + 32].fill(0),
            KeyPackageForgery::LowOrderLeafKey => {
                // LeafNode = encryption_key<V> ... signature<V>; signed without its signature.
                let key_at = leaf_at + 1;
                bytes[key_at..key_at + 32].copy_from_slice(&ORDER_EIGHT_POINT);
                let tbs_end = leaf_at + leaf.len() - sig_len;
                let signature = sign("LeafNodeTBS", &bytes[leaf_at..tbs_end])?;
                bytes.splice(tbs_end..leaf_at + leaf.len(), signature);
            }
        }
        let tbs_end = bytes.len() - sig_len;
        let signature = sign("KeyPackageTBS", &bytes[..tbs_end])?;
        bytes.splice(tbs_end.., signature);
        let mut message = serialize(&MlsMessageOut::from(kp.clone()))?;
        let header = message.len() - kp.tls_serialized_len();
        message.truncate(header);
        message.extend(bytes);
        Ok(message)
    }
}
