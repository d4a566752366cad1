//! The Sealpost delivery service: an untrusted server that stores and forwards MLS ciphertext.
//!
//! It never holds a key that opens a message. What it sees: accounts, devices, group rosters (from
//! the public MLS state), timing and padded sizes. What it enforces: authentication of devices,
//! one commit per epoch and a total order per group, membership for posting and fetching,
//! durability before acknowledgement, and limits.
//!
//! Entry point: [`run`], which serves on a bound listener until the shutdown token is cancelled.
#![forbid(unsafe_code)]

mod auth;
pub mod config;
mod delivery;
pub mod directory;
mod error;
pub mod fanout;
mod http;
#[cfg(test)]
mod ietf_vectors;
mod links;
mod listen;
pub mod metrics;
mod openapi;
mod push;
pub mod ratelimit;
pub mod storage;
mod uploads;

use std::sync::Arc;
use std::time::Duration;

pub use config::Settings;
pub use listen::TlsCertificate;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::storage::postgres::PostgresStore;
use crate::storage::sqlite::SqliteStore;
use crate::storage::{BlobStore, Store};

/// The server failed to start or to serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The data directory cannot be written (a read-only disk, wrong owner).
    #[error("the data directory {path} is not writable")]
    DataDirNotWritable {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the database")]
    Store(#[from] storage::StoreError),
    /// The key directory could not be opened.
    #[error("cannot open the key directory")]
    Directory(#[from] directory::DirectoryError),
    /// A setting is unusable.
    #[error("invalid setting: {0}")]
    Settings(String),
    /// NATS could not be used.
    #[error(transparent)]
    Fanout(#[from] fanout::FanoutError),
    /// Serving failed.
    #[error("server I/O error")]
    Io(#[from] std::io::Error),
}

/// An opened server: its store and key directory, ready to serve.
pub struct Server {
    settings: Settings,
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    directory: Arc<directory::KeyDirectory>,
    tls: Option<(tokio_rustls::TlsAcceptor, Arc<listen::TlsCertificate>)>,
}

impl Server {
    /// Opens the store and the key directory in `settings.data`.
    pub async fn open(settings: Settings) -> Result<Self, ServerError> {
        // Before anything is created: a bad certificate is a setting to fix, not a state.
        let tls = if settings.tls() {
            Some(
                listen::tls_acceptor(&settings.tls_certificate, &settings.tls_key)
                    .map_err(ServerError::Settings)?,
            )
        } else {
            None
        };
        std::fs::create_dir_all(&settings.data).map_err(|source| ServerError::DataDir {
            path: settings.data.clone(),
            source,
        })?;
        let probe = settings.data.join(".sealpost-write-check");
        std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|source| ServerError::DataDirNotWritable {
                path: settings.data.clone(),
                source,
            })?;
        let (store, blobs): (Arc<dyn Store>, Arc<dyn BlobStore>) = match settings.database.get() {
            None => {
                let store = Arc::new(SqliteStore::open(&settings.data.join("server.db"))?);
                (store.clone(), store)
            }
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let ca = Some(settings.database_ca.as_path()).filter(|p| !p.as_os_str().is_empty());
                let store = Arc::new(PostgresStore::open_with(url, ca).await?);
                (store.clone(), store)
            }
            Some(_) => {
                return Err(ServerError::Settings(
                    "database must be empty (the embedded SQLite database) or a postgres:// URL"
                        .into(),
                ));
            }
        };
        let directory = Arc::new(
            directory::KeyDirectory::open(store.clone(), &settings.data.join("directory.key"))
                .await?,
        );
        Ok(Self {
            settings,
            store,
            blobs,
            directory,
            tls,
        })
    }

    /// The store (tests use it to play a compromised server).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The handle that reloads the TLS certificate and key from their files (`None` without
    /// TLS): what the `sealpost server` command calls on SIGHUP.
    pub fn tls_certificate(&self) -> Option<Arc<listen::TlsCertificate>> {
        self.tls
            .as_ref()
            .map(|(_, certificate)| certificate.clone())
    }

    /// The key directory (tests use it to play a compromised server).
    pub fn directory(&self) -> Arc<directory::KeyDirectory> {
        self.directory.clone()
    }

    /// Serves on `listener` until `shutdown` is cancelled.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServerError> {
        let Server {
            settings,
            store,
            blobs,
            directory: key_directory,
            tls,
        } = self;
        let metrics = Arc::new(metrics::Metrics::default());
        let mut hub = push::Hub::new(metrics.clone());
        let mut directory_wakes = None;
        if let Some(url) = settings.nats.get() {
            let closer = hub.clone();
            let fanout = Arc::new(
                fanout::Fanout::connect(url, metrics.clone(), move || closer.close_all()).await?,
            );
            // Nodes wake the one that publishes the key directory when they queue a change,
            // and are woken when another one does (only the publisher acts on it).
            let waker = fanout.clone();
            key_directory.set_wake_publisher(move || waker.wake_directory());
            let (listener, woken, stop) = (fanout.clone(), key_directory.clone(), shutdown.clone());
            directory_wakes = Some(tokio::spawn(async move {
                listener.on_directory_wake(|| woken.wake(), stop).await;
            }));
            hub = hub.with_fanout(fanout);
        }
        let delivery = Arc::new(delivery::DeliveryService::new(
            store.clone(),
            hub,
            metrics.clone(),
            settings.max_group_size,
        ));
        let limits = Arc::new(ratelimit::Limits::new(&settings, &metrics));
        let state = http::AppState {
            delivery,
            auth: Arc::new(auth::Auth::new(settings.token_ttl_secs)),
            ws_slots: Arc::new(Semaphore::new(settings.max_connections)),
            request_slots: Arc::new(Semaphore::new(settings.max_inflight_requests)),
            limits: limits.clone(),
            metrics,
            shutdown: shutdown.clone(),
            settings: Arc::new(settings.clone()),
            directory: key_directory.clone(),
            links: Arc::new(links::LinkBook::new(store.clone())),
            blobs: blobs.clone(),
        };
        let tidier = tokio::spawn(ratelimit::tidy_loop(limits, shutdown.clone()));
        let publisher = tokio::spawn(key_directory.run(
            Duration::from_millis(settings.directory_interval_ms),
            Duration::from_millis(settings.directory_poll_ms),
            shutdown.clone(),
        ));
        let retention_ms = settings.retention_days.saturating_mul(24 * 3600 * 1000);
        let unfinished_ms = settings.unfinished_upload_hours.saturating_mul(3600 * 1000);
        let purger = tokio::spawn(purge_loop(
            store,
            blobs,
            (retention_ms, unfinished_ms),
            shutdown.clone(),
        ));
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(addr = %listener.local_addr()?, scheme, "listening");
        let read_timeout = Duration::from_millis(settings.request_read_timeout_ms);
        listen::serve(
            listener,
            http::router(state),
            tls.map(|(acceptor, _)| acceptor),
            read_timeout,
            shutdown.clone(),
        )
        .await;
        shutdown.cancel();
        let _ = purger.await;
        let _ = publisher.await;
        let _ = tidier.await;
        if let Some(task) = directory_wakes {
            let _ = task.await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Opens the store in `settings.data` and serves on `listener` until `shutdown` is cancelled.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    Server::open(settings)
        .await?
        .serve(listener, shutdown)
        .await
}

/// Deletes, once a minute, what is delivered or past its time: messages older than the
/// retention time (and files finished before it), messages and files of groups with a
/// disappearing-messages timer older than it, and uploads left unfinished.
async fn purge_loop(
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    (retention_ms, unfinished_ms): (u64, u64),
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = auth::now_secs() * 1000;
                let cutoff = now.saturating_sub(retention_ms);
                let purged = async {
                    let n = store.purge(cutoff).await? + store.purge_expiring(now).await?;
                    let m = blobs.purge_blobs(now.saturating_sub(unfinished_ms), cutoff).await?;
                    Ok::<_, storage::StoreError>(n + m)
                }
                .await;
                match purged {
                    Ok(n) if n > 0 => tracing::debug!(deleted = n, "purged delivered and expired data"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "purge failed"),
                }
            }
            () = shutdown.cancelled() => break,
        }
    }
}
