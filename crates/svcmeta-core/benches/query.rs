//! Query benchmarks over a synthetic registry of 1,000,000 instances (`SVCMETA_BENCH_INSTANCES`
//! changes the size): indexed queries of 1, 3 and 5 criteria and a none-of query, via
//! `Registry::count` and via `Registry::query` with a page of 100; a bare roaring intersection
//! of the same three posting lists as a floor; the import rate of 100k registrations; and,
//! once, the index memory before and after 1M register/deregister churn
//! (`SVCMETA_BENCH_CHURN`, 0 skips it).
//!
//! The data is deterministic: ~28 instances per service with a heavy tail, 4 environments,
//! 6 regions, ~8 tags and 4 meta pairs per instance from skewed vocabularies, and 1–5 versions
//! per service.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use roaring::RoaringBitmap;
use svcmeta_core::{
    resolve, validate, Change, Health, Instance, InstanceDraft, Limits, MetaCriterion, Mutation,
    Page, Query, Registry, VersionCriterion,
};

const DEFAULT_INSTANCES: u64 = 1_000_000;
const INSTANCES_PER_SERVICE: u64 = 28;
const TAG_VOCABULARY: u64 = 500;
const ENVIRONMENTS: [(&str, u64); 4] = [("prod", 55), ("staging", 25), ("dev", 15), ("qa", 5)];
const REGIONS: [(&str, u64); 6] = [
    ("us-east-1", 35),
    ("eu-west-1", 25),
    ("us-west-2", 15),
    ("eu-central-1", 12),
    ("ap-south-1", 8),
    ("sa-east-1", 5),
];

/// The service, environment and tag of the 3-criterion query (and of the roaring baseline).
const HOT_SERVICE: u64 = 3;
const HOT_ENVIRONMENT: &str = "prod";
const HOT_TAG: &str = "tag-1";
const HOT_REGION: &str = "us-east-1";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// SplitMix64: small, fast and deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Skewed towards 0: `n * u^power`.
    fn skewed(&mut self, n: u64, power: f64) -> u64 {
        ((self.unit().powf(power) * n as f64) as u64).min(n - 1)
    }

    fn weighted<'a>(&mut self, table: &[(&'a str, u64)]) -> &'a str {
        let total: u64 = table.iter().map(|(_, w)| w).sum();
        let mut pick = self.below(total);
        for (value, weight) in table {
            if pick < *weight {
                return value;
            }
            pick -= weight;
        }
        table[0].0
    }
}

/// Deterministic synthetic instances.
struct Generator {
    rng: Rng,
    services: u64,
}

impl Generator {
    fn new(seed: u64, instances: u64) -> Generator {
        Generator {
            rng: Rng(seed),
            services: (instances / INSTANCES_PER_SERVICE).max(1),
        }
    }

    /// The versions of service `k`: 1 to 5 consecutive patch releases of one minor version
    /// (~900 distinct version strings in all, shared by services with the same release line).
    fn version(&mut self, k: u64) -> String {
        let count = 1 + k % 5;
        let j = count - 1 - self.rng.skewed(count, 2.0); // the newest is the most common
        format!("{}.{}.{}", 1 + k % 3, (k / 3) % 20, (k / 60) % 10 + j)
    }

    fn draft(&mut self, id: String) -> (InstanceDraft, u64) {
        // u^2 over the service space: the first service holds ~0.5% of all instances, the
        // last ones ~14 each; the mean is 28.
        let service = self.rng.skewed(self.services, 2.0);
        let mut tags = Vec::with_capacity(9);
        for _ in 0..8 {
            tags.push(format!("tag-{}", self.rng.skewed(TAG_VOCABULARY, 3.0)));
        }
        if self.rng.below(100) < 5 {
            tags.push("canary".to_string());
        }
        let meta: BTreeMap<String, String> = [
            ("team", format!("team-{}", self.rng.skewed(300, 2.0))),
            ("tier", format!("tier-{}", self.rng.below(3))),
            (
                "owner.email",
                format!("owner-{}@example.com", self.rng.skewed(2_000, 2.0)),
            ),
            ("zone", format!("zone-{}", self.rng.below(12))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let draft = InstanceDraft {
            id,
            service: format!("svc-{service}"),
            address: format!(
                "10.{}.{}.{}",
                self.rng.below(256),
                self.rng.below(256),
                self.rng.below(256)
            ),
            port: 1024 + self.rng.below(50_000) as i64,
            tags,
            version: Some(self.version(service)),
            environment: Some(self.rng.weighted(&ENVIRONMENTS).to_string()),
            region: Some(self.rng.weighted(&REGIONS).to_string()),
            meta,
            ttl: None,
        };
        (draft, service)
    }

    fn health(&mut self) -> Health {
        match self.rng.below(100) {
            0..=94 => Health::Passing,
            95..=98 => Health::Warning,
            _ => Health::Critical,
        }
    }
}

/// A registered instance, straight from validation, at `revision`.
fn instance(draft: InstanceDraft, health: Health, revision: u64) -> Arc<Instance> {
    let registration = validate(draft, &Limits::standard())
        .unwrap_or_else(|errors| panic!("generated an invalid draft: {errors}"));
    match resolve(None, Mutation::Register(registration), revision, revision) {
        Ok(Some(Change::Put(instance))) => {
            let mut instance = Instance::clone(&instance);
            instance.health = health;
            Arc::new(instance)
        }
        other => panic!("a new registration must be a put, got {other:?}"),
    }
}

/// The benchmark registry and the three posting lists of the hot query, built from the
/// generated data (slot n is the n-th registration of a fresh registry).
struct Fixture {
    registry: Registry,
    hot_service: RoaringBitmap,
    hot_environment: RoaringBitmap,
    hot_tag: RoaringBitmap,
}

fn build(instances: u64) -> Fixture {
    let started = Instant::now();
    let mut generator = Generator::new(0x5EED, instances);
    let mut registry = Registry::new();
    let mut hot_service = RoaringBitmap::new();
    let mut hot_environment = RoaringBitmap::new();
    let mut hot_tag = RoaringBitmap::new();
    for n in 0..instances {
        let (draft, service) = generator.draft(format!("i-{n:07}"));
        let slot = n as u32;
        if service == HOT_SERVICE {
            hot_service.insert(slot);
        }
        if draft.environment.as_deref() == Some(HOT_ENVIRONMENT) {
            hot_environment.insert(slot);
        }
        if draft.tags.iter().any(|t| t == HOT_TAG) {
            hot_tag.insert(slot);
        }
        let health = generator.health();
        registry.apply(Change::Put(instance(draft, health, n + 1)));
    }
    let stats = registry.stats(3, &Limits::standard());
    eprintln!(
        "built {} instances in {:.1?}: {} services, {} distinct tags, {} posting lists, \
         index ~{:.1} MiB",
        stats.instances,
        started.elapsed(),
        stats.services,
        stats.distinct_tags,
        stats.posting_lists,
        stats.index_memory_bytes as f64 / (1024.0 * 1024.0)
    );
    Fixture {
        registry,
        hot_service,
        hot_environment,
        hot_tag,
    }
}

fn version(text: &str) -> Option<VersionCriterion> {
    Some(VersionCriterion::parse(text).unwrap_or_else(|e| panic!("{e}")))
}

fn queries(c: &mut Criterion) {
    let instances = env_u64("SVCMETA_BENCH_INSTANCES", DEFAULT_INSTANCES);
    let fixture = build(instances);
    let registry = &fixture.registry;
    let hot_service = format!("svc-{HOT_SERVICE}");

    let three = Query {
        service: Some(hot_service.clone()),
        environment: Some(HOT_ENVIRONMENT.to_string()),
        tags_all: vec![HOT_TAG.to_string()],
        ..Query::default()
    };
    let one = Query {
        service: Some(hot_service.clone()),
        ..Query::default()
    };
    // With the default data, the hot service's versions are all 1.1.x, so the version range
    // removes the last few dozen candidates and the answer is empty: the time measured is the
    // planner's, dominated by the range's union over every distinct version in the registry.
    let five = Query {
        region: Some(HOT_REGION.to_string()),
        version: version(">=1.2"),
        ..three.clone()
    };
    let range = Query {
        version: version(">=1.2"),
        ..Query::default()
    };
    let none_of = Query {
        tags_none: vec!["tag-0".to_string(), "canary".to_string()],
        ..Query::default()
    };
    let meta = Query {
        environment: Some(HOT_ENVIRONMENT.to_string()),
        meta: vec![(
            "team".to_string(),
            MetaCriterion::Equals("team-0".to_string()),
        )],
        ..Query::default()
    };
    let page = Page {
        limit: Some(100),
        cursor: None,
    };

    // The baseline must intersect the very lists the registry does.
    let floor = &(&fixture.hot_service & &fixture.hot_environment) & &fixture.hot_tag;
    assert_eq!(
        floor.len(),
        registry.count(&three),
        "baseline and index disagree"
    );
    for (name, query) in [
        ("1 criterion", &one),
        ("3 criteria", &three),
        ("5 criteria", &five),
        ("version >=1.2", &range),
        ("none-of", &none_of),
        ("env + meta", &meta),
    ] {
        eprintln!("{name}: {} matches", registry.count(query));
    }

    let mut group = c.benchmark_group("query");
    group.bench_function("3crit_service_env_tag/count", |b| {
        b.iter(|| registry.count(black_box(&three)))
    });
    group.bench_function("3crit_service_env_tag/limit100", |b| {
        b.iter(|| registry.query(black_box(&three), black_box(&page)))
    });
    group.bench_function("1crit_service/count", |b| {
        b.iter(|| registry.count(black_box(&one)))
    });
    group.bench_function("1crit_service/limit100", |b| {
        b.iter(|| registry.query(black_box(&one), black_box(&page)))
    });
    group.bench_function("5crit_plus_region_version_ge_1.2/count", |b| {
        b.iter(|| registry.count(black_box(&five)))
    });
    group.bench_function("5crit_plus_region_version_ge_1.2/limit100", |b| {
        b.iter(|| registry.query(black_box(&five), black_box(&page)))
    });
    group.bench_function("version_range_ge_1.2/count", |b| {
        b.iter(|| registry.count(black_box(&range)))
    });
    group.bench_function("tags_none_of/count", |b| {
        b.iter(|| registry.count(black_box(&none_of)))
    });
    group.bench_function("tags_none_of/limit100", |b| {
        b.iter(|| registry.query(black_box(&none_of), black_box(&page)))
    });
    group.bench_function("env_meta_equals/count", |b| {
        b.iter(|| registry.count(black_box(&meta)))
    });
    group.bench_function("baseline_roaring_3way_and", |b| {
        let mut lists = [
            &fixture.hot_service,
            &fixture.hot_environment,
            &fixture.hot_tag,
        ];
        lists.sort_by_key(|l| l.len());
        b.iter(|| {
            let [x, y, z] = black_box(lists);
            (&(x & y) & z).len()
        })
    });
    group.finish();

    churn(fixture.registry, instances);
}

/// Registers and deregisters `SVCMETA_BENCH_CHURN` (1M) distinct instances in cycles of 1000
/// on top of the benchmark registry (once its query benchmarks are done), and prints the index
/// size before and after.
fn churn(mut registry: Registry, instances: u64) {
    let total = env_u64("SVCMETA_BENCH_CHURN", 1_000_000);
    if total == 0 {
        return;
    }
    let limits = Limits::standard();
    let before = registry.stats(0, &limits);
    let mut generator = Generator::new(0xC4_0124, instances);
    let mut revision = registry.revision();
    let started = Instant::now();
    let mut after_first_cycle = None;
    let cycle = 1_000;
    for c in 0..total.div_ceil(cycle) {
        let ids: Vec<String> = (0..cycle).map(|j| format!("churn-{c}-{j}")).collect();
        for id in &ids {
            let (draft, _) = generator.draft(id.clone());
            revision += 1;
            registry.apply(Change::Put(instance(draft, Health::Passing, revision)));
        }
        for id in ids {
            revision += 1;
            let service = registry
                .get(&id)
                .map(|i| i.service().to_string())
                .unwrap_or_default();
            registry.apply(Change::Remove {
                id,
                revision,
                service,
            });
        }
        if c == 0 {
            after_first_cycle = Some(registry.index_memory_bytes());
        }
    }
    let after = registry.stats(0, &limits);
    eprintln!(
        "churn: {total} register+deregister in cycles of {cycle} over {} live instances took \
         {:.1?}\n  index_memory_bytes before {} / after first cycle {} / after {}\n  \
         posting_lists before {} / after {}; distinct tags before {} / after {}",
        before.instances,
        started.elapsed(),
        before.index_memory_bytes,
        after_first_cycle.unwrap_or(0),
        after.index_memory_bytes,
        before.posting_lists,
        after.posting_lists,
        before.distinct_tags,
        after.distinct_tags,
    );
}

fn import(c: &mut Criterion) {
    const BATCH: u64 = 100_000;
    let instances = env_u64("SVCMETA_BENCH_INSTANCES", DEFAULT_INSTANCES);
    let mut generator = Generator::new(0x1_3A0E, instances);
    let changes: Vec<Change> = (0..BATCH)
        .map(|n| {
            let (draft, _) = generator.draft(format!("i-{n:07}"));
            Change::Put(instance(draft, Health::Passing, n + 1))
        })
        .collect();
    let mut group = c.benchmark_group("import");
    group.sample_size(10);
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("apply_100k_into_empty", |b| {
        b.iter_batched(
            || changes.clone(),
            |changes| {
                let mut registry = Registry::new();
                for change in changes {
                    registry.apply(change);
                }
                registry
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, queries, import);
criterion_main!(benches);
