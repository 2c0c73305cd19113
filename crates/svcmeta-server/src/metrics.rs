//! Query statistics (count and latency histogram) and the Prometheus text exposition.
//!
//! Counters are lock-free atomics so that recording a query costs a few nanoseconds. The
//! exposition is written by hand: it is a handful of lines in a stable, documented format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::catalog::Catalog;

/// Upper bounds of the latency buckets, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000,
];

/// Queries served and their latency distribution.
#[derive(Debug, Default)]
pub struct QueryStats {
    queries: AtomicU64,
    total_us: AtomicU64,
    /// One counter per bucket plus one for everything slower.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
}

/// A point-in-time copy of [`QueryStats`].
#[derive(Debug, Clone, Serialize)]
pub struct QueryStatsSnapshot {
    /// Queries served.
    pub queries: u64,
    /// Sum of latencies in microseconds.
    pub total_us: u64,
    /// Cumulative counts per bucket upper bound (µs); the last entry is `+Inf`.
    pub latency_histogram: Vec<(String, u64)>,
    /// Approximate median latency in microseconds (upper bound of its bucket).
    pub p50_us: Option<u64>,
    /// Approximate 99th percentile latency in microseconds (upper bound of its bucket).
    pub p99_us: Option<u64>,
}

impl QueryStats {
    /// Records one query.
    pub fn record(&self, elapsed: Duration) {
        let us = elapsed.as_micros().min(u64::MAX as u128) as u64;
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.total_us.fetch_add(us, Ordering::Relaxed);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> QueryStatsSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let mut cumulative = 0;
        let mut histogram = Vec::with_capacity(counts.len());
        let mut p50 = None;
        let mut p99 = None;
        for (n, count) in counts.iter().enumerate() {
            cumulative += count;
            let label = LATENCY_BUCKETS_US
                .get(n)
                .map(|b| b.to_string())
                .unwrap_or_else(|| "+Inf".to_string());
            let bound = LATENCY_BUCKETS_US.get(n).copied().unwrap_or(u64::MAX);
            if total > 0 && p50.is_none() && cumulative * 2 >= total {
                p50 = Some(bound);
            }
            if total > 0 && p99.is_none() && cumulative * 100 >= total * 99 {
                p99 = Some(bound);
            }
            histogram.push((label, cumulative));
        }
        QueryStatsSnapshot {
            queries: self.queries.load(Ordering::Relaxed),
            total_us: self.total_us.load(Ordering::Relaxed),
            latency_histogram: histogram,
            p50_us: p50,
            p99_us: p99,
        }
    }
}

/// Renders the Prometheus text exposition of the catalog's state.
pub fn render_prometheus(catalog: &Catalog) -> String {
    let mut out = String::with_capacity(4096);
    let stats = catalog.index_stats(0);
    let queries = catalog.query_stats().snapshot();
    let (hits, misses, entries) = catalog.cache_counts();
    let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    gauge(
        "svcmeta_revision",
        "Newest applied revision.",
        "gauge",
        stats.revision,
    );
    gauge(
        "svcmeta_instances",
        "Live instances.",
        "gauge",
        stats.instances,
    );
    gauge(
        "svcmeta_services",
        "Distinct services.",
        "gauge",
        stats.services,
    );
    gauge(
        "svcmeta_index_memory_bytes",
        "Estimated bytes held by the indexes.",
        "gauge",
        stats.index_memory_bytes,
    );
    gauge(
        "svcmeta_posting_lists",
        "Number of posting lists in the indexes.",
        "gauge",
        stats.posting_lists,
    );
    gauge(
        "svcmeta_cache_hits_total",
        "Query cache hits.",
        "counter",
        hits,
    );
    gauge(
        "svcmeta_cache_misses_total",
        "Query cache misses.",
        "counter",
        misses,
    );
    gauge(
        "svcmeta_cache_entries",
        "Cached query answers.",
        "gauge",
        entries as u64,
    );
    gauge(
        "svcmeta_store_commits_total",
        "Durable store commits (group commits).",
        "counter",
        catalog.commits(),
    );
    let _ = writeln!(
        out,
        "# HELP svcmeta_instances_by_health Live instances per health.\n# TYPE svcmeta_instances_by_health gauge"
    );
    for (health, count) in &stats.health {
        let _ = writeln!(
            out,
            "svcmeta_instances_by_health{{health=\"{health}\"}} {count}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP svcmeta_query_duration_seconds Query latency.\n# TYPE svcmeta_query_duration_seconds histogram"
    );
    for (bound, count) in &queries.latency_histogram {
        let le = match bound.parse::<u64>() {
            Ok(us) => format!("{}", us as f64 / 1e6),
            Err(_) => "+Inf".to_string(),
        };
        let _ = writeln!(
            out,
            "svcmeta_query_duration_seconds_bucket{{le=\"{le}\"}} {count}"
        );
    }
    let _ = writeln!(
        out,
        "svcmeta_query_duration_seconds_sum {}\nsvcmeta_query_duration_seconds_count {}",
        queries.total_us as f64 / 1e6,
        queries.queries
    );
    out
}
