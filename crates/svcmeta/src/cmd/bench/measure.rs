//! Measuring helpers of `svcmeta bench`: latency samples and their percentiles, resident
//! memory, and CPU time of the process and of the calling thread (from `/proc`).

use std::time::{Duration, Instant};

use serde::Serialize;

/// Median, p99 and friends of a set of latency samples, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Latency {
    /// Number of samples.
    pub(crate) samples: usize,
    /// Median.
    pub(crate) p50_us: f64,
    /// 90th percentile.
    pub(crate) p90_us: f64,
    /// 99th percentile.
    pub(crate) p99_us: f64,
    /// Largest sample.
    pub(crate) max_us: f64,
    /// Arithmetic mean.
    pub(crate) mean_us: f64,
}

impl Latency {
    /// Summarises samples (nearest-rank percentiles); all zero when there is none.
    pub(crate) fn of(samples: &[Duration]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        let mut sorted: Vec<Duration> = samples.to_vec();
        sorted.sort_unstable();
        let at = |p: f64| {
            let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            micros(sorted[rank - 1])
        };
        let total: Duration = sorted.iter().sum();
        Latency {
            samples: sorted.len(),
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            max_us: micros(sorted[sorted.len() - 1]),
            mean_us: micros(total) / sorted.len() as f64,
        }
    }
}

/// A duration in microseconds.
pub(crate) fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// `count / seconds`, or 0 for an empty interval.
pub(crate) fn rate(count: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// `a / b`, or 0 when `b` is 0.
pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Runs `f` and returns its result with the time it took.
pub(crate) fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let value = f();
    (value, started.elapsed())
}

/// The process's resident set size (`VmRSS` of `/proc/self/status`), 0 where unknown.
pub(crate) fn rss_bytes() -> u64 {
    status_kib("VmRSS:") * 1024
}

/// The process's peak resident set size (`VmHWM`), 0 where unknown.
pub(crate) fn peak_rss_bytes() -> u64 {
    status_kib("VmHWM:") * 1024
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// Clock ticks per second of `/proc/*/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds from a `/proc/…/stat` file, 0 where unknown.
fn stat_cpu_seconds(path: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at field 3 (`state`);
    // utime and stime are fields 14 and 15.
    let Some(rest) = text.rfind(')').map(|end| &text[end + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |n: usize| {
        fields
            .get(n)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / TICKS_PER_SECOND
}

/// CPU seconds used so far by the whole process (every thread).
pub(crate) fn process_cpu_seconds() -> f64 {
    stat_cpu_seconds("/proc/self/stat")
}

/// CPU seconds used so far by the calling thread: nanosecond `schedstat` where the kernel
/// has it, else the tick-resolution `stat`.
pub(crate) fn thread_cpu_seconds() -> f64 {
    let precise = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|text| {
            text.split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
        });
    match precise {
        Some(ns) => ns as f64 / 1e9,
        None => stat_cpu_seconds("/proc/thread-self/stat"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let latency = Latency::of(&samples);
        assert_eq!(latency.samples, 100);
        assert_eq!(latency.p50_us, 50.0);
        assert_eq!(latency.p99_us, 99.0);
        assert_eq!(latency.max_us, 100.0);
        assert!((latency.mean_us - 50.5).abs() < 1e-9);
        assert_eq!(Latency::of(&[]).samples, 0);
        assert_eq!(Latency::of(&[Duration::from_micros(7)]).p99_us, 7.0);
    }

    #[test]
    fn proc_readers_answer_on_linux() {
        let rss = rss_bytes();
        assert!(rss > 0);
        // The peak is read after the current size: other tests' threads allocate meanwhile,
        // and only a peak read later is sure to be at least a size read earlier.
        assert!(peak_rss_bytes() >= rss);
        let mut x = 0u64;
        for n in 0..2_000_000u64 {
            x = x.wrapping_add(n * n);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_seconds() > 0.0);
        assert!(process_cpu_seconds() >= 0.0);
    }
}
