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
    /// Start the servers on this PostgreSQL database (a fresh schema is made in it for the run)
    /// instead of the embedded SQLite store, e.g. postgres://postgres@127.0.0.1:5432/test.
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// Server nodes to start on the --database, pushing to each other through --nats. Senders
    /// use the first node and recipients the last, so every message crosses nodes.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// NATS for several nodes.
    #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
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
    /// Messages posted to the group, in each of its two delivery runs (as fast as the five
    /// senders can, then at --group-rate).
    #[arg(long, default_value_t = 500)]
    group_messages: usize,
    /// Deliveries per second that the group's five senders offer together in the latency run
    /// (each message is delivered to every other member); 0 skips that run.
    #[arg(long, default_value_t = 1_000_000, value_name = "DELIVERIES")]
    group_rate: u64,
    /// Members of the group run that are online and join it at once (the first ones; the
    /// others stay offline, their invitations waiting on the server). All of them by default.
    /// Fewer give the costs of a large group's adds and removes without a long set-up.
    #[arg(long, value_name = "N")]
    group_online: Option<usize>,
    /// Messages the `client` run decrypts in one sync (more gives a steadier figure on a noisy
    /// machine).
    #[arg(long, default_value_t = 2000)]
    client_messages: usize,
    /// Size of the file that `--only files` sends, MiB.
    #[arg(long, default_value_t = 100)]
    file_mib: u64,
    /// Run only these scenarios (comma-separated from a, rate, b, c, client; `files` sends and
    /// receives one file of --file-mib MiB against plain HTTP of as many bytes; `directory` runs
    /// the key-directory measurements on their own; `ceilings` measures the machine: disk
    /// fsyncs, PostgreSQL commits with --database, NATS pub/sub with --nats; `limiter` times
    /// the server's rate limiter with 1, 10,000 and 1,000,000 live keys).
    #[arg(long, value_delimiter = ',', default_values_t = ["a".to_string(), "rate".into(), "b".into(), "c".into(), "client".into()])]
    only: Vec<String>,
    /// Directory sizes (accounts) for `--only directory`.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000usize, 100_000])]
    accounts: Vec<usize>,
    /// How senders post: over their WebSocket (up to 32 in flight each) or one HTTP request per
    /// message.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// Idle push connections to hold for `--only idle`.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Keep the server's abuse limits on (each set too high to refuse anything), to measure
    /// their bookkeeping; by default they are off.
    #[arg(long)]
    limits: bool,
    /// Ciphersuite of the conversations.
    #[arg(long, value_enum, default_value_t = SuiteArg::Pq)]
    ciphersuite: SuiteArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Transport {
    Ws,
    Http,
}

/// The text of every benchmark message (padded to the 256-byte bucket).
pub(crate) const TEXT: &str = "benchmark message of about forty bytes..";

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
    _dir: Option<Arc<tempfile::TempDir>>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The servers of a run: senders use the first, recipients the last.
pub(crate) struct Servers {
    nodes: Vec<ServerProcess>,
    /// The database of servers this run started on SQLite.
    sqlite: Option<std::path::PathBuf>,
}

impl Servers {
    pub(crate) fn send_url(&self) -> &str {
        self.nodes.first().map_or("", |n| n.url.as_str())
    }
    pub(crate) fn recv_url(&self) -> &str {
        self.nodes.last().map_or("", |n| n.url.as_str())
    }
    /// What the server's SQLite database holds (`None` on PostgreSQL or another's server).
    pub(crate) fn stored(&self) -> Option<crate::bench_group::Stored> {
        let db = self.sqlite.as_deref()?;
        crate::bench_group::stored(db)
            .inspect_err(|e| eprintln!("cannot read {}: {e:#}", db.display()))
            .ok()
    }
}

async fn start_servers(args: &BenchArgs) -> Result<Servers> {
    if let Some(url) = &args.server {
        return Ok(Servers {
            nodes: vec![ServerProcess {
                child: None,
                url: url.clone(),
                _dir: None,
            }],
            sqlite: None,
        });
    }
    ensure!(args.nodes >= 1, "--nodes must be at least 1");
    ensure!(
        args.nodes == 1 || args.database.is_some(),
        "several nodes need a shared --database"
    );
    let database = match &args.database {
        Some(base) => Some(sealpost_server::storage::postgres::scratch_schema(base).await?),
        None => None,
    };
    // One data directory (it holds the directory key, which every node must share).
    let dir = Arc::new(tempfile::tempdir()?);
    let mut nodes = Vec::with_capacity(args.nodes);
    for _ in 0..args.nodes {
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command
            .args(["server", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .env("SEALPOST_LOG", "warn")
            .stdout(std::process::Stdio::piped());
        // One address and a few devices doing what thousands of people would: the abuse
        // limits are off (0), or with --limits on but too high to refuse anything.
        let limit_value = if args.limits { "1000000000" } else { "0" };
        for limit in [
            "SEALPOST_KEY_PACKAGE_CLAIMS_PER_MINUTE",
            "SEALPOST_REGISTRATIONS_PER_ADDRESS_PER_HOUR",
            "SEALPOST_SIGN_INS_PER_ADDRESS_PER_MINUTE",
            "SEALPOST_LOOKUPS_PER_MINUTE",
            "SEALPOST_SENDS_PER_MINUTE",
            "SEALPOST_CONNECTIONS_PER_MINUTE",
        ] {
            command.env(limit, limit_value);
        }
        // Files as large as a run asks for.
        for limit in ["SEALPOST_MAX_FILE_BYTES", "SEALPOST_FILE_QUOTA_BYTES"] {
            command.env(limit, (1u64 << 40).to_string());
        }
        if let Some(db) = &database {
            command.args(["--database", db]);
        }
        if args.nodes > 1 {
            command.args(["--nats", &args.nats]);
        }
        let mut child = command.spawn().context("cannot start the server process")?;
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
        nodes.push(ServerProcess {
            child: Some(child),
            url,
            _dir: Some(dir.clone()),
        });
    }
    Ok(Servers {
        nodes,
        sqlite: database
            .is_none()
            .then(|| dir.path().join("data").join("server.db")),
    })
}

/// CPU seconds (user + system) used so far by the server processes, and by every `postgres`
/// process of the machine. Linux only; `None` elsewhere.
pub(crate) fn cpu_seconds(servers: &Servers) -> Option<(f64, f64)> {
    fn of(pid: &str) -> Option<(String, f64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, rest) = stat.rsplit_once(") ")?;
        let name = head.split_once(" (")?.1.to_owned();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, in clock ticks (100 per second).
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some((name, ticks / 100.0))
    }
    let mut server = 0.0;
    for node in &servers.nodes {
        server += of(&node.child.as_ref()?.id().to_string())?.1;
    }
    let mut postgres = 0.0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some((comm, secs)) = of(pid)
            && comm == "postgres"
        {
            postgres += secs;
        }
    }
    Some((server, postgres))
}

/// Resident memory of a process, bytes.
fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

async fn recipients_tokens(
    recipients: &mut [Client],
    peer_target: &impl Fn(usize) -> String,
) -> Result<Vec<String>> {
    let mut tokens = Vec::with_capacity(recipients.len());
    for (i, r) in recipients.iter_mut().enumerate() {
        tokens.push(r.bench_prepare(&peer_target(i), 0, "").await?.token);
    }
    Ok(tokens)
}

/// Opens `n` idle push connections (spread over the devices of `tokens`, from several loopback
/// source addresses) and reports the server's resident memory per connection.
async fn idle_connections(url: &str, pid: u32, tokens: &[String], n: usize) -> Result<()> {
    let addr: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .context("the server address")?;
    let ws = url.replacen("http", "ws", 1) + "/v1/ws";
    let before = rss_bytes(pid)?;
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(n);
    for i in 0..n {
        // 127.0.0.2, .3, …: each source address has its own range of ports.
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i / 20_000) as u8);
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((source, 0).into())?;
        let stream = socket.connect(addr).await?;
        let mut req = ws.as_str().into_client_request()?;
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", tokens[i % tokens.len()]).parse()?,
        );
        let (mut socket, _) = tokio_tungstenite::client_async_with_config(
            req,
            stream,
            Some(sealpost_sdk::ws_config()),
        )
        .await?;
        // Subscribed: the server holds everything this connection needs.
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(_))) => break,
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the server closed connection {i}"),
            }
        }
        sockets.push(socket);
    }
    let after = rss_bytes(pid)?;
    println!(
        "idle: {n} push connections opened in {:.1} s; server RSS {:.1} MiB -> {:.1} MiB = {:.1} KiB per idle connection",
        started.elapsed().as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after.saturating_sub(before)) as f64 / n as f64 / 1024.0
    );
    drop(sockets);
    Ok(())
}

/// Percentile of sorted samples.
pub(crate) fn pct(sorted: &[Duration], p: f64) -> f64 {
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
/// Recipients are `(their server, token, messages expected)`.
pub(crate) async fn measure(
    transport: Transport,
    http: &reqwest::Client,
    recipients: Vec<(String, String, usize)>,
    senders: Vec<(BenchBatch, Duration, Option<Duration>)>,
) -> Result<(Duration, Vec<Duration>)> {
    let clock: Clock = Arc::default();
    let mut rx = Vec::with_capacity(recipients.len());
    for (url, token, expect) in recipients {
        let socket = subscribe(&url, &token).await?;
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

/// Registers `prefix{i}` for each i in `ids` at `url`.
pub(crate) async fn users(
    url: &str,
    home: &std::path::Path,
    prefix: &str,
    ids: std::ops::Range<usize>,
) -> Result<Vec<Client>> {
    let settings = ClientSettings {
        key_packages_target: 2,
        key_packages_low: 1,
        ..ClientSettings::default()
    };
    // Concurrently: registrations answer once their directory epoch is published, and
    // concurrent ones share an epoch.
    let names: Vec<String> = ids.map(|i| format!("{prefix}{i}")).collect();
    let mut out = Vec::with_capacity(names.len());
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

pub(crate) fn report(
    title: &str,
    msgs: usize,
    deliveries: usize,
    elapsed: Duration,
    mut lat: Vec<Duration>,
) {
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
    if want("ceilings") {
        return crate::bench_ceilings::run(args.database.as_deref(), &args.nats).await;
    }
    if want("limiter") {
        crate::bench_limiter::run();
        return Ok(());
    }
    let http = http();
    let servers = start_servers(&args).await?;
    let url = servers.send_url().to_owned();
    let rurl = servers.recv_url().to_owned();
    let tmp = tempfile::tempdir()?;
    println!(
        "servers {}; store {}; ciphersuite {suite:?}; senders post over {:?}; 2 cores shared by servers, database and load generator",
        servers
            .nodes
            .iter()
            .map(|n| n.url.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        if args.database.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        args.transport
    );

    // ---- setup: pairs with a 1:1 conversation each ------------------------------------------
    let t = Instant::now();
    let mut senders = users(&url, tmp.path(), "snd", 0..args.pairs).await?;
    let mut recipients = users(&rurl, tmp.path(), "rcv", 0..args.pairs).await?;
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

    if want("idle") {
        // ---- memory per idle connected device -------------------------------------------------
        let pid = servers
            .nodes
            .last()
            .and_then(|n| n.child.as_ref())
            .map(|c| c.id())
            .context("--only idle needs a server started by the bench")?;
        let tokens = recipients_tokens(&mut recipients, &peer_target).await?;
        idle_connections(&rurl, pid, &tokens, args.idle).await?;
    }
    let cpu_before = cpu_seconds(&servers);
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
            let b = r.bench_prepare(&peer_target(i), 0, "").await?;
            rx.push((b.server, b.token, args.per_sender));
        }
        let tx = batches
            .into_iter()
            .map(|b| (b, Duration::ZERO, None))
            .collect();
        let (elapsed, lat) = measure(args.transport, &http, rx, tx).await?;
        report(
            "(a) 1:1 online, closed loop",
            n_enc,
            lat.len(),
            elapsed,
            lat,
        );
        if let (Some(before), Some(after)) = (cpu_before, cpu_seconds(&servers)) {
            println!(
                "(a) CPU per delivered message: {:.1} µs in the server process(es){}",
                (after.0 - before.0) / n_enc as f64 * 1e6,
                if args.database.is_some() {
                    format!(
                        ", {:.1} µs in PostgreSQL",
                        (after.1 - before.1) / n_enc as f64 * 1e6
                    )
                } else {
                    String::new()
                }
            );
        }
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
            let b = r.bench_prepare(&peer_target(i), 0, "").await?;
            rx.push((b.server, b.token, per));
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
        let (elapsed, lat) = measure(args.transport, &http, rx, tx).await?;
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
                .post(format!("{rurl}/v1/sync"))
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
            http.post(format!("{rurl}/v1/ack"))
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
    if want("files") {
        // ---- one file, sealed and uploaded, fetched and opened, against plain HTTP ----------
        let mut pair = users(&url, tmp.path(), "fil", 0..2).await?;
        pair[0].send("@fil1", "hello").await?;
        pair[1].sync().await?;
        let pid = servers
            .nodes
            .first()
            .and_then(|n| n.child.as_ref())
            .map(|c| c.id());
        crate::bench_files::run(&http, &mut pair, "fil1", tmp.path(), args.file_mib, pid).await?;
    }
    if want("client") {
        // ---- client-side decrypt cost -------------------------------------------------------------
        let mut dec = users(&url, tmp.path(), "dec", 0..2).await?;
        dec[0].send("@dec1", "hello").await?;
        dec[1].sync().await?;
        let n_dec = args.client_messages;
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
        crate::bench_group::run(crate::bench_group::GroupRun {
            servers: &servers,
            http: &http,
            home: tmp.path(),
            suite,
            size: args.group_size,
            online: args.group_online,
            messages: args.group_messages,
            rate: args.group_rate,
            transport: args.transport,
        })
        .await?;
    }
    Ok(())
}
