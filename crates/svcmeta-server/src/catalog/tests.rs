//! Catalog tests over `Store::Memory` and over an embedded store in a temporary directory:
//! all-or-nothing requests, revisions that never go back or get reused (also across a reopen),
//! group commit under concurrent writers, concurrent writes to one id, `max_instances`, and a
//! query cache that never serves an answer older than the revision it is stamped with.

use super::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Barrier;

use svcmeta_core::{validate, InstanceDraft, MetaCriterion, Registration};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A directory under the system temp dir, unique per test and process, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "svcmeta-catalog-{label}-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            now_ms()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Which store a test runs over; the embedded one keeps its directory alive.
enum Backing {
    Memory,
    Embedded(TempDir),
}

impl Backing {
    fn both(label: &str) -> Vec<Backing> {
        vec![Backing::Memory, Backing::Embedded(TempDir::new(label))]
    }

    fn name(&self) -> &'static str {
        match self {
            Backing::Memory => "memory",
            Backing::Embedded(_) => "embedded",
        }
    }

    fn open(&self, settings: CatalogSettings) -> Catalog {
        let store = match self {
            Backing::Memory => Store::Memory,
            Backing::Embedded(dir) => Store::open_embedded(dir.path()).expect("open embedded"),
        };
        Catalog::open(store, settings).expect("open catalog")
    }
}

fn draft(id: &str, service: &str) -> InstanceDraft {
    InstanceDraft {
        id: id.to_string(),
        service: service.to_string(),
        address: "10.0.0.1".to_string(),
        port: 8080,
        ..InstanceDraft::default()
    }
}

fn registration(draft: InstanceDraft) -> Registration {
    validate(draft, &Limits::standard()).expect("valid draft")
}

fn register(id: &str, service: &str) -> Mutation {
    Mutation::Register(registration(draft(id, service)))
}

fn register_port(id: &str, service: &str, port: i64) -> Mutation {
    let mut d = draft(id, service);
    d.port = port;
    Mutation::Register(registration(d))
}

fn deregister(id: &str) -> Mutation {
    Mutation::Deregister(id.to_string())
}

fn all_ids(catalog: &Catalog) -> Vec<String> {
    catalog
        .query(&Query::default(), &Page::default())
        .instances
        .iter()
        .map(|i| i.id().to_string())
        .collect()
}

fn settings_with_max(max_instances: u64) -> CatalogSettings {
    CatalogSettings {
        max_instances,
        ..CatalogSettings::standard()
    }
}

// ---------------------------------------------------------------------------------------------
// All-or-nothing requests
// ---------------------------------------------------------------------------------------------

#[test]
fn a_request_failing_at_its_third_mutation_changes_nothing_and_spends_no_revision() {
    for backing in Backing::both("atomic") {
        let kind = backing.name();
        let catalog = backing.open(CatalogSettings::standard());
        let first = catalog
            .write_blocking(vec![register("a", "web"), register("b", "web")])
            .expect("setup write");
        assert_eq!(first.revision, 2, "{kind}");
        assert_eq!(first.changed, 2, "{kind}");
        let commits = catalog.commits();
        let before_a = catalog.get("a").expect("a");

        let error = catalog
            .write_blocking(vec![
                register("c", "api"),
                register_port("a", "web", 9999),
                deregister("no-such-id"),
                register("d", "api"),
            ])
            .expect_err("the third mutation must fail the request");
        match error {
            WriteError::Rejected(MutationError::NotFound(id)) => {
                assert_eq!(id, "no-such-id", "{kind}")
            }
            other => panic!("{kind}: unexpected error {other:?}"),
        }
        assert_eq!(catalog.revision(), 2, "{kind}: no revision spent");
        assert_eq!(catalog.commits(), commits, "{kind}: nothing committed");
        assert!(catalog.get("c").is_none(), "{kind}: c must not exist");
        assert!(catalog.get("d").is_none(), "{kind}: d must not exist");
        assert_eq!(
            catalog.get("a").expect("a"),
            before_a,
            "{kind}: a untouched"
        );
        assert_eq!(all_ids(&catalog), vec!["a", "b"], "{kind}");

        // The next accepted write gets the very next revision: nothing was burnt.
        let next = catalog
            .write_blocking(vec![register("c", "api")])
            .expect("write after rejection");
        assert_eq!(next.revision, 3, "{kind}");
        assert_eq!(catalog.get("c").expect("c").create_revision, 3, "{kind}");
        drop(catalog);

        // For the embedded store the rejected request left no trace on disk either.
        if let Backing::Embedded(_) = &backing {
            let reopened = backing.open(CatalogSettings::standard());
            assert_eq!(reopened.revision(), 3);
            assert_eq!(all_ids(&reopened), vec!["c", "a", "b"]);
            assert_eq!(reopened.get("a").expect("a").fields.port, 8080);
        }
    }
}

#[test]
fn a_rejected_request_queued_with_accepted_ones_does_not_disturb_them() {
    // Many requests race into the committer together; the bad ones fail alone.
    for backing in Backing::both("mixed") {
        let kind = backing.name();
        let catalog = Arc::new(backing.open(CatalogSettings::standard()));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let catalog = Arc::clone(&catalog);
                std::thread::spawn(move || {
                    let mut results = Vec::new();
                    for n in 0..10 {
                        let id = format!("t{t}-{n}");
                        let mutations = if n % 3 == 0 {
                            vec![register(&id, "svc"), deregister(&format!("ghost-{t}-{n}"))]
                        } else {
                            vec![register(&id, "svc")]
                        };
                        results.push((id, n % 3 == 0, catalog.write_blocking(mutations)));
                    }
                    results
                })
            })
            .collect();
        let mut revisions = BTreeSet::new();
        let mut expected = BTreeSet::new();
        for thread in threads {
            for (id, bad, result) in thread.join().expect("writer thread") {
                if bad {
                    assert!(
                        matches!(
                            result,
                            Err(WriteError::Rejected(MutationError::NotFound(_)))
                        ),
                        "{kind}: {id}: {result:?}"
                    );
                    assert!(catalog.get(&id).is_none(), "{kind}: {id} must not exist");
                } else {
                    let outcome = result.expect("good write");
                    assert!(
                        revisions.insert(outcome.revision),
                        "{kind}: reused revision"
                    );
                    expected.insert(id);
                }
            }
        }
        let stored: BTreeSet<String> = all_ids(&catalog).into_iter().collect();
        assert_eq!(stored, expected, "{kind}");
        // Exactly one revision per accepted write, none for rejected ones: 1..=N without gaps.
        let n = expected.len() as u64;
        assert_eq!(revisions, (1..=n).collect::<BTreeSet<u64>>(), "{kind}");
        assert_eq!(catalog.revision(), n, "{kind}");
    }
}

#[test]
fn a_rejected_request_in_a_batch_leaves_the_batch_state_as_the_requests_before_it_made_it() {
    // Resolved as one batch: a rejected request's changes to ids that earlier requests of the
    // same batch wrote must be undone, so later requests see the earlier requests' state.
    let catalog = Catalog::open(Store::Memory, CatalogSettings::standard()).expect("open");
    catalog
        .write_blocking(vec![register("gone", "svc")])
        .expect("setup");
    let request = |mutations: Vec<Mutation>| {
        let (reply, _answer) = oneshot::channel();
        WriteRequest::new(mutations, Vec::new(), reply)
    };
    let batch = vec![
        // 1: accepted; a at port 1.
        request(vec![register_port("a", "svc", 1)]),
        // 2: rejected: changes a, removes gone, registers new, then fails.
        request(vec![
            register_port("a", "svc", 2),
            deregister("gone"),
            register("new", "svc"),
            deregister("ghost"),
        ]),
        // 3: a is as request 1 left it, so the same registration changes nothing.
        request(vec![register_port("a", "svc", 1)]),
        // 4: gone still exists and new does not.
        request(vec![deregister("gone")]),
        request(vec![deregister("new")]),
    ];
    let resolution = catalog.shared.resolve_batch(batch, 0, false);
    assert_eq!(resolution.accepted.len(), 3, "requests 1, 3 and 4");
    let rejected: Vec<_> = resolution.rejected.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(
        rejected,
        vec![
            MutationError::NotFound("ghost".to_string()),
            MutationError::NotFound("new".to_string()),
        ]
    );
    let changed: Vec<usize> = resolution.accepted.iter().map(|a| a.changed).collect();
    assert_eq!(changed, vec![1, 0, 1]);
    let changes: Vec<(String, Option<u16>)> = resolution
        .changes
        .iter()
        .map(|change| match change {
            Change::Put(instance) => (instance.id().to_string(), Some(instance.fields.port)),
            Change::Remove { id, .. } => (id.clone(), None),
        })
        .collect();
    assert_eq!(
        changes,
        vec![("a".to_string(), Some(1)), ("gone".to_string(), None)]
    );
    assert_eq!(
        resolution.events.len(),
        2,
        "one event per change, none of request 2's"
    );
    assert_eq!(resolution.revision, catalog.revision() + 2);
}

#[test]
fn retained_events_share_the_registry_records_whether_or_not_they_were_copied() {
    let catalog = Catalog::open(Store::Memory, CatalogSettings::standard()).expect("open");
    let event_of = |id: &str| {
        let events = catalog.events_since(0).expect("history");
        let event = events.iter().rev().find(|e| e.instance.id() == id);
        Arc::clone(&event.expect("event").instance)
    };
    // Interned by the writer: the record is stored as it came, and the event is that record.
    catalog
        .write_blocking(vec![register("b", "svc")])
        .expect("b");
    let stored = catalog.get("b").expect("b");
    assert!(Arc::ptr_eq(&event_of("b"), &stored));
    // Strings of its own where the index has keys: the registry stores a copy, and the
    // retained event must be that copy, not a second record.
    let (reply, _answer) = oneshot::channel();
    let mut request = WriteRequest::new(vec![register("a", "svc")], Vec::new(), reply);
    request.interned = true;
    let resolution = catalog.shared.resolve_batch(vec![request], 0, false);
    let carried = match resolution.changes.first() {
        Some(Change::Put(instance)) => Arc::clone(instance),
        other => panic!("{other:?}"),
    };
    catalog.shared.apply_stored(
        resolution.changes,
        resolution.events,
        &[],
        resolution.revision,
    );
    let stored = catalog.get("a").expect("a");
    assert!(!Arc::ptr_eq(&carried, &stored), "the record was copied");
    assert!(Arc::ptr_eq(&event_of("a"), &stored));
}

#[test]
fn a_large_request_resolves_each_mutation_against_the_state_before_it() {
    // Large enough for the registry's states to be read on two threads before resolving.
    let catalog = Catalog::open(Store::Memory, CatalogSettings::standard()).expect("open");
    let first: Vec<Mutation> = (0..5_000)
        .map(|n| register(&format!("a-{n}"), "svc"))
        .collect();
    let created = catalog.write_blocking(first).expect("first").revision;
    let original = |n: usize| catalog.get(&format!("a-{n}")).expect("a").create_revision;
    let originals: Vec<u64> = (0..5_000).map(original).collect();
    // Existing and new ids interleaved, so that each mutation's neighbour is in another state.
    let mut second: Vec<Mutation> = Vec::new();
    for n in 0..2_000 {
        second.push(deregister(&format!("a-{n}")));
        second.push(register(&format!("b-{n}"), "other"));
    }
    for n in 2_000..4_000 {
        second.push(register_port(&format!("a-{n}"), "svc", 9));
        second.push(register(&format!("c-{n}"), "other"));
    }
    second.push(deregister("b-0"));
    second.push(register_port("a-4999", "svc", 8080));
    let outcome = catalog.write_blocking(second).expect("second");
    assert_eq!(
        outcome.changed, 8_001,
        "the last registration changes nothing"
    );
    assert_eq!(catalog.index_stats(0).instances, 3_000 + 1_999 + 2_000);
    for (n, &original) in originals.iter().enumerate() {
        let id = format!("a-{n}");
        match (n, catalog.get(&id)) {
            (0..2_000, None) => {}
            (2_000..4_000, Some(replaced)) => {
                assert_eq!(replaced.fields.port, 9, "{id}");
                assert_eq!(replaced.create_revision, original, "{id}");
                assert!(replaced.modify_revision > created, "{id}");
            }
            (4_000.., Some(untouched)) => {
                assert_eq!(untouched.modify_revision, original, "{id}");
            }
            (_, state) => panic!("{id}: {state:?}"),
        }
    }
    for n in 1..4_000 {
        let id = if n < 2_000 {
            format!("b-{n}")
        } else {
            format!("c-{n}")
        };
        let new = catalog.get(&id).expect("new instance");
        assert_eq!(new.create_revision, new.modify_revision, "{id}");
        assert!(new.create_revision > created, "{id}");
    }
    assert!(catalog.get("b-0").is_none());
}

// ---------------------------------------------------------------------------------------------
// Revisions
// ---------------------------------------------------------------------------------------------

#[test]
fn revisions_strictly_increase_and_survive_reopening_the_embedded_store() {
    let dir = TempDir::new("reopen");
    let backing = Backing::Embedded(dir);
    let mut seen = Vec::new();
    {
        let catalog = backing.open(CatalogSettings::standard());
        assert_eq!(catalog.revision(), 0);
        for n in 0..5 {
            let outcome = catalog
                .write_blocking(vec![register(&format!("i{n}"), "web")])
                .expect("write");
            seen.push(outcome.revision);
        }
        // Replace, then end on a removal: the newest revision is one no instance carries.
        seen.push(
            catalog
                .write_blocking(vec![register_port("i0", "web", 1)])
                .expect("replace")
                .revision,
        );
        seen.push(
            catalog
                .write_blocking(vec![deregister("i4")])
                .expect("deregister")
                .revision,
        );
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(catalog.revision(), *seen.last().expect("seen"));
    }
    let last = *seen.last().expect("seen");
    {
        let catalog = backing.open(CatalogSettings::standard());
        assert_eq!(catalog.revision(), last, "the revision survives the reopen");
        assert_eq!(all_ids(&catalog), vec!["i0", "i1", "i2", "i3"]);
        let i0 = catalog.get("i0").expect("i0");
        assert_eq!(i0.fields.port, 1);
        assert_eq!(i0.create_revision, seen[0]);
        assert_eq!(i0.modify_revision, seen[5]);

        let next = catalog
            .write_blocking(vec![register("i4", "web")])
            .expect("write after reopen");
        assert!(next.revision > last, "{} must exceed {last}", next.revision);
        seen.push(next.revision);
        let replaced = catalog
            .write_blocking(vec![register_port("i1", "web", 2)])
            .expect("replace after reopen");
        assert!(replaced.revision > next.revision);
        let i1 = catalog.get("i1").expect("i1");
        assert_eq!(
            i1.create_revision, seen[1],
            "create_revision kept on replace"
        );
        assert_eq!(i1.modify_revision, replaced.revision);
        seen.push(replaced.revision);
    }
    // A reopen with no write in between changes nothing either.
    let catalog = backing.open(CatalogSettings::standard());
    assert_eq!(catalog.revision(), *seen.last().expect("seen"));
    let again = catalog
        .write_blocking(vec![deregister("i2")])
        .expect("write after second reopen");
    assert!(again.revision > *seen.last().expect("seen"));
}

#[test]
fn an_unchanged_re_registration_spends_no_revision_and_no_commit() {
    for backing in Backing::both("noop") {
        let kind = backing.name();
        let catalog = backing.open(CatalogSettings::standard());
        catalog
            .write_blocking(vec![register("a", "web")])
            .expect("first");
        let commits = catalog.commits();
        let outcome = catalog
            .write_blocking(vec![register("a", "web")])
            .expect("same again");
        assert_eq!(outcome.changed, 0, "{kind}");
        assert_eq!(outcome.revision, 1, "{kind}");
        assert_eq!(catalog.revision(), 1, "{kind}");
        assert_eq!(catalog.commits(), commits, "{kind}");
        assert_eq!(catalog.get("a").expect("a").modify_revision, 1, "{kind}");
    }
}

// ---------------------------------------------------------------------------------------------
// Group commit and concurrency
// ---------------------------------------------------------------------------------------------

#[test]
fn one_request_with_many_mutations_is_one_commit() {
    for backing in Backing::both("onecommit") {
        let kind = backing.name();
        let catalog = backing.open(CatalogSettings::standard());
        let before = catalog.commits();
        let mutations: Vec<Mutation> = (0..200)
            .map(|n| register(&format!("bulk-{n:03}"), "bulk"))
            .collect();
        let outcome = catalog.write_blocking(mutations).expect("bulk");
        assert_eq!(catalog.commits(), before + 1, "{kind}");
        assert_eq!(outcome.changed, 200, "{kind}");
        assert_eq!(outcome.revision, 200, "{kind}");
        assert_eq!(outcome.states.len(), 200, "{kind}");
        // Within the request every mutation has its own revision, in order.
        for (n, state) in outcome.states.iter().enumerate() {
            let instance = state.as_ref().expect("registered");
            assert_eq!(instance.modify_revision, n as u64 + 1, "{kind}");
        }
    }
}

#[test]
fn sixteen_concurrent_writers_all_succeed_and_share_commits() {
    const THREADS: usize = 16;
    const PER_THREAD: usize = 25;
    for backing in Backing::both("group") {
        let kind = backing.name();
        let catalog = Arc::new(backing.open(CatalogSettings::standard()));
        let barrier = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let catalog = Arc::clone(&catalog);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..PER_THREAD)
                        .map(|n| {
                            catalog
                                .write_blocking(vec![register(
                                    &format!("w{t:02}-{n:02}"),
                                    &format!("svc{}", t % 4),
                                )])
                                .expect("concurrent write")
                                .revision
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut all = BTreeSet::new();
        for thread in threads {
            let revisions = thread.join().expect("writer thread");
            assert!(
                revisions.windows(2).all(|w| w[0] < w[1]),
                "{kind}: one writer's revisions must increase: {revisions:?}"
            );
            for revision in revisions {
                assert!(all.insert(revision), "{kind}: revision {revision} reused");
            }
        }
        let writes = (THREADS * PER_THREAD) as u64;
        assert_eq!(all, (1..=writes).collect::<BTreeSet<u64>>(), "{kind}");
        assert_eq!(catalog.revision(), writes, "{kind}");
        assert!(
            catalog.commits() <= writes,
            "{kind}: {} commits for {writes} writes",
            catalog.commits()
        );
        let ids = all_ids(&catalog);
        assert_eq!(ids.len(), THREADS * PER_THREAD, "{kind}");
        for t in 0..THREADS {
            for n in 0..PER_THREAD {
                let id = format!("w{t:02}-{n:02}");
                let instance = catalog.get(&id).expect("every write is visible");
                assert_eq!(instance.service(), format!("svc{}", t % 4), "{kind}");
            }
        }
        if let Backing::Embedded(_) = &backing {
            drop(catalog);
            let reopened = backing.open(CatalogSettings::standard());
            assert_eq!(all_ids(&reopened).len(), THREADS * PER_THREAD);
            assert_eq!(reopened.revision(), writes);
        }
    }
}

#[test]
fn concurrent_writes_to_one_id_leave_exactly_the_last_one() {
    const THREADS: usize = 8;
    const PER_THREAD: i64 = 20;
    for backing in Backing::both("sameid") {
        let kind = backing.name();
        let catalog = Arc::new(backing.open(CatalogSettings::standard()));
        let barrier = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS as i64)
            .map(|t| {
                let catalog = Arc::clone(&catalog);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..PER_THREAD)
                        .map(|n| {
                            // Every write is distinct, so every write spends a revision.
                            let port = 1000 + t * 100 + n;
                            let mut d = draft("same", if t % 2 == 0 { "even" } else { "odd" });
                            d.port = port;
                            d.tags = vec![format!("writer={t}")];
                            d.meta = BTreeMap::from([(format!("k{t}"), n.to_string())]);
                            let mutation = Mutation::Register(registration(d.clone()));
                            let outcome = catalog
                                .write_blocking(vec![mutation])
                                .expect("concurrent write");
                            assert_eq!(outcome.changed, 1);
                            (outcome.revision, d)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut written: Vec<(u64, InstanceDraft)> = Vec::new();
        for thread in threads {
            written.extend(thread.join().expect("writer thread"));
        }
        written.sort_by_key(|(revision, _)| *revision);
        let revisions: Vec<u64> = written.iter().map(|(r, _)| *r).collect();
        let total = THREADS as u64 * PER_THREAD as u64;
        assert_eq!(revisions, (1..=total).collect::<Vec<u64>>(), "{kind}");

        let (last_revision, last_draft) = written.last().expect("writes").clone();
        let ids = all_ids(&catalog);
        assert_eq!(ids, vec!["same"], "{kind}: exactly one instance");
        let instance = catalog.get("same").expect("same");
        let expected = registration(last_draft).fields().clone();
        assert_eq!(instance.fields, expected, "{kind}: the last write wins");
        assert_eq!(instance.modify_revision, last_revision, "{kind}");
        assert_eq!(instance.create_revision, 1, "{kind}");
        assert_eq!(catalog.revision(), last_revision, "{kind}");
        // The service moved between `even` and `odd`: only the current one lists it.
        let (services, _) = catalog.services();
        assert_eq!(services.len(), 1, "{kind}: {services:?}");
        assert_eq!(services[0].name, expected.service(), "{kind}");
        let other = if expected.service() == "even" {
            "odd"
        } else {
            "even"
        };
        let query = Query {
            service: Some(other.to_string()),
            ..Query::default()
        };
        assert_eq!(catalog.query(&query, &Page::default()).total, 0, "{kind}");
        assert_eq!(catalog.count(&query).0, 0, "{kind}");
    }
}

// ---------------------------------------------------------------------------------------------
// max_instances
// ---------------------------------------------------------------------------------------------

#[test]
fn a_full_registry_refuses_new_instances_and_changes_nothing() {
    for backing in Backing::both("full") {
        let kind = backing.name();
        let catalog = backing.open(settings_with_max(5));
        let ids: Vec<String> = (0..5).map(|n| format!("i{n}")).collect();
        catalog
            .write_blocking(ids.iter().map(|id| register(id, "web")).collect())
            .expect("five fit");
        let revision = catalog.revision();
        let commits = catalog.commits();

        let error = catalog
            .write_blocking(vec![register("i5", "web")])
            .expect_err("the sixth does not fit");
        assert!(
            matches!(
                error,
                WriteError::Rejected(MutationError::Full { limit: 5 })
            ),
            "{kind}: {error:?}"
        );
        // A request that replaces one and adds one fails whole: the replacement is not kept.
        let error = catalog
            .write_blocking(vec![register_port("i0", "web", 1), register("i6", "web")])
            .expect_err("still full");
        assert!(
            matches!(
                error,
                WriteError::Rejected(MutationError::Full { limit: 5 })
            ),
            "{kind}: {error:?}"
        );
        assert_eq!(catalog.revision(), revision, "{kind}");
        assert_eq!(catalog.commits(), commits, "{kind}");
        assert_eq!(all_ids(&catalog), ids, "{kind}");
        assert_eq!(catalog.get("i0").expect("i0").fields.port, 8080, "{kind}");

        // Replacing at the limit works, and so does removing then adding in one request.
        catalog
            .write_blocking(vec![register_port("i1", "web", 2)])
            .expect("replace at the limit");
        catalog
            .write_blocking(vec![deregister("i4"), register("i5", "web")])
            .expect("remove then add");
        assert_eq!(
            all_ids(&catalog),
            vec!["i0", "i1", "i2", "i3", "i5"],
            "{kind}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Query cache
// ---------------------------------------------------------------------------------------------

fn service_query(service: &str) -> Query {
    Query {
        service: Some(service.to_string()),
        ..Query::default()
    }
}

#[test]
fn cache_hits_are_counted_and_only_writes_in_scope_invalidate() {
    let catalog = Backing::Memory.open(CatalogSettings::standard());
    catalog
        .write_blocking(vec![register("w1", "Web"), register("a1", "api")])
        .expect("setup");
    assert_eq!(catalog.cache_counts(), (0, 0, 0));

    let web = service_query("web");
    let all = Query::default();
    let first = catalog.query(&web, &Page::default());
    assert_eq!(catalog.cache_counts(), (0, 1, 1), "first lookup misses");
    let second = catalog.query(&service_query("WEB"), &Page::default());
    assert_eq!(
        catalog.cache_counts(),
        (1, 1, 1),
        "same query in other case hits"
    );
    assert_eq!(first, second);

    catalog.query(&all, &Page::default());
    catalog.query(&all, &Page::default());
    assert_eq!(catalog.cache_counts(), (2, 2, 2));

    // A write to another service leaves the service-scoped entry usable, but not the global one.
    catalog
        .write_blocking(vec![register("a2", "api")])
        .expect("api write");
    let third = catalog.query(&web, &Page::default());
    assert_eq!(catalog.cache_counts().0, 3, "web entry still valid");
    assert_eq!(third.instances, first.instances);
    assert_eq!(
        third.revision,
        catalog.revision(),
        "stamped with the current revision"
    );
    let everything = catalog.query(&all, &Page::default());
    assert_eq!(catalog.cache_counts().1, 3, "global entry invalidated");
    assert_eq!(everything.total, 3);

    // A write in scope invalidates it.
    catalog
        .write_blocking(vec![register("w2", "web")])
        .expect("web write");
    let fourth = catalog.query(&web, &Page::default());
    assert_eq!(catalog.cache_counts().1, 4);
    assert_eq!(fourth.total, 2);

    // Different pages are different entries.
    let page = Page {
        limit: Some(1),
        cursor: None,
    };
    let one = catalog.query(&web, &page);
    assert_eq!(one.instances.len(), 1);
    assert!(one.next_cursor.is_some());
    assert_eq!(catalog.cache_counts().1, 5);

    // With the cache disabled nothing is looked up.
    let uncached = Backing::Memory.open(CatalogSettings {
        cache_enabled: false,
        ..CatalogSettings::standard()
    });
    uncached
        .write_blocking(vec![register("w1", "web")])
        .expect("setup");
    uncached.query(&web, &Page::default());
    uncached.query(&web, &Page::default());
    assert_eq!(uncached.cache_counts(), (0, 0, 0));
}

#[test]
fn a_replaced_meta_key_disappears_from_cached_answers() {
    let catalog = Backing::Memory.open(CatalogSettings::standard());
    let mut d = draft("a", "web");
    d.meta = BTreeMap::from([("team".into(), "x".into()), ("old".into(), "y".into())]);
    catalog
        .write_blocking(vec![Mutation::Register(registration(d))])
        .expect("first");
    let present = Query {
        service: Some("web".into()),
        meta: vec![("old".into(), MetaCriterion::Present)],
        ..Query::default()
    };
    assert_eq!(catalog.query(&present, &Page::default()).total, 1);
    assert_eq!(catalog.query(&present, &Page::default()).total, 1);
    assert_eq!(catalog.cache_counts().0, 1, "the answer is cached");
    let mut d = draft("a", "web");
    d.meta = BTreeMap::from([("team".into(), "x".into())]);
    catalog
        .write_blocking(vec![Mutation::Register(registration(d))])
        .expect("replace");
    assert_eq!(catalog.query(&present, &Page::default()).total, 0);
    assert_eq!(catalog.count(&present).0, 0);
    assert!(!catalog.get("a").expect("a").fields.meta.contains_key("old"));
}

/// What a reader saw: the query index, the page, and the answer.
struct Observation {
    query: usize,
    limit: Option<usize>,
    answer: QueryAnswer,
}

/// The expected answer computed from scratch from a state (no index, no cache).
fn reference_answer(
    state: &BTreeMap<String, Arc<Instance>>,
    query: &Query,
    limit: Option<usize>,
) -> (u64, Vec<Arc<Instance>>) {
    let mut matches: Vec<&Arc<Instance>> = state.values().filter(|i| query.matches(i)).collect();
    matches.sort_by(|a, b| {
        (a.service().to_ascii_lowercase(), a.id()).cmp(&(b.service().to_ascii_lowercase(), b.id()))
    });
    let total = matches.len() as u64;
    let page = matches
        .into_iter()
        .take(limit.unwrap_or(usize::MAX))
        .cloned()
        .collect();
    (total, page)
}

#[test]
fn the_cache_never_serves_stale_answers_under_concurrent_writes_and_reads() {
    const WRITERS: usize = 3;
    const READERS: usize = 4;
    const WRITES_PER_WRITER: usize = 150;
    const READS_PER_READER: usize = 400;
    const MAX_READS_PER_READER: usize = 50_000;
    let services = ["web", "Web", "api", "db"];
    let queries: Vec<Query> = vec![
        Query::default(),
        service_query("web"),
        service_query("api"),
        service_query("db"),
        Query {
            service: Some("WEB".into()),
            tags_all: vec!["canary".into()],
            ..Query::default()
        },
        Query {
            tags_none: vec!["canary".into()],
            ..Query::default()
        },
        Query {
            meta: vec![("team".into(), MetaCriterion::Present)],
            ..Query::default()
        },
        Query {
            service: Some("api".into()),
            meta: vec![("team".into(), MetaCriterion::Equals("blue".into()))],
            ..Query::default()
        },
        Query {
            environment: Some("prod".into()),
            ..Query::default()
        },
    ];
    let limits = [None, Some(2)];

    for backing in Backing::both("stale") {
        let kind = backing.name();
        let catalog = Arc::new(backing.open(CatalogSettings::standard()));
        let queries = Arc::new(queries.clone());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let catalog = Arc::clone(&catalog);
                std::thread::spawn(move || {
                    // (revision, id, state after) for every write that changed something.
                    let mut log: Vec<(u64, String, Option<Arc<Instance>>)> = Vec::new();
                    let mut seed = 0x9e37_79b9_u64.wrapping_mul(w as u64 + 1);
                    for n in 0..WRITES_PER_WRITER {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        // Writers share ids, so they race on the same instances.
                        let id = format!("id{}", seed % 12);
                        let mutation = if seed % 7 == 3 {
                            deregister(&id)
                        } else {
                            let mut d = draft(&id, services[(seed >> 8) as usize % 4]);
                            d.port = (n % 50) as i64;
                            if seed % 3 == 1 {
                                d.tags = vec!["canary".into()];
                            }
                            if seed % 5 < 2 {
                                let team = if seed & 1 == 1 { "blue" } else { "green" };
                                d.meta = BTreeMap::from([("team".into(), team.into())]);
                            }
                            if (seed >> 3) % 4 == 1 {
                                d.environment = Some("prod".into());
                            }
                            Mutation::Register(registration(d))
                        };
                        match catalog.write_blocking(vec![mutation]) {
                            Ok(outcome) if outcome.changed == 1 => {
                                let state = outcome.states.into_iter().next().flatten();
                                log.push((outcome.revision, id, state));
                            }
                            Ok(_) => {}
                            Err(WriteError::Rejected(MutationError::NotFound(_))) => {}
                            Err(other) => panic!("write failed: {other}"),
                        }
                    }
                    log
                })
            })
            .collect();
        let readers: Vec<_> = (0..READERS)
            .map(|r| {
                let catalog = Arc::clone(&catalog);
                let queries = Arc::clone(&queries);
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut n = r;
                    // Keep reading while writers run, plus a minimum number of reads.
                    while seen.len() < READS_PER_READER
                        || (!stop.load(Ordering::Relaxed) && seen.len() < MAX_READS_PER_READER)
                    {
                        let query = n % queries.len();
                        let limit = limits[(n / queries.len()) % 2];
                        let page = Page {
                            limit,
                            cursor: None,
                        };
                        let answer = catalog.query(&queries[query], &page);
                        seen.push(Observation {
                            query,
                            limit,
                            answer,
                        });
                        n += 1;
                        // Let the writers run between reads, so reads spread over revisions.
                        std::thread::yield_now();
                    }
                    seen
                })
            })
            .collect();

        let mut log = Vec::new();
        for writer in writers {
            log.extend(writer.join().expect("writer"));
        }
        stop.store(true, Ordering::Relaxed);
        let mut observations = Vec::new();
        for reader in readers {
            observations.extend(reader.join().expect("reader"));
        }

        // Every revision belongs to exactly one logged change.
        log.sort_by_key(|(revision, _, _)| *revision);
        let final_revision = catalog.revision();
        let revisions: Vec<u64> = log.iter().map(|(r, _, _)| *r).collect();
        assert_eq!(
            revisions,
            (1..=final_revision).collect::<Vec<u64>>(),
            "{kind}"
        );

        // Replay the log in revision order and check each observation against the state at
        // the revision it is stamped with.
        observations.sort_by_key(|o| o.answer.revision);
        let mut state: BTreeMap<String, Arc<Instance>> = BTreeMap::new();
        let mut applied = 0usize;
        for observation in &observations {
            while applied < log.len() && log[applied].0 <= observation.answer.revision {
                let (_, id, after) = &log[applied];
                match after {
                    Some(instance) => {
                        state.insert(id.clone(), Arc::clone(instance));
                    }
                    None => {
                        state.remove(id);
                    }
                }
                applied += 1;
            }
            let query = &queries[observation.query];
            let (total, page) = reference_answer(&state, query, observation.limit);
            assert_eq!(
                observation.answer.total, total,
                "{kind}: total of {query:?} at revision {}",
                observation.answer.revision
            );
            assert_eq!(
                observation.answer.instances, page,
                "{kind}: page of {query:?} (limit {:?}) at revision {}",
                observation.limit, observation.answer.revision
            );
        }
        // Readers may stop early (they cap their reads); bring the state to the end.
        for (_, id, after) in &log[applied..] {
            match after {
                Some(instance) => {
                    state.insert(id.clone(), Arc::clone(instance));
                }
                None => {
                    state.remove(id);
                }
            }
        }
        let (hits, misses, _) = catalog.cache_counts();
        assert_eq!(
            hits + misses,
            observations.len() as u64,
            "{kind}: every query looked up the cache once"
        );

        // At rest, a second catalog with the cache disabled fed the final state agrees.
        let uncached = Backing::Memory.open(CatalogSettings {
            cache_enabled: false,
            ..CatalogSettings::standard()
        });
        let replay: Vec<Mutation> = state
            .values()
            .map(|i| {
                let f = &i.fields;
                Mutation::Register(registration(InstanceDraft {
                    id: f.id.clone(),
                    service: f.service().to_string(),
                    address: f.address.clone(),
                    port: i64::from(f.port),
                    tags: f.tags().map(str::to_string).collect(),
                    version: f.version().map(str::to_string),
                    environment: f.environment().map(str::to_string),
                    region: f.region().map(str::to_string),
                    meta: f
                        .meta_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ttl: None,
                }))
            })
            .collect();
        if !replay.is_empty() {
            uncached.write_blocking(replay).expect("replay");
        }
        for query in queries.iter() {
            for limit in limits {
                let page = Page {
                    limit,
                    cursor: None,
                };
                // Ask twice so the second answer comes from the cache.
                catalog.query(query, &page);
                let cached = catalog.query(query, &page);
                let fresh = uncached.query(query, &page);
                let ids = |a: &QueryAnswer| -> Vec<String> {
                    a.instances.iter().map(|i| i.id().to_string()).collect()
                };
                assert_eq!(cached.total, fresh.total, "{kind}: {query:?}");
                assert_eq!(ids(&cached), ids(&fresh), "{kind}: {query:?}");
                assert_eq!(cached.revision, final_revision, "{kind}");
            }
        }
        assert!(
            catalog.cache_counts().0 > 0,
            "{kind}: the cache served hits"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

#[test]
fn writes_after_shutdown_are_refused_and_reads_still_work() {
    let catalog = Backing::Memory.open(CatalogSettings::standard());
    catalog
        .write_blocking(vec![register("a", "web")])
        .expect("write");
    catalog.shutdown();
    let error = catalog
        .write_blocking(vec![register("b", "web")])
        .expect_err("shut down");
    assert!(matches!(error, WriteError::ShuttingDown), "{error:?}");
    assert_eq!(all_ids(&catalog), vec!["a"]);
    // Shutting down twice is harmless.
    catalog.shutdown();
}

#[test]
fn the_revision_watch_sees_every_commit() {
    let catalog = Backing::Memory.open(CatalogSettings::standard());
    let receiver = catalog.subscribe();
    assert_eq!(*receiver.borrow(), 0);
    catalog
        .write_blocking(vec![register("a", "web"), register("b", "web")])
        .expect("write");
    assert_eq!(*receiver.borrow(), 2);
}

#[test]
fn lowering_a_validation_limit_keeps_stored_instances_visible_and_counted() {
    let dir = TempDir::new("lowered-tags");
    let backing = Backing::Embedded(dir);
    let mut tagged = draft("tagged", "web");
    tagged.tags = (0..10).map(|n| format!("t{n}")).collect();
    {
        let catalog = backing.open(CatalogSettings::standard());
        catalog
            .write_blocking(vec![
                Mutation::Register(registration(tagged.clone())),
                register("plain", "web"),
            ])
            .expect("within the standard limits");
    }
    let mut limits = Limits::standard();
    limits.max_tags = 5;
    let catalog = backing.open(CatalogSettings {
        limits: limits.clone(),
        ..CatalogSettings::standard()
    });
    // Still stored, found by its tags, and counted as over the current limits.
    assert_eq!(all_ids(&catalog), vec!["plain", "tagged"]);
    let by_tag = Query {
        tags_all: vec!["t9".into()],
        ..Query::default()
    };
    assert_eq!(catalog.query(&by_tag, &Page::default()).total, 1);
    let stats = catalog.index_stats(10);
    assert_eq!(stats.instances, 2);
    assert_eq!(stats.instances_over_limits, 1);
    // A health change (what a renewal does) still works for it.
    catalog
        .write_blocking(vec![Mutation::SetHealth {
            id: "tagged".into(),
            health: svcmeta_core::Health::Warning,
        }])
        .expect("renewal of an instance over the lowered limit");
    // New writes are checked against the lowered limit.
    let errors = validate(tagged, &limits).expect_err("ten tags, limit five");
    assert_eq!(errors.violations[0].field, "tags");
}

#[test]
fn lowering_max_instances_keeps_deregistration_and_renewal_working() {
    let backing = Backing::Embedded(TempDir::new("lowered"));
    {
        let catalog = backing.open(settings_with_max(10));
        catalog
            .write_blocking((0..5).map(|n| register(&format!("i{n}"), "web")).collect())
            .expect("five fit");
    }
    let catalog = backing.open(settings_with_max(3));
    assert_eq!(all_ids(&catalog).len(), 5);
    assert!(matches!(
        catalog.write_blocking(vec![register("new", "web")]),
        Err(WriteError::Rejected(MutationError::Full { limit: 3 }))
    ));
    catalog
        .write_blocking(vec![Mutation::SetHealth {
            id: "i0".into(),
            health: svcmeta_core::Health::Critical,
        }])
        .expect("renewal over a lowered limit");
    catalog
        .write_blocking(vec![deregister("i1")])
        .expect("deregistration over a lowered limit");
    assert_eq!(all_ids(&catalog).len(), 4);
}
