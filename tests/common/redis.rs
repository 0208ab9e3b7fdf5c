//! A real `redis-server` per test, on a free loopback port, with its data in a temporary directory.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Extra arguments it was started with (TLS settings).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server; append-only persistence on, so a restart keeps what was written.
    pub fn start() -> Self {
        Self::start_with(Vec::new())
    }

    /// Also serves TLS on `tls_port` with these PEM files; `verify_clients` requires client
    /// certificates signed by `ca`. The plain port stays for the harness's own commands.
    pub fn start_tls(tls_port: u16, cert: &Path, key: &Path, ca: &Path, verify_clients: bool) -> Self {
        let path = |p: &Path| p.to_str().unwrap().to_string();
        let extra = vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path(cert),
            "--tls-key-file".into(),
            path(key),
            "--tls-ca-cert-file".into(),
            path(ca),
            "--tls-auth-clients".into(),
            (if verify_clients { "yes" } else { "no" }).into(),
        ];
        Self::start_with(extra)
    }

    /// Starts with extra `redis-server` arguments.
    pub fn start_with(extra: Vec<String>) -> Self {
        for _ in 0..5 {
            // Another process may take the port between here and redis-server's bind: retry then.
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let dir = tempfile::tempdir().unwrap();
            if let Some(child) = spawn(port, dir.path(), &extra) {
                return RedisServer { child: Some(child), port, dir, extra };
            }
        }
        panic!("redis-server did not start (is it installed?)")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL: no goodbye to clients, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = spawn(self.port, self.dir.path(), &self.extra) {
                self.child = Some(child);
                return;
            }
        }
        panic!("redis-server did not restart on port {}", self.port)
    }

    /// Starts it again on the same port with its data gone: a restart that lost acknowledged writes.
    pub fn restart_empty(&mut self) {
        self.kill();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { std::fs::remove_dir_all(path).unwrap() } else { std::fs::remove_file(path).unwrap() }
        }
        self.restart();
    }

    /// SIGSTOP: the connection stays open and nothing answers, as with a stalled server.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap().success());
    }

    /// Sends one command (inline protocol) and returns the raw reply.
    pub fn command(&self, line: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 65536];
        // A bulk reply is `$<len>\r\n<len bytes>\r\n`; anything else here is one line.
        let complete = |r: &[u8]| {
            let Some(end) = r.windows(2).position(|w| w == b"\r\n") else { return false };
            match r.first() {
                Some(b'$') => {
                    let len: i64 = String::from_utf8_lossy(&r[1..end]).parse().unwrap();
                    len < 0 || r.len() >= end + 2 + len as usize + 2
                }
                _ => true,
            }
        };
        while !complete(&reply) {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "redis closed the connection mid-reply");
            reply.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// Calls of `command` served so far, from `INFO commandstats` (e.g. `mget`).
    pub fn calls(&self, command: &str) -> u64 {
        let info = self.command("INFO commandstats");
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts redis-server and waits until it answers PING; None if it exited (port taken).
fn spawn(port: u16, dir: &Path, extra: &[String]) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let mut pong = [0u8; 7];
            if stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut pong).is_ok() && &pong == b"+PONG\r\n" {
                return Some(child);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A `redis-sentinel` on a free loopback port, watching the primary named `master`.
pub struct Sentinel {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    /// Watches `primary_port` under `name` with quorum 2, calling it down after 500 ms of silence.
    pub fn start(name: &str, primary_port: u16) -> Self {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let dir = tempfile::tempdir().unwrap();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {name} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {name} 500\nsentinel failover-timeout {name} 10000\n",
                    dir.path().display()
                ),
            )
            .unwrap();
            let mut child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-sentinel is installed");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
                if query::<String>(port, &["PING"]).is_ok() {
                    return Sentinel { child, port, _dir: dir };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-sentinel did not start (is it installed?)")
    }

    /// What this sentinel knows of the primary `name`, as its field/value pairs.
    pub fn master(&self, name: &str) -> std::collections::HashMap<String, String> {
        query(self.port, &["SENTINEL", "MASTER", name]).unwrap_or_default()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One command to the server on `port`, through redis-rs.
pub fn query<T: ::redis::FromRedisValue>(port: u16, args: &[&str]) -> ::redis::RedisResult<T> {
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut cmd = ::redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut conn)
}
