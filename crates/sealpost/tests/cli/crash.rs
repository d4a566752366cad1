//! Crashes, again and again. A client killed (SIGKILL) in the middle of a sync neither loses nor
//! duplicates a message: each delivery is committed locally in one transaction, and the server
//! is acknowledged only after that. A server killed at random points of a stream of group
//! messages and commits loses nothing it acknowledged, and the group does not fork.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{Front, Node};
use sealpost_sdk::{Client, ClientSettings, Error, Event, Suite, Username};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A server in this process on a loopback port: its URL, its stop switch and its task.
async fn in_process_server(
    dir: &std::path::Path,
) -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), sealpost_server::ServerError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = sealpost_server::Settings {
        listen: addr,
        data: dir.join("server"),
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(sealpost_server::run(settings, listener, shutdown.clone()));
    (format!("http://{addr}"), shutdown, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_sync_neither_loses_nor_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (url, shutdown, server) = in_process_server(dir.path()).await;

    let bob_home = dir.path().join("bob");
    drop(
        Client::register(&bob_home, &url, "bob", None)
            .await
            .unwrap(),
    );
    let mut alice = Client::register(&dir.path().join("alice"), &url, "alice", None)
        .await
        .unwrap();
    let total = setting("SEALPOST_SOAK_MESSAGES", 300);
    for i in 0..total {
        alice.send("@bob", &format!("m{i:04}")).await.unwrap();
    }

    // Kill bob's client at different points of its catch-up.
    let mut killed_early = 0;
    let rounds = setting("SEALPOST_SOAK_CYCLES", 12);
    for round in 0..rounds {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sealpost"))
            .arg("--home")
            .arg(&bob_home)
            .arg("sync")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Fault injection, not a readiness wait: a different kill point each round.
        tokio::time::sleep(Duration::from_millis(15 + round * 25)).await;
        if child.try_wait().unwrap().is_none() {
            killed_early += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert!(
        killed_early > 0,
        "at least one sync was killed while running"
    );

    // A last, complete sync; then the history holds each message exactly once, in order.
    let out = Command::new(env!("CARGO_BIN_EXE_sealpost"))
        .arg("--home")
        .arg(&bob_home)
        .arg("sync")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bob = Client::open(&bob_home, None).unwrap();
    let texts: Vec<String> = bob
        .messages("@alice", 10_000)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            Event::Message { text, .. } => Some(text),
            _ => None,
        })
        .collect();
    let want: Vec<String> = (0..total).map(|i| format!("m{i:04}")).collect();
    assert_eq!(texts, want);
    eprintln!("{killed_early} client kills, {total} deliveries checked, none lost or doubled");
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// A number from the environment, or `default`.
fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64: kill points that a printed seed reproduces. Not for keys.
struct Points(u64);

impl Points {
    fn next_in(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low)
    }
}

/// One sender's stream: `count` texts to `#crew`. A send that fails because the server died
/// is not sent again by hand: if its outcome is unknown (the server may have stored it before
/// dying), it is in the outbox, and the next send posts it again first. The sender waits for
/// the next server to be up and goes on with the next text.
async fn stream(
    mut client: Client,
    name: &'static str,
    count: u64,
    acks: watch::Sender<u64>,
    mut up: watch::Receiver<u64>,
) -> (Client, Vec<String>, Vec<String>) {
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    for i in 0..count {
        let text = format!("{name}{i:04}");
        let life = *up.borrow_and_update();
        match client.send("#crew", &text).await {
            Ok(_) => {
                acked.push(text);
                acks.send_modify(|n| *n += 1);
            }
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        Error::ServerUnreachable { .. } | Error::Unconfirmed { .. }
                    ),
                    "{name}: only the server's death may fail a send, not: {e}"
                );
                failed.push(text);
                // The server this send talked to is dead: wait for the next one.
                if up.wait_for(|l| *l > life).await.is_err() {
                    panic!("{name}: {e}, and no server came back");
                }
            }
        }
    }
    (client, acked, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_again_and_again_loses_nothing_it_acknowledged() {
    // The soak script (tests/soak) raises these.
    let cycles = setting("SEALPOST_SOAK_CYCLES", 6);
    let count = setting("SEALPOST_SOAK_MESSAGES", 100);
    let seed = setting(
        "SEALPOST_SOAK_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    eprintln!("kill points from SEALPOST_SOAK_SEED={seed}");
    let mut points = Points(seed);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let mut node = Node::start(&data, &[]);
    let front = Front::start(vec![node.addr]).await;
    let url = front.url();
    let mut clients = Vec::new();
    for name in ["alice", "bob", "carol"] {
        clients.push(
            Client::register(&dir.path().join(name), &url, name, None)
                .await
                .unwrap(),
        );
    }
    let [mut alice, mut bob, mut carol] = <[Client; 3]>::try_from(clients).ok().unwrap();
    // Alice renews her leaf before every send: a commit in flight at many of the kills.
    alice.set_settings(ClientSettings {
        self_update_after: Duration::ZERO,
        ..Default::default()
    });
    let members = [
        Username::new("bob").unwrap(),
        Username::new("carol").unwrap(),
    ];
    alice
        .create_group("crew", &members, Suite::default())
        .await
        .unwrap();
    bob.sync().await.unwrap();
    carol.sync().await.unwrap();

    let (acks, mut acked_so_far) = watch::channel(0u64);
    let (lives, up) = watch::channel(0u64);
    let alice = tokio::spawn(stream(alice, "a", count, acks.clone(), up.clone()));
    let bob = tokio::spawn(stream(bob, "b", count, acks, up.clone()));
    // Carol reads while it all happens.
    let stop = CancellationToken::new();
    let reader = {
        let stop = stop.clone();
        let mut up = up.clone();
        let mut news = acked_so_far.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let life = *up.borrow_and_update();
                match carol.sync().await {
                    Ok(events) if events.is_empty() => {
                        tokio::select! {
                            _ = news.changed() => {}
                            () = stop.cancelled() => {}
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        assert!(matches!(e, Error::ServerUnreachable { .. }), "carol: {e}");
                        tokio::select! {
                            _ = up.wait_for(|l| *l > life) => {}
                            () = stop.cancelled() => {}
                        }
                    }
                }
            }
            carol
        })
    };

    // Kill the server after a random number of further acknowledgements, and start it again
    // on the same data directory.
    let mut kills = 0;
    for life in 1..=cycles {
        let at = *acked_so_far.borrow() + points.next_in(5, 30);
        if acked_so_far.wait_for(|n| *n >= at).await.is_err() {
            break;
        }
        node.kill();
        kills += 1;
        node = Node::start(&data, &[]);
        front.point_to(vec![node.addr]);
        lives.send_replace(life);
    }
    let (mut alice, a_acked, a_failed) = alice.await.unwrap();
    let (mut bob, b_acked, b_failed) = bob.await.unwrap();
    stop.cancel();
    let mut carol = reader.await.unwrap();
    assert_eq!(
        kills, cycles,
        "every kill happened in the middle of the stream"
    );

    // Everybody catches up; then each recipient has each acknowledged text once, in order.
    for client in [&mut alice, &mut bob, &mut carol] {
        while !client.sync().await.unwrap().is_empty() {}
    }
    // What each sender's history says it sent, now that every send is settled.
    let confirmed = |client: &Client| -> Vec<String> {
        client
            .messages("#crew", 100_000)
            .unwrap()
            .into_iter()
            .filter_map(|e| match e {
                Event::Message {
                    from,
                    text,
                    failed,
                    unconfirmed,
                    ..
                } if from == "@alice" || from == "@bob" => {
                    assert!(!unconfirmed, "{text} is settled");
                    failed.is_none().then_some(text)
                }
                _ => None,
            })
            .collect()
    };
    let (a_sent, b_sent) = (confirmed(&alice), confirmed(&bob));
    let streams = [
        ("a", &a_acked, &a_failed, &a_sent),
        ("b", &b_acked, &b_failed, &b_sent),
    ];
    let mut checked = 0;
    for (reader, client) in [("a", &alice), ("b", &bob), ("c", &carol)] {
        let history = client.messages("#crew", 100_000).unwrap();
        for event in &history {
            assert!(
                !matches!(event, Event::Security { .. }),
                "{reader}: no alert after crashes: {event:?}"
            );
        }
        for (sender, acked, failed, sent) in streams {
            if sender == reader {
                continue;
            }
            let from = if sender == "a" { "@alice" } else { "@bob" };
            let texts: Vec<&str> = history
                .iter()
                .filter_map(|e| match e {
                    Event::Message { from: f, text, .. } if f == from => Some(text.as_str()),
                    _ => None,
                })
                .collect();
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for t in &texts {
                *seen.entry(t).or_default() += 1;
            }
            for t in acked {
                assert_eq!(seen.get(t.as_str()), Some(&1), "{reader}: {t} exactly once");
            }
            for (t, n) in &seen {
                assert_eq!(*n, 1, "{reader}: {t} shown {n} times");
                assert!(
                    acked.iter().chain(failed.iter()).any(|s| s == t),
                    "{reader}: {t} was sent"
                );
            }
            let own: Vec<&str> = sent
                .iter()
                .filter(|t| t.starts_with(sender))
                .map(String::as_str)
                .collect();
            assert_eq!(
                texts, own,
                "{reader}: exactly what {sender}'s history says was sent, even when the answer was lost"
            );
            let mut sorted = texts.clone();
            sorted.sort_unstable();
            assert_eq!(
                texts, sorted,
                "{reader}: {sender}'s texts in the order sent"
            );
            let missing: u64 = history
                .iter()
                .filter_map(|e| match e {
                    Event::Gap {
                        from: f, missing, ..
                    } if f == from => Some(*missing),
                    _ => None,
                })
                .sum();
            assert!(
                missing <= failed.len() as u64,
                "{reader}: gaps only where a send failed ({missing} > {})",
                failed.len()
            );
            checked += acked.len();
        }
    }

    // One group, not several: the same epoch everywhere, and a last text reaches everybody.
    let epoch = alice.epoch("#crew").unwrap();
    assert_eq!(bob.epoch("#crew").unwrap(), epoch);
    assert_eq!(carol.epoch("#crew").unwrap(), epoch);
    carol.send("#crew", "after the crashes").await.unwrap();
    for client in [&mut alice, &mut bob] {
        let events = client.sync().await.unwrap();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Message { text, .. } if text == "after the crashes")),
            "the group still works: {events:?}"
        );
    }
    eprintln!(
        "{kills} kills; {} + {} acknowledged, {} + {} failed as the server died; \
         {checked} deliveries checked, none lost or doubled; epoch {epoch}",
        a_acked.len(),
        b_acked.len(),
        a_failed.len(),
        b_failed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_mid_send_never_reuses_a_ratchet_step() {
    let dir = tempfile::tempdir().unwrap();
    let (url, shutdown, server) = in_process_server(dir.path()).await;
    let mut bob = Client::register(&dir.path().join("bob"), &url, "bob", None)
        .await
        .unwrap();
    let alice_home = dir.path().join("alice");
    let mut alice = Client::register(&alice_home, &url, "alice", None)
        .await
        .unwrap();
    alice.send("@bob", "first").await.unwrap();
    drop(alice);

    // `sealpost send` processes, each killed at a different point unless it is done by then.
    let rounds = setting("SEALPOST_SOAK_CYCLES", 12) * 2;
    let mut done = Vec::new();
    let mut killed = 0;
    for round in 0..rounds {
        let text = format!("m{round:04}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sealpost"))
            .arg("--home")
            .arg(&alice_home)
            .args(["send", "@bob", &text])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Fault injection, not a readiness wait: a different kill point each round.
        tokio::time::sleep(Duration::from_millis(10 + round * 37 % 150)).await;
        match child.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success(), "send {text} failed on its own");
                done.push(text);
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                killed += 1;
            }
        }
    }
    assert!(killed > 0, "at least one send was killed while running");

    // Bob reads all of it: a ratchet step used twice would not decrypt.
    while !bob.sync().await.unwrap().is_empty() {}
    let history = bob.messages("@alice", 10_000).unwrap();
    for event in &history {
        assert!(
            !matches!(event, Event::Undecryptable { .. } | Event::Security { .. }),
            "every message decrypts, nothing alarms: {event:?}"
        );
    }
    let texts: Vec<&str> = history
        .iter()
        .filter_map(|e| match e {
            Event::Message { text, .. } if text != "first" => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let mut sorted = texts.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(texts, sorted, "each text once, in the order sent");
    for t in &done {
        assert!(texts.contains(&t.as_str()), "{t} was sent and arrived");
    }
    let missing: u64 = history
        .iter()
        .filter_map(|e| match e {
            Event::Gap { missing, .. } => Some(*missing),
            _ => None,
        })
        .sum();
    assert!(missing <= killed, "gaps only where a send was killed");

    // Alice's ratchet carries on from where the killed sends left it; the messages the server
    // took from a send killed before it noted the answer come back to her as her own, not as
    // something she cannot read.
    let mut alice = Client::open(&alice_home, None).unwrap();
    alice.send("@bob", "after the kills").await.unwrap();
    for event in alice.messages("@bob", 10_000).unwrap() {
        assert!(
            !matches!(event, Event::Undecryptable { .. } | Event::Security { .. }),
            "alice: {event:?}"
        );
    }
    let events = bob.sync().await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Message { text, .. } if text == "after the kills")),
        "{events:?}"
    );
    eprintln!(
        "{killed} client kills, {} deliveries checked, none lost or doubled",
        done.len()
    );
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// The texts among `events`.
fn texts_in(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// A tmpfs of a given size, unmounted when dropped; `None` where mounting is not allowed.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| SmallDisk(at.to_owned()))
    }

    fn grow(&self, size: &str) {
        self.remount(&format!("size={size}"));
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_clearly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), "3m") else {
        eprintln!("cannot mount a tmpfs here (needs root and the right to mount): skipping");
        return;
    };
    let mut node = Node::start(&disk.0.join("server"), &[]);
    let front = Front::start(vec![node.addr]).await;
    let url = front.url();
    let mut alice = Client::register(&dir.path().join("alice"), &url, "alice", None)
        .await
        .unwrap();
    let mut bob = Client::register(&dir.path().join("bob"), &url, "bob", None)
        .await
        .unwrap();
    // Fill the disk.
    let filler = "x".repeat(3000);
    let mut acked = Vec::new();
    let refused = loop {
        let text = format!("{:04} {filler}", acked.len());
        match alice.send("@bob", &text).await {
            Ok(_) => acked.push(text),
            Err(e) => break e,
        }
        assert!(
            acked.len() < 5000,
            "3 MiB hold fewer than 5,000 texts of 3 kB"
        );
    };
    assert!(
        matches!(
            &refused,
            Error::Server {
                code: sealpost_proto::ErrorCode::Unavailable,
                ..
            }
        ),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("nothing was stored"),
        "{refused}"
    );
    // Room again: the same server process carries on, and nothing it acknowledged is lost.
    disk.grow("64m");
    alice.send("@bob", "room again").await.unwrap();
    while !bob.sync().await.unwrap().is_empty() {}
    let texts: Vec<String> = bob
        .messages("@alice", 100_000)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            Event::Message { text, .. } => Some(text),
            Event::Gap { .. } => panic!("no gap: the refused text's number is used again"),
            _ => None,
        })
        .collect();
    let mut want = acked.clone();
    want.push("room again".to_owned());
    assert_eq!(texts.len(), want.len());
    assert!(texts == want, "every acknowledged text once, in order");
    // The store is whole: a server restarted on it serves the same conversation on.
    node.kill();
    let node = Node::start(&disk.0.join("server"), &[]);
    front.point_to(vec![node.addr]);
    alice.send("@bob", "after a restart").await.unwrap();
    let got = bob.sync().await.unwrap();
    let shown = texts_in(&got);
    assert_eq!(shown, ["after a restart"], "{got:?}");
    eprintln!(
        "disk full after {} texts; refused with: {refused}; all delivered after it grew",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_directory_stops_the_server_clearly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), "64m") else {
        eprintln!("cannot mount a tmpfs here (needs root and the right to mount): skipping");
        return;
    };
    let data = disk.0.join("server");
    let mut node = Node::start(&data, &[]);
    let front = Front::start(vec![node.addr]).await;
    let mut alice = Client::register(&dir.path().join("alice"), &front.url(), "alice", None)
        .await
        .unwrap();
    let mut bob = Client::register(&dir.path().join("bob"), &front.url(), "bob", None)
        .await
        .unwrap();
    alice.send("@bob", "before").await.unwrap();
    // The data directory read-only (a disk mounted read-only after an error): a server
    // started on it says why it cannot run, and changes nothing.
    node.kill();
    disk.remount("ro");
    let out = Command::new(env!("CARGO_BIN_EXE_sealpost"))
        .args(["server", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("is not writable") && said.contains("Read-only"),
        "{said}"
    );
    // Writable again: nothing acknowledged is lost.
    disk.remount("rw");
    let node = Node::start(&data, &[]);
    front.point_to(vec![node.addr]);
    alice.send("@bob", "after").await.unwrap();
    let got = bob.sync().await.unwrap();
    let shown = texts_in(&got);
    assert_eq!(shown, ["before", "after"], "{got:?}");
    assert!(
        !got.iter().any(|e| matches!(e, Event::Gap { .. })),
        "{got:?}"
    );
}
