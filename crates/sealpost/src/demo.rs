//! `sealpost demo`: a private server on a loopback port with a temporary embedded store, three
//! people, 1:1 and group messages, a removal, and a scan of everything the server kept for the
//! plaintext. Exits non-zero if any step does not check out.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, ensure};
use sealpost_sdk::{Client, Event, Suite, Username};
use tokio_util::sync::CancellationToken;

use crate::render::line;

fn texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn show(who: &str, events: &[Event]) {
    for e in events {
        println!("    {who} sees  {}", line(e));
    }
}

/// Every file below `dir` (recursively) that contains one of `needles`, with the needle.
pub fn scan(dir: &Path, needles: &[String]) -> Result<Vec<(PathBuf, String)>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            // SQLite may remove its -wal/-shm files while it closes: a vanished file holds nothing.
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            };
            for n in needles {
                if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                    found.push((path.clone(), n.clone()));
                }
            }
        }
    }
    Ok(found)
}

/// Runs the demo.
pub async fn run() -> Result<()> {
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let data = tmp.path().join("server-data");
    let log_dir = tmp.path().join("server-log");
    std::fs::create_dir_all(&log_dir)?;
    let log = std::fs::File::create(log_dir.join("server.log"))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(Mutex::new(log))
        .with_ansi(false)
        .try_init();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let settings = sealpost_server::Settings {
        listen: addr,
        data: data.clone(),
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(sealpost_server::run(settings, listener, shutdown.clone()));
    println!("1. server on {url}, embedded store in {}", data.display());

    let home = |n: &str| tmp.path().join("clients").join(n);
    let mut alice = Client::register(&home("alice"), &url, "alice", None).await?;
    let mut bob = Client::register(&home("bob"), &url, "bob", None).await?;
    let mut carol = Client::register(&home("carol"), &url, "carol", None).await?;
    println!("2. registered @alice, @bob and @carol (each device signs in with its own key)");

    // Unique markers, so the scan cannot be fooled by chance.
    let marker = format!(
        "{:x}",
        std::process::id() as u64 * 7919 + addr.port() as u64
    );
    let m1 = format!("Hi Bob, the door code is 4711 [{marker}-1]");
    let m2 = format!("Thanks Alice, see you at eight [{marker}-2]");
    let m3 = format!("Welcome to the book club [{marker}-3]");
    let m4 = format!("Next book: The Dispossessed [{marker}-4]");
    let group_name = format!("bookclub{}", &marker[..4.min(marker.len())]);

    println!("3. 1:1 messages");
    alice.send("@bob", &m1).await?;
    let ev = bob.sync().await?;
    show("bob", &ev);
    ensure!(
        texts(&ev) == vec![m1.clone()],
        "bob did not receive alice's message"
    );
    bob.send("@alice", &m2).await?;
    let ev = alice.sync().await?;
    show("alice", &ev);
    ensure!(
        texts(&ev) == vec![m2.clone()],
        "alice did not receive bob's reply"
    );

    println!("4. a group (post-quantum ciphersuite)");
    let u = |n: &str| Username::new(n).map_err(anyhow::Error::from);
    let info = alice
        .create_group(&group_name, &[u("bob")?, u("carol")?], Suite::Pq)
        .await?;
    println!(
        "    alice created {} with {} members",
        info.conversation, info.members
    );
    alice.send(&info.conversation, &m3).await?;
    for (who, c) in [("bob", &mut bob), ("carol", &mut carol)] {
        let ev = c.sync().await?;
        show(who, &ev);
        ensure!(
            texts(&ev) == vec![m3.clone()],
            "{who} did not receive the group message"
        );
    }

    println!("5. alice removes carol; carol cannot read what follows");
    alice
        .remove_members(&info.conversation, &[u("carol")?])
        .await?;
    alice.send(&info.conversation, &m4).await?;
    let ev = bob.sync().await?;
    show("bob", &ev);
    ensure!(
        texts(&ev) == vec![m4.clone()],
        "bob did not receive the message after the removal"
    );
    let ev = carol.sync().await?;
    show("carol", &ev);
    ensure!(
        !texts(&ev).contains(&m4),
        "carol read a message sent after her removal"
    );
    ensure!(
        ev.iter().any(|e| matches!(e, Event::Removed { .. })),
        "carol was not told of her removal"
    );
    ensure!(
        carol
            .send(&info.conversation, "am I still here?")
            .await
            .is_err(),
        "carol could still send"
    );

    shutdown.cancel();
    server.await.context("the server task failed")??;

    println!("6. what the server stored and logged");
    let mut bytes = 0;
    let mut files = 0;
    for dir in [&data, &log_dir] {
        for entry in std::fs::read_dir(dir)? {
            if let Ok(meta) = entry?.metadata() {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    println!("    {files} files, {bytes} bytes under its data and log directories");
    let needles = vec![
        m1,
        m2,
        m3,
        m4,
        group_name,
        "door code".to_owned(),
        marker.clone(),
    ];
    let mut found = scan(&data, &needles)?;
    found.extend(scan(&log_dir, &needles)?);
    for (path, needle) in &found {
        println!("    FOUND {needle:?} in {}", path.display());
    }
    ensure!(found.is_empty(), "the server kept plaintext");
    println!("    no plaintext found: not a message, not a group name, not the marker {marker}");
    println!("demo passed: every step checked out");
    Ok(())
}
