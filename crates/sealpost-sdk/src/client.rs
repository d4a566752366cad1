//! The client: one account's device, its conversations, and the sync engine.
//!
//! Every change is one local transaction that covers the MLS state and the application state
//! (see `store`). Network I/O happens between transactions, never inside one. A delivery is
//! acknowledged to the server only after the transaction that processed it has committed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openmls::key_packages::errors::KeyPackageVerifyError;
use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, ContentType, Credential, CredentialWithKey,
    ExtensionType, GroupId as MlsGroupId, KeyPackage, LeafNodeIndex, LeafNodeParameters,
    MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig,
    MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, ProcessedMessageContent, Proposal,
    ProtocolMessage, ProtocolVersion, Sender, StagedWelcome,
};
use openmls::treesync::errors::LifetimeError;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::signatures::Signer;
use openmls_traits::types::SignatureScheme;
use rusqlite::{Connection, OptionalExtension, params};
use sealpost_proto::{
    AckRequest, Delivery, DeliveryKind, DeviceId, DeviceIdentity, ErrorCode, GroupId,
    PADDING_BUCKETS, RegisterRequest, SyncRequest, Username, device_certificate_message, pad,
    padded_len, unpad,
};
use serde::{Deserialize, Serialize};
use tls_codec::{Deserialize as _, Serialize as _};
use zeroize::Zeroizing;

#[cfg(feature = "test-hooks")]
mod hooks;
mod link;
mod outbox;
mod receive;
mod trust;
mod verify;

#[cfg(feature = "test-hooks")]
pub use hooks::{CommitForgery, KeyPackageForgery};
pub use link::{LinkStep, PendingLink};
use receive::message_aad;
pub use receive::ws_config;
pub(crate) use receive::{Backoff, PushRefused, connect_push};
pub use verify::{Verification, safety_number};

use crate::aad::{Aad, FORK_CHECK_LABEL, FORK_CHECK_LEN};
use crate::api::{Api, ChallengeSigner};
use crate::directory::{DirectoryState, Roots, Verified, security, verify_proof};
use crate::error::Error;
use crate::model::{
    ConversationId, ConversationInfo, ConversationKind, DeviceChange, Event, EventId, HistoryEntry,
    LoggedEvent, MemberInfo, MessageId, SecurityAlert, Suite, Whoami,
};
use crate::store::{self, Profile, Provider, Sealer, conv_row, item_row, put_meta};
use sealpost_proto::directory::MAX_BATCH_LOOKUP;

/// The event log consumer whose place [`Client::sync`] keeps.
const SYNC_CONSUMER: &str = "sdk.sync";

/// Past epochs whose keys are kept, so that messages sent just before a commit still decrypt.
pub const MAX_PAST_EPOCHS: usize = 5;
/// Most members added in one commit (openmls batch adds are superlinear).
pub const MAX_ADD_BATCH: usize = 100;

/// Client behaviour that can be tuned.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// A conversation's leaf is renewed (self-update commit) on the first send after this long.
    pub self_update_after: Duration,
    /// Key packages per suite kept on the server.
    pub key_packages_target: u64,
    /// Replenish when fewer than this are left.
    pub key_packages_low: u64,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            self_update_after: Duration::from_secs(7 * 24 * 3600),
            key_packages_target: 50,
            key_packages_low: 10,
        }
    }
}

/// The identity of this device. Secret: no `Debug`; the JSON form is zeroized after use.
#[derive(Serialize, Deserialize)]
struct Identity {
    username: Username,
    device_id: DeviceId,
    account_key: SignatureKeyPair,
    device_key: SignatureKeyPair,
    server: String,
}

impl Identity {
    fn device_identity(&self) -> DeviceIdentity {
        DeviceIdentity {
            username: self.username.clone(),
            device_id: self.device_id,
        }
    }

    fn credential_with_key(&self) -> CredentialWithKey {
        credential_for(&self.device_identity(), &self.device_key)
    }
}

impl ChallengeSigner for Identity {
    fn sign_challenge(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        self.device_key
            .sign(message)
            .map_err(|_| Error::Crypto("signing failed"))
    }
}

/// What [`Client::bench_prepare`] returns.
#[doc(hidden)]
pub struct BenchBatch {
    /// Server base URL.
    pub server: String,
    /// Bearer token (secret).
    pub token: String,
    /// Group id (hex).
    pub group: String,
    /// Encrypted application messages, in ratchet order.
    pub messages: Vec<Vec<u8>>,
}

/// A conversation's local record (sealed in the store).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ConvInfo {
    kind: ConversationKind,
    name: String,
    peer: Option<Username>,
    suite: Suite,
    active: bool,
    last_self_update_ms: u64,
    /// How many texts this device has sent here: each carries the next number, so that
    /// recipients can tell a dropped or a held-back message.
    #[serde(default)]
    sent: u64,
    /// The newest number seen from each other device (`user:device`).
    #[serde(default)]
    senders: BTreeMap<String, u64>,
    /// This device's MLS epoch in which a fork alert was last shown (one alert in each of its
    /// epochs, not one per message).
    #[serde(default)]
    fork_alerted: Option<u64>,
    /// The epoch at which this device refused a commit (and so stays behind its members).
    #[serde(default)]
    refused_at: Option<u64>,
    /// The epoch this device joined at, from a Welcome (none for the conversation's creator).
    #[serde(default)]
    joined_at: Option<u64>,
    /// This device added someone and has not yet told them what the conversation is (its
    /// Meta message): set when its commit comes back, however it comes back.
    #[serde(default)]
    meta_owed: bool,
}

#[derive(Debug, Clone)]
struct Conv {
    info: ConvInfo,
    cursor: u64,
}

/// What travels inside an MLS application message (then padded).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum AppMessage {
    Text {
        id: String,
        body: String,
        sent_at: u64,
        /// The sender device's number for this text in this conversation, from 1; 0: none.
        #[serde(default)]
        n: u64,
    },
    Meta {
        kind: ConversationKind,
        name: String,
    },
}

/// A history entry without its conversation name (which is rendered when shown).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Item {
    Message {
        from: String,
        text: String,
        id: String,
        sent_at: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        late: bool,
        /// This device's own message that the server refused: why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failed: Option<String>,
        /// This device's own message whose post was not confirmed yet (it is in the outbox).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unconfirmed: bool,
    },
    /// An unconfirmed message of this device's was confirmed by the server (an event only).
    Sent {
        id: String,
    },
    /// An unconfirmed message of this device's was refused by the server (an event only).
    NotSent {
        id: String,
        reason: String,
    },
    Gap {
        from: String,
        missing: u64,
    },
    MemberAdded {
        member: String,
        by: String,
    },
    MemberRemoved {
        member: String,
        by: String,
    },
    MemberLeft {
        member: String,
    },
    DeviceAdded {
        member: String,
        device: String,
        by: String,
    },
    DeviceRemoved {
        member: String,
        device: String,
        by: String,
    },
    Joined {
        by: String,
    },
    Removed {
        by: String,
    },
    Undecryptable {
        seq: u64,
        reason: String,
    },
    Security {
        alert: SecurityAlert,
        detail: String,
    },
}

impl Item {
    fn render(self, conversation: String) -> Event {
        match self {
            Item::Message {
                from,
                text,
                id,
                sent_at,
                late,
                failed,
                unconfirmed,
            } => Event::Message {
                conversation,
                from,
                text,
                id: MessageId::new(id),
                sent_at,
                late,
                failed,
                unconfirmed,
            },
            Item::Sent { id } => Event::Sent {
                conversation,
                id: MessageId::new(id),
            },
            Item::NotSent { id, reason } => Event::NotSent {
                conversation,
                id: MessageId::new(id),
                reason,
            },
            Item::Gap { from, missing } => Event::Gap {
                conversation,
                from,
                missing,
            },
            Item::MemberAdded { member, by } => Event::MemberAdded {
                conversation,
                member,
                by,
            },
            Item::MemberRemoved { member, by } => Event::MemberRemoved {
                conversation,
                member,
                by,
            },
            Item::MemberLeft { member } => Event::MemberLeft {
                conversation,
                member,
            },
            Item::DeviceAdded { member, device, by } => Event::DeviceAdded {
                conversation,
                member,
                device,
                by,
            },
            Item::DeviceRemoved { member, device, by } => Event::DeviceRemoved {
                conversation,
                member,
                device,
                by,
            },
            Item::Joined { by } => Event::Joined { conversation, by },
            Item::Removed { by } => Event::Removed { conversation, by },
            Item::Undecryptable { seq, reason } => Event::Undecryptable {
                conversation,
                seq,
                reason,
            },
            Item::Security { alert, detail } => Event::Security {
                conversation: Some(conversation),
                alert,
                detail,
            },
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether `key` is an HPKE public key of `suite` that can be encrypted to. openmls does not
/// check this; HPKE itself refuses a low-order X25519 point (RFC 9180 §7.1.4), so a trial
/// encryption to the key tells.
fn usable_key(crypto: &impl OpenMlsCrypto, suite: Ciphersuite, key: &[u8]) -> bool {
    crypto
        .hpke_seal(suite.hpke_config(), key, b"sealpost key check", &[], &[])
        .is_ok()
}

/// [`usable_key`] for a leaf's encryption key (openmls keeps its accessor to the raw bytes to
/// itself, so they are read from the key's encoding).
fn usable_leaf_key(
    crypto: &impl OpenMlsCrypto,
    suite: Ciphersuite,
    leaf: &openmls::treesync::LeafNode,
) -> Result<bool, Error> {
    let encoded = leaf
        .encryption_key()
        .tls_serialize_detached()
        .map_err(|e| Error::Protocol(format!("a leaf's key does not encode: {e}")))?;
    let key = tls_codec::VLBytes::tls_deserialize_exact(encoded.as_slice())
        .map_err(|e| Error::Protocol(format!("a leaf's key does not decode: {e}")))?;
    Ok(usable_key(crypto, suite, key.as_slice()))
}

fn at(user: &Username) -> String {
    format!("@{user}")
}

fn credential_user(credential: &Credential) -> Option<DeviceIdentity> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    DeviceIdentity::from_credential_bytes(basic.identity()).ok()
}

fn who(credential: &Credential) -> String {
    credential_user(credential).map_or_else(|| "@unknown".to_owned(), |d| at(&d.username))
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .use_ratchet_tree_extension(true)
        .build()
}

/// The capabilities every leaf of ours declares: both suites, and last-resort key packages.
fn capabilities() -> Capabilities {
    let suites: Vec<_> = Suite::ALL.iter().map(|s| s.ciphersuite()).collect();
    Capabilities::new(
        None,
        Some(&suites),
        Some(&[ExtensionType::LastResort]),
        None,
        None,
    )
}

fn create_config(suite: Suite) -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(suite.ciphersuite())
        .capabilities(capabilities())
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .use_ratchet_tree_extension(true)
        .build()
}

fn mls_id(group: GroupId) -> MlsGroupId {
    MlsGroupId::from_slice(group.as_bytes())
}

fn load_group(provider: &Provider, group: GroupId) -> Result<MlsGroup, Error> {
    MlsGroup::load(provider.storage(), &mls_id(group))
        .map_err(|_| {
            Error::Store(
                "the MLS state of a conversation in the profile is damaged (it does not parse)"
                    .into(),
            )
        })?
        .ok_or_else(|| Error::Store("the MLS state of a conversation is missing".into()))
}

fn serialize(msg: &MlsMessageOut) -> Result<Vec<u8>, Error> {
    msg.tls_serialize_detached().map_err(Error::mls)
}

/// A commit as posted, with its Welcome if it adds members.
type UnsettledCommit = (Vec<u8>, Option<Vec<u8>>);

/// Forgets this device's pending commit to `group` (and its Welcome): it came back, lost its
/// epoch, or was refused.
fn forget_pending_commit(tx: &Connection, group: GroupId) -> Result<(), Error> {
    for table in ["pending_commits", "pending_welcomes"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE group_id = ?1"),
            [group.as_bytes()],
        )?;
    }
    Ok(())
}

fn put_conv(tx: &Connection, sealer: &Sealer, group: GroupId, conv: &Conv) -> Result<(), Error> {
    let info = serde_json::to_vec(&conv.info).map_err(|e| Error::Store(e.to_string()))?;
    tx.execute(
        "INSERT INTO conversations (group_id, cursor, info) VALUES (?1, ?2, ?3)
         ON CONFLICT(group_id) DO UPDATE SET cursor = excluded.cursor, info = excluded.info",
        params![
            group.as_bytes(),
            conv.cursor,
            sealer.seal_at("conv", &conv_row(group.as_bytes(), conv.cursor), &info)?
        ],
    )?;
    Ok(())
}

/// Stores a history item; returns its row id, or `None` if a message with its id is already
/// there.
fn put_item(
    tx: &Connection,
    sealer: &Sealer,
    group: GroupId,
    seq: Option<u64>,
    item: &Item,
) -> Result<Option<i64>, Error> {
    let msg_id = match item {
        Item::Message { id, .. } => Some(id.clone()),
        _ => None,
    };
    let json = Zeroizing::new(serde_json::to_vec(item).map_err(|e| Error::Store(e.to_string()))?);
    // The row id orders the history and is bound into the seal, so it is chosen here (as SQLite
    // would choose it).
    let id: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(id), 0) + 1 FROM history")?
        .query_row([], |r| r.get(0))?;
    let sealed = sealer.seal_at("item", &item_row(group.as_bytes(), id), &json)?;
    let n = tx
        .prepare_cached(
            "INSERT INTO history (id, group_id, seq, msg_id, item) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        )?
        .execute(params![id, group.as_bytes(), seq, msg_id, sealed])?;
    Ok((n == 1).then_some(id))
}

/// Opens the history item sealed for `row` of `group`.
fn open_item(sealer: &Sealer, group: GroupId, row: i64, sealed: &[u8]) -> Result<Item, Error> {
    let json = sealer.open_at("item", &item_row(group.as_bytes(), row), sealed)?;
    serde_json::from_slice(&json).map_err(|e| Error::Store(e.to_string()))
}

/// Puts `item` in the place of the history item `row` of `group` (sealed for that row again).
fn replace_item(
    tx: &Connection,
    sealer: &Sealer,
    group: GroupId,
    row: i64,
    item: &Item,
) -> Result<(), Error> {
    let json = Zeroizing::new(serde_json::to_vec(item).map_err(|e| Error::Store(e.to_string()))?);
    let sealed = sealer.seal_at("item", &item_row(group.as_bytes(), row), &json)?;
    tx.prepare_cached("UPDATE history SET item = ?2 WHERE id = ?1")?
        .execute(params![row, sealed])?;
    Ok(())
}

/// Stores a history item and appends it to the event log (in the caller's transaction): what
/// this device learned about a conversation. `false` if it was already known (a replay).
fn put_event_item(
    tx: &Connection,
    sealer: &Sealer,
    group: GroupId,
    seq: Option<u64>,
    item: &Item,
) -> Result<bool, Error> {
    match put_item(tx, sealer, group, seq, item)? {
        Some(row) => {
            store::log_item(tx, group.as_bytes(), row)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// An event that is not a history item, as the log keeps it.
#[derive(Serialize, Deserialize)]
#[serde(tag = "in", rename_all = "snake_case")]
enum LoggedRecord {
    /// About a conversation, but not kept in its history (e.g. a Welcome that was refused).
    Conversation { item: Item },
    /// About the account or the key directory.
    Account { event: Event },
}

/// Appends an event that is not a history item (in the caller's transaction).
fn put_event_record(
    tx: &Connection,
    sealer: &Sealer,
    group: Option<GroupId>,
    record: &LoggedRecord,
) -> Result<(), Error> {
    let json = Zeroizing::new(serde_json::to_vec(record).map_err(|e| Error::Store(e.to_string()))?);
    store::log_record(
        tx,
        sealer,
        group.as_ref().map(|g| g.as_bytes().as_slice()),
        &json,
    )?;
    Ok(())
}

/// A Sealpost client for one profile directory.
pub struct Client {
    profile: Profile,
    identity: Identity,
    api: Api,
    convs: BTreeMap<GroupId, Conv>,
    inbox_cursor: u64,
    settings: ClientSettings,
    stock_checked: bool,
    /// Groups that may hold a pending leave proposal; `None` means all of them.
    proposals_to_check: Option<BTreeSet<GroupId>>,
    /// What this device knows of the key directory.
    dir: DirView,
    /// For a linked device: the conversations the approving device is adding it to.
    linked: BTreeMap<GroupId, link::LinkedConversation>,
    /// This device's own commits merged by the current operation's syncs, `(group, seq)`.
    merged_commits: Vec<(GroupId, u64)>,
    /// A Welcome of this batch waits for its group's log to catch up (see `process_welcome`);
    /// the Welcomes after it wait too, so that the inbox is taken in order.
    welcome_waits: bool,
    /// Conversations' MLS groups as the deliveries of the current sync batch left them, so that
    /// each delivery does not load its group again from the key-value state (most of the cost
    /// of taking a message). `None` outside a batch. Only a group whose last delivery was taken
    /// cleanly is kept; the batch's end, or any failure, drops them all.
    batch_groups: Option<BTreeMap<GroupId, MlsGroup>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Err(e) = self.save_session() {
            tracing::debug!(error = %e, "the session token was not kept");
        }
    }
}

/// The key directory as this device has verified it.
#[derive(Default)]
struct DirView {
    /// Pinned keys and the newest verified epoch (`None` until pinned).
    state: Option<DirectoryState>,
    /// Verified roots by epoch.
    roots: Roots,
    /// Verified entries (cache).
    entries: BTreeMap<Username, Verified>,
    /// Users looked up during the current sync: a leaf they do not explain is refused.
    fresh: BTreeSet<Username>,
    /// Users whose entry the trust gate refused in the current sync, and why.
    refused: BTreeMap<Username, String>,
    /// Directory roots carried by peers' messages, to compare once the batch is stored.
    peer_roots: Vec<PeerRoot>,
}

/// A directory root a peer's message carried.
struct PeerRoot {
    group: GroupId,
    from: String,
    epoch: u64,
    root: [u8; 32],
}

/// What the receive path may consult about the directory.
struct DirCheck<'a> {
    entries: &'a BTreeMap<Username, Verified>,
    fresh: &'a BTreeSet<Username>,
    refused: &'a BTreeMap<Username, String>,
    roots: &'a Roots,
    peer_roots: &'a mut Vec<PeerRoot>,
}

impl DirCheck<'_> {
    /// Checks MLS leaves (credential, signature key) against the verified directory entries.
    fn leaves<'c>(
        &self,
        leaves: impl IntoIterator<Item = (&'c Credential, &'c [u8])>,
    ) -> LeafCheck {
        let mut need = Vec::new();
        for (credential, key) in leaves {
            let Some(id) = credential_user(credential) else {
                return LeafCheck::Refused("a member has no Sealpost identity".into());
            };
            let listed = self
                .entries
                .get(&id.username)
                .and_then(|v| v.entry.device(id.device_id))
                .is_some_and(|d| d.device_key.as_slice() == key);
            if listed {
                continue;
            }
            if let Some(why) = self.refused.get(&id.username) {
                return LeafCheck::Refused(format!(
                    "device {} of {} is refused: {why}",
                    id.device_id.short(),
                    at(&id.username)
                ));
            }
            if self.fresh.contains(&id.username) {
                return LeafCheck::Refused(format!(
                    "device {} of {} is not in their verified directory entry (or has another key)",
                    id.device_id.short(),
                    at(&id.username)
                ));
            }
            if !need.contains(&id.username) {
                need.push(id.username);
            }
        }
        if need.is_empty() {
            LeafCheck::Ok
        } else {
            LeafCheck::Need(need)
        }
    }

    /// Compares the directory root a peer's message carries with ours for that epoch.
    fn peer_root(&mut self, group: GroupId, from: &str, aad: &[u8]) -> Option<Item> {
        let (epoch, root) = Aad::parse(aad).root?;
        match self.roots.get(&epoch) {
            Some(ours) if *ours == root => None,
            Some(_) => Some(Item::Security {
                alert: SecurityAlert::SplitView,
                detail: split_view(from, epoch),
            }),
            None => {
                self.peer_roots.push(PeerRoot {
                    group,
                    from: from.to_owned(),
                    epoch,
                    root,
                });
                None
            }
        }
    }
}

/// A security event outside any conversation.
fn security_event(alert: SecurityAlert, detail: impl Into<String>) -> Event {
    Event::Security {
        conversation: None,
        alert,
        detail: detail.into(),
    }
}

/// Whether `name` is a group name: 1 to 64 letters, digits, '-', '_' or '.' — nothing that can
/// start another line, look like `@user`, or carry the `~id` suffix that tells clashing names
/// apart. Checked when a group is made and when a member's Meta message names it.
fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || "-_.".contains(c))
}

/// The one conversation `target` names among `hits`; several are an error that lists them
/// (each as `name` gives it), so that the user can pick one.
fn one_match(
    target: &str,
    hits: &[GroupId],
    name: impl Fn(GroupId) -> String,
) -> Result<Option<GroupId>, Error> {
    match hits {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => Err(Error::AmbiguousConversation(
            target.to_owned(),
            many.iter().map(|g| name(*g)).collect::<Vec<_>>().join(", "),
        )),
    }
}

fn split_view(from: &str, epoch: u64) -> String {
    format!(
        "{from}'s message carries a different key directory root for epoch {epoch} than the one this device verified: the server is showing you different directories"
    )
}

enum LeafCheck {
    Ok,
    Need(Vec<Username>),
    Refused(String),
}

impl Client {
    /// Creates the account and this device on `server`, and the profile in `home`.
    pub async fn register(
        home: &Path,
        server: &str,
        username: &str,
        passphrase: Option<&str>,
    ) -> Result<Client, Error> {
        Self::register_with(
            home,
            server,
            username,
            passphrase,
            ClientSettings::default(),
        )
        .await
    }

    /// [`register`](Self::register) with non-default settings.
    pub async fn register_with(
        home: &Path,
        server: &str,
        username: &str,
        passphrase: Option<&str>,
        settings: ClientSettings,
    ) -> Result<Client, Error> {
        let username = Username::new(username)?;
        let mut profile = new_profile(home, passphrase)?;
        let provider = &profile.mls.provider;
        let device_id = DeviceId::from_slice(
            &provider
                .rand()
                .random_vec(16)
                .map_err(|_| Error::Crypto("no randomness"))?,
        )?;
        let account_key = SignatureKeyPair::new(SignatureScheme::ED25519)
            .map_err(|_| Error::Crypto("key generation failed"))?;
        let device_key = SignatureKeyPair::new(SignatureScheme::ED25519)
            .map_err(|_| Error::Crypto("key generation failed"))?;
        let identity = Identity {
            username: username.clone(),
            device_id,
            account_key,
            device_key,
            server: server.to_owned(),
        };
        let api = Api::new(server, device_id)?;
        let certificate = identity
            .account_key
            .sign(&device_certificate_message(
                &username,
                &device_id,
                identity.device_key.public(),
            ))
            .map_err(|_| Error::Crypto("signing failed"))?;
        let key_packages = initial_key_packages(
            provider,
            &identity.device_key,
            &identity.device_identity(),
            settings.key_packages_target as usize,
        )?;
        let req = RegisterRequest {
            username: username.clone(),
            account_key: identity.account_key.to_public_vec(),
            device_id,
            device_key: identity.device_key.to_public_vec(),
            device_certificate: certificate,
            key_packages,
        };
        // Pinned now: every later directory answer must be signed by this key.
        let keys = match api.directory_keys().await {
            Ok(keys) => keys,
            Err(e) => {
                profile.rollback_mls();
                return Err(e);
            }
        };
        if let Err(e) = api.register(&req).await {
            profile.rollback_mls();
            return Err(e);
        }
        let dir_state = DirectoryState {
            keys,
            epoch: 0,
            history_checked: 0,
        };
        let json =
            Zeroizing::new(serde_json::to_vec(&identity).map_err(|e| Error::Store(e.to_string()))?);
        let dir_json = serde_json::to_vec(&dir_state).map_err(|e| Error::Store(e.to_string()))?;
        profile.atomically(|tx, sealer, _| {
            put_meta(tx, sealer, "identity", &json)?;
            put_meta(tx, sealer, "directory", &dir_json)?;
            put_meta(tx, sealer, "inbox_cursor", &0u64.to_be_bytes())
        })?;
        Ok(Client {
            profile,
            identity,
            api,
            convs: BTreeMap::new(),
            inbox_cursor: 0,
            settings,
            stock_checked: true,
            welcome_waits: false,
            batch_groups: None,
            proposals_to_check: None,
            dir: DirView {
                state: Some(dir_state),
                ..DirView::default()
            },
            linked: BTreeMap::new(),
            merged_commits: Vec::new(),
        })
    }

    /// Opens an existing profile.
    pub fn open(home: &Path, passphrase: Option<&str>) -> Result<Client, Error> {
        let profile = Profile::open(home, false, passphrase)?;
        let json = profile.meta("identity")?.ok_or(Error::NotRegistered)?;
        let identity: Identity = serde_json::from_slice(&json)
            .map_err(|e| Error::Store(format!("the identity record is damaged: {e}")))?;
        let mut api = Api::new(&identity.server, identity.device_id)?;
        if let Some(json) = profile.meta("session")?
            && let Ok(saved) = serde_json::from_slice(&json)
        {
            api.restore_session(saved);
        }
        Self::from_parts(profile, identity, api)
    }

    /// Keeps a session token issued since the profile was opened, for the next command.
    fn save_session(&mut self) -> Result<(), Error> {
        let Some(session) = self.api.new_session() else {
            return Ok(());
        };
        let json =
            Zeroizing::new(serde_json::to_vec(&session).map_err(|e| Error::Store(e.to_string()))?);
        self.profile
            .atomically(|tx, sealer, _| put_meta(tx, sealer, "session", &json))
    }

    fn from_parts(profile: Profile, identity: Identity, api: Api) -> Result<Client, Error> {
        let mut client = Client {
            profile,
            identity,
            api,
            convs: BTreeMap::new(),
            inbox_cursor: 0,
            settings: ClientSettings::default(),
            stock_checked: false,
            welcome_waits: false,
            batch_groups: None,
            proposals_to_check: None,
            dir: DirView::default(),
            linked: BTreeMap::new(),
            merged_commits: Vec::new(),
        };
        client.reload()?;
        Ok(client)
    }

    /// Changes the tunable behaviour.
    pub fn set_settings(&mut self, settings: ClientSettings) {
        self.settings = settings;
    }

    fn reload(&mut self) -> Result<(), Error> {
        let conn = self.profile.conn();
        let mut stmt = conn.prepare("SELECT group_id, cursor, info FROM conversations")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, u64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut convs = BTreeMap::new();
        for row in rows {
            let (gid, cursor, info) = row?;
            let info = self
                .profile
                .sealer
                .open_at("conv", &conv_row(&gid, cursor), &info)?;
            let info: ConvInfo =
                serde_json::from_slice(&info).map_err(|e| Error::Store(e.to_string()))?;
            convs.insert(GroupId::from_slice(&gid)?, Conv { info, cursor });
        }
        drop(stmt);
        self.convs = convs;
        self.dir.state = match self.profile.meta("directory")? {
            Some(json) => Some(
                serde_json::from_slice(&json)
                    .map_err(|e| Error::Store(format!("the directory record is damaged: {e}")))?,
            ),
            None => None,
        };
        let mut stmt = conn.prepare("SELECT epoch, root FROM directory_roots")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let mut roots = Roots::new();
        for row in rows {
            let (epoch, root) = row?;
            let root = <[u8; 32]>::try_from(root.as_slice())
                .map_err(|_| Error::Store("a stored directory root is damaged".into()))?;
            roots.insert(epoch, root);
        }
        drop(stmt);
        self.dir.roots = roots;
        if let Some(json) = self.profile.meta("linked_conversations")? {
            let list: Vec<link::LinkedConversation> = serde_json::from_slice(&json)
                .map_err(|e| Error::Store(format!("the linked conversations are damaged: {e}")))?;
            self.linked = list.into_iter().map(|c| (c.group, c)).collect();
        }
        self.inbox_cursor = self
            .profile
            .meta("inbox_cursor")?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        Ok(())
    }

    /// Who this profile is.
    pub fn whoami(&self) -> Whoami {
        Whoami {
            username: at(&self.identity.username),
            device: self.identity.device_id,
            server: self.identity.server.clone(),
        }
    }

    // ---- naming -------------------------------------------------------------------------

    fn display(&self, group: GroupId) -> String {
        let Some(conv) = self.convs.get(&group) else {
            return format!("#{}", group.short());
        };
        match (conv.info.kind, &conv.info.peer) {
            (ConversationKind::Direct, Some(peer)) => at(peer),
            _ => {
                let name = if conv.info.name.is_empty() {
                    group.short()
                } else {
                    conv.info.name.clone()
                };
                let clash = self.convs.iter().any(|(g, c)| {
                    *g != group
                        && c.info.kind == ConversationKind::Group
                        && c.info.name == conv.info.name
                });
                if clash {
                    format!("#{name}~{}", group.short())
                } else {
                    format!("#{name}")
                }
            }
        }
    }

    fn find(&self, target: &str) -> Result<Option<GroupId>, Error> {
        if let Some(user) = target.strip_prefix('@') {
            let user = Username::new(user)?;
            return Ok(self
                .convs
                .iter()
                .rev()
                .find(|(_, c)| {
                    c.info.kind == ConversationKind::Direct
                        && c.info.active
                        && c.info.peer.as_ref() == Some(&user)
                })
                .map(|(g, _)| *g));
        }
        let Some(name) = target.strip_prefix('#') else {
            return self.find_by_id(target);
        };
        let (name, suffix) = name
            .split_once('~')
            .map_or((name, None), |(n, s)| (n, Some(s)));
        let mut hits: Vec<GroupId> = self
            .convs
            .iter()
            .filter(|(g, c)| {
                c.info.kind == ConversationKind::Group
                    && (c.info.name == name || (c.info.name.is_empty() && g.short() == name))
                    && suffix.is_none_or(|s| g.to_string().starts_with(s))
            })
            .map(|(g, _)| *g)
            .collect();
        // A group this device left does not make the name of one it is in ambiguous.
        if hits
            .iter()
            .any(|g| self.convs.get(g).is_some_and(|c| c.info.active))
        {
            hits.retain(|g| self.convs.get(g).is_some_and(|c| c.info.active));
        }
        one_match(target, &hits, |g| format!("#{name}~{}", g.short()))
    }

    /// A conversation named by its id, or a unique prefix of it (at least 4 hex digits).
    fn find_by_id(&self, target: &str) -> Result<Option<GroupId>, Error> {
        let prefix = target.to_ascii_lowercase();
        if prefix.len() < 4 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::BadTarget(target.to_owned()));
        }
        let hits: Vec<GroupId> = self
            .convs
            .keys()
            .filter(|g| g.to_string().starts_with(&prefix))
            .copied()
            .collect();
        one_match(target, &hits, |g| format!("{g} ({})", self.display(g)))
    }

    fn resolve(&self, target: &str) -> Result<GroupId, Error> {
        self.find(target)?
            .ok_or_else(|| Error::UnknownConversation(target.to_owned()))
    }

    // ---- conversations ------------------------------------------------------------------

    /// Creates a named group with the given members.
    pub async fn create_group(
        &mut self,
        name: &str,
        members: &[Username],
        suite: Suite,
    ) -> Result<ConversationInfo, Error> {
        if !valid_group_name(name) {
            return Err(Error::BadGroupName);
        }
        let users = self.with_my_other_devices(members).await?;
        // All or nothing: every member passes the trust gate before anything is created.
        let me = [self.identity.device_id];
        let kps = if users.is_empty() {
            Vec::new()
        } else {
            self.key_packages_for(suite, &me, &users).await?
        };
        let group = self
            .new_conversation(ConversationKind::Group, name, None, suite)
            .await?;
        self.add_or_forget(group, kps).await?;
        self.info(group)
    }

    /// Adds the devices of `kps` to the conversation this device just created; if that fails
    /// and nobody else is in it, the conversation is forgotten rather than left behind.
    async fn add_or_forget(&mut self, group: GroupId, kps: Vec<KeyPackage>) -> Result<(), Error> {
        if kps.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.commit_adds(group, kps).await {
            if self.member_devices(group)?.len() <= 1 {
                self.forget_conversation(group)?;
            }
            return Err(e);
        }
        Ok(())
    }

    async fn new_conversation(
        &mut self,
        kind: ConversationKind,
        name: &str,
        peer: Option<Username>,
        suite: Suite,
    ) -> Result<GroupId, Error> {
        let provider = &self.profile.mls.provider;
        let group = GroupId::from_slice(
            &provider
                .rand()
                .random_vec(16)
                .map_err(|_| Error::Crypto("no randomness"))?,
        )?;
        let mls = MlsGroup::new_with_group_id(
            provider,
            &self.identity.device_key,
            &create_config(suite),
            mls_id(group),
            self.identity.credential_with_key(),
        )
        .map_err(Error::mls)?;
        let info_msg = mls
            .export_group_info(provider.crypto(), &self.identity.device_key, true)
            .map_err(Error::mls)?;
        let bytes = serialize(&info_msg)?;
        if let Err(e) = self.api.create_group(&self.identity, bytes).await {
            self.profile.rollback_mls();
            return Err(e);
        }
        let conv = Conv {
            info: ConvInfo {
                kind,
                name: name.to_owned(),
                peer,
                suite,
                active: true,
                last_self_update_ms: now_ms(),
                sent: 0,
                senders: BTreeMap::new(),
                fork_alerted: None,
                refused_at: None,
                joined_at: None,
                meta_owed: false,
            },
            cursor: 0,
        };
        self.profile
            .atomically(|tx, sealer, _| put_conv(tx, sealer, group, &conv))?;
        self.convs.insert(group, conv);
        Ok(group)
    }

    /// Adds users (all their devices) to a group.
    pub async fn add_members(&mut self, target: &str, users: &[Username]) -> Result<(), Error> {
        let group = self.resolve(target)?;
        let users = self.with_my_other_devices(users).await?;
        self.add_members_to(group, &users).await
    }

    async fn add_members_to(&mut self, group: GroupId, users: &[Username]) -> Result<(), Error> {
        let suite = self
            .convs
            .get(&group)
            .ok_or_else(|| Error::UnknownConversation(self.display(group)))?
            .info
            .suite;
        let present: Vec<DeviceId> = self
            .member_devices(group)?
            .into_iter()
            .map(|d| d.device_id)
            .collect();
        let kps = self.key_packages_for(suite, &present, users).await?;
        self.commit_adds(group, kps).await
    }

    /// Claims a key package of every device of `users` not in `present`, and checks each
    /// against its account's entry as the trust gate admits it. A refused device is shown and
    /// left out (the user's other devices are still added); a user who cannot be added at all
    /// (unknown, refused by the gate) fails the whole call, before anything is changed.
    async fn key_packages_for(
        &mut self,
        suite: Suite,
        present: &[DeviceId],
        users: &[Username],
    ) -> Result<Vec<KeyPackage>, Error> {
        let mut kps = Vec::new();
        let mut refused = None;
        for user in users {
            // This account's devices that are all in already: nothing to claim.
            let all_present = *user == self.identity.username
                && self
                    .dir
                    .entries
                    .get(user)
                    .is_some_and(|v| v.entry.devices.iter().all(|d| present.contains(&d.id())));
            if all_present {
                continue;
            }
            let claimed = self
                .api
                .claim_key_packages_for(&self.identity, user, suite)
                .await
                .map_err(|e| match e {
                    Error::Server {
                        code: ErrorCode::NotFound,
                        ..
                    } => Error::UnknownUser(at(user)),
                    other => other,
                })?;
            // Every key package must belong to a device of the user's verified directory entry.
            let verified = self.lookup_verified(user).await?;
            for c in claimed.key_packages {
                if present.contains(&c.device_id) {
                    continue;
                }
                let kp = self.check_key_package(&c.key_package, user, c.device_id, suite)?;
                let listed = verified.entry.device(c.device_id).is_some_and(|d| {
                    d.device_key.as_slice() == kp.leaf_node().signature_key().as_slice()
                });
                if !listed {
                    // Refused and shown; the user's verified devices are still added.
                    let e = security(
                        SecurityAlert::UnverifiedMember,
                        format!(
                            "the server handed out a key package for device {} of {} that is not in their verified directory entry; that device was not added",
                            c.device_id.short(),
                            at(user)
                        ),
                    );
                    self.alert(&e)?;
                    refused = Some(e);
                    continue;
                }
                if let Err(e) = self.note_key_package_use(&kp, user, c.device_id) {
                    if matches!(e, Error::Security { .. }) {
                        self.alert(&e)?;
                    }
                    refused = Some(e);
                    continue;
                }
                kps.push(kp);
            }
        }
        if kps.is_empty() {
            if let Some(e) = refused {
                return Err(e);
            }
            return Err(Error::NobodyToAdd);
        }
        Ok(kps)
    }

    /// Adds the devices of checked key packages, in commits of at most [`MAX_ADD_BATCH`].
    async fn commit_adds(&mut self, group: GroupId, kps: Vec<KeyPackage>) -> Result<(), Error> {
        for chunk in kps.chunks(MAX_ADD_BATCH) {
            let chunk = chunk.to_vec();
            self.commit(group, move |g, p, s| {
                let (commit, welcome, _) = g.add_members(p, s, &chunk).map_err(Error::mls)?;
                Ok((commit, Some(welcome)))
            })
            .await?;
        }
        self.send_owed_meta().await
    }

    /// Sends the Meta message of every conversation where this device's commit that added
    /// someone has come back since (also one merged by a sync after its answer was lost).
    async fn send_owed_meta(&mut self) -> Result<(), Error> {
        let owed: Vec<GroupId> = self
            .convs
            .iter()
            .filter(|(_, c)| c.info.meta_owed && c.info.active)
            .map(|(g, _)| *g)
            .collect();
        for group in owed {
            self.send_meta(group).await?;
            self.update_conv(group, |info| info.meta_owed = false)?;
        }
        Ok(())
    }

    /// Changes what this device keeps about a conversation, in memory and in the profile.
    fn update_conv(
        &mut self,
        group: GroupId,
        change: impl FnOnce(&mut ConvInfo),
    ) -> Result<(), Error> {
        if let Some(conv) = self.convs.get_mut(&group) {
            change(&mut conv.info);
            let conv = conv.clone();
            self.profile
                .atomically(|tx, sealer, _| put_conv(tx, sealer, group, &conv))?;
        }
        Ok(())
    }

    /// Tells new members what this conversation is (encrypted, like any message).
    async fn send_meta(&mut self, group: GroupId) -> Result<(), Error> {
        let info = &self
            .convs
            .get(&group)
            .ok_or_else(|| Error::UnknownConversation(self.display(group)))?
            .info;
        let meta = AppMessage::Meta {
            kind: info.kind,
            name: info.name.clone(),
        };
        self.send_app(group, meta, None).await
    }

    /// For tests that play a member leaking a conversation's state: its current MLS GroupInfo
    /// with the ratchet tree, signed by this device (what an outsider needs to try an external
    /// join). Changes nothing. Not for applications.
    #[doc(hidden)]
    pub fn export_group_info_unchecked(&mut self, target: &str) -> Result<Vec<u8>, Error> {
        let group = self.resolve(target)?;
        self.profile.atomically(|_, _, p| {
            let g = load_group(p, group)?;
            let info = g
                .export_group_info(p.crypto(), &self.identity.device_key, true)
                .map_err(Error::mls)?;
            serialize(&info)
        })
    }

    /// Records that a claimed key package is being used; refuses one this device used before.
    /// A one-time key package handed out twice means the server keeps and replays them: the
    /// device it belongs to already spent its private key and cannot join. Last-resort key
    /// packages are reusable by design and are not recorded.
    fn note_key_package_use(
        &mut self,
        kp: &KeyPackage,
        user: &Username,
        device: DeviceId,
    ) -> Result<(), Error> {
        if kp.last_resort() {
            return Ok(());
        }
        let hash = kp
            .hash_ref(self.profile.mls.provider.crypto())
            .map_err(Error::mls)?;
        let fresh = self.profile.atomically(|tx, _, _| {
            Ok(tx.execute(
                "INSERT OR IGNORE INTO used_key_packages (ref) VALUES (?1)",
                [hash.as_slice()],
            )? == 1)
        })?;
        if fresh {
            return Ok(());
        }
        Err(security(
            SecurityAlert::ReusedKeyPackage,
            format!(
                "the server handed out a key package of device {} of {} that this device has used before; that device was not added",
                device.short(),
                at(user)
            ),
        ))
    }

    /// A claimed key package, verified: it parses, its signature holds, and it belongs to the
    /// device and user it was claimed for, in the conversation's suite.
    fn check_key_package(
        &self,
        bytes: &[u8],
        user: &Username,
        device: DeviceId,
        suite: Suite,
    ) -> Result<KeyPackage, Error> {
        let bad = |why: &str| {
            Error::Protocol(format!(
                "the server handed out an invalid key package for {}: {why}",
                at(user)
            ))
        };
        let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| bad("not MLS"))?;
        let MlsMessageBodyIn::KeyPackage(kp) = msg.extract() else {
            return Err(bad("not a key package"));
        };
        let crypto = self.profile.mls.provider.crypto();
        let kp = kp
            .validate(crypto, ProtocolVersion::Mls10)
            .map_err(|e| match e {
                KeyPackageVerifyError::LifetimeError(LifetimeError::Expired { .. }) => {
                    bad("it has expired")
                }
                KeyPackageVerifyError::LifetimeError(LifetimeError::NotValidYet { .. }) => {
                    bad("it is not valid yet")
                }
                KeyPackageVerifyError::InvalidSignature
                | KeyPackageVerifyError::InvalidLeafNodeSignature => bad("its signature is wrong"),
                e => bad(&e.to_string()),
            })?;
        let owner = credential_user(kp.leaf_node().credential())
            .ok_or_else(|| bad("no Sealpost device"))?;
        if owner.username != *user || owner.device_id != device {
            return Err(bad("it is another device's"));
        }
        if kp.ciphersuite() != suite.ciphersuite() {
            return Err(bad("it is for another cipher suite"));
        }
        // With an init key nothing can be encrypted to the add would fail; with such a leaf
        // key, every later commit of the group. Refused here, before anything changes.
        let unusable = |name: &str| {
            security(
                SecurityAlert::UnusableKey,
                format!(
                    "a key package of {} was refused: its {name} key is not a public key anything can be encrypted to",
                    at(user)
                ),
            )
        };
        if !usable_key(crypto, kp.ciphersuite(), kp.hpke_init_key().as_slice()) {
            return Err(unusable("init"));
        }
        if !usable_leaf_key(crypto, kp.ciphersuite(), kp.leaf_node())? {
            return Err(unusable("encryption"));
        }
        Ok(kp)
    }

    /// Removes users (all their devices) from a group.
    pub async fn remove_members(&mut self, target: &str, users: &[Username]) -> Result<(), Error> {
        let group = self.resolve(target)?;
        let leaves: Vec<LeafNodeIndex> = {
            let g = load_group(&self.profile.mls.provider, group)?;
            g.members()
                .filter(|m| {
                    credential_user(&m.credential).is_some_and(|d| users.contains(&d.username))
                })
                .map(|m| m.index)
                .collect()
        };
        if leaves.is_empty() {
            return Err(Error::NotMembers);
        }
        if users.contains(&self.identity.username) {
            return Err(Error::RemoveSelf);
        }
        self.commit(group, move |g, p, s| {
            let (commit, welcome, _) = g.remove_members(p, s, &leaves).map_err(Error::mls)?;
            Ok((commit, welcome))
        })
        .await
    }

    /// Deletes a conversation this device has left or was removed from, with its history, from
    /// this device. One it is still in must be left first.
    pub fn delete_conversation(&mut self, target: &str) -> Result<(), Error> {
        let group = self.resolve(target)?;
        if self.convs.get(&group).is_some_and(|c| c.info.active) {
            return Err(Error::StillMember(target.to_owned()));
        }
        self.forget_conversation(group)
    }

    /// Leaves a group: asks the other members to remove this device.
    pub async fn leave(&mut self, target: &str) -> Result<(), Error> {
        let group = self.resolve(target)?;
        self.sync_inner().await?;
        let proposal = self.profile.atomically(|_, _, p| {
            let mut g = load_group(p, group)?;
            serialize(
                &g.leave_group(p, &self.identity.device_key)
                    .map_err(Error::mls)?,
            )
        })?;
        self.api
            .post_message(&self.identity, group, proposal)
            .await?;
        self.update_conv(group, |info| info.active = false)
    }

    fn member_devices(&self, group: GroupId) -> Result<Vec<DeviceIdentity>, Error> {
        let g = load_group(&self.profile.mls.provider, group)?;
        Ok(g.members()
            .filter_map(|m| credential_user(&m.credential))
            .collect())
    }

    /// The members of a conversation.
    pub fn members(&self, target: &str) -> Result<Vec<MemberInfo>, Error> {
        let group = self.resolve(target)?;
        if !self.convs.get(&group).is_some_and(|c| c.info.active) {
            // Its state is the one of the epoch this device left: no longer its members.
            return Err(Error::NotMember(target.to_owned()));
        }
        Ok(self
            .member_devices(group)?
            .into_iter()
            .map(|d| MemberInfo {
                member: at(&d.username),
                device: d.device_id,
                you: d.device_id == self.identity.device_id,
            })
            .collect())
    }

    fn info(&self, group: GroupId) -> Result<ConversationInfo, Error> {
        let conv = self
            .convs
            .get(&group)
            .ok_or_else(|| Error::UnknownConversation(group.to_string()))?;
        let members = if conv.info.active {
            self.member_devices(group).map(|m| m.len()).unwrap_or(0)
        } else {
            0
        };
        Ok(ConversationInfo {
            conversation: self.display(group),
            id: ConversationId::of(group),
            kind: conv.info.kind,
            ciphersuite: conv.info.suite,
            members,
            active: conv.info.active,
        })
    }

    /// The MLS epoch of a conversation (for diagnostics: it grows with every commit).
    pub fn epoch(&self, target: &str) -> Result<u64, Error> {
        let group = self.resolve(target)?;
        Ok(load_group(&self.profile.mls.provider, group)?
            .epoch()
            .as_u64())
    }

    /// All conversations.
    pub fn conversations(&self) -> Result<Vec<ConversationInfo>, Error> {
        self.convs.keys().map(|g| self.info(*g)).collect()
    }

    /// Local history of a conversation, oldest first.
    pub fn messages(&self, target: &str, limit: usize) -> Result<Vec<Event>, Error> {
        Ok(self
            .history(target, None, limit)?
            .into_iter()
            .map(|e| e.event)
            .collect())
    }

    /// A page of a conversation's history, oldest first: the newest `limit` entries before
    /// `before` (a position from an earlier page), or the newest of all.
    pub fn history(
        &self,
        target: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, Error> {
        let group = self.resolve(target)?;
        let conn = self.profile.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, item FROM history WHERE group_id = ?1 AND (?2 IS NULL OR id < ?2)
             ORDER BY id DESC LIMIT ?3",
        )?;
        let before = before.map(|b| i64::try_from(b).unwrap_or(i64::MAX));
        let rows = stmt.query_map(params![group.as_bytes(), before, limit as u64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let name = self.display(group);
        let conversation_id = ConversationId::of(group);
        let mut out = Vec::new();
        for row in rows {
            let (id, sealed) = row?;
            let item = open_item(&self.profile.sealer, group, id, &sealed)?;
            out.push(HistoryEntry {
                position: id.unsigned_abs(),
                conversation_id: conversation_id.clone(),
                event: item.render(name.clone()),
            });
        }
        out.reverse();
        Ok(out)
    }

    // ---- sending ------------------------------------------------------------------------

    /// Sends a text to `@user` (creating the 1:1 conversation if needed) or `#group`.
    pub async fn send(&mut self, target: &str, text: &str) -> Result<Event, Error> {
        self.sync_inner().await?;
        self.send_owed_meta().await?;
        let group = match self.find(target)? {
            Some(g) => g,
            None => match target.strip_prefix('@') {
                Some(user) => {
                    let user = Username::new(user)?;
                    if user == self.identity.username {
                        return Err(Error::SelfConversation);
                    }
                    let users = self
                        .with_my_other_devices(std::slice::from_ref(&user))
                        .await?;
                    // The peer passes the trust gate before the conversation is created; a 1:1
                    // conversation without the peer must not linger (sends would reach nobody).
                    let suite = Suite::default();
                    let me = [self.identity.device_id];
                    let kps = self.key_packages_for(suite, &me, &users).await?;
                    let group = self
                        .new_conversation(ConversationKind::Direct, "", Some(user.clone()), suite)
                        .await?;
                    self.add_or_forget(group, kps).await?;
                    group
                }
                None => return Err(Error::UnknownConversation(target.to_owned())),
            },
        };
        if !self.convs.get(&group).is_some_and(|c| c.info.active) {
            return Err(Error::NotMember(target.to_owned()));
        }
        self.refresh_verified(group).await?;
        self.check_not_blocked(group)?;
        self.before_send(group).await?;
        let id = hex::encode(
            self.profile
                .mls
                .provider
                .rand()
                .random_vec(16)
                .map_err(|_| Error::Crypto("no randomness"))?,
        );
        let sent_at = now_ms();
        let msg = AppMessage::Text {
            id: id.clone(),
            body: text.to_owned(),
            sent_at,
            n: 0,
        };
        let item = Item::Message {
            from: at(&self.identity.username),
            text: text.to_owned(),
            id,
            sent_at,
            late: false,
            failed: None,
            unconfirmed: false,
        };
        self.send_app(group, msg, Some(item.clone())).await?;
        Ok(item.render(self.display(group)))
    }

    /// `users`, plus this account when it has other devices, so that a conversation this
    /// device starts reaches the account's other devices too.
    async fn with_my_other_devices(&mut self, users: &[Username]) -> Result<Vec<Username>, Error> {
        let me = self.identity.username.clone();
        if !self.dir.entries.contains_key(&me) {
            self.lookup_verified(&me).await?;
        }
        let others = self
            .dir
            .entries
            .get(&me)
            .is_some_and(|v| v.entry.devices.len() > 1);
        let mut all = users.to_vec();
        if others && !all.contains(&me) {
            all.push(me);
        }
        Ok(all)
    }

    /// The conversations this device is still a member of.
    fn active_groups(&self) -> Vec<GroupId> {
        self.convs
            .iter()
            .filter(|(_, c)| c.info.active)
            .map(|(g, _)| *g)
            .collect()
    }

    /// Deletes a conversation and its MLS state from this device.
    fn forget_conversation(&mut self, group: GroupId) -> Result<(), Error> {
        self.profile.atomically(|tx, _, p| {
            if let Some(mut g) = MlsGroup::load(p.storage(), &mls_id(group)).map_err(Error::mls)? {
                g.delete(p.storage()).map_err(Error::mls)?;
            }
            for table in [
                "conversations",
                "history",
                "events",
                "sent",
                "outbox",
                "pending_commits",
                "pending_welcomes",
            ] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE group_id = ?1"),
                    [group.as_bytes()],
                )?;
            }
            Ok(())
        })?;
        self.convs.remove(&group);
        Ok(())
    }

    /// Commits pending proposals and renews the leaf when due, so a message can be sent.
    async fn before_send(&mut self, group: GroupId) -> Result<(), Error> {
        let pending = load_group(&self.profile.mls.provider, group)?
            .pending_proposals()
            .next()
            .is_some();
        if pending {
            self.commit_pending_proposals(group).await?;
        }
        let due = self.convs.get(&group).is_some_and(|c| {
            now_ms().saturating_sub(c.info.last_self_update_ms)
                >= self.settings.self_update_after.as_millis() as u64
        });
        if due {
            self.commit(group, |g, p, s| {
                let bundle = g
                    .self_update(p, s, LeafNodeParameters::default())
                    .map_err(Error::mls)?;
                Ok((bundle.into_commit(), None))
            })
            .await?;
            if let Some(conv) = self.convs.get_mut(&group) {
                conv.info.last_self_update_ms = now_ms();
                let conv = conv.clone();
                self.profile
                    .atomically(|tx, sealer, _| put_conv(tx, sealer, group, &conv))?;
            }
        }
        Ok(())
    }

    /// Refuses an application message whose encoded body, padded and encrypted, would be larger
    /// than the server accepts. Bodies that fit the smaller padding buckets go without asking.
    async fn check_size(&mut self, body: usize) -> Result<(), Error> {
        /// MLS framing, authenticated data and signature around the padded body, with room.
        const OVERHEAD: usize = 4096;
        /// What any server is taken to accept without asking.
        const SMALL: usize = 64 * 1024;
        let wire = padded_len(body) + OVERHEAD;
        if wire <= SMALL {
            return Ok(());
        }
        let Some(limits) = self.api.limits().await? else {
            // A server that does not say: it answers for itself.
            return Ok(());
        };
        let limit = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
        if wire <= limit {
            return Ok(());
        }
        // The largest body that fits: padded to a bucket, or to a multiple of the last one.
        let room = limit.saturating_sub(OVERHEAD);
        let last = PADDING_BUCKETS[PADDING_BUCKETS.len() - 1];
        let largest_pad = if room >= last {
            room / last * last
        } else {
            PADDING_BUCKETS
                .iter()
                .copied()
                .filter(|b| *b <= room)
                .max()
                .unwrap_or(0)
        };
        Err(Error::TooLarge {
            size: body as u64,
            limit: largest_pad.saturating_sub(4) as u64,
        })
    }

    /// Encrypts and posts one application message. A text gets this device's next number in
    /// the conversation, in the same transaction as the ratchet step, so no number is used twice.
    /// The ciphertext goes into the outbox in that transaction too: a post whose answer is lost
    /// (or a crash before posting) leaves it there, and the next operation that reaches the
    /// server posts the same ciphertext again (see `outbox`), so it is stored once whatever
    /// happens, and the history says whether it is confirmed.
    async fn send_app(
        &mut self,
        group: GroupId,
        mut msg: AppMessage,
        mut item: Option<Item>,
    ) -> Result<(), Error> {
        let mut conv = self
            .convs
            .get(&group)
            .cloned()
            .ok_or_else(|| Error::UnknownConversation(group.to_string()))?;
        let mut n = 0;
        if let AppMessage::Text { n: number, .. } = &mut msg {
            conv.info.sent += 1;
            *number = conv.info.sent;
            n = conv.info.sent;
        }
        let body =
            Zeroizing::new(serde_json::to_vec(&msg).map_err(|e| Error::Store(e.to_string()))?);
        // Too large for this server: refused here, before anything is encrypted or kept (a
        // server cut off mid-upload would look unreachable, and the number spent a gap).
        self.check_size(body.len()).await?;
        let padded = Zeroizing::new(pad(&body).map_err(|_| Error::TooLarge {
            size: body.len() as u64,
            limit: u64::from(u32::MAX),
        })?);
        let root = self.root_record();
        // Kept as unconfirmed until the server answers for it (see `outbox`).
        if let Some(Item::Message { unconfirmed, .. }) = &mut item {
            *unconfirmed = true;
        }
        let outgoing = self.profile.atomically(|tx, sealer, p| {
            let mut g = load_group(p, group)?;
            g.set_aad(message_aad(&g, p, root)?);
            let out = g
                .create_message(p, &self.identity.device_key, &padded)
                .map_err(Error::mls)?;
            let row = match &item {
                Some(item) => put_item(tx, sealer, group, None, item)?,
                None => None,
            };
            put_conv(tx, sealer, group, &conv)?;
            let payload = serialize(&out)?;
            let id = store::put_outgoing(tx, group.as_bytes(), row, n, &payload)?;
            Ok(store::Outgoing {
                id,
                group: group.as_bytes().to_vec(),
                row,
                n,
                payload,
            })
        })?;
        self.convs.insert(group, conv);
        self.post_outgoing(outgoing, false).await
    }

    /// Builds a commit, posts it, and lets sync merge it. A commit that loses its epoch to
    /// another member's is dropped, the group caught up, and the commit built again.
    async fn commit<F>(&mut self, group: GroupId, build: F) -> Result<(), Error>
    where
        F: Fn(
            &mut MlsGroup,
            &Provider,
            &SignatureKeyPair,
        ) -> Result<(MlsMessageOut, Option<MlsMessageOut>), Error>,
    {
        // Whether the last round waited for an earlier change of this device's own.
        let mut own_pending = false;
        for _ in 0..8 {
            self.sync_inner().await?;
            own_pending = false;
            if let Some((commit, welcome)) = self.unsettled_commit(group)? {
                own_pending = true;
                // An earlier commit whose post broke off (the server may or may not have taken
                // it) and that has not come back: post the same bytes again. A server that
                // never got it takes it now; one that did, or saw another member's commit take
                // the epoch, refuses it as late, and the next sync says which it was.
                self.post_staged(group, commit, welcome).await?;
                self.send_owed_meta().await?;
                continue;
            }
            let root = self.root_record();
            let (commit, welcome) = self.profile.atomically(|tx, _, p| {
                let mut g = load_group(p, group)?;
                if g.pending_commit().is_some() {
                    return Err(Error::ChangePending);
                }
                g.set_aad(message_aad(&g, p, root)?);
                let (commit, welcome) = build(&mut g, p, &self.identity.device_key)?;
                let commit = serialize(&commit)?;
                let welcome = welcome.as_ref().map(serialize).transpose()?;
                tx.execute(
                    "INSERT INTO pending_commits (group_id, payload) VALUES (?1, ?2) ON CONFLICT(group_id) DO UPDATE SET payload = excluded.payload",
                    params![group.as_bytes(), commit],
                )?;
                tx.execute(
                    "DELETE FROM pending_welcomes WHERE group_id = ?1",
                    [group.as_bytes()],
                )?;
                if let Some(welcome) = &welcome {
                    tx.execute(
                        "INSERT INTO pending_welcomes (group_id, welcome) VALUES (?1, ?2)",
                        params![group.as_bytes(), welcome],
                    )?;
                }
                Ok((commit, welcome))
            })?;
            if self.post_staged(group, commit, welcome).await? {
                return Ok(());
            }
            // Another member's commit took the epoch: catch up and build ours again.
            self.drop_pending_commit(group)?;
        }
        Err(if own_pending {
            Error::ChangePending
        } else {
            Error::Busy
        })
    }

    /// For load generators only: a signed-in session (server URL, bearer token), the group
    /// behind `target`, and `n` application messages encrypted for it but not sent. The
    /// messages advance this device's ratchet (committed locally), so they are valid to post
    /// once each, in order. Not for applications: the token is a secret.
    #[doc(hidden)]
    pub async fn bench_prepare(
        &mut self,
        target: &str,
        n: usize,
        text: &str,
    ) -> Result<BenchBatch, Error> {
        let group = self.resolve(target)?;
        let token = self.api.token(&self.identity).await?;
        let sent_at = now_ms();
        let messages = self.profile.atomically(|_, _, p| {
            let mut g = load_group(p, group)?;
            (0..n)
                .map(|i| {
                    let msg = AppMessage::Text {
                        id: format!("{:032x}", (sent_at as u128) << 32 | i as u128),
                        body: text.to_owned(),
                        sent_at,
                        n: 0,
                    };
                    let body = Zeroizing::new(
                        serde_json::to_vec(&msg).map_err(|e| Error::Store(e.to_string()))?,
                    );
                    let padded = Zeroizing::new(pad(&body).map_err(|_| Error::TooLarge {
                        size: body.len() as u64,
                        limit: u64::from(u32::MAX),
                    })?);
                    serialize(
                        &g.create_message(p, &self.identity.device_key, &padded)
                            .map_err(Error::mls)?,
                    )
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(BenchBatch {
            server: self.identity.server.clone(),
            token,
            group: group.to_string(),
            messages,
        })
    }

    /// Commits the proposals waiting in a group (a member's request to leave).
    async fn commit_pending_proposals(&mut self, group: GroupId) -> Result<(), Error> {
        self.commit(group, |g, p, s| {
            let (commit, welcome, _) = g.commit_to_pending_proposals(p, s).map_err(Error::mls)?;
            Ok((commit, welcome))
        })
        .await
    }

    /// Posts this device's staged commit to `group`. `true`: it took its epoch and came back.
    /// `false`: the epoch was taken already, by another member's commit or by this very commit
    /// posted before; the next sync says which. A refusal drops the commit; when the outcome is
    /// unknown (the connection broke) it stays staged, and the next commit posts it again.
    async fn post_staged(
        &mut self,
        group: GroupId,
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
    ) -> Result<bool, Error> {
        self.merged_commits.clear();
        match self
            .api
            .post_commit(&self.identity, group, commit, welcome)
            .await
        {
            Ok(posted) => {
                self.sync_inner().await?;
                self.check_commit_came_back(group, posted.seq)?;
                Ok(true)
            }
            Err(Error::Server {
                code: ErrorCode::EpochConflict,
                ..
            }) => Ok(false),
            Err(e @ Error::Server { .. }) => {
                self.drop_pending_commit(group)?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn drop_pending_commit(&mut self, group: GroupId) -> Result<(), Error> {
        self.profile.atomically(|tx, _, p| {
            let mut g = load_group(p, group)?;
            g.clear_pending_commit(p.storage()).map_err(Error::mls)?;
            forget_pending_commit(tx, group)
        })
    }

    /// This device's commit to `group` that was posted without an answer and has not come
    /// back in a sync since, with its Welcome: its outcome is unknown.
    fn unsettled_commit(&mut self, group: GroupId) -> Result<Option<UnsettledCommit>, Error> {
        let staged = load_group(&self.profile.mls.provider, group)?
            .pending_commit()
            .is_some();
        self.profile.atomically(|tx, _, _| {
            let commit: Option<Vec<u8>> = store::pending_commit(tx, group.as_bytes())?;
            let Some(commit) = commit.filter(|_| staged) else {
                // Nothing staged to merge it into: a row left alone is of no use.
                forget_pending_commit(tx, group)?;
                return Ok(None);
            };
            let welcome = tx
                .query_row(
                    "SELECT welcome FROM pending_welcomes WHERE group_id = ?1",
                    [group.as_bytes()],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(Some((commit, welcome)))
        })
    }

    /// After the server acknowledged this device's commit at `seq` and a sync: unless the
    /// commit came back at that place in the log, the server is withholding it (from this
    /// device at least) or put something else there. Said as an alert; the commit stays
    /// pending, so if it does arrive later it is merged then.
    fn check_commit_came_back(&mut self, group: GroupId, seq: u64) -> Result<(), Error> {
        if std::mem::take(&mut self.merged_commits).contains(&(group, seq)) {
            return Ok(());
        }
        let cursor = self.convs.get(&group).map_or(0, |c| c.cursor);
        let detail = if cursor < seq {
            format!(
                "the server acknowledged this device's change to the conversation as #{seq} but has not delivered it back: it may be withholding it from members"
            )
        } else {
            format!(
                "the server acknowledged this device's change to the conversation as #{seq} but delivered something else in its place"
            )
        };
        let item = Item::Security {
            alert: SecurityAlert::WithheldCommit,
            detail: detail.clone(),
        };
        self.profile
            .atomically(|tx, sealer, _| put_event_item(tx, sealer, group, None, &item))?;
        Err(security(SecurityAlert::WithheldCommit, detail))
    }

    // ---- key directory ------------------------------------------------------------------

    /// The pinned directory state; profiles made before pinning existed pin on first use.
    async fn dir_state(&mut self) -> Result<DirectoryState, Error> {
        if let Some(state) = &self.dir.state {
            return Ok(state.clone());
        }
        let state = DirectoryState {
            keys: self.api.directory_keys().await?,
            epoch: 0,
            history_checked: 0,
        };
        self.save_dir_state(state.clone())?;
        Ok(state)
    }

    fn save_dir_state(&mut self, state: DirectoryState) -> Result<(), Error> {
        let json = serde_json::to_vec(&state).map_err(|e| Error::Store(e.to_string()))?;
        self.profile
            .atomically(|tx, sealer, _| put_meta(tx, sealer, "directory", &json))?;
        self.dir.state = Some(state);
        Ok(())
    }

    /// Shows a security event outside any conversation: appends it to the event log.
    fn alert(&mut self, error: &Error) -> Result<(), Error> {
        if let Error::Security { alert, detail } = error {
            tracing::warn!(?alert, "security event");
            self.log_account_events(vec![Event::Security {
                conversation: None,
                alert: *alert,
                detail: detail.clone(),
            }])?;
        }
        Ok(())
    }

    /// Appends events about the account or the directory to the event log, in one transaction.
    fn log_account_events(&mut self, events: Vec<Event>) -> Result<(), Error> {
        if events.is_empty() {
            return Ok(());
        }
        self.profile.atomically(|tx, sealer, _| {
            events.into_iter().try_for_each(|event| {
                put_event_record(tx, sealer, None, &LoggedRecord::Account { event })
            })
        })
    }

    /// Records a verified root. Two different roots for one epoch are a split view; a newer
    /// epoch becomes the oldest one accepted from now on.
    fn note_root(&mut self, epoch: u64, root: [u8; 32]) -> Result<(), Error> {
        match self.dir.roots.get(&epoch) {
            Some(known) if *known == root => {}
            Some(_) => {
                let e = security(
                    SecurityAlert::SplitView,
                    format!(
                        "the server signed two different key directory roots for epoch {epoch}"
                    ),
                );
                self.alert(&e)?;
                return Err(e);
            }
            None => {
                self.profile.atomically(|tx, _, _| {
                    tx.execute(
                        "INSERT OR IGNORE INTO directory_roots (epoch, root) VALUES (?1, ?2)",
                        params![epoch, root.as_slice()],
                    )?;
                    Ok(())
                })?;
                self.dir.roots.insert(epoch, root);
            }
        }
        if let Some(state) = self.dir.state.clone()
            && epoch > state.epoch
        {
            self.save_dir_state(DirectoryState { epoch, ..state })?;
        }
        Ok(())
    }

    /// Looks `user` up in the directory and verifies the answer (not yet through the trust
    /// gate). Problems are shown as security events and returned as errors.
    async fn lookup_checked(&mut self, user: &Username) -> Result<Verified, Error> {
        let state = self.dir_state().await?;
        let resp = self
            .api
            .directory_lookup(&self.identity, user)
            .await
            .map_err(|e| match e {
                Error::Server {
                    code: ErrorCode::NotFound,
                    ..
                } => Error::UnknownUser(at(user)),
                other => other,
            })?;
        let verified = match state.verify_lookup(user, &resp) {
            Ok(v) => v,
            Err(e) => {
                self.alert(&e)?;
                return Err(e);
            }
        };
        self.note_root(verified.epoch, verified.root)?;
        Ok(verified)
    }

    /// Looks `user` up in the directory, verifies the answer and passes it through the trust
    /// gate ([`admit`](Self::admit)): a refused entry is an error.
    async fn lookup_verified(&mut self, user: &Username) -> Result<Verified, Error> {
        let verified = self.lookup_checked(user).await?;
        match self.admit(user, verified.clone())? {
            trust::Admission::Admitted => Ok(verified),
            trust::Admission::Refused(e) => Err(e),
        }
    }

    /// Fetches the entries the receive path asked for, in batches at one epoch. A user without
    /// a usable entry is remembered as looked up, so that their leaves are refused instead of
    /// asked for again.
    async fn fetch_entries(&mut self, users: Vec<Username>) -> Result<(), Error> {
        let state = self.dir_state().await?;
        for chunk in users.chunks(MAX_BATCH_LOOKUP) {
            for user in chunk {
                self.dir.entries.remove(user);
                self.dir.fresh.insert(user.clone());
            }
            let resp = self
                .api
                .directory_batch_lookup(&self.identity, chunk)
                .await?;
            let root = match state.check_root(&resp.root) {
                Ok(root) => root,
                Err(e) => {
                    self.alert(&e)?;
                    continue;
                }
            };
            self.note_root(resp.root.epoch, root)?;
            for named in resp.proofs {
                if !chunk.contains(&named.username) {
                    continue;
                }
                let epoch = resp.root.epoch;
                match verify_proof(&state.keys, &named.username, epoch, root, &named.proof) {
                    // A refused entry was shown; its devices are refused (see `DirCheck`).
                    Ok(v) => drop(self.admit(&named.username, v)?),
                    Err(e) => self.alert(&e)?,
                }
            }
        }
        Ok(())
    }

    /// The newest verified directory root, which outgoing messages carry.
    fn root_record(&self) -> Option<(u64, [u8; 32])> {
        self.dir
            .state
            .as_ref()
            .and_then(|s| self.dir.roots.get(&s.epoch).map(|r| (s.epoch, *r)))
    }

    /// Compares the roots peers carried for epochs this device had not verified yet.
    async fn check_peer_roots(&mut self) -> Result<(), Error> {
        let pending = std::mem::take(&mut self.dir.peer_roots);
        for peer in pending {
            if !self.dir.roots.contains_key(&peer.epoch) {
                let state = self.dir_state().await?;
                match self.api.directory_root(Some(peer.epoch)).await {
                    Ok(signed) => match signed.verify(&state.keys.signing_key) {
                        Ok(root) if signed.epoch == peer.epoch => {
                            if self.note_root(peer.epoch, root).is_err() {
                                continue;
                            }
                        }
                        _ => {
                            self.alert(&security(
                                SecurityAlert::InvalidProof,
                                format!(
                                    "the directory root of epoch {} does not verify",
                                    peer.epoch
                                ),
                            ))?;
                            continue;
                        }
                    },
                    Err(Error::Server {
                        code: ErrorCode::NotFound,
                        ..
                    }) => {}
                    Err(e) => return Err(e),
                }
            }
            if self.dir.roots.get(&peer.epoch) != Some(&peer.root) {
                let record = LoggedRecord::Conversation {
                    item: Item::Security {
                        alert: SecurityAlert::SplitView,
                        detail: split_view(&peer.from, peer.epoch),
                    },
                };
                self.profile.atomically(|tx, sealer, _| {
                    put_event_record(tx, sealer, Some(peer.group), &record)
                })?;
            }
        }
        Ok(())
    }

    /// Checks this account's own directory history: every device in it must be certified by
    /// the account key, the account key must be ours, and this device must still be listed.
    async fn check_own_account(&mut self) -> Result<(), Error> {
        let state = self.dir_state().await?;
        let latest = self.api.directory_root(None).await?;
        let root = match state.check_root(&latest) {
            Ok(root) => root,
            Err(e) => {
                self.alert(&e)?;
                return Ok(());
            }
        };
        if self.note_root(latest.epoch, root).is_err() || latest.epoch <= state.history_checked {
            return Ok(());
        }
        let me = self.identity.username.clone();
        let resp = self.api.directory_history(&self.identity, &me).await?;
        let (root, versions) = match state.verify_history(&me, &resp) {
            Ok(v) => v,
            Err(e) => {
                self.alert(&e)?;
                return Ok(());
            }
        };
        let account_key = self.identity.account_key.to_public_vec();
        // What the history shows, logged with the epoch up to which it was checked (one
        // transaction: shown once, also across a crash).
        let mut events = Vec::new();
        // Device changes, oldest first: each version against the one before it.
        for pair in versions.windows(2).rev() {
            let ((epoch, newer), (_, older)) = (&pair[0], &pair[1]);
            if *epoch <= state.history_checked {
                continue;
            }
            let ids = |e: &sealpost_proto::directory::DirectoryEntry| -> BTreeSet<[u8; 16]> {
                e.devices.iter().map(|d| d.device_id).collect()
            };
            let (now, before) = (ids(newer), ids(older));
            for (set, other, change) in [
                (&now, &before, DeviceChange::Added),
                (&before, &now, DeviceChange::Removed),
            ] {
                for id in set.difference(other) {
                    events.push(Event::AccountDevice {
                        device: DeviceId::from_bytes(*id).short(),
                        change,
                        epoch: *epoch,
                    });
                }
            }
        }
        for (epoch, entry) in versions.iter().filter(|(e, _)| *e > state.history_checked) {
            if entry.account_key.as_slice() != account_key.as_slice() {
                events.push(security_event(
                    SecurityAlert::UnapprovedDevice,
                    format!("your account key was replaced in the key directory at epoch {epoch}"),
                ));
                continue;
            }
            for device in &entry.devices {
                if !entry.certifies(&me, device) {
                    events.push(security_event(
                        SecurityAlert::UnapprovedDevice,
                        format!(
                            "device {} appeared in your account's directory entry at epoch {epoch}; none of your devices approved it",
                            device.id().short()
                        ),
                    ));
                }
            }
        }
        let listed = versions
            .first()
            .is_some_and(|(_, e)| e.device(self.identity.device_id).is_some());
        if let Some((_, newest)) = versions.first() {
            let verified = crate::directory::certified(&me, resp.root.epoch, root, newest.clone());
            self.dir.entries.insert(me.clone(), verified);
        }
        if !listed {
            events.push(security_event(
                SecurityAlert::DeviceMissing,
                "this device is not in your account's current directory entry",
            ));
        }
        self.note_root(resp.root.epoch, root)?;
        let state = DirectoryState {
            history_checked: resp.root.epoch,
            ..self.dir_state().await?
        };
        let json = serde_json::to_vec(&state).map_err(|e| Error::Store(e.to_string()))?;
        self.profile.atomically(|tx, sealer, _| {
            for event in events {
                put_event_record(tx, sealer, None, &LoggedRecord::Account { event })?;
            }
            put_meta(tx, sealer, "directory", &json)
        })?;
        self.dir.state = Some(state);
        Ok(())
    }
}

/// Opens the profile for a new device; refuses one that already has an account.
fn new_profile(home: &Path, passphrase: Option<&str>) -> Result<Profile, Error> {
    let profile = Profile::open(home, true, passphrase)?;
    if let Some(json) = profile.meta("identity")? {
        let existing: Identity =
            serde_json::from_slice(&json).map_err(|e| Error::Store(e.to_string()))?;
        return Err(Error::AlreadyRegistered(at(&existing.username)));
    }
    Ok(profile)
}

/// The MLS credential of a device.
pub(crate) fn credential_for(who: &DeviceIdentity, key: &SignatureKeyPair) -> CredentialWithKey {
    CredentialWithKey {
        credential: BasicCredential::new(who.to_credential_bytes()).into(),
        signature_key: key.public().into(),
    }
}

fn make_key_package(
    p: &Provider,
    key: &SignatureKeyPair,
    who: &DeviceIdentity,
    suite: Suite,
    last_resort: bool,
) -> Result<Vec<u8>, Error> {
    let mut builder = KeyPackage::builder().leaf_node_capabilities(capabilities());
    if last_resort {
        builder = builder.mark_as_last_resort();
    }
    let bundle = builder
        .build(suite.ciphersuite(), p, key, credential_for(who, key))
        .map_err(Error::mls)?;
    serialize(&MlsMessageOut::from(bundle.key_package().clone()))
}

fn make_key_packages(
    p: &Provider,
    key: &SignatureKeyPair,
    who: &DeviceIdentity,
    suite: Suite,
    n: usize,
) -> Result<Vec<Vec<u8>>, Error> {
    (0..n)
        .map(|_| make_key_package(p, key, who, suite, false))
        .collect()
}

/// A new device's key packages: `n` single-use ones and a last-resort one per suite.
pub(crate) fn initial_key_packages(
    p: &Provider,
    key: &SignatureKeyPair,
    who: &DeviceIdentity,
    n: usize,
) -> Result<Vec<Vec<u8>>, Error> {
    let mut all = Vec::new();
    for suite in Suite::ALL {
        all.extend(make_key_packages(p, key, who, suite, n)?);
        all.push(make_key_package(p, key, who, suite, true)?);
    }
    Ok(all)
}

impl Api {
    async fn claim_key_packages_for(
        &mut self,
        s: &Identity,
        user: &Username,
        suite: Suite,
    ) -> Result<sealpost_proto::ClaimKeyPackagesResponse, Error> {
        self.claim_key_packages(s, user, u16::from(suite.ciphersuite()))
            .await
    }

    async fn key_package_stock_for(&mut self, s: &Identity, suite: Suite) -> Result<u64, Error> {
        self.key_package_stock(s, u16::from(suite.ciphersuite()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_holding_secrets_cannot_be_printed_with_debug() {
        // The probe itself: a type with `Debug` is seen as one.
        assert!(implements_debug!(String));
        assert!(implements_debug!(Event));
        // Device and account keys, the store key and what seals with it, the session token,
        // a device link in progress (its code), and whatever holds them.
        assert!(!implements_debug!(Identity));
        assert!(!implements_debug!(Client));
        assert!(!implements_debug!(PendingLink));
        assert!(!implements_debug!(crate::vault::StoreKey));
        assert!(!implements_debug!(crate::store::Sealer));
        assert!(!implements_debug!(crate::store::Profile));
        assert!(!implements_debug!(crate::api::Api));
        assert!(!implements_debug!(BenchBatch));
    }

    #[test]
    fn a_key_pairs_debug_output_leaves_the_private_key_out() {
        // openmls's key pair has a `Debug` of its own; it must stay redacted.
        let key = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
        let json = serde_json::to_value(&key).unwrap();
        let private: Vec<u8> = serde_json::from_value(json["private"].clone()).unwrap();
        assert_eq!(private.len(), 32);
        let shown = format!("{key:?}");
        assert!(shown.contains("***"), "{shown}");
        assert!(!shown.contains(&format!("{private:?}")), "{shown}");
        assert!(!shown.contains(&hex::encode(&private)), "{shown}");
    }
}
