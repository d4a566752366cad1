//! Out-of-band verification: a safety number over two accounts' keys, compared in person or
//! over another channel. A verified contact whose account key later changes is blocked until
//! the user confirms the new number.

use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::HashType;

use super::trust::{Admission, Contact};
use super::*;

/// The safety number of two accounts: 60 digits in 12 groups, the same on both sides.
pub fn safety_number(
    crypto: &impl OpenMlsCrypto,
    a: (&Username, &[u8]),
    b: (&Username, &[u8]),
) -> Result<String, Error> {
    let (first, second) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    let mut input = b"sealpost safety number v1\0".to_vec();
    for (user, key) in [first, second] {
        input.extend_from_slice(&(user.as_str().len() as u64).to_be_bytes());
        input.extend_from_slice(user.as_str().as_bytes());
        input.extend_from_slice(&(key.len() as u64).to_be_bytes());
        input.extend_from_slice(key);
    }
    let digest = crypto
        .hash(HashType::Sha2_512, &input)
        .map_err(|_| Error::Crypto("hashing failed"))?;
    let groups: Vec<String> = digest
        .chunks_exact(5)
        .take(12)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect();
    Ok(groups.join(" "))
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// What `sealpost verify` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// `@user`.
    pub contact: String,
    /// The safety number.
    pub safety_number: String,
    /// Whether the user confirmed this number.
    pub verified: bool,
    /// Whether a confirmed key changed since (sending is blocked until confirmed again).
    pub changed: bool,
}

impl Client {
    /// Looks verified contacts of a conversation up again when the directory moved on since
    /// their entry was verified, so that a changed key is noticed before sending.
    pub(super) async fn refresh_verified(&mut self, group: GroupId) -> Result<(), Error> {
        let epoch = self.dir.state.as_ref().map_or(0, |s| s.epoch);
        let users: BTreeSet<Username> = self
            .member_devices(group)?
            .into_iter()
            .map(|d| d.username)
            .filter(|u| *u != self.identity.username)
            .collect();
        for user in users {
            let stale = self.dir.entries.get(&user).is_none_or(|v| v.epoch < epoch);
            if stale && self.contact(&user)?.is_some_and(|c| c.verified) {
                self.lookup_verified(&user).await?;
            }
        }
        Ok(())
    }

    /// Refuses to send into a conversation with a verified contact whose key changed.
    pub(super) fn check_not_blocked(&self, group: GroupId) -> Result<(), Error> {
        let users: BTreeSet<Username> = self
            .member_devices(group)?
            .into_iter()
            .map(|d| d.username)
            .collect();
        for user in users {
            if self
                .contact(&user)?
                .is_some_and(|c| c.verified && c.changed)
            {
                return Err(security(
                    SecurityAlert::VerifiedKeyChanged,
                    format!(
                        "the account key of {} changed since you verified it: run `sealpost verify {}` and confirm the new number with them before sending",
                        at(&user),
                        at(&user)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The safety number with `user`, from their verified directory entry.
    pub async fn verification(&mut self, user: &Username) -> Result<Verification, Error> {
        // Not through the trust gate: the number is shown whatever the key, so that a changed
        // one can be compared and confirmed.
        let entry = self.lookup_checked(user).await?;
        self.verification_of(user, &entry)
    }

    fn verification_of(&self, user: &Username, entry: &Verified) -> Result<Verification, Error> {
        if *user == self.identity.username {
            return Err(Error::OwnAccount);
        }
        let theirs = entry.entry.account_key.as_slice();
        let mine = self.identity.account_key.to_public_vec();
        let number = safety_number(
            self.profile.mls.provider.crypto(),
            (&self.identity.username, &mine),
            (user, theirs),
        )?;
        let contact = self.contact(user)?;
        Ok(Verification {
            contact: at(user),
            safety_number: number,
            verified: contact
                .as_ref()
                .is_some_and(|c| c.verified && c.account_key == theirs && !c.changed),
            changed: contact.is_some_and(|c| c.changed || c.account_key != theirs),
        })
    }

    /// Marks `user` verified if `number` is the current safety number (spaces ignored). The
    /// account key it was computed from is then the one this device trusts for `user`.
    pub async fn confirm_verification(
        &mut self,
        user: &Username,
        number: &str,
    ) -> Result<Verification, Error> {
        let entry = self.lookup_checked(user).await?;
        let current = self.verification_of(user, &entry)?;
        if digits(number) != digits(&current.safety_number) {
            return Err(Error::WrongSafetyNumber(at(user)));
        }
        let contact = Contact {
            account_key: entry.entry.account_key.as_slice().to_vec(),
            changed: false,
            verified: true,
        };
        self.put_contact(user, &contact)?;
        // The confirmed key's entry is admitted from now on.
        if let Admission::Refused(e) = self.admit(user, entry)? {
            return Err(e);
        }
        Ok(Verification {
            verified: true,
            changed: false,
            ..current
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn safety_numbers_are_symmetric_and_key_bound() {
        let crypto = openmls_rust_crypto::RustCrypto::default();
        let (a, b) = (
            Username::new("alice").unwrap(),
            Username::new("bob").unwrap(),
        );
        let one = safety_number(&crypto, (&a, &[1; 32]), (&b, &[2; 32])).unwrap();
        let two = safety_number(&crypto, (&b, &[2; 32]), (&a, &[1; 32])).unwrap();
        assert_eq!(one, two);
        assert_eq!(digits(&one).len(), 60);
        let other = safety_number(&crypto, (&a, &[1; 32]), (&b, &[3; 32])).unwrap();
        assert_ne!(one, other);
    }
}
