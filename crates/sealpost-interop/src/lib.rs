//! Test only: a member of Sealpost conversations built on [mls-rs](https://github.com/awslabs/mls-rs)
//! (AWS's MLS implementation) instead of openmls, to show that Sealpost's groups are standard
//! MLS (RFC 9420) that a second implementation can take part in. It does what
//! docs/protocol.md, "Interoperability", asks of another implementation: the credential and
//! key packages, the server's API, padding, MIMI content and the authenticated data's fork
//! check. It keeps its state in memory and does not check the key directory (a real client
//! must: see that section).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use mls_rs::client_builder::{BaseConfig, WithCryptoProvider, WithIdentityProvider};
use mls_rs::crypto::SignatureSecretKey;
use mls_rs::extension::recommended::LastResortKeyPackageExt;
use mls_rs::group::{CommitEffect, ReceivedMessage};
use mls_rs::identity::SigningIdentity;
use mls_rs::identity::basic::{BasicCredential, BasicIdentityProvider};
use mls_rs::{
    CipherSuite, CipherSuiteProvider as _, CryptoProvider as _, ExtensionList, Group, MlsMessage,
};
use mls_rs_crypto_rustcrypto::RustCryptoProvider;
use sealpost_proto::mimi::{
    self, Content, Disposition, ExtensionKey, Extensions, NestedPart, Part, Value,
};
use sealpost_proto::{
    AckRequest, DeliveryKind, DeviceId, DeviceIdentity, GroupId, RegisterRequest, SyncRequest,
    Username, device_certificate_message, pad, unpad,
};
use sealpost_sdk::{Api, ChallengeSigner};

/// The suite both implementations have: `MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519`
/// (Sealpost's `classic`). mls-rs has no X-Wing, Sealpost's default.
pub const SUITE: CipherSuite = CipherSuite::CURVE25519_CHACHA;

/// The last-resort key-package extension (draft-ietf-mls-extensions), which every Sealpost leaf
/// declares and whose key package the server keeps for when single-use ones run out.
const LAST_RESORT: u16 = 0x000A;

/// The MLS exporter label and length of the fork check in a message's authenticated data.
const FORK_LABEL: &[u8] = b"sealpost fork check";
const FORK_TAG: &[u8; 4] = b"SPf1";
const FORK_LEN: usize = 16;

/// Key packages last 12 weeks, as Sealpost's own (openmls's default; mls-rs makes a year).
const LIFETIME: Duration = Duration::from_secs(84 * 24 * 3600);

/// A text's media type, and a conversation description's (Sealpost's own, in CBOR).
const TEXT: &str = "text/plain;charset=utf-8";
const CONVERSATION: &str = "application/vnd.sealpost.conversation+cbor";

type Config =
    WithIdentityProvider<BasicIdentityProvider, WithCryptoProvider<RustCryptoProvider, BaseConfig>>;

/// What the member saw in one sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// It joined a conversation from a Welcome.
    Joined(GroupId),
    /// A text.
    Text {
        group: GroupId,
        from: Username,
        text: String,
    },
    /// Another kind of content (its media type): a conversation's name, a receipt, ...
    Other {
        group: GroupId,
        from: Username,
        media_type: String,
    },
    /// A commit took the conversation to `epoch`; `removed` names the devices' users it took out.
    Commit {
        group: GroupId,
        committer: Username,
        epoch: u64,
        added: Vec<Username>,
        removed: Vec<Username>,
    },
    /// A proposal, kept until a commit takes it in.
    Proposal { group: GroupId, from: Username },
    /// A commit removed this member.
    Removed(GroupId),
}

/// Signs the server's sign-in challenges with the device key.
struct DeviceKey {
    key: SignatureSecretKey,
}

impl ChallengeSigner for DeviceKey {
    fn sign_challenge(&self, message: &[u8]) -> Result<Vec<u8>, sealpost_sdk::Error> {
        sign(&self.key, message).map_err(|_| sealpost_sdk::Error::Crypto("signing failed"))
    }
}

fn suite() -> anyhow::Result<impl mls_rs::CipherSuiteProvider> {
    RustCryptoProvider::default()
        .cipher_suite_provider(SUITE)
        .context("the crypto provider lacks the suite")
}

fn sign(key: &SignatureSecretKey, message: &[u8]) -> anyhow::Result<Vec<u8>> {
    suite()?
        .sign(key, message)
        .map_err(|e| anyhow!("signing: {e:?}"))
}

/// One conversation the member is in.
struct Conversation {
    group: Group<Config>,
    /// The last group-log sequence number processed.
    cursor: u64,
    /// Where this device's own application messages are in the log (a sender cannot decrypt
    /// its own messages: it skips them).
    sent: BTreeSet<u64>,
}

/// One device of one account, on mls-rs.
pub struct Member {
    /// The account.
    pub username: Username,
    /// This device.
    pub device_id: DeviceId,
    client: mls_rs::Client<Config>,
    key: DeviceKey,
    api: Api,
    conversations: BTreeMap<GroupId, Conversation>,
    inbox: u64,
}

impl Member {
    /// Creates the account `username` on `server` with one device on mls-rs: an account key,
    /// a device key that the account key certifies, and key packages of [`SUITE`] (single-use
    /// ones and a last-resort one).
    pub async fn register(server: &str, username: &str) -> anyhow::Result<Member> {
        let cs = suite()?;
        let username = Username::new(username)?;
        let device_id = DeviceId::from_slice(
            &cs.random_bytes_vec(16)
                .map_err(|e| anyhow!("randomness: {e:?}"))?,
        )?;
        let (account_secret, account_public) = cs
            .signature_key_generate()
            .map_err(|e| anyhow!("key generation: {e:?}"))?;
        let (device_secret, device_public) = cs
            .signature_key_generate()
            .map_err(|e| anyhow!("key generation: {e:?}"))?;
        let who = DeviceIdentity {
            username: username.clone(),
            device_id,
        };
        let credential = BasicCredential::new(who.to_credential_bytes()).into_credential();
        let client = mls_rs::Client::builder()
            .crypto_provider(RustCryptoProvider::default())
            .identity_provider(BasicIdentityProvider)
            .extension_type(LAST_RESORT.into())
            .key_package_lifetime(LIFETIME)
            .signing_identity(
                SigningIdentity::new(credential, device_public.clone()),
                device_secret.clone(),
                SUITE,
            )
            .build();
        let mut key_packages = Vec::new();
        for last_resort in [false, false, false, false, true] {
            let mut extensions = ExtensionList::new();
            if last_resort {
                extensions.set_from(LastResortKeyPackageExt)?;
            }
            let kp = client.generate_key_package_message(extensions, ExtensionList::new(), None)?;
            key_packages.push(kp.to_bytes()?);
        }
        let device_key = device_public.to_vec();
        let request = RegisterRequest {
            username: username.clone(),
            account_key: account_public.to_vec(),
            device_id,
            device_certificate: sign(
                &account_secret,
                &device_certificate_message(&username, &device_id, &device_key),
            )?,
            device_key,
            key_packages,
        };
        let api = Api::new(server, device_id)?;
        api.register(&request).await?;
        Ok(Member {
            username,
            device_id,
            client,
            key: DeviceKey { key: device_secret },
            api,
            conversations: BTreeMap::new(),
            inbox: 0,
        })
    }

    /// The conversations it is in.
    pub fn groups(&self) -> Vec<GroupId> {
        self.conversations.keys().copied().collect()
    }

    /// The MLS epoch of `group`.
    pub fn epoch(&self, group: GroupId) -> anyhow::Result<u64> {
        Ok(self.conversation(group)?.group.current_epoch())
    }

    /// The users of the members of `group`, one per device, in leaf order.
    pub fn members(&self, group: GroupId) -> anyhow::Result<Vec<Username>> {
        self.conversation(group)?
            .group
            .roster()
            .members_iter()
            .map(|m| user_of(&m.signing_identity))
            .collect()
    }

    fn conversation(&self, group: GroupId) -> anyhow::Result<&Conversation> {
        self.conversations
            .get(&group)
            .with_context(|| format!("not in {group}"))
    }

    fn conversation_mut(&mut self, group: GroupId) -> anyhow::Result<&mut Conversation> {
        self.conversations
            .get_mut(&group)
            .with_context(|| format!("not in {group}"))
    }

    /// Where it stands in each conversation's log.
    fn cursors(&self) -> Vec<(GroupId, u64)> {
        self.conversations
            .iter()
            .map(|(g, c)| (*g, c.cursor))
            .collect()
    }

    /// Fetches and processes everything new: Welcomes, then each conversation's log in order.
    /// Its own commits come back in the log and are applied then (a commit is pending until
    /// the server has put it in the log, as Sealpost's own clients do).
    pub async fn sync(&mut self) -> anyhow::Result<Vec<Seen>> {
        let mut seen = Vec::new();
        loop {
            let request = SyncRequest {
                inbox_after: Some(self.inbox),
                groups: self.cursors(),
                limit: None,
            };
            let batch = self.api.sync(&self.key, &request).await?;
            for d in &batch.deliveries {
                let message = MlsMessage::from_bytes(d.payload.as_slice())?;
                match d.kind {
                    DeliveryKind::Inbox => {
                        self.inbox = d.inbox_seq;
                        let (group, _) = self.client.join_group(None, &message, None)?;
                        let id = GroupId::from_slice(group.group_id())?;
                        ensure!(
                            id == d.group(),
                            "a Welcome for another group than its delivery's"
                        );
                        self.conversations.insert(
                            id,
                            Conversation {
                                group,
                                cursor: d.group_seq,
                                sent: BTreeSet::new(),
                            },
                        );
                        seen.push(Seen::Joined(id));
                    }
                    DeliveryKind::Group => {
                        let id = d.group();
                        let Some(c) = self.conversations.get_mut(&id) else {
                            continue;
                        };
                        if d.group_seq <= c.cursor {
                            continue;
                        }
                        c.cursor = d.group_seq;
                        if c.sent.remove(&d.group_seq) {
                            continue;
                        }
                        if let Some(s) = process(id, c, message)? {
                            if matches!(s, Seen::Removed(_)) {
                                self.conversations.remove(&id);
                            }
                            seen.push(s);
                        }
                    }
                }
            }
            let ack = AckRequest {
                inbox: Some(self.inbox),
                groups: self.cursors(),
            };
            self.api.ack(&self.key, &ack).await?;
            if batch.more == 0 {
                return Ok(seen);
            }
        }
    }

    /// Sends `text` to `group`: MIMI content, padded, encrypted with the fork check in its
    /// authenticated data.
    pub async fn send(&mut self, group: GroupId, text: &str) -> anyhow::Result<()> {
        let content = self.content(
            group,
            NestedPart {
                disposition: Disposition::RENDER,
                language: String::new(),
                part: Part::Single {
                    content_type: TEXT.into(),
                    content: text.as_bytes().to_vec(),
                },
            },
        )?;
        self.send_content(group, &content).await
    }

    fn content(&self, group: GroupId, body: NestedPart) -> anyhow::Result<Content> {
        let salt = suite()?
            .random_bytes_vec(16)
            .map_err(|e| anyhow!("randomness: {e:?}"))?;
        let mut extensions = Extensions::default();
        extensions.insert(
            ExtensionKey::Int(mimi::SENDER_URI),
            Value::Text(format!("mimi://sealpost.invalid/u/{}", self.username)),
        )?;
        extensions.insert(
            ExtensionKey::Int(mimi::ROOM_URI),
            Value::Text(format!("mimi://sealpost.invalid/r/{group}")),
        )?;
        Ok(Content {
            salt: salt.try_into().map_err(|_| anyhow!("short salt"))?,
            replaces: None,
            topic_id: Vec::new(),
            expires: None,
            in_reply_to: None,
            extensions,
            body,
        })
    }

    async fn send_content(&mut self, group: GroupId, content: &Content) -> anyhow::Result<()> {
        let padded = pad(&content.encode())?;
        let c = self.conversation_mut(group)?;
        let aad = [FORK_TAG.as_slice(), &fork_check(&c.group)?].concat();
        let message = c.group.encrypt_application_message(&padded, aad)?;
        let posted = self
            .api
            .post_message(&self.key, group, message.to_bytes()?)
            .await?;
        self.conversation_mut(group)?.sent.insert(posted.seq);
        Ok(())
    }

    /// Commits a self-update: a new leaf key and path secrets.
    pub async fn update(&mut self, group: GroupId) -> anyhow::Result<()> {
        let c = self.conversation_mut(group)?;
        let out = c.group.commit_builder().build()?;
        self.post_commit(group, out).await
    }

    /// Adds every device of `user` (one key package each, claimed from the server), and then
    /// tells the conversation its name, as the committer of an add does.
    pub async fn add(&mut self, group: GroupId, user: &str, name: &str) -> anyhow::Result<()> {
        let user = Username::new(user)?;
        let claimed = self
            .api
            .claim_key_packages(&self.key, &user, SUITE.into())
            .await?;
        let c = self.conversation_mut(group)?;
        let mut builder = c.group.commit_builder();
        for kp in &claimed.key_packages {
            builder = builder.add_member(MlsMessage::from_bytes(&kp.key_package)?)?;
        }
        let out = builder.build()?;
        self.post_commit(group, out).await?;
        // The name goes out in the new epoch: once the commit is back and applied.
        self.sync().await?;
        let value = Value::Map(vec![
            (Value::Text("kind".into()), Value::Text("group".into())),
            (Value::Text("name".into()), Value::Text(name.into())),
        ]);
        let content = self.content(
            group,
            NestedPart {
                disposition: Disposition::UNSPECIFIED,
                language: String::new(),
                part: Part::Single {
                    content_type: CONVERSATION.into(),
                    content: value.to_cbor(),
                },
            },
        )?;
        self.send_content(group, &content).await
    }

    /// Removes every device of `user`.
    pub async fn remove(&mut self, group: GroupId, user: &str) -> anyhow::Result<()> {
        let user = Username::new(user)?;
        let c = self.conversation_mut(group)?;
        let leaves: Vec<u32> = c
            .group
            .roster()
            .members_iter()
            .filter(|m| user_of(&m.signing_identity).is_ok_and(|u| u == user))
            .map(|m| m.index)
            .collect();
        ensure!(!leaves.is_empty(), "{user} is not a member");
        let mut builder = c.group.commit_builder();
        for leaf in leaves {
            builder = builder.remove_member(leaf)?;
        }
        let out = builder.build()?;
        self.post_commit(group, out).await
    }

    async fn post_commit(
        &mut self,
        group: GroupId,
        out: mls_rs::group::CommitOutput,
    ) -> anyhow::Result<()> {
        let welcome = match out.welcome_messages() {
            [] => None,
            [one] => Some(one.to_bytes()?),
            _ => bail!("one Welcome for all new members was asked for"),
        };
        let posted = self
            .api
            .post_commit(&self.key, group, out.commit_message().to_bytes()?, welcome)
            .await;
        if let Err(e) = posted {
            self.conversation_mut(group)?.group.clear_pending_commit();
            return Err(e.into());
        }
        Ok(())
    }
}

/// The device a leaf's credential names (Sealpost's basic credential: `username:device_id`).
fn device_of(identity: &SigningIdentity) -> anyhow::Result<DeviceIdentity> {
    let basic = identity
        .credential
        .as_basic()
        .context("not a basic credential")?;
    Ok(DeviceIdentity::from_credential_bytes(&basic.identifier)?)
}

/// The user a leaf's credential names.
fn user_of(identity: &SigningIdentity) -> anyhow::Result<Username> {
    Ok(device_of(identity)?.username)
}

/// The devices in a group, with their leaves.
fn leaves(group: &Group<Config>) -> anyhow::Result<Vec<(u32, DeviceIdentity)>> {
    group
        .roster()
        .members_iter()
        .map(|m| Ok((m.index, device_of(&m.signing_identity)?)))
        .collect()
}

/// This member's fork check for the group's current epoch.
fn fork_check(group: &Group<Config>) -> anyhow::Result<Vec<u8>> {
    Ok(group
        .export_secret(FORK_LABEL, &[], FORK_LEN)?
        .as_bytes()
        .to_vec())
}

/// Processes one message of a conversation's log.
fn process(id: GroupId, c: &mut Conversation, message: MlsMessage) -> anyhow::Result<Option<Seen>> {
    let mine = fork_check(&c.group)?;
    let before = leaves(&c.group)?;
    let received = c.group.process_incoming_message(message)?;
    Ok(match received {
        ReceivedMessage::ApplicationMessage(m) => {
            let from = user_of(
                &c.group
                    .member_at_index(m.sender_index)
                    .context("no such sender")?
                    .signing_identity,
            )?;
            // The fork check: the sender's exporter value of this epoch, which every member of
            // the same group in the same epoch derives alike (in openmls and in mls-rs).
            if let Some(rest) = m.authenticated_data.windows(4).position(|w| w == FORK_TAG) {
                let theirs = m
                    .authenticated_data
                    .get(rest + 4..rest + 4 + FORK_LEN)
                    .context("a short fork check")?;
                ensure!(
                    theirs == mine.as_slice(),
                    "the fork check differs: a split group"
                );
            }
            let content = Content::decode(unpad(m.data())?)?;
            Some(match content.body.part {
                Part::Single {
                    content_type,
                    content,
                } if content_type == TEXT => Seen::Text {
                    group: id,
                    from,
                    text: String::from_utf8(content)?,
                },
                Part::Single { content_type, .. } => Seen::Other {
                    group: id,
                    from,
                    media_type: content_type,
                },
                _ => Seen::Other {
                    group: id,
                    from,
                    media_type: String::new(),
                },
            })
        }
        ReceivedMessage::Commit(commit) => {
            let committer = c
                .group
                .member_at_index(commit.committer)
                .map(|m| user_of(&m.signing_identity))
                .transpose()?;
            if let CommitEffect::Removed { .. } = commit.effect {
                return Ok(Some(Seen::Removed(id)));
            }
            let after = leaves(&c.group)?;
            let users = |a: &[(u32, DeviceIdentity)], b: &[(u32, DeviceIdentity)]| {
                a.iter()
                    .filter(|l| !b.contains(l))
                    .map(|(_, d)| d.username.clone())
                    .collect()
            };
            Some(Seen::Commit {
                group: id,
                committer: committer.context("no committer")?,
                epoch: c.group.current_epoch(),
                added: users(&after, &before),
                removed: users(&before, &after),
            })
        }
        ReceivedMessage::Proposal(p) => Some(Seen::Proposal {
            group: id,
            from: match p.sender {
                mls_rs::group::ProposalSender::Member(i) => user_of(
                    &c.group
                        .member_at_index(i)
                        .context("no such sender")?
                        .signing_identity,
                )?,
                _ => bail!("a proposal from outside the group"),
            },
        }),
        _ => None,
    })
}
