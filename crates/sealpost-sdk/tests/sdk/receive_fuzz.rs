//! The client's receive path fuzzed with a real group state. Bob is a member of two real
//! conversations (one per cipher suite) whose logs hold texts of the current and of earlier
//! epochs, commits that add and remove members, and Welcomes. Each case mangles some of those
//! bytes (bit flips, overwritten, cut, grown, spliced from another message, length fields set
//! high) and hands the result to Bob's receive path as the next delivery of a conversation,
//! exactly as a malicious server would deliver it. Whatever comes in, Bob must not panic, show
//! a text or a roster change, move to another epoch, or raise more than one alert (a fork
//! alert: a message's epoch and fork check are read before it is decrypted); afterwards an
//! untouched message still decrypts and Bob still talks to Alice.
//!
//! `SEALPOST_RECEIVE_FUZZ_CASES` (default 1,500 per conversation) sets the number of cases and
//! `SEALPOST_RECEIVE_FUZZ_SEED` replays a run; the seed is printed.

use crate::common::{BusyRoom, People, Rng, TestServer, busy_room, mangle, nothing_shown, texts};
use sealpost_sdk::Suite;

fn cases() -> usize {
    crate::common::setting("SEALPOST_RECEIVE_FUZZ_CASES", 1500) as usize
}

#[tokio::test]
async fn mangled_deliveries_change_nothing_in_a_real_group() {
    let seed = crate::common::seed("SEALPOST_RECEIVE_FUZZ_SEED");
    let mut rng = Rng(seed);
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    let mut carol = people.register(&server, "carol").await;
    let mut seq = 1 << 32;
    for (name, suite) in [("pq", Suite::Pq), ("classic", Suite::Classic)] {
        let BusyRoom {
            room,
            material,
            fresh,
            epoch,
            members,
        } = busy_room(&server, [&mut alice, &mut bob, &mut carol], name, suite).await;
        let (mut refused, mut alerted) = (0, 0);
        for case in 0..cases() {
            seq += 1;
            let input = mangle(&mut rng, &material);
            match bob.receive_unchecked(&room, seq, &input) {
                Err(_) => refused += 1,
                Ok(events) => {
                    alerted += nothing_shown(&events)
                        .unwrap_or_else(|e| panic!("case {case} (seed {seed}): {e}"));
                }
            }
            assert_eq!(bob.epoch(&room).unwrap(), epoch, "case {case}, seed {seed}");
        }
        assert_eq!(bob.members(&room).unwrap(), members);
        // The epoch and fork check of a message are read before it is decrypted, so altered
        // ones raise a fork alert, but only one while Bob stays in his epoch.
        assert!(
            alerted <= 1,
            "{alerted} fork alerts in one epoch (seed {seed})"
        );
        println!(
            "receive fuzz {name}: {} cases, {refused} refused with an error, the rest unreadable, {alerted} fork alert",
            cases()
        );

        // The state is intact: the untouched text decrypts, and Bob still talks to Alice.
        seq += 1;
        let events = bob.receive_unchecked(&room, seq, &fresh).unwrap();
        assert_eq!(
            texts(&events),
            vec![("@alice".to_owned(), "untouched".to_owned())]
        );
        bob.send(&room, "still here").await.unwrap();
        let got = texts(&alice.sync().await.unwrap());
        assert_eq!(got, vec![("@bob".to_owned(), "still here".to_owned())]);
    }
}
