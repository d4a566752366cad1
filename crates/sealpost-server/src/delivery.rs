//! The delivery service's logic: who may post what to which group, in which order.
//!
//! Application messages must be MLS PrivateMessages: the server checks only the cleartext header
//! (group, epoch, content type) and that the sender is a current member, then appends them.
//! Handshake messages (commits, and the Remove proposal a member sends to leave) must be
//! PublicMessages: the server validates them against its copy of the group's public state
//! (openmls `PublicGroup`), accepts exactly one commit per epoch, and derives membership changes
//! from the validated commit, never from anything the client claims beside it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use openmls::prelude::{
    BasicCredential, ContentType, Credential, GroupId as MlsGroupId, HashType, MlsMessageBodyIn,
    MlsMessageIn, ProcessedMessageContent, Proposal, ProposalStore, ProtocolMessage, PublicGroup,
    Sender, WireFormat,
};
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto as _;
use sealpost_proto::{
    CommitUpload, Delivery, DeliveryKind, DeviceId, DeviceIdentity, GroupId, PostedResponse,
};
use tls_codec::Deserialize as _;

use crate::error::ApiFailure;
use crate::metrics::Metrics;
use crate::push::Hub;
use crate::storage::{Appended, HandshakeWrite, NewGroup, Store, StoreError};

/// The ciphersuites the server accepts for new groups.
pub const ALLOWED_CIPHERSUITES: [openmls::prelude::Ciphersuite; 2] = [
    openmls::prelude::Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519,
    openmls::prelude::Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519,
];

/// A group's public state, loaded.
struct LoadedGroup {
    storage: MemoryStorage,
    public: PublicGroup,
    /// Current member devices (the push audience).
    devices: Arc<Vec<DeviceId>>,
}

/// The delivery service.
pub struct DeliveryService {
    store: Arc<dyn Store>,
    crypto: RustCrypto,
    groups: Mutex<HashMap<GroupId, Arc<tokio::sync::Mutex<Option<LoadedGroup>>>>>,
    hub: Hub,
    metrics: Arc<Metrics>,
    max_group_size: usize,
}

fn bad(msg: &str) -> ApiFailure {
    ApiFailure::bad_request(msg)
}

/// The device named by an MLS credential.
pub fn credential_device(credential: &Credential) -> Option<DeviceIdentity> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    DeviceIdentity::from_credential_bytes(basic.identity()).ok()
}

/// Serializes a [`MemoryStorage`] (sorted, so equal states give equal bytes).
fn encode_state(storage: &MemoryStorage) -> Result<Vec<u8>, ApiFailure> {
    let values = storage.values.read().map_err(|_| ApiFailure::internal())?;
    let mut entries: Vec<_> = values.iter().collect();
    entries.sort();
    let mut out = Vec::new();
    for (k, v) in entries {
        for part in [k, v] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    Ok(out)
}

fn decode_state(mut bytes: &[u8]) -> Option<MemoryStorage> {
    let mut map = HashMap::new();
    let take = |bytes: &mut &[u8]| -> Option<Vec<u8>> {
        let (len, rest) = bytes.split_at_checked(4)?;
        let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
        let (part, rest) = rest.split_at_checked(len)?;
        *bytes = rest;
        Some(part.to_vec())
    };
    while !bytes.is_empty() {
        let k = take(&mut bytes)?;
        let v = take(&mut bytes)?;
        map.insert(k, v);
    }
    Some(MemoryStorage {
        values: std::sync::RwLock::new(map),
    })
}

fn member_devices(public: &PublicGroup) -> Vec<DeviceId> {
    public
        .members()
        .filter_map(|m| credential_device(&m.credential).map(|d| d.device_id))
        .collect()
}

fn parse_protocol_message(bytes: &[u8]) -> Result<ProtocolMessage, ApiFailure> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|_| bad("the body is not an MLS message"))?;
    msg.try_into_protocol_message()
        .map_err(|_| bad("expected an MLS PublicMessage or PrivateMessage"))
}

impl DeliveryService {
    /// Creates the service.
    pub fn new(
        store: Arc<dyn Store>,
        hub: Hub,
        metrics: Arc<Metrics>,
        max_group_size: usize,
    ) -> Self {
        Self {
            store,
            crypto: RustCrypto::default(),
            groups: Mutex::new(HashMap::new()),
            hub,
            metrics,
            max_group_size,
        }
    }

    /// The push hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn slot(
        &self,
        group: GroupId,
    ) -> Result<Arc<tokio::sync::Mutex<Option<LoadedGroup>>>, ApiFailure> {
        let mut groups = self.groups.lock().map_err(|_| ApiFailure::internal())?;
        Ok(groups.entry(group).or_default().clone())
    }

    async fn load(&self, group: GroupId, slot: &mut Option<LoadedGroup>) -> Result<(), ApiFailure> {
        if slot.is_some() {
            return Ok(());
        }
        let record = self
            .store
            .group(group)
            .await?
            .ok_or_else(|| ApiFailure::not_found("no such group"))?;
        let storage = decode_state(&record.state).ok_or_else(ApiFailure::internal)?;
        let public = PublicGroup::load(&storage, &MlsGroupId::from_slice(group.as_bytes()))
            .map_err(|_| ApiFailure::internal())?
            .ok_or_else(ApiFailure::internal)?;
        let devices = Arc::new(member_devices(&public));
        *slot = Some(LoadedGroup {
            storage,
            public,
            devices,
        });
        Ok(())
    }

    /// Registers a new group from its creator's epoch-0 GroupInfo (with the ratchet tree
    /// extension). The creator must be its only member.
    pub async fn create_group(
        &self,
        creator: &DeviceIdentity,
        body: &[u8],
    ) -> Result<GroupId, ApiFailure> {
        let msg = MlsMessageIn::tls_deserialize_exact(body)
            .map_err(|_| bad("the body is not an MLS message"))?;
        let MlsMessageBodyIn::GroupInfo(info) = msg.extract() else {
            return Err(bad("expected an MLS GroupInfo"));
        };
        if !ALLOWED_CIPHERSUITES.contains(&info.ciphersuite()) {
            return Err(bad("unsupported ciphersuite"));
        }
        let group = GroupId::from_slice(info.group_id().as_slice())
            .map_err(|_| bad("the group id must be 16 bytes"))?;
        if info.epoch().as_u64() != 0 {
            return Err(bad("a new group starts at epoch 0"));
        }
        let tree = info
            .extensions()
            .ratchet_tree()
            .ok_or_else(|| bad("the GroupInfo must carry the ratchet tree"))?
            .ratchet_tree()
            .clone();
        let storage = MemoryStorage::default();
        let (public, _) =
            PublicGroup::from_external(&self.crypto, &storage, tree, info, ProposalStore::new())
                .map_err(|_| bad("the GroupInfo or ratchet tree does not verify"))?;
        let members: Vec<_> = public.members().collect();
        let creator_ok = members.len() == 1
            && credential_device(&members[0].credential).as_ref() == Some(creator)
            && self
                .device_key_matches(creator.device_id, &members[0].signature_key)
                .await?;
        if !creator_ok {
            return Err(ApiFailure::forbidden(
                "the creator must be the group's only member",
            ));
        }
        let state = encode_state(&storage)?;
        self.store
            .create_group(NewGroup {
                group_id: group,
                creator: creator.device_id,
                state,
            })
            .await?;
        Ok(group)
    }

    async fn device_key_matches(&self, device: DeviceId, key: &[u8]) -> Result<bool, ApiFailure> {
        Ok(self
            .store
            .device(device)
            .await?
            .is_some_and(|d| d.device_key == key))
    }

    /// Appends an application message (a PrivateMessage), or a member's Remove proposal for
    /// itself (leaving), and pushes it to the group's other devices.
    pub async fn post_message(
        &self,
        sender: &DeviceIdentity,
        group: GroupId,
        body: Vec<u8>,
    ) -> Result<PostedResponse, ApiFailure> {
        let msg = parse_protocol_message(&body)?;
        if msg.group_id().as_slice() != group.as_bytes() {
            return Err(bad("the message is for another group"));
        }
        match (msg.wire_format(), msg.content_type()) {
            (WireFormat::PrivateMessage, ContentType::Application) => {}
            (WireFormat::PublicMessage, ContentType::Proposal) => {
                return self.post_handshake(sender, group, msg, body, None).await;
            }
            _ => {
                return Err(bad(
                    "application messages must be PrivateMessages; commits go to /commits",
                ));
            }
        }
        let digest: [u8; 32] = self
            .crypto
            .hash(HashType::Sha2_256, &body)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(ApiFailure::internal)?;
        let write = self.metrics.storage_write();
        let appended = self
            .store
            .append_message(group, sender.device_id, body.clone(), digest)
            .await;
        drop(write);
        let appended = appended?;
        if appended.repeated {
            // A retry of a message already stored (its first answer was lost): pushed then.
            return Ok(PostedResponse {
                seq: appended.seq,
                sent_at: appended.sent_at,
            });
        }
        self.metrics.messages_accepted.inc();
        // Stored: from here on the answer is success whatever happens (an error would tell the
        // sender it was not stored). Push is a shortcut; the members catch up by syncing.
        match self.audience(group, appended.epoch).await {
            Ok(audience) => self.push_group(
                group,
                &appended,
                body,
                audience.iter().filter(|d| **d != sender.device_id),
            ),
            Err(e) => {
                tracing::warn!(error = %e.to_api_error().message, "stored a message but could not push it")
            }
        }
        Ok(PostedResponse {
            seq: appended.seq,
            sent_at: appended.sent_at,
        })
    }

    /// Validates and appends a commit (with its Welcome, if it adds members).
    pub async fn post_commit(
        &self,
        sender: &DeviceIdentity,
        group: GroupId,
        body: &[u8],
    ) -> Result<PostedResponse, ApiFailure> {
        let upload = CommitUpload::tls_deserialize_exact(body)
            .map_err(|_| bad("malformed commit upload"))?;
        let commit_bytes = upload.commit.as_slice().to_vec();
        let msg = parse_protocol_message(&commit_bytes)?;
        if msg.group_id().as_slice() != group.as_bytes() {
            return Err(bad("the commit is for another group"));
        }
        if msg.wire_format() != WireFormat::PublicMessage
            || msg.content_type() != ContentType::Commit
        {
            return Err(bad(
                "a commit must be an MLS PublicMessage carrying a Commit",
            ));
        }
        let welcome = if upload.welcome.as_slice().is_empty() {
            None
        } else {
            let w = MlsMessageIn::tls_deserialize_exact(upload.welcome.as_slice())
                .map_err(|_| bad("the Welcome is not an MLS message"))?;
            if !matches!(w.extract(), MlsMessageBodyIn::Welcome(_)) {
                return Err(bad("expected an MLS Welcome"));
            }
            Some(upload.welcome.as_slice().to_vec())
        };
        self.post_handshake(sender, group, msg, commit_bytes, welcome)
            .await
    }

    async fn post_handshake(
        &self,
        sender: &DeviceIdentity,
        group: GroupId,
        msg: ProtocolMessage,
        payload: Vec<u8>,
        welcome: Option<Vec<u8>>,
    ) -> Result<PostedResponse, ApiFailure> {
        let slot = self.slot(group)?;
        let mut guard = slot.lock().await;
        // The cached state may be behind when other nodes share the store: a message that does
        // not fit it is checked once more against the stored state before it is refused.
        let mut fresh = guard.is_none();
        let mut msg = Some(msg);
        let (epoch, processed) = loop {
            self.load(group, &mut guard).await?;
            let Some(loaded) = guard.as_mut() else {
                return Err(ApiFailure::internal());
            };
            let epoch = loaded.public.group_context().epoch().as_u64();
            let built_on = msg.as_ref().map(|m| m.epoch().as_u64());
            let failure: ApiFailure = if built_on != Some(epoch) {
                StoreError::EpochConflict { current: epoch }.into()
            } else {
                // A copy is kept only while a second try against the stored state is possible.
                let attempt = if fresh { msg.take() } else { msg.clone() }
                    .ok_or_else(ApiFailure::internal)?;
                match loaded.public.process_message(&self.crypto, attempt) {
                    Ok(processed) => break (epoch, processed),
                    Err(_) => {
                        bad("the handshake message does not validate against the group state")
                    }
                }
            };
            if fresh {
                return Err(failure);
            }
            *guard = None;
            fresh = true;
        };
        let Some(loaded) = guard.as_mut() else {
            return Err(ApiFailure::internal());
        };
        let Sender::Member(sender_leaf) = *processed.sender() else {
            return Err(ApiFailure::forbidden(
                "only members may send handshake messages",
            ));
        };
        if credential_device(processed.credential()).as_ref() != Some(sender) {
            return Err(ApiFailure::forbidden(
                "the message is signed by another device",
            ));
        }
        let mut added = Vec::new();
        let mut removed = Vec::new();
        match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                for add in staged.add_proposals() {
                    let leaf = add.add_proposal().key_package().leaf_node();
                    let device = credential_device(leaf.credential())
                        .ok_or_else(|| bad("an added member has no Sealpost device credential"))?;
                    if !self
                        .device_key_matches(device.device_id, leaf.signature_key().as_slice())
                        .await?
                    {
                        return Err(ApiFailure::forbidden(
                            "an added device is not registered with this key",
                        ));
                    }
                    added.push(device.device_id);
                }
                for remove in staged.remove_proposals() {
                    let leaf = loaded
                        .public
                        .leaf(remove.remove_proposal().removed())
                        .ok_or_else(|| bad("removes an empty leaf"))?;
                    if let Some(d) = credential_device(leaf.credential()) {
                        removed.push(d.device_id);
                    }
                }
                let size_after = loaded.public.members().count() + added.len() - removed.len();
                if size_after > self.max_group_size {
                    return Err(ApiFailure::too_large(
                        "the group would exceed the server's member limit",
                    ));
                }
                if !added.is_empty() && welcome.is_none() {
                    return Err(bad("a commit that adds members needs a Welcome"));
                }
                loaded
                    .public
                    .merge_commit(&loaded.storage, *staged)
                    .map_err(|_| ApiFailure::internal())?;
            }
            ProcessedMessageContent::ProposalMessage(queued) => {
                let own_removal =
                    matches!(queued.proposal(), Proposal::Remove(r) if r.removed() == sender_leaf);
                if !own_removal {
                    return Err(bad(
                        "the only standalone proposal accepted is a member removing itself",
                    ));
                }
                loaded
                    .public
                    .add_proposal(&loaded.storage, *queued)
                    .map_err(|_| ApiFailure::internal())?;
            }
            _ => return Err(bad("expected a commit or a proposal")),
        }
        let new_epoch = loaded.public.group_context().epoch().as_u64();
        let state = encode_state(&loaded.storage)?;
        let write = self.metrics.storage_write();
        let result = self
            .store
            .append_handshake(HandshakeWrite {
                group_id: group,
                sender: sender.device_id,
                epoch,
                new_epoch,
                payload: payload.clone(),
                state,
                added,
                removed: removed.clone(),
                welcome,
            })
            .await;
        drop(write);
        let appended = match result {
            Ok(a) => a,
            Err(e) => {
                // The in-memory state ran ahead of the store: reload it next time.
                *guard = None;
                return Err(e.into());
            }
        };
        let before = loaded.devices.clone();
        loaded.devices = Arc::new(member_devices(&loaded.public));
        drop(guard);
        self.metrics.commits_accepted.inc();
        // Everyone who was a member before this message sees it, the removed included.
        self.push_group(
            group,
            &appended,
            payload,
            before.iter().filter(|d| **d != sender.device_id),
        );
        // A Welcome is pushed as a notice, without its bytes: the device fetches it (one stored
        // copy for all the devices it adds) in the sync the notice starts. A group created with
        // a thousand members would otherwise copy a megabyte-sized Welcome a thousand times.
        for (device, inbox_seq) in &appended.welcomes {
            let frame = Delivery {
                kind: DeliveryKind::Inbox,
                inbox_seq: *inbox_seq,
                group_id: *group.as_bytes(),
                group_seq: appended.seq,
                sent_at: appended.sent_at,
                payload: Vec::new().into(),
            };
            self.hub.push(std::iter::once(device), &frame);
        }
        Ok(PostedResponse {
            seq: appended.seq,
            sent_at: appended.sent_at,
        })
    }

    /// The group's member devices at `epoch`: another node may have moved the group on since
    /// this one cached it.
    async fn audience(&self, group: GroupId, epoch: u64) -> Result<Arc<Vec<DeviceId>>, ApiFailure> {
        let slot = self.slot(group)?;
        let mut guard = slot.lock().await;
        if guard
            .as_ref()
            .is_some_and(|g| g.public.group_context().epoch().as_u64() < epoch)
        {
            *guard = None;
        }
        self.load(group, &mut guard).await?;
        guard
            .as_ref()
            .map(|g| g.devices.clone())
            .ok_or_else(ApiFailure::internal)
    }

    fn push_group<'a>(
        &self,
        group: GroupId,
        appended: &Appended,
        payload: Vec<u8>,
        to: impl Iterator<Item = &'a DeviceId> + Clone,
    ) {
        let frame = Delivery {
            kind: DeliveryKind::Group,
            inbox_seq: 0,
            group_id: *group.as_bytes(),
            group_seq: appended.seq,
            sent_at: appended.sent_at,
            payload: payload.into(),
        };
        self.hub.push(to, &frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteStore;
    use crate::storage::{DeviceRecord, NewAccount};
    use openmls::prelude::{
        CredentialWithKey, LeafNodeParameters, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup,
        MlsGroupCreateConfig,
    };
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;
    use openmls_traits::OpenMlsProvider as _;
    use sealpost_proto::{ErrorCode, Username};
    use tls_codec::Serialize as _;

    struct Member {
        id: DeviceIdentity,
        signer: SignatureKeyPair,
        provider: OpenMlsRustCrypto,
        group: MlsGroup,
    }

    async fn member(store: &Arc<dyn Store>, name: &str, n: u8, group: [u8; 16]) -> Member {
        let provider = OpenMlsRustCrypto::default();
        let signer =
            SignatureKeyPair::new(openmls_traits::types::SignatureScheme::ED25519).unwrap();
        let id = DeviceIdentity {
            username: Username::new(name).unwrap(),
            device_id: DeviceId::from_bytes([n; 16]),
        };
        store
            .create_account(NewAccount {
                username: id.username.clone(),
                account_key: vec![n; 32],
                device: DeviceRecord {
                    device_id: id.device_id,
                    username: id.username.clone(),
                    device_key: signer.public().to_vec(),
                    certificate: vec![],
                },
                key_packages: vec![],
            })
            .await
            .unwrap();
        let cwk = CredentialWithKey {
            credential: BasicCredential::new(id.to_credential_bytes()).into(),
            signature_key: signer.public().into(),
        };
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(ALLOWED_CIPHERSUITES[1])
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .build();
        let group = MlsGroup::new_with_group_id(
            &provider,
            &signer,
            &config,
            MlsGroupId::from_slice(&group),
            cwk,
        )
        .unwrap();
        Member {
            id,
            signer,
            provider,
            group,
        }
    }

    fn self_update(m: &mut Member) -> Vec<u8> {
        let bundle = m
            .group
            .self_update(&m.provider, &m.signer, LeafNodeParameters::default())
            .unwrap();
        let commit = bundle.into_commit().tls_serialize_detached().unwrap();
        CommitUpload {
            commit: commit.into(),
            welcome: Vec::new().into(),
        }
        .tls_serialize_detached()
        .unwrap()
    }

    #[tokio::test]
    async fn future_epochs_and_strangers_commits_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
        let metrics = Arc::new(Metrics::default());
        let ds = DeliveryService::new(store.clone(), Hub::new(metrics.clone()), metrics, 100);
        let gid = [7u8; 16];
        let group = GroupId::from_bytes(gid);
        let mut alice = member(&store, "alice", 1, gid).await;
        let info = alice
            .group
            .export_group_info(alice.provider.crypto(), &alice.signer, true)
            .unwrap();
        ds.create_group(&alice.id, &info.tls_serialize_detached().unwrap())
            .await
            .unwrap();

        // A commit the server never sees moves alice's copy to epoch 1; her next commit is for a
        // future epoch as far as the server (at 0) knows.
        let epoch0 = self_update(&mut alice);
        alice.group.merge_pending_commit(&alice.provider).unwrap();
        let epoch1 = self_update(&mut alice);
        let err = ds.post_commit(&alice.id, group, &epoch1).await.unwrap_err();
        assert_eq!(err.to_api_error().code, ErrorCode::EpochConflict);

        // A stranger with a group of the same id, committing at the server's epoch: refused.
        let mut mallory = member(&store, "mallory", 2, gid).await;
        let forged = self_update(&mut mallory);
        let err = ds
            .post_commit(&mallory.id, group, &forged)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err.to_api_error().code,
                ErrorCode::BadRequest | ErrorCode::Forbidden
            ),
            "{err:?}"
        );
        // Alice's own epoch-0 commit, posted by mallory, is refused as someone else's.
        let err = ds
            .post_commit(&mallory.id, group, &epoch0)
            .await
            .unwrap_err();
        assert_eq!(err.to_api_error().code, ErrorCode::Forbidden);

        // Nothing changed: the group is at epoch 0, and alice's epoch-0 commit is accepted now.
        assert_eq!(store.group(group).await.unwrap().unwrap().epoch, 0);
        let posted = ds.post_commit(&alice.id, group, &epoch0).await.unwrap();
        assert_eq!(posted.seq, 1);
        assert_eq!(store.group(group).await.unwrap().unwrap().epoch, 1);
    }

    #[test]
    fn state_codec_roundtrip_and_garbage() {
        let s = MemoryStorage::default();
        s.values
            .write()
            .unwrap()
            .insert(b"k".to_vec(), b"v".to_vec());
        s.values.write().unwrap().insert(b"".to_vec(), vec![0; 300]);
        let bytes = encode_state(&s).unwrap();
        let back = decode_state(&bytes).unwrap();
        assert_eq!(*back.values.read().unwrap(), *s.values.read().unwrap());
        assert!(decode_state(&bytes[..bytes.len() - 1]).is_none());
        assert!(decode_state(&[0, 0, 0, 9, 1]).is_none());
    }
}
