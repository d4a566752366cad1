//! Profiles: a display name and an avatar that a person shares, encrypted, with the
//! conversations they are in. A name is shown beside the `@username`, never instead of it:
//! anyone can take any name, and two people with the same one stay told apart by their
//! usernames.
//!
//! A profile travels as a MIMI message of the draft's `profile` disposition (see `content`),
//! once to each conversation: again when it changes, and when someone joins (so that new
//! members learn it). The avatar is a file like any other, encrypted under a fresh key and
//! uploaded for that conversation's members; receivers fetch it by themselves (up to
//! [`MAX_AVATAR`]) into the profile's `avatars/` directory. Of two profiles of one person, the
//! one the server took last holds.

use std::path::PathBuf;

use super::files::Source;
use super::*;
use crate::attachment;
use crate::content::FileRef;
use crate::model::SharedProfile;

/// Where this account's own profile is kept (`OwnProfile`).
pub(super) const OWN: &str = "own_profile";

/// Where what others share is kept (a map of `ContactRecord`s by username).
pub(super) const CONTACTS: &str = "contacts";

/// The largest avatar sent or fetched (the image itself), in bytes.
pub const MAX_AVATAR: u64 = 1024 * 1024;

/// The directory of the profile that avatars are saved in.
const AVATARS: &str = "avatars";

/// The image types an avatar can be, with the extension it is saved under.
const AVATAR_TYPES: [(&str, &str); 4] = [
    ("image/png", "png"),
    ("image/jpeg", "jpg"),
    ("image/gif", "gif"),
    ("image/webp", "webp"),
];

/// This account's profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct OwnProfile {
    name: String,
    /// This profile's copy of the avatar.
    avatar: Option<PathBuf>,
    /// Grows with every change; each conversation notes the one it was sent.
    version: u64,
}

/// What another person shares, as this device keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ContactRecord {
    name: String,
    avatar: Option<FileRef>,
    /// Where the avatar was saved, once fetched.
    #[serde(default)]
    saved: Option<PathBuf>,
    /// Fetching the avatar failed (too large, gone): not tried again until it changes.
    #[serde(default)]
    failed: bool,
    /// When the server took the message it came in (unix milliseconds).
    at: u64,
}

pub(super) type Contacts = BTreeMap<String, ContactRecord>;

/// Notes, after `items` were taken in `conv`, whether someone joined it: they learn this
/// account's profile (it is sent there again).
pub(super) fn owe_to_newcomers(conv: &mut Conv, items: &[Item]) {
    if items
        .iter()
        .any(|i| matches!(i, Item::MemberAdded { .. } | Item::DeviceAdded { .. }))
    {
        conv.info.profile_sent = 0;
    }
}

/// Reads the contacts (also inside a transaction).
pub(super) fn load(conn: &Connection, sealer: &Sealer) -> Result<Contacts, Error> {
    store::get_meta_json(conn, sealer, CONTACTS, "contacts")
}

fn save(tx: &Connection, sealer: &Sealer, contacts: &Contacts) -> Result<(), Error> {
    let json =
        Zeroizing::new(serde_json::to_vec(contacts).map_err(|e| Error::Store(e.to_string()))?);
    put_meta(tx, sealer, CONTACTS, &json)
}

/// Takes a profile that arrived, in the caller's transaction: `true` if it changed what this
/// device knew of its sender (an event is due).
pub(super) fn apply(
    tx: &Connection,
    sealer: &Sealer,
    from: &str,
    name: &str,
    avatar: Option<&FileRef>,
    at: u64,
) -> Result<bool, Error> {
    let user = from.trim_start_matches('@').to_owned();
    let mut contacts = load(tx, sealer)?;
    let changed = match contacts.get_mut(&user) {
        Some(known) if known.at > at => return Ok(false),
        Some(known) => {
            known.at = at;
            let same_avatar =
                known.avatar.as_ref().map(|f| &f.file_hash) == avatar.map(|f| &f.file_hash);
            let changed = known.name != name || !same_avatar;
            known.name = name.to_owned();
            if !same_avatar {
                // The copy of the old one goes with the next sweep (see `fetch_avatars`).
                known.avatar = avatar.cloned();
                known.saved = None;
                known.failed = false;
            }
            changed
        }
        None => {
            contacts.insert(
                user,
                ContactRecord {
                    name: name.to_owned(),
                    avatar: avatar.cloned(),
                    saved: None,
                    failed: false,
                    at,
                },
            );
            true
        }
    };
    save(tx, sealer, &contacts)?;
    Ok(changed)
}

fn own(profile: &Profile) -> Result<OwnProfile, Error> {
    store::get_meta_json(profile.conn(), &profile.sealer, OWN, "profile")
}

impl Client {
    /// What this account shares of itself.
    pub fn own_profile(&self) -> Result<SharedProfile, Error> {
        let own = own(&self.profile)?;
        Ok(SharedProfile {
            user: at(&self.identity.username),
            name: own.name,
            avatar: own.avatar,
        })
    }

    /// Changes what this account shares of itself: a display name (`Some("")` takes it away)
    /// and an avatar (`Some(None)` takes it away), and sends it to every conversation. An avatar
    /// is a PNG, JPEG, GIF or WebP image of up to 1 MiB; this profile keeps a copy of it.
    pub async fn set_profile(
        &mut self,
        name: Option<&str>,
        avatar: Option<Option<&Path>>,
    ) -> Result<SharedProfile, Error> {
        let mut own = own(&self.profile)?;
        if let Some(name) = name {
            let name = name.trim();
            if !content::valid_name(name) {
                return Err(Error::BadProfile(format!(
                    "a display name is up to {} characters, without control characters, @ or \"",
                    content::MAX_NAME
                )));
            }
            own.name = name.to_owned();
        }
        let old_copy = own.avatar.clone();
        if let Some(avatar) = avatar {
            own.avatar = match avatar {
                None => None,
                Some(path) => Some(self.keep_own_avatar(path, own.version + 1)?),
            };
        }
        own.version += 1;
        let json = serde_json::to_vec(&own).map_err(|e| Error::Store(e.to_string()))?;
        self.profile
            .atomically(|tx, sealer, _| put_meta(tx, sealer, OWN, &json))?;
        self.own_version = own.version;
        if let Some(old) = old_copy.filter(|old| own.avatar.as_ref() != Some(old)) {
            let _ = std::fs::remove_file(old);
        }
        self.sync_inner().await?;
        self.send_owed_profiles().await?;
        self.own_profile()
    }

    /// Checks the image at `path` and copies it into the profile (as version `version`).
    fn keep_own_avatar(&self, path: &Path, version: u64) -> Result<PathBuf, Error> {
        let source = Source::open(path)?;
        let name = path.to_string_lossy();
        let media_type = files::media_type(&name);
        let Some((_, ext)) = AVATAR_TYPES.iter().find(|(t, _)| *t == media_type) else {
            return Err(Error::BadProfile(format!(
                "{name}: an avatar is a PNG, JPEG, GIF or WebP image (.png, .jpg, .gif, .webp)"
            )));
        };
        if source.len > MAX_AVATAR {
            return Err(Error::BadProfile(format!(
                "{name}: an avatar is at most 1 MiB; this one is {} bytes",
                source.len
            )));
        }
        let dir = self.profile.home().join(AVATARS);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::File(format!("{}: {e}", dir.display())))?;
        let copy = dir.join(format!("self-{version}.{ext}"));
        std::fs::copy(path, &copy).map_err(|e| Error::File(format!("{name}: {e}")))?;
        Ok(copy)
    }

    /// What `user` (`@username` or `username`) shares, as far as this device knows.
    pub fn profile_of(&self, user: &str) -> Option<SharedProfile> {
        let user = user.trim_start_matches('@');
        self.contacts.get(user).map(|c| SharedProfile {
            user: format!("@{user}"),
            name: c.name.clone(),
            avatar: c.saved.clone(),
        })
    }

    /// The display name `@user` shares, if any.
    pub(super) fn name_of(&self, from: &str) -> Option<String> {
        self.contacts
            .get(from.trim_start_matches('@'))
            .map(|c| c.name.clone())
            .filter(|n| !n.is_empty())
    }

    /// `event` with the display name of its sender, for a message.
    pub(super) fn with_name(&self, mut event: Event) -> Event {
        if let Event::Message {
            from, sender_name, ..
        } = &mut event
        {
            *sender_name = self.name_of(from);
        }
        event
    }

    /// Reads the contacts again (after a transaction that may have changed them).
    pub(super) fn load_contacts(&mut self) -> Result<(), Error> {
        self.contacts = load(self.profile.conn(), &self.profile.sealer)?;
        Ok(())
    }

    /// Sends this account's profile to the conversations that do not have its current version
    /// (it changed, or someone joined). Conversations that are blocked wait.
    pub(super) async fn send_owed_profiles(&mut self) -> Result<(), Error> {
        let owed: Vec<GroupId> = self
            .convs
            .iter()
            .filter(|(_, c)| c.info.active && c.info.profile_sent < self.own_version)
            .map(|(g, _)| *g)
            .collect();
        for group in owed {
            if self.check_not_blocked(group).is_ok() {
                self.before_send(group).await?;
                self.send_profile(group).await?;
            }
        }
        Ok(())
    }

    /// Sends this account's profile to `group` if it does not have it yet (the caller checked
    /// that a message can be sent there): before the first message of a new conversation.
    pub(super) async fn send_profile_if_owed(&mut self, group: GroupId) -> Result<(), Error> {
        if self
            .convs
            .get(&group)
            .is_some_and(|c| c.info.profile_sent < self.own_version)
        {
            self.send_profile(group).await?;
        }
        Ok(())
    }

    /// Sends this account's profile to `group`, with its avatar uploaded for that group.
    async fn send_profile(&mut self, group: GroupId) -> Result<(), Error> {
        let own = own(&self.profile)?;
        let avatar = match &own.avatar {
            Some(path) => {
                let source = Source::open(path)?;
                Some(self.upload_file(group, &source, &mut |_| {}).await?)
            }
            None => None,
        };
        let content = content::profile(self.salt()?, &own.name, avatar.as_ref());
        self.send_app(group, content, None).await?;
        self.update_conv(group, |info| info.profile_sent = own.version)
    }

    /// Reads the version of this account's profile (after opening it).
    pub(super) fn load_own_version(&mut self) -> Result<(), Error> {
        self.own_version = own(&self.profile)?.version;
        Ok(())
    }

    /// Fetches the avatars that arrived and are not here yet, and deletes the copies of those
    /// replaced. One that cannot be fetched (too large, gone from the server, refused by a
    /// check) is not tried again until it changes.
    pub(super) async fn fetch_avatars(&mut self) -> Result<(), Error> {
        if !std::mem::take(&mut self.profiles_changed) {
            return Ok(());
        }
        let due: Vec<(String, FileRef)> = self
            .contacts
            .iter()
            .filter_map(|(user, c)| match &c.avatar {
                Some(f) if c.saved.is_none() && !c.failed => Some((user.clone(), f.clone())),
                _ => None,
            })
            .collect();
        for (user, file) in due {
            let ext = AVATAR_TYPES
                .iter()
                .find(|(t, _)| *t == file.media_type)
                .map(|(_, e)| *e);
            let fits = attachment::plain_len(file.size).is_some_and(|n| n <= MAX_AVATAR);
            let saved = match ext {
                Some(ext) if fits => {
                    let dir = self.profile.home().join(AVATARS);
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| Error::File(format!("{}: {e}", dir.display())))?;
                    let target = dir.join(format!("{user}-{}.{ext}", &file.blob[..16]));
                    let _ = std::fs::remove_file(&target);
                    match self.save_file(&file, &target, &mut |_| {}).await {
                        Ok(()) => Some(target),
                        // The server or the way to it failed: tried again when the profile is
                        // next opened, or a profile next arrives.
                        Err(e) if files::retryable(&e) => {
                            tracing::debug!(error = %e, %user, "an avatar could not be fetched yet");
                            continue;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, %user, "an avatar could not be fetched");
                            None
                        }
                    }
                }
                _ => None,
            };
            let mut old = None;
            self.profile.atomically(|tx, sealer, _| {
                let mut contacts = load(tx, sealer)?;
                if let Some(c) = contacts.get_mut(&user)
                    && c.avatar.as_ref().map(|f| &f.blob) == Some(&file.blob)
                {
                    old = c.saved.take();
                    c.failed = saved.is_none();
                    c.saved = saved;
                    save(tx, sealer, &contacts)?;
                }
                Ok(())
            })?;
            if let Some(old) = old {
                let _ = std::fs::remove_file(old);
            }
            self.load_contacts()?;
        }
        self.sweep_avatars()
    }

    /// Deletes the avatar copies no profile refers to any more.
    fn sweep_avatars(&self) -> Result<(), Error> {
        let dir = self.profile.home().join(AVATARS);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let own = own(&self.profile)?.avatar;
        let kept: BTreeSet<PathBuf> = self
            .contacts
            .values()
            .filter_map(|c| c.saved.clone())
            .chain(own)
            .collect();
        for entry in entries.flatten() {
            let path = entry.path();
            if !kept.contains(&path) && !path.to_string_lossy().ends_with(".partial") {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }
}
