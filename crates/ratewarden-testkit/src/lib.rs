//! Test fixtures shared by ratewarden's crates: a Redis server or a three-node Redis
//! Cluster of our own, started on free loopback ports, stopped (and restarted on the
//! same port) at will, and killed when dropped.
//!
//! Tests start their own servers rather than share the machine's, so that they can stop
//! them (outage tests) and never see each other's keys. When `redis-server` is missing
//! the test fails, saying how to install it: a Redis test never skips silently.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOW_TO_GET_REDIS: &str = "redis-server and redis-cli are needed for this test: \
     install them (Debian/Ubuntu: `apt-get install redis-server`; macOS: `brew install redis`) \
     so that they are on PATH";

/// A `redis-server` process of our own on 127.0.0.1.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port, keeping nothing on disk.
    pub fn start() -> RedisServer {
        RedisServer::start_with(free_port, &[])
    }

    /// Starts a server on a port from `choose_port`. A port free when chosen can be
    /// taken before the server binds it (another test's connection gets it as its
    /// ephemeral port): the server then exits at once, and another port is tried.
    fn start_with(choose_port: impl Fn() -> u16, extra: &[&str]) -> RedisServer {
        let mut tried = Vec::new();
        for _ in 0..5 {
            let port = choose_port();
            let dir = std::env::temp_dir()
                .join(format!("ratewarden-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut server = RedisServer {
                port,
                dir,
                extra: extra.iter().map(|s| s.to_string()).collect(),
                child: None,
            };
            if server.spawn() {
                return server;
            }
            tried.push(port);
        }
        panic!("redis-server exited at once on each of the ports {tried:?}");
    }

    /// Starts the process and waits until it answers; `false` if it exited first
    /// (its port was taken).
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e}). {HOW_TO_GET_REDIS}"));
        let child = self.child.insert(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while command(self.port, &["PING"]).as_deref() != Some("+PONG") {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The answer may have come from another test's server on this port, just before
        // ours found the port taken and exited.
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(Some(_)) = child.try_wait() {
            self.child = None;
            return false;
        }
        true
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills it (SIGKILL: an outage, not a shutdown). Its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "redis-server could not start again on port {}: it was taken meanwhile",
            self.port
        );
    }

    /// Sends one command (arguments without spaces) and returns the first reply line.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        command(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A three-node Redis Cluster (masters only) of our own.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers on free ports and joins them with
    /// `redis-cli --cluster create`, waiting until the cluster reports `ok`.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                // The cluster bus listens on port + 10000; that one must be free too.
                let port = || loop {
                    let p = free_port();
                    if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
                        break p;
                    }
                };
                RedisServer::start_with(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                    ],
                )
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}). {HOW_TO_GET_REDIS}"));
        assert!(status.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info = bulk_command(node.port, &["CLUSTER", "INFO"]).unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster never reached state ok"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}

/// A port free on 127.0.0.1 when asked.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn connect(port: u16) -> Option<TcpStream> {
    let stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    Some(stream)
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// The first line of the reply to one command.
fn command(port: u16, args: &[&str]) -> Option<String> {
    let mut stream = connect(port)?;
    stream.write_all(&encode(args)).ok()?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).ok()? == 1 {
        if byte[0] == b'\n' {
            break;
        }
        reply.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&reply).trim_end().to_owned())
}

/// The whole reply to a command answered with one bulk string.
fn bulk_command(port: u16, args: &[&str]) -> Option<String> {
    let mut stream = connect(port)?;
    stream.write_all(&encode(args)).ok()?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(rest) = text.strip_prefix('$') {
            if let Some((len, body)) = rest.split_once("\r\n") {
                if body.len() >= len.parse::<usize>().unwrap_or(0) {
                    return Some(body.to_owned());
                }
            }
        } else if text.ends_with("\r\n") {
            return Some(text.into_owned());
        }
    }
    Some(String::from_utf8_lossy(&reply).into_owned())
}
