//! The PostgreSQL backend, for deployments where several server nodes share one database.
//!
//! Selected by a `postgres://` database URL. Every node keeps one writer connection and a few
//! reader connections (tokio-postgres pipelines concurrent queries on one connection).
//!
//! Group commit, as on SQLite: the writer takes every job already waiting (up to
//! [`MAX_BATCH`]), opens one transaction, runs the jobs' statements pipelined, and commits once —
//! one WAL flush for the whole batch. Only then does it answer. Jobs keep no savepoints (each
//! would cost a round trip); instead a job obeys one rule: a logical refusal (`Conflict`,
//! `NotMember`, …) is decided before it writes anything, and anything that goes wrong after a
//! write aborts the batch ([`Fail::Abort`] or an SQL error). An aborted batch is rolled back, the
//! job at fault runs again alone (in its own transaction, so it cannot take the others with it),
//! and the innocent jobs run again as a batch.
//!
//! Isolation is READ COMMITTED. The rules that several nodes must agree on are single-row
//! conditional updates, which PostgreSQL serialises on the row lock: a commit is appended only by
//! `UPDATE groups … WHERE epoch = <the epoch it was built on>`, so of two commits for one epoch
//! arriving at two nodes exactly one matches; a key package is claimed with `FOR UPDATE SKIP
//! LOCKED`, so two nodes never hand out the same one; directory tickets come from a sequence.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sealpost_proto::{AckRequest, Delivery, DeliveryKind, DeviceId, GroupId, SyncBatch, Username};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row, Statement};

mod blobs;

use super::{
    Appended, DeviceRecord, DirectoryValueRow, DirectoryWrite, FetchRequest, GroupRecord,
    HandshakeWrite, KeyPackageRecord, NewAccount, NewGroup, PendingKind, PendingRecord, RootRecord,
    Store, StoreError, UserRecord,
};

/// Most jobs committed in one transaction.
pub const MAX_BATCH: usize = 512;
const READERS: usize = 4;
/// How often a batch that keeps failing is tried as a batch before each job runs alone.
const BATCH_TRIES: usize = 3;
/// Advisory locks are per database; ours are keyed by the schema too, so that servers using
/// different schemas of one database do not contend. Taken while migrating, so that nodes
/// starting together do not race.
const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(1936745841, hashtext(current_schema()))";
/// Held by the node that publishes the key directory (on its writer connection).
const PUBLISHER_LOCK: &str = "SELECT pg_try_advisory_lock(1936745842, hashtext(current_schema()))";

/// The schema; kept in step with the SQLite one (same tables, columns and version; a test
/// compares them).
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS accounts (
    username    TEXT PRIMARY KEY,
    account_key BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device_id   BYTEA PRIMARY KEY,
    username    TEXT NOT NULL REFERENCES accounts(username),
    device_key  BYTEA NOT NULL UNIQUE,
    certificate BYTEA NOT NULL,
    inbox_next  BIGINT NOT NULL DEFAULT 1,
    inbox_acked BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS devices_username ON devices(username);
CREATE TABLE IF NOT EXISTS key_packages (
    id          BIGSERIAL PRIMARY KEY,
    device_id   BYTEA NOT NULL,
    ciphersuite INTEGER NOT NULL,
    last_resort BOOLEAN NOT NULL,
    data        BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS key_packages_device ON key_packages(device_id, ciphersuite, last_resort, id);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash BYTEA PRIMARY KEY,
    device_id  BYTEA NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions(expires_at);
CREATE TABLE IF NOT EXISTS groups (
    group_id   BYTEA PRIMARY KEY,
    epoch      BIGINT NOT NULL,
    next_seq   BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS group_states (
    group_id BYTEA PRIMARY KEY,
    state    BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS group_log (
    group_id BYTEA NOT NULL,
    seq      BIGINT NOT NULL,
    sent_at  BIGINT NOT NULL,
    payload  BYTEA NOT NULL,
    PRIMARY KEY (group_id, seq)
);
CREATE TABLE IF NOT EXISTS last_posts (
    device_id BYTEA PRIMARY KEY,
    group_id  BYTEA NOT NULL,
    digest    BYTEA NOT NULL,
    seq       BIGINT NOT NULL,
    sent_at   BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    group_id  BYTEA NOT NULL,
    device_id BYTEA NOT NULL,
    from_seq  BIGINT NOT NULL,
    until_seq BIGINT,
    acked     BIGINT NOT NULL,
    PRIMARY KEY (group_id, device_id, from_seq)
);
CREATE INDEX IF NOT EXISTS members_device ON members(device_id);
CREATE TABLE IF NOT EXISTS inbox (
    device_id BYTEA NOT NULL,
    seq       BIGINT NOT NULL,
    group_id  BYTEA NOT NULL,
    group_seq BIGINT NOT NULL,
    sent_at   BIGINT NOT NULL,
    payload   BYTEA NOT NULL,
    PRIMARY KEY (device_id, seq)
);
-- One Welcome for all the devices it adds (see the SQLite schema).
CREATE TABLE IF NOT EXISTS welcomes (
    group_id  BYTEA NOT NULL,
    group_seq BIGINT NOT NULL,
    payload   BYTEA NOT NULL,
    PRIMARY KEY (group_id, group_seq)
);
CREATE INDEX IF NOT EXISTS inbox_welcome ON inbox(group_id, group_seq);
CREATE TABLE IF NOT EXISTS directory_nodes (
    key   BYTEA PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS directory_values (
    label          BYTEA NOT NULL,
    epoch          BIGINT NOT NULL,
    version        BIGINT NOT NULL,
    node_label_len INTEGER NOT NULL,
    node_label_val BYTEA NOT NULL,
    value          BYTEA NOT NULL,
    PRIMARY KEY (label, epoch)
);
CREATE TABLE IF NOT EXISTS directory_roots (
    epoch     BIGINT PRIMARY KEY,
    root      BYTEA NOT NULL,
    signature BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS directory_pending (
    username TEXT PRIMARY KEY,
    ticket   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS directory_pending_ticket ON directory_pending(ticket);
CREATE SEQUENCE IF NOT EXISTS directory_ticket;
CREATE TABLE IF NOT EXISTS pending (
    kind       INTEGER NOT NULL,
    key        BYTEA NOT NULL,
    value      BYTEA NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS pending_expiry ON pending(expires_at);
-- Encrypted files and uploads in progress, their bytes in chunks (one per append, in order of
-- offset), and the devices each must still reach.
CREATE TABLE IF NOT EXISTS blobs (
    id            BYTEA PRIMARY KEY,
    group_id      BYTEA NOT NULL,
    uploader      BYTEA NOT NULL,
    username      TEXT NOT NULL,
    length        BIGINT NOT NULL,
    upload_offset BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    finished_at   BIGINT
);
CREATE INDEX IF NOT EXISTS blobs_username ON blobs(username);
-- Groups whose members set a disappearing-messages timer: their messages and files are deleted
-- that many seconds after the server took them, delivered or not.
CREATE TABLE IF NOT EXISTS group_expiry (
    group_id BYTEA PRIMARY KEY,
    seconds  BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS blob_recipients (
    id        BYTEA NOT NULL REFERENCES blobs(id) ON DELETE CASCADE,
    device_id BYTEA NOT NULL,
    PRIMARY KEY (id, device_id)
);
CREATE TABLE IF NOT EXISTS blob_chunks (
    id           BYTEA NOT NULL REFERENCES blobs(id) ON DELETE CASCADE,
    chunk_offset BIGINT NOT NULL,
    data         BYTEA NOT NULL,
    PRIMARY KEY (id, chunk_offset)
);
-- Ciphertext does not compress: keep it out of line without trying.
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
"#;

/// The schema version this code writes (the SQLite backend's `user_version` is the same).
pub(crate) const SCHEMA_VERSION: i32 = super::sqlite::SCHEMA_VERSION;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// PostgreSQL integers are signed 64-bit: values from clients are clamped into that range.
fn int(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn uint(v: i64) -> u64 {
    v.max(0) as u64
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// How a job's attempt failed.
enum Fail {
    /// A refusal decided before the job wrote anything: the batch commits, the job answers this.
    Store(StoreError),
    /// A refusal after the job wrote: the batch is rolled back, and the job runs again alone.
    Abort(StoreError),
    /// PostgreSQL refused a statement (the transaction is aborted).
    Sql(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

impl From<Fail> for StoreError {
    fn from(f: Fail) -> Self {
        match f {
            Fail::Store(e) | Fail::Abort(e) => e,
            Fail::Sql(e) => sql_error(e),
        }
    }
}

fn sql_error(e: tokio_postgres::Error) -> StoreError {
    // Two nodes registering the same name or device at once: the loser breaks a unique
    // constraint, and its answer is the same as when its check saw the row.
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return StoreError::Conflict;
    }
    // The database's own text (constraint names and the like), never a parameter value.
    match e.as_db_error() {
        Some(db) => StoreError::Backend(format!("postgres: {}", db.message())),
        None => match std::error::Error::source(&e) {
            Some(cause) => StoreError::Backend(format!("postgres: {e}: {cause}")),
            None => StoreError::Backend(format!("postgres: {e}")),
        },
    }
}

type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
type JobResult<T> = Result<T, Fail>;

/// One connection with its prepared statements.
struct Conn {
    client: tokio_postgres::Client,
    statements: Mutex<HashMap<&'static str, Statement>>,
}

/// Where the database is, and how to reach it: in the clear, or (with `sslmode=require` in the
/// URL) over TLS with the server's certificate checked against the given roots and its name.
struct Target {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl Target {
    /// `ca`: the PEM file of the certificates the database's must chain to; `None` for the
    /// system's roots. Used only with `sslmode=require`.
    fn new(url: &str, ca: Option<&Path>) -> Result<Target, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Backend(format!("the PostgreSQL URL does not parse: {e}")))?;
        let tls = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Require => Some(database_tls(ca)?),
            _ => None,
        };
        Ok(Target { config, tls })
    }
}

/// A TLS client for the database: TLS 1.2 or 1.3, the server's certificate checked against
/// `ca` (or the system's roots) and the host name of the URL, as libpq's `verify-full` does.
fn database_tls(ca: Option<&Path>) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    StoreError::Backend(format!(
                        "cannot read the database's CA certificates {}: {e}",
                        path.display()
                    ))
                })?;
            let (added, _) = roots.add_parsable_certificates(certificates);
            if added == 0 {
                return Err(StoreError::Backend(format!(
                    "no usable certificate in {} (expected PEM)",
                    path.display()
                )));
            }
        }
        None => {
            let (added, _) =
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                return Err(StoreError::Backend(
                    "sslmode=require: this system has no CA certificates; set database_ca".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Runs a connection's I/O until it ends.
fn drive<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection ended");
        }
    });
}

impl Conn {
    async fn connect(target: &Target) -> Result<Conn, StoreError> {
        let client = match &target.tls {
            None => {
                let (client, connection) = target.config.connect(NoTls).await.map_err(sql_error)?;
                drive(connection);
                client
            }
            Some(tls) => {
                let (client, connection) = target
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(sql_error)?;
                drive(connection);
                client
            }
        };
        Ok(Conn {
            client,
            statements: Mutex::new(HashMap::new()),
        })
    }

    async fn prepare(&self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self
            .statements
            .lock()
            .ok()
            .and_then(|m| m.get(sql).cloned())
        {
            return Ok(s);
        }
        let statement = self.client.prepare(sql).await?;
        if let Ok(mut m) = self.statements.lock() {
            m.insert(sql, statement.clone());
        }
        Ok(statement)
    }

    async fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.prepare(sql).await?;
        self.client.query(&statement, params).await
    }

    async fn query_opt(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let statement = self.prepare(sql).await?;
        self.client.query_opt(&statement, params).await
    }

    async fn execute(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepare(sql).await?;
        self.client.execute(&statement, params).await
    }
}

/// What an attempt means for its batch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Done (or refused without writing): the batch may commit.
    Keep,
    /// It broke the transaction: roll back and run it alone.
    Guilty,
    /// The transaction broke under it (someone else's error, a deadlock with another node):
    /// run it again.
    Innocent,
}

trait Job: Send {
    /// Runs the job's statements in the open transaction and keeps the result.
    fn attempt<'a>(&'a mut self, conn: &'a Conn) -> Fut<'a, Verdict>;
    /// Whether the last attempt succeeded.
    fn succeeded(&self) -> bool;
    /// Answers the waiting request.
    fn answer(self: Box<Self>, committed: bool);
}

type JobFn<T> = Box<dyn for<'c> Fn(&'c Conn) -> Fut<'c, JobResult<T>> + Send>;

struct TypedJob<T> {
    run: JobFn<T>,
    result: Option<JobResult<T>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send + 'static> Job for TypedJob<T> {
    fn attempt<'a>(&'a mut self, conn: &'a Conn) -> Fut<'a, Verdict> {
        Box::pin(async move {
            let result = (self.run)(conn).await;
            let verdict = match &result {
                Ok(_) | Err(Fail::Store(_)) => Verdict::Keep,
                Err(Fail::Abort(_)) => Verdict::Guilty,
                Err(Fail::Sql(e)) => match e.code() {
                    Some(c)
                        if *c == SqlState::IN_FAILED_SQL_TRANSACTION
                            || *c == SqlState::T_R_DEADLOCK_DETECTED
                            || *c == SqlState::T_R_SERIALIZATION_FAILURE =>
                    {
                        Verdict::Innocent
                    }
                    // A broken connection breaks everyone's transaction.
                    None if e.is_closed() => Verdict::Innocent,
                    _ => Verdict::Guilty,
                },
            };
            self.result = Some(result);
            verdict
        })
    }

    fn succeeded(&self) -> bool {
        matches!(self.result, Some(Ok(_)))
    }

    fn answer(self: Box<Self>, committed: bool) {
        let result = match self.result {
            Some(Ok(v)) if committed => Ok(v),
            Some(Ok(_)) | None => Err(StoreError::Backend("commit failed".into())),
            Some(Err(e)) => Err(e.into()),
        };
        let _ = self.reply.send(result);
    }
}

/// The PostgreSQL store. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    writer: mpsc::Sender<Box<dyn Job>>,
    readers: Arc<Vec<tokio::sync::RwLock<Arc<Conn>>>>,
    next_reader: Arc<AtomicUsize>,
    target: Arc<Target>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("hosts", &self.target.config.get_hosts())
            .field("dbname", &self.target.config.get_dbname())
            .field("tls", &self.target.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`), creates or updates
    /// the schema, and starts the writer.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, None).await
    }

    /// [`PostgresStore::open`], with `ca` the PEM file of the certificates that the database's
    /// must chain to when the URL says `sslmode=require` (`None`: the system's roots).
    pub async fn open_with(url: &str, ca: Option<&Path>) -> Result<Self, StoreError> {
        let target = Target::new(url, ca)?;
        let setup = Conn::connect(&target).await?;
        migrate(&setup).await?;
        drop(setup);
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(tokio::sync::RwLock::new(Arc::new(
                Conn::connect(&target).await?,
            )));
        }
        let writer = Conn::connect(&target).await?;
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>(4 * MAX_BATCH);
        let target = Arc::new(target);
        tokio::spawn(writer_loop(writer, target.clone(), rx));
        Ok(Self {
            writer: tx,
            readers: Arc::new(readers),
            next_reader: Arc::new(AtomicUsize::new(0)),
            target,
        })
    }

    /// Runs `f` in the writer's next transaction; returns once it is committed.
    async fn write<T: Send + 'static>(
        &self,
        f: impl for<'c> Fn(&'c Conn) -> Fut<'c, JobResult<T>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(TypedJob {
            run: Box::new(f),
            result: None,
            reply,
        });
        self.writer
            .send(job)
            .await
            .map_err(|_| StoreError::Backend("the writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the writer has stopped".into()))?
    }

    /// A reader connection (reconnected if it broke).
    async fn reader(&self) -> Result<Arc<Conn>, StoreError> {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        let slot = &self.readers[i];
        {
            let conn = slot.read().await;
            if !conn.client.is_closed() {
                return Ok(conn.clone());
            }
        }
        let mut conn = slot.write().await;
        if conn.client.is_closed() {
            *conn = Arc::new(Conn::connect(&self.target).await?);
        }
        Ok(conn.clone())
    }
}

async fn migrate(conn: &Conn) -> Result<(), StoreError> {
    let c = &conn.client;
    c.batch_execute("BEGIN").await.map_err(sql_error)?;
    let result = async {
        c.execute(MIGRATION_LOCK, &[]).await?;
        let has_version = c
            .query_opt(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'schema_version'",
                &[],
            )
            .await?
            .is_some();
        let version: Option<i32> = if has_version {
            c.query_opt("SELECT version FROM schema_version", &[])
                .await?
                .map(|r| r.get(0))
        } else {
            None
        };
        if version.is_some_and(|v| v > SCHEMA_VERSION) {
            return Ok(Err(StoreError::Backend(format!(
                "the database has schema version {}, newer than this server's {SCHEMA_VERSION}: upgrade the server",
                version.unwrap_or_default()
            ))));
        }
        c.batch_execute(SCHEMA).await?;
        c.execute("DELETE FROM schema_version", &[]).await?;
        c.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&SCHEMA_VERSION])
            .await?;
        Ok::<_, tokio_postgres::Error>(Ok(()))
    }
    .await;
    match result {
        Ok(Ok(())) => c.batch_execute("COMMIT").await.map_err(sql_error),
        Ok(Err(e)) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err(e)
        }
        Err(e) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err(sql_error(e))
        }
    }
}

async fn writer_loop(mut conn: Conn, target: Arc<Target>, mut rx: mpsc::Receiver<Box<dyn Job>>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if conn.client.is_closed() {
            match Conn::connect(&target).await {
                Ok(c) => conn = c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reconnect to postgres");
                    for job in jobs {
                        job.answer(false);
                    }
                    continue;
                }
            }
        }
        run_batch(&conn, jobs).await;
    }
}

async fn run_batch(conn: &Conn, mut jobs: Vec<Box<dyn Job>>) {
    for _ in 0..BATCH_TRIES {
        if jobs.is_empty() {
            return;
        }
        if conn.client.batch_execute("BEGIN").await.is_err() {
            break;
        }
        let verdicts =
            futures_util::future::join_all(jobs.iter_mut().map(|j| j.attempt(conn))).await;
        if verdicts.iter().all(|v| *v == Verdict::Keep) {
            let committed = match conn.client.batch_execute("COMMIT").await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "commit failed");
                    false
                }
            };
            for job in jobs {
                job.answer(committed);
            }
            return;
        }
        let _ = conn.client.batch_execute("ROLLBACK").await;
        let mut innocent = Vec::with_capacity(jobs.len());
        for (job, verdict) in jobs.into_iter().zip(verdicts) {
            if verdict == Verdict::Guilty {
                run_alone(conn, job).await;
            } else {
                innocent.push(job);
            }
        }
        jobs = innocent;
    }
    for job in jobs {
        run_alone(conn, job).await;
    }
}

/// Runs one job in its own transaction: committed if it succeeded, rolled back otherwise.
async fn run_alone(conn: &Conn, mut job: Box<dyn Job>) {
    for _ in 0..BATCH_TRIES {
        if conn.client.batch_execute("BEGIN").await.is_err() {
            break;
        }
        let verdict = job.attempt(conn).await;
        let succeeded = verdict == Verdict::Keep && job.succeeded();
        if verdict == Verdict::Innocent {
            let _ = conn.client.batch_execute("ROLLBACK").await;
            continue;
        }
        let committed = if succeeded {
            conn.client.batch_execute("COMMIT").await.is_ok()
        } else {
            let _ = conn.client.batch_execute("ROLLBACK").await;
            false
        };
        job.answer(committed);
        return;
    }
    job.answer(false);
}

fn device_id(bytes: &[u8]) -> Result<DeviceId, StoreError> {
    DeviceId::from_slice(bytes).map_err(backend)
}

fn group_id(bytes: &[u8]) -> Result<GroupId, StoreError> {
    GroupId::from_slice(bytes).map_err(backend)
}

async fn devices_of(c: &Conn, username: &Username) -> Result<Vec<DeviceRecord>, Fail> {
    let rows = c
        .query(
            "SELECT device_id, device_key, certificate FROM devices WHERE username = $1 ORDER BY created_at, device_id",
            &[&username.as_str()],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(DeviceRecord {
                device_id: device_id(r.get(0))?,
                username: username.clone(),
                device_key: r.get(1),
                certificate: r.get(2),
            })
        })
        .collect()
}

async fn device_taken(c: &Conn, device: &DeviceRecord) -> Result<bool, Fail> {
    Ok(c.query_opt(
        "SELECT 1 FROM devices WHERE device_id = $1 OR device_key = $2",
        &[&device.device_id.as_bytes().as_slice(), &device.device_key],
    )
    .await?
    .is_some())
}

async fn insert_device(c: &Conn, device: &DeviceRecord) -> Result<(), Fail> {
    c.execute(
        "INSERT INTO devices (device_id, username, device_key, certificate, created_at) VALUES ($1, $2, $3, $4, $5)",
        &[
            &device.device_id.as_bytes().as_slice(),
            &device.username.as_str(),
            &device.device_key,
            &device.certificate,
            &now_ms(),
        ],
    )
    .await?;
    Ok(())
}

async fn insert_key_packages(
    c: &Conn,
    device: &DeviceId,
    kps: &[KeyPackageRecord],
) -> Result<(), Fail> {
    for kp in kps {
        let suite = i32::from(kp.ciphersuite);
        if kp.last_resort {
            c.execute(
                "DELETE FROM key_packages WHERE device_id = $1 AND ciphersuite = $2 AND last_resort",
                &[&device.as_bytes().as_slice(), &suite],
            )
            .await?;
        }
        c.execute(
            "INSERT INTO key_packages (device_id, ciphersuite, last_resort, data) VALUES ($1, $2, $3, $4)",
            &[&device.as_bytes().as_slice(), &suite, &kp.last_resort, &kp.data],
        )
        .await?;
    }
    Ok(())
}

/// Marks a username's directory entry as changed, with a ticket from a sequence, so that a
/// publish that read an older state does not clear a newer one (also across nodes).
async fn queue_directory_update(c: &Conn, username: &Username) -> Result<(), Fail> {
    c.execute(
        "INSERT INTO directory_pending (username, ticket) VALUES ($1, nextval('directory_ticket'))
         ON CONFLICT (username) DO UPDATE SET ticket = excluded.ticket",
        &[&username.as_str()],
    )
    .await?;
    Ok(())
}

fn value_row(r: &Row) -> Result<DirectoryValueRow, StoreError> {
    let val: &[u8] = r.get(4);
    Ok(DirectoryValueRow {
        label: r.get(0),
        epoch: uint(r.get(1)),
        version: uint(r.get(2)),
        node_label_len: r.get::<_, i32>(3) as u32,
        node_label_val: <[u8; 32]>::try_from(val).map_err(backend)?,
        value: r.get(5),
    })
}

async fn fetch(c: &Conn, device: DeviceId, req: FetchRequest) -> Result<SyncBatch, Fail> {
    let limit = req.limit.max(1) as usize;
    let me = device.as_bytes().as_slice();
    let mut deliveries = Vec::new();
    let mut more = false;
    let inbox_after = match req.inbox_after {
        Some(after) => int(after),
        None => c
            .query_opt(
                "SELECT inbox_acked FROM devices WHERE device_id = $1",
                &[&me],
            )
            .await?
            .map_or(0, |r| r.get(0)),
    };
    let rows = c
        .query(
            "SELECT i.seq, i.group_id, i.group_seq, i.sent_at, COALESCE(w.payload, i.payload) FROM inbox i
             LEFT JOIN welcomes w ON length(i.payload) = 0 AND w.group_id = i.group_id AND w.group_seq = i.group_seq
             WHERE i.device_id = $1 AND i.seq > $2 ORDER BY i.seq LIMIT $3",
            &[&me, &inbox_after, &(limit as i64 + 1)],
        )
        .await?;
    for r in rows {
        if deliveries.len() == limit {
            more = true;
            break;
        }
        deliveries.push(Delivery {
            kind: DeliveryKind::Inbox,
            inbox_seq: uint(r.get(0)),
            group_id: *group_id(r.get(1))?.as_bytes(),
            group_seq: uint(r.get(2)),
            sent_at: uint(r.get(3)),
            payload: r.get::<_, Vec<u8>>(4).into(),
        });
    }
    let memberships = c
        .query(
            "SELECT group_id, from_seq, until_seq, acked FROM members WHERE device_id = $1 AND (until_seq IS NULL OR acked < until_seq) ORDER BY group_id, from_seq",
            &[&me],
        )
        .await?;
    for m in memberships {
        if more {
            break;
        }
        let group = group_id(m.get(0))?;
        let (from_seq, until_seq, acked): (i64, Option<i64>, i64) = (m.get(1), m.get(2), m.get(3));
        let cursor = req
            .groups
            .iter()
            .find(|(g, _)| *g == group)
            .map_or(acked, |(_, c)| int(*c));
        let after = cursor.max(from_seq - 1);
        let until = until_seq.unwrap_or(i64::MAX);
        let room = (limit - deliveries.len()) as i64;
        let rows = c
            .query(
                "SELECT seq, sent_at, payload FROM group_log WHERE group_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
                &[&group.as_bytes().as_slice(), &after, &until, &(room + 1)],
            )
            .await?;
        for r in rows {
            if deliveries.len() == limit {
                more = true;
                break;
            }
            deliveries.push(Delivery {
                kind: DeliveryKind::Group,
                inbox_seq: 0,
                group_id: *group.as_bytes(),
                group_seq: uint(r.get(0)),
                sent_at: uint(r.get(1)),
                payload: r.get::<_, Vec<u8>>(2).into(),
            });
        }
    }
    Ok(SyncBatch {
        deliveries,
        more: u8::from(more),
    })
}

impl PostgresStore {
    /// Runs `f` on a reader connection.
    async fn read<T>(
        &self,
        f: impl for<'c> FnOnce(&'c Conn) -> Fut<'c, JobResult<T>>,
    ) -> Result<T, StoreError> {
        let conn = self.reader().await?;
        f(&conn).await.map_err(StoreError::from)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_account(&self, a: NewAccount) -> Result<(), StoreError> {
        self.write(move |c| {
            let a = a.clone();
            Box::pin(async move {
                let taken = c
                    .query_opt(
                        "SELECT 1 FROM accounts WHERE username = $1",
                        &[&a.username.as_str()],
                    )
                    .await?
                    .is_some()
                    || device_taken(c, &a.device).await?;
                if taken {
                    return Err(StoreError::Conflict.into());
                }
                c.execute(
                    "INSERT INTO accounts (username, account_key, created_at) VALUES ($1, $2, $3)",
                    &[&a.username.as_str(), &a.account_key, &now_ms()],
                )
                .await?;
                insert_device(c, &a.device).await?;
                insert_key_packages(c, &a.device.device_id, &a.key_packages).await?;
                queue_directory_update(c, &a.username).await
            })
        })
        .await
    }

    async fn user(&self, username: &Username) -> Result<Option<UserRecord>, StoreError> {
        let username = username.clone();
        self.read(move |c| {
            Box::pin(async move {
                let Some(row) = c
                    .query_opt(
                        "SELECT account_key FROM accounts WHERE username = $1",
                        &[&username.as_str()],
                    )
                    .await?
                else {
                    return Ok(None);
                };
                let devices = devices_of(c, &username).await?;
                Ok(Some(UserRecord {
                    username,
                    account_key: row.get(0),
                    devices,
                }))
            })
        })
        .await
    }

    async fn device(&self, device: DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.read(move |c| {
            Box::pin(async move {
                let Some(r) = c
                    .query_opt(
                        "SELECT username, device_key, certificate FROM devices WHERE device_id = $1",
                        &[&device.as_bytes().as_slice()],
                    )
                    .await?
                else {
                    return Ok(None);
                };
                Ok(Some(DeviceRecord {
                    device_id: device,
                    username: Username::new(r.get::<_, &str>(0)).map_err(backend)?,
                    device_key: r.get(1),
                    certificate: r.get(2),
                }))
            })
        })
        .await
    }

    async fn add_key_packages(
        &self,
        device: DeviceId,
        kps: Vec<KeyPackageRecord>,
    ) -> Result<(), StoreError> {
        let kps = Arc::new(kps);
        self.write(move |c| {
            let kps = kps.clone();
            Box::pin(async move { insert_key_packages(c, &device, &kps).await })
        })
        .await
    }

    async fn key_package_stock(&self, device: DeviceId, suite: u16) -> Result<u64, StoreError> {
        self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        "SELECT COUNT(*) FROM key_packages WHERE device_id = $1 AND ciphersuite = $2 AND NOT last_resort",
                        &[&device.as_bytes().as_slice(), &i32::from(suite)],
                    )
                    .await?;
                Ok(row.map_or(0, |r| uint(r.get(0))))
            })
        })
        .await
    }

    async fn claim_key_packages(
        &self,
        username: &Username,
        suite: u16,
    ) -> Result<Vec<(DeviceId, Vec<u8>)>, StoreError> {
        let username = username.clone();
        self.write(move |c| {
            let username = username.clone();
            Box::pin(async move {
                let devices = devices_of(c, &username).await?;
                if devices.is_empty() {
                    return Err(StoreError::NotFound.into());
                }
                let mut out = Vec::with_capacity(devices.len());
                for d in devices {
                    // SKIP LOCKED: a package another node is claiming right now is not handed
                    // out twice.
                    let Some(row) = c
                        .query_opt(
                            "SELECT id, last_resort, data FROM key_packages WHERE device_id = $1 AND ciphersuite = $2 ORDER BY last_resort, id LIMIT 1 FOR UPDATE SKIP LOCKED",
                            &[&d.device_id.as_bytes().as_slice(), &i32::from(suite)],
                        )
                        .await?
                    else {
                        continue;
                    };
                    let (id, last_resort): (i64, bool) = (row.get(0), row.get(1));
                    if !last_resort {
                        c.execute("DELETE FROM key_packages WHERE id = $1", &[&id])
                            .await?;
                    }
                    out.push((d.device_id, row.get(2)));
                }
                Ok(out)
            })
        })
        .await
    }

    async fn put_session(
        &self,
        token_hash: [u8; 32],
        device: DeviceId,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            Box::pin(async move {
                c.execute(
                    "DELETE FROM sessions WHERE expires_at < $1",
                    &[&(now_ms() / 1000)],
                )
                .await?;
                c.execute(
                    "INSERT INTO sessions (token_hash, device_id, expires_at) VALUES ($1, $2, $3)",
                    &[
                        &token_hash.as_slice(),
                        &device.as_bytes().as_slice(),
                        &int(expires_at),
                    ],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn session(&self, token_hash: [u8; 32]) -> Result<Option<(DeviceId, u64)>, StoreError> {
        self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        "SELECT device_id, expires_at FROM sessions WHERE token_hash = $1",
                        &[&token_hash.as_slice()],
                    )
                    .await?;
                row.map(|r| Ok((device_id(r.get(0))?, uint(r.get(1)))))
                    .transpose()
            })
        })
        .await
    }

    async fn create_group(&self, g: NewGroup) -> Result<(), StoreError> {
        self.write(move |c| {
            let g = g.clone();
            Box::pin(async move {
                let gid = g.group_id.as_bytes().as_slice();
                let inserted = c
                    .execute(
                        "INSERT INTO groups (group_id, epoch, next_seq, created_at) VALUES ($1, 0, 1, $2) ON CONFLICT DO NOTHING",
                        &[&gid, &now_ms()],
                    )
                    .await?;
                if inserted == 0 {
                    return Err(StoreError::Conflict.into());
                }
                put_state(c, gid, &g.state).await?;
                c.execute(
                    "INSERT INTO members (group_id, device_id, from_seq, until_seq, acked) VALUES ($1, $2, 1, NULL, 0)",
                    &[&gid, &g.creator.as_bytes().as_slice()],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn group(&self, group: GroupId) -> Result<Option<GroupRecord>, StoreError> {
        self.read(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        "SELECT g.epoch, s.state FROM groups g JOIN group_states s USING (group_id) WHERE g.group_id = $1",
                        &[&group.as_bytes().as_slice()],
                    )
                    .await?;
                Ok(row.map(|r| GroupRecord {
                    group_id: group,
                    epoch: uint(r.get(0)),
                    state: r.get(1),
                }))
            })
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
        let payload = Arc::new(payload);
        self.write(move |c| {
            let payload = payload.clone();
            Box::pin(async move {
                let sent_at = now_ms();
                // One statement: the answer to a retry of the device's last message, or the
                // membership check, the sequence number, the insert and the device's last message.
                // (The same retry taken by two nodes at the very same time is stored twice; the
                // recipients then see the second copy as unreadable, never the text twice.)
                let row = c
                    .query_opt(
                        "WITH prior AS (
                            SELECT seq, sent_at FROM last_posts
                            WHERE device_id = $2 AND group_id = $1 AND digest = $5),
                         g AS (
                            UPDATE groups SET next_seq = next_seq + 1
                            WHERE group_id = $1 AND NOT EXISTS (SELECT 1 FROM prior) AND EXISTS (
                                SELECT 1 FROM members WHERE group_id = $1 AND device_id = $2 AND until_seq IS NULL)
                            RETURNING next_seq - 1 AS seq, epoch),
                         ins AS (
                            INSERT INTO group_log (group_id, seq, sent_at, payload)
                            SELECT $1, seq, $3, $4 FROM g),
                         last AS (
                            INSERT INTO last_posts (device_id, group_id, digest, seq, sent_at)
                            SELECT $2, $1, $5, seq, $3 FROM g
                            ON CONFLICT (device_id) DO UPDATE SET group_id = excluded.group_id,
                                digest = excluded.digest, seq = excluded.seq, sent_at = excluded.sent_at)
                         SELECT seq, $3::BIGINT, epoch, FALSE FROM g
                         UNION ALL
                         SELECT p.seq, p.sent_at, gr.epoch, TRUE FROM prior p JOIN groups gr ON gr.group_id = $1",
                        &[
                            &group.as_bytes().as_slice(),
                            &sender.as_bytes().as_slice(),
                            &sent_at,
                            &payload.as_slice(),
                            &digest.as_slice(),
                        ],
                    )
                    .await?
                    .ok_or(StoreError::NotMember)?;
                Ok(Appended {
                    seq: uint(row.get(0)),
                    sent_at: uint(row.get(1)),
                    epoch: uint(row.get(2)),
                    welcomes: Vec::new(),
                    repeated: row.get(3),
                })
            })
        })
        .await
    }

    async fn append_handshake(&self, w: HandshakeWrite) -> Result<Appended, StoreError> {
        let w = Arc::new(w);
        self.write(move |c| {
            let w = w.clone();
            Box::pin(async move {
                let gid = w.group_id.as_bytes().as_slice();
                let sender = w.sender.as_bytes().as_slice();
                // The one-commit-per-epoch rule: only a write built on the current epoch matches,
                // and the row lock orders competing writes from every node.
                let row = c
                    .query_opt(
                        "UPDATE groups SET epoch = $3, next_seq = next_seq + 1
                         WHERE group_id = $1 AND epoch = $2 AND EXISTS (
                            SELECT 1 FROM members WHERE group_id = $1 AND device_id = $4 AND until_seq IS NULL)
                         RETURNING next_seq - 1",
                        &[&gid, &int(w.epoch), &int(w.new_epoch), &sender],
                    )
                    .await?;
                let Some(row) = row else {
                    let current = c
                        .query_opt("SELECT epoch FROM groups WHERE group_id = $1", &[&gid])
                        .await?
                        .ok_or(StoreError::NotFound)?;
                    let current = uint(current.get(0));
                    return Err(if current != w.epoch {
                        StoreError::EpochConflict { current }
                    } else {
                        StoreError::NotMember
                    }
                    .into());
                };
                let seq: i64 = row.get(0);
                let sent_at = now_ms();
                c.execute(
                    "INSERT INTO group_log (group_id, seq, sent_at, payload) VALUES ($1, $2, $3, $4)",
                    &[&gid, &seq, &sent_at, &w.payload],
                )
                .await?;
                put_state(c, gid, &w.state).await?;
                for d in &w.removed {
                    c.execute(
                        "UPDATE members SET until_seq = $3 WHERE group_id = $1 AND device_id = $2 AND until_seq IS NULL",
                        &[&gid, &d.as_bytes().as_slice(), &seq],
                    )
                    .await?;
                }
                // One statement each for every added device: a large add is not a round trip
                // per device.
                let added: Vec<&[u8]> = w.added.iter().map(|d| d.as_bytes().as_slice()).collect();
                c.execute(
                    "INSERT INTO members (group_id, device_id, from_seq, until_seq, acked)
                     SELECT $1, d, $3, NULL, $4 FROM UNNEST($2::bytea[]) AS d",
                    &[&gid, &added, &(seq + 1), &seq],
                )
                .await?;
                let mut welcomes = Vec::with_capacity(w.added.len());
                if let Some(welcome) = &w.welcome {
                    c.execute(
                        "INSERT INTO welcomes (group_id, group_seq, payload) VALUES ($1, $2, $3)",
                        &[&gid, &seq, welcome],
                    )
                    .await?;
                    let rows = c
                        .query(
                            "WITH n AS (UPDATE devices SET inbox_next = inbox_next + 1 WHERE device_id = ANY($1)
                                        RETURNING device_id, inbox_next - 1 AS seq)
                             INSERT INTO inbox (device_id, seq, group_id, group_seq, sent_at, payload)
                             SELECT device_id, seq, $2, $3, $4, ''::bytea FROM n
                             RETURNING device_id, seq",
                            &[&added, &gid, &seq, &sent_at],
                        )
                        .await?;
                    if rows.len() != added.len() {
                        return Err(Fail::Abort(StoreError::NotFound));
                    }
                    for r in rows {
                        let device = device_id(r.get(0)).map_err(Fail::Abort)?;
                        welcomes.push((device, uint(r.get(1))));
                    }
                    // In the order the commit added them, as the SQLite store answers.
                    welcomes.sort_by_key(|(d, _)| w.added.iter().position(|a| a == d));
                }
                Ok(Appended {
                    seq: uint(seq),
                    sent_at: uint(sent_at),
                    epoch: w.new_epoch,
                    welcomes,
                    repeated: false,
                })
            })
        })
        .await
    }

    async fn fetch(&self, device: DeviceId, req: FetchRequest) -> Result<SyncBatch, StoreError> {
        self.read(move |c| Box::pin(fetch(c, device, req))).await
    }

    async fn ack(&self, device: DeviceId, ack: AckRequest) -> Result<(), StoreError> {
        self.write(move |c| {
            let ack = ack.clone();
            Box::pin(async move {
                let me = device.as_bytes().as_slice();
                if let Some(seq) = ack.inbox.map(int) {
                    c.execute(
                        "UPDATE devices SET inbox_acked = GREATEST(inbox_acked, $2) WHERE device_id = $1",
                        &[&me, &seq],
                    )
                    .await?;
                    c.execute(
                        "WITH gone AS (DELETE FROM inbox WHERE device_id = $1 AND seq <= $2
                                       RETURNING group_id, group_seq, length(payload) = 0 AS shared)
                         DELETE FROM welcomes w USING gone
                         WHERE gone.shared AND w.group_id = gone.group_id AND w.group_seq = gone.group_seq
                           AND NOT EXISTS (SELECT 1 FROM inbox i
                                           WHERE i.group_id = w.group_id AND i.group_seq = w.group_seq
                                             AND NOT (i.device_id = $1 AND i.seq <= $2))",
                        &[&me, &seq],
                    )
                    .await?;
                }
                for (group, seq) in &ack.groups {
                    let seq = int(*seq);
                    c.execute(
                        "UPDATE members SET acked = GREATEST(acked, LEAST($3::int8, COALESCE(until_seq, $3::int8)))
                         WHERE group_id = $1 AND device_id = $2 AND from_seq <= $3::int8 + 1",
                        &[&group.as_bytes().as_slice(), &me, &seq.min(i64::MAX - 1)],
                    )
                    .await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn inbox_bytes(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            Box::pin(async move {
                let row = c.query_opt(super::sqlite::INBOX_BYTES, &[]).await?;
                Ok(row.map_or(0, |r| uint(r.get(0))))
            })
        })
        .await
    }

    async fn group_devices(&self, group: GroupId) -> Result<Vec<DeviceId>, StoreError> {
        self.read(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT device_id FROM members WHERE group_id = $1 AND until_seq IS NULL",
                        &[&group.as_bytes().as_slice()],
                    )
                    .await?;
                rows.iter()
                    .map(|r| device_id(r.get(0)).map_err(Fail::from))
                    .collect()
            })
        })
        .await
    }

    async fn add_device(
        &self,
        device: DeviceRecord,
        key_packages: Vec<KeyPackageRecord>,
    ) -> Result<(), StoreError> {
        let key_packages = Arc::new(key_packages);
        self.write(move |c| {
            let (device, key_packages) = (device.clone(), key_packages.clone());
            Box::pin(async move {
                let exists = c
                    .query_opt(
                        "SELECT 1 FROM accounts WHERE username = $1",
                        &[&device.username.as_str()],
                    )
                    .await?
                    .is_some();
                if !exists {
                    return Err(StoreError::NotFound.into());
                }
                if device_taken(c, &device).await? {
                    return Err(StoreError::Conflict.into());
                }
                insert_device(c, &device).await?;
                insert_key_packages(c, &device.device_id, &key_packages).await?;
                queue_directory_update(c, &device.username).await
            })
        })
        .await
    }

    async fn remove_device(&self, username: &Username, device: DeviceId) -> Result<(), StoreError> {
        let username = username.clone();
        self.write(move |c| {
            let username = username.clone();
            Box::pin(async move {
                let me = device.as_bytes().as_slice();
                let removed = c
                    .execute(
                        "DELETE FROM devices WHERE device_id = $1 AND username = $2",
                        &[&me, &username.as_str()],
                    )
                    .await?;
                if removed == 0 {
                    return Err(StoreError::NotFound.into());
                }
                c.execute("DELETE FROM key_packages WHERE device_id = $1", &[&me])
                    .await?;
                c.execute("DELETE FROM sessions WHERE device_id = $1", &[&me])
                    .await?;
                queue_directory_update(c, &username).await
            })
        })
        .await
    }

    async fn directory_pending(&self) -> Result<Vec<(Username, u64)>, StoreError> {
        self.read(|c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT username, ticket FROM directory_pending ORDER BY ticket",
                        &[],
                    )
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok((
                            Username::new(r.get::<_, &str>(0)).map_err(backend)?,
                            uint(r.get(1)),
                        ))
                    })
                    .collect()
            })
        })
        .await
    }

    async fn directory_write(&self, write: DirectoryWrite) -> Result<(), StoreError> {
        // One row per key (the last write wins), as one multi-row statement per table.
        let mut nodes: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for (k, v) in write.nodes {
            nodes.insert(k, v);
        }
        let (keys, values): (Vec<Vec<u8>>, Vec<Vec<u8>>) = nodes.into_iter().unzip();
        let mut versions: HashMap<(Vec<u8>, u64), DirectoryValueRow> = HashMap::new();
        for v in write.values {
            versions.insert((v.label.clone(), v.epoch), v);
        }
        let rows: Vec<DirectoryValueRow> = versions.into_values().collect();
        let columns = Arc::new((
            keys,
            values,
            rows.iter().map(|v| v.label.clone()).collect::<Vec<_>>(),
            rows.iter().map(|v| int(v.epoch)).collect::<Vec<_>>(),
            rows.iter().map(|v| int(v.version)).collect::<Vec<_>>(),
            rows.iter()
                .map(|v| v.node_label_len as i32)
                .collect::<Vec<_>>(),
            rows.iter()
                .map(|v| v.node_label_val.to_vec())
                .collect::<Vec<_>>(),
            rows.into_iter().map(|v| v.value).collect::<Vec<_>>(),
        ));
        self.write(move |c| {
            let columns = columns.clone();
            Box::pin(async move {
                // Only the node holding the publisher's lock may write the directory: if this
                // connection lost it (and another node took over), the write is refused.
                let leads: bool = c
                    .query_opt(PUBLISHER_LOCK, &[])
                    .await?
                    .is_some_and(|r| r.get(0));
                if !leads {
                    return Err(StoreError::Backend(
                        "another server node publishes the key directory".into(),
                    )
                    .into());
                }
                let (keys, values, labels, epochs, versions, lens, vals, data) = &*columns;
                c.execute(
                    "INSERT INTO directory_nodes (key, value) SELECT * FROM UNNEST($1::bytea[], $2::bytea[])
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[keys, values],
                )
                .await?;
                c.execute(
                    "INSERT INTO directory_values (label, epoch, version, node_label_len, node_label_val, value)
                     SELECT * FROM UNNEST($1::bytea[], $2::int8[], $3::int8[], $4::int4[], $5::bytea[], $6::bytea[])
                     ON CONFLICT (label, epoch) DO UPDATE SET version = excluded.version,
                        node_label_len = excluded.node_label_len, node_label_val = excluded.node_label_val,
                        value = excluded.value",
                    &[labels, epochs, versions, lens, vals, data],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn directory_nodes(
        &self,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.read(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT key, value FROM directory_nodes WHERE key = ANY($1)",
                        &[&keys],
                    )
                    .await?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })
        })
        .await
    }

    async fn directory_values(
        &self,
        labels: Vec<Vec<u8>>,
    ) -> Result<Vec<DirectoryValueRow>, StoreError> {
        self.read(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT label, epoch, version, node_label_len, node_label_val, value FROM directory_values WHERE label = ANY($1) ORDER BY label, epoch",
                        &[&labels],
                    )
                    .await?;
                rows.iter()
                    .map(|r| value_row(r).map_err(Fail::from))
                    .collect()
            })
        })
        .await
    }

    async fn directory_finish_epoch(
        &self,
        root: RootRecord,
        published: Vec<(Username, u64)>,
    ) -> Result<(), StoreError> {
        let published = Arc::new(published);
        self.write(move |c| {
            let (root, published) = (root.clone(), published.clone());
            Box::pin(async move {
                c.execute(
                    "INSERT INTO directory_roots (epoch, root, signature) VALUES ($1, $2, $3)
                     ON CONFLICT (epoch) DO UPDATE SET root = excluded.root, signature = excluded.signature",
                    &[&int(root.epoch), &root.root.as_slice(), &root.signature],
                )
                .await?;
                let users: Vec<&str> = published.iter().map(|(u, _)| u.as_str()).collect();
                let tickets: Vec<i64> = published.iter().map(|(_, t)| int(*t)).collect();
                c.execute(
                    "DELETE FROM directory_pending p USING UNNEST($1::text[], $2::int8[]) AS done(username, ticket)
                     WHERE p.username = done.username AND p.ticket = done.ticket",
                    &[&users, &tickets],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn directory_root(&self, epoch: Option<u64>) -> Result<Option<RootRecord>, StoreError> {
        self.read(move |c| {
            Box::pin(async move {
                let row = match epoch {
                    Some(e) => {
                        c.query_opt(
                            "SELECT epoch, root, signature FROM directory_roots WHERE epoch = $1",
                            &[&int(e)],
                        )
                        .await?
                    }
                    None => {
                        c.query_opt(
                            "SELECT epoch, root, signature FROM directory_roots ORDER BY epoch DESC LIMIT 1",
                            &[],
                        )
                        .await?
                    }
                };
                row.map(|r| {
                    Ok(RootRecord {
                        epoch: uint(r.get(0)),
                        root: <[u8; 32]>::try_from(r.get::<_, &[u8]>(1)).map_err(backend)?,
                        signature: r.get(2),
                    })
                })
                .transpose()
            })
        })
        .await
    }

    async fn directory_lead(&self) -> Result<bool, StoreError> {
        self.write(|c| {
            Box::pin(async move {
                Ok(c.query_opt(PUBLISHER_LOCK, &[])
                    .await?
                    .is_some_and(|r| r.get(0)))
            })
        })
        .await
    }

    async fn put_pending(
        &self,
        record: PendingRecord,
        max_of_kind: Option<u64>,
    ) -> Result<(), StoreError> {
        let record = Arc::new(record);
        self.write(move |c| {
            let record = record.clone();
            Box::pin(async move {
                let now = now_ms() / 1000;
                let kind = i32::from(record.kind as u8);
                if let Some(max) = max_of_kind {
                    let waiting: i64 = c
                        .query_opt(
                            "SELECT COUNT(*) FROM pending WHERE kind = $1 AND expires_at >= $2",
                            &[&kind, &now],
                        )
                        .await?
                        .map_or(0, |r| r.get(0));
                    if uint(waiting) >= max {
                        return Err(StoreError::Full.into());
                    }
                }
                // An expired record under the key is replaced; a live one is a conflict.
                let stored = c
                    .execute(
                        "INSERT INTO pending (kind, key, value, expires_at) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
                         WHERE pending.expires_at < $5",
                        &[&kind, &record.key, &record.value, &int(record.expires_at), &now],
                    )
                    .await?;
                if stored == 0 {
                    return Err(StoreError::Conflict.into());
                }
                Ok(())
            })
        })
        .await
    }

    async fn pending(
        &self,
        kind: PendingKind,
        key: Vec<u8>,
        take: bool,
    ) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        let kind = i32::from(kind as u8);
        let key = Arc::new(key);
        if take {
            self.write(move |c| {
                let key = key.clone();
                Box::pin(async move {
                    let row = c
                        .query_opt(
                            "DELETE FROM pending WHERE kind = $1 AND key = $2 AND expires_at >= $3 RETURNING value, expires_at",
                            &[&kind, &key.as_slice(), &(now_ms() / 1000)],
                        )
                        .await?;
                    Ok(row.map(|r| (r.get(0), uint(r.get(1)))))
                })
            })
            .await
        } else {
            self.read(move |c| {
                Box::pin(async move {
                    let row = c
                        .query_opt(
                            "SELECT value, expires_at FROM pending WHERE kind = $1 AND key = $2 AND expires_at >= $3",
                            &[&kind, &key.as_slice(), &(now_ms() / 1000)],
                        )
                        .await?;
                    Ok(row.map(|r| (r.get(0), uint(r.get(1)))))
                })
            })
            .await
        }
    }

    async fn swap_pending(
        &self,
        kind: PendingKind,
        key: Vec<u8>,
        old: Vec<u8>,
        new: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let kind = i32::from(kind as u8);
        let parts = Arc::new((key, old, new));
        self.write(move |c| {
            let parts = parts.clone();
            Box::pin(async move {
                let (key, old, new) = &*parts;
                let changed = c
                    .execute(
                        "UPDATE pending SET value = $4 WHERE kind = $1 AND key = $2 AND value = $3 AND expires_at >= $5",
                        &[&kind, key, old, new, &(now_ms() / 1000)],
                    )
                    .await?;
                Ok(changed == 1)
            })
        })
        .await
    }

    async fn set_group_expiry(&self, group: GroupId, seconds: u64) -> Result<(), StoreError> {
        let seconds = int(seconds);
        self.write(move |c| {
            Box::pin(async move {
                let g = group.as_bytes().as_slice();
                if seconds == 0 {
                    c.execute("DELETE FROM group_expiry WHERE group_id = $1", &[&g])
                        .await?;
                } else {
                    c.execute(
                        "INSERT INTO group_expiry (group_id, seconds) VALUES ($1, $2)
                         ON CONFLICT (group_id) DO UPDATE SET seconds = excluded.seconds",
                        &[&g, &seconds],
                    )
                    .await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn purge_expiring(&self, now_ms: u64) -> Result<u64, StoreError> {
        let now = int(now_ms);
        self.write(move |c| {
            Box::pin(async move {
                let mut n = c
                    .execute(
                        "DELETE FROM group_log WHERE group_id IN (SELECT group_id FROM group_expiry)
                           AND sent_at < $1 - (SELECT seconds * 1000 FROM group_expiry e WHERE e.group_id = group_log.group_id)",
                        &[&now],
                    )
                    .await?;
                n += c
                    .execute(
                        "DELETE FROM blobs WHERE group_id IN (SELECT group_id FROM group_expiry)
                           AND COALESCE(finished_at, created_at) < $1 - (SELECT seconds * 1000 FROM group_expiry e WHERE e.group_id = blobs.group_id)",
                        &[&now],
                    )
                    .await?;
                Ok(n)
            })
        })
        .await
    }

    async fn purge(&self, older_than_ms: u64) -> Result<u64, StoreError> {
        self.write(move |c| {
            Box::pin(async move {
                c.execute(
                    "DELETE FROM pending WHERE expires_at < $1",
                    &[&(now_ms() / 1000)],
                )
                .await?;
                let cutoff = int(older_than_ms);
                let mut n = c
                    .execute("DELETE FROM group_log WHERE sent_at < $1", &[&cutoff])
                    .await?;
                n += c
                    .execute("DELETE FROM inbox WHERE sent_at < $1", &[&cutoff])
                    .await?;
                c.execute(super::sqlite::UNREFERENCED_WELCOMES, &[]).await?;
                n += c
                    .execute(
                        "DELETE FROM group_log WHERE seq <= (
                            SELECT MIN(acked) FROM members m
                            WHERE m.group_id = group_log.group_id
                              AND (m.until_seq IS NULL OR m.acked < m.until_seq))",
                        &[],
                    )
                    .await?;
                Ok(n)
            })
        })
        .await
    }
}

async fn put_state(c: &Conn, group: &[u8], state: &[u8]) -> Result<(), Fail> {
    c.execute(
        "INSERT INTO group_states (group_id, state) VALUES ($1, $2) ON CONFLICT (group_id) DO UPDATE SET state = excluded.state",
        &[&group, &state],
    )
    .await?;
    Ok(())
}

/// Creates an empty schema in the database at `base_url` and returns a URL whose connections
/// use it: a fresh store for each test or benchmark run, in one database.
pub async fn scratch_schema(base_url: &str) -> Result<String, StoreError> {
    let conn = Conn::connect(&Target::new(base_url, None)?).await?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let schema = format!("sp_{}_{nanos}", std::process::id());
    conn.client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .map_err(sql_error)?;
    let separator = if base_url.contains('?') { '&' } else { '?' };
    Ok(format!(
        "{base_url}{separator}options=-c%20search_path%3D{schema}"
    ))
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

    /// A fresh schema in the test database, or `None` (the test is skipped) when
    /// `SEALPOST_TEST_DATABASE_URL` is not set. CI sets it.
    async fn scratch() -> Option<String> {
        let Ok(base) = std::env::var("SEALPOST_TEST_DATABASE_URL") else {
            eprintln!("SEALPOST_TEST_DATABASE_URL is not set: skipping the PostgreSQL test");
            return None;
        };
        Some(scratch_schema(&base).await.unwrap())
    }

    /// `sslmode=require`: the store speaks TLS to the database and checks its certificate. The
    /// test database's server has its own certificate (its `ssl_cert_file`, on this machine):
    /// trusted, the store opens and its connections are encrypted; a certificate from other
    /// roots, or one for another name, and it does not connect at all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_to_the_database_checks_its_certificate_and_name() {
        let Some(url) = scratch().await else { return };
        let plain = Conn::connect(&Target::new(&url, None).unwrap())
            .await
            .unwrap();
        let row = plain
            .client
            .query_one(
                "SELECT current_setting('ssl'), current_setting('ssl_cert_file')",
                &[],
            )
            .await
            .unwrap();
        let (ssl, cert_file): (String, String) = (row.get(0), row.get(1));
        if ssl != "on" {
            eprintln!("the test database does not speak TLS (ssl = {ssl}): skipping");
            return;
        }
        // Its certificate is for `localhost` (Debian's own); connect to the same address by
        // that name.
        let config: tokio_postgres::Config = url.parse().unwrap();
        let address = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(host) => host.clone(),
            other => panic!("the test database is not reached over TCP: {other:?}"),
        };
        let with = |host: &str| {
            url.replacen(&format!("@{address}:"), &format!("@{host}:"), 1)
                + &format!("&hostaddr={address}&sslmode=require")
        };
        let ca = std::path::PathBuf::from(&cert_file);
        let encrypted = Conn::connect(&Target::new(&with("localhost"), Some(&ca)).unwrap())
            .await
            .unwrap();
        let row = encrypted
            .client
            .query_one(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "the connection is not encrypted");
        let version: String = row.get(1);
        assert!(version.starts_with("TLSv1."), "{version}");
        // The whole store opens that way.
        let store = PostgresStore::open_with(&with("localhost"), Some(&ca))
            .await
            .unwrap();
        assert!(
            store
                .user(&"nobody".parse().unwrap())
                .await
                .unwrap()
                .is_none()
        );
        // Other roots (a certificate of the same name, another key): refused, nothing connects.
        let other = std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../sealpost-sdk/tests/data/tls-cert.pem"
        ));
        let err = PostgresStore::open_with(&with("localhost"), Some(&other))
            .await
            .expect_err("an untrusted certificate is refused");
        assert!(err.to_string().contains("certificate"), "{err}");
        // The right roots, another name (the address itself): refused too.
        let err = Conn::connect(&Target::new(&with(&address), Some(&ca)).unwrap())
            .await
            .err()
            .expect("a certificate for another name is refused");
        assert!(err.to_string().contains("certificate"), "{err}");
        // A CA file that is not there is named.
        let missing = std::path::PathBuf::from("/nonexistent/ca.pem");
        let err = PostgresStore::open_with(&with("localhost"), Some(&missing))
            .await
            .expect_err("a missing CA file is an error");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let Some(url) = scratch().await else { return };
        let store = PostgresStore::open(&url).await.unwrap();
        super::super::conformance::run_all(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blob_conformance() {
        let Some(url) = scratch().await else { return };
        let a = PostgresStore::open(&url).await.unwrap();
        let b = PostgresStore::open(&url).await.unwrap();
        super::super::conformance::blobs(&a, &b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expiring_groups() {
        let Some(url) = scratch().await else { return };
        let store = PostgresStore::open(&url).await.unwrap();
        super::super::conformance::expiring_groups(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_compete() {
        let Some(url) = scratch().await else { return };
        let a = PostgresStore::open(&url).await.unwrap();
        let b = PostgresStore::open(&url).await.unwrap();
        super::super::conformance::competing_nodes(&a, &b, true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_survives_reopen() {
        let Some(url) = scratch().await else { return };
        {
            let store = PostgresStore::open(&url).await.unwrap();
            super::super::conformance::seed_one_message(&store).await;
        }
        let store = PostgresStore::open(&url).await.unwrap();
        super::super::conformance::check_seeded_message(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_akds_storage_tests() {
        let Some(url) = scratch().await else { return };
        let store = PostgresStore::open(&url).await.unwrap();
        akd::storage::tests::run_test_cases_for_storage_impl(
            crate::directory::akd_store::AkdStore::new(Arc::new(store)),
        )
        .await;
    }

    /// The two backends' schemas have the same tables and columns, and the same version (but
    /// for the files' bytes, which the embedded backend keeps in files).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn schema_in_step_with_sqlite() {
        let Some(url) = scratch().await else { return };
        let store = PostgresStore::open(&url).await.unwrap();
        let conn = store.reader().await.unwrap();
        let rows = conn
            .client
            .query(
                "SELECT table_name::text, column_name::text FROM information_schema.columns WHERE table_schema = current_schema() AND table_name NOT IN ('schema_version', 'blob_chunks') ORDER BY 1, 2",
                &[],
            )
            .await
            .unwrap();
        let pg: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(super::super::sqlite::SqliteStore::open(&path).unwrap());
        let lite = rusqlite::Connection::open(&path).unwrap();
        let mut lite_columns = Vec::new();
        let mut tables = lite
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        let names: Vec<String> = tables
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for t in names {
            let mut cols = lite.prepare(&format!("PRAGMA table_info({t})")).unwrap();
            for c in cols.query_map([], |r| r.get::<_, String>(1)).unwrap() {
                lite_columns.push((t.clone(), c.unwrap()));
            }
        }
        lite_columns.sort();
        assert_eq!(pg, lite_columns);
        let version: i32 = conn
            .client
            .query_one("SELECT version FROM schema_version", &[])
            .await
            .unwrap()
            .get(0);
        let lite_version: i32 = lite
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!((version, lite_version), (SCHEMA_VERSION, SCHEMA_VERSION));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_url_or_a_dead_server_is_an_error() {
        assert!(PostgresStore::open("not a url").await.is_err());
        // Nothing listens on port 1.
        let err = PostgresStore::open("postgres://nobody@127.0.0.1:1/none")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    }
}
