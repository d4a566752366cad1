//! Conversations and their rosters: creating a group (all or nothing: every member passes the
//! trust gate first), adding and removing members, leaving, deleting a left conversation, and
//! what the local history and conversation list show.

use super::*;

impl Client {
    /// Creates a named group with the given members.
    pub async fn create_group(
        &mut self,
        name: &str,
        members: &[Username],
        suite: Suite,
    ) -> Result<ConversationInfo, Error> {
        if !valid_group_name(name) {
            return Err(Error::BadGroupName);
        }
        let users = self.with_my_other_devices(members).await?;
        // All or nothing: every member passes the trust gate before anything is created.
        let me = [self.identity.device_id];
        let kps = if users.is_empty() {
            Vec::new()
        } else {
            self.key_packages_for(suite, &me, &users).await?
        };
        let group = self
            .new_conversation(ConversationKind::Group, name, None, suite)
            .await?;
        self.add_or_forget(group, kps).await?;
        self.info(group)
    }

    /// Adds the devices of `kps` to the conversation this device just created; if that fails
    /// and nobody else is in it, the conversation is forgotten rather than left behind.
    pub(super) async fn add_or_forget(
        &mut self,
        group: GroupId,
        kps: Vec<KeyPackage>,
    ) -> Result<(), Error> {
        if kps.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.commit_adds(group, kps).await {
            if self.member_devices(group)?.len() <= 1 {
                self.forget_conversation(group)?;
            }
            return Err(e);
        }
        Ok(())
    }

    pub(super) async fn new_conversation(
        &mut self,
        kind: ConversationKind,
        name: &str,
        peer: Option<Username>,
        suite: Suite,
    ) -> Result<GroupId, Error> {
        let provider = &self.profile.mls.provider;
        let group = GroupId::from_slice(
            &provider
                .rand()
                .random_vec(16)
                .map_err(|_| Error::Crypto("no randomness"))?,
        )?;
        let mls = MlsGroup::new_with_group_id(
            provider,
            &self.identity.device_key,
            &create_config(suite),
            mls_id(group),
            self.identity.credential_with_key(),
        )
        .map_err(Error::mls)?;
        let info_msg = mls
            .export_group_info(provider.crypto(), &self.identity.device_key, true)
            .map_err(Error::mls)?;
        let bytes = serialize(&info_msg)?;
        if let Err(e) = self.api.create_group(&self.identity, bytes).await {
            self.profile.rollback_mls();
            return Err(e);
        }
        let conv = Conv {
            info: ConvInfo {
                kind,
                name: name.to_owned(),
                peer,
                suite,
                active: true,
                last_self_update_ms: now_ms(),
                sent: 0,
                senders: BTreeMap::new(),
                fork_alerted: None,
                refused_at: None,
                joined_at: None,
                meta_owed: false,
                timer: 0,
                receipts_owed: Vec::new(),
                read_up_to: 0,
                profile_sent: 0,
            },
            cursor: 0,
        };
        self.profile
            .atomically(|tx, sealer, _| put_conv(tx, sealer, group, &conv))?;
        self.convs.insert(group, conv);
        Ok(group)
    }

    /// Adds users (all their devices) to a group.
    pub async fn add_members(&mut self, target: &str, users: &[Username]) -> Result<(), Error> {
        let group = self.resolve(target)?;
        let users = self.with_my_other_devices(users).await?;
        self.add_members_to(group, &users).await
    }

    pub(super) async fn add_members_to(
        &mut self,
        group: GroupId,
        users: &[Username],
    ) -> Result<(), Error> {
        let suite = self
            .convs
            .get(&group)
            .ok_or_else(|| Error::UnknownConversation(self.display(group)))?
            .info
            .suite;
        let present: Vec<DeviceId> = self
            .member_devices(group)?
            .into_iter()
            .map(|d| d.device_id)
            .collect();
        let kps = self.key_packages_for(suite, &present, users).await?;
        self.commit_adds(group, kps).await
    }

    /// Refuses, before anything changes, a group of more devices than the server allows.
    pub(super) async fn check_group_size(&mut self, devices: usize) -> Result<(), Error> {
        let limit = self.api.limits().await?.map_or(0, |l| l.max_group_size);
        if limit > 0 && devices as u64 > limit {
            return Err(Error::GroupTooLarge {
                devices: devices as u64,
                limit,
            });
        }
        Ok(())
    }

    /// Adds the devices of checked key packages: in one commit, so that all of them are added
    /// or none, unless the commit would be larger than the server takes. Then it goes in
    /// halves (and so on), each commit as large as fits.
    pub(super) async fn commit_adds(
        &mut self,
        group: GroupId,
        kps: Vec<KeyPackage>,
    ) -> Result<(), Error> {
        let limit = self.api.limits().await?.map_or(0, |l| {
            if l.max_handshake_bytes > 0 {
                l.max_handshake_bytes
            } else {
                l.max_body_bytes
            }
        });
        // The chunks still to add, the next one last.
        let mut todo = vec![kps];
        while let Some(chunk) = todo.pop() {
            let batch = chunk.clone();
            let added = self
                .commit(group, move |g, p, s| {
                    let (commit, welcome, _) = g.add_members(p, s, &batch).map_err(Error::mls)?;
                    let size = commit.tls_serialized_len() + welcome.tls_serialized_len();
                    // The upload's own framing (two length prefixes) with room.
                    let size = size as u64 + 16;
                    if limit > 0 && size > limit {
                        return Err(Error::CommitTooLarge { size, limit });
                    }
                    Ok((commit, Some(welcome)))
                })
                .await;
            match added {
                Err(Error::CommitTooLarge { .. }) if chunk.len() > 1 => {
                    let mut first = chunk;
                    let second = first.split_off(first.len() / 2);
                    todo.push(second);
                    todo.push(first);
                }
                done => done?,
            }
        }
        self.send_owed_meta().await
    }

    /// Sends the Meta message of every conversation where this device's commit that added
    /// someone has come back since (also one merged by a sync after its answer was lost).
    pub(super) async fn send_owed_meta(&mut self) -> Result<(), Error> {
        let owed: Vec<GroupId> = self
            .convs
            .iter()
            .filter(|(_, c)| c.info.meta_owed && c.info.active)
            .map(|(g, _)| *g)
            .collect();
        for group in owed {
            self.send_meta(group).await?;
            self.update_conv(group, |info| info.meta_owed = false)?;
        }
        Ok(())
    }

    /// Changes what this device keeps about a conversation, in memory and in the profile.
    pub(super) fn update_conv(
        &mut self,
        group: GroupId,
        change: impl FnOnce(&mut ConvInfo),
    ) -> Result<(), Error> {
        if let Some(conv) = self.convs.get_mut(&group) {
            change(&mut conv.info);
            let conv = conv.clone();
            self.profile
                .atomically(|tx, sealer, _| put_conv(tx, sealer, group, &conv))?;
        }
        Ok(())
    }

    /// Tells new members what this conversation is (encrypted, like any message).
    pub(super) async fn send_meta(&mut self, group: GroupId) -> Result<(), Error> {
        let info = &self
            .convs
            .get(&group)
            .ok_or_else(|| Error::UnknownConversation(self.display(group)))?
            .info;
        let meta = content::conversation(self.salt()?, info.kind, &info.name);
        self.send_app(group, meta, None).await?;
        Ok(())
    }

    /// For tests that play a member leaking a conversation's state: its current MLS GroupInfo
    /// with the ratchet tree, signed by this device (what an outsider needs to try an external
    /// join). Changes nothing. Not for applications.
    #[doc(hidden)]
    pub fn export_group_info_unchecked(&mut self, target: &str) -> Result<Vec<u8>, Error> {
        let group = self.resolve(target)?;
        self.profile.atomically(|_, _, p| {
            let g = load_group(p, group)?;
            let info = g
                .export_group_info(p.crypto(), &self.identity.device_key, true)
                .map_err(Error::mls)?;
            serialize(&info)
        })
    }

    /// Removes users (all their devices) from a group.
    pub async fn remove_members(&mut self, target: &str, users: &[Username]) -> Result<(), Error> {
        let group = self.resolve(target)?;
        let leaves: Vec<LeafNodeIndex> = {
            let g = load_group(&self.profile.mls.provider, group)?;
            g.members()
                .filter(|m| {
                    credential_user(&m.credential).is_some_and(|d| users.contains(&d.username))
                })
                .map(|m| m.index)
                .collect()
        };
        if leaves.is_empty() {
            return Err(Error::NotMembers);
        }
        if users.contains(&self.identity.username) {
            return Err(Error::RemoveSelf);
        }
        self.commit(group, move |g, p, s| {
            let (commit, welcome, _) = g.remove_members(p, s, &leaves).map_err(Error::mls)?;
            Ok((commit, welcome))
        })
        .await
    }

    /// Deletes a conversation this device has left or was removed from, with its history, from
    /// this device. One it is still in must be left first.
    pub fn delete_conversation(&mut self, target: &str) -> Result<(), Error> {
        let group = self.resolve(target)?;
        if self.convs.get(&group).is_some_and(|c| c.info.active) {
            return Err(Error::StillMember(target.to_owned()));
        }
        self.forget_conversation(group)
    }

    /// Leaves a group: asks the other members to remove this device.
    pub async fn leave(&mut self, target: &str) -> Result<(), Error> {
        let group = self.resolve(target)?;
        self.sync_inner().await?;
        let proposal = self.profile.atomically(|_, _, p| {
            let mut g = load_group(p, group)?;
            serialize(
                &g.leave_group(p, &self.identity.device_key)
                    .map_err(Error::mls)?,
            )
        })?;
        self.api
            .post_message(&self.identity, group, proposal)
            .await?;
        self.update_conv(group, |info| info.active = false)
    }

    pub(super) fn member_devices(&self, group: GroupId) -> Result<Vec<DeviceIdentity>, Error> {
        let g = load_group(&self.profile.mls.provider, group)?;
        Ok(g.members()
            .filter_map(|m| credential_user(&m.credential))
            .collect())
    }

    /// The members of a conversation.
    pub fn members(&self, target: &str) -> Result<Vec<MemberInfo>, Error> {
        let group = self.resolve(target)?;
        if !self.convs.get(&group).is_some_and(|c| c.info.active) {
            // Its state is the one of the epoch this device left: no longer its members.
            return Err(Error::NotMember(target.to_owned()));
        }
        Ok(self
            .member_devices(group)?
            .into_iter()
            .map(|d| MemberInfo {
                name: self.name_of(d.username.as_str()),
                member: at(&d.username),
                device: d.device_id,
                you: d.device_id == self.identity.device_id,
            })
            .collect())
    }

    pub(super) fn info(&self, group: GroupId) -> Result<ConversationInfo, Error> {
        let conv = self
            .convs
            .get(&group)
            .ok_or_else(|| Error::UnknownConversation(group.to_string()))?;
        let members = if conv.info.active {
            self.member_devices(group).map(|m| m.len()).unwrap_or(0)
        } else {
            0
        };
        let conversation = self.display(group);
        let unread = self
            .unread(group, MAX_UNREAD_COUNTED)?
            .map_or(0, |(_, ids)| ids.len());
        let latest = store::history_page(
            self.profile.conn(),
            group.as_bytes(),
            (None, None),
            1,
            now_ms(),
        )?
        .into_iter()
        .next()
        .map(|(row, sealed)| open_item(&self.profile.sealer, group, row, &sealed))
        .transpose()?
        .map(|item| Box::new(self.with_name(item.render(conversation.clone()))));
        Ok(ConversationInfo {
            conversation,
            id: ConversationId::of(group),
            kind: conv.info.kind,
            ciphersuite: conv.info.suite,
            members,
            active: conv.info.active,
            unread,
            latest,
        })
    }

    /// The MLS epoch of a conversation (for diagnostics: it grows with every commit).
    pub fn epoch(&self, target: &str) -> Result<u64, Error> {
        let group = self.resolve(target)?;
        Ok(load_group(&self.profile.mls.provider, group)?
            .epoch()
            .as_u64())
    }

    /// All conversations.
    pub fn conversations(&self) -> Result<Vec<ConversationInfo>, Error> {
        self.convs.keys().map(|g| self.info(*g)).collect()
    }

    /// Local history of a conversation, oldest first.
    pub fn messages(&self, target: &str, limit: usize) -> Result<Vec<Event>, Error> {
        Ok(self
            .history(target, None, limit)?
            .into_iter()
            .map(|e| e.event)
            .collect())
    }

    /// A page of a conversation's history, oldest first: the newest `limit` entries before
    /// `before` (a position from an earlier page), or the newest of all.
    pub fn history(
        &self,
        target: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, Error> {
        let group = self.resolve(target)?;
        let before = before.map(|b| i64::try_from(b).unwrap_or(i64::MAX));
        let rows = store::history_page(
            self.profile.conn(),
            group.as_bytes(),
            (None, before),
            limit,
            now_ms(),
        )?;
        let name = self.display(group);
        let conversation_id = ConversationId::of(group);
        let mut out = Vec::new();
        for (id, sealed) in rows {
            let item = open_item(&self.profile.sealer, group, id, &sealed)?;
            out.push(HistoryEntry {
                position: id.unsigned_abs(),
                conversation_id: conversation_id.clone(),
                event: self.with_name(item.render(name.clone())),
            });
        }
        out.reverse();
        Ok(out)
    }

    /// `users`, plus this account when it has other devices, so that a conversation this
    /// device starts reaches the account's other devices too.
    pub(super) async fn with_my_other_devices(
        &mut self,
        users: &[Username],
    ) -> Result<Vec<Username>, Error> {
        let me = self.identity.username.clone();
        if !self.dir.entries.contains_key(&me) {
            self.lookup_verified(&me).await?;
        }
        let others = self
            .dir
            .entries
            .get(&me)
            .is_some_and(|v| v.entry.devices.len() > 1);
        let mut all = users.to_vec();
        if others && !all.contains(&me) {
            all.push(me);
        }
        Ok(all)
    }

    /// The conversations this device is still a member of.
    pub(super) fn active_groups(&self) -> Vec<GroupId> {
        self.convs
            .iter()
            .filter(|(_, c)| c.info.active)
            .map(|(g, _)| *g)
            .collect()
    }

    /// Deletes a conversation and its MLS state from this device.
    pub(super) fn forget_conversation(&mut self, group: GroupId) -> Result<(), Error> {
        self.profile.atomically(|tx, _, p| {
            if let Some(mut g) = MlsGroup::load(p.storage(), &mls_id(group)).map_err(Error::mls)? {
                g.delete(p.storage()).map_err(Error::mls)?;
            }
            store::forget_conversation(tx, group.as_bytes())?;
            Ok(())
        })?;
        self.convs.remove(&group);
        Ok(())
    }
}
