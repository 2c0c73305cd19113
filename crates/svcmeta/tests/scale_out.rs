//! Process-level tests of the `redis` store: several real `svcmeta serve` processes share one
//! Redis (same URL and key prefix) and must behave as one registry.
//!
//! - random writes spread over three nodes (some ids written through two nodes at once)
//!   converge, and every node answers every query like a model of the acknowledged writes;
//! - a node killed with SIGKILL while the others take writes comes back and converges, and no
//!   acknowledged write is lost;
//! - a node frozen (SIGSTOP) while the stream is trimmed below it catches up from a snapshot;
//! - with Redis down, nodes serve stale reads and refuse writes with 503, then recover by
//!   themselves when Redis returns, keeping every acknowledged write;
//! - a cached query on one node sees a change made through another;
//! - a TTL lease expires once across nodes (one revision per expiry, not one per node).
//!
//! Redis comes from `svcmeta_store::test_support::TestRedis`: `SVCMETA_TEST_REDIS_URL`, else a
//! private `redis-server`, else a loud SKIP (a failure under `CI=true`). The Redis restart
//! test always needs a private server.
//!
//! Waiting for convergence uses generous deadlines; no test asserts how fast anything is.
//! Helpers panic on unexpected failures: that is how a test fails here.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use svcmeta_store::test_support::TestRedis;
use svcmeta_store::SharedStore;

use common::{agent, agent_with_timeout, try_request, Reply, ServerProcess, TempDir};

/// How long nodes may take to converge, recover or expire a lease before the test fails.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(30);
/// Page size of the paged listings (small, so listings take several pages).
const PAGE: usize = 7;

const SERVICES: [&str; 4] = ["web", "api", "db", "cache"];
const ENVIRONMENTS: [&str; 3] = ["prod", "staging", "dev"];
const TAGS: [&str; 5] = ["blue", "green", "canary", "edge", "v2"];

// ---------------------------------------------------------------------------------------------
// A cluster of nodes on one Redis
// ---------------------------------------------------------------------------------------------

/// Nodes started with `--store redis --redis-url URL --key-prefix P`, killed on drop; when the
/// test panics their logs are printed.
struct Cluster {
    nodes: Vec<Option<ServerProcess>>,
    redis_url: String,
    prefix: String,
    /// A store handle of the test's own, to read the store's revision.
    store: SharedStore,
    logs: TempDir,
}

impl Cluster {
    fn start(redis: &TestRedis, label: &str, count: usize) -> Cluster {
        let prefix = TestRedis::unique_prefix(label);
        let store = SharedStore::open(&redis.url, &prefix, 16).expect("open the test's store");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            redis_url: redis.url.clone(),
            prefix,
            store,
            logs: TempDir::new(label),
        };
        for _ in 0..count {
            let node = cluster.spawn();
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    fn spawn(&self) -> ServerProcess {
        ServerProcess::start_with(
            &self.logs,
            [
                "--store",
                "redis",
                "--redis-url",
                &self.redis_url,
                "--key-prefix",
                &self.prefix,
            ],
        )
    }

    fn node(&self, index: usize) -> &ServerProcess {
        self.nodes[index].as_ref().expect("node is running")
    }

    fn url(&self, index: usize) -> String {
        self.node(index).url.clone()
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().flatten().map(|n| n.url.clone()).collect()
    }

    /// SIGKILL node `index`.
    fn kill(&mut self, index: usize) {
        self.nodes[index].take().expect("node is running").kill();
    }

    /// Starts node `index` again (a new process, a new port, the same Redis and prefix).
    fn restart(&mut self, index: usize) {
        assert!(self.nodes[index].is_none(), "node {index} is running");
        let node = self.spawn();
        self.nodes[index] = Some(node);
    }

    /// The store's revision, read from Redis. (The handle's connection may have died with a
    /// restarted Redis: the first command after that fails and reconnects, so try again.)
    fn store_revision(&self) -> u64 {
        let mut attempts = 0;
        loop {
            match self.store.position() {
                Ok(position) => return position.revision,
                Err(error) if attempts < 3 => {
                    eprintln!("reading the store's revision: {error}; trying again");
                    attempts += 1;
                }
                Err(error) => panic!("cannot read the store's revision: {error}"),
            }
        }
    }

    /// Stops the nodes and deletes the data set's keys, so a shared Redis
    /// (`SVCMETA_TEST_REDIS_URL`) keeps no litter. A failing test never gets here and leaves
    /// its keys for inspection.
    fn finish(mut self, redis: &TestRedis) {
        for node in self.nodes.iter_mut() {
            if let Some(node) = node.take() {
                node.kill();
            }
        }
        let keys: Vec<String> = [
            "revision",
            "instances",
            "changes",
            "leases",
            "removals",
            "epoch",
        ]
        .iter()
        .map(|name| format!("{{{}}}:{name}", self.prefix))
        .collect();
        let mut command = vec!["DEL"];
        command.extend(keys.iter().map(String::as_str));
        redis.command(&command);
    }

    /// The stream key of this cluster's data set.
    fn stream_key(&self) -> String {
        format!("{{{}}}:changes", self.prefix)
    }

    fn describe(&self, agent: &ureq::Agent) -> String {
        self.urls()
            .iter()
            .map(
                |url| match try_request(agent, "GET", &format!("{url}/healthz"), None) {
                    Ok(reply) => format!("{url}: {}", reply.body),
                    Err(error) => format!("{url}: {error}"),
                },
            )
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every running node has applied exactly the store's revision (read from
    /// Redis), and returns it.
    fn wait_converged(&self, agent: &ureq::Agent) -> u64 {
        let deadline = Instant::now() + CONVERGE_DEADLINE;
        loop {
            let target = self.store_revision();
            let applied: Vec<u64> = self
                .urls()
                .iter()
                .map(|url| applied_revision(agent, url))
                .collect();
            if applied.iter().all(|a| *a == target) {
                return target;
            }
            assert!(
                applied.iter().all(|a| *a <= target),
                "a node applied revision {applied:?} beyond the store's {target}"
            );
            if Instant::now() >= deadline {
                panic!(
                    "nodes did not converge on revision {target} within {CONVERGE_DEADLINE:?}: \
                     applied {applied:?}\n{}",
                    self.describe(agent)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (index, node) in self.nodes.iter().enumerate() {
                if let Some(node) = node {
                    eprintln!(
                        "--- node {index} ({}) stderr ---\n{}",
                        node.url,
                        node.stderr()
                    );
                }
            }
        }
    }
}

fn get(agent: &ureq::Agent, url: &str) -> Reply {
    try_request(agent, "GET", url, None).unwrap_or_else(|e| panic!("{e}"))
}

fn healthz(agent: &ureq::Agent, node: &str) -> Value {
    let reply = get(agent, &format!("{node}/healthz"));
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

fn applied_revision(agent: &ureq::Agent, node: &str) -> u64 {
    let health = healthz(agent, node);
    health["replication"]["applied_revision"]
        .as_u64()
        .unwrap_or_else(|| panic!("no replication.applied_revision in {health}"))
}

fn resyncs(agent: &ureq::Agent, node: &str) -> u64 {
    let health = healthz(agent, node);
    health["replication"]["resyncs"]
        .as_u64()
        .unwrap_or_else(|| panic!("no replication.resyncs in {health}"))
}

/// Waits until `node`'s `/healthz` satisfies `ready`; returns the last answer.
fn wait_health(
    agent: &ureq::Agent,
    node: &str,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + CONVERGE_DEADLINE;
    loop {
        let health = healthz(agent, node);
        if ready(&health) {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "{node} not {what} within {CONVERGE_DEADLINE:?}: {health}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn seed() -> u64 {
    let seed = std::env::var("SVCMETA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("seed {seed} (set SVCMETA_TEST_SEED={seed} to replay)");
    seed
}

// ---------------------------------------------------------------------------------------------
// Writes and the model of acknowledged writes
// ---------------------------------------------------------------------------------------------

/// An acknowledged write: the revision its answer named, and the id's state after it.
#[derive(Debug, Clone)]
struct Ack {
    revision: u64,
    id: String,
    /// The registration sent, or `None` for a removal.
    draft: Option<Value>,
}

/// A registration with unique contents (the address and `meta.write` name the write).
fn random_draft(rng: &mut impl Rng, writer: usize, sequence: u64) -> Value {
    let tags: Vec<&str> = TAGS
        .iter()
        .copied()
        .filter(|_| rng.random_bool(0.4))
        .collect();
    json!({
        "service": SERVICES[rng.random_range(0..SERVICES.len())],
        "environment": ENVIRONMENTS[rng.random_range(0..ENVIRONMENTS.len())],
        "address": format!("10.{writer}.{}.{}", sequence / 250, sequence % 250 + 1),
        "port": rng.random_range(1..=65535),
        "tags": tags,
        "meta": {"write": format!("{writer}-{sequence}")},
    })
}

/// PUTs `draft` as `id` through `node`. `Ok(Some)` when acknowledged, `Ok(None)` when refused
/// as contended, `Err` on a transport failure; any other answer fails the test.
fn put(agent: &ureq::Agent, node: &str, id: &str, draft: &Value) -> Result<Option<Ack>, String> {
    let reply = try_request(
        agent,
        "PUT",
        &format!("{node}/api/v1/instances/{id}"),
        Some(draft),
    )?;
    match reply.status {
        200 | 201 => {
            let revision = reply.body["modify_revision"]
                .as_u64()
                .unwrap_or_else(|| panic!("PUT {id} via {node}: no modify_revision: {reply:?}"));
            assert_eq!(
                reply.index,
                Some(revision),
                "PUT {id} via {node}: X-Svcmeta-Index differs from modify_revision: {reply:?}"
            );
            assert!(
                !reply.stale,
                "PUT {id} via {node} acknowledged as stale: {reply:?}"
            );
            for field in ["service", "environment", "address", "port", "tags"] {
                if draft.get(field).is_none() {
                    continue;
                }
                assert_eq!(
                    reply.body[field], draft[field],
                    "PUT {id} via {node}: {field} differs: {reply:?}"
                );
            }
            Ok(Some(Ack {
                revision,
                id: id.to_string(),
                draft: Some(draft.clone()),
            }))
        }
        409 if reply.body["error"]["code"] == "contended" => Ok(None),
        _ => panic!("PUT {id} via {node}: unexpected answer {reply:?}"),
    }
}

/// DELETEs `id` through `node`: `Ok(Some)` when acknowledged, `Ok(None)` for 404 (absent) or
/// contended, `Err` on a transport failure.
fn delete(agent: &ureq::Agent, node: &str, id: &str) -> Result<Option<Ack>, String> {
    let reply = try_request(
        agent,
        "DELETE",
        &format!("{node}/api/v1/instances/{id}"),
        None,
    )?;
    match reply.status {
        200 => {
            let revision = reply.body["revision"]
                .as_u64()
                .unwrap_or_else(|| panic!("DELETE {id} via {node}: no revision: {reply:?}"));
            assert_eq!(
                reply.index,
                Some(revision),
                "DELETE {id} via {node}: {reply:?}"
            );
            Ok(Some(Ack {
                revision,
                id: id.to_string(),
                draft: None,
            }))
        }
        404 => Ok(None),
        409 if reply.body["error"]["code"] == "contended" => Ok(None),
        _ => panic!("DELETE {id} via {node}: unexpected answer {reply:?}"),
    }
}

/// What a node must hold for one instance: the fields the tests compare.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    service: String,
    id: String,
    address: String,
    port: u64,
    tags: Vec<String>,
    environment: String,
    health: String,
}

impl Seen {
    fn from_instance(instance: &Value) -> Seen {
        let text = |field: &str| instance[field].as_str().unwrap_or_default().to_string();
        Seen {
            service: text("service"),
            id: text("id"),
            address: text("address"),
            port: instance["port"].as_u64().unwrap_or(0),
            tags: instance["tags"]
                .as_array()
                .map(|tags| {
                    tags.iter()
                        .filter_map(|t| t.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            environment: text("environment"),
            health: text("health"),
        }
    }

    fn from_draft(id: &str, draft: &Value) -> Seen {
        let mut instance = draft.clone();
        instance["id"] = json!(id);
        instance["health"] = json!("passing");
        Seen::from_instance(&instance)
    }
}

/// Applies the acknowledged writes in the order of their revisions (which must be distinct):
/// id → the registration that is current.
fn model(acks: &[Ack]) -> BTreeMap<String, Seen> {
    let mut ordered: Vec<&Ack> = acks.iter().collect();
    ordered.sort_by_key(|ack| ack.revision);
    for pair in ordered.windows(2) {
        assert_ne!(
            pair[0].revision, pair[1].revision,
            "two acknowledged writes got the same revision: {:?} and {:?}",
            pair[0], pair[1]
        );
    }
    let mut state = BTreeMap::new();
    for ack in ordered {
        match &ack.draft {
            Some(draft) => {
                state.insert(ack.id.clone(), Seen::from_draft(&ack.id, draft));
            }
            None => {
                state.remove(&ack.id);
            }
        }
    }
    state
}

/// Every page of `GET /api/v1/instances?QUERY` on `node`, `PAGE` instances at a time.
fn pages(agent: &ureq::Agent, node: &str, query: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{node}/api/v1/instances?limit={PAGE}");
        if !query.is_empty() {
            url.push('&');
            url.push_str(query);
        }
        if let Some(cursor) = &cursor {
            let encoded: String = form_urlencoded::byte_serialize(cursor.as_bytes()).collect();
            url.push_str(&format!("&cursor={encoded}"));
        }
        let reply = get(agent, &url);
        assert_eq!(reply.status, 200, "GET {url}: {reply:?}");
        assert_eq!(
            reply.index,
            reply.body["revision"].as_u64(),
            "GET {url}: X-Svcmeta-Index differs from the body's revision"
        );
        cursor = reply.body["next_cursor"].as_str().map(str::to_string);
        pages.push(reply.body);
        if cursor.is_none() {
            return pages;
        }
        assert!(pages.len() < 10_000, "GET {url}: paging does not end");
    }
}

fn instances_of(pages: &[Value]) -> Vec<Value> {
    pages
        .iter()
        .flat_map(|page| page["instances"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Which instances of the model a query selects.
type Selects = Box<dyn Fn(&Seen) -> bool>;

/// The queries every node must answer alike, each with the model's filter.
fn queries() -> Vec<(String, Selects)> {
    let mut queries: Vec<(String, Selects)> = vec![(String::new(), Box::new(|_| true))];
    for service in SERVICES {
        queries.push((
            format!("service={service}"),
            Box::new(move |s| s.service == service),
        ));
    }
    for tag in TAGS {
        queries.push((
            format!("tag={tag}"),
            Box::new(move |s| s.tags.iter().any(|t| t == tag)),
        ));
    }
    for env in ENVIRONMENTS {
        queries.push((
            format!("env={env}"),
            Box::new(move |s| s.environment == env),
        ));
    }
    queries.push((
        "service=web&tag=blue&env=prod".to_string(),
        Box::new(|s| {
            s.service == "web" && s.environment == "prod" && s.tags.iter().any(|t| t == "blue")
        }),
    ));
    queries.push((
        "tag=green&tag_not=canary".to_string(),
        Box::new(|s| s.tags.iter().any(|t| t == "green") && !s.tags.iter().any(|t| t == "canary")),
    ));
    queries
}

/// Asserts every node answers every query with the same pages, and that they hold exactly
/// what the model says (ordered by service, then id).
fn assert_nodes_match_model(
    agent: &ureq::Agent,
    nodes: &[String],
    expected: &BTreeMap<String, Seen>,
) {
    for (query, keep) in queries() {
        let mut wanted: Vec<Seen> = expected.values().filter(|s| keep(s)).cloned().collect();
        wanted.sort();
        let first = pages(agent, &nodes[0], &query);
        for node in &nodes[1..] {
            let other = pages(agent, node, &query);
            assert_eq!(
                other, first,
                "{node} and {} answer {query:?} differently",
                nodes[0]
            );
        }
        let got: Vec<Seen> = instances_of(&first)
            .iter()
            .map(Seen::from_instance)
            .collect();
        if got != wanted {
            let got_ids: BTreeSet<&str> = got.iter().map(|s| s.id.as_str()).collect();
            let wanted_ids: BTreeSet<&str> = wanted.iter().map(|s| s.id.as_str()).collect();
            let differing: Vec<(&Seen, Option<&Seen>)> = wanted
                .iter()
                .map(|w| (w, got.iter().find(|g| g.id == w.id)))
                .filter(|(w, g)| g.is_none_or(|g| g != *w))
                .collect();
            panic!(
                "{query:?}: the nodes differ from the model of acknowledged writes\n\
                 missing: {:?}\nunexpected: {:?}\ndiffering (model, node): {differing:?}",
                wanted_ids.difference(&got_ids).collect::<Vec<_>>(),
                got_ids.difference(&wanted_ids).collect::<Vec<_>>(),
            );
        }
        assert_eq!(
            first[0]["total"].as_u64(),
            Some(wanted.len() as u64),
            "{query:?}: total"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Random writes over three nodes converge to the model
// ---------------------------------------------------------------------------------------------

#[test]
fn random_writes_through_three_nodes_converge_to_the_acknowledged_order() {
    let Some(redis) = TestRedis::any("random_writes_through_three_nodes") else {
        return;
    };
    let cluster = Cluster::start(&redis, "random", 3);
    let urls = cluster.urls();
    let seed = seed();
    const WRITERS: usize = 3;
    const OPS: usize = 120;
    // Hot ids are written by writers 0 and 1 at the same time, each through its own node.
    let hot: Vec<String> = (0..3).map(|k| format!("hot-{k}")).collect();
    let barrier = Arc::new(Barrier::new(WRITERS));
    let handles: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let urls = urls.clone();
            let hot = hot.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let agent = agent();
                let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(writer as u64));
                let own: Vec<String> = (0..15).map(|k| format!("w{writer}-{k}")).collect();
                let mut acks = Vec::new();
                let mut refused = 0;
                barrier.wait();
                for sequence in 0..OPS as u64 {
                    let (id, node) = if writer < 2 && rng.random_bool(0.35) {
                        (&hot[rng.random_range(0..hot.len())], &urls[writer])
                    } else {
                        (
                            &own[rng.random_range(0..own.len())],
                            &urls[rng.random_range(0..urls.len())],
                        )
                    };
                    let ack = if rng.random_bool(0.2) {
                        delete(&agent, node, id)
                    } else {
                        let draft = random_draft(&mut rng, writer, sequence);
                        let ack = put(&agent, node, id, &draft);
                        if matches!(ack, Ok(None)) {
                            refused += 1;
                        }
                        ack
                    };
                    acks.extend(ack.unwrap_or_else(|e| panic!("{e}")));
                }
                (acks, refused)
            })
        })
        .collect();
    let mut acks: Vec<Ack> = Vec::new();
    let mut contended = 0;
    for handle in handles {
        let (written, refused) = handle.join().expect("writer thread");
        acks.extend(written);
        contended += refused;
    }
    let hot_acks = acks.iter().filter(|a| a.id.starts_with("hot-")).count();
    eprintln!(
        "{} acknowledged writes, {hot_acks} of them to hot ids; {contended} registrations \
         refused as contended",
        acks.len()
    );
    assert!(
        acks.len() > WRITERS * OPS / 2,
        "too few writes were acknowledged"
    );

    let agent = agent();
    let revision = cluster.wait_converged(&agent);
    let newest = acks.iter().map(|a| a.revision).max().unwrap_or(0);
    assert!(
        revision >= newest,
        "the store is at {revision} but a write was acknowledged at {newest}"
    );
    let expected = model(&acks);
    assert!(!expected.is_empty());
    assert_nodes_match_model(&agent, &urls, &expected);
    // Each instance, read singly, is the same on every node.
    for id in expected.keys() {
        let answers: Vec<Value> = urls
            .iter()
            .map(|url| {
                let reply = get(&agent, &format!("{url}/api/v1/instances/{id}"));
                assert_eq!(reply.status, 200, "{url} {id}: {reply:?}");
                reply.body
            })
            .collect();
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "{id} differs between nodes: {answers:#?}"
        );
    }
    cluster.finish(&redis);
}

// ---------------------------------------------------------------------------------------------
// 2. A node killed mid-traffic comes back and loses nothing
// ---------------------------------------------------------------------------------------------

/// A write that was sent but never answered: `(id, the registration or None for a removal)`.
type InFlight = (String, Option<Value>);

/// Writes through `node` until `stop` is set, adding acknowledged writes to `acks`. Ends early
/// when the node stops answering, returning the write that was in flight then.
fn writer_loop(
    writer: usize,
    node: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
) -> std::thread::JoinHandle<Option<InFlight>> {
    std::thread::spawn(move || {
        let agent = agent();
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(writer as u64));
        let mut sequence = 0;
        while !stop.load(Ordering::SeqCst) {
            let id = format!("k{writer}-{}", rng.random_range(0..25));
            let (result, sent) = if rng.random_bool(0.15) {
                (delete(&agent, &node, &id), None)
            } else {
                let draft = random_draft(&mut rng, writer, sequence);
                (put(&agent, &node, &id, &draft), Some(draft))
            };
            sequence += 1;
            match result {
                Ok(ack) => acks.lock().unwrap().extend(ack),
                // The node is gone: the write in flight was not acknowledged, but may have
                // been made.
                Err(_) => return Some((id, sent)),
            }
        }
        None
    })
}

fn wait_for_acks(acks: &Mutex<Vec<Ack>>, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while acks.lock().unwrap().len() < at_least {
        assert!(
            Instant::now() < deadline,
            "writes stalled: fewer than {at_least} acknowledged"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_node_killed_during_writes_comes_back_and_nothing_acknowledged_is_lost() {
    let Some(redis) = TestRedis::any("a_node_killed_during_writes") else {
        return;
    };
    let mut cluster = Cluster::start(&redis, "sigkill", 3);
    let seed = seed();
    let acks = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = vec![
        writer_loop(
            0,
            cluster.url(0),
            seed,
            Arc::clone(&stop),
            Arc::clone(&acks),
        ),
        writer_loop(
            1,
            cluster.url(1),
            seed,
            Arc::clone(&stop),
            Arc::clone(&acks),
        ),
    ];
    // Node 2 takes writes too until it is killed (never told to stop: its writer ends when
    // the node stops answering).
    let doomed = writer_loop(
        2,
        cluster.url(2),
        seed,
        Arc::new(AtomicBool::new(false)),
        Arc::clone(&acks),
    );
    wait_for_acks(&acks, 90);
    cluster.kill(2);
    let (uncertain_id, uncertain) = doomed
        .join()
        .expect("writer thread")
        .expect("the writer through the killed node saw it go");
    let at_kill = acks.lock().unwrap().len();
    wait_for_acks(&acks, at_kill + 80);
    cluster.restart(2);
    let at_restart = acks.lock().unwrap().len();
    // The restarted node takes writes as well, while the others keep writing.
    let agent = agent();
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(3));
    for sequence in 0..20 {
        let id = format!("k3-{}", rng.random_range(0..10));
        let draft = random_draft(&mut rng, 3, sequence);
        let ack = put(&agent, &cluster.url(2), &id, &draft).unwrap_or_else(|e| panic!("{e}"));
        acks.lock().unwrap().extend(ack);
    }
    wait_for_acks(&acks, at_restart + 80);
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        let in_flight = writer.join().expect("writer thread");
        assert!(
            in_flight.is_none(),
            "a live node stopped answering: {in_flight:?}"
        );
    }

    let acks = acks.lock().unwrap().clone();
    eprintln!(
        "{} acknowledged writes ({at_kill} before the kill)",
        acks.len()
    );
    let revision = cluster.wait_converged(&agent);
    assert!(revision >= acks.iter().map(|a| a.revision).max().unwrap_or(0));
    let mut expected = model(&acks);
    // The write in flight through node 2 when it was killed was never acknowledged: it may or
    // may not have been made (it is the last write to its id either way). Anything else on
    // the nodes is a lost or invented write.
    let reply = get(
        &agent,
        &format!("{}/api/v1/instances/{uncertain_id}", cluster.url(0)),
    );
    let stored = (reply.status == 200).then(|| Seen::from_instance(&reply.body));
    let acknowledged = expected.get(&uncertain_id).cloned();
    let unacknowledged = uncertain
        .as_ref()
        .map(|d| Seen::from_draft(&uncertain_id, d));
    let made = stored != acknowledged;
    if made {
        assert_eq!(
            stored, unacknowledged,
            "{uncertain_id} is neither its last acknowledged state nor the write in flight"
        );
        eprintln!("the write to {uncertain_id} in flight at the kill was made");
        match unacknowledged {
            Some(seen) => expected.insert(uncertain_id.clone(), seen),
            None => expected.remove(&uncertain_id),
        };
    }
    assert_nodes_match_model(&agent, &cluster.urls(), &expected);
    // The last acknowledged state of every id, read singly from every node.
    let mut last: BTreeMap<&str, &Ack> = BTreeMap::new();
    for ack in acks.iter().filter(|a| !made || a.id != uncertain_id) {
        let entry = last.entry(ack.id.as_str()).or_insert(ack);
        if ack.revision > entry.revision {
            *entry = ack;
        }
    }
    for url in cluster.urls() {
        for (id, ack) in &last {
            let reply = get(&agent, &format!("{url}/api/v1/instances/{id}"));
            match &ack.draft {
                Some(draft) => {
                    assert_eq!(reply.status, 200, "{id} lost on {url}");
                    assert_eq!(
                        Seen::from_instance(&reply.body),
                        Seen::from_draft(id, draft),
                        "{id} on {url}"
                    );
                    assert_eq!(reply.body["modify_revision"].as_u64(), Some(ack.revision));
                }
                None => assert_eq!(reply.status, 404, "{id} came back on {url}"),
            }
        }
    }
    cluster.finish(&redis);
}

// ---------------------------------------------------------------------------------------------
// 3. A node behind a trimmed stream catches up from a snapshot
// ---------------------------------------------------------------------------------------------

#[test]
fn a_frozen_node_behind_a_trimmed_stream_catches_up_from_a_snapshot() {
    let Some(redis) = TestRedis::any("a_frozen_node_behind_a_trimmed_stream") else {
        return;
    };
    let cluster = Cluster::start(&redis, "trim", 3);
    let (a, b, c) = (cluster.url(0), cluster.url(1), cluster.url(2));
    let agent = agent();
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let mut acks = Vec::new();
    for n in 0..20 {
        let draft = random_draft(&mut rng, 0, n);
        acks.extend(put(&agent, &a, &format!("base-{n}"), &draft).unwrap());
    }
    cluster.wait_converged(&agent);
    let b_resyncs = resyncs(&agent, &b);
    let c_resyncs = resyncs(&agent, &c);

    cluster.node(2).pause();
    // Far more changes than the stream will keep: re-registrations, new ids and removals.
    for n in 0..300u64 {
        let ack = if n % 10 == 9 {
            delete(&agent, &a, &format!("base-{}", n / 10 % 20))
        } else {
            let draft = random_draft(&mut rng, 1, n);
            put(&agent, &a, &format!("trim-{}", n % 60), &draft)
        };
        acks.extend(ack.unwrap());
    }
    // B follows along; only C (frozen) is behind when the stream is trimmed.
    let target = cluster.store_revision();
    wait_health(&agent, &b, "caught up", |h| {
        h["replication"]["applied_revision"].as_u64() == Some(target)
    });
    redis.command(&["XTRIM", &cluster.stream_key(), "MAXLEN", "5"]);
    cluster.node(2).resume();

    let revision = cluster.wait_converged(&agent);
    assert_eq!(revision, target);
    assert!(
        resyncs(&agent, &c) > c_resyncs,
        "node C caught up without loading a snapshot (resyncs still {c_resyncs})"
    );
    assert_eq!(
        resyncs(&agent, &b),
        b_resyncs,
        "node B, which was not behind, loaded a snapshot"
    );
    let expected = model(&acks);
    assert_nodes_match_model(&agent, &cluster.urls(), &expected);
    // C keeps following the stream after its snapshot.
    let draft = random_draft(&mut rng, 2, 0);
    let after = put(&agent, &a, "after-resync", &draft).unwrap().unwrap();
    wait_health(&agent, &c, "following", |h| {
        h["replication"]["applied_revision"].as_u64() >= Some(after.revision)
    });
    let reply = get(&agent, &format!("{c}/api/v1/instances/after-resync"));
    assert_eq!(reply.status, 200, "{reply:?}");
    cluster.finish(&redis);
}

// ---------------------------------------------------------------------------------------------
// 4. Redis restarts: stale reads, refused writes, recovery
// ---------------------------------------------------------------------------------------------

#[test]
fn nodes_serve_stale_reads_while_redis_is_down_and_recover_by_themselves() {
    let Some(mut redis) = TestRedis::private("nodes_serve_stale_reads_while_redis_is_down") else {
        return;
    };
    let cluster = Cluster::start(&redis, "outage", 3);
    let urls = cluster.urls();
    let agent = agent();
    let mut rng = ChaCha8Rng::seed_from_u64(seed());
    let mut acks = Vec::new();
    for n in 0..30u64 {
        let node = &urls[n as usize % urls.len()];
        let draft = random_draft(&mut rng, 0, n);
        acks.extend(put(&agent, node, &format!("o-{}", n % 24), &draft).unwrap());
    }
    for (n, url) in urls.iter().enumerate() {
        acks.extend(delete(&agent, url, &format!("o-{n}")).unwrap());
    }
    let before = cluster.wait_converged(&agent);
    let expected = model(&acks);

    redis.kill();
    let short = agent_with_timeout(Duration::from_secs(10));
    for (n, url) in urls.iter().enumerate() {
        let health = wait_health(&agent, url, "stale", |h| h["status"] == "stale");
        assert_eq!(health["replication"]["connected"], false, "{health}");
        assert_eq!(
            health["replication"]["applied_revision"].as_u64(),
            Some(before),
            "{health}"
        );
        // Reads answer from the node's last state, marked stale.
        let list = get(&agent, &format!("{url}/api/v1/instances?limit=1000"));
        assert_eq!(list.status, 200, "{list:?}");
        assert!(
            list.stale,
            "a read while Redis is down is not marked stale: {list:?}"
        );
        let got: BTreeSet<Seen> = instances_of(&[list.body])
            .iter()
            .map(Seen::from_instance)
            .collect();
        let wanted: BTreeSet<Seen> = expected.values().cloned().collect();
        assert_eq!(got, wanted, "{url} while Redis is down");
        let one = get(&agent, &format!("{url}/api/v1/instances/o-10"));
        assert_eq!(one.status, 200, "{one:?}");
        assert!(one.stale, "{one:?}");
        // A write is refused at once (the request returns), and changes nothing.
        let draft = random_draft(&mut rng, 1, n as u64);
        let refused = try_request(
            &short,
            "PUT",
            &format!("{url}/api/v1/instances/refused-{n}"),
            Some(&draft),
        )
        .unwrap_or_else(|e| panic!("a write while Redis is down did not return: {e}"));
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(
            refused.body["error"]["code"], "store_unavailable",
            "{refused:?}"
        );
        let removal = try_request(
            &short,
            "DELETE",
            &format!("{url}/api/v1/instances/o-10"),
            None,
        )
        .unwrap_or_else(|e| panic!("a removal while Redis is down did not return: {e}"));
        assert_eq!(removal.status, 503, "{removal:?}");
        assert_eq!(
            removal.body["error"]["code"], "store_unavailable",
            "{removal:?}"
        );
    }

    redis.restart();
    for url in &urls {
        let health = wait_health(&agent, url, "recovered", |h| h["status"] == "ok");
        assert_eq!(health["replication"]["connected"], true, "{health}");
        assert!(!get(&agent, &format!("{url}/healthz")).stale);
    }
    // Writes work again through every node.
    for (n, url) in urls.iter().enumerate() {
        let draft = random_draft(&mut rng, 2, n as u64);
        let ack = put(&agent, url, &format!("after-{n}"), &draft)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("a write through {url} after recovery was refused"));
        assert!(ack.revision > before);
        acks.push(ack);
    }
    let revision = cluster.wait_converged(&agent);
    assert_eq!(
        revision,
        before + urls.len() as u64,
        "the refused writes left a trace"
    );
    let expected = model(&acks);
    assert_nodes_match_model(&agent, &urls, &expected);
    for n in 0..urls.len() {
        let reply = get(&agent, &format!("{}/api/v1/instances/refused-{n}", urls[0]));
        assert_eq!(reply.status, 404, "a refused write was made: {reply:?}");
    }
    cluster.finish(&redis);
}

// ---------------------------------------------------------------------------------------------
// 5. A cached query sees a change made through another node
// ---------------------------------------------------------------------------------------------

fn cache_hits(agent: &ureq::Agent, node: &str) -> u64 {
    let stats = get(agent, &format!("{node}/api/v1/stats"));
    assert_eq!(stats.status, 200, "{stats:?}");
    stats.body["cache"]["hits"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cache.hits in {}", stats.body))
}

fn ids(reply: &Reply) -> Vec<String> {
    instances_of(std::slice::from_ref(&reply.body))
        .iter()
        .map(|i| i["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_cached_query_on_one_node_sees_a_change_made_through_another() {
    let Some(redis) = TestRedis::any("a_cached_query_on_one_node") else {
        return;
    };
    let cluster = Cluster::start(&redis, "cache", 2);
    let (a, b) = (cluster.url(0), cluster.url(1));
    let agent = agent();
    for (id, port, tags) in [
        ("shop-1", 8001, json!(["blue"])),
        ("shop-2", 8002, json!(["blue", "edge"])),
        ("shop-3", 8003, json!(["green"])),
    ] {
        let draft = json!({"service": "shop", "address": "10.1.1.1", "port": port, "tags": tags});
        put(&agent, &a, id, &draft).unwrap().unwrap();
    }
    cluster.wait_converged(&agent);
    let query = format!("{b}/api/v1/instances?service=shop&tag=blue");

    let first = get(&agent, &query);
    assert_eq!(ids(&first), ["shop-1", "shop-2"]);
    let hits = cache_hits(&agent, &b);
    let second = get(&agent, &query);
    assert_eq!(second.body, first.body);
    assert!(
        cache_hits(&agent, &b) > hits,
        "the repeated query was not answered from B's cache"
    );

    // Through A: a matching instance changes, one stops matching, one starts matching.
    let changed = json!({"service": "shop", "address": "10.2.2.2", "port": 9001, "tags": ["blue"]});
    put(&agent, &a, "shop-1", &changed).unwrap().unwrap();
    let unblued = json!({"service": "shop", "address": "10.1.1.1", "port": 8002, "tags": ["edge"]});
    put(&agent, &a, "shop-2", &unblued).unwrap().unwrap();
    let blued =
        json!({"service": "shop", "address": "10.1.1.1", "port": 8003, "tags": ["green", "blue"]});
    let last = put(&agent, &a, "shop-3", &blued).unwrap().unwrap();
    wait_health(&agent, &b, "caught up", |h| {
        h["replication"]["applied_revision"].as_u64() >= Some(last.revision)
    });

    let third = get(&agent, &query);
    assert_eq!(third.status, 200, "{third:?}");
    assert_eq!(
        ids(&third),
        ["shop-1", "shop-3"],
        "B answered from a stale cache: {third:?}"
    );
    let instances = instances_of(std::slice::from_ref(&third.body));
    assert_eq!(instances[0]["port"], 9001, "{third:?}");
    assert_eq!(instances[0]["address"], "10.2.2.2", "{third:?}");
    assert!(
        third.body["revision"].as_u64() >= Some(last.revision),
        "{third:?}"
    );
    // And it is cached again, with the new answer.
    let fourth = get(&agent, &query);
    assert_eq!(fourth.body, third.body);
    cluster.finish(&redis);
}

// ---------------------------------------------------------------------------------------------
// 6. A lease expires once across nodes
// ---------------------------------------------------------------------------------------------

#[test]
fn a_ttl_lease_expires_once_across_three_nodes() {
    let Some(redis) = TestRedis::any("a_ttl_lease_expires_once") else {
        return;
    };
    let cluster = Cluster::start(&redis, "ttl", 3);
    let urls = cluster.urls();
    let agent = agent();
    let leased: Vec<String> = (0..4).map(|n| format!("leased-{n}")).collect();
    let mut registered = BTreeMap::new();
    for (n, id) in leased.iter().enumerate() {
        let draft = json!({"service": "ttl", "address": "10.9.9.9", "port": 7000 + n, "ttl": "1s"});
        let ack = put(&agent, &urls[0], id, &draft).unwrap().unwrap();
        registered.insert(id.clone(), ack.revision);
    }
    // An instance without a lease never expires.
    let steady = json!({"service": "ttl", "address": "10.9.9.9", "port": 7999});
    put(&agent, &urls[1], "steady", &steady).unwrap().unwrap();
    let registration = cluster.store_revision();

    let deadline = Instant::now() + CONVERGE_DEADLINE;
    for url in &urls {
        for id in &leased {
            loop {
                let reply = get(&agent, &format!("{url}/api/v1/instances/{id}"));
                assert_eq!(reply.status, 200, "{id} on {url}: {reply:?}");
                if reply.body["health"] == "critical" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{id} on {url} did not turn critical: {reply:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    // Give every node's lease timer (polling every 100 ms) ample time to try as well: a
    // duplicate expiry would show as one more revision.
    std::thread::sleep(Duration::from_secs(2));
    let revision = cluster.wait_converged(&agent);
    assert_eq!(
        revision,
        registration + leased.len() as u64,
        "{} leases expired, but the store's revision went from {registration} to {revision}",
        leased.len()
    );
    let mut expiry_revisions = BTreeSet::new();
    for url in &urls {
        for id in &leased {
            let reply = get(&agent, &format!("{url}/api/v1/instances/{id}"));
            assert_eq!(reply.body["health"], "critical", "{reply:?}");
            let modified = reply.body["modify_revision"].as_u64().unwrap();
            assert!(modified > registration && modified <= revision, "{reply:?}");
            assert_eq!(reply.body["create_revision"].as_u64(), Some(registered[id]));
            expiry_revisions.insert(modified);
        }
        let reply = get(&agent, &format!("{url}/api/v1/instances/steady"));
        assert_eq!(reply.body["health"], "passing", "{reply:?}");
    }
    assert_eq!(
        expiry_revisions.len(),
        leased.len(),
        "every expiry has its own revision, the same on every node: {expiry_revisions:?}"
    );
    cluster.finish(&redis);
}
