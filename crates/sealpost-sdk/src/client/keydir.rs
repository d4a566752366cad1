//! The key directory as this client sees it: pinned keys and verified roots, lookups (each entry
//! proven against a root, cached for the sync), the directory roots peers' messages carry,
//! and this account's own history (self-monitoring). Each security finding is an alert event.

use super::*;

/// Where the auditors to compare roots with are kept in the profile.
pub(super) const AUDITORS: &str = "auditors";

impl Client {
    /// The pinned directory state; profiles made before pinning existed pin on first use.
    pub(super) async fn dir_state(&mut self) -> Result<DirectoryState, Error> {
        if let Some(state) = &self.dir.state {
            return Ok(state.clone());
        }
        let state = DirectoryState {
            keys: self.api.directory_keys().await?,
            epoch: 0,
            history_checked: 0,
        };
        self.save_dir_state(state.clone())?;
        Ok(state)
    }

    pub(super) fn save_dir_state(&mut self, state: DirectoryState) -> Result<(), Error> {
        let json = serde_json::to_vec(&state).map_err(|e| Error::Store(e.to_string()))?;
        self.profile
            .atomically(|tx, sealer, _| put_meta(tx, sealer, "directory", &json))?;
        self.dir.state = Some(state);
        Ok(())
    }

    /// Shows a security event outside any conversation: appends it to the event log.
    pub(super) fn alert(&mut self, error: &Error) -> Result<(), Error> {
        if let Error::Security { alert, detail } = error {
            tracing::warn!(?alert, "security event");
            self.log_account_events(vec![Event::Security {
                conversation: None,
                alert: *alert,
                detail: detail.clone(),
            }])?;
        }
        Ok(())
    }

    /// Appends events about the account or the directory to the event log, in one transaction.
    pub(super) fn log_account_events(&mut self, events: Vec<Event>) -> Result<(), Error> {
        if events.is_empty() {
            return Ok(());
        }
        self.profile.atomically(|tx, sealer, _| {
            events.into_iter().try_for_each(|event| {
                put_event_record(tx, sealer, None, &LoggedRecord::Account { event }).map(|_| ())
            })
        })
    }

    /// Records a verified root. Two different roots for one epoch are a split view; a newer
    /// epoch becomes the oldest one accepted from now on.
    pub(super) fn note_root(&mut self, epoch: u64, root: [u8; 32]) -> Result<(), Error> {
        match self.dir.roots.get(&epoch) {
            Some(known) if *known == root => {}
            Some(_) => {
                let e = security(
                    SecurityAlert::SplitView,
                    format!(
                        "the server signed two different key directory roots for epoch {epoch}"
                    ),
                );
                self.alert(&e)?;
                return Err(e);
            }
            None => {
                self.profile
                    .atomically(|tx, _, _| store::put_directory_root(tx, epoch, &root))?;
                self.dir.roots.insert(epoch, root);
            }
        }
        if let Some(state) = self.dir.state.clone()
            && epoch > state.epoch
        {
            self.save_dir_state(DirectoryState { epoch, ..state })?;
        }
        Ok(())
    }

    /// Looks `user` up in the directory and verifies the answer (not yet through the trust
    /// gate). Problems are shown as security events and returned as errors.
    pub(super) async fn lookup_checked(&mut self, user: &Username) -> Result<Verified, Error> {
        let state = self.dir_state().await?;
        let resp = self
            .api
            .directory_lookup(&self.identity, user)
            .await
            .map_err(unknown_user(user))?;
        let verified = match state.verify_lookup(user, &resp) {
            Ok(v) => v,
            Err(e) => {
                self.alert(&e)?;
                return Err(e);
            }
        };
        self.note_root(verified.epoch, verified.root)?;
        Ok(verified)
    }

    /// Looks `user` up in the directory, verifies the answer and passes it through the trust
    /// gate ([`admit`](Self::admit)): a refused entry is an error.
    pub(super) async fn lookup_verified(&mut self, user: &Username) -> Result<Verified, Error> {
        let verified = self.lookup_checked(user).await?;
        match self.admit(user, verified.clone())? {
            trust::Admission::Admitted => Ok(verified),
            trust::Admission::Refused(e) => Err(e),
        }
    }

    /// Fetches the entries the receive path asked for, in batches at one epoch. A user without
    /// a usable entry is remembered as looked up, so that their leaves are refused instead of
    /// asked for again. The proofs are verified on every core, and what the gate records
    /// (accounts' keys pinned on first sight, alerts) is written in one transaction. The
    /// answers refused (shown as alerts already) are returned, for a caller that must stop.
    pub(super) async fn fetch_entries(
        &mut self,
        users: Vec<Username>,
    ) -> Result<Vec<Error>, Error> {
        let state = self.dir_state().await?;
        self.profile.begin_batch()?;
        let fetched = self.fetch_entries_in(&state, &users).await;
        // What the gate noted stands either way: pinned keys, alerts.
        self.profile.commit_batch()?;
        fetched
    }

    async fn fetch_entries_in(
        &mut self,
        state: &DirectoryState,
        users: &[Username],
    ) -> Result<Vec<Error>, Error> {
        let mut refused = Vec::new();
        for chunk in users.chunks(MAX_BATCH_LOOKUP) {
            for user in chunk {
                self.dir.entries.remove(user);
                self.dir.fresh.insert(user.clone());
            }
            let resp = self
                .api
                .directory_batch_lookup(&self.identity, chunk)
                .await?;
            let root = match state.check_root(&resp.root) {
                Ok(root) => root,
                Err(e) => {
                    self.alert(&e)?;
                    refused.push(e);
                    continue;
                }
            };
            self.note_root(resp.root.epoch, root)?;
            let proofs: Vec<_> = resp
                .proofs
                .into_iter()
                .filter(|named| chunk.contains(&named.username))
                .collect();
            let epoch = resp.root.epoch;
            let verified = on_every_core(&proofs, |named| {
                verify_proof(&state.keys, &named.username, epoch, root, &named.proof)
            });
            for (named, verified) in proofs.iter().zip(verified) {
                match verified {
                    // A refused entry was shown; its devices are refused (see `DirCheck`).
                    Ok(v) => drop(self.admit(&named.username, v)?),
                    Err(e) => {
                        self.alert(&e)?;
                        refused.push(e);
                    }
                }
            }
        }
        Ok(refused)
    }

    /// The newest verified directory root, which outgoing messages carry.
    pub(super) fn root_record(&self) -> Option<(u64, [u8; 32])> {
        self.dir
            .state
            .as_ref()
            .and_then(|s| self.dir.roots.get(&s.epoch).map(|r| (s.epoch, *r)))
    }

    /// The root this device verified for `epoch`, or, if it has none, the server's signed root
    /// for it, checked and kept. A root that does not verify, or differs from one kept for that
    /// epoch, is an alert (and the error returned); `None` if the server has no such epoch.
    async fn root_of(&mut self, epoch: u64) -> Result<Option<[u8; 32]>, Error> {
        if let Some(root) = self.dir.roots.get(&epoch) {
            return Ok(Some(*root));
        }
        let state = self.dir_state().await?;
        let signed = match self.api.directory_root(Some(epoch)).await {
            Ok(signed) => signed,
            Err(Error::Server {
                code: ErrorCode::NotFound,
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match signed.verify(&state.keys.signing_key) {
            Ok(root) if signed.epoch == epoch => {
                self.note_root(epoch, root)?;
                Ok(Some(root))
            }
            _ => {
                let e = security(
                    SecurityAlert::InvalidProof,
                    format!("the directory root of epoch {epoch} does not verify"),
                );
                self.alert(&e)?;
                Err(e)
            }
        }
    }

    /// Compares the roots peers carried for epochs this device had not verified yet.
    pub(super) async fn check_peer_roots(&mut self) -> Result<(), Error> {
        let pending = std::mem::take(&mut self.dir.peer_roots);
        for peer in pending {
            let ours = match self.root_of(peer.epoch).await {
                Ok(ours) => ours,
                // Shown already.
                Err(Error::Security { .. }) => continue,
                Err(e) => return Err(e),
            };
            if ours != Some(peer.root) {
                let record = LoggedRecord::Conversation {
                    item: Item::Security {
                        alert: SecurityAlert::SplitView,
                        detail: split_view(&peer.from, peer.epoch),
                    },
                };
                self.profile.atomically(|tx, sealer, _| {
                    put_event_record(tx, sealer, Some(peer.group), &record)
                })?;
            }
        }
        Ok(())
    }

    /// The auditors whose roots this device compares with its own on every sync.
    pub fn auditors(&self) -> &[String] {
        &self.auditors
    }

    /// Sets the auditors this device compares roots with (kept in the profile): each one's URL
    /// (`http://` or `https://`), as its `sealpost audit --serve` printed it, or anything else
    /// that serves the key directory's signed roots (`GET /v1/directory/root` and
    /// `/v1/directory/roots/{epoch}`).
    pub fn set_auditors(&mut self, auditors: Vec<String>) -> Result<(), Error> {
        for url in &auditors {
            Api::new(url, self.identity.device_id)?;
        }
        let json = serde_json::to_vec(&auditors).map_err(|e| Error::Store(e.to_string()))?;
        self.profile
            .atomically(|tx, sealer, _| put_meta(tx, sealer, AUDITORS, &json))?;
        self.auditors = auditors;
        self.dir.auditors.clear();
        Ok(())
    }

    /// Compares the newest root this device verified with what each auditor checked. An
    /// auditor that cannot be reached, or checks another directory, is passed over (logged):
    /// the sync goes on. A different root for the same epoch, signed by the directory, is a
    /// split view: an alert.
    /// Each auditor is asked once per epoch of this device (a root, once compared, stays what it
    /// is), and one that failed is left alone for [`AUDITOR_RETRY`], so that an auditor out of
    /// reach does not slow every sync.
    pub(super) async fn check_auditors(&mut self) -> Result<(), Error> {
        let Some(epoch) = self.dir.state.as_ref().map(|s| s.epoch) else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        for url in self.auditors.clone() {
            match self.dir.auditors.get(&url) {
                Some(AuditorLook::ComparedAt(e)) if *e == epoch => continue,
                Some(AuditorLook::FailedAt(when)) if now < *when + AUDITOR_RETRY => continue,
                _ => {}
            }
            let look = match self.compare_with_auditor(&url).await {
                Ok(compared) => AuditorLook::ComparedAt(compared),
                // Alerted once for this epoch.
                Err(Error::Security { .. }) => AuditorLook::ComparedAt(epoch),
                Err(e) => {
                    tracing::warn!(auditor = %url, "cannot compare roots: {e}");
                    AuditorLook::FailedAt(now)
                }
            };
            self.dir.auditors.insert(url, look);
        }
        Ok(())
    }

    /// Compares with one auditor; the epoch compared at. For an auditor behind this device,
    /// the root of its epoch is the one the server signs for this device.
    async fn compare_with_auditor(&mut self, url: &str) -> Result<u64, Error> {
        let state = self.dir_state().await?;
        let (_, theirs) =
            crate::audit::peer_root(url, &state.keys.signing_key, state.epoch).await?;
        let epoch = theirs.epoch;
        match self.root_of(epoch).await? {
            Some(ours) if ours.as_slice() != theirs.root.as_slice() => {
                let e = security(
                    SecurityAlert::SplitView,
                    format!(
                        "the auditor at {url} checked another root for version {epoch} of the key \
                         directory than this device verified, both signed by the server: it \
                         shows different people different directories"
                    ),
                );
                self.alert(&e)?;
                Err(e)
            }
            _ => Ok(epoch),
        }
    }

    /// Checks this account's own directory history: every device in it must be certified by
    /// the account key, the account key must be ours, and this device must still be listed.
    pub(super) async fn check_own_account(&mut self) -> Result<(), Error> {
        let state = self.dir_state().await?;
        let latest = self.api.directory_root(None).await?;
        let root = match state.check_root(&latest) {
            Ok(root) => root,
            Err(e) => {
                self.alert(&e)?;
                return Ok(());
            }
        };
        if self.note_root(latest.epoch, root).is_err() || latest.epoch <= state.history_checked {
            return Ok(());
        }
        let me = self.identity.username.clone();
        let resp = self.api.directory_history(&self.identity, &me).await?;
        let (root, versions) = match state.verify_history(&me, &resp) {
            Ok(v) => v,
            Err(e) => {
                self.alert(&e)?;
                return Ok(());
            }
        };
        let account_key = self.identity.account_key.to_public_vec();
        // What the history shows, logged with the epoch up to which it was checked (one
        // transaction: shown once, also across a crash).
        let mut events = Vec::new();
        // Device changes, oldest first: each version against the one before it.
        for pair in versions.windows(2).rev() {
            let ((epoch, newer), (_, older)) = (&pair[0], &pair[1]);
            if *epoch <= state.history_checked {
                continue;
            }
            let ids = |e: &sealpost_proto::directory::DirectoryEntry| -> BTreeSet<[u8; 16]> {
                e.devices.iter().map(|d| d.device_id).collect()
            };
            let (now, before) = (ids(newer), ids(older));
            for (set, other, change) in [
                (&now, &before, DeviceChange::Added),
                (&before, &now, DeviceChange::Removed),
            ] {
                for id in set.difference(other) {
                    events.push(Event::AccountDevice {
                        device: DeviceId::from_bytes(*id).short(),
                        device_id: Some(DeviceId::from_bytes(*id)),
                        change,
                        epoch: *epoch,
                    });
                }
            }
        }
        for (epoch, entry) in versions.iter().filter(|(e, _)| *e > state.history_checked) {
            if entry.account_key.as_slice() != account_key.as_slice() {
                events.push(security_event(
                    SecurityAlert::UnapprovedDevice,
                    format!("your account key was replaced in the key directory at epoch {epoch}"),
                ));
                continue;
            }
            for device in &entry.devices {
                if !entry.certifies(&me, device) {
                    events.push(security_event(
                        SecurityAlert::UnapprovedDevice,
                        format!(
                            "device {} appeared in your account's directory entry at epoch {epoch}; none of your devices approved it",
                            device.id().short()
                        ),
                    ));
                }
            }
        }
        let listed = versions
            .first()
            .is_some_and(|(_, e)| e.device(self.identity.device_id).is_some());
        if let Some((_, newest)) = versions.first() {
            let verified = crate::directory::certified(&me, resp.root.epoch, root, newest.clone());
            self.dir.entries.insert(me.clone(), verified);
        }
        if !listed {
            events.push(security_event(
                SecurityAlert::DeviceMissing,
                "this device is not in your account's current directory entry",
            ));
        }
        self.note_root(resp.root.epoch, root)?;
        let state = DirectoryState {
            history_checked: resp.root.epoch,
            ..self.dir_state().await?
        };
        let json = serde_json::to_vec(&state).map_err(|e| Error::Store(e.to_string()))?;
        self.profile.atomically(|tx, sealer, _| {
            for event in events {
                put_event_record(tx, sealer, None, &LoggedRecord::Account { event })?;
            }
            put_meta(tx, sealer, "directory", &json)
        })?;
        self.dir.state = Some(state);
        Ok(())
    }
}

/// The key directory as this device has verified it.
#[derive(Default)]
pub(super) struct DirView {
    /// Pinned keys and the newest verified epoch (`None` until pinned).
    pub(super) state: Option<DirectoryState>,
    /// Verified roots by epoch.
    pub(super) roots: Roots,
    /// Verified entries (cache).
    pub(super) entries: BTreeMap<Username, Verified>,
    /// Users looked up during the current sync: a leaf they do not explain is refused.
    pub(super) fresh: BTreeSet<Username>,
    /// Users whose entry the trust gate refused in the current sync, and why.
    pub(super) refused: BTreeMap<Username, String>,
    /// Directory roots carried by peers' messages, to compare once the batch is stored.
    pub(super) peer_roots: Vec<PeerRoot>,
    /// How the comparison with each auditor went last (this process).
    pub(super) auditors: BTreeMap<String, AuditorLook>,
}

/// An auditor left alone this long after it could not be asked.
const AUDITOR_RETRY: std::time::Duration = std::time::Duration::from_secs(300);

/// The last comparison with an auditor.
pub(super) enum AuditorLook {
    /// Compared (agreeing, or alerted) at this epoch.
    ComparedAt(u64),
    /// It could not be asked, at this time.
    FailedAt(std::time::Instant),
}

/// A directory root a peer's message carried.
pub(super) struct PeerRoot {
    pub(super) group: GroupId,
    pub(super) from: String,
    pub(super) epoch: u64,
    pub(super) root: [u8; 32],
}

/// What the receive path may consult about the directory.
pub(super) struct DirCheck<'a> {
    pub(super) entries: &'a BTreeMap<Username, Verified>,
    pub(super) fresh: &'a BTreeSet<Username>,
    pub(super) refused: &'a BTreeMap<Username, String>,
    pub(super) roots: &'a Roots,
    pub(super) peer_roots: &'a mut Vec<PeerRoot>,
}

impl DirCheck<'_> {
    /// Checks MLS leaves (credential, signature key) against the verified directory entries.
    pub(super) fn leaves<'c>(
        &self,
        leaves: impl IntoIterator<Item = (&'c Credential, &'c [u8])>,
    ) -> LeafCheck {
        let mut need = Vec::new();
        for (credential, key) in leaves {
            let Some(id) = credential_user(credential) else {
                return LeafCheck::Refused("a member has no Sealpost identity".into());
            };
            let listed = self
                .entries
                .get(&id.username)
                .and_then(|v| v.entry.device(id.device_id))
                .is_some_and(|d| d.device_key.as_slice() == key);
            if listed {
                continue;
            }
            if let Some(why) = self.refused.get(&id.username) {
                return LeafCheck::Refused(format!(
                    "device {} of {} is refused: {why}",
                    id.device_id.short(),
                    at(&id.username)
                ));
            }
            if self.fresh.contains(&id.username) {
                return LeafCheck::Refused(format!(
                    "device {} of {} is not in their verified directory entry (or has another key)",
                    id.device_id.short(),
                    at(&id.username)
                ));
            }
            if !need.contains(&id.username) {
                need.push(id.username);
            }
        }
        if need.is_empty() {
            LeafCheck::Ok
        } else {
            LeafCheck::Need(need)
        }
    }

    /// Compares the directory root a peer's message carries with ours for that epoch.
    pub(super) fn peer_root(&mut self, group: GroupId, from: &str, aad: &[u8]) -> Option<Item> {
        let (epoch, root) = Aad::parse(aad).root?;
        match self.roots.get(&epoch) {
            Some(ours) if *ours == root => None,
            Some(_) => Some(Item::Security {
                alert: SecurityAlert::SplitView,
                detail: split_view(from, epoch),
            }),
            None => {
                self.peer_roots.push(PeerRoot {
                    group,
                    from: from.to_owned(),
                    epoch,
                    root,
                });
                None
            }
        }
    }
}

pub(super) fn split_view(from: &str, epoch: u64) -> String {
    format!(
        "{from}'s message carries a different key directory root for epoch {epoch} than the one this device verified: the server is showing you different directories"
    )
}

/// `f` of every item, in order, computed on as many threads as the machine has cores (while
/// the async runtime's other tasks go on: see [`store::blocking`]).
fn on_every_core<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || items.len() < 2 {
        return store::blocking(|| items.iter().map(f).collect());
    }
    let per = items.len().div_ceil(threads);
    let f = &f;
    store::blocking(|| {
        std::thread::scope(|scope| {
            let parts: Vec<_> = items
                .chunks(per)
                .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
                .collect();
            parts
                .into_iter()
                .flat_map(|part| part.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    })
}
