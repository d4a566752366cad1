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
