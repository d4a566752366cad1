//! The commit engine: builds a commit, keeps it (and its Welcome) until the server's answer and
//! its return in the conversation's log settle it, posts the same bytes again after a broken
//! post, rebuilds after losing the epoch to another member, and raises an alert when the server
//! acknowledged a commit and delivered something else in its place.

use super::*;

impl Client {
    /// Builds a commit, posts it, and lets sync merge it. A commit that loses its epoch to
    /// another member's is dropped, the group caught up, and the commit built again.
    pub(super) async fn commit<F>(&mut self, group: GroupId, build: F) -> Result<(), Error>
    where
        F: Fn(
            &mut MlsGroup,
            &Provider,
            &SignatureKeyPair,
        ) -> Result<(MlsMessageOut, Option<MlsMessageOut>), Error>,
    {
        // Whether the last round waited for an earlier change of this device's own.
        let mut own_pending = false;
        for _ in 0..8 {
            self.sync_inner().await?;
            own_pending = false;
            if let Some((commit, welcome)) = self.unsettled_commit(group)? {
                own_pending = true;
                // An earlier commit whose post broke off (the server may or may not have taken
                // it) and that has not come back: post the same bytes again. A server that
                // never got it takes it now; one that did, or saw another member's commit take
                // the epoch, refuses it as late, and the next sync says which it was.
                self.post_staged(group, commit, welcome).await?;
                self.send_owed_meta().await?;
                continue;
            }
            let root = self.root_record();
            let (commit, welcome) = self.profile.atomically(|tx, _, p| {
                let mut g = load_group(p, group)?;
                if g.pending_commit().is_some() {
                    return Err(Error::ChangePending);
                }
                g.set_aad(message_aad(&g, p, root)?);
                let (commit, welcome) = build(&mut g, p, &self.identity.device_key)?;
                let commit = serialize(&commit)?;
                let welcome = welcome.as_ref().map(serialize).transpose()?;
                store::stage_commit(tx, group.as_bytes(), &commit, welcome.as_deref())?;
                Ok((commit, welcome))
            })?;
            if self.post_staged(group, commit, welcome).await? {
                return Ok(());
            }
            // Another member's commit took the epoch: catch up and build ours again.
            self.drop_pending_commit(group)?;
        }
        Err(if own_pending {
            Error::ChangePending
        } else {
            Error::Busy
        })
    }

    /// Commits the proposals waiting in a group (a member's request to leave).
    pub(super) async fn commit_pending_proposals(&mut self, group: GroupId) -> Result<(), Error> {
        self.commit(group, |g, p, s| {
            let (commit, welcome, _) = g.commit_to_pending_proposals(p, s).map_err(Error::mls)?;
            Ok((commit, welcome))
        })
        .await
    }

    /// Posts this device's staged commit to `group`. `true`: it took its epoch and came back.
    /// `false`: the epoch was taken already, by another member's commit or by this very commit
    /// posted before; the next sync says which. A refusal drops the commit; when the outcome is
    /// unknown (the connection broke) it stays staged, and the next commit posts it again.
    pub(super) async fn post_staged(
        &mut self,
        group: GroupId,
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
    ) -> Result<bool, Error> {
        self.merged_commits.clear();
        match self
            .api
            .post_commit(&self.identity, group, commit, welcome)
            .await
        {
            Ok(posted) => {
                self.sync_inner().await?;
                self.check_commit_came_back(group, posted.seq)?;
                Ok(true)
            }
            Err(Error::Server {
                code: ErrorCode::EpochConflict,
                ..
            }) => Ok(false),
            Err(e @ Error::Server { .. }) => {
                self.drop_pending_commit(group)?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn drop_pending_commit(&mut self, group: GroupId) -> Result<(), Error> {
        self.profile.atomically(|tx, _, p| {
            let mut g = load_group(p, group)?;
            g.clear_pending_commit(p.storage()).map_err(Error::mls)?;
            forget_pending_commit(tx, group)
        })
    }

    /// This device's commit to `group` that was posted without an answer and has not come
    /// back in a sync since, with its Welcome: its outcome is unknown.
    pub(super) fn unsettled_commit(
        &mut self,
        group: GroupId,
    ) -> Result<Option<UnsettledCommit>, Error> {
        let staged = load_group(&self.profile.mls.provider, group)?
            .pending_commit()
            .is_some();
        self.profile.atomically(|tx, _, _| {
            let commit: Option<Vec<u8>> = store::pending_commit(tx, group.as_bytes())?;
            let Some(commit) = commit.filter(|_| staged) else {
                // Nothing staged to merge it into: a row left alone is of no use.
                forget_pending_commit(tx, group)?;
                return Ok(None);
            };
            let welcome = store::pending_welcome(tx, group.as_bytes())?;
            Ok(Some((commit, welcome)))
        })
    }

    /// After the server acknowledged this device's commit at `seq` and a sync: unless the
    /// commit came back at that place in the log, the server is withholding it (from this
    /// device at least) or put something else there. Said as an alert; the commit stays
    /// pending, so if it does arrive later it is merged then.
    pub(super) fn check_commit_came_back(&mut self, group: GroupId, seq: u64) -> Result<(), Error> {
        if std::mem::take(&mut self.merged_commits).contains(&(group, seq)) {
            return Ok(());
        }
        let cursor = self.convs.get(&group).map_or(0, |c| c.cursor);
        let detail = if cursor < seq {
            format!(
                "the server acknowledged this device's change to the conversation as #{seq} but has not delivered it back: it may be withholding it from members"
            )
        } else {
            format!(
                "the server acknowledged this device's change to the conversation as #{seq} but delivered something else in its place"
            )
        };
        let item = Item::Security {
            alert: SecurityAlert::WithheldCommit,
            detail: detail.clone(),
        };
        self.profile
            .atomically(|tx, sealer, _| put_event_item(tx, sealer, group, None, &item))?;
        Err(security(SecurityAlert::WithheldCommit, detail))
    }
}

/// Forgets this device's pending commit to `group` (and its Welcome): it came back, lost its
/// epoch, or was refused.
pub(super) fn forget_pending_commit(tx: &Connection, group: GroupId) -> Result<(), Error> {
    store::forget_pending_commit(tx, group.as_bytes())
}

/// A commit as posted, with its Welcome if it adds members.
type UnsettledCommit = (Vec<u8>, Option<Vec<u8>>);
