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
    use std::io::BufRead as _;
    let data = tempfile::tempdir().unwrap();
    let mut child = sealpost()
        .args(["server", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .env("SEALPOST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The server prints its address once it is listening.
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on http://127.0.0.1:"), "{line}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");
    assert!(data.path().join("server.db").exists());
}
