//! The local store as hostile input. A profile whose records were moved between rows or changed
//! by someone without the key (malware with file access, a tampered backup), or which holds,
//! correctly sealed, what this code never wrote (a bug, another version): opening and reading it
//! gives a clear error or works. Never a panic, and never a record shown where it does not
//! belong.
//!
//! The fuzz is seeded: `SEALPOST_STORE_FUZZ_SEED` replays a run, `SEALPOST_STORE_FUZZ_CASES` sets
//! its length.

use std::path::Path;

use crate::common::profile::{bobs_profile, damage_and_read, db, read_all, restore};
use crate::common::*;
use sealpost_sdk::{Client, Error};

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
        match damage_and_read(&mut rng, &pristine, &scratch) {
            Ok(true) => read += 1,
            Ok(false) => refused += 1,
            Err(fault) => panic!("case {case} (seed {seed}): {fault}"),
        }
    }
    eprintln!(
        "{cases} damaged profiles (seed {seed}): {read} opened and read, {refused} refused with a clear error"
    );
}
