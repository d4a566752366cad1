//! Several server nodes sharing the machine's PostgreSQL and NATS, with clients spread across
//! them. Skipped unless `SEALPOST_TEST_DATABASE_URL` (and, for push across nodes,
//! `SEALPOST_TEST_NATS_URL`) are set; CI sets both.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{Interceptor, People, TestServer, texts, u};
use sealpost_sdk::{Client, Event, LinkStep, PendingLink, Suite};
use tokio::sync::mpsc;

/// How long a test waits for something that should happen at once, before it fails instead
/// of hanging. Not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);

fn database() -> Option<String> {
    let url = std::env::var("SEALPOST_TEST_DATABASE_URL").ok();
    if url.is_none() {
        eprintln!("SEALPOST_TEST_DATABASE_URL is not set: skipping the cluster test");
    }
    url
}

/// `nodes` servers on one fresh PostgreSQL schema, all with the same directory key, pushing to
/// each other through `nats`.
pub(crate) async fn cluster(data: &Path, nodes: usize, nats: &str) -> Option<Vec<TestServer>> {
    cluster_with(data, nodes, nats, |_| {}).await
}

/// The same, with every node's settings adjusted by `adjust`.
async fn cluster_with(
    data: &Path,
    nodes: usize,
    nats: &str,
    adjust: impl Fn(&mut sealpost_server::Settings) + Clone + Send + 'static,
) -> Option<Vec<TestServer>> {
    let base = database()?;
    let url = sealpost_server::storage::postgres::scratch_schema(&base)
        .await
        .unwrap();
    let mut servers = Vec::new();
    for _ in 0..nodes {
        let (url, nats, adjust) = (url.clone(), nats.to_owned(), adjust.clone());
        servers.push(
            TestServer::start_full(data, "127.0.0.1:0", move |s| {
                s.database = sealpost_server::config::ConnectionUrl(url);
                s.nats = sealpost_server::config::ConnectionUrl(nats);
                adjust(s);
            })
            .await,
        );
    }
    Some(servers)
}

pub(crate) fn machine_nats() -> String {
    std::env::var("SEALPOST_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Runs `client.listen` in a task; its events come out of the returned channel. The task ends
/// (handing the client back) once `stop_at` text has arrived.
fn listen(
    mut client: Client,
    stop_at: &str,
) -> (
    mpsc::UnboundedReceiver<Event>,
    tokio::task::JoinHandle<Client>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let stop_at = stop_at.to_owned();
    let task = tokio::spawn(async move {
        client
            .listen("test", |e| {
                let e = &e.event;
                let _ = tx.send(e.clone());
                !matches!(e, Event::Message { text, .. } if *text == stop_at)
            })
            .await
            .unwrap();
        client
    });
    (rx, task)
}

async fn next_text(events: &mut mpsc::UnboundedReceiver<Event>) -> String {
    loop {
        let event = tokio::time::timeout(HANG_GUARD, events.recv())
            .await
            .expect("no event arrived")
            .expect("the listener ended");
        if let Event::Message { text, .. } = event {
            return text;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_through_one_node_is_pushed_to_a_device_on_another() {
    let data = tempfile::tempdir().unwrap();
    let Some(nodes) = cluster(data.path(), 2, &machine_nats()).await else {
        return;
    };
    let people = People::new();
    let mut alice = people.register(&nodes[0], "alice").await;
    let bob = people.register(&nodes[1], "bob").await;

    // Bob is offline for the first message: his listener's catch-up brings it. After that it
    // is subscribed, so the second can only arrive by push from the other node.
    alice.send("@bob", "while you were away").await.unwrap();
    let (mut events, task) = listen(bob, "pushed");
    assert_eq!(next_text(&mut events).await, "while you were away");
    alice.send("@bob", "pushed").await.unwrap();
    assert_eq!(next_text(&mut events).await, "pushed");
    let bob = tokio::time::timeout(HANG_GUARD, task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        texts(&bob.messages("@alice", 10).unwrap()),
        vec![
            ("@alice".to_string(), "while you were away".to_string()),
            ("@alice".to_string(), "pushed".to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_commits_at_two_nodes_leave_one_group_state() {
    let data = tempfile::tempdir().unwrap();
    let Some(nodes) = cluster(data.path(), 2, &machine_nats()).await else {
        return;
    };
    let people = People::new();
    let mut ann = people.register(&nodes[0], "ann").await;
    let mut ben = people.register(&nodes[1], "ben").await;
    people.register(&nodes[0], "cat").await;
    people.register(&nodes[1], "dan").await;
    for (name, suite) in [("classic", Suite::Classic), ("pq", Suite::Pq)] {
        let target = format!("#{name}");
        ann.create_group(name, &[u("ben")], suite).await.unwrap();
        ben.sync().await.unwrap();
        // Both add someone at the same moment, through different nodes: one commit wins the
        // epoch, the other client syncs and commits again on top of it.
        let (cat, dan) = ([u("cat")], [u("dan")]);
        let (a, b) = tokio::join!(
            ann.add_members(&target, &cat),
            ben.add_members(&target, &dan)
        );
        a.unwrap();
        b.unwrap();
        ann.sync().await.unwrap();
        ben.sync().await.unwrap();
        assert_eq!(ann.epoch(&target).unwrap(), ben.epoch(&target).unwrap());
        let names = |c: &Client| {
            let mut m: Vec<String> = c
                .members(&target)
                .unwrap()
                .into_iter()
                .map(|m| m.member)
                .collect();
            m.sort();
            m
        };
        assert_eq!(names(&ann), vec!["@ann", "@ben", "@cat", "@dan"]);
        assert_eq!(names(&ann), names(&ben));
        // Each node's copy of the group has been behind the other's at some point: commits
        // through both still go in.
        ann.remove_members(&target, &[u("dan")]).await.unwrap();
        ben.sync().await.unwrap();
        ben.remove_members(&target, &[u("cat")]).await.unwrap();
        ann.sync().await.unwrap();
        assert_eq!(names(&ann), vec!["@ann", "@ben"]);
        assert_eq!(names(&ann), names(&ben));
        ann.add_members(&target, &[u("cat")]).await.unwrap();
        ben.sync().await.unwrap();
        ben.add_members(&target, &[u("dan")]).await.unwrap();
        ann.sync().await.unwrap();
        assert_eq!(names(&ann), vec!["@ann", "@ben", "@cat", "@dan"]);
        assert_eq!(names(&ann), names(&ben));
        // And the group still works both ways.
        ann.send(&target, "after the race").await.unwrap();
        assert_eq!(
            texts(&ben.sync().await.unwrap()),
            vec![("@ann".to_string(), "after the race".to_string())]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_and_device_linking_span_nodes() {
    let data = tempfile::tempdir().unwrap();
    let Some(nodes) = cluster(data.path(), 2, &machine_nats()).await else {
        return;
    };
    // Alice's challenge comes from one node and her answer goes to the other.
    let split = Interceptor::start(&nodes[0].url).await;
    split.route("/v1/auth/token", &nodes[1].url);
    let people = People::new();
    let mut alice = people.register_at(&split.url, "alice").await;
    let mut bob = people.register(&nodes[1], "bob").await;
    alice.send("@bob", "signed in across nodes").await.unwrap();
    assert_eq!(
        texts(&bob.sync().await.unwrap()),
        vec![("@alice".to_string(), "signed in across nodes".to_string())]
    );

    // A new device files its link request at one node; alice approves through the other.
    let pending = PendingLink::start(&people.home("alice-phone"), &nodes[1].url, "alice", None)
        .await
        .unwrap();
    let code = pending.code();
    alice.approve_link(&code).await.unwrap();
    let mut phone = match pending.try_finish().await.unwrap() {
        LinkStep::Linked(c) => *c,
        LinkStep::Waiting(_) => panic!("the approval did not reach the other node"),
    };
    phone.sync().await.unwrap();
    bob.send("@alice", "to both devices").await.unwrap();
    assert_eq!(
        texts(&phone.sync().await.unwrap()),
        vec![("@bob".to_string(), "to both devices".to_string())]
    );
}

/// A NATS server of this test's own, so that it can be stopped without disturbing other tests.
struct PrivateNats {
    child: Child,
    port: u16,
}

impl PrivateNats {
    fn binary() -> Option<String> {
        let path = std::env::var("SEALPOST_TEST_NATS_SERVER")
            .unwrap_or_else(|_| "/usr/sbin/nats-server".into());
        if Path::new(&path).exists() {
            Some(path)
        } else {
            eprintln!("no nats-server at {path}: skipping");
            None
        }
    }

    /// A free port for one, not started yet.
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Starts on `port` (0: a free one) and returns once it accepts connections.
    fn start(port: u16) -> Option<PrivateNats> {
        let binary = Self::binary()?;
        let port = if port == 0 { Self::free_port() } else { port };
        let mut child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Readiness: the server says when it listens.
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
        let ready = lines.any(|l| l.map(|l| l.contains("Server is ready")).unwrap_or(false));
        assert!(ready, "nats-server did not start");
        // Keep draining its output so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Some(PrivateNats { child, port })
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_away_delivery_falls_back_to_catch_up_and_loses_nothing() {
    let Some(mut nats) = PrivateNats::start(0) else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let Some(nodes) = cluster(data.path(), 2, &nats.url()).await else {
        return;
    };
    let people = People::new();
    let mut alice = people.register(&nodes[0], "alice").await;
    let bob = people.register(&nodes[1], "bob").await;
    alice.send("@bob", "before").await.unwrap();
    let (mut events, task) = listen(bob, "after");
    assert_eq!(next_text(&mut events).await, "before");

    // NATS goes away: sends still succeed (they are durable in PostgreSQL), but nothing can
    // carry them to bob's node.
    nats.kill();
    alice.send("@bob", "during").await.unwrap();
    // NATS is back: bob's node closes its push connections, bob reconnects and catches up.
    let _nats = PrivateNats::start(nats.port).unwrap();
    assert_eq!(next_text(&mut events).await, "during");
    alice.send("@bob", "after").await.unwrap();
    assert_eq!(next_text(&mut events).await, "after");
    let bob = tokio::time::timeout(HANG_GUARD, task)
        .await
        .unwrap()
        .unwrap();
    let got: Vec<String> = texts(&bob.messages("@alice", 10).unwrap())
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(got, vec!["before", "during", "after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_before_nats_push_once_it_comes() {
    if PrivateNats::binary().is_none() {
        return;
    }
    // The nodes start while nothing answers at the NATS address.
    let port = PrivateNats::free_port();
    let data = tempfile::tempdir().unwrap();
    let Some(nodes) = cluster(data.path(), 2, &format!("nats://127.0.0.1:{port}")).await else {
        return;
    };
    let people = People::new();
    let mut alice = people.register(&nodes[0], "alice").await;
    let bob = people.register(&nodes[1], "bob").await;
    alice.send("@bob", "before nats").await.unwrap();
    let (mut events, task) = listen(bob, "pushed");
    assert_eq!(next_text(&mut events).await, "before nats");
    // NATS comes: bob's node closes the push connection made without it (which has no
    // subscription, so nothing from the other node would ever reach it); bob reconnects, catches
    // up, and is subscribed from then on.
    let _nats = PrivateNats::start(port).unwrap();
    alice.send("@bob", "probe").await.unwrap();
    assert_eq!(next_text(&mut events).await, "probe");
    alice.send("@bob", "pushed").await.unwrap();
    assert_eq!(next_text(&mut events).await, "pushed");
    tokio::time::timeout(HANG_GUARD, task)
        .await
        .unwrap()
        .unwrap();
}

/// A node that does not publish the key directory wakes the one that does through NATS when it
/// queues a change: with the publisher's own look for such changes an hour away, a registration
/// through either node answers once its entry is published (without the wake-up, the node that
/// does not publish gives up waiting after `FOLLOWER_WAIT` and answers with the entry still
/// queued), and the accounts reach each other.
#[tokio::test]
async fn registering_through_a_node_that_does_not_publish_wakes_the_publisher() {
    let dir = tempfile::tempdir().unwrap();
    let Some(nodes) = cluster_with(dir.path(), 2, &machine_nats(), |s| {
        s.directory_poll_ms = 3_600_000;
    })
    .await
    else {
        return;
    };
    let people = People::new();
    // One of the two nodes does not publish; each registers two accounts.
    let mut clients = Vec::new();
    for (name, node) in [("alice", 0), ("bob", 1), ("carol", 1), ("dave", 0)] {
        clients.push(people.register(&nodes[node], name).await);
        let queued = nodes[0].store.directory_pending().await.unwrap();
        assert!(
            queued.is_empty(),
            "{name}, registered through node {node}, is still queued: {queued:?}"
        );
    }
    let [alice, bob, carol, dave] = &mut clients[..] else {
        unreachable!()
    };
    alice.send("@bob", "to bob").await.unwrap();
    carol.send("@dave", "to dave").await.unwrap();
    assert_eq!(
        texts(&bob.sync().await.unwrap()),
        [("@alice".to_owned(), "to bob".to_owned())]
    );
    assert_eq!(
        texts(&dave.sync().await.unwrap()),
        [("@carol".to_owned(), "to dave".to_owned())]
    );
}
