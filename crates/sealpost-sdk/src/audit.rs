//! An auditor of a server's key directory: it checks, one epoch at a time, that every epoch only
//! added to the one before (akd's append-only proofs), that each root is signed by the directory
//! key it pinned on its first run, and that each epoch starts from the root the previous one
//! ended with. It keeps where it stopped in a small state file, so it can run continuously or
//! be started again later; memory stays bounded by one epoch's proof.
//!
//! Every signed root it checked is kept beside the state ([`RootLog`]), so that auditors can
//! compare what they were shown ([`compare`]): the server signs each epoch's root, so two
//! different roots for one epoch, both under its key, prove that it showed two directories — a
//! split view that neither auditor could see alone.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use sealpost_proto::DeviceId;
use sealpost_proto::directory::{DirectoryConfig, SignedRoot, decode_audit_proof};
use serde::{Deserialize, Serialize};

use crate::api::Api;
use crate::directory::{rollback, security};
use crate::error::Error;
use crate::model::SecurityAlert;

/// What the auditor remembers between runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditState {
    /// The server audited.
    pub server: String,
    /// The directory key pinned on the first run (base64 in the file).
    #[serde(with = "sealpost_proto::b64")]
    pub signing_key: Vec<u8>,
    /// The newest epoch verified.
    pub verified_epoch: u64,
    /// Its root.
    #[serde(with = "sealpost_proto::b64")]
    pub verified_root: Vec<u8>,
}

/// The result of one audit run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditReport {
    /// The first epoch of the verified range.
    pub from: u64,
    /// The last epoch of the verified range.
    pub to: u64,
    /// How many epoch transitions this run verified.
    pub verified: u64,
}

/// Audits `server` from where `state_file` says the last run stopped (or from `from`, or from
/// epoch 0 on a first run) up to the server's latest epoch.
pub async fn audit(
    server: &str,
    state_file: &Path,
    from: Option<u64>,
) -> Result<AuditReport, Error> {
    let api = Api::new(server, DeviceId::from_bytes([0; 16]))?;
    let mut state = match read_state(state_file)? {
        Some(state) if state.server == server => state,
        Some(state) => {
            return Err(Error::AuditOfAnotherServer {
                file: state_file.to_owned(),
                holds: state.server,
                wanted: server.to_owned(),
            });
        }
        None => {
            let keys = api.directory_keys().await?;
            AuditState {
                server: server.to_owned(),
                signing_key: keys.signing_key,
                verified_epoch: 0,
                verified_root: Vec::new(),
            }
        }
    };
    let latest = api.directory_root(None).await?;
    latest
        .verify(&state.signing_key)
        .map_err(|e| security(SecurityAlert::InvalidProof, e.to_string()))?;
    if latest.epoch < state.verified_epoch {
        return Err(rollback(latest.epoch, state.verified_epoch));
    }
    // Starting elsewhere than where the last run stopped gives up the link between the runs.
    let start = match from {
        Some(e) if e != state.verified_epoch => {
            state.verified_epoch = e;
            state.verified_root.clear();
            e
        }
        _ => state.verified_epoch,
    };
    let mut log = RootLog::open(&roots_file(state_file), &state, true)?;
    let mut verified = 0;
    while state.verified_epoch < latest.epoch {
        let epoch = state.verified_epoch;
        let step = api.directory_audit(epoch).await?;
        let bad = |what: &str| {
            security(
                SecurityAlert::InvalidProof,
                format!("audit of epoch {epoch} to {}: {what}", epoch + 1),
            )
        };
        if step.from.epoch != epoch || step.to.epoch != epoch + 1 {
            return Err(bad("the server answered for other epochs"));
        }
        let start_root = step
            .from
            .verify(&state.signing_key)
            .map_err(|e| bad(&e.to_string()))?;
        let end_root = step
            .to
            .verify(&state.signing_key)
            .map_err(|e| bad(&e.to_string()))?;
        if !state.verified_root.is_empty() && state.verified_root != start_root {
            return Err(security(
                SecurityAlert::SplitView,
                format!(
                    "the root of epoch {epoch} differs from the one verified earlier: the directory was rewritten"
                ),
            ));
        }
        let proof = decode_audit_proof(&step.proof).map_err(|e| bad(&e.to_string()))?;
        akd::auditor::audit_verify::<DirectoryConfig>(vec![start_root, end_root], proof)
            .await
            .map_err(|e| bad(&format!("the append-only proof does not verify ({e})")))?;
        // The roots first: a crash between the two leaves a root beyond the state, which the
        // next run's `RootLog::open` drops.
        if log.is_empty() {
            log.append(&step.from)?;
        }
        log.append(&step.to)?;
        state.verified_epoch = epoch + 1;
        state.verified_root = end_root.to_vec();
        write_state(state_file, &state)?;
        verified += 1;
    }
    write_state(state_file, &state)?;
    Ok(AuditReport {
        from: start,
        to: state.verified_epoch,
        verified,
    })
}

/// What comparing with a peer found: the two agree on the directory up to `epoch` (a root
/// commits to every version before it, so one epoch in common covers all earlier ones).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerReport {
    /// The peer.
    pub peer: String,
    /// The epoch compared.
    pub epoch: u64,
    /// The newest epoch the peer has checked.
    pub peer_epoch: u64,
    /// The newest epoch checked here.
    pub own_epoch: u64,
}

/// Compares the roots checked here (by [`audit`], into `state_file`) with those of `peer`:
/// another auditor serving what it checked (`sealpost audit --serve`), or anything else that
/// answers `GET /v1/directory/root` and `/v1/directory/roots/{epoch}` for the same directory.
/// Takes the newest epoch both have, and checks the peer's root for it under the directory
/// key pinned here: a root that differs from the one checked here is a split view
/// ([`SecurityAlert::SplitView`]), with both signed roots in its detail as the proof.
pub async fn compare(state_file: &Path, peer: &str) -> Result<PeerReport, Error> {
    let state = read_state(state_file)?.ok_or_else(|| Error::AuditPeer {
        peer: peer.to_owned(),
        reason: "nothing is audited here yet: run `sealpost audit` first".into(),
    })?;
    let log = RootLog::open(&roots_file(state_file), &state, false)?;
    let (newest, theirs) = peer_root(peer, &state.signing_key, state.verified_epoch).await?;
    let epoch = theirs.epoch;
    let ours = log.get(epoch)?.ok_or_else(|| Error::AuditPeer {
        peer: peer.to_owned(),
        reason: format!(
            "version {epoch} is not among the roots kept here (audit from an earlier version \
             with `--from`)"
        ),
    })?;
    if ours.root != theirs.root {
        return Err(security(
            SecurityAlert::SplitView,
            format!(
                "the server signed two different roots for version {epoch} of its key \
                 directory: {} (checked here) and {} (checked by {peer}). It shows different \
                 people different directories. The proof, both signed: {} and {}",
                hex::encode(&ours.root),
                hex::encode(&theirs.root),
                serde_json::to_string(&ours).unwrap_or_default(),
                serde_json::to_string(&theirs).unwrap_or_default(),
            ),
        ));
    }
    Ok(PeerReport {
        peer: peer.to_owned(),
        epoch,
        peer_epoch: newest,
        own_epoch: state.verified_epoch,
    })
}

/// What `peer` (an auditor, or anything serving a directory's signed roots) has for the newest
/// epoch it has in common with one at `own_epoch`: its root of `own_epoch` if it is there or
/// beyond, else its newest, checked under `signing_key`; with the peer's newest epoch. For
/// auditors comparing with each other, and devices comparing with auditors.
pub(crate) async fn peer_root(
    peer: &str,
    signing_key: &[u8],
    own_epoch: u64,
) -> Result<(u64, SignedRoot), Error> {
    let refused = |reason: String| Error::AuditPeer {
        peer: peer.to_owned(),
        reason,
    };
    let api = Api::new(peer, DeviceId::from_bytes([0; 16]))?;
    let newest = api.directory_root(None).await?;
    let epoch = newest.epoch.min(own_epoch);
    let (newest, root) = if newest.epoch == epoch {
        (newest.epoch, newest)
    } else {
        (newest.epoch, api.directory_root(Some(epoch)).await?)
    };
    if root.epoch != epoch {
        return Err(refused(format!(
            "asked for version {epoch}, it answered with version {}",
            root.epoch
        )));
    }
    root.verify(signing_key).map_err(|e| {
        refused(format!(
            "its root of version {epoch} is not signed by the key directory checked here ({e}): \
             it checks another server's directory"
        ))
    })?;
    Ok((newest, root))
}

/// The signed root of `epoch` (the newest one with `None`) among those checked by the audit
/// whose state is `state_file`: what an auditor serves to its peers.
pub fn checked_root(state_file: &Path, epoch: Option<u64>) -> Result<Option<SignedRoot>, Error> {
    let Some(state) = read_state(state_file)? else {
        return Ok(None);
    };
    let log = RootLog::open(&roots_file(state_file), &state, false)?;
    log.get(epoch.unwrap_or(state.verified_epoch))
}

/// Where the roots of the audit whose state is `state_file` are kept.
fn roots_file(state_file: &Path) -> PathBuf {
    state_file.with_extension("roots")
}

/// The signed roots an audit checked, one fixed-size record per epoch (epoch, big-endian; root;
/// signature), for consecutive epochs from the first record's. 104 bytes an epoch.
struct RootLog {
    path: PathBuf,
    /// The first record's epoch and the number of records.
    first: u64,
    count: u64,
}

const RECORD: usize = 8 + 32 + 64;

impl RootLog {
    /// Opens the log for an audit at `state`, leaving out what the state does not cover: a
    /// partial record, roots past its verified epoch (a crash between the two writes, or a
    /// reader between them), or, if the log does not reach that epoch or starts elsewhere than a
    /// `--from` restart left it, everything. The auditor (`repair`) also cuts it from the file;
    /// readers only leave it out.
    fn open(path: &Path, state: &AuditState, repair: bool) -> Result<RootLog, Error> {
        let mut log = RootLog {
            path: path.to_owned(),
            first: 0,
            count: 0,
        };
        if let Some(dir) = path.parent().filter(|_| repair) {
            std::fs::create_dir_all(dir).map_err(|e| log.error(e))?;
        }
        let len = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(log.error(e)),
        };
        let records = len / RECORD as u64;
        let keep = if records == 0 || state.verified_root.is_empty() {
            0
        } else {
            log.count = records;
            log.first = log.read(0)?.epoch;
            let last = log.first.saturating_add(records - 1);
            if log.first > state.verified_epoch || last < state.verified_epoch {
                0
            } else {
                state.verified_epoch - log.first + 1
            }
        };
        log.count = keep;
        if repair && keep * RECORD as u64 != len {
            log.truncate(keep)?;
        }
        Ok(log)
    }

    fn error(&self, e: std::io::Error) -> Error {
        Error::Store(format!("audit roots {}: {e}", self.path.display()))
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn truncate(&mut self, records: u64) -> Result<(), Error> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(|e| self.error(e))?;
        file.set_len(records * RECORD as u64)
            .map_err(|e| self.error(e))?;
        self.count = records;
        Ok(())
    }

    /// Appends the root of the epoch after the last one (or the first).
    fn append(&mut self, root: &SignedRoot) -> Result<(), Error> {
        if !self.is_empty() && root.epoch != self.first + self.count {
            return Err(Error::Store(format!(
                "audit roots {}: version {} does not follow version {}",
                self.path.display(),
                root.epoch,
                self.first + self.count - 1
            )));
        }
        let mut record = Vec::with_capacity(RECORD);
        record.extend_from_slice(&root.epoch.to_be_bytes());
        record.extend_from_slice(&root.root);
        record.extend_from_slice(&root.signature);
        if record.len() != RECORD {
            return Err(Error::Protocol(format!(
                "a signed root of version {} is of the wrong length",
                root.epoch
            )));
        }
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| self.error(e))?;
        file.write_all(&record).map_err(|e| self.error(e))?;
        if self.is_empty() {
            self.first = root.epoch;
        }
        self.count += 1;
        Ok(())
    }

    /// The root of `epoch`, if kept.
    fn get(&self, epoch: u64) -> Result<Option<SignedRoot>, Error> {
        if self.is_empty() || epoch < self.first || epoch - self.first >= self.count {
            return Ok(None);
        }
        self.read(epoch - self.first).map(Some)
    }

    fn read(&self, index: u64) -> Result<SignedRoot, Error> {
        let mut file = File::open(&self.path).map_err(|e| self.error(e))?;
        file.seek(SeekFrom::Start(index * RECORD as u64))
            .map_err(|e| self.error(e))?;
        let mut record = [0; RECORD];
        file.read_exact(&mut record).map_err(|e| self.error(e))?;
        let (epoch, rest) = record.split_at(8);
        let (root, signature) = rest.split_at(32);
        Ok(SignedRoot {
            epoch: u64::from_be_bytes(epoch.try_into().unwrap_or_default()),
            root: root.to_vec(),
            signature: signature.to_vec(),
        })
    }
}

/// The default state file for a server: in the auditor's data directory, named after the URL.
pub fn default_state_file(base: &Path, server: &str) -> PathBuf {
    let name: String = server
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    base.join(format!("audit-{name}.json"))
}

fn read_state(path: &Path) -> Result<Option<AuditState>, Error> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Store(format!(
                "the audit state {} is damaged: {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Store(format!("cannot read {}: {e}", path.display()))),
    }
}

fn write_state(path: &Path, state: &AuditState) -> Result<(), Error> {
    let store_error =
        |e: std::io::Error| Error::Store(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(store_error)?;
    }
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec_pretty(state).map_err(|e| Error::Store(e.to_string()))?;
    std::fs::write(&tmp, json).map_err(store_error)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(store_error)?;
    std::fs::rename(&tmp, path).map_err(store_error)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn root(epoch: u64) -> SignedRoot {
        SignedRoot {
            epoch,
            root: vec![epoch as u8; 32],
            signature: vec![!(epoch as u8); 64],
        }
    }

    fn state(verified_epoch: u64) -> AuditState {
        AuditState {
            server: "http://s".into(),
            signing_key: vec![0; 32],
            verified_epoch,
            verified_root: vec![verified_epoch as u8; 32],
        }
    }

    /// The log keeps what the state covers: roots written past it (a crash between the two
    /// writes) are cut by the auditor and left out by readers, a partial record is cut, and a
    /// log that does not reach the state's epoch (or a `--from` restart) starts again.
    #[test]
    fn the_root_log_keeps_exactly_what_the_state_covers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.roots");
        let mut log = RootLog::open(&path, &state(0), true).unwrap();
        for e in 3..=6 {
            log.append(&root(e)).unwrap();
        }
        assert!(log.append(&root(8)).is_err(), "a gap is refused");
        // The state says 5: a reader leaves 6 out, the auditor cuts it.
        let read = RootLog::open(&path, &state(5), false).unwrap();
        assert_eq!(read.get(5).unwrap(), Some(root(5)));
        assert_eq!(read.get(6).unwrap(), None);
        assert_eq!(read.get(2).unwrap(), None);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * RECORD as u64);
        let mut log = RootLog::open(&path, &state(5), true).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * RECORD as u64);
        log.append(&root(6)).unwrap();
        assert_eq!(log.get(6).unwrap(), Some(root(6)));
        // A torn last record is cut.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 10);
        std::fs::write(&path, &bytes).unwrap();
        let log = RootLog::open(&path, &state(5), true).unwrap();
        assert_eq!(log.get(5).unwrap(), Some(root(5)));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * RECORD as u64);
        // A state beyond the log, or before its start: it starts again.
        for elsewhere in [state(9), state(1)] {
            let mut log = RootLog::open(&path, &state(5), true).unwrap();
            if log.is_empty() {
                for e in 3..=5 {
                    log.append(&root(e)).unwrap();
                }
            }
            assert_eq!(log.get(5).unwrap(), Some(root(5)));
            let log = RootLog::open(&path, &elsewhere, true).unwrap();
            assert!(log.is_empty());
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
