//! Single-instance writes: `PUT`, `GET` and `DELETE /api/v1/instances/{id}`, replace semantics,
//! and round-tripping of values that other registries mangle.

use serde_json::json;

use crate::support::{instance, with, Server};

#[test]
fn put_get_replace_delete_round_trip() {
    let server = Server::start();

    let created = server
        .put("/api/v1/instances/web-1", &instance("web-1", "web"))
        .expect(201);
    let body = &created.json;
    assert_eq!(body["id"], "web-1");
    assert_eq!(body["service"], "web");
    assert_eq!(body["address"], "10.0.0.1");
    assert_eq!(body["port"], 8080);
    assert_eq!(body["health"], "passing");
    assert_eq!(body["create_revision"], 1);
    assert_eq!(body["modify_revision"], 1);
    assert_eq!(
        created.index,
        Some(1),
        "the write's revision is in the header"
    );
    assert!(body["registered_at"].as_u64().is_some());
    assert_eq!(body["registered_at"], body["updated_at"]);

    let fetched = server.get("/api/v1/instances/web-1").expect(200);
    assert_eq!(fetched.json, created.json);
    assert_eq!(fetched.index, Some(1));

    // Replace: 200, every field replaced, create_revision kept.
    let replacement = json!({
        "id": "web-1",
        "service": "web",
        "address": "10.0.0.2",
        "port": 9090,
        "tags": ["blue"],
        "version": "1.2.3",
        "environment": "prod",
        "region": "eu-west-1",
        "meta": {"team": "core"},
    });
    let replaced = server
        .put("/api/v1/instances/web-1", &replacement)
        .expect(200);
    assert_eq!(replaced.json["create_revision"], 1);
    assert_eq!(replaced.json["modify_revision"], 2);
    assert_eq!(replaced.index, Some(2));
    for field in [
        "address",
        "port",
        "tags",
        "version",
        "environment",
        "region",
        "meta",
    ] {
        assert_eq!(replaced.json[field], replacement[field], "{field}");
    }

    // The same registration again changes nothing and spends no revision.
    let same = server
        .put("/api/v1/instances/web-1", &replacement)
        .expect(200);
    assert_eq!(same.json["modify_revision"], 2);
    assert_eq!(server.catalog().revision(), 2);

    // An id in the body may be left out: the path names it.
    let unnamed = json!({"service": "api", "port": 1});
    let created = server.put("/api/v1/instances/api-1", &unnamed).expect(201);
    assert_eq!(created.json["id"], "api-1");

    let deleted = server.delete("/api/v1/instances/web-1").expect(200);
    assert_eq!(deleted.json["deregistered"], "web-1");
    assert_eq!(deleted.json["revision"], 4);
    assert_eq!(deleted.index, Some(4));
    server
        .get("/api/v1/instances/web-1")
        .expect_error(404, "not_found");
    server
        .delete("/api/v1/instances/web-1")
        .expect_error(404, "not_found");
    assert_eq!(
        server.catalog().revision(),
        4,
        "a failed delete spends nothing"
    );
    // Deregistering one instance touched nothing of the other.
    let other = server.get("/api/v1/instances/api-1").expect(200);
    assert_eq!(other.json["modify_revision"], 3);
}

#[test]
fn unknown_instances_are_404_with_the_error_shape() {
    let server = Server::start();
    let reply = server
        .get("/api/v1/instances/nobody")
        .expect_error(404, "not_found");
    assert!(reply.message().contains("nobody"), "{}", reply.text);
    server
        .delete("/api/v1/instances/nobody")
        .expect_error(404, "not_found");
}

#[test]
fn a_body_id_different_from_the_path_id_is_rejected_and_changes_nothing() {
    let server = Server::start();
    server.register(&instance("a", "web"));
    let before = server.snapshot();
    let reply = server
        .put("/api/v1/instances/a", &instance("b", "web"))
        .expect_error(400, "invalid_request");
    assert!(
        reply.message().contains("\"a\"") && reply.message().contains("\"b\""),
        "{}",
        reply.text
    );
    assert_eq!(server.snapshot(), before);
    server
        .get("/api/v1/instances/b")
        .expect_error(404, "not_found");
}

#[test]
fn replace_drops_a_meta_key_from_the_record_the_index_and_the_cache() {
    let server = Server::start();
    let first = with(
        instance("a", "web"),
        "meta",
        json!({"team": "core", "legacy": "yes"}),
    );
    server.register(&first);
    server.register(&with(instance("b", "web"), "meta", json!({"team": "edge"})));
    let presence = [("meta.legacy", None)];
    let valued = [("service", Some("web")), ("meta.legacy", Some("yes"))];
    // Ask twice so both answers are cached.
    for _ in 0..2 {
        assert_eq!(server.list_ids(&presence), vec!["a"]);
        assert_eq!(server.list_ids(&valued), vec!["a"]);
    }
    let count = server
        .list(&[("meta.legacy", None), ("count", Some("true"))])
        .expect(200);
    assert_eq!(count.json["total"], 1);

    let second = with(instance("a", "web"), "meta", json!({"team": "core"}));
    let replaced = server.register(&second).expect(200);
    assert_eq!(replaced.json["meta"], json!({"team": "core"}));
    let fetched = server.get("/api/v1/instances/a").expect(200);
    assert_eq!(fetched.json["meta"], json!({"team": "core"}));
    assert!(server.list_ids(&presence).is_empty());
    assert!(server.list_ids(&valued).is_empty());
    let count = server
        .list(&[("meta.legacy", None), ("count", Some("true"))])
        .expect(200);
    assert_eq!(count.json["total"], 0);
    assert_eq!(server.list_ids(&[("meta.team", Some("core"))]), vec!["a"]);

    // Tags, version and the rest are replaced the same way.
    server.register(&with(
        with(instance("a", "web"), "tags", json!(["old"])),
        "version",
        json!("1.0.0"),
    ));
    assert_eq!(server.list_ids(&[("tag", Some("old"))]), vec!["a"]);
    server.register(&instance("a", "web"));
    assert!(server.list_ids(&[("tag", Some("old"))]).is_empty());
    assert!(server.list_ids(&[("version", Some("1.0.0"))]).is_empty());
    let fetched = server.get("/api/v1/instances/a").expect(200);
    assert_eq!(fetched.json["tags"], json!([]));
    assert!(fetched.json.get("version").is_none(), "{}", fetched.text);
}

#[test]
fn unicode_and_punctuation_in_tags_and_meta_round_trip() {
    let server = Server::start();
    let tags = json!(["ünïcödé", "日本語", "emoji 🚀", "a,b=c:d/e.f g"]);
    let meta = json!({
        "greeting": "こんにちは, мир",
        "url": "https://example.com/a?b=c&d=e",
        "empty": "",
        "tabbed": "a\tb",
        "user.name": "Zoë",
    });
    let body = with(
        with(instance("u-1", "web"), "tags", tags.clone()),
        "meta",
        meta.clone(),
    );
    let created = server.register(&body).expect(201);
    assert_eq!(created.json["tags"], tags);
    assert_eq!(created.json["meta"], meta);
    let fetched = server.get("/api/v1/instances/u-1").expect(200);
    assert_eq!(fetched.json["tags"], tags);
    assert_eq!(fetched.json["meta"], meta);

    // Each value is found whole, and never split at `,` `=` `:` `/` or spaces.
    for tag in ["ünïcödé", "日本語", "emoji 🚀", "a,b=c:d/e.f g"] {
        assert_eq!(server.list_ids(&[("tag", Some(tag))]), vec!["u-1"], "{tag}");
    }
    for fragment in ["a", "b=c", "emoji", "日本"] {
        assert!(
            server.list_ids(&[("tag", Some(fragment))]).is_empty(),
            "{fragment}"
        );
    }
    assert_eq!(
        server.list_ids(&[("meta.greeting", Some("こんにちは, мир"))]),
        vec!["u-1"]
    );
    assert_eq!(
        server.list_ids(&[("meta.url", Some("https://example.com/a?b=c&d=e"))]),
        vec!["u-1"]
    );
    assert_eq!(server.list_ids(&[("meta.empty", Some(""))]), vec!["u-1"]);
    assert_eq!(
        server.list_ids(&[("meta.user.name", Some("Zoë"))]),
        vec!["u-1"]
    );
    assert!(server
        .list_ids(&[("meta.user.name", Some("Zoe"))])
        .is_empty());
}

#[test]
fn duplicate_tags_are_removed_in_order() {
    let server = Server::start();
    let body = with(
        instance("d", "web"),
        "tags",
        json!(["b", "a", "b", "c", "a"]),
    );
    let created = server.register(&body).expect(201);
    assert_eq!(created.json["tags"], json!(["b", "a", "c"]));
}
