//! The SDK's tests against a real server, one test binary (each file a module; the canary test,
//! which takes over the process's logging, has its own).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

#[path = "../common/mod.rs"]
mod common;

mod api_fuzz;
mod cluster;
mod delivery;
mod devices;
mod directory;
mod health;
mod hostile_input;
mod limits;
mod malicious_server;
mod messaging;
mod receive_fuzz;
mod stateful;
mod store_fuzz;
mod tls;
