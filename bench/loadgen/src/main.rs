//! `sealpost-loadgen`: drives an XMPP server (ejabberd, Prosody) with the same workload that
//! `sealpost bench` puts on Sealpost, so that the figures can be compared: 1:1 messages between
//! pairs of online users (closed loop, then at a fixed rate with latency), and an offline
//! backlog stored for one user and then drained.
//!
//! It speaks just enough XMPP over plain TCP on loopback (RFC 6120: stream, SASL PLAIN, resource
//! binding, presence, `<message>`), without TLS, as the harness configures the servers to allow.
//! XMPP has no per-message acknowledgement; the server's answer to a ping sent after the
//! messages marks the moment it has processed them (it handles a session's stanzas in order).
#![forbid(unsafe_code)]

mod matrix;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// The server's client port.
    #[arg(long, default_value = "127.0.0.1:5222")]
    server: String,
    /// The XMPP domain.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// The password of every benchmark user (`snd0…`, `rcv0…`), registered beforehand.
    #[arg(long, default_value = "benchpass")]
    password: String,
    /// Sender/recipient pairs.
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Messages per sender in the closed-loop run.
    #[arg(long, default_value_t = 1000)]
    per_sender: usize,
    /// Fixed rate for the latency run, messages per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of the fixed-rate run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Backlog size for the offline run.
    #[arg(long, default_value_t = 20_000)]
    backlog: usize,
    /// A label for the output lines.
    #[arg(long, default_value = "xmpp")]
    label: String,
    /// Only register the benchmark users (in-band, XEP-0077) and exit.
    #[arg(long)]
    register: bool,
    /// The protocol the server speaks.
    #[arg(long, value_enum, default_value_t = Protocol::Xmpp)]
    protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    /// XMPP (ejabberd, Prosody).
    Xmpp,
    /// The Matrix client-server API (Synapse).
    Matrix,
}

/// The same size class as Sealpost's benchmark message (its ciphertext is padded to 256 bytes).
pub(crate) const BODY: &str = "benchmark message of about forty bytes..benchmark message of about forty bytes..benchmark message of about forty bytes..benchmark message of about forty bytes..benchmark message of about forty bytes..";

struct Reader {
    half: OwnedReadHalf,
    buf: Vec<u8>,
    /// Where the unread part of `buf` starts (consumed bytes are dropped in bulk, not one
    /// stanza at a time: a backlog arrives as megabytes at once).
    at: usize,
}

impl Reader {
    fn new(half: OwnedReadHalf) -> Self {
        Self {
            half,
            buf: Vec::new(),
            at: 0,
        }
    }

    fn take(&mut self, end: usize) -> String {
        let text = String::from_utf8_lossy(&self.buf[self.at..end]).into_owned();
        self.at = end;
        if self.at > 1 << 20 && self.at * 2 > self.buf.len() {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        text
    }

    /// Reads until `needle` appears; returns everything up to and including it.
    async fn until(&mut self, needle: &str) -> Result<String> {
        loop {
            if let Some(i) = find(&self.buf[self.at..], needle.as_bytes()) {
                let end = self.at + i + needle.len();
                return Ok(self.take(end));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.half.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the stream");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Waits for the next complete `<message …>…</message>` and returns its id attribute.
    async fn next_message_id(&mut self) -> Result<String> {
        loop {
            let unread = &self.buf[self.at..];
            if let Some(start) = find(unread, b"<message")
                && let Some(len) = find(&unread[start..], b"</message>")
            {
                let end = self.at + start + len + "</message>".len();
                let from = self.at + start;
                self.at = from;
                let stanza = self.take(end);
                return Ok(attr(&stanza, "id").unwrap_or_default());
            }
            self.fill().await?;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of `name='…'` or `name="…"` in the first tag of `stanza`.
fn attr(stanza: &str, name: &str) -> Option<String> {
    let tag = &stanza[..stanza.find('>')?];
    let at = tag.find(&format!(" {name}="))? + name.len() + 2;
    let quote = tag[at..].chars().next()?;
    let rest = &tag[at + 1..];
    Some(rest[..rest.find(quote)?].to_owned())
}

fn header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
    )
}

/// Signs `user` in and makes it available; returns the stream's halves.
async fn session(args: &Args, user: &str) -> Result<(Reader, OwnedWriteHalf)> {
    let stream = TcpStream::connect(&args.server)
        .await
        .with_context(|| format!("connecting to {}", args.server))?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut r = Reader::new(read);
    write.write_all(header(&args.domain).as_bytes()).await?;
    r.until("</stream:features>").await?;
    let plain =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{}", args.password));
    write
        .write_all(
            format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"
            )
            .as_bytes(),
        )
        .await?;
    let answer = r.until(">").await?;
    let answer = if answer.contains("<success") || answer.contains("<failure") {
        answer
    } else {
        r.until(">").await?
    };
    if !answer.contains("success") {
        bail!("sign-in of {user} refused: {answer}");
    }
    write.write_all(header(&args.domain).as_bytes()).await?;
    r.until("</stream:features>").await?;
    write
        .write_all(b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bench</resource></bind></iq>")
        .await?;
    r.until("</iq>").await?;
    write.write_all(b"<presence/>").await?;
    Ok((r, write))
}

/// Registers `user` in-band (XEP-0077); an existing account is fine.
async fn register(args: &Args, user: &str) -> Result<()> {
    let stream = TcpStream::connect(&args.server).await?;
    let (read, mut write) = stream.into_split();
    let mut r = Reader::new(read);
    write.write_all(header(&args.domain).as_bytes()).await?;
    r.until("</stream:features>").await?;
    write
        .write_all(
            format!(
                "<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>{user}</username><password>{}</password></query></iq>",
                args.password
            )
            .as_bytes(),
        )
        .await?;
    // The answer is `<iq … id='reg'/>`, or an error with a body (a taken name is fine).
    let mut answer = r.until("id='reg'").await?;
    answer += &r.until(">").await?;
    if answer.contains("type='error'") {
        answer += &r.until("</iq>").await?;
        if !answer.contains("conflict") {
            bail!("registering {user} failed: {answer}");
        }
    }
    write.write_all(b"</stream:stream>").await?;
    Ok(())
}

/// Sends a ping and waits for its answer: every stanza sent before it has been processed.
async fn ping(r: &mut Reader, w: &mut OwnedWriteHalf, id: &str) -> Result<()> {
    w.write_all(format!("<iq type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>").as_bytes())
        .await?;
    r.until(&format!("id='{id}'")).await.map(drop)
}

fn message(domain: &str, to: &str, id: &str) -> String {
    format!("<message to='{to}@{domain}' type='chat' id='{id}'><body>{BODY}</body></message>")
}

type Clock = Arc<Mutex<HashMap<String, Instant>>>;

pub(crate) fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * p).round() as usize)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// Every sender sends `per` messages to its recipient (paced at `interval` if given); returns
/// the elapsed time and the end-to-end latencies.
async fn online(
    args: &Args,
    per: usize,
    interval: Option<Duration>,
    round: &str,
) -> Result<(Duration, Vec<Duration>)> {
    let clock: Clock = Arc::default();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for i in 0..args.pairs {
        let (mut r, mut w) = session(args, &format!("rcv{i}")).await?;
        ping(&mut r, &mut w, "ready").await?;
        receivers.push((r, w));
        senders.push(session(args, &format!("snd{i}")).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, (mut r, w)) in receivers.into_iter().enumerate() {
        let clock = clock.clone();
        tasks.push(tokio::spawn(async move {
            let _keep = w;
            let mut lat = Vec::with_capacity(per);
            while lat.len() < per {
                let id = r.next_message_id().await?;
                let at = Instant::now();
                if let Some(sent) = clock.lock().ok().and_then(|c| c.get(&id).copied()) {
                    lat.push(at - sent);
                } else {
                    bail!("pair {i}: a message nobody sent: {id}");
                }
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut sends = Vec::new();
    for (i, (r, mut w)) in senders.into_iter().enumerate() {
        let (clock, domain, round) = (clock.clone(), args.domain.clone(), round.to_owned());
        let offset = interval.map(|iv| iv.mul_f64(i as f64 / args.pairs as f64));
        sends.push(tokio::spawn(async move {
            let _keep = r;
            if let Some(o) = offset {
                tokio::time::sleep(o).await;
            }
            let mut tick = interval.map(tokio::time::interval);
            for k in 0..per {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let id = format!("{round}-{i}-{k}");
                let stanza = message(&domain, &format!("rcv{i}"), &id);
                clock
                    .lock()
                    .map_err(|_| anyhow::anyhow!("lock"))?
                    .insert(id, Instant::now());
                w.write_all(stanza.as_bytes()).await?;
            }
            Ok::<_, anyhow::Error>(w)
        }));
    }
    let mut writers = Vec::new();
    for s in sends {
        writers.push(s.await??);
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = started.elapsed();
    lat.sort();
    drop(writers);
    Ok((elapsed, lat))
}

fn report(label: &str, title: &str, n: usize, elapsed: Duration, lat: &[Duration]) {
    println!(
        "{label} {title}: {n} messages in {:.2} s = {:.0} msgs/s; latency p50 {:.2} ms, p99 {:.2} ms",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        pct(lat, 0.5),
        pct(lat, 0.99)
    );
}

/// One sender stores `n` messages for an offline recipient; then the recipient drains them.
async fn offline(args: &Args) -> Result<()> {
    let n = args.backlog;
    let (mut r, mut w) = session(args, "snd0").await?;
    ping(&mut r, &mut w, "warm").await?;
    let started = Instant::now();
    let mut batch = String::new();
    for k in 0..n {
        batch.push_str(&message(&args.domain, "off0", &format!("off-{k}")));
        if batch.len() > 64 * 1024 {
            w.write_all(batch.as_bytes()).await?;
            batch.clear();
        }
    }
    w.write_all(batch.as_bytes()).await?;
    ping(&mut r, &mut w, "stored").await?;
    let filled = started.elapsed();
    println!(
        "{} (b) offline backlog stored: {n} messages in {:.2} s = {:.0} msgs/s (until the server answered a ping sent after them)",
        args.label,
        filled.as_secs_f64(),
        n as f64 / filled.as_secs_f64()
    );
    let started = Instant::now();
    let (mut rr, _ww) = session(args, "off0").await?;
    let mut got = 0;
    while got < n {
        let Ok(id) = tokio::time::timeout(Duration::from_secs(10), rr.next_message_id()).await
        else {
            bail!("the drain stalled after {got} of {n} messages");
        };
        if id?.starts_with("off-") {
            got += 1;
        }
    }
    let drained = started.elapsed();
    println!(
        "{} (b) offline backlog drained: {got} messages in {:.2} s = {:.0} msgs/s (sign-in included)",
        args.label,
        drained.as_secs_f64(),
        got as f64 / drained.as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.protocol == Protocol::Matrix {
        let _ = rustls::crypto::ring::default_provider().install_default();
        return matrix::run(&args).await;
    }
    if args.register {
        let mut users = vec!["off0".to_string()];
        for i in 0..args.pairs {
            users.push(format!("snd{i}"));
            users.push(format!("rcv{i}"));
        }
        for user in users {
            register(&args, &user).await?;
        }
        println!("{} users registered", 2 * args.pairs + 1);
        return Ok(());
    }
    let n = args.pairs * args.per_sender;
    let (elapsed, lat) = online(&args, args.per_sender, None, "a").await?;
    report(&args.label, "(a) 1:1 online, closed loop", n, elapsed, &lat);
    let per = (args.rate * args.seconds) as usize / args.pairs;
    let interval = Duration::from_secs_f64(args.pairs as f64 / args.rate as f64);
    let (elapsed, lat) = online(&args, per, Some(interval), "r").await?;
    report(
        &args.label,
        &format!("(a') 1:1 online at {} msgs/s", args.rate),
        per * args.pairs,
        elapsed,
        &lat,
    );
    offline(&args).await
}
