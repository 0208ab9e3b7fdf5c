//! The `cedar-pdp` binary run as a separate process, as people and process managers run it.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_cedar-pdp");

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("CEDAR_PDP_LOG", "warn").output().unwrap()
}

/// A server process on `127.0.0.1:0`; its address is read from its own start-up log line.
pub struct Process {
    pub child: Child,
    pub addr: String,
    pub lines: mpsc::Receiver<String>,
    /// The data directory, unless `extra` named one.
    pub scratch: tempfile::TempDir,
    /// Where the server keeps its data (and the token it generates when no credential is set).
    pub data_dir: std::path::PathBuf,
}

/// The address in the server's `serving` line, JSON or text.
fn serving_at(line: &str) -> Option<String> {
    let event: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    if event["message"] == "serving" {
        return event["listen"].as_str().map(str::to_string);
    }
    let (_, rest) = line.split_once(" INFO cedar_pdp::server: serving listen=")?;
    rest.split_whitespace().next().map(str::to_string)
}

impl Process {
    /// Starts a server; its embedded store goes to a fresh directory unless `extra` has `--data-dir`.
    pub fn start(policies: &Path, extra: &[&str]) -> Process {
        Self::try_start(policies, extra).unwrap_or_else(|log| panic!("the server did not start:\n{log}"))
    }

    /// Starts a server, or returns what it logged before it exited.
    pub fn try_start(policies: &Path, extra: &[&str]) -> Result<Process, String> {
        let scratch = tempfile::tempdir().unwrap();
        let mut command = Command::new(BIN);
        command.args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0", "--policies"]).arg(policies);
        let data_dir = match extra.iter().position(|a| *a == "--data-dir") {
            Some(i) => std::path::PathBuf::from(extra[i + 1]),
            None => {
                command.arg("--data-dir").arg(scratch.path().join("data"));
                scratch.path().join("data")
            }
        };
        command.arg("--audit-file").arg(scratch.path().join("audit.jsonl"));
        // Tests run many servers at once: no HTTP listener on the default port unless a test asks.
        if !extra.contains(&"--http-listen") {
            command.args(["--http-listen", "off"]);
        }
        command.args(extra);
        Self::try_spawn(command, scratch, data_dir)
    }

    /// Runs `command` (a `cedar-pdp serve` logging to stderr, JSON or text) until it says it serves.
    pub fn try_spawn(
        mut command: Command,
        scratch: tempfile::TempDir,
        data_dir: std::path::PathBuf,
    ) -> Result<Process, String> {
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = String::new();
        let addr = loop {
            let Ok(line) = lines.recv_timeout(Duration::from_secs(20)) else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(log);
            };
            if let Some(addr) = serving_at(&line) {
                break addr;
            }
            log.push_str(&line);
            log.push('\n');
        };
        Ok(Process { child, addr, lines, scratch, data_dir })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// The CLI as an operator on this server's machine runs it: it finds the server's data directory
    /// (and in it the token the server generated when no credential is configured).
    pub fn cli_command(&self) -> Command {
        let mut command = Command::new(BIN);
        command.env("CEDAR_PDP_LOG", "warn").env("CEDAR_PDP_DATA_DIR", &self.data_dir);
        command
    }

    /// How a client on this machine reaches the server: its URL and the token it generated.
    pub fn remote(&self) -> Remote {
        let token = std::fs::read_to_string(self.data_dir.join(cedar_pdp::grpc::LocalToken::FILE)).ok();
        Remote { url: self.url(), token: token.map(|t| t.trim().to_string()) }
    }

    /// `cedar-pdp check` against this server, as a person runs it.
    pub fn check_output(&self, principal: &str, action: &str, resource: &str) -> Output {
        run(&["check", "--addr", &self.url(), "--principal", principal, "--action", action, "--resource", resource])
    }

    pub fn check(&self, principal: &str, action: &str, resource: &str) -> String {
        let out = self.check_output(principal, action, resource);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server's address and the credential a local operator would use.
#[derive(Debug, Clone)]
pub struct Remote {
    pub url: String,
    pub token: Option<String>,
}

pub type Authed = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, super::Bearer>;

impl Remote {
    pub async fn entities(&self) -> Result<cedar_pdp::grpc::EntityServiceClient<Authed>, tonic::transport::Error> {
        let channel = tonic::transport::Channel::from_shared(self.url.clone()).unwrap().connect().await?;
        Ok(cedar_pdp::grpc::EntityServiceClient::with_interceptor(channel, super::Bearer(self.token.clone())))
    }

    pub async fn admin(&self) -> Result<cedar_pdp::grpc::AdminServiceClient<Authed>, tonic::transport::Error> {
        let channel = tonic::transport::Channel::from_shared(self.url.clone()).unwrap().connect().await?;
        Ok(cedar_pdp::grpc::AdminServiceClient::with_interceptor(channel, super::Bearer(self.token.clone())))
    }
}
