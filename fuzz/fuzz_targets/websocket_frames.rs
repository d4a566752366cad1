//! WebSocket send frames at the server, coverage-guided. Once per process a real server on a
//! loopback port (send limit lifted) and two clients with a direct and a group conversation;
//! Alice's real send frames (an 8-byte id, the group id, an MLS message) are the material, and
//! one signed-in connection of hers carries every input (the set-up of
//! `hostile_input::mangled_websocket_send_frames_get_clear_answers`). The input's first byte
//! says whether the rest is sent as it is or is a tape of choices that mangles a real frame.
//! Every frame must get its answer — a sequence number or a clear error, never an internal or
//! unavailable one — on a connection that stays open.
#![no_main]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "fuzz target"
)]

#[path = "../../crates/sealpost-sdk/tests/common/mod.rs"]
mod common;

use common::{FrameSocket, People, Tape, TestServer, mangle, send_frames, u};
use libfuzzer_sys::fuzz_target;
use sealpost_sdk::{Client, Suite};

struct World {
    socket: FrameSocket,
    material: Vec<Vec<u8>>,
    runtime: tokio::runtime::Runtime,
    // Kept alive for the process: the server's task, the profiles' directory.
    _server: TestServer,
    _people: People,
    _clients: [Client; 2],
}

fn world() -> World {
    let runtime = common::runtime();
    let (socket, material, server, people, clients) = runtime.block_on(async {
        let server = TestServer::start_with(|s| s.sends_per_minute = u32::MAX).await;
        let people = People::new();
        let mut alice = people.register(&server, "alice").await;
        let bob = people.register(&server, "bob").await;
        alice.send("@bob", "hi").await.unwrap();
        alice
            .create_group("room", &[u("bob")], Suite::Classic)
            .await
            .unwrap();
        let material = send_frames(&mut alice, ["@bob", "#room"]).await;
        let token = alice.bench_prepare("@bob", 0, "").await.unwrap().token;
        let socket = FrameSocket::open(&server.url, &token).await;
        (socket, material, server, people, [alice, bob])
    });
    World {
        socket,
        material,
        runtime,
        _server: server,
        _people: people,
        _clients: clients,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&how, rest)) = data.split_first() else {
        return;
    };
    common::in_world(world, |w: &mut World| {
        let frame = if how & 1 == 0 {
            rest.to_vec()
        } else {
            mangle(&mut Tape::new(rest), &w.material)
        };
        if let Err(fault) = w.runtime.block_on(w.socket.send(frame)) {
            panic!("{fault}");
        }
    });
});
