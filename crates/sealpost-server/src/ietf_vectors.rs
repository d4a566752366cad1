//! The IETF MLS working group's vectors that bear on what this server decodes and checks:
//! `messages.json` (every kind of MLS message, each to be decoded and encoded back to the same
//! octets) and `tree-validation.json` (ratchet trees whose nodes must verify: the tree's shape
//! and every leaf's signature at its position; the parent hashes, tree hashes and resolutions the
//! vectors also give are computed inside openmls, out of a caller's reach). The server takes
//! every body it is posted through `MlsMessageIn::tls_deserialize_exact` (sends, commits with
//! their proposals, GroupInfos, key packages, Welcomes inside commits), and a new group's tree
//! through `RatchetTreeIn` and its verification: these tests hold those two steps to the shared
//! data. The files are vendored in `crates/sealpost-sdk/tests/data/mls-test-vectors` (see its
//! SOURCE.md).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_rust_crypto::RustCrypto;

fn vectors(file: &str) -> Vec<serde_json::Value> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sealpost-sdk/tests/data/mls-test-vectors")
        .join(file);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn octets(v: &serde_json::Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

/// Which kind of MLS message each field of `messages.json` holds.
fn kind_of(field: &str) -> Option<fn(&MlsMessageBodyIn) -> bool> {
    Some(match field {
        "mls_welcome" => |b| matches!(b, MlsMessageBodyIn::Welcome(_)),
        "mls_group_info" => |b| matches!(b, MlsMessageBodyIn::GroupInfo(_)),
        "mls_key_package" => |b| matches!(b, MlsMessageBodyIn::KeyPackage(_)),
        "public_message_application" | "public_message_proposal" | "public_message_commit" => {
            |b| matches!(b, MlsMessageBodyIn::PublicMessage(_))
        }
        "private_message" => |b| matches!(b, MlsMessageBodyIn::PrivateMessage(_)),
        _ => return None,
    })
}

#[test]
fn ietf_vectors_messages_decode_as_the_server_decodes_them_and_encode_back() {
    let mut decoded = 0;
    let mut trees = 0;
    for (i, vector) in vectors("messages.json").iter().enumerate() {
        for (field, value) in vector.as_object().unwrap() {
            let bytes = octets(value);
            if let Some(is_kind) = kind_of(field) {
                let message = MlsMessageIn::tls_deserialize_exact(&bytes)
                    .unwrap_or_else(|e| panic!("#{i} {field}: {e:?}"));
                assert_eq!(
                    message.tls_serialize_detached().unwrap(),
                    bytes,
                    "#{i} {field} does not encode back to the same octets"
                );
                assert!(is_kind(&message.extract()), "#{i} {field}: another kind");
                decoded += 1;
            } else if field == "ratchet_tree" {
                let tree = RatchetTreeIn::tls_deserialize_exact(&bytes)
                    .unwrap_or_else(|e| panic!("#{i} {field}: {e:?}"));
                assert_eq!(
                    tree.tls_serialize_detached().unwrap(),
                    bytes,
                    "#{i} {field}"
                );
                trees += 1;
            }
        }
    }
    eprintln!("messages.json: {decoded} MLS messages and {trees} ratchet trees");
    assert_eq!((decoded, trees), (300 * 7, 300));
}

#[test]
fn ietf_vectors_tree_validation_trees_verify() {
    let crypto = RustCrypto::default();
    let (mut verified, mut unsupported) = (0, 0);
    for (i, vector) in vectors("tree-validation.json").iter().enumerate() {
        let suite = Ciphersuite::try_from(vector["cipher_suite"].as_u64().unwrap() as u16).ok();
        let Some(suite) = suite.filter(|s| crypto.supports(*s).is_ok()) else {
            unsupported += 1;
            continue;
        };
        let bytes = octets(&vector["tree"]);
        let tree =
            RatchetTreeIn::tls_deserialize_exact(&bytes).unwrap_or_else(|e| panic!("#{i}: {e:?}"));
        assert_eq!(tree.tls_serialize_detached().unwrap(), bytes, "#{i}");
        let group_id = GroupId::from_slice(&octets(&vector["group_id"]));
        tree.into_verified(suite, &crypto, &group_id)
            .unwrap_or_else(|e| panic!("#{i} (suite {suite:?}) does not verify: {e:?}"));
        verified += 1;
    }
    eprintln!(
        "tree-validation.json: {verified} trees verified, {unsupported} of unsupported suites"
    );
    assert!(verified > 0);
}
