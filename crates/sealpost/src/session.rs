//! How a command reaches the profile: it opens the profile itself, or, when a daemon (or a
//! `sealpost listen`) holds it, goes through that process's socket. Either way it calls the
//! same methods ([`crate::rpc`]). While another one-shot command holds the profile, it waits
//! its turn.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use serde_json::Value;

use sealpost_sdk::{Client, Live};

use crate::daemon::Remote;
use crate::rpc;

/// How long a command waits for another one-shot command to let go of the profile.
const WAIT_FOR_PROFILE: Duration = Duration::from_secs(60);

/// A command's way to the profile.
pub enum Session {
    /// This process holds the profile.
    Local {
        /// The live client.
        live: Live,
        /// The profile directory.
        home: PathBuf,
    },
    /// A daemon holds it.
    Remote(Remote),
}

impl Session {
    /// Opens the profile in `home`, or connects to the daemon that holds it. While a one-shot
    /// command holds it, waits (up to a minute) for it to finish. A profile protected by a
    /// passphrase opens with `passphrase` (`SEALPOST_PASSPHRASE`), or, without it, with one
    /// typed on the terminal.
    pub async fn open(home: &Path, passphrase: Option<&str>) -> Result<Session> {
        let deadline = Instant::now() + WAIT_FOR_PROFILE;
        let mut said = false;
        // The one remembered in the keyring is tried first, as if typed (a wrong one: asked).
        let mut typed = passphrase
            .is_none()
            .then(|| crate::passphrase::remembered(home))
            .flatten();
        let mut attempts = 0;
        loop {
            let given = typed.as_ref().map(|t| t.as_str()).or(passphrase);
            match Client::open(home, given) {
                Ok(client) => {
                    return Ok(Session::Local {
                        live: Live::new(client)?,
                        home: home.to_owned(),
                    });
                }
                Err(sealpost_sdk::Error::ProfileLocked) => {
                    if let Some(remote) = Remote::connect(home).await {
                        return Ok(Session::Remote(remote));
                    }
                    let holder = sealpost_sdk::profile_holder(home)
                        .map_or_else(String::new, |pid| format!(" (process {pid})"));
                    if Instant::now() >= deadline {
                        bail!(
                            "the profile {} is in use by another sealpost process{holder} that \
                             does not serve it: wait for it to finish, or stop it; to use one \
                             profile from several programs at once, run `sealpost daemon`",
                            home.display()
                        );
                    }
                    if !said {
                        eprintln!(
                            "waiting for another sealpost command{holder} to finish with this profile..."
                        );
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(
                    e @ (sealpost_sdk::Error::PassphraseRequired
                    | sealpost_sdk::Error::WrongPassphrase),
                ) if passphrase.is_none()
                    && attempts < crate::passphrase::ATTEMPTS
                    && crate::passphrase::can_ask() =>
                {
                    if matches!(e, sealpost_sdk::Error::WrongPassphrase) {
                        eprintln!("That passphrase does not open this profile; once more.");
                    }
                    attempts += 1;
                    typed = Some(crate::passphrase::ask(home).await?);
                }
                Err(e) => return Err(rpc::RpcError::from(e).into()),
            }
        }
    }

    /// Calls a method (see [`crate::rpc`]) and decodes its answer. A failed call is an
    /// [`rpc::RpcError`] inside the error.
    pub async fn call<T: DeserializeOwned>(&self, method: &str, params: Value) -> Result<T> {
        let value = match self {
            Session::Local { live, .. } => rpc::dispatch(live, method, params).await?,
            Session::Remote(remote) => remote.call(method, params).await?,
        };
        serde_json::from_value(value)
            .with_context(|| format!("the answer to {method} does not parse"))
    }
}
