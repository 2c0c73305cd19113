//! Registry tests: the planner and paging against the reference semantics of `Query::matches`,
//! case-insensitive services, replace-means-replace, index bookkeeping under churn, scope
//! revisions and `resolve`, a model-based property test, and a query-cache staleness test.

use super::*;
use crate::model::Meta;

use proptest::prelude::*;

use crate::cache::{CachedPage, QueryCache};
use crate::model::{InstanceDraft, InstanceFields};
use crate::validate::validate;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A registry driven the way the server drives it: `resolve` at the next revision, then `apply`.
struct Harness {
    registry: Registry,
    now: u64,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            registry: Registry::new(),
            now: 1_700_000_000_000,
        }
    }

    fn mutate(&mut self, mutation: Mutation) -> Result<Option<Change>, MutationError> {
        let revision = self.registry.revision() + 1;
        self.now += 1_000;
        let current = self.registry.get(mutation.id()).cloned();
        let change = resolve(current.as_ref(), mutation, revision, self.now)?;
        if let Some(change) = &change {
            self.registry.apply(change.clone());
        }
        Ok(change)
    }

    fn register(&mut self, draft: InstanceDraft) -> Option<Change> {
        self.mutate(Mutation::Register(registration(draft)))
            .expect("registration cannot fail")
    }

    fn deregister(&mut self, id: &str) -> Option<Change> {
        self.mutate(Mutation::Deregister(id.to_string()))
            .expect("deregistering a live instance")
    }

    fn set_health(&mut self, id: &str, health: Health) -> Option<Change> {
        self.mutate(Mutation::SetHealth {
            id: id.to_string(),
            health,
        })
        .expect("setting the health of a live instance")
    }

    fn query(&self, query: &Query) -> Vec<String> {
        ids(&self.registry.query(query, &Page::default()))
    }
}

fn registration(draft: InstanceDraft) -> Registration {
    validate(draft, &Limits::standard()).unwrap_or_else(|errors| panic!("invalid draft: {errors}"))
}

fn draft(id: &str, service: &str) -> InstanceDraft {
    InstanceDraft {
        id: id.to_string(),
        service: service.to_string(),
        address: "10.0.0.1".to_string(),
        port: 80,
        ..InstanceDraft::default()
    }
}

fn draft_with(id: &str, service: &str, change: impl FnOnce(&mut InstanceDraft)) -> InstanceDraft {
    let mut d = draft(id, service);
    change(&mut d);
    d
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

fn meta_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ids(answer: &QueryAnswer) -> Vec<String> {
    answer
        .instances
        .iter()
        .map(|i| i.id().to_string())
        .collect()
}

fn version(text: &str) -> Option<VersionCriterion> {
    Some(VersionCriterion::parse(text).expect("a valid version criterion"))
}

fn service_q(service: &str) -> Query {
    Query {
        service: Some(service.to_string()),
        ..Query::default()
    }
}

/// The result order by definition: lower-cased service, then id (bytes).
fn sort_key(instance: &Instance) -> (String, String) {
    (
        instance.fields.service.to_ascii_lowercase(),
        instance.fields.id.clone(),
    )
}

/// The reference answer: a linear scan with `Query::matches`, sorted by (service, id).
fn reference<'a>(instances: impl Iterator<Item = &'a Instance>, query: &Query) -> Vec<Instance> {
    let mut out: Vec<Instance> = instances.filter(|i| query.matches(i)).cloned().collect();
    out.sort_by_key(sort_key);
    out
}

/// Pages through a query with `limit`, checking every page's invariants, and returns the
/// concatenation of the pages.
fn page_through(registry: &Registry, query: &Query, limit: Option<usize>) -> Vec<Arc<Instance>> {
    let total = registry.count(query);
    let mut out: Vec<Arc<Instance>> = Vec::new();
    let mut cursor = None;
    for _ in 0..=registry.len() + 1 {
        let answer = registry.query(query, &Page { limit, cursor });
        assert_eq!(answer.total, total, "total on every page equals count");
        assert_eq!(answer.revision, registry.revision());
        if let Some(limit) = limit {
            assert!(answer.instances.len() <= limit, "page over its limit");
        }
        out.extend(answer.instances.iter().cloned());
        match &answer.next_cursor {
            Some(text) => {
                assert!(
                    (out.len() as u64) < total,
                    "a cursor after the last match ({} of {total})",
                    out.len()
                );
                assert!(!answer.instances.is_empty(), "an empty page with a cursor");
                let decoded = Cursor::decode(text).expect("our own cursor decodes");
                assert_eq!(&decoded.encode(), text);
                cursor = Some(decoded);
            }
            None => {
                assert_eq!(
                    out.len() as u64,
                    total,
                    "paging stopped early (limit {limit:?})"
                );
                return out;
            }
        }
    }
    panic!("paging did not terminate");
}

/// Checks a query against the reference answer: totals, count, the full answer, and paging
/// with `limit`.
fn check_query(registry: &Registry, query: &Query, limit: Option<usize>) {
    let expected = reference(registry.instances().map(|i| i.as_ref()), query);
    let expected_ids: Vec<&str> = expected.iter().map(|i| i.id()).collect();
    let full = registry.query(query, &Page::default());
    assert_eq!(full.total, expected.len() as u64, "total of {query:?}");
    assert_eq!(
        registry.count(query),
        expected.len() as u64,
        "count of {query:?}"
    );
    assert_eq!(full.next_cursor, None);
    let full_ids: Vec<&str> = full.instances.iter().map(|i| i.id()).collect();
    assert_eq!(full_ids, expected_ids, "answer of {query:?}");
    let paged = page_through(registry, query, limit);
    let paged_ids: Vec<&str> = paged.iter().map(|i| i.id()).collect();
    assert_eq!(
        paged_ids, expected_ids,
        "pages of {query:?} with limit {limit:?}"
    );
}

/// `stats` without the revision, which every write moves.
fn shape(registry: &Registry) -> IndexStats {
    let mut stats = registry.stats(5, &Limits::standard());
    stats.revision = 0;
    stats
}

/// SplitMix64: a tiny deterministic generator for synthetic data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Skewed towards 0: the square of a uniform fraction.
    fn skewed(&mut self, n: u64) -> u64 {
        let f = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((f * f) * n as f64) as u64 % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const ENVIRONMENTS: [&str; 4] = ["prod", "staging", "dev", "qa"];
const REGIONS: [&str; 6] = [
    "eu-west-1",
    "eu-central-1",
    "us-east-1",
    "us-west-2",
    "ap-south-1",
    "sa-east-1",
];

/// A realistic synthetic instance: skewed services, ~8 tags, 4 meta pairs (one of them unique
/// to the instance), a version from the service's few versions.
fn synthetic(rng: &mut Rng, id: &str, services: u64) -> InstanceDraft {
    let service_n = rng.skewed(services);
    let service = if service_n % 7 == 3 && rng.chance(50) {
        format!("Svc-{service_n}")
    } else {
        format!("svc-{service_n}")
    };
    let mut tags = Vec::new();
    for _ in 0..8 {
        tags.push(format!("tag-{}", rng.skewed(60)));
    }
    if rng.chance(10) {
        tags.push("canary".to_string());
    }
    let versions = 1 + service_n % 5;
    let version = format!(
        "{}.{}.{}",
        1 + service_n % 3,
        rng.below(versions),
        service_n % 4
    );
    let meta = [
        ("team".to_string(), format!("team-{}", rng.skewed(30))),
        ("tier".to_string(), format!("t{}", rng.below(3))),
        (
            "owner.name".to_string(),
            format!("owner-{}", rng.skewed(200)),
        ),
        ("pod".to_string(), format!("pod-{id}")),
    ]
    .into_iter()
    .collect();
    InstanceDraft {
        id: id.to_string(),
        service,
        address: format!(
            "10.{}.{}.{}",
            rng.below(256),
            rng.below(256),
            rng.below(256)
        ),
        port: 1024 + rng.below(60_000) as i64,
        tags,
        version: Some(version),
        environment: Some(ENVIRONMENTS[rng.skewed(4) as usize].to_string()),
        region: Some(REGIONS[rng.skewed(6) as usize].to_string()),
        meta,
        ttl: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Ordering and paging
// ---------------------------------------------------------------------------------------------

#[test]
fn results_are_ordered_by_service_case_insensitively_then_id() {
    let mut h = Harness::new();
    for (id, service) in [
        ("b-2", "beta"),
        ("z", "Zeta"),
        ("a-9", "Alpha"),
        ("_x", "beta"),
        ("a-1", "alpha"),
        ("Z-0", "ALPHA"),
        ("m", "a-b"),
        ("n", "a.b"),
        ("o", "A_B"),
        ("c", "Gamma"),
    ] {
        h.register(draft(id, service));
    }
    // Services by lower-cased bytes ('-' < '.' < '_' < letters), then ids by bytes
    // ('Z' < '_' < 'a'); `Zeta` sorts after `gamma` although `Z` < `a` in ASCII.
    let expected = ["m", "n", "o", "Z-0", "a-1", "a-9", "_x", "b-2", "c", "z"];
    assert_eq!(h.query(&Query::default()), expected);
    for limit in 1..=11 {
        let paged: Vec<String> = page_through(&h.registry, &Query::default(), Some(limit))
            .iter()
            .map(|i| i.id().to_string())
            .collect();
        assert_eq!(paged, expected, "limit {limit}");
    }
}

#[test]
fn small_results_page_through_everything_exactly_once() {
    let mut h = Harness::new();
    let mut rng = Rng(7);
    for n in 0..60 {
        let service = ["web", "Web", "api", "db", "cache"][rng.below(5) as usize];
        h.register(draft_with(&format!("i-{n:03}"), service, |d| {
            if n % 3 == 0 {
                d.tags = strings(&["blue"]);
            }
        }));
    }
    let queries = [
        Query::default(),
        service_q("WEB"),
        Query {
            tags_all: strings(&["blue"]),
            ..Query::default()
        },
        service_q("nothing"),
    ];
    for query in &queries {
        for limit in [
            None,
            Some(1),
            Some(2),
            Some(7),
            Some(20),
            Some(59),
            Some(60),
            Some(61),
        ] {
            check_query(&h.registry, query, limit);
        }
    }
}

#[test]
fn a_zero_limit_returns_an_empty_page_without_a_cursor() {
    let mut h = Harness::new();
    h.register(draft("a", "web"));
    let answer = h.registry.query(
        &Query::default(),
        &Page {
            limit: Some(0),
            cursor: None,
        },
    );
    assert_eq!((answer.total, answer.instances.len()), (1, 0));
    assert_eq!(answer.next_cursor, None);
}

/// A registry large enough that unbounded queries exceed the sort-all threshold.
fn large_registry(instances: usize) -> Harness {
    let mut h = Harness::new();
    let mut rng = Rng(42);
    let mut live = Vec::new();
    for _ in 0..instances {
        let id = format!("i-{:06}", rng.below(1_000_000));
        if h.registry.get(&id).is_some() {
            continue;
        }
        h.register(synthetic(&mut rng, &id, 300));
        live.push(id);
    }
    // Free some slots and fill them again, so slot order is not registration order.
    for _ in 0..instances / 20 {
        let victim = live.swap_remove(rng.below(live.len() as u64) as usize);
        h.deregister(&victim);
    }
    for n in 0..instances / 20 {
        let id = format!("late-{n}");
        h.register(synthetic(&mut rng, &id, 300));
    }
    for id in live.iter().step_by(9) {
        h.set_health(id, Health::Warning);
    }
    h
}

#[test]
fn large_results_page_through_everything_via_the_service_walk() {
    let h = large_registry(10_000);
    let registry = &h.registry;
    let queries = [
        Query::default(),
        Query {
            environment: Some("prod".into()),
            ..Query::default()
        },
        Query {
            tags_none: strings(&["canary", "tag-59"]),
            ..Query::default()
        },
        Query {
            health: Some(Health::Passing),
            version: version(">=1.0"),
            ..Query::default()
        },
    ];
    for query in &queries {
        let total = registry.count(query);
        assert!(
            total > SORT_ALL_THRESHOLD,
            "{query:?} must exceed the threshold ({total})"
        );
        for limit in [Some(97), Some(1000), Some(4095), Some(4096), Some(4097)] {
            check_query(registry, query, limit);
        }
        let total = total as usize;
        for limit in [total - 1, total, total + 1] {
            check_query(registry, query, Some(limit));
        }
    }
    // One query page by page with limit 1: every instance once, in order.
    check_query(registry, &queries[1], Some(1));
}

#[test]
fn service_walk_and_sorting_agree_from_any_cursor() {
    let mut h = large_registry(6_000);
    let mut rng = Rng(99);
    let everything = h.registry.query(&Query::default(), &Page::default());
    assert!(everything.total > SORT_ALL_THRESHOLD);
    // Cursors at live instances, at ids that do not exist, and between or beyond services.
    let mut cursors: Vec<Cursor> = Vec::new();
    for _ in 0..150 {
        let at = &everything.instances[rng.below(everything.total) as usize];
        cursors.push(Cursor::after(at));
        let mut missing = Cursor::after(at);
        missing.id.push('~');
        cursors.push(missing);
    }
    for service_key in ["", "a", "svc-1", "svc-15~", "svc-2", "svc-99", "zzz"] {
        cursors.push(Cursor {
            service_key: service_key.to_string(),
            id: String::new(),
        });
    }
    let candidates = h.registry.candidates(&Query::default(), None);
    for cursor in &cursors {
        let limit = [1, 5, 64, 5000, usize::MAX][rng.below(5) as usize];
        let walked = h
            .registry
            .page_by_service_walk(&candidates, Some(cursor), limit);
        let sorted = h
            .registry
            .page_by_sorting(&candidates, Some(cursor), limit, false);
        let walked_ids: Vec<&str> = walked.0.iter().map(|i| i.id()).collect();
        let sorted_ids: Vec<&str> = sorted.0.iter().map(|i| i.id()).collect();
        assert_eq!(walked_ids, sorted_ids, "cursor {cursor:?} limit {limit}");
        assert_eq!(
            walked.1, sorted.1,
            "more-flag, cursor {cursor:?} limit {limit}"
        );
    }

    // A cursor stays valid when the instance it points at (and others) are deregistered.
    let query = Query::default();
    let first = h.registry.query(
        &query,
        &Page {
            limit: Some(100),
            cursor: None,
        },
    );
    let cursor_text = first.next_cursor.clone().expect("more pages");
    let gone: Vec<String> = everything.instances[99..105]
        .iter()
        .map(|i| i.id().to_string())
        .collect();
    for id in &gone {
        h.deregister(id);
    }
    let second = h.registry.query(
        &query,
        &Page {
            limit: Some(50),
            cursor: Some(Cursor::decode(&cursor_text).expect("decodes")),
        },
    );
    let expected: Vec<String> = everything.instances[105..155]
        .iter()
        .map(|i| i.id().to_string())
        .collect();
    assert_eq!(ids(&second), expected);
}

// ---------------------------------------------------------------------------------------------
// Criteria
// ---------------------------------------------------------------------------------------------

#[test]
fn count_equals_the_total_of_query() {
    let h = large_registry(3_000);
    let queries = [
        Query::default(),
        service_q("svc-0"),
        service_q("SVC-3"),
        Query {
            environment: Some("prod".into()),
            tags_all: strings(&["tag-0"]),
            ..Query::default()
        },
        Query {
            tags_any: strings(&["tag-40", "canary"]),
            region: Some("eu-west-1".into()),
            ..Query::default()
        },
        Query {
            meta: vec![("owner.name".into(), MetaCriterion::Present)],
            health: Some(Health::Warning),
            ..Query::default()
        },
        Query {
            version: version("^2"),
            tags_none: strings(&["tag-1"]),
            ..Query::default()
        },
        Query {
            region: Some("mars".into()),
            ..Query::default()
        },
    ];
    for query in &queries {
        let answer = h.registry.query(query, &Page::default());
        assert_eq!(h.registry.count(query), answer.total, "{query:?}");
        assert_eq!(answer.instances.len() as u64, answer.total);
        check_query(&h.registry, query, Some(33));
    }
}

#[test]
fn tags_all_any_and_none() {
    let mut h = Harness::new();
    let tagged = [
        ("a", vec!["blue", "canary"]),
        ("b", vec!["blue"]),
        ("c", vec!["green", "canary"]),
        ("d", vec![]),
        ("e", vec!["a,b", "k=v", "x y", "p/q:r.s"]),
        ("f", vec!["Blue"]),
        ("g", vec!["a"]),
    ];
    for (id, tags) in &tagged {
        h.register(draft_with(id, "web", |d| d.tags = strings(tags)));
    }
    let check = |all: &[&str], any: &[&str], none: &[&str], expected: &[&str]| {
        let query = Query {
            tags_all: strings(all),
            tags_any: strings(any),
            tags_none: strings(none),
            ..Query::default()
        };
        assert_eq!(
            h.query(&query),
            expected,
            "all {all:?} any {any:?} none {none:?}"
        );
        check_query(&h.registry, &query, Some(2));
    };
    check(&["blue"], &[], &[], &["a", "b"]);
    check(&["blue", "canary"], &[], &[], &["a"]);
    check(&["Blue"], &[], &[], &["f"]);
    check(&[], &["green", "blue"], &[], &["a", "b", "c"]);
    check(&[], &["nope", "canary"], &[], &["a", "c"]);
    check(&[], &["nope"], &[], &[]);
    check(&[], &[], &["canary"], &["b", "d", "e", "f", "g"]);
    check(&[], &[], &["canary", "blue", "nope"], &["d", "e", "f", "g"]);
    check(&["blue"], &[], &["canary"], &["b"]);
    check(&[], &["blue", "green"], &["canary"], &["b"]);
    check(&["nope"], &[], &[], &[]);
    // Whole-element, exact-bytes matching: no splitting, no substrings.
    check(&["a,b"], &[], &[], &["e"]);
    check(&["a"], &[], &[], &["g"]);
    check(&["k=v", "x y", "p/q:r.s"], &[], &[], &["e"]);
    check(&["x"], &[], &[], &[]);
    // Repeated tags in a criterion mean the same as one.
    check(&["blue", "blue"], &["canary", "canary"], &[], &["a"]);
}

#[test]
fn meta_equals_and_presence_with_dotted_keys() {
    let mut h = Harness::new();
    h.register(draft_with("a", "web", |d| {
        d.meta = meta_of(&[("user.name", "ann"), ("team", "core")])
    }));
    h.register(draft_with("b", "web", |d| {
        d.meta = meta_of(&[("user", "name"), ("team", "Core")])
    }));
    h.register(draft_with("c", "web", |d| {
        d.meta = meta_of(&[("user.name", ""), ("team", "core")])
    }));
    h.register(draft("d", "web"));
    let check = |criteria: &[(&str, Option<&str>)], expected: &[&str]| {
        let query = Query {
            meta: criteria
                .iter()
                .map(|(k, v)| {
                    let criterion = match v {
                        Some(v) => MetaCriterion::Equals(v.to_string()),
                        None => MetaCriterion::Present,
                    };
                    (k.to_string(), criterion)
                })
                .collect(),
            ..Query::default()
        };
        assert_eq!(h.query(&query), expected, "{criteria:?}");
        check_query(&h.registry, &query, Some(1));
    };
    check(&[("user.name", Some("ann"))], &["a"]);
    check(&[("user.name", None)], &["a", "c"]);
    check(&[("user", None)], &["b"]);
    check(&[("user", Some("name"))], &["b"]);
    // An empty value is a value.
    check(&[("user.name", Some(""))], &["c"]);
    // Values are case-sensitive.
    check(&[("team", Some("core"))], &["a", "c"]);
    check(&[("team", Some("Core"))], &["b"]);
    check(&[("team", Some("core")), ("user.name", None)], &["a", "c"]);
    check(
        &[("team", Some("core")), ("user.name", Some("ann"))],
        &["a"],
    );
    check(&[("absent", None)], &[]);
    check(&[("team", Some("nope"))], &[]);
    check(&[("Team", None)], &[]);
}

#[test]
fn version_exact_and_ranges() {
    let mut h = Harness::new();
    let versions = [
        ("v1.3.9", Some("1.3.9")),
        ("v1.4.0", Some("1.4.0")),
        ("v1.4.7", Some("1.4.7")),
        ("v1.5", Some("1.5")),
        ("v2.0.0", Some("2.0.0")),
        ("v2-tag", Some("v2")),
        ("v2-bare", Some("2")),
        ("v2.2.9", Some("2.2.9")),
        ("v2.3.0", Some("2.3.0")),
        ("v2.10", Some("v2.10")),
        ("v3", Some("3.0.0")),
        ("v3-rc", Some("3.0.0-rc.1")),
        ("alpine", Some("alpine")),
        ("none", None),
    ];
    for (id, v) in versions {
        h.register(draft_with(id, "web", |d| d.version = v.map(String::from)));
    }
    let check = |criterion: &str, expected: &[&str]| {
        let query = Query {
            version: version(criterion),
            ..Query::default()
        };
        let mut got = h.query(&query);
        got.sort();
        let mut expected: Vec<String> = strings(expected);
        expected.sort();
        assert_eq!(got, expected, "version {criterion:?}");
        check_query(&h.registry, &query, Some(3));
    };
    // Exact: `v2` = `2` = `2.0.0`, in either direction.
    check("v2", &["v2.0.0", "v2-tag", "v2-bare"]);
    check("2.0.0", &["v2.0.0", "v2-tag", "v2-bare"]);
    check("2", &["v2.0.0", "v2-tag", "v2-bare"]);
    check("1.5.0", &["v1.5"]);
    check("alpine", &["alpine"]);
    check("Alpine", &[]);
    check("9.9.9", &[]);
    // Ranges, Cargo semantics; pre-releases only where the requirement names one.
    check(">=2.3", &["v2.3.0", "v2.10", "v3"]);
    check(
        "^2",
        &["v2.0.0", "v2-tag", "v2-bare", "v2.2.9", "v2.3.0", "v2.10"],
    );
    check("~1.4", &["v1.4.0", "v1.4.7"]);
    check(">=1.0, <2.0", &["v1.3.9", "v1.4.0", "v1.4.7", "v1.5"]);
    check(">=v2.10", &["v2.10", "v3"]);
    check("<1.4", &["v1.3.9"]);
    check(">=3.0.0-rc.1", &["v3-rc", "v3"]);
    check(
        "*",
        &[
            "v1.3.9", "v1.4.0", "v1.4.7", "v1.5", "v2.0.0", "v2-tag", "v2-bare", "v2.2.9",
            "v2.3.0", "v2.10", "v3",
        ],
    );
}

#[test]
fn health_criterion() {
    let mut h = Harness::new();
    for id in ["a", "b", "c", "d"] {
        h.register(draft(id, "web"));
    }
    h.set_health("b", Health::Warning);
    h.set_health("c", Health::Critical);
    let by_health = |h: &Harness, health| {
        h.query(&Query {
            health: Some(health),
            ..Query::default()
        })
    };
    // `passing` means passing only; an instance without a check is passing.
    assert_eq!(by_health(&h, Health::Passing), ["a", "d"]);
    assert_eq!(by_health(&h, Health::Warning), ["b"]);
    assert_eq!(by_health(&h, Health::Critical), ["c"]);
    let services = h.registry.services();
    assert_eq!(
        (
            services[0].passing,
            services[0].warning,
            services[0].critical
        ),
        (2, 1, 1)
    );
    // Setting the health it already has is no change and spends no revision.
    let revision = h.registry.revision();
    assert_eq!(h.set_health("b", Health::Warning), None);
    assert_eq!(h.registry.revision(), revision);
    // A re-registration resets the health to passing, even with identical fields.
    let change = h.register(draft("c", "web")).expect("a change");
    assert!(matches!(&change, Change::Put(i) if i.health == Health::Passing));
    assert_eq!(by_health(&h, Health::Critical), Vec::<String>::new());
    assert_eq!(by_health(&h, Health::Passing), ["a", "c", "d"]);
}

#[test]
fn service_names_are_case_insensitive_and_shown_as_the_oldest_live_spelling() {
    let mut h = Harness::new();
    h.register(draft("w1", "Web"));
    h.register(draft("w2", "web"));
    h.register(draft("w3", "WEB"));
    h.register(draft("a1", "api"));
    for spelling in ["web", "Web", "WEB", "wEb"] {
        assert_eq!(
            h.query(&service_q(spelling)),
            ["w1", "w2", "w3"],
            "{spelling}"
        );
        assert_eq!(h.registry.count(&service_q(spelling)), 3);
    }
    let names = |h: &Harness| -> Vec<(String, u64)> {
        h.registry
            .services()
            .into_iter()
            .map(|s| (s.name, s.instances))
            .collect()
    };
    assert_eq!(names(&h), [("api".into(), 1), ("Web".into(), 3)]);
    assert_eq!(
        h.registry.service("wEB").map(|s| s.name),
        Some("Web".into())
    );
    assert_eq!(shape(&h.registry).services, 2);

    // The oldest live instance goes; the next oldest's spelling shows.
    h.deregister("w1");
    assert_eq!(names(&h), [("api".into(), 1), ("web".into(), 2)]);
    // Re-spelling the oldest instance re-spells the service (create_revision is kept).
    h.register(draft("w2", "WeB"));
    assert_eq!(names(&h), [("api".into(), 1), ("WeB".into(), 2)]);
    // A newer instance does not change the spelling.
    h.register(draft("w9", "wEB"));
    assert_eq!(names(&h)[1], ("WeB".into(), 3));
    // Ids, by contrast, are case-sensitive.
    h.register(draft("W2", "web"));
    assert_eq!(h.query(&service_q("web")), ["W2", "w2", "w3", "w9"]);
    assert_eq!(h.registry.service("nope"), None);
}

#[test]
fn moving_an_instance_between_services_updates_both() {
    let mut h = Harness::new();
    h.register(draft("x", "web"));
    h.register(draft("y", "web"));
    h.register(draft("x", "api"));
    assert_eq!(h.query(&service_q("web")), ["y"]);
    assert_eq!(h.query(&service_q("api")), ["x"]);
    h.register(draft("y", "api"));
    assert_eq!(h.query(&service_q("web")), Vec::<String>::new());
    assert_eq!(
        h.registry
            .services()
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<_>>(),
        ["api"]
    );
    assert_eq!(
        h.registry.sorted_services.len(),
        1,
        "no empty service left in the walk"
    );
}

// ---------------------------------------------------------------------------------------------
// Replace means replace; empty values disappear
// ---------------------------------------------------------------------------------------------

#[test]
fn replacing_an_instance_removes_stale_postings() {
    let mut h = Harness::new();
    h.register(draft("other", "web"));
    h.register(draft_with("x", "web", |d| {
        d.tags = strings(&["t1", "shared"]);
        d.meta = meta_of(&[("team", "a"), ("owner", "ann")]);
        d.environment = Some("prod".into());
        d.region = Some("eu".into());
        d.version = Some("1.0.0".into());
    }));
    let before = shape(&h.registry);
    h.register(draft_with("x", "web", |d| {
        d.tags = strings(&["shared"]);
        d.meta = meta_of(&[("team", "b")]);
        d.environment = Some("staging".into());
    }));
    let record = h.registry.get("x").expect("live");
    assert_eq!(
        record.fields.meta,
        Meta::from(meta_of(&[("team", "b")])),
        "no merge"
    );
    assert_eq!(record.fields.tags().collect::<Vec<_>>(), ["shared"]);
    assert_eq!(record.fields.region, None);
    assert_eq!(record.fields.version, None);

    let none = Vec::<String>::new();
    let meta = |key: &str, criterion: MetaCriterion| Query {
        meta: vec![(key.to_string(), criterion)],
        ..Query::default()
    };
    assert_eq!(h.query(&meta("owner", MetaCriterion::Present)), none);
    assert_eq!(
        h.query(&meta("owner", MetaCriterion::Equals("ann".into()))),
        none
    );
    assert_eq!(
        h.query(&meta("team", MetaCriterion::Equals("a".into()))),
        none
    );
    assert_eq!(
        h.query(&meta("team", MetaCriterion::Equals("b".into()))),
        ["x"]
    );
    let tag = |t: &str| Query {
        tags_all: strings(&[t]),
        ..Query::default()
    };
    assert_eq!(h.query(&tag("t1")), none);
    assert_eq!(h.query(&tag("shared")), ["x"]);
    let env = |e: &str| Query {
        environment: Some(e.into()),
        ..Query::default()
    };
    assert_eq!(h.query(&env("prod")), none);
    assert_eq!(h.query(&env("staging")), ["x"]);
    assert_eq!(
        h.query(&Query {
            region: Some("eu".into()),
            ..Query::default()
        }),
        none
    );
    assert_eq!(
        h.query(&Query {
            version: version("1.0.0"),
            ..Query::default()
        }),
        none
    );

    let after = shape(&h.registry);
    assert_eq!(before.distinct_tags, 2);
    assert_eq!(after.distinct_tags, 1);
    assert_eq!(before.distinct_meta_keys, 2);
    assert_eq!(after.distinct_meta_keys, 1);
    assert!(after.versions.is_empty() && after.regions.is_empty());
    assert_eq!(
        after.environments,
        [ValueCount {
            value: "staging".into(),
            count: 1
        }]
    );
    // services, tags 1, env 1, meta key 1, meta value 1, health 3.
    assert_eq!(after.posting_lists, 1 + 1 + 1 + 1 + 1 + 3);
}

#[test]
fn a_value_with_no_instances_left_disappears() {
    let mut h = Harness::new();
    h.register(draft_with("keep-1", "web", |d| {
        d.tags = strings(&["common"])
    }));
    h.register(draft_with("keep-2", "api", |d| {
        d.tags = strings(&["common"])
    }));
    // Warm the slot table so the extra instance below reuses a free slot.
    h.register(draft("warm", "web"));
    h.deregister("warm");
    let empty_before = shape(&h.registry);
    let unique = draft_with("x", "unique-service", |d| {
        d.tags = strings(&["common", "u1", "u2"]);
        d.meta = meta_of(&[("only.here", "1"), ("k", "v")]);
        d.version = Some("9.9.9".into());
        d.environment = Some("env-x".into());
        d.region = Some("region-x".into());
    });
    h.register(unique.clone());
    let with_x = shape(&h.registry);
    assert_eq!(with_x.distinct_tags, empty_before.distinct_tags + 2);
    assert!(with_x.posting_lists > empty_before.posting_lists);
    assert!(with_x.index_memory_bytes > empty_before.index_memory_bytes);
    h.set_health("x", Health::Critical);

    // Deregistering: every value only x had disappears.
    h.deregister("x");
    assert_eq!(shape(&h.registry), empty_before);

    // Replacing away the values has the same effect.
    h.register(unique);
    h.register(draft("x", "web"));
    h.deregister("x");
    assert_eq!(shape(&h.registry), empty_before);

    // And with nothing left, the registry is back to an empty one.
    h.deregister("keep-1");
    h.deregister("keep-2");
    let empty = shape(&Registry::new());
    assert_eq!(shape(&h.registry), empty);
    assert_eq!(empty.posting_lists, 3, "only the three health lists");
    assert_eq!(
        h.registry.index_memory_bytes(),
        Registry::new().index_memory_bytes()
    );
}

#[test]
fn deregistering_one_instance_touches_no_other() {
    let mut h = Harness::new();
    h.register(draft_with("a", "web", |d| d.tags = strings(&["t"])));
    h.register(draft_with("b", "web", |d| d.tags = strings(&["t"])));
    let b_before = Arc::clone(h.registry.get("b").expect("live"));
    h.deregister("a");
    let b_after = h.registry.get("b").expect("live");
    assert!(Arc::ptr_eq(&b_before, b_after), "b's record is untouched");
    assert_eq!(
        h.query(&Query {
            tags_all: strings(&["t"]),
            ..Query::default()
        }),
        ["b"]
    );
}

#[test]
fn a_rejected_reregistration_leaves_the_old_instance_untouched() {
    let mut h = Harness::new();
    h.register(draft_with("x", "web", |d| d.tags = strings(&["t"])));
    let before = Arc::clone(h.registry.get("x").expect("live"));
    let revision = h.registry.revision();
    let bad = draft_with("x", "web", |d| d.port = 70_000);
    assert!(validate(bad, &Limits::standard()).is_err());
    assert!(Arc::ptr_eq(&before, h.registry.get("x").expect("live")));
    assert_eq!(h.registry.revision(), revision);
}

#[test]
fn stats_count_instances_over_lowered_limits() {
    let mut h = Harness::new();
    h.register(draft_with("a", "web", |d| {
        d.tags = strings(&["1", "2", "3"])
    }));
    h.register(draft_with("b", "web", |d| {
        d.meta = meta_of(&[("k", "long value")])
    }));
    h.register(draft("c", "web"));
    assert_eq!(
        h.registry
            .stats(5, &Limits::standard())
            .instances_over_limits,
        0
    );
    let mut lowered = Limits::standard();
    lowered.max_tags = 2;
    lowered.max_meta_value_len = 4;
    let stats = h.registry.stats(5, &lowered);
    assert_eq!(stats.instances_over_limits, 2);
    // Lowering a limit drops or hides nothing.
    assert_eq!(stats.instances, 3);
    assert_eq!(h.query(&Query::default()), ["a", "b", "c"]);
}

#[test]
fn explain_intersects_smallest_first() {
    let mut h = Harness::new();
    for n in 0..20 {
        h.register(draft_with(&format!("i{n:02}"), "web", |d| {
            d.environment = Some("prod".into());
            if n < 3 {
                d.tags = strings(&["rare"]);
            }
            if n % 2 == 0 {
                d.region = Some("eu".into());
            }
        }));
    }
    let query = Query {
        service: Some("web".into()),
        environment: Some("prod".into()),
        region: Some("eu".into()),
        tags_all: strings(&["rare"]),
        ..Query::default()
    };
    let plan = h.registry.explain(&query);
    let postings: Vec<u64> = plan.iter().map(|s| s.postings).collect();
    assert_eq!(postings, [3, 10, 20, 20]);
    assert_eq!(plan[0].criterion, "tag=rare");
    assert_eq!(plan.last().map(|s| s.remaining), Some(2));
    assert_eq!(h.registry.count(&query), 2);
}

// ---------------------------------------------------------------------------------------------
// Scope revisions and resolve
// ---------------------------------------------------------------------------------------------

#[test]
fn scope_revision_rules() {
    let mut h = Harness::new();
    let scope = |h: &Harness, service: Option<&str>| {
        let query = Query {
            service: service.map(String::from),
            tags_all: strings(&["whatever"]),
            ..Query::default()
        };
        h.registry.scope_revision(&query)
    };
    assert_eq!((scope(&h, None), scope(&h, Some("web"))), (0, 0));

    h.register(draft("w1", "web")); // 1
    h.register(draft("a1", "api")); // 2
    assert_eq!(scope(&h, None), 2, "without a service: the global revision");
    assert_eq!(
        scope(&h, Some("web")),
        1,
        "with a service: that service's last change"
    );
    assert_eq!(scope(&h, Some("WEB")), 1, "case-insensitive");
    assert_eq!(scope(&h, Some("api")), 2);
    assert_eq!(scope(&h, Some("never")), 0);
    assert_eq!(h.registry.service_revision("Web"), 1);

    // A change that changes nothing spends no revision and moves no scope.
    assert_eq!(h.register(draft("a1", "api")), None);
    assert_eq!((h.registry.revision(), scope(&h, Some("api"))), (2, 2));

    h.set_health("w1", Health::Warning); // 3
    assert_eq!((scope(&h, Some("web")), scope(&h, Some("api"))), (3, 2));
    h.register(draft("w2", "WEB")); // 4: another spelling, same service
    assert_eq!(scope(&h, Some("web")), 4);

    h.register(draft("w1", "api")); // 5: moves from web to api; both change
    assert_eq!((scope(&h, Some("web")), scope(&h, Some("api"))), (5, 5));
    h.deregister("a1"); // 6
    assert_eq!((scope(&h, Some("web")), scope(&h, Some("api"))), (5, 6));
    h.deregister("w2"); // 7: web's last instance
    assert_eq!(scope(&h, Some("web")), 7);
    h.deregister("w1"); // 8: api's last instance
                        // Scopes never go back, even once the service is gone.
    assert_eq!((scope(&h, Some("web")), scope(&h, Some("api"))), (7, 8));
    assert_eq!(scope(&h, None), 8);
    assert!(h.registry.is_empty());

    // A removal of an id the registry does not hold still touches the named service.
    h.registry.apply(Change::Remove {
        id: "ghost".into(),
        revision: 9,
        service: "Db".into(),
    });
    assert_eq!((scope(&h, Some("db")), h.registry.revision()), (9, 9));

    // advance_revision raises the global revision only, and never lowers it.
    h.registry.advance_revision(20);
    h.registry.advance_revision(10);
    assert_eq!((scope(&h, None), scope(&h, Some("db"))), (20, 9));
}

#[test]
fn resolve_semantics() {
    let reg = |d: InstanceDraft| Mutation::Register(registration(d));
    // A new id: created and modified at this revision, passing.
    let created = match resolve(None, reg(draft("x", "web")), 5, 1_000) {
        Ok(Some(Change::Put(instance))) => instance,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(
        (
            created.create_revision,
            created.modify_revision,
            created.registered_at,
            created.updated_at,
            created.health
        ),
        (5, 5, 1_000, 1_000, Health::Passing)
    );

    // Identical re-registration: no change.
    assert_eq!(
        resolve(Some(&created), reg(draft("x", "web")), 6, 2_000),
        Ok(None)
    );

    // A replacement keeps create_revision and registered_at.
    let replaced = match resolve(
        Some(&created),
        reg(draft_with("x", "web", |d| d.port = 81)),
        7,
        3_000,
    ) {
        Ok(Some(Change::Put(instance))) => instance,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(
        (
            replaced.create_revision,
            replaced.modify_revision,
            replaced.registered_at,
            replaced.updated_at,
            replaced.fields.port
        ),
        (5, 7, 1_000, 3_000, 81)
    );

    // Through a registry, create_revision survives any number of replacements.
    let mut h = Harness::new();
    h.register(draft("x", "web"));
    h.register(draft("y", "web"));
    h.register(draft_with("x", "api", |d| d.tags = strings(&["t"])));
    h.set_health("x", Health::Critical);
    h.register(draft("x", "web"));
    let x = h.registry.get("x").expect("live");
    assert_eq!((x.create_revision, x.modify_revision), (1, 5));

    // Health changes; the same health is no change.
    let sick = resolve(
        Some(&created),
        Mutation::SetHealth {
            id: "x".into(),
            health: Health::Critical,
        },
        8,
        4_000,
    );
    match sick {
        Ok(Some(Change::Put(instance))) => {
            assert_eq!(instance.health, Health::Critical);
            assert_eq!(instance.fields, created.fields);
            assert_eq!((instance.create_revision, instance.modify_revision), (5, 8));
        }
        other => panic!("unexpected {other:?}"),
    }
    let same_health = Mutation::SetHealth {
        id: "x".into(),
        health: Health::Passing,
    };
    assert_eq!(
        resolve(Some(&created), same_health.clone(), 8, 4_000),
        Ok(None)
    );

    // Unknown ids.
    assert_eq!(
        resolve(None, Mutation::Deregister("nope".into()), 9, 0),
        Err(MutationError::NotFound("nope".into()))
    );
    assert_eq!(
        resolve(None, same_health.clone(), 9, 0),
        Err(MutationError::NotFound("x".into()))
    );
    assert_eq!(
        MutationError::NotFound("nope".into()).to_string(),
        "instance \"nope\" not found"
    );

    // Deregistering names the service, for scope tracking.
    let removal = resolve(Some(&created), Mutation::Deregister("x".into()), 10, 0);
    assert_eq!(
        removal,
        Ok(Some(Change::Remove {
            id: "x".into(),
            revision: 10,
            service: "web".into()
        }))
    );
    let removal = removal.ok().flatten().expect("a change");
    assert_eq!((removal.id(), removal.revision()), ("x", 10));
    assert_eq!(Mutation::Deregister("q".into()).id(), "q");
}

// ---------------------------------------------------------------------------------------------
// Churn
// ---------------------------------------------------------------------------------------------

#[test]
fn churn_does_not_grow_the_index() {
    const TOTAL: usize = 200_000;
    const CYCLE: usize = 1_000;
    let mut h = Harness::new();
    let mut rng = Rng(2024);
    let empty = h.registry.index_memory_bytes();

    // A live baseline, so churned instances share posting lists with long-lived ones.
    for n in 0..2_000 {
        h.register(synthetic(&mut rng, &format!("base-{n}"), 120));
    }
    let baseline = shape(&h.registry);
    let baseline_memory = h.registry.memory_breakdown();
    let mut steady: Option<IndexStats> = None;
    let mut steady_memory: Option<MemoryBreakdown> = None;
    for cycle in 0..TOTAL / CYCLE {
        let ids: Vec<String> = (0..CYCLE).map(|j| format!("churn-{cycle}-{j}")).collect();
        for id in &ids {
            h.register(synthetic(&mut rng, id, 120));
        }
        assert_eq!(h.registry.len(), 2_000 + CYCLE);
        for id in &ids {
            h.deregister(id);
        }
        let now = shape(&h.registry);
        assert_eq!(now.posting_lists, baseline.posting_lists, "cycle {cycle}");
        assert_eq!(now.distinct_tags, baseline.distinct_tags, "cycle {cycle}");
        assert_eq!(now.instances, baseline.instances);
        // The slot table legitimately grows once, by one cycle's worth of slots; from then
        // on every cycle must come back to exactly the same figures, apart from the id map,
        // which may double once when inserts meet the tombstones of earlier removals
        // (hashbrown then grows instead of rehashing in place).
        let memory = h.registry.memory_breakdown();
        let mut without_memory = now.clone();
        without_memory.index_memory_bytes = 0;
        match &steady {
            None => {
                steady = Some(without_memory);
                steady_memory = Some(memory);
            }
            Some(steady) => {
                assert_eq!(&without_memory, steady, "cycle {cycle}");
                let first = steady_memory.unwrap_or_default();
                assert_eq!(memory.postings, first.postings, "cycle {cycle}");
                assert_eq!(memory.slots, first.slots, "cycle {cycle}");
                assert_eq!(memory.service_order, first.service_order, "cycle {cycle}");
                assert_eq!(memory.records, first.records, "cycle {cycle}");
                assert!(
                    memory.id_map <= 2 * first.id_map,
                    "cycle {cycle}: id map {} after {}",
                    memory.id_map,
                    first.id_map
                );
            }
        }
    }
    // The index shape equals the baseline's apart from the slot table and the id map.
    let mut now = shape(&h.registry);
    let mut base = baseline.clone();
    now.index_memory_bytes = 0;
    base.index_memory_bytes = 0;
    assert_eq!(now, base);
    assert_eq!(
        h.registry.memory_breakdown().postings,
        baseline_memory.postings
    );

    // With everything gone, the registry is as small as a new one.
    for n in 0..2_000 {
        h.deregister(&format!("base-{n}"));
    }
    let end = shape(&h.registry);
    assert_eq!((end.instances, end.services, end.distinct_tags), (0, 0, 0));
    assert_eq!(end.posting_lists, 3);
    assert_eq!(end.index_memory_bytes, empty);
}

#[test]
fn churn_from_empty_returns_to_empty_after_every_cycle() {
    let mut h = Harness::new();
    let mut rng = Rng(5);
    let empty = shape(&h.registry);
    for cycle in 0..20 {
        for j in 0..500 {
            h.register(synthetic(&mut rng, &format!("c{cycle}-{j}"), 50));
        }
        for j in 0..500 {
            h.deregister(&format!("c{cycle}-{j}"));
        }
        assert_eq!(shape(&h.registry), empty, "cycle {cycle}");
    }
}

// ---------------------------------------------------------------------------------------------
// Query cache: never stale
// ---------------------------------------------------------------------------------------------

fn cache_key(query: &Query, page: &Page) -> String {
    format!(
        "{}|limit={:?}|cursor={}",
        query.cache_key(),
        page.limit,
        page.cursor.as_ref().map(Cursor::encode).unwrap_or_default()
    )
}

fn cached_page(answer: &QueryAnswer) -> CachedPage {
    CachedPage::new(
        answer.total,
        answer.instances.clone(),
        answer.next_cursor.clone(),
    )
}

#[test]
fn query_cache_with_scope_revisions_never_serves_a_stale_answer() {
    let mut h = Harness::new();
    let mut rng = Rng(31337);
    let mut cache = QueryCache::new(64, 3_600_000);
    let services = ["web", "Web", "api", "db", "cache"];
    let tags = ["blue", "green", "canary"];
    let mut queries: Vec<Query> = Vec::new();
    for service in [None, Some("web"), Some("API"), Some("db"), Some("ghost")] {
        for tag in [None, Some("blue"), Some("canary")] {
            queries.push(Query {
                service: service.map(String::from),
                tags_all: tag.map(|t| vec![t.to_string()]).unwrap_or_default(),
                ..Query::default()
            });
        }
    }
    queries.push(Query {
        service: Some("cache".into()),
        health: Some(Health::Passing),
        meta: vec![("team".into(), MetaCriterion::Present)],
        ..Query::default()
    });
    queries.push(Query {
        service: Some("web".into()),
        version: version(">=2.0"),
        ..Query::default()
    });
    let pages = [
        Page::default(),
        Page {
            limit: Some(3),
            cursor: None,
        },
        Page {
            limit: Some(3),
            cursor: Some(Cursor {
                service_key: "web".into(),
                id: "i-10".into(),
            }),
        },
    ];
    let (mut reads, mut hits, mut survived_writes) = (0u64, 0u64, 0u64);
    // Global revision at which each cached entry was computed.
    let mut computed_at: HashMap<String, u64> = HashMap::new();
    for step in 0..6_000u64 {
        let now = step * 10;
        if rng.chance(35) {
            let id = format!("i-{}", rng.below(30));
            let exists = h.registry.get(&id).is_some();
            match rng.below(10) {
                0..=5 => {
                    let service = services[rng.below(5) as usize];
                    let d = draft_with(&id, service, |d| {
                        d.tags = tags
                            .iter()
                            .filter(|_| rng.chance(40))
                            .map(|t| t.to_string())
                            .collect();
                        if rng.chance(50) {
                            d.meta = meta_of(&[("team", "core")]);
                        }
                        d.version = Some(["1.0", "2.1", "v3"][rng.below(3) as usize].into());
                    });
                    h.register(d);
                }
                6 | 7 if exists => {
                    h.deregister(&id);
                }
                _ if exists => {
                    let health = Health::ALL[rng.below(3) as usize];
                    h.set_health(&id, health);
                }
                _ => {}
            }
            continue;
        }
        reads += 1;
        let query = &queries[rng.below(queries.len() as u64) as usize];
        let page = &pages[rng.below(3) as usize];
        let key = cache_key(query, page);
        let scope = h.registry.scope_revision(query);
        let fresh = h.registry.query(query, page);
        match cache.lookup(&key, scope, now) {
            Some(cached) => {
                hits += 1;
                assert_eq!(
                    *cached,
                    cached_page(&fresh),
                    "stale answer at step {step} for {query:?} {page:?}"
                );
                if computed_at
                    .get(&key)
                    .is_some_and(|&at| at < h.registry.revision())
                {
                    survived_writes += 1;
                }
            }
            None => {
                let computed = h.registry.query(query, page);
                computed_at.insert(key.clone(), h.registry.revision());
                cache.insert(key, scope, now, Arc::new(cached_page(&computed)));
            }
        }
    }
    assert_eq!(cache.hits(), hits);
    assert_eq!(cache.hits() + cache.misses(), reads);
    assert!(hits > reads / 10, "too few hits: {hits} of {reads}");
    // Writes to other services do not invalidate a service's cached answers: many hits were
    // computed before some later write.
    assert!(
        survived_writes > 50,
        "per-service scoping never paid off: {survived_writes}"
    );
}

// ---------------------------------------------------------------------------------------------
// Model-based property test
// ---------------------------------------------------------------------------------------------

const P_SERVICES: [&str; 7] = ["web", "Web", "WEB", "api", "Api-gw", "db.main", "cache_2"];
const P_ENVS: [&str; 3] = ["prod", "staging", "dev"];
const P_REGIONS: [&str; 3] = ["eu", "us", "ap"];
const P_VERSIONS: [&str; 11] = [
    "1.0.0",
    "1.4.2",
    "1.4",
    "v2",
    "2.0.0",
    "2.3.1",
    "v2.10",
    "3.0.0-rc.1",
    "3.0.0",
    "alpine",
    "latest",
];
const P_TAGS: [&str; 8] = [
    "canary", "blue", "green", "Canary", "a,b", "x y", "k=v", "primary",
];
const P_META_KEYS: [&str; 4] = ["team", "user.name", "tier", "user"];
const P_META_VALUES: [&str; 4] = ["a", "b", "", "A"];

const Q_SERVICES: [&str; 8] = [
    "web", "WEB", "api", "API-GW", "db.main", "cache_2", "ghost", "we",
];
const Q_VALUES_EXTRA: &str = "nope";
const Q_VERSIONS: [&str; 15] = [
    "v2",
    "2.0.0",
    "1.4",
    "alpine",
    "latest",
    "9.9.9",
    ">=2.3",
    "^2",
    "~1.4",
    ">=1.0, <2.0",
    "*",
    "<1.4.2",
    ">=v2",
    "^3.0.0-rc.1",
    "<=1.4",
];

#[derive(Debug, Clone)]
struct Spec {
    service: usize,
    environment: Option<usize>,
    region: Option<usize>,
    version: Option<usize>,
    tags: Vec<usize>,
    meta: Vec<(usize, usize)>,
    port: u16,
}

#[derive(Debug, Clone)]
enum Op {
    Register(usize, Spec),
    Deregister(usize),
    SetHealth(usize, Health),
}

#[derive(Debug, Clone)]
struct QuerySpec {
    service: Option<usize>,
    environment: Option<usize>,
    region: Option<usize>,
    version: Option<usize>,
    tags_all: Vec<usize>,
    tags_any: Vec<usize>,
    tags_none: Vec<usize>,
    meta: Vec<(usize, Option<usize>)>,
    health: Option<Health>,
    limit: Option<usize>,
}

fn health_strategy() -> impl Strategy<Value = Health> {
    prop_oneof![
        Just(Health::Passing),
        Just(Health::Warning),
        Just(Health::Critical)
    ]
}

fn spec_strategy() -> impl Strategy<Value = Spec> {
    (
        0..P_SERVICES.len(),
        proptest::option::of(0..P_ENVS.len()),
        proptest::option::of(0..P_REGIONS.len()),
        proptest::option::of(0..P_VERSIONS.len()),
        proptest::collection::vec(0..P_TAGS.len(), 0..5),
        proptest::collection::vec((0..P_META_KEYS.len(), 0..P_META_VALUES.len()), 0..4),
        prop_oneof![Just(0u16), Just(80u16), Just(8080u16)],
    )
        .prop_map(
            |(service, environment, region, version, tags, meta, port)| Spec {
                service,
                environment,
                region,
                version,
                tags,
                meta,
                port,
            },
        )
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..40usize, spec_strategy()).prop_map(|(id, spec)| Op::Register(id, spec)),
        2 => (0..40usize).prop_map(Op::Deregister),
        2 => (0..40usize, health_strategy()).prop_map(|(id, h)| Op::SetHealth(id, h)),
    ]
}

fn query_strategy() -> impl Strategy<Value = QuerySpec> {
    // Index `len` of a vocabulary stands for a value no instance has. Each criterion is present
    // in a minority of queries, so that conjunctions still match something most of the time.
    let tag = || 0..=P_TAGS.len();
    let sometimes = |max: usize| {
        prop_oneof![
            3 => Just(Vec::new()),
            1 => proptest::collection::vec(tag(), 1..max),
        ]
    };
    (
        proptest::option::weighted(0.3, 0..Q_SERVICES.len()),
        proptest::option::weighted(0.2, 0..=P_ENVS.len()),
        proptest::option::weighted(0.2, 0..=P_REGIONS.len()),
        proptest::option::weighted(0.25, 0..Q_VERSIONS.len()),
        sometimes(3),
        sometimes(4),
        sometimes(3),
        prop_oneof![
            3 => Just(Vec::new()),
            1 => proptest::collection::vec(
                (
                    0..=P_META_KEYS.len(),
                    proptest::option::of(0..=P_META_VALUES.len()),
                ),
                1..3,
            ),
        ],
        proptest::option::weighted(0.2, health_strategy()),
        proptest::option::weighted(0.8, 1usize..8),
    )
        .prop_map(
            |(
                service,
                environment,
                region,
                version,
                tags_all,
                tags_any,
                tags_none,
                meta,
                health,
                limit,
            )| {
                QuerySpec {
                    service,
                    environment,
                    region,
                    version,
                    tags_all,
                    tags_any,
                    tags_none,
                    meta,
                    health,
                    limit,
                }
            },
        )
}

fn pick<const N: usize>(vocabulary: &[&str; N], n: usize) -> String {
    vocabulary
        .get(n)
        .copied()
        .unwrap_or(Q_VALUES_EXTRA)
        .to_string()
}

fn build_query(spec: &QuerySpec) -> Query {
    let tags = |list: &[usize]| list.iter().map(|&t| pick(&P_TAGS, t)).collect();
    Query {
        service: spec.service.map(|s| Q_SERVICES[s].to_string()),
        environment: spec.environment.map(|e| pick(&P_ENVS, e)),
        region: spec.region.map(|r| pick(&P_REGIONS, r)),
        version: spec.version.and_then(|v| version(Q_VERSIONS[v])),
        tags_all: tags(&spec.tags_all),
        tags_any: tags(&spec.tags_any),
        tags_none: tags(&spec.tags_none),
        meta: spec
            .meta
            .iter()
            .map(|&(k, v)| {
                let criterion = match v {
                    Some(v) => MetaCriterion::Equals(pick(&P_META_VALUES, v)),
                    None => MetaCriterion::Present,
                };
                (pick(&P_META_KEYS, k), criterion)
            })
            .collect(),
        health: spec.health,
        filter: None,
    }
}

fn build_draft(id: usize, spec: &Spec) -> InstanceDraft {
    InstanceDraft {
        id: format!("id-{id:02}"),
        service: P_SERVICES[spec.service].to_string(),
        address: String::new(),
        port: i64::from(spec.port),
        tags: spec.tags.iter().map(|&t| P_TAGS[t].to_string()).collect(),
        version: spec.version.map(|v| P_VERSIONS[v].to_string()),
        environment: spec.environment.map(|e| P_ENVS[e].to_string()),
        region: spec.region.map(|r| P_REGIONS[r].to_string()),
        meta: spec
            .meta
            .iter()
            .map(|&(k, v)| (P_META_KEYS[k].to_string(), P_META_VALUES[v].to_string()))
            .collect(),
        ttl: None,
    }
}

/// The naive model: a map of instances, updated by rules written out independently of
/// `resolve`.
#[derive(Default)]
struct Model {
    instances: BTreeMap<String, Instance>,
}

impl Model {
    fn expect_register(&self, fields: InstanceFields, revision: u64, now: u64) -> Option<Instance> {
        match self.instances.get(&fields.id) {
            Some(old) if old.fields == fields && old.health == Health::Passing => None,
            Some(old) => Some(Instance {
                fields,
                health: Health::Passing,
                create_revision: old.create_revision,
                modify_revision: revision,
                registered_at: old.registered_at,
                updated_at: now,
            }),
            None => Some(Instance {
                fields,
                health: Health::Passing,
                create_revision: revision,
                modify_revision: revision,
                registered_at: now,
                updated_at: now,
            }),
        }
    }
}

/// Applies `op` to the registry and the model, checking the change against the model's rules,
/// and checks that exactly the services the change touched moved their scope revision.
fn apply_op(h: &mut Harness, model: &mut Model, op: &Op) {
    let id = match op {
        Op::Register(id, _) | Op::Deregister(id) | Op::SetHealth(id, _) => format!("id-{id:02}"),
    };
    let service_of = |model: &Model| {
        model
            .instances
            .get(&id)
            .map(|i| i.fields.service.to_ascii_lowercase())
    };
    let services: BTreeSet<String> = P_SERVICES
        .iter()
        .chain(&Q_SERVICES)
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let scopes_before: Vec<u64> = services
        .iter()
        .map(|s| h.registry.scope_revision(&service_q(s)))
        .collect();
    let revision_before = h.registry.revision();
    let service_before = service_of(model);

    apply_change(h, model, op);

    let revision = h.registry.revision();
    assert_eq!(h.registry.scope_revision(&Query::default()), revision);
    let touched: BTreeSet<String> = if revision == revision_before {
        BTreeSet::new()
    } else {
        assert_eq!(revision, revision_before + 1, "one revision per change");
        service_before
            .into_iter()
            .chain(service_of(model))
            .collect()
    };
    for (service, before) in services.iter().zip(scopes_before) {
        let after = h.registry.scope_revision(&service_q(service));
        if touched.contains(service) {
            assert_eq!(after, revision, "{op:?} must move the scope of {service}");
        } else {
            assert_eq!(after, before, "{op:?} must not move the scope of {service}");
        }
    }
}

fn apply_change(h: &mut Harness, model: &mut Model, op: &Op) {
    let revision = h.registry.revision() + 1;
    let now = h.now + 1_000;
    match op {
        Op::Register(id, spec) => {
            let registration = registration(build_draft(*id, spec));
            let expected = model.expect_register(registration.fields().clone(), revision, now);
            let change = h
                .mutate(Mutation::Register(registration))
                .expect("register never fails");
            match (change, expected) {
                (None, None) => {}
                (Some(Change::Put(got)), Some(expected)) => {
                    assert_eq!(*got, expected);
                    model.instances.insert(expected.fields.id.clone(), expected);
                }
                (got, expected) => panic!("register: got {got:?}, expected {expected:?}"),
            }
        }
        Op::Deregister(id) => {
            let id = format!("id-{id:02}");
            let result = h.mutate(Mutation::Deregister(id.clone()));
            match model.instances.remove(&id) {
                Some(old) => assert_eq!(
                    result,
                    Ok(Some(Change::Remove {
                        id,
                        revision,
                        service: old.fields.service.to_string()
                    }))
                ),
                None => assert_eq!(result, Err(MutationError::NotFound(id))),
            }
        }
        Op::SetHealth(id, health) => {
            let id = format!("id-{id:02}");
            let result = h.mutate(Mutation::SetHealth {
                id: id.clone(),
                health: *health,
            });
            match model.instances.get_mut(&id) {
                None => assert_eq!(result, Err(MutationError::NotFound(id))),
                Some(old) if old.health == *health => assert_eq!(result, Ok(None)),
                Some(old) => {
                    old.health = *health;
                    old.modify_revision = revision;
                    old.updated_at = now;
                    match result {
                        Ok(Some(Change::Put(got))) => assert_eq!(*got, *old),
                        other => panic!("set health: got {other:?}"),
                    }
                }
            }
        }
    }
}

/// Compares the registry with the model: records, queries with paging, listings, stats.
fn check_against_model(h: &Harness, model: &Model, queries: &[QuerySpec]) {
    let registry = &h.registry;
    assert_eq!(registry.len(), model.instances.len());
    for (id, instance) in &model.instances {
        assert_eq!(registry.get(id).map(|i| i.as_ref()), Some(instance));
    }

    for spec in queries {
        let query = build_query(spec);
        let expected = reference(model.instances.values(), &query);
        let expected_ids: Vec<&str> = expected.iter().map(|i| i.id()).collect();
        assert_eq!(
            registry.count(&query),
            expected.len() as u64,
            "count {query:?}"
        );
        let paged = page_through(registry, &query, spec.limit);
        let paged: Vec<&Instance> = paged.iter().map(|i| i.as_ref()).collect();
        let paged_ids: Vec<&str> = paged.iter().map(|i| i.id()).collect();
        assert_eq!(paged_ids, expected_ids, "{query:?} limit {:?}", spec.limit);
        assert!(paged.iter().zip(&expected).all(|(got, want)| *got == want));
    }

    // Listings: one entry per lower-cased service, spelled as its oldest live instance.
    let mut groups: BTreeMap<String, Vec<&Instance>> = BTreeMap::new();
    for instance in model.instances.values() {
        groups
            .entry(instance.fields.service.to_ascii_lowercase())
            .or_default()
            .push(instance);
    }
    let listed: Vec<(String, u64, u64, Vec<String>)> = registry
        .services()
        .into_iter()
        .map(|s| (s.name, s.instances, s.passing, s.tags))
        .collect();
    let expected: Vec<(String, u64, u64, Vec<String>)> = groups
        .values()
        .map(|members| {
            let oldest = members
                .iter()
                .min_by_key(|i| (i.create_revision, i.id()))
                .expect("non-empty group");
            let tags: BTreeSet<String> = members
                .iter()
                .flat_map(|i| i.fields.tags().map(str::to_string))
                .collect();
            (
                oldest.fields.service().to_string(),
                members.len() as u64,
                members
                    .iter()
                    .filter(|i| i.health == Health::Passing)
                    .count() as u64,
                tags.into_iter().collect(),
            )
        })
        .collect();
    assert_eq!(listed, expected);

    let stats = registry.stats(3, &Limits::standard());
    let distinct_tags: BTreeSet<&str> = model
        .instances
        .values()
        .flat_map(|i| i.fields.tags())
        .collect();
    let distinct_keys: BTreeSet<&str> = model
        .instances
        .values()
        .flat_map(|i| i.fields.meta_iter().map(|(k, _)| k))
        .collect();
    assert_eq!(stats.instances, model.instances.len() as u64);
    assert_eq!(stats.services, groups.len() as u64);
    assert_eq!(stats.distinct_tags, distinct_tags.len() as u64);
    assert_eq!(stats.distinct_meta_keys, distinct_keys.len() as u64);
    for health in Health::ALL {
        let n = model
            .instances
            .values()
            .filter(|i| i.health == health)
            .count() as u64;
        assert_eq!(stats.health.get(health.as_str()), Some(&n));
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn registry_agrees_with_a_naive_model(
        ops in proptest::collection::vec(op_strategy(), 0..160),
        queries in proptest::collection::vec(query_strategy(), 1..12),
    ) {
        let mut h = Harness::new();
        let mut model = Model::default();
        let empty_memory = h.registry.index_memory_bytes();
        for (n, op) in ops.iter().enumerate() {
            apply_op(&mut h, &mut model, op);
            if n % 4 == 3 {
                check_against_model(&h, &model, &queries);
            }
        }
        check_against_model(&h, &model, &queries);

        // Deregister everything: nothing may be left behind.
        let ids: Vec<String> = model.instances.keys().cloned().collect();
        for id in ids {
            h.deregister(&id);
            model.instances.remove(&id);
        }
        check_against_model(&h, &model, &queries);
        prop_assert!(h.registry.is_empty());
        let stats = h.registry.stats(3, &Limits::standard());
        prop_assert_eq!(
            (stats.instances, stats.services, stats.distinct_tags, stats.distinct_meta_keys),
            (0, 0, 0, 0)
        );
        prop_assert_eq!(stats.posting_lists, 3);
        prop_assert!(stats.tags.is_empty() && stats.versions.is_empty());
        prop_assert_eq!(h.registry.index_memory_bytes(), empty_memory);
        prop_assert!(h.registry.sorted_services.is_empty());
    }
}

#[test]
fn stored_instances_share_interned_strings() {
    let mut registry = Registry::new();
    for (revision, id) in [(1, "a"), (2, "b")] {
        let draft = InstanceDraft {
            id: id.to_string(),
            service: "web".to_string(),
            tags: vec!["canary".to_string()],
            version: Some("1.2.3".to_string()),
            environment: Some("prod".to_string()),
            meta: BTreeMap::from([("team".to_string(), "core".to_string())]),
            ..InstanceDraft::default()
        };
        let registration = validate(draft, &Limits::standard()).unwrap();
        let change = resolve(None, Mutation::Register(registration), revision, 0)
            .unwrap()
            .unwrap();
        registry.apply(change);
    }
    let a = &registry.get("a").unwrap().fields;
    let b = &registry.get("b").unwrap().fields;
    assert!(Text::ptr_eq(&a.tags[0], &b.tags[0]));
    assert!(Text::ptr_eq(
        a.version.as_ref().unwrap(),
        b.version.as_ref().unwrap()
    ));
    assert!(Text::ptr_eq(&a.service, &b.service));
    let (a_key, a_value) = a.meta.iter().next().unwrap();
    let (b_key, b_value) = b.meta.iter().next().unwrap();
    assert!(Text::ptr_eq(a_key, b_key));
    assert!(Text::ptr_eq(a_value, b_value));
}

#[test]
fn a_large_single_service_pages_in_id_order_without_sorting() {
    // 700 instances of one service (registered in scrambled order, some moved to another
    // service and back, some removed) and a tag on about half: every page read from the
    // per-service id order must match a sorted scan.
    let mut registry = Registry::new();
    let mut revision = 0;
    let mut apply = |registry: &mut Registry, mutation: Mutation| {
        revision += 1;
        let current = registry.get(mutation.id()).cloned();
        if let Ok(Some(change)) = resolve(current.as_ref(), mutation, revision, 0) {
            registry.apply(change);
        }
    };
    let register = |id: String, service: &str, tagged: bool| {
        let draft = InstanceDraft {
            id,
            service: service.to_string(),
            tags: if tagged {
                vec!["hot".to_string()]
            } else {
                Vec::new()
            },
            ..InstanceDraft::default()
        };
        Mutation::Register(validate(draft, &Limits::standard()).unwrap())
    };
    for n in 0..700u32 {
        let scrambled = (n * 389) % 700;
        apply(
            &mut registry,
            register(format!("i-{scrambled:04}"), "Big", scrambled % 3 != 0),
        );
    }
    for n in (0..700u32).step_by(7) {
        apply(&mut registry, register(format!("i-{n:04}"), "other", true));
    }
    for n in (0..700u32).step_by(14) {
        apply(&mut registry, register(format!("i-{n:04}"), "big", true));
    }
    for n in (5..700u32).step_by(50) {
        apply(&mut registry, Mutation::Deregister(format!("i-{n:04}")));
    }
    for query in [
        Query {
            service: Some("BIG".to_string()),
            ..Query::default()
        },
        Query {
            service: Some("big".to_string()),
            tags_all: vec!["hot".to_string()],
            ..Query::default()
        },
    ] {
        let mut expected: Vec<String> = registry
            .instances()
            .filter(|i| query.matches(i))
            .map(|i| i.id().to_string())
            .collect();
        expected.sort();
        assert!(expected.len() > 64, "the in-order path is exercised");
        for limit in [1, 7, 100, 1000] {
            let mut seen = Vec::new();
            let mut cursor = None;
            loop {
                let page = registry.query(
                    &query,
                    &Page {
                        limit: Some(limit),
                        cursor: cursor.clone(),
                    },
                );
                assert_eq!(page.total, expected.len() as u64);
                seen.extend(page.instances.iter().map(|i| i.id().to_string()));
                match page.next_cursor {
                    Some(next) => cursor = Some(Cursor::decode(&next).unwrap()),
                    None => break,
                }
            }
            assert_eq!(seen, expected, "limit {limit}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Id map (slots hashed through their records)
// ---------------------------------------------------------------------------------------------

#[test]
fn ids_resolve_after_their_slots_are_reused() {
    let mut h = Harness::new();
    for n in 0..50 {
        h.register(draft(&format!("i-{n}"), "web"));
    }
    for n in (0..50).step_by(2) {
        h.deregister(&format!("i-{n}"));
    }
    // New ids take the freed slots; the old ids must not find them.
    for n in 0..25 {
        h.register(draft(&format!("new-{n}"), "api"));
    }
    assert_eq!(h.registry.len(), 50);
    for n in 0..50 {
        let id = format!("i-{n}");
        assert_eq!(h.registry.get(&id).is_some(), n % 2 == 1, "{id}");
    }
    for n in 0..25 {
        let id = format!("new-{n}");
        let found = h
            .registry
            .get(&id)
            .map(|i| (i.id().to_string(), i.service().to_string()));
        assert_eq!(found, Some((id, "api".to_string())));
    }
    assert!(h.registry.get("new-25").is_none());
}

#[test]
fn ids_resolve_while_the_id_map_grows_and_shrinks() {
    let mut h = Harness::new();
    // Growing rehashes every entry through its record.
    for n in 0..5_000 {
        h.register(draft(&format!("grow-{n}"), &format!("svc-{}", n % 7)));
    }
    for n in 0..5_000 {
        let id = format!("grow-{n}");
        assert_eq!(h.registry.get(&id).map(|i| i.id()), Some(id.as_str()));
    }
    for n in 0..5_000 {
        h.deregister(&format!("grow-{n}"));
    }
    assert!(h.registry.is_empty());
    assert_eq!(
        h.registry.memory_breakdown().id_map,
        0,
        "released when empty"
    );
    h.register(draft("again", "web"));
    assert_eq!(h.registry.get("again").map(|i| i.id()), Some("again"));
    assert!(h.registry.get("grow-1").is_none());
}

#[test]
fn loaded_ids_outside_the_validation_rule_are_found() {
    // A store written under other rules may hold any string; lookups compare bytes.
    let registry = Registry::new();
    let stored = |id: &str, revision: u64| {
        let mut fields = registration(draft("placeholder", "web")).fields;
        fields.id = id.to_string();
        Instance {
            fields,
            health: Health::Passing,
            create_revision: revision,
            modify_revision: revision,
            registered_at: 0,
            updated_at: 0,
        }
    };
    let ids = ["équipe:日本-1", "ключ", "e\u{301}", "\u{e9}", ""];
    let mut loader = registry.loader();
    for (n, id) in ids.iter().enumerate() {
        loader.load(stored(id, n as u64 + 1));
    }
    let registry = loader.finish();
    assert_eq!(registry.len(), ids.len());
    for id in ids {
        assert_eq!(registry.get(id).map(|i| i.id()), Some(id), "{id:?}");
    }
    // Canonically equal but byte-different ids stay distinct.
    assert!(registry.get("E\u{301}").is_none());
    assert!(registry.get("日本").is_none());
}

// ---------------------------------------------------------------------------------------------
// Interning before apply (no copy of the record)
// ---------------------------------------------------------------------------------------------

#[test]
fn interned_registrations_are_stored_without_a_copy_and_share_new_strings() {
    let mut registry = Registry::new();
    let mut fresh = FreshStrings::default();
    let with_tags = |id: &str| {
        draft_with(id, "Brand-New", |d| {
            d.tags = strings(&["new-tag", "other"]);
            d.version = Some("9.9.9".to_string());
            d.meta = meta_of(&[("team", "new-team")]);
        })
    };
    // Two registrations of one batch, both prepared before either is applied.
    let mut first = Mutation::Register(registration(with_tags("a")));
    let mut second = Mutation::Register(registration(with_tags("b")));
    registry.intern(&mut first, &mut fresh);
    registry.intern(&mut second, &mut fresh);
    let changes: Vec<Change> = [(first, 1), (second, 2)]
        .into_iter()
        .filter_map(|(m, rev)| resolve(None, m, rev, 0).ok().flatten())
        .collect();
    let resolved: Vec<Arc<Instance>> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Put(instance) => Some(Arc::clone(instance)),
            Change::Remove { .. } => None,
        })
        .collect();
    for change in changes {
        registry.apply(change);
    }
    let a = Arc::clone(registry.get("a").expect("a"));
    let b = Arc::clone(registry.get("b").expect("b"));
    assert!(Arc::ptr_eq(&a, &resolved[0]), "stored as resolved");
    assert!(Arc::ptr_eq(&b, &resolved[1]), "stored as resolved");
    assert!(Text::ptr_eq(&a.fields.tags[0], &b.fields.tags[0]));
    assert!(Text::ptr_eq(&a.fields.service, &b.fields.service));
    let (a_key, a_value) = a.fields.meta.iter().next().expect("meta");
    let (b_key, b_value) = b.fields.meta.iter().next().expect("meta");
    assert!(Text::ptr_eq(a_key, b_key) && Text::ptr_eq(a_value, b_value));

    // Not prepared: stored as an interned copy, the caller's record untouched.
    let unprepared = registration(with_tags("c"));
    let caller = match resolve(None, Mutation::Register(unprepared), 3, 0) {
        Ok(Some(Change::Put(instance))) => instance,
        other => panic!("unexpected {other:?}"),
    };
    registry.apply(Change::Put(Arc::clone(&caller)));
    let c = registry.get("c").expect("c");
    assert!(!Arc::ptr_eq(c, &caller));
    assert!(Text::ptr_eq(&c.fields.tags[0], &a.fields.tags[0]));
    assert!(!Text::ptr_eq(&caller.fields.tags[0], &a.fields.tags[0]));
    assert_eq!(c.fields, caller.fields);
    let q = Query {
        tags_all: vec!["new-tag".to_string()],
        ..Query::default()
    };
    assert_eq!(registry.count(&q), 3);
}

// ---------------------------------------------------------------------------------------------
// Bulk loading
// ---------------------------------------------------------------------------------------------

/// A copy of `instance` whose tags and meta values are new allocations of the same text (what
/// a store that does not share strings hands over).
fn with_fresh_strings(instance: &Instance) -> Instance {
    let mut copy = instance.clone();
    copy.fields.tags = copy
        .fields
        .tags
        .iter()
        .map(|t| Text::from(t.as_str()))
        .collect();
    copy.fields.meta = copy
        .fields
        .meta
        .iter()
        .map(|(k, v)| (Text::clone(k), Text::from(v.as_str())))
        .collect();
    copy
}

#[test]
fn a_bulk_load_builds_the_same_index_as_writes() {
    let h = large_registry(40_000);
    let written = &h.registry;
    let mut stored: Vec<Instance> = written.instances().map(|i| Instance::clone(i)).collect();
    stored.sort_by(|a, b| a.id().cmp(b.id()));
    assert!(
        stored.len() > 2 * LOAD_FLUSH_EVERY,
        "the load must cross flushes"
    );
    let mut loader = Registry::new().loader();
    for (n, instance) in stored.iter().enumerate() {
        if n % 10 == 3 {
            // Equal strings in other allocations: a list is buffered under two addresses.
            loader.load(with_fresh_strings(instance));
        } else if n % 1000 == 7 {
            // An id met twice (a Redis scan can): the later record replaces the earlier one.
            let mut earlier = instance.clone();
            earlier.fields.tags = vec![Text::from("only-in-the-earlier-copy")].into();
            earlier.fields.service = Text::from("a-service-of-the-earlier-copy");
            loader.load(earlier);
            loader.load(instance.clone());
        } else {
            loader.load(instance.clone());
        }
    }
    let loaded = loader.finish();
    assert_eq!(loaded.len(), written.len());
    assert_eq!(loaded.revision(), written.revision());
    assert_eq!(shape(&loaded), shape(written));
    let queries = [
        Query::default(),
        service_q("svc-3"),
        service_q("SVC-10"),
        Query {
            tags_all: strings(&["tag-1", "tag-2"]),
            environment: Some("prod".into()),
            ..Query::default()
        },
        Query {
            tags_none: strings(&["canary"]),
            region: Some("eu-west-1".into()),
            ..Query::default()
        },
        Query {
            tags_any: strings(&["only-in-the-earlier-copy", "canary"]),
            ..Query::default()
        },
        Query {
            health: Some(Health::Warning),
            version: version(">=1.1"),
            ..Query::default()
        },
        Query {
            meta: vec![("tier".into(), MetaCriterion::Equals("t1".into()))],
            ..Query::default()
        },
    ];
    for query in &queries {
        check_query(&loaded, query, Some(500));
        assert_eq!(loaded.count(query), written.count(query), "{query:?}");
    }
    assert_eq!(loaded.count(&service_q("a-service-of-the-earlier-copy")), 0);
}

#[test]
fn a_large_batch_applied_at_once_builds_the_same_index_as_change_by_change() {
    // Record the changes of a busy history: new instances, removals that free slots for
    // later ones, replacements, moves between services, health changes.
    let mut h = Harness::new();
    let mut rng = Rng(7);
    let mut changes = Vec::new();
    let mut live: Vec<String> = Vec::new();
    for n in 0..14_000 {
        let roll = rng.below(100);
        // The first 6,000 changes are new instances only: one long run for the two threads.
        let change = if roll < 70 || live.is_empty() || n < 6_000 {
            let id = format!("i-{n:05}");
            live.push(id.clone());
            h.register(synthetic(&mut rng, &id, 200))
        } else if roll < 80 {
            let victim = live.swap_remove(rng.below(live.len() as u64) as usize);
            h.deregister(&victim)
        } else if roll < 90 {
            let id = live[rng.below(live.len() as u64) as usize].clone();
            h.register(synthetic(&mut rng, &id, 200))
        } else {
            let id = live[rng.below(live.len() as u64) as usize].clone();
            h.set_health(&id, Health::Critical)
        };
        changes.extend(change);
    }
    assert!(changes.len() > 2 * PARALLEL_APPLY_FROM + 3_000 + 2 * BULK_APPLY_FROM);
    // As the catalog hands them over, the records share their strings (one allocation per
    // distinct value), so the bulk paths find later postings of a value by its address.
    let mut fresh = FreshStrings::default();
    let empty = Registry::new();
    for change in &mut changes {
        if let Change::Put(instance) = change {
            let mut shared = Instance::clone(instance);
            empty.index.intern(&mut shared.fields, &mut fresh);
            *instance = Arc::new(shared);
        }
    }
    let mut batched = Registry::new();
    // Batches of several sizes: below the bulk threshold, bulk, and large enough to be
    // indexed on two threads (new instances only, mixed at that threshold, and mixed far
    // above it).
    let mut rest = changes.as_slice();
    for size in [
        6_000,
        BULK_APPLY_FROM - 1,
        3_000,
        BULK_APPLY_FROM,
        PARALLEL_APPLY_FROM,
        usize::MAX,
    ]
    .iter()
    .cycle()
    {
        if rest.is_empty() {
            break;
        }
        let (batch, later) = rest.split_at((*size).min(rest.len()));
        batched.apply_all(batch.to_vec());
        rest = later;
    }
    let written = &h.registry;
    assert_eq!(batched.len(), written.len());
    assert_eq!(shape(&batched), shape(written));
    let queries = [
        Query::default(),
        service_q("svc-2"),
        Query {
            tags_all: strings(&["tag-0", "tag-3"]),
            ..Query::default()
        },
        Query {
            health: Some(Health::Critical),
            ..Query::default()
        },
        Query {
            meta: vec![("team".into(), MetaCriterion::Equals("team-1".into()))],
            environment: Some("prod".into()),
            ..Query::default()
        },
    ];
    for query in &queries {
        check_query(&batched, query, Some(250));
        assert_eq!(batched.count(query), written.count(query), "{query:?}");
    }
}
