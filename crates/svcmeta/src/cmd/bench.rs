//! `svcmeta bench`: svcmeta against the alternatives, side by side on the same data in one
//! run (issue 6).
//!
//! It generates a `gen` catalog of N instances and a fixed query mix drawn from it, then
//! measures, in this order (so that at most two copies of the catalog are alive at once):
//! 1. queries in-process through [`Catalog`] with the result cache off (`memory` store);
//! 2. the same queries in SQLite (bundled, in memory, natural schema, indexed), results
//!    asserted equal to svcmeta's;
//! 3. the same queries as a linear scan ([`svcmeta_core::Query::matches`] on every
//!    instance), results asserted equal;
//! 4. writes: bulk and per-request registration into `memory`, deregistration, a churn run,
//!    SQLite in a file with an fsync per transaction, one raw fsync, and the `embedded` store
//!    with one writer and with 64 concurrent writers;
//! 5. memory: index bytes per instance and the process RSS right after loading;
//! 6. restart: reopening the `embedded` store and rebuilding the indexes;
//! 7. the queries again with the result cache on (on the reopened catalog), then HTTP through
//!    the real server on a loopback port with an in-repo load generator.
//!
//! The report goes to standard output as tables and, with `--json FILE`, as JSON whose
//! top-level fields (`instances`, `three_criteria_p50_us`, …) other tools read.

mod cases;
mod data;
mod h2c;
mod http;
mod measure;
mod parked;
pub(crate) mod scale_out;
mod sqlite;
mod writes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{json, Value};
use svcmeta_core::{Instance, Limits, Page, PlanStep, Query};
use svcmeta_server::{Catalog, CatalogSettings};
use svcmeta_store::Store;

use self::cases::{Answer, Case, Class};
use self::measure::{peak_rss_bytes, ratio, rss_bytes, timed, Latency};
use crate::backend::CommandError;
use crate::cli::BenchArgs;

/// Cases per class measured in-process before timing starts.
const WARM_UP: usize = 200;
/// Most SQLite runs per class, and the least, whatever the time budget.
const SQLITE_RUNS: (usize, usize) = (200, 10);
/// Most linear-scan runs per class, and the least.
const SCAN_RUNS: (usize, usize) = (100, 5);
/// Time budget per class of the slow engines.
const SLOW_BUDGET: Duration = Duration::from_secs(8);
/// Per-request registrations into `memory` (capped at N).
const MEMORY_SINGLE: usize = 20_000;
/// Registrations written by the single durable writer and the concurrent writers together.
const DURABLE_TAIL: usize = 100_000;
/// Registrations of the single durable writer (capped at a quarter of the tail).
const DURABLE_SINGLE: usize = 1_000;
/// Single-row durable SQLite transactions.
const SQLITE_DURABLE: usize = 1_000;
/// Raw fsync rounds.
const FSYNC_ROUNDS: usize = 200;

/// Removes the working directory when the run ends, however it ends.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Progress lines on standard error, with the time since the start.
struct Progress(Instant);

impl Progress {
    fn say(&self, what: std::fmt::Arguments<'_>) {
        eprintln!("[bench {:>7.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

/// `svcmeta bench`.
pub(crate) fn run(args: &BenchArgs) -> Result<(), CommandError> {
    if args.parked_http1_only {
        let run = parked::park_http1_on_fresh_server(args.parked_queries)?;
        let text = serde_json::to_string(&run).context("serialising the parking figures")?;
        crate::cmd::out!("{text}");
        return Ok(());
    }
    let report = measure_all(args)?;
    print_report(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).context("serialising the report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        crate::cmd::out!("JSON report written to {}", path.display());
    }
    Ok(())
}

/// In-process figures of one class on one catalog.
#[derive(Debug, Clone, Serialize)]
struct InProcess {
    latency: Latency,
    /// Per-case times, for ratios over the same cases as the slow engines.
    #[serde(skip)]
    times: Vec<Duration>,
    /// Per-case number of matches.
    #[serde(skip)]
    totals: Vec<u64>,
}

impl InProcess {
    /// The `count` slowest cases: time, matches and the plan they ran.
    fn slowest(&self, catalog: &Catalog, cases: &[Case], count: usize) -> Vec<Value> {
        let mut order: Vec<usize> = (0..self.times.len()).collect();
        order.sort_unstable_by(|a, b| self.times[*b].cmp(&self.times[*a]));
        order
            .into_iter()
            .take(count)
            .map(|n| {
                json!({
                    "us": self.times[n].as_secs_f64() * 1e6,
                    "matches": self.totals[n],
                    "plan": catalog.explain(&cases[n].query),
                })
            })
            .collect()
    }
}

/// What one slow engine (SQLite or the scan) measured for one class.
#[derive(Debug, Clone, Serialize)]
struct Slow {
    latency: Latency,
    /// svcmeta's (cache off) median over the very same cases.
    svcmeta_p50_same_cases_us: f64,
    /// How many times faster svcmeta is: this engine's median / svcmeta's median.
    vs_svcmeta: f64,
    /// Cases whose answer was asserted equal to svcmeta's.
    equality_checks: usize,
}

fn svcmeta_answer(catalog: &Catalog, class: Class, case: &Case, page: &Page) -> (Answer, Duration) {
    if class.count_only() {
        let ((total, _), elapsed) = timed(|| catalog.count(&case.query));
        (
            Answer {
                total,
                ids: Vec::new(),
            },
            elapsed,
        )
    } else {
        let (answer, elapsed) = timed(|| catalog.query(&case.query, page));
        (
            Answer {
                total: answer.total,
                ids: answer
                    .instances
                    .iter()
                    .map(|i| i.fields.id.clone())
                    .collect(),
            },
            elapsed,
        )
    }
}

/// Times every case on `catalog` after a warm-up; returns the times and the answers of the
/// first `keep` cases.
fn run_in_process(
    catalog: &Catalog,
    class: Class,
    cases: &[Case],
    warm_up: usize,
    keep: usize,
) -> (InProcess, Vec<Answer>) {
    let page = cases::page();
    for case in cases.iter().take(warm_up) {
        std::hint::black_box(svcmeta_answer(catalog, class, case, &page));
    }
    let mut times = Vec::with_capacity(cases.len());
    let mut totals = Vec::with_capacity(cases.len());
    let mut answers = Vec::with_capacity(keep.min(cases.len()));
    for (n, case) in cases.iter().enumerate() {
        let (answer, elapsed) = svcmeta_answer(catalog, class, case, &page);
        times.push(elapsed);
        totals.push(answer.total);
        if n < keep {
            answers.push(answer);
        }
    }
    (
        InProcess {
            latency: Latency::of(&times),
            times,
            totals,
        },
        answers,
    )
}

/// Runs a slow engine over the first cases within the budget, asserting each answer equal
/// to svcmeta's.
fn run_slow(
    engine: &str,
    class: Class,
    cases: &[Case],
    expected: &[Answer],
    svcmeta_times: &[Duration],
    runs: (usize, usize),
    mut answer: impl FnMut(&Case) -> anyhow::Result<Answer>,
) -> anyhow::Result<Slow> {
    let (most, least) = runs;
    let started = Instant::now();
    let mut times = Vec::new();
    for (n, case) in cases.iter().enumerate().take(most.min(expected.len())) {
        if n >= least && started.elapsed() > SLOW_BUDGET {
            break;
        }
        let began = Instant::now();
        let got = answer(case)?;
        times.push(began.elapsed());
        anyhow::ensure!(
            got == expected[n],
            "{engine} and svcmeta disagree on {} case {n} ({:?}): {engine} total {} first ids {:?}, \
             svcmeta total {} first ids {:?}",
            class.key(),
            case.query,
            got.total,
            got.ids.iter().take(3).collect::<Vec<_>>(),
            expected[n].total,
            expected[n].ids.iter().take(3).collect::<Vec<_>>()
        );
    }
    let latency = Latency::of(&times);
    let same = Latency::of(&svcmeta_times[..times.len().min(svcmeta_times.len())]);
    Ok(Slow {
        latency,
        svcmeta_p50_same_cases_us: same.p50_us,
        vs_svcmeta: ratio(latency.p50_us, same.p50_us),
        equality_checks: times.len(),
    })
}

/// Whether a plan starts from the list of every instance, and the most candidates a filter
/// residual was checked on.
fn plan_facts(plans: &[Vec<PlanStep>]) -> (bool, u64) {
    let touches_all = plans
        .iter()
        .any(|plan| plan.iter().any(|step| step.criterion == "all"));
    let most_filtered = plans
        .iter()
        .flat_map(|plan| plan.iter())
        .filter(|step| step.criterion.starts_with("filter "))
        .map(|step| step.postings)
        .max()
        .unwrap_or(0);
    (touches_all, most_filtered)
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

fn target(name: &str, wanted: &str, value: f64, met: bool) -> Value {
    json!({ "target": name, "wanted": wanted, "value": value, "met": met })
}

fn measure_all(args: &BenchArgs) -> anyhow::Result<Value> {
    let n = args.instances;
    anyhow::ensure!(n > 0, "--instances must be at least 1");
    anyhow::ensure!(args.queries > 0, "--queries must be at least 1");
    let seed = args.seed;
    let progress = Progress(Instant::now());
    let limits = Limits::standard();
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = WorkDir(base.join(format!(
        "svcmeta-bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )));
    std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
    let cache_off = CatalogSettings {
        cache_enabled: false,
        ..CatalogSettings::standard()
    };
    let cache_on = CatalogSettings::standard();

    // --- Parked blocking queries, first: the heap is still small and clean. ---------------
    let parked = if args.parked_queries > 0 {
        progress.say(format_args!(
            "parking up to {} blocking queries on a fresh server",
            args.parked_queries
        ));
        Some(parked::park_on_fresh_server(args.parked_queries)?)
    } else {
        None
    };

    // --- Load into memory; memory figures right after. ---------------------------------
    let rss_before = rss_bytes();
    progress.say(format_args!(
        "loading {n} gen instances (seed {seed}) into memory"
    ));
    let (memory, memory_bulk) = writes::load_memory(n, seed, &cache_off, &limits)?;
    let rss_loaded = rss_bytes();
    let stats = memory.index_stats(5);
    anyhow::ensure!(
        stats.instances == n as u64,
        "loaded {} instances, expected {n}",
        stats.instances
    );
    let index_bytes_per_instance = stats.index_memory_bytes as f64 / n as f64;
    progress.say(format_args!(
        "loaded: {:.0} registrations/s, index {:.1} B/instance, RSS {} MiB",
        memory_bulk.registrations_per_s,
        index_bytes_per_instance,
        rss_loaded >> 20
    ));

    // --- The query mix. ------------------------------------------------------------------
    let all: Vec<Arc<Instance>> = memory
        .query(
            &Query::default(),
            &Page {
                limit: None,
                cursor: None,
            },
        )
        .instances;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_BE4C);
    let mut mix: Vec<(Class, Vec<Case>)> = Vec::new();
    for class in Class::ALL {
        mix.push((class, cases::build(class, &all, args.queries, &mut rng)?));
    }
    let keep = SQLITE_RUNS.0.max(SCAN_RUNS.0);

    // --- svcmeta, cache off. --------------------------------------------------------------
    progress.say(format_args!("svcmeta in-process, cache off"));
    let mut off: Vec<InProcess> = Vec::new();
    let mut expected: Vec<Vec<Answer>> = Vec::new();
    let mut plans_json = Vec::new();
    let mut totals = Vec::new();
    for (class, cases) in &mix {
        let (figures, answers) = run_in_process(&memory, *class, cases, WARM_UP, keep);
        let plans: Vec<Vec<PlanStep>> = cases
            .iter()
            .take(50)
            .map(|c| memory.explain(&c.query))
            .collect();
        let (touches_all, most_filtered) = plan_facts(&plans);
        let mut class_totals: Vec<u64> = figures.totals.clone();
        let mean_total = if class_totals.is_empty() {
            0.0
        } else {
            class_totals.iter().sum::<u64>() as f64 / class_totals.len() as f64
        };
        totals.push(json!({
            "median": median(&mut class_totals),
            "mean": mean_total,
        }));
        plans_json.push(json!({
            "slowest_cases_cache_off": figures.slowest(&memory, cases, 5),
            "example_query": format!("{:?}", cases.first().map(|c| &c.query)),
            "example_plan": plans.first(),
            "starts_from_every_instance": touches_all,
            "residual_filter_candidates_max": most_filtered,
        }));
        off.push(figures);
        expected.push(answers);
    }

    // --- SQLite in memory. -----------------------------------------------------------------
    progress.say(format_args!("loading SQLite (in memory)"));
    let (db, loaded) = sqlite::Sqlite::load(all.iter().map(|i| (&i.fields, i.health)))?;
    anyhow::ensure!(db.rows()? == n as u64, "SQLite holds a different row count");
    let sqlite_bytes = db.bytes();
    let rss_with_sqlite = rss_bytes();
    progress.say(format_args!(
        "SQLite loaded in {:.1} s + {:.1} s indexing, {} MiB; querying",
        loaded.insert.as_secs_f64(),
        loaded.index.as_secs_f64(),
        sqlite_bytes >> 20
    ));
    let mut sqlite_figures = Vec::new();
    let mut sqlite_plans = Vec::new();
    for (k, (class, cases)) in mix.iter().enumerate() {
        let sql = sqlite::ClassSql::of(*class);
        if let Some(first) = cases.first() {
            sqlite_plans.push(db.explain(&sql, first)?);
        }
        sqlite_figures.push(run_slow(
            "SQLite",
            *class,
            cases,
            &expected[k],
            &off[k].times,
            SQLITE_RUNS,
            |case| db.answer(&sql, case),
        )?);
    }

    // --- Linear scan. ----------------------------------------------------------------------
    progress.say(format_args!("linear scan"));
    let mut scan_figures = Vec::new();
    for (k, (class, cases)) in mix.iter().enumerate() {
        scan_figures.push(run_slow(
            "the linear scan",
            *class,
            cases,
            &expected[k],
            &off[k].times,
            SCAN_RUNS,
            |case| Ok(cases::scan(&all, &case.query, class.count_only())),
        )?);
    }

    // --- Durable SQLite writes into a file. ----------------------------------------------------
    progress.say(format_args!(
        "SQLite durable writes (file, fsync per transaction)"
    ));
    let sqlite_file = dir.0.join("sqlite-durable.db");
    db.save_to(&sqlite_file)?;
    drop(db);
    // Flush the copy first, so its write-back does not land in the measured fsyncs; the
    // file stays until the end of the run (freeing it makes the disk busy too).
    std::fs::File::open(&sqlite_file)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("syncing {}", sqlite_file.display()))?;
    let sqlite_regs = data::collect(n.min(SQLITE_DURABLE), seed ^ 3, "sqlite-durable-", &limits)?;
    let sqlite_durable =
        sqlite::durable_writes(&sqlite_file, "WAL", sqlite_regs.iter().map(|r| r.fields()))?;
    drop(sqlite_regs);

    // --- Writes into memory: per request, deregistration, churn. -------------------------------
    progress.say(format_args!("memory: one registration per request"));
    let single = data::collect(n.min(MEMORY_SINGLE), seed ^ 1, "single-", &limits)?;
    let (memory_single_register, memory_single_deregister) =
        writes::one_per_request(&memory, single)?;
    progress.say(format_args!("memory: churn of {n} register + deregister"));
    let churn = writes::churn(&memory, n, seed ^ 2, &limits)?;
    drop(all);
    memory.shutdown();
    drop(memory);

    // --- Durable writes into embedded. ---------------------------------------------------------
    progress.say(format_args!("one raw fsync, for reference"));
    let fsync = writes::fsync_reference(&dir.0, FSYNC_ROUNDS)?;
    let tail = n.min(DURABLE_TAIL);
    let single_count = DURABLE_SINGLE.min(tail / 4);
    let store_dir = dir.0.join("store");
    progress.say(format_args!(
        "embedded: {} in bulk, {single_count} by one writer, {} by {} writers",
        n - tail,
        tail - single_count,
        writes::WRITERS
    ));
    let plan = writes::DurablePlan {
        instances: n,
        seed,
        tail,
        single: single_count,
    };
    let durable = writes::fill_embedded(&store_dir, plan, &cache_on, &limits, &|what| {
        progress.say(what)
    })?;
    anyhow::ensure!(
        durable.instances == n as u64,
        "the embedded store holds {} instances, expected {n}",
        durable.instances
    );

    // --- Restart. ------------------------------------------------------------------------------
    progress.say(format_args!("restart: reopening the embedded store"));
    let (loaded_count, load_only) = {
        let started = Instant::now();
        let store = Store::open_embedded(&store_dir)
            .map_err(|e| anyhow::anyhow!("opening the store: {e}"))?;
        let snapshot = store
            .load()
            .map_err(|e| anyhow::anyhow!("loading the store: {e}"))?;
        (snapshot.instances.len(), started.elapsed())
    };
    let (reopened, rebuild) = timed(|| -> anyhow::Result<Catalog> {
        let store = Store::open_embedded(&store_dir)
            .map_err(|e| anyhow::anyhow!("opening the store: {e}"))?;
        Catalog::open(store, cache_on.clone())
            .map_err(|e| anyhow::anyhow!("reopening the catalog: {e}"))
    });
    let reopened = Arc::new(reopened?);
    let rss_reopened = rss_bytes();
    anyhow::ensure!(
        reopened.index_stats(0).instances == n as u64 && loaded_count == n,
        "the reopened catalog does not hold {n} instances"
    );
    progress.say(format_args!(
        "reopened in {:.2} s (reading the store alone {:.2} s)",
        rebuild.as_secs_f64(),
        load_only.as_secs_f64()
    ));

    // --- svcmeta, cache on (the reopened catalog). ---------------------------------------------
    progress.say(format_args!("svcmeta in-process, cache on"));
    let mut on = Vec::new();
    for (k, (class, cases)) in mix.iter().enumerate() {
        // The first pass fills the cache; the second is measured.
        let (_, _) = run_in_process(&reopened, *class, cases, 0, 0);
        let (hits_mid, misses_mid, _) = reopened.cache_counts();
        let (figures, answers) = run_in_process(&reopened, *class, cases, 0, keep);
        let (hits_after, misses_after, entries) = reopened.cache_counts();
        for (m, answer) in answers.iter().enumerate() {
            anyhow::ensure!(
                *answer == expected[k][m],
                "cache-on and cache-off answers differ on {} case {m}",
                class.key()
            );
        }
        let measured_hits = hits_after - hits_mid;
        let measured_lookups = measured_hits + (misses_after - misses_mid);
        on.push(json!({
            "latency": figures.latency,
            "hit_ratio": ratio(measured_hits as f64, measured_lookups as f64),
            "cache_applies": !class.count_only(),
            "cache_entries": entries,
            "equality_checks": answers.len(),
            "vs_cache_off_p50": ratio(off[k].latency.p50_us, figures.latency.p50_us),
        }));
    }

    // --- HTTP. ---------------------------------------------------------------------------------
    progress.say(format_args!(
        "HTTP: {} connections, {:.1} s per endpoint",
        args.http_connections, args.http_seconds
    ));
    let server = http::Server::start(Arc::clone(&reopened))?;
    let base_url = server.base();
    let three = mix
        .iter()
        .position(|(class, _)| *class == Class::Three)
        .context("no three-criteria class")?;
    let three_cases = &mix[three].1;
    let native_urls: Vec<String> = three_cases
        .iter()
        .map(|c| format!("{base_url}/api/v1/instances?{}", c.http_query))
        .collect();
    let (status, body) = http::fetch(&native_urls[0])?;
    let first: Value = serde_json::from_str(&body).context("the native answer is not JSON")?;
    anyhow::ensure!(
        status == 200 && first["total"].as_u64() == Some(expected[three][0].total),
        "HTTP answered {status} with total {} for {}, expected {}",
        first["total"],
        native_urls[0],
        expected[three][0].total
    );
    let duration = Duration::from_secs_f64(args.http_seconds.max(0.1));
    let path_of = |url: &String| url[base_url.len()..].to_string();
    let native_paths: Vec<String> = native_urls.iter().map(path_of).collect();
    let native = http::load_raw(
        "GET /api/v1/instances?service=S&env=E&tag=T&limit=100",
        server.address(),
        &native_paths,
        args.http_client_threads,
        args.http_connections,
        duration,
    )?;
    anyhow::ensure!(native.errors == 0, "{} HTTP errors", native.errors);
    let native_ureq = http::load(
        "GET /api/v1/instances?service=S&env=E&tag=T&limit=100",
        &native_urls,
        args.http_connections,
        duration,
    )?;
    anyhow::ensure!(
        native_ureq.errors == 0,
        "{} HTTP errors",
        native_ureq.errors
    );
    let consul_urls: Vec<String> = three_cases
        .iter()
        .map(|c| {
            let (service, tag) = &c.service_tag;
            format!(
                "{base_url}/v1/health/service/{}?passing&{}",
                form_urlencoded::byte_serialize(service.as_bytes()).collect::<String>(),
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("tag", tag)
                    .finish()
            )
        })
        .collect();
    let (consul_status, _) = http::fetch(&consul_urls[0])?;
    let consul = if consul_status == 200 {
        let consul_paths: Vec<String> = consul_urls.iter().map(path_of).collect();
        match http::load_raw(
            "GET /v1/health/service/S?passing&tag=T",
            server.address(),
            &consul_paths,
            args.http_client_threads,
            args.http_connections,
            duration,
        ) {
            Ok(run) => json!({ "available": true, "run": run }),
            Err(error) => json!({ "available": true, "error": format!("{error:#}") }),
        }
    } else {
        json!({
            "available": false,
            "note": format!("not available: GET /v1/health/service/… answered {consul_status}"),
        })
    };
    server.stop()?;
    drop(reopened);

    // --- The report. ---------------------------------------------------------------------------
    let mut queries = serde_json::Map::new();
    for (k, (class, cases)) in mix.iter().enumerate() {
        queries.insert(
            class.key().to_string(),
            json!({
                "description": class.description(),
                "distinct_queries": cases.len(),
                "matches": totals[k],
                "svcmeta_cache_off": off[k].latency,
                "svcmeta_cache_on": on[k],
                "sqlite": sqlite_figures[k],
                "sqlite_plan": sqlite_plans.get(k),
                "scan": scan_figures[k],
                "sqlite_vs_svcmeta": sqlite_figures[k].vs_svcmeta,
                "scan_vs_svcmeta": scan_figures[k].vs_svcmeta,
                "plan": plans_json[k],
            }),
        );
    }
    let equality_total: usize = sqlite_figures
        .iter()
        .chain(scan_figures.iter())
        .map(|s| s.equality_checks)
        .sum();
    let three_off = &off[three].latency;
    let fsync_p50 = fsync.latency.p50_us;
    let durable_single_p99 = durable.single_writer.latency.p99_us;
    let no_full_scan = plans_json
        .iter()
        .all(|p| p["starts_from_every_instance"] == json!(false));
    let rss_mb = rss_loaded as f64 / 1e6;
    let http_qps = native.queries_per_s;
    let targets = vec![
        target(
            "three_criteria_p50_us",
            "<= 10 (stretch 5)",
            three_off.p50_us,
            three_off.p50_us <= 10.0,
        ),
        target(
            "three_criteria_p99_us",
            "<= 40",
            three_off.p99_us,
            three_off.p99_us <= 40.0,
        ),
        target(
            "three_criteria_vs_sqlite",
            ">= 500",
            sqlite_figures[three].vs_svcmeta,
            sqlite_figures[three].vs_svcmeta >= 500.0,
        ),
        target(
            "three_criteria_vs_scan",
            ">= 1000",
            scan_figures[three].vs_svcmeta,
            scan_figures[three].vs_svcmeta >= 1000.0,
        ),
        target(
            "no class starts from every instance",
            "true",
            f64::from(u8::from(no_full_scan)),
            no_full_scan,
        ),
        target(
            "index_bytes_per_instance",
            "<= 20",
            index_bytes_per_instance,
            index_bytes_per_instance <= 20.0,
        ),
        target("rss_mb (1M instances)", "<= 600", rss_mb, rss_mb <= 600.0),
        target(
            "memory_registrations_per_s",
            ">= 500000",
            memory_bulk.registrations_per_s,
            memory_bulk.registrations_per_s >= 500_000.0,
        ),
        target(
            "durable_registrations_per_s (64 writer tasks)",
            ">= 100000",
            durable.concurrent_tasks.registrations_per_s,
            durable.concurrent_tasks.registrations_per_s >= 100_000.0,
        ),
        target(
            "durable registrations/s (64 writer threads)",
            ">= 100000",
            durable.concurrent.registrations_per_s,
            durable.concurrent.registrations_per_s >= 100_000.0,
        ),
        target(
            "single durable write p99 / one fsync p50",
            "<= 2",
            ratio(durable_single_p99, fsync_p50),
            ratio(durable_single_p99, fsync_p50) <= 2.0,
        ),
        target(
            "rebuild_s (1M instances)",
            "<= 2",
            rebuild.as_secs_f64(),
            rebuild.as_secs_f64() <= 2.0,
        ),
        target(
            "http_queries_per_s",
            ">= 60000",
            http_qps,
            http_qps >= 60_000.0,
        ),
    ];
    let mut targets = targets;
    if let Some(run) = &parked {
        targets.push(target(
            "parked_blocking_queries",
            ">= 100000",
            run.http2.parked as f64,
            run.http2.parked >= 100_000 && run.http2.woken == run.http2.parked,
        ));
        targets.push(target(
            "parked_bytes_per_query",
            "<= 1024",
            run.http2.bytes_per_query,
            run.http2.bytes_per_query <= 1024.0,
        ));
    }
    let report = json!({
        "instances": n,
        "three_criteria_p50_us": three_off.p50_us,
        "three_criteria_p99_us": three_off.p99_us,
        "three_criteria_vs_sqlite": sqlite_figures[three].vs_svcmeta,
        "three_criteria_vs_scan": scan_figures[three].vs_svcmeta,
        "index_bytes_per_instance": index_bytes_per_instance,
        "rss_bytes": rss_loaded,
        "memory_registrations_per_s": memory_bulk.registrations_per_s,
        "durable_registrations_per_s": durable.concurrent_tasks.registrations_per_s,
        "durable_registrations_per_s_threads": durable.concurrent.registrations_per_s,
        "rebuild_s": rebuild.as_secs_f64(),
        "http_queries_per_s": http_qps,
        "parked_blocking_queries": parked.as_ref().map(|run| run.http2.parked),
        "parked_bytes_per_query": parked.as_ref().map(|run| run.http2.bytes_per_query),
        "seed": seed,
        "machine": {
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "note": "shared 2-core development machine; expect noise between runs",
            "working_dir": base.display().to_string(),
        },
        "equality_checks": equality_total,
        "queries": queries,
        "ratios": Class::ALL.iter().enumerate().map(|(k, class)| {
            (class.key().to_string(), json!({
                "sqlite_vs_svcmeta": sqlite_figures[k].vs_svcmeta,
                "scan_vs_svcmeta": scan_figures[k].vs_svcmeta,
            }))
        }).collect::<serde_json::Map<String, Value>>(),
        "writes": {
            "memory_bulk": memory_bulk,
            "memory_one_per_request": memory_single_register,
            "memory_deregister_one_per_request": memory_single_deregister,
            "churn": churn,
            "embedded": durable,
            "fsync_reference": fsync,
            "sqlite_file_one_per_transaction": {
                "journal_mode": sqlite_durable.journal_mode,
                "synchronous": "FULL",
                "rows_before": sqlite_durable.rows_before,
                "transactions": sqlite_durable.latencies.len(),
                "per_s": measure::rate(
                    sqlite_durable.latencies.len(),
                    sqlite_durable.elapsed.as_secs_f64(),
                ),
                "latency": Latency::of(&sqlite_durable.latencies),
            },
        },
        "memory": {
            "index_memory_bytes": stats.index_memory_bytes,
            "index_bytes_per_instance": index_bytes_per_instance,
            "posting_lists": stats.posting_lists,
            "services": stats.services,
            "distinct_tags": stats.distinct_tags,
            "rss_before_load_bytes": rss_before,
            "rss_after_load_bytes": rss_loaded,
            "rss_with_sqlite_loaded_bytes": rss_with_sqlite,
            "sqlite_database_bytes": sqlite_bytes,
            "sqlite_load_s": loaded.insert.as_secs_f64(),
            "sqlite_index_s": loaded.index.as_secs_f64(),
            "rss_after_restart_bytes": rss_reopened,
            "peak_rss_bytes": peak_rss_bytes(),
        },
        "restart": {
            "rebuild_s": rebuild.as_secs_f64(),
            "read_store_only_s": load_only.as_secs_f64(),
            "instances": n,
        },
        "http": {
            "native_three_criteria": native,
            "native_three_criteria_ureq_client": native_ureq,
            "consul_health": consul,
        },
        "watches": parked,
        "targets": targets,
    });
    progress.say(format_args!("done"));
    Ok(report)
}

/// One protocol's parked-queries figures (`watches` or `watches.http1` of the report).
fn parked_text(w: &Value) -> String {
    if w.is_null() {
        return "not run".to_string();
    }
    format!(
        "{} of {} asked over {} connections, {:.0} bytes each (RSS delta / N: connections {:.0}, \
         parked query beyond them {:.0}), {} woken by one write in {:.2} s{}",
        w["parked"],
        w["requested"],
        w["connections"],
        f(&w["bytes_per_query"]),
        f(&w["connection_bytes"]),
        f(&w["query_bytes_beyond_connection"]),
        w["woken"],
        f(&w["wake_s"]),
        w["limited_by"]
            .as_str()
            .map(|why| format!("; limited by the {why}"))
            .unwrap_or_default()
    )
}

fn f(value: &Value) -> f64 {
    value.as_f64().unwrap_or(0.0)
}

fn us(value: &Value) -> String {
    let v = f(value);
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0} µs")
    } else {
        format!("{v:.1} µs")
    }
}

fn times(value: &Value) -> String {
    format!("{:.0}×", f(value))
}

fn per_s(value: &Value) -> String {
    format!("{:.0}/s", f(value))
}

/// Prints the report as tables.
/// The table row of one concurrent durable run.
fn concurrent_row(run: &Value, writers: &str) -> Vec<String> {
    vec![
        format!(
            "embedded, {} writer {writers}, one per request",
            run["writers"]
        ),
        per_s(&run["registrations_per_s"]),
        format!(
            "p50 {} p99 {}, {:.1} per commit",
            us(&run["latency"]["p50_us"]),
            us(&run["latency"]["p99_us"]),
            f(&run["registrations_per_commit"])
        ),
    ]
}

fn print_report(report: &Value) {
    use crate::cmd::{out, print_table};
    out!(
        "svcmeta bench: {} instances, seed {}",
        report["instances"],
        report["seed"]
    );
    out!("");
    let mut rows = Vec::new();
    for class in Class::ALL {
        let q = &report["queries"][class.key()];
        rows.push(vec![
            class.key().to_string(),
            format!("{}", q["matches"]["median"]),
            us(&q["svcmeta_cache_off"]["p50_us"]),
            us(&q["svcmeta_cache_off"]["p99_us"]),
            us(&q["svcmeta_cache_on"]["latency"]["p50_us"]),
            us(&q["svcmeta_cache_on"]["latency"]["p99_us"]),
            us(&q["sqlite"]["latency"]["p50_us"]),
            us(&q["sqlite"]["latency"]["p99_us"]),
            us(&q["scan"]["latency"]["p50_us"]),
            times(&q["sqlite_vs_svcmeta"]),
            times(&q["scan_vs_svcmeta"]),
        ]);
    }
    print_table(
        &[
            "QUERY",
            "MATCHES",
            "OFF p50",
            "OFF p99",
            "ON p50",
            "ON p99",
            "SQLITE p50",
            "SQLITE p99",
            "SCAN p50",
            "VS SQLITE",
            "VS SCAN",
        ],
        &rows,
    );
    out!("");
    let w = &report["writes"];
    let e = &w["embedded"];
    let rows = vec![
        vec![
            "memory, bulk batches of 10,000".to_string(),
            per_s(&w["memory_bulk"]["registrations_per_s"]),
            String::new(),
        ],
        vec![
            "memory, one per request".to_string(),
            per_s(&w["memory_one_per_request"]["per_s"]),
            format!(
                "p50 {} p99 {}",
                us(&w["memory_one_per_request"]["latency"]["p50_us"]),
                us(&w["memory_one_per_request"]["latency"]["p99_us"])
            ),
        ],
        vec![
            "memory, deregister one per request".to_string(),
            per_s(&w["memory_deregister_one_per_request"]["per_s"]),
            format!(
                "p50 {} p99 {}",
                us(&w["memory_deregister_one_per_request"]["latency"]["p50_us"]),
                us(&w["memory_deregister_one_per_request"]["latency"]["p99_us"])
            ),
        ],
        vec![
            format!(
                "churn register / deregister (cycles of {})",
                w["churn"]["cycle"]
            ),
            format!(
                "{} / {}",
                per_s(&w["churn"]["registrations_per_s"]),
                per_s(&w["churn"]["deregistrations_per_s"])
            ),
            format!(
                "index bytes {} → {} (after first cycle {}), returned: {}",
                w["churn"]["index_bytes_before"],
                w["churn"]["index_bytes_after"],
                w["churn"]["index_bytes_after_first_cycle"],
                w["churn"]["returned_to_start"]
            ),
        ],
        vec![
            "embedded, bulk batches of 10,000".to_string(),
            per_s(&e["bulk"]["registrations_per_s"]),
            format!("{} registrations", e["bulk"]["registrations"]),
        ],
        vec![
            "embedded, one writer, one per request".to_string(),
            per_s(&e["single_writer"]["per_s"]),
            format!(
                "p50 {} p99 {}",
                us(&e["single_writer"]["latency"]["p50_us"]),
                us(&e["single_writer"]["latency"]["p99_us"])
            ),
        ],
        concurrent_row(&e["concurrent"], "threads"),
        concurrent_row(&e["concurrent_tasks"], "tasks"),
        vec![
            format!(
                "SQLite file, one per transaction ({}, FULL)",
                w["sqlite_file_one_per_transaction"]["journal_mode"]
                    .as_str()
                    .unwrap_or("")
            ),
            per_s(&w["sqlite_file_one_per_transaction"]["per_s"]),
            format!(
                "p50 {} p99 {}",
                us(&w["sqlite_file_one_per_transaction"]["latency"]["p50_us"]),
                us(&w["sqlite_file_one_per_transaction"]["latency"]["p99_us"])
            ),
        ],
        vec![
            "one raw fsync (4 KiB write + fsync)".to_string(),
            String::new(),
            format!(
                "p50 {} p99 {}",
                us(&w["fsync_reference"]["latency"]["p50_us"]),
                us(&w["fsync_reference"]["latency"]["p99_us"])
            ),
        ],
    ];
    print_table(&["WRITES", "RATE", "DETAIL"], &rows);
    out!("");
    let m = &report["memory"];
    let h = &report["http"]["native_three_criteria"];
    let hu = &report["http"]["native_three_criteria_ureq_client"];
    let consul = &report["http"]["consul_health"];
    let consul_text = if let Some(error) = consul["error"].as_str() {
        format!("failed: {error}")
    } else if consul["available"] == json!(true) {
        format!(
            "{} q/s, p99 {}",
            f(&consul["run"]["queries_per_s"]).round(),
            us(&consul["run"]["latency"]["p99_us"])
        )
    } else {
        consul["note"]
            .as_str()
            .unwrap_or("not available")
            .to_string()
    };
    let rows = vec![
        vec![
            "index bytes per instance".to_string(),
            format!("{:.1}", f(&m["index_bytes_per_instance"])),
        ],
        vec![
            "RSS after loading".to_string(),
            format!(
                "{} MiB",
                m["rss_after_load_bytes"].as_u64().unwrap_or(0) >> 20
            ),
        ],
        vec![
            "SQLite database (in memory)".to_string(),
            format!(
                "{} MiB",
                m["sqlite_database_bytes"].as_u64().unwrap_or(0) >> 20
            ),
        ],
        vec![
            "restart: reopen + rebuild".to_string(),
            format!(
                "{:.2} s (reading the store alone {:.2} s)",
                f(&report["restart"]["rebuild_s"]),
                f(&report["restart"]["read_store_only_s"])
            ),
        ],
        vec![
            "HTTP /api/v1/instances, 3 criteria, limit 100".to_string(),
            format!(
                "{:.0} q/s, p50 {} p99 {}, {} connections on {} client thread(s); \
                 CPU per query: client {:.0} µs, server {:.0} µs",
                f(&h["queries_per_s"]),
                us(&h["latency"]["p50_us"]),
                us(&h["latency"]["p99_us"]),
                h["connections"],
                h["client_threads"],
                f(&h["client_cpu_us_per_query"]),
                f(&h["server_cpu_us_per_query"])
            ),
        ],
        vec![
            "HTTP /v1/health/service/S?passing&tag=T".to_string(),
            consul_text,
        ],
        vec![
            "HTTP same as above, ureq client (a thread per connection)".to_string(),
            format!(
                "{:.0} q/s, p99 {}; CPU per query: client {:.0} µs, server {:.0} µs",
                f(&hu["queries_per_s"]),
                us(&hu["latency"]["p99_us"]),
                f(&hu["client_cpu_us_per_query"]),
                f(&hu["server_cpu_us_per_query"])
            ),
        ],
        vec![
            "blocking queries parked at once, HTTP/2 streams".to_string(),
            parked_text(&report["watches"]),
        ],
        vec![
            "blocking queries parked at once, HTTP/1.1".to_string(),
            parked_text(&report["watches"]["http1"]),
        ],
    ];
    print_table(&["FIGURE", "VALUE"], &rows);
    out!("");
    let rows: Vec<Vec<String>> = report["targets"]
        .as_array()
        .map(|targets| {
            targets
                .iter()
                .map(|t| {
                    vec![
                        t["target"].as_str().unwrap_or("").to_string(),
                        t["wanted"].as_str().unwrap_or("").to_string(),
                        format!("{:.2}", f(&t["value"])),
                        if t["met"] == json!(true) {
                            "met"
                        } else {
                            "MISSED"
                        }
                        .to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print_table(
        &["TARGET (issue 6, at 1M)", "WANTED", "VALUE", "MET"],
        &rows,
    );
    out!(
        "equality checks against svcmeta: {}",
        report["equality_checks"]
    );
}
