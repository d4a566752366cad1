//! Tests through the real `sealpost` binary: its commands, the terminal and web interfaces, and
//! (in `crash` and `cluster_kill`) server and client processes killed on purpose. One test binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::process::Command;

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod cluster_kill;
mod crash;
mod terminal;
mod web;

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
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no account in this profile"), "{said}");
    assert!(
        said.contains("sealpost register"),
        "the command line says what to do: {said}"
    );

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
        &["completions", "--help"],
        &["man", "--help"],
    ] {
        let out = sealpost().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

/// What bash offers after `words` (the last one being completed), with the script of
/// `sealpost completions bash` loaded: run in a real bash, as pressing Tab does.
fn bash_completes(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; _sealpost sealpost '{}' '{}'; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words.len() - 1,
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let bash = Command::new("bash").args(["-c", &program]).output();
    let std::process::Output {
        status,
        stdout,
        stderr,
    } = bash.unwrap();
    let complaint = String::from_utf8_lossy(&stderr);
    assert!(status.success(), "bash: {complaint}");
    String::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn completions_and_manual_pages_come_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("sealpost.bash");
    let out = sealpost().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    std::fs::write(&script, &out.stdout).unwrap();
    let mut commands = bash_completes(&script, &["sealpost", "se"]);
    commands.sort();
    assert_eq!(commands, ["send", "server", "settings"]);
    assert_eq!(
        bash_completes(&script, &["sealpost", "group", "c"]),
        ["create"]
    );
    assert_eq!(
        bash_completes(&script, &["sealpost", "send", "@bob", "--rep"]),
        ["--reply-to"]
    );
    assert_eq!(
        bash_completes(
            &script,
            &["sealpost", "group", "create", "g", "--ciphersuite", ""]
        ),
        ["pq", "classic"]
    );
    for (shell, says) in [
        ("zsh", "#compdef sealpost"),
        ("fish", "complete -c sealpost"),
    ] {
        let out = sealpost().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(says),
            "{shell}"
        );
    }
    let out = sealpost().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));

    // The main page on stdout; with --out, a page for every command, nested ones too.
    let out = sealpost().arg("man").output().unwrap();
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH sealpost 1"), "{page}");
    assert!(
        page.contains("end\\-to\\-end encrypted messenger"),
        "{page}"
    );
    let pages = dir.path().join("man1");
    let out = sealpost()
        .args(["man", "--out"])
        .arg(&pages)
        .output()
        .unwrap();
    assert!(out.status.success());
    for command in [
        "",
        "-send",
        "-download",
        "-group-create",
        "-device-link",
        "-server",
    ] {
        let page = std::fs::read_to_string(pages.join(format!("sealpost{command}.1"))).unwrap();
        assert!(
            page.contains(&format!(".TH sealpost{command} 1")),
            "{command}: {page}"
        );
    }
    let send = std::fs::read_to_string(pages.join("sealpost-send.1")).unwrap();
    assert!(send.contains("reply\\-to"), "{send}");

    // The client's options are the client's: `server` offers neither in its help, its
    // completions or its page, and refuses them (SEALPOST_HOME in the environment is no harm).
    let server_page = std::fs::read_to_string(pages.join("sealpost-server.1")).unwrap();
    assert!(send.contains("\\-\\-home"), "{send}");
    assert!(!server_page.contains("\\-\\-home"), "{server_page}");
    let help = sealpost().args(["server", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--data") && !help.contains("--home") && !help.contains("--json"),
        "{help}"
    );
    let offered = bash_completes(&script, &["sealpost", "server", "--"]);
    assert!(offered.contains(&"--data".to_owned()), "{offered:?}");
    assert!(
        !offered.iter().any(|o| o == "--home" || o == "--json"),
        "{offered:?}"
    );
    for args in [&["server", "--home", "x"][..], &["--json", "server"]] {
        let out = sealpost().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let error = String::from_utf8_lossy(&out.stderr);
        assert!(
            error.contains("options of the client's commands"),
            "{error}"
        );
    }
    let out = sealpost()
        .env("SEALPOST_HOME", dir.path())
        .args(["server", "--print-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// `sealpost server --print-config` prints the settings in effect (file, environment, options)
/// without passwords; mistakes in the configuration are clear errors, each said once, before the
/// server starts.
#[test]
fn the_server_prints_its_settings_and_says_what_is_wrong_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.toml");
    std::fs::write(&file, "retention_days = 3\nmax_group_size = 50\n").unwrap();
    let out = sealpost()
        .env("SEALPOST_MAX_GROUP_SIZE", "60")
        .env_remove("SEALPOST_CONFIG")
        .args(["server", "--print-config", "--config"])
        .arg(&file)
        .args(["--database", "postgres://app:hunter2@db:5432/sealpost"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    for line in [
        "retention_days = 3",
        "max_group_size = 60",
        "database = \"postgres://app:…@db:5432/sealpost\"",
    ] {
        assert!(printed.lines().any(|l| l == line), "{line} in {printed}");
    }
    assert!(!printed.contains("hunter2"), "{printed}");

    // Without --config: the file SEALPOST_CONFIG names, else the one in the XDG config
    // directory if there is one; --config wins over both.
    let xdg = dir.path().join("xdg");
    std::fs::create_dir_all(xdg.join("sealpost")).unwrap();
    std::fs::write(xdg.join("sealpost/server.toml"), "retention_days = 5\n").unwrap();
    let named = dir.path().join("named.toml");
    std::fs::write(&named, "retention_days = 7\n").unwrap();
    let retention = |config_env: Option<&std::path::Path>, args: &[&str]| {
        let mut command = sealpost();
        command
            .env("XDG_CONFIG_HOME", &xdg)
            .env_remove("SEALPOST_CONFIG")
            .args(["server", "--print-config"])
            .args(args);
        if let Some(path) = config_env {
            command.env("SEALPOST_CONFIG", path);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("retention_days = ").map(str::to_owned))
            .unwrap()
    };
    assert_eq!(retention(None, &[]), "5");
    assert_eq!(retention(Some(&named), &[]), "7");
    assert_eq!(
        retention(Some(&named), &["--config", file.to_str().unwrap()]),
        "3"
    );

    let refused = |envs: &[(&str, &str)], args: &[&str]| {
        let out = sealpost()
            .env("XDG_CONFIG_HOME", dir.path().join("no-config-here"))
            .env_remove("SEALPOST_CONFIG")
            .envs(envs.iter().copied())
            .arg("server")
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "no address announced");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = dir.path().join("missing.toml");
    let error = refused(&[], &["--config", missing.to_str().unwrap()]);
    assert!(error.contains("cannot read config file"), "{error}");
    assert_eq!(error.matches("No such file").count(), 1, "{error}");
    let error = refused(&[("SEALPOST_RETENTION_DAYS", "a week")], &[]);
    assert!(
        error.contains("invalid value \"a week\" in environment variable SEALPOST_RETENTION_DAYS"),
        "{error}"
    );
    let error = refused(&[("SEALPOST_LOG", "sealpost_server=loud")], &[]);
    assert!(
        error.contains("SEALPOST_LOG=\"sealpost_server=loud\" is not a log filter"),
        "{error}"
    );
}

/// The packaging in deploy/ asks the server only for settings it has, with values it takes: the
/// settings file the systemd unit and the compose file read (`sealpost.env`), the compose file's
/// own `SEALPOST_*` variables and the unit's `Environment=` lines, given to `sealpost server
/// --print-config`, come back as the settings in effect. The unit passes `systemd-analyze verify`
/// and the compose file parses as YAML with both nodes reading `sealpost.env` (each where the
/// machine has the tool: the image itself needs Docker and a registry, which CI has not).
#[test]
fn the_packaged_settings_are_ones_the_server_takes() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let read = |name: &str| std::fs::read_to_string(deploy.join(name)).unwrap();
    let (env_file, compose, unit) = (
        read("sealpost.env"),
        read("compose.yaml"),
        read("sealpost-server.service"),
    );
    let mut vars: Vec<(String, String)> = Vec::new();
    for line in env_file.lines().map(str::trim) {
        if !line.is_empty() && !line.starts_with('#') {
            let (name, value) = line.split_once('=').unwrap();
            vars.push((name.to_owned(), value.to_owned()));
        }
    }
    for line in compose.lines().map(str::trim) {
        if let Some((name, value)) = line.split_once(": ")
            && name.starts_with("SEALPOST_")
        {
            let value = value.replace("${SEALPOST_DB_PASSWORD}", "hunter2");
            vars.push((name.to_owned(), value));
        }
    }
    for line in unit.lines() {
        if let Some((name, value)) = line
            .strip_prefix("Environment=")
            .and_then(|v| v.split_once('='))
        {
            vars.push((name.to_owned(), value.to_owned()));
        }
    }
    assert!(vars.len() >= 10, "{vars:?}");
    let out = sealpost()
        .env_remove("SEALPOST_CONFIG")
        .env("XDG_CONFIG_HOME", deploy.join("no-config-here"))
        .envs(vars.iter().map(|(n, v)| (n, v)))
        .args(["server", "--print-config"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for (name, value) in &vars {
        if ["SEALPOST_LOG", "SEALPOST_LOG_FORMAT"].contains(&name.as_str()) {
            continue; // how it logs, not a setting of the file
        }
        let key = name.strip_prefix("SEALPOST_").unwrap().to_lowercase();
        let shown = printed
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{name} is no setting: {printed}"));
        let shown = shown.trim_matches('"');
        let expected = value.replace(":hunter2@", ":…@");
        assert_eq!(shown, expected, "{name}");
    }

    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sealpost-server.service");
        let binary = env!("CARGO_BIN_EXE_sealpost");
        std::fs::write(&path, unit.replace("/usr/local/bin/sealpost", binary)).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("systemd-analyze is not here: the unit's syntax is not checked");
    }

    let parse = "import json, sys, yaml; d = yaml.safe_load(sys.stdin); print(json.dumps({n: s.get('env_file') for n, s in d['services'].items()}))";
    match std::process::Command::new("python3")
        .args(["-c", "import yaml"])
        .status()
    {
        Ok(status) if status.success() => {
            let mut child = std::process::Command::new("python3")
                .args(["-c", parse])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(compose.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "compose.yaml is not YAML");
            let env_files: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(env_files["node1"], "sealpost.env");
            assert_eq!(env_files["node2"], "sealpost.env");
        }
        _ => eprintln!("python3 with PyYAML is not here: compose.yaml's syntax is not checked"),
    }
}

/// With `SEALPOST_LOG_FORMAT=json` the server logs one JSON object per line, and each request's
/// lines carry its id: the one a proxy sent in `X-Request-Id` (answered back in the same header)
/// or one the server made; an id that could forge a log line is replaced.
#[test]
fn server_logs_can_be_json_with_request_ids() {
    use std::io::{Read as _, Write as _};
    let mut server = ServerProcess::start_with(
        &[
            ("SEALPOST_LOG", "sealpost_server=debug"),
            ("SEALPOST_LOG_FORMAT", "json"),
        ],
        std::process::Stdio::piped(),
    );
    let address = server.url.trim_start_matches("http://").to_owned();
    let ask = |id: &str| {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        write!(
            stream,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .unwrap()
            .to_owned()
    };
    assert_eq!(ask("probe-1"), "probe-1");
    // (Control characters do not get past HTTP parsing; quotes and spaces do.)
    let made = ask("forged\"} {\"level\":\"ERROR");
    assert!(!made.contains("forged"), "{made}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut stderr = String::new();
    let mut pipe = server.child.stderr.take().unwrap();
    pipe.read_to_string(&mut stderr).unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for id in ["probe-1", made.as_str()] {
        assert!(
            lines.iter().any(|l| l["span"]["request_id"] == id
                && l["fields"]["path"] == "/healthz"
                && l["fields"]["status"] == 200),
            "{id} in {stderr}"
        );
    }
    assert!(!stderr.contains("forged"), "{stderr}");
}

/// The client's settings file names the profile and the server; the command line wins over it;
/// `sealpost config` prints what is in effect in a form the file takes back; a file with a key
/// this version does not know is refused, naming the file.
#[test]
fn the_settings_file_names_the_profile_and_the_server() {
    let server = ServerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config/sealpost/client.toml");
    let with_env = |args: &[&str]| {
        sealpost()
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env_remove("SEALPOST_HOME")
            .args(args)
            .output()
            .unwrap()
    };
    let config = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        all.push("config");
        let out = with_env(&all);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };

    // No file: the default profile directory, no server.
    let none = config(&[]);
    assert_eq!(none["found"], false);
    assert_eq!(none["home"]["from"], "default");
    assert_eq!(
        none["home"]["value"],
        dir.path().join("data/sealpost/client").to_str().unwrap()
    );
    assert_eq!(none["server"]["from"], "unset");
    let out = with_env(&["register", "alice"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("which server?") && said.contains("client.toml"),
        "{said}"
    );

    // The file names both: register and whoami need neither --home nor --server.
    let profile = dir.path().join("alice");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(
        &file,
        format!(
            "home = {:?}\nserver = {:?}\n",
            profile.to_str().unwrap(),
            server.url
        ),
    )
    .unwrap();
    let out = with_env(&["register", "alice"]);
    assert!(out.status.success(), "{out:?}");
    assert!(profile.join("store.key").exists());
    let out = with_env(&["whoami"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("@alice"),
        "{out:?}"
    );
    let from_file = config(&[]);
    assert_eq!(from_file["home"]["from"], "file");
    assert_eq!(from_file["server"]["value"], server.url.as_str());
    // The command line wins.
    let elsewhere = dir.path().join("elsewhere");
    let given = config(&["--home", elsewhere.to_str().unwrap()]);
    assert_eq!(given["home"]["from"], "command_line");
    assert_eq!(given["home"]["value"], elsewhere.to_str().unwrap());

    // What `config` prints, saved as the file, says the same.
    let printed = with_env(&["config"]);
    let text = String::from_utf8(printed.stdout).unwrap();
    assert!(text.contains("# The profile directory"), "{text}");
    std::fs::write(&file, &text).unwrap();
    let again = config(&[]);
    assert_eq!(again["home"], from_file["home"]);
    assert_eq!(again["server"], from_file["server"]);

    // A misspelt key is refused, naming the file and the key.
    std::fs::write(&file, "sever = \"https://example.org\"\n").unwrap();
    let out = with_env(&["whoami"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("client.toml is not valid") && said.contains("sever"),
        "{said}"
    );
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
        Self::start_with(&[], std::process::Stdio::inherit())
    }

    /// With these environment variables added, and its stderr going to `stderr`.
    fn start_with(env: &[(&str, &str)], stderr: std::process::Stdio) -> ServerProcess {
        Self::start_args(&[], env, stderr)
    }

    /// With these arguments and environment variables added, and its stderr going to `stderr`.
    fn start_args(
        args: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
        stderr: std::process::Stdio,
    ) -> ServerProcess {
        Self::start_in(tempfile::tempdir().unwrap(), args, env, stderr)
    }

    /// On the data directory `data`.
    fn start_in(
        data: tempfile::TempDir,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
        stderr: std::process::Stdio,
    ) -> ServerProcess {
        use std::io::BufRead as _;
        let mut child = sealpost()
            .args(["server", "--listen", "127.0.0.1:0", "--data"])
            .arg(data.path())
            .args(args)
            .env("SEALPOST_LOG", "warn")
            .env("SEALPOST_DIRECTORY_INTERVAL_MS", "5")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .unwrap()
            .to_owned();
        ServerProcess { child, url, data }
    }
}

impl ServerProcess {
    /// Kills the server, and gives its data directory (SQLite takes it up again from its
    /// write-ahead log).
    fn into_data(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.data, tempfile::tempdir().unwrap())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Links a new device (profile `phone`) to alice's account, approved on her device `approver`:
/// what the approval printed, and what the new device printed after its code.
fn link_new_device(
    url: &str,
    phone: &std::path::Path,
    approver: &std::path::Path,
) -> (String, Vec<String>) {
    use std::io::BufRead as _;
    let mut link = sealpost()
        .arg("--home")
        .arg(phone)
        .args(["device", "link", "alice", "--server", url])
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
    let out = run_ok(approver, &["device", "approve", &code]);
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(link.wait().unwrap().success());
    (out, rest)
}

/// A server, and alice's and bob's profiles (`a`, `b`) registered on it; the temporary
/// directory holds them.
fn alice_and_bob() -> (
    ServerProcess,
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let server = ServerProcess::start();
    let homes = tempfile::tempdir().unwrap();
    let (a, b) = (homes.path().join("a"), homes.path().join("b"));
    run_ok(&a, &["register", "alice", "--server", &server.url]);
    run_ok(&b, &["register", "bob", "--server", &server.url]);
    (server, homes, a, b)
}

/// Registers each of `names` on the server at `url`, in a profile named after them in `homes`.
fn register_all<const N: usize>(
    url: &str,
    homes: &std::path::Path,
    names: [&str; N],
) -> [std::path::PathBuf; N] {
    names.map(|name| {
        let home = homes.join(name);
        run_ok(&home, &["register", name, "--server", url]);
        home
    })
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
    let (out, rest) = link_new_device(&server.url, &phone, &a);
    assert!(out.contains("approved device"), "{out}");
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
    assert!(out.contains("checked versions 0 to"), "{out}");
    let out = run_ok(
        &a,
        &["audit", "--server", &server.url, "--state", state_arg],
    );
    assert!(out.contains("nothing new"), "{out}");
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

/// Defect: what `send` found in its own sync was acknowledged and stored but never printed,
/// and the next `sync` printed nothing. Now every event goes to the profile's event log, and
/// `sync` prints whatever no earlier command printed — once.
#[test]
fn what_a_commands_own_sync_finds_is_printed_by_the_next_sync_once() {
    let (_server, _homes, a, b) = alice_and_bob();
    run_ok(&a, &["send", "@bob", "hello from alice"]);
    // Bob's send syncs first, and so takes alice's text in.
    run_ok(&b, &["send", "@alice", "x"]);
    let out = run_ok(&b, &["sync", "--json"]);
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let texts: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["hello from alice"], "{out}");
    // Every event carries its id in the log and its conversation's id.
    for e in &events {
        assert!(e["event_id"].as_u64().unwrap() > 0, "{e}");
        assert_eq!(e["conversation_id"].as_str().unwrap().len(), 32, "{e}");
    }
    // Shown once: the next sync has nothing more to say.
    assert_eq!(run_ok(&b, &["sync", "--json"]), "");
    // The history still holds it.
    let history = run_ok(&b, &["messages", "@alice"]);
    assert!(history.contains("hello from alice"), "{history}");
}

/// Defect: a text with a newline followed by `[@carol] @carol: …` printed a line that looked
/// like carol's message, and escape sequences reached the terminal raw.
#[test]
fn a_peers_text_cannot_forge_a_line_or_reach_the_terminal_raw() {
    let (_server, _homes, a, b) = alice_and_bob();
    let forgeries = [
        "hi\n[@carol] @carol: the code is 4471",
        "hi\r[@carol] @carol: the code is 4471",
        "\u{1b}[2K\r[@carol] @carol: the code is 4471",
        "\u{1b}]0;window title\u{7}colour \u{1b}[31mred",
        "C1 \u{9b}2K and \u{85}next line",
        "bidi \u{202e}1744 si edoc eht :lorac@ ]lorac@[",
        "separators\u{2028}[@carol] @carol: x\u{2029}[@carol] @carol: y",
    ];
    for text in forgeries {
        run_ok(&a, &["send", "@bob", text]);
    }
    for args in [&["sync"][..], &["messages", "@alice"]] {
        let out = run_ok(&b, args);
        // A message of alice's: `[@alice] <its id> @alice: …`.
        let alices = |l: &str| {
            l.strip_prefix("[@alice] ")
                .and_then(|l| l.split_at_checked(8))
                .is_some_and(|(id, rest)| {
                    id.bytes().all(|b| b.is_ascii_hexdigit()) && rest.starts_with(" @alice: ")
                })
        };
        for l in out.lines() {
            // Every line is about alice, or indented under one of her messages.
            assert!(
                l.starts_with("[@alice] @alice") || alices(l) || l.starts_with("    | "),
                "{args:?}: a line that is not alice's: {l:?}\n{out}"
            );
        }
        let messages = out.lines().filter(|l| alices(l));
        assert_eq!(messages.count(), 7, "{out}");
        let hidden = |c: char| {
            (c.is_control() && c != '\n')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
        };
        assert!(!out.chars().any(hidden), "{args:?}: {out:?}");
        // Shown escaped, not dropped.
        assert!(out.contains("\\u{1b}]0;window title"), "{out}");
        assert!(out.contains("\\u{202e}"), "{out}");
    }
}

/// A long-running `sealpost` process whose stdout lines arrive on a channel; killed on drop.
struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Running {
    fn start(home: &std::path::Path, args: &[&str]) -> Running {
        use std::io::BufRead as _;
        let mut child = sealpost()
            .arg("--home")
            .arg(home)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines }
    }

    /// The next line (a guard against a hang, not a wait for readiness: the line is the
    /// readiness).
    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("no output within a minute")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn event_of(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// Defect: while `listen` ran, every other command on the profile failed at once with "the
/// profile is in use", and of five sends started together four failed. Now a daemon (or a
/// listen) serves the profile and the others go through it; one-shot commands wait their turn.
#[test]
fn a_daemon_a_listener_and_four_commands_at_once_on_one_profile() {
    let (_server, _homes, a, b) = alice_and_bob();

    let daemon = Running::start(&b, &["daemon"]);
    assert!(daemon.next_line().starts_with("sealpost daemon serving"));
    let listener = Running::start(&b, &["listen", "--json"]);
    run_ok(&a, &["send", "@bob", "first"]);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|e: &serde_json::Value| e["text"] == "first")
    {
        seen.push(event_of(&listener.next_line()));
    }

    // Four commands at once on bob's profile, while the listener listens.
    let commands: Vec<Vec<&str>> = vec![
        vec!["send", "@alice", "one"],
        vec!["send", "@alice", "two"],
        vec!["messages", "@alice", "--json"],
        vec!["conversations", "--json"],
    ];
    let outs: Vec<std::process::Output> = std::thread::scope(|s| {
        let running: Vec<_> = commands
            .iter()
            .map(|args| {
                let b = &b;
                s.spawn(move || sealpost().arg("--home").arg(b).args(args).output().unwrap())
            })
            .collect();
        running.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for (args, out) in commands.iter().zip(&outs) {
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let history = String::from_utf8_lossy(&outs[2].stdout);
    assert!(history.contains("\"first\""), "{history}");

    run_ok(&a, &["send", "@bob", "last"]);
    while !seen.iter().any(|e: &serde_json::Value| e["text"] == "last") {
        seen.push(event_of(&listener.next_line()));
    }
    // Nothing shown twice.
    let mut ids: Vec<u64> = seen
        .iter()
        .map(|e| e["event_id"].as_u64().unwrap())
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), seen.len(), "{seen:?}");
    let texts: Vec<&str> = seen.iter().filter_map(|e| e["text"].as_str()).collect();
    assert_eq!(texts, ["first", "last"]);
    // Alice got both of bob's texts, once each.
    let out = run_ok(&a, &["sync"]);
    for text in ["one", "two"] {
        assert_eq!(out.matches(&format!("@bob: {text}")).count(), 1, "{out}");
    }
    drop(listener);
    drop(daemon);
    // With the daemon gone (killed: its daemon.json is stale), the profile opens as before.
    run_ok(&b, &["whoami"]);

    // Five one-shot sends started together, nobody serving the profile: they take turns.
    let sends = |home: &std::path::Path, n: usize| {
        std::thread::scope(|s| {
            let running: Vec<_> = (0..n)
                .map(|i| {
                    s.spawn(move || {
                        sealpost()
                            .arg("--home")
                            .arg(home)
                            .args(["send", "@alice", &format!("turn {i}")])
                            .output()
                            .unwrap()
                    })
                })
                .collect();
            for r in running {
                let out = r.join().unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        })
    };
    sends(&b, 5);
    // And while a plain `listen` holds the profile, it serves the others.
    let listener = Running::start(&b, &["listen"]);
    run_ok(&a, &["send", "@bob", "are you there?"]);
    while !listener.next_line().ends_with("are you there?") {}
    sends(&b, 5);
    let out = run_ok(&a, &["sync"]);
    for i in 0..5 {
        assert_eq!(out.matches(&format!("@bob: turn {i}")).count(), 2, "{out}");
    }
}

/// The echo bot of `examples/` (Python's standard library over the daemon's socket) against a
/// real server: it answers in a 1:1 and in a group, and after a restart answers what came while
/// it was away — once, and nothing from before again.
#[test]
fn the_echo_bot_answers_through_the_daemon() {
    let server = ServerProcess::start();
    let homes = tempfile::tempdir().unwrap();
    let (a, bot) = (homes.path().join("a"), homes.path().join("bot"));
    run_ok(&a, &["register", "alice", "--server", &server.url]);
    run_ok(&bot, &["register", "echo", "--server", &server.url]);
    let daemon = Running::start(&bot, &["daemon"]);
    assert!(daemon.next_line().starts_with("sealpost daemon serving"));
    let start_bot = || {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/echo-bot.py");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .env("SEALPOST_HOME", &bot)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs the example bot");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert!(line.starts_with("echo bot running as @echo"), "{line}");
        child
    };
    let mut echo = start_bot();
    let alice = Running::start(&a, &["listen", "--json"]);
    let echoed = |want: &str| loop {
        let e = event_of(&alice.next_line());
        if e["event"] == "message" && e["from"] == "@echo" {
            assert_eq!(e["text"], want, "{e}");
            return e["conversation"].as_str().unwrap().to_owned();
        }
    };
    run_ok(&a, &["send", "@echo", "ping 1"]);
    assert_eq!(echoed("ping 1"), "@echo");
    run_ok(&a, &["group", "create", "bots", "--member", "@echo"]);
    run_ok(&a, &["send", "#bots", "ping group"]);
    assert_eq!(echoed("ping group"), "#bots");

    echo.kill().unwrap();
    echo.wait().unwrap();
    run_ok(&a, &["send", "@echo", "while away"]);
    let mut echo = start_bot();
    assert_eq!(echoed("while away"), "@echo");
    run_ok(&a, &["send", "@echo", "ping 2"]);
    assert_eq!(echoed("ping 2"), "@echo");
    echo.kill().unwrap();
    echo.wait().unwrap();
    drop(daemon);
}

/// The daemon's socket, as `daemon.json` in the profile names it.
fn daemon_socket(home: &std::path::Path) -> std::path::PathBuf {
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("daemon.json")).unwrap()).unwrap();
    file["socket"].as_str().unwrap().into()
}

/// A JSON-RPC connection to a daemon that subscribed after `after`; the lines it receives.
fn subscribe_after(
    home: &std::path::Path,
    after: u64,
) -> std::sync::mpsc::Receiver<serde_json::Value> {
    use std::io::{BufRead as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(daemon_socket(home)).unwrap();
    let request = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": { "after": after },
    });
    writeln!(stream, "{request}").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if tx.send(event_of(&line)).is_err() {
                return;
            }
        }
    });
    rx
}

/// SIGKILL the daemon again and again while messages stream to a subscriber: the subscriber,
/// resubscribing after the last event id it handled, misses nothing and sees nothing twice.
#[test]
fn a_subscriber_resuming_after_daemon_kills_misses_nothing_and_sees_nothing_twice() {
    let (_server, _homes, a, b) = alice_and_bob();
    run_ok(&a, &["send", "@bob", "m000"]);
    let total = 40;
    let sender = {
        let a = a.clone();
        std::thread::spawn(move || {
            for i in 1..total {
                run_ok(&a, &["send", "@bob", &format!("m{i:03}")]);
            }
        })
    };
    // Kill points (in events received since the last start), from a seed printed for replay.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill points from seed {seed}");
    let mut rng = seed | 1;
    let mut next_kill = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        1 + rng % 6
    };
    let mut texts: Vec<String> = Vec::new();
    let mut ids: Vec<u64> = Vec::new();
    let mut kills = 0;
    while texts.len() < total {
        let daemon = Running::start(&b, &["daemon"]);
        assert!(daemon.next_line().starts_with("sealpost daemon serving"));
        let events = subscribe_after(&b, ids.last().copied().unwrap_or(0));
        let kill_after = if kills < 4 { next_kill() } else { u64::MAX };
        let mut got = 0;
        while got < kill_after && texts.len() < total {
            let line = events
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("an event within a minute");
            if line["method"] != "event" {
                continue;
            }
            let e = &line["params"]["event"];
            ids.push(e["event_id"].as_u64().unwrap());
            if e["event"] == "message" {
                texts.push(e["text"].as_str().unwrap().to_owned());
            }
            got += 1;
        }
        drop(daemon); // SIGKILL
        kills += 1;
    }
    sender.join().unwrap();
    let want: Vec<String> = (0..total).map(|i| format!("m{i:03}")).collect();
    assert_eq!(texts, want, "after {kills} kills");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

/// Smaller defects: a member's leave was shown twice; `group members` listed the members of a
/// group one had left; the short device id that `sync` prints was refused by `device remove`; a
/// removed device was told only "the server refused: unknown device".
#[test]
fn leaving_and_removing_devices_say_what_happened_once() {
    let server = ServerProcess::start();
    let homes = tempfile::tempdir().unwrap();
    let (a, b, c, phone) = (
        homes.path().join("a"),
        homes.path().join("b"),
        homes.path().join("c"),
        homes.path().join("phone"),
    );
    for (home, name) in [(&a, "alice"), (&b, "bob"), (&c, "carol")] {
        run_ok(home, &["register", name, "--server", &server.url]);
    }
    run_ok(
        &a,
        &[
            "group", "create", "g", "--member", "@bob", "--member", "@carol",
        ],
    );
    run_ok(&b, &["sync"]);
    run_ok(&b, &["group", "leave", "#g"]);
    let out = run_ok(&a, &["sync"]);
    assert_eq!(out.matches("@bob left").count(), 1, "{out}");
    let out = run_ok(&c, &["sync"]);
    assert_eq!(out.matches("@bob left").count(), 1, "{out}");
    let members = run(&b, &["group", "members", "#g"]);
    assert!(!members.status.success());
    assert!(
        String::from_utf8_lossy(&members.stderr).contains("no longer a member"),
        "{}",
        String::from_utf8_lossy(&members.stderr)
    );
    // And the group can be deleted from bob's device.
    run_ok(&b, &["group", "delete", "#g"]);
    assert!(!run_ok(&b, &["conversations"]).contains("#g"));

    // Alice links a phone; her other device learns of it with its short id, and removes it by
    // that id.
    link_new_device(&server.url, &phone, &a);
    let out = run_ok(&a, &["sync"]);
    // "device 1a2b3c4d was linked to your account (the server's key directory says so ..."
    let short = out
        .lines()
        .find(|l| l.starts_with("device ") && l.contains("was linked"))
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or_else(|| panic!("no linked device in:\n{out}"))
        .to_owned();
    assert_eq!(short.len(), 8, "{out}");
    run_ok(&a, &["device", "remove", &short]);
    let removed = run(&phone, &["sync"]);
    assert!(!removed.status.success());
    let said = String::from_utf8_lossy(&removed.stderr);
    assert!(
        said.contains("removed from its account") && said.contains("device link"),
        "{said}"
    );
}

fn run(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    sealpost()
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap()
}

/// Defect: a message larger than the server accepts was reported as "cannot reach the server",
/// stayed in the sender's history as sent, and showed the recipient a gap for its number. It is
/// refused before anything is sent, saying both sizes; one the server refuses anyway is marked
/// not sent.
#[test]
fn a_message_too_large_is_refused_clearly_and_leaves_no_trace() {
    use std::io::Write as _;
    let (_server, _homes, a, b) = alice_and_bob();
    run_ok(&a, &["send", "@bob", "small"]);
    for size in [900_000, 2 * 1024 * 1024, 8 * 1024 * 1024] {
        let mut send = sealpost()
            .arg("--home")
            .arg(&a)
            .args(["send", "@bob", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        send.stdin
            .take()
            .unwrap()
            .write_all(&vec![b'x'; size])
            .unwrap();
        let out = send.wait_with_output().unwrap();
        assert!(!out.status.success());
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("this server accepts at most 768.0 KiB"),
            "{said}"
        );
        assert!(!said.contains("cannot reach"), "{said}");
    }
    run_ok(&a, &["send", "@bob", "after"]);
    // Nothing of them in the history; the recipient sees no gap.
    let history = run_ok(&a, &["messages", "@bob"]);
    assert!(!history.contains("xxxx"), "{history}");
    let out = run_ok(&b, &["sync"]);
    assert!(!out.contains("missing"), "{out}");
    assert!(
        out.contains("@alice: small") && out.contains("@alice: after"),
        "{out}"
    );
}

/// A server in this process (so that the test can play the compromised operator on its store
/// and wait for its key directory), on a runtime whose workers serve it while the test runs
/// `sealpost` processes.
struct InProcessServer {
    url: String,
    store: std::sync::Arc<dyn sealpost_server::storage::Store>,
    directory: std::sync::Arc<sealpost_server::directory::KeyDirectory>,
    runtime: tokio::runtime::Runtime,
    _data: tempfile::TempDir,
}

impl InProcessServer {
    fn start() -> InProcessServer {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let data = tempfile::tempdir().unwrap();
        let (url, store, directory) = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let settings = sealpost_server::Settings {
                data: data.path().join("server"),
                listen: addr,
                directory_interval_ms: 5,
                ..Default::default()
            };
            let server = sealpost_server::Server::open(settings).await.unwrap();
            let (store, directory) = (server.store(), server.directory());
            let shutdown = tokio_util::sync::CancellationToken::new();
            tokio::spawn(async move { server.serve(listener, shutdown).await });
            (format!("http://{addr}"), store, directory)
        });
        InProcessServer {
            url,
            store,
            directory,
            runtime,
            _data: data,
        }
    }

    /// The operator lists a device of its own under `user`, with a certificate the account key
    /// never made, and waits for the directory to publish it.
    fn list_rogue_device(&self, user: &str, id: u8) {
        self.runtime.block_on(async {
            let rogue = sealpost_server::storage::DeviceRecord {
                device_id: sealpost_proto::DeviceId::from_bytes([id; 16]),
                username: sealpost_sdk::Username::new(user).unwrap(),
                device_key: vec![id; 32],
                certificate: vec![7; 64],
            };
            self.store.add_device(rogue, Vec::new()).await.unwrap();
            self.directory.wait_published().await;
        });
    }
}

/// Defect: a security event found by `send` or `group create`'s own sync was never printed and
/// no command exited 3. Now the command that finds one prints it and exits 3, and one stored by
/// a command killed before it could print it is printed by the next command.
#[test]
fn a_security_event_found_by_a_command_is_printed_once_and_survives_a_kill() {
    let server = InProcessServer::start();
    let homes = tempfile::tempdir().unwrap();
    let a = homes.path().join("a");
    run_ok(&a, &["register", "alice", "--server", &server.url]);
    for name in ["bob", "carol", "dave", "erin"] {
        run_ok(
            &homes.path().join(name),
            &["register", name, "--server", &server.url],
        );
    }
    let alert = "SECURITY (unapproved_device)";

    // Stored, then the process is gone before printing it (the SDK returns after the commit;
    // dropping the client here is a kill right after): the next command prints it, once.
    server.list_rogue_device("bob", 0xb0);
    server.runtime.block_on(async {
        let mut alice = sealpost_sdk::Client::open(&a, None).unwrap();
        alice.send("@bob", "hi bob").await.unwrap();
    });
    let out = run(&a, &["sync"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert_eq!(stdout.matches(alert).count(), 1, "{stdout}");
    assert_eq!(run(&a, &["sync"]).status.code(), Some(0));

    // Found by the command itself: printed by it, exit status 3, the command's work done.
    server.list_rogue_device("carol", 0xc0);
    let out = run(&a, &["send", "@carol", "hi carol"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert_eq!(stdout.matches(alert).count(), 1, "{stdout}");
    server.list_rogue_device("dave", 0xd0);
    let out = run(&a, &["group", "create", "g", "--member", "@dave"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains(alert) && stdout.contains("created #g (2 members)"),
        "{stdout}"
    );
    server.list_rogue_device("erin", 0xe0);
    let out = run(&a, &["group", "add", "#g", "@erin"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches(alert).count(),
        1
    );
    // Each shown once: nothing is left for sync, and the real devices got the messages.
    let out = run(&a, &["sync"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // (Carol is told of the device listed under her name, too.)
    let carol = run(&homes.path().join("carol"), &["sync"]);
    let carol = String::from_utf8_lossy(&carol.stdout);
    assert!(carol.contains("@alice: hi carol"), "{carol}");
}

/// `sealpost daemon --http`: the methods over HTTP on loopback, the event log as Server-Sent
/// Events — and none of it usable by a web page: a token the page cannot read, the `Host` of a
/// DNS-rebinding page and a cross-origin request are refused.
#[test]
fn the_daemons_http_endpoint_serves_its_user_and_refuses_web_pages() {
    let (_server, _homes, a, b) = alice_and_bob();
    let daemon = Running::start(&b, &["daemon", "--http", "127.0.0.1:0"]);
    assert!(daemon.next_line().starts_with("sealpost daemon serving"));
    let line = daemon.next_line();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    let token_file = b.join("daemon-http.token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let whoami = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "whoami"});
        let call = |token: Option<&str>, headers: &[(&str, String)]| {
            let mut req = http.post(format!("{base}/api/v1/rpc")).json(&whoami);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            req.send()
        };
        let ok = call(Some(&token), &[]).await.unwrap();
        assert_eq!(ok.status(), 200);
        let body: serde_json::Value = ok.json().await.unwrap();
        assert_eq!(body["result"]["username"], "@bob", "{body}");
        // No token, a wrong one, a web page's origin, a rebinding page's host: refused.
        assert_eq!(call(None, &[]).await.unwrap().status(), 401);
        assert_eq!(call(Some("0000"), &[]).await.unwrap().status(), 401);
        let page = ("origin", "http://evil.example".to_owned());
        assert_eq!(call(Some(&token), &[page]).await.unwrap().status(), 403);
        let port = base.rsplit(':').next().unwrap();
        let rebound = ("host", format!("evil.example:{port}"));
        assert_eq!(call(Some(&token), &[rebound]).await.unwrap().status(), 421);
        let check = http
            .get(format!("{base}/api/v1/check"))
            .send()
            .await
            .unwrap();
        assert_eq!(check.status(), 200);

        // Events as Server-Sent Events, each with its id.
        let mut events = http
            .get(format!("{base}/api/v1/events?after=0"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(events.status(), 200);
        let send = tokio::task::spawn_blocking({
            let a = a.clone();
            move || run_ok(&a, &["send", "@bob", "over http"])
        });
        let mut seen = String::new();
        while !seen.contains("over http") {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(60), events.chunk())
                .await
                .expect("an event within a minute")
                .unwrap()
                .expect("the stream goes on");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        send.await.unwrap();
        assert!(seen.contains("event: event\n"), "{seen}");
        assert!(seen.contains("id: "), "{seen}");
    });
    drop(daemon);
}

/// One daemon serves two profiles: commands on either go through it (neither waits for the
/// profile's lock), and over HTTP `?profile=@user` picks one, and must when there are two.
#[test]
fn one_daemon_serves_two_profiles() {
    let (_server, _homes, a, b) = alice_and_bob();
    let a_dir = a.to_str().unwrap();
    let daemon = Running::start(
        &b,
        &[
            "--json",
            "daemon",
            "--profile",
            a_dir,
            "--http",
            "127.0.0.1:0",
        ],
    );
    let (first, second) = (event_of(&daemon.next_line()), event_of(&daemon.next_line()));
    assert_eq!(first["username"], "@bob", "{first}");
    assert_eq!(second["username"], "@alice", "{second}");
    assert_ne!(first["socket"], second["socket"]);
    assert_eq!(first["http"], second["http"]);
    let base = first["http"].as_str().unwrap().to_owned();
    let token = std::fs::read_to_string(a.join("daemon-http.token")).unwrap();
    assert_eq!(
        token,
        std::fs::read_to_string(b.join("daemon-http.token")).unwrap()
    );

    // Both are held by the daemon: a command on either goes through it.
    run_ok(&a, &["send", "@bob", "through one daemon"]);
    let mut shown = String::new();
    while !shown.contains("through one daemon") {
        shown.push_str(&run_ok(&b, &["sync"]));
    }
    assert!(shown.contains("@alice"), "{shown}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let whoami = |query: &'static str| {
            http.post(format!("{base}/api/v1/rpc{query}"))
                .bearer_auth(&token)
                .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "whoami"}))
                .send()
        };
        let answer = |r: reqwest::Response| async move {
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        };
        let alice = answer(whoami("?profile=@alice").await.unwrap()).await;
        assert_eq!(alice["result"]["username"], "@alice", "{alice}");
        let bob = answer(whoami("?profile=bob").await.unwrap()).await;
        assert_eq!(bob["result"]["username"], "@bob", "{bob}");
        let neither = answer(whoami("").await.unwrap()).await;
        let why = neither["error"]["message"].as_str().unwrap();
        assert!(why.contains("several profiles"), "{neither}");
        assert!(why.contains("@alice") && why.contains("@bob"), "{neither}");
        let stranger = answer(whoami("?profile=carol").await.unwrap()).await;
        assert!(stranger["error"]["message"].is_string(), "{stranger}");
        let events = http
            .get(format!("{base}/api/v1/events?after=0"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(events.status(), 400);
    });
    drop(daemon);
}

/// One-shot commands keep their session token in the profile (sealed like the rest of it)
/// instead of signing in every time; a token the server no longer honours is replaced.
#[test]
fn one_shot_commands_reuse_their_session() {
    let (server, _homes, a, b) = alice_and_bob();
    let sessions = || -> i64 {
        let db = rusqlite::Connection::open(server.data.path().join("server.db")).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        db.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
            .unwrap()
    };
    run_ok(&a, &["send", "@bob", "one"]);
    let after_first = sessions();
    for text in ["two", "three", "four"] {
        run_ok(&a, &["send", "@bob", text]);
    }
    run_ok(&a, &["sync"]);
    assert_eq!(sessions(), after_first, "no new sign-in");
    // Every session ends (as when tokens expire): the next command signs in again by itself.
    rusqlite::Connection::open(server.data.path().join("server.db"))
        .unwrap()
        .execute("DELETE FROM sessions", [])
        .unwrap();
    run_ok(&a, &["send", "@bob", "five"]);
    let out = run_ok(&b, &["sync"]);
    for text in ["one", "two", "three", "four", "five"] {
        assert!(out.contains(&format!("@alice: {text}")), "{out}");
    }
}

/// `--json` is taken by every command: results are one JSON object per line on stdout, and
/// errors one JSON object on stderr with the exit status in it.
#[test]
fn every_command_speaks_json_and_so_do_its_errors() {
    let server = ServerProcess::start();
    let homes = tempfile::tempdir().unwrap();
    let (a, b) = (homes.path().join("a"), homes.path().join("b"));
    let json = |home: &std::path::Path, args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = run_ok(home, &all);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {out}");
        event_of(lines[0])
    };
    assert_eq!(
        json(&a, &["register", "alice", "--server", &server.url])["username"],
        "@alice"
    );
    json(&b, &["register", "bob", "--server", &server.url]);
    let sent = json(&a, &["send", "@bob", "hi"]);
    assert_eq!(
        (sent["event"].as_str(), sent["text"].as_str()),
        (Some("message"), Some("hi"))
    );
    let group = json(&a, &["group", "create", "g", "--member", "@bob"]);
    assert_eq!(group["conversation"], "#g");
    let id = group["id"].as_str().unwrap().to_owned();
    json(&a, &["group", "remove", &id[..8], "@bob"]);
    json(&a, &["group", "leave", "#g"]);
    json(&a, &["group", "delete", "#g"]);
    assert_eq!(json(&a, &["whoami"])["username"], "@alice");

    let out = run(&a, &["--json", "send", "#nothing", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let error = event_of(String::from_utf8_lossy(&out.stderr).trim());
    assert_eq!(error["kind"], "unknown_conversation", "{error}");
    assert_eq!(error["exit"], 1);
}

/// History is read a page at a time: each entry has its position and the conversation's id, a
/// full page says where the next one starts, and paging back reaches the first entry without
/// repeating one.
#[test]
fn history_is_paged() {
    let (_server, _homes, a, b) = alice_and_bob();
    for i in 0..5 {
        run_ok(&a, &["send", "@bob", &format!("text {i}")]);
    }
    run_ok(&b, &["sync"]);
    let page = |before: Option<u64>| -> Vec<serde_json::Value> {
        let mut args = vec!["messages", "@alice", "--limit", "2", "--json"];
        let before = before.map(|b| b.to_string());
        if let Some(b) = &before {
            args.extend(["--before", b.as_str()]);
        }
        run_ok(&b, &args).lines().map(event_of).collect()
    };
    let mut texts = Vec::new();
    let mut before = None;
    loop {
        let entries = page(before);
        for e in &entries {
            assert_eq!(e["conversation_id"].as_str().unwrap().len(), 32, "{e}");
        }
        let positions: Vec<u64> = entries
            .iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "oldest first");
        let Some(first) = positions.first() else {
            break;
        };
        before = Some(*first);
        let mut page_texts: Vec<String> = entries
            .iter()
            .filter_map(|e| e["text"].as_str().map(str::to_owned))
            .collect();
        page_texts.append(&mut texts);
        texts = page_texts;
    }
    let want: Vec<String> = (0..5).map(|i| format!("text {i}")).collect();
    assert_eq!(texts, want);
    // A person is told how to read further back.
    let out = run(&b, &["messages", "@alice", "--limit", "2"]);
    let hint = String::from_utf8_lossy(&out.stderr);
    assert!(hint.contains("--before"), "{hint}");
}

/// Replies, reactions, edits and deletes from the command line: each message line shows the id
/// the commands take, and what they did shows in `messages` and `sync`, on both sides.
#[test]
fn replies_reactions_edits_and_deletes_from_the_command_line() {
    let (_server, _homes, a, b) = alice_and_bob();
    let sent = run_ok(&a, &["--json", "send", "@bob", "dinner at eight?"]);
    let id = event_of(sent.trim())["id"].as_str().unwrap().to_owned();
    let short = &id[2..10];
    let out = run_ok(&b, &["sync"]);
    assert!(
        out.contains(&format!("[@alice] {short} @alice: dinner at eight?")),
        "{out}"
    );

    run_ok(&b, &["send", "@alice", "yes!", "--reply-to", short]);
    run_ok(&b, &["react", short, "👍"]);
    let out = run_ok(&a, &["sync"]);
    assert!(
        out.contains(&format!("@bob (reply to {short}): yes!")),
        "{out}"
    );
    assert!(
        out.contains(&format!("[@bob] @bob reacted 👍 to {short}")),
        "{out}"
    );
    let history = run_ok(&a, &["messages", "@bob"]);
    assert!(
        history.contains("dinner at eight?\n    + 👍 @bob"),
        "{history}"
    );

    // Only the author changes a message.
    let out = run(&b, &["edit", short, "never"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only its author"),
        "{out:?}"
    );
    run_ok(&a, &["edit", short, "dinner at nine?"]);
    let out = run_ok(&b, &["sync"]);
    assert!(
        out.contains(&format!("@alice edited {short}: dinner at nine?")),
        "{out}"
    );
    let history = run_ok(&b, &["messages", "@alice"]);
    assert!(
        history.contains(&format!("{short} @alice (edited): dinner at nine?")),
        "{history}"
    );

    run_ok(&b, &["react", short, "👍", "--remove"]);
    run_ok(&a, &["delete", short]);
    let out = run_ok(&b, &["sync"]);
    assert!(out.contains(&format!("@alice deleted {short}")), "{out}");
    let history = run_ok(&b, &["messages", "@alice"]);
    assert!(
        history.contains(&format!("{short} @alice (deleted)\n")),
        "{history}"
    );
    assert!(!history.contains("dinner"), "{history}");
    let out = run(&b, &["react", "nothing", "👍"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a message id"),
        "{out:?}"
    );
}

/// A file from the command line: sent with a caption (with `--json`, progress lines before the
/// message), shown with its name, size and the command that downloads it, downloaded into a
/// directory under the sender's name for it, and never over an existing file.
#[test]
fn files_from_the_command_line() {
    let (_server, homes, a, b) = alice_and_bob();
    let photo = homes.path().join("cat.png");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&photo, &bytes).unwrap();
    let out = run_ok(
        &a,
        &[
            "--json",
            "send",
            "@bob",
            "--file",
            photo.to_str().unwrap(),
            "--caption",
            "look",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    let sent = event_of(lines.last().unwrap());
    assert_eq!(sent["file"]["name"], "cat.png");
    assert_eq!(sent["file"]["media_type"], "image/png");
    assert_eq!(sent["file"]["size"], 300_000);
    assert_eq!(sent["text"], "look");
    let progress = event_of(lines[lines.len() - 2]);
    assert_eq!(progress["progress"]["kind"], "upload");
    assert_eq!(progress["progress"]["done"], progress["progress"]["total"]);
    let id = sent["id"].as_str().unwrap();
    let short = &id[2..10];

    let shown = run_ok(&b, &["sync"]);
    assert!(
        shown.contains(&format!(
            "[@alice] {short} @alice: [file cat.png (image/png, 293.0 KiB): sealpost download {short}] look"
        )),
        "{shown}"
    );
    let saved = homes.path().join("saved");
    std::fs::create_dir(&saved).unwrap();
    let out = run_ok(&b, &["download", short, "--out", saved.to_str().unwrap()]);
    assert!(out.contains("saved "), "{out}");
    assert_eq!(std::fs::read(saved.join("cat.png")).unwrap(), bytes);
    let again = run(&b, &["download", short, "--out", saved.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists already"),
        "{again:?}"
    );
    // Without --out: where the command runs.
    let sent = run_ok(
        &a,
        &["--json", "send", "@bob", "--file", photo.to_str().unwrap()],
    );
    let id = event_of(sent.lines().last().unwrap())["id"]
        .as_str()
        .unwrap()
        .to_owned();
    run_ok(&b, &["sync"]);
    let here = homes.path().join("here");
    std::fs::create_dir(&here).unwrap();
    let out = sealpost()
        .current_dir(&here)
        .arg("--home")
        .arg(&b)
        .args(["download", &id[2..10]])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(here.join("cat.png")).unwrap(), bytes);
    // A text and a file are not sent together, and a caption needs a file.
    assert!(
        !run(&a, &["send", "@bob", "hi", "--file", "x"])
            .status
            .success()
    );
    assert!(
        !run(&a, &["send", "@bob", "hi", "--caption", "x"])
            .status
            .success()
    );
}

/// Disappearing messages from the command line: a timer as people write it, shown to both
/// sides; messages sent meanwhile are marked; `off` ends it; a bad duration is refused.
#[test]
fn disappearing_messages_from_the_command_line() {
    let (_server, _homes, a, b) = alice_and_bob();
    run_ok(&a, &["send", "@bob", "hi"]);
    run_ok(&b, &["sync"]);
    let out = run_ok(&b, &["disappear", "@alice", "1h"]);
    assert!(
        out.contains("[@alice] @bob set messages to disappear 1h after they are sent"),
        "{out}"
    );
    let out = run_ok(&a, &["sync"]);
    assert!(
        out.contains("[@bob] @bob set messages to disappear 1h after they are sent"),
        "{out}"
    );
    run_ok(&a, &["send", "@bob", "soon gone"]);
    let out = run_ok(&b, &["sync"]);
    assert!(out.contains("@alice (disappearing): soon gone"), "{out}");
    let out = run_ok(&a, &["disappear", "@bob", "off"]);
    assert!(
        out.contains("@alice turned disappearing messages off"),
        "{out}"
    );
    for bad in ["0s", "1y", "400d", "soon"] {
        let refused = run(&a, &["disappear", "@bob", bad]);
        assert!(!refused.status.success(), "{bad}");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("disappear"),
            "{bad}: {refused:?}"
        );
    }
}

#[test]
fn receipts_from_the_command_line() {
    let (_server, _homes, a, b) = alice_and_bob();
    let out = run_ok(&a, &["settings"]);
    assert_eq!(
        out,
        "receipts: off\ntyping indicators: off\nauditors compared with: none\n"
    );
    for who in [&a, &b] {
        let out = run_ok(who, &["settings", "--receipts", "on"]);
        assert!(out.contains("receipts: on"), "{out}");
    }
    let json = run_ok(&b, &["--json", "settings", "--typing", "on"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(json.trim()).unwrap(),
        serde_json::json!({"receipts": true, "typing": true, "auditors": []})
    );
    run_ok(&a, &["send", "@bob", "did you get this?"]);
    run_ok(&b, &["sync"]);
    let out = run_ok(&a, &["sync"]);
    assert!(out.contains("[@bob] @bob received "), "{out}");
    // Shown is read.
    run_ok(&b, &["messages", "@alice"]);
    let out = run_ok(&a, &["sync"]);
    assert!(out.contains("[@bob] @bob read "), "{out}");
    let out = run_ok(&a, &["messages", "@bob"]);
    assert!(out.contains("(read by @bob): did you get this?"), "{out}");
    let refused = run(&a, &["settings", "--receipts", "maybe"]);
    assert!(!refused.status.success());
}

#[test]
fn profiles_from_the_command_line() {
    let (_server, homes, a, b) = alice_and_bob();
    let out = run_ok(&a, &["profile"]);
    assert_eq!(out, "@alice\nno avatar\n");
    let png = homes.path().join("face.png");
    std::fs::write(&png, b"\x89PNG not really, but a file").unwrap();
    let out = run_ok(
        &a,
        &[
            "profile",
            "--name",
            "Alice Liddell",
            "--avatar",
            png.to_str().unwrap(),
        ],
    );
    assert!(
        out.starts_with("@alice \"Alice Liddell\"\navatar: "),
        "{out}"
    );
    run_ok(&a, &["send", "@bob", "down the rabbit hole"]);
    let out = run_ok(&b, &["sync"]);
    assert!(
        out.contains("[@alice] @alice shares the name \"Alice Liddell\" and an avatar (image/png"),
        "{out}"
    );
    assert!(
        out.contains(" @alice \"Alice Liddell\": down the rabbit hole"),
        "{out}"
    );
    // What Alice shares, as Bob's device has it: her name, and her avatar fetched.
    let out = run_ok(&b, &["profile", "@alice"]);
    assert!(
        out.starts_with("@alice \"Alice Liddell\"\navatar: "),
        "{out}"
    );
    let saved = out.lines().nth(1).unwrap().trim_start_matches("avatar: ");
    assert_eq!(
        std::fs::read(saved).unwrap(),
        b"\x89PNG not really, but a file"
    );
    assert!(
        !run(&b, &["profile", "@alice", "--name", "x"])
            .status
            .success()
    );
    let refused = run(&a, &["profile", "--name", "@bob"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("display name"),
        "{refused:?}"
    );
    let out = run_ok(&a, &["profile", "--remove-avatar"]);
    assert!(out.ends_with("no avatar\n"), "{out}");
}

/// A passphrase remembered in the system's keyring opens the profile without being given, until
/// it is forgotten; a wrong one is never remembered.
#[test]
fn a_passphrase_remembered_in_the_keyring_opens_the_profile() {
    let server = ServerProcess::start();
    let homes = tempfile::tempdir().unwrap();
    let home = homes.path().join("alice");
    let secret = "correct horse battery";
    let with = |passphrase: Option<&str>, args: &[&str]| {
        let mut command = sealpost();
        command.env_remove("SEALPOST_PASSPHRASE");
        if let Some(p) = passphrase {
            command.env("SEALPOST_PASSPHRASE", p);
        }
        command
            .arg("--home")
            .arg(&home)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let registered = with(
        Some(secret),
        &["register", "alice", "--server", &server.url],
    );
    assert!(registered.status.success());
    let refused = with(Some("not it"), &["passphrase", "remember"]);
    assert_eq!(refused.status.code(), Some(1));
    let locked = with(None, &["whoami"]);
    assert_eq!(locked.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&locked.stderr).contains("passphrase remember"));

    let remembered = with(Some(secret), &["passphrase", "remember"]);
    assert!(
        remembered.status.success(),
        "{}",
        String::from_utf8_lossy(&remembered.stderr)
    );
    let opened = with(None, &["whoami"]);
    assert!(opened.status.success());
    assert!(String::from_utf8_lossy(&opened.stdout).contains("@alice"));

    let forgotten = with(None, &["passphrase", "forget"]);
    assert_eq!(String::from_utf8_lossy(&forgotten.stdout), "forgotten\n");
    assert_eq!(with(None, &["whoami"]).status.code(), Some(1));
}

/// After a certificate renewal, SIGHUP makes the server serve the new certificate from the next
/// handshake on, without a restart; a reload of files it cannot use is logged and the
/// certificate in use stays.
#[test]
fn sighup_reloads_the_tls_certificate_and_a_bad_one_changes_nothing() {
    use std::io::BufRead as _;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sealpost-sdk/tests/data");
    let pem = |name: &str| std::fs::read(data.join(name)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (certificate, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&certificate, pem("tls-cert.pem")).unwrap();
    std::fs::write(&key, pem("tls-key.pem")).unwrap();
    let mut server = ServerProcess::start_args(
        &[
            "--tls-certificate".as_ref(),
            certificate.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
        ],
        &[("SEALPOST_LOG", "info")],
        std::process::Stdio::piped(),
    );
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let child = &mut server.child;
    let (log_tx, log) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = log_tx.send(line);
        }
    });
    let wait_for = |text: &str| loop {
        let line = log.recv().expect("the server's log ended");
        if line.contains(text) {
            break line;
        }
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Whether a client that trusts only this certificate gets an answer (a new connection,
    // so a new handshake, each time).
    let trusted_by = |cert: &str| {
        let root = reqwest::Certificate::from_pem(&pem(cert)).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only([root])
            .build()
            .unwrap();
        runtime
            .block_on(
                client
                    .get(format!("https://localhost:{port}/healthz"))
                    .send(),
            )
            .is_ok_and(|r| r.status() == 200)
    };
    let pid = child.id().to_string();
    let hang_up = || {
        let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(status.success());
    };
    assert!(trusted_by("tls-cert.pem"));
    assert!(!trusted_by("tls-cert-2.pem"));

    // Renewed: the new files, then SIGHUP.
    std::fs::write(&certificate, pem("tls-cert-2.pem")).unwrap();
    std::fs::write(&key, pem("tls-key-2.pem")).unwrap();
    hang_up();
    wait_for("reloaded the TLS certificate");
    assert!(trusted_by("tls-cert-2.pem"));
    assert!(!trusted_by("tls-cert.pem"));

    // A key that is not the certificate's: refused, logged, and the certificate stays.
    std::fs::write(&key, pem("tls-key.pem")).unwrap();
    hang_up();
    let refused = wait_for("could not reload the TLS certificate");
    assert!(
        refused.contains("is not the key of the certificate"),
        "{refused}"
    );
    assert!(trusted_by("tls-cert-2.pem"));
    assert!(child.try_wait().unwrap().is_none(), "the server stopped");
}
