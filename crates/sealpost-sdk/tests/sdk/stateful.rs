//! A stateful fuzz: a seed drives a sequence of actions by four clients and a real server —
//! texts, syncs, members added and removed — mixed with faults a real network and real machines
//! produce: a sync answer delivered twice over, a sync answer that leaves the group's messages
//! out, the answer to a send or a commit lost on the way back, a client process restarted, the
//! server restarted on its data. Each client talks to the server through its own interceptor.
//!
//! When the sequence ends the faults stop and everyone catches up. Then, for every client's
//! history: every text shown was sent, by whom it says, to a group this client was in when it
//! was sent; none is shown twice; each sender's texts come in the order they were sent; every
//! text whose send was acknowledged is there for each member it was sent to; nothing is
//! unreadable, missing (a gap) or alarming (a security alert); and all members are at one
//! epoch and reach each other.
//!
//! `SEALPOST_STATEFUL_ACTIONS` (default 120) sets the length of a sequence and
//! `SEALPOST_STATEFUL_SEED` replays one; the seed is printed. `SEALPOST_STATEFUL_DEBUG=1` prints
//! each step, what the syncs brought and every history, and copies the server's data to
//! `$TMPDIR/sealpost-stateful-server` for a look with `sqlite3`.

use crate::common::Rng;

#[tokio::test]
async fn seeded_actions_and_faults_lose_and_double_nothing() {
    let seed = crate::common::seed("SEALPOST_STATEFUL_SEED");
    let actions = crate::common::setting("SEALPOST_STATEFUL_ACTIONS", 120);
    crate::common::stateful::run(&mut Rng(seed), actions, &format!("seed {seed}")).await;
}
