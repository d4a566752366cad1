//! Scenario (c) of `sealpost bench`: a group of `--group-size` members, set up as real devices
//! would set it up (the creator adds everyone, then every member joins at once, each on its
//! own), then one add and one remove, then messages from five senders to all.
//!
//! It reports the time to create the group and until every member has joined, what the server
//! stores for it (the commit, the Welcome, the rows of each member still to join), what one add
//! and one remove cost the committer and each member, and delivery throughput and latency.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use sealpost_sdk::{Client, Suite, Username};

use crate::bench::{Servers, TEXT, cpu_seconds, measure, pct, report, users};

/// Members whose processing of one add and one remove is timed, one at a time.
const SAMPLE: usize = 20;

/// Members joining at the same time. Real devices each have their own processor; here a
/// thousand share two cores, and with all of them at once each would get a five-hundredth of
/// a core and the server too little to answer within the client's request timeout. The total
/// is bound by the processor either way.
const JOINING_AT_ONCE: usize = 16;

pub(crate) struct GroupRun<'a> {
    pub servers: &'a Servers,
    pub http: &'a reqwest::Client,
    pub home: &'a Path,
    pub suite: Suite,
    pub size: usize,
    /// Members that join (the first ones); `None`: all of them.
    pub online: Option<usize>,
    pub messages: usize,
    /// Deliveries per second offered in the latency run (0: no such run).
    pub rate: u64,
    pub transport: crate::bench::Transport,
}

pub(crate) async fn run(r: GroupRun<'_>) -> Result<()> {
    let n = r.size.max(2);
    let t = Instant::now();
    // With several nodes, the second half of the group is on the last node.
    let half = n.div_ceil(2);
    let mut members = users(r.servers.send_url(), r.home, "mem", 0..half).await?;
    members.extend(users(r.servers.recv_url(), r.home, "mem", half..n).await?);
    let mut extra = users(r.servers.send_url(), r.home, "extra", 0..1).await?;
    let registered = t.elapsed();
    let names: Vec<Username> = (1..n)
        .map(|i| Username::new(&format!("mem{i}")))
        .collect::<Result<_, _>>()?;

    let before = r.servers.stored();
    let t = Instant::now();
    let mut creator = members.remove(0);
    creator.create_group("big", &names, r.suite).await?;
    let created = t.elapsed();
    let stored = r.servers.stored();
    // Offline members stay out of what follows; their invitations wait on the server.
    let online = r.online.map_or(n, |o| o.clamp(2, n));
    members.truncate(online - 1);

    // The members join concurrently, each on its own task, as devices would
    // ([`JOINING_AT_ONCE`] at a time).
    let cpu_before = cpu_seconds(r.servers);
    let t = Instant::now();
    let (mut joined, mut join_times) = sync_together(members).await?;
    let all_joined = t.elapsed();
    let server_cpu = cpu_seconds(r.servers)
        .zip(cpu_before)
        .map_or(0.0, |((after, _), (before, _))| after - before);
    let sizes = joined[joined.len() - 1].members("#big")?.len();
    anyhow::ensure!(
        sizes == n,
        "a member sees {sizes} members in the group, not {n}"
    );
    join_times.sort();
    let who = if online == n {
        "every member".to_string()
    } else {
        format!("the {} online members", online - 1)
    };
    println!(
        "(c) {n}-member group: created in {:.2} s, {who} joined {:.2} s later ({JOINING_AT_ONCE} at a time): set up in {:.2} s ({:.1} s with registering the {n} accounts first); one join p50 {:.2} s, slowest {:.2} s; the server's CPU during the joins {server_cpu:.1} s",
        created.as_secs_f64(),
        all_joined.as_secs_f64(),
        (created + all_joined).as_secs_f64(),
        (registered + created + all_joined).as_secs_f64(),
        secs(pct(&join_times, 0.5)),
        join_times.last().map_or(0.0, Duration::as_secs_f64),
    );
    if let (Some(before), Some(stored)) = (before, stored) {
        let invitees = (n - 1) as f64;
        println!(
            "(c) stored by the server for the new group: commit {:.1} KB, Welcome {:.1} KB (stored {} time(s)), and per member still to join {:.0} B of inbox and membership rows",
            kb(stored.largest_log - before.largest_log.min(stored.largest_log)),
            kb(stored.welcome_bytes - before.welcome_bytes),
            stored.welcomes - before.welcomes,
            (stored.row_bytes - before.row_bytes) as f64 / invitees,
        );
    }

    // The push connections of the delivery run are set up now, for every member: past this
    // point only the creator and the first members (the timed sample and the senders) stay
    // open. A device holding a 1,000-member PQ group's state takes several MB here (the tree
    // and the past epochs' member lists, and a sync works on copies), and a thousand did not
    // fit in one process.
    let senders_n = 5.min(n);
    let per = r.messages / senders_n;
    let mut receivers = Vec::with_capacity(joined.len());
    for m in &mut joined {
        let b = m.bench_prepare("#big", 0, "").await?;
        receivers.push((b.server, b.token));
    }
    // The last member is removed below: it receives nothing after.
    if online == n {
        receivers.pop();
    }
    joined.truncate(SAMPLE.max(senders_n));

    // One remove and one add (in that order: the group may be as large as the server allows):
    // the committer's time, and each member's to process it.
    let last = Username::new(&format!("mem{}", n - 1))?;
    let t = Instant::now();
    creator.remove_members("#big", &[last]).await?;
    let remove = t.elapsed();
    let remove_each = catch_up(&mut joined).await?;
    let t = Instant::now();
    creator
        .add_members("#big", &[Username::new("extra0")?])
        .await?;
    let add = t.elapsed();
    let add_each = catch_up(&mut joined).await?;
    extra[0].sync().await?;
    println!(
        "(c) one add: committer {:.0} ms, each member {:.0} ms (p50 of {}, max {:.0} ms); one remove: committer {:.0} ms, each member {:.0} ms (max {:.0} ms)",
        ms(add),
        pct(&add_each, 0.5),
        add_each.len(),
        ms(*add_each.last().unwrap_or(&Duration::ZERO)),
        ms(remove),
        pct(&remove_each, 0.5),
        ms(*remove_each.last().unwrap_or(&Duration::ZERO)),
    );

    // Delivery: five senders (the creator and the first members), every member receiving;
    // first as fast as the senders can post, then at the offered rate, where the latency of a
    // delivery says what a member waits (flat out, it says how long the burst was).
    let first = creator.bench_prepare("#big", 0, "").await?;
    let last = extra[0].bench_prepare("#big", 0, "").await?;
    let rx: Vec<(String, String)> = std::iter::once((first.server, first.token))
        .chain(receivers)
        .chain([(last.server, last.token)])
        .collect();
    let mut senders: Vec<&mut Client> = std::iter::once(&mut creator)
        .chain(joined.iter_mut().take(senders_n - 1))
        .collect();
    let (elapsed, lat) = deliver(&r, &mut senders, &rx, per, None).await?;
    report(
        &format!("(c) {n}-member group, {senders_n} senders"),
        per * senders_n,
        lat.len(),
        elapsed,
        lat,
    );
    if r.rate > 0 {
        // Each message goes to the n - 1 other members.
        let each = Duration::from_secs_f64(senders_n as f64 * (n - 1) as f64 / r.rate as f64);
        let (elapsed, lat) = deliver(&r, &mut senders, &rx, per, Some(each)).await?;
        report(
            &format!(
                "(c′) {n}-member group, {senders_n} senders offering {} deliveries/s",
                r.rate
            ),
            per * senders_n,
            lat.len(),
            elapsed,
            lat,
        );
    }
    drop(senders);

    // What a member's device spends on each message it receives: the last of the timed sample
    // (if it is not a sender: those are the creator and the first members) takes in the run's
    // messages.
    let last = SAMPLE.min(joined.len());
    if last >= senders_n
        && let Some(m) = joined.get_mut(last - 1)
    {
        let t = Instant::now();
        let got = m.sync().await?.len();
        let d = t.elapsed();
        println!(
            "(c) a member's device takes in {got} messages of the group in {:.2} s: {:.2} ms each",
            d.as_secs_f64(),
            ms(d) / got.max(1) as f64
        );
    }
    Ok(())
}

/// One delivery run: `per` messages from each of `senders` (each posting one every `interval`
/// if given, else as fast as it can) to the push connections `rx` (`(server, token)`, the
/// senders' first and in their order: a sender's own messages are not pushed back to it).
/// Returns the time from the first send to the last delivery, and every delivery's latency.
async fn deliver(
    r: &GroupRun<'_>,
    senders: &mut [&mut Client],
    rx: &[(String, String)],
    per: usize,
    interval: Option<Duration>,
) -> Result<(Duration, Vec<Duration>)> {
    let mut batches = Vec::with_capacity(senders.len());
    for m in senders.iter_mut() {
        batches.push((
            m.bench_prepare("#big", per, TEXT).await?,
            Duration::ZERO,
            interval,
        ));
    }
    let n = senders.len();
    let rx = rx
        .iter()
        .enumerate()
        .map(|(i, (server, token))| {
            let expect = if i < n { per * (n - 1) } else { per * n };
            (server.clone(), token.clone(), expect)
        })
        .collect();
    measure(r.transport, r.http, rx, batches).await
}

/// Times [`SAMPLE`] members catching up with the last commit one after another (sorted), then
/// lets any others catch up together.
async fn catch_up(members: &mut Vec<Client>) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(SAMPLE);
    for m in members.iter_mut().take(SAMPLE) {
        let t = Instant::now();
        m.sync().await?;
        times.push(t.elapsed());
    }
    let rest = members.split_off(SAMPLE.min(members.len()));
    members.extend(sync_together(rest).await?.0);
    times.sort();
    Ok(times)
}

/// Syncs every one of `members`, each on its own task, [`JOINING_AT_ONCE`] at a time; returns
/// them in their order, with the time each sync took.
async fn sync_together(members: Vec<Client>) -> Result<(Vec<Client>, Vec<Duration>)> {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(JOINING_AT_ONCE));
    let tasks: Vec<_> = members
        .into_iter()
        .map(|mut m| {
            let slots = slots.clone();
            tokio::spawn(async move {
                let _slot = slots.acquire_owned().await?;
                let t = Instant::now();
                m.sync().await?;
                anyhow::Ok((m, t.elapsed()))
            })
        })
        .collect();
    let mut synced = Vec::with_capacity(tasks.len());
    let mut times = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (m, d) = task.await.context("a member's task ended")??;
        synced.push(m);
        times.push(d);
    }
    Ok((synced, times))
}

fn secs(ms: f64) -> f64 {
    ms / 1000.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn kb(bytes: u64) -> f64 {
    bytes as f64 / 1000.0
}

/// What the server's SQLite database holds of the group's setup.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stored {
    /// The largest entry of any group's log (a group's creating commit).
    pub largest_log: u64,
    /// Welcomes stored, and their bytes.
    pub welcomes: u64,
    pub welcome_bytes: u64,
    /// Bytes of the inbox and membership rows (payloads and keys; integers as 8 bytes).
    pub row_bytes: u64,
}

/// Reads [`Stored`] from a server database (read-only, beside the running server).
pub(crate) fn stored(db: &Path) -> Result<Stored> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let one = |sql: &str| -> Result<u64> {
        Ok(conn
            .query_row(sql, [], |r| r.get::<_, i64>(0))?
            .unsigned_abs())
    };
    Ok(Stored {
        largest_log: one("SELECT COALESCE(MAX(length(payload)), 0) FROM group_log")?,
        // A server from before Welcomes were stored once has no such table.
        welcomes: one("SELECT COUNT(*) FROM welcomes").unwrap_or(0),
        welcome_bytes: one("SELECT COALESCE(SUM(length(payload)), 0) FROM welcomes").unwrap_or(0),
        row_bytes: one(
            "SELECT (SELECT COALESCE(SUM(length(device_id) + length(group_id) + length(payload) + 24), 0) FROM inbox)
                  + (SELECT COALESCE(SUM(length(group_id) + length(device_id) + 24), 0) FROM members)",
        )?,
    })
}
