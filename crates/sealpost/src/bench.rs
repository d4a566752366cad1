//! `sealpost bench`: a load generator. It starts `sealpost server` as a separate process on a
//! loopback port with a fresh embedded store (or uses `--server`), sets up real accounts and
//! conversations through the SDK, and then drives the server with pre-encrypted MLS messages over
//! real sockets, so that the server — not the client's cryptography — is what is measured. The
//! client-side MLS cost is measured separately.
//!
//! Latency is end to end: from the moment a sender starts its HTTP request to the moment the
//! recipient's WebSocket frame arrives. Each sender posts in order on its own connection, so the
//! recipient maps the frame's sequence number back to the send time.

use std::collections::HashMap;
use std::io::BufRead as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt as _;
use sealpost_proto::{AckRequest, Delivery, GroupId, PostedResponse, SyncBatch, SyncRequest};
use sealpost_sdk::{BenchBatch, Client, ClientSettings, Suite, Username};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Use this server instead of starting one.
    #[arg(long)]
    server: Option<String>,
    /// Sender/recipient pairs for the 1:1 scenarios.
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Messages per sender in the 1:1 throughput run.
    #[arg(long, default_value_t = 1000)]
    per_sender: usize,
    /// Fixed rate for the latency run, messages per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of the fixed-rate run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Backlog size for the drain run.
    #[arg(long, default_value_t = 50_000)]
    backlog: usize,
    /// Members of the group run.
    #[arg(long, default_value_t = 100)]
    group_size: usize,
    /// Messages posted to the group.
    #[arg(long, default_value_t = 500)]
    group_messages: usize,
    /// Run only these scenarios (comma-separated from a, rate, b, c, client; `directory` runs
    /// the key-directory measurements on their own).
    #[arg(long, value_delimiter = ',', default_values_t = ["a".to_string(), "rate".into(), "b".into(), "c".into(), "client".into()])]
    only: Vec<String>,
    /// Directory sizes (accounts) for `--only directory`.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000usize, 100_000])]
    accounts: Vec<usize>,
    /// How senders post: over their WebSocket (up to 32 in flight each) or one HTTP request per
    /// message.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// Ciphersuite of the conversations.
    #[arg(long, value_enum, default_value_t = SuiteArg::Pq)]
    ciphersuite: SuiteArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    Ws,
    Http,
}

/// The text of every benchmark message (padded to the 256-byte bucket).
const TEXT: &str = "benchmark message of about forty bytes..";

/// Prints "what: n messages in s = rate msgs/s (detail)".
fn rate_line(what: &str, n: usize, elapsed: Duration, detail: &str) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{what}: {n} messages in {secs:.2} s = {:.0} msgs/s{detail}",
        n as f64 / secs
    );
}

/// Sends in flight per WebSocket sender.
const WS_WINDOW: usize = 32;

/// Posts every message of `batch` in order, recording send times; at most one per `interval`.
async fn send_all(
    transport: Transport,
    http: reqwest::Client,
    batch: BenchBatch,
    clock: Clock,
    interval: Option<Duration>,
) -> Result<()> {
    let mut tick = interval.map(|i| {
        let mut t = tokio::time::interval(i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    if transport == Transport::Http {
        let sender = Sender { http, batch };
        for m in &sender.batch.messages {
            if let Some(t) = tick.as_mut() {
                t.tick().await;
            }
            clock
                .lock()
                .map_err(|_| anyhow::anyhow!("lock"))?
                .insert(tag(m), Instant::now());
            sender.post(m).await?;
        }
        return Ok(());
    }
    let ws = batch.server.replacen("http", "ws", 1) + "/v1/ws";
    let mut req = ws.into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {}", batch.token).parse()?);
    let (socket, _) =
        tokio_tungstenite::connect_async_with_config(req, Some(sealpost_sdk::ws_config()), false)
            .await?;
    let (mut sink, mut stream) = socket.split();
    let group: GroupId = batch.group.parse()?;
    let (mut next, mut answered) = (0usize, 0usize);
    while answered < batch.messages.len() {
        while next < batch.messages.len() && next - answered < WS_WINDOW {
            if let Some(t) = tick.as_mut() {
                t.tick().await;
            }
            let m = &batch.messages[next];
            let mut frame = Vec::with_capacity(24 + m.len());
            frame.extend_from_slice(&(next as u64).to_be_bytes());
            frame.extend_from_slice(group.as_bytes());
            frame.extend_from_slice(m);
            clock
                .lock()
                .map_err(|_| anyhow::anyhow!("lock"))?
                .insert(tag(m), Instant::now());
            futures_util::SinkExt::send(&mut sink, Message::Binary(frame.into())).await?;
            next += 1;
        }
        match stream.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() != "subscribed" => {
                let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                ensure!(v.get("error").is_none(), "a send was refused: {v}");
                answered += 1;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the server closed the connection"),
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SuiteArg {
    Pq,
    Classic,
}

struct ServerProcess {
    child: Option<std::process::Child>,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_server(url: Option<String>) -> Result<ServerProcess> {
    if let Some(url) = url {
        return Ok(ServerProcess {
            child: None,
            url,
            _dir: None,
        });
    }
    let dir = tempfile::tempdir()?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["server", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .env("SEALPOST_LOG", "warn")
        .env("SEALPOST_KEY_PACKAGE_CLAIMS_PER_MINUTE", "1000000")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start the server process")?;
    let stdout = child.stdout.take().context("no server stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        url.starts_with("http://"),
        "the server did not report its address: {line:?}"
    );
    Ok(ServerProcess {
        child: Some(child),
        url,
        _dir: Some(dir),
    })
}

/// Percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

struct Sender {
    http: reqwest::Client,
    batch: BenchBatch,
}

impl Sender {
    async fn post(&self, msg: &[u8]) -> Result<PostedResponse> {
        let r = self
            .http
            .post(format!(
                "{}/v1/groups/{}/messages",
                self.batch.server, self.batch.group
            ))
            .bearer_auth(&self.batch.token)
            .body(msg.to_vec())
            .send()
            .await?;
        ensure!(r.status().is_success(), "post failed: {}", r.status());
        Ok(r.json().await?)
    }
}

/// Send times keyed by the last 16 bytes of each ciphertext (its AEAD tag: unique per message),
/// recorded before the request starts, so a receiver never waits for the sender's bookkeeping.
type Clock = Arc<Mutex<HashMap<[u8; 16], Instant>>>;

fn tag(payload: &[u8]) -> [u8; 16] {
    let mut t = [0u8; 16];
    let n = payload.len().min(16);
    t[16 - n..].copy_from_slice(&payload[payload.len() - n..]);
    t
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects a recipient and waits for the server's `subscribed` frame: from then on every new
/// message for the device is pushed to this socket.
async fn subscribe(url: &str, token: &str) -> Result<Socket> {
    let ws = url.replacen("http", "ws", 1) + "/v1/ws";
    let mut req = ws.into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(req, Some(sealpost_sdk::ws_config()), false)
            .await?;
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(_))) => return Ok(socket),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("push connection closed before subscribing"),
        }
    }
}

/// Records latencies until `expect` frames have arrived.
async fn receive(mut socket: Socket, clock: Clock, expect: usize) -> Result<Vec<Duration>> {
    let mut lat = Vec::with_capacity(expect);
    while lat.len() < expect {
        let Some(frame) = socket.next().await else {
            bail!("push connection closed")
        };
        let at = Instant::now();
        if let Message::Binary(b) = frame? {
            let d = Delivery::decode(&b).map_err(|_| anyhow::anyhow!("bad frame"))?;
            let t0 = clock
                .lock()
                .map_err(|_| anyhow::anyhow!("lock"))?
                .get(&tag(d.payload.as_slice()))
                .copied();
            match t0 {
                Some(t0) => lat.push(at.saturating_duration_since(t0)),
                None => bail!("a frame arrived that no sender sent"),
            }
        }
    }
    Ok(lat)
}

/// One measured round: every recipient subscribes (token, frames expected), then the senders
/// post their batches (each optionally starting after an offset and paced at an interval).
/// Returns the elapsed time from the first send to the last delivery, and the latencies.
async fn measure(
    url: &str,
    transport: Transport,
    http: &reqwest::Client,
    recipients: Vec<(String, usize)>,
    senders: Vec<(BenchBatch, Duration, Option<Duration>)>,
) -> Result<(Duration, Vec<Duration>)> {
    let clock: Clock = Arc::default();
    let mut rx = Vec::with_capacity(recipients.len());
    for (token, expect) in recipients {
        let socket = subscribe(url, &token).await?;
        rx.push(tokio::spawn(receive(socket, clock.clone(), expect)));
    }
    let t = Instant::now();
    let mut tx = Vec::with_capacity(senders.len());
    for (batch, offset, interval) in senders {
        let (clock, http) = (clock.clone(), http.clone());
        tx.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            send_all(transport, http, batch, clock, interval).await
        }));
    }
    for task in tx {
        task.await??;
    }
    let mut lat = Vec::new();
    for task in rx {
        lat.extend(task.await??);
    }
    Ok((t.elapsed(), lat))
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap_or_default()
}

async fn users(url: &str, home: &std::path::Path, prefix: &str, n: usize) -> Result<Vec<Client>> {
    let settings = ClientSettings {
        key_packages_target: 2,
        key_packages_low: 1,
        ..ClientSettings::default()
    };
    // Concurrently: registrations answer once their directory epoch is published, and
    // concurrent ones share an epoch.
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let mut out = Vec::with_capacity(n);
    for chunk in names.chunks(64) {
        let batch = chunk.iter().map(|name| {
            let dir = home.join(name);
            let settings = settings.clone();
            async move { Client::register_with(&dir, url, name, None, settings).await }
        });
        out.extend(futures_util::future::try_join_all(batch).await?);
    }
    Ok(out)
}

fn report(title: &str, msgs: usize, deliveries: usize, elapsed: Duration, mut lat: Vec<Duration>) {
    lat.sort();
    let secs = elapsed.as_secs_f64();
    println!(
        "{title}: {msgs} messages, {deliveries} deliveries in {secs:.2} s = {:.0} msgs/s, {:.0} deliveries/s; latency p50 {:.2} ms, p99 {:.2} ms",
        msgs as f64 / secs,
        deliveries as f64 / secs,
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
}

/// Runs every scenario and prints one line per result.
pub async fn run(args: BenchArgs) -> Result<()> {
    let suite = match args.ciphersuite {
        SuiteArg::Pq => Suite::Pq,
        SuiteArg::Classic => Suite::Classic,
    };
    let want = |k: &str| args.only.iter().any(|o| o == k);
    if want("directory") {
        return crate::bench_directory::run(&args.accounts).await;
    }
    let http = http();
    let server = start_server(args.server.clone())?;
    let url = server.url.clone();
    let tmp = tempfile::tempdir()?;
    println!(
        "server {url}; ciphersuite {suite:?}; senders post over {:?}; 2 cores shared by server and load generator",
        args.transport
    );

    // ---- setup: pairs with a 1:1 conversation each ------------------------------------------
    let t = Instant::now();
    let mut senders = users(&url, tmp.path(), "snd", args.pairs).await?;
    let mut recipients = users(&url, tmp.path(), "rcv", args.pairs).await?;
    for (i, s) in senders.iter_mut().enumerate() {
        if suite == Suite::Classic {
            s.create_group(
                &format!("pair{i}"),
                &[Username::new(&format!("rcv{i}"))?],
                suite,
            )
            .await?;
        } else {
            s.send(&format!("@rcv{i}"), "hello").await?;
        }
    }
    for r in recipients.iter_mut() {
        r.sync().await?;
    }
    // How sender i and recipient i name their conversation.
    let target = |i: usize| {
        if suite == Suite::Classic {
            format!("#pair{i}")
        } else {
            format!("@rcv{i}")
        }
    };
    let peer_target = |i: usize| {
        if suite == Suite::Classic {
            format!("#pair{i}")
        } else {
            format!("@snd{i}")
        }
    };
    println!(
        "setup: {} accounts and {} conversations in {:.1} s",
        2 * args.pairs,
        args.pairs,
        t.elapsed().as_secs_f64()
    );

    if want("a") {
        // ---- client-side MLS cost -------------------------------------------------------------
        let t = Instant::now();
        let mut batches = Vec::with_capacity(args.pairs);
        for (i, s) in senders.iter_mut().enumerate() {
            batches.push(s.bench_prepare(&target(i), args.per_sender, TEXT).await?);
        }
        let enc = t.elapsed();
        let n_enc = args.pairs * args.per_sender;
        rate_line(
            "client MLS encrypt (incl. local commit)",
            n_enc,
            enc,
            " per core",
        );

        // ---- (a) 1:1 online, closed loop ------------------------------------------------------
        let mut rx = Vec::new();
        for (i, r) in recipients.iter_mut().enumerate() {
            rx.push((
                r.bench_prepare(&peer_target(i), 0, "").await?.token,
                args.per_sender,
            ));
        }
        let tx = batches
            .into_iter()
            .map(|b| (b, Duration::ZERO, None))
            .collect();
        let (elapsed, lat) = measure(&url, args.transport, &http, rx, tx).await?;
        report(
            "(a) 1:1 online, closed loop",
            n_enc,
            lat.len(),
            elapsed,
            lat,
        );
    }
    if want("rate") {
        // ---- (a') 1:1 online at a fixed rate ----------------------------------------------------
        let total = (args.rate * args.seconds) as usize;
        let per = total / args.pairs;
        let mut batches = Vec::new();
        for (i, s) in senders.iter_mut().enumerate() {
            batches.push(s.bench_prepare(&target(i), per, TEXT).await?);
        }
        let mut rx = Vec::new();
        for (i, r) in recipients.iter_mut().enumerate() {
            rx.push((r.bench_prepare(&peer_target(i), 0, "").await?.token, per));
        }
        // Senders spread evenly over one interval, each paced at the interval.
        let interval = Duration::from_secs_f64(args.pairs as f64 / args.rate as f64);
        let tx = batches
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                (
                    b,
                    interval.mul_f64(i as f64 / args.pairs as f64),
                    Some(interval),
                )
            })
            .collect();
        let (elapsed, lat) = measure(&url, args.transport, &http, rx, tx).await?;
        report(
            &format!("(a') 1:1 online at {} msgs/s", args.rate),
            per * args.pairs,
            lat.len(),
            elapsed,
            lat,
        );
    }
    if want("b") {
        // ---- (b) backlog drain ------------------------------------------------------------------
        let batch = senders[0]
            .bench_prepare(&target(0), args.backlog, TEXT)
            .await?;
        let group = batch.group.clone();
        let sender = Sender {
            http: http.clone(),
            batch,
        };
        let mut first = None;
        let t = Instant::now();
        let mut posts =
            futures_util::stream::iter(sender.batch.messages.iter().map(|m| sender.post(m)))
                .buffered(32);
        while let Some(p) = posts.next().await {
            let p = p?;
            first = Some(first.map_or(p.seq, |f: u64| f.min(p.seq)));
        }
        drop(posts);
        let fill = t.elapsed();
        rate_line("(b) backlog filled", args.backlog, fill, " (32 in flight)");
        let rtoken = recipients[0]
            .bench_prepare(&peer_target(0), 0, "")
            .await?
            .token;
        let gid: GroupId = group.parse()?;
        let mut cursor = first.unwrap_or(1) - 1;
        let mut drained = 0usize;
        let t = Instant::now();
        loop {
            let req = SyncRequest {
                inbox_after: None,
                groups: vec![(gid, cursor)],
                limit: Some(1000),
            };
            let r = http
                .post(format!("{url}/v1/sync"))
                .bearer_auth(&rtoken)
                .json(&req)
                .send()
                .await?;
            ensure!(r.status().is_success(), "sync failed: {}", r.status());
            let b =
                SyncBatch::decode(&r.bytes().await?).map_err(|_| anyhow::anyhow!("bad batch"))?;
            let Some(last) = b.deliveries.last() else {
                break;
            };
            cursor = last.group_seq;
            drained += b.deliveries.len();
            let ack = AckRequest {
                inbox: None,
                groups: vec![(gid, cursor)],
            };
            http.post(format!("{url}/v1/ack"))
                .bearer_auth(&rtoken)
                .json(&ack)
                .send()
                .await?;
            if b.more == 0 {
                break;
            }
        }
        let d = t.elapsed();
        rate_line(
            "(b) backlog drained by one offline recipient",
            drained,
            d,
            " (sync batches of 1,000, acknowledged)",
        );
    }
    if want("client") {
        // ---- client-side decrypt cost -------------------------------------------------------------
        let mut dec = users(&url, tmp.path(), "dec", 2).await?;
        dec[0].send("@dec1", "hello").await?;
        dec[1].sync().await?;
        let n_dec = 2000;
        let b = dec[0].bench_prepare("@dec1", n_dec, TEXT).await?;
        let s = Sender {
            http: http.clone(),
            batch: b,
        };
        for m in &s.batch.messages {
            s.post(m).await?;
        }
        let t = Instant::now();
        let got = dec[1].sync().await?.len();
        let d = t.elapsed();
        rate_line("client MLS decrypt + local commit + sync", got, d, "");
    }
    if want("c") {
        // ---- (c) a 100-member group -------------------------------------------------------------
        let t = Instant::now();
        let mut members = users(&url, tmp.path(), "mem", args.group_size).await?;
        let names: Vec<Username> = (1..args.group_size)
            .map(|i| Username::new(&format!("mem{i}")))
            .collect::<Result<_, _>>()?;
        members[0].create_group("big", &names, suite).await?;
        for m in members.iter_mut().skip(1) {
            m.sync().await?;
        }
        println!(
            "(c) setup: a {}-member group in {:.1} s",
            args.group_size,
            t.elapsed().as_secs_f64()
        );
        let senders_n = 5.min(args.group_size);
        let per = args.group_messages / senders_n;
        let mut batches = Vec::new();
        for m in members.iter_mut().take(senders_n) {
            batches.push(m.bench_prepare("#big", per, TEXT).await?);
        }
        let mut rx = Vec::new();
        for (i, m) in members.iter_mut().enumerate() {
            // Senders do not get their own messages pushed back.
            let expect = if i < senders_n {
                per * (senders_n - 1)
            } else {
                per * senders_n
            };
            rx.push((m.bench_prepare("#big", 0, "").await?.token, expect));
        }
        let tx = batches
            .into_iter()
            .map(|b| (b, Duration::ZERO, None))
            .collect();
        let (elapsed, lat) = measure(&url, args.transport, &http, rx, tx).await?;
        report(
            &format!("(c) {}-member group, {senders_n} senders", args.group_size),
            per * senders_n,
            lat.len(),
            elapsed,
            lat,
        );
    }
    Ok(())
}
