//! What the SDK shows: conversations, history items and events. These are the shapes the command
//! line prints with `--json`.

use sealpost_proto::DeviceId;
use serde::{Deserialize, Serialize};

/// Which ciphersuite a conversation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Suite {
    /// `MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519`: post-quantum hybrid (default).
    #[default]
    Pq,
    /// `MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519`.
    Classic,
}

impl Suite {
    /// Both suites.
    pub const ALL: [Suite; 2] = [Suite::Pq, Suite::Classic];

    /// The openmls ciphersuite.
    pub fn ciphersuite(self) -> openmls::prelude::Ciphersuite {
        match self {
            Suite::Pq => {
                openmls::prelude::Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519
            }
            Suite::Classic => {
                openmls::prelude::Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519
            }
        }
    }

    /// The suite of an openmls ciphersuite, if it is one we use.
    pub fn of(cs: openmls::prelude::Ciphersuite) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.ciphersuite() == cs)
    }
}

/// 1:1 or group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationKind {
    /// A 1:1 conversation, named by the other person's `@username`.
    Direct,
    /// A named group.
    Group,
}

/// One entry of a conversation's history, and one line of `sync`/`listen` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A text message.
    Message {
        /// `#group` or `@user`.
        conversation: String,
        /// `@sender`.
        from: String,
        /// The text.
        text: String,
        /// The sender's message id.
        id: MessageId,
        /// When the server took it (unix milliseconds; the MIMI draft's hub-accepted
        /// timestamp). For this device's own messages, and for messages received before Sealpost
        /// carried MIMI content, when the sender sent it, by the sender's clock.
        sent_at: u64,
        /// The sender sent it before a message of theirs already shown: it was held back on
        /// the way (by the server or the network) and arrives out of order.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        late: bool,
        /// This device's own message that the server refused (why): nobody received it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failed: Option<String>,
        /// This device's own message whose post the server has not confirmed (the answer was
        /// lost): it is kept, and posted again, as the same ciphertext, by the next operation
        /// that reaches the server, until the server says what became of it (a [`Event::Sent`]
        /// or [`Event::NotSent`] follows). Sending it again yourself would send it twice.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unconfirmed: bool,
        /// The message this one answers, if it is a reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<MessageId>,
        /// Its author changed it after sending it: `text` is the newest version.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        edited: bool,
        /// Its author took it back: its text is gone (from this device's store too).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        deleted: bool,
        /// Reactions to it, in the order they came.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reactions: Vec<Reaction>,
        /// The members it mentions (`@username`), each named in its text.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<String>,
        /// A file sent with it (`text` is then its caption, perhaps empty): fetch it with
        /// `download`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<FileInfo>,
        /// When it disappears from every member's device (unix milliseconds), in a
        /// conversation with disappearing messages.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
        /// For this account's own messages: who has it, and who read it, as far as they send
        /// receipts (each member chooses; see `sealpost settings`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        receipts: Vec<Receipt>,
        /// The display name the sender shares, if any: shown beside `from`, never instead of
        /// it (anyone can choose any name; the `@username` is who it is).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender_name: Option<String>,
    },
    /// A member shared their display name and avatar, or changed them.
    Profile {
        /// `#group` or `@user`.
        conversation: String,
        /// `@who`.
        from: String,
        /// Their display name (empty: none).
        name: String,
        /// Their avatar, if they have one: this device fetches it by itself (see
        /// `Client::profile_of`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        avatar: Option<FileInfo>,
    },
    /// A member says what became of messages of this account's: a device of theirs has them
    /// (`delivered`), or they read them (`read`). Only members who switched receipts on send
    /// them, and only to those who did too.
    Receipt {
        /// `#group` or `@user`.
        conversation: String,
        /// `@who`.
        from: String,
        /// `delivered` or `read`.
        status: ReceiptStatus,
        /// The messages (this account's own).
        messages: Vec<MessageId>,
    },
    /// A member started (`typing`) or stopped typing in the conversation. A start holds for
    /// [`TYPING_HOLDS_MS`] unless it is repeated; a stop may never come (they closed the
    /// app). Only members who switched typing indicators on send them, and only to those who
    /// did too.
    Typing {
        /// `#group` or `@user`.
        conversation: String,
        /// `@who`.
        from: String,
        /// Started (`true`) or stopped.
        typing: bool,
    },
    /// Someone reacted to a message, or took their reaction back (`removed`).
    Reacted {
        /// `#group` or `@user`.
        conversation: String,
        /// `@who`.
        from: String,
        /// The message reacted to.
        message: MessageId,
        /// The reaction (an emoji, or a few).
        emoji: String,
        /// The reaction was taken back.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        removed: bool,
    },
    /// The author of a message changed its text.
    Edited {
        /// `#group` or `@user`.
        conversation: String,
        /// `@author`.
        from: String,
        /// The message changed.
        message: MessageId,
        /// Its new text.
        text: String,
    },
    /// The author of a message took it back (for everyone).
    Deleted {
        /// `#group` or `@user`.
        conversation: String,
        /// `@author`.
        from: String,
        /// The message taken back.
        message: MessageId,
    },
    /// A member set how long messages in the conversation last (0: disappearing messages are
    /// off). Messages sent from then on disappear that long after the server took them.
    Timer {
        /// `#group` or `@user`.
        conversation: String,
        /// `@who` set it.
        by: String,
        /// Seconds; 0 for off.
        seconds: u64,
    },
    /// A message this version of Sealpost cannot show (another kind of content, or a feature
    /// it does not have): kept, so that a later version can show it.
    Unsupported {
        /// `#group` or `@user`.
        conversation: String,
        /// `@sender`.
        from: String,
        /// The sender's message id.
        id: MessageId,
        /// As in [`Event::Message`].
        sent_at: u64,
        /// What it is, for a person (e.g. "content of type image/png").
        what: String,
    },
    /// An unconfirmed message of this device's (see [`Event::Message`]) reached the server:
    /// it was stored once, and delivered.
    Sent {
        /// Conversation.
        conversation: String,
        /// The message id.
        id: MessageId,
    },
    /// An unconfirmed message of this device's (see [`Event::Message`]) was refused by the
    /// server: nobody received it, and its history entry says so.
    NotSent {
        /// Conversation.
        conversation: String,
        /// The message id.
        id: MessageId,
        /// The server's reason.
        reason: String,
    },
    /// Texts from a sender are missing before the next one: each of a device's texts is
    /// numbered (inside the encryption), and this many numbers were skipped. They were dropped
    /// on the way, or are held back and will arrive flagged `late`.
    Gap {
        /// Conversation.
        conversation: String,
        /// `@sender`.
        from: String,
        /// How many texts are missing.
        missing: u64,
    },
    /// Someone added a member.
    MemberAdded {
        /// Conversation.
        conversation: String,
        /// `@member`.
        member: String,
        /// `@adder`.
        by: String,
    },
    /// Someone removed a member.
    MemberRemoved {
        /// Conversation.
        conversation: String,
        /// `@member`.
        member: String,
        /// `@remover`.
        by: String,
    },
    /// A member added one more of their devices (e.g. a linked phone) to the conversation.
    DeviceAdded {
        /// Conversation.
        conversation: String,
        /// `@member`.
        member: String,
        /// The device (short id).
        device: String,
        /// The device's full id (absent in events stored before it was recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_id: Option<DeviceId>,
        /// `@adder`.
        by: String,
    },
    /// One device of a member was removed; the member's other devices stay.
    DeviceRemoved {
        /// Conversation.
        conversation: String,
        /// `@member`.
        member: String,
        /// The device (short id).
        device: String,
        /// The device's full id (absent in events stored before it was recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_id: Option<DeviceId>,
        /// `@remover`.
        by: String,
    },
    /// A device of this account was added to or removed from the key directory (seen by the
    /// account's other devices when they check its history).
    AccountDevice {
        /// The device (short id).
        device: String,
        /// The device's full id (absent in events stored before it was recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_id: Option<DeviceId>,
        /// Added or removed.
        change: DeviceChange,
        /// The directory epoch of the change.
        epoch: u64,
    },
    /// A member asked to leave.
    MemberLeft {
        /// Conversation.
        conversation: String,
        /// `@member`.
        member: String,
    },
    /// This device was added to a conversation.
    Joined {
        /// Conversation.
        conversation: String,
        /// `@adder`.
        by: String,
    },
    /// This device was removed from a conversation (or its leave completed).
    Removed {
        /// Conversation.
        conversation: String,
        /// `@remover`.
        by: String,
    },
    /// Something that may be an attack: see [`SecurityAlert`]. Nothing was applied.
    Security {
        /// The conversation it happened in; `None` for the account or the directory.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        conversation: Option<String>,
        /// What kind of problem.
        alert: SecurityAlert,
        /// What exactly, for a person.
        detail: String,
    },
    /// A message could not be processed. Nothing is sent back automatically.
    Undecryptable {
        /// Conversation.
        conversation: String,
        /// The server's sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
}

/// A conversation's id: its MLS group id, as 32 hex digits. Stable and unique, where a name is
/// for display (two groups can share one). Anything that takes a conversation takes it, or a
/// unique prefix of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConversationId(String);

impl ConversationId {
    pub(crate) fn of(group: sealpost_proto::GroupId) -> ConversationId {
        ConversationId(group.to_string())
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message's id, the same on every device: the MIMI content draft's (32 octets, as hex,
/// starting with `01`, derived from the message, its sender and its conversation), or, for
/// messages from before Sealpost carried MIMI content, 16 random octets chosen by the sender. A
/// message seen twice (a replay, a resend after a crash) is shown once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(String);

impl MessageId {
    pub(crate) fn new(id: String) -> MessageId {
        MessageId(id)
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as people are shown it, and as `Client::react` and the like take it: 8 hex
    /// digits, after the `01` (the hash algorithm) that starts every MIMI message id.
    pub fn short(&self) -> String {
        crate::client::short_message_id(&self.0)
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reaction to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    /// `@who`.
    pub from: String,
    /// The reaction (an emoji, or a few).
    pub emoji: String,
}

/// What a member says became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// A device of theirs has it.
    Delivered,
    /// They read it.
    Read,
}

/// Who has, or read, a message of this account's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// `@who`.
    pub from: String,
    /// The furthest they said it got.
    pub status: ReceiptStatus,
}

/// How long a typing indicator holds unless it is repeated (milliseconds). A device typing
/// repeats it every [`TYPING_REPEAT_MS`]; one older than this when it arrives is not shown.
pub const TYPING_HOLDS_MS: u64 = 15_000;

/// How often a device still typing says so again (milliseconds).
pub const TYPING_REPEAT_MS: u64 = 10_000;

/// What this account tells the people it talks to beyond its messages. Both are off until the
/// user switches them on; each works both ways (with receipts off, none are sent and the
/// receipts of others are not shown either; the same for typing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preferences {
    /// Send delivery and read receipts (and show those of others).
    #[serde(default)]
    pub receipts: bool,
    /// Send typing indicators (and show those of others).
    #[serde(default)]
    pub typing: bool,
}

/// A file sent in a message, as it is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Its name, as the sender gave it (shown as it is; a file saved here gets a safe name).
    pub name: String,
    /// Its media type, as the sender said (e.g. `image/jpeg`).
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A file's transfer so far (for progress bars and progress events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes sent or received so far (as they travel: encrypted).
    pub done: u64,
    /// All of them.
    pub total: u64,
}

/// What a file transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// A file being sent.
    Upload,
    /// A file being downloaded.
    Download,
}

/// A file transfer in progress, as the live client reports it (to progress bars, and as the
/// daemon's `progress` notifications).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Upload or download.
    pub kind: TransferKind,
    /// The file's name.
    pub name: String,
    /// Bytes moved so far (encrypted, as they travel).
    pub done: u64,
    /// All of them.
    pub total: u64,
}

/// An entry of a conversation's history with its place, for reading the history a page at a
/// time (see `Client::history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Its place in the history: entries further back have smaller positions. Pass the first
    /// entry's position as `before` to read the page before it.
    pub position: u64,
    /// The conversation.
    pub conversation_id: ConversationId,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// A message of this device's whose sending is not settled: the server's answer was lost, so
/// it may or may not have been stored (see `Client::unconfirmed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unconfirmed {
    /// The conversation, as shown.
    pub conversation: String,
    /// The conversation's id.
    pub conversation_id: ConversationId,
    /// The message's id, for a text (a message that names the group for new members has none).
    pub id: Option<MessageId>,
}

/// The place of an event in a profile's event log: ids grow, and are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub u64);

impl EventId {
    /// Before the first event: reading the log after it reads all of it.
    pub const START: EventId = EventId(0);
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An event as the log keeps it: with its id and the conversation it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedEvent {
    /// Its place in the log.
    pub event_id: EventId,
    /// The conversation's id, if it belongs to one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub conversation_id: Option<ConversationId>,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// What happened to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChange {
    /// Linked to the account.
    Added,
    /// Removed from the account.
    Removed,
}

/// What a security event is about. Each one means the server (or someone who controls it) may
/// be trying to add a reader or to show different people different keys; see
/// `docs/threat-model.md` for what to do about each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityAlert {
    /// An account's directory entry lists a device its account key did not certify (for your
    /// own account: a device none of your devices approved).
    UnapprovedDevice,
    /// A key package, commit or Welcome named a device that is not in its account's verified
    /// directory entry, or with another key. It was refused.
    UnverifiedMember,
    /// A peer's message carries a different directory root for the same epoch than the one this
    /// device verified: the server shows different people different directories.
    SplitView,
    /// The server answered with an older directory epoch than one already verified.
    DirectoryRollback,
    /// A directory proof or root signature did not verify.
    InvalidProof,
    /// This device is no longer in its own account's directory entry.
    DeviceMissing,
    /// A contact you verified has another account key now: their devices under it are refused,
    /// and sending to them is blocked until you compare and confirm the new safety number.
    VerifiedKeyChanged,
    /// A contact you had not verified has another account key than the one this device saw
    /// first: the server may be putting a device of its own in their place. Their devices under
    /// the new key are refused until you compare the new safety number and confirm it.
    AccountKeyChanged,
    /// The conversation was split: a message came from another state of the same epoch (its
    /// fork check differs), or from an epoch this device was never shown the way to. The
    /// server is showing different members different histories.
    Fork,
    /// The server acknowledged this device's change to a conversation (adding, removing,
    /// renewing keys) but did not deliver it back: it may be withholding it from members.
    WithheldCommit,
    /// Someone tried to join a conversation on their own from its public state (an MLS
    /// external commit) instead of being added by a member. Refused.
    ExternalJoin,
    /// The server handed out a one-time key package twice: to this device, one it had already
    /// used to add someone (that device was not added: it spent the key and could not have
    /// joined); or one of this device's own to two people adding it (the second invitation
    /// could not be taken).
    ReusedKeyPackage,
    /// A key package or a commit carried a public key nothing can be encrypted to (a low-order
    /// point): adding that device, or any later change of the conversation, would fail. It was
    /// refused.
    UnusableKey,
    /// A member tried to edit or delete someone else's message, or take back someone else's
    /// reaction. Only a message's author may. Refused.
    NotAuthor,
}

/// A conversation as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationInfo {
    /// `#name` (with `~id` when names clash) or `@user`.
    pub conversation: String,
    /// Its id (the MLS group id).
    pub id: ConversationId,
    /// Direct or group.
    pub kind: ConversationKind,
    /// The ciphersuite.
    pub ciphersuite: Suite,
    /// Member count (devices).
    pub members: usize,
    /// False once this device left or was removed.
    pub active: bool,
    /// Messages of others the user was not shown yet (see `Client::mark_read`), counted among
    /// the newest [`MAX_UNREAD_COUNTED`] entries of the history.
    #[serde(default)]
    pub unread: usize,
    /// The newest entry of its history, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<Box<Event>>,
}

/// How far back a conversation's unread messages are counted: a count this high means "this
/// many or more".
pub const MAX_UNREAD_COUNTED: usize = 1000;

/// What a person shares of themselves, as this device knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedProfile {
    /// `@username`.
    pub user: String,
    /// Their display name (empty: none).
    pub name: String,
    /// Their avatar, saved in this profile's `avatars/` directory, once fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<std::path::PathBuf>,
}

/// A member of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// `@username`.
    pub member: String,
    /// Their display name, if they share one (shown beside `member`, never instead of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The device.
    pub device: DeviceId,
    /// This device.
    pub you: bool,
}

/// A device of this account, as `sealpost device list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// The device id.
    pub device: DeviceId,
    /// This device.
    pub you: bool,
    /// Whether the account key certified it (an uncertified one is an attack).
    pub certified: bool,
}

/// Who this profile is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Whoami {
    /// `@username`.
    pub username: String,
    /// This device.
    pub device: DeviceId,
    /// The server URL.
    pub server: String,
}
