//! `sealpost bench --only directory`: the key directory's costs, measured in-process on a fresh
//! SQLite store: publish time per epoch at a given number of accounts, lookup / history / audit
//! proof generation, verification and size, and the latency that verification adds to starting a
//! conversation (over a real loopback socket).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sealpost_proto::directory::{
    DirectoryConfig, decode_audit_proof, decode_history_proof, decode_lookup_proof, directory_label,
};
use sealpost_proto::{DeviceId, Username};
use sealpost_sdk::Client;
use sealpost_server::directory::KeyDirectory;
use sealpost_server::storage::{DeviceRecord, NewAccount, Store};
use sealpost_server::{Server, Settings};

fn account(i: usize) -> Result<NewAccount> {
    let username = Username::new(&format!("user{i}"))?;
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(i as u64).to_be_bytes());
    let mut key = [7u8; 32];
    key[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Ok(NewAccount {
        username: username.clone(),
        account_key: key.to_vec(),
        device: DeviceRecord {
            device_id: DeviceId::from_bytes(id),
            username,
            device_key: key.iter().map(|b| b ^ 0x55).collect(),
            certificate: vec![0; 64],
        },
        key_packages: Vec::new(),
    })
}

/// Creates accounts `from..to`, many writes in flight (the store commits them in groups).
async fn create(store: &Arc<dyn Store>, from: usize, to: usize) -> Result<()> {
    let ids: Vec<usize> = (from..to).collect();
    for chunk in ids.chunks(2048) {
        let writes = chunk.iter().map(|i| {
            let store = store.clone();
            let a = account(*i);
            async move { store.create_account(a?).await.map_err(anyhow::Error::from) }
        });
        futures_util::future::try_join_all(writes).await?;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mean(v: &[Duration]) -> Duration {
    v.iter().sum::<Duration>() / v.len().max(1) as u32
}

async fn timed_publish(dir: &KeyDirectory) -> Result<Duration> {
    let t = Instant::now();
    dir.publish_round().await?;
    Ok(t.elapsed())
}

/// One size of directory.
async fn measure(accounts: usize) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = Server::open(Settings {
        data: tmp.path().to_owned(),
        ..Settings::default()
    })
    .await?;
    let (store, dir) = (server.store(), server.directory());
    let keys = dir.keys().clone();

    let t = Instant::now();
    create(&store, 0, accounts).await?;
    let created = t.elapsed();
    let first = timed_publish(&dir).await?;
    println!(
        "directory {accounts} accounts: stored in {:.1} s; first epoch (all {accounts}) published in {:.1} s",
        created.as_secs_f64(),
        first.as_secs_f64()
    );
    for batch in [1, 100, 1000] {
        let base = accounts + batch * 10;
        create(&store, base, base + batch).await?;
        let took = timed_publish(&dir).await?;
        println!(
            "directory {accounts} accounts: epoch of {batch} new accounts published in {:.1} ms",
            ms(took)
        );
    }

    // Lookups of random existing accounts: generation on the server, verification on a client.
    let samples = 200;
    let (mut gen_t, mut ver_t, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..samples {
        let user = Username::new(&format!("user{}", (k * 7919) % accounts))?;
        let t = Instant::now();
        let resp = dir.lookup(&user).await?;
        gen_t.push(t.elapsed());
        sizes.push(resp.proof.len());
        let t = Instant::now();
        let root = resp.root.verify(&keys.signing_key)?;
        akd_core::verify::lookup_verify::<DirectoryConfig>(
            &keys.vrf_key,
            root,
            resp.root.epoch,
            directory_label(&user),
            decode_lookup_proof(&resp.proof)?,
        )
        .map_err(|e| anyhow::anyhow!("lookup proof did not verify: {e}"))?;
        ver_t.push(t.elapsed());
    }
    println!(
        "directory {accounts} accounts: lookup proof generated in {:.2} ms, verified in {:.2} ms, {} bytes (mean of {samples})",
        ms(mean(&gen_t)),
        ms(mean(&ver_t)),
        sizes.iter().sum::<usize>() / samples
    );

    // Key history of an account with 4 versions (3 devices added, one epoch each).
    let user = Username::new("user1")?;
    for d in 0..3u8 {
        store
            .add_device(
                DeviceRecord {
                    device_id: DeviceId::from_bytes([0xd0 + d; 16]),
                    username: user.clone(),
                    device_key: vec![0xd0 + d; 32],
                    certificate: vec![0; 64],
                },
                Vec::new(),
            )
            .await?;
        dir.publish_round().await?;
    }
    let t = Instant::now();
    let history = dir.history(&user).await?;
    let gen_h = t.elapsed();
    let t = Instant::now();
    let versions = akd_core::verify::key_history_verify::<DirectoryConfig>(
        &keys.vrf_key,
        history.root.verify(&keys.signing_key)?,
        history.root.epoch,
        directory_label(&user),
        decode_history_proof(&history.proof)?,
        akd_core::verify::history::HistoryVerificationParams::default(),
    )
    .map_err(|e| anyhow::anyhow!("history proof did not verify: {e}"))?;
    println!(
        "directory {accounts} accounts: key-history proof ({} versions) generated in {:.2} ms, verified in {:.2} ms, {} bytes",
        versions.len(),
        ms(gen_h),
        ms(t.elapsed()),
        history.proof.len()
    );

    // Audit: the big first epoch, and the 1,000-account one.
    let latest = dir.root(None).await?.epoch;
    for (what, from) in [("first epoch", 0), ("epoch of 1000 accounts", 3)] {
        if from + 1 > latest {
            continue;
        }
        let t = Instant::now();
        let audit = dir.audit(from).await?;
        let gen_a = t.elapsed();
        let t = Instant::now();
        akd::auditor::audit_verify::<DirectoryConfig>(
            vec![
                audit.from.verify(&keys.signing_key)?,
                audit.to.verify(&keys.signing_key)?,
            ],
            decode_audit_proof(&audit.proof)?,
        )
        .await
        .context("audit proof did not verify")?;
        println!(
            "directory {accounts} accounts: audit proof of the {what} generated in {:.1} ms, verified in {:.1} ms, {} bytes",
            ms(gen_a),
            ms(t.elapsed()),
            audit.proof.len()
        );
    }
    Ok(())
}

/// What verification adds to starting a conversation: the verified lookup alone, next to the
/// whole first send to a new contact.
async fn conversation_start() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = Server::open(Settings {
        data: tmp.path().join("server"),
        directory_interval_ms: 5,
        ..Settings::default()
    })
    .await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(server.serve(listener, shutdown.clone()));
    let rounds = 20;
    let (mut lookups, mut starts) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let home = |n: &str| tmp.path().join(format!("{n}{i}"));
        let mut alice = Client::register(&home("a"), &url, &format!("alice{i}"), None).await?;
        Client::register(&home("b"), &url, &format!("bob{i}"), None).await?;
        let bob = Username::new(&format!("bob{i}"))?;
        alice.sync().await?;
        let t = Instant::now();
        alice.verification(&bob).await?;
        lookups.push(t.elapsed());
        let t = Instant::now();
        alice.send(&format!("@bob{i}"), "hello").await?;
        starts.push(t.elapsed());
    }
    shutdown.cancel();
    serving.await??;
    println!(
        "conversation start: first send to a new contact {:.2} ms, of which a verified directory lookup is {:.2} ms (mean of {rounds})",
        ms(mean(&starts)),
        ms(mean(&lookups))
    );
    Ok(())
}

/// Runs the directory measurements for each size.
pub async fn run(sizes: &[usize]) -> Result<()> {
    println!("key directory: akd 0.13 on SQLite, in-process; 2 cores");
    for &n in sizes {
        measure(n).await?;
    }
    conversation_start().await
}
