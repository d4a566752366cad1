//! The same workload over the Matrix client-server API (Synapse): a room per pair, messages
//! sent with `PUT /rooms/{room}/send` (the answer comes once the event is stored), received by
//! the recipient's `/sync` long poll; the offline backlog is read back with `/messages`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::{Args, BODY, pct};

struct User {
    token: String,
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await?;
        let status = r.status();
        let value: Value = r.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "{path}: {status} {value}");
        Ok(value)
    }

    /// Registers `name`, or signs it in if it exists.
    async fn user(&self, name: &str, password: &str) -> Result<User> {
        let body = json!({"username": name, "password": password, "auth": {"type": "m.login.dummy"}, "inhibit_login": false});
        let value = match self
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/register",
                None,
                Some(body),
            )
            .await
        {
            Ok(v) => v,
            Err(_) => {
                let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": password});
                self.call(
                    reqwest::Method::POST,
                    "/_matrix/client/v3/login",
                    None,
                    Some(login),
                )
                .await?
            }
        };
        Ok(User {
            token: value["access_token"]
                .as_str()
                .context("no access token")?
                .to_owned(),
        })
    }

    async fn send(&self, user: &User, room: &str, txn: &str, body: &str) -> Result<()> {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
        self.call(
            reqwest::Method::PUT,
            &path,
            Some(&user.token),
            Some(json!({"msgtype": "m.text", "body": body})),
        )
        .await
        .map(drop)
    }

    async fn sync(&self, user: &User, since: Option<&str>) -> Result<Value> {
        let filter = r#"{"room":{"timeline":{"limit":1000}},"presence":{"types":[]},"account_data":{"types":[]}}"#;
        let mut path = format!(
            "/_matrix/client/v3/sync?timeout=30000&filter={}",
            urlencode(filter)
        );
        if let Some(s) = since {
            path.push_str(&format!("&since={}", urlencode(s)));
        }
        self.call(reqwest::Method::GET, &path, Some(&user.token), None)
            .await
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Message bodies in a sync answer's timelines.
fn bodies(sync: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(rooms) = sync["rooms"]["join"].as_object() {
        for room in rooms.values() {
            for event in room["timeline"]["events"].as_array().into_iter().flatten() {
                if event["type"] == "m.room.message"
                    && let Some(b) = event["content"]["body"].as_str()
                {
                    out.push(b.to_owned());
                }
            }
        }
    }
    out
}

/// The tag a body starts with (`a-3-17 …`).
fn tag(body: &str) -> &str {
    body.split(' ').next().unwrap_or_default()
}

type Clock = Arc<Mutex<HashMap<String, Instant>>>;

/// Every sender sends `per` messages, one request at a time (paced at `interval` if given); the
/// recipients' `/sync` loops see them.
async fn online(
    api: &Arc<Api>,
    pairs: &[(Arc<User>, Arc<User>, String, String)],
    per: usize,
    interval: Option<Duration>,
    round: &str,
) -> Result<(Duration, Vec<Duration>)> {
    let clock: Clock = Arc::default();
    let mut receivers = Vec::new();
    for (_, rcv, _, since) in pairs {
        let (api, rcv, clock, since) = (api.clone(), rcv.clone(), clock.clone(), since.clone());
        let round = round.to_owned();
        receivers.push(tokio::spawn(async move {
            let mut since = since;
            let mut lat = Vec::with_capacity(per);
            while lat.len() < per {
                let s = api.sync(&rcv, Some(&since)).await?;
                let at = Instant::now();
                for b in bodies(&s) {
                    let t = tag(&b);
                    if t.starts_with(&format!("{round}-"))
                        && let Some(sent) = clock.lock().ok().and_then(|c| c.get(t).copied())
                    {
                        lat.push(at - sent);
                    }
                }
                since = s["next_batch"]
                    .as_str()
                    .context("no next_batch")?
                    .to_owned();
            }
            Ok::<_, anyhow::Error>((lat, since))
        }));
    }
    let started = Instant::now();
    let mut senders = Vec::new();
    for (i, (snd, _, room, _)) in pairs.iter().enumerate() {
        let (api, snd, room, clock) = (api.clone(), snd.clone(), room.clone(), clock.clone());
        let round = round.to_owned();
        let offset = interval.map(|iv| iv.mul_f64(i as f64 / pairs.len() as f64));
        senders.push(tokio::spawn(async move {
            if let Some(o) = offset {
                tokio::time::sleep(o).await;
            }
            let mut tick = interval.map(tokio::time::interval);
            for k in 0..per {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let id = format!("{round}-{i}-{k}");
                clock
                    .lock()
                    .map_err(|_| anyhow::anyhow!("lock"))?
                    .insert(id.clone(), Instant::now());
                api.send(&snd, &room, &id, &format!("{id} {BODY}")).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for s in senders {
        s.await??;
    }
    let mut lat = Vec::new();
    for r in receivers {
        lat.extend(r.await??.0);
    }
    lat.sort();
    Ok((started.elapsed(), lat))
}

pub async fn run(args: &Args) -> Result<()> {
    let api = Arc::new(Api {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .build()?,
        base: format!("http://{}", args.server),
    });
    let mut pairs = Vec::new();
    for i in 0..args.pairs {
        let snd = Arc::new(api.user(&format!("snd{i}"), &args.password).await?);
        let rcv = Arc::new(api.user(&format!("rcv{i}"), &args.password).await?);
        let created = api
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(&snd.token),
                Some(json!({"preset": "private_chat", "is_direct": true, "invite": [format!("@rcv{i}:{}", args.domain)]})),
            )
            .await?;
        let room = created["room_id"]
            .as_str()
            .context("no room id")?
            .to_owned();
        let room_path = urlencode(&room);
        api.call(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/join/{room_path}"),
            Some(&rcv.token),
            Some(json!({})),
        )
        .await?;
        let since = api.sync(&rcv, None).await?["next_batch"]
            .as_str()
            .context("no next_batch")?
            .to_owned();
        pairs.push((snd, rcv, room_path, since));
    }
    let label = &args.label;
    let (elapsed, lat) = online(&api, &pairs, args.per_sender, None, "a").await?;
    let n = args.pairs * args.per_sender;
    println!(
        "{label} (a) 1:1 online, closed loop (one request in flight per sender): {n} messages in {:.2} s = {:.0} msgs/s; latency p50 {:.2} ms, p99 {:.2} ms",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    // The recipients' sync tokens moved on: take fresh ones.
    for p in pairs.iter_mut() {
        p.3 = api.sync(&p.1, Some(&p.3)).await?["next_batch"]
            .as_str()
            .context("no next_batch")?
            .to_owned();
    }
    let per = (args.rate * args.seconds) as usize / args.pairs;
    let interval = Duration::from_secs_f64(args.pairs as f64 / args.rate as f64);
    let (elapsed, lat) = online(&api, &pairs, per, Some(interval), "r").await?;
    println!(
        "{label} (a') 1:1 online at {} msgs/s: {} messages in {:.2} s = {:.0} msgs/s; latency p50 {:.2} ms, p99 {:.2} ms",
        args.rate,
        per * args.pairs,
        elapsed.as_secs_f64(),
        (per * args.pairs) as f64 / elapsed.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );

    // (b): the backlog goes into pair 0's room while its recipient does not sync.
    let (snd, rcv, room, _) = &pairs[0];
    let from = api.sync(rcv, None).await?["next_batch"]
        .as_str()
        .context("no next_batch")?
        .to_owned();
    let n = args.backlog;
    let started = Instant::now();
    let mut inflight = futures_util::stream::FuturesUnordered::new();
    use futures_util::StreamExt as _;
    for k in 0..n {
        let (api, snd, room) = (api.clone(), snd.clone(), room.clone());
        inflight.push(async move {
            api.send(&snd, &room, &format!("off-{k}"), &format!("off-{k} {BODY}"))
                .await
        });
        if inflight.len() >= 32
            && let Some(r) = inflight.next().await
        {
            r?;
        }
    }
    while let Some(r) = inflight.next().await {
        r?;
    }
    let filled = started.elapsed();
    println!(
        "{label} (b) offline backlog stored: {n} messages in {:.2} s = {:.0} msgs/s (32 in flight)",
        filled.as_secs_f64(),
        n as f64 / filled.as_secs_f64()
    );
    let started = Instant::now();
    let mut got = 0usize;
    let mut token = from;
    loop {
        let path = format!(
            "/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=1000&from={}",
            urlencode(&token)
        );
        let page = api
            .call(reqwest::Method::GET, &path, Some(&rcv.token), None)
            .await?;
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        got += chunk
            .iter()
            .filter(|e| {
                e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.starts_with("off-"))
            })
            .count();
        match page["end"].as_str() {
            Some(end) if !chunk.is_empty() => token = end.to_owned(),
            _ => break,
        }
    }
    if got != n {
        bail!("the drain found {got} of {n} messages");
    }
    let drained = started.elapsed();
    println!(
        "{label} (b) offline backlog drained: {got} messages in {:.2} s = {:.0} msgs/s (/messages pages of 1,000)",
        drained.as_secs_f64(),
        got as f64 / drained.as_secs_f64()
    );
    Ok(())
}
