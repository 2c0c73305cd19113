//! End-to-end test of `svcmeta bench` at a tiny size: the real binary runs every phase
//! (in-process queries with the cache off and on, SQLite, the linear scan, writes, churn,
//! restart, HTTP, parked blocking queries over HTTP/2 and HTTP/1.1) and the JSON report must
//! carry every field other tools read, with sane values, and show that the equality
//! assertions against SQLite and the scan ran and that every parked query woke.
//! No wall-clock figure is asserted: this machine is shared and noisy.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;

use serde_json::Value;

const INSTANCES: u64 = 2_000;

const TOP_LEVEL: [&str; 11] = [
    "instances",
    "three_criteria_p50_us",
    "three_criteria_p99_us",
    "three_criteria_vs_sqlite",
    "three_criteria_vs_scan",
    "index_bytes_per_instance",
    "rss_bytes",
    "memory_registrations_per_s",
    "durable_registrations_per_s",
    "rebuild_s",
    "http_queries_per_s",
];

const CLASSES: [&str; 6] = [
    "one_criterion",
    "three_criteria",
    "five_criteria",
    "negation",
    "filter",
    "count",
];

fn positive(report: &Value, pointer: &str) -> f64 {
    let value = report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} missing or not a number"));
    assert!(
        value.is_finite() && value > 0.0,
        "{pointer} = {value}, expected a positive number"
    );
    value
}

#[test]
fn bench_runs_end_to_end_and_reports_every_field() {
    let dir = std::env::temp_dir().join(format!("svcmeta-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_svcmeta"))
        .args([
            "bench",
            "--instances",
            &INSTANCES.to_string(),
            "--seed",
            "7",
        ])
        .args([
            "--queries",
            "300",
            "--http-seconds",
            "0.5",
            "--http-connections",
            "2",
            "--parked-queries",
            "300",
        ])
        .arg("--json")
        .arg(&json_path)
        .arg("--dir")
        .arg(&dir)
        .env_remove("SVCMETA_CONFIG")
        .env_remove("SVCMETA_SERVER")
        .env_remove("SVCMETA_DATA_DIR")
        .output()
        .expect("run svcmeta bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("report written"))
            .expect("report is JSON");

    for field in TOP_LEVEL {
        assert!(
            report.get(field).is_some(),
            "top-level field {field} missing"
        );
    }
    assert_eq!(report["instances"].as_u64(), Some(INSTANCES));
    for field in &TOP_LEVEL[1..] {
        positive(&report, &format!("/{field}"));
    }
    let p50 = positive(&report, "/three_criteria_p50_us");
    let p99 = positive(&report, "/three_criteria_p99_us");
    assert!(p50 <= p99, "p50 {p50} above p99 {p99}");
    let rss = positive(&report, "/rss_bytes");
    assert!(rss > 1e6 && rss < 8e9, "implausible RSS {rss}");
    let index = positive(&report, "/index_bytes_per_instance");
    assert!(
        index < 10_000.0,
        "implausible index size {index} B/instance"
    );

    // Every class ran on every engine, and SQLite and the scan were checked against svcmeta.
    let mut checks = 0;
    for class in CLASSES {
        let q = &report["queries"][class];
        assert!(q.is_object(), "class {class} missing");
        for engine in ["svcmeta_cache_off", "sqlite/latency", "scan/latency"] {
            positive(&report, &format!("/queries/{class}/{engine}/p50_us"));
        }
        positive(
            &report,
            &format!("/queries/{class}/svcmeta_cache_on/latency/p50_us"),
        );
        positive(&report, &format!("/queries/{class}/sqlite_vs_svcmeta"));
        positive(&report, &format!("/queries/{class}/scan_vs_svcmeta"));
        positive(&report, &format!("/ratios/{class}/sqlite_vs_svcmeta"));
        for engine in ["sqlite", "scan"] {
            let n = q[engine]["equality_checks"].as_u64().unwrap_or(0);
            assert!(n >= 1, "{class}: no equality check against {engine}");
            checks += n;
        }
        assert!(
            q["svcmeta_cache_on"]["equality_checks"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        );
        assert_eq!(
            q["plan"]["starts_from_every_instance"],
            Value::Bool(false),
            "{class} starts from every instance"
        );
    }
    assert_eq!(report["equality_checks"].as_u64(), Some(checks));

    // Writes, churn, memory, restart and HTTP.
    positive(&report, "/writes/memory_one_per_request/per_s");
    positive(&report, "/writes/memory_deregister_one_per_request/per_s");
    positive(&report, "/writes/churn/deregistrations_per_s");
    assert_eq!(
        report["writes"]["churn"]["instances_after"],
        report["writes"]["churn"]["instances_before"]
    );
    positive(&report, "/writes/embedded/single_writer/latency/p99_us");
    assert_eq!(report["writes"]["embedded"]["concurrent"]["writers"], 64);
    assert_eq!(
        report["writes"]["embedded"]["instances"].as_u64(),
        Some(INSTANCES)
    );
    positive(&report, "/writes/sqlite_file_one_per_transaction/per_s");
    positive(&report, "/writes/fsync_reference/latency/p50_us");
    positive(&report, "/memory/sqlite_database_bytes");
    let http = &report["http"]["native_three_criteria"];
    assert_eq!(http["errors"].as_u64(), Some(0));
    assert!(http["requests"].as_u64().unwrap_or(0) > 0);
    assert!(http["client_cpu_s"].as_f64().is_some());
    let consul = &report["http"]["consul_health"];
    assert!(consul["available"].is_boolean());
    assert!(report["targets"].as_array().is_some_and(|t| t.len() >= 10));

    // Parked blocking queries: HTTP/2 streams (the top-level figures) and HTTP/1.1, each
    // woken by the one write with the right answer.
    assert_eq!(report["parked_blocking_queries"].as_u64(), Some(300));
    assert!(report["parked_bytes_per_query"].as_f64().is_some());
    for watches in [&report["watches"], &report["watches"]["http1"]] {
        assert_eq!(watches["parked"].as_u64(), Some(300), "{watches}");
        assert_eq!(watches["woken"], watches["parked"], "{watches}");
    }
    assert_eq!(report["watches"]["protocol"], "h2c");
    assert_eq!(report["watches"]["connections"].as_u64(), Some(1));
    assert_eq!(report["watches"]["http1"]["protocol"], "http/1.1");
    assert_eq!(
        report["watches"]["http1"]["connections"].as_u64(),
        Some(300)
    );

    // The readable table went to standard output.
    assert!(stdout.contains("three_criteria"), "{stdout}");
    assert!(stdout.contains("TARGET"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
