//! Live push: a map from device to its open WebSocket connections. Each connection has a
//! bounded queue; a connection that does not keep up is dropped (its client reconnects and
//! catches up by cursor), so a slow client can never make the server buffer without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sealpost_proto::{Delivery, DeviceId};
use tokio::sync::mpsc;

use crate::fanout::Fanout;
use crate::metrics::Metrics;

/// Frames queued per connection before it counts as too slow.
pub const QUEUE_PER_CONNECTION: usize = 1024;

type Conns = HashMap<DeviceId, Vec<(u64, mpsc::Sender<Bytes>)>>;

/// The push hub. Cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {
    conns: Arc<Mutex<Conns>>,
    next_id: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    /// Other nodes, when several share the database.
    remote: Option<Arc<Fanout>>,
}

/// A registered connection; unregisters itself when dropped.
pub struct Subscription {
    hub: Hub,
    device: DeviceId,
    id: u64,
    /// Frames to send.
    pub frames: mpsc::Receiver<Bytes>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut conns) = self.hub.conns.lock()
            && let Some(list) = conns.get_mut(&self.device)
        {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                conns.remove(&self.device);
            }
        }
    }
}

impl Hub {
    /// A hub reporting to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            ..Self::default()
        }
    }

    /// Also publishes every frame to the other nodes through `fanout`.
    pub fn with_fanout(mut self, fanout: Arc<Fanout>) -> Self {
        self.remote = Some(fanout);
        self
    }

    /// Subscribes to the device's frames from other nodes; `None` on a single node (or while
    /// NATS is away).
    pub async fn subscribe_remote(&self, device: &DeviceId) -> Option<async_nats::Subscriber> {
        match &self.remote {
            Some(fanout) => fanout.subscribe(device).await,
            None => None,
        }
    }

    /// Whether NATS answers a round trip within `within`; `None` on a single node.
    pub async fn remote_reachable(&self, within: std::time::Duration) -> Option<bool> {
        let fanout = self.remote.as_ref()?;
        Some(fanout.reachable(within).await)
    }

    /// Ends every push connection on this node: their clients reconnect and catch up by cursor.
    pub fn close_all(&self) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.clear();
        }
    }

    /// Frames queued for this node's connections and not yet taken by their writers.
    pub fn queued_frames(&self) -> usize {
        self.conns.lock().map_or(0, |conns| {
            conns
                .values()
                .flatten()
                .map(|(_, tx)| tx.max_capacity() - tx.capacity())
                .sum()
        })
    }

    /// Registers a connection for `device`.
    pub fn subscribe(&self, device: DeviceId) -> Subscription {
        let (tx, rx) = mpsc::channel(QUEUE_PER_CONNECTION);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut conns) = self.conns.lock() {
            conns.entry(device).or_default().push((id, tx));
        }
        Subscription {
            hub: self.clone(),
            device,
            id,
            frames: rx,
        }
    }

    /// Queues `frame` for every connection of the given devices, here and (through NATS) on
    /// other nodes. Never blocks.
    pub fn push<'a>(&self, devices: impl Iterator<Item = &'a DeviceId> + Clone, frame: &Delivery) {
        let Ok(bytes) = frame.encode() else { return };
        let bytes = Bytes::from(bytes);
        if let Some(remote) = &self.remote {
            remote.publish(devices.clone(), &bytes);
        }
        let Ok(mut conns) = self.conns.lock() else {
            return;
        };
        for device in devices {
            let Some(list) = conns.get_mut(device) else {
                continue;
            };
            list.retain(|(_, tx)| match tx.try_send(bytes.clone()) {
                Ok(()) => {
                    self.metrics.frames_pushed.inc();
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.metrics.slow_clients_dropped.inc();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue depth counts what is queued and not yet taken, over every connection, and
    /// forgets a connection that is gone.
    #[test]
    fn queued_frames_counts_what_waits_on_every_connection() {
        let hub = Hub::default();
        let alice = DeviceId::from_bytes([1; 16]);
        let bob = DeviceId::from_bytes([2; 16]);
        let mut a = hub.subscribe(alice);
        let b = hub.subscribe(bob);
        let frame = Delivery {
            kind: sealpost_proto::DeliveryKind::Group,
            inbox_seq: 0,
            group_id: [3; 16],
            group_seq: 1,
            sent_at: 2,
            payload: vec![4; 10].into(),
        };
        hub.push([alice, bob].iter(), &frame);
        hub.push([alice].iter(), &frame);
        assert_eq!(hub.queued_frames(), 3);
        assert!(a.frames.try_recv().is_ok());
        assert_eq!(hub.queued_frames(), 2);
        drop(b);
        assert_eq!(hub.queued_frames(), 1);
    }
}
