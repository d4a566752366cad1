//! Bad input from a client with a valid session: each gets a clear error, nothing panics, and the
//! server's state is unchanged (the next valid message lands right after the last one).

use crate::common::{People, TestServer, texts, u};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt as _, StreamExt as _};
use sealpost_proto::{CommitUpload, PostedResponse, SyncBatch, SyncRequest};
use sealpost_sdk::{Client, CommitForgery, Event, Suite};
use tls_codec::Serialize as _;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

struct Raw {
    http: reqwest::Client,
    url: String,
}

impl Raw {
    fn new(url: &str) -> Raw {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Raw {
            http: reqwest::Client::new(),
            url: url.to_owned(),
        }
    }

    async fn post(&self, token: &str, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    async fn get(&self, token: &str, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    async fn sync_raw(&self, token: &str, group: &str) -> SyncBatch {
        let req = SyncRequest {
            inbox_after: Some(u64::MAX),
            groups: vec![(group.parse().unwrap(), 0)],
            limit: None,
        };
        let r = self
            .http
            .post(format!("{}/v1/sync", self.url))
            .bearer_auth(token)
            .json(&req)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut batch = SyncBatch::decode(&r.bytes().await.unwrap()).unwrap();
        batch.deliveries.retain(|d| d.group().to_string() == group);
        batch
    }
}

/// A commit upload with no Welcome.
fn upload(commit: Vec<u8>) -> Vec<u8> {
    CommitUpload {
        commit: commit.into(),
        welcome: Vec::new().into(),
    }
    .tls_serialize_detached()
    .unwrap()
}

/// Alice and Bob registered, and a text from Alice to Bob: Alice's client (and the people,
/// whose directories live as long as they do).
async fn alice_writes_to_bob(server: &TestServer) -> (People, Client) {
    let people = People::new();
    let mut alice = people.register(server, "alice").await;
    people.register(server, "bob").await;
    alice.send("@bob", "hi").await.unwrap();
    (people, alice)
}

/// Alice and Bob with a direct conversation (post-quantum suite) and the group `name` (classic).
async fn a_direct_and_a_group_conversation(
    server: &TestServer,
    people: &People,
    name: &str,
) -> (Client, Client) {
    let mut alice = people.register(server, "alice").await;
    let bob = people.register(server, "bob").await;
    alice.send("@bob", "hi").await.unwrap();
    alice
        .create_group(name, &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    (alice, bob)
}

/// A member's commit whose tree does not hold together — a new leaf whose parent hash does not
/// match its path, a path one node short — is refused by the server (it checks every commit
/// against the group's public state), though signed and tagged as a member's commit is. Both
/// suites. The control, the same commit signed and tagged the same way with nothing altered,
/// is taken, so the refusals are the tree's.
#[tokio::test]
async fn commits_whose_tree_does_not_hold_together_are_refused() {
    let server = TestServer::start().await;
    let people = People::new();
    let (mut alice, mut bob) = a_direct_and_a_group_conversation(&server, &people, "club").await;
    bob.sync().await.unwrap();
    let raw = Raw::new(&server.url);
    for conversation in ["@bob", "#club"] {
        let a = alice.bench_prepare(conversation, 0, "").await.unwrap();
        let commits = format!("/v1/groups/{}/commits", a.group);
        let last = |b: &SyncBatch| b.deliveries.last().map(|d| d.group_seq).unwrap();
        let before = last(&raw.sync_raw(&a.token, &a.group).await);
        for forgery in [CommitForgery::ParentHash, CommitForgery::ShortPath] {
            let forged = alice.forge_commit_unchecked(conversation, forgery).unwrap();
            let (status, body) = raw.post(&a.token, &commits, upload(forged)).await;
            assert_eq!(
                (status, body["message"].as_str()),
                (
                    400,
                    Some("the handshake message does not validate against the group state")
                ),
                "{conversation} {forgery:?}: {body}"
            );
        }
        assert_eq!(last(&raw.sync_raw(&a.token, &a.group).await), before);
        let on_bobs_side = if conversation == "@bob" {
            "@alice"
        } else {
            "#club"
        };
        let epoch = bob.epoch(on_bobs_side).unwrap();
        let control = alice
            .forge_commit_unchecked(conversation, CommitForgery::Unaltered)
            .unwrap();
        let (status, body) = raw.post(&a.token, &commits, upload(control)).await;
        assert_eq!(status, 200, "{conversation}: {body}");
        bob.sync().await.unwrap();
        assert_eq!(
            bob.epoch(on_bobs_side).unwrap(),
            epoch + 1,
            "{conversation}"
        );
    }
}

#[tokio::test]
async fn bad_messages_and_commits_change_nothing() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    let mut carol = people.register(&server, "carol").await;
    alice
        .create_group("club", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    bob.sync().await.unwrap();
    carol.send("@alice", "hi").await.unwrap(); // carol needs a session; she is not in #club
    let raw = Raw::new(&server.url);

    let a = alice.bench_prepare("#club", 3, "valid").await.unwrap();
    let c = carol.bench_prepare("@alice", 0, "").await.unwrap();
    let messages = format!("/v1/groups/{}/messages", a.group);
    let commits = format!("/v1/groups/{}/commits", a.group);

    let (status, _) = raw.post(&a.token, &messages, a.messages[0].clone()).await;
    assert_eq!(status, 200);
    let last = |b: &SyncBatch| b.deliveries.last().map(|d| d.group_seq).unwrap();
    let before = last(&raw.sync_raw(&a.token, &a.group).await);

    // Not MLS at all; an MLS message for another group; an unknown group; a non-member.
    let (status, body) = raw
        .post(&a.token, &messages, vec![0xde, 0xad, 0xbe, 0xef])
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let (status, body) = raw
        .post(
            &a.token,
            &format!("/v1/groups/{}/messages", c.group),
            a.messages[1].clone(),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = raw
        .post(
            &a.token,
            "/v1/groups/00000000000000000000000000000000/messages",
            a.messages[1].clone(),
        )
        .await;
    assert_eq!(status, 400, "the message names another group");
    let (status, body) = raw.post(&c.token, &messages, a.messages[1].clone()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "a non-member may not post"
    );
    let (status, _) = raw
        .post(
            &a.token,
            "/v1/groups/not-hex/messages",
            a.messages[1].clone(),
        )
        .await;
    assert_eq!(status, 400);

    // A stale commit (the one that added bob, epoch 0) from a member and from a non-member.
    let log = raw.sync_raw(&a.token, &a.group).await;
    let first_commit = log.deliveries[0].payload.as_slice().to_vec();
    let (status, body) = raw
        .post(&a.token, &commits, upload(first_commit.clone()))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("epoch_conflict")),
        "{body}"
    );
    let (status, _) = raw
        .post(&c.token, &commits, upload(first_commit.clone()))
        .await;
    assert!(status == 409 || status == 403, "{status}");
    // A tampered commit, garbage in the upload frame, and an application message sent as a commit.
    let mut tampered = first_commit.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x55;
    let (status, _) = raw.post(&a.token, &commits, upload(tampered)).await;
    assert!(status == 400 || status == 409, "{status}");
    let (status, _) = raw.post(&a.token, &commits, vec![1, 2, 3]).await;
    assert_eq!(status, 400);
    let (status, _) = raw
        .post(&a.token, &commits, upload(a.messages[1].clone()))
        .await;
    assert_eq!(status, 400);
    // A commit posted as an application message.
    let (status, _) = raw.post(&a.token, &messages, first_commit).await;
    assert_eq!(status, 400);

    // Nothing was appended; the next valid message lands right after.
    assert_eq!(last(&raw.sync_raw(&a.token, &a.group).await), before);
    let (status, body) = raw.post(&a.token, &messages, a.messages[1].clone()).await;
    assert_eq!(status, 200);
    let posted: PostedResponse = serde_json::from_value(body).unwrap();
    assert_eq!(posted.seq, before + 1);

    // A replay of the same ciphertext is answered with where the first landed, and not stored
    // again: a client whose answer was lost retries this way.
    let (status, body) = raw.post(&a.token, &messages, a.messages[1].clone()).await;
    assert_eq!(status, 200);
    let replayed: PostedResponse = serde_json::from_value(body).unwrap();
    assert_eq!(replayed, posted);
    assert_eq!(last(&raw.sync_raw(&a.token, &a.group).await), before + 1);
    let events = bob.sync().await.unwrap();
    let valid = ("@alice".to_string(), "valid".to_string());
    assert_eq!(
        texts(&events),
        vec![valid.clone(), valid],
        "two distinct messages, the replay not stored"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Undecryptable { .. })),
        "{events:?}"
    );
    // The metrics counted the accepted messages and timed the durable writes.
    let metrics = server.metrics().await;
    let value = |name: &str| crate::common::metric(&metrics, name).unwrap();
    assert!(value("sealpost_messages_accepted_total") >= 3.0);
    assert!(value("sealpost_storage_write_seconds_count") >= 3.0);
    assert!(value("sealpost_storage_write_seconds_sum") > 0.0);
    // And the group still works both ways.
    bob.send("#club", "still fine").await.unwrap();
    assert!(
        texts(&alice.sync().await.unwrap())
            .contains(&("@bob".to_string(), "still fine".to_string()))
    );
}

#[tokio::test]
async fn forged_key_packages_and_tokens_are_refused() {
    let server = TestServer::start().await;
    let (_people, mut alice) = alice_writes_to_bob(&server).await;
    let a = alice.bench_prepare("@bob", 0, "").await.unwrap();
    let raw = Raw::new(&server.url);

    // Bob's key package uploaded as alice's, and a tampered one.
    let (status, body) = raw
        .post(
            &a.token,
            "/v1/users/bob/key-packages?ciphersuite=79",
            Vec::new(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let kp = STANDARD
        .decode(body["key_packages"][0]["key_package"].as_str().unwrap())
        .unwrap();
    let mut forged = kp.clone();
    let n = forged.len();
    forged[n - 10] ^= 1; // inside the signature
    for (bytes, what) in [
        (kp, "someone else's"),
        (forged, "a broken signature"),
        (vec![0, 1, 2], "garbage"),
    ] {
        let body = serde_json::json!({ "key_packages": [STANDARD.encode(&bytes)] })
            .to_string()
            .into_bytes();
        let r = raw
            .http
            .post(format!("{}/v1/key-packages", raw.url))
            .bearer_auth(&a.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{what}");
    }
    // Unknown user, bad ciphersuite parameter, bad token.
    let (status, _) = raw
        .post(
            &a.token,
            "/v1/users/nobody/key-packages?ciphersuite=79",
            Vec::new(),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = raw
        .post(
            &a.token,
            "/v1/users/bob/key-packages?ciphersuite=abc",
            Vec::new(),
        )
        .await;
    assert_eq!(status, 400);
    let (status, body) = raw.post("not-a-token", "/v1/sync", b"{}".to_vec()).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    // A malformed sync request.
    let (status, _) = raw
        .post(&a.token, "/v1/sync", b"{\"groups\": 7}".to_vec())
        .await;
    assert_eq!(status, 400);
}

/// The next text or binary frame, skipping pings.
async fn next_answer<S>(ws: &mut S, guard: std::time::Duration) -> Message
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let frame = tokio::time::timeout(guard, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if !matches!(frame, Message::Ping(_) | Message::Pong(_)) {
            return frame;
        }
    }
}

#[tokio::test]
async fn bad_websocket_frames_get_errors_or_close_the_connection_only() {
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    people.register(&server, "bob").await;
    alice.send("@bob", "hi").await.unwrap();
    let a = alice.bench_prepare("@bob", 0, "").await.unwrap();
    let connect = || async {
        let mut req = format!("{}/v1/ws", server.url.replacen("http", "ws", 1))
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", a.token).parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert!(
            matches!(ws.next().await, Some(Ok(Message::Text(_)))),
            "subscribed"
        );
        ws
    };
    // A guard against hanging, not a timing assertion.
    let guard = std::time::Duration::from_secs(30);

    // A send frame too short for its header, and one for a group that is not ours: clear errors.
    let mut ws = connect().await;
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let mut bad_group = 7u64.to_be_bytes().to_vec();
    bad_group.extend_from_slice(&[0u8; 16]);
    bad_group.extend_from_slice(b"not mls");
    ws.send(Message::Binary(bad_group.into())).await.unwrap();
    for _ in 0..2 {
        let answer = next_answer(&mut ws, guard).await;
        let Message::Text(t) = answer else {
            panic!("expected an answer, got {answer:?}")
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v["error"]["code"], "bad_request", "{v}");
    }

    // A valid send on the same connection: answered with its sequence number, delivered.
    let one = alice
        .bench_prepare("@bob", 1, "over the socket")
        .await
        .unwrap();
    let mut frame = 9u64.to_be_bytes().to_vec();
    frame.extend_from_slice(
        one.group
            .parse::<sealpost_proto::GroupId>()
            .unwrap()
            .as_bytes(),
    );
    frame.extend_from_slice(&one.messages[0]);
    ws.send(Message::Binary(frame.into())).await.unwrap();
    let answer = next_answer(&mut ws, guard).await;
    let Message::Text(t) = answer else {
        panic!("expected an answer, got {answer:?}")
    };
    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
    assert_eq!(v["id"], 9, "{v}");
    assert!(v["seq"].as_u64().unwrap() > 0, "{v}");

    // A frame over the size limit closes that connection.
    ws.send(Message::Binary(vec![7u8; 2 * 1024 * 1024].into()))
        .await
        .ok();
    tokio::time::timeout(guard, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .unwrap();

    // The server is fine, and so is the client.
    alice.send("@bob", "after").await.unwrap();
    let r = reqwest::get(format!("{}/healthz", server.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut bob = sealpost_sdk::Client::open(&people.home("bob"), None).unwrap();
    let got: Vec<String> = texts(&bob.sync().await.unwrap())
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(got, ["hi", "over the socket", "after"]);
}

/// WebSocket send frames fuzzed at the server: mangled copies of real ones (header and MLS
/// message alike; see `crate::common::mangle`) sent over one signed-in connection. Each gets an
/// answer — its sequence number or a clear error, never an internal or unavailable one — on a
/// connection that stays open; afterwards a real text still goes through.
/// `SEALPOST_WS_FUZZ_CASES` (default 1,000) and `SEALPOST_WS_FUZZ_SEED` as in the receive fuzz.
#[tokio::test]
async fn mangled_websocket_send_frames_get_clear_answers() {
    let seed = crate::common::seed("SEALPOST_WS_FUZZ_SEED");
    let cases = crate::common::setting("SEALPOST_WS_FUZZ_CASES", 1000);
    let mut rng = crate::common::Rng(seed);
    // Long runs send more than a device may in a minute; the send limit has its own test.
    let server = TestServer::start_with(|s| s.sends_per_minute = u32::MAX).await;
    let people = People::new();
    let (mut alice, mut bob) = a_direct_and_a_group_conversation(&server, &people, "room").await;
    let material = crate::common::send_frames(&mut alice, ["@bob", "#room"]).await;
    let token = alice.bench_prepare("@bob", 0, "").await.unwrap().token;
    let mut socket = crate::common::FrameSocket::open(&server.url, &token).await;
    let (mut taken, mut refused) = (0, 0);
    for case in 0..cases {
        match socket
            .send(crate::common::mangle(&mut rng, &material))
            .await
        {
            Ok(true) => taken += 1,
            Ok(false) => refused += 1,
            Err(fault) => panic!("case {case} (seed {seed}): {fault}"),
        }
    }
    println!("websocket fuzz: {cases} frames, {taken} taken, {refused} refused with an error");
    // Taken ones are ciphertexts nobody can read (the server cannot tell): Bob shows them as
    // unreadable, and a real text after them still arrives.
    alice.send("@bob", "still works").await.unwrap();
    let got = texts(&bob.sync().await.unwrap());
    assert!(
        got.contains(&("@alice".to_owned(), "still works".to_owned())),
        "{got:?}"
    );
}

/// A query string that is missing or malformed gets the API's JSON error, like every other
/// refusal, not the framework's plain text.
#[tokio::test]
async fn bad_query_strings_get_json_errors() {
    let server = TestServer::start().await;
    let (_people, mut alice) = alice_writes_to_bob(&server).await;
    let token = alice.bench_prepare("@bob", 0, "").await.unwrap().token;
    let raw = Raw::new(&server.url);
    let (status, body) = raw.get(&token, "/v1/key-packages?ciphersuite=1").await;
    assert_eq!(status, 200, "{body}");
    for (path, post) in [
        ("/v1/key-packages", false),
        ("/v1/key-packages?ciphersuite=many", false),
        ("/v1/key-packages?ciphersuite=70000", false),
        ("/v1/users/bob/key-packages", true),
    ] {
        let (status, body) = if post {
            raw.post(&token, path, Vec::new()).await
        } else {
            raw.get(&token, path).await
        };
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["code"], "bad_request", "{path}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("invalid query string")),
            "{path}: {body}"
        );
    }
}
