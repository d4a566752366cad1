//! The IETF MLS working group's passive-client test vectors, run through this SDK's own MLS
//! storage: the provider the client uses ([`crate::store::Provider`] on [`CheckedStorage`]),
//! with every change written to the SQLite profile store the way the client writes it
//! ([`Profile::atomically`]), and — in a second pass — the profile closed and opened again
//! before every epoch, so that each epoch starts from what was read back from the file.
//!
//! Each vector gives a key package with its private keys, a Welcome (and perhaps the ratchet
//! tree), external PSKs, and epochs of proposals and a commit, each with the epoch
//! authenticator the group must reach. A passive client joins and processes them all; every
//! authenticator must match exactly. The files are in `tests/data/mls-test-vectors` (see its
//! SOURCE.md). What openmls cannot run is counted and named, never skipped silently.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use openmls::schedule::{ExternalPsk, PreSharedKeyId, Psk};
use openmls_traits::storage::StorageProvider as _;
use openmls_traits::types::HpkePrivateKey;
use serde::Deserialize;

use crate::store::Profile;

#[derive(Deserialize)]
struct Vector {
    cipher_suite: u16,
    external_psks: Vec<ExternalPskVector>,
    #[serde(deserialize_with = "hex_octets")]
    key_package: Vec<u8>,
    #[serde(deserialize_with = "hex_octets")]
    encryption_priv: Vec<u8>,
    #[serde(deserialize_with = "hex_octets")]
    init_priv: Vec<u8>,
    #[serde(deserialize_with = "hex_octets")]
    welcome: Vec<u8>,
    ratchet_tree: Option<Hex>,
    #[serde(deserialize_with = "hex_octets")]
    initial_epoch_authenticator: Vec<u8>,
    epochs: Vec<Epoch>,
}

#[derive(Deserialize)]
struct Hex(#[serde(deserialize_with = "hex_octets")] Vec<u8>);

#[derive(Deserialize)]
struct ExternalPskVector {
    #[serde(deserialize_with = "hex_octets")]
    psk_id: Vec<u8>,
    #[serde(deserialize_with = "hex_octets")]
    psk: Vec<u8>,
}

#[derive(Deserialize)]
struct Epoch {
    proposals: Vec<Hex>,
    #[serde(deserialize_with = "hex_octets")]
    commit: Vec<u8>,
    #[serde(deserialize_with = "hex_octets")]
    epoch_authenticator: Vec<u8>,
}

/// Octets written as hex digits.
fn hex_octets<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = <&str>::deserialize(d)?;
    hex::decode(text).map_err(serde::de::Error::custom)
}

fn vectors(file: &str) -> Vec<Vector> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/mls-test-vectors")
        .join(file);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// How the vectors of one file went.
#[derive(Default, Debug)]
struct Tally {
    /// Vectors run to their last epoch, by cipher suite.
    passed: std::collections::BTreeMap<u16, usize>,
    /// Epochs processed (commits), over all vectors.
    epochs: usize,
    /// Vectors of cipher suites this provider does not implement, by suite.
    unsupported: std::collections::BTreeMap<u16, usize>,
}

/// Joins as the vector's passive client through a profile in `home` and processes every epoch;
/// with `reopen`, the profile is closed and opened again before each epoch. `Err` says where
/// and why it went wrong.
fn run(vector: &Vector, home: &Path, reopen: bool) -> Result<usize, String> {
    let mut profile = Profile::open(home, true, None).map_err(|e| e.to_string())?;
    let group_id = profile
        .atomically(|_, _, provider| Ok(join(vector, provider)))
        .map_err(|e| e.to_string())??;
    for (n, epoch) in vector.epochs.iter().enumerate() {
        if reopen {
            drop(profile);
            profile = Profile::open(home, false, None).map_err(|e| e.to_string())?;
        }
        profile
            .atomically(|_, _, provider| Ok(process_epoch(provider, &group_id, epoch)))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("epoch {}: {e}", n + 1))?;
    }
    Ok(vector.epochs.len())
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .number_of_resumption_psks(16)
        .build()
}

/// Stores the vector's keys and PSKs through the provider, joins from the Welcome, and checks
/// the first epoch authenticator. The group's id.
fn join(vector: &Vector, provider: &crate::store::Provider) -> Result<GroupId, String> {
    for psk in &vector.external_psks {
        // The nonce is not stored with the PSK: any will do to file it.
        PreSharedKeyId::new(
            Ciphersuite::try_from(vector.cipher_suite).map_err(|e| format!("{e:?}"))?,
            provider.rand(),
            Psk::External(ExternalPsk::new(psk.psk_id.clone())),
        )
        .map_err(|e| format!("an external PSK: {e:?}"))?
        .store(provider, &psk.psk)
        .map_err(|e| format!("storing an external PSK: {e:?}"))?;
    }
    let key_package = match MlsMessageIn::tls_deserialize_exact(&vector.key_package)
        .map_err(|e| format!("the key package: {e:?}"))?
        .extract()
    {
        // The passive client's own key package, as it keeps it. (Validating it as one received
        // would check its lifetime, long run out in the vectors of the Welcome file.)
        MlsMessageBodyIn::KeyPackage(kp) => serde_json::from_value::<KeyPackage>(
            serde_json::to_value(&kp).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("the key package: {e}"))?,
        _ => return Err("the key package is not a KeyPackage".into()),
    };
    // A key package bundle as openmls files it (its fields are the crate's own): the key package
    // with its two private keys.
    let bundle: KeyPackageBundle = serde_json::from_value(serde_json::json!({
        "key_package": key_package,
        "private_init_key": HpkePrivateKey::from(vector.init_priv.clone()),
        "private_encryption_key": { "key": HpkePrivateKey::from(vector.encryption_priv.clone()) },
    }))
    .map_err(|e| format!("the key package bundle: {e}"))?;
    let hash_ref = key_package
        .hash_ref(provider.crypto())
        .map_err(|e| format!("{e:?}"))?;
    provider
        .storage()
        .write_key_package(&hash_ref, &bundle)
        .map_err(|e| format!("storing the key package: {e:?}"))?;
    let MlsMessageBodyIn::Welcome(welcome) = MlsMessageIn::tls_deserialize_exact(&vector.welcome)
        .map_err(|e| format!("the Welcome: {e:?}"))?
        .extract()
    else {
        return Err("the Welcome is not a Welcome".into());
    };
    let tree = vector
        .ratchet_tree
        .as_ref()
        .map(|t| RatchetTreeIn::tls_deserialize_exact(&t.0))
        .transpose()
        .map_err(|e| format!("the ratchet tree: {e:?}"))?;
    // The vectors' leaf nodes were made with lifetimes that have since run out; the check of
    // lifetimes against today's date is the one thing skipped (openmls's own run of these
    // vectors switches it off too).
    let mut join = StagedWelcome::build_from_welcome(provider, &join_config(), welcome)
        .map_err(|e| format!("joining: {e:?}"))?
        .skip_lifetime_validation();
    if let Some(tree) = tree {
        join = join.with_ratchet_tree(tree);
    }
    let group = join
        .build()
        .map_err(|e| format!("joining: {e:?}"))?
        .into_group(provider)
        .map_err(|e| format!("joining: {e:?}"))?;
    if group.epoch_authenticator().as_slice() != vector.initial_epoch_authenticator {
        return Err("the epoch authenticator after joining differs".into());
    }
    Ok(group.group_id().clone())
}

/// The epoch's proposals and commit, through the group as loaded from the provider's storage;
/// then its authenticator.
fn process_epoch(
    provider: &crate::store::Provider,
    group_id: &GroupId,
    epoch: &Epoch,
) -> Result<(), String> {
    let mut group = MlsGroup::load(provider.storage(), group_id)
        .map_err(|e| format!("loading the group: {e:?}"))?
        .ok_or("the group is not in the store")?;
    for message in epoch.proposals.iter().map(|p| &p.0).chain([&epoch.commit]) {
        let message = MlsMessageIn::tls_deserialize_exact(message)
            .map_err(|e| format!("a message: {e:?}"))?
            .try_into_protocol_message()
            .map_err(|e| format!("a message: {e:?}"))?;
        let processed = group
            .process_message(provider, message)
            .map_err(|e| format!("processing: {e:?}"))?;
        match processed.into_content() {
            ProcessedMessageContent::ProposalMessage(proposal) => group
                .store_pending_proposal(provider.storage(), *proposal)
                .map_err(|e| format!("storing a proposal: {e:?}"))?,
            ProcessedMessageContent::StagedCommitMessage(commit) => group
                .merge_staged_commit(provider, *commit)
                .map_err(|e| format!("merging the commit: {e:?}"))?,
            _ => return Err("neither a proposal nor a commit".into()),
        }
    }
    if group.epoch_authenticator().as_slice() != epoch.epoch_authenticator {
        return Err("the epoch authenticator differs".into());
    }
    Ok(())
}

/// Every vector of `file`, in a fresh profile each, once kept open and once reopened before
/// every epoch.
fn run_file(file: &str) -> Tally {
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    let crypto = openmls_rust_crypto::RustCrypto::default();
    for (i, vector) in vectors(file).iter().enumerate() {
        let supported = Ciphersuite::try_from(vector.cipher_suite)
            .ok()
            .is_some_and(|suite| crypto.supports(suite).is_ok());
        if !supported {
            *tally.unsupported.entry(vector.cipher_suite).or_default() += 1;
            continue;
        }
        for reopen in [false, true] {
            let home = tempfile::tempdir().unwrap();
            match run(vector, home.path(), reopen) {
                Ok(epochs) if !reopen => {
                    *tally.passed.entry(vector.cipher_suite).or_default() += 1;
                    tally.epochs += epochs;
                }
                Ok(_) => {}
                Err(e) => failures.push(format!(
                    "{file} #{i} (suite {}, {}): {e}",
                    vector.cipher_suite,
                    if reopen { "reopened" } else { "kept open" }
                )),
            }
        }
    }
    eprintln!("{file}: {tally:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(!tally.passed.is_empty(), "{file}: no vector ran");
    tally
}

#[test]
fn ietf_vectors_passive_client_welcome() {
    run_file("passive-client-welcome.json");
}

#[test]
fn ietf_vectors_passive_client_handling_commit() {
    run_file("passive-client-handling-commit.json");
}

#[test]
fn ietf_vectors_passive_client_random() {
    run_file("passive-client-random.json");
}
