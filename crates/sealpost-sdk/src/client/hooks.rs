//! Test hooks: what a broken or malicious member, device or server would do, and ways to look
//! inside a device (its secrets, its receive path) that tests need. Built only with the
//! `test-hooks` feature; nothing here is part of the library's API for applications.

mod forge;

pub use forge::{CommitForgery, KeyPackageForgery};

use super::*;

impl Client {
    /// Test hook: deletes what has disappeared by `now` (unix milliseconds), as the next sync
    /// would at that time. How many history rows went.
    #[doc(hidden)]
    pub fn purge_expired_at(&mut self, now: u64) -> Result<usize, Error> {
        self.profile.purge_expired(now)
    }

    /// Test hook: names a group `name` without checking it, and tells the members, as a
    /// malicious member would. Not built into the library otherwise.
    #[doc(hidden)]
    pub async fn rename_unchecked(&mut self, target: &str, name: &str) -> Result<(), Error> {
        let group = self.resolve(target)?;
        self.update_conv(group, |info| info.name = name.to_owned())?;
        self.send_meta(group).await
    }

    /// Test hook: sends `content` as it is (not numbered, not kept in the history), as another
    /// client or a later version would send what this one does not make. Not built into the
    /// library otherwise.
    #[doc(hidden)]
    pub async fn send_content_unchecked(
        &mut self,
        target: &str,
        content: Content,
    ) -> Result<(), Error> {
        let group = self.resolve(target)?;
        self.send_app(group, content, None).await?;
        Ok(())
    }

    /// Test hook: adds the device of `key_package` to a conversation with no directory check,
    /// as a malicious or broken member would. Not built into the library otherwise.
    #[doc(hidden)]
    pub async fn add_key_package_unchecked(
        &mut self,
        target: &str,
        key_package: &[u8],
    ) -> Result<(), Error> {
        let group = self.resolve(target)?;
        let msg = MlsMessageIn::tls_deserialize_exact(key_package)
            .map_err(|_| Error::Hook("not a key package".into()))?;
        let MlsMessageBodyIn::KeyPackage(kp) = msg.extract() else {
            return Err(Error::Hook("not a key package".into()));
        };
        let kp = kp
            .validate(self.profile.mls.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(Error::mls)?;
        self.commit(group, move |g, p, s| {
            let (commit, welcome, _) = g
                .add_members(p, s, std::slice::from_ref(&kp))
                .map_err(Error::mls)?;
            Ok((commit, Some(welcome)))
        })
        .await
    }

    /// Test hook: runs the receive path on a raw group message, as if the server delivered it
    /// at `seq` in the conversation's log. Not built into the library otherwise.
    #[doc(hidden)]
    pub fn receive_unchecked(
        &mut self,
        target: &str,
        seq: u64,
        payload: &[u8],
    ) -> Result<Vec<Event>, Error> {
        let group = self.resolve(target)?;
        let mark = self.last_event_id()?;
        self.process(Delivery {
            kind: DeliveryKind::Group,
            inbox_seq: 0,
            group_id: *group.as_bytes(),
            group_seq: seq,
            sent_at: 0,
            payload: payload.to_vec().into(),
        })?;
        let events = self.events_after(mark, usize::MAX)?;
        let ids: Vec<EventId> = events.iter().map(|e| e.event_id).collect();
        self.mark_seen(SYNC_CONSUMER, &ids)?;
        Ok(events.into_iter().map(|e| e.event).collect())
    }

    /// Test hook: this device's secret keys, raw (its device and account signing keys, and the
    /// key that seals its local store), for tests that search logs and traffic for them. Not
    /// built into the library otherwise.
    #[doc(hidden)]
    pub fn secret_keys_unchecked(&self) -> Vec<(&'static str, Zeroizing<Vec<u8>>)> {
        vec![
            ("device key", private_key_of(&self.identity.device_key)),
            ("account key", private_key_of(&self.identity.account_key)),
            (
                "store key",
                Zeroizing::new(self.profile.sealer.expose_key().to_vec()),
            ),
        ]
    }

    /// Test hook: every secret in this device's MLS state — epoch secrets, the secret tree's
    /// ratchets, membership and sender-data keys, HPKE private keys of its leaves and key
    /// packages — as `(record, bytes)`: each byte string of 32 bytes or more that sits under a
    /// field whose name says `secret` or `private` (not the group context stored with them).
    /// For tests that search logs and traffic.
    #[doc(hidden)]
    pub fn mls_secrets_unchecked(&self) -> Vec<(String, Zeroizing<Vec<u8>>)> {
        fn walk(v: &serde_json::Value, secret: bool, out: &mut Vec<Zeroizing<Vec<u8>>>) {
            match v {
                serde_json::Value::Array(items) => {
                    let bytes: Option<Vec<u8>> = items
                        .iter()
                        .map(|i| i.as_u64().and_then(|b| u8::try_from(b).ok()))
                        .collect();
                    match bytes {
                        Some(b) if secret && b.len() >= 32 => out.push(Zeroizing::new(b)),
                        Some(_) => {}
                        None => items.iter().for_each(|i| walk(i, secret, out)),
                    }
                }
                serde_json::Value::Object(fields) => {
                    for (name, field) in fields {
                        // The group context kept beside the message secrets is public.
                        let public = name.contains("context");
                        let named = name.contains("secret") || name.contains("private");
                        walk(field, !public && (secret || named), out);
                    }
                }
                _ => {}
            }
        }
        let Ok(values) = self.profile.mls.provider.storage().values().read() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, value) in values.iter() {
            let record: String = key
                .iter()
                .take_while(|b| b.is_ascii_alphabetic())
                .map(|b| char::from(*b))
                .collect();
            // JSON or CBOR (see `mls_storage`), read alike.
            let Ok(json) = crate::mls_storage::decode::<serde_json::Value>(value) else {
                continue;
            };
            let mut found = Vec::new();
            walk(&json, false, &mut found);
            out.extend(found.into_iter().map(|b| (record.clone(), b)));
        }
        out
    }
}

/// The private half of a key pair, as openmls stores it (for the test hook that exposes it).
fn private_key_of(key: &SignatureKeyPair) -> Zeroizing<Vec<u8>> {
    #[derive(Deserialize)]
    struct Stored {
        private: Vec<u8>,
    }
    let json = Zeroizing::new(serde_json::to_vec(key).unwrap_or_default());
    Zeroizing::new(
        serde_json::from_slice::<Stored>(&json)
            .map(|s| s.private)
            .unwrap_or_default(),
    )
}
