//! Server processes and a TCP front for the tests that kill servers.
#![allow(dead_code, reason = "not every test uses every part")]

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// A `sealpost server` process.
pub struct Node {
    child: Child,
    pub addr: SocketAddr,
}

impl Node {
    /// Starts `sealpost server` on a loopback port with the data directory `data` and `args`
    /// (e.g. `--database`, `--nats`), and returns once it listens.
    pub fn start(data: &Path, args: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sealpost"))
            .args(["server", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(args)
            .env("SEALPOST_DIRECTORY_INTERVAL_MS", "5")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Readiness: the server prints its address once it listens.
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().unwrap().unwrap();
        let addr = line
            .rsplit("http://")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::thread::spawn(move || lines.for_each(drop));
        Node { child, addr }
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP front, as a load balancer would be: each new connection goes to the first of the
/// current nodes that accepts it. The nodes can be changed while it runs.
pub struct Front {
    pub addr: SocketAddr,
    nodes: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Front {
    pub async fn start(nodes: Vec<SocketAddr>) -> Front {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let nodes = Arc::new(Mutex::new(nodes));
        let current = nodes.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let nodes = current.lock().unwrap().clone();
                tokio::spawn(async move {
                    for node in nodes {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(node).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Front { addr, nodes }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// New connections go to `nodes` from now on.
    pub fn point_to(&self, nodes: Vec<SocketAddr>) {
        *self.nodes.lock().unwrap() = nodes;
    }
}

/// A free loopback port, not taken yet.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A NATS server of the test's own (the machine's may not be killed), on a fixed port so that it
/// can be killed and started again where the nodes look for it.
pub struct OwnNats {
    child: Option<Child>,
    pub port: u16,
}

impl OwnNats {
    /// Starts one on a free port; `None` (the test skips) if there is no `nats-server`.
    pub fn start() -> Option<OwnNats> {
        let mut nats = OwnNats {
            child: None,
            port: free_port(),
        };
        nats.restart()?;
        Some(nats)
    }

    /// Starts it (again) on its port and returns once it accepts connections.
    pub fn restart(&mut self) -> Option<()> {
        let binary = std::env::var("SEALPOST_TEST_NATS_SERVER")
            .unwrap_or_else(|_| "/usr/sbin/nats-server".into());
        if !Path::new(&binary).exists() {
            eprintln!("no nats-server at {binary}: skipping");
            return None;
        }
        let mut child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let ready = lines.any(|l| l.is_ok_and(|l| l.contains("Server is ready")));
        assert!(ready, "nats-server did not start");
        std::thread::spawn(move || lines.for_each(drop));
        self.child = Some(child);
        Some(())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): the process hangs, its connections stay open.
    pub fn pause(&self, paused: bool) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let signal = if paused { "-STOP" } else { "-CONT" };
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.pause(false);
        }
        self.kill();
    }
}

/// A PostgreSQL server of the test's own (the machine's may not be restarted), in a temporary
/// directory. Run as the `postgres` user when the test runs as root (PostgreSQL refuses root).
pub struct OwnPostgres {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl OwnPostgres {
    /// `None` (the test skips) if `initdb` and `pg_ctl` are not on the `PATH`.
    pub fn start() -> Option<OwnPostgres> {
        let found = |tool: &str| {
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !found("initdb") || !found("pg_ctl") {
            eprintln!("no initdb and pg_ctl on the PATH: skipping");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if Self::as_root() {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let id = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .unwrap();
                String::from_utf8(out.stdout)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            };
            std::os::unix::fs::chown(&data, Some(id("-u")), Some(id("-g"))).unwrap();
        }
        let pg = OwnPostgres {
            dir,
            port: free_port(),
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        pg.start_again();
        Some(pg)
    }

    fn as_root() -> bool {
        let out = Command::new("id").arg("-u").output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim() == "0"
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn command(tool: &str) -> Command {
        if Self::as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", tool]);
            c
        } else {
            Command::new(tool)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = Self::command(tool).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops it (`fast`: every connection is cut) and returns once it is down.
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// Starts it again and returns once it accepts connections.
    pub fn start_again(&self) {
        // With its log file again: without, the new server would write to (and hold open) the
        // pipe this reads pg_ctl's output from.
        let data = self.data();
        let log = format!("{data}/log");
        let options = format!("-p {} -c listen_addresses=127.0.0.1 -k {data}", self.port);
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "start"],
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = Self::command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}
