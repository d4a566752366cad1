//! The embedded SQLite backend: WAL, one writer thread with group commit, a small pool of
//! readers.
//!
//! Group commit: the writer takes one job, opens a transaction, then takes every job already
//! waiting (up to [`MAX_BATCH`]), runs each inside its own savepoint (so one failing request does
//! not undo the others) and commits once — one fsync for the whole batch
//! (`synchronous=FULL`). Only then does it answer the waiting requests.
//!
//! The hottest jobs (appending a message, acknowledging) refuse, if they refuse, before they
//! write: they run without a savepoint, whose page copies were a tenth of the writer's time. Should
//! one of them fail after writing (an I/O error), the whole batch is rolled back and every job in
//! it is answered with an error: nothing is acknowledged that did not commit.
//!
//! WAL checkpoints run on a thread of their own; the writer only copies the few pages it wrote
//! while one ran, so that the log can start over.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use sealpost_proto::{AckRequest, Delivery, DeliveryKind, DeviceId, GroupId, SyncBatch, Username};
use tokio::sync::{mpsc, oneshot};

mod blobs;

use super::{
    Appended, DeviceRecord, DirectoryValueRow, DirectoryWrite, FetchRequest, GroupRecord,
    HandshakeWrite, KeyPackageRecord, NewAccount, NewGroup, PendingKind, PendingRecord, RootRecord,
    Store, StoreError, UserRecord,
};

/// Most jobs committed in one transaction.
pub const MAX_BATCH: usize = 512;
const READERS: usize = 4;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS accounts (
    username    TEXT PRIMARY KEY,
    account_key BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device_id   BLOB PRIMARY KEY,
    username    TEXT NOT NULL REFERENCES accounts(username),
    device_key  BLOB NOT NULL UNIQUE,
    certificate BLOB NOT NULL,
    inbox_next  INTEGER NOT NULL DEFAULT 1,
    inbox_acked INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS devices_username ON devices(username);
CREATE TABLE IF NOT EXISTS key_packages (
    id          INTEGER PRIMARY KEY,
    device_id   BLOB NOT NULL,
    ciphersuite INTEGER NOT NULL,
    last_resort INTEGER NOT NULL,
    data        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS key_packages_device ON key_packages(device_id, ciphersuite, last_resort, id);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash BLOB PRIMARY KEY,
    device_id  BLOB NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions(expires_at);
CREATE TABLE IF NOT EXISTS groups (
    group_id   BLOB PRIMARY KEY,
    epoch      INTEGER NOT NULL,
    next_seq   INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
-- Kept apart from `groups`: the state is large, and `groups` is updated on every message.
CREATE TABLE IF NOT EXISTS group_states (
    group_id BLOB PRIMARY KEY,
    state    BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS group_log (
    group_id BLOB NOT NULL,
    seq      INTEGER NOT NULL,
    sent_at  INTEGER NOT NULL,
    payload  BLOB NOT NULL,
    PRIMARY KEY (group_id, seq)
) WITHOUT ROWID;
-- Each device's last application message (its payload's SHA-256 and where it landed): the same
-- message posted again, a retry whose answer was lost, is answered from here. A client settles
-- a message before it posts the next, so the last one is the only one it can retry.
CREATE TABLE IF NOT EXISTS last_posts (
    device_id BLOB PRIMARY KEY,
    group_id  BLOB NOT NULL,
    digest    BLOB NOT NULL,
    seq       INTEGER NOT NULL,
    sent_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    group_id  BLOB NOT NULL,
    device_id BLOB NOT NULL,
    from_seq  INTEGER NOT NULL,
    until_seq INTEGER,
    acked     INTEGER NOT NULL,
    PRIMARY KEY (group_id, device_id, from_seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_device ON members(device_id);
CREATE TABLE IF NOT EXISTS inbox (
    device_id BLOB NOT NULL,
    seq       INTEGER NOT NULL,
    group_id  BLOB NOT NULL,
    group_seq INTEGER NOT NULL,
    sent_at   INTEGER NOT NULL,
    payload   BLOB NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
-- A Welcome is stored once, here, for all the devices it adds: their inbox rows hold an empty
-- payload that stands for the Welcome of (group_id, group_seq). The row goes with the last
-- inbox row that refers to it.
CREATE TABLE IF NOT EXISTS welcomes (
    group_id  BLOB NOT NULL,
    group_seq INTEGER NOT NULL,
    payload   BLOB NOT NULL,
    PRIMARY KEY (group_id, group_seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_welcome ON inbox(group_id, group_seq);
-- The key directory (akd): tree nodes and the tree header by akd's binary key, value versions
-- by label and epoch, the signed root of every epoch, and the entries waiting to be published.
CREATE TABLE IF NOT EXISTS directory_nodes (
    key   BLOB PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS directory_values (
    label          BLOB NOT NULL,
    epoch          INTEGER NOT NULL,
    version        INTEGER NOT NULL,
    node_label_len INTEGER NOT NULL,
    node_label_val BLOB NOT NULL,
    value          BLOB NOT NULL,
    PRIMARY KEY (label, epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS directory_roots (
    epoch     INTEGER PRIMARY KEY,
    root      BLOB NOT NULL,
    signature BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS directory_pending (
    username TEXT PRIMARY KEY,
    ticket   INTEGER NOT NULL
);
-- The next ticket is MAX(ticket) + 1: indexed, or every queued change would scan the queue.
CREATE INDEX IF NOT EXISTS directory_pending_ticket ON directory_pending(ticket);
-- Short-lived records every node must see: sign-in challenges, device-link requests.
CREATE TABLE IF NOT EXISTS pending (
    kind       INTEGER NOT NULL,
    key        BLOB NOT NULL,
    value      BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_expiry ON pending(expires_at);
-- Encrypted files, and uploads in progress (their bytes are in files named by id, in the
-- `blobs` directory beside the database); and the devices each must still reach.
CREATE TABLE IF NOT EXISTS blobs (
    id            BLOB PRIMARY KEY,
    group_id      BLOB NOT NULL,
    uploader      BLOB NOT NULL,
    username      TEXT NOT NULL,
    length        INTEGER NOT NULL,
    upload_offset INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    finished_at   INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_username ON blobs(username);
-- Groups whose members set a disappearing-messages timer: their messages and files are deleted
-- that many seconds after the server took them, delivered or not.
CREATE TABLE IF NOT EXISTS group_expiry (
    group_id BLOB PRIMARY KEY,
    seconds  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blob_recipients (
    id        BLOB NOT NULL REFERENCES blobs(id) ON DELETE CASCADE,
    device_id BLOB NOT NULL,
    PRIMARY KEY (id, device_id)
) WITHOUT ROWID;
"#;

/// Deletes the Welcomes no inbox row refers to any more (both backends).
pub(crate) const UNREFERENCED_WELCOMES: &str = "DELETE FROM welcomes WHERE NOT EXISTS \
    (SELECT 1 FROM inbox i WHERE i.group_id = welcomes.group_id AND i.group_seq = welcomes.group_seq)";

/// The bytes of inbox payloads and stored Welcomes (both backends).
pub(crate) const INBOX_BYTES: &str = "SELECT CAST( \
    (SELECT COALESCE(SUM(length(payload)), 0) FROM inbox) + \
    (SELECT COALESCE(SUM(length(payload)), 0) FROM welcomes) AS BIGINT)";

/// The schema version (SQLite's `user_version`; the PostgreSQL backend records the same).
pub(crate) const SCHEMA_VERSION: i32 = 6;

type Completion = Box<dyn FnOnce(bool) + Send>;
/// A job runs on the writer's connection inside the open transaction; it sets the flag when it
/// failed after writing without a savepoint, so the transaction can only be rolled back.
type Job = Box<dyn FnOnce(&Connection, &mut bool) -> Completion + Send>;

/// Commits between WAL checkpoints: a commit rewrites from a few pages (one message) to a few
/// hundred (a full batch), so this keeps the WAL within some megabytes under load.
const CHECKPOINT_EVERY: u32 = 32;

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    writer: mpsc::Sender<Job>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
    /// Where the files' bytes are.
    blob_dir: PathBuf,
    /// Uploads being appended to right now (at most one append each).
    appending: Arc<Mutex<std::collections::HashSet<super::BlobId>>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn open(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags).map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(backend)?;
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .map_err(backend)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and starts the writer thread. The thread
    /// ends when every clone of the store is dropped.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = open(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(backend)?;
        if version > i64::from(SCHEMA_VERSION) {
            return Err(StoreError::Backend(format!(
                "the database has schema version {version}, newer than this server's {SCHEMA_VERSION}: upgrade the server"
            )));
        }
        conn.execute_batch(SCHEMA).map_err(backend)?;
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))
            .map_err(backend)?;
        if version == 1 {
            // Accounts from before the key directory: publish them all in the first epoch.
            conn.execute(
                "INSERT OR IGNORE INTO directory_pending (username, ticket) SELECT username, rowid FROM accounts",
                [],
            )
            .map_err(backend)?;
        }
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?);
        }
        conn.execute_batch("PRAGMA wal_autocheckpoint=0;")
            .map_err(backend)?;
        let checkpointer = open(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        let backfilled = Arc::new(AtomicBool::new(false));
        let checkpoints = Checkpoints {
            wake,
            backfilled: backfilled.clone(),
        };
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, woken, backfilled))
            .map_err(backend)?;
        let (tx, rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, checkpoints))
            .map_err(backend)?;
        let blob_dir = path.parent().unwrap_or(Path::new(".")).join("blobs");
        std::fs::create_dir_all(&blob_dir).map_err(backend)?;
        Ok(Self {
            writer: tx,
            readers: Arc::new(Mutex::new(readers)),
            path: path.to_owned(),
            blob_dir,
            appending: Arc::default(),
        })
    }

    /// Runs `f` in the writer's next transaction, inside a savepoint of its own; returns once
    /// it is durable.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.submit(move |conn, _| in_savepoint(conn, f)).await
    }

    /// Like [`write`](Self::write), without the savepoint: for jobs whose refusals all come
    /// before their first write. A failure after a write rolls back the whole batch.
    async fn write_unguarded<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.submit(move |conn, poisoned| {
            let before = conn.total_changes();
            let result = f(conn);
            if result.is_err() && conn.total_changes() != before {
                *poisoned = true;
            }
            result
        })
        .await
    }

    async fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &mut bool) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn, poisoned| {
            let result = f(conn, poisoned);
            Box::new(move |committed| {
                let result = if committed {
                    result
                } else {
                    result.and(Err(StoreError::Backend("commit failed".into())))
                };
                let _ = tx.send(result);
            })
        });
        self.writer
            .send(job)
            .await
            .map_err(|_| StoreError::Backend("the writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the writer has stopped".into()))?
    }

    /// Runs `f` on a reader connection in the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().map_err(backend)?.pop();
            let conn = match pooled {
                Some(c) => c,
                None => open(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?,
            };
            let result = f(&conn);
            if let Ok(mut pool) = readers.lock()
                && pool.len() < READERS
            {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(backend)?
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // Cached statements: these run for every request, and parsing them showed in profiles.
    let run = |sql: &str| -> Result<(), StoreError> {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(backend)
    };
    run("SAVEPOINT job")?;
    match f(conn) {
        Ok(v) => {
            run("RELEASE job")?;
            Ok(v)
        }
        Err(e) => {
            run("ROLLBACK TO job")?;
            run("RELEASE job")?;
            Err(e)
        }
    }
}

fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<Job>, checkpoints: Checkpoints) {
    let mut since_checkpoint = 0u32;
    while let Some(first) = rx.blocking_recv() {
        let mut poisoned = false;
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::warn!(error = %e, "could not begin a transaction");
            first(&conn, &mut poisoned)(false);
            continue;
        }
        let mut completions = vec![first(&conn, &mut poisoned)];
        while completions.len() < MAX_BATCH && !poisoned {
            match rx.try_recv() {
                Ok(job) => completions.push(job(&conn, &mut poisoned)),
                Err(_) => break,
            }
        }
        let committed = if poisoned {
            tracing::warn!("a write failed half-way: the batch is rolled back");
            let _ = conn.execute_batch("ROLLBACK");
            false
        } else {
            match conn.execute_batch("COMMIT") {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "commit failed");
                    let _ = conn.execute_batch("ROLLBACK");
                    false
                }
            }
        };
        for done in completions {
            done(committed);
        }
        // The checkpointer copies the bulk of the WAL while the writer goes on; the log can
        // only start over once nothing is left to copy, so the writer then copies what it added
        // meanwhile (a few pages), and its next commit writes the WAL from the start again.
        if checkpoints.backfilled.swap(false, Ordering::AcqRel)
            && let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)")
        {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
        since_checkpoint += 1;
        if since_checkpoint >= CHECKPOINT_EVERY && checkpoints.wake.try_send(()).is_ok() {
            since_checkpoint = 0;
        }
    }
}

/// The writer's line to the checkpointer.
struct Checkpoints {
    wake: SyncSender<()>,
    /// Set by the checkpointer after each checkpoint.
    backfilled: Arc<AtomicBool>,
}

/// Copies the WAL back into the database whenever the writer asks, without blocking it.
fn checkpoint_loop(conn: Connection, wake: Receiver<()>, backfilled: Arc<AtomicBool>) {
    while wake.recv().is_ok() {
        match conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
            Ok(()) => backfilled.store(true, Ordering::Release),
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
}

fn device_id(bytes: Vec<u8>) -> Result<DeviceId, StoreError> {
    DeviceId::from_slice(&bytes).map_err(backend)
}

fn group_id(bytes: Vec<u8>) -> Result<GroupId, StoreError> {
    GroupId::from_slice(&bytes).map_err(backend)
}

fn devices_of(conn: &Connection, username: &str) -> Result<Vec<DeviceRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT device_id, device_key, certificate FROM devices WHERE username = ?1 ORDER BY created_at, device_id",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([username], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(backend)?;
    let user = Username::new(username).map_err(backend)?;
    rows.map(|row| {
        let (id, device_key, certificate) = row.map_err(backend)?;
        Ok(DeviceRecord {
            device_id: device_id(id)?,
            username: user.clone(),
            device_key,
            certificate,
        })
    })
    .collect()
}

fn is_member(conn: &Connection, group: &GroupId, device: &DeviceId) -> Result<bool, StoreError> {
    conn.prepare_cached(
        "SELECT 1 FROM members WHERE group_id = ?1 AND device_id = ?2 AND until_seq IS NULL",
    )
    .map_err(backend)?
    .exists(params![group.as_bytes(), device.as_bytes()])
    .map_err(backend)
}

/// Takes the group's next sequence number; also returns its epoch.
fn next_seq(conn: &Connection, group: &GroupId) -> Result<(u64, u64), StoreError> {
    conn.prepare_cached(
        "UPDATE groups SET next_seq = next_seq + 1 WHERE group_id = ?1 RETURNING next_seq - 1, epoch",
    )
    .map_err(backend)?
    .query_row([group.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()
    .map_err(backend)?
    .ok_or(StoreError::NotFound)
}

fn put_state(conn: &Connection, group: &GroupId, state: &[u8]) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO group_states (group_id, state) VALUES (?1, ?2) ON CONFLICT(group_id) DO UPDATE SET state = excluded.state",
    )
    .map_err(backend)?
    .execute(params![group.as_bytes(), state])
    .map_err(backend)?;
    Ok(())
}

fn insert_log(
    conn: &Connection,
    group: &GroupId,
    seq: u64,
    sent_at: u64,
    payload: &[u8],
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO group_log (group_id, seq, sent_at, payload) VALUES (?1, ?2, ?3, ?4)",
    )
    .map_err(backend)?
    .execute(params![group.as_bytes(), seq, sent_at, payload])
    .map_err(backend)?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_account(&self, a: NewAccount) -> Result<(), StoreError> {
        self.write(move |conn| {
            let now = now_ms();
            let taken = conn
                .prepare_cached("SELECT 1 FROM accounts WHERE username = ?1")
                .map_err(backend)?
                .exists([a.username.as_str()])
                .map_err(backend)?
                || conn
                    .prepare_cached("SELECT 1 FROM devices WHERE device_id = ?1 OR device_key = ?2")
                    .map_err(backend)?
                    .exists(params![a.device.device_id.as_bytes(), a.device.device_key])
                    .map_err(backend)?;
            if taken {
                return Err(StoreError::Conflict);
            }
            conn.execute(
                "INSERT INTO accounts (username, account_key, created_at) VALUES (?1, ?2, ?3)",
                params![a.username.as_str(), a.account_key, now],
            )
            .map_err(backend)?;
            conn.execute(
                "INSERT INTO devices (device_id, username, device_key, certificate, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![a.device.device_id.as_bytes(), a.username.as_str(), a.device.device_key, a.device.certificate, now],
            )
            .map_err(backend)?;
            insert_key_packages(conn, &a.device.device_id, &a.key_packages)?;
            queue_directory_update(conn, &a.username)
        })
        .await
    }

    async fn user(&self, username: &Username) -> Result<Option<UserRecord>, StoreError> {
        let username = username.clone();
        self.read(move |conn| {
            let key: Option<Vec<u8>> = conn
                .prepare_cached("SELECT account_key FROM accounts WHERE username = ?1")
                .map_err(backend)?
                .query_row([username.as_str()], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            let Some(account_key) = key else {
                return Ok(None);
            };
            let devices = devices_of(conn, username.as_str())?;
            Ok(Some(UserRecord {
                username,
                account_key,
                devices,
            }))
        })
        .await
    }

    async fn device(&self, device: DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.read(move |conn| {
            let row: Option<(String, Vec<u8>, Vec<u8>)> = conn
                .prepare_cached(
                    "SELECT username, device_key, certificate FROM devices WHERE device_id = ?1",
                )
                .map_err(backend)?
                .query_row([device.as_bytes()], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
                .map_err(backend)?;
            row.map(|(username, device_key, certificate)| {
                Ok(DeviceRecord {
                    device_id: device,
                    username: Username::new(&username).map_err(backend)?,
                    device_key,
                    certificate,
                })
            })
            .transpose()
        })
        .await
    }

    async fn add_key_packages(
        &self,
        device: DeviceId,
        kps: Vec<KeyPackageRecord>,
    ) -> Result<(), StoreError> {
        self.write(move |conn| insert_key_packages(conn, &device, &kps))
            .await
    }

    async fn key_package_stock(&self, device: DeviceId, suite: u16) -> Result<u64, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT COUNT(*) FROM key_packages WHERE device_id = ?1 AND ciphersuite = ?2 AND last_resort = 0",
            )
            .map_err(backend)?
            .query_row(params![device.as_bytes(), suite], |r| r.get(0))
            .map_err(backend)
        })
        .await
    }

    async fn claim_key_packages(
        &self,
        username: &Username,
        suite: u16,
    ) -> Result<Vec<(DeviceId, Vec<u8>)>, StoreError> {
        let username = username.clone();
        self.write(move |conn| {
            let devices = devices_of(conn, username.as_str())?;
            if devices.is_empty() {
                return Err(StoreError::NotFound);
            }
            let mut out = Vec::with_capacity(devices.len());
            for d in devices {
                let row: Option<(i64, i64, Vec<u8>)> = conn
                    .prepare_cached(
                        "SELECT id, last_resort, data FROM key_packages WHERE device_id = ?1 AND ciphersuite = ?2 ORDER BY last_resort, id LIMIT 1",
                    )
                    .map_err(backend)?
                    .query_row(params![d.device_id.as_bytes(), suite], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
                    .map_err(backend)?;
                let Some((id, last_resort, data)) = row else { continue };
                if last_resort == 0 {
                    conn.prepare_cached("DELETE FROM key_packages WHERE id = ?1")
                        .map_err(backend)?
                        .execute([id])
                        .map_err(backend)?;
                }
                out.push((d.device_id, data));
            }
            Ok(out)
        })
        .await
    }

    async fn put_session(
        &self,
        token_hash: [u8; 32],
        device: DeviceId,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM sessions WHERE expires_at < ?1")
                .map_err(backend)?
                .execute([now_ms() / 1000])
                .map_err(backend)?;
            conn.prepare_cached(
                "INSERT INTO sessions (token_hash, device_id, expires_at) VALUES (?1, ?2, ?3)",
            )
            .map_err(backend)?
            .execute(params![token_hash, device.as_bytes(), expires_at])
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn session(&self, token_hash: [u8; 32]) -> Result<Option<(DeviceId, u64)>, StoreError> {
        self.read(move |conn| {
            let row: Option<(Vec<u8>, u64)> = conn
                .prepare_cached("SELECT device_id, expires_at FROM sessions WHERE token_hash = ?1")
                .map_err(backend)?
                .query_row([token_hash], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(backend)?;
            row.map(|(d, e)| Ok((device_id(d)?, e))).transpose()
        })
        .await
    }

    async fn create_group(&self, g: NewGroup) -> Result<(), StoreError> {
        self.write(move |conn| {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO groups (group_id, epoch, next_seq, created_at) VALUES (?1, 0, 1, ?2) ON CONFLICT DO NOTHING",
                )
                .map_err(backend)?
                .execute(params![g.group_id.as_bytes(), now_ms()])
                .map_err(backend)?;
            if inserted == 0 {
                return Err(StoreError::Conflict);
            }
            put_state(conn, &g.group_id, &g.state)?;
            conn.prepare_cached(
                "INSERT INTO members (group_id, device_id, from_seq, until_seq, acked) VALUES (?1, ?2, 1, NULL, 0)",
            )
            .map_err(backend)?
            .execute(params![g.group_id.as_bytes(), g.creator.as_bytes()])
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn group(&self, group: GroupId) -> Result<Option<GroupRecord>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT g.epoch, s.state FROM groups g JOIN group_states s USING (group_id) WHERE g.group_id = ?1",
            )
                .map_err(backend)?
                .query_row([group.as_bytes()], |r| {
                    Ok(GroupRecord {
                        group_id: group,
                        epoch: r.get(0)?,
                        state: r.get(1)?,
                    })
                })
                .optional()
                .map_err(backend)
        })
        .await
    }

    async fn append_message(
        &self,
        group: GroupId,
        sender: DeviceId,
        payload: Vec<u8>,
        digest: [u8; 32],
    ) -> Result<Appended, StoreError> {
        // Refuses (not a member, no such group) before its first write.
        self.write_unguarded(move |conn| {
            let prior: Option<(u64, u64, u64)> = conn
                .prepare_cached(
                    "SELECT l.seq, l.sent_at, g.epoch FROM last_posts l JOIN groups g USING (group_id)
                     WHERE l.device_id = ?1 AND l.group_id = ?2 AND l.digest = ?3",
                )
                .map_err(backend)?
                .query_row(params![sender.as_bytes(), group.as_bytes(), &digest[..]], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
                .map_err(backend)?;
            if let Some((seq, sent_at, epoch)) = prior {
                return Ok(Appended {
                    seq,
                    sent_at,
                    epoch,
                    welcomes: Vec::new(),
                    repeated: true,
                });
            }
            if !is_member(conn, &group, &sender)? {
                return Err(StoreError::NotMember);
            }
            let (seq, epoch) = next_seq(conn, &group)?;
            let sent_at = now_ms();
            insert_log(conn, &group, seq, sent_at, &payload)?;
            conn.prepare_cached(
                "INSERT INTO last_posts (device_id, group_id, digest, seq, sent_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(device_id) DO UPDATE SET group_id = excluded.group_id, digest = excluded.digest,
                 seq = excluded.seq, sent_at = excluded.sent_at",
            )
            .map_err(backend)?
            .execute(params![sender.as_bytes(), group.as_bytes(), &digest[..], seq, sent_at])
            .map_err(backend)?;
            Ok(Appended {
                seq,
                sent_at,
                epoch,
                welcomes: Vec::new(),
                repeated: false,
            })
        })
        .await
    }

    async fn append_handshake(&self, w: HandshakeWrite) -> Result<Appended, StoreError> {
        self.write(move |conn| {
            let epoch: Option<u64> = conn
                .prepare_cached("SELECT epoch FROM groups WHERE group_id = ?1")
                .map_err(backend)?
                .query_row([w.group_id.as_bytes()], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            let current = epoch.ok_or(StoreError::NotFound)?;
            if current != w.epoch {
                return Err(StoreError::EpochConflict { current });
            }
            if !is_member(conn, &w.group_id, &w.sender)? {
                return Err(StoreError::NotMember);
            }
            let (seq, _) = next_seq(conn, &w.group_id)?;
            let sent_at = now_ms();
            insert_log(conn, &w.group_id, seq, sent_at, &w.payload)?;
            conn.prepare_cached("UPDATE groups SET epoch = ?2 WHERE group_id = ?1")
                .map_err(backend)?
                .execute(params![w.group_id.as_bytes(), w.new_epoch])
                .map_err(backend)?;
            put_state(conn, &w.group_id, &w.state)?;
            for d in &w.removed {
                conn.prepare_cached(
                    "UPDATE members SET until_seq = ?3 WHERE group_id = ?1 AND device_id = ?2 AND until_seq IS NULL",
                )
                .map_err(backend)?
                .execute(params![w.group_id.as_bytes(), d.as_bytes(), seq])
                .map_err(backend)?;
            }
            if let Some(welcome) = &w.welcome {
                conn.prepare_cached(
                    "INSERT INTO welcomes (group_id, group_seq, payload) VALUES (?1, ?2, ?3)",
                )
                .map_err(backend)?
                .execute(params![w.group_id.as_bytes(), seq, welcome])
                .map_err(backend)?;
            }
            let mut welcomes = Vec::with_capacity(w.added.len());
            for d in &w.added {
                conn.prepare_cached(
                    "INSERT INTO members (group_id, device_id, from_seq, until_seq, acked) VALUES (?1, ?2, ?3, NULL, ?4)",
                )
                .map_err(backend)?
                .execute(params![w.group_id.as_bytes(), d.as_bytes(), seq + 1, seq])
                .map_err(backend)?;
                if w.welcome.is_some() {
                    let inbox_seq: u64 = conn
                        .prepare_cached(
                            "UPDATE devices SET inbox_next = inbox_next + 1 WHERE device_id = ?1 RETURNING inbox_next - 1",
                        )
                        .map_err(backend)?
                        .query_row([d.as_bytes()], |r| r.get(0))
                        .optional()
                        .map_err(backend)?
                        .ok_or(StoreError::NotFound)?;
                    conn.prepare_cached(
                        "INSERT INTO inbox (device_id, seq, group_id, group_seq, sent_at, payload) VALUES (?1, ?2, ?3, ?4, ?5, X'')",
                    )
                    .map_err(backend)?
                    .execute(params![d.as_bytes(), inbox_seq, w.group_id.as_bytes(), seq, sent_at])
                    .map_err(backend)?;
                    welcomes.push((*d, inbox_seq));
                }
            }
            Ok(Appended { seq, sent_at, epoch: w.new_epoch, welcomes, repeated: false })
        })
        .await
    }

    async fn fetch(&self, device: DeviceId, req: FetchRequest) -> Result<SyncBatch, StoreError> {
        self.read(move |conn| fetch(conn, device, req)).await
    }

    async fn ack(&self, device: DeviceId, ack: AckRequest) -> Result<(), StoreError> {
        // Fails only if the database does.
        self.write_unguarded(move |conn| {
            if let Some(seq) = ack.inbox.map(cursor) {
                conn.prepare_cached("UPDATE devices SET inbox_acked = MAX(inbox_acked, ?2) WHERE device_id = ?1")
                    .map_err(backend)?
                    .execute(params![device.as_bytes(), seq])
                    .map_err(backend)?;
                let shared: Vec<(Vec<u8>, u64)> = conn
                    .prepare_cached(
                        "SELECT group_id, group_seq FROM inbox WHERE device_id = ?1 AND seq <= ?2 AND length(payload) = 0",
                    )
                    .map_err(backend)?
                    .query_map(params![device.as_bytes(), seq], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(backend)?
                    .collect::<Result<_, _>>()
                    .map_err(backend)?;
                conn.prepare_cached("DELETE FROM inbox WHERE device_id = ?1 AND seq <= ?2")
                    .map_err(backend)?
                    .execute(params![device.as_bytes(), seq])
                    .map_err(backend)?;
                for (group, group_seq) in shared {
                    conn.prepare_cached(
                        "DELETE FROM welcomes WHERE group_id = ?1 AND group_seq = ?2 AND NOT EXISTS (SELECT 1 FROM inbox WHERE group_id = ?1 AND group_seq = ?2)",
                    )
                    .map_err(backend)?
                    .execute(params![group, group_seq])
                    .map_err(backend)?;
                }
            }
            for (group, seq) in ack.groups.iter().map(|(g, s)| (g, cursor(*s))) {
                conn.prepare_cached(
                    "UPDATE members SET acked = MAX(acked, MIN(?3, COALESCE(until_seq, ?3))) WHERE group_id = ?1 AND device_id = ?2 AND from_seq <= ?3 + 1",
                )
                .map_err(backend)?
                .execute(params![group.as_bytes(), device.as_bytes(), seq])
                .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn inbox_bytes(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row(INBOX_BYTES, [], |r| r.get::<_, i64>(0))
                .map(|n| n.unsigned_abs())
                .map_err(backend)
        })
        .await
    }

    async fn group_devices(&self, group: GroupId) -> Result<Vec<DeviceId>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT device_id FROM members WHERE group_id = ?1 AND until_seq IS NULL",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([group.as_bytes()], |r| r.get::<_, Vec<u8>>(0))
                .map_err(backend)?;
            rows.map(|r| device_id(r.map_err(backend)?)).collect()
        })
        .await
    }

    async fn add_device(
        &self,
        device: DeviceRecord,
        key_packages: Vec<KeyPackageRecord>,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            let exists = conn
                .prepare_cached("SELECT 1 FROM accounts WHERE username = ?1")
                .map_err(backend)?
                .exists([device.username.as_str()])
                .map_err(backend)?;
            if !exists {
                return Err(StoreError::NotFound);
            }
            let taken = conn
                .prepare_cached("SELECT 1 FROM devices WHERE device_id = ?1 OR device_key = ?2")
                .map_err(backend)?
                .exists(params![device.device_id.as_bytes(), device.device_key])
                .map_err(backend)?;
            if taken {
                return Err(StoreError::Conflict);
            }
            conn.execute(
                "INSERT INTO devices (device_id, username, device_key, certificate, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![device.device_id.as_bytes(), device.username.as_str(), device.device_key, device.certificate, now_ms()],
            )
            .map_err(backend)?;
            insert_key_packages(conn, &device.device_id, &key_packages)?;
            queue_directory_update(conn, &device.username)
        })
        .await
    }

    async fn remove_device(&self, username: &Username, device: DeviceId) -> Result<(), StoreError> {
        let username = username.clone();
        self.write(move |conn| {
            let removed = conn
                .execute(
                    "DELETE FROM devices WHERE device_id = ?1 AND username = ?2",
                    params![device.as_bytes(), username.as_str()],
                )
                .map_err(backend)?;
            if removed == 0 {
                return Err(StoreError::NotFound);
            }
            for table in ["key_packages", "sessions"] {
                conn.execute(
                    &format!("DELETE FROM {table} WHERE device_id = ?1"),
                    [device.as_bytes()],
                )
                .map_err(backend)?;
            }
            queue_directory_update(conn, &username)
        })
        .await
    }

    async fn directory_pending(&self) -> Result<Vec<(Username, u64)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT username, ticket FROM directory_pending ORDER BY ticket")
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))
                .map_err(backend)?;
            rows.map(|row| {
                let (name, ticket) = row.map_err(backend)?;
                Ok((Username::new(&name).map_err(backend)?, ticket))
            })
            .collect()
        })
        .await
    }

    async fn directory_write(&self, write: DirectoryWrite) -> Result<(), StoreError> {
        self.write(move |conn| {
            let mut node = conn
                .prepare_cached("INSERT OR REPLACE INTO directory_nodes (key, value) VALUES (?1, ?2)")
                .map_err(backend)?;
            for (key, value) in &write.nodes {
                node.execute(params![key, value]).map_err(backend)?;
            }
            let mut value = conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO directory_values (label, epoch, version, node_label_len, node_label_val, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(backend)?;
            for v in &write.values {
                value
                    .execute(params![
                        v.label,
                        v.epoch,
                        v.version,
                        v.node_label_len,
                        v.node_label_val.as_slice(),
                        v.value
                    ])
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn directory_nodes(
        &self,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT value FROM directory_nodes WHERE key = ?1")
                .map_err(backend)?;
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                let value: Option<Vec<u8>> = stmt
                    .query_row([&key], |r| r.get(0))
                    .optional()
                    .map_err(backend)?;
                if let Some(value) = value {
                    out.push((key, value));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn directory_values(
        &self,
        labels: Vec<Vec<u8>>,
    ) -> Result<Vec<DirectoryValueRow>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT label, epoch, version, node_label_len, node_label_val, value FROM directory_values WHERE label = ?1 ORDER BY epoch",
                )
                .map_err(backend)?;
            let mut labels = labels;
            labels.sort();
            labels.dedup();
            let mut out = Vec::new();
            for label in labels {
                let rows = stmt.query_map([&label], value_row).map_err(backend)?;
                for row in rows {
                    out.push(row.map_err(backend)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn directory_finish_epoch(
        &self,
        root: RootRecord,
        published: Vec<(Username, u64)>,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO directory_roots (epoch, root, signature) VALUES (?1, ?2, ?3)",
            )
            .map_err(backend)?
            .execute(params![root.epoch, root.root.as_slice(), root.signature])
            .map_err(backend)?;
            let mut clear = conn
                .prepare_cached("DELETE FROM directory_pending WHERE username = ?1 AND ticket = ?2")
                .map_err(backend)?;
            for (user, ticket) in &published {
                clear
                    .execute(params![user.as_str(), ticket])
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn directory_root(&self, epoch: Option<u64>) -> Result<Option<RootRecord>, StoreError> {
        self.read(move |conn| {
            let row = match epoch {
                Some(e) => conn
                    .prepare_cached(
                        "SELECT epoch, root, signature FROM directory_roots WHERE epoch = ?1",
                    )
                    .map_err(backend)?
                    .query_row([cursor(e)], root_row),
                None => conn
                    .prepare_cached(
                        "SELECT epoch, root, signature FROM directory_roots ORDER BY epoch DESC LIMIT 1",
                    )
                    .map_err(backend)?
                    .query_row([], root_row),
            }
            .optional()
            .map_err(backend)?;
            row.map(|(epoch, root, signature)| {
                Ok(RootRecord {
                    epoch,
                    root: <[u8; 32]>::try_from(root.as_slice()).map_err(backend)?,
                    signature,
                })
            })
            .transpose()
        })
        .await
    }

    async fn put_pending(
        &self,
        record: PendingRecord,
        max_of_kind: Option<u64>,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            let now = now_ms() / 1000;
            let kind = record.kind as u8;
            conn.prepare_cached("DELETE FROM pending WHERE kind = ?1 AND key = ?2 AND expires_at < ?3")
                .map_err(backend)?
                .execute(params![kind, record.key, now])
                .map_err(backend)?;
            if let Some(max) = max_of_kind {
                let waiting: u64 = conn
                    .prepare_cached("SELECT COUNT(*) FROM pending WHERE kind = ?1 AND expires_at >= ?2")
                    .map_err(backend)?
                    .query_row(params![kind, now], |r| r.get(0))
                    .map_err(backend)?;
                if waiting >= max {
                    return Err(StoreError::Full);
                }
            }
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO pending (kind, key, value, expires_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                )
                .map_err(backend)?
                .execute(params![kind, record.key, record.value, record.expires_at])
                .map_err(backend)?;
            if inserted == 0 {
                return Err(StoreError::Conflict);
            }
            Ok(())
        })
        .await
    }

    async fn pending(
        &self,
        kind: PendingKind,
        key: Vec<u8>,
        take: bool,
    ) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        let sql = if take {
            "DELETE FROM pending WHERE kind = ?1 AND key = ?2 AND expires_at >= ?3 RETURNING value, expires_at"
        } else {
            "SELECT value, expires_at FROM pending WHERE kind = ?1 AND key = ?2 AND expires_at >= ?3"
        };
        let run = move |conn: &Connection| {
            conn.prepare_cached(sql)
                .map_err(backend)?
                .query_row(params![kind as u8, key, now_ms() / 1000], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .map_err(backend)
        };
        if take {
            self.write(run).await
        } else {
            self.read(run).await
        }
    }

    async fn swap_pending(
        &self,
        kind: PendingKind,
        key: Vec<u8>,
        old: Vec<u8>,
        new: Vec<u8>,
    ) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE pending SET value = ?4 WHERE kind = ?1 AND key = ?2 AND value = ?3 AND expires_at >= ?5",
                )
                .map_err(backend)?
                .execute(params![kind as u8, key, old, new, now_ms() / 1000])
                .map_err(backend)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn set_group_expiry(&self, group: GroupId, seconds: u64) -> Result<(), StoreError> {
        self.write(move |conn| {
            if seconds == 0 {
                conn.prepare_cached("DELETE FROM group_expiry WHERE group_id = ?1")
                    .map_err(backend)?
                    .execute([group.as_bytes()])
                    .map_err(backend)?;
            } else {
                conn.prepare_cached(
                    "INSERT INTO group_expiry (group_id, seconds) VALUES (?1, ?2)
                     ON CONFLICT (group_id) DO UPDATE SET seconds = excluded.seconds",
                )
                .map_err(backend)?
                .execute(params![group.as_bytes(), seconds])
                .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn purge_expiring(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.write(move |conn| {
            let mut n = conn
                .prepare_cached(
                    "DELETE FROM group_log WHERE group_id IN (SELECT group_id FROM group_expiry)
                       AND sent_at < ?1 - (SELECT seconds * 1000 FROM group_expiry e WHERE e.group_id = group_log.group_id)",
                )
                .map_err(backend)?
                .execute([now_ms])
                .map_err(backend)?;
            // Their bytes go at the next purge of files (a file without its record).
            n += conn
                .prepare_cached(
                    "DELETE FROM blobs WHERE group_id IN (SELECT group_id FROM group_expiry)
                       AND COALESCE(finished_at, created_at) < ?1 - (SELECT seconds * 1000 FROM group_expiry e WHERE e.group_id = blobs.group_id)",
                )
                .map_err(backend)?
                .execute([now_ms])
                .map_err(backend)?;
            Ok(n as u64)
        })
        .await
    }

    async fn purge(&self, older_than_ms: u64) -> Result<u64, StoreError> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM pending WHERE expires_at < ?1")
                .map_err(backend)?
                .execute([now_ms() / 1000])
                .map_err(backend)?;
            let mut n = conn
                .execute("DELETE FROM group_log WHERE sent_at < ?1", [older_than_ms])
                .map_err(backend)?;
            n += conn
                .execute("DELETE FROM inbox WHERE sent_at < ?1", [older_than_ms])
                .map_err(backend)?;
            conn.execute(UNREFERENCED_WELCOMES, []).map_err(backend)?;
            // Entries every recipient has acknowledged. A member that has left and acknowledged
            // its removal no longer holds anything back.
            n += conn
                .execute(
                    "DELETE FROM group_log WHERE seq <= (
                        SELECT MIN(acked) FROM members m
                        WHERE m.group_id = group_log.group_id
                          AND (m.until_seq IS NULL OR m.acked < m.until_seq))",
                    [],
                )
                .map_err(backend)?;
            Ok(n as u64)
        })
        .await
    }
}

/// Marks a username's directory entry as changed. The ticket grows with every change, so that a
/// publish that read an older state does not clear a newer one.
fn queue_directory_update(conn: &Connection, username: &Username) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO directory_pending (username, ticket) VALUES (?1, (SELECT COALESCE(MAX(ticket), 0) + 1 FROM directory_pending))
         ON CONFLICT(username) DO UPDATE SET ticket = (SELECT MAX(ticket) + 1 FROM directory_pending)",
    )
    .map_err(backend)?
    .execute([username.as_str()])
    .map_err(backend)?;
    Ok(())
}

fn value_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DirectoryValueRow> {
    let val: Vec<u8> = r.get(4)?;
    let node_label_val = <[u8; 32]>::try_from(val.as_slice()).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Blob, "label".into())
    })?;
    Ok(DirectoryValueRow {
        label: r.get(0)?,
        epoch: r.get(1)?,
        version: r.get(2)?,
        node_label_len: r.get(3)?,
        node_label_val,
        value: r.get(5)?,
    })
}

fn root_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(u64, Vec<u8>, Vec<u8>)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn insert_key_packages(
    conn: &Connection,
    device: &DeviceId,
    kps: &[KeyPackageRecord],
) -> Result<(), StoreError> {
    for kp in kps {
        if kp.last_resort {
            conn.prepare_cached(
                "DELETE FROM key_packages WHERE device_id = ?1 AND ciphersuite = ?2 AND last_resort = 1",
            )
            .map_err(backend)?
            .execute(params![device.as_bytes(), kp.ciphersuite])
            .map_err(backend)?;
        }
        conn.prepare_cached(
            "INSERT INTO key_packages (device_id, ciphersuite, last_resort, data) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(backend)?
        .execute(params![device.as_bytes(), kp.ciphersuite, kp.last_resort, kp.data])
        .map_err(backend)?;
    }
    Ok(())
}

/// SQLite integers are signed 64-bit: cursors from clients are clamped into that range.
fn cursor(c: u64) -> u64 {
    c.min(i64::MAX as u64)
}

fn fetch(conn: &Connection, device: DeviceId, req: FetchRequest) -> Result<SyncBatch, StoreError> {
    let limit = req.limit.max(1) as usize;
    let mut deliveries = Vec::new();
    let mut more = false;

    let inbox_after = match req.inbox_after {
        Some(after) => cursor(after),
        None => conn
            .prepare_cached("SELECT inbox_acked FROM devices WHERE device_id = ?1")
            .map_err(backend)?
            .query_row([device.as_bytes()], |r| r.get(0))
            .optional()
            .map_err(backend)?
            .unwrap_or(0),
    };
    {
        let mut stmt = conn
            .prepare_cached(
                "SELECT i.seq, i.group_id, i.group_seq, i.sent_at, COALESCE(w.payload, i.payload) FROM inbox i
                 LEFT JOIN welcomes w ON length(i.payload) = 0 AND w.group_id = i.group_id AND w.group_seq = i.group_seq
                 WHERE i.device_id = ?1 AND i.seq > ?2 ORDER BY i.seq LIMIT ?3",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(
                params![device.as_bytes(), inbox_after, limit as u64 + 1],
                |r| {
                    Ok((
                        r.get::<_, u64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, u64>(2)?,
                        r.get::<_, u64>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                    ))
                },
            )
            .map_err(backend)?;
        for row in rows {
            let (seq, gid, group_seq, sent_at, payload) = row.map_err(backend)?;
            if deliveries.len() == limit {
                more = true;
                break;
            }
            deliveries.push(Delivery {
                kind: DeliveryKind::Inbox,
                inbox_seq: seq,
                group_id: *group_id(gid)?.as_bytes(),
                group_seq,
                sent_at,
                payload: payload.into(),
            });
        }
    }

    let memberships: Vec<(Vec<u8>, u64, Option<u64>, u64)> = {
        let mut stmt = conn
            .prepare_cached(
                "SELECT group_id, from_seq, until_seq, acked FROM members WHERE device_id = ?1 AND (until_seq IS NULL OR acked < until_seq) ORDER BY group_id, from_seq",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([device.as_bytes()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)?
    };
    let mut log = conn
        .prepare_cached(
            "SELECT seq, sent_at, payload FROM group_log WHERE group_id = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq LIMIT ?4",
        )
        .map_err(backend)?;
    for (gid, from_seq, until_seq, acked) in memberships {
        if more {
            break;
        }
        let group = group_id(gid)?;
        let cursor = req
            .groups
            .iter()
            .find(|(g, _)| *g == group)
            .map_or(acked, |(_, c)| cursor(*c));
        let after = cursor.max(from_seq - 1);
        let until = until_seq.unwrap_or(i64::MAX as u64);
        let room = limit - deliveries.len();
        let rows = log
            .query_map(
                params![group.as_bytes(), after, until, room as u64 + 1],
                |r| {
                    Ok((
                        r.get::<_, u64>(0)?,
                        r.get::<_, u64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                },
            )
            .map_err(backend)?;
        for row in rows {
            let (seq, sent_at, payload) = row.map_err(backend)?;
            if deliveries.len() == limit {
                more = true;
                break;
            }
            deliveries.push(Delivery {
                kind: DeliveryKind::Group,
                inbox_seq: 0,
                group_id: *group.as_bytes(),
                group_seq: seq,
                sent_at,
                payload: payload.into(),
            });
        }
    }
    Ok(SyncBatch {
        deliveries,
        more: u8::from(more),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("server.db")).unwrap();
        super::super::conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn blob_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("server.db")).unwrap();
        super::super::conformance::blobs(&store, &store).await;
        // Every file deleted above is gone from the disk too.
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs")).unwrap().count(),
            0
        );
    }

    /// What a crash can leave behind: bytes written but not recorded (cut off by the next
    /// append), a file whose record was deleted (removed by the next purge).
    #[tokio::test]
    async fn blob_crash_leftovers_are_cleaned_up() {
        use super::super::{BlobStore as _, NewBlob};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("server.db")).unwrap();
        let blob = NewBlob {
            id: [1; 16],
            group: GroupId::from_bytes([2; 16]),
            uploader: DeviceId::from_bytes([3; 16]),
            username: Username::new("alice").unwrap(),
            length: 6,
        };
        store.create_blob(blob, u64::MAX).await.unwrap();
        store
            .append_blob([1; 16], 0, bytes::Bytes::from_static(b"abc"))
            .await
            .unwrap();
        let path = store.blob_path(&[1; 16]);
        std::fs::write(&path, b"abcXXXXX").unwrap();
        store
            .append_blob([1; 16], 3, bytes::Bytes::from_static(b"def"))
            .await
            .unwrap();
        store.finish_blob([1; 16], vec![]).await.unwrap();
        assert_eq!(
            &store.read_blob([1; 16], 0, 100).await.unwrap()[..],
            b"abcdef"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
        let orphan = store.blob_path(&[9; 16]);
        std::fs::write(&orphan, b"left behind").unwrap();
        std::fs::write(dir.path().join("blobs").join("not-a-blob"), b"kept").unwrap();
        assert_eq!(store.purge_blobs(0, 0).await.unwrap(), 0);
        assert!(!orphan.exists());
        assert!(path.exists());
        assert!(dir.path().join("blobs").join("not-a-blob").exists());
    }

    #[tokio::test]
    async fn expiring_groups() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("server.db")).unwrap();
        super::super::conformance::expiring_groups(&store).await;
    }

    #[tokio::test]
    async fn two_handles_compete() {
        let dir = tempfile::tempdir().unwrap();
        let a = SqliteStore::open(&dir.path().join("server.db")).unwrap();
        let b = SqliteStore::open(&dir.path().join("server.db")).unwrap();
        super::super::conformance::competing_nodes(&a, &b, false).await;
    }

    #[tokio::test]
    async fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            super::super::conformance::seed_one_message(&store).await;
        }
        let store = SqliteStore::open(&path).unwrap();
        super::super::conformance::check_seeded_message(&store).await;
    }

    fn count_rows(conn: &Connection, kind: i64) -> Result<i64, StoreError> {
        conn.query_row(
            "SELECT COUNT(*) FROM pending WHERE kind = ?1",
            [kind],
            |r| r.get(0),
        )
        .map_err(backend)
    }

    fn insert_row(conn: &Connection, kind: i64, key: &[u8]) -> Result<(), StoreError> {
        conn.execute(
            "INSERT INTO pending (kind, key, value, expires_at) VALUES (?1, ?2, x'00', 0)",
            params![kind, key],
        )
        .map(|_| ())
        .map_err(backend)
    }

    #[tokio::test]
    async fn an_unguarded_write_failing_after_writing_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("server.db")).unwrap();
        let failed = store
            .write_unguarded(|conn| {
                insert_row(conn, 9, b"half")?;
                Err::<(), _>(StoreError::NotFound)
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(store.read(|c| count_rows(c, 9)).await.unwrap(), 0);

        // Refusing before writing spoils nothing for the jobs beside it.
        let (refused, written) = tokio::join!(
            store.write_unguarded(|_| Err::<(), _>(StoreError::NotMember)),
            store.write_unguarded(|conn| insert_row(conn, 9, b"whole")),
        );
        assert!(matches!(refused, Err(StoreError::NotMember)));
        written.unwrap();
        assert_eq!(store.read(|c| count_rows(c, 9)).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn the_checkpointer_keeps_the_wal_small() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let store = SqliteStore::open(&path).unwrap();
        // One commit each, a page or more of WAL each: 12 MB and more if nothing checkpointed.
        for i in 0u32..3000 {
            store
                .write_unguarded(move |conn| insert_row(conn, 8, &i.to_be_bytes()))
                .await
                .unwrap();
        }
        let wal = std::fs::metadata(dir.path().join("server.db-wal")).unwrap();
        assert!(wal.len() < 4 << 20, "the WAL grew to {} bytes", wal.len());
        assert_eq!(store.read(|c| count_rows(c, 8)).await.unwrap(), 3000);
    }

    #[test]
    fn corrupt_database_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        std::fs::write(&path, b"this is not a database, just some bytes that are long enough to look like a header................................................").unwrap();
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::Backend(_))
        ));
    }
}
