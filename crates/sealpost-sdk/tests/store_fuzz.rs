//! The local store as hostile input. A profile whose records were moved between rows or changed
//! by someone without the key (malware with file access, a tampered backup), or which holds,
//! correctly sealed, what this code never wrote (a bug, another version): opening and reading it
//! gives a clear error or works. Never a panic, and never a record shown where it does not
//! belong.
//!
//! The fuzz is seeded: `SEALPOST_STORE_FUZZ_SEED` replays a run, `SEALPOST_STORE_FUZZ_CASES` sets
//! its length.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rusqlite::types::Value;
use sealpost_sdk::{Client, Error, Suite};

/// Bob's profile after two conversations with Alice, closed; and the two groups' ids.
async fn bobs_profile(people: &People, server: &TestServer) -> (PathBuf, Vec<u8>, Vec<u8>) {
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
fn restore(pristine: &Path, scratch: &Path) {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).unwrap();
    for entry in std::fs::read_dir(pristine).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), scratch.join(entry.file_name())).unwrap();
    }
}

fn db(home: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(home.join("profile.db")).unwrap()
}

/// Swaps `column` between the rows of `table` with the lowest and the highest `key`.
fn swap_first_and_last(home: &Path, table: &str, key: &str, column: &str) {
    let (first, last) = (
        format!("(SELECT MIN({key}) FROM {table})"),
        format!("(SELECT MAX({key}) FROM {table})"),
    );
    let at = |row: &str| format!("(SELECT {column} FROM {table} WHERE {key} = {row})");
    db(home)
        .execute_batch(&format!(
            "UPDATE {table} SET {column} = CASE {key} WHEN {first} THEN {} ELSE {} END \
             WHERE {key} IN ({first}, {last})",
            at(&last),
            at(&first)
        ))
        .unwrap();
}

/// Opens the profile and reads everything a front end shows.
fn read_all(home: &Path) -> Result<usize, Error> {
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

fn refused(result: Result<usize, Error>) -> String {
    match result {
        Err(Error::Store(why)) => why,
        other => panic!("expected the profile to be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn records_moved_between_rows_or_changed_without_the_key_do_not_open() {
    let server = TestServer::start().await;
    let people = People::new();
    let (pristine, crew, pals) = bobs_profile(&people, &server).await;
    let scratch = people.home("scratch");
    let texts = |home: &Path, to: &str| -> Vec<(String, String)> {
        texts(&Client::open(home, None).unwrap().messages(to, 100).unwrap())
    };
    restore(&pristine, &scratch);
    assert_eq!(texts(&scratch, "#crew").len(), 2);

    // The two conversations' records swapped: #crew would be named #pals and the other way round.
    db(&scratch)
        .execute_batch(
            "UPDATE conversations SET info = (SELECT info FROM conversations c2 WHERE c2.group_id <> conversations.group_id)",
        )
        .unwrap();
    let why = refused(read_all(&scratch));
    assert!(why.contains("conversation record"), "{why}");

    // A conversation's cursor moved back (its log would be taken again) or on (skipped).
    for change in ["cursor - 1", "cursor + 5"] {
        restore(&pristine, &scratch);
        db(&scratch)
            .execute(
                &format!("UPDATE conversations SET cursor = {change} WHERE group_id = ?1"),
                [&crew],
            )
            .unwrap();
        let why = refused(read_all(&scratch));
        assert!(why.contains("conversation record"), "{why}");
    }

    // A text of #pals moved into #crew's history: it is not shown there as one of #crew's.
    restore(&pristine, &scratch);
    let moved = db(&scratch)
        .execute(
            "UPDATE history SET group_id = ?1 WHERE id = (SELECT MAX(id) FROM history WHERE group_id = ?2)",
            [&crew, &pals],
        )
        .unwrap();
    assert_eq!(moved, 1);
    let err = Client::open(&scratch, None)
        .unwrap()
        .messages("#crew", 100)
        .unwrap_err();
    assert!(err.to_string().contains("history record"), "{err}");
    // Nor the history reordered: two items of #crew swapped.
    restore(&pristine, &scratch);
    swap_first_and_last(&scratch, "history", "id", "item");
    assert!(matches!(read_all(&scratch), Err(Error::Store(_))));

    // Two MLS state records swapped.
    restore(&pristine, &scratch);
    swap_first_and_last(&scratch, "mls", "key", "value");
    let why = refused(read_all(&scratch));
    assert!(why.contains("MLS state record"), "{why}");

    // Refusing changed nothing: the untouched profile reads as before, and Bob goes on.
    restore(&pristine, &scratch);
    assert_eq!(
        texts(&scratch, "#pals"),
        vec![
            ("@alice".to_string(), "two".to_string()),
            ("@bob".to_string(), "four".to_string())
        ]
    );
    let mut bob = Client::open(&pristine, None).unwrap();
    bob.send("#crew", "still here").await.unwrap();
}

/// The columns of the profile: table, column, the column that picks a row, and whether a
/// change must make reading the profile fail (the records sealed to their rows that are all
/// read).
const COLUMNS: &[(&str, &str, &str, bool)] = &[
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
];

/// Damages one value of the profile in `home`. Says what it did, and whether reading the
/// profile must now fail.
fn damage(rng: &mut Rng, home: &Path) -> (String, bool) {
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

#[tokio::test]
async fn damaged_profile_records_give_clear_errors() {
    let server = TestServer::start().await;
    let people = People::new();
    let (pristine, _, _) = bobs_profile(&people, &server).await;
    drop(server);
    let cases = setting("SEALPOST_STORE_FUZZ_CASES", 300);
    let seed = seed("SEALPOST_STORE_FUZZ_SEED");
    let mut rng = Rng(seed);
    let scratch = people.home("scratch");
    let (mut read, mut refused) = (0, 0);
    for case in 0..cases {
        restore(&pristine, &scratch);
        let (what, must_refuse) = damage(&mut rng, &scratch);
        match read_all(&scratch) {
            Ok(_) => {
                assert!(
                    !must_refuse,
                    "case {case} (seed {seed}): {what}, and the profile still opened"
                );
                read += 1;
            }
            Err(e) => {
                let why = e.to_string();
                assert!(
                    why.len() > 10 && !why.contains("panicked"),
                    "case {case} (seed {seed}): {what}: {why:?}"
                );
                refused += 1;
            }
        }
    }
    eprintln!(
        "{cases} damaged profiles (seed {seed}): {read} opened and read, {refused} refused with a clear error"
    );
}
