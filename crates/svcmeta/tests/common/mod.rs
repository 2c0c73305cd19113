//! Helpers shared by the end-to-end test binaries (`cli`, `scale_out`): temporary
//! directories, the `svcmeta` command with a clean environment, child processes that are
//! killed on drop, `svcmeta serve` on a free loopback port, and a small HTTP client.
//!
//! Each test binary compiles this module and uses only part of it.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Longest a single CLI command (or a server's start) may take before the test calls it a hang.
pub(crate) const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// A directory under the system temp dir, unique per test, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "svcmeta-cli-{label}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary with a clean environment: no inherited `SVCMETA_*` setting, quiet logs.
pub(crate) fn svcmeta(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_svcmeta"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SVCMETA_") {
            command.env_remove(&name);
        }
    }
    command.env("SVCMETA_LOG", "warn").current_dir(cwd);
    command
}

/// A child process that is killed (and reaped) when dropped.
pub(crate) struct ChildGuard(pub(crate) Child);

impl ChildGuard {
    /// Polls until the process exits or the deadline passes (then `None`, still running).
    pub(crate) fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SIGKILL also ends a process stopped with SIGSTOP.
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Sends `signal` (a name such as `STOP`) to `pid` with `kill -SIGNAL PID`.
pub(crate) fn send_signal(pid: u32, signal: &str) {
    let pid = pid.to_string();
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// `svcmeta serve` on a free loopback port.
pub(crate) struct ServerProcess {
    pub(crate) child: ChildGuard,
    pub(crate) url: String,
    pub(crate) stderr_path: PathBuf,
}

impl ServerProcess {
    /// A server on the embedded store in `data_dir`; its logs go under `logs`.
    pub(crate) fn start(data_dir: &Path, logs: &TempDir) -> ServerProcess {
        ServerProcess::start_with(logs, [OsStr::new("--data-dir"), data_dir.as_os_str()])
    }

    /// A server started as `svcmeta serve --listen 127.0.0.1:0 ARGS` (for instance
    /// `--store redis --redis-url URL --key-prefix P`), working directory and logs in `logs`.
    pub(crate) fn start_with<I, S>(logs: &TempDir, args: I) -> ServerProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let stderr_path = logs.join(&format!(
            "serve-{}.stderr",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let stderr = File::create(&stderr_path).expect("stderr file");
        let mut command = svcmeta(logs.path());
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = ChildGuard(command.spawn().expect("spawn svcmeta serve"));
        let stdout = child.0.stdout.take().expect("stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = sender.send(line);
            // Keep draining so the server never blocks on a full pipe.
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
        });
        let line = match receiver.recv_timeout(COMMAND_DEADLINE) {
            Ok(line) => line,
            Err(_) => panic!(
                "server printed no address; stderr: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            ),
        };
        let url = line
            .trim()
            .strip_prefix("svcmeta listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; stderr: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                )
            })
            .to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        ServerProcess {
            child,
            url,
            stderr_path,
        }
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// SIGKILL, then reap.
    pub(crate) fn kill(mut self) {
        self.child.0.kill().expect("SIGKILL");
        self.child.0.wait().expect("reap");
    }

    /// SIGSTOP via `kill -STOP PID`: the process freezes, its sockets stay open.
    pub(crate) fn pause(&self) {
        send_signal(self.pid(), "STOP");
    }

    /// SIGCONT via `kill -CONT PID`.
    pub(crate) fn resume(&self) {
        send_signal(self.pid(), "CONT");
    }

    /// SIGTERM via `kill -TERM PID`, then wait for the exit.
    pub(crate) fn terminate(mut self) -> ExitStatus {
        send_signal(self.pid(), "TERM");
        match self.child.wait_until(Instant::now() + COMMAND_DEADLINE) {
            Some(status) => status,
            None => panic!("server ignored SIGTERM; stderr: {}", self.stderr()),
        }
    }
}

/// An HTTP client that returns error statuses as answers, with a 30 s overall timeout.
pub(crate) fn agent() -> ureq::Agent {
    agent_with_timeout(Duration::from_secs(30))
}

/// An HTTP client that returns error statuses as answers, with the given overall timeout.
pub(crate) fn agent_with_timeout(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    /// `X-Svcmeta-Index`.
    pub(crate) index: Option<u64>,
    /// `X-Svcmeta-Stale: true`.
    pub(crate) stale: bool,
    /// The body as JSON (`Null` when it is not JSON).
    pub(crate) body: Value,
}

/// Sends a request; `Err` describes a transport failure (refused, reset, timed out).
pub(crate) fn try_request(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Result<Reply, String> {
    let result = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        ("PUT", Some(body)) => agent
            .put(url)
            .header("content-type", "application/json")
            .send(body.to_string().as_bytes()),
        ("POST", Some(body)) => agent
            .post(url)
            .header("content-type", "application/json")
            .send(body.to_string().as_bytes()),
        other => panic!("unsupported request {other:?}"),
    };
    let mut response = result.map_err(|e| format!("{method} {url}: {e}"))?;
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let index = header("x-svcmeta-index").and_then(|v| v.parse().ok());
    let stale = header("x-svcmeta-stale").is_some_and(|v| v == "true");
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
    Ok(Reply {
        status,
        index,
        stale,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    })
}

/// `(status, X-Svcmeta-Index, body)` of a request; a transport failure panics.
pub(crate) fn http(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> (u16, Option<u64>, Value) {
    let reply = try_request(agent, method, url, body).expect("HTTP request");
    (reply.status, reply.index, reply.body)
}
