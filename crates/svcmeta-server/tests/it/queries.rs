//! Queries over HTTP: every criterion of `GET /api/v1/instances`, paging with limit + cursor,
//! `count`, `explain`, and the `X-Svcmeta-Index` header.

use serde_json::{json, Value};
use svcmeta_core::{Health, Mutation};

use crate::support::{instance, Server};

/// Six instances over three services (`web` spelt three ways), ordered api < db < web.
fn fixture() -> Server {
    let server = Server::start();
    let records: Vec<Value> = vec![
        json!({"id": "q1", "service": "web", "environment": "prod", "region": "eu-west-1",
               "version": "1.2.0", "tags": ["a", "b", "x,y=z"],
               "meta": {"team": "core", "user.name": "alice", "user": "bob"}}),
        json!({"id": "q2", "service": "Web", "environment": "prod", "region": "us-east-1",
               "version": "1.4.5", "tags": ["a"], "meta": {"team": "edge"}}),
        json!({"id": "q3", "service": "WEB", "environment": "staging", "region": "eu-west-1",
               "version": "2.0.0", "tags": ["b", "canary"], "meta": {"team": "core", "empty": ""}}),
        json!({"id": "q4", "service": "api", "environment": "prod", "region": "eu-west-1",
               "version": "2.3.1", "tags": ["a", "b", "canary"], "meta": {"user.name": "carol"}}),
        json!({"id": "q5", "service": "api", "environment": "dev", "version": "v3"}),
        json!({"id": "q6", "service": "db", "version": "alpine", "tags": ["A"],
               "meta": {"team": "Core"}}),
    ];
    for record in &records {
        server.register(record);
    }
    server
}

type Pairs<'a> = Vec<(&'a str, Option<&'a str>)>;

#[test]
fn every_criterion_selects_what_it_says() {
    let server = fixture();
    let cases: Vec<(Pairs, Vec<&str>)> = vec![
        (vec![], vec!["q4", "q5", "q6", "q1", "q2", "q3"]),
        // Service names are case-insensitive.
        (vec![("service", Some("web"))], vec!["q1", "q2", "q3"]),
        (vec![("service", Some("WEB"))], vec!["q1", "q2", "q3"]),
        (vec![("service", Some("Api"))], vec!["q4", "q5"]),
        (vec![("service", Some("nothing"))], vec![]),
        (vec![("env", Some("prod"))], vec!["q4", "q1", "q2"]),
        (vec![("environment", Some("staging"))], vec!["q3"]),
        (vec![("env", Some("Prod"))], vec![]),
        (vec![("region", Some("eu-west-1"))], vec!["q4", "q1", "q3"]),
        (
            vec![("env", Some("prod")), ("region", Some("eu-west-1"))],
            vec!["q4", "q1"],
        ),
        // Tags: repeated = AND, whole-element and case-sensitive.
        (vec![("tag", Some("a"))], vec!["q4", "q1", "q2"]),
        (
            vec![("tag", Some("a")), ("tag", Some("b"))],
            vec!["q4", "q1"],
        ),
        (
            vec![
                ("tag", Some("a")),
                ("tag", Some("b")),
                ("tag", Some("canary")),
            ],
            vec!["q4"],
        ),
        (vec![("tag", Some("A"))], vec!["q6"]),
        (vec![("tag", Some("x,y=z"))], vec!["q1"]),
        (vec![("tag", Some("x"))], vec![]),
        (
            vec![("tag_any", Some("canary")), ("tag_any", Some("A"))],
            vec!["q4", "q6", "q3"],
        ),
        (vec![("tag_not", Some("a"))], vec!["q5", "q6", "q3"]),
        (
            vec![("tag", Some("b")), ("tag_not", Some("canary"))],
            vec!["q1"],
        ),
        (
            vec![("tag_not", Some("a")), ("tag_not", Some("b"))],
            vec!["q5", "q6"],
        ),
        // Versions: ranges compare as semver, exact values as given or as semver.
        (vec![("version", Some(">=2.3"))], vec!["q4", "q5"]),
        (vec![("version", Some("^2"))], vec!["q4", "q3"]),
        (vec![("version", Some("~1.4"))], vec!["q2"]),
        (vec![("version", Some(">=1.0, <2.0"))], vec!["q1", "q2"]),
        (vec![("version", Some(">=v2.3"))], vec!["q4", "q5"]),
        (vec![("version", Some("alpine"))], vec!["q6"]),
        (vec![("version", Some("v3"))], vec!["q5"]),
        (vec![("version", Some("3"))], vec!["q5"]),
        (vec![("version", Some("1.2"))], vec!["q1"]),
        // Meta: exact, case-sensitive values; presence; dotted keys.
        (vec![("meta.team", Some("core"))], vec!["q1", "q3"]),
        (vec![("meta.team", Some("Core"))], vec!["q6"]),
        (vec![("meta.team", None)], vec!["q6", "q1", "q2", "q3"]),
        (vec![("meta.user.name", Some("alice"))], vec!["q1"]),
        (vec![("meta.user.name", None)], vec!["q4", "q1"]),
        (vec![("meta.user", Some("bob"))], vec!["q1"]),
        (vec![("meta.user", Some("alice"))], vec![]),
        (vec![("meta.empty", Some(""))], vec!["q3"]),
        (vec![("meta.empty", None)], vec!["q3"]),
        (vec![("meta.missing", None)], vec![]),
        (
            vec![("meta.team", Some("core")), ("meta.empty", None)],
            vec!["q3"],
        ),
        (
            vec![("health", Some("passing"))],
            vec!["q4", "q5", "q6", "q1", "q2", "q3"],
        ),
        (vec![("health", Some("critical"))], vec![]),
        // `filter=` (empty) means no filter.
        (
            vec![("filter", Some(""))],
            vec!["q4", "q5", "q6", "q1", "q2", "q3"],
        ),
        // Everything at once.
        (
            vec![
                ("service", Some("wEb")),
                ("env", Some("prod")),
                ("region", Some("eu-west-1")),
                ("tag", Some("a")),
                ("tag_any", Some("b")),
                ("tag_not", Some("canary")),
                ("version", Some("^1")),
                ("meta.team", Some("core")),
                ("meta.user.name", None),
                ("health", Some("passing")),
            ],
            vec!["q1"],
        ),
    ];
    for (pairs, expected) in cases {
        assert_eq!(server.list_ids(&pairs), expected, "{pairs:?}");
        // The count agrees with the list.
        let mut counted = pairs.clone();
        counted.push(("count", Some("true")));
        let count = server.list(&counted).expect(200);
        assert_eq!(
            count.json["total"].as_u64(),
            Some(expected.len() as u64),
            "count of {pairs:?}"
        );
    }
}

#[test]
fn health_criteria_follow_health_changes() {
    let server = fixture();
    let catalog = server.catalog();
    for (id, health) in [("q2", Health::Critical), ("q5", Health::Warning)] {
        catalog
            .write_blocking(vec![Mutation::SetHealth {
                id: id.to_string(),
                health,
            }])
            .expect("set health");
    }
    assert_eq!(server.list_ids(&[("health", Some("critical"))]), vec!["q2"]);
    assert_eq!(server.list_ids(&[("health", Some("warning"))]), vec!["q5"]);
    // passing means passing only.
    assert_eq!(
        server.list_ids(&[("health", Some("passing"))]),
        vec!["q4", "q6", "q1", "q3"]
    );
    assert_eq!(
        server.list_ids(&[("service", Some("web")), ("health", Some("passing"))]),
        vec!["q1", "q3"]
    );
    let fetched = server.get("/api/v1/instances/q2").expect(200);
    assert_eq!(fetched.json["health"], "critical");
    // Re-registering makes it passing again.
    server.register(&fetched.json.as_object().map_or(json!({}), |o| {
        let mut body = serde_json::Map::new();
        for key in [
            "id",
            "service",
            "address",
            "port",
            "tags",
            "version",
            "environment",
            "region",
            "meta",
        ] {
            if let Some(value) = o.get(key) {
                body.insert(key.to_string(), value.clone());
            }
        }
        Value::Object(body)
    }));
    assert!(server.list_ids(&[("health", Some("critical"))]).is_empty());
}

#[test]
fn paging_with_limit_and_cursor_returns_everything_once_in_order() {
    let server = Server::start();
    let records: Vec<Value> = (0..53)
        .map(|n| {
            let service = ["alpha", "Beta", "gamma", "beta", "delta"][n % 5];
            let mut record = instance(&format!("i-{n:03}"), service);
            record["tags"] = json!([if n % 2 == 0 { "even" } else { "odd" }]);
            record
        })
        .collect();
    server
        .post_bytes("/api/v1/instances", json!(records).to_string().as_bytes())
        .expect(200);
    for filter in [
        vec![],
        vec![("tag", Some("even"))],
        vec![("service", Some("beta"))],
    ] {
        let all = server.list(&filter).expect(200);
        let expected = all.ids();
        let total = expected.len() as u64;
        assert!(total > 0);
        for limit in [1usize, 7, 10, 53, 1000] {
            let mut collected: Vec<String> = Vec::new();
            let mut cursor: Option<String> = None;
            let mut pages = 0;
            loop {
                let limit_text = limit.to_string();
                let mut pairs = filter.clone();
                pairs.push(("limit", Some(&limit_text)));
                if let Some(cursor) = &cursor {
                    pairs.push(("cursor", Some(cursor)));
                }
                let page = server.list(&pairs).expect(200);
                assert_eq!(page.json["total"].as_u64(), Some(total), "{filter:?}");
                assert_eq!(page.index, page.json["revision"].as_u64());
                let ids = page.ids();
                assert!(ids.len() <= limit);
                collected.extend(ids);
                pages += 1;
                assert!(pages <= 60, "paging does not end");
                match page.json["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_string()),
                    None => break,
                }
            }
            assert_eq!(collected, expected, "{filter:?} limit {limit}");
        }
    }
    // Order is (service case-insensitively, id): the Beta and beta instances interleave by id.
    let beta = server.list(&[("service", Some("BETA"))]).expect(200);
    let ids = beta.ids();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert_eq!(ids.len(), 21);
}

#[test]
fn paging_a_large_unfiltered_result_walks_services_in_order() {
    // Above a few thousand candidates an unfiltered page is found by walking services in
    // order instead of sorting everything: the order and the cursors must be the same.
    const COUNT: usize = 4_500;
    let server = Server::start();
    let services = ["zeta", "Alpha", "mid", "alpha", "Beta", "omega-9", "a.b_c"];
    let mut expected: Vec<(String, String)> = Vec::with_capacity(COUNT);
    let records: Vec<Value> = (0..COUNT)
        .map(|n| {
            let service = services[(n * 7 + n / 13) % services.len()];
            let id = format!("id-{:05}", (n * 7919) % 100_000);
            expected.push((service.to_ascii_lowercase(), id.clone()));
            instance(&id, service)
        })
        .collect();
    server
        .post_bytes("/api/v1/instances", json!(records).to_string().as_bytes())
        .expect(200);
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
    for limit in ["1000", "333"] {
        let mut collected = Vec::with_capacity(COUNT);
        let mut cursor: Option<String> = None;
        loop {
            let mut pairs = vec![("limit", Some(limit))];
            if let Some(cursor) = &cursor {
                pairs.push(("cursor", Some(cursor.as_str())));
            }
            let page = server.list(&pairs).expect(200);
            assert_eq!(page.json["total"].as_u64(), Some(COUNT as u64));
            collected.extend(page.ids());
            assert!(collected.len() <= COUNT, "paging repeats instances");
            match page.json["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
        assert_eq!(collected.len(), COUNT, "limit {limit}");
        assert!(collected == expected, "limit {limit}: order differs");
    }
}

#[test]
fn the_default_page_is_max_page() {
    let server = Server::with(
        svcmeta_server::CatalogSettings::standard(),
        svcmeta_server::ServerSettings {
            max_page: 4,
            ..svcmeta_server::ServerSettings::standard()
        },
    );
    let records: Vec<Value> = (0..6).map(|n| instance(&format!("i{n}"), "web")).collect();
    server
        .post_bytes("/api/v1/instances", json!(records).to_string().as_bytes())
        .expect(200);
    let page = server.list(&[]).expect(200);
    assert_eq!(page.ids(), vec!["i0", "i1", "i2", "i3"]);
    assert_eq!(page.json["total"], 6);
    assert!(page.json["next_cursor"].is_string());
    server
        .list(&[("limit", Some("5"))])
        .expect_error(400, "invalid_request");
}

#[test]
fn count_and_explain() {
    let server = fixture();
    let count = server
        .list(&[("service", Some("web")), ("count", Some("true"))])
        .expect(200);
    assert_eq!(count.json["total"], 3);
    assert_eq!(count.index, count.json["revision"].as_u64());
    assert_eq!(count.json["revision"], 6);
    assert!(count.json.get("instances").is_none(), "{}", count.text);
    // `count` alone and `count=1` also count; `count=false` lists.
    let bare = server.list(&[("count", None)]).expect(200);
    assert_eq!(bare.json["total"], 6);
    assert!(bare.json.get("instances").is_none());
    let listed = server.list(&[("count", Some("false"))]).expect(200);
    assert_eq!(listed.ids().len(), 6);
    server
        .list(&[("count", Some("maybe"))])
        .expect_error(400, "invalid_request");

    let explained = server
        .list(&[
            ("service", Some("web")),
            ("tag", Some("a")),
            ("explain", Some("true")),
        ])
        .expect(200);
    assert_eq!(explained.ids(), vec!["q1", "q2"]);
    let plan = explained.json["plan"].as_array().expect("plan").clone();
    assert!(!plan.is_empty());
    let criteria: Vec<String> = plan
        .iter()
        .map(|step| {
            assert!(
                step["postings"].is_u64() && step["remaining"].is_u64(),
                "{step}"
            );
            step["criterion"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert!(
        criteria.iter().any(|c| c.contains("service")),
        "{criteria:?}"
    );
    assert!(criteria.iter().any(|c| c.contains("tag")), "{criteria:?}");
    assert_eq!(plan.last().expect("step")["remaining"], 2);
    // Without explain there is no plan.
    let plain = server.list(&[("service", Some("web"))]).expect(200);
    assert!(plain.json.get("plan").is_none());
    // explain with count.
    let both = server
        .list(&[("tag", Some("b")), ("count", None), ("explain", None)])
        .expect(200);
    assert_eq!(both.json["total"], 3);
    assert!(both.json["plan"].is_array());
}

#[test]
fn every_read_carries_the_revision_in_its_header() {
    let server = fixture();
    server.delete("/api/v1/instances/q6").expect(200);
    let revision = server.catalog().revision();
    assert_eq!(revision, 7);
    for path in [
        "/api/v1/instances",
        "/api/v1/instances?service=web",
        "/api/v1/instances?count=true",
        "/api/v1/services",
        "/api/v1/stats",
        "/healthz",
    ] {
        let reply = server.get(path).expect(200);
        assert_eq!(reply.index, Some(revision), "{path}");
        assert_eq!(reply.json["revision"].as_u64(), Some(revision), "{path}");
    }
    let single = server.get("/api/v1/instances/q1").expect(200);
    assert_eq!(single.index, Some(revision));
    // A cached answer is stamped with the current revision, not the one it was computed at.
    server.list(&[("service", Some("api"))]).expect(200);
    server.register(&instance("z", "web"));
    let cached = server.list(&[("service", Some("api"))]).expect(200);
    assert_eq!(cached.index, Some(revision + 1));
    assert_eq!(cached.json["revision"].as_u64(), Some(revision + 1));
}

#[test]
fn filter_expressions_narrow_the_criteria_and_explain_shows_the_residual() {
    let server = fixture();
    let check = |pairs: Pairs<'_>, expected: &[&str]| {
        assert_eq!(server.list_ids(&pairs), expected, "{pairs:?}");
    };
    check(
        vec![("filter", Some(r#"Environment == "prod""#))],
        &["q4", "q1", "q2"],
    );
    // Case-sensitive inside a filter: only the instance spelled `Web`.
    check(vec![("filter", Some(r#"Service == "Web""#))], &["q2"]);
    check(
        vec![
            ("service", Some("web")),
            ("filter", Some(r#""canary" in Tags"#)),
        ],
        &["q3"],
    );
    check(
        vec![(
            "filter",
            Some(r#"Meta["user.name"] == "carol" or Meta.team == "edge""#),
        )],
        &["q4", "q2"],
    );
    check(vec![("filter", Some(r#"Meta.absent matches "x""#))], &[]);
    check(
        vec![(
            "filter",
            Some(r#"not (Tags contains "a") and Version matches "^2""#),
        )],
        &["q3"],
    );
    check(
        vec![("filter", Some("Region == `eu-west-1` and Port == 0"))],
        &["q4", "q1", "q3"],
    );

    let explained = server
        .list(&[
            (
                "filter",
                Some(r#"Environment == "prod" and Meta.team matches "^c""#),
            ),
            ("explain", Some("true")),
        ])
        .expect(200);
    let steps: Vec<String> = explained.json["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["criterion"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        steps[0], "env=prod",
        "the indexable part is answered by the index"
    );
    assert!(steps.last().unwrap().starts_with("filter "), "{steps:?}");
    assert_eq!(explained.ids(), ["q1"]);
}

#[test]
fn a_bad_filter_is_a_400_with_the_position() {
    let server = fixture();
    for (filter, fragment) in [
        ("Service ==", "1:11"),
        ("Nope == 1", "unknown selector"),
        ("Port == \"80a\"", "Port"),
        ("Tags == \"a\"", "Tags"),
        ("Meta.team matches \"(\"", "regular expression"),
    ] {
        let reply = server
            .list(&[("filter", Some(filter))])
            .expect_error(400, "invalid_request");
        assert!(
            reply
                .message()
                .to_lowercase()
                .contains(&fragment.to_lowercase()),
            "{filter}: {}",
            reply.message()
        );
    }
    let deep = "(".repeat(10_000);
    server
        .list(&[("filter", Some(deep.as_str()))])
        .expect_error(400, "invalid_request");
}
