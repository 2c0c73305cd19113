//! Concurrent clients: writers racing on one id converge to exactly one instance, the last
//! acknowledged write, and readers never see a torn state.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{instance, with, Server};

#[test]
fn two_clients_writing_the_same_id_converge_to_one_instance() {
    const PER_CLIENT: i64 = 30;
    let server = Server::start();
    let barrier = Barrier::new(2);
    let mut written: Vec<(u64, i64)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..2i64)
            .map(|client| {
                let server = &server;
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    (0..PER_CLIENT)
                        .map(|n| {
                            let port = 1000 + client * 100 + n;
                            // Alternate the service spelling and tags too.
                            let service = if client == 0 { "web" } else { "Web" };
                            let body = with(
                                with(instance("same", service), "port", json!(port)),
                                "tags",
                                json!([format!("client-{client}")]),
                            );
                            let reply = server.register(&body);
                            let revision = reply.index.expect("index header");
                            assert_eq!(reply.json["modify_revision"].as_u64(), Some(revision));
                            assert_eq!(reply.json["port"], port);
                            (revision, port)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().expect("client"))
            .collect()
    });
    written.sort();
    let revisions: Vec<u64> = written.iter().map(|(r, _)| *r).collect();
    assert_eq!(revisions, (1..=2 * PER_CLIENT as u64).collect::<Vec<u64>>());
    let (last_revision, last_port) = *written.last().expect("writes");

    let fetched = server.get("/api/v1/instances/same").expect(200);
    assert_eq!(fetched.json["port"], last_port);
    assert_eq!(fetched.json["modify_revision"], last_revision);
    assert_eq!(fetched.json["create_revision"], 1);
    assert_eq!(server.list_ids(&[]), vec!["same"]);
    assert_eq!(server.list_ids(&[("service", Some("WEB"))]), vec!["same"]);
    let services = server.get("/api/v1/services").expect(200);
    assert_eq!(services.json["services"].as_array().map(Vec::len), Some(1));
    assert_eq!(services.json["services"][0]["instances"], 1);
    let client = if last_port >= 1100 { 1 } else { 0 };
    assert_eq!(
        server.list_ids(&[("tag", Some(&format!("client-{client}")))]),
        vec!["same"]
    );
    assert!(server
        .list_ids(&[("tag", Some(&format!("client-{}", 1 - client)))])
        .is_empty());
}

#[test]
fn readers_racing_a_bulk_writer_see_all_of_a_request_or_none_of_it() {
    const ROUNDS: usize = 20;
    const BATCH: usize = 10;
    let server = Server::start();
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for round in 0..ROUNDS {
                let records: Vec<_> = (0..BATCH)
                    .map(|n| instance(&format!("r{round:02}-{n}"), &format!("round{round:02}")))
                    .collect();
                server
                    .post_bytes("/api/v1/instances", json!(records).to_string().as_bytes())
                    .expect(200);
            }
        });
        let reader = scope.spawn(|| {
            let mut checks = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                assert!(Instant::now() < deadline, "the writer never finished");
                let reply = server.list(&[("count", Some("true"))]).expect(200);
                let total = reply.json["total"].as_u64().expect("total");
                let revision = reply.json["revision"].as_u64().expect("revision");
                assert_eq!(total % BATCH as u64, 0, "a torn bulk write: {}", reply.text);
                assert_eq!(total, revision, "one revision per instance");
                checks += 1;
                if total == (ROUNDS * BATCH) as u64 {
                    break checks;
                }
            }
        });
        writer.join().expect("writer");
        assert!(reader.join().expect("reader") >= 1);
    });
}

#[test]
fn only_one_of_two_racing_creators_gets_201() {
    let server = Server::start();
    let barrier = Barrier::new(2);
    let mut doubled = Vec::new();
    for round in 0..100 {
        let id = format!("race-{round}");
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let clients: Vec<_> = (0..2)
                .map(|client| {
                    let (server, barrier, id) = (&server, &barrier, &id);
                    scope.spawn(move || {
                        barrier.wait();
                        server
                            .put(
                                &format!("/api/v1/instances/{id}"),
                                &with(instance(id, "web"), "port", json!(client)),
                            )
                            .status
                    })
                })
                .collect();
            clients
                .into_iter()
                .map(|c| c.join().expect("client"))
                .collect()
        });
        if statuses.iter().filter(|s| **s == 201).count() != 1 {
            doubled.push((id, statuses));
        }
    }
    assert!(
        doubled.is_empty(),
        "{} of 100 ids: {doubled:?}",
        doubled.len()
    );
}
