//! The passphrase that protects a profile's store key: `SEALPOST_PASSPHRASE`, or typed on the
//! terminal (never echoed) when the variable is not set and the command runs on one. A command
//! that does not run on a terminal (a script, a service) never waits for someone to type.

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
