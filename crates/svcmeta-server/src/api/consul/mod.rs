//! The Consul-compatible HTTP API under `/v1` (DESIGN §4): enough of Consul's agent, catalog,
//! health and status endpoints that unmodified Consul clients (py-consul, Prometheus'
//! `consul_sd_configs`, the Go client) register, heartbeat TTL checks, deregister and discover.
//!
//! Only this module knows Consul's field names, parameters, headers and error texts; the
//! handlers call the same catalog as the native API, so both APIs see the same instances.
//! svcmeta presents itself as one Consul node (name and datacenter from the configuration)
//! on which every instance lives. Errors are plain text, as Consul's.
//!
//! - `agent.rs`: `/v1/agent/*` (registration, TTL checks, the agent's view) and `/v1/status/*`.
//! - `catalog.rs`: `/v1/catalog/*`.
//! - `health.rs`: `/v1/health/*`.
//! - `wire.rs`: the JSON shapes and the field mapping; `filter.rs`: Consul's filter
//!   selectors; `checks.rs`: the in-memory check table.

mod agent;
mod catalog;
mod checks;
mod filter;
mod health;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, put};
use axum::Router;
use serde::Serialize;
use svcmeta_core::{Filter, Instance, MutationError, NodeInfo, Page, Query, ValidationErrors};

pub use checks::ConsulState;

use super::error::ApiError;
use super::native::query_pairs;
use super::AppState;
use crate::catalog::{Catalog, WriteError};
use crate::watch::{parse_blocking, wait_for_change, Blocking};
use filter::Endpoint;

/// Settings of the Consul API that come from the configuration.
#[derive(Debug, Clone)]
pub struct ConsulSettings {
    /// The node name svcmeta reports (`node_name`; default the host name).
    pub node_name: String,
    /// The one datacenter (`datacenter`; default `dc1`).
    pub datacenter: String,
    /// The node address: where clients go for a service without an address (derived from
    /// the listen address; an unspecified listen address gives 127.0.0.1).
    pub node_address: String,
}

impl ConsulSettings {
    /// Node `svcmeta` in `dc1` at 127.0.0.1.
    pub fn standard() -> ConsulSettings {
        ConsulSettings {
            node_name: "svcmeta".to_string(),
            datacenter: "dc1".to_string(),
            node_address: "127.0.0.1".to_string(),
        }
    }
}

impl ConsulState {
    /// The state of a fresh server with these settings.
    pub fn from_settings(settings: &ConsulSettings) -> ConsulState {
        ConsulState::new(wire::NodeIdentity::new(
            &settings.node_name,
            &settings.datacenter,
            &settings.node_address,
        ))
    }
}

/// How often [`reap_loop`] looks for instances to remove.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// Applies `DeregisterCriticalServiceAfter` until the catalog stops.
pub async fn reap_loop(catalog: Arc<Catalog>, consul: Arc<ConsulState>) {
    while !catalog.is_stopping() {
        tokio::time::sleep(REAP_INTERVAL).await;
        consul.reap(&catalog).await;
    }
}

/// What the Consul handlers share: the application state (through `Deref`) and the check
/// table.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    app: Arc<AppState>,
    consul: Arc<ConsulState>,
}

impl std::ops::Deref for Ctx {
    type Target = AppState;

    fn deref(&self) -> &AppState {
        &self.app
    }
}

/// The `/v1` routes over `state` and a check table.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(
    state: Arc<AppState>,
    consul: Arc<ConsulState>,
) -> Router<S> {
    Router::new()
        .route("/v1/agent/service/register", put(agent::register))
        .route(
            "/v1/agent/service/deregister/{*service_id}",
            put(agent::deregister),
        )
        .route("/v1/agent/services", get(agent::services))
        .route("/v1/agent/service/{*service_id}", get(agent::service))
        .route("/v1/agent/check/pass/{*check_id}", put(agent::check_pass))
        .route("/v1/agent/check/warn/{*check_id}", put(agent::check_warn))
        .route("/v1/agent/check/fail/{*check_id}", put(agent::check_fail))
        .route(
            "/v1/agent/check/update/{*check_id}",
            put(agent::check_update),
        )
        .route("/v1/agent/checks", get(agent::checks))
        .route("/v1/agent/self", get(agent::agent_self))
        .route("/v1/agent/members", get(agent::members))
        .route("/v1/status/leader", get(agent::leader))
        .route("/v1/status/peers", get(agent::peers))
        .route("/v1/catalog/services", get(catalog::services))
        .route("/v1/catalog/service/{*service}", get(catalog::service))
        .route("/v1/catalog/service/", get(missing_service_name))
        .route("/v1/catalog/nodes", get(catalog::nodes))
        .route("/v1/catalog/node/{*node}", get(catalog::node))
        .route("/v1/catalog/datacenters", get(catalog::datacenters))
        .route("/v1/health/service/{*service}", get(health::service))
        .route("/v1/health/service/", get(missing_service_name))
        .route("/v1/health/checks/{*service}", get(health::checks))
        .route("/v1/health/state/{*state}", get(health::state))
        .route("/v1/health/node/{*node}", get(health::node))
        .route("/v1/kv", any(not_implemented))
        .route("/v1/kv/{*rest}", any(not_implemented))
        .route("/v1/session/{*rest}", any(not_implemented))
        .route("/v1/acl/{*rest}", any(not_implemented))
        .route("/v1/txn", any(not_implemented))
        .route("/v1/catalog/register", any(not_implemented))
        .route("/v1/catalog/deregister", any(not_implemented))
        .route("/v1/agent/check/register", any(not_implemented))
        .route("/v1/agent/check/deregister/{*rest}", any(not_implemented))
        .route("/v1/event/{*rest}", any(not_implemented))
        .route("/v1/connect/{*rest}", any(not_implemented))
        .route("/v1/query", any(not_implemented))
        .route("/v1/query/{*rest}", any(not_implemented))
        .route("/v1", any(not_found))
        .route("/v1/", any(not_found))
        .route("/v1/{*rest}", any(not_found))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(Ctx { app: state, consul })
}

/// Unknown `/v1` paths: 404 with Go's plain-text body, as Consul.
async fn not_found() -> ApiError {
    ApiError::plain(StatusCode::NOT_FOUND, "404 page not found")
}

/// Known path, wrong method: 405 `method GET not allowed`, as Consul.
async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::plain(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not allowed"),
    )
}

/// Consul features svcmeta leaves out (KV, sessions, ACL management, …): 501.
async fn not_implemented(uri: axum::http::Uri) -> ApiError {
    let path = uri.path();
    let feature = if path.starts_with("/v1/kv") {
        "the key/value store (/v1/kv)"
    } else if path.starts_with("/v1/session") {
        "sessions (/v1/session)"
    } else if path.starts_with("/v1/acl") {
        "ACL management (/v1/acl)"
    } else if path.starts_with("/v1/txn") {
        "transactions (/v1/txn)"
    } else if path.starts_with("/v1/catalog/") {
        "catalog registration (use /v1/agent/service/register)"
    } else if path.starts_with("/v1/agent/check/") {
        "standalone checks (give TTL checks in /v1/agent/service/register)"
    } else if path.starts_with("/v1/event") {
        "user events (/v1/event)"
    } else if path.starts_with("/v1/connect") {
        "service mesh (/v1/connect)"
    } else {
        "prepared queries (/v1/query)"
    };
    ApiError::plain(
        StatusCode::NOT_IMPLEMENTED,
        format!("svcmeta does not implement {feature}; it serves Consul's service catalog only"),
    )
}

async fn missing_service_name() -> ApiError {
    ApiError::plain(StatusCode::BAD_REQUEST, "Missing service name")
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::plain(StatusCode::BAD_REQUEST, message)
}

/// A write failure as Consul-style plain text.
fn write_error(error: WriteError) -> ApiError {
    match error {
        WriteError::Rejected(MutationError::NotFound(id)) => ApiError::plain(
            StatusCode::NOT_FOUND,
            format!("Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."),
        ),
        WriteError::Rejected(full @ MutationError::Full { .. }) => {
            ApiError::plain(StatusCode::INSUFFICIENT_STORAGE, full.to_string())
        }
        WriteError::Rejected(other) => ApiError::plain(StatusCode::CONFLICT, other.to_string()),
        other => {
            let native = ApiError::from(other);
            ApiError::plain(native.status(), native.message().to_string())
        }
    }
}

/// A validation failure as plain text, every violation named.
fn validation_error(errors: ValidationErrors) -> ApiError {
    bad_request(format!("invalid service registration: {errors}"))
}

/// The body of a write, with the 413 of an oversized one.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::plain(
                status,
                "request body is larger than the max_body_bytes limit",
            )
        } else {
            ApiError::plain(status, rejection.body_text())
        }
    })
}

/// A JSON body (`Request decode failed: …` otherwise); an empty body is `null`.
fn json_body(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(bytes).map_err(|e| bad_request(format!("Request decode failed: {e}")))
}

/// The parameters every Consul read takes (unknown ones are ignored, as Consul does).
#[derive(Debug, Default)]
struct ReadParams {
    blocking: Option<Blocking>,
    filter: Option<String>,
    tags: Vec<String>,
    node_meta: Vec<(String, String)>,
    passing: bool,
    pretty: bool,
    hash: Option<String>,
    note: Option<String>,
    replace_existing_checks: bool,
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

impl ReadParams {
    fn parse(raw: Option<&str>, state: &Ctx) -> Result<ReadParams, ApiError> {
        let mut params = ReadParams::default();
        let mut index = None;
        let mut wait = None;
        let mut stale = false;
        let mut consistent = false;
        let consul = &state.settings.consul;
        for (key, value) in query_pairs(raw.unwrap_or("")) {
            let text = value.as_deref().unwrap_or("");
            match key.as_str() {
                "dc" if !text.is_empty() && text != consul.datacenter => {
                    return Err(ApiError::plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "No path to datacenter",
                    ));
                }
                "ns" | "namespace" if !text.is_empty() && text != "default" => {
                    return Err(bad_request(format!(
                        "Invalid query parameter: {key:?} - Namespaces are a Consul Enterprise feature"
                    )));
                }
                "partition" | "ap" if !text.is_empty() && text != "default" => {
                    return Err(bad_request(format!(
                        "Invalid query parameter: {key:?} - Partitions are a Consul Enterprise feature"
                    )));
                }
                "peer" if !text.is_empty() => {
                    return Err(bad_request(
                        "Invalid query parameter: \"peer\" - svcmeta has no cluster peers",
                    ));
                }
                "index" => {
                    index.get_or_insert_with(|| text.to_string());
                }
                "wait" => {
                    wait.get_or_insert_with(|| text.to_string());
                }
                "filter" => {
                    params.filter.get_or_insert_with(|| text.to_string());
                }
                "tag" => params.tags.push(text.to_string()),
                "node-meta" => match text.split_once(':') {
                    Some((k, v)) => params.node_meta.push((k.to_string(), v.to_string())),
                    None => params.node_meta.push((text.to_string(), String::new())),
                },
                "passing" => {
                    params.passing = match value.as_deref() {
                        None | Some("") => true,
                        Some(text) => parse_go_bool(text)
                            .ok_or_else(|| bad_request("Invalid value for ?passing"))?,
                    }
                }
                "pretty" => params.pretty = true,
                "stale" => stale = true,
                "consistent" => consistent = true,
                "hash" => params.hash = Some(text.to_string()),
                "note" => {
                    params.note.get_or_insert_with(|| text.to_string());
                }
                "replace-existing-checks" => {
                    params.replace_existing_checks = match value.as_deref() {
                        None | Some("") => true,
                        Some(text) => parse_go_bool(text).unwrap_or(false),
                    }
                }
                _ => {}
            }
        }
        if stale && consistent {
            return Err(bad_request(
                "Cannot specify ?stale with ?consistent, conflicting semantics.",
            ));
        }
        let index = index.filter(|i| !i.is_empty());
        if let Some(text) = &index {
            text.parse::<u64>()
                .map_err(|_| bad_request("Invalid index"))?;
        }
        let wait = wait.filter(|w| !w.is_empty());
        if let Some(text) = &wait {
            parse_blocking(Some("1"), Some(text))
                .map_err(|_| bad_request(format!("Invalid wait time: {text:?}")))?;
        }
        params.blocking = parse_blocking(index.as_deref(), wait.as_deref())
            .map_err(|e| bad_request(e.message().to_string()))?;
        Ok(params)
    }

    /// The parsed filter for `endpoint`, or a 400 with the position (DESIGN §8; Consul
    /// answers 500 with the same body).
    fn compile_filter(&self, endpoint: Endpoint, state: &Ctx) -> Result<Option<Filter>, ApiError> {
        match &self.filter {
            None => Ok(None),
            Some(text) => filter::compile(text, endpoint, &state.settings.filter_limits)
                .map_err(|e| bad_request(e.0)),
        }
    }

    /// Whether svcmeta's node has every `node-meta` pair.
    fn node_meta_matches(&self, state: &Ctx) -> bool {
        let meta = &state.consul.node().meta;
        self.node_meta
            .iter()
            .all(|(k, v)| meta.get(k).is_some_and(|have| have == v))
    }
}

/// Whether an instance carries every wanted tag, compared case-insensitively (Consul).
fn has_tags(instance: &Instance, wanted: &[String]) -> bool {
    wanted.iter().all(|tag| {
        let tag = tag.to_lowercase();
        instance.fields.tags().any(|t| t.to_lowercase() == tag)
    })
}

/// The node a filter sees.
fn node_info(state: &Ctx) -> NodeInfo {
    let node = state.consul.node();
    NodeInfo {
        name: node.name.clone(),
        datacenter: node.datacenter.clone(),
        meta: node.meta.clone(),
    }
}

/// Whether an instance passes a Consul filter, evaluated on its Consul view.
fn filter_matches(filter: Option<&Filter>, instance: &Arc<Instance>, node: &NodeInfo) -> bool {
    match filter {
        None => true,
        Some(filter) => filter.matches(&wire::consul_view(instance), node),
    }
}

/// Blocks per Consul's rules on `scope` (re-read after every write). The index clients see
/// is never 0 (it is reported as 1), so `index=1` while the scope is still 0 waits for the
/// first change instead of answering at once.
async fn block(catalog: &Catalog, blocking: Option<Blocking>, scope: impl Fn() -> u64) {
    let Some(mut blocking) = blocking else {
        return;
    };
    if blocking.index == 1 && scope() == 0 {
        blocking.index = 0;
    }
    wait_for_change(catalog, blocking, scope).await;
}

/// Every instance of a service (names compared case-insensitively), in (service, id) order,
/// with the service's index (the revision of its last change, removals included).
fn service_instances(catalog: &Catalog, name: &str) -> (u64, Vec<Arc<Instance>>) {
    let query = service_query(name);
    let index = catalog.scope_revision(&query);
    let answer = catalog.query(&query, &Page::default());
    (index, answer.instances)
}

fn service_query(name: &str) -> Query {
    Query {
        service: Some(name.to_string()),
        ..Query::default()
    }
}

/// Serialises a body (indented with `?pretty`).
fn to_json<T: Serialize>(body: &T, pretty: bool) -> Result<Vec<u8>, ApiError> {
    let bytes = if pretty {
        serde_json::to_vec_pretty(body)
    } else {
        serde_json::to_vec(body)
    };
    bytes.map_err(|error| ApiError::plain(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))
}

/// A JSON response over bytes already serialised.
fn json_response(bytes: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

/// Serialises a body (indented with `?pretty`) into a response.
fn json<T: Serialize>(body: &T, pretty: bool) -> Response {
    match to_json(body, pretty) {
        Ok(bytes) => json_response(Bytes::from(bytes)),
        Err(error) => error.into_response(),
    }
}

/// Adds `X-Consul-Index` (never 0), `X-Consul-KnownLeader` and `X-Consul-LastContact`.
fn with_read_headers(mut response: Response, index: u64) -> Response {
    let headers = response.headers_mut();
    headers.insert("x-consul-index", HeaderValue::from(index.max(1)));
    headers.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    headers.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    response
}

/// A catalog or health read: the body plus the read headers.
fn read_response<T: Serialize>(body: &T, pretty: bool, index: u64) -> Response {
    with_read_headers(json(body, pretty), index)
}

/// A read whose body is serialised already (shared with a cached page, not copied).
fn read_response_bytes(bytes: Arc<[u8]>, index: u64) -> Response {
    with_read_headers(json_response(Bytes::from_owner(bytes)), index)
}
