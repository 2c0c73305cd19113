//! Serialised pages kept in the query cache (issue 6): a repeated list request is answered
//! from bytes stored with its cached page, and those bytes are never served after a change
//! that could alter the answer, while the per-request revision stays current.

use serde_json::json;

use crate::support::Server;

const QUERY: &[(&str, Option<&str>)] = &[
    ("service", Some("web")),
    ("env", Some("prod")),
    ("tag", Some("blue")),
    ("limit", Some("100")),
];

fn fixture() -> Server {
    let server = Server::start();
    for (id, port) in [("w1", 80), ("w2", 81)] {
        server.register(&json!({"id": id, "service": "web", "environment": "prod",
                                "port": port, "tags": ["blue"]}));
    }
    server.register(&json!({"id": "a1", "service": "api", "environment": "prod",
                            "tags": ["blue"]}));
    server
}

/// The cache hits so far.
fn hits(server: &Server) -> u64 {
    server.catalog().cache_counts().0
}

#[test]
fn a_cached_serialised_page_is_not_served_after_a_change_to_a_matching_instance() {
    let server = fixture();
    let first = server.list(QUERY).expect(200);
    assert_eq!(first.ids(), vec!["w1", "w2"]);
    let hits_before = hits(&server);
    let again = server.list(QUERY).expect(200);
    assert_eq!(
        hits(&server),
        hits_before + 1,
        "the second read is a cache hit"
    );
    assert_eq!(again.text, first.text, "a hit serves the same bytes");

    // A matching instance changes: the stored bytes must not be served.
    server.register(&json!({"id": "w2", "service": "web", "environment": "prod",
                            "port": 9090, "tags": ["blue"], "meta": {"new": "yes"}}));
    let changed = server.list(QUERY).expect(200);
    assert_eq!(
        changed.json["instances"][1]["port"], 9090,
        "{}",
        changed.text
    );
    assert_eq!(changed.json["instances"][1]["meta"]["new"], "yes");
    let revision = server.catalog().revision();
    assert_eq!(changed.json["revision"].as_u64(), Some(revision));
    assert_eq!(changed.index, Some(revision));

    // It stops matching: gone from the page and from the total.
    server.register(&json!({"id": "w1", "service": "web", "environment": "prod",
                            "tags": ["green"]}));
    let narrowed = server.list(QUERY).expect(200);
    assert_eq!(narrowed.ids(), vec!["w2"]);
    assert_eq!(narrowed.json["total"], 1);

    // Deregistered: gone.
    server.delete("/api/v1/instances/w2").expect(200);
    let empty = server.list(QUERY).expect(200);
    assert_eq!(empty.ids(), Vec::<String>::new());
    assert_eq!(empty.json["total"], 0);
    assert_eq!(empty.json["next_cursor"], json!(null));
}

#[test]
fn a_hit_after_an_unrelated_write_carries_the_current_revision() {
    let server = fixture();
    let first = server.list(QUERY).expect(200);
    // A write to another service leaves this query's scope, so its cached page, untouched.
    server.register(&json!({"id": "a2", "service": "api", "environment": "prod"}));
    let hits_before = hits(&server);
    let later = server.list(QUERY).expect(200);
    assert_eq!(hits(&server), hits_before + 1, "still a cache hit");
    let revision = server.catalog().revision();
    assert!(revision > first.json["revision"].as_u64().unwrap_or(0));
    // The revision spliced into the stored bytes is this request's, in the body and the header.
    assert_eq!(
        later.json["revision"].as_u64(),
        Some(revision),
        "{}",
        later.text
    );
    assert_eq!(later.index, Some(revision));
    let mut expected = first.json.clone();
    expected["revision"] = json!(revision);
    assert_eq!(later.json, expected, "the rest of the body is unchanged");
    assert!(
        later
            .text
            .starts_with(&format!("{{\"revision\":{revision},\"total\":2,")),
        "field order as before: {}",
        later.text
    );
}

#[test]
fn explain_and_count_still_answer_with_their_own_shapes() {
    let server = fixture();
    let _ = server.list(QUERY).expect(200);
    let mut with_plan = QUERY.to_vec();
    with_plan.push(("explain", Some("true")));
    let explained = server.list(&with_plan).expect(200);
    assert_eq!(explained.ids(), vec!["w1", "w2"]);
    assert!(explained.json["plan"].is_array(), "{}", explained.text);
    let mut counting = QUERY.to_vec();
    counting.push(("count", Some("true")));
    let counted = server.list(&counting).expect(200);
    assert_eq!(counted.json["total"], 2);
    assert!(counted.json.get("instances").is_none());
}
