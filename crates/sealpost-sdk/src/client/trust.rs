//! The trust gate: the one place that decides whether an account's directory entry — and so
//! any device in it — may take part in this device's conversations.
//!
//! Every path that adds or accepts a member or a device reaches it: creating a group, adding
//! members, a first message to a contact, a Welcome, a commit (through the entries the receive
//! path asks for), and a link approval (this account's own entry). An entry is admitted when its
//! directory proof verified (the caller's part), and its account key is the one this device
//! knows for that account: its own for this account, and for everyone else the key it saw first
//! (or the one the user confirmed by comparing safety numbers). A server that replaces an
//! account key — to certify a device it controls — is refused, and the refusal is an event the
//! user sees. Devices the account key did not certify are never trusted (the directory module
//! leaves them out of the entry) and are shown too.

use super::*;

/// What this device knows of another account's key (sealed in the profile).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Contact {
    /// The account key first seen, or the one the user confirmed.
    pub account_key: Vec<u8>,
    /// The directory has shown another account key since: that entry is refused, and (for a
    /// verified contact) sending to them is blocked until the user confirms the new number.
    pub changed: bool,
    /// The user compared safety numbers and confirmed this key. Records from before keys were
    /// pinned on first sight were all confirmed ones.
    #[serde(default = "confirmed")]
    pub verified: bool,
}

fn confirmed() -> bool {
    true
}

/// The gate's answer for one entry.
pub(super) enum Admission {
    /// The entry is kept: its certified devices may be added and accepted.
    Admitted,
    /// The entry is refused; the error says why (and was shown as an event).
    Refused(Error),
}

impl Client {
    pub(super) fn contact(&self, user: &Username) -> Result<Option<Contact>, Error> {
        self.profile
            .meta(&format!("contact:{user}"))?
            .map(|json| {
                serde_json::from_slice(&json)
                    .map_err(|e| Error::Store(format!("a contact record is damaged: {e}")))
            })
            .transpose()
    }

    pub(super) fn put_contact(&mut self, user: &Username, contact: &Contact) -> Result<(), Error> {
        let json = serde_json::to_vec(contact).map_err(|e| Error::Store(e.to_string()))?;
        let key = format!("contact:{user}");
        self.profile
            .atomically(|tx, sealer, _| put_meta(tx, sealer, &key, &json))
    }

    /// The trust gate (see the module documentation): admits or refuses `user`'s verified
    /// directory entry. An admitted entry is what the receive path and the add path check
    /// devices against; a refused one makes every device of `user` refused until the user
    /// confirms the new key. Either way `user` counts as looked up in this sync.
    pub(super) fn admit(
        &mut self,
        user: &Username,
        verified: Verified,
    ) -> Result<Admission, Error> {
        self.dir.fresh.insert(user.clone());
        let key = verified.entry.account_key.as_slice();
        let refusal = if *user == self.identity.username {
            (key != self.identity.account_key.to_public_vec().as_slice()).then(|| {
                security(
                    SecurityAlert::UnapprovedDevice,
                    "the key directory shows another account key for your own account: the devices it certifies are refused",
                )
            })
        } else {
            self.check_pinned_key(user, key)?
        };
        match refusal {
            None => {
                // Within an admitted entry, devices the account key did not certify are left
                // out (and shown); under a refused key, all of them are.
                if !verified.uncertified.is_empty() {
                    self.alert(&security(
                        SecurityAlert::UnapprovedDevice,
                        format!(
                            "the directory entry of {} lists devices their account key did not certify ({}); they are not trusted",
                            at(user),
                            verified
                                .uncertified
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ))?;
                }
                self.dir.refused.remove(user);
                self.dir.entries.insert(user.clone(), verified);
                Ok(Admission::Admitted)
            }
            Some(e) => {
                self.dir.entries.remove(user);
                self.dir.refused.insert(user.clone(), e.to_string());
                Ok(Admission::Refused(e))
            }
        }
    }

    /// Compares `user`'s account key with the one this device knows: pins it on first sight;
    /// a different one is a refusal, shown once as a security event.
    fn check_pinned_key(&mut self, user: &Username, key: &[u8]) -> Result<Option<Error>, Error> {
        let Some(mut contact) = self.contact(user)? else {
            self.put_contact(
                user,
                &Contact {
                    account_key: key.to_vec(),
                    changed: false,
                    verified: false,
                },
            )?;
            return Ok(None);
        };
        if contact.account_key == key {
            return Ok(None);
        }
        let (alert, detail) = if contact.verified {
            (
                SecurityAlert::VerifiedKeyChanged,
                format!(
                    "the account key of {} changed since you verified it: their devices under the new key are refused, and sending to them is blocked until you compare the new safety number with them and confirm it",
                    at(user)
                ),
            )
        } else {
            (
                SecurityAlert::AccountKeyChanged,
                format!(
                    "the account key of {} is not the one this device saw before: the server may be putting a device of its own in their place. Their devices under the new key are refused until you compare the new safety number with them and confirm it",
                    at(user)
                ),
            )
        };
        let e = security(alert, detail);
        if !contact.changed {
            contact.changed = true;
            self.put_contact(user, &contact)?;
            self.alert(&e)?;
        }
        Ok(Some(e))
    }
}
