//! Test support: a real server on a free loopback port, started in-process on its own tokio
//! runtime and stopped on drop, and a small blocking HTTP client around ureq.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use svcmeta_server::{AppState, Catalog, CatalogSettings, ServerSettings};
use svcmeta_store::Store;
use tokio::sync::oneshot;

/// A running server; dropping it shuts the server down and waits for it.
pub(crate) struct Server {
    base: String,
    state: Arc<AppState>,
    agent: Option<ureq::Agent>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// One HTTP answer.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The status code.
    pub(crate) status: u16,
    /// The `X-Svcmeta-Index` header, when present.
    pub(crate) index: Option<u64>,
    /// The `Content-Type` header.
    pub(crate) content_type: String,
    /// The body as text.
    pub(crate) text: String,
    /// The body as JSON (`Null` when it is not JSON).
    pub(crate) json: Value,
}

impl Reply {
    /// Asserts the status, printing the body when it differs.
    #[track_caller]
    pub(crate) fn expect(self, status: u16) -> Reply {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts the answer is an error of our JSON shape with this status and code.
    #[track_caller]
    pub(crate) fn expect_error(self, status: u16, code: &str) -> Reply {
        let reply = self.expect(status);
        let error = &reply.json["error"];
        assert!(error.is_object(), "not an error body: {}", reply.text);
        assert_eq!(error["code"], code, "error code; body: {}", reply.text);
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error message missing: {}",
            reply.text
        );
        assert!(
            error["details"].is_array(),
            "details missing: {}",
            reply.text
        );
        assert!(
            reply.content_type.starts_with("application/json"),
            "content type {}",
            reply.content_type
        );
        reply
    }

    /// The error message.
    pub(crate) fn message(&self) -> &str {
        self.json["error"]["message"].as_str().unwrap_or_default()
    }

    /// The `(field, message)` pairs of the error details.
    pub(crate) fn details(&self) -> Vec<(String, String)> {
        self.json["error"]["details"]
            .as_array()
            .map(|details| {
                details
                    .iter()
                    .map(|d| {
                        (
                            d["field"].as_str().unwrap_or_default().to_string(),
                            d["message"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The ids of a list answer, in order.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.json["instances"]
            .as_array()
            .map(|instances| {
                instances
                    .iter()
                    .map(|i| i["id"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Server {
    /// A server over the memory store with the standard settings.
    pub(crate) fn start() -> Server {
        Server::with(CatalogSettings::standard(), ServerSettings::standard())
    }

    /// A server over the memory store with these settings.
    pub(crate) fn with(catalog: CatalogSettings, settings: ServerSettings) -> Server {
        let catalog = Catalog::open(Store::Memory, catalog).expect("open catalog");
        Server::with_catalog(catalog, settings)
    }

    /// A server over an already opened catalog.
    pub(crate) fn with_catalog(catalog: Catalog, settings: ServerSettings) -> Server {
        let state = Arc::new(AppState {
            catalog: Arc::new(catalog),
            settings,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind a free loopback port");
        let address = listener.local_addr().expect("local address");
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = runtime.spawn(svcmeta_server::run(listener, Arc::clone(&state), async {
            let _ = signal.await;
        }));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Server {
            base: format!("http://{address}"),
            state,
            agent: Some(agent),
            shutdown: Some(shutdown),
            task: Some(task),
            runtime: Some(runtime),
        }
    }

    /// The server's base URL (`http://127.0.0.1:PORT`).
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The catalog behind the server (for setup that HTTP cannot do, and for checks).
    pub(crate) fn catalog(&self) -> &Catalog {
        &self.state.catalog
    }

    fn agent(&self) -> &ureq::Agent {
        self.agent.as_ref().expect("agent")
    }

    /// `GET path`.
    pub(crate) fn get(&self, path: &str) -> Reply {
        read(self.agent().get(format!("{}{path}", self.base)).call())
    }

    /// `DELETE path`.
    pub(crate) fn delete(&self, path: &str) -> Reply {
        read(self.agent().delete(format!("{}{path}", self.base)).call())
    }

    /// `PUT path` with raw bytes.
    pub(crate) fn put_bytes(&self, path: &str, body: &[u8]) -> Reply {
        read(
            self.agent()
                .put(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .send(body),
        )
    }

    /// `PUT path` with a JSON body.
    pub(crate) fn put(&self, path: &str, body: &Value) -> Reply {
        self.put_bytes(path, body.to_string().as_bytes())
    }

    /// `POST path` with raw bytes.
    pub(crate) fn post_bytes(&self, path: &str, body: &[u8]) -> Reply {
        read(
            self.agent()
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .send(body),
        )
    }

    /// Registers one instance with `PUT /api/v1/instances/{id}` and expects 200 or 201.
    #[track_caller]
    pub(crate) fn register(&self, body: &Value) -> Reply {
        let id = body["id"].as_str().expect("id");
        let reply = self.put(&format!("/api/v1/instances/{id}"), body);
        assert!(
            reply.status == 200 || reply.status == 201,
            "register {id}: {} {}",
            reply.status,
            reply.text
        );
        reply
    }

    /// `GET /api/v1/instances?<pairs>`; a `None` value sends the key alone.
    pub(crate) fn list(&self, pairs: &[(&str, Option<&str>)]) -> Reply {
        self.get(&format!("/api/v1/instances{}", query_string(pairs)))
    }

    /// The ids matching `pairs`, following cursors, checking the header on every page.
    #[track_caller]
    pub(crate) fn list_ids(&self, pairs: &[(&str, Option<&str>)]) -> Vec<String> {
        let reply = self.list(pairs).expect(200);
        assert_eq!(reply.index, reply.json["revision"].as_u64());
        assert!(reply.json["next_cursor"].is_null(), "{}", reply.text);
        let ids = reply.ids();
        assert_eq!(reply.json["total"].as_u64(), Some(ids.len() as u64));
        ids
    }

    /// Everything stored, as the list endpoint shows it, with the revision.
    pub(crate) fn snapshot(&self) -> (u64, Value) {
        let reply = self.list(&[]).expect(200);
        let revision = reply.json["revision"].as_u64().expect("revision");
        (revision, reply.json["instances"].clone())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Close pooled keep-alive connections first so the graceful shutdown is immediate.
        self.agent.take();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let (Some(runtime), Some(task)) = (self.runtime.take(), self.task.take()) {
            let finished = runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await });
            if !std::thread::panicking() {
                let result = finished.expect("server stops within 10s");
                result.expect("server task").expect("server result");
            }
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

fn read(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = result.expect("HTTP request");
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let index = header("x-svcmeta-index").map(|v| v.parse::<u64>().expect("numeric index"));
    let content_type = header("content-type").unwrap_or_default();
    let text = response.body_mut().read_to_string().expect("read the body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        index,
        content_type,
        text,
        json,
    }
}

/// `?k=v&k2` with every key and value percent-encoded; empty for no pairs.
pub(crate) fn query_string(pairs: &[(&str, Option<&str>)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let parts: Vec<String> = pairs
        .iter()
        .map(|(key, value)| match value {
            Some(value) => format!("{}={}", encode(key), encode(value)),
            None => encode(key),
        })
        .collect();
    format!("?{}", parts.join("&"))
}

/// A valid instance body with the usual fields.
pub(crate) fn instance(id: &str, service: &str) -> Value {
    json!({
        "id": id,
        "service": service,
        "address": "10.0.0.1",
        "port": 8080,
    })
}

/// A copy of `base` with `field` set.
pub(crate) fn with(mut base: Value, field: &str, value: Value) -> Value {
    base[field] = value;
    base
}
