//! Checking what the server's key directory says, without trusting the server.
//!
//! A device pins the directory's keys when it registers. From then on it accepts a directory
//! answer only if the epoch root is signed by the pinned key, the epoch is not older than one it
//! has already verified, and the akd proof verifies against that root. Devices whose certificate
//! does not verify under the account key are never trusted.

use std::collections::BTreeMap;

use sealpost_proto::directory::{
    DirectoryConfig, DirectoryEntry, DirectoryKeys, HistoryResponse, LookupResponse, SignedRoot,
    decode_history_proof, decode_lookup_proof, directory_label,
};
use sealpost_proto::{DeviceId, Username};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::SecurityAlert;

/// What a device remembers of the directory (public data, kept sealed in the profile).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DirectoryState {
    /// The pinned keys.
    pub keys: DirectoryKeys,
    /// The newest epoch verified; answers for older epochs are refused.
    pub epoch: u64,
    /// The newest epoch at which this device checked its own account's history.
    pub history_checked: u64,
}

/// A verified directory entry: the devices whose certificate holds, and those whose does not.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    pub epoch: u64,
    pub root: [u8; 32],
    pub entry: DirectoryEntry,
    pub uncertified: Vec<DeviceId>,
}

pub(crate) fn security(alert: SecurityAlert, detail: impl Into<String>) -> Error {
    Error::Security {
        alert,
        detail: detail.into(),
    }
}

/// The server went back to an older epoch than one already verified.
pub(crate) fn rollback(got: u64, verified: u64) -> Error {
    security(
        SecurityAlert::DirectoryRollback,
        format!(
            "the server showed version {got} of its key directory after version {verified} was \
             checked: a server going back can be showing you a different directory from \
             everyone else's (see docs/threat-model.md)"
        ),
    )
}

/// A directory proof about `user` that did not verify.
fn bad_proof(user: &Username, what: &str, why: impl std::fmt::Display) -> Error {
    security(
        SecurityAlert::InvalidProof,
        format!("the directory {what} of @{user} does not verify: {why}"),
    )
}

impl DirectoryState {
    /// Checks a signed root: the pinned key signed it and it is not older than what we saw.
    pub fn check_root(&self, root: &SignedRoot) -> Result<[u8; 32], Error> {
        let hash = root
            .verify(&self.keys.signing_key)
            .map_err(|e| security(SecurityAlert::InvalidProof, e.to_string()))?;
        if root.epoch < self.epoch {
            return Err(rollback(root.epoch, self.epoch));
        }
        Ok(hash)
    }

    /// Verifies a lookup answer for `user`.
    pub fn verify_lookup(&self, user: &Username, resp: &LookupResponse) -> Result<Verified, Error> {
        let root = self.check_root(&resp.root)?;
        verify_proof(&self.keys, user, resp.root.epoch, root, &resp.proof)
    }

    /// Verifies a key-history answer for `user`: the root it is for, and every version, newest
    /// first.
    pub fn verify_history(
        &self,
        user: &Username,
        resp: &HistoryResponse,
    ) -> Result<([u8; 32], Versions), Error> {
        let root = self.check_root(&resp.root)?;
        let bad = |why: String| bad_proof(user, "history", why);
        let proof = decode_history_proof(&resp.proof).map_err(|e| bad(e.to_string()))?;
        let versions = akd_core::verify::key_history_verify::<DirectoryConfig>(
            &self.keys.vrf_key,
            root,
            resp.root.epoch,
            directory_label(user),
            proof,
            akd_core::verify::history::HistoryVerificationParams::default(),
        )
        .map_err(|e| bad(e.to_string()))?;
        let versions = versions
            .into_iter()
            .map(|v| {
                DirectoryEntry::decode(&v.value.0)
                    .map(|e| (v.epoch, e))
                    .map_err(|e| bad(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok((root, versions))
    }
}

/// Verifies a lookup proof for `user` against a root already checked.
pub(crate) fn verify_proof(
    keys: &DirectoryKeys,
    user: &Username,
    epoch: u64,
    root: [u8; 32],
    proof: &[u8],
) -> Result<Verified, Error> {
    let bad = |why: String| bad_proof(user, "entry", why);
    let proof = decode_lookup_proof(proof).map_err(|e| bad(e.to_string()))?;
    let result = akd_core::verify::lookup_verify::<DirectoryConfig>(
        &keys.vrf_key,
        root,
        epoch,
        directory_label(user),
        proof,
    )
    .map_err(|e| bad(e.to_string()))?;
    let entry = DirectoryEntry::decode(&result.value.0).map_err(|e| bad(e.to_string()))?;
    Ok(certified(user, epoch, root, entry))
}

/// Splits an entry's devices into certified ones (kept) and the others (reported).
pub(crate) fn certified(
    user: &Username,
    epoch: u64,
    root: [u8; 32],
    mut entry: DirectoryEntry,
) -> Verified {
    let mut uncertified = Vec::new();
    let all = std::mem::take(&mut entry.devices);
    for d in all {
        if entry.certifies(user, &d) {
            entry.devices.push(d);
        } else {
            uncertified.push(d.id());
        }
    }
    Verified {
        epoch,
        root,
        entry,
        uncertified,
    }
}

/// An entry's versions with their epochs, newest first.
pub(crate) type Versions = Vec<(u64, DirectoryEntry)>;

/// Verified roots by epoch, to compare with what peers carry.
pub(crate) type Roots = BTreeMap<u64, [u8; 32]>;
