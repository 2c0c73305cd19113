//! Tests of the importers: every real input file in the shared data folder, format detection,
//! the Kubernetes and Consul mapping rules, and error locations.
//!
//! The real-data tests skip loudly when the folder is missing, except under `CI`, where they
//! fail; they do not download anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::k8s::image_tag;
use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers

/// `$SVCMETA_REAL_DATA`, else `<workspace root>/../shared/data/real`; `None` (after a loud SKIP
/// line) when missing, a panic when missing under `CI`.
fn real_data_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("SVCMETA_REAL_DATA") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join("../shared/data/real"),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "real data folder {} is missing (set SVCMETA_REAL_DATA to its location)",
            dir.display()
        );
    }
    eprintln!(
        "SKIP ****** real data folder {} is missing; set SVCMETA_REAL_DATA to run this test ******",
        dir.display()
    );
    None
}

fn real(name: &str) -> Option<Parsed> {
    let dir = real_data_dir()?;
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    Some(parse(name, &text).unwrap_or_else(|err| panic!("{err}")))
}

fn ok(text: &str) -> Parsed {
    parse("test", text).unwrap_or_else(|err| panic!("{err}"))
}

fn err(text: &str) -> ImportError {
    match parse("test", text) {
        Ok(parsed) => panic!("expected an error, got {parsed:#?}"),
        Err(err) => err,
    }
}

fn by_id<'a>(parsed: &'a Parsed, id: &str) -> &'a InstanceDraft {
    parsed
        .drafts
        .iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("no draft with id {id}; ids: {:?}", ids(parsed)))
}

fn ids(parsed: &Parsed) -> Vec<&str> {
    parsed.drafts.iter().map(|d| d.id.as_str()).collect()
}

fn sorted_ids(parsed: &Parsed) -> Vec<&str> {
    let mut ids = ids(parsed);
    ids.sort_unstable();
    ids
}

fn meta(draft: &InstanceDraft, key: &str) -> Option<String> {
    draft.meta.get(key).cloned()
}

fn s(text: &str) -> Option<String> {
    Some(text.to_string())
}

fn has_warning(parsed: &Parsed, needle: &str) -> bool {
    parsed.warnings.iter().any(|w| w.contains(needle))
}

// ---------------------------------------------------------------------------------------------
// Real data

/// Every file of the folder is known here and parses in the expected format.
#[test]
fn real_every_file_parses_in_the_expected_format() {
    let Some(dir) = real_data_dir() else { return };
    let expected: BTreeMap<&str, (Format, usize)> = [
        ("k8s-bookinfo.yaml", (Format::Kubernetes, 6)),
        ("k8s-online-boutique.yaml", (Format::Kubernetes, 12)),
        ("k8s-sock-shop.yaml", (Format::Kubernetes, 14)),
        ("k8s-train-ticket.yaml", (Format::Kubernetes, 64)),
        (
            "consul-agent-services-loki.json",
            (Format::ConsulAgentServices, 3),
        ),
        (
            "consul-catalog-service-consul-discovery-client.json",
            (Format::ConsulCatalogService, 1),
        ),
        (
            "consul-catalog-services-prometheus.json",
            (Format::ConsulCatalogServices, 0),
        ),
        (
            "consul-health-service-linkerd1-statuses.json",
            (Format::ConsulHealthService, 4),
        ),
        (
            "consul-health-service-prometheus.json",
            (Format::ConsulHealthService, 1),
        ),
    ]
    .into_iter()
    .collect();
    let mut seen = 0;
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name == "SOURCES.md" {
            continue;
        }
        let (format, count) = expected
            .get(name.as_str())
            .unwrap_or_else(|| panic!("new real data file {name}: add assertions for it"));
        let parsed = real(&name).unwrap();
        assert_eq!(parsed.format, *format, "{name}");
        assert_eq!(parsed.drafts.len(), *count, "{name}");
        // The mapping produces registrations the registry accepts with the default limits.
        for draft in &parsed.drafts {
            if let Err(e) = svcmeta_core::validate(draft.clone(), &svcmeta_core::Limits::standard())
            {
                panic!("{name}: {}: {e}", draft.id);
            }
        }
        seen += 1;
    }
    assert_eq!(seen, expected.len(), "files missing from {}", dir.display());
}

#[test]
fn real_bookinfo() {
    let Some(parsed) = real("k8s-bookinfo.yaml") else {
        return;
    };
    assert_eq!(parsed.format, Format::Kubernetes);
    assert_eq!(
        sorted_ids(&parsed),
        [
            "default:details-v1-0",
            "default:productpage-v1-0",
            "default:ratings-v1-0",
            "default:reviews-v1-0",
            "default:reviews-v2-0",
            "default:reviews-v3-0",
        ]
    );
    for (id, version) in [
        ("default:reviews-v1-0", "v1"),
        ("default:reviews-v2-0", "v2"),
        ("default:reviews-v3-0", "v3"),
    ] {
        let d = by_id(&parsed, id);
        assert_eq!(d.service, "reviews");
        assert_eq!(d.version, s(version));
        assert_eq!(d.address, "reviews.default.svc.cluster.local");
        assert_eq!(d.port, 9080);
        // `app` and `version` are used, so no label is left over as a tag.
        assert!(d.tags.is_empty(), "{:?}", d.tags);
        assert_eq!(d.environment, None);
        assert_eq!(d.region, None);
        assert_eq!(d.ttl, None);
        assert_eq!(meta(d, "namespace"), s("default"));
        assert_eq!(meta(d, "kind"), s("Deployment"));
        assert_eq!(
            meta(d, "workload").as_deref(),
            id.strip_prefix("default:").map(|w| &w[..w.len() - 2])
        );
        assert_eq!(
            meta(d, "image"),
            Some(format!(
                "docker.io/istio/examples-bookinfo-reviews-{version}:1.20.1"
            ))
        );
    }
    let page = by_id(&parsed, "default:productpage-v1-0");
    assert_eq!(page.service, "productpage");
    assert_eq!(page.address, "productpage.default.svc.cluster.local");
    assert_eq!(meta(page, "prometheus.io_scrape"), s("true"));
    assert_eq!(meta(page, "prometheus.io_port"), s("9080"));
    assert_eq!(meta(page, "prometheus.io_path"), s("/metrics"));
    assert_eq!(page.meta.len(), 7, "{:?}", page.meta);
    let details = by_id(&parsed, "default:details-v1-0");
    assert_eq!(
        details.meta.len(),
        4,
        "only namespace, kind, workload, image: {:?}",
        details.meta
    );
    assert_eq!(details.address, "details.default.svc.cluster.local");
    assert!(
        parsed
            .warnings
            .contains(&"skipped 4 Service, 4 ServiceAccount".to_string()),
        "{:?}",
        parsed.warnings
    );
}

#[test]
fn real_online_boutique() {
    let Some(parsed) = real("k8s-online-boutique.yaml") else {
        return;
    };
    assert_eq!(parsed.drafts.len(), 12);
    assert!(parsed
        .drafts
        .iter()
        .all(|d| d.id.starts_with("default:") && d.id.ends_with("-0")));
    for d in &parsed.drafts {
        let expected = if d.service == "redis-cart" {
            "alpine"
        } else {
            "v0.10.6"
        };
        assert_eq!(d.version.as_deref(), Some(expected), "{}", d.id);
        assert_eq!(meta(d, "kind"), s("Deployment"));
    }
    let frontend = by_id(&parsed, "default:frontend-0");
    assert_eq!(frontend.service, "frontend");
    // `frontend` comes before `frontend-external` in the file: the first match wins.
    assert_eq!(frontend.address, "frontend.default.svc.cluster.local");
    assert_eq!(frontend.port, 8080);
    assert_eq!(
        meta(frontend, "sidecar.istio.io_rewriteAppHTTPProbers"),
        s("true")
    );
    assert_eq!(
        meta(frontend, "image"),
        s("us-central1-docker.pkg.dev/online-boutique-ci/microservices-demo/frontend:v0.10.6")
    );
    let redis = by_id(&parsed, "default:redis-cart-0");
    assert_eq!(
        redis.meta.get("image").map(String::as_str),
        Some("redis:alpine")
    );
    assert_eq!(redis.port, 6379);
    assert_eq!(redis.address, "redis-cart.default.svc.cluster.local");
    // loadgenerator has no Service; its first container is `main`, not the init container.
    let load = by_id(&parsed, "default:loadgenerator-0");
    assert_eq!(load.address, "loadgenerator");
    assert_eq!(load.port, 0);
    assert_eq!(load.version, s("v0.10.6"));
    assert!(meta(load, "image")
        .unwrap()
        .ends_with("/loadgenerator:v0.10.6"));
    assert_eq!(
        parsed
            .drafts
            .iter()
            .filter(|d| d
                .meta
                .contains_key("sidecar.istio.io_rewriteAppHTTPProbers"))
            .count(),
        2
    );
    assert!(
        parsed
            .warnings
            .contains(&"skipped 12 Service, 11 ServiceAccount".to_string()),
        "{:?}",
        parsed.warnings
    );
}

#[test]
fn real_sock_shop() {
    let Some(parsed) = real("k8s-sock-shop.yaml") else {
        return;
    };
    assert_eq!(parsed.drafts.len(), 14);
    for d in &parsed.drafts {
        assert!(d.id.starts_with("sock-shop:"), "{}", d.id);
        assert_eq!(meta(d, "namespace"), s("sock-shop"));
        // The only label is `name`, equal to the workload name: the service falls back to the
        // workload name and the label stays a tag.
        assert_eq!(d.tags, vec![format!("name={}", d.service)], "{}", d.id);
        assert_eq!(format!("sock-shop:{}-0", d.service), d.id);
        assert_eq!(
            d.address,
            format!("{}.sock-shop.svc.cluster.local", d.service)
        );
    }
    let carts = by_id(&parsed, "sock-shop:carts-0");
    assert_eq!(carts.service, "carts");
    assert_eq!(carts.version, s("0.4.8"));
    assert_eq!(carts.port, 80);
    assert_eq!(meta(carts, "image"), s("weaveworksdemos/carts:0.4.8"));
    let db = by_id(&parsed, "sock-shop:carts-db-0");
    assert_eq!(db.version, None, "untagged image `mongo`");
    assert_eq!(db.port, 27017);
    let rabbit = by_id(&parsed, "sock-shop:rabbitmq-0");
    assert_eq!(rabbit.version, s("3.6.8-management"));
    assert_eq!(rabbit.port, 15672, "first port of the first container");
    assert_eq!(meta(rabbit, "prometheus.io_scrape"), s("false"));
    assert_eq!(by_id(&parsed, "sock-shop:front-end-0").service, "front-end");
    assert!(
        parsed
            .warnings
            .contains(&"skipped 1 Namespace, 14 Service".to_string()),
        "{:?}",
        parsed.warnings
    );
}

#[test]
fn real_train_ticket() {
    let Some(parsed) = real("k8s-train-ticket.yaml") else {
        return;
    };
    assert_eq!(parsed.drafts.len(), 64);
    let mut unique = ids(&parsed);
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 64);
    // Every Deployment has a Service selecting `app: <name>`.
    for d in &parsed.drafts {
        assert_eq!(
            d.address,
            format!("{}.default.svc.cluster.local", d.service),
            "{}",
            d.id
        );
        assert_eq!(d.id, format!("default:{}-0", d.service));
        assert!(d.tags.is_empty(), "{:?}", d.tags);
        assert!(d.port > 0, "{}", d.id);
    }
    let auth = by_id(&parsed, "default:ts-auth-service-0");
    assert_eq!(auth.service, "ts-auth-service");
    assert_eq!(auth.port, 12340);
    assert_eq!(auth.version, s("0.0.4"));
    assert_eq!(meta(auth, "image"), s("codewisdom/ts-auth-service:0.0.4"));
    let mongo = by_id(&parsed, "default:ts-user-mongo-0");
    assert_eq!(mongo.version, None);
    assert_eq!(mongo.port, 27017);
    assert!(parsed
        .drafts
        .iter()
        .any(|d| d.id == "default:ts-voucher-mysql-0"));
    assert!(parsed
        .drafts
        .iter()
        .any(|d| d.id == "default:ts-ui-dashboard-0"));
    assert_eq!(
        parsed
            .drafts
            .iter()
            .filter(|d| d.service.ends_with("-mongo"))
            .count(),
        21
    );
    assert!(
        parsed.warnings.contains(&"skipped 64 Service".to_string()),
        "{:?}",
        parsed.warnings
    );
}

#[test]
fn real_consul_catalog_service() {
    let Some(parsed) = real("consul-catalog-service-consul-discovery-client.json") else {
        return;
    };
    assert_eq!(parsed.format, Format::ConsulCatalogService);
    assert_eq!(parsed.drafts.len(), 1);
    let d = &parsed.drafts[0];
    assert_eq!(d.id, "consul");
    assert_eq!(d.service, "consul");
    assert_eq!(d.port, 8300);
    assert_eq!(d.address, "", "empty ServiceAddress stays empty");
    assert!(d.tags.is_empty());
    assert_eq!(d.version, s("1.7.1"));
    assert_eq!(d.environment, None);
    assert_eq!(d.region, None);
    assert_eq!(meta(d, "raft_version"), s("3"));
    assert_eq!(meta(d, "serf_protocol_current"), s("2"));
    assert_eq!(meta(d, "version"), s("1.7.1"));
    assert_eq!(meta(d, "consul_node"), s("6a4e48904f35"));
    assert_eq!(meta(d, "consul_datacenter"), s("dc1"));
    assert_eq!(d.meta.len(), 7);
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
}

#[test]
fn real_consul_health_service_prometheus() {
    let Some(parsed) = real("consul-health-service-prometheus.json") else {
        return;
    };
    assert_eq!(parsed.format, Format::ConsulHealthService);
    assert_eq!(parsed.drafts.len(), 1);
    let d = &parsed.drafts[0];
    assert_eq!(d.id, "test");
    assert_eq!(d.service, "test");
    assert_eq!(d.tags, vec!["tag1".to_string()]);
    assert_eq!(d.address, "", "the node address 1.1.1.1 is not substituted");
    assert_eq!(d.port, 3341);
    assert_eq!(d.version, s("1.0.0"));
    assert_eq!(d.environment, s("staging"));
    assert_eq!(meta(d, "version"), s("1.0.0"));
    assert_eq!(meta(d, "environment"), s("staging"));
    assert_eq!(meta(d, "consul_node"), s("node1"));
    assert_eq!(meta(d, "consul_datacenter"), s("test-dc"));
    assert_eq!(meta(d, "rack_name"), None, "node meta is not service meta");
    assert_eq!(d.meta.len(), 4);
}

#[test]
fn real_consul_health_service_linkerd_missing_fields() {
    let Some(parsed) = real("consul-health-service-linkerd1-statuses.json") else {
        return;
    };
    assert_eq!(parsed.format, Format::ConsulHealthService);
    assert_eq!(
        ids(&parsed),
        [
            "node-passing:hosted_web",
            "node-warning:hosted_web",
            "node-critical:hosted_web",
            "node-maintenance:hosted_web",
        ]
    );
    for d in &parsed.drafts {
        assert_eq!(d.service, "hosted_web");
        assert_eq!(d.port, 0);
        assert_eq!(d.address, "");
        assert!(d.tags.is_empty());
        assert_eq!(d.version, None);
        assert_eq!(meta(d, "serv_meta"), s("some_serv_meta"));
        assert_eq!(meta(d, "node_meta"), None);
        assert_eq!(meta(d, "consul_datacenter"), None);
        assert_eq!(
            Some(format!("{}:hosted_web", meta(d, "consul_node").unwrap())),
            Some(d.id.clone())
        );
    }
}

#[test]
fn real_consul_agent_services() {
    let Some(parsed) = real("consul-agent-services-loki.json") else {
        return;
    };
    assert_eq!(parsed.format, Format::ConsulAgentServices);
    assert_eq!(
        sorted_ids(&parsed),
        ["other-id-9876", "test-id-1234", "test-id-5678"]
    );
    let a = by_id(&parsed, "test-id-1234");
    assert_eq!(
        (a.service.as_str(), a.address.as_str(), a.port),
        ("test", "1.1.1.1", 3341)
    );
    assert_eq!(a.tags, vec!["tag1".to_string()]);
    let b = by_id(&parsed, "test-id-5678");
    assert_eq!(
        (b.service.as_str(), b.address.as_str(), b.port),
        ("test", "1.1.2.2", 3341)
    );
    let other = by_id(&parsed, "other-id-9876");
    assert_eq!(
        (other.service.as_str(), other.address.as_str(), other.port),
        ("other", "", 0)
    );
    assert_eq!(other.tags, vec!["tag2".to_string()]);
    for d in &parsed.drafts {
        assert_eq!(d.version, s("1.0.0"));
        assert_eq!(d.environment, s("staging"));
        assert_eq!(
            meta(d, "consul_node"),
            None,
            "an agent listing names no node"
        );
        assert_eq!(d.meta.len(), 2);
    }
}

#[test]
fn real_consul_catalog_services_has_no_instances() {
    let Some(parsed) = real("consul-catalog-services-prometheus.json") else {
        return;
    };
    assert_eq!(parsed.format, Format::ConsulCatalogServices);
    assert!(parsed.drafts.is_empty());
    assert_eq!(parsed.warnings.len(), 1);
    assert!(
        has_warning(&parsed, "names 2 services but holds no instances"),
        "{:?}",
        parsed.warnings
    );
}

// ---------------------------------------------------------------------------------------------
// Detection

#[test]
fn detects_every_format() {
    let cases = [
        ("apiVersion: v1\nkind: Service\n", Format::Kubernetes),
        ("# only a comment\n", Format::Kubernetes),
        (
            r#"{"apiVersion": "v1", "kind": "List", "items": []}"#,
            Format::Kubernetes,
        ),
        (
            "{apiVersion: v1, kind: List, items: []}",
            Format::Kubernetes,
        ),
        (
            r#"[{"ServiceName": "web", "ServiceID": "w1"}]"#,
            Format::ConsulCatalogService,
        ),
        (
            r#"[{"Node": {"Node": "n1"}, "Service": {"Service": "web"}}]"#,
            Format::ConsulHealthService,
        ),
        (
            r#"{"w1": {"ID": "w1", "Service": "web"}}"#,
            Format::ConsulAgentServices,
        ),
        (
            r#"{"web": ["a", "b"], "db": []}"#,
            Format::ConsulCatalogServices,
        ),
        (r#"[{"id": "a", "service": "web"}]"#, Format::Native),
        (r#"{"id": "a", "service": "web"}"#, Format::Native),
        (
            "{\"id\": \"a\", \"service\": \"web\"}\n{\"id\": \"b\", \"service\": \"web\"}\n",
            Format::Native,
        ),
        ("", Format::Native),
        ("[]", Format::Native),
    ];
    for (text, format) in cases {
        assert_eq!(ok(text).format, format, "{text}");
    }
    assert_eq!(Format::Kubernetes.to_string(), "Kubernetes manifests");
    assert_eq!(
        Format::ConsulHealthService.as_str(),
        "consul-health-service"
    );
}

#[test]
fn byte_order_mark_and_leading_whitespace_are_ignored() {
    let parsed = ok("\u{feff}\n  [{\"id\": \"a\", \"service\": \"web\", \"port\": 80}]");
    assert_eq!(parsed.format, Format::Native);
    assert_eq!(parsed.drafts[0].port, 80);
}

// ---------------------------------------------------------------------------------------------
// Native

#[test]
fn native_array_object_and_ndjson() {
    let parsed = ok(
        r#"[{"id": "a", "service": "web", "tags": ["x"], "meta": {"k": "v"}, "ttl": "30s"}, {"id": "b", "service": "db", "version": "1.2.3"}]"#,
    );
    assert_eq!(ids(&parsed), ["a", "b"]);
    assert_eq!(parsed.drafts[0].ttl, s("30s"));
    assert_eq!(
        parsed.drafts[0].meta.get("k").map(String::as_str),
        Some("v")
    );
    assert_eq!(parsed.drafts[1].version, s("1.2.3"));

    let parsed = ok("{\"id\": \"a\", \"service\": \"web\"}\n\n   \n{\"id\": \"b\", \"service\": \"web\", \"port\": 8080}\r\n");
    assert_eq!(ids(&parsed), ["a", "b"]);
    assert_eq!(parsed.drafts[1].port, 8080);
}

#[test]
fn ndjson_bad_line_reports_its_number() {
    let text = "{\"id\": \"a\", \"service\": \"web\"}\n\n{\"id\": \"b\", \"service\": \"web\"}\n{\"id\": \"c\", \"service\": }\n";
    let e = err(text);
    assert_eq!(e.source_name, "test");
    assert!(
        matches!(
            e.location,
            Some(Location::Line {
                line: 4,
                column: Some(_)
            })
        ),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("test: line 4, column "), "{e}");

    let e = err("{\"id\": \"a\"}\nnot json\n");
    assert_eq!(
        e.location,
        Some(Location::Line {
            line: 2,
            column: None
        })
    );
}

#[test]
fn native_unknown_field_is_named() {
    let e = err("{\"id\": \"a\"}\n{\"id\": \"b\", \"colour\": \"red\"}\n");
    assert!(
        matches!(e.location, Some(Location::Line { line: 2, .. })),
        "{e:?}"
    );
    assert!(e.message.contains("unknown field `colour`"), "{e}");

    let e = err(r#"[{"id": "a"}, {"id": "b", "Colour": "red"}]"#);
    assert_eq!(e.location, Some(Location::Index(1)));
    assert!(e.message.contains("`Colour`"), "{e}");
    assert_eq!(
        e.to_string().split(": ").take(2).collect::<Vec<_>>(),
        ["test", "[1]"]
    );

    let e = err("{\n  \"id\": \"a\",\n  \"weight\": 3\n}");
    assert!(e.message.contains("`weight`"), "{e}");
    assert!(
        matches!(e.location, Some(Location::Line { line: 3, .. })),
        "{e:?}"
    );
}

#[test]
fn native_wrong_types_and_broken_json() {
    let e = err(r#"[{"id": "a", "port": "80"}]"#);
    assert_eq!(e.location, Some(Location::Index(0)));
    assert!(e.message.contains("invalid type"), "{e}");

    let e = err(r#"[1, 2]"#);
    assert_eq!(e.location, Some(Location::Index(0)));
    assert!(e.message.contains("found a number"), "{e}");

    let e = err("[\n  {\"id\": \"a\",\n  \"service\": \"web\"\n");
    assert!(e.message.starts_with("invalid JSON: "), "{e}");
    assert!(
        matches!(e.location, Some(Location::Line { line: 4, .. })),
        "{e:?}"
    );
    // Messages are lower-case and carry no trailing period.
    assert!(!e.message.ends_with('.'));
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  namespace: shop
spec:
  replicas: 3
  template:
    metadata:
      labels:
        app: shop-api
    spec:
      containers:
      - name: api
        image: registry.example.com:5000/team/api:2.4.1
        ports:
        - containerPort: 8443
        - containerPort: 9090
";

#[test]
fn replicas_three_zero_and_unset() {
    let parsed = ok(DEPLOYMENT);
    assert_eq!(ids(&parsed), ["shop:api-0", "shop:api-1", "shop:api-2"]);
    for d in &parsed.drafts {
        assert_eq!(d.service, "shop-api");
        assert_eq!(d.version, s("2.4.1"));
        assert_eq!(d.port, 8443);
        assert_eq!(d.address, "api", "no Service selects it");
        assert_eq!(meta(d, "namespace"), s("shop"));
        assert_eq!(meta(d, "workload"), s("api"));
    }
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);

    let parsed = ok(&DEPLOYMENT.replace("replicas: 3", "replicas: 0"));
    assert!(parsed.drafts.is_empty());
    assert!(
        has_warning(&parsed, "shop:api has 0 replicas"),
        "{:?}",
        parsed.warnings
    );

    let parsed = ok(&DEPLOYMENT.replace("  replicas: 3\n", ""));
    assert_eq!(ids(&parsed), ["shop:api-0"]);

    let e = err(&DEPLOYMENT.replace("replicas: 3", "replicas: three"));
    assert!(
        e.message
            .contains("spec.replicas must be a non-negative integer"),
        "{e}"
    );
    assert!(
        matches!(
            e.location,
            Some(Location::Document {
                document: 1,
                line: Some(1),
                ..
            })
        ),
        "{e:?}"
    );
    let e = err(&DEPLOYMENT.replace("replicas: 3", "replicas: -1"));
    assert!(e.message.contains("found -1"), "{e}");
}

#[test]
fn label_precedence_tags_and_fields() {
    let text = "\
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: pg
  labels:
    app: postgres-wl
    team: data
    tier: db
    environment: ignored-because-template-wins
spec:
  template:
    metadata:
      labels:
        app.kubernetes.io/name: postgres
        app: postgres-pod
        app.kubernetes.io/version: \"16.2\"
        env: Prod
        environment: Staging
        region: EU-West-1
        tier: storage
        zone: b
    spec:
      containers:
      - image: postgres:15
";
    let parsed = ok(text);
    let d = &parsed.drafts[0];
    assert_eq!(d.id, "default:pg-0");
    assert_eq!(d.service, "postgres");
    assert_eq!(d.version, s("16.2"), "the label beats the image tag");
    assert_eq!(
        d.environment,
        s("staging"),
        "`environment` first, lower-cased"
    );
    assert_eq!(d.region, s("eu-west-1"), "lower-cased like the environment");
    assert_eq!(d.port, 0, "no containerPort");
    assert_eq!(meta(d, "kind"), s("StatefulSet"));
    // Unused labels: `app` (app.kubernetes.io/name was used), `env` (environment was used);
    // the pod template wins over the workload; sorted by key.
    assert_eq!(
        d.tags,
        [
            "app=postgres-pod",
            "env=Prod",
            "team=data",
            "tier=storage",
            "zone=b"
        ]
    );
}

#[test]
fn workload_labels_are_the_fallback() {
    let text = "\
kind: Deployment
metadata:
  name: w
  labels: {app: from-workload, version: 1.0, topology.kubernetes.io/region: us-east-1}
spec:
  template:
    metadata:
      labels: {x: y}
    spec:
      containers: [{image: nginx}]
";
    let d = &ok(text).drafts[0];
    assert_eq!(d.service, "from-workload");
    assert_eq!(d.version, s("1.0"), "a YAML number keeps its text");
    assert_eq!(d.region, s("us-east-1"));
    assert_eq!(d.tags, ["x=y"]);
}

#[test]
fn image_tags() {
    assert_eq!(image_tag("redis:alpine"), Some("alpine"));
    assert_eq!(image_tag("mongo"), None);
    assert_eq!(image_tag("localhost:5000/app"), None);
    assert_eq!(image_tag("localhost:5000/app:1.2"), Some("1.2"));
    assert_eq!(
        image_tag("docker.io/istio/examples-bookinfo-details-v1:1.20.1"),
        Some("1.20.1")
    );
    assert_eq!(
        image_tag(
            "busybox@sha256:fd8d9aa63ba2f0982b5304e1ee8d3b90a210bc1ffb5314d980eb6962f1a9715d"
        ),
        None
    );
    assert_eq!(image_tag("busybox:1.38.0@sha256:fd8d9aa63ba2f0982b5304e1ee8d3b90a210bc1ffb5314d980eb6962f1a9715d"), Some("1.38.0"));
    assert_eq!(image_tag("app:"), None);
}

#[test]
fn service_address_rules() {
    let text = "\
apiVersion: v1
kind: Service
metadata: {name: other-ns, namespace: prod}
spec: {selector: {app: web}}
---
apiVersion: v1
kind: Service
metadata: {name: no-selector}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: too-narrow}
spec: {selector: {app: web, tier: front}}
---
apiVersion: v1
kind: Service
metadata: {name: web-svc}
spec: {selector: {app: web}}
---
apiVersion: v1
kind: Service
metadata: {name: web-svc-2}
spec: {selector: {app: web}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    metadata: {labels: {app: web, version: v9}}
    spec: {containers: [{image: web}]}
";
    let parsed = ok(text);
    assert_eq!(
        parsed.drafts[0].address,
        "web-svc.default.svc.cluster.local"
    );
    assert!(
        parsed.warnings.contains(&"skipped 5 Service".to_string()),
        "{:?}",
        parsed.warnings
    );
}

#[test]
fn list_items_are_workloads_too() {
    let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a, namespace: ns}
  spec: {selector: {app: a}}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: a, namespace: ns}
  spec:
    replicas: 2
    template:
      metadata: {labels: {app: a}}
      spec: {containers: [{image: a:1}]}
";
    let parsed = ok(text);
    assert_eq!(ids(&parsed), ["ns:a-0", "ns:a-1"]);
    assert_eq!(parsed.drafts[0].address, "a.ns.svc.cluster.local");

    let e = err(&text.replace("kind: Deployment", "kind: [Deployment]"));
    assert!(
        matches!(
            e.location,
            Some(Location::Document {
                document: 1,
                item: Some(1),
                ..
            })
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("document 1, line 1, items[1]: kind must be"),
        "{e}"
    );
}

#[test]
fn json_manifests() {
    let text = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "j", "labels": {"app": "json-app"}},
         "spec": {"replicas": 2, "template": {"spec": {"containers": [{"image": "j:3", "ports": [{"containerPort": 81}]}]}}}}
    ]}"#;
    let parsed = ok(text);
    assert_eq!(parsed.format, Format::Kubernetes);
    assert_eq!(ids(&parsed), ["default:j-0", "default:j-1"]);
    assert_eq!(parsed.drafts[0].service, "json-app");
    assert_eq!(parsed.drafts[0].port, 81);
    assert_eq!(parsed.drafts[0].version, s("3"));
}

#[test]
fn annotations_become_meta() {
    let long = "x".repeat(513);
    let text = format!(
        "\
kind: Deployment
metadata:
  name: a
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{long}'
    deployment.kubernetes.io/revision: \"3\"
    note: from-workload
spec:
  template:
    metadata:
      annotations:
        prometheus.io/scrape: 'true'
        note: from-template
        kind: sneaky
        exactly-512: '{}'
    spec:
      containers: [{{image: a}}]
---
kind: Deployment
metadata:
  name: b
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{long}'
",
        "y".repeat(512)
    );
    let parsed = ok(&text);
    let a = by_id(&parsed, "default:a-0");
    assert_eq!(meta(a, "prometheus.io_scrape"), s("true"));
    assert_eq!(meta(a, "deployment.kubernetes.io_revision"), s("3"));
    assert_eq!(meta(a, "note"), s("from-template"));
    assert_eq!(
        meta(a, "kind"),
        s("Deployment"),
        "the workload's kind wins over an annotation"
    );
    assert_eq!(meta(a, "exactly-512").map(|v| v.len()), Some(512));
    assert!(!a.meta.keys().any(|k| k.contains("last-applied")));
    assert!(
        has_warning(&parsed, "skipped annotation kubectl.kubernetes.io/last-applied-configuration on 2 workloads: value over 512 bytes"),
        "{:?}",
        parsed.warnings
    );
    assert!(
        has_warning(&parsed, "maps to meta key kind"),
        "{:?}",
        parsed.warnings
    );
    let b = by_id(&parsed, "default:b-0");
    assert_eq!(b.address, "b");
    assert_eq!(b.service, "b");
    assert_eq!(b.port, 0);
    assert_eq!(meta(b, "image"), None);
}

#[test]
fn unicode_values_survive() {
    let text = "\
kind: Deployment
metadata:
  name: uni
  labels:
    app: café
    équipe: 日本語チーム
  annotations:
    説明/テキスト: \"ünïcødé ✓ 🚀\"
spec:
  template:
    spec:
      containers: [{image: \"example/ñandú:v1-β\"}]
";
    let parsed = ok(text);
    let d = &parsed.drafts[0];
    assert_eq!(d.service, "café");
    assert_eq!(d.version, s("v1-β"));
    assert_eq!(d.tags, ["équipe=日本語チーム"]);
    // Every character outside [A-Za-z0-9_.-] (not every byte) becomes one `_`.
    assert_eq!(meta(d, "_______"), s("ünïcødé ✓ 🚀"), "{:?}", d.meta);

    let parsed = ok(
        r#"[{"ServiceName": "wëb", "ServiceID": "w-1", "ServiceTags": ["ключ", "标签"], "ServiceMeta": {"env": "ПРОД", "note": "😀"}}]"#,
    );
    let d = &parsed.drafts[0];
    assert_eq!(d.service, "wëb");
    assert_eq!(d.tags, ["ключ", "标签"]);
    assert_eq!(
        d.environment, None,
        "not a lower-case ASCII slug: kept in meta only, as the /v1 API does"
    );
    assert_eq!(meta(d, "env"), s("ПРОД"));
    assert_eq!(meta(d, "note"), s("😀"));

    let parsed = ok("{\"id\": \"ü-1\", \"service\": \"s\", \"meta\": {\"k\": \"värde\"}}\n{\"id\": \"ü-2\", \"service\": \"s\"}\n");
    assert_eq!(ids(&parsed), ["ü-1", "ü-2"]);
}

#[test]
fn yaml_syntax_error_has_document_and_line() {
    let text = "\
apiVersion: v1
kind: Service
metadata: {name: a}
---
# second document
apiVersion: apps/v1
kind: Deployment
metadata:
  name: b
   labels: oops
";
    let e = err(text);
    match &e.location {
        Some(Location::Document {
            document,
            line,
            column,
            item,
        }) => {
            assert_eq!(*document, 2);
            assert_eq!(*line, Some(10));
            assert!(column.is_some());
            assert_eq!(*item, None);
        }
        other => panic!("unexpected location {other:?}"),
    }
    assert!(e.message.starts_with("invalid YAML: "), "{e}");
    assert!(
        e.to_string()
            .starts_with("test: document 2, line 10, column "),
        "{e}"
    );

    let e = err("kind: Deployment\nkind: StatefulSet\n");
    assert!(e.message.contains("duplicated key"), "{e}");
    assert!(
        matches!(
            e.location,
            Some(Location::Document {
                document: 1,
                line: Some(2),
                ..
            })
        ),
        "{e:?}"
    );
}

#[test]
fn empty_and_comment_only_documents_are_fine() {
    let text = format!("# header\n---\n---\n# just a comment\n---\n{DEPLOYMENT}---\n");
    let parsed = ok(&text);
    assert_eq!(parsed.drafts.len(), 3);
    let parsed = ok("# nothing here\n---\n");
    assert!(parsed.drafts.is_empty());
    assert!(
        has_warning(&parsed, "no Deployment or StatefulSet found"),
        "{:?}",
        parsed.warnings
    );
}

#[test]
fn malformed_manifests_are_errors() {
    let e = err("---\nkind: Service\n---\n- a\n- b\n");
    assert!(
        matches!(
            e.location,
            Some(Location::Document {
                document: 2,
                line: Some(4),
                ..
            })
        ),
        "{e:?}"
    );
    assert!(e.message.contains("found a sequence"), "{e}");

    let e = err("metadata: {name: x}\n");
    assert!(e.message.contains("missing kind"), "{e}");

    let e = err("kind: Deployment\nspec: {}\n");
    assert_eq!(e.message, "missing metadata.name in a Deployment");

    let e = err("kind: Deployment\nmetadata: {name: a, labels: {app: [x]}}\n");
    assert!(
        e.message
            .contains("metadata.labels.app must be a string, found a sequence"),
        "{e}"
    );

    let e = err(&format!(
        "{DEPLOYMENT}---\n{}",
        DEPLOYMENT.replace("kind: Deployment", "kind: StatefulSet")
    ));
    assert!(e.message.contains("duplicate workload shop:api"), "{e}");
    assert!(
        matches!(e.location, Some(Location::Document { document: 2, .. })),
        "{e:?}"
    );

    let e = err(&DEPLOYMENT.replace("containerPort: 8443", "containerPort: https"));
    assert!(
        e.message
            .contains("containerPort must be an integer, found the string \"https\""),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Consul

#[test]
fn consul_duplicate_ids_get_the_node_prefix() {
    let text = r#"[
        {"Node": "n1", "ServiceID": "web-1", "ServiceName": "web"},
        {"Node": "n2", "ServiceID": "web-1", "ServiceName": "web"},
        {"Node": "n3", "ServiceName": "web"}
    ]"#;
    let parsed = ok(text);
    assert_eq!(ids(&parsed), ["web-1", "n2:web-1", "n3:web"]);
    assert!(
        has_warning(&parsed, "renamed to \"n2:web-1\""),
        "{:?}",
        parsed.warnings
    );

    let e = err(r#"[
        {"Node": "n1", "ServiceID": "web-1", "ServiceName": "web"},
        {"Node": "n1", "ServiceID": "web-1", "ServiceName": "web"},
        {"Node": "n1", "ServiceID": "web-1", "ServiceName": "web"}
    ]"#);
    assert_eq!(e.location, Some(Location::Index(2)));
    assert!(e.message.contains("duplicate id \"web-1\""), "{e}");

    let e = err(r#"[{"ServiceName": "web"}, {"ServiceName": "web"}]"#);
    assert_eq!(e.location, Some(Location::Index(1)));
    assert!(
        e.message
            .contains("duplicate id \"web\" (first used by [0])"),
        "{e}"
    );
}

#[test]
fn consul_meta_mapping() {
    let text = r#"[{"Node": {"Node": "n1", "Datacenter": "eu1", "Address": "10.0.0.9"},
        "Service": {"ID": "api-1", "Service": "api", "Tags": null, "Address": "10.1.1.1", "Port": 8080,
                    "Meta": {"env": "", "environment": "qa", "region": "eu-west-1", "version": "2.0.0", "weight": 5, "consul_node": "mine"}},
        "Checks": []}]"#;
    let d = &ok(text).drafts[0];
    assert_eq!(d.id, "api-1");
    assert_eq!(d.address, "10.1.1.1");
    assert_eq!(d.port, 8080);
    assert!(d.tags.is_empty());
    assert_eq!(
        d.environment,
        s("qa"),
        "empty env falls through to environment"
    );
    assert_eq!(d.region, s("eu-west-1"));
    assert_eq!(d.version, s("2.0.0"));
    assert_eq!(meta(d, "weight"), s("5"));
    assert_eq!(
        meta(d, "consul_node"),
        s("mine"),
        "the service's own meta wins"
    );
    assert_eq!(meta(d, "consul_datacenter"), s("eu1"));
}

#[test]
fn consul_errors_are_located() {
    let e = err(r#"[{"Node": {"Node": "n"}, "Service": {"Port": 1}}]"#);
    assert_eq!(e.location, Some(Location::Index(0)));
    assert_eq!(e.message, "missing Service.Service (the service name)");

    let e = err(r#"[{"ServiceName": "a", "ServicePort": "80"}]"#);
    assert_eq!(e.message, "ServicePort must be an integer, found a string");

    let e = err(r#"[{"ServiceName": "a", "ServicePort": 80.5}]"#);
    assert_eq!(e.message, "ServicePort must be an integer, found 80.5");

    let e = err(r#"{"x": {"Service": "a", "Tags": [1]}}"#);
    assert_eq!(e.location, Some(Location::Key("x".to_string())));
    assert_eq!(
        e.to_string(),
        "test: [\"x\"]: Tags[0] must be a string, found a number"
    );

    let e =
        err(r#"[{"Node": {"Node": "n"}, "Service": {"Service": "a", "Meta": {"k": {"a": 1}}}}]"#);
    assert_eq!(
        e.message,
        "Service.Meta.k must be a string, found an object"
    );
}

#[test]
fn consul_agent_key_stands_in_for_a_missing_id() {
    let parsed = ok(r#"{"web-7": {"Service": "web", "Port": 80, "Datacenter": "dc2"}}"#);
    let d = &parsed.drafts[0];
    assert_eq!(d.id, "web-7");
    assert_eq!(meta(d, "consul_datacenter"), s("dc2"));
}
