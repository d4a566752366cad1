//! The HTTP API fuzzed from its own OpenAPI document with schemathesis: valid and invalid
//! requests to every documented operation, signed in and not, must never get a 5xx answer, and
//! the server must serve on afterwards (a conversation through it still works).
//!
//! schemathesis is a Python tool. `.ci/run` installs the pinned version
//! (`fuzz/api/requirements.txt`) into a virtual environment and names its `st` program in
//! `SEALPOST_SCHEMATHESIS`; without it (and without `st` on the PATH) this test says so and
//! passes without running. `SEALPOST_API_FUZZ_EXAMPLES` sets the examples per operation
//! (default 40) and `SEALPOST_API_FUZZ_SEED` the seed (default: a new one, printed).

use std::path::PathBuf;

use crate::common::{People, TestServer, group_of, texts, u};
use sealpost_sdk::Suite;

fn schemathesis() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SEALPOST_SCHEMATHESIS") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("st"))
            .find(|p| p.is_file())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_fuzzed_from_its_openapi_document_never_answers_5xx() {
    let Some(st) = schemathesis() else {
        eprintln!(
            "skipping: schemathesis is not installed (pip install -r fuzz/api/requirements.txt, \
             then set SEALPOST_SCHEMATHESIS to its `st` program)"
        );
        return;
    };
    // The registration limit lifted, so that registrations reach the code behind it (the limit
    // has its own tests).
    let server = TestServer::start_with(|s| s.registrations_per_address_per_hour = u32::MAX).await;
    let people = People::new();
    let mut alice = people.register(&server, "alice").await;
    let mut bob = people.register(&server, "bob").await;
    alice
        .create_group("club", &[u("bob")], Suite::Classic)
        .await
        .unwrap();
    bob.sync().await.unwrap();
    // A session token of alice's, so that the fuzz reaches past authentication.
    let token = alice.bench_prepare("#club", 0, "").await.unwrap().token;
    // Names that exist, for half of the values of the path parameters that name something
    // (schemathesis makes up the other half): users, bob's device, the group, and a pending
    // request to link a new device to alice's account.
    let link =
        sealpost_sdk::PendingLink::start(&people.home("alice-2"), &server.url, "alice", None)
            .await
            .unwrap();
    let bobs_device = bob.whoami().device;
    let club = group_of(&alice, "#club").to_string();
    let config = format!(
        r#"headers = {{ Authorization = "Bearer ${{SEALPOST_API_FUZZ_TOKEN}}" }}

[dictionaries.users]
values = ["alice", "bob"]
[dictionaries.devices]
values = ["{bobs_device}"]
[dictionaries.groups]
values = ["{club}"]
[dictionaries.links]
values = ["{link}"]

[parameters]
"path.username" = {{ dictionary = "users", probability = 0.5 }}
"path.device" = {{ dictionary = "devices", probability = 0.5 }}
"path.group" = {{ dictionary = "groups", probability = 0.5 }}
"path.link" = {{ dictionary = "links", probability = 0.5 }}
"#,
        link = link.link_id()
    );

    let examples = std::env::var("SEALPOST_API_FUZZ_EXAMPLES").unwrap_or_else(|_| "40".into());
    let seed = std::env::var("SEALPOST_API_FUZZ_SEED").unwrap_or_else(|_| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        (t.as_nanos() % 1_000_000_007).to_string()
    });
    eprintln!("schemathesis: {examples} examples per operation, seed {seed}");
    let reports = tempfile::tempdir().unwrap();
    let config_file = reports.path().join("schemathesis.toml");
    std::fs::write(&config_file, config).unwrap();
    let mut command = std::process::Command::new(&st);
    command
        .arg("--config-file")
        .arg(&config_file)
        .arg("run")
        .arg(format!("{}/openapi.json", server.url))
        // Never a 5xx, and every answer as the document says: its status, its content type and
        // its body's schema.
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        // In the environment, not on the command line, where `ps` shows it to everyone.
        .env("SEALPOST_API_FUZZ_TOKEN", &token)
        .args(["--max-examples", &examples, "--seed", &seed])
        .args(["--workers", "1", "--request-timeout", "30"])
        // The stateful phase follows the document's links (an upload's id to its continuation,
        // a new group's id to posting in it, ...).
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .arg("--report-dir")
        .arg(reports.path())
        // schemathesis keeps a cache in its working directory: not in the source tree.
        .current_dir(reports.path())
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false");
    // The server runs on this test's runtime: wait for schemathesis off it.
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found a failure (seed {seed}):\n{stdout}\n{stderr}"
    );
    // It really tested: it saw every operation of the document.
    let document: serde_json::Value = reqwest::get(format!("{}/openapi.json", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operations: usize = document["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|ops| ops.as_object().unwrap().len())
        .sum();
    assert!(
        stdout.contains(&format!("{operations} selected / {operations} total"))
            && stdout.contains(&format!("Tested: {operations}")),
        "schemathesis did not test the {operations} operations of the document:\n{stdout}"
    );
    // The stateful phase ran and followed links (an upload's start to its continuation: the
    // others start from answers the fuzz cannot get, such as a registration, which needs
    // signatures).
    let links_covered = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("API Links:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u32>().ok());
    assert!(
        stdout.contains("✅ Stateful") && links_covered.is_some_and(|n| n > 0),
        "the stateful phase did not run or followed no link:\n{stdout}"
    );
    eprintln!("{stdout}");

    // The server serves on: the conversation still works.
    alice.send("#club", "still here").await.unwrap();
    let events = bob.sync().await.unwrap();
    assert_eq!(
        texts(&events),
        vec![("@alice".to_owned(), "still here".to_owned())]
    );
}
