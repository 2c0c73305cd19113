//! A Redis for tests (feature `test-support`, used only as a dev-dependency).
//!
//! Per the project's rule: the URL comes from `SVCMETA_TEST_REDIS_URL`; where that is unset and
//! a `redis-server` binary exists, the test starts its own on a free port; with neither it
//! skips loudly — except under `CI=true`, where it fails instead. Tests that stop and restart
//! Redis always need a private server ([`TestRedis::private`]).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A Redis a test talks to; a private one is killed and its directory removed on drop.
#[derive(Debug)]
pub struct TestRedis {
    /// `redis://127.0.0.1:PORT/0`.
    pub url: String,
    private: Option<PrivateServer>,
}

#[derive(Debug)]
struct PrivateServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn skip(test: &str, why: &str) -> Option<TestRedis> {
    assert!(
        !under_ci(),
        "{test}: {why}, and CI is set: Redis tests must run in CI"
    );
    eprintln!("SKIP {test}: {why} (set SVCMETA_TEST_REDIS_URL or install redis-server)");
    None
}

fn has_redis_server() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl TestRedis {
    /// `SVCMETA_TEST_REDIS_URL`, else a private server, else a loud skip (`None`).
    pub fn any(test: &str) -> Option<TestRedis> {
        match std::env::var("SVCMETA_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => Some(TestRedis { url, private: None }),
            _ => TestRedis::private(test),
        }
    }

    /// A private `redis-server` with an append-only file fsynced on every write (so a restart
    /// keeps every acknowledged write), or a loud skip (`None`) when there is no binary.
    pub fn private(test: &str) -> Option<TestRedis> {
        if !has_redis_server() {
            return skip(test, "no redis-server binary for a private Redis");
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "svcmeta-redis-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("redis test dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = PrivateServer {
            child: None,
            port,
            dir,
        };
        server.start();
        Some(TestRedis {
            url: format!("redis://127.0.0.1:{port}/0"),
            private: Some(server),
        })
    }

    /// Whether this is a private server (which the test may stop and restart).
    pub fn is_private(&self) -> bool {
        self.private.is_some()
    }

    /// Kills the private server (SIGKILL: whatever it acknowledged is in its fsynced file).
    pub fn kill(&mut self) {
        let server = self
            .private
            .as_mut()
            .expect("only a private Redis can be killed");
        if let Some(mut child) = server.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the private server again on the same port and data.
    pub fn restart(&mut self) {
        let server = self
            .private
            .as_mut()
            .expect("only a private Redis can be restarted");
        server.start();
    }

    /// A key prefix no other test uses.
    pub fn unique_prefix(label: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!(
            "test-{label}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The keys of a data set (prefix) with their `DUMP` serialisation, to restore later.
    pub fn dump_data_set(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let mut connection = self.connection();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{{{prefix}}}:*"))
            .query(&mut connection)
            .expect("KEYS");
        keys.into_iter()
            .map(|key| {
                let dump: Vec<u8> = redis::cmd("DUMP")
                    .arg(&key)
                    .query(&mut connection)
                    .expect("DUMP");
                (key, dump)
            })
            .collect()
    }

    /// Puts a data set back as [`TestRedis::dump_data_set`] saw it (a restore from a backup):
    /// its keys now hold exactly the dumped values, keys created since are deleted.
    pub fn restore_data_set(&self, prefix: &str, dump: &[(String, Vec<u8>)]) {
        let mut connection = self.connection();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{{{prefix}}}:*"))
            .query(&mut connection)
            .expect("KEYS");
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in keys {
            pipe.cmd("DEL").arg(key).ignore();
        }
        for (key, value) in dump {
            pipe.cmd("RESTORE")
                .arg(key)
                .arg(0)
                .arg(value.as_slice())
                .arg("REPLACE")
                .ignore();
        }
        pipe.query::<()>(&mut connection)
            .expect("restore the data set");
    }

    fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .expect("redis url")
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to the test redis")
    }

    /// Runs one command against this Redis (test set-up and inspection).
    pub fn command(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url.as_str()).expect("redis url");
        let mut connection = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to the test redis");
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query(&mut connection).expect("redis command")
    }
}

impl PrivateServer {
    fn start(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let url = format!("redis://127.0.0.1:{}/0", self.port);
        let client = redis::Client::open(url.as_str()).expect("redis url");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ready.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "private redis-server on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(server) = self.private.as_mut() {
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_dir_all(&server.dir);
        }
    }
}
