//! The profile: one SQLite database (WAL) per device, holding the MLS state and the
//! application state, so that one transaction covers both.
//!
//! openmls keeps its state in a key-value [`MemoryStorage`]; [`MlsState`] remembers what was last
//! committed and, at the end of each operation, writes exactly the entries that changed (sealed)
//! in the same transaction as the history and cursors. If the transaction fails, the in-memory
//! state is put back to what was committed. A crash therefore never leaves MLS state and
//! application state out of step.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;
use crate::vault::StoreKey;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS mls (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conversations (
    group_id BLOB PRIMARY KEY,
    cursor   INTEGER NOT NULL,
    info     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    id       INTEGER PRIMARY KEY,
    group_id BLOB NOT NULL,
    seq      INTEGER,
    msg_id   TEXT,
    item     BLOB NOT NULL,
    UNIQUE (group_id, msg_id)
);
CREATE INDEX IF NOT EXISTS history_group ON history(group_id, id);
CREATE TABLE IF NOT EXISTS sent (group_id BLOB NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (group_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending_commits (group_id BLOB PRIMARY KEY, payload BLOB NOT NULL);
-- The Welcome that goes with a pending commit that adds members, to post both again when the
-- first post's outcome is unknown.
CREATE TABLE IF NOT EXISTS pending_welcomes (group_id BLOB PRIMARY KEY, welcome BLOB NOT NULL);
-- Key directory roots this device verified (public data), to compare with what peers carry.
CREATE TABLE IF NOT EXISTS directory_roots (epoch INTEGER PRIMARY KEY, root BLOB NOT NULL);
-- Key packages this device used to add someone (their hash references): a server that hands
-- one out again is caught. Last-resort key packages are meant to be reused and are not kept.
CREATE TABLE IF NOT EXISTS used_key_packages (ref BLOB PRIMARY KEY) WITHOUT ROWID;
PRAGMA user_version = 2;
"#;

/// Encrypts values for the store.
pub struct Sealer {
    key: StoreKey,
    crypto: RustCrypto,
}

impl Sealer {
    /// The raw store key, for tests that search logs and traffic for it.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn expose_key(&self) -> &[u8] {
        self.key.expose()
    }

    /// Seals `plaintext` under `label`.
    pub fn seal(&self, label: &str, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        self.key.seal(&self.crypto, label.as_bytes(), plaintext)
    }
    /// Opens a sealed value.
    pub fn open(&self, label: &str, sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
        self.key.open(&self.crypto, label.as_bytes(), sealed)
    }
}

/// The openmls provider: pure-Rust crypto and in-memory storage.
#[derive(Default)]
pub struct Provider {
    crypto: RustCrypto,
    storage: MemoryStorage,
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MemoryStorage;
    fn storage(&self) -> &MemoryStorage {
        &self.storage
    }
    fn crypto(&self) -> &RustCrypto {
        &self.crypto
    }
    fn rand(&self) -> &RustCrypto {
        &self.crypto
    }
}

type Changes = (Vec<(Vec<u8>, Vec<u8>)>, Vec<Vec<u8>>);

/// MLS state with a record of what is committed.
pub struct MlsState {
    /// The live provider.
    pub provider: Provider,
    committed: HashMap<Vec<u8>, Vec<u8>>,
}

impl MlsState {
    fn load(conn: &Connection, sealer: &Sealer) -> Result<Self, Error> {
        let mut map = HashMap::new();
        let mut stmt = conn.prepare("SELECT key, value FROM mls")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        for row in rows {
            let (k, v) = row?;
            map.insert(k, sealer.open("mls", &v)?.to_vec());
        }
        let provider = Provider {
            crypto: RustCrypto::default(),
            storage: MemoryStorage {
                values: std::sync::RwLock::new(map.clone()),
            },
        };
        Ok(Self {
            provider,
            committed: map,
        })
    }

    fn changes(&self) -> Result<Changes, Error> {
        let live = self
            .provider
            .storage
            .values
            .read()
            .map_err(|_| Error::Store("MLS state lock poisoned".into()))?;
        let upserts = live
            .iter()
            .filter(|(k, v)| self.committed.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let deletes = self
            .committed
            .keys()
            .filter(|k| !live.contains_key(*k))
            .cloned()
            .collect();
        Ok((upserts, deletes))
    }

    fn write(&self, tx: &Connection, sealer: &Sealer) -> Result<Changes, Error> {
        let changes = self.changes()?;
        let mut up = tx.prepare_cached("INSERT INTO mls (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?;
        for (k, v) in &changes.0 {
            up.execute(params![k, sealer.seal("mls", v)?])?;
        }
        let mut del = tx.prepare_cached("DELETE FROM mls WHERE key = ?1")?;
        for k in &changes.1 {
            del.execute([k])?;
        }
        Ok(changes)
    }

    fn mark_committed(&mut self, (upserts, deletes): Changes) {
        for (k, v) in upserts {
            self.committed.insert(k, v);
        }
        for k in deletes {
            self.committed.remove(&k);
        }
    }

    fn rollback(&mut self) {
        if let Ok(mut live) = self.provider.storage.values.write() {
            *live = self.committed.clone();
        }
    }
}

/// An open profile: the database, its lock and its key.
pub struct Profile {
    conn: Connection,
    _lock: File,
    /// Sealing of values.
    pub sealer: Sealer,
    /// MLS state.
    pub mls: MlsState,
    /// The committed MLS state when the current batch began.
    batch_snapshot: Option<HashMap<Vec<u8>, Vec<u8>>>,
}

impl Profile {
    /// Opens the profile in `home`, creating it if `create`. Fails with `ProfileLocked` if another
    /// process has it open.
    pub fn open(home: &Path, create: bool, passphrase: Option<&str>) -> Result<Self, Error> {
        let db_path = home.join("profile.db");
        let key_path = home.join("store.key");
        if !create && !db_path.exists() {
            return Err(Error::NotRegistered);
        }
        std::fs::create_dir_all(home)
            .map_err(|e| Error::Store(format!("cannot create {}: {e}", home.display())))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(home.join("profile.lock"))
            .map_err(|e| Error::Store(format!("cannot open the profile lock: {e}")))?;
        fs2::FileExt::try_lock_exclusive(&lock).map_err(|_| Error::ProfileLocked)?;
        let crypto = RustCrypto::default();
        let key = if key_path.exists() {
            StoreKey::load(&crypto, &key_path, passphrase)?
        } else if create {
            StoreKey::create(&crypto, &key_path, passphrase)?
        } else {
            return Err(Error::Store(format!("{} is missing", key_path.display())));
        };
        let sealer = Sealer { key, crypto };
        let damaged = |e: rusqlite::Error| {
            Error::Store(format!(
                "{} is damaged or not a Sealpost profile ({e})",
                db_path.display()
            ))
        };
        let conn = Connection::open(&db_path).map_err(damaged)?;
        conn.busy_timeout(std::time::Duration::from_secs(2))
            .map_err(damaged)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
            .map_err(damaged)?;
        conn.execute_batch(SCHEMA).map_err(damaged)?;
        let mls = MlsState::load(&conn, &sealer)?;
        Ok(Self {
            conn,
            _lock: lock,
            sealer,
            mls,
            batch_snapshot: None,
        })
    }

    /// Discards MLS changes not yet committed.
    pub fn rollback_mls(&mut self) {
        self.mls.rollback();
    }

    /// The connection, for reads.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Runs `f` in one transaction together with the MLS changes it made. On error nothing is
    /// written and the MLS state is rolled back. Inside a batch (see [`begin_batch`]) the change
    /// becomes durable when the batch commits.
    ///
    /// [`begin_batch`]: Self::begin_batch
    pub fn atomically<T>(
        &mut self,
        f: impl FnOnce(&Connection, &Sealer, &crate::store::Provider) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let result = (|| {
            let sp = self.conn.savepoint()?;
            let value = f(&sp, &self.sealer, &self.mls.provider)?;
            let changes = self.mls.write(&sp, &self.sealer)?;
            sp.commit()?;
            Ok((value, changes))
        })();
        match result {
            Ok((value, changes)) => {
                self.mls.mark_committed(changes);
                Ok(value)
            }
            Err(e) => {
                self.mls.rollback();
                Err(e)
            }
        }
    }

    /// Starts a batch: the `atomically` calls that follow commit together, with one fsync, at
    /// [`commit_batch`](Self::commit_batch).
    pub fn begin_batch(&mut self) -> Result<(), Error> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        self.batch_snapshot = Some(self.mls.committed.clone());
        Ok(())
    }

    /// Commits the batch. On failure everything in it is undone (see [`abort_batch`]).
    ///
    /// [`abort_batch`]: Self::abort_batch
    pub fn commit_batch(&mut self) -> Result<(), Error> {
        match self.conn.execute_batch("COMMIT") {
            Ok(()) => {
                self.batch_snapshot = None;
                Ok(())
            }
            Err(e) => {
                self.abort_batch();
                Err(e.into())
            }
        }
    }

    /// Undoes the batch, in the database and in the MLS state.
    pub fn abort_batch(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
        if let Some(snapshot) = self.batch_snapshot.take() {
            self.mls.committed = snapshot;
        }
        self.mls.rollback();
    }

    /// Reads a sealed meta value.
    pub fn meta(&self, key: &str) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, Error> {
        let v: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?;
        v.map(|v| self.sealer.open(&format!("meta:{key}"), &v))
            .transpose()
    }
}

/// Writes a sealed meta value.
pub fn put_meta(tx: &Connection, sealer: &Sealer, key: &str, value: &[u8]) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, sealer.seal(&format!("meta:{key}"), value)?],
    )?;
    Ok(())
}
