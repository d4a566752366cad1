//! Server processes and a TCP front for the tests that kill servers.
#![allow(dead_code, reason = "each test binary uses a part")]

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
