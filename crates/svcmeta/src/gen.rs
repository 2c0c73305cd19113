//! The synthetic catalog generator behind `svcmeta gen`: N realistic instance drafts as NDJSON,
//! deterministic for a seed (the model is described in docs/GEN_MODEL.md).
//!
//! It streams: only the per-service sizes are held, never the records, and each line is
//! serialised into a reused buffer. It deliberately does not register anything, validate at run
//! time (the model only produces values that pass DESIGN §1 with the default limits, which the
//! tests check) or emit `ttl`.

use std::fmt::Write as _;
use std::io::{self, Write};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

/// Average number of instances per service; the service count is `N / 28` (at least 1).
pub const MEAN_INSTANCES_PER_SERVICE: f64 = 28.0;

/// Shape of the service-size distribution: a Lomax (Pareto II) tail index. Smaller is heavier.
const TAIL_INDEX: f64 = 2.0;

/// Bytes buffered before a write to the output.
const FLUSH_AT: usize = 1 << 16;

const DOMAINS: &[&str] = &[
    "payments",
    "checkout",
    "cart",
    "catalog",
    "inventory",
    "orders",
    "shipping",
    "billing",
    "invoices",
    "accounts",
    "auth",
    "identity",
    "users",
    "profiles",
    "search",
    "recommendations",
    "pricing",
    "promotions",
    "coupons",
    "reviews",
    "ratings",
    "notifications",
    "email",
    "sms",
    "push",
    "messaging",
    "chat",
    "media",
    "images",
    "video",
    "thumbnails",
    "uploads",
    "storage",
    "documents",
    "reports",
    "analytics",
    "metrics",
    "events",
    "audit",
    "ledger",
    "fraud",
    "risk",
    "kyc",
    "loyalty",
    "rewards",
    "subscriptions",
    "plans",
    "quotes",
    "tax",
    "currency",
    "geo",
    "maps",
    "routing",
    "dispatch",
    "fleet",
    "drivers",
    "bookings",
    "reservations",
    "tickets",
    "sessions",
    "config",
    "features",
    "experiments",
    "feeds",
    "timeline",
    "comments",
    "social",
    "content",
    "cms",
    "translations",
    "settings",
    "onboarding",
    "support",
    "crm",
    "partners",
    "vendors",
    "warehouse",
    "fulfillment",
    "returns",
    "refunds",
    "wallet",
    "payouts",
    "settlement",
    "compliance",
];

const ROLES: &[&str] = &[
    "api",
    "service",
    "worker",
    "gateway",
    "consumer",
    "producer",
    "scheduler",
    "cron",
    "db",
    "cache",
    "proxy",
    "web",
    "frontend",
    "backend",
    "indexer",
    "sync",
    "stream",
    "batch",
    "admin",
    "grpc",
];

const TEAMS: &[&str] = &[
    "platform",
    "payments",
    "checkout",
    "core",
    "growth",
    "search",
    "data",
    "identity",
    "mobile",
    "web",
    "infra",
    "sre",
    "ml",
    "fraud",
    "logistics",
    "marketplace",
    "ads",
    "media",
    "messaging",
    "billing",
];

const OWNERS: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yuki", "zoe",
    "amir", "bea", "chen", "dana", "eli", "fatima", "gus", "hana", "igor",
];

const REGIONS: &[&str] = &[
    "us-east-1",
    "eu-west-1",
    "us-west-2",
    "eu-central-1",
    "ap-southeast-1",
    "ap-northeast-1",
    "us-east-2",
    "eu-north-1",
    "sa-east-1",
    "ca-central-1",
];

const ENVIRONMENTS: &[(&str, u32)] = &[("prod", 60), ("staging", 20), ("dev", 12), ("test", 8)];

const TIERS: &[(&str, u32)] = &[
    ("tier=backend", 50),
    ("tier=frontend", 15),
    ("tier=data", 15),
    ("tier=edge", 10),
    ("tier=batch", 10),
];

const PROTOCOLS: &[(&str, u32)] = &[("http", 55), ("grpc", 35), ("tcp", 10)];

const HTTP_PORTS: &[u16] = &[8080, 80, 8000, 3000, 5000, 8081, 9000, 443, 8443];
const GRPC_PORTS: &[u16] = &[50051, 9090, 8980, 50052, 6565];
const TCP_PORTS: &[u16] = &[6379, 5432, 9092, 27017, 3306, 11211, 5672, 2181];

/// Service-level flags: each service carries 0–3 of them on every instance.
const SERVICE_FLAGS: &[&str] = &[
    "internal",
    "public",
    "mtls",
    "pci",
    "gdpr",
    "critical",
    "legacy",
    "beta",
    "stateful",
    "stateless",
    "autoscaled",
    "sidecar",
    "istio",
    "linkerd",
    "experimental",
];

/// Instance-level extras, most popular first; an instance takes a run of consecutive ones.
const INSTANCE_TAGS: &[&str] = &[
    "on-demand",
    "spot",
    "warm",
    "ipv6",
    "dualstack",
    "highmem",
    "highcpu",
    "gpu",
    "preemptible",
    "drain-pending",
    "maintenance",
    "cold",
    "pool=general",
    "pool=compute",
    "pool=memory",
    "pool=system",
    "os=linux",
    "os=windows",
    "kernel=6.1",
    "kernel=5.15",
    "runtime=containerd",
    "runtime=cri-o",
    "mesh=enabled",
    "tracing",
    "profiling",
    "debug",
    "log-level=info",
    "log-level=debug",
    "rack=r01",
    "rack=r02",
    "rack=r03",
    "rack=r04",
    "shard=0",
    "shard=1",
    "shard=2",
    "shard=3",
    "cell=a",
    "cell=b",
    "cell=c",
    "cost-center=cc-100",
    "cost-center=cc-200",
    "slo=gold",
    "slo=silver",
    "slo=bronze",
    "backup=daily",
    "backup=hourly",
    "cache-warm",
    "read-replica",
    "leader",
    "follower",
    "blue",
    "green",
    "shadow",
    "migrated",
    "pinned",
    "quarantine",
    "noisy-neighbour",
    "burstable",
    "guaranteed",
    "best-effort",
];

/// Writes `instances` drafts as NDJSON to `out`, deterministically for `seed`.
///
/// Records are grouped by service; `ttl` is omitted. The output is buffered internally, so `out`
/// need not be a `BufWriter`; it is flushed at the end.
pub fn generate(instances: usize, seed: u64, out: &mut impl Write) -> io::Result<()> {
    if instances == 0 {
        return out.flush();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let world = World::new(&mut rng);
    let sizes = service_sizes(instances, &mut rng);
    let names = ServiceNames::new(&mut rng);

    let mut buf: Vec<u8> = Vec::with_capacity(FLUSH_AT + 4096);
    let mut id = String::with_capacity(160);
    let mut address = String::with_capacity(16);
    for (index, &size) in sizes.iter().enumerate() {
        let service = ServiceProfile::new(names.name(index), &mut rng);
        for n in 0..size {
            id.clear();
            id.push_str(&service.name);
            let _ = write!(id, "-{n}");
            let region = pick_weighted_index(&world.region_weights, &mut rng);
            address.clear();
            let _ = write!(
                address,
                "10.{}.{}.{}",
                world.region_octets[region] + rng.random_range(0..16u8),
                rng.random_range(0..=255u8),
                rng.random_range(1..=254u8)
            );
            let version = service.pick_version(&mut rng);
            let role = match rng.random_range(0..100u32) {
                0..=4 => Some("canary"),
                5..=79 => Some("primary"),
                _ => None,
            };
            let extras = instance_extras(&mut rng);
            let record = Record {
                id: &id,
                service: &service.name,
                address: &address,
                port: service.port,
                tags: Tags {
                    service: &service.tags,
                    zone: &world.zones[region][rng.random_range(0..3usize)],
                    arch: if rng.random_bool(0.8) {
                        "amd64"
                    } else {
                        "arm64"
                    },
                    role,
                    extras,
                },
                version: &service.versions[version].name,
                environment: pick_weighted(ENVIRONMENTS, &mut rng),
                region: REGIONS[world.regions[region]],
                meta: service.meta(version, &mut rng),
            };
            serde_json::to_writer(&mut buf, &record).map_err(io::Error::from)?;
            buf.push(b'\n');
            if buf.len() >= FLUSH_AT {
                out.write_all(&buf)?;
                buf.clear();
            }
        }
    }
    out.write_all(&buf)?;
    out.flush()
}

/// Catalog-wide choices: the regions in use and their weights.
struct World {
    /// Indexes into [`REGIONS`], most used first.
    regions: Vec<usize>,
    region_weights: Vec<u32>,
    /// Second octet base of each region's addresses.
    region_octets: Vec<u8>,
    /// `zone=REGIONa|b|c` for each region.
    zones: Vec<[String; 3]>,
}

impl World {
    fn new(rng: &mut ChaCha8Rng) -> World {
        let mut all = (0..REGIONS.len()).collect::<Vec<_>>();
        all.shuffle(rng);
        // Keep the usual pair first now and then: most fleets live in us-east-1 / eu-west-1.
        let count = rng.random_range(4..=6usize);
        let regions = all.into_iter().take(count).collect::<Vec<_>>();
        // Skewed: 1/(rank+1)^1.2, scaled to integers.
        let region_weights = (0..count)
            .map(|rank| (1000.0 / ((rank + 1) as f64).powf(1.2)) as u32)
            .collect();
        let region_octets = (0..count).map(|rank| (rank as u8) * 32).collect();
        let zones = regions
            .iter()
            .map(|&r| ["a", "b", "c"].map(|z| format!("zone={}{z}", REGIONS[r])))
            .collect();
        World {
            regions,
            region_weights,
            region_octets,
            zones,
        }
    }
}

/// Instance counts per service: `round(N / 28)` services (at least 1), sizes drawn from a
/// stratified Lomax distribution (most services small, a few very large), scaled to sum to N,
/// each at least 1, in shuffled order.
fn service_sizes(instances: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let services =
        ((instances as f64 / MEAN_INSTANCES_PER_SERVICE).round() as usize).clamp(1, instances);
    let raw = (0..services)
        .map(|i| {
            // Stratified: one draw per 1/S quantile band, kept away from the band's top edge
            // so the largest service is bounded by (4S)^(1/α).
            let u = (i as f64 + 0.25 + 0.5 * rng.random::<f64>()) / services as f64;
            (1.0 - u).powf(-1.0 / TAIL_INDEX) - 1.0
        })
        .collect::<Vec<f64>>();
    let total: f64 = raw.iter().sum();
    let scale = if total > 0.0 {
        instances as f64 / total
    } else {
        0.0
    };
    let mut sizes = raw
        .iter()
        .map(|r| ((r * scale).floor() as usize).max(1))
        .collect::<Vec<usize>>();
    let mut sum: usize = sizes.iter().sum();
    // Hand out what flooring lost, largest fractional parts first.
    if sum < instances {
        let mut order = (0..services).collect::<Vec<_>>();
        order.sort_by(|&a, &b| {
            let fa = raw[a] * scale - (raw[a] * scale).floor();
            let fb = raw[b] * scale - (raw[b] * scale).floor();
            fb.total_cmp(&fa)
        });
        for &i in order.iter().cycle() {
            if sum == instances {
                break;
            }
            sizes[i] += 1;
            sum += 1;
        }
    }
    // Take back what the minimum of 1 added, from the largest services.
    while sum > instances {
        let Some((largest, _)) = sizes.iter().enumerate().max_by_key(|&(_, &s)| s) else {
            break;
        };
        let take = (sum - instances).min(sizes[largest] - 1).max(1);
        sizes[largest] -= take;
        sum -= take;
    }
    sizes.shuffle(rng);
    sizes
}

/// Unique service names: `DOMAIN-ROLE` pairs in a seeded order, then `DOMAIN-ROLE-2`, `-3`, …
struct ServiceNames {
    pairs: Vec<(u8, u8)>,
}

impl ServiceNames {
    fn new(rng: &mut ChaCha8Rng) -> ServiceNames {
        let mut pairs = Vec::with_capacity(DOMAINS.len() * ROLES.len());
        for d in 0..DOMAINS.len() {
            for r in 0..ROLES.len() {
                pairs.push((d as u8, r as u8));
            }
        }
        pairs.shuffle(rng);
        ServiceNames { pairs }
    }

    fn name(&self, index: usize) -> String {
        let (d, r) = self.pairs[index % self.pairs.len()];
        let round = index / self.pairs.len();
        let (domain, role) = (DOMAINS[d as usize], ROLES[r as usize]);
        if round == 0 {
            format!("{domain}-{role}")
        } else {
            format!("{domain}-{role}-{}", round + 1)
        }
    }
}

struct Version {
    name: String,
    commit: String,
    build: String,
}

/// What every instance of one service shares.
struct ServiceProfile {
    name: String,
    port: u16,
    protocol: &'static str,
    team: &'static str,
    owner: &'static str,
    oncall: String,
    /// Protocol, `team=…`, `tier=…` and 0–3 service flags.
    tags: Vec<String>,
    /// Oldest first; the last is the newest.
    versions: Vec<Version>,
    /// Share (0–100) of instances on the newest version.
    newest_share: u32,
}

impl ServiceProfile {
    fn new(name: String, rng: &mut ChaCha8Rng) -> ServiceProfile {
        let protocol = pick_weighted(PROTOCOLS, rng);
        let ports = match protocol {
            "grpc" => GRPC_PORTS,
            "tcp" => TCP_PORTS,
            _ => HTTP_PORTS,
        };
        // The first port of each list is the most common.
        let port = if rng.random_bool(0.6) {
            ports[0]
        } else {
            ports[rng.random_range(0..ports.len())]
        };
        let team = TEAMS[skewed_index(TEAMS.len(), rng)];
        let owner = OWNERS[rng.random_range(0..OWNERS.len())];
        let mut tags = vec![
            protocol.to_string(),
            format!("team={team}"),
            pick_weighted(TIERS, rng).to_string(),
        ];
        let flags = rng.random_range(0..=3usize);
        let start = rng.random_range(0..SERVICE_FLAGS.len());
        for k in 0..flags {
            tags.push(SERVICE_FLAGS[(start + k) % SERVICE_FLAGS.len()].to_string());
        }
        let versions = versions(rng);
        ServiceProfile {
            name,
            port,
            protocol,
            team,
            owner,
            oncall: format!("pagerduty:{team}-primary"),
            tags,
            versions,
            newest_share: rng.random_range(55..=90),
        }
    }

    /// Index into `versions`: mostly the newest, the rest spread over older ones.
    fn pick_version(&self, rng: &mut ChaCha8Rng) -> usize {
        let newest = self.versions.len() - 1;
        if newest == 0 || rng.random_range(0..100) < self.newest_share {
            newest
        } else {
            rng.random_range(0..newest)
        }
    }

    /// Four pairs on average: commit and team always; build, owner, oncall and protocol often.
    fn meta<'a>(&'a self, version: usize, rng: &mut ChaCha8Rng) -> Meta<'a> {
        let v = &self.versions[version];
        let mut meta = Meta {
            entries: [("", ""); 6],
            len: 0,
        };
        // Keys in sorted order.
        if rng.random_bool(0.7) {
            meta.push("build", &v.build);
        }
        meta.push("commit", &v.commit);
        if rng.random_bool(0.3) {
            meta.push("oncall", &self.oncall);
        }
        if rng.random_bool(0.7) {
            meta.push("owner", self.owner);
        }
        if rng.random_bool(0.3) {
            meta.push("protocol", self.protocol);
        }
        meta.push("team", self.team);
        meta
    }
}

/// 1–5 distinct semver versions, oldest first; a quarter of services write them `v`-prefixed.
fn versions(rng: &mut ChaCha8Rng) -> Vec<Version> {
    let count = match rng.random_range(0..100u32) {
        0..=29 => 1,
        30..=59 => 2,
        60..=79 => 3,
        80..=91 => 4,
        _ => 5,
    };
    let prefix = if rng.random_bool(0.25) { "v" } else { "" };
    let mut major = match rng.random_range(0..100u32) {
        0..=19 => 0,
        20..=69 => 1,
        70..=89 => 2,
        _ => rng.random_range(3..=7),
    };
    let mut minor = rng.random_range(0..=30u32);
    let mut patch = rng.random_range(0..=20u32);
    let mut build = rng.random_range(100..=9000u32);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut commit = String::with_capacity(10);
        for _ in 0..10 {
            let digit = rng.random_range(0..16u32);
            commit.push(char::from_digit(digit, 16).unwrap_or('0'));
        }
        out.push(Version {
            name: format!("{prefix}{major}.{minor}.{patch}"),
            commit,
            build: build.to_string(),
        });
        build += rng.random_range(1..=40);
        match rng.random_range(0..10u32) {
            0 => {
                major += 1;
                minor = 0;
                patch = 0;
            }
            1..=5 => {
                minor += 1;
                patch = 0;
            }
            _ => patch += 1 + rng.random_range(0..3),
        }
    }
    out
}

/// Extra instance tags: usually none or one, 1% of instances carry a long list (20–50).
fn instance_extras(rng: &mut ChaCha8Rng) -> &'static [&'static str] {
    let roll = rng.random_range(0..1000u32);
    let count = if roll < 10 {
        rng.random_range(20..=50usize)
    } else if roll < 330 {
        1
    } else if roll < 360 {
        2
    } else {
        0
    };
    if count == 0 {
        return &[];
    }
    let start = skewed_index(INSTANCE_TAGS.len() - count + 1, rng);
    &INSTANCE_TAGS[start..start + count]
}

/// An index in `0..len`, small ones much more likely (roughly 1/(i+1)).
fn skewed_index(len: usize, rng: &mut ChaCha8Rng) -> usize {
    // Inverse CDF of a log-uniform draw over 1..=len+1.
    let x = ((len + 1) as f64).powf(rng.random::<f64>()) - 1.0;
    (x as usize).min(len.saturating_sub(1))
}

fn pick_weighted(choices: &[(&'static str, u32)], rng: &mut ChaCha8Rng) -> &'static str {
    let total: u32 = choices.iter().map(|&(_, w)| w).sum();
    let mut roll = rng.random_range(0..total.max(1));
    for &(value, weight) in choices {
        if roll < weight {
            return value;
        }
        roll -= weight;
    }
    choices.last().map_or("", |&(value, _)| value)
}

fn pick_weighted_index(weights: &[u32], rng: &mut ChaCha8Rng) -> usize {
    let total: u32 = weights.iter().sum();
    let mut roll = rng.random_range(0..total.max(1));
    for (index, &weight) in weights.iter().enumerate() {
        if roll < weight {
            return index;
        }
        roll -= weight;
    }
    weights.len().saturating_sub(1)
}

/// One output line; field order matches the draft type, `ttl` is left out.
#[derive(Serialize)]
struct Record<'a> {
    id: &'a str,
    service: &'a str,
    address: &'a str,
    port: u16,
    tags: Tags<'a>,
    version: &'a str,
    environment: &'a str,
    region: &'a str,
    meta: Meta<'a>,
}

/// The tags of one instance, serialised without collecting them.
struct Tags<'a> {
    service: &'a [String],
    zone: &'a str,
    arch: &'static str,
    role: Option<&'static str>,
    extras: &'static [&'static str],
}

impl Serialize for Tags<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let len = self.service.len() + 2 + usize::from(self.role.is_some()) + self.extras.len();
        let mut seq = serializer.serialize_seq(Some(len))?;
        for tag in self.service {
            seq.serialize_element(tag)?;
        }
        if let Some(role) = self.role {
            seq.serialize_element(role)?;
        }
        seq.serialize_element(self.zone)?;
        seq.serialize_element(self.arch)?;
        for tag in self.extras {
            seq.serialize_element(tag)?;
        }
        seq.end()
    }
}

/// Up to six meta pairs, pushed in key order.
struct Meta<'a> {
    entries: [(&'static str, &'a str); 6],
    len: usize,
}

impl<'a> Meta<'a> {
    fn push(&mut self, key: &'static str, value: &'a str) {
        if let Some(slot) = self.entries.get_mut(self.len) {
            *slot = (key, value);
            self.len += 1;
        }
    }
}

impl Serialize for Meta<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for (key, value) in &self.entries[..self.len] {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};

    use svcmeta_core::{validate, InstanceDraft, Limits};

    use super::*;

    fn output(instances: usize, seed: u64) -> Vec<u8> {
        let mut out = Vec::new();
        generate(instances, seed, &mut out).unwrap();
        out
    }

    fn drafts(instances: usize, seed: u64) -> Vec<InstanceDraft> {
        let out = output(instances, seed);
        let text = std::str::from_utf8(&out).unwrap();
        text.lines()
            .enumerate()
            .map(|(n, line)| {
                serde_json::from_str::<InstanceDraft>(line)
                    .unwrap_or_else(|e| panic!("line {}: {e}: {line}", n + 1))
            })
            .collect()
    }

    fn is_slug(text: &str) -> bool {
        let bytes = text.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 64
            && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
            && bytes.iter().all(|&b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
    }

    fn is_name(text: &str, extra: &[u8]) -> bool {
        (1..=128).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    }

    #[test]
    fn deterministic_per_seed() {
        let a = output(3000, 42);
        assert_eq!(a, output(3000, 42));
        assert_ne!(a, output(3000, 43));
        assert_ne!(output(3000, 0), output(3000, u64::MAX));
    }

    #[test]
    fn line_count_ids_and_shape() {
        for n in [0, 1, 2, 27, 28, 29, 100, 1000, 5000] {
            let out = output(n, 7);
            assert!(out.is_empty() || out.ends_with(b"\n"));
            let text = std::str::from_utf8(&out).unwrap();
            assert_eq!(text.lines().count(), n, "n={n}");
            let drafts = drafts(n, 7);
            let ids = drafts.iter().map(|d| d.id.as_str()).collect::<HashSet<_>>();
            assert_eq!(ids.len(), n, "ids unique, n={n}");
            for d in &drafts {
                assert!(d.id.starts_with(&format!("{}-", d.service)), "{}", d.id);
                assert_eq!(d.ttl, None);
            }
            assert!(!text.contains("\"ttl\""));
        }
        let first = output(1, 1);
        let line = std::str::from_utf8(&first).unwrap();
        assert!(line.starts_with("{\"id\":"), "{line}");
    }

    #[test]
    fn sizes_sum_to_n_with_the_expected_service_count() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for n in [1, 2, 13, 14, 15, 28, 100, 999, 20_000, 250_000] {
            let sizes = service_sizes(n, &mut rng);
            assert_eq!(sizes.iter().sum::<usize>(), n, "n={n}");
            let expected = ((n as f64 / 28.0).round() as usize).clamp(1, n);
            assert_eq!(sizes.len(), expected, "n={n}");
            assert!(sizes.iter().all(|&s| s >= 1));
        }
    }

    #[test]
    fn service_names_stay_unique_past_the_word_list() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let names = ServiceNames::new(&mut rng);
        let count = DOMAINS.len() * ROLES.len() * 3 + 17;
        let all = (0..count).map(|i| names.name(i)).collect::<Vec<_>>();
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), count);
        assert!(all.iter().all(|n| is_name(n, b"._-")), "{all:?}");
        assert!(all.iter().any(|n| n.ends_with("-3")));
    }

    #[test]
    fn every_record_follows_the_design_rules() {
        for seed in [1, 2] {
            for d in drafts(20_000, seed) {
                // DESIGN §1 with the default limits, checked here directly …
                assert!(is_name(&d.id, b"._:-"), "id {}", d.id);
                assert!(is_name(&d.service, b"._-"), "service {}", d.service);
                assert!((0..=65535).contains(&d.port));
                assert!(d.tags.len() <= 64, "{} tags", d.tags.len());
                assert_eq!(
                    d.tags.iter().collect::<HashSet<_>>().len(),
                    d.tags.len(),
                    "duplicate tags in {:?}",
                    d.tags
                );
                for tag in &d.tags {
                    assert!((1..=128).contains(&tag.len()));
                    assert!(!tag.chars().any(char::is_control));
                }
                assert!(is_slug(d.environment.as_deref().unwrap()));
                assert!(is_slug(d.region.as_deref().unwrap()));
                assert!(d.meta.len() <= 64);
                for (key, value) in &d.meta {
                    assert!(is_name(key, b"_.-"), "meta key {key}");
                    assert!(value.len() <= 512);
                }
                let octets = d
                    .address
                    .split('.')
                    .map(|o| o.parse::<u8>().unwrap())
                    .collect::<Vec<_>>();
                assert_eq!(octets.len(), 4);
                assert_eq!(octets[0], 10);
                // … and by the registry's own validation.
                let id = d.id.clone();
                if let Err(e) = validate(d, &Limits::standard()) {
                    panic!("{id}: {e}");
                }
            }
        }
    }

    #[test]
    fn model_averages_and_tail() {
        let n = 20_000;
        let drafts = drafts(n, 2024);
        let mut per_service: HashMap<&str, usize> = HashMap::new();
        let mut versions: HashMap<&str, HashSet<&str>> = HashMap::new();
        let mut environments: BTreeMap<&str, usize> = BTreeMap::new();
        let mut regions: BTreeMap<&str, usize> = BTreeMap::new();
        let (mut tags, mut meta, mut max_tags) = (0usize, 0usize, 0usize);
        for d in &drafts {
            *per_service.entry(&d.service).or_default() += 1;
            versions
                .entry(&d.service)
                .or_default()
                .insert(d.version.as_deref().unwrap());
            *environments
                .entry(d.environment.as_deref().unwrap())
                .or_default() += 1;
            *regions.entry(d.region.as_deref().unwrap()).or_default() += 1;
            tags += d.tags.len();
            max_tags = max_tags.max(d.tags.len());
            meta += d.meta.len();
        }
        let services = per_service.len();
        let mean = n as f64 / services as f64;
        assert!(
            (mean - 28.0).abs() < 1.0,
            "mean instances per service {mean}"
        );
        let mut sizes = per_service.values().copied().collect::<Vec<_>>();
        sizes.sort_unstable();
        let max = *sizes.last().unwrap();
        let median = sizes[sizes.len() / 2];
        assert!(max as f64 > 20.0 * mean, "tail: max {max}, mean {mean}");
        assert!(
            (median as f64) < mean,
            "most services are small: median {median}"
        );
        assert!(sizes[sizes.len() / 4] <= 8, "a quarter have few instances");

        let avg_tags = tags as f64 / n as f64;
        assert!((avg_tags - 8.0).abs() < 0.5, "average tags {avg_tags}");
        assert!(max_tags > 20 && max_tags <= 64, "max tags {max_tags}");
        let avg_meta = meta as f64 / n as f64;
        assert!((avg_meta - 4.0).abs() < 0.15, "average meta {avg_meta}");

        assert!(versions.values().all(|v| (1..=5).contains(&v.len())));
        assert!(versions.values().any(|v| v.len() >= 4));
        let all_versions = versions.values().flatten().collect::<Vec<_>>();
        assert!(all_versions.iter().any(|v| v.starts_with('v')));
        assert!(all_versions.iter().any(|v| !v.starts_with('v')));
        assert!(all_versions
            .iter()
            .all(|v| v.trim_start_matches('v').split('.').count() == 3));

        assert_eq!(
            environments.keys().copied().collect::<Vec<_>>(),
            ["dev", "prod", "staging", "test"]
        );
        assert!(environments["prod"] > n / 2, "{environments:?}");
        assert!(environments["test"] < environments["staging"]);
        assert!((4..=6).contains(&regions.len()), "{regions:?}");
        let mut counts = regions.values().copied().collect::<Vec<_>>();
        counts.sort_unstable();
        assert!(
            counts[counts.len() - 1] > 2 * counts[0],
            "skewed regions {regions:?}"
        );
    }

    #[test]
    fn writes_through_a_failing_writer_report_the_error() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let err = generate(10, 1, &mut Broken).unwrap_err();
        assert_eq!(err.to_string(), "disk full");
    }
}
