//! The stateful fuzz, coverage-guided: the input is a tape of choices (two bytes each) that
//! drives four clients and a real server on a loopback port through texts, syncs, adds and
//! removals, mixed with duplicated and held-back sync answers, lost answers, and client and
//! server restarts (the driver of `crates/sealpost-sdk/tests/sdk/stateful.rs`). Every run ends with
//! the checks of that test: nothing lost, doubled, reordered, made up, unreadable or alarming;
//! one epoch; everyone reaches everyone. A run takes about a second, so a short run tries few
//! inputs: it is the tape's structure that the fuzzer learns.
#![no_main]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "fuzz target"
)]

#[path = "../../crates/sealpost-sdk/tests/common/mod.rs"]
mod common;

use common::Tape;
use libfuzzer_sys::fuzz_target;

/// Most steps in one run (two to four draws each).
const MAX_ACTIONS: usize = 60;

fuzz_target!(|data: &[u8]| {
    let actions = (data.len() / 4).clamp(1, MAX_ACTIONS) as u64;
    common::in_world(common::runtime, |rt: &mut tokio::runtime::Runtime| {
        rt.block_on(common::stateful::run(
            &mut Tape::new(data),
            actions,
            "the fuzzer's input",
        ))
    });
});
