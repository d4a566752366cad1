//! A profile to damage: Bob's after two conversations with Alice, and the damage the store
//! fuzz does to one value of it (`tests/sdk/store_fuzz.rs`, and the `store_records` target in
//! `fuzz/`).

use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use sealpost_sdk::{Client, Error, Suite};

use super::{Draw, People, TestServer, group_of, mangle, u};

/// Bob's profile after two conversations with Alice, closed; and the two groups' ids.
pub async fn bobs_profile(people: &People, server: &TestServer) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let mut alice = people.register(server, "alice").await;
    let mut bob = people.register(server, "bob").await;
    alice
        .create_group("crew", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    alice
        .create_group("pals", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    for (to, text) in [("#crew", "one"), ("#pals", "two"), ("#crew", "three")] {
        alice.send(to, text).await.unwrap();
    }
    bob.sync().await.unwrap();
    bob.send("#pals", "four").await.unwrap();
    let crew = group_of(&bob, "#crew").as_bytes().to_vec();
    let pals = group_of(&bob, "#pals").as_bytes().to_vec();
    drop(bob);
    (people.home("bob"), crew, pals)
}

/// Puts `scratch` back to a copy of `pristine` (a closed profile directory).
pub fn restore(pristine: &Path, scratch: &Path) {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).unwrap();
    for entry in std::fs::read_dir(pristine).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), scratch.join(entry.file_name())).unwrap();
    }
}

pub fn db(home: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(home.join("profile.db")).unwrap()
}

/// Opens the profile and reads everything a front end shows.
pub fn read_all(home: &Path) -> Result<usize, Error> {
    let client = Client::open(home, None)?;
    let _ = client.whoami();
    let mut shown = 0;
    for c in client.conversations()? {
        shown += client.messages(&c.conversation, 1_000)?.len();
        client.epoch(&c.conversation)?;
        client.members(&c.conversation)?;
    }
    Ok(shown)
}

/// The columns of the profile: table, column, the column that picks a row, and whether a
/// change must make reading the profile fail (the records sealed to their rows that are all
/// read).
pub const COLUMNS: &[(&str, &str, &str, bool)] = &[
    ("meta", "key", "key", false),
    ("meta", "value", "key", false),
    ("mls", "key", "key", true),
    ("mls", "value", "key", true),
    ("conversations", "group_id", "group_id", true),
    ("conversations", "cursor", "group_id", true),
    ("conversations", "info", "group_id", true),
    ("history", "id", "id", true),
    ("history", "group_id", "id", false),
    ("history", "seq", "id", false),
    ("history", "msg_id", "id", false),
    ("history", "item", "id", true),
    ("sent", "seq", "seq", false),
    ("pending_commits", "payload", "group_id", false),
    ("directory_roots", "epoch", "epoch", false),
    ("directory_roots", "root", "epoch", false),
    ("used_key_packages", "ref", "ref", false),
    ("spent_key_packages", "ref", "ref", false),
];

/// Damages one value of the profile in `home`. Says what it did, and whether reading the
/// profile must now fail.
pub fn damage(rng: &mut impl Draw, home: &Path) -> (String, bool) {
    let conn = db(home);
    match rng.below(4) {
        // A value changed in the file, without the key.
        0 | 1 => {
            let (table, column, by, must_fail) = rng.pick(COLUMNS);
            let values: Vec<(Value, Value)> = conn
                .prepare(&format!("SELECT {by}, {column} FROM {table}"))
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            if values.is_empty() {
                return (format!("{table} has no rows to change"), false);
            }
            let (row, old) = values[rng.below(values.len())].clone();
            let new = match &old {
                Value::Integer(v) => {
                    let random = rng.next() as i64;
                    Value::Integer(rng.pick(&[
                        0,
                        -1,
                        v.wrapping_sub(1),
                        v.wrapping_add(1),
                        i64::MAX,
                        i64::MIN,
                        random,
                    ]))
                }
                _ => {
                    let material: Vec<Vec<u8>> = values
                        .iter()
                        .filter_map(|(_, v)| match v {
                            Value::Blob(b) => Some(b.clone()),
                            Value::Text(t) => Some(t.as_bytes().to_vec()),
                            _ => None,
                        })
                        .chain([vec![0]])
                        .collect();
                    match rng.below(6) {
                        0 => Value::Null,
                        1 => Value::Integer(rng.next() as i64),
                        _ => Value::Blob(mangle(rng, &material)),
                    }
                }
            };
            let changed = conn
                .execute(
                    &format!("UPDATE OR IGNORE {table} SET {column} = ?1 WHERE {by} = ?2"),
                    rusqlite::params![new, row],
                )
                .unwrap();
            (
                format!("{table}.{column} where {by} = {row:?}: {old:?} set to {new:?}"),
                changed > 0 && must_fail && new != old,
            )
        }
        // A record sealed again with the key, holding what this code never wrote.
        2 => {
            let table = rng.pick(&["meta", "mls", "conversations", "history"]);
            let count: usize = conn
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                .unwrap();
            drop(conn);
            if count == 0 {
                return (format!("{table} has no records"), false);
            }
            let nth = rng.below(count);
            let mut was = 0;
            sealpost_sdk::reseal_record_unchecked(home, table, nth, |plain| {
                was = plain.len();
                *plain = mangle(rng, std::slice::from_ref(plain));
            })
            .unwrap();
            (
                format!("{table} record {nth} ({was} bytes) sealed again, mangled"),
                false,
            )
        }
        // A row gone.
        _ => {
            let (table, _, by, _) = rng.pick(COLUMNS);
            let rows: Vec<Value> = conn
                .prepare(&format!("SELECT {by} FROM {table}"))
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            if rows.is_empty() {
                return (format!("{table} has no rows to delete"), false);
            }
            let row = rows[rng.below(rows.len())].clone();
            conn.execute(&format!("DELETE FROM {table} WHERE {by} = ?1"), [&row])
                .unwrap();
            (
                format!("the row of {table} where {by} = {row:?} deleted"),
                false,
            )
        }
    }
}

/// One case of the store fuzz: puts `scratch` back to `pristine`, damages it with `rng`'s
/// choices, and reads everything a front end shows. `Ok(true)` if the profile opened,
/// `Ok(false)` if it was refused with a clear error, `Err` (what was done, what went wrong)
/// if a change that must be refused was not, or the error is not one a person can act on.
pub fn damage_and_read(
    rng: &mut impl Draw,
    pristine: &Path,
    scratch: &Path,
) -> Result<bool, String> {
    restore(pristine, scratch);
    let (what, must_refuse) = damage(rng, scratch);
    match read_all(scratch) {
        Ok(_) if must_refuse => Err(format!("{what}, and the profile still opened")),
        Ok(_) => Ok(true),
        Err(e) => {
            let why = e.to_string();
            if why.len() > 10 && !why.contains("panicked") {
                Ok(false)
            } else {
                Err(format!("{what}: {why:?}"))
            }
        }
    }
}
