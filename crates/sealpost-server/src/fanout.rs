//! Push across server nodes, over NATS.
//!
//! Several nodes that share one database serve the same users; a device is connected to one of
//! them. When a node accepts a message it pushes it to the recipients connected to itself (the
//! [`Hub`](crate::push::Hub)) and publishes the same frame on each recipient device's subject,
//! `sealpost.push.<device id in hex>`. A node subscribes to a device's subject for as long as
//! that device holds a push connection to it, so NATS carries a frame only to the nodes that
//! have its recipient. The connection is made with `no_echo`: a node never gets its own frames
//! back, so a device connected to the publishing node receives each frame once.
//!
//! NATS carries only what the database already holds (frames are published after the write is
//! durable), so losing NATS loses no message: while it is away, delivery across nodes falls back
//! to catch-up by cursor. When the NATS connection comes back, this node closes its push
//! connections, so that every client reconnects and catches up on what it missed meanwhile.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use sealpost_proto::DeviceId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Frames waiting to be handed to NATS; past that, frames are dropped (and counted): their
/// recipients on other nodes catch up by cursor.
const OUTBOX: usize = 16 * 1024;
/// Frames NATS may queue for one subscription before it counts as a slow consumer.
const PER_SUBSCRIPTION: usize = 1024;

/// The subject that carries pushes for a device.
pub fn subject(device: &DeviceId) -> String {
    format!("sealpost.push.{}", hex::encode(device.as_bytes()))
}

/// The subject on which a node that queued a key-directory change wakes the publishing node.
const DIRECTORY_WAKE: &str = "sealpost.directory.wake";

/// The NATS side of push.
pub struct Fanout {
    client: async_nats::Client,
    outbox: mpsc::Sender<(String, Bytes)>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout").finish_non_exhaustive()
    }
}

/// NATS could not be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS at the configured address: {0}")]
pub struct FanoutError(String);

impl Fanout {
    /// Connects to NATS at `url`. `on_reconnect` runs each time the connection comes back after
    /// it was lost. If NATS is down at start, the node starts anyway and keeps trying.
    pub async fn connect(
        url: &str,
        metrics: Arc<Metrics>,
        on_reconnect: impl Fn() + Send + Sync + 'static,
    ) -> Result<Self, FanoutError> {
        let on_reconnect = Arc::new(on_reconnect);
        // Until the first connection, too, pushes to other nodes are lost, and push connections
        // made meanwhile have no subscription: the first connection closes them as well.
        let was_lost = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let client = async_nats::ConnectOptions::new()
            .no_echo()
            .name("sealpost-server")
            .subscription_capacity(PER_SUBSCRIPTION)
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let (on_reconnect, was_lost) = (on_reconnect.clone(), was_lost.clone());
                async move {
                    use std::sync::atomic::Ordering;
                    match event {
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS connection lost: pushes to other nodes wait");
                            was_lost.store(true, Ordering::SeqCst);
                        }
                        async_nats::Event::Connected if was_lost.swap(false, Ordering::SeqCst) => {
                            tracing::info!(
                                "NATS connection back: closing push connections so clients catch up"
                            );
                            on_reconnect();
                        }
                        async_nats::Event::SlowConsumer(_) => {
                            tracing::debug!("a push subscription fell behind");
                        }
                        _ => {}
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| FanoutError(e.to_string()))?;
        let (outbox, mut queued) = mpsc::channel::<(String, Bytes)>(OUTBOX);
        let publisher = client.clone();
        let published = metrics.clone();
        tokio::spawn(async move {
            while let Some((subject, frame)) = queued.recv().await {
                published.nats_outbox.dec();
                match publisher.publish(subject, frame).await {
                    Ok(()) => published.frames_published.inc(),
                    Err(_) => published.frames_unpublished.inc(),
                };
            }
        });
        Ok(Self {
            client,
            outbox,
            metrics,
        })
    }

    /// Queues `frame` for the devices' subjects. Never blocks: with the outbox full, the frame is
    /// dropped for other nodes (their devices catch up by cursor).
    pub fn publish<'a>(&self, devices: impl Iterator<Item = &'a DeviceId>, frame: &Bytes) {
        for device in devices {
            self.enqueue(subject(device), frame.clone());
        }
    }

    /// Tells the other nodes that this one queued a key-directory change (the one that
    /// publishes starts a round). Never blocks; lost if NATS is away (the publisher also looks
    /// for queued changes every `directory_poll_ms`).
    pub fn wake_directory(&self) {
        self.enqueue(DIRECTORY_WAKE.to_owned(), Bytes::new());
    }

    /// Queues one frame for NATS; with the outbox full it is dropped and counted.
    fn enqueue(&self, subject: String, frame: Bytes) {
        if self.outbox.try_send((subject, frame)).is_ok() {
            self.metrics.nats_outbox.inc();
        } else {
            self.metrics.frames_unpublished.inc();
        }
    }

    /// Runs `wake` each time another node says it queued a key-directory change, until
    /// `shutdown` (the subscription outlives lost connections: the client subscribes again).
    pub async fn on_directory_wake(&self, wake: impl Fn(), shutdown: CancellationToken) {
        let mut wakes = match self.client.subscribe(DIRECTORY_WAKE).await {
            Ok(wakes) => wakes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to key-directory wake-ups: the publisher looks for changes every directory_poll_ms");
                return;
            }
        };
        loop {
            tokio::select! {
                woken = wakes.next() => match woken {
                    Some(_) => wake(),
                    None => return,
                },
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Whether NATS answers a round trip (a flush: PING, PONG) within `within`.
    pub async fn reachable(&self, within: Duration) -> bool {
        matches!(
            tokio::time::timeout(within, self.client.flush()).await,
            Ok(Ok(()))
        )
    }

    /// Subscribes to a device's subject (for one push connection), and waits until the
    /// subscription has been sent to NATS.
    /// `None` if NATS is away (then the connection is closed when NATS comes back).
    pub async fn subscribe(&self, device: &DeviceId) -> Option<async_nats::Subscriber> {
        let subscribed = async {
            let sub = self.client.subscribe(subject(device)).await.ok()?;
            self.client.flush().await.ok()?;
            Some(sub)
        };
        tokio::time::timeout(Duration::from_secs(2), subscribed)
            .await
            .ok()
            .flatten()
    }
}
