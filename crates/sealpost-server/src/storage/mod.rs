//! The server's durable state, behind one trait so that backends can be swapped.
//!
//! The delivery logic (in `delivery`) never sees SQL: it calls [`Store`]. Every backend must pass
//! the conformance suite (`conformance.rs`, run by each backend's tests; not in the built
//! server). A write returns only once it is durable (committed and fsync'd), so the server can
//! acknowledge it to the client.

#[cfg(test)]
mod conformance;
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use sealpost_proto::{AckRequest, DeviceId, GroupId, SyncBatch, Username};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The username, device or group exists already.
    #[error("already exists")]
    Conflict,
    /// A handshake message was built on an epoch that is no longer the group's current one.
    #[error("the group has moved on to epoch {current}")]
    EpochConflict {
        /// The group's current epoch.
        current: u64,
    },
    /// The device is not a current member of the group.
    #[error("not a member of the group")]
    NotMember,
    /// No such group, user or device.
    #[error("not found")]
    NotFound,
    /// Too many short-lived records of one kind are waiting.
    #[error("too many waiting")]
    Full,
    /// An upload was continued from another offset than where it stands (or while another
    /// request of it is writing).
    #[error("the upload stands at offset {current}")]
    OffsetMismatch {
        /// Where the upload stands.
        current: u64,
    },
    /// Bytes past an upload's declared length.
    #[error("more bytes than the upload's declared length")]
    TooLong,
    /// The account's stored files would pass its quota.
    #[error("the account's quota of {quota} bytes is used up")]
    QuotaExceeded {
        /// The quota, bytes.
        quota: u64,
    },
    /// The backend failed (I/O, corruption, shutdown).
    #[error("storage backend failed: {0}")]
    Backend(String),
}

/// A new account with its first device.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// The handle.
    pub username: Username,
    /// Account public key.
    pub account_key: Vec<u8>,
    /// The first device.
    pub device: DeviceRecord,
    /// Its key packages.
    pub key_packages: Vec<KeyPackageRecord>,
}

/// A key package as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackageRecord {
    /// MLS ciphersuite code point.
    pub ciphersuite: u16,
    /// Last-resort packages are handed out when no single-use one is left, and never consumed.
    pub last_resort: bool,
    /// The serialized key package.
    pub data: Vec<u8>,
}

/// A device as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device.
    pub device_id: DeviceId,
    /// Its account.
    pub username: Username,
    /// Its public signing key.
    pub device_key: Vec<u8>,
    /// The account key's signature over it.
    pub certificate: Vec<u8>,
}

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The handle.
    pub username: Username,
    /// Account public key.
    pub account_key: Vec<u8>,
    /// Its devices.
    pub devices: Vec<DeviceRecord>,
}

/// A group as stored: the public MLS state the server validates handshakes against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// The group.
    pub group_id: GroupId,
    /// Current epoch.
    pub epoch: u64,
    /// Serialized public group state (opaque to the store).
    pub state: Vec<u8>,
}

/// A new group, created at epoch 0 with its creator as the only member.
#[derive(Debug, Clone)]
pub struct NewGroup {
    /// The group.
    pub group_id: GroupId,
    /// The creating device.
    pub creator: DeviceId,
    /// Serialized public group state.
    pub state: Vec<u8>,
}

/// A handshake message (commit or proposal) to append, validated by the delivery logic.
#[derive(Debug, Clone)]
pub struct HandshakeWrite {
    /// The group.
    pub group_id: GroupId,
    /// The sending device.
    pub sender: DeviceId,
    /// The epoch the message was built on; the write fails with `EpochConflict` otherwise.
    pub epoch: u64,
    /// The epoch after it (equal to `epoch` for a proposal).
    pub new_epoch: u64,
    /// The serialized MLS message.
    pub payload: Vec<u8>,
    /// The group's public state after it.
    pub state: Vec<u8>,
    /// Devices that join (they get `welcome` in their inbox).
    pub added: Vec<DeviceId>,
    /// Devices that leave (they still receive this message, and nothing after it).
    pub removed: Vec<DeviceId>,
    /// The Welcome for `added`.
    pub welcome: Option<Vec<u8>>,
}

/// Where a write landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Sequence number in the group log.
    pub seq: u64,
    /// Acceptance time, unix milliseconds.
    pub sent_at: u64,
    /// The group's epoch after the write. A server node whose cached copy of the group is at
    /// another epoch (another node accepted a commit) reloads it.
    pub epoch: u64,
    /// For a commit that adds devices: the inbox sequence number of each Welcome.
    pub welcomes: Vec<(DeviceId, u64)>,
    /// The message was already in the log (a retry): nothing was written, and `seq` and
    /// `sent_at` are those of the first time (`epoch` is then the group's current one).
    pub repeated: bool,
}

/// Delivery limits for one fetch.
#[derive(Debug, Clone, Default)]
pub struct FetchRequest {
    /// Inbox cursor; `None` means the server's acknowledged cursor.
    pub inbox_after: Option<u64>,
    /// Group cursors; groups left out start from the acknowledged cursor.
    pub groups: Vec<(GroupId, u64)>,
    /// Most deliveries to return.
    pub limit: u32,
}

/// A version of a directory value, as akd keeps it: one row per label and epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryValueRow {
    /// The akd label (the username's bytes).
    pub label: Vec<u8>,
    /// The epoch it was published in.
    pub epoch: u64,
    /// Its version number for this label (1, 2, ...).
    pub version: u64,
    /// The VRF-derived tree label's length in bits.
    pub node_label_len: u32,
    /// The VRF-derived tree label.
    pub node_label_val: [u8; 32],
    /// The value (an encoded `DirectoryEntry`).
    pub value: Vec<u8>,
}

/// One akd write, applied atomically: tree nodes (and the tree's header) by key, and values.
#[derive(Debug, Clone, Default)]
pub struct DirectoryWrite {
    /// `(akd binary key, encoded record)`, inserted or replaced.
    pub nodes: Vec<(Vec<u8>, Vec<u8>)>,
    /// Value versions, inserted or replaced.
    pub values: Vec<DirectoryValueRow>,
}

/// A published epoch's root hash with the directory key's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRecord {
    /// The epoch.
    pub epoch: u64,
    /// Its root hash.
    pub root: [u8; 32],
    /// The directory key's signature over it.
    pub signature: Vec<u8>,
}

/// What a short-lived record is for; each kind has its own key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PendingKind {
    /// A sign-in challenge, by the challenge bytes; the value is the device id.
    Challenge = 1,
    /// A device-link request, by link id; the value is the request and its approval.
    Link = 2,
}

/// A short-lived record that every server node must see (a sign-in challenge answered at
/// another node than the one that issued it, a link request approved through another node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRecord {
    /// What it is for.
    pub kind: PendingKind,
    /// Its key within the kind.
    pub key: Vec<u8>,
    /// The record.
    pub value: Vec<u8>,
    /// Unix seconds after which it is gone.
    pub expires_at: u64,
}

/// A stored file's id: 16 random octets, which nobody can guess.
pub type BlobId = [u8; 16];

/// Every stored file counts at least this much against its account's quota, so that a quota
/// also bounds how many files an account keeps.
pub const MIN_BLOB_CHARGE: u64 = 64 * 1024;

/// An upload to start: an encrypted file sent to one group.
#[derive(Debug, Clone)]
pub struct NewBlob {
    /// Its id.
    pub id: BlobId,
    /// The group whose members may fetch it.
    pub group: GroupId,
    /// The uploading device (the only one that may continue the upload).
    pub uploader: DeviceId,
    /// Its account, whose quota the file counts against.
    pub username: Username,
    /// Its length, declared before the upload starts.
    pub length: u64,
}

/// A stored file or an upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    /// Its id.
    pub id: BlobId,
    /// The group whose members may fetch it.
    pub group: GroupId,
    /// The uploading device.
    pub uploader: DeviceId,
    /// Its account.
    pub username: Username,
    /// Its declared length.
    pub length: u64,
    /// How many of its bytes are stored, durably.
    pub offset: u64,
    /// Whether the upload is finished (only then can it be fetched).
    pub finished: bool,
}

/// Encrypted files, stored until every recipient device has them. The embedded backend keeps
/// them in files beside its database, PostgreSQL in the database itself, where every node
/// reaches them. Like everything else the server stores, they are ciphertext it cannot open.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Starts an upload. `QuotaExceeded` if the account's files (finished or not, each counted
    /// as at least [`MIN_BLOB_CHARGE`]) and this one would pass `quota` bytes.
    async fn create_blob(&self, blob: NewBlob, quota: u64) -> Result<(), StoreError>;
    /// A file or upload, by id.
    async fn blob(&self, id: BlobId) -> Result<Option<BlobRecord>, StoreError>;
    /// Appends `data` to an unfinished upload at `offset`, and returns the new offset once the
    /// bytes are durable. `OffsetMismatch` if the upload does not stand at `offset` (or another
    /// append to it is running), `TooLong` past its declared length, `NotFound` if there is no
    /// such unfinished upload.
    async fn append_blob(
        &self,
        id: BlobId,
        offset: u64,
        data: bytes::Bytes,
    ) -> Result<u64, StoreError>;
    /// Finishes an upload whose every byte is stored. `recipients` are the devices that must
    /// fetch it before it is deleted. `NotFound` if no such upload has all its bytes.
    async fn finish_blob(&self, id: BlobId, recipients: Vec<DeviceId>) -> Result<(), StoreError>;
    /// At most `max` bytes of a finished file from `from`: fewer near its end (none at it),
    /// never none before it. `NotFound` if there is no such finished file.
    async fn read_blob(
        &self,
        id: BlobId,
        from: u64,
        max: usize,
    ) -> Result<bytes::Bytes, StoreError>;
    /// Records that `device` has the file; the last recipient to have it deletes it. Whether
    /// it was deleted.
    async fn blob_received(&self, id: BlobId, device: DeviceId) -> Result<bool, StoreError>;
    /// Deletes a file or an upload.
    async fn delete_blob(&self, id: BlobId) -> Result<(), StoreError>;
    /// Deletes the uploads started before `unfinished_before_ms` and not finished, and the files
    /// finished before `finished_before_ms` (unix milliseconds). How many it deleted.
    async fn purge_blobs(
        &self,
        unfinished_before_ms: u64,
        finished_before_ms: u64,
    ) -> Result<u64, StoreError>;
}

/// The server's durable state.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates an account and its first device; `Conflict` if the username or device exists.
    async fn create_account(&self, account: NewAccount) -> Result<(), StoreError>;
    /// Looks an account up.
    async fn user(&self, username: &Username) -> Result<Option<UserRecord>, StoreError>;
    /// Looks a device up.
    async fn device(&self, device: DeviceId) -> Result<Option<DeviceRecord>, StoreError>;
    /// Adds key packages (a last-resort one replaces the previous one of its suite).
    async fn add_key_packages(
        &self,
        device: DeviceId,
        key_packages: Vec<KeyPackageRecord>,
    ) -> Result<(), StoreError>;
    /// Counts the unclaimed single-use key packages of a device for a suite.
    async fn key_package_stock(
        &self,
        device: DeviceId,
        ciphersuite: u16,
    ) -> Result<u64, StoreError>;
    /// Claims one key package of the suite for each device of the user: a single-use one while
    /// any is left (consumed), else the last-resort one (kept). Devices with neither are left out.
    async fn claim_key_packages(
        &self,
        username: &Username,
        ciphersuite: u16,
    ) -> Result<Vec<(DeviceId, Vec<u8>)>, StoreError>;
    /// Stores a session token's hash.
    async fn put_session(
        &self,
        token_hash: [u8; 32],
        device: DeviceId,
        expires_at: u64,
    ) -> Result<(), StoreError>;
    /// Looks a session up by its token's hash: the device and expiry.
    async fn session(&self, token_hash: [u8; 32]) -> Result<Option<(DeviceId, u64)>, StoreError>;
    /// Creates a group.
    async fn create_group(&self, group: NewGroup) -> Result<(), StoreError>;
    /// Loads a group's public state.
    async fn group(&self, group: GroupId) -> Result<Option<GroupRecord>, StoreError>;
    /// Appends an application message from a current member. `digest` (the payload's SHA-256)
    /// makes a retry idempotent: the sender's last message in the group, posted again, is not
    /// stored again, and the answer is where it landed the first time ([`Appended::repeated`]).
    /// A client whose answer was lost sends the same ciphertext again before anything else, and
    /// so learns what became of it. (Only the last one is kept per device: a cheap upsert per
    /// message, where an index over every message's digest cost a third of the throughput.)
    async fn append_message(
        &self,
        group: GroupId,
        sender: DeviceId,
        payload: Vec<u8>,
        digest: [u8; 32],
    ) -> Result<Appended, StoreError>;
    /// Appends a validated handshake message, updating the group state and membership.
    async fn append_handshake(&self, write: HandshakeWrite) -> Result<Appended, StoreError>;
    /// Everything pending for a device after the given cursors, inbox first.
    async fn fetch(&self, device: DeviceId, request: FetchRequest)
    -> Result<SyncBatch, StoreError>;
    /// Records what the device has committed locally.
    async fn ack(&self, device: DeviceId, ack: AckRequest) -> Result<(), StoreError>;
    /// The bytes of inbox entries (Welcomes) waiting for their devices, each stored Welcome
    /// counted once however many devices it adds: what pending invitees cost the server.
    async fn inbox_bytes(&self) -> Result<u64, StoreError>;
    /// The devices that currently receive a group's messages.
    async fn group_devices(&self, group: GroupId) -> Result<Vec<DeviceId>, StoreError>;
    /// Adds a device to an existing account, with its key packages, and queues the account's
    /// directory entry for the next epoch. `NotFound` without the account, `Conflict` if the
    /// device id or key is taken.
    async fn add_device(
        &self,
        device: DeviceRecord,
        key_packages: Vec<KeyPackageRecord>,
    ) -> Result<(), StoreError>;
    /// Removes a device of `username` (with its key packages and sessions) and queues the
    /// account's directory entry. `NotFound` if the account has no such device.
    async fn remove_device(&self, username: &Username, device: DeviceId) -> Result<(), StoreError>;
    /// Usernames whose directory entry changed since it was last published, each with a ticket
    /// to hand back to [`directory_finish_epoch`](Self::directory_finish_epoch).
    async fn directory_pending(&self) -> Result<Vec<(Username, u64)>, StoreError>;
    /// Writes akd records (one publish, atomically).
    async fn directory_write(&self, write: DirectoryWrite) -> Result<(), StoreError>;
    /// Reads akd records by key; missing keys are left out.
    async fn directory_nodes(
        &self,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError>;
    /// Every stored version of the given labels, ordered by label then epoch.
    async fn directory_values(
        &self,
        labels: Vec<Vec<u8>>,
    ) -> Result<Vec<DirectoryValueRow>, StoreError>;
    /// Records an epoch's signed root and clears the pending entries it published (those whose
    /// ticket did not change meanwhile).
    async fn directory_finish_epoch(
        &self,
        root: RootRecord,
        published: Vec<(Username, u64)>,
    ) -> Result<(), StoreError>;
    /// Takes, or confirms, the right to publish the key directory: `true` while this handle
    /// holds it. Among all servers sharing one store, one holds it at a time. A backend that only
    /// one process can open holds it always.
    async fn directory_lead(&self) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// A signed root: of the given epoch, or the latest one.
    async fn directory_root(&self, epoch: Option<u64>) -> Result<Option<RootRecord>, StoreError>;
    /// Stores a short-lived record. `Conflict` if an unexpired one has its key; `Full` if
    /// `max_of_kind` unexpired records of its kind exist already.
    async fn put_pending(
        &self,
        record: PendingRecord,
        max_of_kind: Option<u64>,
    ) -> Result<(), StoreError>;
    /// An unexpired short-lived record's value and expiry; `take` also deletes it (so that two
    /// nodes never both take one).
    async fn pending(
        &self,
        kind: PendingKind,
        key: Vec<u8>,
        take: bool,
    ) -> Result<Option<(Vec<u8>, u64)>, StoreError>;
    /// Replaces an unexpired record's value if it is still `old`; whether it did.
    async fn swap_pending(
        &self,
        kind: PendingKind,
        key: Vec<u8>,
        old: Vec<u8>,
        new: Vec<u8>,
    ) -> Result<bool, StoreError>;
    /// Sets how long the group's messages and files are kept at most, whether delivered or not
    /// (its members' disappearing-messages timer), seconds; 0 for the retention limit only.
    async fn set_group_expiry(&self, group: GroupId, seconds: u64) -> Result<(), StoreError>;
    /// Deletes the messages and files of groups with an expiry that are older than it at
    /// `now_ms`. How many it deleted.
    async fn purge_expiring(&self, now_ms: u64) -> Result<u64, StoreError>;
    /// Deletes what every recipient acknowledged, what is older than the retention limit, and
    /// expired short-lived records.
    /// Returns how many items it deleted.
    async fn purge(&self, older_than_ms: u64) -> Result<u64, StoreError>;
}
