//! `sealpost chat`: a full-screen terminal chat on the live client.
//!
//! Kept apart as good terminal apps keep them: the state and its changes ([`app`]), how it is
//! drawn ([`view`]), the input line ([`editor`]) and the typed commands ([`command`]). This file
//! only wires them to the world: keys from the terminal, events from the profile's log, the
//! server connection and file transfers go in as [`Msg`]s; what [`App::update`] asks for is done
//! here, each call as a method of [`crate::rpc`] (the same the command line and the daemon run)
//! on a task of its own, so that the screen never waits for the network.
//!
//! While the chat runs it holds the profile and serves the daemon's socket, so that other
//! `sealpost` commands on the profile go through it.

pub mod app;
pub mod command;
pub mod editor;
pub mod view;

use std::io::IsTerminal as _;

use anyhow::{Result, bail};
use crossterm::event::EventStream;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use sealpost_sdk::{ConversationId, Live};

use crate::rpc::{self, RpcError};
use crate::session::Session;
use app::{App, Effect, Loaded, Msg, Then};
use view::Look;

/// The event log consumer whose place the chat keeps: what it has shown (and the security
/// alerts acknowledged) is not shown again at the next start.
const CONSUMER: &str = "chat";

/// Runs the chat until the user leaves it (or SIGTERM).
pub async fn run(session: Session) -> Result<()> {
    let (live, home) = match session {
        Session::Local { live, home } => (live, home),
        Session::Remote(_) => bail!(
            "another sealpost process (a daemon, listen, chat or web) holds this profile: stop \
             it first; while the chat runs, it serves other commands on the profile itself"
        ),
    };
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("sealpost chat needs a terminal (for scripts: send, listen, or sealpost daemon)");
    }
    let held = crate::daemon::Held::start(&home, &live)?;
    let shutdown = held.shutdown.clone();
    let mut tasks = tokio::task::JoinSet::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    feed(&live, &tx, &shutdown, &mut tasks);
    let calls = caller(&live, &tx, &mut tasks);
    let me = live.lock().await.whoami();
    let mut app = App::new(me);
    let colour = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let zone = jiff::tz::TimeZone::system();
    let mut terminal = ratatui::init();
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::EnableBracketedPaste);
    let mut effects = app.start();
    let outcome = loop {
        let mut quit = false;
        let mut seen = Vec::new();
        for effect in effects.drain(..) {
            match effect {
                Effect::Quit => quit = true,
                Effect::Call {
                    method,
                    params,
                    then,
                } => {
                    let _ = calls.send((method, params, then));
                }
                Effect::Load { open, limit } => {
                    let (live, tx) = (live.clone(), tx.clone());
                    tokio::spawn(async move {
                        let _ = tx.send(Msg::Loaded(load(&live, open, limit).await));
                    });
                }
                Effect::Seen(ids) => seen.extend(ids),
            }
        }
        if !seen.is_empty() {
            // One write for everything this round showed.
            let live = live.clone();
            tokio::spawn(async move {
                let _ = live.lock().await.mark_seen(CONSUMER, &seen);
            });
        }
        if quit || shutdown.is_cancelled() {
            break Ok(());
        }
        let look = Look {
            colour,
            zone: zone.clone(),
            now_ms: now_ms(),
        };
        if let Err(e) = terminal.draw(|frame| view::draw(&app, &look, frame)) {
            break Err(e.into());
        }
        let msg = tokio::select! {
            msg = rx.recv() => msg,
            _ = shutdown.cancelled() => None,
        };
        let Some(msg) = msg else { break Ok(()) };
        effects = app.update(msg, now_ms());
        // Take in whatever else is waiting before drawing again.
        while effects.len() < 64
            && let Ok(msg) = rx.try_recv()
        {
            effects.extend(app.update(msg, now_ms()));
        }
    };
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::DisableBracketedPaste);
    ratatui::restore();
    held.stop().await;
    drop(calls);
    while tasks.join_next().await.is_some() {}
    outcome
}

/// Starts the tasks that turn the terminal's keys, the event log, the connection's state, file
/// transfers and the clock into [`Msg`]s.
fn feed(
    live: &Live,
    tx: &mpsc::UnboundedSender<Msg>,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    let forward = |tx: &mpsc::UnboundedSender<Msg>, shutdown: &CancellationToken| {
        (tx.clone(), shutdown.clone())
    };
    let (t, stop) = forward(tx, shutdown);
    tasks.spawn(async move {
        let mut keys = EventStream::new();
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = keys.next() => next,
            };
            match next {
                Some(Ok(e)) => {
                    if t.send(Msg::Term(e)).is_err() {
                        return;
                    }
                }
                // The terminal is gone: nobody can use the chat any more.
                Some(Err(_)) | None => return stop.cancel(),
            }
        }
    });
    let (t, stop) = forward(tx, shutdown);
    let mut sub = live.subscribe_as(CONSUMER);
    tasks.spawn(async move {
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = sub.next() => next,
            };
            // A log that cannot be read now is tried again at the next wake-up.
            if let Ok(e) = next
                && t.send(Msg::Logged(Box::new(e))).is_err()
            {
                return;
            }
        }
    });
    let (t, stop) = forward(tx, shutdown);
    let mut connection = live.connection();
    let mut transfers = live.transfers();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                Ok(()) = connection.changed() => {
                    Msg::Connection(connection.borrow_and_update().clone())
                }
                Ok(()) = transfers.changed() => {
                    Msg::Transfer(transfers.borrow_and_update().clone())
                }
                _ = tick.tick() => Msg::Tick,
            };
            if t.send(msg).is_err() {
                return;
            }
        }
    });
}

/// Starts the task that makes the calls, one after another in the order asked (a message and
/// the edit that follows it stay in order), each answer going back as a [`Msg::Answer`].
fn caller(
    live: &Live,
    tx: &mpsc::UnboundedSender<Msg>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> mpsc::UnboundedSender<(&'static str, Value, Then)> {
    let (calls, mut queue) = mpsc::unbounded_channel::<(&'static str, Value, Then)>();
    let (live, tx) = (live.clone(), tx.clone());
    tasks.spawn(async move {
        while let Some((method, params, then)) = queue.recv().await {
            let result = rpc::dispatch(&live, method, params).await;
            if tx.send(Msg::Answer { then, result }).is_err() {
                return;
            }
        }
    });
    calls
}

/// Loads the conversations, and the open one's newest `limit` entries after marking it read.
async fn load(live: &Live, open: Option<ConversationId>, limit: usize) -> Loaded {
    let mut error = None;
    let mut attempt = async |method: &str, params: Value| -> Option<Value> {
        match rpc::dispatch(live, method, params).await {
            Ok(v) => Some(v),
            Err(e) => {
                error.get_or_insert(e);
                None
            }
        }
    };
    if let Some(id) = &open {
        // Shown now: read (with receipts on, the senders are told).
        attempt("read", json!({ "conversation": id })).await;
    }
    let history = match &open {
        Some(id) => attempt("messages", json!({ "conversation": id, "limit": limit }))
            .await
            .and_then(|v| serde_json::from_value(v).ok())
            .map(|entries| (id.clone(), entries)),
        None => None,
    };
    let conversations = attempt("conversations", json!({}))
        .await
        .and_then(|v| serde_json::from_value(v).ok());
    let preferences = attempt("settings", json!({}))
        .await
        .and_then(|v| serde_json::from_value(v).ok());
    Loaded {
        conversations,
        history,
        preferences,
        error: error.map(|e: RpcError| e.message),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
