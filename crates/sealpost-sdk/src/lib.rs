//! The Sealpost client library (SDK). Every front end — the command line, and later the
//! terminal UI, the bot daemon and the local web UI — talks to the server only through it.
//!
//! A [`Client`] is one device of one account, stored in one profile directory: an SQLite database
//! whose sensitive values are sealed under a store key (see [`vault`]), holding both the MLS state
//! and the application state so that one transaction covers both.
#![forbid(unsafe_code)]

/// Whether a type implements `Debug`, decided at compile time: for the tests that keep types
/// holding secrets (keys, tokens, link codes) from ever being printed by a `{:?}`.
#[cfg(test)]
macro_rules! implements_debug {
    ($t:ty) => {{
        struct Probe<T: ?Sized>(std::marker::PhantomData<T>);
        #[allow(dead_code, reason = "one of the two traits is picked")]
        trait No {
            fn debug(&self) -> bool {
                false
            }
        }
        impl<T: ?Sized> No for &Probe<T> {}
        #[allow(dead_code, reason = "one of the two traits is picked")]
        trait Yes {
            fn debug(&self) -> bool {
                true
            }
        }
        impl<T: ?Sized + std::fmt::Debug> Yes for Probe<T> {}
        (&Probe::<$t>(std::marker::PhantomData)).debug()
    }};
}

mod aad;
mod api;
pub mod attachment;
pub mod audit;
mod client;
mod content;
mod directory;
mod error;
#[cfg(test)]
mod ietf_vectors;
mod live;
mod mls_storage;
mod model;
mod store;
pub mod vault;

/// The HTTP API alone, for the tests of another MLS implementation in Sealpost conversations
/// (`crates/sealpost-interop`).
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub use api::{Api, ChallengeSigner};
pub use client::{
    BenchBatch, Client, ClientSettings, LinkStep, MAX_PAST_EPOCHS, PendingLink, Verification,
    safety_number, ws_config,
};
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub use client::{CommitForgery, KeyPackageForgery};
pub use error::Error;
pub use live::{ClientGuard, Connection, Live, Subscription};
pub use model::{
    ConversationId, ConversationInfo, ConversationKind, DeviceChange, DeviceEntry, Event, EventId,
    FileInfo, HistoryEntry, LoggedEvent, MAX_UNREAD_COUNTED, MemberInfo, MessageId, Preferences,
    Progress, Reaction, Receipt, ReceiptStatus, SecurityAlert, SharedProfile, Suite,
    TYPING_HOLDS_MS, TYPING_REPEAT_MS, Transfer, TransferKind, Unconfirmed, Whoami,
};
pub use sealpost_proto::{DeviceId, Username};
pub use store::profile_holder;
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub use store::reseal_record_unchecked;
