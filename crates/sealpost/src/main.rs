//! `sealpost`: `sealpost server` runs the server; every other subcommand is the client.
#![forbid(unsafe_code)]

mod audit;
mod bench;
mod bench_ceilings;
mod bench_directory;
mod bench_files;
mod bench_group;
mod bench_limiter;
mod chat;
mod cli;
mod client_config;
mod daemon;
mod daemon_http;
mod demo;
mod help;
mod passphrase;
mod render;
mod rpc;
mod session;
mod web;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse_args();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json();
    let Err(e) = runtime.block_on(cli::run(cli)) else {
        return ExitCode::SUCCESS;
    };
    let security = e.downcast_ref::<cli::SecurityExit>().is_some()
        || e.downcast_ref::<rpc::RpcError>()
            .is_some_and(rpc::RpcError::is_security);
    let (code, word) = if security {
        (3, "security")
    } else {
        (1, "error")
    };
    if json {
        let kind = e
            .downcast_ref::<rpc::RpcError>()
            .map_or(word, |r| r.data.kind.as_str());
        let line = serde_json::json!({ "error": format!("{e:#}"), "kind": kind, "exit": code });
        eprintln!("{line}");
    } else {
        // Errors may quote what the server or a peer sent: printed safely.
        eprintln!("{word}: {}", render::safe_body(&format!("{e:#}")));
    }
    ExitCode::from(code)
}
