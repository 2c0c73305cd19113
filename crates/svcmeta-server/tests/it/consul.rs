//! The Consul-compatible API (`/v1`) over HTTP: golden responses per endpoint (field names,
//! types and values against fixtures under `tests/it/fixtures/consul/`, written from Consul's
//! documented shapes, with index values redacted), the native ↔ Consul mapping both ways,
//! TTL checks, `filter`, `tag`, `passing`, `dc`/`ns`, blocking queries, and the error
//! shapes (plain text, Consul's status codes).
//!
//! Fixtures are compared exactly; after a deliberate change, regenerate them with
//! `SVCMETA_UPDATE_FIXTURES=1 cargo test -p svcmeta-server --test it consul` and review the
//! diff.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use svcmeta_server::api::consul::ConsulSettings;
use svcmeta_server::{Catalog, CatalogSettings, ManualClock, ServerSettings};
use svcmeta_store::Store;

use crate::support::{instance, with, Server};

/// Bound on how long a test waits for something that must happen; never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(20);

/// One HTTP answer with the Consul headers.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    index: Option<u64>,
    known_leader: Option<String>,
    last_contact: Option<String>,
    text: String,
    json: Value,
}

impl Answer {
    #[track_caller]
    fn expect(self, status: u16) -> Answer {
        assert_eq!(self.status, status, "body: {}", self.text);
        self
    }

    /// Asserts the headers every catalog and health read carries.
    #[track_caller]
    fn expect_read_headers(self) -> Answer {
        let index = self.index.expect("X-Consul-Index");
        assert!(index >= 1, "X-Consul-Index must never be 0");
        assert_eq!(self.known_leader.as_deref(), Some("true"));
        assert_eq!(self.last_contact.as_deref(), Some("0"));
        assert!(self.content_type.starts_with("application/json"));
        self
    }

    /// Asserts a plain-text error with this status whose body contains `text`.
    #[track_caller]
    fn expect_plain(self, status: u16, text: &str) -> Answer {
        let answer = self.expect(status);
        assert!(
            answer.content_type.starts_with("text/plain"),
            "content type {} for {}",
            answer.content_type,
            answer.text
        );
        assert!(
            answer.text.contains(text),
            "{:?} lacks {text:?}",
            answer.text
        );
        answer
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn read(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut response = result.expect("HTTP request");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let index = header("x-consul-index").map(|v| v.parse::<u64>().expect("numeric index"));
    let known_leader = header("x-consul-knownleader");
    let last_contact = header("x-consul-lastcontact");
    let content_type = header("content-type").unwrap_or_default();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        content_type,
        index,
        known_leader,
        last_contact,
        text,
        json,
    }
}

/// Health answers are kept serialised with the service's cached page; a check's new output
/// (which may change no catalog revision) and a change of the instance must both show.
#[test]
fn cached_health_answers_follow_check_outputs_and_instance_changes() {
    let server = start();
    register(
        &server,
        json!({"Name": "web", "ID": "web-1", "Port": 80, "Tags": ["v1"],
               "Check": {"TTL": "30s", "Status": "passing"}}),
    );
    let path = "/v1/health/service/web?passing&tag=V1";
    let output = |server: &Server| {
        let entries = get(server, path).expect_read_headers().json;
        entries[0]["Checks"][1]["Output"].clone()
    };
    assert_eq!(output(&server), "");
    // The compact answer (node and serfHealth serialised once) is the pretty one, compacted.
    register(
        &server,
        json!({"Name": "web", "ID": "web-2", "Tags": ["v1"], "Meta": {"env": "prod"}}),
    );
    let compact = get(&server, path).expect(200);
    let pretty = get(&server, &format!("{path}&pretty")).expect(200);
    assert_eq!(compact.json, pretty.json);
    assert!(!compact.text.contains('\n') && pretty.text.contains('\n'));
    assert_eq!(ids(&compact.json, "/Service/ID"), vec!["web-1", "web-2"]);
    let hits = server.catalog().cache_counts().0;
    assert_eq!(output(&server), "");
    assert!(
        server.catalog().cache_counts().0 > hits,
        "read from the cache"
    );
    for note in ["first", "second", "second again"] {
        put_empty(
            &server,
            &format!("/v1/agent/check/pass/service:web-1?note={}", encode(note)),
        )
        .expect(200);
        assert_eq!(output(&server), note);
    }
    // The instance changes: new port, and then it stops matching the tag.
    register(
        &server,
        json!({"Name": "web", "ID": "web-1", "Port": 81, "Tags": ["v1"],
               "Check": {"TTL": "30s", "Status": "passing"}}),
    );
    let entries = get(&server, path).json;
    assert_eq!(entries[0]["Service"]["Port"], 81);
    register(
        &server,
        json!({"Name": "web", "ID": "web-1", "Port": 81, "Tags": ["v2"],
               "Check": {"TTL": "30s", "Status": "passing"}}),
    );
    let entries = get(&server, path).json;
    assert_eq!(ids(&entries, "/Service/ID"), vec!["web-2"]);
    // Another shape of the same page (pretty, another tag) is its own answer.
    let pretty = get(&server, "/v1/health/service/web?tag=v2&pretty").expect(200);
    assert!(pretty.text.contains("\n"), "{}", pretty.text);
    assert_eq!(ids(&pretty.json, "/Service/ID"), vec!["web-1"]);
}

fn get(server: &Server, path: &str) -> Answer {
    read(agent().get(format!("{}{path}", server.base())).call())
}

fn put(server: &Server, path: &str, body: &Value) -> Answer {
    read(
        agent()
            .put(format!("{}{path}", server.base()))
            .send(body.to_string().as_bytes()),
    )
}

fn put_empty(server: &Server, path: &str) -> Answer {
    read(agent().put(format!("{}{path}", server.base())).send_empty())
}

/// `PUT /v1/agent/service/register`, expecting 200.
#[track_caller]
fn register(server: &Server, body: Value) {
    let answer = put(server, "/v1/agent/service/register", &body);
    assert_eq!(answer.status, 200, "register {body}: {}", answer.text);
}

fn settings() -> ServerSettings {
    ServerSettings {
        consul: ConsulSettings {
            node_name: "node-1".to_string(),
            datacenter: "dc1".to_string(),
            node_address: "127.0.0.1".to_string(),
        },
        ..ServerSettings::standard()
    }
}

fn start() -> Server {
    Server::with(CatalogSettings::standard(), settings())
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn ids(entries: &Value, pointer: &str) -> Vec<String> {
    entries
        .as_array()
        .expect("an array")
        .iter()
        .map(|e| {
            e.pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Golden responses
// ---------------------------------------------------------------------------------------------

/// Replaces index values (which depend on write order) with `"<index>"`, after checking that
/// each is an integer of at least 1, and the volatile `Stats` of `/v1/agent/self`.
fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                match key.as_str() {
                    "CreateIndex" | "ModifyIndex" => {
                        assert!(
                            item.as_u64().is_some_and(|n| n >= 1),
                            "{key} must be a positive integer, is {item}"
                        );
                        *item = json!("<index>");
                    }
                    "Stats" => *item = json!("<stats>"),
                    _ => redact(item),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/fixtures/consul")
        .join(format!("{name}.json"))
}

/// Compares a redacted body with its fixture (or rewrites the fixture on request).
#[track_caller]
fn golden(name: &str, mut body: Value) {
    redact(&mut body);
    let path = fixture_path(name);
    let pretty = serde_json::to_string_pretty(&body).expect("json") + "\n";
    if std::env::var_os("SVCMETA_UPDATE_FIXTURES").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("fixture dir");
        std::fs::write(&path, &pretty).expect("write fixture");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    let expected: Value = serde_json::from_str(&expected).expect("fixture is JSON");
    assert_eq!(
        body,
        expected,
        "{name}: the response differs from {}; got\n{pretty}",
        path.display()
    );
}

/// A catalog of three instances: a Consul registration with a TTL check and its mapped meta,
/// one without checks, and a native instance with version, environment and region.
fn golden_catalog() -> Server {
    let server = start();
    register(
        &server,
        json!({
            "ID": "payments-1", "Name": "payments", "Address": "10.0.0.5", "Port": 8080,
            "Tags": ["v2", "primary"],
            "Meta": {"env": "prod", "region": "eu-west", "version": "2.4.1", "team": "core"},
            "Check": {"TTL": "15s", "Notes": "heartbeat"},
        }),
    );
    put_empty(
        &server,
        "/v1/agent/check/pass/service:payments-1?note=ready",
    )
    .expect(200);
    register(
        &server,
        json!({"ID": "payments-2", "Name": "payments", "Port": 8081, "Tags": ["v1"]}),
    );
    register(
        &server,
        json!({"ID": "batch-1", "Name": "batch", "Check": {
            "TTL": "1m", "CheckID": "batch-ttl", "Name": "batch heartbeat",
            "DeregisterCriticalServiceAfter": "10m"}}),
    );
    server.register(&json!({
        "id": "ledger-1", "service": "ledger", "address": "ledger.internal", "port": 9000,
        "tags": ["canary"], "version": "1.0.0", "environment": "staging", "region": "us-east",
        "meta": {"owner": "fin"},
    }));
    server
}

#[test]
fn responses_match_the_documented_shapes() {
    let server = golden_catalog();
    let reads = [
        ("catalog_services", "/v1/catalog/services"),
        ("catalog_service", "/v1/catalog/service/payments"),
        ("catalog_nodes", "/v1/catalog/nodes"),
        ("catalog_node", "/v1/catalog/node/node-1"),
        ("health_service", "/v1/health/service/payments"),
        ("health_checks", "/v1/health/checks/payments"),
        ("health_state_critical", "/v1/health/state/critical"),
        ("health_node", "/v1/health/node/node-1"),
    ];
    for (name, path) in reads {
        let answer = get(&server, path).expect(200).expect_read_headers();
        golden(name, answer.json);
    }
    let agent_reads = [
        ("agent_services", "/v1/agent/services"),
        ("agent_service", "/v1/agent/service/ledger-1"),
        ("agent_checks", "/v1/agent/checks"),
        ("agent_self", "/v1/agent/self"),
        ("agent_members", "/v1/agent/members"),
        ("status_leader", "/v1/status/leader"),
        ("status_peers", "/v1/status/peers"),
        ("catalog_datacenters", "/v1/catalog/datacenters"),
    ];
    for (name, path) in agent_reads {
        let answer = get(&server, path).expect(200);
        assert!(answer.content_type.starts_with("application/json"));
        golden(name, answer.json);
    }
    // Clients never meet null where they iterate: unknown services are [] with headers.
    let answer = get(&server, "/v1/health/service/nothing")
        .expect(200)
        .expect_read_headers();
    assert_eq!(answer.json, json!([]));
    assert_eq!(answer.index, Some(1), "an unknown service's index is 1");
    let answer = get(&server, "/v1/catalog/node/other-node").expect(200);
    assert_eq!(answer.json, Value::Null, "another node is null, as Consul");
    let answer = get(&server, "/v1/agent/service/ledger-1").expect(200);
    let hash = answer.json["ContentHash"]
        .as_str()
        .expect("hash")
        .to_string();
    assert!(!hash.is_empty());
    // `?pretty` indents.
    let answer = get(&server, "/v1/status/peers?pretty").expect(200);
    assert!(answer.text.contains("\n  "), "{}", answer.text);
}

// ---------------------------------------------------------------------------------------------
// Mapping
// ---------------------------------------------------------------------------------------------

#[test]
fn consul_and_native_registrations_appear_in_both_apis() {
    let server = start();
    // Lower-case keys as py-consul sends them, nulls as consulrs sends them.
    register(
        &server,
        json!({
            "name": "web", "id": "web-1", "address": "10.0.0.7", "port": 80,
            "tags": ["a", "b"], "meta": {"environment": "prod", "region": "EU-West", "version": "v3"},
            "enable_tag_override": false, "Ns": null, "weights": {"passing": 3, "warning": 1},
            "UnknownField": {"x": 1},
        }),
    );
    let native = server.get("/api/v1/instances/web-1").expect(200).json;
    assert_eq!(native["service"], "web");
    assert_eq!(native["address"], "10.0.0.7");
    assert_eq!(native["port"], 80);
    assert_eq!(native["tags"], json!(["a", "b"]));
    assert_eq!(native["environment"], "prod");
    assert_eq!(native["version"], "v3");
    assert!(
        native.get("region").is_none(),
        "a Meta region that is no lower-case slug stays in meta only: {native}"
    );
    assert_eq!(
        native["meta"],
        json!({"environment": "prod", "region": "EU-West", "version": "v3"})
    );
    let by_version = server.list_ids(&[("version", Some("3.0.0")), ("env", Some("prod"))]);
    assert_eq!(by_version, vec!["web-1"]);

    // ID defaults to Name.
    register(&server, json!({"Name": "solo", "Port": 1}));
    assert_eq!(server.get("/api/v1/instances/solo").status, 200);

    // A native instance shows its version, environment and region as Meta keys.
    server.register(&json!({
        "id": "api-1", "service": "api", "address": "10.0.0.8", "port": 443,
        "version": "1.2.3", "environment": "staging", "region": "us-east",
        "meta": {"team": "core"},
    }));
    let services = get(&server, "/v1/agent/services").expect(200).json;
    assert_eq!(
        services["api-1"]["Meta"],
        json!({"team": "core", "version": "1.2.3", "env": "staging", "region": "us-east"})
    );
    assert_eq!(services["api-1"]["Service"], "api");
    assert_eq!(services["web-1"]["Meta"]["environment"], "prod");
    assert!(
        services["web-1"]["Meta"].get("env").is_none(),
        "environment is already there"
    );
    // And filters see those keys.
    let filter = encode(r#"ServiceMeta.env == "staging""#);
    let rows = get(&server, &format!("/v1/catalog/service/api?filter={filter}"))
        .expect(200)
        .json;
    assert_eq!(ids(&rows, "/ServiceID"), vec!["api-1"]);

    // Re-registering replaces: a meta key no longer sent is gone everywhere.
    register(
        &server,
        json!({"Name": "web", "ID": "web-1", "Address": "10.0.0.7", "Port": 80, "Meta": {"team": "x"}}),
    );
    let native = server.get("/api/v1/instances/web-1").expect(200).json;
    assert_eq!(native["meta"], json!({"team": "x"}));
    assert!(native.get("environment").is_none(), "{native}");
    assert_eq!(native["tags"], json!([]));

    // Deregistering through Consul removes the instance natively, and vice versa.
    put_empty(&server, "/v1/agent/service/deregister/web-1").expect(200);
    server.get("/api/v1/instances/web-1").expect(404);
    server.delete("/api/v1/instances/api-1").expect(200);
    get(&server, "/v1/agent/service/api-1").expect_plain(404, "unknown service ID: api-1");
    put_empty(&server, "/v1/agent/service/deregister/web-1")
        .expect_plain(404, "Unknown service ID \"web-1\"");
}

#[test]
fn bad_registrations_answer_consuls_messages() {
    let server = start();
    let register_raw = |body: &str| {
        read(
            agent()
                .put(format!("{}/v1/agent/service/register", server.base()))
                .send(body.as_bytes()),
        )
    };
    register_raw("{").expect_plain(400, "Request decode failed");
    register_raw(r#"{"ID": "x"}"#).expect_plain(400, "Missing service name");
    register_raw(r#"{"Name": "x", "Port": "80"}"#).expect_plain(400, "Request decode failed");
    register_raw(r#"{"Name": "x", "Address": "0.0.0.0"}"#)
        .expect_plain(400, "Invalid service address");
    register_raw(r#"{"Name": "x", "Check": {"TTL": "10s", "Status": "ok"}}"#)
        .expect_plain(400, "Status for checks must");
    register_raw(r#"{"Name": "x", "Weights": {"Passing": 0}}"#)
        .expect_plain(400, "Invalid Weights");
    register_raw(r#"{"Name": "x", "Meta": {"consul-x": "y"}}"#)
        .expect_plain(400, "Invalid Service Meta");
    // svcmeta's own rules name the field and the limit, as plain text.
    let answer = register_raw(r#"{"Name": "x y", "Port": 70000}"#);
    let answer = answer.expect_plain(400, "service:");
    assert!(answer.text.contains("port: 70000"), "{}", answer.text);
    // Nothing was stored by any of them.
    assert_eq!(get(&server, "/v1/agent/services").json, json!({}));
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

fn health_of(server: &Server, service: &str) -> Vec<(String, String)> {
    let entries = get(server, &format!("/v1/health/service/{service}"))
        .expect(200)
        .json;
    entries
        .as_array()
        .expect("array")
        .iter()
        .flat_map(|e| e["Checks"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["CheckID"] != "serfHealth")
        .map(|c| {
            (
                c["CheckID"].as_str().unwrap_or_default().to_string(),
                c["Status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn ttl_checks_start_critical_and_follow_pass_warn_fail_and_update() {
    let server = start();
    register(
        &server,
        json!({"Name": "web", "ID": "web-1", "Port": 80, "Check": {"TTL": "30s"}}),
    );
    let native = server.get("/api/v1/instances/web-1").expect(200).json;
    assert_eq!(native["ttl"], "30s", "the TTL is the instance's lease");
    assert_eq!(
        native["health"], "critical",
        "a TTL check starts critical, as in Consul"
    );
    assert_eq!(
        health_of(&server, "web"),
        vec![("service:web-1".to_string(), "critical".to_string())]
    );
    let passing = get(&server, "/v1/health/service/web?passing=1").json;
    assert_eq!(passing, json!([]));

    put_empty(
        &server,
        "/v1/agent/check/pass/service:web-1?note=all%20good",
    )
    .expect(200);
    let entries = get(&server, "/v1/health/service/web?passing").json;
    assert_eq!(ids(&entries, "/Service/ID"), vec!["web-1"]);
    assert_eq!(entries[0]["Checks"][1]["Output"], "all good");
    assert_eq!(entries[0]["Checks"][1]["Type"], "ttl");
    assert!(server.catalog().lease_deadline("web-1").is_some());

    put_empty(&server, "/v1/agent/check/warn/service:web-1?note=slow").expect(200);
    assert_eq!(
        get(&server, "/v1/health/service/web?passing=true").json,
        json!([]),
        "passing excludes warning"
    );
    assert_eq!(
        server.get("/api/v1/instances/web-1").json["health"],
        "warning"
    );
    put_empty(&server, "/v1/agent/check/fail/service:web-1").expect(200);
    assert_eq!(
        server.get("/api/v1/instances/web-1").json["health"],
        "critical"
    );
    put(
        &server,
        "/v1/agent/check/update/service:web-1",
        &json!({"Status": "passing", "Output": "back"}),
    )
    .expect(200);
    let checks = get(&server, "/v1/health/checks/web").expect(200).json;
    assert_eq!(checks[0]["Status"], "passing");
    assert_eq!(checks[0]["Output"], "back");
    put(
        &server,
        "/v1/agent/check/update/service:web-1",
        &json!({"Status": "bad"}),
    )
    .expect_plain(400, "Invalid check status: 'bad'");
    put_empty(&server, "/v1/agent/check/pass/service:nope")
        .expect_plain(404, "Unknown check ID \"service:nope\"");

    // A status given at registration is the initial one; re-registering keeps the current.
    register(
        &server,
        json!({"Name": "db", "ID": "db-1", "Check": {"TTL": "30s", "Status": "passing"}}),
    );
    assert_eq!(
        health_of(&server, "db"),
        vec![("service:db-1".to_string(), "passing".to_string())]
    );
    put_empty(&server, "/v1/agent/check/warn/service:db-1").expect(200);
    register(
        &server,
        json!({"Name": "db", "ID": "db-1", "Check": {"TTL": "30s"}}),
    );
    assert_eq!(
        health_of(&server, "db"),
        vec![("service:db-1".to_string(), "warning".to_string())]
    );

    // Several checks: ids service:<ID>:<n>, the instance's health is the worst of them.
    register(
        &server,
        json!({"Name": "mq", "ID": "mq-1", "Checks": [
            {"TTL": "10s", "Status": "passing"},
            {"TTL": "20s", "Status": "passing", "Name": "disk"},
        ]}),
    );
    assert_eq!(
        health_of(&server, "mq"),
        vec![
            ("service:mq-1:1".to_string(), "passing".to_string()),
            ("service:mq-1:2".to_string(), "passing".to_string())
        ]
    );
    assert_eq!(server.get("/api/v1/instances/mq-1").json["ttl"], "10s");
    put_empty(&server, "/v1/agent/check/fail/service:mq-1:2").expect(200);
    assert_eq!(
        server.get("/api/v1/instances/mq-1").json["health"],
        "critical"
    );
    put_empty(&server, "/v1/agent/check/pass/service:mq-1:1").expect(200);
    assert_eq!(
        server.get("/api/v1/instances/mq-1").json["health"],
        "critical",
        "one check still fails"
    );
    put_empty(&server, "/v1/agent/check/pass/service:mq-1:2").expect(200);
    assert_eq!(
        server.get("/api/v1/instances/mq-1").json["health"],
        "passing"
    );

    // A non-TTL check is accepted and not run: the instance has no lease and passes.
    register(
        &server,
        json!({"Name": "h", "ID": "h-1", "Check": {"HTTP": "http://127.0.0.1:1/", "Interval": "10s"}}),
    );
    let native = server.get("/api/v1/instances/h-1").expect(200).json;
    assert_eq!(native["health"], "passing");
    assert!(native.get("ttl").is_none());
    put_empty(&server, "/v1/agent/check/pass/service:h-1")
        .expect_plain(500, "does not have associated TTL");
}

fn clocked(clock: &Arc<ManualClock>) -> Server {
    let catalog = Catalog::open_with_clock(
        Store::Memory,
        CatalogSettings::standard(),
        Arc::clone(clock) as Arc<dyn svcmeta_server::Clock>,
    )
    .expect("catalog");
    Server::with_catalog(catalog, settings())
}

#[test]
fn an_expired_ttl_turns_every_check_critical_and_deregister_critical_service_after_removes() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let server = clocked(&clock);
    register(
        &server,
        json!({"Name": "web", "ID": "web-1", "Check": {
            "TTL": "10s", "Status": "passing", "DeregisterCriticalServiceAfter": "90s"}}),
    );
    put_empty(&server, "/v1/agent/check/pass/service:web-1?note=fine").expect(200);
    clock.advance(11_000);
    server.catalog().expire_due();
    let checks = get(&server, "/v1/health/checks/web").expect(200).json;
    assert_eq!(checks[0]["Status"], "critical");
    assert_eq!(
        checks[0]["Output"],
        "TTL expired (last output before timeout follows): fine"
    );
    // Critical for less than DeregisterCriticalServiceAfter: still there.
    std::thread::sleep(Duration::from_millis(1500));
    server.get("/api/v1/instances/web-1").expect(200);
    clock.advance(91_000);
    let deadline = Instant::now() + PATIENCE;
    while server.get("/api/v1/instances/web-1").status != 404 {
        assert!(Instant::now() < deadline, "not deregistered in time");
        std::thread::sleep(Duration::from_millis(100));
    }
    put_empty(&server, "/v1/agent/check/pass/service:web-1").expect(404);
}

// ---------------------------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------------------------

fn query_catalog() -> Server {
    let server = start();
    for (id, tags, meta, port) in [
        ("w1", json!(["v2", "Primary"]), json!({"team": "core"}), 80),
        ("w2", json!(["v2"]), json!({"team": "edge"}), 81),
        ("w3", json!(["v1", "primary"]), json!({}), 82),
    ] {
        register(
            &server,
            json!({"Name": "web", "ID": id, "Tags": tags, "Meta": meta, "Port": port}),
        );
    }
    register(
        &server,
        json!({"Name": "db", "ID": "d1", "Tags": ["v2"], "Meta": {"team": "core"}}),
    );
    server
}

#[test]
fn tags_are_anded_and_case_insensitive() {
    let server = query_catalog();
    let rows = get(&server, "/v1/catalog/service/web?tag=primary").json;
    assert_eq!(ids(&rows, "/ServiceID"), vec!["w1", "w3"]);
    let rows = get(&server, "/v1/catalog/service/web?tag=PRIMARY&tag=v2").json;
    assert_eq!(ids(&rows, "/ServiceID"), vec!["w1"]);
    let rows = get(&server, "/v1/health/service/web?tag=v2&tag=v1").json;
    assert_eq!(rows, json!([]));
    // Whole elements only, never substrings.
    let rows = get(&server, "/v1/catalog/service/web?tag=prim").json;
    assert_eq!(rows, json!([]));
    // Service names are case-insensitive on /v1, as everywhere.
    let rows = get(&server, "/v1/catalog/service/WEB").json;
    assert_eq!(ids(&rows, "/ServiceID"), vec!["w1", "w2", "w3"]);
}

#[test]
fn filters_use_each_endpoints_consul_selectors() {
    let server = query_catalog();
    let check = |path: &str, filter: &str, pointer: &str, expected: &[&str]| {
        let url = format!("{path}?filter={}", encode(filter));
        let answer = get(&server, &url).expect(200);
        assert_eq!(ids(&answer.json, pointer), expected, "{url}");
    };
    check(
        "/v1/catalog/service/web",
        r#"ServiceMeta.team == "core""#,
        "/ServiceID",
        &["w1"],
    );
    check(
        "/v1/catalog/service/web",
        r#""v2" in ServiceTags and ServicePort != 80"#,
        "/ServiceID",
        &["w2"],
    );
    check(
        "/v1/health/service/web",
        r#"Service.Meta.team == "edge" or Service.ID == w3"#,
        "/Service/ID",
        &["w2", "w3"],
    );
    check(
        "/v1/health/service/web",
        r#"Node.Node == "node-1" and Node.Datacenter == dc1 and "Primary" in Service.Tags"#,
        "/Service/ID",
        &["w1"],
    );
    // `+` is a space in query strings (Prometheus sends filters that way).
    let rows = get(
        &server,
        "/v1/catalog/service/web?filter=ServiceMeta.team+%3D%3D+%22core%22",
    )
    .json;
    assert_eq!(ids(&rows, "/ServiceID"), vec!["w1"]);
    // An empty filter is no filter.
    let rows = get(&server, "/v1/catalog/service/web?filter=").json;
    assert_eq!(rows.as_array().map(Vec::len), Some(3));
    // `matches` on a missing key is false (Consul's go-bexpr v0.1.2 says true).
    check(
        "/v1/catalog/service/web",
        r#"ServiceMeta.team matches "^c""#,
        "/ServiceID",
        &["w1"],
    );
    check(
        "/v1/catalog/service/web",
        r#"ServiceMeta.team not matches "^c""#,
        "/ServiceID",
        &["w2", "w3"],
    );

    let services = get(
        &server,
        &format!(
            "/v1/catalog/services?filter={}",
            encode(r#"ServiceMeta.team == "core""#)
        ),
    )
    .expect(200)
    .expect_read_headers()
    .json;
    assert_eq!(
        services,
        json!({"db": ["v2"], "web": ["Primary", "v2"]}),
        "tags of the matching instances only"
    );
    let agent = get(
        &server,
        &format!(
            "/v1/agent/services?filter={}",
            encode(r#"Meta.team == "edge""#)
        ),
    )
    .expect(200)
    .json;
    assert_eq!(agent.as_object().map(|m| m.len()), Some(1));
    assert!(agent.get("w2").is_some());
    let nodes = get(
        &server,
        &format!("/v1/catalog/nodes?filter={}", encode(r#"Node == "other""#)),
    )
    .expect(200)
    .json;
    assert_eq!(nodes, json!([]));
}

#[test]
fn bad_filters_are_400_with_the_position_in_consuls_plain_text() {
    let server = query_catalog();
    let bad = |path: &str, filter: &str, text: &str| {
        get(&server, &format!("{path}?filter={}", encode(filter))).expect_plain(400, text);
    };
    bad(
        "/v1/catalog/service/web",
        r#"ServiceMeta.team =="#,
        "Failed to create boolean expression evaluator: 1:20 (19): expected a value",
    );
    // A selector of another endpoint is not valid here.
    bad(
        "/v1/health/service/web",
        r#"ServiceTags contains "v2""#,
        "1:1 (0): Selector \"ServiceTags\" is not valid on /v1/health/service",
    );
    bad(
        "/v1/catalog/service/web",
        r#"Service.Tags contains "v2""#,
        "Selector \"Service.Tags\" is not valid",
    );
    // Native-only selectors are not Consul's.
    bad(
        "/v1/catalog/services",
        r#"Version == "1""#,
        "Selector \"Version\"",
    );
    // Consul selectors svcmeta cannot answer say so.
    bad(
        "/v1/health/service/web",
        r#"Checks.Status == "passing""#,
        "not supported by svcmeta",
    );
    bad(
        "/v1/health/service/web",
        r#"Service.Port == "80a""#,
        "1:17 (16): value \"80a\" is not an integer",
    );
    bad(
        "/v1/health/checks/web",
        r#"Status == "passing""#,
        "not supported by svcmeta",
    );
}

#[test]
fn datacenter_namespace_and_unsupported_endpoints() {
    let server = query_catalog();
    get(&server, "/v1/catalog/service/web?dc=dc1").expect(200);
    get(&server, "/v1/catalog/service/web?dc=").expect(200);
    get(&server, "/v1/health/service/web?dc=dc2").expect_plain(500, "No path to datacenter");
    get(&server, "/v1/catalog/services?ns=default").expect(200);
    get(&server, "/v1/catalog/services?ns=team-a")
        .expect_plain(400, "Namespaces are a Consul Enterprise feature");
    get(&server, "/v1/catalog/services?stale&consistent")
        .expect_plain(400, "Cannot specify ?stale");
    get(
        &server,
        "/v1/catalog/services?stale=&token=x&near=_agent&cached",
    )
    .expect(200);
    get(&server, "/v1/health/service/web?passing=maybe")
        .expect_plain(400, "Invalid value for ?passing");
    get(&server, "/v1/health/service/web?index=x").expect_plain(400, "Invalid index");
    get(&server, "/v1/health/service/web?index=5&wait=30").expect_plain(400, "Invalid wait time");
    get(&server, "/v1/kv/config/app").expect_plain(501, "does not implement the key/value store");
    put_empty(&server, "/v1/session/create").expect_plain(501, "does not implement sessions");
    get(&server, "/v1/acl/tokens").expect_plain(501, "does not implement ACL management");
    get(&server, "/v1/no/such/endpoint").expect_plain(404, "404 page not found");
    let answer = read(
        agent()
            .post(format!("{}/v1/agent/services", server.base()))
            .send_empty(),
    );
    answer.expect_plain(405, "method POST not allowed");
    // The native API's errors are unchanged.
    server.get("/api/v1/nothing").expect_error(404, "not_found");
}

// ---------------------------------------------------------------------------------------------
// Blocking
// ---------------------------------------------------------------------------------------------

fn blocking_get(server: &Server, path: &str) -> mpsc::Receiver<(Answer, Duration)> {
    let (tx, rx) = mpsc::channel();
    let url = format!("{}{path}", server.base());
    std::thread::spawn(move || {
        let started = Instant::now();
        let answer = read(agent().get(url).call());
        let _ = tx.send((answer, started.elapsed()));
    });
    rx
}

#[test]
fn blocking_reads_wake_on_their_service_only() {
    let server = query_catalog();
    let first = get(&server, "/v1/health/service/web").expect_read_headers();
    let index = first.index.expect("index");
    let waiting = blocking_get(
        &server,
        &format!("/v1/health/service/web?index={index}&wait=30s"),
    );
    // A write to another service does not wake it.
    std::thread::sleep(Duration::from_millis(300));
    register(&server, json!({"Name": "db", "ID": "d2"}));
    assert!(
        waiting.recv_timeout(Duration::from_millis(700)).is_err(),
        "woke on another service's write"
    );
    register(&server, json!({"Name": "web", "ID": "w4", "Tags": ["v3"]}));
    let (answer, _) = waiting.recv_timeout(PATIENCE).expect("woke");
    let answer = answer.expect(200).expect_read_headers();
    assert!(answer.index.expect("index") > index);
    assert_eq!(
        ids(&answer.json, "/Service/ID"),
        vec!["w1", "w2", "w3", "w4"]
    );

    // The wait runs out with the same data and index.
    let current = get(&server, "/v1/catalog/service/web")
        .index
        .expect("index");
    let (answer, elapsed) = blocking_get(
        &server,
        &format!("/v1/catalog/service/web?index={current}&wait=1s"),
    )
    .recv_timeout(PATIENCE)
    .expect("answered");
    assert_eq!(answer.index, Some(current));
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");

    // A service that does not exist yet: index 1, and index=1 waits for it to appear.
    let none = get(&server, "/v1/health/service/cache").expect_read_headers();
    assert_eq!(none.index, Some(1));
    let waiting = blocking_get(&server, "/v1/health/service/cache?index=1&wait=30s");
    assert!(
        waiting.recv_timeout(Duration::from_millis(500)).is_err(),
        "index=1 on an unknown service must block, not spin"
    );
    register(&server, json!({"Name": "cache", "ID": "c1"}));
    let (answer, _) = waiting.recv_timeout(PATIENCE).expect("woke");
    assert_eq!(ids(&answer.json, "/Service/ID"), vec!["c1"]);

    // Deregistration wakes too, and the index never goes back.
    let before = get(&server, "/v1/catalog/service/cache")
        .index
        .expect("index");
    let waiting = blocking_get(
        &server,
        &format!("/v1/catalog/service/cache?index={before}&wait=30s"),
    );
    std::thread::sleep(Duration::from_millis(200));
    put_empty(&server, "/v1/agent/service/deregister/c1").expect(200);
    let (answer, _) = waiting.recv_timeout(PATIENCE).expect("woke");
    assert_eq!(answer.json, json!([]));
    assert!(answer.index.expect("index") > before);

    // The service listing blocks on every change.
    let listing = get(&server, "/v1/catalog/services").index.expect("index");
    let waiting = blocking_get(
        &server,
        &format!("/v1/catalog/services?index={listing}&wait=30s"),
    );
    std::thread::sleep(Duration::from_millis(200));
    register(&server, json!({"Name": "queue", "ID": "q1", "Tags": ["x"]}));
    let (answer, _) = waiting.recv_timeout(PATIENCE).expect("woke");
    assert_eq!(answer.json["queue"], json!(["x"]));

    // A heartbeat that changes nothing does not wake a health watch.
    register(
        &server,
        json!({"Name": "hb", "ID": "hb1", "Check": {"TTL": "30s", "Status": "passing"}}),
    );
    let index = get(&server, "/v1/health/service/hb").index.expect("index");
    let waiting = blocking_get(
        &server,
        &format!("/v1/health/service/hb?index={index}&wait=30s"),
    );
    std::thread::sleep(Duration::from_millis(200));
    put_empty(&server, "/v1/agent/check/pass/service:hb1").expect(200);
    assert!(
        waiting.recv_timeout(Duration::from_millis(700)).is_err(),
        "a passing heartbeat on a passing check woke the watch"
    );
    put_empty(&server, "/v1/agent/check/fail/service:hb1").expect(200);
    let (answer, _) = waiting.recv_timeout(PATIENCE).expect("woke");
    assert_eq!(answer.json[0]["Checks"][1]["Status"], "critical");
}

#[test]
fn native_changes_wake_consul_watches() {
    let server = start();
    server.register(&instance("n1", "native"));
    let index = get(&server, "/v1/health/service/native")
        .index
        .expect("index");
    let waiting = blocking_get(
        &server,
        &format!("/v1/health/service/native?index={index}&wait=30s"),
    );
    std::thread::sleep(Duration::from_millis(200));
    server.register(&with(instance("n1", "native"), "tags", json!(["t"])));
    let (answer, _) = waiting.recv_timeout(PATIENCE).expect("woke");
    assert_eq!(answer.json[0]["Service"]["Tags"], json!(["t"]));
}
