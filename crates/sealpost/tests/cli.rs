//! Tests through the real `sealpost` binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::process::Command;

fn sealpost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sealpost"))
}

#[test]
fn demo_checks_out() {
    let out = sealpost().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("no plaintext found"), "{stdout}");
    assert!(stdout.contains("demo passed"), "{stdout}");
}

#[test]
fn errors_go_to_stderr_with_a_nonzero_exit() {
    let home = tempfile::tempdir().unwrap();
    let out = sealpost()
        .arg("--home")
        .arg(home.path().join("p"))
        .args(["send", "@bob", "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no account in this profile"));

    let out = sealpost()
        .arg("--home")
        .arg(home.path())
        .args(["register", "Bad Name", "--server", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid username"));

    let out = sealpost()
        .arg("--home")
        .arg(home.path().join("q"))
        .args(["register", "alice", "--server", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the server"));
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["server", "--help"],
        &["group", "create", "--help"],
        &["send", "--help"],
        &["sync", "--help"],
        &["device", "link", "--help"],
        &["device", "approve", "--help"],
        &["verify", "--help"],
        &["audit", "--help"],
    ] {
        let out = sealpost().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn server_stops_cleanly_on_sigterm() {
    // The server prints its address once it is listening: `start` waits for that line.
    let mut server = ServerProcess::start();
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");
    assert!(server.data.path().join("server.db").exists());
}

/// A server child process on a loopback port; killed on drop.
struct ServerProcess {
    child: std::process::Child,
    url: String,
    data: tempfile::TempDir,
}

impl ServerProcess {
    fn start() -> ServerProcess {
        use std::io::BufRead as _;
        let data = tempfile::tempdir().unwrap();
        let mut child = sealpost()
            .args(["server", "--listen", "127.0.0.1:0", "--data"])
            .arg(data.path())
            .env("SEALPOST_LOG", "warn")
            .env("SEALPOST_DIRECTORY_INTERVAL_MS", "5")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap()
            .to_owned();
        ServerProcess { child, url, data }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_ok(home: &std::path::Path, args: &[&str]) -> String {
    let out = sealpost()
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn linking_verifying_and_auditing_through_the_binary() {
    use std::io::BufRead as _;
    let server = ServerProcess::start();
    let homes = tempfile::tempdir().unwrap();
    let (a, b, phone) = (
        homes.path().join("a"),
        homes.path().join("b"),
        homes.path().join("phone"),
    );
    run_ok(&a, &["register", "alice", "--server", &server.url]);
    run_ok(&b, &["register", "bob", "--server", &server.url]);
    run_ok(&a, &["sync"]);

    // Safety numbers match on both sides; confirming one marks the contact verified.
    let number_in = |out: &str| -> String {
        out.lines()
            .map(str::trim)
            .find(|l| l.len() == 71 && l.chars().all(|c| c.is_ascii_digit() || c == ' '))
            .unwrap_or_else(|| panic!("no safety number in:\n{out}"))
            .to_owned()
    };
    let number = number_in(&run_ok(&a, &["verify", "@bob"]));
    assert_eq!(number, number_in(&run_ok(&b, &["verify", "@alice"])));
    let out = run_ok(&a, &["verify", "@bob", "--confirm", &number]);
    assert!(out.contains("@bob is verified"), "{out}");

    // Linking: the new device prints a code, alice's device approves it.
    let mut link = sealpost()
        .arg("--home")
        .arg(&phone)
        .args(["device", "link", "alice", "--server", &server.url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(link.stdout.take().unwrap()).lines();
    let code = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(rest) = line.trim().strip_prefix("sealpost device approve ") {
            break rest.to_owned();
        }
    };
    let out = run_ok(&a, &["device", "approve", &code]);
    assert!(out.contains("approved device"), "{out}");
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(link.wait().unwrap().success());
    assert!(rest.iter().any(|l| l.starts_with("linked:")), "{rest:?}");
    let devices = run_ok(&a, &["device", "list", "--json"]);
    assert_eq!(devices.lines().count(), 2, "{devices}");

    run_ok(&b, &["send", "@alice", "to both of you"]);
    for home in [&a, &phone] {
        let out = run_ok(home, &["sync"]);
        assert!(out.contains("@bob: to both of you"), "{out}");
    }

    // The auditor verifies the directory, and remembers where it stopped.
    let state = homes.path().join("audit.json");
    let state_arg = state.to_str().unwrap();
    let out = run_ok(
        &a,
        &["audit", "--server", &server.url, "--state", state_arg],
    );
    assert!(out.contains("verified epochs 0 to"), "{out}");
    let out = run_ok(
        &a,
        &["audit", "--server", &server.url, "--state", state_arg],
    );
    assert!(out.contains("up to date"), "{out}");
    // A server whose directory went back below what the auditor saw: exit status 3.
    let mut saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    saved["verified_epoch"] = 999.into();
    std::fs::write(&state, serde_json::to_vec(&saved).unwrap()).unwrap();
    let out = sealpost()
        .arg("--home")
        .arg(&a)
        .args(["audit", "--server", &server.url, "--state", state_arg])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("security"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
