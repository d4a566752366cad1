//! The key directory: an akd tree mapping each username to its account key and device set.
//!
//! Changes (a new account, a device added or removed) are queued in the store in the same
//! transaction as the change itself, and published in batches: one akd epoch per round, at most
//! one round per `directory_interval_ms`. Each epoch's root hash is signed with the server's
//! directory key; clients pin its public half when they register, and refuse proofs for roots it
//! did not sign or for epochs older than one they have already seen.
//!
//! The server is not trusted to run this honestly: clients verify every proof, each device checks
//! its own account's history, peers compare roots, and auditors check that epochs only append.

pub mod akd_store;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use akd::append_only_zks::AzksParallelismConfig;
use akd::ecvrf::{VRFKeyStorage, VrfError};
use akd::storage::{Database as _, StorageManager};
use akd::{AkdValue, EpochHash, HistoryParams};
use async_trait::async_trait;
use ed25519_dalek::{Signer as _, SigningKey};
use openmls_traits::random::OpenMlsRand;
use sealpost_proto::Username;
use sealpost_proto::directory::{
    AuditResponse, BatchLookupResponse, DirectoryConfig, DirectoryDevice, DirectoryEntry,
    DirectoryKeys, HistoryResponse, LookupResponse, NamedProof, SignedRoot, directory_label,
    directory_root_message, encode_audit_proof, encode_history_proof, encode_lookup_proof,
};
use tokio::sync::{Mutex, Notify, watch};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::storage::{RootRecord, Store, StoreError, UserRecord};
use akd_store::AkdStore;

/// What can go wrong in the directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// The label has no entry (or the epoch does not exist yet).
    #[error("not in the key directory")]
    NotFound,
    /// The server's directory key file is unusable.
    #[error("directory key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// akd or the store failed.
    #[error("key directory failure: {0}")]
    Backend(String),
}

impl From<StoreError> for DirectoryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound,
            other => Self::Backend(other.to_string()),
        }
    }
}

fn akd_error(e: akd::errors::AkdError) -> DirectoryError {
    use akd::errors::{AkdError, StorageError};
    match e {
        AkdError::Storage(StorageError::NotFound(_)) => DirectoryError::NotFound,
        other => DirectoryError::Backend(other.to_string()),
    }
}

/// The VRF's private key, held in memory for akd.
#[derive(Clone)]
struct VrfKey(Arc<Zeroizing<[u8; 32]>>);

#[async_trait]
impl VRFKeyStorage for VrfKey {
    async fn retrieve(&self) -> Result<Vec<u8>, VrfError> {
        Ok(self.0.to_vec())
    }
}

/// How long a node that does not publish waits for the publisher to take a change.
pub const FOLLOWER_WAIT: Duration = Duration::from_secs(10);

type Akd = akd::Directory<DirectoryConfig, AkdStore, VrfKey>;

/// The server's side of the key directory.
///
/// Several server nodes may share one store. Exactly one of them publishes (the store says which:
/// [`Store::directory_lead`]); the others serve proofs from the same tree, and drop their cache
/// of tree nodes whenever the store holds a newer epoch than the one they cached.
pub struct KeyDirectory {
    akd: Akd,
    manager: StorageManager<AkdStore>,
    /// Whether this node published last time it tried (its cache is then authoritative).
    leading: AtomicBool,
    db: AkdStore,
    store: Arc<dyn Store>,
    signing: SigningKey,
    keys: DirectoryKeys,
    /// Rounds begun and rounds finished: a change is published once a round that began after
    /// it has finished.
    begun: AtomicU64,
    finished: watch::Sender<u64>,
    wake: Notify,
    /// How a node that does not publish wakes the one that does (through NATS), when set.
    wake_publisher: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    publishing: Mutex<()>,
    running: AtomicBool,
    /// Lookup proofs made at the latest epoch, by user: the same proof answers every device
    /// that asks until the next epoch (a thousand devices joining one group each ask for the
    /// same thousand members).
    proofs: std::sync::Mutex<ProofCache>,
    /// Held while proofs missing from the cache are made: devices asking at once for the same
    /// users wait for the first one's proofs instead of each making them again.
    making_proofs: Mutex<()>,
}

/// Lookup proofs of one epoch.
#[derive(Default)]
struct ProofCache {
    epoch: Option<EpochHash>,
    by_user: std::collections::HashMap<Username, Vec<u8>>,
}

/// Most proofs kept (about 3 KB each); past it, the cache starts again.
const MAX_CACHED_PROOFS: usize = 50_000;

impl std::fmt::Debug for KeyDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyDirectory").finish_non_exhaustive()
    }
}

/// Reads the directory's two private keys (signing, VRF) from `path`, creating them on first use.
fn load_or_create_keys(path: &Path) -> Result<Zeroizing<[u8; 64]>, DirectoryError> {
    let key_error = |reason: String| DirectoryError::KeyFile {
        path: path.to_owned(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let mut keys = Zeroizing::new([0u8; 64]);
            if bytes.len() != 64 {
                return Err(key_error(format!(
                    "expected 64 bytes, found {}; restore it from a backup (clients pinned its public key)",
                    bytes.len()
                )));
            }
            keys.copy_from_slice(&bytes);
            Ok(keys)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let random = openmls_rust_crypto::RustCrypto::default()
                .random_vec(64)
                .map_err(|_| key_error("no randomness".into()))?;
            let random = Zeroizing::new(random);
            let mut keys = Zeroizing::new([0u8; 64]);
            keys.copy_from_slice(&random);
            match create_private(path, keys.as_slice()) {
                Ok(()) => Ok(keys),
                // Another node sharing the data directory created it first: use that one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create_keys(path)
                }
                Err(e) => Err(key_error(e.to_string())),
            }
        }
        Err(e) => Err(key_error(e.to_string())),
    }
}

/// Creates a private file atomically (temporary file, fsync, link into place), readable by the
/// owner only; `AlreadyExists` if it is there already (never replaced).
fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    // A name of its own, so that two servers creating the file at once do not share it.
    let unique = openmls_rust_crypto::RustCrypto::default()
        .random_vec(8)
        .map_err(|_| std::io::Error::other("no randomness"))?;
    let tmp = path.with_extension(format!("tmp-{}", hex::encode(unique)));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    linked?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The directory value for an account: its key and every device with its certificate.
pub fn entry_of(user: &UserRecord) -> DirectoryEntry {
    DirectoryEntry {
        account_key: user.account_key.clone().into(),
        devices: user
            .devices
            .iter()
            .map(|d| DirectoryDevice {
                device_id: *d.device_id.as_bytes(),
                device_key: d.device_key.clone().into(),
                certificate: d.certificate.clone().into(),
            })
            .collect(),
    }
}

impl KeyDirectory {
    /// Opens the directory kept in `store`, with its keys in `key_file`.
    pub async fn open(store: Arc<dyn Store>, key_file: &Path) -> Result<Self, DirectoryError> {
        let keys = load_or_create_keys(key_file)?;
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&keys[..32]);
        let signing = SigningKey::from_bytes(&seed);
        seed.copy_from_slice(&keys[32..]);
        let vrf = VrfKey(Arc::new(seed));
        let vrf_public = vrf
            .get_vrf_public_key()
            .await
            .map_err(|e| DirectoryError::Backend(e.to_string()))?;
        let manager = StorageManager::new(
            AkdStore::new(store.clone()),
            Some(Duration::from_secs(3600)),
            Some(256 << 20),
            Some(Duration::from_secs(60)),
        );
        // A node that does not publish waits for the publisher to have created the tree.
        let deadline = tokio::time::Instant::now() + FOLLOWER_WAIT;
        while !store.directory_lead().await? && store.directory_root(None).await?.is_none() {
            if tokio::time::Instant::now() > deadline {
                return Err(DirectoryError::Backend(
                    "another server node holds the key directory but has not created it".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let akd = Akd::new(manager.clone(), vrf, AzksParallelismConfig::default())
            .await
            .map_err(akd_error)?;
        let dir = Self {
            akd,
            manager,
            leading: AtomicBool::new(false),
            db: AkdStore::new(store.clone()),
            store,
            keys: DirectoryKeys {
                signing_key: signing.verifying_key().to_bytes().to_vec(),
                vrf_key: vrf_public.as_bytes().to_vec(),
            },
            signing,
            begun: AtomicU64::new(0),
            finished: watch::Sender::new(0),
            wake: Notify::new(),
            wake_publisher: std::sync::OnceLock::new(),
            publishing: Mutex::new(()),
            running: AtomicBool::new(false),
            proofs: std::sync::Mutex::default(),
            making_proofs: Mutex::new(()),
        };
        // Every node sharing a store must sign with the same key, or clients refuse its roots.
        if let Some(latest) = dir.store.directory_root(None).await?
            && Self::signed(latest).verify(&dir.keys.signing_key).is_err()
        {
            return Err(DirectoryError::KeyFile {
                path: key_file.to_owned(),
                reason: "this key did not sign the directory in the database; every server \
                         node sharing a database needs the same directory.key (copy it from \
                         the first node)"
                    .into(),
            });
        }
        // A crash between an akd publish and the root's record leaves the newest epoch unsigned.
        let EpochHash(epoch, root) = dir.akd.get_epoch_hash().await.map_err(akd_error)?;
        if dir.store.directory_root(Some(epoch)).await?.is_none() {
            dir.store
                .directory_finish_epoch(dir.sign(epoch, root), Vec::new())
                .await?;
        }
        Ok(dir)
    }

    fn sign(&self, epoch: u64, root: [u8; 32]) -> RootRecord {
        RootRecord {
            epoch,
            root,
            signature: self
                .signing
                .sign(&directory_root_message(epoch, &root))
                .to_vec(),
        }
    }

    /// Starts a publishing round on this node soon (at once unless one has just run): another
    /// node queued a change.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sets how this node, when it does not publish, tells the node that does that it queued a
    /// change (once; later calls are ignored).
    pub fn set_wake_publisher(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.wake_publisher.set(Box::new(wake));
    }

    /// The public keys clients pin.
    pub fn keys(&self) -> &DirectoryKeys {
        &self.keys
    }

    /// Publishes whatever is pending, one round at a time (at most one per `interval`), until
    /// `shutdown`; then one last round, so that nobody waits for a publisher that has stopped.
    /// A round starts when this node is woken (its own changes, or another node's through
    /// [`KeyDirectory::wake`]), or every `poll` for changes queued by nodes that did not wake it.
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        poll: Duration,
        shutdown: CancellationToken,
    ) {
        self.running.store(true, Ordering::SeqCst);
        // Anything queued before a restart is published at once.
        self.wake.notify_one();
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                // Changes written by another process sharing the store that did not wake this one.
                () = tokio::time::sleep(poll) => {}
                () = shutdown.cancelled() => break,
            }
            if let Err(e) = self.publish_round().await {
                tracing::warn!(error = %e, "directory publish failed; retrying");
            }
            // Batching: changes that arrive meanwhile wait for the next round.
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = shutdown.cancelled() => break,
            }
        }
        self.running.store(false, Ordering::SeqCst);
        if let Err(e) = self.publish_round().await {
            tracing::warn!(error = %e, "directory publish at shutdown failed");
        }
    }

    /// Publishes every pending change as one epoch (none if nothing changed), if this node is
    /// the one that publishes.
    pub async fn publish_round(&self) -> Result<(), DirectoryError> {
        let _one_at_a_time = self.publishing.lock().await;
        let round = self.begun.fetch_add(1, Ordering::SeqCst) + 1;
        let result = match self.store.directory_lead().await {
            Ok(true) => {
                if !self.leading.swap(true, Ordering::SeqCst) {
                    // Another node may have published while this one did not: start afresh.
                    self.manager.flush_cache().await;
                }
                self.publish_pending().await
            }
            Ok(false) => {
                self.leading.store(false, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                self.leading.store(false, Ordering::SeqCst);
                Err(e.into())
            }
        };
        self.finished.send_replace(round);
        result
    }

    /// On a node that does not publish: forgets cached tree nodes once the store holds a newer
    /// epoch than the cached one, so that proofs are of the latest epoch.
    async fn refresh(&self) -> Result<(), DirectoryError> {
        if self.leading.load(Ordering::SeqCst) {
            return Ok(());
        }
        let stored = self
            .store
            .directory_root(None)
            .await?
            .map_or(0, |r| r.epoch);
        let EpochHash(cached, _) = self.akd.get_epoch_hash().await.map_err(akd_error)?;
        if stored > cached {
            self.manager.flush_cache().await;
        }
        Ok(())
    }

    async fn publish_pending(&self) -> Result<(), DirectoryError> {
        let pending = self.store.directory_pending().await?;
        if pending.is_empty() {
            return Ok(());
        }
        let labels: Vec<_> = pending.iter().map(|(u, _)| directory_label(u)).collect();
        let current = self.latest_values(&labels).await?;
        let mut updates = Vec::new();
        for ((user, _), label) in pending.iter().zip(labels) {
            let Some(record) = self.store.user(user).await? else {
                continue;
            };
            let value = entry_of(&record).encode();
            // Re-publishing an unchanged value (after a crash mid-round) would add a version.
            if current.get(&label).is_some_and(|(_, v)| v.0 == value) {
                continue;
            }
            updates.push((label, AkdValue(value)));
        }
        let EpochHash(epoch, root) = if updates.is_empty() {
            self.akd.get_epoch_hash().await.map_err(akd_error)?
        } else {
            let started = std::time::Instant::now();
            let published = self.akd.publish(updates).await.map_err(akd_error)?;
            tracing::debug!(
                epoch = published.0,
                ms = started.elapsed().as_millis() as u64,
                "directory epoch published"
            );
            published
        };
        self.store
            .directory_finish_epoch(self.sign(epoch, root), pending)
            .await?;
        Ok(())
    }

    /// Waits until every change committed before this call is published (publishing it here
    /// if the publisher is not running). On a node that does not publish, waits (at most
    /// [`FOLLOWER_WAIT`]) until the changes queued now have left the queue.
    pub async fn wait_published(&self) {
        if !self.leading.load(Ordering::SeqCst) && self.running.load(Ordering::SeqCst) {
            self.wake.notify_one();
            if let Some(wake_publisher) = self.wake_publisher.get() {
                wake_publisher();
            }
            let Ok(queued) = self.store.directory_pending().await else {
                return;
            };
            let deadline = tokio::time::Instant::now() + FOLLOWER_WAIT;
            while tokio::time::Instant::now() < deadline {
                // This node may have become the publisher meanwhile.
                if self.leading.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(pending) = self.store.directory_pending().await else {
                    return;
                };
                if !queued.iter().any(|q| pending.contains(q)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if !self.leading.load(Ordering::SeqCst) {
                return;
            }
        }
        let needed = self.begun.load(Ordering::SeqCst) + 1;
        if !self.running.load(Ordering::SeqCst) {
            if let Err(e) = self.publish_round().await {
                tracing::warn!(error = %e, "directory publish failed");
            }
            return;
        }
        let mut finished = self.finished.subscribe();
        self.wake.notify_one();
        let _ = finished.wait_for(|done| *done >= needed).await;
    }

    fn signed(record: RootRecord) -> SignedRoot {
        SignedRoot {
            epoch: record.epoch,
            root: record.root.to_vec(),
            signature: record.signature,
        }
    }

    /// The signed root of an epoch, or of the latest one.
    pub async fn root(&self, epoch: Option<u64>) -> Result<SignedRoot, DirectoryError> {
        self.store
            .directory_root(epoch)
            .await?
            .map(Self::signed)
            .ok_or(DirectoryError::NotFound)
    }

    /// The signed root matching a proof's epoch hash.
    async fn root_of(&self, epoch_hash: &EpochHash) -> Result<SignedRoot, DirectoryError> {
        match self.store.directory_root(Some(epoch_hash.0)).await? {
            Some(r) if r.root == epoch_hash.1 => Ok(Self::signed(r)),
            // Published but not yet recorded (a round in progress): sign it now; same bytes.
            _ => Ok(Self::signed(self.sign(epoch_hash.0, epoch_hash.1))),
        }
    }

    /// A lookup proof for a user's latest entry.
    pub async fn lookup(&self, user: &Username) -> Result<LookupResponse, DirectoryError> {
        self.refresh().await?;
        let (proof, epoch_hash) = self
            .akd
            .lookup(directory_label(user))
            .await
            .map_err(akd_error)?;
        Ok(LookupResponse {
            root: self.root_of(&epoch_hash).await?,
            proof: encode_lookup_proof(&proof),
        })
    }

    /// The latest published version and value of each label that has one.
    async fn latest_values(
        &self,
        labels: &[akd::AkdLabel],
    ) -> Result<std::collections::HashMap<akd::AkdLabel, (u64, AkdValue)>, DirectoryError> {
        self.db
            .get_user_state_versions(
                labels,
                akd::storage::types::ValueStateRetrievalFlag::MaxEpoch,
            )
            .await
            .map_err(|e| DirectoryError::Backend(e.to_string()))
    }

    /// Lookup proofs for several users at one epoch; users without an entry are listed apart.
    /// Proofs made at the latest epoch are kept and given again until the next one.
    pub async fn batch_lookup(
        &self,
        users: &[Username],
    ) -> Result<BatchLookupResponse, DirectoryError> {
        self.refresh().await?;
        let labels: Vec<_> = users.iter().map(directory_label).collect();
        let present = self.latest_values(&labels).await?;
        let (found, missing): (Vec<&Username>, Vec<&Username>) = users
            .iter()
            .partition(|u| present.contains_key(&directory_label(u)));
        let cached = |epoch_hash: &EpochHash| -> Result<Vec<Option<Vec<u8>>>, DirectoryError> {
            let cache = self.proofs.lock().map_err(|_| poisoned())?;
            Ok(found
                .iter()
                .map(|u| {
                    (cache.epoch.as_ref() == Some(epoch_hash))
                        .then(|| cache.by_user.get(*u).cloned())
                        .flatten()
                })
                .collect())
        };
        let mut epoch_hash = self.akd.get_epoch_hash().await.map_err(akd_error)?;
        let mut proofs = cached(&epoch_hash)?;
        let _making = if proofs.iter().any(Option::is_none) {
            // Wait for whoever is making proofs now: they may be the ones missing here.
            let making = self.making_proofs.lock().await;
            epoch_hash = self.akd.get_epoch_hash().await.map_err(akd_error)?;
            proofs = cached(&epoch_hash)?;
            Some(making)
        } else {
            None
        };
        let wanted: Vec<_> = found
            .iter()
            .zip(&proofs)
            .filter(|(_, p)| p.is_none())
            .map(|(u, _)| directory_label(u))
            .collect();
        if !wanted.is_empty() {
            let (made, made_at) = self.akd.batch_lookup(&wanted).await.map_err(akd_error)?;
            if made_at != epoch_hash {
                // An epoch was published meanwhile: every proof of the answer comes from it.
                let (all, at) = self
                    .akd
                    .batch_lookup(&found.iter().map(|u| directory_label(u)).collect::<Vec<_>>())
                    .await
                    .map_err(akd_error)?;
                proofs = all.iter().map(|p| Some(encode_lookup_proof(p))).collect();
                epoch_hash = at;
            } else {
                let mut made = made.iter();
                for p in proofs.iter_mut().filter(|p| p.is_none()) {
                    *p = made.next().map(encode_lookup_proof);
                }
            }
            let mut cache = self.proofs.lock().map_err(|_| poisoned())?;
            if cache.epoch.as_ref() != Some(&epoch_hash)
                || cache.by_user.len() + found.len() > MAX_CACHED_PROOFS
            {
                *cache = ProofCache {
                    epoch: Some(epoch_hash.clone()),
                    by_user: std::collections::HashMap::new(),
                };
            }
            for (u, p) in found.iter().zip(&proofs) {
                if let Some(p) = p {
                    cache.by_user.insert((*u).clone(), p.clone());
                }
            }
        }
        Ok(BatchLookupResponse {
            root: self.root_of(&epoch_hash).await?,
            proofs: found
                .into_iter()
                .zip(proofs)
                .filter_map(|(u, proof)| {
                    proof.map(|proof| NamedProof {
                        username: u.clone(),
                        proof,
                    })
                })
                .collect(),
            missing: missing.into_iter().cloned().collect(),
        })
    }

    /// A proof of every version of a user's entry.
    pub async fn history(&self, user: &Username) -> Result<HistoryResponse, DirectoryError> {
        self.refresh().await?;
        let (proof, epoch_hash) = self
            .akd
            .key_history(&directory_label(user), HistoryParams::Complete)
            .await
            .map_err(akd_error)?;
        Ok(HistoryResponse {
            root: self.root_of(&epoch_hash).await?,
            proof: encode_history_proof(&proof),
        })
    }

    /// The append-only proof from epoch `from` to `from + 1`.
    pub async fn audit(&self, from: u64) -> Result<AuditResponse, DirectoryError> {
        let to = from.checked_add(1).ok_or(DirectoryError::NotFound)?;
        self.refresh().await?;
        let (Some(start), Some(end)) = (
            self.store.directory_root(Some(from)).await?,
            self.store.directory_root(Some(to)).await?,
        ) else {
            return Err(DirectoryError::NotFound);
        };
        let proof = self.akd.audit(from, to).await.map_err(akd_error)?;
        Ok(AuditResponse {
            from: Self::signed(start),
            to: Self::signed(end),
            proof: encode_audit_proof(&proof),
        })
    }
}

fn poisoned() -> DirectoryError {
    DirectoryError::Backend("the lookup proof cache was left broken by a panic".into())
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "tests"
    )]

    use super::*;
    use crate::storage::sqlite::SqliteStore;
    use crate::storage::{DeviceRecord, NewAccount};
    use sealpost_proto::DeviceId;
    use sealpost_proto::directory::{
        decode_audit_proof, decode_history_proof, decode_lookup_proof,
    };

    fn account(name: &str, n: u8) -> NewAccount {
        let username = Username::new(name).unwrap();
        NewAccount {
            username: username.clone(),
            account_key: vec![n; 32],
            device: DeviceRecord {
                device_id: DeviceId::from_bytes([n; 16]),
                username,
                device_key: vec![n + 100; 32],
                certificate: vec![0; 64],
            },
            key_packages: Vec::new(),
        }
    }

    async fn open(dir: &Path) -> (Arc<dyn Store>, KeyDirectory) {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("server.db")).unwrap());
        let kd = KeyDirectory::open(store.clone(), &dir.join("directory.key"))
            .await
            .unwrap();
        (store, kd)
    }

    async fn verified_root(kd: &KeyDirectory, epoch: u64) -> [u8; 32] {
        kd.root(Some(epoch))
            .await
            .unwrap()
            .verify(&kd.keys().signing_key)
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn proofs_verify_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let keys = {
            let (store, kd) = open(dir.path()).await;
            store.create_account(account("alice", 1)).await.unwrap();
            store.create_account(account("bob", 2)).await.unwrap();
            kd.publish_round().await.unwrap();
            assert!(store.directory_pending().await.unwrap().is_empty());
            let found = kd.lookup(&Username::new("bob").unwrap()).await.unwrap();
            assert_eq!(found.root.epoch, 1);
            let root = found.root.verify(&kd.keys().signing_key).unwrap();
            let result = akd_core::verify::lookup_verify::<DirectoryConfig>(
                &kd.keys().vrf_key,
                root,
                found.root.epoch,
                directory_label(&Username::new("bob").unwrap()),
                decode_lookup_proof(&found.proof).unwrap(),
            )
            .unwrap();
            let entry = DirectoryEntry::decode(&result.value.0).unwrap();
            assert_eq!(entry.account_key.as_slice(), &[2; 32]);
            assert_eq!(entry.devices.len(), 1);
            // Nothing pending: no new epoch.
            kd.publish_round().await.unwrap();
            assert_eq!(kd.root(None).await.unwrap().epoch, 1);
            kd.keys().clone()
        };
        // Restart: same keys, same directory; a new device makes epoch 2.
        let (store, kd) = open(dir.path()).await;
        assert_eq!(kd.keys(), &keys);
        let bob = Username::new("bob").unwrap();
        store
            .add_device(
                DeviceRecord {
                    device_id: DeviceId::from_bytes([9; 16]),
                    username: bob.clone(),
                    device_key: vec![99; 32],
                    certificate: vec![0; 64],
                },
                Vec::new(),
            )
            .await
            .unwrap();
        kd.publish_round().await.unwrap();
        let history = kd.history(&bob).await.unwrap();
        assert_eq!(history.root.epoch, 2);
        let versions = akd_core::verify::key_history_verify::<DirectoryConfig>(
            &keys.vrf_key,
            verified_root(&kd, 2).await,
            2,
            directory_label(&bob),
            decode_history_proof(&history.proof).unwrap(),
            akd_core::verify::history::HistoryVerificationParams::default(),
        )
        .unwrap();
        let counts: Vec<usize> = versions
            .iter()
            .map(|v| DirectoryEntry::decode(&v.value.0).unwrap().devices.len())
            .collect();
        assert_eq!(counts, vec![2, 1], "newest first");
        // The audit proofs across the restart verify, epoch by epoch.
        for from in 0..2 {
            let audit = kd.audit(from).await.unwrap();
            let start = audit.from.verify(&keys.signing_key).unwrap();
            let end = audit.to.verify(&keys.signing_key).unwrap();
            akd::auditor::audit_verify::<DirectoryConfig>(
                vec![start, end],
                decode_audit_proof(&audit.proof).unwrap(),
            )
            .await
            .unwrap();
        }
        assert!(matches!(kd.audit(2).await, Err(DirectoryError::NotFound)));
        assert!(matches!(
            kd.lookup(&Username::new("nobody").unwrap()).await,
            Err(DirectoryError::NotFound)
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accounts_from_before_the_directory_are_published() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = open(dir.path()).await;
            store.create_account(account("alice", 1)).await.unwrap();
        }
        // Make it look like a database of the previous schema version.
        let conn = rusqlite::Connection::open(dir.path().join("server.db")).unwrap();
        conn.execute_batch("DELETE FROM directory_pending; PRAGMA user_version = 1;")
            .unwrap();
        drop(conn);
        let (_store, kd) = open(dir.path()).await;
        kd.publish_round().await.unwrap();
        kd.lookup(&Username::new("alice").unwrap()).await.unwrap();
    }

    #[tokio::test]
    async fn a_damaged_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("directory.key"), b"short").unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("server.db")).unwrap());
        let err = KeyDirectory::open(store, &dir.path().join("directory.key"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("expected 64 bytes"), "{err}");
    }
}
