//! `sealpost audit`: checks that a server's key directory only ever grew, compares what it
//! checked with other auditors (`--peer`), and serves what it checked to them (`--serve`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sealpost_sdk::audit::{PeerReport, checked_root, compare};

use crate::cli::{AuditArgs, print_json, security_exit};

pub(crate) async fn run(home: &Path, args: AuditArgs, as_json: bool) -> Result<()> {
    let server = args.server.clone().unwrap_or_default();
    let state = args
        .state
        .clone()
        .unwrap_or_else(|| sealpost_sdk::audit::default_state_file(home, &server));
    if let Some(addr) = args.serve {
        let url = serve(addr, state.clone()).await?;
        if as_json {
            print_json(&serde_json::json!({ "serving": url }))?;
        } else {
            println!("serving the roots checked here on {url}");
        }
    }
    let mut from = args.from;
    loop {
        let report = sealpost_sdk::audit::audit(&server, &state, from.take())
            .await
            .map_err(security_exit)?;
        if as_json {
            print_json(&report)?;
        } else if report.verified > 0 {
            println!(
                "checked versions {} to {} of the server's key directory: it only grew (no \
                 account's keys were changed or taken back behind its owner)",
                report.from, report.to
            );
        } else {
            println!(
                "nothing new: the server's key directory is checked up to its version {}",
                report.to
            );
        }
        for peer in &args.peer {
            match compare(&state, peer).await {
                Ok(report) => show_agreement(&report, as_json)?,
                Err(e @ sealpost_sdk::Error::Security { .. }) => return Err(security_exit(e)),
                // A peer out of reach is tried again on the next round; a one-off run says so.
                Err(e) if args.follow => eprintln!("warning: {e}"),
                Err(e) => return Err(security_exit(e)),
            }
        }
        if !args.follow {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(args.interval.max(1))).await;
    }
}

fn show_agreement(report: &PeerReport, as_json: bool) -> Result<()> {
    if as_json {
        return print_json(report);
    }
    println!(
        "{} agrees: the same directory up to version {} (it has checked up to version {}, this \
         auditor up to {})",
        crate::render::safe(&report.peer),
        report.epoch,
        report.peer_epoch,
        report.own_epoch
    );
    Ok(())
}

/// Serves the roots checked into `state` at `addr`, in the background; returns the URL.
async fn serve(addr: std::net::SocketAddr, state: PathBuf) -> Result<String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/v1/directory/root", get(newest))
        .route("/v1/directory/roots/{epoch}", get(of_epoch))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("warning: serving the checked roots stopped: {e}");
        }
    });
    Ok(url)
}

async fn newest(State(state): State<PathBuf>) -> Response {
    root(&state, None)
}

async fn of_epoch(State(state): State<PathBuf>, UrlPath(epoch): UrlPath<u64>) -> Response {
    root(&state, Some(epoch))
}

/// A checked root as the server's directory API gives it, or its kind of error.
fn root(state: &Path, epoch: Option<u64>) -> Response {
    let error = |status: StatusCode, code: sealpost_proto::ErrorCode, message: &str| {
        let body = sealpost_proto::ApiError {
            code,
            message: message.to_owned(),
        };
        (status, axum::Json(body)).into_response()
    };
    match checked_root(state, epoch) {
        Ok(Some(root)) => axum::Json(root).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            sealpost_proto::ErrorCode::NotFound,
            "this auditor has not checked that version",
        ),
        Err(e) => {
            eprintln!("warning: {e}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                sealpost_proto::ErrorCode::Internal,
                "this auditor cannot read what it checked",
            )
        }
    }
}
