//! akd's `Database` trait over our [`Store`]: akd records become plain byte rows, so any backend
//! that implements the `directory_*` methods of `Store` persists the key directory.
//!
//! Record encoding (the key is akd's own binary key, whose first byte is the record type):
//! - the tree header (`Azks`): `latest_epoch u64 ‖ num_nodes u64`;
//! - a tree node: the latest node, then `0` or `1` and the previous node; a node is
//!   `last_epoch u64 ‖ min_descendant_epoch u64 ‖ parent label ‖ type u8 ‖ left ‖ right ‖ hash`,
//!   where a label is `len u32 ‖ 32 bytes` and a child is `0`, or `1` and a label.
//!
//! Value versions go to their own rows (`DirectoryValueRow`), as akd looks them up by label.

use std::collections::HashMap;
use std::sync::Arc;

use akd::errors::StorageError;
use akd::storage::types::{
    DbRecord, KeyData, StorageType, ValueState, ValueStateKey, ValueStateRetrievalFlag,
};
use akd::storage::{Database, DbSetState, Storable};
use akd::tree_node::{TreeNode, TreeNodeWithPreviousValue};
use akd::{AkdLabel, AkdValue, NodeLabel};
use async_trait::async_trait;

use crate::storage::{DirectoryValueRow, DirectoryWrite, Store, StoreError};

/// The key directory's storage, kept by the server's store.
#[derive(Clone)]
pub struct AkdStore {
    store: Arc<dyn Store>,
}

impl AkdStore {
    /// Wraps a store.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

fn storage_error(e: StoreError) -> StorageError {
    match e {
        StoreError::NotFound => StorageError::NotFound("directory record".into()),
        other => StorageError::Connection(other.to_string()),
    }
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Other(format!("a stored directory {what} is damaged"))
}

fn put_label(out: &mut Vec<u8>, label: &NodeLabel) {
    out.extend_from_slice(&label.label_len.to_be_bytes());
    out.extend_from_slice(&label.label_val);
}

fn put_child(out: &mut Vec<u8>, label: &Option<NodeLabel>) {
    match label {
        Some(l) => {
            out.push(1);
            put_label(out, l);
        }
        None => out.push(0),
    }
}

fn put_node(out: &mut Vec<u8>, node: &TreeNode) {
    out.extend_from_slice(&node.last_epoch.to_be_bytes());
    out.extend_from_slice(&node.min_descendant_epoch.to_be_bytes());
    put_label(out, &node.parent);
    out.push(node.node_type as u8);
    put_child(out, &node.left_child);
    put_child(out, &node.right_child);
    out.extend_from_slice(&node.hash.0);
}

/// Encodes a tree header or a tree node (value versions are rows of their own).
fn encode(record: &DbRecord) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    match record {
        DbRecord::Azks(azks) => {
            out.extend_from_slice(&azks.latest_epoch.to_be_bytes());
            out.extend_from_slice(&azks.num_nodes.to_be_bytes());
        }
        DbRecord::TreeNode(node) => {
            put_node(&mut out, &node.latest_node);
            match &node.previous_node {
                Some(prev) => {
                    out.push(1);
                    put_node(&mut out, prev);
                }
                None => out.push(0),
            }
        }
        DbRecord::ValueState(_) => return None,
    }
    Some(out)
}

/// A cursor over an encoded record.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_be_bytes)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn label(&mut self) -> Option<([u8; 32], u32)> {
        let len = u32::from_be_bytes(self.take::<4>()?);
        Some((self.take::<32>()?, len))
    }
    fn child(&mut self) -> Option<Option<NodeLabel>> {
        match self.u8()? {
            0 => Some(None),
            1 => self.label().map(|(v, l)| Some(NodeLabel::new(v, l))),
            _ => None,
        }
    }
}

struct NodeFields {
    last_epoch: u64,
    min_descendant: u64,
    parent: ([u8; 32], u32),
    node_type: u8,
    left: Option<NodeLabel>,
    right: Option<NodeLabel>,
    hash: [u8; 32],
}

fn read_node(r: &mut Reader<'_>) -> Option<NodeFields> {
    Some(NodeFields {
        last_epoch: r.u64()?,
        min_descendant: r.u64()?,
        parent: r.label()?,
        node_type: r.u8().filter(|t| (1..=3).contains(t))?,
        left: r.child()?,
        right: r.child()?,
        hash: r.take::<32>()?,
    })
}

/// Decodes a record stored under `key`.
fn decode(key: &[u8], bytes: &[u8]) -> Result<DbRecord, StorageError> {
    let mut r = Reader(bytes);
    match key.first().copied() {
        Some(t) if t == StorageType::Azks as u8 => {
            let (epoch, nodes) = r
                .u64()
                .zip(r.u64())
                .filter(|_| r.0.is_empty())
                .ok_or_else(|| corrupt("tree header"))?;
            Ok(DbRecord::Azks(DbRecord::build_azks(epoch, nodes)))
        }
        Some(t) if t == StorageType::TreeNode as u8 => {
            let node_key = TreeNodeWithPreviousValue::key_from_full_binary(key)
                .map_err(|_| corrupt("tree node key"))?;
            let parsed = (|| {
                let latest = read_node(&mut r)?;
                let previous = match r.u8()? {
                    0 => None,
                    1 => Some(read_node(&mut r)?),
                    _ => return None,
                };
                r.0.is_empty().then_some((latest, previous))
            })();
            let (n, p) = parsed.ok_or_else(|| corrupt("tree node"))?;
            Ok(DbRecord::TreeNode(
                DbRecord::build_tree_node_with_previous_value(
                    node_key.0.label_val,
                    node_key.0.label_len,
                    n.last_epoch,
                    n.min_descendant,
                    n.parent.0,
                    n.parent.1,
                    n.node_type,
                    n.left,
                    n.right,
                    n.hash,
                    p.as_ref().map(|p| p.last_epoch),
                    p.as_ref().map(|p| p.min_descendant),
                    p.as_ref().map(|p| p.parent.0),
                    p.as_ref().map(|p| p.parent.1),
                    p.as_ref().map(|p| p.node_type),
                    p.as_ref().and_then(|p| p.left),
                    p.as_ref().and_then(|p| p.right),
                    p.as_ref().map(|p| p.hash),
                ),
            ))
        }
        _ => Err(corrupt("record type")),
    }
}

fn value_state(row: DirectoryValueRow) -> ValueState {
    DbRecord::build_user_state(
        row.label,
        row.value,
        row.version,
        row.node_label_len,
        row.node_label_val,
        row.epoch,
    )
}

/// Picks the state a flag asks for out of one label's states (ordered by epoch).
fn select(states: &[ValueState], flag: ValueStateRetrievalFlag) -> Option<&ValueState> {
    match flag {
        ValueStateRetrievalFlag::MaxEpoch => states.last(),
        ValueStateRetrievalFlag::MinEpoch => states.first(),
        ValueStateRetrievalFlag::SpecificVersion(v) => states.iter().find(|s| s.version == v),
        ValueStateRetrievalFlag::SpecificEpoch(e) => states.iter().find(|s| s.epoch == e),
        ValueStateRetrievalFlag::LeqEpoch(e) => states.iter().rev().find(|s| s.epoch <= e),
    }
}

impl AkdStore {
    async fn states(
        &self,
        labels: Vec<Vec<u8>>,
    ) -> Result<HashMap<Vec<u8>, Vec<ValueState>>, StorageError> {
        let rows = self
            .store
            .directory_values(labels)
            .await
            .map_err(storage_error)?;
        let mut by_label: HashMap<Vec<u8>, Vec<ValueState>> = HashMap::new();
        for row in rows {
            by_label
                .entry(row.label.clone())
                .or_default()
                .push(value_state(row));
        }
        Ok(by_label)
    }

    async fn fetch<St: Storable>(
        &self,
        ids: &[St::StorageKey],
    ) -> Result<Vec<DbRecord>, StorageError> {
        let keys: Vec<Vec<u8>> = ids.iter().map(St::get_full_binary_key_id).collect();
        if St::data_type() == StorageType::ValueState {
            let wanted: Vec<ValueStateKey> = keys
                .iter()
                .filter_map(|k| ValueState::key_from_full_binary(k).ok())
                .collect();
            let states = self
                .states(wanted.iter().map(|k| k.0.clone()).collect())
                .await?;
            return Ok(wanted
                .iter()
                .filter_map(|ValueStateKey(label, epoch)| {
                    states
                        .get(label)?
                        .iter()
                        .find(|s| s.epoch == *epoch)
                        .cloned()
                        .map(DbRecord::ValueState)
                })
                .collect());
        }
        let rows = self
            .store
            .directory_nodes(keys)
            .await
            .map_err(storage_error)?;
        rows.iter().map(|(k, v)| decode(k, v)).collect()
    }
}

#[async_trait]
impl Database for AkdStore {
    async fn set(&self, record: DbRecord) -> Result<(), StorageError> {
        self.batch_set(vec![record], DbSetState::General).await
    }

    async fn batch_set(
        &self,
        records: Vec<DbRecord>,
        _state: DbSetState,
    ) -> Result<(), StorageError> {
        let mut write = DirectoryWrite::default();
        for record in records {
            match record {
                DbRecord::ValueState(s) => write.values.push(DirectoryValueRow {
                    label: s.username.0,
                    epoch: s.epoch,
                    version: s.version,
                    node_label_len: s.label.label_len,
                    node_label_val: s.label.label_val,
                    value: s.value.0,
                }),
                other => {
                    let key = other.get_full_binary_id();
                    let value = encode(&other).ok_or_else(|| corrupt("record"))?;
                    write.nodes.push((key, value));
                }
            }
        }
        self.store
            .directory_write(write)
            .await
            .map_err(storage_error)
    }

    async fn get<St: Storable>(&self, id: &St::StorageKey) -> Result<DbRecord, StorageError> {
        self.fetch::<St>(std::slice::from_ref(id))
            .await?
            .pop()
            .ok_or_else(|| StorageError::NotFound(format!("{:?} {id:?}", St::data_type())))
    }

    async fn batch_get<St: Storable>(
        &self,
        ids: &[St::StorageKey],
    ) -> Result<Vec<DbRecord>, StorageError> {
        self.fetch::<St>(ids).await
    }

    async fn get_user_data(&self, username: &AkdLabel) -> Result<KeyData, StorageError> {
        let states = self
            .states(vec![username.0.clone()])
            .await?
            .remove(&username.0)
            .unwrap_or_default();
        if states.is_empty() {
            return Err(StorageError::NotFound("directory label".into()));
        }
        Ok(KeyData { states })
    }

    async fn get_user_state(
        &self,
        username: &AkdLabel,
        flag: ValueStateRetrievalFlag,
    ) -> Result<ValueState, StorageError> {
        let states = self.get_user_data(username).await?.states;
        select(&states, flag)
            .cloned()
            .ok_or_else(|| StorageError::NotFound("directory value version".into()))
    }

    async fn get_user_state_versions(
        &self,
        usernames: &[AkdLabel],
        flag: ValueStateRetrievalFlag,
    ) -> Result<HashMap<AkdLabel, (u64, AkdValue)>, StorageError> {
        let states = self
            .states(usernames.iter().map(|u| u.0.clone()).collect())
            .await?;
        Ok(states
            .iter()
            .filter_map(|(label, states)| {
                let s = select(states, flag)?;
                Some((AkdLabel(label.clone()), (s.version, s.value.clone())))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "tests"
    )]

    use super::*;
    use crate::storage::sqlite::SqliteStore;

    /// akd's own storage-layer test suite, against the SQLite backend.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_akds_storage_tests() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("server.db")).unwrap();
        akd::storage::tests::run_test_cases_for_storage_impl(AkdStore::new(Arc::new(store))).await;
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let node_key = {
            let mut k = vec![StorageType::TreeNode as u8];
            k.extend_from_slice(&8u32.to_be_bytes());
            k.extend_from_slice(&[1; 32]);
            k
        };
        for bytes in [&[][..], &[0u8; 10], &[0u8; 200]] {
            assert!(decode(&node_key, bytes).is_err());
            assert!(decode(&[StorageType::Azks as u8, 1], bytes).is_err());
        }
        assert!(decode(&[], &[0u8; 16]).is_err());
    }
}
