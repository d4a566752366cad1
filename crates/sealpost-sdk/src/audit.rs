//! An auditor of a server's key directory: it checks, one epoch at a time, that every epoch only
//! added to the one before (akd's append-only proofs), that each root is signed by the directory
//! key it pinned on its first run, and that each epoch starts from the root the previous one
//! ended with. It keeps where it stopped in a small state file, so it can run continuously or
//! be started again later; memory stays bounded by one epoch's proof.

use std::path::{Path, PathBuf};

use sealpost_proto::DeviceId;
use sealpost_proto::directory::{DirectoryConfig, decode_audit_proof};
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
