//! Input validation and limits over HTTP: every rejected input is a 400 (or 413) naming the
//! field and the limit, in the error shape of DESIGN §4, and leaves the stored state unchanged.

use serde_json::{json, Value};
use svcmeta_server::{CatalogSettings, ServerSettings};

use crate::support::{instance, query_string, with, Reply, Server};

/// A server with a few instances, among them `a`, which the rejected writes try to replace.
fn populated() -> Server {
    let server = Server::start();
    server.register(&with(
        with(instance("a", "web"), "tags", json!(["blue"])),
        "meta",
        json!({"team": "core"}),
    ));
    server.register(&instance("b", "api"));
    server
}

/// One rejected write: what is sent, and the `(field, message part)` details expected.
struct Case {
    name: &'static str,
    path: String,
    body: Vec<u8>,
    bulk: bool,
    expected: Vec<(&'static str, &'static str)>,
}

fn put(
    name: &'static str,
    id: &str,
    body: Value,
    expected: Vec<(&'static str, &'static str)>,
) -> Case {
    Case {
        name,
        path: format!("/api/v1/instances/{id}"),
        body: body.to_string().into_bytes(),
        bulk: false,
        expected,
    }
}

fn post(name: &'static str, records: Value, expected: Vec<(&'static str, &'static str)>) -> Case {
    Case {
        name,
        path: "/api/v1/instances".to_string(),
        body: records.to_string().into_bytes(),
        bulk: true,
        expected,
    }
}

#[test]
fn each_violation_is_a_400_naming_the_field_and_the_limit_and_changes_nothing() {
    let server = populated();
    let before = server.snapshot();
    let tags_65: Vec<String> = (0..65).map(|n| format!("t{n}")).collect();
    let meta_65: serde_json::Map<String, Value> =
        (0..65).map(|n| (format!("k{n}"), json!("v"))).collect();
    let cases = vec![
        post(
            "empty id",
            json!([{"id": "", "service": "web"}]),
            vec![("[0].id", "required, must be 1 to 128 bytes")],
        ),
        put(
            "empty service",
            "a",
            json!({"id": "a", "service": ""}),
            vec![("service", "required, must be 1 to 128 bytes")],
        ),
        put(
            "bad id characters",
            "bad%20id",
            json!({"service": "web"}),
            vec![(
                "id",
                "character ' ' at byte 3 is not allowed, use [A-Za-z0-9._:-]",
            )],
        ),
        post(
            "bad id characters in bulk",
            json!([{"id": "a/b", "service": "web"}]),
            vec![("[0].id", "character '/' at byte 1 is not allowed")],
        ),
        put(
            "bad service characters",
            "a",
            with(instance("a", "we:b"), "port", json!(1)),
            vec![(
                "service",
                "character ':' at byte 2 is not allowed, use [A-Za-z0-9._-]",
            )],
        ),
        post(
            "129-byte id",
            json!([{"id": "i".repeat(129), "service": "web"}]),
            vec![("[0].id", "129 bytes, limit 128")],
        ),
        put(
            "65 tags",
            "a",
            with(instance("a", "web"), "tags", json!(tags_65)),
            vec![("tags", "65 distinct tags, limit 64")],
        ),
        put(
            "a 129-byte tag",
            "a",
            with(instance("a", "web"), "tags", json!(["ok", "x".repeat(129)])),
            vec![("tags[1]", "129 bytes, limit 128")],
        ),
        put(
            "a 129-byte tag counted in UTF-8 bytes",
            "a",
            // 43 three-byte characters: 43 characters, 129 bytes.
            with(instance("a", "web"), "tags", json!(["語".repeat(43)])),
            vec![("tags[0]", "129 bytes, limit 128")],
        ),
        put(
            "an empty tag",
            "a",
            with(instance("a", "web"), "tags", json!([""])),
            vec![("tags[0]", "empty, must be 1 to 128 bytes")],
        ),
        put(
            "a control character in a tag",
            "a",
            with(instance("a", "web"), "tags", json!(["ok", "bell\u{7}"])),
            vec![(
                "tags[1]",
                "control character U+0007 at byte 4 is not allowed",
            )],
        ),
        put(
            "a control character in a meta value",
            "a",
            with(instance("a", "web"), "meta", json!({"k": "line\nbreak"})),
            vec![(
                "meta.k",
                "control character U+000A at byte 4 is not allowed in a value",
            )],
        ),
        put(
            "a 600-byte meta value",
            "a",
            with(
                instance("a", "web"),
                "meta",
                json!({"note": "v".repeat(600)}),
            ),
            vec![("meta.note", "value is 600 bytes, limit 512")],
        ),
        put(
            "65 meta keys",
            "a",
            with(instance("a", "web"), "meta", Value::Object(meta_65)),
            vec![("meta", "65 keys, limit 64")],
        ),
        put(
            "a bad meta key",
            "a",
            with(instance("a", "web"), "meta", json!({"bad key": "v"})),
            vec![(
                "meta.bad key",
                "character ' ' at byte 3 is not allowed in a key",
            )],
        ),
        put(
            "port 70000",
            "a",
            with(instance("a", "web"), "port", json!(70000)),
            vec![("port", "70000 is out of range 0 to 65535")],
        ),
        put(
            "a negative port",
            "a",
            with(instance("a", "web"), "port", json!(-1)),
            vec![("port", "-1 is out of range 0 to 65535")],
        ),
        put(
            "an upper-case environment",
            "a",
            with(instance("a", "web"), "environment", json!("Prod")),
            vec![(
                "environment",
                "must start with a lower-case letter or digit",
            )],
        ),
        put(
            "a region with a space",
            "a",
            with(instance("a", "web"), "region", json!("eu west")),
            vec![("region", "character ' ' at byte 2 is not allowed")],
        ),
        put(
            "a bad ttl",
            "a",
            with(instance("a", "web"), "ttl", json!("5 parsecs")),
            vec![("ttl", "")],
        ),
        put(
            "several problems at once",
            "a",
            json!({"id": "a", "service": "web", "port": 70000,
                   "tags": ["x".repeat(129)], "environment": "PROD"}),
            vec![
                ("port", "70000 is out of range"),
                ("tags[0]", "129 bytes, limit 128"),
                ("environment", "lower-case"),
            ],
        ),
    ];
    for case in cases {
        let reply = if case.bulk {
            server.post_bytes(&case.path, &case.body)
        } else {
            server.put_bytes(&case.path, &case.body)
        };
        let reply = reply.expect_error(400, "validation_failed");
        let details = reply.details();
        assert_eq!(
            details.len(),
            case.expected.len(),
            "{}: {}",
            case.name,
            reply.text
        );
        for ((field, message), (want_field, want_message)) in details.iter().zip(&case.expected) {
            assert_eq!(field, want_field, "{}: {}", case.name, reply.text);
            assert!(
                message.contains(want_message),
                "{}: {message:?} lacks {want_message:?}",
                case.name
            );
            // The message repeats every detail, so a human reading it sees the same.
            assert!(reply.message().contains(field.as_str()), "{}", case.name);
        }
        assert_eq!(server.snapshot(), before, "{}: state changed", case.name);
    }
}

/// Bodies that do not even parse as a registration: 400 with the reason and the position.
#[test]
fn unparseable_bodies_are_400_and_change_nothing() {
    let server = populated();
    let before = server.snapshot();
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "duplicated meta key",
            br#"{"id":"a","service":"web","meta":{"k":"1","k":"2"}}"#.to_vec(),
            vec![r#"meta key "k" is given twice"#],
        ),
        (
            "unknown field",
            br#"{"id":"a","service":"web","colour":"red"}"#.to_vec(),
            vec!["unknown field", "colour"],
        ),
        (
            "string port",
            br#"{"id":"a","service":"web","port":"80"}"#.to_vec(),
            vec!["invalid type", "80", "column"],
        ),
        (
            "fractional port",
            br#"{"id":"a","service":"web","port":80.5}"#.to_vec(),
            vec!["invalid type", "80.5"],
        ),
        (
            "tags not a list",
            br#"{"id":"a","service":"web","tags":"a,b"}"#.to_vec(),
            vec!["invalid type", "a,b"],
        ),
        (
            "a number among tags",
            br#"{"id":"a","service":"web","tags":["a",5]}"#.to_vec(),
            vec!["invalid type", "5"],
        ),
        (
            "a number as meta value",
            br#"{"id":"a","service":"web","meta":{"k":1}}"#.to_vec(),
            vec!["invalid type"],
        ),
        (
            "meta as a list",
            br#"{"id":"a","service":"web","meta":["k"]}"#.to_vec(),
            vec!["invalid type"],
        ),
        (
            "an array instead of an object",
            br#"[{"id":"a","service":"web"}]"#.to_vec(),
            vec!["expected one instance as a JSON object"],
        ),
        (
            "invalid UTF-8 bytes",
            b"{\"id\":\"a\",\"service\":\"web\",\"tags\":[\"ok\xff\xfe\"]}".to_vec(),
            vec!["unicode", "column"],
        ),
        (
            "truncated JSON",
            br#"{"id":"a","service":"#.to_vec(),
            vec!["EOF"],
        ),
        (
            "empty body",
            Vec::new(),
            vec!["expected one instance as a JSON object"],
        ),
    ];
    for (name, body, wanted) in cases {
        let reply = server
            .put_bytes("/api/v1/instances/a", &body)
            .expect_error(400, "invalid_request");
        for part in wanted {
            assert!(
                reply.message().contains(part),
                "{name}: {:?} lacks {part:?}",
                reply.message()
            );
        }
        assert_eq!(server.snapshot(), before, "{name}: state changed");
    }
    // The old instance is untouched by every rejected replacement.
    let a = server.get("/api/v1/instances/a").expect(200);
    assert_eq!(a.json["tags"], json!(["blue"]));
    assert_eq!(a.json["meta"], json!({"team": "core"}));
    assert_eq!(a.json["modify_revision"], 1);
}

#[test]
fn limits_count_after_de_duplication() {
    let server = populated();
    let mut tags: Vec<String> = (0..64).map(|n| format!("t{n}")).collect();
    tags.push("t0".to_string());
    let reply = server
        .register(&with(instance("a", "web"), "tags", json!(tags)))
        .expect(200);
    assert_eq!(reply.json["tags"].as_array().map(Vec::len), Some(64));
    // Exactly at the limits is fine.
    let body = with(
        with(instance("c", "web"), "tags", json!(["x".repeat(128)])),
        "meta",
        json!({"note": "v".repeat(512)}),
    );
    server.register(&body).expect(201);
}

#[test]
fn an_oversized_body_is_413_and_changes_nothing() {
    let server = Server::with(
        CatalogSettings::standard(),
        ServerSettings {
            max_body_bytes: 1024,
            ..ServerSettings::standard()
        },
    );
    server.register(&instance("a", "web"));
    let before = server.snapshot();
    let big = with(
        instance("a", "web"),
        "meta",
        json!({"note": "v".repeat(2000)}),
    );
    let reply = server
        .put("/api/v1/instances/a", &big)
        .expect_error(413, "payload_too_large");
    assert!(reply.message().contains("max_body_bytes"), "{}", reply.text);
    let records: Vec<Value> = (0..40)
        .map(|n| instance(&format!("bulk-{n}"), "web"))
        .collect();
    server
        .post_bytes("/api/v1/instances", json!(records).to_string().as_bytes())
        .expect_error(413, "payload_too_large");
    assert_eq!(server.snapshot(), before);
    // Just under the limit is accepted.
    let small = with(
        instance("a", "web"),
        "meta",
        json!({"note": "v".repeat(500)}),
    );
    assert!(small.to_string().len() < 1024);
    server.register(&small).expect(200);
}

#[test]
fn bad_query_parameters_are_400() {
    let server = populated();
    type Pairs = Vec<(&'static str, Option<&'static str>)>;
    let cases: Vec<(Pairs, Vec<&str>)> = vec![
        (vec![("limit", Some("0"))], vec!["limit", "1 to 1000"]),
        (vec![("limit", Some("1001"))], vec!["limit", "1001", "1000"]),
        (vec![("limit", Some("-1"))], vec!["limit"]),
        (vec![("limit", Some("ten"))], vec!["limit", "ten"]),
        (
            vec![("colour", Some("red"))],
            vec!["unknown query parameter", "colour"],
        ),
        (vec![("meta.", Some("x"))], vec!["unknown query parameter"]),
        (vec![("version", Some(">=x"))], vec!["version", ">=x"]),
        (vec![("version", Some(">=1, <"))], vec!["version"]),
        (vec![("version", Some(""))], vec!["version"]),
        (
            vec![("version", Some("1")), ("version", Some("2"))],
            vec!["version", "more than once"],
        ),
        (
            vec![("service", Some("a")), ("service", Some("b"))],
            vec!["service", "more than once"],
        ),
        (vec![("service", Some(""))], vec!["service", "empty"]),
        (vec![("tag", Some(""))], vec!["tag", "empty"]),
        (
            vec![("health", Some("ok"))],
            vec!["health", "passing, warning, critical"],
        ),
        (vec![("cursor", Some("zz"))], vec!["cursor"]),
        (vec![("cursor", Some("abc"))], vec!["cursor"]),
        (vec![("explain", Some("perhaps"))], vec!["explain"]),
    ];
    for (pairs, wanted) in cases {
        let reply = server.list(&pairs).expect_error(400, "invalid_request");
        for part in wanted {
            assert!(
                reply.message().contains(part),
                "{pairs:?}: {:?} lacks {part:?}",
                reply.message()
            );
        }
    }
}

#[test]
fn unknown_paths_are_404_json() {
    let server = populated();
    for path in [
        "/nope",
        "/api/v2/instances",
        "/api/v1/instance",
        "/api/v1/instances/a/b/c",
    ] {
        let reply: Reply = server.get(path).expect_error(404, "not_found");
        assert!(
            reply.message().contains("no such endpoint"),
            "{path}: {}",
            reply.text
        );
    }
    // A list query string on an unknown path does not matter.
    let path = format!(
        "/api/v1/nothing{}",
        query_string(&[("service", Some("web"))])
    );
    server.get(&path).expect_error(404, "not_found");
}

#[test]
fn a_wrong_method_is_a_json_error() {
    let server = populated();
    let reply = server.post_bytes("/api/v1/instances/a", b"{}");
    assert_eq!(reply.status, 405);
    assert!(
        reply.json["error"]["code"].is_string(),
        "body: {:?}",
        reply.text
    );
}
