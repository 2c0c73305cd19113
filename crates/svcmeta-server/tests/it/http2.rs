//! HTTP/2 over cleartext with prior knowledge (h2c), on the same port as HTTP/1.1: an h2
//! client reads and writes through the JSON API, many blocking queries multiplexed on one
//! connection wake on a write, a parked stream answers when the server shuts down, and
//! HTTP/1.1 clients keep working beside it.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use crate::support::{instance, Server};

/// Bound on how long a test waits for something that must happen; never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(20);

/// More streams than hyper's default limit of 200 per connection.
const MULTIPLEXED: usize = 300;

/// One answer read over HTTP/2.
struct Answer {
    status: u16,
    index: Option<u64>,
    json: Value,
}

/// Opens an HTTP/2 prior-knowledge connection to `server`; the connection runs on the
/// caller's runtime until the server closes it.
async fn connect(server: &Server) -> SendRequest<Full<Bytes>> {
    let address = server.base().trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect to the server");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}

/// Sends one request on an HTTP/2 connection and reads the whole answer.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Answer {
    sender.ready().await.expect("connection ready");
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request");
    let response = sender.send_request(request).await.expect("HTTP/2 answer");
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    let status = response.status().as_u16();
    let index = response
        .headers()
        .get("x-svcmeta-index")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.parse::<u64>().expect("numeric index"));
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("read the body")
        .to_bytes();
    Answer {
        status,
        index,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// The client's runtime: one worker of its own, so that its connections keep being driven
/// while the test thread blocks (an HTTP/2 graceful shutdown needs the client to answer a
/// ping after the GOAWAY).
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime")
}

/// Waits until the server holds `count` more revision watchers than `before`.
async fn parked(server: &Server, before: usize, count: usize) {
    tokio::time::timeout(PATIENCE, async {
        while server.catalog().watchers() < before + count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("every blocking query parked");
}

#[test]
fn an_http2_client_uses_the_json_api_beside_http1_on_the_same_port() {
    let server = Server::start();
    let first = server.register(&instance("w1", "web")).index.unwrap();
    client_runtime().block_on(async {
        let mut h2 = connect(&server).await;
        let listed = send(&mut h2, "GET", "/api/v1/instances?service=web", b"").await;
        assert_eq!(listed.status, 200);
        assert_eq!(listed.index, Some(first));
        assert_eq!(listed.json["total"].as_u64(), Some(1));
        assert_eq!(listed.json["instances"][0]["id"], "w1");
        let body = instance("w2", "web").to_string();
        let created = send(&mut h2, "PUT", "/api/v1/instances/w2", body.as_bytes()).await;
        assert_eq!(created.status, 201);
        let missing = send(&mut h2, "GET", "/api/v1/instances/nope", b"").await;
        assert_eq!(missing.status, 404);
        assert_eq!(missing.json["error"]["code"], "not_found");
    });
    // The HTTP/1.1 client sees the write made over HTTP/2, on the same port.
    assert_eq!(
        server.list_ids(&[("service", Some("web"))]),
        vec!["w1".to_string(), "w2".to_string()]
    );
}

#[test]
fn blocking_queries_multiplexed_on_one_http2_connection_wake_on_a_write() {
    let server = Server::start();
    let revision = server.register(&instance("w1", "web")).index.unwrap();
    let runtime = client_runtime();
    let h2 = runtime.block_on(connect(&server));
    let before = server.catalog().watchers();
    let path = format!("/api/v1/instances?service=web&index={revision}&wait=60s");
    let answers: Vec<_> = (0..MULTIPLEXED)
        .map(|_| {
            let mut h2 = h2.clone();
            let path = path.clone();
            runtime.spawn(async move { send(&mut h2, "GET", &path, b"").await })
        })
        .collect();
    runtime.block_on(parked(&server, before, MULTIPLEXED));
    // HTTP/1.1 writes beside the parked HTTP/2 streams: one unrelated, then one relevant.
    server.register(&instance("o1", "other"));
    let relevant = server.register(&instance("w2", "web")).index.unwrap();
    runtime.block_on(async {
        for answer in answers {
            let answer = tokio::time::timeout(PATIENCE, answer)
                .await
                .expect("woke on the write")
                .expect("client task");
            assert_eq!(answer.status, 200);
            assert_eq!(answer.index, Some(relevant));
            assert_eq!(answer.json["revision"].as_u64(), Some(relevant));
            assert_eq!(answer.json["total"].as_u64(), Some(2));
        }
    });
}

#[test]
fn a_parked_http2_stream_answers_when_the_server_shuts_down() {
    let server = Server::start();
    let revision = server.register(&instance("w1", "web")).index.unwrap();
    let runtime = client_runtime();
    let mut h2 = runtime.block_on(connect(&server));
    let before = server.catalog().watchers();
    let path = format!("/api/v1/instances?service=web&index={revision}&wait=10m");
    let answer = runtime.spawn(async move { send(&mut h2, "GET", &path, b"").await });
    runtime.block_on(parked(&server, before, 1));
    // Dropping the server shuts it down and waits (at most 10 s) for it to finish: the
    // parked stream must answer rather than hold the drain.
    drop(server);
    let answer = runtime
        .block_on(async { tokio::time::timeout(PATIENCE, answer).await })
        .expect("answered on shutdown")
        .expect("client task");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json["total"].as_u64(), Some(1));
}
