//! Load benchmark: bulk import rate into the `memory` and `embedded` stores, restart (index
//! rebuild) time, and resident memory after loading a `gen` catalog.
//!
//! Run: `cargo bench -p svcmeta --bench load` (N from `SVCMETA_BENCH_INSTANCES`, default
//! 1,000,000). The import path is the CLI's: parse NDJSON, validate, write in batches of
//! 10,000 through the catalog (one durable group commit per batch for `embedded`).

// A benchmark harness, like a test: any failure should abort the run loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

/// mimalloc: markedly less time in malloc/free and less fragmentation than glibc's allocator
/// for the registry's many small strings.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::time::Instant;

use svcmeta_core::{validate, InstanceDraft, Limits, Mutation};
use svcmeta_server::{Catalog, CatalogSettings};
use svcmeta_store::Store;

const BATCH: usize = 10_000;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn import(catalog: &Catalog, path: &std::path::Path, limits: &Limits) -> (usize, f64) {
    let file = std::fs::File::open(path).expect("catalog file");
    let reader = BufReader::with_capacity(1 << 20, file);
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    let mut count = 0;
    // One batch commits while the next is parsed and validated.
    let mut in_flight: Option<svcmeta_server::QueuedWrite> = None;
    for line in reader.lines() {
        let line = line.expect("read line");
        let draft: InstanceDraft = serde_json::from_str(&line).expect("valid draft");
        batch.push(Mutation::Register(
            validate(draft, limits).expect("valid instance"),
        ));
        if batch.len() == BATCH {
            count += batch.len();
            if let Some(previous) = in_flight.take() {
                previous.wait().expect("write");
            }
            in_flight = Some(catalog.write_queued(std::mem::take(&mut batch)));
        }
    }
    if !batch.is_empty() {
        count += batch.len();
        catalog.write_blocking(batch).expect("write");
    }
    if let Some(previous) = in_flight.take() {
        previous.wait().expect("write");
    }
    (count, started.elapsed().as_secs_f64())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let instances: usize = std::env::var("SVCMETA_BENCH_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("svcmeta-load-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let catalog_file = dir.join("catalog.ndjson");
    {
        let mut out = BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&catalog_file).expect("create"),
        );
        svcmeta::gen::generate(instances, 42, &mut out).expect("gen");
        out.flush().expect("flush");
    }
    let limits = Limits::standard();
    let rss_before = rss_bytes();

    let settings = CatalogSettings::standard();
    let memory = Catalog::open(Store::Memory, settings.clone()).expect("memory catalog");
    let (count, seconds) = import(&memory, &catalog_file, &limits);
    let rss_after = rss_bytes();
    let stats = memory.index_stats(0);
    println!("instances                         {count}");
    println!(
        "memory import                     {:.0} instances/s ({seconds:.2} s)",
        count as f64 / seconds
    );
    println!(
        "index memory (estimate)           {} bytes ({:.1} bytes/instance)",
        stats.index_memory_bytes,
        stats.index_memory_bytes as f64 / count as f64
    );
    println!(
        "process RSS after load            {} MiB (before load {} MiB)",
        rss_after >> 20,
        rss_before >> 20
    );
    drop(memory);

    let data_dir = dir.join("data");
    let embedded = Catalog::open(
        Store::open_embedded(&data_dir).expect("open"),
        settings.clone(),
    )
    .expect("embedded catalog");
    let (count, seconds) = import(&embedded, &catalog_file, &limits);
    println!(
        "embedded (durable) import         {:.0} instances/s ({seconds:.2} s, {} commits)",
        count as f64 / seconds,
        embedded.commits()
    );
    drop(embedded);

    let started = Instant::now();
    let reopened =
        Catalog::open(Store::open_embedded(&data_dir).expect("reopen"), settings).expect("reopen");
    let rebuild = started.elapsed().as_secs_f64();
    println!(
        "restart: load + index rebuild     {rebuild:.2} s for {} instances",
        reopened.index_stats(0).instances
    );
    drop(reopened);
    let _ = std::fs::remove_dir_all(&dir);
}
