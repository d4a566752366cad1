//! Linked devices: a new device asks to join an account with a code on its screen, a device of
//! the account approves it (see `sealpost_proto::link` for the protocol), and adds it to every
//! conversation. Also the account's device list and removal.

use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::{HashType, HpkeCiphertext, HpkeConfig, HpkePrivateKey};
use sealpost_proto::link::{
    LinkApproval, LinkRequest, decode_link_code, encode_link_code, link_approval_message,
    link_request_message,
};
use subtle::ConstantTimeEq as _;

use super::*;
use crate::model::DeviceEntry;

/// HPKE for the approval: the post-quantum suite's (ML-KEM-768 + X25519).
fn hpke_config() -> HpkeConfig {
    Suite::Pq.ciphersuite().hpke_config()
}

const HPKE_INFO: &[u8] = b"sealpost link v1";

/// What the code's secret gives both devices.
struct LinkKeys {
    link_id: String,
    mac_key: Zeroizing<Vec<u8>>,
}

fn link_keys(crypto: &impl OpenMlsCrypto, secret: &[u8; 10]) -> Result<LinkKeys, Error> {
    let failed = |_| Error::Crypto("key derivation failed");
    let prk = crypto
        .hkdf_extract(HashType::Sha2_256, b"sealpost link v1", secret)
        .map_err(failed)?;
    let id = crypto
        .hkdf_expand(HashType::Sha2_256, prk.as_slice(), b"link id", 10)
        .map_err(failed)?;
    let mac_key = crypto
        .hkdf_expand(HashType::Sha2_256, prk.as_slice(), b"link mac", 32)
        .map_err(failed)?;
    Ok(LinkKeys {
        link_id: hex::encode(id.as_slice()),
        mac_key: Zeroizing::new(mac_key.as_slice().to_vec()),
    })
}

fn mac(crypto: &impl OpenMlsCrypto, key: &[u8], message: &[u8]) -> Result<Vec<u8>, Error> {
    crypto
        .hmac(HashType::Sha2_256, key, message)
        .map(|t| t.as_slice().to_vec())
        .map_err(|_| Error::Crypto("MAC failed"))
}

fn mac_ok(crypto: &impl OpenMlsCrypto, key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    mac(crypto, key, message).is_ok_and(|t| bool::from(t.as_slice().ct_eq(tag)))
}

/// The account's key material and conversation list, sealed to the new device. The approver
/// serializes a borrowed key (no copy of it is left behind); the new device reads an owned one.
#[derive(Serialize, Deserialize)]
struct LinkPayload<K> {
    account_key: K,
    directory: DirectoryState,
    conversations: Vec<LinkedConversation>,
}

/// A conversation the new device is about to be added to, so it can name it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LinkedConversation {
    pub group: GroupId,
    pub kind: ConversationKind,
    pub name: String,
    pub peer: Option<Username>,
}

/// Signs in with a device key before the device has a full identity.
struct DeviceSigner<'a>(&'a SignatureKeyPair);

impl ChallengeSigner for DeviceSigner<'_> {
    fn sign_challenge(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        self.0
            .sign(message)
            .map_err(|_| Error::Crypto("signing failed"))
    }
}

/// A new device waiting to be approved. Show [`code`](Self::code) to the user, then call
/// [`try_finish`](Self::try_finish) until it is linked (the code expires after 10 minutes).
pub struct PendingLink {
    profile: Profile,
    api: Api,
    server: String,
    username: Username,
    device_id: DeviceId,
    device_key: SignatureKeyPair,
    hpke_private: HpkePrivateKey,
    secret: Zeroizing<[u8; 10]>,
    keys: LinkKeys,
}

/// Where a link stands.
pub enum LinkStep {
    /// Approved: the device is part of the account.
    Linked(Box<Client>),
    /// Not approved yet.
    Waiting(Box<PendingLink>),
}

impl PendingLink {
    /// Creates this device's keys in `home` and files the link request for `username`.
    pub async fn start(
        home: &Path,
        server: &str,
        username: &str,
        passphrase: Option<&str>,
    ) -> Result<PendingLink, Error> {
        let username = Username::new(username)?;
        let mut profile = new_profile(home, passphrase)?;
        let provider = &profile.mls.provider;
        let random = |n| {
            provider
                .rand()
                .random_vec(n)
                .map_err(|_| Error::Crypto("no randomness"))
        };
        let device_id = DeviceId::from_slice(&random(16)?)?;
        let mut secret = Zeroizing::new([0u8; 10]);
        secret.copy_from_slice(&random(10)?);
        let ikm = Zeroizing::new(random(32)?);
        let hpke = provider
            .crypto()
            .derive_hpke_keypair(hpke_config(), &ikm)
            .map_err(|_| Error::Crypto("key generation failed"))?;
        let device_key = SignatureKeyPair::new(SignatureScheme::ED25519)
            .map_err(|_| Error::Crypto("key generation failed"))?;
        let keys = link_keys(provider.crypto(), &secret)?;
        let who = DeviceIdentity {
            username: username.clone(),
            device_id,
        };
        let key_packages = initial_key_packages(
            provider,
            &device_key,
            &who,
            ClientSettings::default().key_packages_target as usize,
        )?;
        let mut request = LinkRequest {
            link_id: keys.link_id.clone(),
            username: username.clone(),
            device_id,
            device_key: device_key.to_public_vec(),
            hpke_key: hpke.public.clone(),
            key_packages,
            tag: Vec::new(),
        };
        request.tag = mac(
            provider.crypto(),
            &keys.mac_key,
            &link_request_message(&request),
        )?;
        // The key packages' private halves are durable before the public halves leave.
        profile.atomically(|_, _, _| Ok(()))?;
        let api = Api::new(server, device_id)?;
        api.link_request(&request)
            .await
            .map_err(unknown_user(&username))?;
        Ok(PendingLink {
            profile,
            api,
            server: server.to_owned(),
            username,
            device_id,
            device_key,
            hpke_private: hpke.private,
            secret,
            keys,
        })
    }

    /// The code to type (or scan) on a device of the account: `XXXX-XXXX-XXXX-XXXX`.
    pub fn code(&self) -> String {
        encode_link_code(&self.secret)
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// The id the server files this request under (derived from the code, one way; the server
    /// sees it, so it is no secret).
    pub fn link_id(&self) -> &str {
        &self.keys.link_id
    }

    /// Checks whether the request was approved; if so, completes this device's profile.
    pub async fn try_finish(mut self) -> Result<LinkStep, Error> {
        let signer = DeviceSigner(&self.device_key);
        let approval = match self.api.link_approval(&signer, &self.keys.link_id).await {
            Ok(a) => a,
            // Not registered yet (cannot sign in: the server does not know the device yet), or
            // registered but not recorded yet.
            Err(
                Error::DeviceRemoved
                | Error::Server {
                    code: ErrorCode::NotFound | ErrorCode::Unauthorized,
                    ..
                },
            ) => return Ok(LinkStep::Waiting(Box::new(self))),
            Err(e) => return Err(e),
        };
        let crypto = self.profile.mls.provider.crypto();
        let forged = || {
            security(
                SecurityAlert::InvalidProof,
                "the approval does not match the code on this device: it was not made by a device of the account",
            )
        };
        if !mac_ok(
            crypto,
            &self.keys.mac_key,
            &link_approval_message(&self.keys.link_id, &approval),
            &approval.tag,
        ) {
            return Err(forged());
        }
        let sealed = HpkeCiphertext {
            kem_output: approval.kem_output.clone().into(),
            ciphertext: approval.ciphertext.clone().into(),
        };
        let plain = Zeroizing::new(
            crypto
                .hpke_open(
                    hpke_config(),
                    &sealed,
                    &self.hpke_private,
                    HPKE_INFO,
                    self.keys.link_id.as_bytes(),
                )
                .map_err(|_| forged())?,
        );
        let payload: LinkPayload<SignatureKeyPair> =
            serde_json::from_slice(&plain).map_err(|_| forged())?;
        let certified = crypto
            .verify_signature(
                SignatureScheme::ED25519,
                &device_certificate_message(
                    &self.username,
                    &self.device_id,
                    self.device_key.public(),
                ),
                payload.account_key.public(),
                &approval.certificate,
            )
            .is_ok();
        if !certified {
            return Err(forged());
        }
        let identity = Identity {
            username: self.username.clone(),
            device_id: self.device_id,
            account_key: payload.account_key,
            device_key: self.device_key,
            server: self.server,
        };
        let json =
            Zeroizing::new(serde_json::to_vec(&identity).map_err(|e| Error::Store(e.to_string()))?);
        let dir_json =
            serde_json::to_vec(&payload.directory).map_err(|e| Error::Store(e.to_string()))?;
        let linked =
            serde_json::to_vec(&payload.conversations).map_err(|e| Error::Store(e.to_string()))?;
        self.profile.atomically(|tx, sealer, _| {
            put_meta(tx, sealer, "identity", &json)?;
            put_meta(tx, sealer, "directory", &dir_json)?;
            put_meta(tx, sealer, "linked_conversations", &linked)?;
            put_meta(tx, sealer, "inbox_cursor", &0u64.to_be_bytes())
        })?;
        let mut client = Client::from_parts(self.profile, identity, self.api)?;
        // The directory must list this device, certified, under the account key received.
        let me = client.identity.username.clone();
        let entry = client.lookup_verified(&me).await?;
        let listed = entry
            .entry
            .device(client.identity.device_id)
            .is_some_and(|d| d.device_key.as_slice() == client.identity.device_key.public());
        if !listed || entry.entry.account_key.as_slice() != client.identity.account_key.public() {
            return Err(security(
                SecurityAlert::DeviceMissing,
                "the key directory does not list this device under the account key it received",
            ));
        }
        Ok(LinkStep::Linked(Box::new(client)))
    }
}

impl Client {
    /// Approves a new device showing `code`: certifies it, hands it the account key and the
    /// conversation list (sealed to it), and adds it to every conversation. A wrong code
    /// changes nothing. Returns the new device's id.
    pub async fn approve_link(&mut self, code: &str) -> Result<DeviceId, Error> {
        let secret =
            Zeroizing::new(decode_link_code(code).map_err(|e| Error::BadLinkCode(e.to_string()))?);
        let keys = link_keys(self.profile.mls.provider.crypto(), &secret)?;
        let req = self
            .api
            .link_pending(&self.identity, &keys.link_id)
            .await
            .map_err(|e| match e {
                Error::Server {
                    code: ErrorCode::NotFound,
                    ..
                } => Error::NoLinkWaiting,
                other => other,
            })?;
        let crypto = self.profile.mls.provider.crypto();
        if req.username != self.identity.username
            || req.link_id != keys.link_id
            || !mac_ok(crypto, &keys.mac_key, &link_request_message(&req), &req.tag)
        {
            let e = security(
                SecurityAlert::InvalidProof,
                "the waiting request does not match the code: the server may have swapped it; nothing was approved",
            );
            self.alert(&e)?;
            return Err(e);
        }
        let certificate = self
            .identity
            .account_key
            .sign(&device_certificate_message(
                &self.identity.username,
                &req.device_id,
                &req.device_key,
            ))
            .map_err(|_| Error::Crypto("signing failed"))?;
        let directory = self.dir_state().await?;
        let payload = LinkPayload {
            account_key: &self.identity.account_key,
            directory,
            conversations: self
                .convs
                .iter()
                .filter(|(_, c)| c.info.active)
                .map(|(g, c)| LinkedConversation {
                    group: *g,
                    kind: c.info.kind,
                    name: c.info.name.clone(),
                    peer: c.info.peer.clone(),
                })
                .collect(),
        };
        let plain =
            Zeroizing::new(serde_json::to_vec(&payload).map_err(|e| Error::Store(e.to_string()))?);
        let crypto = self.profile.mls.provider.crypto();
        let sealed = crypto
            .hpke_seal(
                hpke_config(),
                &req.hpke_key,
                HPKE_INFO,
                keys.link_id.as_bytes(),
                &plain,
            )
            .map_err(|_| Error::Protocol("the new device's encryption key is not usable".into()))?;
        let mut approval = LinkApproval {
            certificate,
            kem_output: sealed.kem_output.as_slice().to_vec(),
            ciphertext: sealed.ciphertext.as_slice().to_vec(),
            tag: Vec::new(),
        };
        approval.tag = mac(
            crypto,
            &keys.mac_key,
            &link_approval_message(&keys.link_id, &approval),
        )?;
        self.api
            .link_approve(&self.identity, &keys.link_id, &approval)
            .await?;
        let me = self.identity.username.clone();
        // The entry now lists the new device (the approval waited for its epoch).
        self.lookup_verified(&me).await?;
        for group in self.active_groups() {
            self.add_members_to(group, std::slice::from_ref(&me))
                .await?;
        }
        Ok(req.device_id)
    }

    /// This account's devices, from its verified directory entry.
    pub async fn devices(&mut self) -> Result<Vec<DeviceEntry>, Error> {
        let me = self.identity.username.clone();
        let verified = self.lookup_verified(&me).await?;
        let mut out: Vec<DeviceEntry> = verified
            .entry
            .devices
            .iter()
            .map(|d| DeviceEntry {
                device: d.id(),
                you: d.id() == self.identity.device_id,
                certified: true,
            })
            .collect();
        out.extend(verified.uncertified.iter().map(|id| DeviceEntry {
            device: *id,
            you: false,
            certified: false,
        }));
        Ok(out)
    }

    /// The device of this account named by `name`: its id, or a unique prefix of it (at least
    /// 4 hex digits, such as the short ids events show), as git takes hashes.
    pub async fn own_device(&mut self, name: &str) -> Result<DeviceId, Error> {
        if let Ok(id) = name.parse::<DeviceId>() {
            return Ok(id);
        }
        let prefix = name;
        let wanted = prefix.to_ascii_lowercase();
        if wanted.len() < 4 || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::BadDeviceId(prefix.to_owned()));
        }
        let me = self.identity.username.clone();
        let entry = self.lookup_verified(&me).await?;
        let hits: Vec<DeviceId> = entry
            .entry
            .devices
            .iter()
            .map(|d| d.id())
            .filter(|id| id.to_string().starts_with(&wanted))
            .collect();
        match hits.as_slice() {
            [one] => Ok(*one),
            [] => Err(Error::UnknownDevice(prefix.to_owned())),
            many => Err(Error::AmbiguousDevice(
                prefix.to_owned(),
                many.iter()
                    .map(DeviceId::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    /// Removes another device of this account (see [`own_device`](Self::own_device) for finding
    /// it by a prefix of its id) from the key directory (it can no longer sign in) and from every conversation (it cannot
    /// read what is sent after).
    pub async fn remove_device(&mut self, device: DeviceId) -> Result<(), Error> {
        if device == self.identity.device_id {
            return Err(Error::OwnDevice);
        }
        self.api
            .remove_device(&self.identity, device)
            .await
            .map_err(|e| match e {
                Error::Server {
                    code: ErrorCode::NotFound,
                    ..
                } => Error::UnknownDevice(device.to_string()),
                other => other,
            })?;
        let me = self.identity.username.clone();
        self.lookup_verified(&me).await?;
        for group in self.active_groups() {
            let leaves: Vec<LeafNodeIndex> = load_group(&self.profile.mls.provider, group)?
                .members()
                .filter(|m| credential_user(&m.credential).is_some_and(|d| d.device_id == device))
                .map(|m| m.index)
                .collect();
            if leaves.is_empty() {
                continue;
            }
            self.commit(group, move |g, p, s| {
                let (commit, welcome, _) = g.remove_members(p, s, &leaves).map_err(Error::mls)?;
                Ok((commit, welcome))
            })
            .await?;
        }
        Ok(())
    }
}
