//! The server's metrics, on `prometheus-client`, served at `/metrics` in the OpenMetrics text
//! format (which Prometheus reads). docs/deploy.md lists every metric.

use std::time::{Duration, Instant, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The labels of a request's latency: the route as the router matched it (`unmatched` for a
/// path it does not serve, so that no client can make up new series), method and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route pattern, e.g. `/v1/groups/{group}/messages`.
    pub route: String,
    /// The HTTP method.
    pub method: String,
    /// The status answered.
    pub status: u16,
}

/// The label of a refusal: which limit refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

type Latencies = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// The server's metrics. Cheap to update from any task; rendered on each scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Application messages accepted.
    pub messages_accepted: Counter,
    /// Handshake messages (commits, proposals) accepted.
    pub commits_accepted: Counter,
    /// Frames pushed over WebSockets.
    pub frames_pushed: Counter,
    /// Push connections dropped because the client did not keep up.
    pub slow_clients_dropped: Counter,
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Frames published to NATS for devices connected to other nodes.
    pub frames_published: Counter,
    /// Frames that could not be published to NATS (their recipients catch up by cursor).
    pub frames_unpublished: Counter,
    /// Frames waiting to be published to NATS.
    pub nats_outbox: Gauge,
    /// Durable writes waiting for the storage or in progress.
    pub storage_writes_waiting: Gauge,
    /// Frames queued for this node's push connections and not yet written to their sockets
    /// (set from the push hub at each scrape).
    pub push_queue_frames: Gauge,
    requests: Latencies,
    refused: Family<LimitLabels, Counter>,
    storage_writes: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Process {
            started: SystemTime::now(),
        }));
        let m = Self {
            registry: Registry::default(),
            messages_accepted: Counter::default(),
            commits_accepted: Counter::default(),
            frames_pushed: Counter::default(),
            slow_clients_dropped: Counter::default(),
            connections: Gauge::default(),
            frames_published: Counter::default(),
            frames_unpublished: Counter::default(),
            nats_outbox: Gauge::default(),
            storage_writes_waiting: Gauge::default(),
            push_queue_frames: Gauge::default(),
            // 0.25 ms to 8 s.
            requests: Latencies::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
            }),
            refused: Family::default(),
            // 50 µs to 1.6 s.
            storage_writes: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        };
        let ours = registry.sub_registry_with_prefix("sealpost");
        let counters = [
            (
                "messages_accepted",
                "Application messages accepted.",
                &m.messages_accepted,
            ),
            (
                "handshakes_accepted",
                "Commits and proposals accepted.",
                &m.commits_accepted,
            ),
            (
                "frames_pushed",
                "Frames pushed over WebSockets.",
                &m.frames_pushed,
            ),
            (
                "slow_clients_dropped",
                "Push connections dropped for not keeping up.",
                &m.slow_clients_dropped,
            ),
            (
                "frames_published",
                "Frames published to NATS for devices on other nodes.",
                &m.frames_published,
            ),
            (
                "frames_unpublished",
                "Frames that could not be published to NATS (their devices catch up).",
                &m.frames_unpublished,
            ),
        ];
        for (name, help, counter) in counters {
            ours.register(name, help, counter.clone());
        }
        let gauges = [
            ("connections", "Open WebSocket connections.", &m.connections),
            (
                "nats_outbox_frames",
                "Frames waiting to be published to NATS.",
                &m.nats_outbox,
            ),
            (
                "storage_writes_waiting",
                "Durable writes (messages, commits) waiting for the storage or in progress.",
                &m.storage_writes_waiting,
            ),
            (
                "push_queue_frames",
                "Frames queued for this node's WebSocket connections, not yet written to them.",
                &m.push_queue_frames,
            ),
        ];
        for (name, help, gauge) in gauges {
            ours.register(name, help, gauge.clone());
        }
        ours.register_with_unit(
            "request_duration",
            "HTTP requests answered, by route, method and status, and how long each took.",
            Unit::Seconds,
            m.requests.clone(),
        );
        ours.register(
            "requests_refused",
            "Requests refused by a limit, by limit: a rate limit (registrations, sign_ins, claims, lookups, sends, connects), requests in progress (inflight_requests), open connections (open_connections), body size (body_size).",
            m.refused.clone(),
        );
        ours.register_with_unit(
            "storage_write",
            "Durable writes (a message or commit stored before it is acknowledged) and how long each took.",
            Unit::Seconds,
            m.storage_writes.clone(),
        );
        Self { registry, ..m }
    }
}

/// One durable write in progress (see [`Metrics::storage_write`]).
#[must_use = "the write is timed until this is dropped"]
pub struct StorageWrite<'a> {
    metrics: &'a Metrics,
    started: Instant,
}

impl Drop for StorageWrite<'_> {
    fn drop(&mut self) {
        self.metrics.storage_writes_waiting.dec();
        self.metrics
            .storage_writes
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Counts one durable write as waiting until the guard is dropped, and then records how
    /// long it took.
    pub fn storage_write(&self) -> StorageWrite<'_> {
        self.storage_writes_waiting.inc();
        StorageWrite {
            metrics: self,
            started: Instant::now(),
        }
    }

    /// Records one answered request.
    pub fn record_request(&self, labels: RequestLabels, took: Duration) {
        self.requests
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// The counter of refusals by `limit` (a name from the help text of
    /// `sealpost_requests_refused_total`).
    pub fn refusals(&self, limit: &'static str) -> Counter {
        self.refused.get_or_create(&LimitLabels { limit }).clone()
    }

    /// Renders the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot render the metrics");
        }
        out
    }
}

/// The process's own metrics, read from `/proc` on each scrape (Linux; elsewhere only its start
/// time): open files against their limit, and resident memory, the limits docs/deploy.md names.
#[derive(Debug)]
struct Process {
    started: SystemTime,
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let proc_status = std::fs::read_to_string("/proc/self/status").ok();
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let gauges = [
            (
                "process_open_fds",
                "Open file descriptors.",
                std::fs::read_dir("/proc/self/fd")
                    .ok()
                    .map(|d| d.count().saturating_sub(1) as i64),
            ),
            (
                "process_max_fds",
                "The most file descriptors the process may open.",
                limits.as_deref().and_then(max_open_files),
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                proc_status.as_deref().and_then(resident_bytes),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, seconds.",
                self.started
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs() as i64),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
                gauge.encode(metric)?;
            }
        }
        Ok(())
    }
}

/// `Max open files  <soft>  <hard>  files` in `/proc/self/limits`: the soft limit.
fn max_open_files(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `VmRSS:  <n> kB` in `/proc/self/status`, in bytes.
fn resident_bytes(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_metric_once_with_its_type() {
        let m = Metrics::default();
        m.messages_accepted.inc();
        let write = m.storage_write();
        assert_eq!(m.storage_writes_waiting.get(), 1);
        drop(write);
        m.record_request(
            RequestLabels {
                route: "/v1/groups/{group}/messages".into(),
                method: "POST".into(),
                status: 200,
            },
            Duration::from_millis(3),
        );
        m.refusals("sends").inc();
        let text = m.render();
        for line in [
            "# TYPE sealpost_messages_accepted counter",
            "sealpost_messages_accepted_total 1",
            "# TYPE sealpost_storage_write_seconds histogram",
            "sealpost_storage_write_seconds_count 1",
            "sealpost_storage_writes_waiting 0",
            "sealpost_push_queue_frames 0",
            "# TYPE sealpost_request_duration_seconds histogram",
            "sealpost_request_duration_seconds_count{route=\"/v1/groups/{group}/messages\",method=\"POST\",status=\"200\"} 1",
            "sealpost_requests_refused_total{limit=\"sends\"} 1",
            "# TYPE process_open_fds gauge",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn proc_files_are_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            20000                524288               files     \n";
        assert_eq!(max_open_files(limits), Some(20_000));
        assert_eq!(
            resident_bytes("Name:\tx\nVmRSS:\t  1200 kB\n"),
            Some(1_228_800)
        );
        assert_eq!(resident_bytes("VmRSS: lots"), None);
    }
}
