//! Messages about earlier messages: replies, reactions (and taking one back), edits and
//! deletions. Each is a MIMI message that names the message it is about by id (see `content`).
//! Whoever takes one (a receiver, or the sender's own device) applies it to that message in its
//! history, in the transaction that takes it, and once: a change is noted by its own id.
//!
//! Only a message's author edits or deletes it, and only a reaction's author takes it back or
//! changes it (the MIMI draft's section on authorising edits and deletes: the author is the
//! sender's account, whichever of its devices sent it). A change from anyone else is refused and
//! shown as a security alert. A deleted message keeps its place in the history, without its
//! text or reactions.

use super::*;
pub(super) use crate::content::ChangeKind;
use crate::content::Replacement;
use crate::error::Error;
use sealpost_proto::mimi::{MESSAGE_ID_LEN, MimiId};
use zeroize::Zeroize as _;

/// A change as it arrives or is sent, before it is applied.
#[derive(Debug, Clone)]
pub(super) struct Change {
    /// `@author` of the change.
    pub(super) from: String,
    /// The change's own message id.
    pub(super) id: String,
    pub(super) kind: ChangeKind,
    /// Whom a new text mentions (see `content::MENTIONS`).
    pub(super) mentions: Vec<String>,
}

impl Change {
    /// The id of the message (or reaction) it is about.
    pub(super) fn message(&self) -> &str {
        match &self.kind {
            ChangeKind::React { to, .. } => to,
            ChangeKind::Replace { of, .. } => of,
        }
    }
}

/// A message of this device's history, found by its id.
pub(super) struct Found {
    pub(super) group: GroupId,
    pub(super) item: Item,
}

impl Found {
    /// The message's MIMI id; messages from before MIMI content have none to refer to.
    fn mimi_id(&self) -> Result<MimiId, Error> {
        let id = match &self.item {
            Item::Message { id, .. } | Item::Unsupported { id, .. } => id,
            _ => return Err(Error::NotChangeable(String::new())),
        };
        files::hex_array(id, "a message id").map_err(|_| Error::NotChangeable(short(id)))
    }
}

/// A message id as people are shown it: 8 hex digits after the hash algorithm's octet (`01`).
pub(crate) fn short(id: &str) -> String {
    let id = if id.len() == 2 * MESSAGE_ID_LEN {
        &id[2..]
    } else {
        id
    };
    id.chars().take(8).collect()
}

impl Client {
    /// Finds a message of this device's history by its id, or by the start of it as shown (at
    /// least 4 hex digits; the leading `01` of a full id may be left out).
    pub(super) fn find_message(&self, id: &str) -> Result<Found, Error> {
        let wanted = id.trim().to_ascii_lowercase();
        if wanted.len() < 4 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::BadMessageId(id.to_owned()));
        }
        let mut prefixes = vec![wanted.clone()];
        if wanted.len() < 2 * MESSAGE_ID_LEN {
            prefixes.push(format!("01{wanted}"));
        }
        let mut found = store::messages_by_prefix(self.profile.conn(), &prefixes, 2)?;
        found.sort();
        found.dedup();
        let (group, row) = match found.as_slice() {
            [] => return Err(Error::UnknownMessage(wanted)),
            [(group, row, _)] => (group, *row),
            more => return Err(Error::AmbiguousMessage(wanted, more.len())),
        };
        let group = GroupId::from_bytes(
            group
                .as_slice()
                .try_into()
                .map_err(|_| Error::Store("a history row without a conversation".into()))?,
        );
        let item = outbox::load_item(self.profile.conn(), &self.profile.sealer, group, row)?
            .ok_or_else(|| Error::UnknownMessage(wanted.clone()))?;
        Ok(Found { group, item })
    }

    /// Sends a text to `target` in answer to the message `to` (its id, or the start of it).
    pub async fn reply(&mut self, target: &str, to: &str, text: &str) -> Result<Event, Error> {
        self.send_text(target, text, Some(to)).await
    }

    /// Reacts to the message `message` with `emoji`. Reacting again with the same emoji changes
    /// nothing.
    pub async fn react(&mut self, message: &str, emoji: &str) -> Result<Event, Error> {
        // What the server holds first: the message may have just arrived, or changed.
        self.sync_inner().await?;
        if !content::valid_reaction(emoji) {
            return Err(Error::BadReaction);
        }
        let found = self.find_message(message)?;
        let to = found.mimi_id()?;
        let me = at(&self.identity.username);
        let Item::Message {
            deleted: false,
            reactions,
            id,
            ..
        } = &found.item
        else {
            return Err(Error::NotChangeable(short(message)));
        };
        let conversation = self.display(found.group);
        if reactions.iter().any(|r| r.from == me && r.emoji == emoji) {
            return Ok(Event::Reacted {
                conversation,
                from: me,
                message: MessageId::new(id.clone()),
                emoji: emoji.to_owned(),
                removed: false,
            });
        }
        let content = content::reaction(self.salt()?, to, emoji);
        let kind = ChangeKind::React {
            to: hex::encode(to),
            emoji: emoji.to_owned(),
        };
        self.send_change(found.group, content, kind).await
    }

    /// Takes back this account's reaction `emoji` to the message `message`.
    pub async fn unreact(&mut self, message: &str, emoji: &str) -> Result<Event, Error> {
        // What the server holds first: the message may have just arrived, or changed.
        self.sync_inner().await?;
        let found = self.find_message(message)?;
        let to = found.mimi_id()?;
        let me = at(&self.identity.username);
        let Item::Message { reactions, .. } = &found.item else {
            return Err(Error::NoSuchReaction(short(message), emoji.to_owned()));
        };
        let reaction = reactions
            .iter()
            .find(|r| r.from == me && r.emoji == emoji)
            .ok_or_else(|| Error::NoSuchReaction(short(message), emoji.to_owned()))?;
        let of = files::hex_array(&reaction.id, "a reaction's id")?;
        let content = content::retract(self.salt()?, of, Some(to), true);
        let kind = ChangeKind::Replace {
            of: reaction.id.clone(),
            with: Replacement::Nothing,
        };
        self.send_change(found.group, content, kind).await
    }

    /// Replaces the text of this account's message `message` (for everyone).
    pub async fn edit(&mut self, message: &str, text: &str) -> Result<Event, Error> {
        // What the server holds first: the message may have just arrived, or changed.
        self.sync_inner().await?;
        let (found, reply_to) = self.own_message(message)?;
        let mut content = content::edit(self.salt()?, found.mimi_id()?, reply_to, text);
        content::set_mentions(&mut content, &self.mentioned(found.group, text)?);
        let kind = ChangeKind::Replace {
            of: hex::encode(found.mimi_id()?),
            with: Replacement::Text(text.to_owned()),
        };
        self.send_change(found.group, content, kind).await
    }

    /// Takes back this account's message `message` (for everyone).
    pub async fn delete(&mut self, message: &str) -> Result<Event, Error> {
        // What the server holds first: the message may have just arrived, or changed.
        self.sync_inner().await?;
        let (found, reply_to) = self.own_message(message)?;
        let content = content::retract(self.salt()?, found.mimi_id()?, reply_to, false);
        let kind = ChangeKind::Replace {
            of: hex::encode(found.mimi_id()?),
            with: Replacement::Nothing,
        };
        self.send_change(found.group, content, kind).await
    }

    /// A text of this account's that can still be changed, and what it answers.
    fn own_message(&self, message: &str) -> Result<(Found, Option<MimiId>), Error> {
        let found = self.find_message(message)?;
        let Item::Message {
            from,
            deleted,
            reply_to,
            ..
        } = &found.item
        else {
            return Err(Error::NotChangeable(short(message)));
        };
        if *from != at(&self.identity.username) {
            return Err(Error::NotAuthor(short(message)));
        }
        if *deleted {
            return Err(Error::NotChangeable(short(message)));
        }
        let reply_to = reply_to
            .as_deref()
            .map(|id| files::hex_array(id, "the id a reply answers"))
            .transpose()?;
        found.mimi_id()?;
        Ok((found, reply_to))
    }

    /// The id, as MIMI content refers to it, of the message `to` in `group` (to reply to it).
    pub(super) fn reply_target(&self, group: GroupId, to: &str) -> Result<MimiId, Error> {
        let found = self.find_message(to)?;
        if found.group != group {
            return Err(Error::OtherConversation(short(to)));
        }
        if matches!(found.item, Item::Message { deleted: true, .. }) {
            return Err(Error::NotChangeable(short(to)));
        }
        found.mimi_id().map_err(|_| Error::NotChangeable(short(to)))
    }

    /// The members of `group` that `text` names as `@username`: whom it mentions.
    pub(super) fn mentioned(&self, group: GroupId, text: &str) -> Result<Vec<Username>, Error> {
        let named = content::named_users(text);
        if named.is_empty() {
            return Ok(named);
        }
        let members = self.members(&group.to_string())?;
        Ok(named
            .into_iter()
            .filter(|u| members.iter().any(|m| m.member == at(u)))
            .collect())
    }

    /// Sends a change to `group` and applies it here (the caller synced first).
    async fn send_change(
        &mut self,
        group: GroupId,
        content: Content,
        kind: ChangeKind,
    ) -> Result<Event, Error> {
        self.send_owed_meta().await?;
        let target = self.display(group);
        if !self.convs.get(&group).is_some_and(|c| c.info.active) {
            return Err(Error::NotMember(target));
        }
        self.refresh_verified(group).await?;
        self.check_not_blocked(group)?;
        self.before_send(group).await?;
        let mentions = match &kind {
            ChangeKind::Replace {
                with: Replacement::Text(text),
                ..
            } => self.mentioned(group, text)?.iter().map(at).collect(),
            _ => Vec::new(),
        };
        let change = Change {
            from: at(&self.identity.username),
            // Set from the encoded message.
            id: String::new(),
            kind,
            mentions,
        };
        let about = short(change.message());
        match self
            .send_app(group, content, Some(Item::Change(change)))
            .await?
        {
            Some(applied) => Ok(applied.render(target)),
            // Sent, but the message had changed meanwhile (its deletion came in): not applied.
            None => Err(Error::NotChangeable(about)),
        }
    }
}

/// Applies `change` to the message it is about, in the caller's transaction. Returns what to
/// log: the change as applied, a security alert when its sender may not make it, or nothing (a
/// replay, or a message this device does not have, such as one from before it joined: the
/// draft counts those as legitimate).
pub(super) fn apply(
    tx: &Connection,
    sealer: &Sealer,
    group: GroupId,
    change: Change,
) -> Result<Option<Item>, Error> {
    let Change {
        from,
        id,
        kind,
        mentions,
    } = change;
    let g = group.as_bytes();
    match kind {
        ChangeKind::React { to, emoji } => {
            let Some((row, mut item)) = message_row(tx, sealer, group, &to)? else {
                return Ok(None);
            };
            let Item::Message {
                deleted: false,
                reactions,
                ..
            } = &mut item
            else {
                return Ok(None);
            };
            if !store::note_change(tx, g, &id, row)? {
                return Ok(None);
            }
            reactions.push(ItemReaction {
                from: from.clone(),
                emoji: emoji.clone(),
                id,
            });
            replace_item(tx, sealer, group, row, &item)?;
            Ok(Some(Item::Reacted {
                from,
                message: to,
                emoji,
                removed: false,
            }))
        }
        ChangeKind::Replace { of, with } => {
            if let Some((row, mut item)) = message_row(tx, sealer, group, &of)? {
                let Item::Message {
                    from: author,
                    text,
                    edited,
                    deleted,
                    reactions,
                    mentions: item_mentions,
                    ..
                } = &mut item
                else {
                    return Ok(None);
                };
                if *author != from {
                    return Ok(Some(not_author(&from, "a message", author)));
                }
                if *deleted || !store::note_change(tx, g, &id, row)? {
                    return Ok(None);
                }
                let applied = match with {
                    Replacement::Text(new) => {
                        *text = new.clone();
                        *edited = true;
                        *item_mentions = mentions;
                        Item::Edited {
                            from,
                            message: of,
                            text: new,
                        }
                    }
                    Replacement::Nothing => {
                        text.zeroize();
                        *deleted = true;
                        reactions.clear();
                        item_mentions.clear();
                        Item::Deleted { from, message: of }
                    }
                    // A reaction in the place of a text: not something this version applies.
                    Replacement::Reaction(_) => return Ok(None),
                };
                replace_item(tx, sealer, group, row, &item)?;
                Ok(Some(applied))
            } else if let Some(row) = store::change_row(tx, g, &of)? {
                let Some(mut item) = outbox::load_item(tx, sealer, group, row)? else {
                    return Ok(None);
                };
                let Item::Message {
                    id: message,
                    reactions,
                    ..
                } = &mut item
                else {
                    return Ok(None);
                };
                let message = message.clone();
                let Some(at) = reactions.iter().position(|r| r.id == of) else {
                    return Ok(None);
                };
                if reactions[at].from != from {
                    return Ok(Some(not_author(&from, "a reaction", &reactions[at].from)));
                }
                if !store::note_change(tx, g, &id, row)? {
                    return Ok(None);
                }
                let applied = match with {
                    Replacement::Nothing => {
                        let taken = reactions.remove(at);
                        Item::Reacted {
                            from,
                            message,
                            emoji: taken.emoji,
                            removed: true,
                        }
                    }
                    Replacement::Reaction(emoji) => {
                        reactions[at].emoji = emoji.clone();
                        Item::Reacted {
                            from,
                            message,
                            emoji,
                            removed: false,
                        }
                    }
                    Replacement::Text(_) => return Ok(None),
                };
                replace_item(tx, sealer, group, row, &item)?;
                Ok(Some(applied))
            } else {
                Ok(None)
            }
        }
    }
}

/// The history row of the message `msg_id` of `group`, and its item.
pub(super) fn message_row(
    tx: &Connection,
    sealer: &Sealer,
    group: GroupId,
    msg_id: &str,
) -> Result<Option<(i64, Item)>, Error> {
    let Some(row) = store::history_row(tx, group.as_bytes(), msg_id)? else {
        return Ok(None);
    };
    Ok(outbox::load_item(tx, sealer, group, row)?.map(|item| (row, item)))
}

fn not_author(from: &str, what: &str, author: &str) -> Item {
    Item::Security {
        alert: SecurityAlert::NotAuthor,
        detail: format!(
            "{from} tried to change or take back {what} of {author}'s; only its author can, and it was refused"
        ),
    }
}
