//! End-to-end tests of the `svcmeta` binary: importing the real manifests and Consul answers
//! on a data directory and through a running server, durability across SIGKILL and SIGTERM,
//! the data-directory lock, exit codes, and the synthetic generator.
//!
//! The real data folder is `$SVCMETA_REAL_DATA`, else `<workspace>/../shared/data/real`. When it
//! is missing the import tests print a loud SKIP line, or fail when `CI` is set.
//!
//! Helpers outside `#[test]` functions panic on unexpected failures too: that is how a test
//! fails, so `expect` is allowed in this test binary.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{agent, http, svcmeta, ChildGuard, ServerProcess, TempDir, COMMAND_DEADLINE};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What a finished command did.
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(self.code(), Some(0), "command failed: {self:#?}");
        self
    }

    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().filter(|l| !l.is_empty()).collect()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }
}

/// Runs a command to completion with an optional standard input, killing it at the deadline.
fn run_command(mut command: Command, stdin: Option<&[u8]>, deadline: Duration) -> Run {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard(command.spawn().expect("spawn svcmeta"));
    if let Some(input) = stdin {
        let mut pipe = child.0.stdin.take().expect("stdin");
        let input = input.to_vec();
        // The command may exit before reading (a refused data directory): ignore a closed pipe.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let mut stdout = child.0.stdout.take().expect("stdout");
    let mut stderr = child.0.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = child.wait_until(Instant::now() + deadline);
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    match status {
        Some(status) => Run {
            status,
            stdout,
            stderr,
        },
        None => panic!("svcmeta did not finish within {deadline:?}; stderr: {stderr}"),
    }
}

/// Runs `svcmeta ARGS` in `cwd`.
fn run(cwd: &Path, args: &[&str]) -> Run {
    let mut command = svcmeta(cwd);
    command.args(args);
    run_command(command, None, COMMAND_DEADLINE)
}

/// Runs `svcmeta ARGS` with `input` on standard input.
fn run_with_input(cwd: &Path, args: &[&str], input: &[u8]) -> Run {
    let mut command = svcmeta(cwd);
    command.args(args);
    run_command(command, Some(input), COMMAND_DEADLINE)
}

/// The real data folder, or `None` after printing a SKIP line (a failure under `CI`).
fn real_data() -> Option<PathBuf> {
    let folder = match std::env::var_os("SVCMETA_REAL_DATA") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/real"),
    };
    if folder.is_dir() {
        return Some(folder);
    }
    let message = format!(
        "the real data folder {} is missing (set SVCMETA_REAL_DATA to its location)",
        folder.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{message}; CI is set, so this is a failure, not a skip");
    }
    eprintln!("\n*** SKIP: {message} ***\n");
    None
}

/// The files of the real data folder whose names start with `prefix` and end with `suffix`.
fn files(folder: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(folder)
        .expect("read the real data folder")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    found.sort();
    found
}

/// Where commands send their requests: a data directory or a server.
#[derive(Clone, Copy)]
enum Target<'a> {
    Dir(&'a Path),
    Server(&'a str),
}

impl Target<'_> {
    fn run(&self, cwd: &Path, args: &[&str]) -> Run {
        let dir;
        let mut full: Vec<&str> = Vec::new();
        match self {
            Target::Dir(path) => {
                dir = path.to_string_lossy().into_owned();
                full.extend(["--data-dir", dir.as_str()]);
            }
            Target::Server(url) => full.extend(["--server", url]),
        }
        full.extend(args);
        run(cwd, &full)
    }

    fn ids(&self, cwd: &Path, args: &[&str]) -> Vec<String> {
        let mut full = vec!["query", "--output", "ids"];
        full.extend(args);
        let done = self.run(cwd, &full).ok();
        done.lines().into_iter().map(str::to_string).collect()
    }

    fn count(&self, cwd: &Path, args: &[&str]) -> u64 {
        let mut full = vec!["query", "--count"];
        full.extend(args);
        let done = self.run(cwd, &full).ok();
        done.stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("not a count: {done:#?}"))
    }

    fn instances(&self, cwd: &Path, args: &[&str]) -> Vec<Value> {
        let mut full = vec!["query", "--output", "json"];
        full.extend(args);
        let done = self.run(cwd, &full).ok();
        done.json()["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn services(&self, cwd: &Path) -> Vec<String> {
        let done = self.run(cwd, &["services", "--output", "ids"]).ok();
        done.lines().into_iter().map(str::to_string).collect()
    }

    fn import(&self, cwd: &Path, file: &Path) -> Run {
        let file = file.to_string_lossy().into_owned();
        self.run(cwd, &["import", &file])
    }
}

/// The number in `... imported N instances ...`.
fn imported_count(run: &Run) -> u64 {
    run.stdout
        .split("imported ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no import count: {run:#?}"))
}

// ---------------------------------------------------------------------------------------------
// What the real files say
// ---------------------------------------------------------------------------------------------

fn check_bookinfo(target: Target<'_>, cwd: &Path) {
    assert_eq!(
        target.ids(cwd, &["--service", "reviews"]),
        vec![
            "default:reviews-v1-0",
            "default:reviews-v2-0",
            "default:reviews-v3-0"
        ]
    );
    assert_eq!(
        target.ids(cwd, &["--service", "REVIEWS"]).len(),
        3,
        "service names are case-insensitive"
    );
    assert_eq!(
        target.ids(cwd, &["--service", "reviews", "--version", "v2"]),
        vec!["default:reviews-v2-0"]
    );
    assert_eq!(
        target.ids(cwd, &["--service", "reviews", "--version", ">=2"]),
        vec!["default:reviews-v2-0", "default:reviews-v3-0"]
    );
    assert_eq!(
        target.services(cwd),
        vec!["details", "productpage", "ratings", "reviews"]
    );
    assert_eq!(target.count(cwd, &[]), 6);
    let productpage = target.instances(cwd, &["--service", "productpage"]);
    assert_eq!(productpage.len(), 1);
    assert_eq!(productpage[0]["port"], 9080);
    assert_eq!(
        productpage[0]["address"],
        "productpage.default.svc.cluster.local"
    );
    assert_eq!(productpage[0]["meta"]["namespace"], "default");
    assert_eq!(productpage[0]["meta"]["kind"], "Deployment");
}

fn check_online_boutique(target: Target<'_>, cwd: &Path) {
    assert_eq!(target.count(cwd, &[]), 12);
    assert_eq!(target.services(cwd).len(), 12);
    let frontend = target.instances(cwd, &["--service", "frontend"]);
    assert_eq!(frontend.len(), 1);
    assert_eq!(frontend[0]["version"], "v0.10.6");
    assert_eq!(frontend[0]["port"], 8080);
    let redis = target.instances(cwd, &["--service", "redis-cart"]);
    assert_eq!(redis.len(), 1);
    assert_eq!(redis[0]["version"], "alpine");
    // Image tags compare as semver where they parse.
    assert_eq!(target.count(cwd, &["--version", "^0.10"]), 11);
}

fn check_sock_shop(target: Target<'_>, cwd: &Path) {
    assert_eq!(target.count(cwd, &[]), 14);
    let ids = target.ids(cwd, &[]);
    assert_eq!(ids.len(), 14);
    assert!(ids.iter().any(|id| id == "sock-shop:carts-0"), "{ids:?}");
    let carts = target.instances(cwd, &["--service", "carts"]);
    assert_eq!(carts.len(), 1);
    assert_eq!(carts[0]["id"], "sock-shop:carts-0");
    assert_eq!(carts[0]["version"], "0.4.8");
    assert_eq!(carts[0]["address"], "carts.sock-shop.svc.cluster.local");
    // The `name` label is not a service/version label, so it becomes a tag.
    assert_eq!(carts[0]["tags"], json!(["name=carts"]));
    assert!(ids.iter().all(|id| id.starts_with("sock-shop:")), "{ids:?}");
    assert_eq!(target.count(cwd, &["--meta", "namespace=sock-shop"]), 14);
    assert_eq!(target.count(cwd, &["--meta", "namespace=default"]), 0);
}

fn check_train_ticket(target: Target<'_>, cwd: &Path) {
    assert_eq!(target.count(cwd, &[]), 64);
    assert_eq!(
        target.ids(cwd, &["--service", "ts-auth-service"]),
        vec!["default:ts-auth-service-0"]
    );
    assert_eq!(target.services(cwd).len(), 64);
    let auth = target.instances(cwd, &["--service", "ts-auth-service"]);
    assert_eq!(auth[0]["port"], 12340);
    assert_eq!(auth[0]["version"], "0.0.4");
}

/// Checks a Kubernetes file's facts; every file gets the generic checks.
fn check_k8s_file(name: &str, target: Target<'_>, cwd: &Path, imported: u64) {
    assert!(imported > 0, "{name}: nothing imported");
    assert_eq!(target.count(cwd, &[]), imported, "{name}");
    for id in target.ids(cwd, &[]) {
        // NAMESPACE:NAME-INDEX
        let (namespace, rest) = id.split_once(':').unwrap_or_else(|| panic!("{name}: {id}"));
        assert!(!namespace.is_empty(), "{name}: {id}");
        let index = rest.rsplit('-').next().unwrap_or_default();
        assert!(index.parse::<u32>().is_ok(), "{name}: {id}");
    }
    match name {
        "k8s-bookinfo.yaml" => check_bookinfo(target, cwd),
        "k8s-online-boutique.yaml" => check_online_boutique(target, cwd),
        "k8s-sock-shop.yaml" => check_sock_shop(target, cwd),
        "k8s-train-ticket.yaml" => check_train_ticket(target, cwd),
        other => eprintln!("{other}: no specific facts known, generic checks only"),
    }
}

#[test]
fn every_kubernetes_manifest_imports_into_a_data_dir_with_what_it_says() {
    let Some(folder) = real_data() else { return };
    let manifests = files(&folder, "k8s-", ".yaml");
    assert!(
        !manifests.is_empty(),
        "no k8s-*.yaml in {}",
        folder.display()
    );
    let names: BTreeSet<String> = manifests
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .collect();
    assert!(names.contains("k8s-bookinfo.yaml"), "{names:?}");
    for manifest in &manifests {
        let name = manifest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let temp = TempDir::new("k8s");
        let data = temp.join("data");
        let target = Target::Dir(&data);
        let imported = target.import(temp.path(), manifest).ok();
        check_k8s_file(&name, target, temp.path(), imported_count(&imported));
    }
}

#[test]
fn every_consul_answer_imports_into_a_data_dir_with_what_it_says() {
    let Some(folder) = real_data() else { return };
    let answers = files(&folder, "consul-", ".json");
    assert!(
        !answers.is_empty(),
        "no consul-*.json in {}",
        folder.display()
    );
    for answer in &answers {
        let name = answer
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let temp = TempDir::new("consul");
        let data = temp.join("data");
        let target = Target::Dir(&data);
        let imported = target.import(temp.path(), answer).ok();
        let count = imported_count(&imported);
        assert_eq!(target.count(temp.path(), &[]), count, "{name}");
        let cwd = temp.path();
        match name.as_str() {
            "consul-agent-services-loki.json" => {
                assert_eq!(
                    target.ids(cwd, &["--service", "test"]),
                    vec!["test-id-1234", "test-id-5678"]
                );
                let other = target.instances(cwd, &["--service", "other"]);
                assert_eq!(other.len(), 1);
                assert_eq!(other[0]["port"], 0);
                assert_eq!(other[0]["address"], "");
            }
            "consul-catalog-service-consul-discovery-client.json" => {
                let consul = target.instances(cwd, &["--service", "consul"]);
                assert_eq!(consul.len(), 1);
                assert_eq!(consul[0]["version"], "1.7.1");
                assert_eq!(consul[0]["port"], 8300);
            }
            "consul-catalog-services-prometheus.json" => {
                // A service listing holds no instances: nothing is imported, and it says so.
                assert_eq!(count, 0);
                assert!(imported.stderr.contains("no instances"), "{imported:#?}");
            }
            "consul-health-service-linkerd1-statuses.json" => {
                assert_eq!(count, 4);
                assert_eq!(target.count(cwd, &["--service", "hosted_web"]), 4);
            }
            "consul-health-service-prometheus.json" => {
                let test = target.instances(cwd, &["--service", "test"]);
                assert_eq!(test.len(), 1);
                assert_eq!(test[0]["port"], 3341);
                assert_eq!(test[0]["tags"], json!(["tag1"]));
                assert_eq!(test[0]["version"], "1.0.0");
                assert_eq!(test[0]["environment"], "staging");
            }
            other => eprintln!("{other}: no specific facts known, generic checks only"),
        }
    }
}

#[test]
fn importing_and_querying_through_a_running_server() {
    let Some(folder) = real_data() else { return };
    let bookinfo = folder.join("k8s-bookinfo.yaml");
    assert!(bookinfo.is_file(), "{} is missing", bookinfo.display());
    let temp = TempDir::new("server-import");
    let data = temp.join("data");
    let server = ServerProcess::start(&data, &temp);
    let target = Target::Server(&server.url);
    let imported = target.import(temp.path(), &bookinfo).ok();
    assert_eq!(imported_count(&imported), 6);
    check_k8s_file("k8s-bookinfo.yaml", target, temp.path(), 6);
    let stats = target
        .run(temp.path(), &["stats", "--output", "json"])
        .ok()
        .json();
    assert_eq!(stats["instances"], 6);
    assert_eq!(stats["store"], "embedded");
    // The same import again changes nothing.
    target.import(temp.path(), &bookinfo).ok();
    assert_eq!(target.count(temp.path(), &[]), 6);

    // After the server stops, the data directory answers the same.
    assert!(server.terminate().success());
    check_bookinfo(Target::Dir(&data), temp.path());
}

// ---------------------------------------------------------------------------------------------
// Durability and the data-directory lock
// ---------------------------------------------------------------------------------------------

fn body(id: &str, n: i64) -> Value {
    json!({
        "id": id,
        "service": format!("svc{}", n % 3),
        "address": "10.0.0.1",
        "port": 8000 + n,
        "tags": [format!("n={n}")],
        "meta": {"n": n.to_string()},
    })
}

#[test]
fn every_acknowledged_write_survives_sigkill() {
    let temp = TempDir::new("sigkill");
    let data = temp.join("data");
    let agent = agent();
    let server = ServerProcess::start(&data, &temp);
    // (id → acknowledged body, or None when deleted), and every revision seen.
    let mut acknowledged: Vec<(String, Option<Value>)> = Vec::new();
    let mut seen: Vec<u64> = Vec::new();
    for n in 0..20 {
        let id = format!("dur-{n:02}");
        let (status, index, reply) = http(
            &agent,
            "PUT",
            &format!("{}/api/v1/instances/{id}", server.url),
            Some(&body(&id, n)),
        );
        assert_eq!(status, 201, "{reply}");
        seen.push(index.expect("index"));
        acknowledged.push((id, Some(reply)));
    }
    // A replacement and a removal, acknowledged too.
    let (status, index, reply) = http(
        &agent,
        "PUT",
        &format!("{}/api/v1/instances/dur-03", server.url),
        Some(&body("dur-03", 99)),
    );
    assert_eq!(status, 200, "{reply}");
    seen.push(index.expect("index"));
    acknowledged[3].1 = Some(reply);
    let (status, index, reply) = http(
        &agent,
        "DELETE",
        &format!("{}/api/v1/instances/dur-07", server.url),
        None,
    );
    assert_eq!(status, 200, "{reply}");
    seen.push(index.expect("index"));
    acknowledged[7].1 = None;
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let newest = *seen.iter().max().expect("revisions");

    server.kill();

    let server = ServerProcess::start(&data, &temp);
    for (id, expected) in &acknowledged {
        let (status, index, reply) = http(
            &agent,
            "GET",
            &format!("{}/api/v1/instances/{id}", server.url),
            None,
        );
        match expected {
            Some(expected) => {
                assert_eq!(status, 200, "{id} lost after SIGKILL");
                assert_eq!(&reply, expected, "{id} differs after SIGKILL");
                assert_eq!(index, Some(newest));
            }
            None => assert_eq!(status, 404, "{id} came back after SIGKILL"),
        }
    }
    let (status, index, reply) = http(
        &agent,
        "PUT",
        &format!("{}/api/v1/instances/after", server.url),
        Some(&body("after", 1)),
    );
    assert_eq!(status, 201, "{reply}");
    let next = index.expect("index");
    assert!(
        next > newest,
        "revision {next} reused (newest before the crash {newest})"
    );
    server.kill();
}

#[test]
fn sigterm_stops_the_server_cleanly_and_keeps_everything() {
    let temp = TempDir::new("sigterm");
    let data = temp.join("data");
    let agent = agent();
    let server = ServerProcess::start(&data, &temp);
    let mut acknowledged = Vec::new();
    for n in 0..10 {
        let id = format!("term-{n}");
        let (status, _, reply) = http(
            &agent,
            "PUT",
            &format!("{}/api/v1/instances/{id}", server.url),
            Some(&body(&id, n)),
        );
        assert_eq!(status, 201, "{reply}");
        acknowledged.push((id, reply));
    }
    let stderr_path = server.stderr_path.clone();
    let status = server.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}; stderr: {}",
        std::fs::read_to_string(stderr_path).unwrap_or_default()
    );

    // Without a server, the data directory has everything.
    let target = Target::Dir(&data);
    assert_eq!(target.count(temp.path(), &[]), 10);
    let server = ServerProcess::start(&data, &temp);
    for (id, expected) in &acknowledged {
        let (status, _, reply) = http(
            &agent,
            "GET",
            &format!("{}/api/v1/instances/{id}", server.url),
            None,
        );
        assert_eq!(status, 200, "{id} lost after SIGTERM");
        assert_eq!(&reply, expected);
    }
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn a_data_dir_held_by_a_server_is_refused_quickly_not_waited_for() {
    let temp = TempDir::new("locked");
    let data = temp.join("data");
    let server = ServerProcess::start(&data, &temp);
    let dir = data.to_string_lossy().into_owned();
    for args in [
        vec!["query", "--data-dir", &dir],
        vec!["stats", "--data-dir", &dir],
    ] {
        let mut command = svcmeta(temp.path());
        command.args(&args);
        // A hang would be caught here: a lock wait is not an answer.
        let refused = run_command(command, None, Duration::from_secs(60));
        assert_eq!(refused.code(), Some(1), "{refused:#?}");
        assert!(refused.stderr.contains("in use"), "{refused:#?}");
        assert!(refused.stdout.is_empty(), "{refused:#?}");
    }
    let registered = run_with_input(
        temp.path(),
        &["register", "-", "--data-dir", &dir],
        br#"{"id":"x","service":"web"}"#,
    );
    assert_eq!(registered.code(), Some(1), "{registered:#?}");
    assert!(registered.stderr.contains("in use"), "{registered:#?}");
    // A second server on the same directory is refused too.
    let mut command = svcmeta(temp.path());
    command.args(["serve", "--listen", "127.0.0.1:0", "--data-dir", &dir]);
    let second = run_command(command, None, Duration::from_secs(60));
    assert_eq!(second.code(), Some(1), "{second:#?}");
    assert!(second.stderr.contains("in use"), "{second:#?}");
    // The server still works and got nothing.
    let target = Target::Server(&server.url);
    assert_eq!(target.count(temp.path(), &[]), 0);
    assert_eq!(server.terminate().code(), Some(0));
    // Once the server is gone the directory opens.
    assert_eq!(Target::Dir(&data).count(temp.path(), &[]), 0);
}

// ---------------------------------------------------------------------------------------------
// Exit codes
// ---------------------------------------------------------------------------------------------

#[test]
fn a_rejected_registration_exits_1_naming_the_field_and_changes_nothing() {
    let temp = TempDir::new("rejected");
    let data = temp.join("data");
    let dir = data.to_string_lossy().into_owned();
    run_with_input(
        temp.path(),
        &["--data-dir", &dir, "register", "-"],
        br#"{"id":"good","service":"web","port":80}"#,
    )
    .ok();
    let stats_before = run(
        temp.path(),
        &["--data-dir", &dir, "stats", "--output", "json"],
    )
    .ok()
    .json();

    for (input, field) in [
        (&br#"{"id":"bad","service":"web","port":70000}"#[..], "port"),
        (
            &b"{\"id\":\"good\",\"service\":\"web\",\"tags\":[\"a\\u0007\"]}"[..],
            "tags[0]",
        ),
        (
            &br#"{"id":"bad","service":"web","colour":"red"}"#[..],
            "colour",
        ),
        (&br#"{"id":"bad","service":"#[..], "JSON"),
    ] {
        let rejected = run_with_input(temp.path(), &["--data-dir", &dir, "register", "-"], input);
        assert_eq!(rejected.code(), Some(1), "{rejected:#?}");
        assert!(
            rejected.stderr.contains(field),
            "stderr lacks {field}: {rejected:#?}"
        );
    }
    // A batch with one bad record stores none of it.
    let batch = run_with_input(
        temp.path(),
        &["--data-dir", &dir, "register", "-"],
        b"{\"id\":\"ok-1\",\"service\":\"web\"}\n{\"id\":\"ok-2\",\"service\":\"web\",\"port\":-5}\n",
    );
    assert_eq!(batch.code(), Some(1), "{batch:#?}");
    assert!(batch.stderr.contains("[1].port"), "{batch:#?}");

    let stats_after = run(
        temp.path(),
        &["--data-dir", &dir, "stats", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(stats_after["revision"], stats_before["revision"]);
    assert_eq!(stats_after["instances"], 1);
    let target = Target::Dir(&data);
    assert_eq!(target.ids(temp.path(), &[]), vec!["good"]);
    let good = target.instances(temp.path(), &[]);
    assert_eq!(good[0]["port"], 80);
    assert_eq!(good[0]["tags"], json!([]));
}

#[test]
fn deregistering_an_unknown_id_exits_1() {
    let temp = TempDir::new("deregister");
    let dir = temp.join("data").to_string_lossy().into_owned();
    // Reading a data directory that does not exist is an error, and creates nothing.
    for args in [
        vec!["--data-dir", dir.as_str(), "deregister", "nobody"],
        vec!["--data-dir", dir.as_str(), "query", "--count"],
        vec!["--data-dir", dir.as_str(), "services"],
    ] {
        let missing = run(temp.path(), &args);
        assert_eq!(missing.code(), Some(1), "{missing:#?}");
        assert!(
            missing.stderr.contains("no registry in data directory"),
            "{missing:#?}"
        );
    }
    assert!(!temp.join("data").exists());
    run_with_input(
        temp.path(),
        &["--data-dir", &dir, "register", "-"],
        br#"{"id":"somebody","service":"web"}"#,
    )
    .ok();
    let unknown = run(temp.path(), &["--data-dir", &dir, "deregister", "nobody"]);
    assert_eq!(unknown.code(), Some(1), "{unknown:#?}");
    assert!(unknown.stderr.contains("nobody"), "{unknown:#?}");
    run(temp.path(), &["--data-dir", &dir, "deregister", "somebody"]).ok();
    let again = run(temp.path(), &["--data-dir", &dir, "deregister", "somebody"]);
    assert_eq!(again.code(), Some(1), "{again:#?}");
}

#[test]
fn usage_errors_exit_2() {
    let temp = TempDir::new("usage");
    for args in [
        vec!["query", "--no-such-flag"],
        vec!["no-such-command"],
        vec!["query", "--output", "yaml"],
        vec!["gen"],
        vec![],
    ] {
        let usage = run(temp.path(), &args);
        assert_eq!(usage.code(), Some(2), "{args:?}: {usage:#?}");
        assert!(!usage.stderr.is_empty(), "{args:?}");
    }
    // Nothing was created in the working directory by a usage error.
    assert!(!temp.join("svcmeta-data").exists());
}

#[test]
fn gen_is_deterministic_and_its_output_imports() {
    let temp = TempDir::new("gen");
    let first = run(temp.path(), &["gen", "--instances", "1000", "--seed", "7"]).ok();
    let second = run(temp.path(), &["gen", "--instances", "1000", "--seed", "7"]).ok();
    assert_eq!(first.stdout, second.stdout, "same seed, same catalog");
    let lines = first.lines();
    assert_eq!(lines.len(), 1000);
    let mut ids = BTreeSet::new();
    for line in &lines {
        let record: Value = serde_json::from_str(line).expect("each line is JSON");
        assert!(ids.insert(record["id"].as_str().expect("id").to_string()));
    }
    let other = run(temp.path(), &["gen", "--instances", "1000", "--seed", "8"]).ok();
    assert_ne!(other.stdout, first.stdout, "another seed, another catalog");

    let file = temp.join("catalog.ndjson");
    std::fs::write(&file, &first.stdout).expect("write catalog");
    let data = temp.join("data");
    let target = Target::Dir(&data);
    let imported = target.import(temp.path(), &file).ok();
    assert_eq!(imported_count(&imported), 1000);
    assert_eq!(target.count(temp.path(), &[]), 1000);
    let listed: BTreeSet<String> = target.ids(temp.path(), &[]).into_iter().collect();
    assert_eq!(listed, ids);
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    let temp = TempDir::new("epipe");
    let dir = temp.join("data").to_string_lossy().into_owned();
    run_with_input(
        temp.path(),
        &["--data-dir", &dir, "register", "-"],
        br#"{"id":"a","service":"web"}"#,
    )
    .ok();
    for args in [
        vec!["--data-dir", dir.as_str(), "query", "--output", "ids"],
        vec!["--data-dir", dir.as_str(), "services"],
    ] {
        let mut command = svcmeta(temp.path());
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard(command.spawn().expect("spawn"));
        drop(child.0.stdout.take()); // reader gone before the first write
        let mut stderr = String::new();
        child
            .0
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("stderr");
        let status = child
            .wait_until(Instant::now() + COMMAND_DEADLINE)
            .expect("exits");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_ne!(status.code(), Some(101), "{args:?}: {stderr}");
    }
}

#[test]
fn query_filter_and_watch_through_a_running_server() {
    let Some(folder) = real_data() else { return };
    let bookinfo = folder.join("k8s-bookinfo.yaml");
    let temp = TempDir::new("filter-watch");
    let data = temp.join("data");
    let server = ServerProcess::start(&data, &temp);
    let target = Target::Server(&server.url);
    target.import(temp.path(), &bookinfo).ok();
    let ids = target
        .run(
            temp.path(),
            &[
                "query",
                "--filter",
                r#"Version == "v2" or Service == "ratings""#,
                "--output",
                "ids",
            ],
        )
        .ok();
    assert_eq!(
        ids.lines(),
        ["default:ratings-v1-0", "default:reviews-v2-0"]
    );
    let bad = target.run(temp.path(), &["query", "--filter", "Service =="]);
    assert_eq!(bad.code(), Some(1), "{bad:#?}");
    assert!(bad.stderr.contains("filter: 1:"), "{bad:#?}");

    // `watch --since 0` replays history: the six registrations, in revision order.
    let watched = target
        .run(
            temp.path(),
            &[
                "watch",
                "--since",
                "0",
                "--service",
                "reviews",
                "--max-events",
                "3",
                "--output",
                "ids",
            ],
        )
        .ok();
    assert_eq!(
        watched.lines(),
        [
            "default:reviews-v1-0",
            "default:reviews-v2-0",
            "default:reviews-v3-0"
        ]
    );
    // Without a server there is nothing to watch.
    let local = run(temp.path(), &["--data-dir", "elsewhere", "watch"]);
    assert_eq!(local.code(), Some(1));
    assert!(local.stderr.contains("--server"), "{local:#?}");
    assert!(server.terminate().success());
}

#[test]
fn a_half_sent_request_does_not_hold_the_shutdown() {
    let temp = TempDir::new("slow-client");
    let data = temp.join("data");
    let server = ServerProcess::start(&data, &temp);
    let address = server.url.trim_start_matches("http://").to_string();
    let mut stalled = std::net::TcpStream::connect(&address).expect("connect");
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("half a request");
    // The server must still stop (after its drain timeout), with exit status 0.
    assert_eq!(server.terminate().code(), Some(0));
    drop(stalled);
}
