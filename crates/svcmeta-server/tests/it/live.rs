//! Change tracking over HTTP: blocking queries wake on a relevant write and not on an
//! unrelated one, answer at once for `index=0` or an index ahead of the registry; the event
//! stream replays and follows changes in order, across a server restart, and answers 410
//! when the asked history is gone.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use svcmeta_server::{Catalog, CatalogSettings, ServerSettings};
use svcmeta_store::Store;

use crate::support::{instance, Server};

/// Bound on how long a test waits for something that must happen; never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(20);

fn blocking_get(base: String, path: String) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let body = agent
            .get(format!("{base}{path}"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .unwrap_or(Value::Null);
        let _ = tx.send(body);
    });
    rx
}

#[test]
fn a_blocking_query_wakes_on_a_relevant_write_and_not_on_an_unrelated_one() {
    let server = Server::start();
    let revision = server.register(&instance("w1", "web")).index.unwrap();
    let answer = blocking_get(
        server.base().to_string(),
        format!("/api/v1/instances?service=web&index={revision}&wait=60s"),
    );
    // A write to another service does not answer the parked request.
    server.register(&instance("o1", "other"));
    assert!(
        answer.recv_timeout(Duration::from_millis(300)).is_err(),
        "woke on an unrelated write"
    );
    let relevant = server.register(&instance("w2", "web")).index.unwrap();
    let body = answer
        .recv_timeout(PATIENCE)
        .expect("woke on the relevant write");
    assert_eq!(body["revision"].as_u64(), Some(relevant));
    assert_eq!(body["total"].as_u64(), Some(2));
}

#[test]
fn index_zero_and_an_index_ahead_of_the_registry_answer_at_once() {
    let server = Server::start();
    let revision = server.register(&instance("w1", "web")).index.unwrap();
    for index in [0, revision + 1000] {
        let answer = blocking_get(
            server.base().to_string(),
            format!("/api/v1/instances?service=web&index={index}&wait=10m"),
        );
        let body = answer.recv_timeout(PATIENCE).expect("answered at once");
        assert_eq!(body["total"].as_u64(), Some(1), "index {index}");
    }
    // A stale index (below the service's revision) answers at once too.
    let answer = blocking_get(
        server.base().to_string(),
        format!(
            "/api/v1/instances?service=web&index={}&wait=10m",
            revision - 1
        ),
    );
    assert!(answer.recv_timeout(PATIENCE).is_ok());
}

#[test]
fn blocking_on_one_instance_wakes_when_it_is_deregistered() {
    let server = Server::start();
    let revision = server.register(&instance("w1", "web")).index.unwrap();
    let answer = blocking_get(
        server.base().to_string(),
        format!("/api/v1/instances/w1?index={revision}&wait=60s"),
    );
    server.register(&instance("o1", "other"));
    assert!(answer.recv_timeout(Duration::from_millis(300)).is_err());
    server.delete("/api/v1/instances/w1").expect(200);
    let body = answer.recv_timeout(PATIENCE).expect("woke on the removal");
    assert_eq!(body["error"]["code"], "not_found");
}

#[test]
fn bad_blocking_parameters_are_400() {
    let server = Server::start();
    server
        .get("/api/v1/instances?index=abc")
        .expect_error(400, "invalid_request");
    server
        .get("/api/v1/instances?index=3&wait=30")
        .expect_error(400, "invalid_request");
    server
        .get("/api/v1/services?index=1&bogus=1")
        .expect_error(400, "invalid_request");
}

/// Reads `count` events from `GET /api/v1/events?<query>`.
fn read_events(base: &str, query: &str, count: usize) -> Vec<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(PATIENCE))
        .build()
        .into();
    let response = agent
        .get(format!("{base}/api/v1/events?{query}"))
        .call()
        .expect("event stream");
    let reader = BufReader::new(response.into_body().into_reader());
    let mut events = Vec::new();
    let mut data = String::new();
    for line in reader.lines() {
        let line = line.expect("stream line");
        if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.trim_start());
        } else if line.is_empty() && !data.is_empty() {
            events.push(serde_json::from_str(&data).expect("event JSON"));
            data.clear();
            if events.len() == count {
                break;
            }
        }
    }
    events
}

#[test]
fn the_event_stream_replays_and_follows_in_order_across_a_restart() {
    let dir = std::env::temp_dir().join(format!("svcmeta-it-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let open = || {
        let store = Store::open_embedded(&dir).expect("open store");
        Catalog::open(store, CatalogSettings::standard()).expect("catalog")
    };
    let seen = {
        let server = Server::with_catalog(open(), ServerSettings::standard());
        server.register(&instance("a", "web"));
        server.register(&instance("b", "web"));
        server.register(&instance("x", "other"));
        server.delete("/api/v1/instances/a").expect(200);
        // A watcher of `web` sees its three changes, and not the other service's.
        let events = read_events(server.base(), "since=0&service=web", 3);
        let summary: Vec<(u64, String, String)> = events
            .iter()
            .map(|e| {
                (
                    e["revision"].as_u64().unwrap(),
                    e["type"].as_str().unwrap().to_string(),
                    e["instance"]["id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, "register".into(), "a".into()),
                (2, "register".into(), "b".into()),
                (4, "deregister".into(), "a".into()),
            ]
        );
        4
    };
    // Restart on the same data directory, write more, and resume after the last seen event.
    let server = Server::with_catalog(open(), ServerSettings::standard());
    let follower = {
        let base = server.base().to_string();
        std::thread::spawn(move || read_events(&base, &format!("since={seen}"), 2))
    };
    server.register(&instance("c", "web"));
    server.register(&instance("b", "web"));
    let mut replaced = instance("b", "web");
    replaced["port"] = serde_json::json!(9999);
    server.register(&replaced);
    let events = follower.join().expect("follower");
    let revisions: Vec<u64> = events
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(
        revisions,
        vec![5, 6],
        "no gap and no repeat after the restart"
    );
    assert_eq!(events[0]["type"], "register");
    assert_eq!(events[1]["type"], "update");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn asking_for_trimmed_history_is_410() {
    let settings = CatalogSettings {
        event_retention: 2,
        ..CatalogSettings::standard()
    };
    let server = Server::with(settings, ServerSettings::standard());
    for n in 0..5 {
        server.register(&instance(&format!("i{n}"), "web"));
    }
    server
        .get("/api/v1/events?since=1")
        .expect_error(410, "history_trimmed");
}

#[test]
fn a_filtered_stream_reports_an_instance_leaving_the_criteria() {
    let server = Server::start();
    let since = server.catalog().revision();
    let mut tagged = instance("m1", "mv");
    tagged["tags"] = serde_json::json!(["t1"]);
    server.register(&tagged);
    tagged["tags"] = serde_json::json!(["t2"]);
    server.register(&tagged); // leaves tag=t1
    tagged["tags"] = serde_json::json!(["t1"]);
    tagged["service"] = serde_json::json!("elsewhere");
    server.register(&tagged); // was never in the result before this change: not reported
    let events = read_events(
        server.base(),
        &format!("since={since}&service=mv&tag=t1"),
        2,
    );
    assert_eq!(events[0]["type"], "register");
    assert_eq!(events[1]["type"], "update");
    assert_eq!(events[1]["instance"]["tags"], serde_json::json!(["t2"]));
    assert_eq!(events[1]["previous"]["tags"], serde_json::json!(["t1"]));
}
