//! `sealpost bench --only ceilings`: what this machine can do at most, measured in the same
//! sitting as the server, so that the server's figures can be given as a share of them: how
//! many fsyncs per second the disk takes (and their latency tail), how many single-row commits
//! per second PostgreSQL makes for one client, and how many messages per second NATS carries
//! from one publisher to one subscriber.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt as _;

/// How long each ceiling is measured.
const SPELL: Duration = Duration::from_secs(3);

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Sorted latencies → (p50, p99, max) in milliseconds.
fn tail(mut samples: Vec<Duration>) -> (f64, f64, f64) {
    samples.sort();
    let at = |p: f64| {
        samples
            .get(((samples.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .map_or(f64::NAN, millis)
    };
    (at(0.5), at(0.99), at(1.0))
}

/// Appends 512 bytes and fsyncs (fdatasync), over and over, in a file in `dir`.
fn fsync_ceiling(dir: &std::path::Path) -> Result<()> {
    use std::io::Write as _;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = [7u8; 512];
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < SPELL {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(t.elapsed());
    }
    let n = samples.len();
    let (p50, p99, max) = tail(samples);
    println!(
        "ceiling: disk fsync (512-byte append + fdatasync, one writer): {:.0} fsyncs/s; p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.1} ms",
        n as f64 / started.elapsed().as_secs_f64()
    );
    std::fs::remove_file(path)?;
    Ok(())
}

/// One client inserting one row per transaction.
async fn postgres_ceiling(base: &str) -> Result<()> {
    let url = sealpost_server::storage::postgres::scratch_schema(base).await?;
    let config: tokio_postgres::Config = url.parse().context("the PostgreSQL URL")?;
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute("CREATE TABLE ceiling (id BIGSERIAL PRIMARY KEY, payload BYTEA NOT NULL)")
        .await?;
    let insert = client
        .prepare("INSERT INTO ceiling (payload) VALUES ($1)")
        .await?;
    let payload = vec![7u8; 256];
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < SPELL {
        let t = Instant::now();
        client.execute(&insert, &[&payload]).await?;
        samples.push(t.elapsed());
    }
    let n = samples.len();
    let (p50, p99, max) = tail(samples);
    println!(
        "ceiling: PostgreSQL single-row commits (one client, 256-byte row): {:.0} commits/s; p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.1} ms",
        n as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One publisher, one subscriber, 300-byte messages.
async fn nats_ceiling(url: &str) -> Result<()> {
    let publisher = async_nats::connect(url).await?;
    let subscriber = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .connect(url)
        .await?;
    let subject = format!("sealpost.ceiling.{}", std::process::id());
    let mut sub = subscriber.subscribe(subject.clone()).await?;
    subscriber.flush().await?;
    let total = 300_000usize;
    let payload = bytes::Bytes::from(vec![7u8; 300]);
    let started = Instant::now();
    let sending = tokio::spawn(async move {
        for _ in 0..total {
            publisher.publish(subject.clone(), payload.clone()).await?;
        }
        publisher.flush().await?;
        Ok::<_, anyhow::Error>(())
    });
    let mut received = 0usize;
    while received < total {
        match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(_)) => received += 1,
            _ => break,
        }
    }
    let elapsed = started.elapsed();
    sending.await??;
    println!(
        "ceiling: NATS pub/sub (one publisher, one subscriber, 300-byte messages): {received} of {total} delivered in {:.2} s = {:.0} msgs/s",
        elapsed.as_secs_f64(),
        received as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

/// Prints the ceilings; PostgreSQL and NATS only when given.
pub async fn run(database: Option<&str>, nats: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    fsync_ceiling(dir.path())?;
    if let Some(base) = database {
        postgres_ceiling(base).await?;
    }
    nats_ceiling(nats)
        .await
        .with_context(|| format!("NATS at {nats}"))?;
    Ok(())
}
