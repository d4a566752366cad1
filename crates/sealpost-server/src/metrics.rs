//! Prometheus counters, rendered in the text exposition format at `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Subtracts one (gauges only).
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Application messages accepted.
    pub messages_accepted: Counter,
    /// Handshake messages (commits, proposals) accepted.
    pub commits_accepted: Counter,
    /// Frames pushed over WebSockets.
    pub frames_pushed: Counter,
    /// Push connections dropped because the client did not keep up.
    pub slow_clients_dropped: Counter,
    /// Currently open WebSocket connections (gauge).
    pub connections: Counter,
    /// HTTP requests answered.
    pub requests: Counter,
    /// Requests refused by a limit (size, rate, concurrency).
    pub requests_refused: Counter,
    /// Sum of durable-write latencies, microseconds.
    pub storage_write_micros: Counter,
    /// Number of durable writes timed.
    pub storage_writes: Counter,
    /// Frames published to NATS for devices connected to other nodes.
    pub frames_published: Counter,
    /// Frames that could not be published to NATS (their recipients catch up by cursor).
    pub frames_unpublished: Counter,
}

impl Metrics {
    /// Records the latency of one durable write that started at `started`.
    pub fn record_write(&self, started: std::time::Instant) {
        self.storage_write_micros
            .add(started.elapsed().as_micros() as u64);
        self.storage_writes.inc();
    }

    /// Renders the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let rows: [(&str, &str, &str, &Counter); 11] = [
            (
                "sealpost_frames_published_total",
                "counter",
                "Frames published to NATS for other nodes.",
                &self.frames_published,
            ),
            (
                "sealpost_frames_unpublished_total",
                "counter",
                "Frames that could not be published to NATS.",
                &self.frames_unpublished,
            ),
            (
                "sealpost_messages_accepted_total",
                "counter",
                "Application messages accepted.",
                &self.messages_accepted,
            ),
            (
                "sealpost_handshakes_accepted_total",
                "counter",
                "Commits and proposals accepted.",
                &self.commits_accepted,
            ),
            (
                "sealpost_frames_pushed_total",
                "counter",
                "Frames pushed over WebSockets.",
                &self.frames_pushed,
            ),
            (
                "sealpost_slow_clients_dropped_total",
                "counter",
                "Push connections dropped for not keeping up.",
                &self.slow_clients_dropped,
            ),
            (
                "sealpost_connections",
                "gauge",
                "Open WebSocket connections.",
                &self.connections,
            ),
            (
                "sealpost_requests_total",
                "counter",
                "HTTP requests answered.",
                &self.requests,
            ),
            (
                "sealpost_requests_refused_total",
                "counter",
                "Requests refused by a limit.",
                &self.requests_refused,
            ),
            (
                "sealpost_storage_write_seconds_sum",
                "counter",
                "Total time of durable writes.",
                &self.storage_write_micros,
            ),
            (
                "sealpost_storage_write_seconds_count",
                "counter",
                "Number of durable writes.",
                &self.storage_writes,
            ),
        ];
        for (name, kind, help, c) in rows {
            let value = if name.ends_with("seconds_sum") {
                format!("{}", c.get() as f64 / 1e6)
            } else {
                c.get().to_string()
            };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}
