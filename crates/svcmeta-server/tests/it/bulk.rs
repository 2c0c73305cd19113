//! Bulk writes: `POST /api/v1/instances` with a JSON array or NDJSON, all or nothing.

use serde_json::{json, Value};

use crate::support::{instance, with, Server};

fn ndjson(records: &[Value]) -> Vec<u8> {
    let mut body = Vec::new();
    for record in records {
        body.extend_from_slice(record.to_string().as_bytes());
        body.push(b'\n');
    }
    body
}

#[test]
fn a_json_array_registers_every_record_in_one_request() {
    let server = Server::start();
    let records: Vec<Value> = (0..10)
        .map(|n| instance(&format!("web-{n}"), "web"))
        .collect();
    let commits = server.catalog().commits();
    let reply = server
        .post_bytes("/api/v1/instances", json!(records).to_string().as_bytes())
        .expect(200);
    assert_eq!(reply.json["registered"], 10);
    assert_eq!(reply.json["changed"], 10);
    assert_eq!(reply.json["revision"], 10);
    assert_eq!(reply.index, Some(10));
    assert_eq!(
        server.catalog().commits(),
        commits + 1,
        "one request, one commit"
    );
    assert_eq!(server.list_ids(&[("service", Some("web"))]).len(), 10);

    // Posting the same again changes nothing.
    let again = server
        .post_bytes("/api/v1/instances", json!(records).to_string().as_bytes())
        .expect(200);
    assert_eq!(again.json["changed"], 0);
    assert_eq!(server.catalog().revision(), 10);
}

#[test]
fn ndjson_with_blank_lines_registers_every_record() {
    let server = Server::start();
    let mut body = ndjson(&[instance("a", "web"), instance("b", "api")]);
    body.extend_from_slice(b"\n   \n");
    body.extend_from_slice(&ndjson(&[instance("c", "db")]));
    // The last line needs no newline.
    body.extend_from_slice(instance("d", "db").to_string().as_bytes());
    let reply = server.post_bytes("/api/v1/instances", &body).expect(200);
    assert_eq!(reply.json["registered"], 4);
    assert_eq!(server.list_ids(&[]), vec!["b", "c", "d", "a"]);
}

#[test]
fn one_bad_record_rejects_the_whole_request_with_every_problem_listed() {
    let server = Server::start();
    server.register(&instance("keep", "web"));
    let before = server.snapshot();
    let records = vec![
        instance("new-0", "web"),
        with(instance("new-1", "web"), "port", json!(70000)),
        with(instance("keep", "web"), "port", json!(1)),
        with(
            with(instance("", "web"), "tags", json!(["x".repeat(129)])),
            "environment",
            json!("Prod"),
        ),
        instance("new-4", "web"),
    ];
    for body in [json!(records).to_string().into_bytes(), ndjson(&records)] {
        let reply = server
            .post_bytes("/api/v1/instances", &body)
            .expect_error(400, "validation_failed");
        let details = reply.details();
        let fields: Vec<&str> = details.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            vec!["[1].port", "[3].id", "[3].tags[0]", "[3].environment"],
            "{}",
            reply.text
        );
        assert!(details[0].1.contains("70000") && details[0].1.contains("65535"));
        assert!(
            details[2].1.contains("129 bytes, limit 128"),
            "{:?}",
            details[2]
        );
        assert_eq!(server.snapshot(), before, "nothing stored");
        server
            .get("/api/v1/instances/new-0")
            .expect_error(404, "not_found");
    }
    assert_eq!(
        server.get("/api/v1/instances/keep").expect(200).json["port"],
        8080
    );
}

#[test]
fn malformed_bulk_bodies_are_400_and_change_nothing() {
    let server = Server::start();
    server.register(&instance("keep", "web"));
    let before = server.snapshot();

    let mut body = ndjson(&[instance("a", "web"), instance("b", "web")]);
    body.extend_from_slice(b"{\"id\": \"c\", \"service\": \n");
    let reply = server
        .post_bytes("/api/v1/instances", &body)
        .expect_error(400, "invalid_request");
    assert!(reply.message().contains("line 3"), "{}", reply.text);

    let reply = server
        .post_bytes("/api/v1/instances", b"[{\"id\":\"a\",\"service\":\"web\"},")
        .expect_error(400, "invalid_request");
    assert!(reply.message().starts_with("body"), "{}", reply.text);

    let reply = server
        .post_bytes("/api/v1/instances", b"  \n")
        .expect_error(400, "invalid_request");
    assert!(reply.message().contains("no instances"), "{}", reply.text);
    server
        .post_bytes("/api/v1/instances", b"[]")
        .expect_error(400, "invalid_request");

    let reply = server
        .post_bytes(
            "/api/v1/instances",
            b"[{\"id\":\"a\",\"service\":\"web\",\"colour\":\"red\"}]",
        )
        .expect_error(400, "invalid_request");
    assert!(reply.message().contains("colour"), "{}", reply.text);

    let invalid: &[u8] = b"{\"id\":\"a\",\"service\":\"web\",\"tags\":[\"ok\xff\"]}\n";
    let offset = invalid.iter().position(|b| *b == 0xff).expect("bad byte");
    let reply = server
        .post_bytes("/api/v1/instances", invalid)
        .expect_error(400, "invalid_request");
    assert!(
        reply.message().contains("UTF-8") && reply.message().contains(&format!("byte {offset}")),
        "{}",
        reply.text
    );
    assert_eq!(server.snapshot(), before);
}
