//! What an operator's load balancer, orchestrator and monitoring ask a node: `/healthz`
//! (liveness: the process answers), `/readyz` (readiness: its storage, key directory and NATS
//! answer) and `/metrics`.

use crate::cluster::{cluster, machine_nats};
use crate::common::{TestServer, metric};

/// An HTTP client as any program would use (each test may be a process of its own: the TLS
/// library's provider is installed first).
fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// `GET path`: the status and the JSON body (`Null` if none).
async fn get(base: &str, path: &str) -> (u16, serde_json::Value) {
    let answer = http().get(format!("{base}{path}")).send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_single_node_is_ready_once_its_storage_and_directory_answer() {
    let server = TestServer::start().await;
    let (status, body) = get(&server.url, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["storage"], "ok");
    assert_eq!(body["nats"], "not used");
    assert!(body["directory_epoch"].is_u64(), "{body}");
    assert_eq!(get(&server.url, "/healthz").await.0, 200);
}

#[tokio::test]
async fn a_node_whose_nats_does_not_answer_is_alive_but_not_ready() {
    // Nothing listens on port 1: the node starts anyway and keeps trying to reach NATS.
    let server = TestServer::start_with(|s| {
        s.nats = sealpost_server::config::ConnectionUrl("nats://127.0.0.1:1".into());
    })
    .await;
    let (status, body) = get(&server.url, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "unavailable");
    assert_eq!(body["message"], "not ready: NATS did not answer within 2 s");
    assert_eq!(
        get(&server.url, "/healthz").await.0,
        200,
        "alive all the same"
    );
}

#[tokio::test]
async fn cluster_nodes_are_ready_with_postgresql_and_nats() {
    let dir = tempfile::tempdir().unwrap();
    let Some(nodes) = cluster(dir.path(), 2, &machine_nats()).await else {
        return;
    };
    for node in &nodes {
        let (status, body) = get(&node.url, "/readyz").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (&body["storage"], &body["nats"]),
            (&"ok".into(), &"ok".into())
        );
    }
}

/// `/metrics` counts a refusal under the limit that refused it (and a 404 is no refusal), times
/// each request by route, method and status (a path the server does not serve counts as
/// `unmatched`, so that clients cannot make up new series), and reports the queues and the
/// process's open files and memory.
#[tokio::test]
async fn metrics_count_refusals_by_limit_and_requests_by_route() {
    let server = TestServer::start_with(|s| s.sign_ins_per_address_per_minute = 1).await;
    let http = http();
    for _ in 0..2 {
        http.post(format!("{}/v1/auth/challenge", server.url))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
    }
    let missing = http
        .get(format!("{}/v1/no/such/endpoint/42", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let text = server.metrics().await;
    let value = |series: &str| metric(&text, series);
    assert_eq!(
        value("sealpost_requests_refused_total{limit=\"sign_ins\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains("sealpost_requests_refused_total{limit=\"body_size\"} 1"),
        "{text}"
    );
    assert_eq!(
        value(
            "sealpost_request_duration_seconds_count{route=\"/v1/auth/challenge\",method=\"POST\",status=\"429\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            "sealpost_request_duration_seconds_count{route=\"unmatched\",method=\"GET\",status=\"404\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("no/such"), "{text}");
    // The queues, empty at rest (what fills them is measured in the server's own tests).
    assert_eq!(
        value("sealpost_storage_writes_waiting"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(value("sealpost_push_queue_frames"), Some(0.0), "{text}");
    assert!(value("process_open_fds").is_some_and(|n| n > 0.0), "{text}");
    assert!(
        value("process_resident_memory_bytes").is_some_and(|n| n > 0.0),
        "{text}"
    );
}
