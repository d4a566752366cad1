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
    /// The request does not make sense (e.g. removing someone who is not a member).
    #[error("{0}")]
    Invalid(String),
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
