//! The client: one account's device, its conversations, and the sync engine.
//!
//! Every change is one local transaction that covers the MLS state and the application state
//! (see `store`). Network I/O happens between transactions, never inside one. A delivery is
//! acknowledged to the server only after the transaction that processed it has committed.
//!
//! This file holds the client's state, opening and registering; the rest is split by
//! responsibility: `resolve` (names), `groups` (conversations and rosters), `send`, `outbox`
//! (unconfirmed messages), `commit` (the commit engine), `key_packages`, `keydir` (the key
//! directory and self-monitoring), `trust` (the one gate every member and device passes),
//! `receive` (sync, Welcomes, commits, messages), `link` (devices), `verify` (safety numbers),
//! and `hooks` (test builds only).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openmls::key_packages::errors::KeyPackageVerifyError;
use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, ContentType, Credential, CredentialWithKey,
    ExtensionType, GroupId as MlsGroupId, KeyPackage, LeafNodeIndex, LeafNodeParameters,
    MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig,
    MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, ProcessedMessageContent, ProcessedWelcome,
    Proposal, ProtocolMessage, ProtocolVersion, Sender,
};
use openmls::treesync::errors::LifetimeError;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::signatures::Signer;
use openmls_traits::types::SignatureScheme;
use rusqlite::Connection;
use sealpost_proto::{
    AckRequest, Delivery, DeliveryKind, DeviceId, DeviceIdentity, ErrorCode, GroupId,
    PADDING_BUCKETS, RegisterRequest, SyncRequest, Username, device_certificate_message, pad,
    padded_len, unpad,
};
use serde::{Deserialize, Serialize};
use tls_codec::{Deserialize as _, Serialize as _, Size as _};
use zeroize::Zeroizing;

mod changes;
mod commit;
mod files;
mod groups;
#[cfg(feature = "test-hooks")]
mod hooks;
mod key_packages;
mod keydir;
mod link;
mod outbox;
mod profiles;
mod receipts;
mod receive;
mod resolve;
mod send;
mod trust;
mod verify;

use commit::forget_pending_commit;
pub(crate) use key_packages::initial_key_packages;
use key_packages::make_key_packages;
use keydir::{DirCheck, DirView};
use resolve::valid_group_name;

pub(crate) use changes::short as short_message_id;
#[cfg(feature = "test-hooks")]
pub use hooks::{CommitForgery, KeyPackageForgery};
pub use link::{LinkStep, PendingLink};
use receive::message_aad;
pub use receive::ws_config;
pub(crate) use receive::{Backoff, PushRefused, connect_push};
pub use verify::{Verification, safety_number};

use crate::aad::{Aad, FORK_CHECK_LABEL, FORK_CHECK_LEN};
use crate::api::{Api, ChallengeSigner};
use crate::content;
use crate::directory::{DirectoryState, Roots, Verified, security, verify_proof};
use crate::error::Error;
use crate::model::{
    ConversationId, ConversationInfo, ConversationKind, DeviceChange, Event, EventId, HistoryEntry,
    LoggedEvent, MAX_UNREAD_COUNTED, MemberInfo, MessageId, Preferences, Reaction, Receipt,
    ReceiptStatus, SecurityAlert, Suite, Unconfirmed, Whoami,
};
use crate::store::{self, Profile, Provider, Sealer, conv_row, item_row, put_meta};
use sealpost_proto::directory::MAX_BATCH_LOOKUP;
use sealpost_proto::mimi::Content;

/// The event log consumer whose place [`Client::sync`] keeps.
const SYNC_CONSUMER: &str = "sdk.sync";

/// Past epochs whose keys are kept, so that messages sent just before a commit still decrypt.
pub const MAX_PAST_EPOCHS: usize = 5;

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
    /// How long messages sent here last, seconds (0: for ever), as a member last set it.
    #[serde(default)]
    timer: u64,
    /// Messages received here whose delivery receipt is still to be sent (ids in hex).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    receipts_owed: Vec<String>,
    /// The history row up to which the user was shown this conversation (0: none yet).
    #[serde(default)]
    read_up_to: i64,
    /// The version of this account's profile last sent here (0: none yet).
    #[serde(default)]
    profile_sent: u64,
}

#[derive(Debug, Clone)]
struct Conv {
    info: ConvInfo,
    cursor: u64,
}

/// A reaction as the history keeps it: with its message id, to be found when taken back.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ItemReaction {
    from: String,
    emoji: String,
    id: String,
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
        /// The id of the message this one answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        edited: bool,
        /// Taken back by its author: `text` is empty.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        deleted: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reactions: Vec<ItemReaction>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<String>,
        /// A file (`text` is its caption).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<Box<content::FileRef>>,
        /// When it disappears (unix milliseconds).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
        /// Who has it, or read it (this account's own messages).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        receipts: Vec<Receipt>,
    },
    /// A member's receipts for messages of this account's (applied to them; an event only).
    Receipt {
        from: String,
        status: ReceiptStatus,
        messages: Vec<String>,
    },
    /// A status report as it arrives, before it is applied (see `receipts`): never stored.
    #[serde(skip)]
    Status(receipts::Report),
    /// A member started or stopped typing (an event only).
    Typing {
        from: String,
        typing: bool,
    },
    /// A member shared their display name and avatar (kept with the contacts; an event only).
    Profile {
        from: String,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        avatar: Option<Box<content::FileRef>>,
        /// When the server took it.
        at: u64,
    },
    /// A member set the disappearing-messages timer (seconds; 0: off).
    Timer {
        by: String,
        seconds: u64,
    },
    /// A reaction to the message `message`, or its removal (applied to that message; an event
    /// only).
    Reacted {
        from: String,
        message: String,
        emoji: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        removed: bool,
    },
    /// The author's new text for `message` (applied to it; an event only).
    Edited {
        from: String,
        message: String,
        text: String,
    },
    /// The author took back `message` (applied to it; an event only).
    Deleted {
        from: String,
        message: String,
    },
    /// A change to an earlier message as it arrives, before it is applied (see `changes`):
    /// never stored.
    #[serde(skip)]
    Change(changes::Change),
    /// A message this version cannot show (see `content`).
    Unsupported {
        from: String,
        id: String,
        sent_at: u64,
        what: String,
        /// The MIMI content as it came, in hex: kept for a later version.
        content: String,
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
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_id: Option<DeviceId>,
        by: String,
    },
    DeviceRemoved {
        member: String,
        device: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_id: Option<DeviceId>,
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
    /// A text message, as it arrives or is sent (nothing changed about it yet).
    fn text(from: String, text: String, id: String, sent_at: u64) -> Item {
        Item::Message {
            from,
            text,
            id,
            sent_at,
            late: false,
            failed: None,
            unconfirmed: false,
            reply_to: None,
            edited: false,
            deleted: false,
            reactions: Vec::new(),
            mentions: Vec::new(),
            file: None,
            expires_at: None,
            receipts: Vec::new(),
        }
    }

    /// Sets when a message disappears.
    fn expires(&mut self, at: Option<u64>) {
        if let Item::Message { expires_at, .. } = self {
            *expires_at = at;
        }
    }

    /// Sets what a received message says beyond its text.
    fn received_as(
        &mut self,
        is_late: bool,
        answers: Option<String>,
        mentioned: Vec<String>,
        with_file: Option<content::FileRef>,
    ) {
        if let Item::Message {
            late,
            reply_to,
            mentions,
            file,
            ..
        } = self
        {
            *late = is_late;
            *reply_to = answers;
            *mentions = mentioned;
            *file = with_file.map(Box::new);
        }
    }

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
                reply_to,
                edited,
                deleted,
                reactions,
                mentions,
                file,
                expires_at,
                receipts,
            } => Event::Message {
                conversation,
                from,
                text,
                id: MessageId::new(id),
                sent_at,
                late,
                failed,
                unconfirmed,
                reply_to: reply_to.map(MessageId::new),
                edited,
                deleted,
                reactions: reactions
                    .into_iter()
                    .map(|r| Reaction {
                        from: r.from,
                        emoji: r.emoji,
                    })
                    .collect(),
                mentions,
                file: file.map(|f| f.info()),
                expires_at,
                receipts,
                sender_name: None,
            },
            Item::Receipt {
                from,
                status,
                messages,
            } => Event::Receipt {
                conversation,
                from,
                status,
                messages: messages.into_iter().map(MessageId::new).collect(),
            },
            Item::Status(report) => Event::Undecryptable {
                conversation,
                seq: 0,
                reason: format!("receipts from {} that were not applied", report.from),
            },
            Item::Typing { from, typing } => Event::Typing {
                conversation,
                from,
                typing,
            },
            Item::Profile {
                from, name, avatar, ..
            } => Event::Profile {
                conversation,
                from,
                name,
                avatar: avatar.map(|f| f.info()),
            },
            Item::Timer { by, seconds } => Event::Timer {
                conversation,
                by,
                seconds,
            },
            Item::Reacted {
                from,
                message,
                emoji,
                removed,
            } => Event::Reacted {
                conversation,
                from,
                message: MessageId::new(message),
                emoji,
                removed,
            },
            Item::Edited {
                from,
                message,
                text,
            } => Event::Edited {
                conversation,
                from,
                message: MessageId::new(message),
                text,
            },
            Item::Deleted { from, message } => Event::Deleted {
                conversation,
                from,
                message: MessageId::new(message),
            },
            Item::Change(change) => Event::Undecryptable {
                conversation,
                seq: 0,
                reason: format!(
                    "a change to message {} that was not applied",
                    change.message()
                ),
            },
            Item::Unsupported {
                from,
                id,
                sent_at,
                what,
                content: _,
            } => Event::Unsupported {
                conversation,
                from,
                id: MessageId::new(id),
                sent_at,
                what,
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
            Item::DeviceAdded {
                member,
                device,
                device_id,
                by,
            } => Event::DeviceAdded {
                conversation,
                member,
                device,
                device_id,
                by,
            },
            Item::DeviceRemoved {
                member,
                device,
                device_id,
                by,
            } => Event::DeviceRemoved {
                conversation,
                member,
                device,
                device_id,
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

/// Turns the server's "not found" for a request about `user` into "no such user".
fn unknown_user(user: &Username) -> impl FnOnce(Error) -> Error + '_ {
    move |e| match e {
        Error::Server {
            code: ErrorCode::NotFound,
            ..
        } => Error::UnknownUser(at(user)),
        other => other,
    }
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

fn put_conv(tx: &Connection, sealer: &Sealer, group: GroupId, conv: &Conv) -> Result<(), Error> {
    let info = serde_json::to_vec(&conv.info).map_err(|e| Error::Store(e.to_string()))?;
    let sealed = sealer.seal_at("conv", &conv_row(group.as_bytes(), conv.cursor), &info)?;
    store::put_conversation(tx, group.as_bytes(), conv.cursor, &sealed)
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
        Item::Message { id, .. } | Item::Unsupported { id, .. } => Some(id.clone()),
        _ => None,
    };
    let json = Zeroizing::new(serde_json::to_vec(item).map_err(|e| Error::Store(e.to_string()))?);
    // The row id orders the history and is bound into the seal.
    let id = store::next_history_id(tx)?;
    let sealed = sealer.seal_at("item", &item_row(group.as_bytes(), id), &json)?;
    let new = store::insert_history(tx, id, group.as_bytes(), seq, msg_id.as_deref(), &sealed)?;
    if let (
        true,
        Item::Message {
            expires_at: Some(at),
            ..
        },
    ) = (new, item)
    {
        store::expire_at(tx, store::EXPIRING_ROW, id, *at)?;
    }
    Ok(new.then_some(id))
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
    store::replace_history_item(tx, row, &sealed)
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
    Ok(!keep_item(tx, sealer, group, seq, item.clone())?.is_empty())
}

/// [`put_event_item`], returning the items as kept: a change to an earlier message is applied to
/// it (see `changes`) and logged as applied, or not at all; so are receipts (see `receipts`).
fn keep_item(
    tx: &Connection,
    sealer: &Sealer,
    group: GroupId,
    seq: Option<u64>,
    item: Item,
) -> Result<Vec<Item>, Error> {
    let log = |item: &Item| {
        let record = LoggedRecord::Conversation { item: item.clone() };
        put_event_record(tx, sealer, Some(group), &record)
    };
    match item {
        Item::Change(change) => {
            let Some(applied) = changes::apply(tx, sealer, group, change)? else {
                return Ok(Vec::new());
            };
            let event = log(&applied)?;
            // A change to a message that disappears disappears with it (an edit holds its text).
            let target = match &applied {
                Item::Reacted { message, .. }
                | Item::Edited { message, .. }
                | Item::Deleted { message, .. } => Some(message),
                _ => None,
            };
            if let Some(message) = target
                && let Some(row) = store::history_row(tx, group.as_bytes(), message)?
                && let Some(at) = store::row_expiry(tx, row)?
            {
                store::expire_at(tx, store::EXPIRING_EVENT, event, at)?;
            }
            Ok(vec![applied])
        }
        Item::Status(report) => {
            let applied = receipts::apply(tx, sealer, group, report)?;
            for item in &applied {
                log(item)?;
            }
            Ok(applied)
        }
        Item::Profile {
            ref from,
            ref name,
            ref avatar,
            at,
        } => {
            if !profiles::apply(tx, sealer, from, name, avatar.as_deref(), at)? {
                return Ok(Vec::new());
            }
            log(&item)?;
            Ok(vec![item])
        }
        Item::Typing { .. } => {
            // Not worth keeping once it no longer holds.
            let event = log(&item)?;
            let until = now_ms().saturating_add(crate::model::TYPING_HOLDS_MS);
            store::expire_at(tx, store::EXPIRING_EVENT, event, until)?;
            Ok(vec![item])
        }
        item => match put_item(tx, sealer, group, seq, &item)? {
            Some(row) => {
                store::log_item(tx, group.as_bytes(), row)?;
                Ok(vec![item])
            }
            None => Ok(Vec::new()),
        },
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
) -> Result<i64, Error> {
    let json = Zeroizing::new(serde_json::to_vec(record).map_err(|e| Error::Store(e.to_string()))?);
    store::log_record(
        tx,
        sealer,
        group.as_ref().map(|g| g.as_bytes().as_slice()),
        &json,
    )
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
    /// What the user chose to tell others beyond messages (receipts, typing).
    prefs: Preferences,
    /// Auditors of the key directory whose checked roots this device compares with its own.
    auditors: Vec<String>,
    /// What others share of themselves (display names, avatars).
    contacts: profiles::Contacts,
    /// A profile arrived since avatars were last fetched (or the profile was opened).
    profiles_changed: bool,
    /// The version of this account's own profile (0: never set).
    own_version: u64,
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Err(e) = self.save_session() {
            tracing::debug!(error = %e, "the session token was not kept");
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
            prefs: Preferences::default(),
            contacts: profiles::Contacts::new(),
            profiles_changed: true,
            own_version: 0,
            welcome_waits: false,
            batch_groups: None,
            proposals_to_check: None,
            dir: DirView {
                state: Some(dir_state),
                ..DirView::default()
            },
            linked: BTreeMap::new(),
            merged_commits: Vec::new(),
            auditors: Vec::new(),
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
            prefs: Preferences::default(),
            contacts: profiles::Contacts::new(),
            profiles_changed: true,
            own_version: 0,
            welcome_waits: false,
            batch_groups: None,
            proposals_to_check: None,
            dir: DirView::default(),
            linked: BTreeMap::new(),
            merged_commits: Vec::new(),
            auditors: Vec::new(),
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
        let mut convs = BTreeMap::new();
        for store::ConversationRow {
            group: gid,
            cursor,
            sealed: info,
        } in store::conversations(conn)?
        {
            let info = self
                .profile
                .sealer
                .open_at("conv", &conv_row(&gid, cursor), &info)?;
            let info: ConvInfo =
                serde_json::from_slice(&info).map_err(|e| Error::Store(e.to_string()))?;
            convs.insert(GroupId::from_slice(&gid)?, Conv { info, cursor });
        }
        self.convs = convs;
        self.dir.state = match self.profile.meta("directory")? {
            Some(json) => Some(
                serde_json::from_slice(&json)
                    .map_err(|e| Error::Store(format!("the directory record is damaged: {e}")))?,
            ),
            None => None,
        };
        let mut roots = Roots::new();
        for (epoch, root) in store::directory_roots(conn)? {
            let root = <[u8; 32]>::try_from(root.as_slice())
                .map_err(|_| Error::Store("a stored directory root is damaged".into()))?;
            roots.insert(epoch, root);
        }
        self.dir.roots = roots;
        if let Some(json) = self.profile.meta("linked_conversations")? {
            let list: Vec<link::LinkedConversation> = serde_json::from_slice(&json)
                .map_err(|e| Error::Store(format!("the linked conversations are damaged: {e}")))?;
            self.linked = list.into_iter().map(|c| (c.group, c)).collect();
        }
        self.contacts = profiles::load(conn, &self.profile.sealer)?;
        self.load_own_version()?;
        self.prefs = store::get_meta_json(
            self.profile.conn(),
            &self.profile.sealer,
            receipts::PREFERENCES,
            "preferences",
        )?;
        self.auditors = store::get_meta_json(
            self.profile.conn(),
            &self.profile.sealer,
            keydir::AUDITORS,
            "auditor list",
        )?;
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

    /// The stored history is sealed JSON items: each kind, in the form versions before MIMI
    /// content stored it, still reads and is shown as it was.
    #[test]
    fn history_items_of_earlier_versions_still_read() {
        let old = [
            (
                r#"{"k":"message","from":"@bob","text":"hi","id":"00112233445566778899aabbccddeeff","sent_at":5}"#,
                "message",
            ),
            (
                r#"{"k":"message","from":"@me","text":"x","id":"ffeeddccbbaa99887766554433221100","sent_at":6,"failed":"too large"}"#,
                "message",
            ),
            (r#"{"k":"gap","from":"@bob","missing":2}"#, "gap"),
            (
                r#"{"k":"member_added","member":"@cat","by":"@bob"}"#,
                "member_added",
            ),
            (
                r#"{"k":"device_added","member":"@cat","device":"0a0b0c0d","by":"@bob"}"#,
                "device_added",
            ),
            (
                r#"{"k":"undecryptable","seq":3,"reason":"bad padding"}"#,
                "undecryptable",
            ),
            (
                r#"{"k":"security","alert":"unverified_member","detail":"refused"}"#,
                "security",
            ),
            (r#"{"k":"joined","by":"@bob"}"#, "joined"),
        ];
        for (json, kind) in old {
            let item: Item = serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            let shown = serde_json::to_value(item.render("@bob".into())).unwrap();
            assert_eq!(shown["event"], kind, "{json}");
        }
        let item: Item = serde_json::from_str(old[0].0).unwrap();
        assert_eq!(
            item.render("@bob".into()),
            Event::Message {
                conversation: "@bob".into(),
                from: "@bob".into(),
                text: "hi".into(),
                id: MessageId::new("00112233445566778899aabbccddeeff".into()),
                sent_at: 5,
                late: false,
                failed: None,
                unconfirmed: false,
                reply_to: None,
                edited: false,
                deleted: false,
                reactions: Vec::new(),
                mentions: Vec::new(),
                file: None,
                expires_at: None,
                receipts: Vec::new(),
                sender_name: None,
            }
        );
    }
}
