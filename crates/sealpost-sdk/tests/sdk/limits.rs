//! The server's abuse limits: registrations and sign-ins per client address, lookups, sends
//! and connections per device. Each refusal is a clear error that changes nothing, and what
//! the limit does not cover keeps working. And the largest group the server allows works with
//! its default settings.

use crate::common::{People, TestServer, texts, u};
use sealpost_proto::ErrorCode;
use sealpost_sdk::{Client, ClientSettings, Error, Event, Suite, Username};

fn rate_limited(result: &Error) -> bool {
    matches!(
        result,
        Error::Server {
            code: ErrorCode::RateLimited,
            ..
        }
    )
}

#[tokio::test]
async fn registrations_from_one_address_are_limited() {
    let server = TestServer::start_with(|s| s.registrations_per_address_per_hour = 2).await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    people.register(&server, "bob").await;
    let err = Client::register(&people.home("carol"), &server.url, "carol", None)
        .await
        .err()
        .expect("a third account from one address within the hour is refused");
    assert!(rate_limited(&err), "{err}");
    // Two an hour: the next one fits half an hour after the first.
    assert!(err.to_string().contains("try again in 30 minutes"), "{err}");
    let carol = sealpost_proto::Username::new("carol").unwrap();
    assert!(
        server.store.user(&carol).await.unwrap().is_none(),
        "no account made"
    );
    // Those registered carry on.
    alice.send("@bob", "still here").await.unwrap();
}

/// An HTTP request as any program could make it: the status, the error code if any, and the
/// `Retry-After` header if any.
async fn raw(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
) -> (u16, String, Option<u64>) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = request
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let retry_after = answer
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let body: serde_json::Value = answer.json().await.unwrap_or_default();
    (
        status,
        body["code"].as_str().unwrap_or_default().to_owned(),
        retry_after,
    )
}

#[tokio::test]
async fn looking_up_one_user_after_another_is_stopped() {
    // (The limit is never below twice the largest group: that is made small too.)
    let server = TestServer::start_with(|s| {
        s.lookups_per_minute = 8;
        s.max_group_size = 4;
    })
    .await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    let mut mallory = people.register(&server, "mallory").await;
    alice.send("@bob", "hello").await.unwrap();
    // Mallory's device guesses usernames straight at the API, by both ways of asking.
    mallory.send("@alice", "hi").await.unwrap();
    let token = mallory.bench_prepare("@alice", 0, "").await.unwrap().token;
    let mut answers = Vec::new();
    for i in 0..20 {
        let path = if i % 2 == 0 {
            format!("/v1/directory/lookup/guess{i}")
        } else {
            format!("/v1/users/guess{i}")
        };
        answers.push(
            raw(
                reqwest::Method::GET,
                format!("{}{path}", server.url),
                Some(&token),
            )
            .await,
        );
    }
    let first_refused = answers
        .iter()
        .position(|(status, _, _)| *status == 429)
        .expect("the lookups run out before 20 guesses");
    assert!(first_refused <= 8, "{answers:?}");
    // Eight a minute: one more every 7.5 s, and each refusal says when (8 s, rounded up).
    assert!(
        answers[first_refused..]
            .iter()
            .all(|(status, code, retry_after)| *status == 429
                && code == "rate_limited"
                && matches!(retry_after, Some(1..=8))),
        "once refused, refused until the next lookup fits, and told when: {answers:?}"
    );
    assert!(
        answers[..first_refused].iter().all(|a| a.2.is_none()),
        "{answers:?}"
    );
    // Other devices are not touched by Mallory's limit.
    alice.send("@bob", "still talking").await.unwrap();
    let got = texts(&bob.sync().await.unwrap());
    assert_eq!(
        got,
        [
            ("@alice".to_owned(), "hello".to_owned()),
            ("@alice".to_owned(), "still talking".to_owned())
        ]
    );
}

/// A send a moment over the limit waits for the server's `Retry-After` (a second here: sixty a
/// minute) and goes through, instead of failing; a longer wait is the refusal tested below.
#[tokio::test]
async fn a_send_a_moment_over_the_limit_waits_and_goes_through() {
    let server = TestServer::start_with(|s| s.sends_per_minute = 60).await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    let sent: Vec<String> = (0..64).map(|i| format!("burst{i}")).collect();
    for text in &sent {
        alice.send("@bob", text).await.unwrap();
    }
    let got = bob.sync().await.unwrap();
    let shown: Vec<String> = texts(&got).into_iter().map(|(_, t)| t).collect();
    assert_eq!(shown, sent);
    // The limit did bite: the server refused at least one of them before it went through.
    let metrics = server.metrics().await;
    assert!(
        crate::common::metric(&metrics, "sealpost_requests_refused_total{limit=\"sends\"}")
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_device_sending_too_fast_is_refused_and_nothing_goes_missing() {
    let server = TestServer::start_with(|s| s.sends_per_minute = 10).await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    let mut sent = Vec::new();
    let mut refused = None;
    for i in 0..20 {
        let text = format!("member{i}");
        match alice.send("@bob", &text).await {
            Ok(_) => sent.push(text),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("ten sends a minute run out before twenty");
    assert!(rate_limited(&err), "{err}");
    assert!(err.to_string().contains("try again in"), "{err}");
    assert!(!sent.is_empty());
    // Bob gets what was sent, with no gap for the refused text (its number is used again).
    let got = bob.sync().await.unwrap();
    let shown: Vec<String> = texts(&got).into_iter().map(|(_, t)| t).collect();
    assert_eq!(shown, sent);
    assert!(
        !got.iter().any(|e| matches!(e, Event::Gap { .. })),
        "{got:?}"
    );
    // Receiving is not sending: Bob's sync and Alice's are not limited.
    assert!(alice.sync().await.is_ok());
}

#[tokio::test]
async fn sign_ins_from_one_address_are_limited() {
    let server = TestServer::start_with(|s| s.sign_ins_per_address_per_minute = 5).await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    people.register(&server, "bob").await;
    alice.send("@bob", "signed in").await.unwrap();
    // Someone asks for sign-in challenges (and link requests) from the same address.
    let mut statuses = Vec::new();
    for i in 0..10 {
        let path = if i % 2 == 0 {
            "/v1/auth/challenge"
        } else {
            "/v1/links"
        };
        let (status, _, retry_after) =
            raw(reqwest::Method::POST, format!("{}{path}", server.url), None).await;
        assert_eq!(
            status == 429,
            retry_after.is_some(),
            "{status} {retry_after:?}"
        );
        statuses.push(status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().filter(|s| **s != 429).count() <= 5,
        "{statuses:?}"
    );
    // A session already open carries on.
    alice.send("@bob", "still signed in").await.unwrap();
}

#[tokio::test]
async fn connections_a_device_opens_are_limited() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let server = TestServer::start_with(|s| s.connections_per_minute = 2).await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    people.register(&server, "bob").await;
    alice.send("@bob", "hi").await.unwrap();
    let token = alice.bench_prepare("@bob", 0, "").await.unwrap().token;
    let url = format!("{}/v1/ws", server.url.replacen("http", "ws", 1));
    let connect = || {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    let first = connect().await.unwrap();
    let second = connect().await.unwrap();
    match connect().await {
        Err(tokio_tungstenite::tungstenite::Error::Http(answer)) => {
            assert_eq!(answer.status().as_u16(), 429);
            // Two a minute: the next fits 30 s after the first.
            let retry_after = answer
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok());
            let secs = retry_after.map(str::parse::<u64>);
            assert!(matches!(secs, Some(Ok(1..=30))), "{retry_after:?}");
        }
        other => panic!("a third connection within the minute is refused: {other:?}"),
    }
    drop((first, second));
    // Requests over HTTP are not connections: they carry on.
    alice.send("@bob", "still here").await.unwrap();
}

/// Everything the server sends on `stream` until it closes the connection. The guard is
/// for a broken server, so that the test fails rather than hangs.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the server closes the connection of a slow client")
    .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn clients_that_send_slowly_do_not_hold_the_server() {
    use tokio::io::AsyncWriteExt as _;
    let server = TestServer::start_with(|s| s.request_read_timeout_ms = 300).await;
    // Headers that never end: the connection is closed.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"POST /v1/sync HTTP/1.1\r\nhost: sealpost\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut slow).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    // A body that stops half-way: refused, clearly.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(
        b"POST /v1/accounts HTTP/1.1\r\nhost: sealpost\r\ncontent-type: application/json\r\ncontent-length: 100\r\nconnection: close\r\n\r\n{\"username\":",
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("too slowly"), "{answer}");
    // Meanwhile and afterwards, others are served.
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    people.register(&server, "bob").await;
    alice.send("@bob", "served").await.unwrap();
}

/// A client that opens its push connection and then stops reading cannot make the server
/// buffer for it without bound: once the connection's queue is full (the kernel's buffers
/// having filled first) the server drops the connection, counts it, and keeps nothing more for
/// it; the senders never notice, and the client catches up by syncing afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_and_catches_up_later() {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let server = TestServer::start().await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    alice.send("@bob", "hi").await.unwrap();
    bob.sync().await.unwrap();

    // Bob's push connection, with the smallest receive buffer the kernel allows, never read.
    let token = bob.bench_prepare("@alice", 0, "").await.unwrap().token;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let mut request = format!("{}/v1/ws", server.url.replacen("http", "ws", 1))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert!(ws.next().await.unwrap().unwrap().is_text(), "subscribed");

    // More 4 KiB deliveries than the queue (1,024 frames), a write burst (256) and the largest
    // kernel send buffer (the third figure of tcp_wmem: 4 MiB here) can hold, with room to spare.
    let send_buffer: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    let sent = 1_024 + 256 + send_buffer / 4_096 + 700;
    let batch = alice
        .bench_prepare("@bob", sent, &"x".repeat(3_000))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    for message in batch.messages {
        let answer = http
            .post(format!("{}/v1/groups/{}/messages", server.url, batch.group))
            .bearer_auth(&batch.token)
            .body(message)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "the sender is never held up");
    }
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("sealpost_slow_clients_dropped_total 1"),
        "the connection was dropped as too slow, once:\n{metrics}"
    );

    // Reading now, bob finds the connection closed after what was already on its way (the
    // guard is against a hang, not a timing assertion).
    let mut pushed = 0;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Some(Ok(frame)) = ws.next().await {
            if frame.is_binary() {
                pushed += 1;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server closed the connection");
    assert!(pushed < sent, "not everything was pushed: {pushed}");

    // A sync brings every message, once.
    let events = bob.sync().await.unwrap();
    let got = texts(&events);
    assert_eq!(got.len(), sent);
    assert!(got.iter().all(|(from, _)| from == "@alice"));
}

/// A group of 1,000 devices, the default largest, with the server's default settings (but for
/// the per-address limits on registering and signing in: one test address registers them
/// all): created in one commit, grown, shrunk and left. A group one device larger is refused
/// before anything is created or claimed. (The classic suite and a few joining members keep
/// the test short; `sealpost bench --only c --group-size 1000` measures the whole group on the
/// post-quantum suite.)
#[tokio::test(flavor = "multi_thread")]
async fn a_group_of_the_largest_size_works_with_the_default_settings() {
    let server = TestServer::start_with(|s| {
        s.registrations_per_address_per_hour = 0;
        s.sign_ins_per_address_per_minute = 0;
    })
    .await;
    let largest = sealpost_server::Settings::default().max_group_size;
    let people = People::new();
    // Few key packages each: registering a thousand devices is most of the test's time.
    let settings = ClientSettings {
        key_packages_target: 2,
        key_packages_low: 1,
        ..ClientSettings::default()
    };
    let names: Vec<String> = (0..largest).map(|i| format!("member{i}")).collect();
    let mut clients = Vec::with_capacity(largest);
    for chunk in names.chunks(50) {
        let registering = chunk.iter().map(|name| {
            let home = people.home(name);
            let (url, settings) = (server.url.clone(), settings.clone());
            async move { Client::register_with(&home, &url, name, None, settings).await }
        });
        clients.extend(
            futures_util::future::try_join_all(registering)
                .await
                .unwrap(),
        );
    }
    let mut late = people.register(&server, "late").await;
    let mut creator = clients.remove(0);
    let mut others: Vec<Username> = names[1..].iter().map(|n| u(n)).collect();

    // One device too many: refused before anything exists or is claimed.
    others.push(u("late"));
    let err = creator
        .create_group("too-big", &others, Suite::Classic)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::GroupTooLarge { devices, limit } if devices == largest as u64 + 1 && limit == largest as u64),
        "{err}"
    );
    assert!(creator.conversations().unwrap().is_empty());
    assert!(late.sync().await.unwrap().is_empty());
    others.pop();

    // The largest group: every member is in it from the first commit.
    let info = creator
        .create_group("big", &others, Suite::Classic)
        .await
        .unwrap();
    assert_eq!(info.members, largest);
    assert_eq!(creator.epoch("#big").unwrap(), 1);
    let (first, rest) = clients.split_at_mut(1);
    let (second, rest) = rest.split_at_mut(1);
    let (leaver, rest) = rest.split_at_mut(1);
    let (first, second, leaver, last) = (
        &mut first[0],
        &mut second[0],
        &mut leaver[0],
        rest.last_mut().unwrap(),
    );
    for member in [&mut *first, &mut *second, &mut *leaver, &mut *last] {
        member.sync().await.unwrap();
        assert_eq!(member.members("#big").unwrap().len(), largest);
    }

    // Full: one more is refused, the group unchanged.
    let err = creator.add_members("#big", &[u("late")]).await.unwrap_err();
    assert!(matches!(err, Error::GroupTooLarge { .. }), "{err}");
    // Room for one: the last member is removed, and then `late` added.
    creator
        .remove_members("#big", &[u(&names[largest - 1])])
        .await
        .unwrap();
    creator.add_members("#big", &[u("late")]).await.unwrap();
    late.sync().await.unwrap();
    assert_eq!(late.members("#big").unwrap().len(), largest);
    last.sync().await.unwrap();
    assert!(last.members("#big").is_err(), "the removed member is out");

    // A member leaves; the next member to sync who commits it takes the group on.
    leaver.leave("#big").await.unwrap();
    creator.sync().await.unwrap();
    creator.send("#big", "still here").await.unwrap();
    let seen = first.sync().await.unwrap();
    assert_eq!(first.members("#big").unwrap().len(), largest - 1);
    assert_eq!(
        texts(&seen),
        vec![("@member0".to_string(), "still here".to_string())]
    );
    second.sync().await.unwrap();
    assert_eq!(second.members("#big").unwrap().len(), largest - 1);
}
