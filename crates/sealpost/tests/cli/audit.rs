//! Auditors of the key directory comparing what they checked, with each other and with
//! clients: a server forked into two (two real processes from one copied data directory).
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use crate::{ServerProcess, run_ok, sealpost};

/// Copies the directory `from` (files and subdirectories) into `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `sealpost audit --follow --serve` of one server, with its own state file in `home`: started,
/// and through its first check, so that what it serves is there.
struct ServingAuditor {
    child: std::process::Child,
    url: String,
}

impl ServingAuditor {
    fn start(home: &std::path::Path, server: &str) -> ServingAuditor {
        use std::io::BufRead as _;
        let mut child = sealpost()
            .arg("--home")
            .arg(home)
            .args([
                "audit",
                "--server",
                server,
                "--follow",
                "--interval",
                "3600",
            ])
            .args(["--serve", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let url = first
            .strip_prefix("serving the roots checked here on ")
            .unwrap_or_else(|| panic!("{first}"))
            .to_owned();
        let checked = lines.next().unwrap().unwrap();
        assert!(checked.starts_with("checked versions 0 to"), "{checked}");
        ServingAuditor { child, url }
    }
}

impl Drop for ServingAuditor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server that shows two directories: its data copied while it was stopped, and the copies
/// run as two servers under the same directory key, each given another new account. An auditor
/// of either sees a directory that only grew; comparing their roots shows two roots for one
/// version, both signed by the server: a split view (exit status 3, both roots printed). Two
/// auditors of the same view agree.
#[test]
fn auditors_comparing_roots_catch_a_server_that_forked_its_directory() {
    let homes = tempfile::tempdir().unwrap();
    let home = |name: &str| homes.path().join(name);
    let first = ServerProcess::start();
    run_ok(&home("a"), &["register", "alice", "--server", &first.url]);
    let data = first.into_data();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(data.path(), copy.path());
    let inherit = std::process::Stdio::inherit;
    let one = ServerProcess::start_in(data, &[], &[], inherit());
    let two = ServerProcess::start_in(copy, &[], &[], inherit());
    run_ok(&home("b"), &["register", "bob", "--server", &one.url]);
    run_ok(&home("c"), &["register", "carol", "--server", &two.url]);
    run_ok(&home("d"), &["register", "dave", "--server", &one.url]);

    let of_one = ServingAuditor::start(&home("auditor-1"), &one.url);
    let of_two = ServingAuditor::start(&home("auditor-2"), &two.url);
    // A third auditor of the first server agrees with the auditor of the same server, and
    // catches the split with the auditor of the other one; so does one of the second server.
    let audit = |auditor: &str, server: &str, peer: &str| {
        let state = home(auditor).join("audit.json");
        sealpost()
            .arg("--home")
            .arg(home(auditor))
            .args(["--json", "audit", "--server", server, "--peer", peer])
            .arg("--state")
            .arg(state)
            .output()
            .unwrap()
    };
    let out = audit("auditor-3", &one.url, &of_one.url);
    assert!(out.status.success(), "{out:?}");
    let agreed: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').nth(1).unwrap()).unwrap();
    assert_eq!(agreed["peer"], of_one.url.as_str(), "{agreed}");
    assert_eq!(agreed["epoch"], agreed["own_epoch"], "{agreed}");
    for out in [
        audit("auditor-3", &one.url, &of_two.url),
        audit("auditor-4", &two.url, &of_one.url),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        let error: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
        assert_eq!(error["kind"], "security", "{stderr}");
        let message = error["error"].as_str().unwrap();
        assert!(message.contains("(SplitView)"), "{message}");
        assert!(
            message.contains("two different roots for version"),
            "{message}"
        );
    }

    // A client compares with auditors too, on every sync: with one of its own view, nothing to
    // say; with one of the other view, a split-view alert (exit status 3).
    let out = run_ok(&home("d"), &["settings", "--auditor", &of_one.url]);
    assert!(
        out.contains(&format!("auditors compared with: {}", of_one.url)),
        "{out}"
    );
    let out = run_ok(&home("d"), &["sync"]);
    assert!(!out.contains("SECURITY"), "{out}");
    run_ok(&home("d"), &["settings", "--auditor", &of_two.url]);
    let out = sealpost()
        .arg("--home")
        .arg(home("d"))
        .arg("sync")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("SECURITY (split_view)"), "{stdout}");
    assert!(
        stdout.contains(&format!("the auditor at {}", of_two.url)),
        "{stdout}"
    );
    let out = run_ok(&home("d"), &["settings", "--no-auditors"]);
    assert!(out.contains("auditors compared with: none"), "{out}");
}
