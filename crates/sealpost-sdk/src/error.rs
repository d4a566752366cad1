//! The SDK's errors. Messages are for people; none contains message text or key material, and
//! none names a command or an option of a front end (front ends add their own advice).

use sealpost_proto::{ErrorCode, IdError};

/// Everything that can go wrong in the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The profile directory has no account yet.
    #[error("no account in this profile")]
    NotRegistered,
    /// The profile already has an account.
    #[error("this profile already has an account ({0})")]
    AlreadyRegistered(String),
    /// Another process has the profile open.
    #[error("the profile is in use by another sealpost process")]
    ProfileLocked,
    /// The store key is wrapped and no passphrase was given.
    #[error("this profile is protected by a passphrase, and none was given")]
    PassphraseRequired,
    /// The passphrase does not open the store key.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The local store failed or is damaged.
    #[error("local store: {0}")]
    Store(String),
    /// A name on the command line is not valid.
    #[error(transparent)]
    InvalidId(#[from] IdError),
    /// No conversation matches.
    #[error("no conversation named {0}")]
    UnknownConversation(String),
    /// Several conversations match.
    #[error("{0} is ambiguous; use one of: {1}")]
    AmbiguousConversation(String, String),
    /// The server no longer knows this device: it was removed from its account (by another of
    /// the account's devices), and can no longer sign in or read new messages.
    #[error(
        "this device was removed from its account: it can no longer sign in or read new messages"
    )]
    DeviceRemoved,
    /// A message is larger than the server accepts; nothing was sent or kept.
    #[error("the message is {}; this server accepts at most {}", size_text(*size), size_text(*limit))]
    TooLarge {
        /// Its size in bytes (encoded).
        size: u64,
        /// The largest this server takes, in bytes.
        limit: u64,
    },
    /// A group would have more devices than the server allows; nothing was changed.
    #[error(
        "the group would have {devices} devices (each person's phones and computers count); this server allows at most {limit} in one group"
    )]
    GroupTooLarge {
        /// Devices the group would have.
        devices: u64,
        /// The most the server allows.
        limit: u64,
    },
    /// A commit that adds members would be larger than the server accepts (even for one
    /// device); nothing was changed.
    #[error("adding these devices takes a change of {}; this server accepts at most {}", size_text(*size), size_text(*limit))]
    CommitTooLarge {
        /// The commit and its Welcome, bytes.
        size: u64,
        /// The largest this server takes, bytes.
        limit: u64,
    },
    /// The server could not be reached.
    #[error("cannot reach the server at {url}: {reason} (nothing was lost: try again later)")]
    ServerUnreachable {
        /// The server.
        url: String,
        /// Why.
        reason: String,
    },
    /// A message was sent, but the server's answer was lost: it may have been stored. It is
    /// kept, and the next sync posts the same ciphertext again, which the server stores only if
    /// it has not already, and says what became of it.
    #[error(
        "the server did not confirm the message ({reason}): it is kept, and the next sync sends \
         it again and says whether it arrived; sending it yourself again would send it twice"
    )]
    Unconfirmed {
        /// Why there was no answer.
        reason: String,
    },
    /// The server answered with an error.
    #[error("the server refused: {message}")]
    Server {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The server answered with something that is not valid.
    #[error("the server sent an invalid answer: {0}")]
    Protocol(String),
    /// An MLS operation failed.
    #[error("MLS: {0}")]
    Mls(String),
    /// A cryptographic primitive failed.
    #[error("cryptography failed: {0}")]
    Crypto(&'static str),
    /// Something the server sent failed a security check and was refused.
    #[error("security check failed ({alert:?}): {detail}")]
    Security {
        /// What kind of problem.
        alert: crate::model::SecurityAlert,
        /// What exactly.
        detail: String,
    },
    /// Internal: processing must stop until these users' directory entries are fetched.
    #[doc(hidden)]
    #[error("directory entries needed for {0:?}")]
    NeedDirectory(Vec<sealpost_proto::Username>),
    /// A conversation was named by something that is neither `@user`, `#name` nor an id.
    #[error("{0}: name a person as @user, a group as #name, or a conversation by its id")]
    BadTarget(String),
    /// A group name outside the rules.
    #[error("a group name is 1 to 64 letters, digits, '-', '_' or '.'")]
    BadGroupName,
    /// The server URL is not an http(s) URL.
    #[error("the server URL must start with http:// or https://")]
    BadServerUrl,
    /// No account of this name on the server (or in its key directory).
    #[error("{0} does not exist on this server")]
    UnknownUser(String),
    /// Not a device id or a prefix of one (at least 4 hex digits).
    #[error("{0} is not a device id")]
    BadDeviceId(String),
    /// No device of this account has this id (or prefix).
    #[error("your account has no device {0}")]
    UnknownDevice(String),
    /// Several devices of this account start with this prefix.
    #[error("{0} could be any of {1}: give more of the id")]
    AmbiguousDevice(String, String),
    /// A device cannot remove itself from its account.
    #[error("this is the device you are using: remove it from another device of the account")]
    OwnDevice,
    /// A link code that does not decode.
    #[error("not a link code: {0}")]
    BadLinkCode(String),
    /// No new device waits with this link code.
    #[error("no device is waiting with this code")]
    NoLinkWaiting,
    /// A conversation with oneself.
    #[error("you cannot open a conversation with yourself")]
    SelfConversation,
    /// A safety number with oneself.
    #[error("this is your own account: verify someone else")]
    OwnAccount,
    /// The safety number given is not the current one; nothing changed.
    #[error("that is not the safety number with {0}: compare again (nothing was changed)")]
    WrongSafetyNumber(String),
    /// Everyone to be added is a member already, or has no device.
    #[error("nobody to add: they are members already or have no device")]
    NobodyToAdd,
    /// None of those to be removed is a member.
    #[error("none of them is a member")]
    NotMembers,
    /// Removing oneself is leaving.
    #[error("you cannot remove yourself: leave the conversation instead")]
    RemoveSelf,
    /// This device is no longer a member of the conversation.
    #[error("you are no longer a member of {0}")]
    NotMember(String),
    /// A conversation this device is still in cannot be deleted.
    #[error("you are still in {0}: leave it first")]
    StillMember(String),
    /// An earlier change to the conversation has not come back from the server: the next sync
    /// settles it.
    #[error(
        "an earlier change to this conversation has not come back from the server yet: try again \
         after the next sync"
    )]
    ChangePending,
    /// Other members' changes kept taking the conversation's epoch first.
    #[error("the conversation is busy with other members' changes: try again")]
    Busy,
    /// Not a message id or a prefix of one (at least 4 hex digits).
    #[error("{0} is not a message id")]
    BadMessageId(String),
    /// No message in this device's history has this id (or prefix).
    #[error("no message {0} here")]
    UnknownMessage(String),
    /// Several messages start with this prefix.
    #[error("{0} could be any of {1} messages: give more of the id")]
    AmbiguousMessage(String, usize),
    /// A reply names a message of another conversation.
    #[error("message {0} is in another conversation")]
    OtherConversation(String),
    /// Only a message's author edits or deletes it, and only its own reactions are taken back.
    #[error("only its author can change or delete message {0}")]
    NotAuthor(String),
    /// The message was deleted, or is not a text (it cannot be edited, replied or reacted to).
    #[error("message {0} cannot be changed: it was deleted, or is not a text")]
    NotChangeable(String),
    /// A reaction outside the rules.
    #[error(
        "a reaction is 1 to 64 bytes (an emoji, or a few) without spaces or control characters"
    )]
    BadReaction,
    /// Taking back a reaction that was not made.
    #[error("you have not reacted to message {0} with {1}")]
    NoSuchReaction(String, String),
    /// A disappearing-messages timer outside 1 second to a year.
    #[error("a disappearing-messages timer is 1 second to 365 days, or off")]
    BadTimer,
    /// A display name or avatar Sealpost does not send (why, for a person).
    #[error("{0}")]
    BadProfile(String),
    /// What was given to send is not a file (a directory, a device).
    #[error("{0} is not a file")]
    NotAFile(String),
    /// A file could not be read or written here.
    #[error("{0}")]
    File(String),
    /// The file changed while it was being sent.
    #[error("{0} changed while it was being sent: nothing was sent; send it again")]
    FileChanged(String),
    /// The file is larger than the server takes.
    #[error("the file is {}; this server takes files of at most {}", size_text(*size), size_text(*limit))]
    FileTooLarge {
        /// The file's size.
        size: u64,
        /// The largest the server takes.
        limit: u64,
    },
    /// The message has no file (or it was deleted).
    #[error("message {0} has no file to download")]
    NoFile(String),
    /// Downloading would overwrite a file.
    #[error("{0} exists already: give another path with --out")]
    FileExists(String),
    /// The fetched file failed a check: the server (or someone on the way) altered it. Nothing
    /// was saved.
    #[error("refused the file: {0}; nothing was saved")]
    FileRefused(String),
    /// An audit state file holds another server's audit.
    #[error("{} holds the audit of {holds}, not {wanted}", file.display())]
    AuditOfAnotherServer {
        /// The state file.
        file: std::path::PathBuf,
        /// The server it audits.
        holds: String,
        /// The server asked for.
        wanted: String,
    },
    /// A peer of the auditor (another auditor, or anything serving signed roots) gave nothing
    /// to compare with.
    #[error("cannot compare with {peer}: {reason}")]
    AuditPeer {
        /// The peer's URL.
        peer: String,
        /// Why.
        reason: String,
    },
    /// A test hook could not do what it was asked (test builds only).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    #[error("test hook: {0}")]
    Hook(String),
}

impl Error {
    pub(crate) fn mls(e: impl std::fmt::Debug) -> Self {
        // openmls errors carry no secrets; their Debug names the failed check.
        Error::Mls(format!("{e:?}"))
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Store(e.to_string())
    }
}

/// A size for people: bytes, KiB or MiB, with one decimal.
fn size_text(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else if b >= KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{bytes} bytes")
    }
}
