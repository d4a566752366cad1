//! The outbox: application messages that are encrypted and not yet confirmed by the server.
//!
//! A post can end three ways. The server answers with where it stored the message (sent), or
//! refuses it for certain (a 4xx: nothing was stored), or nobody knows: the connection broke,
//! a node died, a proxy answered for it. In the third case the message may well be stored and
//! delivered already. Encrypting it again would make a second message (the recipients would see
//! the text twice, under two ids), so the same ciphertext stays in the outbox and is posted
//! again by the next operation that reaches the server. The server keeps one copy of a payload
//! and answers a repeat with where the first landed, so a retry settles the message either way.
//!
//! Retried messages announce how they ended with an event ([`Event::Sent`] or
//! [`Event::NotSent`]); the history entry of the message says `unconfirmed` until then, and
//! `failed` if it was refused.

use super::*;

use sealpost_proto::PostedResponse;
use store::Outgoing;

/// What the answer to a post (or its absence) says.
enum Outcome {
    /// Stored, here.
    Sent(PostedResponse),
    /// Refused: nothing was stored.
    Refused(Error),
    /// Unknown: it may have been stored.
    Unknown(Error),
}

impl Outcome {
    fn of(result: Result<PostedResponse, Error>) -> Outcome {
        match result {
            Ok(posted) => Outcome::Sent(posted),
            // The server's own "something failed on my side": the write may have happened. (Its
            // `unavailable` says nothing was stored: a storage failure is rolled back.)
            Err(
                e @ Error::Server {
                    code: ErrorCode::Internal,
                    ..
                },
            ) => Outcome::Unknown(e),
            Err(e @ Error::Server { .. }) => Outcome::Refused(e),
            Err(e) => Outcome::Unknown(e),
        }
    }
}

/// How an outbox entry ends.
enum Ending<'a> {
    /// The server stored it, here.
    Sent(PostedResponse),
    /// The server refused it: nothing was stored.
    Refused(&'a Error),
    /// The user stopped trying: it may or may not have been stored.
    GivenUp,
}

/// Why a message given up on shows as not sent.
const GIVEN_UP: &str =
    "you stopped trying to send it; the server never confirmed it, so some may have received it";

impl Client {
    /// The messages whose sending is not settled yet (the server's answer was lost), oldest
    /// first. Every sync posts them again until the server answers for them.
    pub fn unconfirmed(&self) -> Result<Vec<Unconfirmed>, Error> {
        let mut out = Vec::new();
        for outgoing in store::outgoing(self.profile.conn())? {
            let group = GroupId::from_slice(&outgoing.group)
                .map_err(|_| Error::Store("an outbox entry names no conversation".into()))?;
            let message = match outgoing.row {
                Some(row) => {
                    match load_item(self.profile.conn(), &self.profile.sealer, group, row)? {
                        Some(Item::Message { id, .. }) => Some(MessageId::new(id)),
                        _ => None,
                    }
                }
                None => None,
            };
            out.push(Unconfirmed {
                conversation: self.display(group),
                conversation_id: ConversationId::of(group),
                id: message,
            });
        }
        Ok(out)
    }

    /// Stops trying to send the unconfirmed messages of the conversation `target`: each is
    /// taken out of the outbox and shown as not sent, with a `not_sent` event, although the
    /// server may have stored it (its answer never came). For a server that keeps failing on
    /// one message, which would otherwise hold up every sync. Returns how many there were.
    pub fn give_up_unconfirmed(&mut self, target: &str) -> Result<usize, Error> {
        let group = self.resolve(target)?;
        let mut n = 0;
        for outgoing in store::outgoing(self.profile.conn())? {
            if outgoing.group == group.as_bytes() {
                self.settle(&outgoing, group, Ending::GivenUp, true)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Posts the messages left in the outbox, oldest first, and settles each. Stops at the
    /// first whose outcome is still unknown (the server is out of reach) with that error, so
    /// that nothing that depends on it happens before it is settled.
    pub(super) async fn flush_outbox(&mut self) -> Result<(), Error> {
        for outgoing in store::outgoing(self.profile.conn())? {
            self.post_outgoing(outgoing, true).await?;
        }
        Ok(())
    }

    /// Posts one message from the outbox and settles it. `retry`: it was posted before, and
    /// the way it ends is logged as an event (a first post's caller gets the answer itself, and
    /// a refused retry is not an error of the operation that made it).
    pub(super) async fn post_outgoing(
        &mut self,
        mut outgoing: Outgoing,
        retry: bool,
    ) -> Result<(), Error> {
        let group = GroupId::from_slice(&outgoing.group)
            .map_err(|_| Error::Store("an outbox entry names no conversation".into()))?;
        let result = self
            .api
            .post_message(&self.identity, group, std::mem::take(&mut outgoing.payload))
            .await;
        match Outcome::of(result) {
            Outcome::Sent(posted) => self.settle(&outgoing, group, Ending::Sent(posted), retry),
            Outcome::Refused(e) => {
                self.settle(&outgoing, group, Ending::Refused(&e), retry)?;
                if retry { Ok(()) } else { Err(e) }
            }
            Outcome::Unknown(e) if retry => Err(e),
            Outcome::Unknown(e) => Err(Error::Unconfirmed {
                reason: e.to_string(),
            }),
        }
    }

    /// Takes a message out of the outbox with how it ended, in one transaction: its history
    /// entry says sent or failed, and a retry's ending is logged.
    fn settle(
        &mut self,
        outgoing: &Outgoing,
        group: GroupId,
        ending: Ending<'_>,
        retry: bool,
    ) -> Result<(), Error> {
        let mut conv = self.convs.get(&group).cloned();
        self.profile.atomically(|tx, sealer, _| {
            store::drop_outgoing(tx, outgoing.id)?;
            let failure = match ending {
                Ending::Sent(posted) => {
                    store::note_sent(tx, group.as_bytes(), posted.seq, outgoing.row)?;
                    None
                }
                // It may have been stored: its number stays spent (recipients who did not get
                // it see a gap, which is what happened).
                Ending::GivenUp => Some(GIVEN_UP.to_owned()),
                Ending::Refused(e) => {
                    // Nobody will see this number: if no later text took the next one, the next
                    // text reuses it, and the recipients see no gap.
                    if let Some(conv) = conv.as_mut()
                        && outgoing.n > 0
                        && conv.info.sent == outgoing.n
                    {
                        conv.info.sent -= 1;
                        put_conv(tx, sealer, group, conv)?;
                    }
                    Some(e.to_string())
                }
            };
            let Some(row) = outgoing.row else {
                return Ok(());
            };
            let Some(mut item) = load_item(tx, sealer, group, row)? else {
                return Ok(());
            };
            let Item::Message {
                id,
                failed,
                unconfirmed,
                ..
            } = &mut item
            else {
                return Ok(());
            };
            *failed = failure.clone();
            *unconfirmed = false;
            let id = id.clone();
            replace_item(tx, sealer, group, row, &item)?;
            if retry {
                let item = match failure {
                    None => Item::Sent { id },
                    Some(reason) => Item::NotSent { id, reason },
                };
                put_event_record(
                    tx,
                    sealer,
                    Some(group),
                    &LoggedRecord::Conversation { item },
                )?;
            }
            Ok(())
        })?;
        if let Some(conv) = conv {
            self.convs.insert(group, conv);
        }
        Ok(())
    }
}

/// The history item in `row` of `group`, if there is one.
pub(super) fn load_item(
    tx: &Connection,
    sealer: &Sealer,
    group: GroupId,
    row: i64,
) -> Result<Option<Item>, Error> {
    store::history_item(tx, group.as_bytes(), row)?
        .map(|sealed| open_item(sealer, group, row, &sealed))
        .transpose()
}
