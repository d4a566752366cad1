//! openmls's state for the profile: the in-memory key-value store of `openmls_memory_storage`,
//! behind a [`StorageProvider`] that gives an error where that store would panic.
//!
//! `MemoryStorage` unwraps the parsing of several records (the ratchet tree, the group context,
//! the transcript hash, the confirmation tag, signature and epoch key pairs, the lists of queued
//! proposals and own leaf nodes). Our records come from the profile on disk: one damaged or
//! written by another version must give a clear error, not end the process. [`CheckedStorage`]
//! reads those records itself, with the same keys, and passes every other call on unchanged.
//! (The delegating methods follow the trait's declarations one for one.)
//!
//! `MemoryStorage` writes every record as JSON, where a byte string is an array of decimal
//! numbers. The two records that grow with the group — the ratchet tree, and the message secrets
//! with the member list of each past epoch kept — are written here as CBOR (RFC 8949) instead,
//! after a [`CBOR`] byte: in a 1,000-member post-quantum group they were some 30 MB of JSON,
//! written again with every commit and every message received. Records are read in either
//! form, so a profile's JSON records stay readable and become CBOR when next written.

use std::collections::HashMap;
use std::sync::RwLock;

use openmls_memory_storage::{MemoryStorage, MemoryStorageError};
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider, traits};
use serde::Serialize;
use serde::de::DeserializeOwned;

// The labels `MemoryStorage` files these records under (its private constants).
const TREE: &[u8] = b"Tree";
const GROUP_CONTEXT: &[u8] = b"GroupContext";
const INTERIM_TRANSCRIPT_HASH: &[u8] = b"InterimTranscriptHash";
const CONFIRMATION_TAG: &[u8] = b"ConfirmationTag";
const SIGNATURE_KEY_PAIR: &[u8] = b"SignatureKeyPair";
const EPOCH_KEY_PAIRS: &[u8] = b"EpochKeyPairs";
const QUEUED_PROPOSAL: &[u8] = b"QueuedProposal";
const PROPOSAL_QUEUE_REFS: &[u8] = b"ProposalQueueRefs";
const OWN_LEAF_NODES: &[u8] = b"OwnLeafNodes";
const MESSAGE_SECRETS: &[u8] = b"MessageSecrets";

/// The first byte of a record stored as CBOR. No JSON text starts with it.
pub const CBOR: u8 = 0;

/// A record as stored: CBOR after a [`CBOR`] byte, or JSON (written by `MemoryStorage`, or by a
/// Sealpost before CBOR).
pub fn decode<V: DeserializeOwned>(record: &[u8]) -> Result<V, MemoryStorageError> {
    match record.split_first() {
        Some((&CBOR, cbor)) => {
            minicbor_serde::from_slice(cbor).map_err(|_| MemoryStorageError::SerializationError)
        }
        _ => serde_json::from_slice(record).map_err(|_| MemoryStorageError::SerializationError),
    }
}

/// `value` as a CBOR record.
fn encode(value: &impl Serialize) -> Result<Vec<u8>, MemoryStorageError> {
    let mut record = Record(vec![CBOR]);
    value
        .serialize(&mut minicbor_serde::Serializer::new(&mut record))
        .map_err(|_| MemoryStorageError::SerializationError)?;
    Ok(record.0)
}

/// A record being written. openmls's byte strings reach the encoder one byte at a time (serde
/// sees them as sequences of numbers), and each becomes one or two bytes of CBOR: pushed rather
/// than copied as a slice (a call to `memmove` each), a member of a 1,000-member group
/// processes an add in some 15 % less time.
struct Record(Vec<u8>);

impl minicbor::encode::Write for Record {
    type Error = std::convert::Infallible;

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        if let [one] = buf {
            self.0.push(*one);
        } else {
            self.0.extend_from_slice(buf);
        }
        Ok(())
    }
}

/// `MemoryStorage` that returns an error for a record it cannot parse.
#[derive(Default)]
pub struct CheckedStorage(MemoryStorage);

impl CheckedStorage {
    /// A store holding `values` (keys and values as `MemoryStorage` writes them).
    pub fn new(values: HashMap<Vec<u8>, Vec<u8>>) -> Self {
        Self(MemoryStorage {
            values: RwLock::new(values),
        })
    }

    /// The records, keyed as `MemoryStorage` keys them.
    pub fn values(&self) -> &RwLock<HashMap<Vec<u8>, Vec<u8>>> {
        &self.0.values
    }

    /// The record under `label` and `key` (as [`decode`] reads it), parsed.
    fn value<V: DeserializeOwned>(
        &self,
        label: &[u8],
        key: &[u8],
    ) -> Result<Option<V>, MemoryStorageError> {
        let values = self
            .0
            .values
            .read()
            .map_err(|_| MemoryStorageError::SerializationError)?;
        values
            .get(&storage_key(label, key))
            .map(|v| decode(v))
            .transpose()
    }

    /// Stores `value` under `label` and `key` as CBOR.
    fn put(
        &self,
        label: &[u8],
        key: &[u8],
        value: &impl Serialize,
    ) -> Result<(), MemoryStorageError> {
        let record = encode(value)?;
        self.0
            .values
            .write()
            .map_err(|_| MemoryStorageError::SerializationError)?
            .insert(storage_key(label, key), record);
        Ok(())
    }

    /// The list under `label` and `key`, each item parsed.
    fn list<V: DeserializeOwned>(
        &self,
        label: &[u8],
        key: &[u8],
    ) -> Result<Vec<V>, MemoryStorageError> {
        let items: Vec<Vec<u8>> = self.value(label, key)?.unwrap_or_default();
        items
            .iter()
            .map(|item| serde_json::from_slice(item))
            .collect::<Result<_, _>>()
            .map_err(|_| MemoryStorageError::SerializationError)
    }
}

/// Where `MemoryStorage` files the record under `label` and `key`.
fn storage_key(label: &[u8], key: &[u8]) -> Vec<u8> {
    let mut at = label.to_vec();
    at.extend_from_slice(key);
    at.extend_from_slice(&CURRENT_VERSION.to_be_bytes());
    at
}

fn json(key: &impl Serialize) -> Result<Vec<u8>, MemoryStorageError> {
    Ok(serde_json::to_vec(key)?)
}

impl StorageProvider<CURRENT_VERSION> for CheckedStorage {
    type Error = MemoryStorageError;

    // ---- the records `MemoryStorage` would unwrap --------------------------------------

    fn tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<TreeSync>, Self::Error> {
        self.value(TREE, &json(group_id)?)
    }

    fn group_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupContext>, Self::Error> {
        self.value(GROUP_CONTEXT, &json(group_id)?)
    }

    fn interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<InterimTranscriptHash>, Self::Error> {
        self.value(INTERIM_TRANSCRIPT_HASH, &json(group_id)?)
    }

    fn confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ConfirmationTag>, Self::Error> {
        self.value(CONFIRMATION_TAG, &json(group_id)?)
    }

    fn signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<Option<SignatureKeyPair>, Self::Error> {
        self.value(SIGNATURE_KEY_PAIR, &json(public_key)?)
    }

    fn encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<Vec<HpkeKeyPair>, Self::Error> {
        let mut key = json(group_id)?;
        key.extend(json(epoch)?);
        key.extend(json(&leaf_index)?);
        Ok(self.value(EPOCH_KEY_PAIRS, &key)?.unwrap_or_default())
    }

    fn queued_proposal_refs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<ProposalRef>, Self::Error> {
        self.list(PROPOSAL_QUEUE_REFS, &json(group_id)?)
    }

    fn queued_proposals<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<(ProposalRef, QueuedProposal)>, Self::Error> {
        let refs: Vec<ProposalRef> = self.list(PROPOSAL_QUEUE_REFS, &json(group_id)?)?;
        refs.into_iter()
            .map(|r| {
                // A queued reference without its proposal: damaged.
                let proposal = self
                    .value(QUEUED_PROPOSAL, &json(&(group_id, &r))?)?
                    .ok_or(MemoryStorageError::SerializationError)?;
                Ok((r, proposal))
            })
            .collect()
    }

    fn own_leaf_nodes<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<LeafNode>, Self::Error> {
        self.list(OWN_LEAF_NODES, &json(group_id)?)
    }

    fn clear_proposal_queue<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        // `MemoryStorage` unwraps the list of references: check that it parses first.
        self.list::<ProposalRef>(PROPOSAL_QUEUE_REFS, &json(group_id)?)?;
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::clear_proposal_queue::<
            GroupId,
            ProposalRef,
        >(&self.0, group_id)
    }

    // ---- everything else, passed on ----------------------------------------------------

    fn write_mls_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        config: &MlsGroupJoinConfig,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::write_mls_join_config(
            &self.0, group_id, config,
        )
    }

    fn append_own_leaf_node<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        leaf_node: &LeafNode,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::append_own_leaf_node(
            &self.0, group_id, leaf_node,
        )
    }

    fn queue_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
        proposal: &QueuedProposal,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::queue_proposal(
            &self.0,
            group_id,
            proposal_ref,
            proposal,
        )
    }

    fn write_tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        tree: &TreeSync,
    ) -> Result<(), Self::Error> {
        self.put(TREE, &json(group_id)?, tree)
    }

    fn write_interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        interim_transcript_hash: &InterimTranscriptHash,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::write_interim_transcript_hash(
            &self.0,
            group_id,
            interim_transcript_hash,
        )
    }

    fn write_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_context: &GroupContext,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::write_context(
            &self.0,
            group_id,
            group_context,
        )
    }

    fn write_confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        confirmation_tag: &ConfirmationTag,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::write_confirmation_tag(
            &self.0,
            group_id,
            confirmation_tag,
        )
    }

    fn write_group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_state: &GroupState,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::write_group_state(
            &self.0,
            group_id,
            group_state,
        )
    }

    fn write_message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        message_secrets: &MessageSecrets,
    ) -> Result<(), Self::Error> {
        self.put(MESSAGE_SECRETS, &json(group_id)?, message_secrets)
    }

    fn write_resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        resumption_psk_store: &ResumptionPskStore,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::write_resumption_psk_store(
            &self.0,
            group_id,
            resumption_psk_store,
        )
    }

    fn write_own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        own_leaf_index: &LeafNodeIndex,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::write_own_leaf_index(
            &self.0,
            group_id,
            own_leaf_index,
        )
    }

    fn write_group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_epoch_secrets: &GroupEpochSecrets,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::write_group_epoch_secrets(
            &self.0,
            group_id,
            group_epoch_secrets,
        )
    }

    fn write_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
        signature_key_pair: &SignatureKeyPair,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::write_signature_key_pair(
            &self.0,
            public_key,
            signature_key_pair,
        )
    }

    fn write_encryption_key_pair<
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
        key_pair: &HpkeKeyPair,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::write_encryption_key_pair(
            &self.0, public_key, key_pair,
        )
    }

    fn write_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
        key_pairs: &[HpkeKeyPair],
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::write_encryption_epoch_key_pairs(
            &self.0, group_id, epoch, leaf_index, key_pairs,
        )
    }

    fn write_key_package<
        HashReference: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &HashReference,
        key_package: &KeyPackage,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::write_key_package(
            &self.0,
            hash_ref,
            key_package,
        )
    }

    fn write_psk<
        PskId: traits::PskId<CURRENT_VERSION>,
        PskBundle: traits::PskBundle<CURRENT_VERSION>,
    >(
        &self,
        psk_id: &PskId,
        psk: &PskBundle,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::write_psk(&self.0, psk_id, psk)
    }

    fn mls_group_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MlsGroupJoinConfig>, Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::mls_group_join_config(
            &self.0, group_id,
        )
    }

    fn group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupState>, Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::group_state(&self.0, group_id)
    }

    fn message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MessageSecrets>, Self::Error> {
        self.value(MESSAGE_SECRETS, &json(group_id)?)
    }

    fn resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ResumptionPskStore>, Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::resumption_psk_store(&self.0, group_id)
    }

    fn own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<LeafNodeIndex>, Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::own_leaf_index(&self.0, group_id)
    }

    fn group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupEpochSecrets>, Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::group_epoch_secrets(&self.0, group_id)
    }

    fn encryption_key_pair<
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<Option<HpkeKeyPair>, Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::encryption_key_pair(
            &self.0, public_key,
        )
    }

    fn key_package<
        KeyPackageRef: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<Option<KeyPackage>, Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::key_package(&self.0, hash_ref)
    }

    fn psk<PskBundle: traits::PskBundle<CURRENT_VERSION>, PskId: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskId,
    ) -> Result<Option<PskBundle>, Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::psk(&self.0, psk_id)
    }

    fn remove_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::remove_proposal(
            &self.0,
            group_id,
            proposal_ref,
        )
    }

    fn delete_own_leaf_nodes<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::delete_own_leaf_nodes(
            &self.0, group_id,
        )
    }

    fn delete_group_config<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::delete_group_config(&self.0, group_id)
    }

    fn delete_tree<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::delete_tree(&self.0, group_id)
    }

    fn delete_confirmation_tag<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::delete_confirmation_tag(
            &self.0, group_id,
        )
    }

    fn delete_group_state<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::delete_group_state(&self.0, group_id)
    }

    fn delete_context<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::delete_context(&self.0, group_id)
    }

    fn delete_interim_transcript_hash<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::delete_interim_transcript_hash(
            &self.0, group_id,
        )
    }

    fn delete_message_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::delete_message_secrets(
            &self.0, group_id,
        )
    }

    fn delete_all_resumption_psk_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::delete_all_resumption_psk_secrets(
            &self.0, group_id,
        )
    }

    fn delete_own_leaf_index<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::delete_own_leaf_index(
            &self.0, group_id,
        )
    }

    fn delete_group_epoch_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::delete_group_epoch_secrets(
            &self.0, group_id,
        )
    }

    fn delete_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::delete_signature_key_pair(
            &self.0, public_key,
        )
    }

    fn delete_encryption_key_pair<EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::delete_encryption_key_pair(
            &self.0, public_key,
        )
    }

    fn delete_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::delete_encryption_epoch_key_pairs(
            &self.0, group_id, epoch, leaf_index,
        )
    }

    fn delete_key_package<KeyPackageRef: traits::HashReference<CURRENT_VERSION>>(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::delete_key_package(&self.0, hash_ref)
    }

    fn delete_psk<PskKey: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskKey,
    ) -> Result<(), Self::Error> {
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::delete_psk(&self.0, psk_id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use openmls::prelude::*;
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;
    use openmls_traits::OpenMlsProvider;

    use crate::store::Provider;

    use super::*;

    const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

    fn member(name: &str, p: &impl OpenMlsProvider) -> (CredentialWithKey, SignatureKeyPair) {
        let keys = SignatureKeyPair::new(SUITE.signature_algorithm()).unwrap();
        keys.store(p.storage()).unwrap();
        let credential = CredentialWithKey {
            credential: BasicCredential::new(name.into()).into(),
            signature_key: keys.public().into(),
        };
        (credential, keys)
    }

    /// The first byte of the record filed under `label` (and the group) in `values`.
    fn first_byte(values: &HashMap<Vec<u8>, Vec<u8>>, label: &[u8]) -> u8 {
        let (_, record) = values.iter().find(|(k, _)| k.starts_with(label)).unwrap();
        record[0]
    }

    /// A member whose state was written as JSON by `MemoryStorage` (as by a Sealpost before
    /// CBOR) goes on from it: it reads the JSON records, and those it writes again are CBOR,
    /// read back in their turn.
    #[test]
    fn json_records_are_read_and_written_again_as_cbor() {
        let alice = OpenMlsRustCrypto::default();
        let (alice_id, alice_keys) = member("alice", &alice);
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(SUITE)
            .max_past_epochs(crate::MAX_PAST_EPOCHS)
            .use_ratchet_tree_extension(true)
            .build();
        let mut group = MlsGroup::new(&alice, &alice_keys, &config, alice_id).unwrap();
        let old = OpenMlsRustCrypto::default();
        let (bob_id, bob_keys) = member("bob", &old);
        let package = KeyPackage::builder()
            .build(SUITE, &old, &bob_keys, bob_id)
            .unwrap();
        let (_, welcome, _) = group
            .add_members(&alice, &alice_keys, &[package.key_package().clone()])
            .unwrap();
        group.merge_pending_commit(&alice).unwrap();
        let welcome = match MlsMessageIn::from(welcome).extract() {
            MlsMessageBodyIn::Welcome(w) => w,
            _ => unreachable!(),
        };
        let join = MlsGroupJoinConfig::builder()
            .max_past_epochs(crate::MAX_PAST_EPOCHS)
            .use_ratchet_tree_extension(true)
            .build();
        StagedWelcome::new_from_welcome(&old, &join, welcome, None)
            .unwrap()
            .into_group(&old)
            .unwrap();
        let json = old.storage().values.read().unwrap().clone();
        assert_eq!(first_byte(&json, TREE), b'{');
        assert_eq!(first_byte(&json, MESSAGE_SECRETS), b'{');

        // Bob's state, now under `CheckedStorage`.
        let bob = Provider::on(CheckedStorage::new(json));
        let id = group.group_id().clone();
        let receive = |bob: &Provider, message: MlsMessageOut| {
            let mut g = MlsGroup::load(bob.storage(), &id).unwrap().unwrap();
            let message = MlsMessageIn::from(message)
                .try_into_protocol_message()
                .unwrap();
            match g.process_message(bob, message).unwrap().into_content() {
                ProcessedMessageContent::ApplicationMessage(m) => Some(m.into_bytes()),
                ProcessedMessageContent::StagedCommitMessage(staged) => {
                    g.merge_staged_commit(bob, *staged).unwrap();
                    None
                }
                _ => unreachable!(),
            }
        };
        let hello = group.create_message(&alice, &alice_keys, b"hello").unwrap();
        assert_eq!(receive(&bob, hello).unwrap(), b"hello");
        let values = bob.storage().values().read().unwrap().clone();
        assert_eq!(first_byte(&values, MESSAGE_SECRETS), CBOR);
        assert_eq!(first_byte(&values, TREE), b'{');

        // A commit rewrites the tree; both records are read as CBOR from then on.
        let (commit, _, _) = group
            .self_update(&alice, &alice_keys, LeafNodeParameters::default())
            .unwrap()
            .into_contents();
        group.merge_pending_commit(&alice).unwrap();
        assert!(receive(&bob, commit).is_none());
        let values = bob.storage().values().read().unwrap().clone();
        assert_eq!(first_byte(&values, TREE), CBOR);
        let again = group.create_message(&alice, &alice_keys, b"again").unwrap();
        assert_eq!(receive(&bob, again).unwrap(), b"again");
        let g = MlsGroup::load(bob.storage(), &id).unwrap().unwrap();
        assert_eq!(g.epoch(), group.epoch());
        assert_eq!(g.members().count(), 2);
    }

    /// A damaged CBOR record is an error, never a panic; so is one that is neither form.
    #[test]
    fn damaged_records_are_errors() {
        let good = encode(&vec![1u8, 2, 3]).unwrap();
        assert_eq!(decode::<Vec<u8>>(&good).unwrap(), vec![1, 2, 3]);
        assert_eq!(decode::<Vec<u8>>(b"[1,2,3]").unwrap(), vec![1, 2, 3]);
        for bad in [&good[..good.len() - 1], &[CBOR], &[], b"\xff\x00"] {
            assert!(decode::<Vec<u8>>(bad).is_err(), "{bad:?}");
        }
        // A field the type does not have, nested a million arrays deep, is skipped without
        // running out of stack.
        #[derive(serde::Deserialize)]
        struct One {
            #[allow(dead_code, reason = "only decoded")]
            a: u8,
        }
        let mut deep = vec![CBOR, 0xa2, 0x61, b'x'];
        deep.extend(std::iter::repeat_n(0x81, 1_000_000));
        deep.extend([0x00, 0x61, b'a', 0x01]);
        assert_eq!(decode::<One>(&deep).unwrap().a, 1);
    }
}
