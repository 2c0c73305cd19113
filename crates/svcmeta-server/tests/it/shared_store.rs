//! Several catalogs (nodes) in one process sharing one Redis: convergence against a
//! single-node model, last-revision-wins on one id, compare-and-set across nodes, lease
//! expiry carried out once, a cached query never served after another node's change, watches
//! woken by another node's write, lag tolerated by writes, a restarted node catching up, and
//! nodes noticing a data set that was deleted or restored from an older backup under them.
//!
//! Redis comes from `SVCMETA_TEST_REDIS_URL` or a private `redis-server` (a loud skip without
//! either, a failure under `CI=true`); every test uses its own key prefix.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use svcmeta_core::{validate, Health, InstanceDraft, Limits, Mutation, MutationError, Page, Query};
use svcmeta_server::catalog::ManualClock;
use svcmeta_server::{Catalog, CatalogSettings, WriteError};
use svcmeta_store::test_support::TestRedis;
use svcmeta_store::{SharedStore, Store};

/// Longest a node may take to apply what another wrote before the test calls it stuck.
const CONVERGE: Duration = Duration::from_secs(30);

fn store(redis: &TestRedis, prefix: &str) -> Store {
    Store::Shared(Box::new(
        SharedStore::open(&redis.url, prefix, 100_000).expect("open shared store"),
    ))
}

fn node(redis: &TestRedis, prefix: &str) -> Catalog {
    Catalog::open(store(redis, prefix), CatalogSettings::standard()).expect("open node")
}

fn register(id: &str, service: &str, port: i64, tags: &[&str], env: &str) -> Mutation {
    let draft = InstanceDraft {
        id: id.to_string(),
        service: service.to_string(),
        address: format!("10.0.0.{}", port % 250),
        port,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        environment: Some(env.to_string()),
        ..InstanceDraft::default()
    };
    Mutation::Register(validate(draft, &Limits::standard()).expect("valid draft"))
}

/// Waits until every node has applied `revision`.
fn converge(nodes: &[&Catalog], revision: u64) {
    let deadline = Instant::now() + CONVERGE;
    for (n, node) in nodes.iter().enumerate() {
        while node.revision() < revision {
            assert!(
                Instant::now() < deadline,
                "node {n} stuck at revision {} (want {revision}): {:?}",
                node.revision(),
                node.replication()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Every instance of a node: id → (service, port, tags, environment, health).
fn contents(node: &Catalog) -> BTreeMap<String, (String, u16, Vec<String>, String, Health)> {
    let answer = node.query(&Query::default(), &Page::default());
    answer
        .instances
        .iter()
        .map(|i| {
            (
                i.id().to_string(),
                (
                    i.service().to_string(),
                    i.fields.port,
                    i.fields.tags().map(str::to_string).collect(),
                    i.fields.environment().unwrap_or("").to_string(),
                    i.health,
                ),
            )
        })
        .collect()
}

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Dice(u64);

impl Dice {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[test]
fn three_nodes_with_random_concurrent_writes_converge_to_the_single_node_model() {
    let Some(redis) = TestRedis::any("three_nodes_converge") else {
        return;
    };
    let prefix = TestRedis::unique_prefix("converge");
    let nodes: Vec<Arc<Catalog>> = (0..3).map(|_| Arc::new(node(&redis, &prefix))).collect();
    // Four writer threads spread their writes over the three nodes; ids overlap, so the same
    // instance is written through several nodes at once.
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let nodes = nodes.clone();
            std::thread::spawn(move || {
                let mut dice = Dice(0x9E37_79B9_7F4A_7C15 ^ (w + 1));
                let mut acknowledged = Vec::new();
                for step in 0..150 {
                    let node = &nodes[dice.next(3) as usize];
                    let id = format!("i{}", dice.next(40));
                    let service = ["pay", "cart", "auth"][dice.next(3) as usize];
                    let env = ["prod", "staging"][dice.next(2) as usize];
                    let tag = ["canary", "blue", "green"][dice.next(3) as usize];
                    let mutation = match dice.next(10) {
                        0..=5 => register(&id, service, 1000 + step, &[tag], env),
                        6..=7 => Mutation::Deregister(id.clone()),
                        _ => Mutation::SetHealth {
                            id: id.clone(),
                            health: Health::Critical,
                        },
                    };
                    match node.write_blocking(vec![mutation.clone()]) {
                        Ok(outcome) if outcome.changed > 0 => {
                            acknowledged.push((outcome.revision, mutation))
                        }
                        Ok(_) | Err(WriteError::Rejected(MutationError::NotFound(_))) => {}
                        Err(other) => panic!("write failed: {other}"),
                    }
                }
                acknowledged
            })
        })
        .collect();
    let mut acknowledged: Vec<(u64, Mutation)> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer thread"))
        .collect();
    acknowledged.sort_by_key(|(revision, _)| *revision);
    let revisions: Vec<u64> = acknowledged.iter().map(|(r, _)| *r).collect();
    let mut distinct = revisions.clone();
    distinct.dedup();
    assert_eq!(
        distinct, revisions,
        "two writes were acknowledged with one revision"
    );
    let newest = *revisions.last().expect("some writes changed something");
    let refs: Vec<&Catalog> = nodes.iter().map(|n| n.as_ref()).collect();
    converge(&refs, newest);

    // The model: a single memory node applying the acknowledged writes in revision order.
    let model = Catalog::open(Store::Memory, CatalogSettings::standard()).expect("model");
    for (revision, mutation) in &acknowledged {
        let outcome = model
            .write_blocking(vec![mutation.clone()])
            .unwrap_or_else(|e| panic!("model rejects the write of revision {revision}: {e}"));
        assert_eq!(
            outcome.changed, 1,
            "write of revision {revision} is a no-op in the model"
        );
    }
    let expected = contents(&model);
    assert!(!expected.is_empty());
    for (n, node) in nodes.iter().enumerate() {
        assert_eq!(contents(node), expected, "node {n} differs from the model");
        assert_eq!(node.revision(), newest, "node {n} revision");
        for query in [
            Query {
                service: Some("pay".to_string()),
                ..Query::default()
            },
            Query {
                environment: Some("prod".to_string()),
                tags_all: vec!["canary".to_string()],
                ..Query::default()
            },
            Query {
                health: Some(Health::Critical),
                ..Query::default()
            },
        ] {
            let ids = |catalog: &Catalog| -> Vec<String> {
                catalog
                    .query(&query, &Page::default())
                    .instances
                    .iter()
                    .map(|i| i.id().to_string())
                    .collect()
            };
            assert_eq!(ids(node), ids(&model), "node {n}, query {query:?}");
        }
    }
}

#[test]
fn concurrent_writes_to_one_id_on_two_nodes_end_with_the_last_revision_everywhere() {
    let Some(redis) = TestRedis::any("one_id_two_nodes") else {
        return;
    };
    let prefix = TestRedis::unique_prefix("one-id");
    let a = Arc::new(node(&redis, &prefix));
    let b = Arc::new(node(&redis, &prefix));
    let threads: Vec<_> = [Arc::clone(&a), Arc::clone(&b)]
        .into_iter()
        .enumerate()
        .map(|(n, catalog)| {
            std::thread::spawn(move || {
                (0..100)
                    .map(|step| {
                        let port = (n as i64 + 1) * 1000 + step;
                        let outcome = catalog
                            .write_blocking(vec![register("same", "pay", port, &[], "prod")])
                            .expect("write");
                        (outcome.revision, port)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acknowledged: Vec<(u64, i64)> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("writer"))
        .collect();
    acknowledged.sort();
    let (last_revision, last_port) = *acknowledged.last().expect("writes");
    converge(&[&a, &b], last_revision);
    for (name, catalog) in [("a", &a), ("b", &b)] {
        let instance = catalog.get("same").expect("instance");
        assert_eq!(i64::from(instance.fields.port), last_port, "node {name}");
        assert_eq!(instance.modify_revision, last_revision, "node {name}");
    }
}

#[test]
fn compare_and_set_across_nodes_lets_only_one_writer_win() {
    let Some(redis) = TestRedis::any("cas_across_nodes") else {
        return;
    };
    let prefix = TestRedis::unique_prefix("cas");
    let a = node(&redis, &prefix);
    let b = node(&redis, &prefix);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    // cas=0: only if absent.
    let created = runtime
        .block_on(a.write_checked(
            vec![register("x", "pay", 1, &[], "prod")],
            vec![("x".to_string(), 0)],
        ))
        .expect("create");
    let read_revision = created.revision;
    // Both nodes read revision r; B's write lands first, so A's write with cas=r must fail,
    // even though A may not have applied B's write yet when it resolves.
    runtime
        .block_on(b.write_checked(
            vec![register("x", "pay", 2, &[], "prod")],
            vec![("x".to_string(), read_revision)],
        ))
        .expect("b wins");
    let lost = runtime.block_on(a.write_checked(
        vec![register("x", "pay", 3, &[], "prod")],
        vec![("x".to_string(), read_revision)],
    ));
    match lost {
        Err(WriteError::Rejected(MutationError::Conflict {
            expected, actual, ..
        })) => {
            assert_eq!(expected, read_revision);
            assert!(actual > read_revision);
        }
        other => panic!("a stale cas write must conflict, got {other:?}"),
    }
    let again = runtime.block_on(a.write_checked(
        vec![register("x", "pay", 4, &[], "prod")],
        vec![("x".to_string(), 0)],
    ));
    assert!(
        matches!(
            again,
            Err(WriteError::Rejected(MutationError::Conflict { .. }))
        ),
        "cas=0 on an existing instance: {again:?}"
    );
    converge(&[&a, &b], b.revision().max(a.revision()));
    assert_eq!(a.get("x").expect("x").fields.port, 2);
    assert_eq!(b.get("x").expect("x").fields.port, 2);
}

#[test]
fn an_expired_lease_is_carried_out_once_however_many_nodes_see_it() {
    let Some(redis) = TestRedis::any("lease_once") else {
        return;
    };
    let prefix = TestRedis::unique_prefix("lease");
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let mut settings = CatalogSettings::standard();
    settings.deregister_after_ms = Some(5_000);
    let nodes: Vec<Arc<Catalog>> = (0..3)
        .map(|_| {
            Arc::new(
                Catalog::open_with_clock(store(&redis, &prefix), settings.clone(), clock.clone())
                    .expect("node"),
            )
        })
        .collect();
    let mut draft = InstanceDraft {
        id: "leased".to_string(),
        service: "pay".to_string(),
        port: 80,
        ttl: Some("1s".to_string()),
        ..InstanceDraft::default()
    };
    draft.address = "10.0.0.1".to_string();
    let registration = validate(draft, &Limits::standard()).expect("valid");
    let registered = nodes[0]
        .write_blocking(vec![Mutation::Register(registration)])
        .expect("register")
        .revision;
    let refs: Vec<&Catalog> = nodes.iter().map(|n| n.as_ref()).collect();
    converge(&refs, registered);

    let fire_everywhere = || {
        let threads: Vec<_> = nodes
            .iter()
            .map(|n| {
                let n = Arc::clone(n);
                std::thread::spawn(move || n.expire_due())
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
    };
    clock.advance(1_500);
    fire_everywhere();
    fire_everywhere();
    converge(&refs, registered + 1);
    for n in &nodes {
        let instance = n.get("leased").expect("still there");
        assert_eq!(instance.health, Health::Critical);
        assert_eq!(instance.modify_revision, registered + 1);
        assert_eq!(
            n.revision(),
            registered + 1,
            "the expiry was written more than once"
        );
    }
    clock.advance(5_000);
    fire_everywhere();
    fire_everywhere();
    converge(&refs, registered + 2);
    for n in &nodes {
        assert!(n.get("leased").is_none(), "removed after deregister_after");
        assert_eq!(
            n.revision(),
            registered + 2,
            "the removal was written more than once"
        );
    }
}

#[test]
fn a_query_cached_on_one_node_is_not_served_after_another_node_changes_a_match() {
    let Some(redis) = TestRedis::any("cache_never_stale") else {
        return;
    };
    let prefix = TestRedis::unique_prefix("cache");
    let a = node(&redis, &prefix);
    let b = node(&redis, &prefix);
    let first = a
        .write_blocking(vec![register("c1", "pay", 80, &["canary"], "prod")])
        .expect("register");
    converge(&[&b], first.revision);
    let query = Query {
        service: Some("pay".to_string()),
        tags_all: vec!["canary".to_string()],
        ..Query::default()
    };
    let page = Page {
        limit: Some(10),
        cursor: None,
    };
    let ports = |answer: &svcmeta_core::QueryAnswer| -> Vec<u16> {
        answer.instances.iter().map(|i| i.fields.port).collect()
    };
    assert_eq!(ports(&b.query(&query, &page)), vec![80]);
    let (hits_before, _, _) = b.cache_counts();
    assert_eq!(ports(&b.query(&query, &page)), vec![80]);
    let (hits_after, _, _) = b.cache_counts();
    assert_eq!(
        hits_after,
        hits_before + 1,
        "the repeated query was not cached"
    );

    let change = a
        .write_blocking(vec![register("c1", "pay", 81, &["canary"], "prod")])
        .expect("change");
    converge(&[&b], change.revision);
    assert_eq!(
        ports(&b.query(&query, &page)),
        vec![81],
        "stale cached page"
    );
    let removal = a
        .write_blocking(vec![Mutation::Deregister("c1".to_string())])
        .expect("remove");
    converge(&[&b], removal.revision);
    assert!(
        b.query(&query, &page).instances.is_empty(),
        "stale cached page"
    );
}

#[test]
fn a_watch_on_one_node_wakes_for_a_write_through_another() {
    let Some(redis) = TestRedis::any("watch_wakes") else {
        return;
    };
    let prefix = TestRedis::unique_prefix("watch");
    let a = node(&redis, &prefix);
    let b = node(&redis, &prefix);
    let mut watcher = b.subscribe();
    let seen = *watcher.borrow_and_update();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let written = a
        .write_blocking(vec![register("w1", "pay", 80, &[], "prod")])
        .expect("write");
    let woken = runtime.block_on(async {
        tokio::time::timeout(CONVERGE, async {
            loop {
                if watcher.changed().await.is_err() {
                    return None;
                }
                let now = *watcher.borrow_and_update();
                if now >= written.revision {
                    return Some(now);
                }
            }
        })
        .await
    });
    assert_eq!(woken, Ok(Some(written.revision)), "from {seen}");
    let events = b.events_since(seen).expect("history");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].instance.id(), "w1");
}

#[test]
fn a_write_through_a_node_that_has_not_caught_up_yet_still_succeeds() {
    let Some(redis) = TestRedis::any("lagging_writer") else {
        return;
    };
    let prefix = TestRedis::unique_prefix("lag");
    let a = node(&redis, &prefix);
    let b = node(&redis, &prefix);
    // Register through A, then immediately change health through B: B may not have applied
    // the registration yet, so it must catch up and resolve again instead of saying 404.
    for round in 0..50 {
        let id = format!("lag{round}");
        a.write_blocking(vec![register(&id, "pay", 80, &[], "prod")])
            .expect("register");
        let outcome = b
            .write_blocking(vec![Mutation::SetHealth {
                id: id.clone(),
                health: Health::Warning,
            }])
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(outcome.changed, 1);
    }
    let unknown = b.write_blocking(vec![Mutation::Deregister("never-registered".to_string())]);
    assert!(matches!(
        unknown,
        Err(WriteError::Rejected(MutationError::NotFound(_)))
    ));
}

#[test]
fn a_node_opened_later_or_reopened_catches_up_with_everything() {
    let Some(redis) = TestRedis::any("late_node") else {
        return;
    };
    let prefix = TestRedis::unique_prefix("late");
    let a = node(&redis, &prefix);
    let mut last = 0;
    for n in 0..300 {
        last = a
            .write_blocking(vec![register(&format!("l{n}"), "pay", n, &[], "prod")])
            .expect("write")
            .revision;
    }
    {
        let c = node(&redis, &prefix);
        converge(&[&c], last);
        assert_eq!(contents(&c), contents(&a));
        // History before a node's snapshot is not claimed: the node says re-list.
        assert!(c.events_since(1).is_err());
    }
    for n in 0..50 {
        last = a
            .write_blocking(vec![Mutation::Deregister(format!("l{n}"))])
            .expect("write")
            .revision;
    }
    let reopened = node(&redis, &prefix);
    converge(&[&reopened], last);
    assert_eq!(contents(&reopened), contents(&a));
    assert_eq!(reopened.revision(), a.revision());
}

/// Waits until every node holds exactly what a freshly opened node loads from Redis.
fn converge_on_store(redis: &TestRedis, prefix: &str, nodes: &[&Catalog]) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let truth = contents(&node(redis, prefix));
        let agreeing = nodes.iter().filter(|n| contents(n) == truth).count();
        if agreeing == nodes.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} nodes differ from the store: {:?}",
            nodes.len() - agreeing,
            nodes.len(),
            nodes.iter().map(|n| n.replication()).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Retries a write refused while a node reloads a replaced data set.
fn write_eventually(node: &Catalog, mutation: Mutation) -> u64 {
    let deadline = Instant::now() + CONVERGE;
    loop {
        match node.write_blocking(vec![mutation.clone()]) {
            Ok(outcome) => return outcome.revision,
            Err(WriteError::Store(error)) if Instant::now() < deadline => {
                eprintln!("write refused while the node reloads: {error}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => panic!("write failed: {error}"),
        }
    }
}

#[test]
fn nodes_notice_a_deleted_data_set_and_follow_the_new_one() {
    let Some(redis) = TestRedis::any("deleted_data_set") else {
        return;
    };
    let prefix = TestRedis::unique_prefix("flushed");
    let a = node(&redis, &prefix);
    let b = node(&redis, &prefix);
    for n in 0..5 {
        a.write_blocking(vec![register(&format!("old{n}"), "pay", n, &[], "prod")])
            .expect("write");
    }
    converge(&[&b], a.revision());
    // Everything of the data set disappears (FLUSHDB, or an operator deleting the keys).
    SharedStore::open(&redis.url, &prefix, 16)
        .expect("store")
        .remove_data_set()
        .expect("delete");
    for n in 0..3 {
        write_eventually(&b, register(&format!("new{n}"), "pay", n, &[], "prod"));
    }
    converge_on_store(&redis, &prefix, &[&a, &b]);
    let ids: Vec<String> = contents(&a).into_keys().collect();
    assert_eq!(
        ids,
        ["new0", "new1", "new2"],
        "acknowledged writes after the flush"
    );
    assert!(a.replication().expect("redis").resyncs >= 2);
    // A watcher that resumes from the old history is told to re-list, not given nothing.
    assert!(a.events_since(5).is_err(), "history of a deleted data set");
}

#[test]
fn nodes_notice_a_data_set_restored_from_an_older_backup() {
    let Some(redis) = TestRedis::any("restored_data_set") else {
        return;
    };
    let prefix = TestRedis::unique_prefix("restored");
    let a = node(&redis, &prefix);
    let b = node(&redis, &prefix);
    for n in 0..10 {
        a.write_blocking(vec![register(&format!("kept{n}"), "pay", n, &[], "prod")])
            .expect("write");
    }
    let backup = redis.dump_data_set(&prefix);
    for n in 0..5 {
        a.write_blocking(vec![register(&format!("lost{n}"), "pay", n, &[], "prod")])
            .expect("write");
    }
    converge(&[&b], a.revision());
    // Redis comes back from the older backup, and a node that loaded it writes more than
    // was lost, so the revision passes the other nodes' before they look: only the changed
    // history (not a revision going backwards) can tell them.
    redis.restore_data_set(&prefix, &backup);
    let c = node(&redis, &prefix);
    c.write_blocking(
        (0..8)
            .map(|n| register(&format!("new{n}"), "cart", n, &[], "prod"))
            .collect(),
    )
    .expect("write after the restore");
    converge_on_store(&redis, &prefix, &[&a, &b, &c]);
    for (name, n) in [("a", &a), ("b", &b)] {
        let ids: Vec<String> = contents(n).into_keys().collect();
        assert!(
            !ids.iter().any(|id| id.starts_with("lost")),
            "node {name}: {ids:?}"
        );
        assert_eq!(ids.len(), 18, "node {name}: {ids:?}");
    }
}

#[test]
fn a_large_request_is_not_starved_by_small_writes_to_the_same_ids_elsewhere() {
    let Some(redis) = TestRedis::any("large_request_fence") else {
        return;
    };
    let prefix = TestRedis::unique_prefix("fence");
    let a = node(&redis, &prefix);
    let b = Arc::new(node(&redis, &prefix));
    const IDS: i64 = 5_000;
    a.write_blocking(
        (0..IDS)
            .map(|n| register(&format!("f{n}"), "pay", n, &[], "prod"))
            .collect(),
    )
    .expect("load");
    converge(&[&b], a.revision());
    // Writers on B keep changing random ids of the set while A rewrites all of them at once:
    // without the fence, A's request would lose the race on every attempt.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let b = Arc::clone(&b);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut dice = Dice(0xD1CE ^ (w + 7));
                let mut written = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n = dice.next(IDS as u64) as i64;
                    let port = 20_000 + dice.next(1000) as i64;
                    if b.write_blocking(vec![register(&format!("f{n}"), "pay", port, &[], "prod")])
                        .is_ok()
                    {
                        written += 1;
                    }
                }
                written
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let large = a.write_blocking(
        (0..IDS)
            .map(|n| register(&format!("f{n}"), "pay", 50_000 + n, &[], "prod"))
            .collect(),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let small: u64 = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    let large = large.unwrap_or_else(|e| panic!("the large request was starved: {e}"));
    assert_eq!(large.changed as i64, IDS);
    assert!(small > 0, "the small writers made no write at all");
    converge(&[&a, &b], a.revision().max(b.revision()));
    assert_eq!(contents(&a), contents(&b));
}

#[test]
fn a_compare_and_set_write_whose_answer_was_lost_is_never_reported_as_a_conflict() {
    // Killing every client connection needs a Redis of the test's own.
    let Some(redis) = TestRedis::private("cas_answer_lost") else {
        return;
    };
    let prefix = TestRedis::unique_prefix("cas-lost");
    let nodes: Vec<Arc<Catalog>> = (0..2).map(|_| Arc::new(node(&redis, &prefix))).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let stop = Arc::clone(&stop);
        let url = redis.url.clone();
        std::thread::spawn(move || {
            let client = redis::Client::open(url.as_str()).expect("url");
            let mut kills = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut c) = client.get_connection() {
                    let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                        .arg("KILL")
                        .arg("TYPE")
                        .arg("normal")
                        .query(&mut c);
                    kills += 1;
                }
                std::thread::sleep(Duration::from_millis(40));
            }
            kills
        })
    };
    // One writer per id, so a compare-and-set can only conflict with a write of its own.
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let node = Arc::clone(&nodes[w % 2]);
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                let id = format!("cas{w}");
                let mut conflicts = Vec::new();
                let mut made = 0;
                let until = Instant::now() + Duration::from_secs(2);
                for step in 0.. {
                    if Instant::now() > until {
                        break;
                    }
                    let seen = node.get(&id).map_or(0, |i| i.modify_revision);
                    let port = 1000 + step;
                    let result = runtime.block_on(node.write_checked(
                        vec![register(&id, "pay", port, &[], "prod")],
                        vec![(id.clone(), seen)],
                    ));
                    match result {
                        Ok(_) => made += 1,
                        Err(WriteError::Rejected(MutationError::Conflict { .. })) => {
                            conflicts.push(port)
                        }
                        // Unreachable, or stopped answering mid-write: the outcome is open.
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                (id, conflicts, made)
            })
        })
        .collect();
    let results: Vec<(String, Vec<i64>, u32)> = writers
        .into_iter()
        .map(|w| w.join().expect("writer"))
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let kills = killer.join().expect("killer");
    assert!(
        kills > 10,
        "the connections were hardly disturbed ({kills} kills)"
    );
    let made: u32 = results.iter().map(|(_, _, made)| made).sum();
    assert!(made > 0, "no write got through at all");
    let truth = node(&redis, &prefix);
    for (id, conflicts, _) in results {
        let Some(instance) = truth.get(&id) else {
            assert!(
                conflicts.is_empty(),
                "{id}: conflicts {conflicts:?} yet never written"
            );
            continue;
        };
        let port = i64::from(instance.fields.port);
        assert!(
            !conflicts.contains(&port),
            "{id}: the write of port {port} was answered 409 conflict, yet it is what the store holds"
        );
    }
}
