//! `svcmeta bench-redis`: the redis store with several nodes in one process sharing one
//! Redis — write throughput through one node and through three, replication lag (a write's
//! acknowledgment on node A until node B has applied it) idle and under load, and the time a
//! new node takes to catch up with N instances.
//!
//! Every run uses a fresh key prefix and deletes its keys at the end.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use serde_json::{json, Value};
use svcmeta_core::{validate, InstanceDraft, Limits, Mutation};
use svcmeta_server::{Catalog, CatalogSettings};
use svcmeta_store::{SharedStore, Store};

use super::data::for_each_batch;
use super::measure::{rate, rss_bytes, Latency};
use crate::cli::RedisBenchArgs;
use crate::cmd::CommandError;

/// Registrations per bulk write request.
const BULK_BATCH: usize = 10_000;
/// Concurrent writer threads of the one-registration-per-request runs.
const WRITERS: usize = 64;

fn open_node(url: &str, prefix: &str) -> anyhow::Result<Catalog> {
    let store = SharedStore::open(url, prefix, 100_000)?;
    Catalog::open(Store::Shared(Box::new(store)), CatalogSettings::standard())
        .with_context(|| format!("opening a node on {url}"))
}

fn probe_registration(id: &str, port: i64) -> anyhow::Result<Mutation> {
    let draft = InstanceDraft {
        id: id.to_string(),
        service: "bench-probe".to_string(),
        address: "10.9.9.9".to_string(),
        port,
        tags: vec!["probe".to_string()],
        ..InstanceDraft::default()
    };
    validate(draft, &Limits::standard())
        .map(Mutation::Register)
        .map_err(|e| anyhow!("probe registration: {e}"))
}

/// Waits (without polling) until `node` has applied `revision`.
fn wait_applied(
    runtime: &tokio::runtime::Runtime,
    node: &Catalog,
    revision: u64,
) -> anyhow::Result<()> {
    let mut watcher = node.subscribe();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            while *watcher.borrow_and_update() < revision {
                if watcher.changed().await.is_err() {
                    break;
                }
            }
        })
        .await
    })?;
    if node.revision() < revision {
        return Err(anyhow!("node stuck below revision {revision}"));
    }
    Ok(())
}

/// Writes probes on `from` one after another and measures, for each, the time from its
/// acknowledgment until `to` has applied it, and from the start of the write call until `to`
/// has applied it (the write's own latency included).
fn lag(
    from: &Catalog,
    to: &Catalog,
    probes: usize,
    label: &str,
) -> anyhow::Result<(Latency, Latency)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let mut samples = Vec::with_capacity(probes);
    let mut from_start = Vec::with_capacity(probes);
    for n in 0..probes {
        let started = Instant::now();
        let mutation = probe_registration(&format!("probe-{label}-{}", n % 64), n as i64 + 1)?;
        let outcome = from
            .write_blocking(vec![mutation])
            .map_err(|e| anyhow!("probe write: {e}"))?;
        let acknowledged = Instant::now();
        wait_applied(&runtime, to, outcome.revision)?;
        samples.push(acknowledged.elapsed());
        from_start.push(started.elapsed());
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok((Latency::of(&samples), Latency::of(&from_start)))
}

/// `WRITERS` threads writing one registration per request for `seconds`, spread over `nodes`.
fn concurrent_writes(nodes: &[Arc<Catalog>], seconds: f64, tag: &str) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let node = Arc::clone(&nodes[w % nodes.len()]);
            let stop = Arc::clone(&stop);
            let written = Arc::clone(&written);
            let tag = tag.to_string();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut n = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let mutation = probe_registration(&format!("w-{tag}-{w}-{}", n % 500), n)?;
                    node.write_blocking(vec![mutation])
                        .map_err(|e| anyhow!("write: {e}"))?;
                    written.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow!("a writer thread panicked"))??;
    }
    Ok(rate(
        written.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    ))
}

fn measure(args: &RedisBenchArgs, prefix: &str) -> anyhow::Result<Value> {
    let url = args.redis_url.as_str();
    let a = Arc::new(open_node(url, prefix)?);
    let b = Arc::new(open_node(url, prefix)?);
    let c = Arc::new(open_node(url, prefix)?);
    let limits = Limits::standard();

    eprintln!(
        "bench-redis: bulk load of {} instances through one node",
        args.instances
    );
    let mut write_time = Duration::ZERO;
    let produced = for_each_batch(
        args.instances,
        args.seed,
        "",
        BULK_BATCH,
        &limits,
        |batch| {
            let began = Instant::now();
            a.write_blocking(batch.into_iter().map(Mutation::Register).collect())
                .map_err(|e| anyhow!("bulk write: {e}"))?;
            write_time += began.elapsed();
            Ok(())
        },
    )?;
    let bulk_per_s = rate(produced.count, write_time.as_secs_f64());
    wait_applied(
        &tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?,
        &c,
        a.revision(),
    )?;

    eprintln!("bench-redis: replication lag, idle");
    let idle_lag = lag(&a, &b, args.probes, "idle")?;

    eprintln!("bench-redis: {WRITERS} writers through one node");
    let one_node_per_s = concurrent_writes(&[Arc::clone(&a)], args.seconds, "one")?;
    eprintln!("bench-redis: {WRITERS} writers through three nodes");
    let three_nodes_per_s = concurrent_writes(
        &[Arc::clone(&a), Arc::clone(&b), Arc::clone(&c)],
        args.seconds,
        "three",
    )?;

    eprintln!("bench-redis: replication lag under load (writers on all three nodes)");
    let loaded_lag = {
        let nodes = [Arc::clone(&a), Arc::clone(&b), Arc::clone(&c)];
        let (from, to) = (Arc::clone(&a), Arc::clone(&b));
        let probes = args.probes;
        let prober = std::thread::spawn(move || lag(&from, &to, probes, "loaded"));
        // Keep writers going while the probes run (about probes × 2.5 ms).
        let load_seconds = (probes as f64 * 0.004).max(1.0);
        let load = concurrent_writes(&nodes, load_seconds, "load")?;
        let lag = prober
            .join()
            .map_err(|_| anyhow!("the probe thread panicked"))??;
        (lag, load)
    };

    eprintln!("bench-redis: catch-up of a new node");
    let target = a.revision();
    let started = Instant::now();
    let late = open_node(url, prefix)?;
    let opened = started.elapsed();
    wait_applied(
        &tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?,
        &late,
        target,
    )?;
    let caught_up = started.elapsed();
    let late_instances = late.index_stats(0).instances;
    let expected_instances = a.index_stats(0).instances;
    if late_instances != expected_instances {
        return Err(anyhow!(
            "the new node holds {late_instances} instances, the others {expected_instances}"
        ));
    }
    drop(late);
    let rss = rss_bytes();

    Ok(json!({
        "instances": args.instances,
        "nodes": 3,
        "bulk_one_node_registrations_per_s": bulk_per_s,
        "writers": WRITERS,
        "one_node_registrations_per_s": one_node_per_s,
        "three_nodes_registrations_per_s": three_nodes_per_s,
        "replication_lag_idle": idle_lag.0,
        "write_to_visible_elsewhere_idle": idle_lag.1,
        "replication_lag_p50_ms": idle_lag.0.p50_us / 1000.0,
        "replication_lag_p99_ms": idle_lag.0.p99_us / 1000.0,
        "write_to_visible_elsewhere_p99_ms": idle_lag.1.p99_us / 1000.0,
        "replication_lag_loaded": loaded_lag.0 .0,
        "write_to_visible_elsewhere_loaded": loaded_lag.0 .1,
        "replication_lag_loaded_p99_ms": loaded_lag.0 .0.p99_us / 1000.0,
        "write_to_visible_elsewhere_loaded_p99_ms": loaded_lag.0 .1.p99_us / 1000.0,
        "load_during_lag_registrations_per_s": loaded_lag.1,
        "catch_up_snapshot_s": opened.as_secs_f64(),
        "catch_up_s": caught_up.as_secs_f64(),
        "catch_up_instances": late_instances,
        "rss_bytes_four_nodes": rss,
    }))
}

/// Runs the benchmark and prints (and optionally writes) its JSON report.
pub(crate) fn run(args: &RedisBenchArgs) -> Result<(), CommandError> {
    let prefix = format!(
        "svcmeta-bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    let result = measure(args, &prefix);
    // Clean up whatever happened.
    if let Ok(store) = SharedStore::open(&args.redis_url, &prefix, 16) {
        if let Err(error) = store.remove_data_set() {
            eprintln!("bench-redis: could not delete the keys of prefix {prefix}: {error}");
        }
    }
    let report = result?;
    let text = serde_json::to_string_pretty(&report).map_err(anyhow::Error::from)?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
