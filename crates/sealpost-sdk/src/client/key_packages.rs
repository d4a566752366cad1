//! Key packages: this device's own (made, uploaded, replenished), and the ones claimed for others,
//! each checked against its owner's verified directory entry before it is used, and never used
//! twice.

use super::*;

impl Client {
    /// Claims a key package of every device of `users` not in `present`, and checks each
    /// against its account's entry as the trust gate admits it. A refused device is shown and
    /// left out (the user's other devices are still added); a user who cannot be added at all
    /// (unknown, refused by the gate) fails the whole call, before anything is changed.
    ///
    /// The users' directory entries are fetched first, in one batched step at one epoch, and
    /// what the checks record (key packages used, alerts) is written in one transaction.
    pub(super) async fn key_packages_for(
        &mut self,
        suite: Suite,
        present: &[DeviceId],
        users: &[Username],
    ) -> Result<Vec<KeyPackage>, Error> {
        // This account's devices that are all in already: nothing to claim.
        let wanted: Vec<Username> =
            users
                .iter()
                .filter(|user| {
                    **user != self.identity.username
                        || !self.dir.entries.get(*user).is_some_and(|v| {
                            v.entry.devices.iter().all(|d| present.contains(&d.id()))
                        })
                })
                .cloned()
                .collect();
        // Each account has a device at least: a group too large for the server already is
        // refused before anyone is looked up.
        self.check_group_size(present.len() + wanted.len()).await?;
        // A refused directory answer (shown already) stops the whole call.
        if let Some(e) = self.fetch_entries(wanted.clone()).await?.into_iter().next() {
            return Err(e);
        }
        // A group larger than the server allows is refused before any key package is claimed
        // (each is a one-time key of someone's device).
        let joining: usize = wanted
            .iter()
            .filter_map(|user| self.dir.entries.get(user))
            .map(|v| {
                v.entry
                    .devices
                    .iter()
                    .filter(|d| !present.contains(&d.id()))
                    .count()
            })
            .sum();
        self.check_group_size(present.len() + joining).await?;
        self.profile.begin_batch()?;
        let kps = self.claim_checked(suite, present, &wanted).await;
        // What was noted stands either way: the key packages used, and the alerts.
        self.profile.commit_batch()?;
        kps
    }

    async fn claim_checked(
        &mut self,
        suite: Suite,
        present: &[DeviceId],
        users: &[Username],
    ) -> Result<Vec<KeyPackage>, Error> {
        let mut kps = Vec::new();
        let mut refused = None;
        for user in users {
            let claimed = self
                .api
                .claim_key_packages_for(&self.identity, user, suite)
                .await
                .map_err(unknown_user(user))?;
            // Every key package must belong to a device of the user's verified directory
            // entry: the one just fetched, or (when the batch did not admit one) the answer of
            // a lookup of its own, which says why.
            let verified = match self.dir.entries.get(user) {
                Some(v) => v.clone(),
                None => self.lookup_verified(user).await?,
            };
            for c in claimed.key_packages {
                if present.contains(&c.device_id) {
                    continue;
                }
                let kp = self.check_key_package(&c.key_package, user, c.device_id, suite)?;
                let listed = verified.entry.device(c.device_id).is_some_and(|d| {
                    d.device_key.as_slice() == kp.leaf_node().signature_key().as_slice()
                });
                if !listed {
                    // Refused and shown; the user's verified devices are still added.
                    let e = security(
                        SecurityAlert::UnverifiedMember,
                        format!(
                            "the server handed out a key package for device {} of {} that is not in their verified directory entry; that device was not added",
                            c.device_id.short(),
                            at(user)
                        ),
                    );
                    self.alert(&e)?;
                    refused = Some(e);
                    continue;
                }
                if let Err(e) = self.note_key_package_use(&kp, user, c.device_id) {
                    if matches!(e, Error::Security { .. }) {
                        self.alert(&e)?;
                    }
                    refused = Some(e);
                    continue;
                }
                kps.push(kp);
            }
        }
        if kps.is_empty() {
            if let Some(e) = refused {
                return Err(e);
            }
            return Err(Error::NobodyToAdd);
        }
        Ok(kps)
    }

    /// Records that a claimed key package is being used; refuses one this device used before.
    /// A one-time key package handed out twice means the server keeps and replays them: the
    /// device it belongs to already spent its private key and cannot join. Last-resort key
    /// packages are reusable by design and are not recorded.
    pub(super) fn note_key_package_use(
        &mut self,
        kp: &KeyPackage,
        user: &Username,
        device: DeviceId,
    ) -> Result<(), Error> {
        if kp.last_resort() {
            return Ok(());
        }
        let hash = kp
            .hash_ref(self.profile.mls.provider.crypto())
            .map_err(Error::mls)?;
        let fresh = self
            .profile
            .atomically(|tx, _, _| store::use_key_package(tx, hash.as_slice()))?;
        if fresh {
            return Ok(());
        }
        Err(security(
            SecurityAlert::ReusedKeyPackage,
            format!(
                "the server handed out a key package of device {} of {} that this device has used before; that device was not added",
                device.short(),
                at(user)
            ),
        ))
    }

    /// A claimed key package, verified: it parses, its signature holds, and it belongs to the
    /// device and user it was claimed for, in the conversation's suite.
    pub(super) fn check_key_package(
        &self,
        bytes: &[u8],
        user: &Username,
        device: DeviceId,
        suite: Suite,
    ) -> Result<KeyPackage, Error> {
        let bad = |why: &str| {
            Error::Protocol(format!(
                "the server handed out an invalid key package for {}: {why}",
                at(user)
            ))
        };
        let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| bad("not MLS"))?;
        let MlsMessageBodyIn::KeyPackage(kp) = msg.extract() else {
            return Err(bad("not a key package"));
        };
        let crypto = self.profile.mls.provider.crypto();
        let kp = kp
            .validate(crypto, ProtocolVersion::Mls10)
            .map_err(|e| match e {
                KeyPackageVerifyError::LifetimeError(LifetimeError::Expired { .. }) => {
                    bad("it has expired")
                }
                KeyPackageVerifyError::LifetimeError(LifetimeError::NotValidYet { .. }) => {
                    bad("it is not valid yet")
                }
                KeyPackageVerifyError::InvalidSignature
                | KeyPackageVerifyError::InvalidLeafNodeSignature => bad("its signature is wrong"),
                e => bad(&e.to_string()),
            })?;
        let owner = credential_user(kp.leaf_node().credential())
            .ok_or_else(|| bad("no Sealpost device"))?;
        if owner.username != *user || owner.device_id != device {
            return Err(bad("it is another device's"));
        }
        if kp.ciphersuite() != suite.ciphersuite() {
            return Err(bad("it is for another cipher suite"));
        }
        // With an init key nothing can be encrypted to the add would fail; with such a leaf
        // key, every later commit of the group. Refused here, before anything changes.
        let unusable = |name: &str| {
            security(
                SecurityAlert::UnusableKey,
                format!(
                    "a key package of {} was refused: its {name} key is not a public key anything can be encrypted to",
                    at(user)
                ),
            )
        };
        if !usable_key(crypto, kp.ciphersuite(), kp.hpke_init_key().as_slice()) {
            return Err(unusable("init"));
        }
        if !usable_leaf_key(crypto, kp.ciphersuite(), kp.leaf_node())? {
            return Err(unusable("encryption"));
        }
        Ok(kp)
    }
}

pub(super) fn make_key_package(
    p: &Provider,
    key: &SignatureKeyPair,
    who: &DeviceIdentity,
    suite: Suite,
    last_resort: bool,
) -> Result<Vec<u8>, Error> {
    let mut builder = KeyPackage::builder().leaf_node_capabilities(capabilities());
    if last_resort {
        builder = builder.mark_as_last_resort();
    }
    let bundle = builder
        .build(suite.ciphersuite(), p, key, credential_for(who, key))
        .map_err(Error::mls)?;
    serialize(&MlsMessageOut::from(bundle.key_package().clone()))
}

pub(super) fn make_key_packages(
    p: &Provider,
    key: &SignatureKeyPair,
    who: &DeviceIdentity,
    suite: Suite,
    n: usize,
) -> Result<Vec<Vec<u8>>, Error> {
    (0..n)
        .map(|_| make_key_package(p, key, who, suite, false))
        .collect()
}

/// A new device's key packages: `n` single-use ones and a last-resort one per suite.
pub(crate) fn initial_key_packages(
    p: &Provider,
    key: &SignatureKeyPair,
    who: &DeviceIdentity,
    n: usize,
) -> Result<Vec<Vec<u8>>, Error> {
    let mut all = Vec::new();
    for suite in Suite::ALL {
        all.extend(make_key_packages(p, key, who, suite, n)?);
        all.push(make_key_package(p, key, who, suite, true)?);
    }
    Ok(all)
}
