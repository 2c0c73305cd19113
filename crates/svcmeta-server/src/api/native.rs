//! The native JSON API under `/api/v1` (DESIGN §4), plus `/healthz` and `/metrics`.
//!
//! Handlers parse and validate first, then call the catalog; they never touch the store or the
//! registry directly. Every read carries the revision in the `X-Svcmeta-Index` header.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;
use svcmeta_core::{
    query_with_filter, validate, CachedPage, Cursor, Health, Instance, InstanceDraft,
    MetaCriterion, Mutation, Page, PlanStep, Query, ServiceSummary, ValidationErrors,
    VersionCriterion,
};

use super::error::ApiError;
use super::{AppState, ServerSettings};
use crate::metrics::render_prometheus;
use crate::watch::{parse_blocking, wait_for_change, Blocking};

/// The response header carrying the revision an answer was computed at.
pub const INDEX_HEADER: &str = "x-svcmeta-index";
/// Set (to `true`) on every answer while the node cannot reach its shared store.
pub const STALE_HEADER: &str = "x-svcmeta-stale";

fn with_index<T: IntoResponse>(revision: u64, body: T) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(INDEX_HEADER, HeaderValue::from(revision));
    response
}

/// Turns a body-extraction failure into our error shape (413 for an oversized body).
fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "payload_too_large",
                format!("request body is larger than {limit} bytes, the max_body_bytes limit"),
            )
        } else {
            ApiError::new(status, "invalid_request", rejection.body_text())
        }
    })
}

/// Rewords serde's messages in the API's terms (no Rust type names).
fn describe_json_error(error: &serde_json::Error) -> String {
    error
        .to_string()
        .replace("struct InstanceDraft", "an instance object")
        .replace("expected i64", "expected an integer")
}

fn parse_draft(bytes: &[u8]) -> Result<InstanceDraft, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::bad_request(
            "body: expected one instance as a JSON object ({\"service\": …})",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("body: {}", describe_json_error(&e))))
}

#[derive(Serialize)]
struct InstanceBody<'a> {
    #[serde(flatten)]
    instance: &'a Instance,
}

/// Parses the parameters of a single-instance write: `cas=REVISION` (compare-and-set: the
/// instance must be at that modify revision; 0 means it must not exist) and nothing else.
fn write_expectation(id: &str, raw: Option<&str>) -> Result<Vec<(String, u64)>, ApiError> {
    let mut expect = Vec::new();
    for (key, value) in query_pairs(raw.unwrap_or("")) {
        match key.as_str() {
            "cas" => {
                let text = value.unwrap_or_default();
                let revision = text.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "cas: {text:?} is not a revision (a whole number; 0 means \"must not exist\")"
                    ))
                })?;
                expect = vec![(id.to_string(), revision)];
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (a write takes only cas)"
                )))
            }
        }
    }
    Ok(expect)
}

/// `PUT /api/v1/instances/{id}[?cas=REVISION]`: register or replace one instance.
pub(crate) async fn put_instance(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let expect = write_expectation(&id, raw.as_deref())?;
    let bytes = body_bytes(body, state.settings.max_body_bytes)?;
    let mut draft = parse_draft(&bytes)?;
    if draft.id.is_empty() {
        draft.id = id.clone();
    } else if draft.id != id {
        return Err(ApiError::bad_request(format!(
            "id: body names {:?} but the path names {id:?}",
            draft.id
        )));
    }
    let registration = validate(draft, state.catalog.limits())?;
    let outcome = state
        .catalog
        .write_checked(vec![Mutation::Register(registration)], expect)
        .await?;
    match outcome.states.first().and_then(Option::as_ref) {
        Some(instance) => {
            // Decided by the committer's outcome, so two racing creators cannot both see 201.
            let created =
                outcome.changed > 0 && instance.create_revision == instance.modify_revision;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(with_index(
                outcome.revision,
                (status, Json(InstanceBody { instance })),
            ))
        }
        None => Err(ApiError::not_found(&id)),
    }
}

/// Parses the parameters of a read that takes only `index` and `wait`.
fn blocking_only(raw: Option<&str>) -> Result<Option<Blocking>, ApiError> {
    let mut index = None;
    let mut wait = None;
    for (key, value) in query_pairs(raw.unwrap_or("")) {
        match key.as_str() {
            "index" => index = value,
            "wait" => wait = value,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}"
                )))
            }
        }
    }
    parse_blocking(index.as_deref(), wait.as_deref())
}

/// `GET /api/v1/instances/{id}`; blocks until the instance changes, appears or disappears.
pub(crate) async fn get_instance(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    if let Some(blocking) = blocking_only(raw.as_deref())? {
        let catalog = &state.catalog;
        let existed = catalog.get(&id).is_some();
        wait_for_change(catalog, blocking, || match catalog.get(&id) {
            Some(instance) if existed => instance.modify_revision,
            // Appeared or disappeared since the wait began: that is a change.
            _ if catalog.get(&id).is_some() != existed => u64::MAX,
            _ => 0,
        })
        .await;
    }
    let revision = state.catalog.revision();
    match state.catalog.get(&id) {
        Some(instance) => Ok(with_index(
            revision,
            Json(InstanceBody {
                instance: &instance,
            }),
        )),
        None => Err(ApiError::not_found(&id)),
    }
}

/// `DELETE /api/v1/instances/{id}[?cas=REVISION]`.
pub(crate) async fn delete_instance(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let expect = write_expectation(&id, raw.as_deref())?;
    let outcome = state
        .catalog
        .write_checked(vec![Mutation::Deregister(id.clone())], expect)
        .await?;
    Ok(with_index(
        outcome.revision,
        Json(json!({ "revision": outcome.revision, "deregistered": id })),
    ))
}

/// `PUT /api/v1/instances/{id}/renew`: renews a lease, making a critical instance passing.
pub(crate) async fn renew_instance(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let outcome = state
        .catalog
        .write(vec![Mutation::Renew(id.clone())])
        .await?;
    match outcome.states.first().and_then(Option::as_ref) {
        Some(instance) => {
            let mut body = serde_json::to_value(InstanceBody { instance })
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            if let Some(deadline) = state.catalog.lease_deadline(&id) {
                body["lease_deadline"] = json!(deadline);
            }
            Ok(with_index(outcome.revision, Json(body)))
        }
        None => Err(ApiError::not_found(&id)),
    }
}

/// Splits a bulk body into drafts: a JSON array, one JSON object, or NDJSON.
pub fn parse_bulk(bytes: &[u8]) -> Result<Vec<InstanceDraft>, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::bad_request(format!("body: invalid UTF-8 at byte {}", e.valid_up_to()))
    })?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed)
            .map_err(|e| ApiError::bad_request(format!("body: {}", describe_json_error(&e))));
    }
    let mut drafts = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let draft = serde_json::from_str(line).map_err(|e| {
            ApiError::bad_request(format!(
                "body line {}, column {}: {}",
                number + 1,
                e.column(),
                describe_json_error(&e)
                    .rsplit_once(" at line ")
                    .map_or_else(|| describe_json_error(&e), |(m, _)| m.to_string())
            ))
        })?;
        drafts.push(draft);
    }
    Ok(drafts)
}

/// Validates drafts, reporting every violation of every record with its position.
pub fn validate_all(
    drafts: Vec<InstanceDraft>,
    limits: &svcmeta_core::Limits,
) -> Result<Vec<Mutation>, ValidationErrors> {
    let mut mutations = Vec::with_capacity(drafts.len());
    let mut violations = Vec::new();
    for (position, draft) in drafts.into_iter().enumerate() {
        match validate(draft, limits) {
            Ok(registration) => mutations.push(Mutation::Register(registration)),
            Err(errors) => violations.extend(errors.prefixed(&format!("[{position}].")).violations),
        }
    }
    if violations.is_empty() {
        Ok(mutations)
    } else {
        Err(ValidationErrors { violations })
    }
}

/// `POST /api/v1/instances`: bulk register, all or nothing.
pub(crate) async fn post_instances(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body_bytes(body, state.settings.max_body_bytes)?;
    let drafts = parse_bulk(&bytes)?;
    if drafts.is_empty() {
        return Err(ApiError::bad_request("body: no instances given"));
    }
    let mutations = validate_all(drafts, state.catalog.limits())?;
    let count = mutations.len();
    let outcome = state.catalog.write(mutations).await?;
    Ok(with_index(
        outcome.revision,
        Json(json!({
            "revision": outcome.revision,
            "registered": count,
            "changed": outcome.changed,
        })),
    ))
}

/// The parsed parameters of a list request.
#[derive(Debug, Default)]
pub struct ListRequest {
    /// The criteria.
    pub query: Query,
    /// The page.
    pub page: Page,
    /// Only count.
    pub count: bool,
    /// Include the plan.
    pub explain: bool,
    /// Hold the request until the answer may differ from the one at this index.
    pub blocking: Option<Blocking>,
}

/// Splits a raw query string into decoded pairs, keeping whether a value was given at all.
pub fn query_pairs(raw: &str) -> Vec<(String, Option<String>)> {
    raw.split('&')
        .filter(|segment| !segment.is_empty())
        .filter_map(|segment| {
            let has_value = segment.contains('=');
            form_urlencoded::parse(segment.as_bytes())
                .next()
                .map(|(key, value)| (key.into_owned(), has_value.then(|| value.into_owned())))
        })
        .collect()
}

fn parse_bool(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("") | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!(
            "{name}: {other:?} is not a boolean (true or false)"
        ))),
    }
}

/// Parses the parameters of `GET /api/v1/instances`.
pub fn parse_list_request(
    pairs: &[(String, Option<String>)],
    settings: &ServerSettings,
) -> Result<ListRequest, ApiError> {
    let max_page = settings.max_page;
    let mut filter: Option<String> = None;
    let mut request = ListRequest::default();
    let mut limit = None;
    let mut index = None;
    let mut wait = None;
    for (key, value) in pairs {
        let text = value.as_deref().unwrap_or("");
        let single = |slot: &Option<String>| -> Result<(), ApiError> {
            if slot.is_some() {
                Err(ApiError::bad_request(format!(
                    "{key}: given more than once"
                )))
            } else {
                Ok(())
            }
        };
        let non_empty = || -> Result<String, ApiError> {
            if text.is_empty() {
                Err(ApiError::bad_request(format!("{key}: empty value")))
            } else {
                Ok(text.to_string())
            }
        };
        match key.as_str() {
            "service" => {
                single(&request.query.service)?;
                request.query.service = Some(non_empty()?);
            }
            "env" | "environment" => {
                single(&request.query.environment)?;
                request.query.environment = Some(non_empty()?);
            }
            "region" => {
                single(&request.query.region)?;
                request.query.region = Some(non_empty()?);
            }
            "tag" => request.query.tags_all.push(non_empty()?),
            "tag_any" => request.query.tags_any.push(non_empty()?),
            "tag_not" => request.query.tags_none.push(non_empty()?),
            "version" => {
                if request.query.version.is_some() {
                    return Err(ApiError::bad_request(
                        "version: given more than once; write a range like >=1.0, <2.0",
                    ));
                }
                request.query.version = Some(
                    VersionCriterion::parse(text)
                        .map_err(|e| ApiError::bad_request(e.to_string()))?,
                );
            }
            "health" => {
                if request.query.health.is_some() {
                    return Err(ApiError::bad_request("health: given more than once"));
                }
                request.query.health = Some(Health::parse(text).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "health: {text:?} is not one of passing, warning, critical"
                    ))
                })?);
            }
            "filter" => {
                if filter.is_some() {
                    return Err(ApiError::bad_request(
                        "filter: given more than once; combine with and",
                    ));
                }
                filter = Some(text.to_string());
            }
            "limit" => {
                if limit.is_some() {
                    return Err(ApiError::bad_request("limit: given more than once"));
                }
                let parsed: usize = text.parse().map_err(|_| {
                    ApiError::bad_request(format!("limit: {text:?} is not a positive integer"))
                })?;
                if parsed == 0 || parsed > max_page {
                    return Err(ApiError::bad_request(format!(
                        "limit: {parsed} is out of range 1 to {max_page} (max_page)"
                    )));
                }
                limit = Some(parsed);
            }
            "cursor" => {
                if !text.is_empty() {
                    request.page.cursor = Some(
                        Cursor::decode(text).map_err(|e| ApiError::bad_request(e.to_string()))?,
                    );
                }
            }
            "count" => request.count = parse_bool("count", value.as_deref())?,
            "explain" => request.explain = parse_bool("explain", value.as_deref())?,
            "index" => index = Some(text.to_string()),
            "wait" => wait = Some(text.to_string()),
            other => match other.strip_prefix("meta.") {
                Some(meta_key) if !meta_key.is_empty() => {
                    let criterion = match value {
                        Some(v) => MetaCriterion::Equals(v.clone()),
                        None => MetaCriterion::Present,
                    };
                    request.query.meta.push((meta_key.to_string(), criterion));
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter {other:?}"
                    )))
                }
            },
        }
    }
    request.page.limit = Some(limit.unwrap_or(max_page));
    request.blocking = parse_blocking(index.as_deref(), wait.as_deref())?;
    if let Some(text) = filter {
        // Indexable parts of the expression join the criteria; the rest is checked per match.
        request.query = query_with_filter(request.query, &text, &settings.filter_limits)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    Ok(request)
}

#[derive(Serialize)]
struct ListBody<'a> {
    revision: u64,
    total: u64,
    instances: &'a [Arc<Instance>],
    next_cursor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<Vec<PlanStep>>,
}

/// `GET /api/v1/instances`.
pub(crate) async fn list_instances(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    // Only the parsed request stays alive while a blocking query is parked: the raw query
    // and its decoded pairs (~500 B of heap) are dropped before the wait.
    let request = parse_list_request(&query_pairs(raw.as_deref().unwrap_or("")), &state.settings)?;
    drop(raw);
    if let Some(blocking) = request.blocking {
        let catalog = &state.catalog;
        wait_for_change(catalog, blocking, || catalog.scope_revision(&request.query)).await;
    }
    let plan = request
        .explain
        .then(|| state.catalog.explain(&request.query));
    if request.count {
        let (total, revision) = state.catalog.count(&request.query);
        let mut body = json!({ "revision": revision, "total": total });
        if let Some(plan) = plan {
            body["plan"] = json!(plan);
        }
        return Ok(with_index(revision, Json(body)));
    }
    if let Some(plan) = plan {
        let answer = state.catalog.query(&request.query, &request.page);
        return Ok(with_index(
            answer.revision,
            Json(ListBody {
                revision: answer.revision,
                total: answer.total,
                instances: &answer.instances,
                next_cursor: answer.next_cursor.as_deref(),
                plan: Some(plan),
            }),
        ));
    }
    let (revision, page) = state.catalog.query_page(&request.query, &request.page);
    let tail = list_tail(&page)?;
    Ok(with_index(
        revision,
        json_bytes(splice_revision(revision, &tail)),
    ))
}

/// Which of a cached page's serialised forms is the native list body (after `revision`).
const LIST_RENDERING: &str = "native-list";

/// The native list body without its `revision`: `{"total":…,"instances":[…],"next_cursor":…}`,
/// kept with the cached page, so a cache hit serialises no instance. The bytes depend on the
/// page alone (tag 0), so they are exactly as fresh as the page.
fn list_tail(page: &CachedPage) -> Result<Arc<[u8]>, ApiError> {
    if let Some(bytes) = page.renderings.get(LIST_RENDERING, 0) {
        return Ok(bytes);
    }
    let bytes: Arc<[u8]> = serde_json::to_vec(&ListTail {
        total: page.total,
        instances: &page.instances,
        next_cursor: page.next_cursor.as_deref(),
    })
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .into();
    page.renderings.put(LIST_RENDERING, 0, Arc::clone(&bytes));
    Ok(bytes)
}

/// `{"revision":N,` followed by the tail without its opening brace: the body `ListBody`
/// serialises, with the revision of this very request.
fn splice_revision(revision: u64, tail: &[u8]) -> Vec<u8> {
    let fields = tail.strip_prefix(b"{").unwrap_or(tail);
    let mut body = Vec::with_capacity(fields.len() + 32);
    body.extend_from_slice(b"{\"revision\":");
    body.extend_from_slice(revision.to_string().as_bytes());
    if fields != b"}" {
        body.push(b',');
    }
    body.extend_from_slice(fields);
    body
}

/// A response with a JSON body already serialised.
fn json_bytes(body: Vec<u8>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

#[derive(Serialize)]
struct ListTail<'a> {
    total: u64,
    instances: &'a [Arc<Instance>],
    next_cursor: Option<&'a str>,
}

#[derive(Serialize)]
struct ServicesBody<'a> {
    revision: u64,
    services: &'a [ServiceSummary],
}

/// `GET /api/v1/services`; blocks on any change.
pub(crate) async fn list_services(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    if let Some(blocking) = blocking_only(raw.as_deref())? {
        let catalog = &state.catalog;
        wait_for_change(catalog, blocking, || catalog.revision()).await;
    }
    let (services, revision) = state.catalog.services();
    Ok(with_index(
        revision,
        Json(ServicesBody {
            revision,
            services: &services,
        }),
    ))
}

/// The body of `GET /api/v1/stats`.
pub fn stats_body(state: &AppState) -> serde_json::Value {
    let catalog = &state.catalog;
    let index = catalog.index_stats(state.settings.stats_top);
    let queries = catalog.query_stats().snapshot();
    let (hits, misses, entries) = catalog.cache_counts();
    let lookups = hits + misses;
    json!({
        "revision": index.revision,
        "store": catalog.store_kind(),
        "instances": index.instances,
        "services": index.services,
        "index": index,
        "queries": queries,
        "cache": {
            "hits": hits,
            "misses": misses,
            "entries": entries,
            "hit_ratio": if lookups == 0 { 0.0 } else { hits as f64 / lookups as f64 },
        },
        "store_commits": catalog.commits(),
    })
}

/// `GET /api/v1/stats`; blocks on any change.
pub(crate) async fn stats(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    if let Some(blocking) = blocking_only(raw.as_deref())? {
        let catalog = &state.catalog;
        wait_for_change(catalog, blocking, || catalog.revision()).await;
    }
    let body = stats_body(&state);
    let revision = body["revision"].as_u64().unwrap_or(0);
    Ok(with_index(revision, Json(body)))
}

/// `GET /healthz`: `status` is `ok`, or `stale` while the shared store (Redis) is
/// unreachable and reads come from this node's last known state (still 200: the node serves),
/// or `failing` (503, with the `problem`) once the embedded store takes no more writes.
pub(crate) async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let revision = state.catalog.revision();
    let problem = state.catalog.store_problem();
    let status = if problem.is_some() {
        "failing"
    } else if state.catalog.is_stale() {
        "stale"
    } else {
        "ok"
    };
    let mut body = json!({
        "status": status,
        "store": state.catalog.store_kind(),
        "revision": revision,
    });
    if let Some(problem) = problem {
        // Writes fail until a restart: a load balancer should stop sending them here.
        body["problem"] = json!(problem);
        let mut response = with_index(revision, Json(body));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return response;
    }
    if let Some(replication) = state.catalog.replication() {
        body["replication"] = json!(replication);
    }
    with_index(revision, Json(body))
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    (headers, render_prometheus(&state.catalog)).into_response()
}

/// Answer for a known path with a method it does not support.
pub(crate) async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("method {method} is not allowed on this endpoint"),
    )
}

/// Fallback for unknown paths.
pub(crate) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// `GET /api/v1/events?since=N&<criteria>`: server-sent events of every change after
/// revision N (or the `Last-Event-ID` header; by default from now on) to instances matching
/// the criteria. History older than what is retained answers 410: the client must re-list.
pub(crate) async fn events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut since = None;
    let mut criteria = Vec::new();
    for (key, value) in query_pairs(raw.as_deref().unwrap_or("")) {
        if key == "since" {
            let text = value.unwrap_or_default();
            since = Some(text.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("since: {text:?} is not a revision"))
            })?);
        } else {
            criteria.push((key, value));
        }
    }
    let since = match since {
        Some(since) => since,
        None => match headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            Some(last) => last,
            None => state.catalog.revision(),
        },
    };
    let request = parse_list_request(&criteria, &state.settings)?;
    if request.blocking.is_some() || request.count || request.explain {
        return Err(ApiError::bad_request(
            "events take only since and query criteria (service, env, tag, …)",
        ));
    }
    if let Err(trimmed) = state.catalog.events_since(since) {
        return Err(ApiError::new(
            StatusCode::GONE,
            "history_trimmed",
            trimmed.to_string(),
        ));
    }
    let stream = crate::watch::event_stream(Arc::clone(&state.catalog), since, request.query);
    Ok(axum::response::sse::Sse::new(stream)
        .keep_alive(axum::response::sse::KeepAlive::default())
        .into_response())
}
