//! The local store as hostile input, coverage-guided. Once per process a real server and two
//! clients leave Bob a closed profile with two conversations (the set-up of
//! `crates/sealpost-sdk/tests/sdk/store_fuzz.rs`). Each input is a tape of choices that damages one
//! value of a fresh copy of it — any column of any table changed in the file (mangled bytes,
//! NULL, another type, edge integers), a row deleted, or a record sealed again with the key
//! holding mangled plaintext — and then the profile is opened and everything a front end shows
//! is read. It must open or be refused with a clear error, never panic, and a change to a
//! record that is read and bound to its row must be refused.
#![no_main]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "fuzz target"
)]

#[path = "../../crates/sealpost-sdk/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;

use common::profile::{bobs_profile, damage_and_read};
use common::{People, Tape, TestServer};
use libfuzzer_sys::fuzz_target;

struct World {
    pristine: PathBuf,
    scratch: PathBuf,
    runtime: tokio::runtime::Runtime,
    _people: People,
}

fn world() -> World {
    let runtime = common::runtime();
    let people = People::new();
    let pristine = runtime.block_on(async {
        let server = TestServer::start().await;
        bobs_profile(&people, &server).await.0
    });
    World {
        pristine,
        scratch: people.home("scratch"),
        runtime,
        _people: people,
    }
}

fuzz_target!(|data: &[u8]| {
    common::in_world(world, |w: &mut World| {
        let _inside = w.runtime.enter();
        if let Err(fault) = damage_and_read(&mut Tape::new(data), &w.pristine, &w.scratch) {
            panic!("{fault}");
        }
    });
});
