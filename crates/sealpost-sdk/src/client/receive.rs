//! Receiving: the sync engine (fetch, process each delivery in a local transaction,
//! acknowledge once it is durable), Welcomes and commits of others, the push connection, and the
//! event log's readers.

use super::*;

impl Client {
    /// Fetches and processes everything pending; returns, in the order they were learned, the
    /// events no earlier call of `sync` returned — what this sync learned, and what other
    /// operations (a send, a group change) learned since. They are marked returned before this
    /// returns: a front end that must not lose one across a crash reads the event log with a
    /// consumer of its own instead ([`unseen_events`], [`mark_seen`]).
    ///
    /// [`unseen_events`]: Self::unseen_events
    /// [`mark_seen`]: Self::mark_seen
    pub async fn sync(&mut self) -> Result<Vec<Event>, Error> {
        self.sync_all().await?;
        let events = self.unseen_events(SYNC_CONSUMER, usize::MAX)?;
        let ids: Vec<EventId> = events.iter().map(|e| e.event_id).collect();
        self.mark_seen(SYNC_CONSUMER, &ids)?;
        Ok(events.into_iter().map(|e| e.event).collect())
    }

    /// A sync and the work that follows it, with this account's directory history checked.
    pub(crate) async fn sync_all(&mut self) -> Result<(), Error> {
        self.sync_inner().await?;
        self.after_sync().await?;
        self.check_own_account().await?;
        self.check_auditors().await
    }

    /// The id of the newest event in the log ([`EventId::START`] when it is empty).
    pub fn last_event_id(&self) -> Result<EventId, Error> {
        store::last_event(self.profile.conn()).map(|id| EventId(id as u64))
    }

    /// Up to `limit` events of the log after `after`, oldest first, rendered with the names
    /// as they are now (a group's name may arrive after its first events).
    pub fn events_after(&self, after: EventId, limit: usize) -> Result<Vec<LoggedEvent>, Error> {
        let rows = store::read_events(
            self.profile.conn(),
            &self.profile.sealer,
            after.0 as i64,
            limit.min(i64::MAX as usize),
            None,
        )?;
        rows.into_iter()
            .map(|(id, e)| self.render_logged(id, e))
            .collect()
    }

    /// Up to `limit` events that `consumer` (a name of the front end's choosing) has not marked
    /// seen, oldest first.
    pub fn unseen_events(&self, consumer: &str, limit: usize) -> Result<Vec<LoggedEvent>, Error> {
        self.unseen_events_after(consumer, EventId::START, limit)
    }

    /// [`unseen_events`](Self::unseen_events) after `after` only (a reader that has taken the
    /// ones before it and not marked them yet).
    pub(crate) fn unseen_events_after(
        &self,
        consumer: &str,
        after: EventId,
        limit: usize,
    ) -> Result<Vec<LoggedEvent>, Error> {
        let conn = self.profile.conn();
        let cursor = store::event_cursor(conn, consumer)?.max(after.0 as i64);
        let rows = store::read_events(
            conn,
            &self.profile.sealer,
            cursor,
            limit.min(i64::MAX as usize),
            Some(consumer),
        )?;
        rows.into_iter()
            .map(|(id, e)| self.render_logged(id, e))
            .collect()
    }

    /// Marks events as seen by `consumer`: [`unseen_events`](Self::unseen_events) leaves them
    /// out from now on.
    pub fn mark_seen(&mut self, consumer: &str, ids: &[EventId]) -> Result<(), Error> {
        let ids: Vec<i64> = ids.iter().map(|id| id.0 as i64).collect();
        self.profile
            .atomically(|tx, _, _| store::mark_seen(tx, consumer, &ids))
    }

    pub(super) fn render_logged(
        &self,
        id: i64,
        stored: store::StoredEvent,
    ) -> Result<LoggedEvent, Error> {
        let damaged = |e: serde_json::Error| Error::Store(format!("an event is damaged: {e}"));
        let (group, event) = match stored {
            store::StoredEvent::Item { group, item } => {
                let item: Item = serde_json::from_slice(&item).map_err(damaged)?;
                let group = GroupId::from_slice(&group)?;
                (Some(group), item.render(self.display(group)))
            }
            store::StoredEvent::Record { group, record } => {
                let group = group.map(|g| GroupId::from_slice(&g)).transpose()?;
                match serde_json::from_slice(&record).map_err(damaged)? {
                    LoggedRecord::Conversation { item } => {
                        let group = group.ok_or_else(|| {
                            Error::Store("a conversation's event names no conversation".into())
                        })?;
                        (Some(group), item.render(self.display(group)))
                    }
                    LoggedRecord::Account { event } => (group, event),
                }
            }
        };
        Ok(LoggedEvent {
            event_id: EventId(id as u64),
            conversation_id: group.map(ConversationId::of),
            event: self.with_name(event),
        })
    }

    /// Deletes the disappearing messages whose time has come (see `Profile::purge_expired`).
    pub(crate) fn purge_expired(&mut self) -> Result<usize, Error> {
        self.profile.purge_expired(now_ms())
    }

    pub(super) async fn sync_inner(&mut self) -> Result<(), Error> {
        self.purge_expired()?;
        self.dir.fresh.clear();
        self.dir.refused.clear();
        // Messages whose post was not confirmed go first: nothing after them is built on a
        // state they are missing from.
        self.flush_outbox().await?;
        loop {
            let req = SyncRequest {
                inbox_after: Some(self.inbox_cursor),
                groups: self.convs.iter().map(|(g, c)| (*g, c.cursor)).collect(),
                limit: None,
            };
            let batch = self.api.sync(&self.identity, &req).await?;
            if batch.deliveries.is_empty() {
                return Ok(());
            }
            // One local transaction (one fsync) per batch; acknowledged only once it is durable.
            let before = self.cursors();
            let mut joined = false;
            self.welcome_waits = false;
            self.profile.begin_batch()?;
            self.batch_groups = Some(BTreeMap::new());
            let mut result = Ok(());
            // The groups' logs before the Welcomes: a device removed and added back takes its
            // removal (in the log) before the Welcome that adds it again, which it would
            // otherwise take for a replay while it still counts itself a member. The log of a
            // conversation a Welcome opens comes in the next round, from the cursor it sets.
            let (mut welcomes, mut logs): (Vec<_>, Vec<_>) = batch
                .deliveries
                .into_iter()
                .partition(|d| d.kind == DeliveryKind::Inbox);
            // In the server's order, whatever order the batch came in: a delivery taken after a
            // later one of its log would be below the cursor, and skipped for good.
            welcomes.sort_by_key(|d| d.inbox_seq);
            logs.sort_by_key(|d| (d.group(), d.group_seq));
            // A Welcome added further on than this device's cursor waits for the log up to it
            // (see `process_welcome`), unless the server no longer has that log: it keeps the
            // log for its retention time only. Such a Welcome is taken now, as a rejoin, and
            // the log of its conversation in this batch after it.
            let retake: BTreeSet<GroupId> = welcomes
                .iter()
                .filter(|w| self.log_gone_before(w, &logs))
                .map(Delivery::group)
                .collect();
            let (later, logs): (Vec<_>, Vec<_>) =
                logs.into_iter().partition(|d| retake.contains(&d.group()));
            for d in logs.into_iter().chain(welcomes).chain(later) {
                if self.welcome_waits && retake.contains(&d.group()) {
                    // Its Welcome waits behind an earlier one: the log waits with it.
                    continue;
                }
                result = match d.kind {
                    DeliveryKind::Inbox => {
                        let retaken = retake.contains(&d.group());
                        self.process_welcome(d, retaken).map(|j| joined |= j)
                    }
                    DeliveryKind::Group => self.process_group(d),
                };
                if result.is_err() {
                    break;
                }
            }
            self.batch_groups = None;
            if let Err(e) = result.and_then(|()| self.profile.commit_batch()) {
                self.profile.abort_batch();
                self.dir.peer_roots.clear();
                self.reload()?;
                if let Error::NeedDirectory(users) = e {
                    // Verify the entries the batch needs, then process it again.
                    // Refused answers were shown; the leaves they were for are refused.
                    self.fetch_entries(users).await?;
                    continue;
                }
                return Err(e);
            }
            self.check_peer_roots().await?;
            let ack = AckRequest {
                inbox: Some(self.inbox_cursor),
                groups: self.convs.iter().map(|(g, c)| (*g, c.cursor)).collect(),
            };
            self.api.ack(&self.identity, &ack).await?;
            // A conversation joined in this batch has its log to come; a batch that moved no
            // cursor (all of it waiting, or nothing but replays) would come again as it is.
            if (batch.more == 0 && !joined) || self.cursors() == before {
                return Ok(());
            }
        }
    }

    /// Where this device stands in its inbox and in each group's log.
    pub(super) fn cursors(&self) -> (u64, Vec<u64>) {
        (
            self.inbox_cursor,
            self.convs.values().map(|c| c.cursor).collect(),
        )
    }

    /// Whether the log of a conversation this device counts itself in is gone from the server up
    /// to where `welcome` adds it: the batch's log of that conversation does not go on from the
    /// device's cursor. (Entries between its removal and the add were never for it, but its
    /// removal, at or before its cursor's next entry, was.)
    pub(super) fn log_gone_before(&self, welcome: &Delivery, logs: &[Delivery]) -> bool {
        let group = welcome.group();
        let Some(conv) = self.convs.get(&group) else {
            return false;
        };
        conv.info.active
            && welcome.group_seq > conv.cursor
            && logs
                .iter()
                .find(|d| d.group() == group)
                .is_some_and(|first| first.group_seq > conv.cursor + 1)
    }

    /// Processes one delivery in one transaction. Already-processed deliveries are skipped.
    pub(super) fn process(&mut self, d: Delivery) -> Result<(), Error> {
        match d.kind {
            DeliveryKind::Inbox => self.process_welcome(d, false).map(drop),
            DeliveryKind::Group => self.process_group(d),
        }
    }

    /// Takes a Welcome. `rejoin`: the conversation's log up to it is gone from the server, and
    /// this device, which never saw its removal, joins again. `true` when it joined.
    pub(super) fn process_welcome(&mut self, d: Delivery, rejoin: bool) -> Result<bool, Error> {
        if d.inbox_seq <= self.inbox_cursor {
            return Ok(false);
        }
        let group = d.group();
        let inbox_seq = d.inbox_seq;
        // A Welcome may replace the group: whatever the batch kept of it is gone.
        if let Some(cache) = self.batch_groups.as_mut() {
            cache.remove(&group);
        }
        // A Welcome for a conversation this device is in is a replay, and ignored; one for a
        // conversation it was removed from (or left) is a re-add: it joins again.
        let previous = self.convs.get(&group).cloned();
        let known = !rejoin && previous.as_ref().is_some_and(|c| c.info.active);
        if self.welcome_waits
            || (known && previous.as_ref().is_some_and(|c| d.group_seq > c.cursor))
        {
            // Added by a commit further on in a log this device has not caught up with: it
            // was removed on the way (in that log) and is added again. The Welcome waits, not
            // acknowledged, until the log has come in: taken now, it would pass for a replay.
            self.welcome_waits = true;
            return Ok(false);
        }
        let linked = self.linked.get(&group).cloned();
        let check = DirCheck {
            entries: &self.dir.entries,
            fresh: &self.dir.fresh,
            refused: &self.dir.refused,
            roots: &self.dir.roots,
            peer_roots: &mut self.dir.peer_roots,
        };
        let joined = self.profile.atomically(|tx, sealer, p| {
            put_meta(tx, sealer, "inbox_cursor", &inbox_seq.to_be_bytes())?;
            if known {
                return Ok(None);
            }
            let msg = MlsMessageIn::tls_deserialize_exact(d.payload.as_slice())
                .map_err(|_| Error::Protocol("a Welcome does not parse".into()))?;
            let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
                return Err(Error::Protocol("expected a Welcome".into()));
            };
            // Rejoining: the state of the epoch this device was removed in gives way to the new
            // one (in this transaction: if joining fails, it stays as it was).
            let mut old_epoch = None;
            if previous.is_some() {
                forget_pending_commit(tx, group)?;
            }
            if previous.is_some()
                && let Some(mut old) =
                    MlsGroup::load(p.storage(), &mls_id(group)).map_err(Error::mls)?
            {
                old_epoch = Some(old.epoch().as_u64());
                old.delete(p.storage()).map_err(Error::mls)?;
            }
            spend_key_package(tx, p, &welcome, group)?;
            let processed = ProcessedWelcome::new_from_welcome(p, &join_config(), welcome)
                .map_err(Error::mls)?;
            // The members' directory entries are asked for from the tree as it came (checked
            // below, once the tree is verified): before the costliest step, verifying every
            // member's leaf, rather than after it and then again.
            if let Some(tree) = processed
                .unverified_group_info()
                .extensions()
                .ratchet_tree()
                && let LeafCheck::Need(users) = check.leaves(
                    tree.ratchet_tree()
                        .leaves()
                        .map(|l| (l.credential(), l.signature_key().as_slice())),
                )
            {
                return Err(Error::NeedDirectory(users));
            }
            let staged = processed.into_staged_welcome(p, None).map_err(Error::mls)?;
            let by = staged
                .welcome_sender()
                .map(|l| who(l.credential()))
                .unwrap_or_else(|_| "@unknown".into());
            if let Some(old) = old_epoch
                && staged.group_context().epoch().as_u64() <= old
            {
                // A Welcome into an epoch this device already knew is an old one replayed.
                return Err(Error::Protocol(
                    "an old Welcome to a conversation this device left was replayed".into(),
                ));
            }
            let mls = staged.into_group(p).map_err(Error::mls)?;
            if mls.group_id().as_slice() != group.as_bytes() {
                return Err(Error::Protocol(
                    "a Welcome is for another group than announced".into(),
                ));
            }
            if mls
                .members()
                .any(|m| credential_user(&m.credential).is_none())
            {
                return Err(Error::Protocol(
                    "a group has a member without a Sealpost identity".into(),
                ));
            }
            let members: Vec<_> = mls.members().collect();
            match check.leaves(
                members
                    .iter()
                    .map(|m| (&m.credential, m.signature_key.as_slice())),
            ) {
                LeafCheck::Ok => {}
                LeafCheck::Need(users) => return Err(Error::NeedDirectory(users)),
                LeafCheck::Refused(why) => {
                    return Err(security(
                        SecurityAlert::UnverifiedMember,
                        format!("refused to join a conversation: {why}"),
                    ));
                }
            }
            let suite = Suite::of(mls.ciphersuite())
                .ok_or_else(|| Error::Protocol("unsupported ciphersuite".into()))?;
            let (kind, name, peer) = match (&previous, linked) {
                (Some(c), _) => (c.info.kind, c.info.name.clone(), c.info.peer.clone()),
                (None, Some(l)) => (l.kind, l.name, l.peer),
                (None, None) => (ConversationKind::Group, String::new(), None),
            };
            let conv = Conv {
                info: ConvInfo {
                    kind,
                    name,
                    peer,
                    suite,
                    active: true,
                    last_self_update_ms: now_ms(),
                    // Rejoining, this device's texts go on from its last number: members who
                    // saw its earlier ones would otherwise take the next ones for late ones.
                    // What others sent meanwhile was not for it, so their numbers start afresh.
                    sent: previous.as_ref().map_or(0, |c| c.info.sent),
                    senders: BTreeMap::new(),
                    fork_alerted: None,
                    refused_at: None,
                    joined_at: Some(mls.epoch().as_u64()),
                    meta_owed: false,
                    timer: 0,
                    receipts_owed: Vec::new(),
                    // What the user was shown before stays shown.
                    read_up_to: previous.as_ref().map_or(0, |c| c.info.read_up_to),
                    profile_sent: 0,
                },
                cursor: d.group_seq,
            };
            put_conv(tx, sealer, group, &conv)?;
            let item = Item::Joined { by };
            put_event_item(tx, sealer, group, Some(d.group_seq), &item)?;
            Ok(Some(conv))
        });
        self.inbox_cursor = inbox_seq;
        match joined {
            Ok(Some(conv)) => {
                self.convs.insert(group, conv);
                self.stock_checked = false;
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e @ (Error::Store(_) | Error::NeedDirectory(_))) => Err(e),
            Err(e) => {
                let item = match e {
                    Error::Security { alert, detail } => Item::Security { alert, detail },
                    e => {
                        // A Welcome we cannot use (e.g. its key package is gone): skip it, say so.
                        tracing::warn!(error = %e, "could not join a group");
                        Item::Undecryptable {
                            seq: d.group_seq,
                            reason: e.to_string(),
                        }
                    }
                };
                let record = LoggedRecord::Conversation { item };
                self.profile.atomically(|tx, sealer, _| {
                    put_meta(tx, sealer, "inbox_cursor", &inbox_seq.to_be_bytes())?;
                    put_event_record(tx, sealer, Some(group), &record)
                })?;
                Ok(false)
            }
        }
    }

    pub(super) fn process_group(&mut self, d: Delivery) -> Result<(), Error> {
        let group = d.group();
        let seq = d.group_seq;
        let Some(mut conv) = self.convs.get(&group).cloned() else {
            return Ok(());
        };
        if seq <= conv.cursor {
            return Ok(());
        }
        if !conv.info.active {
            // Removed or left: nothing in the log is for this device any more (a Welcome
            // brings it back, with its own cursor).
            conv.cursor = seq;
            self.profile
                .atomically(|tx, sealer, _| put_conv(tx, sealer, group, &conv))?;
            self.convs.insert(group, conv);
            return Ok(());
        }
        let me = self.identity.username.clone();
        let prefs = self.prefs;
        let mut items: Vec<Item> = Vec::new();
        let mut merged_own = false;
        let cached = self.batch_groups.as_mut().and_then(|c| c.remove(&group));
        let mut keep: Option<MlsGroup> = None;
        let mut check = DirCheck {
            entries: &self.dir.entries,
            fresh: &self.dir.fresh,
            refused: &self.dir.refused,
            roots: &self.dir.roots,
            peer_roots: &mut self.dir.peer_roots,
        };
        self.profile.atomically(|tx, sealer, p| {
            let own = store::is_own(tx, group.as_bytes(), seq)?;
            let pending: Option<Vec<u8>> = store::pending_commit(tx, group.as_bytes())?;
            conv.cursor = seq;
            if !own {
                let mut g = match cached {
                    Some(g) => g,
                    None => load_group(p, group)?,
                };
                if let Some(pending) = pending.filter(|_| is_commit(d.payload.as_slice())) {
                    forget_pending_commit(tx, group)?;
                    if pending == d.payload.as_slice() {
                        // Our own commit came back: it won its epoch.
                        if let Some(staged) = g.pending_commit() {
                            items.extend(roster_items(&g, staged, &at(&me)));
                        }
                        conv.info.meta_owed |= items.iter().any(|i| {
                            matches!(i, Item::MemberAdded { .. } | Item::DeviceAdded { .. })
                        });
                        profiles::owe_to_newcomers(&mut conv, &items);
                        g.merge_pending_commit(p).map_err(Error::mls)?;
                        merged_own = true;
                        put_conv(tx, sealer, group, &conv)?;
                        return keep_new(tx, sealer, group, seq, &mut items);
                    }
                    // Someone else's message: if it is a commit, ours lost.
                    g.clear_pending_commit(p.storage()).map_err(Error::mls)?;
                }
                let msg = Received {
                    group,
                    payload: d.payload.as_slice(),
                    seq,
                    accepted_at: d.sent_at,
                };
                items = receive(&mut g, p, msg, &mut conv, &me, &mut check)?;
                items.retain(|i| receipts::wanted(prefs, i));
                // A delivery that was refused (unreadable, an alert) may leave the group in
                // memory other than its stored state: the next one loads it again.
                if !items
                    .iter()
                    .any(|i| matches!(i, Item::Undecryptable { .. } | Item::Security { .. }))
                {
                    keep = Some(g);
                }
            } else {
                keep = cached;
            }
            keep_new(tx, sealer, group, seq, &mut items)?;
            if prefs.receipts {
                receipts::owe(&mut conv, &items, &at(&me));
            }
            profiles::owe_to_newcomers(&mut conv, &items);
            put_conv(tx, sealer, group, &conv)
        })?;
        if items.iter().any(|i| matches!(i, Item::Profile { .. })) {
            self.load_contacts()?;
            self.profiles_changed = true;
        }
        if let (Some(cache), Some(g)) = (self.batch_groups.as_mut(), keep) {
            cache.insert(group, g);
        }
        self.convs.insert(group, conv);
        if merged_own {
            self.merged_commits.push((group, seq));
        }
        if items.iter().any(|i| matches!(i, Item::MemberLeft { .. }))
            && let Some(set) = self.proposals_to_check.as_mut()
        {
            set.insert(group);
        }
        Ok(())
    }

    /// Work that follows a sync: commit a leaving member's proposal if this device is the one
    /// to do it, and replenish key packages.
    pub(super) async fn after_sync(&mut self) -> Result<(), Error> {
        // Only groups where a leave proposal arrived can have one pending (all of them once
        // after opening the profile).
        let groups: Vec<GroupId> = match self.proposals_to_check.replace(BTreeSet::new()) {
            None => self.convs.keys().copied().collect(),
            Some(set) => set.into_iter().collect(),
        };
        let groups: Vec<GroupId> = groups
            .into_iter()
            .filter(|g| self.convs.get(g).is_some_and(|c| c.info.active))
            .collect();
        let result = self.commit_due_proposals(groups).await;
        if result.is_err() {
            self.proposals_to_check = None;
        }
        result?;
        self.send_owed_meta().await?;
        self.send_owed_receipts().await?;
        self.send_owed_profiles().await?;
        self.fetch_avatars().await?;
        if !self.stock_checked {
            self.replenish_key_packages().await?;
            self.stock_checked = true;
        }
        Ok(())
    }

    /// Commits the pending leave proposals of the groups where this device is the one to do it.
    pub(super) async fn commit_due_proposals(&mut self, groups: Vec<GroupId>) -> Result<(), Error> {
        for group in groups {
            let due = {
                let g = load_group(&self.profile.mls.provider, group)?;
                let leaving: Vec<LeafNodeIndex> = g
                    .pending_proposals()
                    .filter_map(|q| match q.proposal() {
                        Proposal::Remove(r) => Some(r.removed()),
                        _ => None,
                    })
                    .collect();
                let committer = g
                    .members()
                    .map(|m| m.index)
                    .filter(|i| !leaving.contains(i))
                    .min();
                !leaving.is_empty() && committer == Some(g.own_leaf_index())
            };
            if due {
                self.commit_pending_proposals(group).await?;
                self.sync_inner().await?;
            }
        }
        Ok(())
    }

    pub(super) async fn replenish_key_packages(&mut self) -> Result<(), Error> {
        for suite in Suite::ALL {
            let stock = self
                .api
                .key_package_stock_for(&self.identity, suite)
                .await?;
            if stock >= self.settings.key_packages_low {
                continue;
            }
            let n = (self.settings.key_packages_target - stock) as usize;
            let kps = make_key_packages(
                &self.profile.mls.provider,
                &self.identity.device_key,
                &self.identity.device_identity(),
                suite,
                n,
            )?;
            // The private halves must be durable before the public halves are handed out.
            self.profile.atomically(|_, _, _| Ok(()))?;
            self.api.upload_key_packages(&self.identity, kps).await?;
        }
        Ok(())
    }

    /// Stays connected and calls `on_event` with every event `consumer` has not seen: first
    /// those already in the log (what earlier operations found), then each as it arrives, until
    /// it returns `false`. Each event is marked seen by `consumer` once `on_event` has taken it.
    /// Reconnects (and catches up) after a dropped connection. A front end that also sends while
    /// it listens uses [`Live`](crate::Live) instead.
    pub async fn listen(
        &mut self,
        consumer: &str,
        mut on_event: impl FnMut(&LoggedEvent) -> bool,
    ) -> Result<(), Error> {
        use futures_util::StreamExt;
        let mut backoff = Backoff::default();
        loop {
            let mut ws = match self.open_push().await {
                Ok(ws) => ws,
                Err(e) => {
                    tracing::debug!(error = %e, "push connection failed");
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            };
            backoff = Backoff::default();
            self.sync_all().await?;
            if !self.deliver_unseen(consumer, &mut on_event)? {
                return Ok(());
            }
            while let Some(frame) = ws.next().await {
                let Ok(frame) = frame else { break };
                self.on_push_frame(frame).await?;
                if !self.deliver_unseen(consumer, &mut on_event)? {
                    return Ok(());
                }
            }
        }
    }

    /// Opens the push connection and waits until the server has subscribed it: nothing
    /// appended after this returns is missed (a catch-up by cursor covers what came before).
    /// A refused session token is forgotten, so that the next attempt signs in again.
    pub(crate) async fn open_push(&mut self) -> Result<PushSocket, Error> {
        let request = self.push_request().await?;
        let opened = connect_push(request, &self.identity.server).await;
        if matches!(opened, Err(PushRefused::Token(_))) {
            self.api.forget_token();
        }
        opened.map_err(PushRefused::into_error)
    }

    /// The request that opens the push connection (signing in if needed). With
    /// [`connect_push`], the connection can be opened without holding the client.
    pub(crate) async fn push_request(&mut self) -> Result<PushRequest, Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let token = self.api.token(&self.identity).await?;
        let mut request = self
            .api
            .ws_url()
            .into_client_request()
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::Protocol("bad token".into()))?;
        request.headers_mut().insert("authorization", header);
        Ok(request)
    }

    /// The server refused the session token on the push connection: the next call signs in.
    pub(crate) fn push_token_refused(&mut self) {
        self.api.forget_token();
    }

    /// Takes one frame from the push connection: the next delivery of a conversation is
    /// processed and acknowledged at once; anything else (a gap, a Welcome, garbage) is caught
    /// up by cursor.
    pub(crate) async fn on_push_frame(
        &mut self,
        frame: tokio_tungstenite::tungstenite::Message,
    ) -> Result<(), Error> {
        let tokio_tungstenite::tungstenite::Message::Binary(bytes) = frame else {
            return Ok(());
        };
        match Delivery::decode(&bytes) {
            Ok(d)
                if d.kind == DeliveryKind::Group
                    && self
                        .convs
                        .get(&d.group())
                        .is_some_and(|c| c.cursor + 1 == d.group_seq) =>
            {
                let (group, seq) = (d.group(), d.group_seq);
                // Directory entries are looked up afresh for what this message needs.
                self.dir.fresh.clear();
                self.dir.refused.clear();
                match self.process(d) {
                    // Nothing was applied: catch up by cursor, which fetches them.
                    Err(Error::NeedDirectory(_)) => self.sync_all().await,
                    done => {
                        done?;
                        self.api
                            .ack(
                                &self.identity,
                                &AckRequest {
                                    inbox: None,
                                    groups: vec![(group, seq)],
                                },
                            )
                            .await?;
                        self.check_peer_roots().await?;
                        self.after_sync().await
                    }
                }
            }
            _ => self.sync_all().await,
        }
    }

    /// Hands `on_event` the events `consumer` has not seen, marking each seen once taken.
    /// `false` when `on_event` asked to stop.
    pub(super) fn deliver_unseen(
        &mut self,
        consumer: &str,
        on_event: &mut impl FnMut(&LoggedEvent) -> bool,
    ) -> Result<bool, Error> {
        loop {
            let batch = self.unseen_events(consumer, 256)?;
            if batch.is_empty() {
                return Ok(true);
            }
            let mut taken = Vec::with_capacity(batch.len());
            let mut go_on = true;
            for e in &batch {
                go_on = on_event(e);
                taken.push(e.event_id);
                if !go_on {
                    break;
                }
            }
            self.mark_seen(consumer, &taken)?;
            if !go_on {
                return Ok(false);
            }
        }
    }
}

/// Notes which one-time key package of this device `welcome` (announced for `group`) spends,
/// before it is taken (the join deletes it). A Welcome for none this device still holds, but
/// for one an earlier Welcome to another group spent, means the server handed that key package
/// to two people adding this device: the second cannot be taken, and this device says so
/// instead of showing an unreadable item. (One to the same group is that Welcome replayed.)
pub(super) fn spend_key_package(
    tx: &Connection,
    p: &Provider,
    welcome: &openmls::prelude::Welcome,
    group: GroupId,
) -> Result<(), Error> {
    for secrets in welcome.secrets() {
        let hash = secrets.new_member();
        let held: Option<openmls::prelude::KeyPackageBundle> =
            openmls_traits::storage::StorageProvider::key_package(p.storage(), &hash)
                .map_err(Error::mls)?;
        if let Some(bundle) = held {
            if !bundle.key_package().last_resort() {
                store::spend_key_package(tx, hash.as_slice(), group.as_bytes())?;
            }
            return Ok(());
        }
    }
    for secrets in welcome.secrets() {
        let spent = store::key_package_spent_elsewhere(
            tx,
            secrets.new_member().as_slice(),
            group.as_bytes(),
        )?;
        if spent {
            return Err(security(
                SecurityAlert::ReusedKeyPackage,
                "an invitation to a conversation was made with a one-time key package of this device that an earlier invitation had already used: the server handed it to two people. This device could not join that conversation; ask whoever added you to remove and add you again",
            ));
        }
    }
    Ok(())
}

/// Stores the items and keeps only those that were new: a message whose id is already in the
/// history (a replay, or a resend after a crash) is shown once.
pub(super) fn keep_new(
    tx: &Connection,
    sealer: &Sealer,
    group: GroupId,
    seq: u64,
    items: &mut Vec<Item>,
) -> Result<(), Error> {
    let mut kept = Vec::with_capacity(items.len());
    for item in items.drain(..) {
        kept.extend(keep_item(tx, sealer, group, Some(seq), item)?);
    }
    *items = kept;
    Ok(())
}

/// The request that opens the push connection (its token inside: not to be logged).
pub(crate) type PushRequest = tokio_tungstenite::tungstenite::handshake::client::Request;

/// Why the push connection did not open.
pub(crate) enum PushRefused {
    /// The server refused the session token (expired or revoked): sign in again.
    Token(Error),
    /// Anything else: try again later.
    Other(Error),
}

impl PushRefused {
    pub(crate) fn into_error(self) -> Error {
        match self {
            PushRefused::Token(e) | PushRefused::Other(e) => e,
        }
    }
}

/// Opens the push connection with `request` (see [`Client::push_request`]) and waits until the
/// server has subscribed it.
pub(crate) async fn connect_push(
    request: PushRequest,
    server: &str,
) -> Result<PushSocket, PushRefused> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::{self, Message};
    let unreachable = |reason: String| Error::ServerUnreachable {
        url: server.to_owned(),
        reason,
    };
    let (mut ws, _) =
        match tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), false).await
        {
            Ok(c) => c,
            Err(tungstenite::Error::Http(response)) if response.status() == 401 => {
                // Expired (24 h by default) or revoked.
                return Err(PushRefused::Token(unreachable(
                    "the session expired; signing in again".into(),
                )));
            }
            Err(e) => return Err(PushRefused::Other(unreachable(e.to_string()))),
        };
    while let Some(frame) = ws.next().await {
        match frame {
            Ok(Message::Text(_)) => return Ok(ws),
            Ok(_) => {}
            Err(e) => return Err(PushRefused::Other(unreachable(e.to_string()))),
        }
    }
    Err(PushRefused::Other(unreachable(
        "the push connection closed".into(),
    )))
}

/// The push connection to the server.
pub(crate) type PushSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Waits between attempts to reach the server: from 250 ms, doubling up to 30 s.
pub(crate) struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(250))
    }
}

impl Backoff {
    /// How long to wait now; the next wait is longer.
    pub(crate) fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(30));
        now
    }
}

/// WebSocket settings: a small read buffer (tungstenite zero-fills the whole buffer on every
/// read, and frames here are small).
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// Whether a group-log payload is a commit (only a commit can make ours lose its epoch).
pub(super) fn is_commit(payload: &[u8]) -> bool {
    MlsMessageIn::tls_deserialize_exact(payload)
        .ok()
        .and_then(|m| m.try_into_protocol_message().ok())
        .is_some_and(|m| m.content_type() == ContentType::Commit)
}

/// Roster items for a commit, from the group state before it is merged.
pub(super) fn roster_items(
    g: &MlsGroup,
    staged: &openmls::prelude::StagedCommit,
    by: &str,
) -> Vec<Item> {
    let mut items = Vec::new();
    let removed_leaves: Vec<LeafNodeIndex> = staged
        .remove_proposals()
        .map(|r| r.remove_proposal().removed())
        .collect();
    // Whether `user` keeps a device in the group besides the given leaf (and those removed).
    let stays = |user: &Username, except: Option<LeafNodeIndex>| {
        g.members().any(|m| {
            Some(m.index) != except
                && !removed_leaves.contains(&m.index)
                && credential_user(&m.credential).is_some_and(|d| d.username == *user)
        })
    };
    for add in staged.add_proposals() {
        let credential = add.add_proposal().key_package().leaf_node().credential();
        let member = who(credential);
        match credential_user(credential) {
            Some(d) if stays(&d.username, None) => items.push(Item::DeviceAdded {
                member,
                device: d.device_id.short(),
                device_id: Some(d.device_id),
                by: by.to_owned(),
            }),
            _ => items.push(Item::MemberAdded {
                member,
                by: by.to_owned(),
            }),
        }
    }
    for rem in staged.remove_proposals() {
        let removed = rem.remove_proposal().removed();
        let leaf = g.member_at(removed);
        let member = leaf
            .as_ref()
            .map_or_else(|| "@unknown".to_owned(), |m| who(&m.credential));
        let device = leaf.as_ref().and_then(|m| credential_user(&m.credential));
        let self_removal = matches!(rem.sender(), Sender::Member(i) if *i == removed);
        if self_removal {
            // A member who left was shown when their leave proposal arrived; the commit that
            // carries it out says nothing more.
            continue;
        }
        if let Some(d) = device.filter(|d| stays(&d.username, Some(removed))) {
            items.push(Item::DeviceRemoved {
                member,
                device: d.device_id.short(),
                device_id: Some(d.device_id),
                by: by.to_owned(),
            });
        } else {
            items.push(Item::MemberRemoved {
                member,
                by: by.to_owned(),
            });
        }
    }
    items
}

/// One message of a group's log.
pub(super) struct Received<'a> {
    group: GroupId,
    payload: &'a [u8],
    seq: u64,
    /// When the server took it (unix milliseconds).
    accepted_at: u64,
}

/// Processes one MLS message from the group's log.
pub(super) fn receive(
    g: &mut MlsGroup,
    p: &Provider,
    msg: Received<'_>,
    conv: &mut Conv,
    me: &Username,
    check: &mut DirCheck<'_>,
) -> Result<Vec<Item>, Error> {
    let Received {
        group,
        payload,
        seq,
        accepted_at,
    } = msg;
    let undecryptable = |reason: String| Ok(vec![Item::Undecryptable { seq, reason }]);
    let Ok(msg) = MlsMessageIn::tls_deserialize_exact(payload) else {
        return undecryptable("not an MLS message".into());
    };
    let Ok(pm) = msg.try_into_protocol_message() else {
        return undecryptable("not an MLS group message".into());
    };
    if pm.group_id() != g.group_id() {
        return undecryptable("a message for another group".into());
    }
    let sent_in = pm.epoch().as_u64();
    // Unverified until decrypted; read now because a message from a fork does not decrypt.
    let unverified = match &pm {
        ProtocolMessage::PrivateMessage(m) => Aad::parse(m.aad()),
        ProtocolMessage::PublicMessage(_) => Aad::default(),
    };
    let private = matches!(pm, ProtocolMessage::PrivateMessage(_));
    let processed = match g.process_message(p, pm) {
        Ok(m) => m,
        Err(_) if private && conv.info.joined_at.is_some_and(|j| sent_in < j) => {
            // A message to the members of an epoch before this device joined (from a member
            // who had not yet taken the commit that added it): not for this device, nothing to
            // show. (No honest server takes a commit for an old epoch: those stay unreadable.)
            return Ok(Vec::new());
        }
        Err(e) => {
            let mut items: Vec<Item> = fork_alert(g, p, sent_in, &unverified, conv)
                .into_iter()
                .collect();
            items.push(Item::Undecryptable {
                seq,
                reason: format!("{e}"),
            });
            return Ok(items);
        }
    };
    if matches!(
        processed.content(),
        ProcessedMessageContent::OwnPrivateMessage
    ) {
        // This device's own message, which it cannot decrypt: the server took it, but the
        // device stopped (crashed, was killed) before it noted the answer. It is already in
        // the history, from when it was sent. (The claim of being ours is not authenticated;
        // either way there is nothing to show.)
        return Ok(Vec::new());
    }
    if matches!(processed.sender(), Sender::NewMemberCommit) {
        // Nobody joins a Sealpost conversation on their own: members are added by members.
        // An external commit means someone holds the group's public state (the server does).
        return Ok(vec![Item::Security {
            alert: SecurityAlert::ExternalJoin,
            detail: format!(
                "{} tried to join the conversation without being added by a member; refused",
                who(processed.credential())
            ),
        }]);
    }
    let Some(sender) = credential_user(processed.credential()) else {
        return undecryptable("the sender has no Sealpost identity".into());
    };
    let from = at(&sender.username);
    let mut alerts: Vec<Item> = check
        .peer_root(group, &from, processed.aad())
        .into_iter()
        .collect();
    let mut items = receive_content(g, p, processed, (seq, accepted_at), conv, me, check, &from)?;
    alerts.append(&mut items);
    Ok(alerts)
}

#[allow(
    clippy::too_many_arguments,
    reason = "the receive path's context, split in two"
)]
pub(super) fn receive_content(
    g: &mut MlsGroup,
    p: &Provider,
    processed: openmls::prelude::ProcessedMessage,
    (seq, accepted_at): (u64, u64),
    conv: &mut Conv,
    me: &Username,
    check: &mut DirCheck<'_>,
    from: &str,
) -> Result<Vec<Item>, Error> {
    let undecryptable = |reason: String| Ok(vec![Item::Undecryptable { seq, reason }]);
    let Some(sender) = credential_user(processed.credential()) else {
        return undecryptable("the sender has no Sealpost identity".into());
    };
    let from = from.to_owned();
    match processed.into_content() {
        ProcessedMessageContent::ApplicationMessage(app) => {
            let bytes = Zeroizing::new(app.into_bytes());
            let Ok(body) = unpad(&bytes) else {
                return undecryptable("bad padding".into());
            };
            let group = GroupId::from_bytes(
                g.group_id()
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::Protocol("a conversation id is not 16 octets".into()))?,
            );
            let message = match content::read(body, &sender.username, group) {
                Ok(message) => message,
                Err(why) => return undecryptable(why),
            };
            let content::Incoming {
                id,
                number,
                mentions,
                expires,
                body,
            } = message;
            let expires_at = expires.map(|(relative, seconds)| {
                let ms = seconds.saturating_mul(1000);
                if relative {
                    accepted_at.saturating_add(ms)
                } else {
                    ms
                }
            });
            let mut items = Vec::new();
            let mut late = false;
            if !matches!(body, content::Body::Conversation { .. }) {
                match sender_order(conv, &sender, number) {
                    Order::Next => {}
                    Order::After(missing) => items.push(Item::Gap {
                        from: from.clone(),
                        missing,
                    }),
                    Order::Late => late = true,
                }
            }
            match body {
                content::Body::Text { text, reply_to } => {
                    let mut item = Item::text(from, text, id, accepted_at);
                    item.received_as(late, reply_to, mentions, None);
                    item.expires(expires_at);
                    items.push(item);
                    Ok(items)
                }
                content::Body::File {
                    file,
                    caption,
                    reply_to,
                } => {
                    let mut item = Item::text(from, caption, id, accepted_at);
                    item.received_as(late, reply_to, mentions, Some(file));
                    item.expires(expires_at);
                    items.push(item);
                    Ok(items)
                }
                content::Body::Change(kind) => {
                    items.push(Item::Change(changes::Change {
                        from,
                        id,
                        kind,
                        mentions,
                    }));
                    Ok(items)
                }
                content::Body::Unsupported { what, content } => {
                    items.push(Item::Unsupported {
                        from,
                        id,
                        sent_at: accepted_at,
                        what,
                        content: hex::encode(content),
                    });
                    Ok(items)
                }
                content::Body::Timer(seconds) => {
                    conv.info.timer = seconds;
                    items.push(Item::Timer { by: from, seconds });
                    Ok(items)
                }
                // From this account's other devices: nothing to show (they speak for the
                // same person).
                content::Body::Status(_) | content::Body::Typing(_) if sender.username == *me => {
                    Ok(items)
                }
                content::Body::Status(statuses) => {
                    items.push(Item::Status(receipts::Report {
                        from,
                        mine: at(me),
                        statuses,
                    }));
                    Ok(items)
                }
                content::Body::Typing(typing) => {
                    if receipts::typing_holds(accepted_at) {
                        items.push(Item::Typing { from, typing });
                    }
                    Ok(items)
                }
                // This account's own, from another of its devices: not a contact.
                content::Body::Profile { .. } if sender.username == *me => Ok(items),
                content::Body::Profile { name, avatar } => {
                    items.push(Item::Profile {
                        from,
                        name,
                        avatar: avatar.map(Box::new),
                        at: accepted_at,
                    });
                    Ok(items)
                }
                content::Body::Conversation { kind, name } => {
                    conv.info.kind = kind;
                    if kind == ConversationKind::Direct {
                        if sender.username != *me {
                            conv.info.peer = Some(sender.username);
                        }
                    } else if valid_group_name(&name) {
                        conv.info.name = name;
                    } else {
                        // A name no Sealpost client makes (it could carry what looks like
                        // another line, or another conversation's name with a suffix): the
                        // conversation keeps the name it had, or its id.
                        return undecryptable(
                            "a member sent a group name that is not valid; it was not taken".into(),
                        );
                    }
                    Ok(Vec::new())
                }
            }
        }
        ProcessedMessageContent::ProposalMessage(q) => {
            let own_removal = matches!((q.proposal(), q.sender()), (Proposal::Remove(r), Sender::Member(i)) if r.removed() == *i);
            if !own_removal {
                return undecryptable("an unexpected proposal was ignored".into());
            }
            g.store_pending_proposal(p.storage(), *q)
                .map_err(Error::mls)?;
            Ok(vec![Item::MemberLeft { member: from }])
        }
        ProcessedMessageContent::StagedCommitMessage(staged) => {
            // Every leaf the commit adds or changes must be in its account's directory entry.
            let leaves = staged
                .add_proposals()
                .map(|a| a.add_proposal().key_package().leaf_node().clone())
                .chain(
                    staged
                        .update_proposals()
                        .map(|u| u.update_proposal().leaf_node().clone()),
                )
                .chain(staged.update_path_leaf_node().cloned())
                .collect::<Vec<_>>();
            match check.leaves(
                leaves
                    .iter()
                    .map(|l| (l.credential(), l.signature_key().as_slice())),
            ) {
                LeafCheck::Ok => {}
                LeafCheck::Need(users) => return Err(Error::NeedDirectory(users)),
                LeafCheck::Refused(why) => {
                    conv.info.refused_at = Some(g.epoch().as_u64());
                    return Ok(vec![Item::Security {
                        alert: SecurityAlert::UnverifiedMember,
                        detail: format!("a commit by {from} was refused: {why}"),
                    }]);
                }
            }
            // And have a key the group's later commits can be encrypted to.
            for leaf in &leaves {
                if !usable_leaf_key(p.crypto(), g.ciphersuite(), leaf)? {
                    conv.info.refused_at = Some(g.epoch().as_u64());
                    return Ok(vec![Item::Security {
                        alert: SecurityAlert::UnusableKey,
                        detail: format!(
                            "a commit by {from} was refused: it gives {} an encryption key nothing can be encrypted to, which would make every later change of this conversation fail",
                            who(leaf.credential())
                        ),
                    }]);
                }
            }
            let mut items = roster_items(g, &staged, &from);
            if staged.self_removed() {
                conv.info.active = false;
                let me = at(me);
                items.retain(|i| !matches!(i, Item::MemberRemoved { member, .. } if *member == me));
                items.push(Item::Removed { by: from });
            }
            g.merge_staged_commit(p, *staged).map_err(Error::mls)?;
            Ok(items)
        }
        _ => undecryptable("an unexpected message type was ignored".into()),
    }
}

/// Where a numbered text stands among its sender's texts.
pub(super) enum Order {
    /// The next one, the first one seen, or unnumbered.
    Next,
    /// After `missing` texts this device has not seen (dropped, or held back).
    After(u64),
    /// Before one already shown: held back and delivered late.
    Late,
}

/// Notes text number `n` of `sender` in the conversation and says where it stands.
pub(super) fn sender_order(conv: &mut Conv, sender: &DeviceIdentity, n: u64) -> Order {
    if n == 0 {
        return Order::Next;
    }
    let last = conv.info.senders.entry(sender.to_string()).or_insert(0);
    let order = if *last == 0 || n == *last + 1 {
        // The first text seen from a device (e.g. one that joined later) sets where it stands.
        Order::Next
    } else if n > *last {
        Order::After(n - *last - 1)
    } else {
        return Order::Late;
    };
    *last = n;
    order
}

/// This device's fork check for its current epoch of `g` (an MLS exporter value).
pub(super) fn fork_check(g: &MlsGroup, p: &Provider) -> Result<[u8; FORK_CHECK_LEN], Error> {
    let value = g
        .export_secret(p.crypto(), FORK_CHECK_LABEL, &[], FORK_CHECK_LEN)
        .map_err(Error::mls)?;
    value
        .try_into()
        .map_err(|_| Error::Crypto("exporter value of the wrong length"))
}

/// The authenticated data for a message sent in `g`'s current epoch.
pub(super) fn message_aad(
    g: &MlsGroup,
    p: &Provider,
    root: Option<(u64, [u8; 32])>,
) -> Result<Vec<u8>, Error> {
    Ok(Aad {
        root,
        fork: Some(fork_check(g, p)?),
    }
    .encode())
}

/// For a message that did not decrypt: an alert if it shows the group forked — it was sent in
/// this device's epoch from another state of it (another fork check), or in a later epoch,
/// which an honest server never delivers before the commit that leads there (unless this
/// device refused that commit or was removed). The epoch and the fork check are read before
/// anything is decrypted, so a server that alters them is not told apart from one that split
/// the group: the wording says so, and a device alerts once in each of its own epochs, however
/// many such messages come.
pub(super) fn fork_alert(
    g: &MlsGroup,
    p: &Provider,
    sent_in: u64,
    aad: &Aad,
    conv: &mut Conv,
) -> Option<Item> {
    let ours = g.epoch().as_u64();
    let detail = if sent_in == ours {
        let theirs = aad.fork?;
        if fork_check(g, p).ok()? == theirs {
            return None;
        }
        format!(
            "a message of epoch {sent_in} comes from another state of this conversation than this device's: the server has split the group in two (a fork) or altered the message; it cannot be read"
        )
    } else if sent_in > ours && conv.info.active && conv.info.refused_at != Some(ours) {
        // A device that was removed, or refused a commit, is behind on purpose.
        format!(
            "a message of epoch {sent_in} arrived while this device is in epoch {ours}: the server withheld a change of the conversation from this device, split the group, or altered the message"
        )
    } else {
        return None;
    };
    if conv.info.fork_alerted == Some(ours) {
        return None;
    }
    conv.info.fork_alerted = Some(ours);
    Some(Item::Security {
        alert: SecurityAlert::Fork,
        detail,
    })
}
