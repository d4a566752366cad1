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

impl Client {
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
            Outcome::Sent(posted) => self.settle(&outgoing, group, Ok(posted), retry),
            Outcome::Refused(e) => {
                self.settle(&outgoing, group, Err(&e), retry)?;
                if retry { Ok(()) } else { Err(e) }
            }
            Outcome::Unknown(e) if retry => Err(e),
            Outcome::Unknown(e) => Err(Error::Unconfirmed {
                reason: e.to_string(),
            }),
        }
    }

    /// Takes a message out of the outbox with the server's answer, in one transaction: its
    /// history entry says sent or failed, and a retry's ending is logged.
    fn settle(
        &mut self,
        outgoing: &Outgoing,
        group: GroupId,
        answer: Result<PostedResponse, &Error>,
        retry: bool,
    ) -> Result<(), Error> {
        let mut conv = self.convs.get(&group).cloned();
        self.profile.atomically(|tx, sealer, _| {
            store::drop_outgoing(tx, outgoing.id)?;
            let failure = match answer {
                Ok(posted) => {
                    store::note_sent(tx, group.as_bytes(), posted.seq, outgoing.row)?;
                    None
                }
                Err(e) => {
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
fn load_item(
    tx: &Connection,
    sealer: &Sealer,
    group: GroupId,
    row: i64,
) -> Result<Option<Item>, Error> {
    store::history_item(tx, group.as_bytes(), row)?
        .map(|sealed| open_item(sealer, group, row, &sealed))
        .transpose()
}
