//! The passphrase that protects a profile's store key: `SEALPOST_PASSPHRASE`, or the one
//! remembered in the system's keyring (`sealpost passphrase remember`), or typed on the terminal
//! (never echoed) when neither is there and the command runs on one. A command that does not
//! run on a terminal (a script, a service) never waits for someone to type.
//!
//! The keyring is, on Linux, the kernel's user keyring (keyrings(7)): the passphrase is kept in
//! the kernel's memory, never on disk, for the user's processes until the last of them ends
//! (in practice until the next restart). A program running as the user can read it there, as
//! it could read the profile; someone with the disk or a backup cannot.

use std::io::IsTerminal as _;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use zeroize::Zeroizing;

/// Attempts at typing a passphrase before a command gives up.
pub const ATTEMPTS: usize = 3;

/// `SEALPOST_PASSPHRASE`, if set and not empty.
pub fn from_env() -> Option<Zeroizing<String>> {
    std::env::var("SEALPOST_PASSPHRASE")
        .ok()
        .filter(|p| !p.is_empty())
        .map(Zeroizing::new)
}

/// Whether a person can be asked: the command reads from a terminal.
pub fn can_ask() -> bool {
    std::io::stdin().is_terminal()
}

/// Reads a line from the terminal after `prompt`, without echoing it.
async fn read(prompt: String) -> Result<Zeroizing<String>> {
    tokio::task::spawn_blocking(move || rpassword::prompt_password(prompt))
        .await?
        .map(Zeroizing::new)
        .context("cannot read the passphrase from the terminal")
}

/// Asks for the passphrase of the profile in `home` (which needs one).
pub async fn ask(home: &Path) -> Result<Zeroizing<String>> {
    let home = crate::render::safe(&home.display().to_string());
    read(format!("Passphrase for the profile {home}: ")).await
}

/// The passphrase for a new profile: `SEALPOST_PASSPHRASE`, or, on a terminal, one typed twice
/// (typed as nothing: none). Without one, the store key is kept beside the database, readable
/// by whoever can read the whole profile directory (docs/threat-model.md).
pub async fn choose() -> Result<Option<Zeroizing<String>>> {
    if let Some(given) = from_env() {
        return Ok(Some(given));
    }
    if !can_ask() {
        return Ok(None);
    }
    for _ in 0..ATTEMPTS {
        let first =
            read("Passphrase to protect this profile on this device (Enter for none): ".into())
                .await?;
        if first.is_empty() {
            return Ok(None);
        }
        let again = read("The same passphrase again: ".into()).await?;
        if *first == *again {
            return Ok(Some(first));
        }
        eprintln!("The two passphrases differ; once more.");
    }
    bail!("the passphrases typed did not match {ATTEMPTS} times: nothing was created")
}

/// The passphrase for a command that makes a profile in `home` (`register`, `device link`): a
/// new one ([`choose`]), or, where a profile is there already, the one that opens it, asked
/// for on a terminal (so that the command can then say what is in the way, not that a new
/// passphrase is wrong).
pub async fn for_new_profile(home: &Path) -> Result<Option<Zeroizing<String>>> {
    if !home.join("store.key").exists() {
        return choose().await;
    }
    if let Some(given) = from_env() {
        return Ok(Some(given));
    }
    match sealpost_sdk::Client::open(home, None) {
        Err(sealpost_sdk::Error::PassphraseRequired) if can_ask() => Ok(Some(ask(home).await?)),
        _ => Ok(None),
    }
}

/// The passphrase remembered for the profile in `home`, if any.
pub fn remembered(home: &Path) -> Option<Zeroizing<String>> {
    keyring::load(home)
}

/// `sealpost passphrase remember`: keeps the profile's passphrase (`SEALPOST_PASSPHRASE`, or
/// typed) in the keyring, once it has opened the profile.
pub async fn remember(home: &Path) -> Result<()> {
    let passphrase = match from_env() {
        Some(given) => given,
        None if can_ask() => ask(home).await?,
        None => bail!(
            "set SEALPOST_PASSPHRASE, or run the command on a terminal to type the passphrase"
        ),
    };
    match sealpost_sdk::Client::open(home, Some(&passphrase)) {
        Ok(_) => {}
        Err(sealpost_sdk::Error::ProfileLocked) => bail!(
            "the profile is in use (a daemon, listen, chat or web): stop it, then try again, so \
             that the passphrase can be checked first"
        ),
        Err(e) => return Err(crate::rpc::RpcError::from(e).into()),
    }
    keyring::save(home, &passphrase)
}

/// `sealpost passphrase forget`: takes the profile's passphrase out of the keyring. Whether
/// there was one.
pub fn forget(home: &Path) -> Result<bool> {
    keyring::forget(home)
}

#[cfg(target_os = "linux")]
mod keyring {
    use std::path::Path;

    use anyhow::{Context as _, Result};
    use linux_keyutils::{KeyError, KeyRing, KeyRingIdentifier};
    use zeroize::Zeroizing;

    /// The key's name: the profile's full path.
    fn name(home: &Path) -> String {
        let home = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_owned());
        format!("sealpost passphrase:{}", home.display())
    }

    fn ring(create: bool) -> Result<KeyRing, KeyError> {
        KeyRing::from_special_id(KeyRingIdentifier::User, create)
    }

    pub fn load(home: &Path) -> Option<Zeroizing<String>> {
        let key = ring(false).ok()?.search(&name(home)).ok()?;
        let bytes = Zeroizing::new(key.read_to_vec().ok()?);
        std::str::from_utf8(&bytes)
            .ok()
            .map(|s| Zeroizing::new(s.to_owned()))
    }

    pub fn save(home: &Path, passphrase: &str) -> Result<()> {
        ring(true)
            .and_then(|r| r.add_key(&name(home), passphrase.as_bytes()))
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("the kernel's keyring did not take the passphrase")?;
        Ok(())
    }

    pub fn forget(home: &Path) -> Result<bool> {
        let Ok(ring) = ring(false) else {
            return Ok(false);
        };
        match ring.search(&name(home)) {
            Ok(key) => key
                .invalidate()
                .map(|()| true)
                .map_err(|e| anyhow::anyhow!("cannot take the passphrase out of the keyring: {e}")),
            Err(_) => Ok(false),
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod keyring {
    use std::path::Path;

    use anyhow::{Result, bail};
    use zeroize::Zeroizing;

    pub fn load(_home: &Path) -> Option<Zeroizing<String>> {
        None
    }

    pub fn save(_home: &Path, _passphrase: &str) -> Result<()> {
        bail!("this system's keyring is not supported yet: use SEALPOST_PASSPHRASE")
    }

    pub fn forget(_home: &Path) -> Result<bool> {
        Ok(false)
    }
}
