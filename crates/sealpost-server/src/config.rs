//! Server settings: defaults, then a TOML file, then `SEALPOST_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything the server can be told.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for the database (`server.db`).
    pub data: PathBuf,
    /// Undelivered data is dropped after this many days.
    pub retention_days: u64,
    /// Largest HTTP request body, bytes. A commit (with its Welcome) may be larger: see
    /// [`Settings::max_handshake_bytes`].
    pub max_body_bytes: usize,
    /// Most members (devices) in one group. A commit that adds this many devices at once (a
    /// group created with all its members) is accepted whatever `max_body_bytes` says.
    pub max_group_size: usize,
    /// Largest file (encrypted, as uploaded), bytes.
    pub max_file_bytes: u64,
    /// Most bytes of files one account may have stored at once (uploads in progress, and files
    /// not yet fetched by every recipient device), bytes.
    pub file_quota_bytes: u64,
    /// An upload not finished within this many hours is deleted.
    pub unfinished_upload_hours: u64,
    /// Key-package claims one device may make per minute (one claim per account added), but
    /// never fewer than `max_group_size`: creating a group of the largest size takes that many.
    /// For this and the other limits below, 0 turns the limit off; each node counts on its own.
    pub key_package_claims_per_minute: u32,
    /// Accounts that may be registered from one client address (an IPv6 /64) per hour.
    pub registrations_per_address_per_hour: u32,
    /// Sign-in challenges and device-link requests from one client address per minute.
    pub sign_ins_per_address_per_minute: u32,
    /// Usernames one device may look up (key directory, profiles) per minute: enough for any
    /// person, too few to enumerate the users; never fewer than twice `max_group_size`, so
    /// that a device may create or join two groups of the largest size in a minute (it looks
    /// every member up).
    pub lookups_per_minute: u32,
    /// Messages and commits one device may send per minute.
    pub sends_per_minute: u32,
    /// WebSocket connections one device may open per minute.
    pub connections_per_minute: u32,
    /// Count per-address limits by the last address of `X-Forwarded-For`: set it when every
    /// request comes through a reverse proxy that appends it, and only then (a client could
    /// write any address there itself).
    pub trust_forwarded_for: bool,
    /// Most simultaneous WebSocket connections.
    pub max_connections: usize,
    /// Most HTTP requests in flight at once.
    pub max_inflight_requests: usize,
    /// The most time a client may take to send a request's headers, and then its body,
    /// milliseconds; a slower client is disconnected (headers) or refused (body).
    pub request_read_timeout_ms: u64,
    /// Lifetime of a session token, seconds.
    pub token_ttl_secs: u64,
    /// Key directory: shortest time between two published epochs, milliseconds. Changes that
    /// arrive meanwhile go into the next epoch together; a registration waits for its epoch.
    pub directory_interval_ms: u64,
    /// Key directory: how often the publishing node looks for changes that other nodes queued
    /// without waking it (NATS wakes it at once; this is the fallback), milliseconds.
    pub directory_poll_ms: u64,
    /// TLS: the certificate chain (PEM, the server's certificate first). With `tls_key` set
    /// too, the server speaks HTTPS (and WSS) only; empty for plain HTTP, e.g. behind a TLS
    /// proxy.
    pub tls_certificate: PathBuf,
    /// TLS: the private key of the certificate (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key: PathBuf,
    /// Where the server keeps its state: empty for the embedded SQLite database in `data`, or a
    /// PostgreSQL URL (`postgres://user:password@host:5432/db`) that several nodes share.
    pub database: ConnectionUrl,
    /// With `sslmode=require` in the PostgreSQL URL, the server speaks TLS to the database and
    /// checks its certificate against these CA certificates (PEM) and the URL's host name;
    /// empty for the system's CA certificates. Unused otherwise.
    pub database_ca: PathBuf,
    /// A NATS server (`nats://host:4222`) through which nodes sharing a database wake each
    /// other to push messages to devices connected elsewhere; empty for a single node.
    pub nats: ConnectionUrl,
}

/// A URL that may carry a password: `Debug` shows it without the password.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnectionUrl(pub String);

impl ConnectionUrl {
    /// The URL, or `None` when unset.
    pub fn get(&self) -> Option<&str> {
        Some(self.0.trim()).filter(|s| !s.is_empty())
    }

    /// The URL without its password (`…` in its place), or `…` for what is not a URL.
    pub fn redacted(&self) -> String {
        // `scheme://user:password@host…`: everything between the first ':' after the scheme
        // and the '@' is the password.
        match self.0.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((user, host)) => {
                    let user = user.split(':').next().unwrap_or_default();
                    format!("{scheme}://{user}:…@{host}")
                }
                None => self.0.clone(),
            },
            None if self.0.is_empty() => String::new(),
            None => "…".to_owned(),
        }
    }
}

impl std::fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::str::FromStr for ConnectionUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// What a commit and its Welcome may take per device they add, bytes: on the post-quantum suite
/// one device costs about 2.7 KB of key package in the commit, 1.2 KB of encrypted group secrets
/// and 1.4 KB of ratchet tree in the Welcome (see docs/BENCHMARKS.md), with room to spare.
pub const HANDSHAKE_BYTES_PER_DEVICE: usize = 8 * 1024;

impl Settings {
    /// The largest commit upload (a commit and its Welcome), bytes: enough to create a group of
    /// `max_group_size` devices in one commit, and never less than `max_body_bytes`.
    pub fn max_handshake_bytes(&self) -> usize {
        self.max_body_bytes.max(
            self.max_group_size
                .saturating_mul(HANDSHAKE_BYTES_PER_DEVICE),
        )
    }

    /// The key-package claims a device may make per minute (0: no limit): the setting, but
    /// enough to create a group of `max_group_size`.
    pub fn key_package_claims_limit(&self) -> u32 {
        at_least(self.key_package_claims_per_minute, self.max_group_size)
    }

    /// The usernames a device may look up per minute (0: no limit): the setting, but enough
    /// to create or join two groups of `max_group_size`.
    pub fn lookups_limit(&self) -> u32 {
        at_least(
            self.lookups_per_minute,
            self.max_group_size.saturating_mul(2),
        )
    }
}

/// A limit of `n` per minute (0: none), raised to `floor` if it is lower.
fn at_least(n: u32, floor: usize) -> u32 {
    match n {
        0 => 0,
        n => n.max(u32::try_from(floor).unwrap_or(u32::MAX)),
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            data: default_data_dir(),
            retention_days: 30,
            max_body_bytes: 1024 * 1024,
            max_group_size: 1000,
            max_file_bytes: 100 * 1024 * 1024,
            file_quota_bytes: 2 * 1024 * 1024 * 1024,
            unfinished_upload_hours: 24,
            key_package_claims_per_minute: 600,
            registrations_per_address_per_hour: 60,
            sign_ins_per_address_per_minute: 1_200,
            lookups_per_minute: 1_200,
            sends_per_minute: 12_000,
            connections_per_minute: 120,
            trust_forwarded_for: false,
            max_connections: 10_000,
            max_inflight_requests: 4096,
            request_read_timeout_ms: 30_000,
            token_ttl_secs: 24 * 3600,
            directory_interval_ms: 200,
            directory_poll_ms: 5_000,
            tls_certificate: PathBuf::new(),
            tls_key: PathBuf::new(),
            database: ConnectionUrl::default(),
            database_ca: PathBuf::new(),
            nats: ConnectionUrl::default(),
        }
    }
}

/// `$XDG_DATA_HOME/sealpost/server`, else `~/.local/share/sealpost/server`.
pub fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("sealpost").join("server")
}

/// A setting could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (in the message only, so that it is not printed twice as its cause too).
        reason: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// An environment variable has a bad value.
    #[error("invalid value {value:?} in environment variable {name}: {reason}")]
    Env {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
        /// Why it does not fit.
        reason: String,
    },
}

impl Settings {
    /// Defaults, overridden by `file` (if any), overridden by `SEALPOST_*` variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut s = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
                    path: path.to_owned(),
                    reason,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?
            }
            None => Settings::default(),
        };
        s.apply_env(|k| std::env::var(k).ok())?;
        Ok(s)
    }

    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(name: &str, v: String) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map_err(|e: T::Err| ConfigError::Env {
                name: name.into(),
                reason: e.to_string(),
                value: v,
            })
        }
        macro_rules! env {
            ($($field:ident => $name:literal),* $(,)?) => {$(
                if let Some(v) = get($name) { self.$field = parse($name, v)?; }
            )*};
        }
        env!(
            listen => "SEALPOST_LISTEN",
            data => "SEALPOST_DATA",
            retention_days => "SEALPOST_RETENTION_DAYS",
            max_body_bytes => "SEALPOST_MAX_BODY_BYTES",
            max_group_size => "SEALPOST_MAX_GROUP_SIZE",
            max_file_bytes => "SEALPOST_MAX_FILE_BYTES",
            file_quota_bytes => "SEALPOST_FILE_QUOTA_BYTES",
            unfinished_upload_hours => "SEALPOST_UNFINISHED_UPLOAD_HOURS",
            key_package_claims_per_minute => "SEALPOST_KEY_PACKAGE_CLAIMS_PER_MINUTE",
            registrations_per_address_per_hour => "SEALPOST_REGISTRATIONS_PER_ADDRESS_PER_HOUR",
            sign_ins_per_address_per_minute => "SEALPOST_SIGN_INS_PER_ADDRESS_PER_MINUTE",
            lookups_per_minute => "SEALPOST_LOOKUPS_PER_MINUTE",
            sends_per_minute => "SEALPOST_SENDS_PER_MINUTE",
            connections_per_minute => "SEALPOST_CONNECTIONS_PER_MINUTE",
            trust_forwarded_for => "SEALPOST_TRUST_FORWARDED_FOR",
            max_connections => "SEALPOST_MAX_CONNECTIONS",
            max_inflight_requests => "SEALPOST_MAX_INFLIGHT_REQUESTS",
            request_read_timeout_ms => "SEALPOST_REQUEST_READ_TIMEOUT_MS",
            token_ttl_secs => "SEALPOST_TOKEN_TTL_SECS",
            directory_interval_ms => "SEALPOST_DIRECTORY_INTERVAL_MS",
            directory_poll_ms => "SEALPOST_DIRECTORY_POLL_MS",
            tls_certificate => "SEALPOST_TLS_CERTIFICATE",
            tls_key => "SEALPOST_TLS_KEY",
            database => "SEALPOST_DATABASE",
            database_ca => "SEALPOST_DATABASE_CA",
            nats => "SEALPOST_NATS",
        );
        Ok(())
    }

    /// Whether the server speaks TLS: a certificate and a key are set.
    pub fn tls(&self) -> bool {
        !self.tls_certificate.as_os_str().is_empty() || !self.tls_key.as_os_str().is_empty()
    }

    /// These settings as a TOML document that a config file takes back, but for the passwords
    /// in URLs, which are shown as `…` (for `sealpost server --print-config`).
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        for url in [&mut shown.database, &mut shown.nats] {
            url.0 = url.redacted();
        }
        toml::to_string(&shown).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "retention_days = 3\nmax_group_size = 7\n").unwrap();
        let mut s: Settings = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!((s.retention_days, s.max_group_size), (3, 7));
        s.apply_env(|k| (k == "SEALPOST_MAX_GROUP_SIZE").then(|| "9".to_string()))
            .unwrap();
        assert_eq!((s.retention_days, s.max_group_size), (3, 9));
        let err = s
            .apply_env(|k| (k == "SEALPOST_LISTEN").then(|| "nope".to_string()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "invalid value \"nope\" in environment variable SEALPOST_LISTEN: invalid socket address syntax"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "retension_days = 3\n").unwrap();
        assert!(matches!(
            Settings::load(Some(&path)),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn passwords_stay_out_of_debug() {
        let s = Settings {
            database: ConnectionUrl("postgres://sp:hunter2@db:5432/sealpost".into()),
            nats: ConnectionUrl("nats://n:secret@nats:4222".into()),
            ..Settings::default()
        };
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("secret"),
            "{shown}"
        );
        assert!(
            shown.contains("postgres://sp:…@db:5432/sealpost"),
            "{shown}"
        );
        assert_eq!(Settings::default().database.get(), None);
    }

    #[test]
    fn printed_settings_parse_back_without_passwords() {
        let s: Settings = toml::from_str(&Settings::default().to_toml()).unwrap();
        assert_eq!(s, Settings::default());
        let mut s = Settings {
            retention_days: 3,
            ..Settings::default()
        };
        s.database = ConnectionUrl("postgres://app:hunter2@db:5432/sealpost".into());
        let printed = s.to_toml();
        assert!(!printed.contains("hunter2"), "{printed}");
        let back: Settings = toml::from_str(&printed).unwrap();
        assert_eq!(back.retention_days, 3);
        assert_eq!(back.database.0, "postgres://app:…@db:5432/sealpost");
    }
}
