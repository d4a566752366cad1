//! The live client: one long-lived [`Client`] per profile, shared by every front end.
//!
//! [`Live`] is a cloneable, `Send + Sync` handle. Front ends call it concurrently — a send while
//! a subscriber listens, several commands at once from a daemon's connections — and each call
//! has the client to itself for its duration ([`Live::lock`], first come first served). One task
//! ([`Live::run`]) keeps the server connection: it catches up by cursor, takes what the server
//! pushes, and reconnects — signing in again when its session expired — through every transient
//! failure until it is shut down. What anyone learns goes to the profile's event log;
//! [`Subscription`]s read it from a place of their choosing and are woken whenever an operation
//! (theirs, another front end's, or the connection task's) appended to it.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, MutexGuard, watch};
use tokio_util::sync::CancellationToken;

use crate::client::{Backoff, Client, PushRefused, connect_push};
use crate::error::Error;
use crate::model::{EventId, LoggedEvent, Progress, Transfer, TransferKind};

/// A handle on the live client of one profile. Clones share it.
#[derive(Clone)]
pub struct Live {
    shared: Arc<Shared>,
}

struct Shared {
    client: Mutex<Client>,
    /// The newest event in the log, for subscribers to wait on.
    newest: watch::Sender<EventId>,
    /// Whether the server connection is up, and since when.
    connection: watch::Sender<Connection>,
    /// The file transfer in progress, if any (its latest state).
    transfer: watch::Sender<Option<Transfer>>,
}

/// The state of the live client's server connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Connection {
    /// Not connected yet.
    Starting,
    /// Connected and caught up: pushes arrive as they are sent.
    Connected {
        /// Since when (unix milliseconds).
        since: u64,
    },
    /// Disconnected; trying again.
    Disconnected {
        /// Since when (unix milliseconds).
        since: u64,
        /// Why, for a person.
        reason: String,
    },
}

/// Exclusive use of the live client for one operation. When it is dropped, subscribers are told
/// about whatever the operation appended to the event log.
pub struct ClientGuard<'a> {
    client: MutexGuard<'a, Client>,
    newest: &'a watch::Sender<EventId>,
}

impl Deref for ClientGuard<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for ClientGuard<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Drop for ClientGuard<'_> {
    fn drop(&mut self) {
        match self.client.last_event_id() {
            Ok(id) => {
                self.newest.send_if_modified(|newest| {
                    let moved = id > *newest;
                    if moved {
                        *newest = id;
                    }
                    moved
                });
            }
            // Subscribers read the log themselves; they find it on their next wake-up.
            Err(e) => tracing::warn!(error = %e, "cannot read the event log"),
        }
    }
}

impl Live {
    /// Makes `client` live. Nothing talks to the server until [`run`](Self::run) does.
    pub fn new(client: Client) -> Result<Live, Error> {
        let newest = client.last_event_id()?;
        Ok(Live {
            shared: Arc::new(Shared {
                client: Mutex::new(client),
                newest: watch::Sender::new(newest),
                connection: watch::Sender::new(Connection::Starting),
                transfer: watch::Sender::new(None),
            }),
        })
    }

    /// The client, for one operation (waits for operations before it to finish).
    pub async fn lock(&self) -> ClientGuard<'_> {
        ClientGuard {
            client: self.shared.client.lock().await,
            newest: &self.shared.newest,
        }
    }

    /// The server connection's state, and its changes.
    pub fn connection(&self) -> watch::Receiver<Connection> {
        self.shared.connection.subscribe()
    }

    /// The file transfer in progress and its changes (at most one for each percent).
    pub fn transfers(&self) -> watch::Receiver<Option<Transfer>> {
        self.shared.transfer.subscribe()
    }

    /// A progress callback for a transfer of `name`, for `Client::send_file` and
    /// `Client::download`: what it hears goes to [`transfers`](Self::transfers).
    pub fn reporter(&self, kind: TransferKind, name: &str) -> impl FnMut(Progress) + Send + use<> {
        let shared = self.shared.clone();
        let name = name.to_owned();
        let mut last = None;
        move |p: Progress| {
            let percent = p
                .done
                .saturating_mul(100)
                .checked_div(p.total)
                .unwrap_or(100);
            if last == Some(percent) {
                return;
            }
            last = Some(percent);
            shared.transfer.send_replace(Some(Transfer {
                kind,
                name: name.clone(),
                done: p.done,
                total: p.total,
            }));
        }
    }

    /// Reads the event log from after `after` ([`EventId::START`]: all of it), then each event
    /// as it is appended.
    pub fn subscribe(&self, after: EventId) -> Subscription {
        Subscription {
            live: self.clone(),
            after,
            consumer: None,
            newest: self.shared.newest.subscribe(),
            buffer: VecDeque::new(),
        }
    }

    /// Reads the events `consumer` has not marked seen, then each as it is appended. Mark them
    /// with [`Subscription::seen`] once they are shown: across a crash, an event is shown again
    /// rather than lost.
    pub fn subscribe_as(&self, consumer: &str) -> Subscription {
        Subscription {
            consumer: Some(consumer.to_owned()),
            ..self.subscribe(EventId::START)
        }
    }

    /// Keeps the server connection until `shutdown`: catches up by cursor, takes what the
    /// server pushes, and after any failure (the server or its database away, the network
    /// down, the session expired) waits a little longer each time and starts again.
    pub async fn run(&self, shutdown: CancellationToken) {
        tokio::join!(self.serve(shutdown.clone()), self.expire(shutdown));
    }

    /// Deletes disappearing messages when their time comes, whether or not anything arrives.
    async fn expire(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(e) = self.lock().await.purge_expired() {
                        tracing::warn!(error = %e, "could not delete disappeared messages");
                    }
                }
            }
        }
    }

    /// The connection half of [`run`](Self::run).
    async fn serve(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            let failure = tokio::select! {
                _ = shutdown.cancelled() => return,
                failure = self.connect_and_serve() => failure,
            };
            tracing::debug!(error = %failure, "push connection lost");
            let was_up = matches!(
                *self.shared.connection.borrow(),
                Connection::Connected { .. }
            );
            if was_up {
                // A connection that worked for a while starts the waits afresh.
                backoff = Backoff::default();
            }
            self.shared
                .connection
                .send_replace(Connection::Disconnected {
                    since: now_ms(),
                    reason: failure.to_string(),
                });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.next()) => {}
            }
        }
    }

    /// One connection: open it, catch up, then take pushes until it fails. Returns why it
    /// ended.
    async fn connect_and_serve(&self) -> Error {
        // Connecting (which can take long when the server is away) does not hold the client:
        // front ends go on meanwhile.
        let (request, server) = {
            let mut client = self.lock().await;
            match client.push_request().await {
                Ok(request) => (request, client.whoami().server),
                Err(e) => return e,
            }
        };
        let mut ws = match connect_push(request, &server).await {
            Ok(ws) => ws,
            Err(PushRefused::Token(e)) => {
                self.lock().await.push_token_refused();
                return e;
            }
            Err(PushRefused::Other(e)) => return e,
        };
        {
            let mut client = self.lock().await;
            if let Err(e) = client.sync_all().await {
                return e;
            }
            // Said before the guard wakes subscribers to what the catch-up found.
            self.shared
                .connection
                .send_replace(Connection::Connected { since: now_ms() });
        }
        loop {
            match ws.next().await {
                Some(Ok(frame)) => {
                    if let Err(e) = self.lock().await.on_push_frame(frame).await {
                        return e;
                    }
                }
                Some(Err(e)) => {
                    return Error::ServerUnreachable {
                        url: server,
                        reason: e.to_string(),
                    };
                }
                None => {
                    return Error::ServerUnreachable {
                        url: server,
                        reason: "the push connection closed".into(),
                    };
                }
            }
        }
    }
}

/// A reader of the event log that waits for new events (see [`Live::subscribe`]).
pub struct Subscription {
    live: Live,
    after: EventId,
    consumer: Option<String>,
    newest: watch::Receiver<EventId>,
    buffer: VecDeque<LoggedEvent>,
}

impl Subscription {
    /// The next event, waiting for one if there is none yet.
    pub async fn next(&mut self) -> Result<LoggedEvent, Error> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.after = e.event_id;
                return Ok(e);
            }
            let batch = {
                let client = self.live.shared.client.lock().await;
                match &self.consumer {
                    Some(consumer) => client.unseen_events_after(consumer, self.after, 256)?,
                    None => client.events_after(self.after, 256)?,
                }
            };
            if !batch.is_empty() {
                self.buffer.extend(batch);
                continue;
            }
            let after = self.after;
            // Never closed: the sender lives as long as the handle this holds.
            let _ = self.newest.wait_for(|newest| *newest > after).await;
        }
    }

    /// Marks events as seen by this subscription's consumer (for one made with
    /// [`Live::subscribe_as`]; otherwise nothing to do).
    pub async fn seen(&self, ids: &[EventId]) -> Result<(), Error> {
        match &self.consumer {
            Some(consumer) => self.live.lock().await.mark_seen(consumer, ids),
            None => Ok(()),
        }
    }

    /// Where it stands: the last event it returned.
    pub fn position(&self) -> EventId {
        self.after
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
