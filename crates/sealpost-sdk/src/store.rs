//! The profile: one SQLite database (WAL) per device, holding the MLS state and the
//! application state, so that one transaction covers both.
//!
//! openmls keeps its state in a key-value store ([`CheckedStorage`]); [`MlsState`] remembers what was last
//! committed and, at the end of each operation, writes exactly the entries that changed (sealed)
//! in the same transaction as the history and cursors. If the transaction fails, the in-memory
//! state is put back to what was committed. A crash therefore never leaves MLS state and
//! application state out of step.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use crate::mls_storage::CheckedStorage;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;
use crate::vault::StoreKey;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS mls (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conversations (
    group_id BLOB PRIMARY KEY,
    cursor   INTEGER NOT NULL,
    info     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    id       INTEGER PRIMARY KEY,
    group_id BLOB NOT NULL,
    seq      INTEGER,
    msg_id   TEXT,
    item     BLOB NOT NULL,
    UNIQUE (group_id, msg_id)
);
CREATE INDEX IF NOT EXISTS history_group ON history(group_id, id);
-- Changes to messages (reactions, edits, deletions), by their own message ids: the history row
-- each applies to. A change is applied once, and a reaction is found again when taken back.
CREATE TABLE IF NOT EXISTS message_changes (
    group_id BLOB NOT NULL,
    msg_id   TEXT NOT NULL,
    row      INTEGER NOT NULL,
    PRIMARY KEY (group_id, msg_id)
) WITHOUT ROWID;
-- What disappears, and when (unix milliseconds): history rows (kind 1; their events go with
-- them) and event records about them (kind 2: reactions, edits, deletions).
CREATE TABLE IF NOT EXISTS expiring (
    kind       INTEGER NOT NULL,
    id         INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS expiring_at ON expiring(expires_at);
CREATE TABLE IF NOT EXISTS sent (group_id BLOB NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (group_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending_commits (group_id BLOB PRIMARY KEY, payload BLOB NOT NULL);
-- The Welcome that goes with a pending commit that adds members, to post both again when the
-- first post's outcome is unknown.
CREATE TABLE IF NOT EXISTS pending_welcomes (group_id BLOB PRIMARY KEY, welcome BLOB NOT NULL);
-- Key directory roots this device verified (public data), to compare with what peers carry.
CREATE TABLE IF NOT EXISTS directory_roots (epoch INTEGER PRIMARY KEY, root BLOB NOT NULL);
-- Key packages this device used to add someone (their hash references): a server that hands
-- one out again is caught. Last-resort key packages are meant to be reused and are not kept.
CREATE TABLE IF NOT EXISTS used_key_packages (ref BLOB PRIMARY KEY) WITHOUT ROWID;
-- This device's own one-time key packages that a Welcome spent (their hash references), and
-- the group it joined: a Welcome for one of them to another group means the server handed it
-- to two people adding this device.
CREATE TABLE IF NOT EXISTS spent_key_packages (ref BLOB PRIMARY KEY, group_id BLOB NOT NULL) WITHOUT ROWID;
-- Application messages encrypted and not yet confirmed by the server, in the order they were
-- made: the same ciphertext is posted again until the server says what became of it (it keeps
-- the first copy, and answers a repeat with where that landed). `row` is the message's history
-- row, `n` its number among this device's texts in the conversation (0: not a text). The
-- payload is the MLS ciphertext the server sees anyway.
CREATE TABLE IF NOT EXISTS outbox (
    id       INTEGER PRIMARY KEY,
    group_id BLOB NOT NULL,
    row      INTEGER,
    n        INTEGER NOT NULL,
    payload  BLOB NOT NULL
);
-- The event log: everything this device learned, in order, appended in the transaction that
-- changed the state it reports. An event is either a history item (`history_id`; its text stays
-- sealed there, once) or a record of its own (`event`, sealed). Ids are never reused
-- (AUTOINCREMENT): a deleted conversation's events go, and consumers' cursors stay valid.
CREATE TABLE IF NOT EXISTS events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id   BLOB,
    history_id INTEGER,
    event      BLOB
);
-- Each consumer of the log (the command line, a daemon's subscribers) and the newest event it
-- has seen with every one before it.
CREATE TABLE IF NOT EXISTS event_cursors (consumer TEXT PRIMARY KEY, cursor INTEGER NOT NULL);
-- Events a consumer has seen beyond its cursor (a command shows the security events it found and
-- leaves the rest for `sync`).
CREATE TABLE IF NOT EXISTS events_seen (
    consumer TEXT NOT NULL,
    id       INTEGER NOT NULL,
    PRIMARY KEY (consumer, id)
) WITHOUT ROWID;
"#;

/// The profile's format (SQLite's `user_version`). 4: the MLS records that grow with a group
/// may be CBOR (see `mls_storage`), which a Sealpost of format 3 cannot read; a profile of
/// format 3 is format 4 as it stands. 3: every sealed record is bound to its row (see
/// [`Sealer::seal_at`]); 2 sealed MLS, conversation and history records under their kind only,
/// so that one moved to another row still opened there.
const PROFILE_VERSION: i64 = 4;

/// Encrypts values for the store.
pub struct Sealer {
    key: StoreKey,
    crypto: RustCrypto,
}

impl Sealer {
    /// The raw store key, for tests that search logs and traffic for it.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn expose_key(&self) -> &[u8] {
        self.key.expose()
    }

    /// Seals a record of kind `kind` for the row whose key is `row`. The place is bound into the
    /// seal: someone who can write the file but has no key cannot move a record to another row
    /// (one conversation's name or history into another, one group's MLS secrets into
    /// another's), change a conversation's cursor, or pass one kind of record for another.
    pub fn seal_at(&self, kind: &str, row: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        self.key.seal(&self.crypto, &place(kind, row), plaintext)
    }

    /// Opens what [`seal_at`](Self::seal_at) sealed for the same kind and row.
    pub fn open_at(
        &self,
        kind: &str,
        row: &[u8],
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
        self.key
            .open(&self.crypto, &place(kind, row), sealed)
            .map_err(|_| {
                let what = match kind {
                    "conv" => "conversation",
                    "item" => "history",
                    "mls" => "MLS state",
                    "event" => "event log",
                    _ => "profile setting",
                };
                Error::Store(format!(
                    "a {what} record of the profile does not open: the profile is damaged, was \
                     altered (a record moved to another row), or the key is wrong"
                ))
            })
    }

    /// Opens a record sealed under its kind only (profile format 2), to seal it again.
    fn open_unbound(
        &self,
        kind: &str,
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
        self.key.open(&self.crypto, kind.as_bytes(), sealed)
    }
}

/// What a record's seal is bound to: its kind and its row.
fn place(kind: &str, row: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(kind.len() + 1 + row.len());
    aad.extend_from_slice(kind.as_bytes());
    aad.push(0);
    aad.extend_from_slice(row);
    aad
}

/// Where a history item lives: its conversation and its row id (which orders the history).
pub fn item_row(group: &[u8], id: i64) -> Vec<u8> {
    let mut row = group.to_vec();
    row.extend_from_slice(&id.to_be_bytes());
    row
}

/// Where an event record of its own lives: its id.
fn event_row(id: i64) -> [u8; 8] {
    id.to_be_bytes()
}

/// One entry of the event log as stored: a history item, or a sealed record of its own.
pub enum StoredEvent {
    /// The history item `history_id` of the conversation `group` (opened).
    Item {
        /// The conversation.
        group: Vec<u8>,
        /// The item.
        item: zeroize::Zeroizing<Vec<u8>>,
    },
    /// A record of its own (opened), with the conversation it belongs to if any.
    Record {
        /// The conversation, if any.
        group: Option<Vec<u8>>,
        /// The opened record.
        record: zeroize::Zeroizing<Vec<u8>>,
    },
}

/// The commit this device posted to `group` and has not seen settled yet, as posted.
pub fn pending_commit(conn: &Connection, group: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    Ok(conn
        .prepare_cached("SELECT payload FROM pending_commits WHERE group_id = ?1")?
        .query_row([group], |r| r.get(0))
        .optional()?)
}

/// Stages this device's commit to `group` (and the Welcome it sends, if any) until it settles.
pub fn stage_commit(
    tx: &Connection,
    group: &[u8],
    commit: &[u8],
    welcome: Option<&[u8]>,
) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO pending_commits (group_id, payload) VALUES (?1, ?2) ON CONFLICT(group_id) DO UPDATE SET payload = excluded.payload",
        params![group, commit],
    )?;
    tx.execute("DELETE FROM pending_welcomes WHERE group_id = ?1", [group])?;
    if let Some(welcome) = welcome {
        tx.execute(
            "INSERT INTO pending_welcomes (group_id, welcome) VALUES (?1, ?2)",
            params![group, welcome],
        )?;
    }
    Ok(())
}

/// The Welcome of this device's pending commit to `group`, if it adds anyone.
pub fn pending_welcome(conn: &Connection, group: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    Ok(conn
        .query_row(
            "SELECT welcome FROM pending_welcomes WHERE group_id = ?1",
            [group],
            |r| r.get(0),
        )
        .optional()?)
}

/// Forgets this device's pending commit to `group` and its Welcome.
pub fn forget_pending_commit(tx: &Connection, group: &[u8]) -> Result<(), Error> {
    for table in ["pending_commits", "pending_welcomes"] {
        tx.execute(&format!("DELETE FROM {table} WHERE group_id = ?1"), [group])?;
    }
    Ok(())
}

/// Deletes everything the profile holds about `group` but its MLS state (the caller deletes
/// that through the MLS storage): the conversation, its history and events, sent numbers,
/// outbox and pending commit.
pub fn forget_conversation(tx: &Connection, group: &[u8]) -> Result<(), Error> {
    for table in [
        "conversations",
        "history",
        "message_changes",
        "events",
        "sent",
        "outbox",
        "pending_commits",
        "pending_welcomes",
    ] {
        tx.execute(&format!("DELETE FROM {table} WHERE group_id = ?1"), [group])?;
    }
    Ok(())
}

/// Stores a conversation's sealed record (bound to its cursor, see [`conv_row`]).
pub fn put_conversation(
    tx: &Connection,
    group: &[u8],
    cursor: u64,
    sealed: &[u8],
) -> Result<(), Error> {
    tx.prepare_cached(
        "INSERT INTO conversations (group_id, cursor, info) VALUES (?1, ?2, ?3)
         ON CONFLICT(group_id) DO UPDATE SET cursor = excluded.cursor, info = excluded.info",
    )?
    .execute(params![group, cursor, sealed])?;
    Ok(())
}

/// A conversation's row: its group id, cursor and sealed record.
pub struct ConversationRow {
    /// The MLS group id.
    pub group: Vec<u8>,
    /// The last log position processed.
    pub cursor: u64,
    /// The sealed record (see [`conv_row`]).
    pub sealed: Vec<u8>,
}

/// Every conversation.
pub fn conversations(conn: &Connection) -> Result<Vec<ConversationRow>, Error> {
    let mut stmt = conn.prepare("SELECT group_id, cursor, info FROM conversations")?;
    let rows = stmt.query_map([], |r| {
        Ok(ConversationRow {
            group: r.get(0)?,
            cursor: r.get(1)?,
            sealed: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The row id the next history item gets (bound into its seal, so chosen before it is sealed,
/// as SQLite would choose it).
pub fn next_history_id(tx: &Connection) -> Result<i64, Error> {
    Ok(tx
        .prepare_cached("SELECT COALESCE(MAX(id), 0) + 1 FROM history")?
        .query_row([], |r| r.get(0))?)
}

/// Inserts a sealed history item at `id`; `false` if a message with `msg_id` is already there.
pub fn insert_history(
    tx: &Connection,
    id: i64,
    group: &[u8],
    seq: Option<u64>,
    msg_id: Option<&str>,
    sealed: &[u8],
) -> Result<bool, Error> {
    let n = tx
        .prepare_cached(
            "INSERT INTO history (id, group_id, seq, msg_id, item) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        )?
        .execute(params![id, group, seq, msg_id, sealed])?;
    Ok(n == 1)
}

/// A history row that disappears at `at` (unix milliseconds).
pub const EXPIRING_ROW: i64 = 1;
/// An event record that disappears at `at`.
pub const EXPIRING_EVENT: i64 = 2;

/// Marks a history row or an event record (`kind`) to disappear at `at`.
pub fn expire_at(tx: &Connection, kind: i64, id: i64, at: u64) -> Result<(), Error> {
    tx.prepare_cached(
        "INSERT INTO expiring (kind, id, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT DO UPDATE SET expires_at = MIN(expires_at, ?3)",
    )?
    .execute(params![kind, id, at])?;
    Ok(())
}

/// When the history row `row` disappears, if it does.
pub fn row_expiry(conn: &Connection, row: i64) -> Result<Option<u64>, Error> {
    Ok(conn
        .prepare_cached("SELECT expires_at FROM expiring WHERE kind = 1 AND id = ?1")?
        .query_row([row], |r| r.get(0))
        .optional()?)
}

/// The history row of the message `msg_id` in `group`.
pub fn history_row(conn: &Connection, group: &[u8], msg_id: &str) -> Result<Option<i64>, Error> {
    Ok(conn
        .prepare_cached("SELECT id FROM history WHERE group_id = ?1 AND msg_id = ?2")?
        .query_row(params![group, msg_id], |r| r.get(0))
        .optional()?)
}

/// Notes that the change `msg_id` applies to history row `row`; `false` if it was already
/// noted (a replay).
pub fn note_change(tx: &Connection, group: &[u8], msg_id: &str, row: i64) -> Result<bool, Error> {
    let n = tx
        .prepare_cached(
            "INSERT INTO message_changes (group_id, msg_id, row) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        )?
        .execute(params![group, msg_id, row])?;
    Ok(n == 1)
}

/// The history row that the change `msg_id` (e.g. a reaction) of `group` applies to.
pub fn change_row(conn: &Connection, group: &[u8], msg_id: &str) -> Result<Option<i64>, Error> {
    Ok(conn
        .prepare_cached("SELECT row FROM message_changes WHERE group_id = ?1 AND msg_id = ?2")?
        .query_row(params![group, msg_id], |r| r.get(0))
        .optional()?)
}

/// Up to `limit` messages whose ids start with one of `prefixes` (lowercase hex), in any
/// conversation: (conversation, row, id).
pub fn messages_by_prefix(
    conn: &Connection,
    prefixes: &[String],
    limit: usize,
) -> Result<Vec<(Vec<u8>, i64, String)>, Error> {
    // A scan: a command names a message now and then, and an index of its own slowed every
    // message received (docs/BENCHMARKS.md, issue 19).
    let mut stmt = conn.prepare_cached(
        "SELECT group_id, id, msg_id FROM history WHERE msg_id >= ?1 AND msg_id < ?2 LIMIT ?3",
    )?;
    let mut out = Vec::new();
    for prefix in prefixes {
        // Hex digits sort below 'g': every id with the prefix lies in [prefix, prefix + "g").
        let end = format!("{prefix}g");
        let rows = stmt.query_map(params![prefix, end, limit as u64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        for row in rows {
            out.push(row?);
        }
    }
    Ok(out)
}

/// The sealed history item `row` of `group`.
pub fn history_item(conn: &Connection, group: &[u8], row: i64) -> Result<Option<Vec<u8>>, Error> {
    Ok(conn
        .prepare_cached("SELECT item FROM history WHERE id = ?1 AND group_id = ?2")?
        .query_row(params![row, group], |r| r.get(0))
        .optional()?)
}

/// The newest `limit` sealed history items of `group` after row `after` and before row
/// `before` (or the newest of all), newest first: (row, sealed item). Messages that disappeared by `now` (and are not
/// deleted yet) are left out.
pub fn history_page(
    conn: &Connection,
    group: &[u8],
    (after, before): (Option<i64>, Option<i64>),
    limit: usize,
    now: u64,
) -> Result<Vec<(i64, Vec<u8>)>, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, item FROM history WHERE group_id = ?1 AND (?2 IS NULL OR id < ?2) AND (?5 IS NULL OR id > ?5)
           AND id NOT IN (SELECT id FROM expiring WHERE kind = 1 AND expires_at <= ?4)
         ORDER BY id DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![group, before, limit as u64, now, after], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Puts a new sealed item in the place of history row `row`.
pub fn replace_history_item(tx: &Connection, row: i64, sealed: &[u8]) -> Result<(), Error> {
    tx.prepare_cached("UPDATE history SET item = ?2 WHERE id = ?1")?
        .execute(params![row, sealed])?;
    Ok(())
}

/// Records that this device's message to `group` was stored at `seq` (and, when it is shown
/// in the history at `row`, gives that entry its number in the log).
pub fn note_sent(tx: &Connection, group: &[u8], seq: u64, row: Option<i64>) -> Result<(), Error> {
    tx.prepare_cached("INSERT OR IGNORE INTO sent (group_id, seq) VALUES (?1, ?2)")?
        .execute(params![group, seq])?;
    if let Some(row) = row {
        tx.prepare_cached("UPDATE history SET seq = ?2 WHERE id = ?1")?
            .execute(params![row, seq])?;
    }
    Ok(())
}

/// Whether the message at `seq` of `group` is this device's own.
pub fn is_own(conn: &Connection, group: &[u8], seq: u64) -> Result<bool, Error> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM sent WHERE group_id = ?1 AND seq = ?2")?
        .query_row(params![group, seq], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The directory roots this device verified: (epoch, root).
pub fn directory_roots(conn: &Connection) -> Result<Vec<(u64, Vec<u8>)>, Error> {
    let mut stmt = conn.prepare("SELECT epoch, root FROM directory_roots")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Keeps a verified directory root.
pub fn put_directory_root(tx: &Connection, epoch: u64, root: &[u8]) -> Result<(), Error> {
    tx.execute(
        "INSERT OR IGNORE INTO directory_roots (epoch, root) VALUES (?1, ?2)",
        params![epoch, root],
    )?;
    Ok(())
}

/// Notes that this device used another's key package (by its hash) to add it; `false` if it
/// had used it before.
pub fn use_key_package(tx: &Connection, hash: &[u8]) -> Result<bool, Error> {
    Ok(tx.execute(
        "INSERT OR IGNORE INTO used_key_packages (ref) VALUES (?1)",
        [hash],
    )? == 1)
}

/// Notes that one of this device's own key packages was spent joining `group`.
pub fn spend_key_package(tx: &Connection, hash: &[u8], group: &[u8]) -> Result<(), Error> {
    tx.execute(
        "INSERT OR IGNORE INTO spent_key_packages (ref, group_id) VALUES (?1, ?2)",
        params![hash, group],
    )?;
    Ok(())
}

/// Whether this device's key package `hash` was spent joining a conversation other than `group`.
pub fn key_package_spent_elsewhere(
    conn: &Connection,
    hash: &[u8],
    group: &[u8],
) -> Result<bool, Error> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM spent_key_packages WHERE ref = ?1 AND group_id <> ?2",
            params![hash, group],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// An application message waiting in the outbox.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Its place in the outbox.
    pub id: i64,
    /// The conversation.
    pub group: Vec<u8>,
    /// Its history row, if it is shown in the history.
    pub row: Option<i64>,
    /// Its number among this device's texts in the conversation (0: not a text).
    pub n: u64,
    /// The MLS ciphertext, as posted.
    pub payload: Vec<u8>,
}

/// Puts a message in the outbox; returns its place.
pub fn put_outgoing(
    tx: &Connection,
    group: &[u8],
    row: Option<i64>,
    n: u64,
    payload: &[u8],
) -> Result<i64, Error> {
    tx.prepare_cached("INSERT INTO outbox (group_id, row, n, payload) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![group, row, n, payload])?;
    Ok(tx.last_insert_rowid())
}

/// The messages in the outbox, oldest first.
pub fn outgoing(conn: &Connection) -> Result<Vec<Outgoing>, Error> {
    let mut stmt =
        conn.prepare_cached("SELECT id, group_id, row, n, payload FROM outbox ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok(Outgoing {
            id: r.get(0)?,
            group: r.get(1)?,
            row: r.get(2)?,
            n: r.get(3)?,
            payload: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Takes a message out of the outbox: the server said what became of it.
pub fn drop_outgoing(tx: &Connection, id: i64) -> Result<(), Error> {
    tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// Appends an event that is the history item `history_id` of `group`; returns its id.
pub fn log_item(tx: &Connection, group: &[u8], history_id: i64) -> Result<i64, Error> {
    tx.prepare_cached("INSERT INTO events (group_id, history_id) VALUES (?1, ?2)")?
        .execute(params![group, history_id])?;
    Ok(tx.last_insert_rowid())
}

/// Appends an event record of its own (sealed, bound to its id); returns its id.
pub fn log_record(
    tx: &Connection,
    sealer: &Sealer,
    group: Option<&[u8]>,
    record: &[u8],
) -> Result<i64, Error> {
    // The id AUTOINCREMENT would give (bound into the seal, so chosen first).
    let id: i64 = tx
        .prepare_cached(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),
                        COALESCE((SELECT MAX(id) FROM events), 0)) + 1",
        )?
        .query_row([], |r| r.get(0))?;
    let sealed = sealer.seal_at("event", &event_row(id), record)?;
    tx.prepare_cached("INSERT INTO events (id, group_id, event) VALUES (?1, ?2, ?3)")?
        .execute(params![id, group, sealed])?;
    Ok(id)
}

/// The newest event's id (0 when the log is empty).
pub fn last_event(conn: &Connection) -> Result<i64, Error> {
    Ok(conn
        .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM events")?
        .query_row([], |r| r.get(0))?)
}

/// Up to `limit` events after `after`, oldest first; with `unseen_by`, only those that consumer
/// has not marked seen.
pub fn read_events(
    conn: &Connection,
    sealer: &Sealer,
    after: i64,
    limit: usize,
    unseen_by: Option<&str>,
) -> Result<Vec<(i64, StoredEvent)>, Error> {
    // One statement, the history items joined in (not one query per event).
    let mut stmt = conn.prepare_cached(
        "SELECT e.id, e.group_id, e.history_id, e.event, h.item FROM events e
         LEFT JOIN history h ON h.id = e.history_id AND h.group_id = e.group_id
         WHERE e.id > ?1
           AND (?2 IS NULL OR e.id NOT IN (SELECT id FROM events_seen WHERE consumer = ?2))
         ORDER BY e.id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![after, unseen_by, limit as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Option<Vec<u8>>>(1)?,
            r.get::<_, Option<i64>>(2)?,
            r.get::<_, Option<Vec<u8>>>(3)?,
            r.get::<_, Option<Vec<u8>>>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, group, history_id, sealed, item) = row?;
        let event = match (group, history_id, sealed) {
            (Some(group), Some(history_id), None) => {
                let item = item.ok_or_else(|| {
                    Error::Store("an event names a history item that is gone".into())
                })?;
                let item = sealer.open_at("item", &item_row(&group, history_id), &item)?;
                StoredEvent::Item { group, item }
            }
            (group, None, Some(sealed)) => StoredEvent::Record {
                group,
                record: sealer.open_at("event", &event_row(id), &sealed)?,
            },
            _ => {
                return Err(Error::Store(
                    "an event record of the profile is damaged".into(),
                ));
            }
        };
        out.push((id, event));
    }
    Ok(out)
}

/// Where `consumer` stands in the event log (0 for a new consumer).
pub fn event_cursor(conn: &Connection, consumer: &str) -> Result<i64, Error> {
    Ok(conn
        .prepare_cached("SELECT cursor FROM event_cursors WHERE consumer = ?1")?
        .query_row([consumer], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Marks events seen by `consumer`, and moves its cursor over every event it has now seen
/// without a gap.
pub fn mark_seen(tx: &Connection, consumer: &str, ids: &[i64]) -> Result<(), Error> {
    let cursor = event_cursor(tx, consumer)?;
    let mut ids: Vec<i64> = ids.iter().copied().filter(|id| *id > cursor).collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    // The common case — the events right after the cursor, in order — moves the cursor without
    // a row per event: walk the log's next ids alongside.
    let mut new_cursor = cursor;
    let mut taken = 0;
    {
        let mut next =
            tx.prepare_cached("SELECT id FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")?;
        let log = next.query_map(params![cursor, ids.len() as i64], |r| r.get::<_, i64>(0))?;
        for id in log {
            if ids.get(taken) != Some(&id?) {
                break;
            }
            new_cursor = ids[taken];
            taken += 1;
        }
    }
    // The rest are remembered one by one, beyond the cursor.
    let mut seen =
        tx.prepare_cached("INSERT OR IGNORE INTO events_seen (consumer, id) VALUES (?1, ?2)")?;
    for id in &ids[taken..] {
        seen.execute(params![consumer, id])?;
    }
    // Events seen earlier may now follow on without a gap.
    let first_unseen: Option<i64> = tx
        .prepare_cached(
            "SELECT MIN(id) FROM events WHERE id > ?1
             AND id NOT IN (SELECT id FROM events_seen WHERE consumer = ?2)",
        )?
        .query_row(params![new_cursor, consumer], |r| r.get(0))?;
    let new_cursor = match first_unseen {
        Some(id) => id - 1,
        None => last_event(tx)?,
    }
    .max(new_cursor);
    if new_cursor > cursor {
        tx.prepare_cached(
            "INSERT INTO event_cursors (consumer, cursor) VALUES (?1, ?2)
             ON CONFLICT(consumer) DO UPDATE SET cursor = excluded.cursor",
        )?
        .execute(params![consumer, new_cursor])?;
        tx.prepare_cached("DELETE FROM events_seen WHERE consumer = ?1 AND id <= ?2")?
            .execute(params![consumer, new_cursor])?;
    }
    Ok(())
}

/// Where a conversation record lives: its group and its cursor (written with it, always).
pub fn conv_row(group: &[u8], cursor: u64) -> Vec<u8> {
    let mut row = group.to_vec();
    row.extend_from_slice(&cursor.to_be_bytes());
    row
}

/// Seals again, bound to their rows, the records a format-2 profile sealed under their kind only.
fn bind_records(conn: &Connection, sealer: &Sealer) -> Result<(), Error> {
    let tx = conn.unchecked_transaction()?;
    let mls: Vec<(Vec<u8>, Vec<u8>)> = tx
        .prepare("SELECT key, value FROM mls")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (key, value) in mls {
        let plain = sealer.open_unbound("mls", &value)?;
        tx.execute(
            "UPDATE mls SET value = ?2 WHERE key = ?1",
            params![key, sealer.seal_at("mls", &key, &plain)?],
        )?;
    }
    let metas: Vec<(String, Vec<u8>)> = tx
        .prepare("SELECT key, value FROM meta")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (key, value) in metas {
        let plain = sealer.open_unbound(&format!("meta:{key}"), &value)?;
        tx.execute(
            "UPDATE meta SET value = ?2 WHERE key = ?1",
            params![key, sealer.seal_at("meta", key.as_bytes(), &plain)?],
        )?;
    }
    let convs: Vec<(Vec<u8>, u64, Vec<u8>)> = tx
        .prepare("SELECT group_id, cursor, info FROM conversations")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (group, cursor, info) in convs {
        let plain = sealer.open_unbound("conv", &info)?;
        tx.execute(
            "UPDATE conversations SET info = ?2 WHERE group_id = ?1",
            params![
                group,
                sealer.seal_at("conv", &conv_row(&group, cursor), &plain)?
            ],
        )?;
    }
    let items: Vec<(i64, Vec<u8>, Vec<u8>)> = tx
        .prepare("SELECT id, group_id, item FROM history")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (id, group, item) in items {
        let plain = sealer.open_unbound("item", &item)?;
        tx.execute(
            "UPDATE history SET item = ?2 WHERE id = ?1",
            params![id, sealer.seal_at("item", &item_row(&group, id), &plain)?],
        )?;
    }
    tx.execute_batch(&format!("PRAGMA user_version = {PROFILE_VERSION};"))?;
    tx.commit()?;
    Ok(())
}

/// The openmls provider: pure-Rust crypto and in-memory storage.
#[derive(Default)]
pub struct Provider {
    crypto: RustCrypto,
    storage: CheckedStorage,
}

#[cfg(test)]
impl Provider {
    /// A provider on `storage`.
    pub(crate) fn on(storage: CheckedStorage) -> Self {
        Self {
            crypto: RustCrypto::default(),
            storage,
        }
    }
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = CheckedStorage;
    fn storage(&self) -> &CheckedStorage {
        &self.storage
    }
    fn crypto(&self) -> &RustCrypto {
        &self.crypto
    }
    fn rand(&self) -> &RustCrypto {
        &self.crypto
    }
}

type Changes = (Vec<(Vec<u8>, Vec<u8>)>, Vec<Vec<u8>>);

/// MLS state with a record of what is committed.
pub struct MlsState {
    /// The live provider.
    pub provider: Provider,
    committed: HashMap<Vec<u8>, Vec<u8>>,
}

impl MlsState {
    fn load(conn: &Connection, sealer: &Sealer) -> Result<Self, Error> {
        let mut map = HashMap::new();
        let mut stmt = conn.prepare("SELECT key, value FROM mls")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        for row in rows {
            let (k, v) = row?;
            let value = sealer.open_at("mls", &k, &v)?.to_vec();
            map.insert(k, value);
        }
        let provider = Provider {
            crypto: RustCrypto::default(),
            storage: CheckedStorage::new(map.clone()),
        };
        Ok(Self {
            provider,
            committed: map,
        })
    }

    fn changes(&self) -> Result<Changes, Error> {
        let live = self
            .provider
            .storage
            .values()
            .read()
            .map_err(|_| Error::Store("MLS state lock poisoned".into()))?;
        let upserts = live
            .iter()
            .filter(|(k, v)| self.committed.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let deletes = self
            .committed
            .keys()
            .filter(|k| !live.contains_key(*k))
            .cloned()
            .collect();
        Ok((upserts, deletes))
    }

    fn write(&self, tx: &Connection, sealer: &Sealer) -> Result<Changes, Error> {
        let changes = self.changes()?;
        let (upserts, deletes) = &changes;
        let records = upserts.iter().map(|(k, v)| (k, Some(v)));
        store_records(tx, sealer, records.chain(deletes.iter().map(|k| (k, None))))?;
        Ok(changes)
    }

    /// Writes the committed state of the records under `keys` (deleting those it has not).
    fn write_keys<'a>(
        &self,
        tx: &Connection,
        sealer: &Sealer,
        keys: impl Iterator<Item = &'a Vec<u8>>,
    ) -> Result<(), Error> {
        store_records(tx, sealer, keys.map(|k| (k, self.committed.get(k))))
    }

    fn mark_committed(&mut self, (upserts, deletes): Changes) {
        for (k, v) in upserts {
            self.committed.insert(k, v);
        }
        for k in deletes {
            self.committed.remove(&k);
        }
    }

    fn rollback(&mut self) {
        if let Ok(mut live) = self.provider.storage.values().write() {
            *live = self.committed.clone();
        }
    }
}

/// Writes each record: `Some(value)` sealed, `None` deleted.
fn store_records<'a>(
    tx: &Connection,
    sealer: &Sealer,
    records: impl Iterator<Item = (&'a Vec<u8>, Option<&'a Vec<u8>>)>,
) -> Result<(), Error> {
    let mut up = tx.prepare_cached("INSERT INTO mls (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?;
    let mut del = tx.prepare_cached("DELETE FROM mls WHERE key = ?1")?;
    for (k, v) in records {
        match v {
            Some(v) => up.execute(params![k, sealer.seal_at("mls", k, v)?])?,
            None => del.execute([k])?,
        };
    }
    Ok(())
}

/// An open profile: the database, its lock and its key.
pub struct Profile {
    conn: Connection,
    _lock: File,
    /// Sealing of values.
    pub sealer: Sealer,
    /// MLS state.
    pub mls: MlsState,
    /// In a batch: the MLS records it changed, each with its committed value from before the
    /// batch (`None`: it had none). They are written when the batch commits, and put back in
    /// memory if it is undone.
    batch: Option<HashMap<Vec<u8>, Option<Vec<u8>>>>,
    /// The profile's directory.
    home: std::path::PathBuf,
}

impl Profile {
    /// Opens the profile in `home`, creating it if `create`. Fails with `ProfileLocked` if another
    /// process has it open.
    pub fn open(home: &Path, create: bool, passphrase: Option<&str>) -> Result<Self, Error> {
        let db_path = home.join("profile.db");
        let key_path = home.join("store.key");
        if !create && !db_path.exists() {
            return Err(Error::NotRegistered);
        }
        std::fs::create_dir_all(home)
            .map_err(|e| Error::Store(format!("cannot create {}: {e}", home.display())))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(home.join("profile.lock"))
            .map_err(|e| Error::Store(format!("cannot open the profile lock: {e}")))?;
        fs2::FileExt::try_lock_exclusive(&lock).map_err(|_| Error::ProfileLocked)?;
        // Who holds it, for the others to name (see `profile_holder`).
        {
            use std::io::Write as _;
            let mut pid = &lock;
            let _ = lock.set_len(0);
            let _ = write!(pid, "{}", std::process::id());
        }
        let crypto = RustCrypto::default();
        let key = if key_path.exists() {
            StoreKey::load(&crypto, &key_path, passphrase)?
        } else if create {
            StoreKey::create(&crypto, &key_path, passphrase)?
        } else {
            return Err(Error::Store(format!("{} is missing", key_path.display())));
        };
        let sealer = Sealer { key, crypto };
        let damaged = |e: rusqlite::Error| {
            Error::Store(format!(
                "{} is damaged or not a Sealpost profile ({e})",
                db_path.display()
            ))
        };
        let conn = Connection::open(&db_path).map_err(damaged)?;
        conn.busy_timeout(std::time::Duration::from_secs(2))
            .map_err(damaged)?;
        // Temporary storage (the journal of the savepoint each change takes inside a sync batch)
        // in memory: on disk it was a write per page per delivery. Durability is the WAL's.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA temp_store=MEMORY;",
        )
        .map_err(damaged)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(damaged)?;
        if version > PROFILE_VERSION {
            return Err(Error::Store(format!(
                "{} was written by a newer Sealpost (profile format {version}, this one reads up \
                 to {PROFILE_VERSION}): upgrade sealpost",
                db_path.display()
            )));
        }
        conn.execute_batch(SCHEMA).map_err(damaged)?;
        match version {
            // Empty: a new profile; or format 3, which is format 4 as it stands.
            0 | 3 => conn
                .execute_batch(&format!("PRAGMA user_version = {PROFILE_VERSION};"))
                .map_err(damaged)?,
            2 => bind_records(&conn, &sealer)?,
            PROFILE_VERSION => {}
            _ => {
                return Err(Error::Store(format!(
                    "{} has profile format {version}, which this Sealpost cannot read",
                    db_path.display()
                )));
            }
        }
        let mls = MlsState::load(&conn, &sealer)?;
        Ok(Self {
            conn,
            _lock: lock,
            sealer,
            mls,
            batch: None,
            home: home.to_owned(),
        })
    }

    /// The profile's directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Discards MLS changes not yet committed.
    pub fn rollback_mls(&mut self) {
        self.mls.rollback();
    }

    /// The connection, for reads.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Runs `f` in one transaction together with the MLS changes it made. On error nothing is
    /// written and the MLS state is rolled back. Inside a batch (see [`begin_batch`]) the change
    /// becomes durable when the batch commits, and the MLS records it changed are written then,
    /// once, however many changes of the batch touched them: openmls rewrites its message
    /// secrets with every message it decrypts, megabytes in a large group.
    ///
    /// [`begin_batch`]: Self::begin_batch
    pub fn atomically<T>(
        &mut self,
        f: impl FnOnce(&Connection, &Sealer, &crate::store::Provider) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let in_batch = self.batch.is_some();
        let result = blocking(|| {
            let sp = self.conn.savepoint()?;
            let value = f(&sp, &self.sealer, &self.mls.provider)?;
            let changes = if in_batch {
                self.mls.changes()?
            } else {
                self.mls.write(&sp, &self.sealer)?
            };
            sp.commit()?;
            Ok((value, changes))
        });
        match result {
            Ok((value, changes)) => {
                if let Some(before) = self.batch.as_mut() {
                    let (upserts, deletes) = &changes;
                    for k in upserts.iter().map(|(k, _)| k).chain(deletes) {
                        if !before.contains_key(k) {
                            before.insert(k.clone(), self.mls.committed.get(k).cloned());
                        }
                    }
                }
                self.mls.mark_committed(changes);
                Ok(value)
            }
            Err(e) => {
                self.mls.rollback();
                Err(e)
            }
        }
    }

    /// Deletes what disappears at or before `now` (unix milliseconds): the history rows, their
    /// events and changes, and the event records about them. They are overwritten where they
    /// were (SQLite's `secure_delete`, for this deletion only) and the write-ahead log is
    /// emptied, so that they are gone from the files, not only from view. How many rows went.
    pub fn purge_expired(&mut self, now: u64) -> Result<usize, Error> {
        let due: bool = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM expiring WHERE expires_at <= ?1)")?
            .query_row([now], |r| r.get(0))?;
        if !due || self.batch.is_some() {
            return Ok(0);
        }
        self.conn.execute_batch("PRAGMA secure_delete = ON;")?;
        let deleted = blocking(|| {
            let tx = self.conn.savepoint()?;
            tx.execute(
                "DELETE FROM events WHERE history_id IN (SELECT id FROM expiring WHERE kind = 1 AND expires_at <= ?1)",
                [now],
            )?;
            tx.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM expiring WHERE kind = 2 AND expires_at <= ?1)",
                [now],
            )?;
            tx.execute(
                "DELETE FROM message_changes WHERE row IN (SELECT id FROM expiring WHERE kind = 1 AND expires_at <= ?1)",
                [now],
            )?;
            let n = tx.execute(
                "DELETE FROM history WHERE id IN (SELECT id FROM expiring WHERE kind = 1 AND expires_at <= ?1)",
                [now],
            )?;
            tx.execute("DELETE FROM expiring WHERE expires_at <= ?1", [now])?;
            tx.commit()?;
            Ok::<_, Error>(n)
        });
        let off = self.conn.execute_batch("PRAGMA secure_delete = OFF;");
        let deleted = deleted?;
        off?;
        // The old pages are in the write-ahead log too, until it is copied back and emptied.
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(deleted)
    }

    /// Starts a batch: the `atomically` calls that follow commit together, with one fsync, at
    /// [`commit_batch`](Self::commit_batch).
    pub fn begin_batch(&mut self) -> Result<(), Error> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        self.batch = Some(HashMap::new());
        Ok(())
    }

    /// Commits the batch. On failure everything in it is undone (see [`abort_batch`]).
    ///
    /// [`abort_batch`]: Self::abort_batch
    pub fn commit_batch(&mut self) -> Result<(), Error> {
        let committed = blocking(|| {
            if let Some(changed) = &self.batch {
                self.mls
                    .write_keys(&self.conn, &self.sealer, changed.keys())?;
            }
            self.conn.execute_batch("COMMIT")?;
            Ok::<_, Error>(())
        });
        match committed {
            Ok(()) => {
                self.batch = None;
                Ok(())
            }
            Err(e) => {
                self.abort_batch();
                Err(e)
            }
        }
    }

    /// Undoes the batch, in the database and in the MLS state.
    pub fn abort_batch(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
        for (k, before) in self.batch.take().unwrap_or_default() {
            match before {
                Some(v) => self.mls.committed.insert(k, v),
                None => self.mls.committed.remove(&k),
            };
        }
        self.mls.rollback();
    }

    /// Reads a sealed meta value.
    pub fn meta(&self, key: &str) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, Error> {
        get_meta(&self.conn, &self.sealer, key)
    }
}

/// Runs blocking work — a transaction: its SQLite writes, the fsync of its commit, and the MLS
/// work done inside it — without holding up the runtime's other tasks. On a multi-threaded
/// runtime (the daemon's, the command line's) the worker thread hands its other tasks to another
/// worker for the duration; elsewhere (a current-thread runtime, or none) it simply runs.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The process that holds the profile in `home`, as it wrote itself into the lock file (the lock
/// is the operating system's: a process that is gone holds nothing, whatever the file says).
pub fn profile_holder(home: &Path) -> Option<u32> {
    std::fs::read_to_string(home.join("profile.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads a sealed meta value (also inside a transaction).
pub fn get_meta(
    conn: &Connection,
    sealer: &Sealer,
    key: &str,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, Error> {
    let v: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?;
    v.map(|v| sealer.open_at("meta", key.as_bytes(), &v))
        .transpose()
}

/// Reads a sealed meta value that holds JSON (`what` names it in an error); the default when
/// there is none.
pub fn get_meta_json<T: serde::de::DeserializeOwned + Default>(
    conn: &Connection,
    sealer: &Sealer,
    key: &str,
    what: &str,
) -> Result<T, Error> {
    match get_meta(conn, sealer, key)? {
        Some(json) => serde_json::from_slice(&json)
            .map_err(|e| Error::Store(format!("the {what} record is damaged: {e}"))),
        None => Ok(T::default()),
    }
}

/// Writes a sealed meta value.
pub fn put_meta(tx: &Connection, sealer: &Sealer, key: &str, value: &[u8]) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, sealer.seal_at("meta", key.as_bytes(), value)?],
    )?;
    Ok(())
}

/// Test hook: passes the plaintext of the `nth` record of `table` (`meta`, `mls`,
/// `conversations` or `history`, in key order) in the closed profile `home` (no passphrase)
/// through `f`, and seals it again where it is: a record that opens but holds what this code
/// never wrote. `false` if there is no such record.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub fn reseal_record_unchecked(
    home: &Path,
    table: &str,
    nth: usize,
    f: impl FnOnce(&mut Vec<u8>),
) -> Result<bool, Error> {
    let crypto = RustCrypto::default();
    let key = StoreKey::load(&crypto, &home.join("store.key"), None)?;
    let sealer = Sealer { key, crypto };
    let conn = Connection::open(home.join("profile.db"))?;
    // The record's kind, its row key (what `UPDATE … WHERE` names), where it is bound, its value.
    let (kind, select, update) = match table {
        "meta" => (
            "meta",
            "SELECT CAST(key AS BLOB), NULL, value FROM meta ORDER BY key",
            "UPDATE meta SET value = ?2 WHERE CAST(key AS BLOB) = ?1",
        ),
        "mls" => (
            "mls",
            "SELECT key, NULL, value FROM mls ORDER BY key",
            "UPDATE mls SET value = ?2 WHERE key = ?1",
        ),
        "conversations" => (
            "conv",
            "SELECT group_id, cursor, info FROM conversations ORDER BY group_id",
            "UPDATE conversations SET info = ?2 WHERE group_id = ?1",
        ),
        "history" => (
            "item",
            "SELECT id, group_id, item FROM history ORDER BY id",
            "UPDATE history SET item = ?2 WHERE id = ?1",
        ),
        _ => return Err(Error::Store(format!("no sealed records in {table}"))),
    };
    let row = conn
        .query_row(&format!("{select} LIMIT 1 OFFSET {nth}"), [], |r| {
            Ok((
                r.get::<_, rusqlite::types::Value>(0)?,
                r.get::<_, rusqlite::types::Value>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })
        .optional()?;
    let Some((id, second, sealed)) = row else {
        return Ok(false);
    };
    use rusqlite::types::Value;
    let place = match (&id, &second) {
        (Value::Blob(k), Value::Null) => k.clone(),
        (Value::Blob(group), Value::Integer(cursor)) => conv_row(group, *cursor as u64),
        (Value::Integer(id), Value::Blob(group)) => item_row(group, *id),
        _ => return Err(Error::Store(format!("an unexpected row in {table}"))),
    };
    let mut plain = sealer.open_at(kind, &place, &sealed)?.to_vec();
    f(&mut plain);
    conn.execute(update, params![id, sealer.seal_at(kind, &place, &plain)?])?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transaction does not hold up the runtime's other tasks: on a runtime of one worker,
    /// a transaction that waits for another task (standing in for a long commit) finishes,
    /// because that task runs meanwhile. Run on the worker itself it would wait for ever (the
    /// wait gives up after a minute, and the test fails).
    #[test]
    fn a_transaction_leaves_the_runtime_to_other_tasks() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let outcome = rt.block_on(async move {
            tokio::spawn(async move {
                let mut p = Profile::open(dir.path(), true, None).unwrap();
                let (tx, rx) = std::sync::mpsc::channel();
                let (go, went) = tokio::sync::oneshot::channel::<()>();
                // Another task on the same runtime, started while the transaction runs.
                tokio::spawn(async move {
                    let _ = went.await;
                    let _ = tx.send(());
                });
                p.atomically(|_, _, _| {
                    let _ = go.send(());
                    Ok(rx.recv_timeout(std::time::Duration::from_secs(60)).is_ok())
                })
            })
            .await
            .unwrap()
        });
        assert!(outcome.unwrap(), "the other task never ran");
    }

    /// A consumer's place in the event log: events seen in order move its cursor; one seen
    /// ahead of a gap is remembered and left out of what is unseen; the cursor moves over it
    /// once the gap is seen; ids are never reused after a deletion.
    #[test]
    fn consumers_see_each_event_once_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::open(dir.path(), true, None).unwrap();
        let c = &p.conn;
        let ids: Vec<i64> = (0..6)
            .map(|i| log_record(c, &p.sealer, None, format!("e{i}").as_bytes()).unwrap())
            .collect();
        let unseen = |who: &str| -> Vec<i64> {
            let after = event_cursor(c, who).unwrap();
            read_events(c, &p.sealer, after, 100, Some(who))
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        assert_eq!(unseen("ui"), ids);
        mark_seen(c, "ui", &ids[..2]).unwrap();
        assert_eq!(event_cursor(c, "ui").unwrap(), ids[1]);
        mark_seen(c, "ui", &[ids[4]]).unwrap();
        assert_eq!(event_cursor(c, "ui").unwrap(), ids[1]);
        assert_eq!(unseen("ui"), [ids[2], ids[3], ids[5]]);
        mark_seen(c, "ui", &[ids[3], ids[2]]).unwrap();
        assert_eq!(event_cursor(c, "ui").unwrap(), ids[4]);
        assert_eq!(unseen("ui"), [ids[5]]);
        // Another consumer has its own place.
        assert_eq!(unseen("cli").len(), 6);
        // Seen again, or before the cursor: nothing changes.
        mark_seen(c, "ui", &ids[..5]).unwrap();
        assert_eq!(unseen("ui"), [ids[5]]);
        // The newest event deleted, a new one gets a new id.
        c.execute("DELETE FROM events WHERE id = ?1", [ids[5]])
            .unwrap();
        let next = log_record(c, &p.sealer, None, b"e6").unwrap();
        assert!(next > ids[5]);
        assert_eq!(unseen("ui"), [next]);
    }

    /// A profile of format 2 (records sealed under their kind only) opens, with its records
    /// sealed again, bound to their rows; one of a newer format is refused, unchanged.
    #[test]
    fn a_format_2_profile_is_bound_to_its_rows_on_opening() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let group = [7u8; 16];
        {
            let p = Profile::open(home, true, None).unwrap();
            let old = |kind: &str, v: &[u8]| {
                p.sealer
                    .key
                    .seal(&p.sealer.crypto, kind.as_bytes(), v)
                    .unwrap()
            };
            let c = &p.conn;
            c.execute(
                "INSERT INTO mls (key, value) VALUES (?1, ?2)",
                params![b"k1".to_vec(), old("mls", b"\"state\"")],
            )
            .unwrap();
            c.execute(
                "INSERT INTO conversations (group_id, cursor, info) VALUES (?1, 5, ?2)",
                params![group.to_vec(), old("conv", b"{}")],
            )
            .unwrap();
            c.execute(
                "INSERT INTO history (id, group_id, seq, msg_id, item) VALUES (9, ?1, 3, NULL, ?2)",
                params![group.to_vec(), old("item", b"[]")],
            )
            .unwrap();
            c.execute(
                "INSERT INTO meta (key, value) VALUES ('identity', ?1)",
                params![old("meta:identity", b"me")],
            )
            .unwrap();
            c.execute_batch("PRAGMA user_version = 2").unwrap();
        }
        let p = Profile::open(home, false, None).unwrap();
        assert_eq!(&**p.meta("identity").unwrap().unwrap(), b"me");
        assert_eq!(p.mls.committed[b"k1".as_slice()], b"\"state\"");
        let info: Vec<u8> = p
            .conn
            .query_row("SELECT info FROM conversations", [], |r| r.get(0))
            .unwrap();
        let info = p.sealer.open_at("conv", &conv_row(&group, 5), &info);
        assert_eq!(&**info.unwrap(), b"{}");
        // Bound to its row: under another cursor or group it does not open.
        let info: Vec<u8> = p
            .conn
            .query_row("SELECT info FROM conversations", [], |r| r.get(0))
            .unwrap();
        assert!(
            p.sealer
                .open_at("conv", &conv_row(&group, 6), &info)
                .is_err()
        );
        assert!(
            p.sealer
                .open_at("conv", &conv_row(&[8; 16], 5), &info)
                .is_err()
        );
        let item: Vec<u8> = p
            .conn
            .query_row("SELECT item FROM history", [], |r| r.get(0))
            .unwrap();
        let item = p.sealer.open_at("item", &item_row(&group, 9), &item);
        assert_eq!(&**item.unwrap(), b"[]");
        let version: i64 = p
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, PROFILE_VERSION);

        p.conn
            .execute_batch(&format!("PRAGMA user_version = {}", PROFILE_VERSION + 1))
            .unwrap();
        drop(p);
        let Err(Error::Store(why)) = Profile::open(home, false, None) else {
            panic!("a profile of a newer format was opened");
        };
        assert!(why.contains("newer Sealpost"), "{why}");
    }
}
