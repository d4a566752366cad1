//! Device authentication without passwords: the server hands out a random challenge, the device
//! signs it with its device key, and gets a bearer token. Only the token's SHA-256 is stored.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::types::{HashType, SignatureScheme};
use sealpost_proto::{
    ChallengeResponse, DeviceId, DeviceIdentity, TokenRequest, TokenResponse,
    auth_challenge_message,
};

use crate::error::ApiFailure;
use crate::storage::{PendingKind, PendingRecord, Store};

/// How long a challenge may be answered, seconds.
pub const CHALLENGE_TTL_SECS: u64 = 60;
const SESSION_CACHE: usize = 100_000;
/// How long a node trusts a session it has looked up, seconds: a device removed through another
/// node loses access here within this time.
const SESSION_CACHE_SECS: u64 = 60;

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Challenges (kept in the store, so that any node can check the answer) and a cache of
/// sessions.
pub struct Auth {
    crypto: RustCrypto,
    sessions: Mutex<HashMap<[u8; 32], (DeviceIdentity, u64)>>,
    token_ttl_secs: u64,
}

impl Auth {
    /// New, with tokens valid for `token_ttl_secs`.
    pub fn new(token_ttl_secs: u64) -> Self {
        Self {
            crypto: RustCrypto::default(),
            sessions: Mutex::new(HashMap::new()),
            token_ttl_secs,
        }
    }

    /// The crypto provider (for signature checks elsewhere).
    pub fn crypto(&self) -> &RustCrypto {
        &self.crypto
    }

    /// SHA-256.
    pub fn sha256(&self, data: &[u8]) -> Result<[u8; 32], ApiFailure> {
        self.crypto
            .hash(HashType::Sha2_256, data)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(ApiFailure::internal)
    }

    /// Verifies an Ed25519 signature.
    pub fn verify(&self, public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        public_key.len() == 32
            && self
                .crypto
                .verify_signature(SignatureScheme::ED25519, message, public_key, signature)
                .is_ok()
    }

    /// A fresh challenge for `device`.
    pub async fn challenge(
        &self,
        store: &dyn Store,
        device: DeviceId,
    ) -> Result<ChallengeResponse, ApiFailure> {
        let challenge = self
            .crypto
            .random_vec(32)
            .map_err(|_| ApiFailure::internal())?;
        let expires_at = now_secs() + CHALLENGE_TTL_SECS;
        store
            .put_pending(
                PendingRecord {
                    kind: PendingKind::Challenge,
                    key: challenge.clone(),
                    value: device.as_bytes().to_vec(),
                    expires_at,
                },
                None,
            )
            .await?;
        Ok(ChallengeResponse {
            challenge,
            expires_at,
        })
    }

    /// Checks a signed challenge and issues a token.
    pub async fn token(
        &self,
        store: &dyn Store,
        req: TokenRequest,
    ) -> Result<TokenResponse, ApiFailure> {
        // Taken (deleted) whatever the outcome: a challenge is answered once.
        let entry = store
            .pending(PendingKind::Challenge, req.challenge.clone(), true)
            .await?;
        let fresh = matches!(&entry, Some((device, exp))
            if device.as_slice() == req.device_id.as_bytes().as_slice() && *exp >= now_secs());
        if !fresh {
            return Err(ApiFailure::unauthorized("unknown or expired challenge"));
        }
        let device = store
            .device(req.device_id)
            .await?
            .ok_or_else(|| ApiFailure::unauthorized("unknown device"))?;
        let message = auth_challenge_message(&req.device_id, &req.challenge);
        if !self.verify(&device.device_key, &message, &req.signature) {
            return Err(ApiFailure::unauthorized("bad signature"));
        }
        let raw = self
            .crypto
            .random_vec(32)
            .map_err(|_| ApiFailure::internal())?;
        let token = URL_SAFE_NO_PAD.encode(raw);
        let expires_at = now_secs() + self.token_ttl_secs;
        store
            .put_session(self.sha256(token.as_bytes())?, req.device_id, expires_at)
            .await?;
        Ok(TokenResponse { token, expires_at })
    }

    /// Drops the cached sessions of a removed device (its stored ones are deleted with it).
    pub fn forget_device(&self, device: sealpost_proto::DeviceId) {
        if let Ok(mut cache) = self.sessions.lock() {
            cache.retain(|_, (d, _)| d.device_id != device);
        }
    }

    /// The device a bearer token belongs to.
    pub async fn authenticate(
        &self,
        store: &dyn Store,
        token: &str,
    ) -> Result<DeviceIdentity, ApiFailure> {
        let hash = self.sha256(token.as_bytes())?;
        let now = now_secs();
        if let Some((device, exp)) = self
            .sessions
            .lock()
            .map_err(|_| ApiFailure::internal())?
            .get(&hash)
            && *exp >= now
        {
            return Ok(device.clone());
        }
        let (device_id, expires_at) = store
            .session(hash)
            .await?
            .filter(|(_, exp)| *exp >= now)
            .ok_or_else(|| ApiFailure::unauthorized("unknown or expired token: sign in again"))?;
        let device = store
            .device(device_id)
            .await?
            .ok_or_else(|| ApiFailure::unauthorized("unknown device"))?;
        let identity = DeviceIdentity {
            username: device.username,
            device_id,
        };
        let mut cache = self.sessions.lock().map_err(|_| ApiFailure::internal())?;
        if cache.len() >= SESSION_CACHE {
            cache.clear();
        }
        let cached_until = expires_at.min(now + SESSION_CACHE_SECS);
        cache.insert(hash, (identity.clone(), cached_until));
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteStore;

    #[tokio::test]
    async fn expired_challenges_and_sessions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let auth = Auth::new(3600);
        let device = DeviceId::from_bytes([1; 16]);

        // A challenge past its expiry is refused, even with a well-formed request.
        let stale = vec![7; 32];
        store
            .put_pending(
                PendingRecord {
                    kind: PendingKind::Challenge,
                    key: stale.clone(),
                    value: device.as_bytes().to_vec(),
                    expires_at: now_secs() - 1,
                },
                None,
            )
            .await
            .unwrap();
        let req = TokenRequest {
            device_id: device,
            challenge: stale,
            signature: vec![0; 64],
        };
        let err = auth.token(&store, req).await.err().unwrap();
        assert!(format!("{err:?}").contains("expired challenge"), "{err:?}");
        // Challenges are single-use: after a failed answer, the fresh one is gone too.
        let ch = auth.challenge(&store, device).await.unwrap();
        let req = TokenRequest {
            device_id: device,
            challenge: ch.challenge.clone(),
            signature: vec![0; 64],
        };
        assert!(
            format!("{:?}", auth.token(&store, req).await.err().unwrap())
                .contains("unknown device")
        );
        assert!(
            store
                .pending(PendingKind::Challenge, ch.challenge, false)
                .await
                .unwrap()
                .is_none()
        );

        // A session past its expiry is refused, from the store and from the cache.
        let token = "expired-token";
        store
            .put_session(
                auth.sha256(token.as_bytes()).unwrap(),
                device,
                now_secs() - 1,
            )
            .await
            .unwrap();
        assert!(auth.authenticate(&store, token).await.is_err());
        let id = DeviceIdentity {
            username: sealpost_proto::Username::new("ann").unwrap(),
            device_id: device,
        };
        auth.sessions
            .lock()
            .unwrap()
            .insert(auth.sha256(b"cached").unwrap(), (id, now_secs() - 1));
        assert!(auth.authenticate(&store, "cached").await.is_err());
    }
}
