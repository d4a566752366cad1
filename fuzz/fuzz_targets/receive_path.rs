//! The client's receive path with a real group state, coverage-guided. Once per process a real
//! server on a loopback port and three clients make two conversations (one per cipher suite)
//! whose logs hold texts of this and earlier epochs, adds, removals and a Welcome (the set-up of
//! `crates/sealpost-sdk/tests/sdk/receive_fuzz.rs`). Each input is then delivered to Bob as the next
//! item of one conversation's log: the input's first byte picks the conversation and whether
//! the rest is the payload itself or a tape of choices that mangles one of the real messages.
//! Bob must not panic, show a text or a roster change, move to another epoch, or raise more
//! than one fork alert in his epoch.
#![no_main]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "fuzz target"
)]

#[path = "../../crates/sealpost-sdk/tests/common/mod.rs"]
mod common;

use common::{BusyRoom, People, Tape, TestServer, busy_room, mangle, nothing_shown};
use libfuzzer_sys::fuzz_target;
use sealpost_sdk::{Client, Suite};

struct World {
    bob: Client,
    rooms: Vec<BusyRoom>,
    seq: u64,
    alerted: usize,
    // Kept alive for the process: the server's task, the profiles' directory.
    _server: TestServer,
    _people: People,
    _others: [Client; 2],
    _runtime: tokio::runtime::Runtime,
}

fn world() -> World {
    let runtime = common::runtime();
    let (server, people, [alice, bob, carol], rooms) = runtime.block_on(async {
        let server = TestServer::start().await;
        let people = People::new();
        let mut alice = people.register(&server, "alice").await;
        let mut bob = people.register(&server, "bob").await;
        let mut carol = people.register(&server, "carol").await;
        let mut rooms = Vec::new();
        for (name, suite) in [("pq", Suite::Pq), ("classic", Suite::Classic)] {
            let people = [&mut alice, &mut bob, &mut carol];
            rooms.push(busy_room(&server, people, name, suite).await);
        }
        (server, people, [alice, bob, carol], rooms)
    });
    World {
        bob,
        rooms,
        seq: 1 << 32,
        alerted: 0,
        _server: server,
        _people: people,
        _others: [alice, carol],
        _runtime: runtime,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&how, rest)) = data.split_first() else {
        return;
    };
    common::in_world(world, |w: &mut World| {
        let room = &w.rooms[usize::from(how & 1)];
        let payload = if how & 2 == 0 {
            rest.to_vec()
        } else {
            mangle(&mut Tape::new(rest), &room.material)
        };
        if room.material.contains(&payload) {
            return;
        }
        w.seq += 1;
        let (name, epoch, members) = (room.room.clone(), room.epoch, room.members.clone());
        if let Ok(events) = w.bob.receive_unchecked(&name, w.seq, &payload) {
            w.alerted += nothing_shown(&events).unwrap();
        }
        assert_eq!(w.bob.epoch(&name).unwrap(), epoch);
        assert_eq!(w.bob.members(&name).unwrap(), members);
        // One at most for each of the two conversations.
        assert!(w.alerted <= 2, "more than one fork alert in an epoch");
    });
});
