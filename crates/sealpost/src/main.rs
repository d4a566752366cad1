//! `sealpost`: `sealpost server` runs the server; every other subcommand is the client.
#![forbid(unsafe_code)]

mod bench;
mod bench_ceilings;
mod bench_directory;
mod cli;
mod daemon;
mod daemon_http;
mod demo;
mod rpc;
mod session;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
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
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // Errors may quote what the server or a peer sent: printed safely.
        Err(e)
            if e.downcast_ref::<cli::SecurityExit>().is_some()
                || e.downcast_ref::<rpc::RpcError>()
                    .is_some_and(rpc::RpcError::is_security) =>
        {
            eprintln!("security: {}", cli::safe_body(&format!("{e:#}")));
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("error: {}", cli::safe_body(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
