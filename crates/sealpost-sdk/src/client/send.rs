//! Sending an application message: resolving (or opening) the conversation, checking the
//! recipients and the size before anything is encrypted, and handing the ciphertext to the outbox.

use super::*;

impl Client {
    /// Sends a text to `@user` (creating the 1:1 conversation if needed) or `#group`.
    pub async fn send(&mut self, target: &str, text: &str) -> Result<Event, Error> {
        self.send_text(target, text, None).await
    }

    /// Sends a text, perhaps in answer to the message `reply_to` (its id, or the start of it).
    pub(super) async fn send_text(
        &mut self,
        target: &str,
        text: &str,
        reply_to: Option<&str>,
    ) -> Result<Event, Error> {
        let group = self.conversation_to_send(target).await?;
        // The id is set from the encoded message, once it is numbered.
        let item = Item::text(
            at(&self.identity.username),
            text.to_owned(),
            String::new(),
            now_ms(),
        );
        let content = content::text(self.salt()?, text);
        self.send_shown(group, content, item, reply_to).await
    }

    /// Sends a message shown in the history (a text, or a file with its caption), perhaps in
    /// answer to `reply_to`, with the members its text mentions.
    pub(super) async fn send_shown(
        &mut self,
        group: GroupId,
        mut content: Content,
        mut item: Item,
        reply_to: Option<&str>,
    ) -> Result<Event, Error> {
        let Item::Message { text, .. } = &item else {
            return Err(Error::Store("only messages are shown as sent".into()));
        };
        let text = text.clone();
        if let Some(to) = reply_to {
            let to = self.reply_target(group, to)?;
            if let Item::Message { reply_to, .. } = &mut item {
                *reply_to = Some(hex::encode(to));
            }
            content.in_reply_to = Some(to);
        }
        let timer = self.convs.get(&group).map_or(0, |c| c.info.timer);
        if timer > 0 {
            content::set_expiry(&mut content, timer);
            item.expires(Some(now_ms().saturating_add(timer.saturating_mul(1000))));
        }
        let mentioned = self.mentioned(group, &text)?;
        content::set_mentions(&mut content, &mentioned);
        if let Item::Message { mentions, .. } = &mut item {
            *mentions = mentioned.iter().map(at).collect();
        }
        let item = self
            .send_app(group, content, Some(item))
            .await?
            .ok_or_else(|| Error::Store("a sent message was not kept".into()))?;
        Ok(item.render(self.display(group)))
    }

    /// Sets how long messages in `target` last from now on, for every member: `seconds` after
    /// the server takes them (0: for ever). Every member's device deletes them then.
    pub async fn disappear(&mut self, target: &str, seconds: u64) -> Result<Event, Error> {
        if seconds > content::MAX_TIMER {
            return Err(Error::BadTimer);
        }
        let group = self.conversation_to_send(target).await?;
        // The server first: it deletes what it still holds of the conversation past the timer.
        self.api
            .set_group_expiry(&self.identity, group, seconds)
            .await?;
        if let Some(conv) = self.convs.get_mut(&group) {
            conv.info.timer = seconds;
        }
        let item = Item::Timer {
            by: at(&self.identity.username),
            seconds,
        };
        let content = content::timer(self.salt()?, seconds);
        let item = self
            .send_app(group, content, Some(item))
            .await?
            .ok_or_else(|| Error::Store("a sent timer was not kept".into()))?;
        Ok(item.render(self.display(group)))
    }

    /// The conversation `target` names, opened if it is a person without one yet, and ready
    /// for a message to be sent in it.
    pub(super) async fn conversation_to_send(&mut self, target: &str) -> Result<GroupId, Error> {
        self.sync_inner().await?;
        self.send_owed_meta().await?;
        let group = match self.find(target)? {
            Some(g) => g,
            None => match target.strip_prefix('@') {
                Some(user) => {
                    let user = Username::new(user)?;
                    if user == self.identity.username {
                        return Err(Error::SelfConversation);
                    }
                    let users = self
                        .with_my_other_devices(std::slice::from_ref(&user))
                        .await?;
                    // The peer passes the trust gate before the conversation is created; a 1:1
                    // conversation without the peer must not linger (sends would reach nobody).
                    let suite = Suite::default();
                    let me = [self.identity.device_id];
                    let kps = self.key_packages_for(suite, &me, &users).await?;
                    let group = self
                        .new_conversation(ConversationKind::Direct, "", Some(user.clone()), suite)
                        .await?;
                    self.add_or_forget(group, kps).await?;
                    group
                }
                None => return Err(Error::UnknownConversation(target.to_owned())),
            },
        };
        if !self.convs.get(&group).is_some_and(|c| c.info.active) {
            return Err(Error::NotMember(target.to_owned()));
        }
        self.refresh_verified(group).await?;
        self.check_not_blocked(group)?;
        self.before_send(group).await?;
        self.send_profile_if_owed(group).await?;
        Ok(group)
    }

    /// Commits pending proposals and renews the leaf when due, so a message can be sent.
    pub(super) async fn before_send(&mut self, group: GroupId) -> Result<(), Error> {
        let pending = load_group(&self.profile.mls.provider, group)?
            .pending_proposals()
            .next()
            .is_some();
        if pending {
            self.commit_pending_proposals(group).await?;
        }
        let due = self.convs.get(&group).is_some_and(|c| {
            now_ms().saturating_sub(c.info.last_self_update_ms)
                >= self.settings.self_update_after.as_millis() as u64
        });
        if due {
            self.commit(group, |g, p, s| {
                let bundle = g
                    .self_update(p, s, LeafNodeParameters::default())
                    .map_err(Error::mls)?;
                Ok((bundle.into_commit(), None))
            })
            .await?;
            if let Some(conv) = self.convs.get_mut(&group) {
                conv.info.last_self_update_ms = now_ms();
                let conv = conv.clone();
                self.profile
                    .atomically(|tx, sealer, _| put_conv(tx, sealer, group, &conv))?;
            }
        }
        Ok(())
    }

    /// Refuses an application message whose encoded body, padded and encrypted, would be larger
    /// than the server accepts. Bodies that fit the smaller padding buckets go without asking.
    pub(super) async fn check_size(&mut self, body: usize) -> Result<(), Error> {
        /// MLS framing, authenticated data and signature around the padded body, with room.
        const OVERHEAD: usize = 4096;
        /// What any server is taken to accept without asking.
        const SMALL: usize = 64 * 1024;
        let wire = padded_len(body) + OVERHEAD;
        if wire <= SMALL {
            return Ok(());
        }
        let Some(limits) = self.api.limits().await? else {
            // A server that does not say: it answers for itself.
            return Ok(());
        };
        let limit = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
        if wire <= limit {
            return Ok(());
        }
        // The largest body that fits: padded to a bucket, or to a multiple of the last one.
        let room = limit.saturating_sub(OVERHEAD);
        let last = PADDING_BUCKETS[PADDING_BUCKETS.len() - 1];
        let largest_pad = if room >= last {
            room / last * last
        } else {
            PADDING_BUCKETS
                .iter()
                .copied()
                .filter(|b| *b <= room)
                .max()
                .unwrap_or(0)
        };
        Err(Error::TooLarge {
            size: body as u64,
            limit: largest_pad.saturating_sub(4) as u64,
        })
    }

    /// A fresh random salt for a message.
    pub(super) fn salt(&self) -> Result<[u8; 16], Error> {
        self.profile
            .mls
            .provider
            .rand()
            .random_array()
            .map_err(|_| Error::Crypto("no randomness"))
    }

    /// Encrypts and posts one application message. A message shown in the history (`item`)
    /// gets this device's next number in the conversation, in the same transaction as the
    /// ratchet step, so no number is used twice; the item gets the message's id, and is
    /// returned as it is shown.
    /// The ciphertext goes into the outbox in that transaction too: a post whose answer is lost
    /// (or a crash before posting) leaves it there, and the next operation that reaches the
    /// server posts the same ciphertext again (see `outbox`), so it is stored once whatever
    /// happens, and the history says whether it is confirmed.
    pub(super) async fn send_app(
        &mut self,
        group: GroupId,
        mut content: Content,
        mut item: Option<Item>,
    ) -> Result<Option<Item>, Error> {
        let mut conv = self
            .convs
            .get(&group)
            .cloned()
            .ok_or_else(|| Error::UnknownConversation(group.to_string()))?;
        let mut n = 0;
        if item.is_some() {
            conv.info.sent += 1;
            n = conv.info.sent;
            content::set_number(&mut content, n);
        }
        let encoded = content::encode(&content, &self.identity.username, group);
        let body = encoded.bytes;
        match &mut item {
            Some(Item::Message { id, .. }) => *id = hex::encode(encoded.id),
            Some(Item::Change(change)) => change.id = hex::encode(encoded.id),
            _ => {}
        }
        let mut shown = item.clone();
        // Too large for this server: refused here, before anything is encrypted or kept (a
        // server cut off mid-upload would look unreachable, and the number spent a gap).
        self.check_size(body.len()).await?;
        let padded = Zeroizing::new(pad(&body).map_err(|_| Error::TooLarge {
            size: body.len() as u64,
            limit: u64::from(u32::MAX),
        })?);
        let root = self.root_record();
        // Kept as unconfirmed until the server answers for it (see `outbox`).
        if let Some(Item::Message { unconfirmed, .. }) = &mut item {
            *unconfirmed = true;
        }
        let outgoing = self.profile.atomically(|tx, sealer, p| {
            let mut g = load_group(p, group)?;
            g.set_aad(message_aad(&g, p, root)?);
            let out = g
                .create_message(p, &self.identity.device_key, &padded)
                .map_err(Error::mls)?;
            let row = match &item {
                Some(Item::Change(change)) => {
                    // Applied here at once, as the receivers apply it.
                    shown = changes::apply(tx, sealer, group, change.clone())?;
                    None
                }
                Some(item) => put_item(tx, sealer, group, None, item)?,
                None => None,
            };
            put_conv(tx, sealer, group, &conv)?;
            let payload = serialize(&out)?;
            let id = store::put_outgoing(tx, group.as_bytes(), row, n, &payload)?;
            Ok(store::Outgoing {
                id,
                group: group.as_bytes().to_vec(),
                row,
                n,
                payload,
            })
        })?;
        self.convs.insert(group, conv);
        self.post_outgoing(outgoing, false).await?;
        Ok(shown)
    }

    /// For load generators only: a signed-in session (server URL, bearer token), the group
    /// behind `target`, and `n` application messages encrypted for it but not sent. The
    /// messages advance this device's ratchet (committed locally), so they are valid to post
    /// once each, in order. Not for applications: the token is a secret.
    #[doc(hidden)]
    pub async fn bench_prepare(
        &mut self,
        target: &str,
        n: usize,
        text: &str,
    ) -> Result<BenchBatch, Error> {
        let group = self.resolve(target)?;
        let token = self.api.token(&self.identity).await?;
        let me = self.identity.username.clone();
        let messages = self.profile.atomically(|_, _, p| {
            let mut g = load_group(p, group)?;
            (0..n)
                .map(|_| {
                    let salt = p
                        .rand()
                        .random_array()
                        .map_err(|_| Error::Crypto("no randomness"))?;
                    let body = content::encode(&content::text(salt, text), &me, group).bytes;
                    let padded = Zeroizing::new(pad(&body).map_err(|_| Error::TooLarge {
                        size: body.len() as u64,
                        limit: u64::from(u32::MAX),
                    })?);
                    serialize(
                        &g.create_message(p, &self.identity.device_key, &padded)
                            .map_err(Error::mls)?,
                    )
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(BenchBatch {
            server: self.identity.server.clone(),
            token,
            group: group.to_string(),
            messages,
        })
    }
}
