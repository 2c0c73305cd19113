//! The write side of `svcmeta bench`: registration rates into the `memory` and `embedded`
//! stores through [`Catalog`] (bulk batches, one registration per request, 64 concurrent
//! writers), deregistration, churn, and one raw fsync for reference.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use svcmeta_core::{Limits, Mutation, Registration};
use svcmeta_server::{Catalog, CatalogSettings};
use svcmeta_store::Store;

use super::data::for_each_batch;
use super::measure::{rate, timed, Latency};

/// Registrations per bulk write request.
pub(crate) const BULK_BATCH: usize = 10_000;

/// Concurrent writer threads of the durable run.
pub(crate) const WRITERS: usize = 64;

/// Register and deregister cycle of the churn run.
pub(crate) const CHURN_CYCLE: usize = 1_000;

/// Writes one request and fails loudly.
fn write(catalog: &Catalog, mutations: Vec<Mutation>) -> anyhow::Result<()> {
    catalog
        .write_blocking(mutations)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("write failed: {e}"))
}

fn register_all(batch: Vec<Registration>) -> Vec<Mutation> {
    batch.into_iter().map(Mutation::Register).collect()
}

/// A bulk load: the catalog's write time apart from producing the registrations.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Bulk {
    /// Registrations written.
    pub(crate) registrations: usize,
    /// Registrations per write request.
    pub(crate) batch: usize,
    /// Seconds inside `Catalog::write_blocking`.
    pub(crate) write_s: f64,
    /// Registrations per second of write time.
    pub(crate) registrations_per_s: f64,
    /// Seconds generating, parsing and validating (not in the rate).
    pub(crate) parse_validate_s: f64,
    /// Registrations per second end to end (generate, parse, validate, write).
    pub(crate) end_to_end_per_s: f64,
    /// Store commits (group commits) made.
    pub(crate) commits: u64,
}

/// Opens a `memory` catalog and loads the generated catalog in bulk batches.
pub(crate) fn load_memory(
    instances: usize,
    seed: u64,
    settings: &CatalogSettings,
    limits: &Limits,
) -> anyhow::Result<(Catalog, Bulk)> {
    let catalog = Catalog::open(Store::Memory, settings.clone())
        .map_err(|e| anyhow::anyhow!("opening the memory catalog: {e}"))?;
    let mut writing = Duration::ZERO;
    let started = Instant::now();
    let produced = for_each_batch(instances, seed, "", BULK_BATCH, limits, |batch| {
        let began = Instant::now();
        write(&catalog, register_all(batch))?;
        writing += began.elapsed();
        Ok(())
    })?;
    let wall = started.elapsed();
    let bulk = Bulk {
        registrations: produced.count,
        batch: BULK_BATCH,
        write_s: writing.as_secs_f64(),
        registrations_per_s: rate(produced.count, writing.as_secs_f64()),
        parse_validate_s: produced.produce.as_secs_f64(),
        end_to_end_per_s: rate(produced.count, wall.as_secs_f64()),
        commits: catalog.commits(),
    };
    Ok((catalog, bulk))
}

/// One registration (or deregistration) per request from one thread.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct PerRequest {
    /// Requests made.
    pub(crate) requests: usize,
    /// Requests per second.
    pub(crate) per_s: f64,
    /// Latency of one request.
    pub(crate) latency: Latency,
}

impl PerRequest {
    fn of(latencies: &[Duration], wall: Duration) -> PerRequest {
        PerRequest {
            requests: latencies.len(),
            per_s: rate(latencies.len(), wall.as_secs_f64()),
            latency: Latency::of(latencies),
        }
    }
}

/// Registers each registration in its own request, then deregisters each in its own request.
pub(crate) fn one_per_request(
    catalog: &Catalog,
    registrations: Vec<Registration>,
) -> anyhow::Result<(PerRequest, PerRequest)> {
    let ids: Vec<String> = registrations.iter().map(|r| r.id().to_string()).collect();
    let mut latencies = Vec::with_capacity(ids.len());
    let started = Instant::now();
    for registration in registrations {
        let began = Instant::now();
        write(catalog, vec![Mutation::Register(registration)])?;
        latencies.push(began.elapsed());
    }
    let register = PerRequest::of(&latencies, started.elapsed());
    latencies.clear();
    let started = Instant::now();
    for id in ids {
        let began = Instant::now();
        write(catalog, vec![Mutation::Deregister(id)])?;
        latencies.push(began.elapsed());
    }
    let deregister = PerRequest::of(&latencies, started.elapsed());
    Ok((register, deregister))
}

/// The churn run: many register-then-deregister cycles of new instances on a full catalog.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Churn {
    /// Instances registered and deregistered again.
    pub(crate) cycles_instances: usize,
    /// Instances per cycle (one register request, then one deregister request).
    pub(crate) cycle: usize,
    /// Registrations per second of write time.
    pub(crate) registrations_per_s: f64,
    /// Deregistrations per second of write time.
    pub(crate) deregistrations_per_s: f64,
    /// `index_memory_bytes` before the first cycle.
    pub(crate) index_bytes_before: u64,
    /// … after the first cycle.
    pub(crate) index_bytes_after_first_cycle: u64,
    /// … after the last cycle.
    pub(crate) index_bytes_after: u64,
    /// Posting lists before and after.
    pub(crate) posting_lists_before: u64,
    /// Posting lists after the last cycle.
    pub(crate) posting_lists_after: u64,
    /// Live instances before and after (must be equal).
    pub(crate) instances_before: u64,
    /// Live instances after the last cycle.
    pub(crate) instances_after: u64,
    /// Whether the index came back to exactly its start size.
    pub(crate) returned_to_start: bool,
}

/// Registers and deregisters `instances` new instances in cycles of [`CHURN_CYCLE`].
pub(crate) fn churn(
    catalog: &Catalog,
    instances: usize,
    seed: u64,
    limits: &Limits,
) -> anyhow::Result<Churn> {
    let before = catalog.index_stats(0);
    let mut after_first = None;
    let mut registering = Duration::ZERO;
    let mut deregistering = Duration::ZERO;
    let produced = for_each_batch(instances, seed, "churn-", CHURN_CYCLE, limits, |batch| {
        let ids: Vec<String> = batch.iter().map(|r| r.id().to_string()).collect();
        let began = Instant::now();
        write(catalog, register_all(batch))?;
        registering += began.elapsed();
        let began = Instant::now();
        write(catalog, ids.into_iter().map(Mutation::Deregister).collect())?;
        deregistering += began.elapsed();
        if after_first.is_none() {
            after_first = Some(catalog.index_stats(0).index_memory_bytes);
        }
        Ok(())
    })?;
    let after = catalog.index_stats(0);
    Ok(Churn {
        cycles_instances: produced.count,
        cycle: CHURN_CYCLE,
        registrations_per_s: rate(produced.count, registering.as_secs_f64()),
        deregistrations_per_s: rate(produced.count, deregistering.as_secs_f64()),
        index_bytes_before: before.index_memory_bytes,
        index_bytes_after_first_cycle: after_first.unwrap_or(before.index_memory_bytes),
        index_bytes_after: after.index_memory_bytes,
        posting_lists_before: before.posting_lists,
        posting_lists_after: after.posting_lists,
        instances_before: before.instances,
        instances_after: after.instances,
        returned_to_start: before.index_memory_bytes == after.index_memory_bytes
            && before.posting_lists == after.posting_lists
            && before.instances == after.instances,
    })
}

/// The durable runs into the `embedded` store.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Durable {
    /// Bulk batches that filled the store up to the last registrations.
    pub(crate) bulk: Bulk,
    /// Seconds to write the bulk load's last checkpoint before the next phase (not in the
    /// bulk rate).
    pub(crate) bulk_checkpoint_s: f64,
    /// One writer, one registration per request (each waits for its own commit).
    pub(crate) single_writer: PerRequest,
    /// [`WRITERS`] threads, one registration per request (group commit).
    pub(crate) concurrent: Concurrent,
    /// [`WRITERS`] tasks on a two-worker runtime, one registration per request: the way the
    /// server's HTTP handlers write.
    pub(crate) concurrent_tasks: Concurrent,
    /// Live instances in the store at the end.
    pub(crate) instances: u64,
}

/// Concurrent writers, one registration per request.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Concurrent {
    /// Writer threads.
    pub(crate) writers: usize,
    /// Registrations written.
    pub(crate) registrations: usize,
    /// Registrations per second (wall).
    pub(crate) registrations_per_s: f64,
    /// Latency of one request.
    pub(crate) latency: Latency,
    /// Store commits during the run.
    pub(crate) commits: u64,
    /// Registrations per commit.
    pub(crate) registrations_per_commit: f64,
}

/// What the durable run writes: the generated catalog of `instances` with `seed`, all but
/// the last `tail` registrations in bulk batches, then `single` of the tail one per request
/// from one thread, then half of the rest one per request from [`WRITERS`] threads and the
/// other half from [`WRITERS`] tasks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DurablePlan {
    /// Instances in all.
    pub(crate) instances: usize,
    /// Seed of the generated catalog.
    pub(crate) seed: u64,
    /// Registrations written one per request.
    pub(crate) tail: usize,
    /// Of those, the ones the single writer makes.
    pub(crate) single: usize,
}

/// Fills an `embedded` store in `dir` as `plan` says, then closes the catalog.
pub(crate) fn fill_embedded(
    dir: &Path,
    plan: DurablePlan,
    settings: &CatalogSettings,
    limits: &Limits,
    say: &dyn Fn(std::fmt::Arguments<'_>),
) -> anyhow::Result<Durable> {
    let DurablePlan {
        instances,
        seed,
        tail,
        single,
    } = plan;
    let store = Store::open_embedded(dir)
        .map_err(|e| anyhow::anyhow!("opening the embedded store: {e}"))?;
    let catalog = Catalog::open(store, settings.clone())
        .map_err(|e| anyhow::anyhow!("opening the embedded catalog: {e}"))?;
    let bulk_count = instances.saturating_sub(tail);
    let mut seen = 0usize;
    let mut writing = Duration::ZERO;
    let mut rest: Vec<Registration> = Vec::with_capacity(tail);
    let started = Instant::now();
    let produced = for_each_batch(instances, seed, "", BULK_BATCH, limits, |mut batch| {
        let bulk_here = bulk_count.saturating_sub(seen).min(batch.len());
        seen += batch.len();
        rest.extend(batch.drain(bulk_here..));
        if !batch.is_empty() {
            let began = Instant::now();
            write(&catalog, register_all(batch))?;
            writing += began.elapsed();
        }
        Ok(())
    })?;
    let wall = started.elapsed();
    let bulk = Bulk {
        registrations: bulk_count,
        batch: BULK_BATCH,
        write_s: writing.as_secs_f64(),
        registrations_per_s: rate(bulk_count, writing.as_secs_f64()),
        parse_validate_s: produced.produce.as_secs_f64(),
        end_to_end_per_s: rate(bulk_count, wall.as_secs_f64()),
        commits: catalog.commits(),
    };

    // The bulk load's last checkpoint is written now, so that it is not timed as part of the
    // next phase.
    let (flushed, flush_time) = timed(|| catalog.flush_store());
    flushed.map_err(|e| anyhow::anyhow!("checkpointing the bulk load: {e}"))?;
    let bulk_checkpoint_s = flush_time.as_secs_f64();
    say(format_args!(
        "embedded: bulk load checkpointed in {bulk_checkpoint_s:.2} s; {} registrations by one writer",
        single.min(rest.len())
    ));
    let concurrent_part = rest.split_off(single.min(rest.len()));
    let mut latencies = Vec::with_capacity(rest.len());
    let started = Instant::now();
    for registration in rest {
        let began = Instant::now();
        write(&catalog, vec![Mutation::Register(registration)])?;
        latencies.push(began.elapsed());
    }
    let single_writer = PerRequest::of(&latencies, started.elapsed());

    // Half of the rest from writer threads, half from writer tasks on the server's runtime.
    let mut task_part = concurrent_part;
    let thread_part = task_part.split_off(task_part.len() / 2);
    say(format_args!(
        "embedded: {} registrations by {WRITERS} writer threads",
        thread_part.len()
    ));
    let concurrent = concurrent_threads(&catalog, thread_part)?;
    say(format_args!(
        "embedded: {} registrations by {WRITERS} writer tasks",
        task_part.len()
    ));
    let catalog = std::sync::Arc::new(catalog);
    let concurrent_tasks = concurrent_tasks(&catalog, task_part)?;
    say(format_args!("embedded: writers done"));
    let live = catalog.index_stats(0).instances;
    catalog.shutdown();
    drop(catalog);
    Ok(Durable {
        bulk,
        bulk_checkpoint_s,
        single_writer,
        concurrent,
        concurrent_tasks,
        instances: live,
    })
}

/// Deals registrations round-robin to [`WRITERS`] writers.
fn deal(registrations: Vec<Registration>) -> Vec<Vec<Registration>> {
    let mut shares: Vec<Vec<Registration>> = (0..WRITERS).map(|_| Vec::new()).collect();
    for (n, registration) in registrations.into_iter().enumerate() {
        shares[n % WRITERS].push(registration);
    }
    shares
}

/// The figures of one concurrent run from each writer's latencies. The run's time includes
/// writing what it wrote into the store's main file (the embedded store's checkpoint), so the
/// rate is what the store sustains, not what its log absorbs.
fn concurrent_figures(
    catalog: &Catalog,
    commits_before: u64,
    started: Instant,
    results: Vec<anyhow::Result<Vec<Duration>>>,
) -> anyhow::Result<Concurrent> {
    catalog
        .flush_store()
        .map_err(|e| anyhow::anyhow!("checkpointing the writers' registrations: {e}"))?;
    let wall = started.elapsed();
    let mut latencies = Vec::new();
    for result in results {
        latencies.extend(result?);
    }
    let registrations = latencies.len();
    let commits = catalog.commits() - commits_before;
    Ok(Concurrent {
        writers: WRITERS,
        registrations,
        registrations_per_s: rate(registrations, wall.as_secs_f64()),
        latency: Latency::of(&latencies),
        commits,
        registrations_per_commit: if commits > 0 {
            registrations as f64 / commits as f64
        } else {
            0.0
        },
    })
}

/// [`WRITERS`] OS threads, each writing one registration per request and waiting for it.
fn concurrent_threads(
    catalog: &Catalog,
    registrations: Vec<Registration>,
) -> anyhow::Result<Concurrent> {
    let shares = deal(registrations);
    let commits_before = catalog.commits();
    let started = Instant::now();
    let results: Vec<anyhow::Result<Vec<Duration>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| {
                scope.spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let mut latencies = Vec::with_capacity(share.len());
                    for registration in share {
                        let began = Instant::now();
                        write(catalog, vec![Mutation::Register(registration)])?;
                        latencies.push(began.elapsed());
                    }
                    Ok(latencies)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a writer thread panicked")))
            })
            .collect()
    });
    concurrent_figures(catalog, commits_before, started, results)
}

/// [`WRITERS`] tasks on a runtime like `svcmeta serve`'s (one worker per core), each writing
/// one registration per request and awaiting it: how HTTP handlers write.
fn concurrent_tasks(
    catalog: &std::sync::Arc<Catalog>,
    registrations: Vec<Registration>,
) -> anyhow::Result<Concurrent> {
    let shares = deal(registrations);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the writers' runtime")?;
    let commits_before = catalog.commits();
    let started = Instant::now();
    let results: Vec<anyhow::Result<Vec<Duration>>> = runtime.block_on(async {
        let tasks: Vec<_> = shares
            .into_iter()
            .map(|share| {
                let catalog = std::sync::Arc::clone(catalog);
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(share.len());
                    for registration in share {
                        let began = Instant::now();
                        catalog
                            .write(vec![Mutation::Register(registration)])
                            .await
                            .map_err(|e| anyhow::anyhow!("write failed: {e}"))?;
                        latencies.push(began.elapsed());
                    }
                    Ok(latencies)
                })
            })
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(
                task.await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a writer task panicked"))),
            );
        }
        results
    });
    concurrent_figures(catalog, commits_before, started, results)
}

/// One raw fsync for reference: a 4 KiB write and `fsync` of a file in `dir`.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Fsync {
    /// Latency of write + fsync.
    pub(crate) latency: Latency,
}

/// Measures `count` write + fsync rounds on a file in `dir`.
pub(crate) fn fsync_reference(dir: &Path, count: usize) -> anyhow::Result<Fsync> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let block = [0x5au8; 4096];
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let began = Instant::now();
        file.write_all(&block).context("fsync probe write")?;
        file.sync_all().context("fsync probe")?;
        latencies.push(began.elapsed());
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(Fsync {
        latency: Latency::of(&latencies),
    })
}
