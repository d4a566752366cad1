//! `sealpost bench --only files`: sending and receiving a file through Sealpost (seal + resumable
//! upload; fetch + open + check + save) against a plain HTTP upload and download of as many bytes
//! to the same server, in the same run; and the peak memory of each side.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result, ensure};
use sealpost_sdk::{Client, Event};

/// Bytes sent in one request by the plain upload (the same as the client's segments).
const SEGMENT: usize = 4 * 1024 * 1024;

/// Resets the peak resident memory of process `pid` (`self` for this one); Linux only.
fn reset_peak(pid: &str) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// The peak resident memory of process `pid` since it was last reset, MiB; Linux only.
fn peak_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / secs
}

/// Writes `mib` MiB of incompressible bytes to `path`.
fn write_file(path: &Path, mib: u64) -> Result<()> {
    let mut block = vec![0u8; 1024 * 1024];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for _ in 0..mib {
        for b in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        file.write_all(&block)?;
    }
    file.flush()?;
    Ok(())
}

/// A plain upload of `total` bytes (the file's, then zeros) to the server's file store, as the
/// resumable-uploads draft does it: no encryption, no hashing. The upload's id.
async fn plain_upload(
    http: &reqwest::Client,
    server: &str,
    token: &str,
    group: &str,
    path: &Path,
    total: u64,
) -> Result<String> {
    let created: serde_json::Value = http
        .post(format!("{server}/v1/groups/{group}/blobs"))
        .bearer_auth(token)
        .header("upload-length", total)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id"].as_str().context("no upload id")?.to_owned();
    let mut file = std::fs::File::open(path)?;
    let mut offset = 0u64;
    while offset < total {
        let want = usize::try_from((total - offset).min(SEGMENT as u64))?;
        let mut segment = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            let n = file.read(&mut segment[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        let last = offset + want as u64 == total;
        http.patch(format!("{server}/v1/uploads/{id}"))
            .bearer_auth(token)
            .header("upload-offset", offset)
            .header("upload-complete", if last { "?1" } else { "?0" })
            .body(segment)
            .send()
            .await?
            .error_for_status()?;
        offset += want as u64;
    }
    Ok(id)
}

/// A plain download of the file `id` into `path` (written and synced as the client does it:
/// synced behind the writer, and at the end).
async fn plain_download(
    http: &reqwest::Client,
    server: &str,
    token: &str,
    id: &str,
    path: &Path,
) -> Result<u64> {
    let mut resp = http
        .get(format!("{server}/v1/blobs/{id}"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?;
    let mut out = sealpost_sdk::attachment::WriteBehind::create(path)?;
    let mut n = 0;
    while let Some(piece) = resp.chunk().await? {
        out.write_all(&piece)?;
        n += piece.len() as u64;
    }
    out.finish()?;
    Ok(n)
}

/// Runs the file measurements with `pair`: a sender and a recipient who share a conversation
/// (`@{recipient}` for the sender). `server_pid`: the server's process, for its memory.
pub async fn run(
    http: &reqwest::Client,
    pair: &mut [Client],
    recipient: &str,
    tmp: &Path,
    mib: u64,
    server_pid: Option<u32>,
) -> Result<()> {
    ensure!(pair.len() == 2, "two clients");
    let path = tmp.join("bench-file.bin");
    write_file(&path, mib)?;
    let len = mib * 1024 * 1024;
    let total = sealpost_sdk::attachment::sealed_len(len);
    let target = format!("@{recipient}");
    let me = "self".to_owned();
    let server_pid = server_pid.map(|p| p.to_string());
    let reset = |server_pid: &Option<String>| {
        reset_peak(&me);
        if let Some(p) = server_pid {
            reset_peak(p);
        }
    };
    let peaks = |server_pid: &Option<String>| {
        let server = server_pid.as_deref().and_then(peak_mib);
        (peak_mib("self"), server)
    };

    let sender = pair[0].bench_prepare(&target, 0, "").await?;
    let group = sender.group.clone();
    let (server, token) = (sender.server, sender.token);
    let receiver_token = pair[1]
        .bench_prepare(
            &format!("@{}", pair[0].whoami().username.trim_start_matches('@')),
            0,
            "",
        )
        .await?
        .token;

    // Plain HTTP, then Sealpost, alternated twice: the machine is shared and noisy.
    let mut rows = Vec::new();
    for round in 0..2 {
        reset(&server_pid);
        let t = Instant::now();
        let id = plain_upload(http, &server, &token, &group, &path, total).await?;
        let plain_up = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let got = plain_download(
            http,
            &server,
            &receiver_token,
            &id,
            &tmp.join(format!("plain-{round}")),
        )
        .await?;
        let plain_down = t.elapsed().as_secs_f64();
        ensure!(
            got == total,
            "the plain download got {got} of {total} bytes"
        );
        let _ = std::fs::remove_file(tmp.join(format!("plain-{round}")));

        reset(&server_pid);
        let t = Instant::now();
        let sent = pair[0]
            .send_file(&target, &path, "", None, &mut |_| {})
            .await?;
        let up = t.elapsed().as_secs_f64();
        let (client_up_peak, server_up_peak) = peaks(&server_pid);
        let Event::Message { id: message, .. } = sent else {
            anyhow::bail!("send_file answered {sent:?}");
        };
        pair[1].sync().await?;
        reset(&server_pid);
        let out = tmp.join(format!("received-{round}"));
        let t = Instant::now();
        pair[1]
            .download(message.as_str(), Some(&out), &mut |_| {})
            .await?;
        let down = t.elapsed().as_secs_f64();
        let (client_down_peak, server_down_peak) = peaks(&server_pid);
        let _ = std::fs::remove_file(&out);
        rows.push((
            plain_up,
            up,
            plain_down,
            down,
            client_up_peak,
            client_down_peak,
            match (server_up_peak, server_down_peak) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        ));
    }
    let _ = std::fs::remove_file(&path);
    for (round, (plain_up, up, plain_down, down, cu, cd, s)) in rows.into_iter().enumerate() {
        let show = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |m| format!("{m:.0} MiB"));
        println!(
            "(files) round {}: a {mib} MiB file; send (seal + upload) {:.0} MiB/s vs plain HTTP upload {:.0} MiB/s = {:.0} %; receive (fetch + open + check + save) {:.0} MiB/s vs plain HTTP download {:.0} MiB/s = {:.0} %",
            round + 1,
            mib_per_s(total, up),
            mib_per_s(total, plain_up),
            100.0 * plain_up / up,
            mib_per_s(total, down),
            mib_per_s(total, plain_down),
            100.0 * plain_down / down,
        );
        println!(
            "(files) round {}: peak resident memory: bench process while sending {}, while receiving {} (both clients, and the load generator, in one process); server {}",
            round + 1,
            show(cu),
            show(cd),
            show(s),
        );
    }
    Ok(())
}
