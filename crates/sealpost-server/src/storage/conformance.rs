//! The storage conformance suite. Every backend runs [`run_all`] in its tests; a backend that
//! passes behaves as the delivery logic expects. Panics on the first failed expectation, like any
//! test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "this is a test suite"
)]

use sealpost_proto::{AckRequest, DeliveryKind, DeviceId, GroupId, Username};

use super::{
    Appended, BlobStore, DeviceRecord, FetchRequest, HandshakeWrite, KeyPackageRecord,
    MIN_BLOB_CHARGE, NewAccount, NewBlob, NewGroup, Store, StoreError,
};

/// Appends an application message with its digest (of the group and the payload, as a real
/// MLS message's payload names its group).
async fn post(
    store: &dyn Store,
    group: GroupId,
    sender: DeviceId,
    payload: Vec<u8>,
) -> Result<Appended, StoreError> {
    use openmls_traits::crypto::OpenMlsCrypto as _;
    let digest = openmls_rust_crypto::RustCrypto::default()
        .hash(
            openmls::prelude::HashType::Sha2_256,
            &[group.as_bytes().as_slice(), &payload].concat(),
        )
        .unwrap()
        .try_into()
        .unwrap();
    store.append_message(group, sender, payload, digest).await
}

fn device(n: u8) -> DeviceId {
    DeviceId::from_bytes([n; 16])
}

fn account(name: &str, n: u8, packages: usize) -> NewAccount {
    let username = Username::new(name).unwrap();
    NewAccount {
        username: username.clone(),
        account_key: vec![n; 32],
        device: DeviceRecord {
            device_id: device(n),
            username,
            device_key: vec![n + 100; 32],
            certificate: vec![n; 64],
        },
        key_packages: (0..packages)
            .map(|i| kp(SUITE, false, vec![n, i as u8, 1]))
            .chain([
                kp(SUITE, true, vec![n, 255]),
                kp(OTHER_SUITE, true, vec![n, 254]),
            ])
            .collect(),
    }
}

const SUITE: u16 = 0x004F;
const OTHER_SUITE: u16 = 0x0003;

fn kp(ciphersuite: u16, last_resort: bool, data: Vec<u8>) -> KeyPackageRecord {
    KeyPackageRecord {
        ciphersuite,
        last_resort,
        data,
    }
}

/// Creates `group` with `creator` its only member.
async fn new_group(store: &dyn Store, group: GroupId, creator: DeviceId) {
    store
        .create_group(NewGroup {
            group_id: group,
            creator,
            state: vec![0],
        })
        .await
        .unwrap();
}

fn fetch_all(after: Option<u64>, groups: Vec<(GroupId, u64)>) -> FetchRequest {
    FetchRequest {
        inbox_after: after,
        groups,
        limit: 1000,
    }
}

/// Runs every check against a fresh, empty store.
pub async fn run_all(store: &dyn Store) {
    accounts(store).await;
    key_packages(store).await;
    sessions(store).await;
    groups_and_delivery(store).await;
    one_welcome_for_many(store).await;
    devices_and_directory_queue(store).await;
    pending_records(store).await;
}

async fn pending_records(store: &dyn Store) {
    use super::{PendingKind, PendingRecord};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let record = |kind, key: &[u8], value: &[u8], expires_at| PendingRecord {
        kind,
        key: key.to_vec(),
        value: value.to_vec(),
        expires_at,
    };
    store
        .put_pending(record(PendingKind::Link, b"l1", b"v1", now + 60), Some(2))
        .await
        .unwrap();
    // A live key is taken; the same key of another kind is not.
    assert!(matches!(
        store
            .put_pending(record(PendingKind::Link, b"l1", b"v2", now + 60), Some(2))
            .await,
        Err(StoreError::Conflict)
    ));
    store
        .put_pending(record(PendingKind::Challenge, b"l1", b"c", now + 60), None)
        .await
        .unwrap();
    store
        .put_pending(record(PendingKind::Link, b"l2", b"v", now + 60), Some(2))
        .await
        .unwrap();
    assert!(matches!(
        store
            .put_pending(record(PendingKind::Link, b"l3", b"v", now + 60), Some(2))
            .await,
        Err(StoreError::Full)
    ));
    // Compare-and-swap: only from the value it holds.
    let l1 = b"l1".to_vec();
    assert!(
        !store
            .swap_pending(PendingKind::Link, l1.clone(), b"no".to_vec(), b"x".to_vec())
            .await
            .unwrap()
    );
    assert!(
        store
            .swap_pending(
                PendingKind::Link,
                l1.clone(),
                b"v1".to_vec(),
                b"v3".to_vec()
            )
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .pending(PendingKind::Link, l1.clone(), false)
            .await
            .unwrap(),
        Some((b"v3".to_vec(), now + 60))
    );
    // Taking removes it.
    let c = store
        .pending(PendingKind::Challenge, l1.clone(), true)
        .await
        .unwrap();
    assert_eq!(c, Some((b"c".to_vec(), now + 60)));
    assert_eq!(
        store
            .pending(PendingKind::Challenge, l1.clone(), true)
            .await
            .unwrap(),
        None
    );
    // An expired record is gone for readers, and its key can be used again.
    store
        .put_pending(record(PendingKind::Challenge, b"old", b"o", now - 5), None)
        .await
        .unwrap();
    assert_eq!(
        store
            .pending(PendingKind::Challenge, b"old".to_vec(), false)
            .await
            .unwrap(),
        None
    );
    store
        .put_pending(record(PendingKind::Challenge, b"old", b"n", now + 60), None)
        .await
        .unwrap();
    store.purge(0).await.unwrap();
    assert!(
        store
            .pending(PendingKind::Challenge, b"old".to_vec(), false)
            .await
            .unwrap()
            .is_some()
    );
}

async fn devices_and_directory_queue(store: &dyn Store) {
    store
        .create_account(account("dir_fred", 7, 0))
        .await
        .unwrap();
    let fred = Username::new("dir_fred").unwrap();
    let second = DeviceRecord {
        device_id: device(8),
        username: fred.clone(),
        device_key: vec![108; 32],
        certificate: vec![8; 64],
    };
    store.add_device(second.clone(), vec![]).await.unwrap();
    // Taken id or key, or an unknown account: refused.
    assert!(matches!(
        store.add_device(second.clone(), vec![]).await,
        Err(StoreError::Conflict)
    ));
    let stranger = DeviceRecord {
        username: Username::new("dir_nobody").unwrap(),
        device_id: device(9),
        ..second.clone()
    };
    assert!(matches!(
        store.add_device(stranger, vec![]).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.user(&fred).await.unwrap().unwrap().devices.len(), 2);

    // Every change is queued once per name, with a ticket that grows.
    let pending = store.directory_pending().await.unwrap();
    let fred_ticket = pending.iter().find(|(u, _)| *u == fred).unwrap().1;
    assert_eq!(pending.iter().filter(|(u, _)| *u == fred).count(), 1);
    store.remove_device(&fred, device(8)).await.unwrap();
    assert!(matches!(
        store.remove_device(&fred, device(8)).await,
        Err(StoreError::NotFound)
    ));
    let newer = store.directory_pending().await.unwrap();
    let newer_ticket = newer.iter().find(|(u, _)| *u == fred).unwrap().1;
    assert!(newer_ticket > fred_ticket);
    // Finishing an epoch that published the old ticket keeps the newer change queued; the
    // current ticket clears it.
    let root = super::RootRecord {
        epoch: 1,
        root: [1; 32],
        signature: vec![2; 64],
    };
    store
        .directory_finish_epoch(root.clone(), vec![(fred.clone(), fred_ticket)])
        .await
        .unwrap();
    assert!(
        store
            .directory_pending()
            .await
            .unwrap()
            .iter()
            .any(|(u, _)| *u == fred)
    );
    store
        .directory_finish_epoch(root.clone(), vec![(fred.clone(), newer_ticket)])
        .await
        .unwrap();
    assert!(
        !store
            .directory_pending()
            .await
            .unwrap()
            .iter()
            .any(|(u, _)| *u == fred)
    );
    assert_eq!(
        store.directory_root(None).await.unwrap(),
        Some(root.clone())
    );
    assert_eq!(store.directory_root(Some(1)).await.unwrap(), Some(root));
    assert_eq!(store.directory_root(Some(2)).await.unwrap(), None);
    // Beyond what the backends store (2^63 - 1): as unknown as any other epoch, not an error.
    assert_eq!(store.directory_root(Some(u64::MAX)).await.unwrap(), None);
    assert!(store.directory_lead().await.unwrap());
}

/// Two handles on one store (two server nodes): competing commits for one epoch, sent at the
/// same moment, are accepted exactly once; messages from both get distinct sequence numbers; a
/// key package is handed out once. With `one_publisher`, only one of them may publish the key
/// directory.
pub async fn competing_nodes(a: &dyn Store, b: &dyn Store, one_publisher: bool) {
    a.create_account(account("race_gina", 10, 1)).await.unwrap();
    b.create_account(account("race_hank", 11, 1)).await.unwrap();
    let (gina, hank) = (device(10), device(11));
    let g = GroupId::from_bytes([77; 16]);
    a.create_group(NewGroup {
        group_id: g,
        creator: gina,
        state: vec![0],
    })
    .await
    .unwrap();
    let add = HandshakeWrite {
        group_id: g,
        sender: gina,
        epoch: 0,
        new_epoch: 1,
        payload: b"add".to_vec(),
        state: vec![1],
        added: vec![hank],
        removed: vec![],
        welcome: Some(b"w".to_vec()),
    };
    b.append_handshake(add).await.unwrap();
    for round in 1..=20u64 {
        let commit = |sender, tag: u8| HandshakeWrite {
            group_id: g,
            sender,
            epoch: round,
            new_epoch: round + 1,
            payload: vec![tag; 4],
            state: vec![tag],
            added: vec![],
            removed: vec![],
            welcome: None,
        };
        let (x, y) = tokio::join!(
            a.append_handshake(commit(gina, 1)),
            b.append_handshake(commit(hank, 2))
        );
        let won = [x.is_ok(), y.is_ok()];
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: {x:?} {y:?}"
        );
        for lost in [x, y].into_iter().filter_map(Result::err) {
            assert!(
                matches!(lost, StoreError::EpochConflict { current } if current == round + 1),
                "{lost:?}"
            );
        }
        let state = a.group(g).await.unwrap().unwrap();
        assert_eq!(state.epoch, round + 1);
        assert_eq!(state.state, if won[0] { vec![1] } else { vec![2] });
    }
    let mut sends = Vec::new();
    for i in 0..50u8 {
        sends.push(async move {
            let (store, sender) = if i % 2 == 0 { (a, gina) } else { (b, hank) };
            post(store, g, sender, vec![i]).await.unwrap().seq
        });
    }
    let mut seqs = futures_util::future::join_all(sends).await;
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 50, "every message has its own sequence number");
    let batch = a
        .fetch(
            hank,
            FetchRequest {
                inbox_after: Some(0),
                groups: vec![(g, 0)],
                limit: 1000,
            },
        )
        .await
        .unwrap();
    let logged: Vec<u64> = batch
        .deliveries
        .iter()
        .filter(|d| d.kind == DeliveryKind::Group)
        .map(|d| d.group_seq)
        .collect();
    assert_eq!(logged, (2..=71).collect::<Vec<_>>(), "no gaps, in order");

    // Gina has one single-use package and a last-resort one: claimed at once from both nodes,
    // the single-use one goes to exactly one of them.
    let name = Username::new("race_gina").unwrap();
    let (x, y) = tokio::join!(
        a.claim_key_packages(&name, SUITE),
        b.claim_key_packages(&name, SUITE)
    );
    let mut got = vec![x.unwrap()[0].1.clone(), y.unwrap()[0].1.clone()];
    got.sort();
    assert_eq!(got, vec![vec![10, 0, 1], vec![10, 255]]);
    // The first to ask holds the right to publish the directory.
    let (la, lb) = (
        a.directory_lead().await.unwrap(),
        b.directory_lead().await.unwrap(),
    );
    assert!(la);
    assert_eq!(lb, !one_publisher);
}

async fn accounts(store: &dyn Store) {
    store
        .create_account(account("acc_alice", 1, 0))
        .await
        .unwrap();
    assert!(matches!(
        store.create_account(account("acc_alice", 2, 0)).await,
        Err(StoreError::Conflict)
    ));
    // Same device id under another name is refused too, and leaves no account behind.
    assert!(matches!(
        store.create_account(account("acc_other", 1, 0)).await,
        Err(StoreError::Conflict)
    ));
    assert!(
        store
            .user(&Username::new("acc_other").unwrap())
            .await
            .unwrap()
            .is_none()
    );
    let user = store
        .user(&Username::new("acc_alice").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.account_key, vec![1; 32]);
    assert_eq!(user.devices.len(), 1);
    assert_eq!(user.devices[0].device_id, device(1));
    assert_eq!(
        store.device(device(1)).await.unwrap().unwrap().device_key,
        vec![101; 32]
    );
    assert!(store.device(device(99)).await.unwrap().is_none());
}

async fn key_packages(store: &dyn Store) {
    store.create_account(account("kp_bob", 3, 2)).await.unwrap();
    let bob = Username::new("kp_bob").unwrap();
    assert_eq!(store.key_package_stock(device(3), SUITE).await.unwrap(), 2);
    assert_eq!(
        store
            .key_package_stock(device(3), OTHER_SUITE)
            .await
            .unwrap(),
        0
    );
    let first = store.claim_key_packages(&bob, SUITE).await.unwrap();
    let second = store.claim_key_packages(&bob, SUITE).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_ne!(
        first[0].1, second[0].1,
        "a single-use key package is handed out once"
    );
    assert_eq!(store.key_package_stock(device(3), SUITE).await.unwrap(), 0);
    // Stock empty: the last-resort package, again and again; suites are kept apart.
    let lr1 = store.claim_key_packages(&bob, SUITE).await.unwrap();
    let lr2 = store.claim_key_packages(&bob, SUITE).await.unwrap();
    assert_eq!(lr1[0].1, vec![3, 255]);
    assert_eq!(lr1, lr2);
    assert_eq!(
        store.claim_key_packages(&bob, OTHER_SUITE).await.unwrap()[0].1,
        vec![3, 254]
    );
    assert!(
        store
            .claim_key_packages(&bob, 0x0001)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .add_key_packages(
            device(3),
            vec![
                kp(SUITE, false, vec![7]),
                kp(SUITE, false, vec![8]),
                kp(SUITE, true, vec![9]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(store.key_package_stock(device(3), SUITE).await.unwrap(), 2);
    assert_eq!(
        store.claim_key_packages(&bob, SUITE).await.unwrap()[0].1,
        vec![7]
    );
    store.claim_key_packages(&bob, SUITE).await.unwrap();
    // The new last-resort package replaced the old one.
    assert_eq!(
        store.claim_key_packages(&bob, SUITE).await.unwrap()[0].1,
        vec![9]
    );
    assert!(matches!(
        store
            .claim_key_packages(&Username::new("nobody").unwrap(), SUITE)
            .await,
        Err(StoreError::NotFound)
    ));
}

async fn sessions(store: &dyn Store) {
    store
        .put_session([9; 32], device(1), u64::MAX / 2)
        .await
        .unwrap();
    assert_eq!(
        store.session([9; 32]).await.unwrap(),
        Some((device(1), u64::MAX / 2))
    );
    assert_eq!(store.session([8; 32]).await.unwrap(), None);
}

async fn groups_and_delivery(store: &dyn Store) {
    store
        .create_account(account("grp_carol", 4, 1))
        .await
        .unwrap();
    store
        .create_account(account("grp_dave", 5, 1))
        .await
        .unwrap();
    let (carol, dave) = (device(4), device(5));
    let g = GroupId::from_bytes([42; 16]);

    new_group(store, g, carol).await;
    assert!(matches!(
        store
            .create_group(NewGroup {
                group_id: g,
                creator: dave,
                state: vec![0]
            })
            .await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.group(g).await.unwrap().unwrap().epoch, 0);

    // Only members may post.
    assert!(matches!(
        post(store, g, dave, vec![1]).await,
        Err(StoreError::NotMember)
    ));
    let unknown = GroupId::from_bytes([43; 16]);
    assert!(matches!(
        post(store, unknown, carol, vec![1]).await,
        Err(StoreError::NotMember)
    ));

    let m1 = post(store, g, carol, b"m1".to_vec()).await.unwrap();
    assert_eq!((m1.seq, m1.repeated), (1, false));
    // The same message again (a retry whose first answer was lost): the first answer, and
    // nothing stored twice.
    let again = post(store, g, carol, b"m1".to_vec()).await.unwrap();
    assert_eq!(
        again,
        Appended {
            repeated: true,
            ..m1.clone()
        }
    );
    // The same bytes from someone else are not a retry of theirs (and not a member's: refused).
    assert!(matches!(
        post(store, g, dave, b"m1".to_vec()).await,
        Err(StoreError::NotMember)
    ));

    // Carol adds dave: commit at seq 2, welcome in dave's inbox.
    let add = HandshakeWrite {
        group_id: g,
        sender: carol,
        epoch: 0,
        new_epoch: 1,
        payload: b"commit-add".to_vec(),
        state: vec![1],
        added: vec![dave],
        removed: vec![],
        welcome: Some(b"welcome".to_vec()),
    };
    let appended = store.append_handshake(add.clone()).await.unwrap();
    assert_eq!(appended.seq, 2);
    assert_eq!(appended.welcomes, vec![(dave, 1)]);
    // A second commit on the same epoch loses.
    assert!(matches!(
        store.append_handshake(add).await,
        Err(StoreError::EpochConflict { current: 1 })
    ));
    let rec = store.group(g).await.unwrap().unwrap();
    assert_eq!((rec.epoch, rec.state), (1, vec![1]));
    let mut devices = store.group_devices(g).await.unwrap();
    devices.sort();
    assert_eq!(devices, vec![carol, dave]);

    let m3 = post(store, g, dave, b"m3".to_vec()).await.unwrap();
    assert_eq!(m3.seq, 3);

    // Dave sees the welcome, then only what follows the commit that added him.
    let batch = store.fetch(dave, fetch_all(None, vec![])).await.unwrap();
    let kinds: Vec<_> = batch
        .deliveries
        .iter()
        .map(|d| (d.kind, d.inbox_seq, d.group_seq))
        .collect();
    assert_eq!(
        kinds,
        vec![(DeliveryKind::Inbox, 1, 2), (DeliveryKind::Group, 0, 3)]
    );
    assert_eq!(batch.deliveries[1].payload.as_slice(), b"m3");
    assert_eq!(batch.more, 0);

    // Carol sees her whole log; cursors and limits are honoured.
    let batch = store.fetch(carol, fetch_all(None, vec![])).await.unwrap();
    assert_eq!(
        batch
            .deliveries
            .iter()
            .map(|d| d.group_seq)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let batch = store
        .fetch(carol, fetch_all(None, vec![(g, 2)]))
        .await
        .unwrap();
    assert_eq!(
        batch
            .deliveries
            .iter()
            .map(|d| d.group_seq)
            .collect::<Vec<_>>(),
        vec![3]
    );
    let batch = store
        .fetch(
            carol,
            FetchRequest {
                inbox_after: None,
                groups: vec![],
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!((batch.deliveries.len(), batch.more), (2, 1));

    // Cursors beyond any sequence number are fine (and find nothing).
    let far = store
        .fetch(carol, fetch_all(Some(u64::MAX), vec![(g, u64::MAX)]))
        .await
        .unwrap();
    assert!(far.deliveries.is_empty());

    // Acknowledgements move the default cursor.
    store
        .ack(
            dave,
            AckRequest {
                inbox: Some(1),
                groups: vec![(g, 3)],
            },
        )
        .await
        .unwrap();
    assert!(
        store
            .fetch(dave, fetch_all(None, vec![]))
            .await
            .unwrap()
            .deliveries
            .is_empty()
    );

    // Carol removes dave: he receives the removal commit, then nothing more.
    let remove = HandshakeWrite {
        group_id: g,
        sender: carol,
        epoch: 1,
        new_epoch: 2,
        payload: b"commit-remove".to_vec(),
        state: vec![2],
        added: vec![],
        removed: vec![dave],
        welcome: None,
    };
    assert_eq!(store.append_handshake(remove).await.unwrap().seq, 4);
    assert!(matches!(
        post(store, g, dave, vec![1]).await,
        Err(StoreError::NotMember)
    ));
    post(store, g, carol, b"m5".to_vec()).await.unwrap();
    let batch = store.fetch(dave, fetch_all(None, vec![])).await.unwrap();
    assert_eq!(
        batch
            .deliveries
            .iter()
            .map(|d| d.group_seq)
            .collect::<Vec<_>>(),
        vec![4]
    );
    assert_eq!(store.group_devices(g).await.unwrap(), vec![carol]);

    // Purge drops what everyone acknowledged, nothing else.
    store
        .ack(
            dave,
            AckRequest {
                inbox: None,
                groups: vec![(g, 4)],
            },
        )
        .await
        .unwrap();
    store
        .ack(
            carol,
            AckRequest {
                inbox: None,
                groups: vec![(g, 3)],
            },
        )
        .await
        .unwrap();
    store.purge(0).await.unwrap();
    let batch = store
        .fetch(carol, fetch_all(None, vec![(g, 0)]))
        .await
        .unwrap();
    assert_eq!(
        batch
            .deliveries
            .iter()
            .map(|d| d.group_seq)
            .collect::<Vec<_>>(),
        vec![4, 5]
    );
    // Retention drops everything older than the limit.
    store.purge(u64::MAX / 2).await.unwrap();
    assert!(
        store
            .fetch(carol, fetch_all(None, vec![(g, 0)]))
            .await
            .unwrap()
            .deliveries
            .is_empty()
    );
}

/// Writes one account, group and message (for reopen tests).
/// A commit that adds several devices leaves its Welcome stored once: each device fetches it,
/// and it goes when the last of them has acknowledged it (or with the retention time).
async fn one_welcome_for_many(store: &dyn Store) {
    let names = ["wel_erin", "wel_finn", "wel_gus", "wel_hal"];
    for (i, name) in (20u8..).zip(names) {
        store.create_account(account(name, i, 1)).await.unwrap();
    }
    let (erin, joiners) = (device(20), [device(21), device(22), device(23)]);
    let g = GroupId::from_bytes([44; 16]);
    new_group(store, g, erin).await;
    let before = store.inbox_bytes().await.unwrap();
    let welcome = vec![7u8; 1000];
    let appended = store
        .append_handshake(HandshakeWrite {
            group_id: g,
            sender: erin,
            epoch: 0,
            new_epoch: 1,
            payload: b"commit-add-3".to_vec(),
            state: vec![1],
            added: joiners.to_vec(),
            removed: vec![],
            welcome: Some(welcome.clone()),
        })
        .await
        .unwrap();
    assert_eq!(
        appended.welcomes,
        joiners.iter().map(|d| (*d, 1)).collect::<Vec<_>>()
    );
    assert_eq!(store.inbox_bytes().await.unwrap() - before, 1000);
    for (i, joiner) in joiners.into_iter().enumerate() {
        let batch = store.fetch(joiner, fetch_all(None, vec![])).await.unwrap();
        let first = &batch.deliveries[0];
        assert_eq!(
            (first.kind, first.inbox_seq, first.group_seq),
            (DeliveryKind::Inbox, 1, 1)
        );
        assert_eq!(first.payload.as_slice(), welcome.as_slice());
        store
            .ack(
                joiner,
                AckRequest {
                    inbox: Some(1),
                    groups: vec![],
                },
            )
            .await
            .unwrap();
        let left = if i + 1 < joiners.len() { 1000 } else { 0 };
        assert_eq!(store.inbox_bytes().await.unwrap() - before, left);
    }
    // A Welcome nobody fetches goes with its inbox rows when the retention time has passed.
    store
        .create_account(account("wel_ivy", 24, 1))
        .await
        .unwrap();
    store
        .append_handshake(HandshakeWrite {
            group_id: g,
            sender: erin,
            epoch: 1,
            new_epoch: 2,
            payload: b"commit-add-1".to_vec(),
            state: vec![2],
            added: vec![device(24)],
            removed: vec![],
            welcome: Some(welcome),
        })
        .await
        .unwrap();
    assert_eq!(store.inbox_bytes().await.unwrap() - before, 1000);
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 60_000;
    store.purge(later).await.unwrap();
    assert_eq!(store.inbox_bytes().await.unwrap(), 0);
}

pub async fn seed_one_message(store: &dyn Store) {
    store
        .create_account(account("seed_erin", 6, 1))
        .await
        .unwrap();
    let g = GroupId::from_bytes([6; 16]);
    store
        .create_group(NewGroup {
            group_id: g,
            creator: device(6),
            state: vec![6],
        })
        .await
        .unwrap();
    post(store, g, device(6), b"kept".to_vec()).await.unwrap();
}

/// Checks what [`seed_one_message`] wrote is still there.
pub async fn check_seeded_message(store: &dyn Store) {
    assert!(
        store
            .user(&Username::new("seed_erin").unwrap())
            .await
            .unwrap()
            .is_some()
    );
    let batch = store
        .fetch(device(6), fetch_all(None, vec![]))
        .await
        .unwrap();
    assert_eq!(batch.deliveries.len(), 1);
    assert_eq!(batch.deliveries[0].payload.as_slice(), b"kept");
    // The sequence continues where it stopped.
    let next = post(store, GroupId::from_bytes([6; 16]), device(6), vec![1])
        .await
        .unwrap();
    assert_eq!(next.seq, 2);
}

/// The file store: uploads, appends at an offset, finishing, reading, deletion once every
/// recipient has a file, quotas and purging. `b` is a second handle on the same storage (another
/// node, where the backend has several), or `a` again.
pub async fn blobs(a: &dyn BlobStore, b: &dyn BlobStore) {
    let group = GroupId::from_bytes([7; 16]);
    let alice = Username::new("alice").unwrap();
    let new = |id: u8, length: u64, username: &Username| NewBlob {
        id: [id; 16],
        group,
        uploader: device(1),
        username: username.clone(),
        length,
    };
    let quota = 100 * MIN_BLOB_CHARGE;
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let length = content.len() as u64;
    a.create_blob(new(1, length, &alice), quota).await.unwrap();
    assert!(matches!(
        b.create_blob(new(1, length, &alice), quota).await,
        Err(StoreError::Conflict)
    ));
    let record = b.blob([1; 16]).await.unwrap().unwrap();
    assert_eq!(
        (record.group, record.uploader, record.username.as_str()),
        (group, device(1), "alice")
    );
    assert_eq!(
        (record.length, record.offset, record.finished),
        (length, 0, false)
    );
    assert!(a.blob([2; 16]).await.unwrap().is_none());

    // Nothing is readable, nor finishable, before every byte is there.
    assert!(matches!(
        a.read_blob([1; 16], 0, 10).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        a.finish_blob([1; 16], vec![]).await,
        Err(StoreError::NotFound)
    ));

    // Appends continue exactly where the upload stands.
    let part = |from: usize, to: usize| bytes::Bytes::copy_from_slice(&content[from..to]);
    assert!(matches!(
        a.append_blob([1; 16], 5, part(0, 5)).await,
        Err(StoreError::OffsetMismatch { current: 0 })
    ));
    assert_eq!(
        a.append_blob([1; 16], 0, part(0, 70_000)).await.unwrap(),
        70_000
    );
    assert!(matches!(
        b.append_blob([1; 16], 0, part(0, 70_000)).await,
        Err(StoreError::OffsetMismatch { current: 70_000 })
    ));
    let mut too_long = content[70_000..].to_vec();
    too_long.push(0);
    assert!(matches!(
        b.append_blob([1; 16], 70_000, too_long.into()).await,
        Err(StoreError::TooLong)
    ));
    assert_eq!(b.blob([1; 16]).await.unwrap().unwrap().offset, 70_000);
    // Two nodes appending at one offset at once: exactly one wins.
    let (x, y) = tokio::join!(
        a.append_blob([1; 16], 70_000, part(70_000, 100_000)),
        b.append_blob([1; 16], 70_000, part(70_000, 100_000)),
    );
    assert!(x.is_ok() != y.is_ok(), "{x:?} {y:?}");
    assert_eq!(a.blob([1; 16]).await.unwrap().unwrap().offset, 100_000);
    assert_eq!(
        b.append_blob([1; 16], 100_000, part(100_000, content.len()))
            .await
            .unwrap(),
        length
    );
    a.finish_blob([1; 16], vec![device(2), device(3)])
        .await
        .unwrap();
    assert!(matches!(
        b.finish_blob([1; 16], vec![]).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        a.append_blob([1; 16], length, bytes::Bytes::new()).await,
        Err(StoreError::NotFound)
    ));
    assert!(a.blob([1; 16]).await.unwrap().unwrap().finished);

    // Read back in pieces of any size, from any offset, through either handle.
    for (handle, max) in [(a, 4096), (b, 65_536), (a, 1 << 20)] {
        let mut read = Vec::new();
        loop {
            let piece = handle
                .read_blob([1; 16], read.len() as u64, max)
                .await
                .unwrap();
            if piece.is_empty() {
                break;
            }
            assert!(piece.len() <= max);
            read.extend_from_slice(&piece);
        }
        assert!(read == content, "read back differs (pieces of {max})");
    }
    let tail = b.read_blob([1; 16], length - 3, 100).await.unwrap();
    assert_eq!(&tail[..], &content[content.len() - 3..]);

    // Deleted once the last recipient has it, and not before.
    assert!(!a.blob_received([1; 16], device(9)).await.unwrap());
    assert!(!a.blob_received([1; 16], device(2)).await.unwrap());
    assert!(!b.blob_received([1; 16], device(2)).await.unwrap());
    assert!(b.read_blob([1; 16], 0, 10).await.is_ok());
    assert!(b.blob_received([1; 16], device(3)).await.unwrap());
    assert!(a.blob([1; 16]).await.unwrap().is_none());
    assert!(matches!(
        a.read_blob([1; 16], 0, 10).await,
        Err(StoreError::NotFound)
    ));

    // The quota counts every file of the account, each as at least the minimum charge.
    let bob = Username::new("bob").unwrap();
    let small = 3 * MIN_BLOB_CHARGE;
    for id in 10..13 {
        a.create_blob(new(id, 10, &bob), small).await.unwrap();
    }
    assert!(matches!(
        b.create_blob(new(13, 10, &bob), small).await,
        Err(StoreError::QuotaExceeded { quota }) if quota == small
    ));
    a.create_blob(new(14, 10, &alice), small).await.unwrap();
    a.delete_blob([10; 16]).await.unwrap();
    assert!(a.blob([10; 16]).await.unwrap().is_none());
    b.create_blob(new(13, 10, &bob), small).await.unwrap();

    // Purging: unfinished uploads by when they started, files by when they were finished.
    a.append_blob([11; 16], 0, part(0, 10)).await.unwrap();
    a.finish_blob([11; 16], vec![device(2)]).await.unwrap();
    let far = u64::MAX / 2;
    assert_eq!(a.purge_blobs(0, 0).await.unwrap(), 0);
    // [12], [13] and [14] are unfinished; [11] is finished.
    assert_eq!(b.purge_blobs(far, 0).await.unwrap(), 3);
    assert!(a.blob([11; 16]).await.unwrap().is_some());
    assert_eq!(a.read_blob([11; 16], 0, 100).await.unwrap(), part(0, 10));
    assert_eq!(a.purge_blobs(0, far).await.unwrap(), 1);
    assert!(a.blob([11; 16]).await.unwrap().is_none());
}

/// A group with a disappearing-messages timer: its messages and files go once they are older
/// than it, delivered or not; other groups' stay; 0 ends it.
pub async fn expiring_groups<S: Store + BlobStore>(store: &S) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    store
        .create_account(account("exp_erin", 60, 1))
        .await
        .unwrap();
    let erin = device(60);
    let (timed, plain) = (GroupId::from_bytes([61; 16]), GroupId::from_bytes([62; 16]));
    for g in [timed, plain] {
        store
            .create_group(NewGroup {
                group_id: g,
                creator: erin,
                state: vec![0],
            })
            .await
            .unwrap();
        post(store, g, erin, vec![1, 2, 3]).await.unwrap();
        store
            .create_blob(
                NewBlob {
                    id: [g.as_bytes()[0]; 16],
                    group: g,
                    uploader: erin,
                    username: Username::new("exp_erin").unwrap(),
                    length: 3,
                },
                u64::MAX,
            )
            .await
            .unwrap();
    }
    store.set_group_expiry(timed, 60).await.unwrap();
    store.set_group_expiry(timed, 3600).await.unwrap();
    let held = |g: GroupId| async move {
        store
            .fetch(erin, fetch_all(None, vec![(g, 0)]))
            .await
            .unwrap()
            .deliveries
            .iter()
            .filter(|d| d.group_id == *g.as_bytes())
            .count()
    };
    assert_eq!(store.purge_expiring(now).await.unwrap(), 0);
    assert_eq!(held(timed).await, 1);
    // An hour later: the timed group's message and file are gone, nothing else.
    assert_eq!(store.purge_expiring(now + 3_601_000).await.unwrap(), 2);
    assert_eq!(held(timed).await, 0);
    assert!(store.blob([61; 16]).await.unwrap().is_none());
    assert_eq!(held(plain).await, 1);
    assert!(store.blob([62; 16]).await.unwrap().is_some());
    // Off: kept again.
    post(store, timed, erin, vec![4]).await.unwrap();
    store.set_group_expiry(timed, 0).await.unwrap();
    assert_eq!(store.purge_expiring(now + 10_000_000).await.unwrap(), 0);
    assert_eq!(held(timed).await, 1);
}
