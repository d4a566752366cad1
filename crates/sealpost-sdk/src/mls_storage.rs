//! openmls's state for the profile: the in-memory key-value store of `openmls_memory_storage`,
//! behind a [`StorageProvider`] that gives an error where that store would panic.
//!
//! `MemoryStorage` unwraps the parsing of several records (the ratchet tree, the group context,
//! the transcript hash, the confirmation tag, signature and epoch key pairs, the lists of queued
//! proposals and own leaf nodes). Our records come from the profile on disk: one damaged or
//! written by another version must give a clear error, not end the process. [`CheckedStorage`]
//! reads those records itself, with the same keys, and passes every other call on unchanged.
//! (The delegating methods follow the trait's declarations one for one.)

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

    /// The record under `label` and `key` (JSON, as `MemoryStorage` writes it), parsed.
    fn value<V: DeserializeOwned>(
        &self,
        label: &[u8],
        key: &[u8],
    ) -> Result<Option<V>, MemoryStorageError> {
        let mut at = label.to_vec();
        at.extend_from_slice(key);
        at.extend_from_slice(&CURRENT_VERSION.to_be_bytes());
        let values = self
            .0
            .values
            .read()
            .map_err(|_| MemoryStorageError::SerializationError)?;
        values
            .get(&at)
            .map(|v| serde_json::from_slice(v))
            .transpose()
            .map_err(|_| MemoryStorageError::SerializationError)
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
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::write_tree(&self.0, group_id, tree)
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
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::write_message_secrets(
            &self.0,
            group_id,
            message_secrets,
        )
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
        <MemoryStorage as StorageProvider<CURRENT_VERSION>>::message_secrets(&self.0, group_id)
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
