//! The canary: a unique marker sent in messages, group names, files (their bytes, names and
//! captions) and a profile (its display name and avatar) never appears in the server's files, in any log line of the server or the clients (at trace level, every crate), or in any
//! byte it received on the wire; nor does a session token reach a log line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use common::{People, TestServer, texts};
use sealpost_sdk::{Client, Suite, Username};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A TCP proxy that records every byte sent towards the server.
async fn recording_proxy(target: std::net::SocketAddr, wire: Buffer) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let wire = wire.clone();
            tokio::spawn(async move {
                let mut server = TcpStream::connect(target).await.unwrap();
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = cr.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            let _ = sw.shutdown().await;
                            break;
                        }
                        wire.0.lock().unwrap().extend_from_slice(&buf[..n]);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = tokio::io::copy(&mut sr, &mut cw);
                let _ = tokio::join!(up, down);
            });
        }
    });
    format!("http://{addr}")
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    contains_bytes(haystack, needle.as_bytes())
}

#[tokio::test]
async fn marker_never_reaches_the_server() {
    let log = Buffer::default();
    let log_writer = log.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || log_writer.clone())
        .with_ansi(false)
        .init();

    let server = TestServer::start().await;
    let wire = Buffer::default();
    let url = recording_proxy(server.addr, wire.clone()).await;
    let people = People::new();
    let reg = |n: &'static str| {
        let home = people.home(n);
        let url = url.clone();
        async move { Client::register(&home, &url, n, None).await.unwrap() }
    };
    let mut alice = reg("alice").await;
    let mut bob = reg("bob").await;

    let marker = "CANARY-7f3a9c2e-5d1b";
    alice.send("@bob", &format!("1:1 {marker}")).await.unwrap();
    let group = format!("g{}", &marker[7..15]);
    let info = alice
        .create_group(&group, &[Username::new("bob").unwrap()], Suite::Classic)
        .await
        .unwrap();
    alice
        .send(&info.conversation, &format!("group {marker}"))
        .await
        .unwrap();
    // A file: the marker in its bytes (again and again), its name and its caption.
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join(format!("{marker}.txt"));
    let body: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("{i} {marker}\n").into_bytes())
        .collect();
    std::fs::write(&path, &body).unwrap();
    alice
        .send_file(
            &info.conversation,
            &path,
            &format!("caption {marker}"),
            None,
            &mut |_| {},
        )
        .await
        .unwrap();
    // A profile: the marker as the display name, and in the avatar's bytes.
    let avatar = files.path().join("me.png");
    std::fs::write(&avatar, &body[..200_000]).unwrap();
    alice
        .set_profile(Some(&format!("name {marker}")), Some(Some(&avatar)))
        .await
        .unwrap();
    let events = bob.sync().await.unwrap();
    assert_eq!(texts(&events).len(), 3, "{events:?}");
    assert!(
        events.iter().any(
            |e| matches!(e, sealpost_sdk::Event::Profile { name, .. } if name.contains(marker))
        ),
        "{events:?}"
    );
    let fetched = bob.profile_of("@alice").unwrap().avatar.unwrap();
    assert_eq!(std::fs::read(fetched).unwrap(), body[..200_000]);
    assert!(
        texts(&events).iter().all(|(_, t)| t.contains(marker)),
        "the marker went through"
    );
    // The server's files, the encrypted file among them, hold no trace of it.
    let mut stored = Vec::new();
    let mut dirs = vec![server.data.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else {
                stored.push(entry.path());
            }
        }
    }
    assert!(
        stored
            .iter()
            .any(|p| p.parent().unwrap().ends_with("blobs")),
        "the file is among the server's files: {stored:?}"
    );
    for file in &stored {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            !contains(&bytes, marker),
            "the marker is in the server's file {}",
            file.display()
        );
    }
    let file_message = events
        .iter()
        .find_map(|e| match e {
            sealpost_sdk::Event::Message {
                file: Some(_), id, ..
            } => Some(id.as_str().to_owned()),
            _ => None,
        })
        .unwrap();
    let saved = bob
        .download(
            &file_message,
            Some(files.path().join("got").as_path()),
            &mut |_| {},
        )
        .await
        .unwrap();
    assert!(std::fs::read(saved).unwrap() == body);

    // A session token is a secret too: it may cross the wire (in a header) but never a log.
    let token = alice.bench_prepare("@bob", 0, "").await.unwrap().token;

    let alice_device = alice.whoami().device;
    let public = STANDARD.encode(
        server
            .store
            .device(alice_device)
            .await
            .unwrap()
            .unwrap()
            .device_key,
    );
    drop(server); // the server stops; its files stay until `people`/the tempdir go
    let wire = wire.0.lock().unwrap().clone();
    assert!(wire.len() > 10_000, "the proxy saw the traffic");
    for needle in [marker, &group] {
        assert!(
            !contains(&wire, needle),
            "{needle} crossed the wire in clear"
        );
        assert!(
            !contains(&log.0.lock().unwrap(), needle),
            "{needle} reached a log line"
        );
    }
    assert!(
        !contains(&log.0.lock().unwrap(), &token),
        "a session token reached a log line"
    );
    assert!(
        contains(&log.0.lock().unwrap(), "TRACE"),
        "the log was taken at trace level"
    );

    // Nor does any secret key, in any of the encodings a log line or a request would use. The
    // probe is checked on the device's public key, which registration sends in base64.
    let log = log.0.lock().unwrap().clone();
    assert!(
        public.len() > 40 && contains(&wire, &public),
        "the probe finds a key on the wire"
    );
    // And the MLS state's secrets: epoch secrets, ratchets, HPKE private keys (each client
    // holds dozens after two conversations; the count is checked so the probe cannot go blind).
    for client in [&alice, &bob] {
        let secrets = client.mls_secrets_unchecked();
        let records: std::collections::BTreeSet<&str> =
            secrets.iter().map(|(r, _)| r.as_str()).collect();
        assert!(
            secrets.len() >= 20
                && ["EpochSecrets", "MessageSecrets", "EpochKeyPairs"]
                    .iter()
                    .all(|r| records.contains(r)),
            "the MLS secrets were found: {} in {records:?}",
            secrets.len()
        );
        for (record, secret) in &secrets {
            assert!(
                !contains_bytes(&wire, secret),
                "a secret of {record} crossed the wire"
            );
            assert!(
                !contains_bytes(&log, secret),
                "a secret of {record} reached a log line"
            );
            for shown in encodings(secret) {
                assert!(
                    !contains(&wire, &shown) && !contains(&log, &shown),
                    "a secret of {record} crossed the wire or reached a log line as {shown}"
                );
            }
        }
    }
    for client in [&alice, &bob] {
        for (name, key) in client.secret_keys_unchecked() {
            assert!(key.len() >= 32, "{name}");
            assert!(!contains_bytes(&wire, &key), "a {name} crossed the wire");
            assert!(!contains_bytes(&log, &key), "a {name} reached a log line");
            for shown in encodings(&key) {
                assert!(
                    !contains(&wire, &shown),
                    "a {name} crossed the wire as {shown}"
                );
                assert!(
                    !contains(&log, &shown),
                    "a {name} reached a log line as {shown}"
                );
            }
        }
    }
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// How a key would look in text: hex, base64 in its usual alphabets, and as Rust prints a
/// byte slice with `{:?}`.
fn encodings(key: &[u8]) -> Vec<String> {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        hex.to_uppercase(),
        hex,
        STANDARD.encode(key),
        STANDARD_NO_PAD.encode(key),
        URL_SAFE_NO_PAD.encode(key),
        format!("{key:?}"),
    ]
}
