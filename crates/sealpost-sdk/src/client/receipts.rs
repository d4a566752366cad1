//! Delivery and read receipts, and typing indicators: what a user may choose to tell the people
//! they talk to beyond their messages. Both are off until the user switches them on
//! ([`Preferences`]), and each works both ways: with receipts off, this device sends none and
//! does not take those of others either (the same for typing).
//!
//! Both travel as ordinary MLS application messages to the whole conversation (MLS has no
//! message to one member), never as anything the server can read: receipts as the status
//! reports of draft-mahy-mimi-message-status, typing as Sealpost's own media type (see
//! `content`). Neither is numbered, so neither shows as a gap when it goes missing.
//!
//! A delivery receipt is owed for each message of another account's that this device took
//! and showed (a text or a file), noted in the transaction that takes it and sent after the
//! sync, one report per conversation. Nothing that could not be read, and nothing this version
//! cannot show, is ever answered. A read receipt is sent when the user is shown the conversation
//! ([`Client::mark_read`]). A report is taken only for this account's own messages, and a
//! member's status for a message only goes forward (read after delivered, never back).

use super::*;
use crate::content::{DELIVERED, READ};
use crate::model::TYPING_HOLDS_MS;
use sealpost_proto::mimi::MESSAGE_ID_LEN;

/// Where the preferences are kept in the profile.
pub(super) const PREFERENCES: &str = "preferences";

/// Most message ids in one report this device sends.
const REPORT_CHUNK: usize = 256;

/// Most messages owed a delivery receipt in one conversation (the oldest go first).
const MAX_OWED: usize = 4096;

/// Most messages one [`Client::mark_read`] answers (the newest).
const MAX_MARK_READ: usize = 1024;

/// A status report as it arrives, before it is applied.
#[derive(Debug, Clone)]
pub(super) struct Report {
    /// `@reporter`.
    pub(super) from: String,
    /// `@username` of this account: only its messages take receipts.
    pub(super) mine: String,
    /// Message ids (hex) and the draft's status values.
    pub(super) statuses: Vec<(String, u8)>,
}

impl Client {
    /// What this account tells others beyond its messages.
    pub fn preferences(&self) -> Preferences {
        self.prefs
    }

    /// Changes what this account tells others beyond its messages (kept in the profile).
    /// Switching receipts off drops the delivery receipts not sent yet.
    pub fn set_preferences(&mut self, prefs: Preferences) -> Result<(), Error> {
        let json = serde_json::to_vec(&prefs).map_err(|e| Error::Store(e.to_string()))?;
        self.profile
            .atomically(|tx, sealer, _| put_meta(tx, sealer, PREFERENCES, &json))?;
        self.prefs = prefs;
        if !prefs.receipts {
            let owing: Vec<GroupId> = self
                .convs
                .iter()
                .filter(|(_, c)| !c.info.receipts_owed.is_empty())
                .map(|(g, _)| *g)
                .collect();
            for group in owing {
                self.update_conv(group, |info| info.receipts_owed.clear())?;
            }
        }
        Ok(())
    }

    /// Notes that the user was shown the conversation `target` up to its newest message, and,
    /// with receipts on, tells the senders of the messages not marked read before (up to the
    /// newest 1,024). Returns how many messages of others it marked read.
    pub async fn mark_read(&mut self, target: &str) -> Result<usize, Error> {
        let group = self.resolve(target)?;
        let Some(conv) = self.convs.get(&group) else {
            return Err(Error::UnknownConversation(target.to_owned()));
        };
        let Some((newest, unread)) = self.unread(group, MAX_MARK_READ)? else {
            return Ok(0);
        };
        let unread: Vec<String> = unread.into_iter().filter(|id| is_mimi_id(id)).collect();
        if self.prefs.receipts && !unread.is_empty() && conv.info.active {
            self.check_not_blocked(group)?;
            self.before_send(group).await?;
            self.send_report(group, READ, &unread).await?;
        }
        let read: BTreeSet<&String> = unread.iter().collect();
        self.update_conv(group, |info| {
            info.read_up_to = newest;
            info.receipts_owed.retain(|id| !read.contains(id));
        })?;
        Ok(unread.len())
    }

    /// The messages of others in `group` that the user was not shown yet (up to the newest
    /// `limit` entries of its history, oldest first), and the newest entry's row; `None` when
    /// nothing was added since.
    pub(super) fn unread(
        &self,
        group: GroupId,
        limit: usize,
    ) -> Result<Option<(i64, Vec<String>)>, Error> {
        let Some(conv) = self.convs.get(&group) else {
            return Err(Error::UnknownConversation(group.to_string()));
        };
        let rows = store::history_page(
            self.profile.conn(),
            group.as_bytes(),
            (Some(conv.info.read_up_to), None),
            limit,
            now_ms(),
        )?;
        let Some(newest) = rows.first().map(|(row, _)| *row) else {
            return Ok(None);
        };
        let me = at(&self.identity.username);
        let mut unread = Vec::new();
        for (row, sealed) in rows.iter().rev() {
            if let Item::Message {
                from,
                id,
                deleted: false,
                ..
            } = open_item(&self.profile.sealer, group, *row, sealed)?
                && from != me
            {
                unread.push(id);
            }
        }
        Ok(Some((newest, unread)))
    }

    /// Tells the conversation `target` that the user started (`true`) or stopped typing, if
    /// typing indicators are on (`false` when they are off: nothing was sent). While the user
    /// types on, call it again every [`crate::TYPING_REPEAT_MS`]: a start holds for
    /// [`TYPING_HOLDS_MS`] only.
    pub async fn typing(&mut self, target: &str, typing: bool) -> Result<bool, Error> {
        let group = self.resolve(target)?;
        if !self.prefs.typing {
            return Ok(false);
        }
        if !self.convs.get(&group).is_some_and(|c| c.info.active) {
            return Err(Error::NotMember(target.to_owned()));
        }
        self.check_not_blocked(group)?;
        self.before_send(group).await?;
        let content = content::typing(self.salt()?, typing);
        self.send_app(group, content, None).await?;
        Ok(true)
    }

    /// Sends the delivery receipts owed (after a sync). In a conversation that is blocked (a
    /// member failed the key directory's check), or that this device left, they are dropped.
    pub(super) async fn send_owed_receipts(&mut self) -> Result<(), Error> {
        let owing: Vec<(GroupId, Vec<String>, bool)> = self
            .convs
            .iter()
            .filter(|(_, c)| !c.info.receipts_owed.is_empty())
            .map(|(g, c)| (*g, c.info.receipts_owed.clone(), c.info.active))
            .collect();
        for (group, ids, active) in owing {
            if self.prefs.receipts && active && self.check_not_blocked(group).is_ok() {
                self.before_send(group).await?;
                self.send_report(group, DELIVERED, &ids).await?;
            }
            // Only those sent: more may have been noted meanwhile (by a push).
            let sent: BTreeSet<&String> = ids.iter().collect();
            self.update_conv(group, |info| {
                info.receipts_owed.retain(|id| !sent.contains(id));
            })?;
        }
        Ok(())
    }

    /// Sends `status` for the messages `ids` of `group`, in reports of up to 256.
    async fn send_report(
        &mut self,
        group: GroupId,
        status: u8,
        ids: &[String],
    ) -> Result<(), Error> {
        for chunk in ids.chunks(REPORT_CHUNK) {
            let statuses = chunk
                .iter()
                .map(|id| Ok((files::hex_array(id, "a message id")?, status)))
                .collect::<Result<Vec<_>, Error>>()?;
            let content = content::status(self.salt()?, &statuses);
            self.send_app(group, content, None).await?;
        }
        Ok(())
    }
}

/// Notes the delivery receipts owed for `items`, just taken in `conv`: one for each message of
/// another account's (never for anything unreadable or unsupported).
pub(super) fn owe(conv: &mut Conv, items: &[Item], me: &str) {
    for item in items {
        if let Item::Message { from, id, .. } = item
            && from != me
            && is_mimi_id(id)
        {
            conv.info.receipts_owed.push(id.clone());
        }
    }
    let owed = &mut conv.info.receipts_owed;
    if owed.len() > MAX_OWED {
        owed.drain(..owed.len() - MAX_OWED);
    }
}

/// Whether a message id is a MIMI one (messages from before MIMI content have 16-octet ids,
/// which no status report can name).
fn is_mimi_id(id: &str) -> bool {
    id.len() == 2 * MESSAGE_ID_LEN
}

/// What a device with `prefs` takes of what arrives: receipts and typing only when it sends
/// them itself.
pub(super) fn wanted(prefs: Preferences, item: &Item) -> bool {
    match item {
        Item::Status(_) => prefs.receipts,
        Item::Typing { .. } => prefs.typing,
        _ => true,
    }
}

/// Whether a typing indicator the server took at `accepted_at` still holds.
pub(super) fn typing_holds(accepted_at: u64) -> bool {
    now_ms().saturating_sub(accepted_at) <= TYPING_HOLDS_MS
}

/// Applies a status report to this account's messages it names, in the caller's transaction.
/// Returns what to log: the receipts that moved a message forward, one item per status.
pub(super) fn apply(
    tx: &Connection,
    sealer: &Sealer,
    group: GroupId,
    report: Report,
) -> Result<Vec<Item>, Error> {
    let Report {
        from,
        mine,
        statuses,
    } = report;
    let mut moved: BTreeMap<ReceiptStatus, Vec<String>> = BTreeMap::new();
    for (id, status) in statuses {
        let status = match status {
            DELIVERED => ReceiptStatus::Delivered,
            READ => ReceiptStatus::Read,
            // Unread, expired, deleted, hidden, error and later values: not shown.
            _ => continue,
        };
        let Some((row, mut item)) = changes::message_row(tx, sealer, group, &id)? else {
            continue;
        };
        let Item::Message {
            from: author,
            deleted: false,
            receipts,
            ..
        } = &mut item
        else {
            continue;
        };
        if *author != mine {
            continue;
        }
        match receipts.iter_mut().find(|r| r.from == from) {
            Some(r) if r.status >= status => continue,
            Some(r) => r.status = status,
            None => receipts.push(Receipt {
                from: from.clone(),
                status,
            }),
        }
        replace_item(tx, sealer, group, row, &item)?;
        moved.entry(status).or_default().push(id);
    }
    Ok(moved
        .into_iter()
        .map(|(status, messages)| Item::Receipt {
            from: from.clone(),
            status,
            messages,
        })
        .collect())
}
