//! The key that encrypts the local store at rest.
//!
//! Every sensitive value in the profile database (MLS secrets, message history, group names,
//! the identity keys) is sealed with ChaCha20-Poly1305 under a 32-byte store key. The store key
//! lives in `store.key` beside the database:
//! - with a passphrase (`SEALPOST_PASSPHRASE` when the profile is created and whenever it is
//!   opened), the file holds the key wrapped under Argon2id(passphrase): a copy of the profile
//!   alone reveals nothing;
//! - without one, the file holds the key itself (mode 0600): the database alone, a backup of it or
//!   a stray copy reveals nothing, but whoever copies the whole profile directory can read it.

use std::io::Write as _;
use std::path::Path;

use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::types::AeadType;
use zeroize::Zeroizing;

use crate::error::Error;

const MAGIC: &[u8; 4] = b"SPK1";
const NONCE: usize = 12;

/// The store key. Zeroized on drop; no `Debug`.
pub struct StoreKey(Zeroizing<Vec<u8>>);

fn derive(passphrase: &str, salt: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut out = Zeroizing::new(vec![0u8; 32]);
    argon2::Argon2::default()
        .hash_password_into(passphrase.as_bytes(), salt, &mut out)
        .map_err(|_| Error::Store("could not derive the key from the passphrase".into()))?;
    Ok(out)
}

impl StoreKey {
    /// The raw key, for tests that search logs and traffic for it.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Creates a new key and writes `store.key` (wrapped if a passphrase is given).
    pub fn create(
        crypto: &RustCrypto,
        path: &Path,
        passphrase: Option<&str>,
    ) -> Result<Self, Error> {
        let key = Zeroizing::new(
            crypto
                .random_vec(32)
                .map_err(|_| Error::Crypto("no randomness"))?,
        );
        let mut file_bytes = MAGIC.to_vec();
        match passphrase {
            None => {
                file_bytes.push(0);
                file_bytes.extend_from_slice(&key);
            }
            Some(p) => {
                let salt = crypto
                    .random_vec(16)
                    .map_err(|_| Error::Crypto("no randomness"))?;
                let wrap = StoreKey(derive(p, &salt)?);
                file_bytes.push(1);
                file_bytes.extend_from_slice(&salt);
                file_bytes.extend_from_slice(&wrap.seal(crypto, b"store-key", &key)?);
            }
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options
            .open(path)
            .map_err(|e| Error::Store(format!("cannot create {}: {e}", path.display())))?;
        f.write_all(&file_bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::Store(format!("cannot write {}: {e}", path.display())))?;
        Ok(StoreKey(key))
    }

    /// Reads `store.key`.
    pub fn load(crypto: &RustCrypto, path: &Path, passphrase: Option<&str>) -> Result<Self, Error> {
        let bytes = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| Error::Store(format!("cannot read {}: {e}", path.display())))?,
        );
        let corrupt = || Error::Store(format!("{} is damaged", path.display()));
        let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(corrupt)?;
        match rest.split_first() {
            Some((0, key)) if key.len() == 32 => Ok(StoreKey(Zeroizing::new(key.to_vec()))),
            Some((1, wrapped)) if wrapped.len() > 16 => {
                let p = passphrase.ok_or(Error::PassphraseRequired)?;
                let (salt, sealed) = wrapped.split_at(16);
                let wrap = StoreKey(derive(p, salt)?);
                let key = wrap
                    .open(crypto, b"store-key", sealed)
                    .map_err(|_| Error::WrongPassphrase)?;
                Ok(StoreKey(key))
            }
            _ => Err(corrupt()),
        }
    }

    /// Encrypts `plaintext`, bound to `label`. Output: nonce ‖ ciphertext ‖ tag.
    pub fn seal(
        &self,
        crypto: &RustCrypto,
        label: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let nonce = crypto
            .random_vec(NONCE)
            .map_err(|_| Error::Crypto("no randomness"))?;
        let ct = crypto
            .aead_encrypt(
                AeadType::ChaCha20Poly1305,
                &self.0,
                plaintext,
                &nonce,
                label,
            )
            .map_err(|_| Error::Crypto("sealing failed"))?;
        let mut out = nonce;
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts what [`seal`](Self::seal) produced with the same label.
    pub fn open(
        &self,
        crypto: &RustCrypto,
        label: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let (nonce, ct) = sealed
            .split_at_checked(NONCE)
            .ok_or(Error::Store("a sealed value is truncated".into()))?;
        crypto
            .aead_decrypt(AeadType::ChaCha20Poly1305, &self.0, ct, nonce, label)
            .map(Zeroizing::new)
            .map_err(|_| {
                Error::Store(
                    "a sealed value does not decrypt: the store is damaged or the key is wrong"
                        .into(),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_wrapped_keys() {
        let dir = tempfile::tempdir().unwrap();
        let crypto = RustCrypto::default();
        let k1 = StoreKey::create(&crypto, &dir.path().join("a.key"), None).unwrap();
        let sealed = k1.seal(&crypto, b"l", b"hello").unwrap();
        let k1b = StoreKey::load(&crypto, &dir.path().join("a.key"), None).unwrap();
        assert_eq!(&**k1b.open(&crypto, b"l", &sealed).unwrap(), b"hello");
        assert!(
            k1b.open(&crypto, b"other", &sealed).is_err(),
            "the label is bound"
        );

        let k2 = StoreKey::create(&crypto, &dir.path().join("b.key"), Some("pw")).unwrap();
        let sealed = k2.seal(&crypto, b"l", b"x").unwrap();
        assert!(matches!(
            StoreKey::load(&crypto, &dir.path().join("b.key"), None),
            Err(Error::PassphraseRequired)
        ));
        assert!(matches!(
            StoreKey::load(&crypto, &dir.path().join("b.key"), Some("nope")),
            Err(Error::WrongPassphrase)
        ));
        let k2b = StoreKey::load(&crypto, &dir.path().join("b.key"), Some("pw")).unwrap();
        assert_eq!(&**k2b.open(&crypto, b"l", &sealed).unwrap(), b"x");
        std::fs::write(dir.path().join("c.key"), b"SPK1\x07").unwrap();
        assert!(StoreKey::load(&crypto, &dir.path().join("c.key"), None).is_err());
    }
}
