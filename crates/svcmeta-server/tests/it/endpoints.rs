//! `/api/v1/services`, `/api/v1/stats`, `/metrics` and `/healthz`.

use serde_json::json;

use crate::support::{instance, with, Server};

#[test]
fn services_group_names_case_insensitively_under_the_oldest_spelling() {
    let server = Server::start();
    server.register(&with(
        with(instance("w1", "Web"), "version", json!("1.0.0")),
        "environment",
        json!("prod"),
    ));
    server.register(&with(
        with(instance("w2", "web"), "version", json!("2.0.0")),
        "tags",
        json!(["canary"]),
    ));
    server.register(&with(
        with(instance("w3", "WEB"), "region", json!("eu-west-1")),
        "tags",
        json!(["blue", "canary"]),
    ));
    server.register(&instance("a1", "api"));

    let reply = server.get("/api/v1/services").expect(200);
    assert_eq!(reply.index, reply.json["revision"].as_u64());
    let services = reply.json["services"].as_array().expect("services").clone();
    let names: Vec<&str> = services
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, vec!["api", "Web"], "{}", reply.text);
    let web = &services[1];
    assert_eq!(web["instances"], 3);
    assert_eq!(web["passing"], 3);
    assert_eq!(web["tags"], json!(["blue", "canary"]));
    assert_eq!(web["versions"], json!(["1.0.0", "2.0.0"]));
    assert_eq!(web["environments"], json!(["prod"]));
    assert_eq!(web["regions"], json!(["eu-west-1"]));

    // The oldest live instance decides the spelling.
    server.delete("/api/v1/instances/w1").expect(200);
    let reply = server.get("/api/v1/services").expect(200);
    let services = reply.json["services"].as_array().expect("services").clone();
    assert_eq!(services[1]["name"], "web", "{}", reply.text);
    assert_eq!(services[1]["instances"], 2);
    // Re-registering w2 (a replace) keeps its age.
    server.register(&with(instance("w2", "web"), "port", json!(1)));
    let reply = server.get("/api/v1/services").expect(200);
    assert_eq!(reply.json["services"][1]["name"], "web");
    // A service whose last instance is gone disappears.
    server.delete("/api/v1/instances/a1").expect(200);
    let reply = server.get("/api/v1/services").expect(200);
    assert_eq!(reply.json["services"].as_array().map(Vec::len), Some(1));
}

#[test]
fn stats_report_the_registry() {
    let server = Server::start();
    for n in 0..5 {
        let service = if n < 3 { "web" } else { "api" };
        server.register(&with(
            instance(&format!("i{n}"), service),
            "environment",
            json!("prod"),
        ));
    }
    // The same query twice: one miss, then one hit.
    server.list(&[("service", Some("web"))]).expect(200);
    server.list(&[("service", Some("web"))]).expect(200);
    let reply = server.get("/api/v1/stats").expect(200);
    let stats = &reply.json;
    assert_eq!(reply.index, stats["revision"].as_u64());
    assert_eq!(stats["revision"], 5);
    assert_eq!(stats["store"], "memory");
    assert_eq!(stats["instances"], 5);
    assert_eq!(stats["services"], 2);
    // Sequential writes cannot share a commit.
    assert_eq!(stats["store_commits"], 5);
    let index = &stats["index"];
    assert_eq!(index["instances"], 5);
    assert_eq!(index["health"]["passing"], 5);
    assert_eq!(
        index["environments"],
        json!([{"value": "prod", "count": 5}])
    );
    assert_eq!(index["instances_over_limits"], 0);
    assert!(index["index_memory_bytes"].as_u64().is_some_and(|b| b > 0));
    assert!(index["posting_lists"].as_u64().is_some_and(|p| p > 0));
    let queries = &stats["queries"];
    assert_eq!(queries["queries"], 2);
    let histogram = queries["latency_histogram"].as_array().expect("histogram");
    assert_eq!(histogram.last().expect("+Inf")[0], "+Inf");
    assert_eq!(histogram.last().expect("+Inf")[1], 2);
    let cache = &stats["cache"];
    assert_eq!(cache["hits"], 1);
    assert_eq!(cache["misses"], 1);
    assert_eq!(cache["entries"], 1);
    assert_eq!(cache["hit_ratio"], 0.5);
}

#[test]
fn metrics_are_prometheus_text() {
    let server = Server::start();
    server.register(&instance("a", "web"));
    server.register(&instance("b", "api"));
    for _ in 0..3 {
        server.list(&[]).expect(200);
    }
    let reply = server.get("/metrics").expect(200);
    assert!(
        reply.content_type.starts_with("text/plain"),
        "{}",
        reply.content_type
    );
    let text = &reply.text;
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find(|line| line.split(' ').next() == Some(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(value("svcmeta_instances"), Some(2.0), "{text}");
    assert_eq!(value("svcmeta_revision"), Some(2.0));
    assert_eq!(value("svcmeta_services"), Some(2.0));
    assert!(text.contains("# TYPE svcmeta_instances gauge"));
    assert!(text.contains("# TYPE svcmeta_query_duration_seconds histogram"));
    assert_eq!(
        value("svcmeta_query_duration_seconds_bucket{le=\"+Inf\"}"),
        Some(3.0)
    );
    assert_eq!(value("svcmeta_query_duration_seconds_count"), Some(3.0));
    assert!(value("svcmeta_query_duration_seconds_sum").is_some());
    // Buckets are cumulative.
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("svcmeta_query_duration_seconds_bucket"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(buckets.len() > 2);
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    // Every sample line belongs to a declared metric.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let family = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            text.contains(&format!("# TYPE {family} "))
                || text.contains(&format!("# TYPE {name} ")),
            "undeclared sample {line}"
        );
    }
}

#[test]
fn healthz_answers_ok_with_the_revision() {
    let server = Server::start();
    let reply = server.get("/healthz").expect(200);
    assert_eq!(reply.json["status"], "ok");
    assert_eq!(reply.json["store"], "memory");
    assert_eq!(reply.json["revision"], 0);
    assert_eq!(reply.index, Some(0));
    server.register(&instance("a", "web"));
    let reply = server.get("/healthz").expect(200);
    assert_eq!(reply.json["revision"], 1);
    assert_eq!(reply.index, Some(1));
}
