//! `/v1/agent/*` and `/v1/status/*`: registration, deregistration, TTL check updates, and
//! the agent's own view (its services, its checks, `self`, members, leader, peers).
//!
//! A registration becomes one instance (DESIGN §4 mapping in `wire.rs`); its TTL checks set
//! the instance's lease (the shortest TTL) and health (the worst check status). A new TTL
//! check starts critical unless the body gives `Status`, as in Consul; re-registering keeps
//! the status of checks whose id already exists. Check types svcmeta cannot run (HTTP, TCP,
//! …) are accepted and ignored.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use svcmeta_core::{validate, Health, Mutation, MutationError, Page, Query};

use super::checks::{aggregate, lease_of, CheckError};
use super::wire::{self, BodyError, CONSUL_VERSION};
use super::{
    block, body_bytes, filter_matches, json, json_body, node_info, validation_error, write_error,
    Ctx, Endpoint, ReadParams,
};
use crate::api::error::ApiError;
use crate::catalog::WriteError;

fn body_error(error: BodyError) -> ApiError {
    match error {
        BodyError::Decode(detail) => ApiError::plain(
            StatusCode::BAD_REQUEST,
            format!("Request decode failed: {detail}"),
        ),
        BodyError::Rule(message) => ApiError::plain(StatusCode::BAD_REQUEST, message),
    }
}

/// `PUT /v1/agent/service/register[?replace-existing-checks]`.
pub(crate) async fn register(
    State(state): State<Ctx>,
    RawQuery(raw): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(raw.as_deref(), &state)?;
    let bytes = body_bytes(body)?;
    let value = json_body(&bytes)?;
    let catalog = &state.catalog;
    let mut request = wire::parse_register(&value, catalog.limits()).map_err(body_error)?;
    let id = request.draft.id.clone();
    let existing = catalog.get(&id);
    let checks = state.consul.plan(
        existing.as_deref(),
        std::mem::take(&mut request.checks),
        params.replace_existing_checks,
    );
    if request.unrun_checks > 0 {
        tracing::debug!(
            id,
            count = request.unrun_checks,
            "accepted checks that svcmeta does not run (only TTL checks are supported)"
        );
    }
    request.draft.ttl = lease_of(&checks).map(svcmeta_core::format_duration_ms);
    let registration = validate(request.draft, catalog.limits()).map_err(validation_error)?;
    let health = aggregate(checks.iter().map(|c| &c.status));
    let unchanged = existing
        .as_ref()
        .is_some_and(|old| &old.fields == registration.fields() && old.health == health);
    // Registering resets the health to passing; a set-health follows in the same request
    // when the checks say otherwise. An identical registration of a non-passing instance
    // writes nothing (re-writing would spend two revisions to end where it started).
    if !(unchanged && health != Health::Passing) {
        let mut mutations = vec![Mutation::Register(registration)];
        if health != Health::Passing {
            mutations.push(Mutation::SetHealth {
                id: id.clone(),
                health,
            });
        }
        catalog.write(mutations).await.map_err(write_error)?;
    }
    state.consul.commit(&id, checks);
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/service/deregister/{id}`.
pub(crate) async fn deregister(
    State(state): State<Ctx>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    ReadParams::parse(raw.as_deref(), &state)?;
    state
        .catalog
        .write(vec![Mutation::Deregister(id.clone())])
        .await
        .map_err(write_error)?;
    state.consul.forget(&id);
    Ok(StatusCode::OK.into_response())
}

/// `GET /v1/agent/services[?filter=]`: every instance (they all live on this agent), keyed by
/// id. Blocks on `index` over the global revision (an svcmeta extension).
pub(crate) async fn services(
    State(state): State<Ctx>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(raw.as_deref(), &state)?;
    let filter = params.compile_filter(Endpoint::Agent, &state)?;
    let catalog = &state.catalog;
    block(catalog, params.blocking, || catalog.revision()).await;
    let index = catalog.revision();
    let answer = catalog.query(&Query::default(), &Page::default());
    let node = node_info(&state);
    let services: serde_json::Map<String, serde_json::Value> = answer
        .instances
        .iter()
        .filter(|i| filter_matches(filter.as_ref(), i, &node))
        .map(|i| {
            let body = wire::agent_service(i, state.consul.node());
            (
                i.id().to_string(),
                serde_json::to_value(body).unwrap_or_default(),
            )
        })
        .collect();
    let mut response = json(&services, params.pretty);
    response
        .headers_mut()
        .insert("x-consul-index", HeaderValue::from(index.max(1)));
    Ok(response)
}

/// FNV-1a of the JSON body, as a 16-digit hex string (Consul's `ContentHash` is opaque).
fn content_hash(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// `GET /v1/agent/service/{id}`: one instance with `ContentHash`; blocks with `hash` (until the
/// hash differs) or `index` (until the instance changes).
pub(crate) async fn service(
    State(state): State<Ctx>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(raw.as_deref(), &state)?;
    let catalog = &state.catalog;
    let render = || {
        catalog.get(&id).map(|instance| {
            let body = wire::agent_service(&instance, state.consul.node());
            let hash = content_hash(&serde_json::to_vec(&body).unwrap_or_default());
            (instance, body, hash)
        })
    };
    let revision_of = || catalog.get(&id).map_or(0, |i| i.modify_revision);
    if let Some(wanted) = params.hash.as_deref().filter(|h| !h.is_empty()) {
        let wait = params
            .blocking
            .map_or(crate::watch::DEFAULT_WAIT, |b| b.wait);
        let deadline = tokio::time::Instant::now() + wait;
        while render().is_some_and(|(_, _, hash)| hash == wanted)
            && tokio::time::Instant::now() < deadline
            && !catalog.is_stopping()
        {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let blocking = crate::watch::Blocking {
                index: revision_of().max(1),
                wait: remaining,
            };
            crate::watch::wait_for_change(catalog, blocking, revision_of).await;
        }
    } else {
        block(catalog, params.blocking, revision_of).await;
    }
    let Some((instance, mut body, hash)) = render() else {
        return Err(ApiError::plain(
            StatusCode::NOT_FOUND,
            format!("unknown service ID: {id}"),
        ));
    };
    body.content_hash = Some(hash.clone());
    let mut response = json(&body, params.pretty);
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&hash) {
        headers.insert("x-consul-contenthash", value);
    }
    headers.insert(
        "x-consul-index",
        HeaderValue::from(instance.modify_revision.max(1)),
    );
    Ok(response)
}

/// Sets a TTL check's status; `note` becomes its output.
async fn set_check(
    state: &Ctx,
    check_id: &str,
    status: Health,
    output: &str,
) -> Result<Response, ApiError> {
    let unknown = || {
        ApiError::plain(
            StatusCode::NOT_FOUND,
            format!("Unknown check ID {check_id:?}. Ensure that the check ID is passed, not the check name."),
        )
    };
    let catalog = &state.catalog;
    let owner = state
        .consul
        .owner(catalog, check_id)
        .map_err(|error| match error {
            CheckError::Unknown => unknown(),
            CheckError::NoTtl => ApiError::plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("CheckID {check_id:?} does not have associated TTL"),
            ),
        })?;
    let instance = catalog.get(&owner).ok_or_else(unknown)?;
    let mutations = state
        .consul
        .set_status(&instance, check_id, status, output)
        .map_err(|_| unknown())?;
    match catalog.write(mutations).await {
        Ok(_) => Ok(StatusCode::OK.into_response()),
        Err(WriteError::Rejected(MutationError::NotFound(_))) => {
            state.consul.forget(&owner);
            Err(unknown())
        }
        Err(error) => Err(write_error(error)),
    }
}

async fn check_with(
    state: Ctx,
    check_id: String,
    raw: Option<String>,
    status: Health,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(raw.as_deref(), &state)?;
    let note = params.note.unwrap_or_default();
    set_check(&state, &check_id, status, &note).await
}

/// `PUT /v1/agent/check/pass/{check_id}[?note=]`: passing, and the lease is renewed.
pub(crate) async fn check_pass(
    State(state): State<Ctx>,
    Path(check_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    check_with(state, check_id, raw, Health::Passing).await
}

/// `PUT /v1/agent/check/warn/{check_id}[?note=]`: warning, and the lease is renewed.
pub(crate) async fn check_warn(
    State(state): State<Ctx>,
    Path(check_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    check_with(state, check_id, raw, Health::Warning).await
}

/// `PUT /v1/agent/check/fail/{check_id}[?note=]`: critical.
pub(crate) async fn check_fail(
    State(state): State<Ctx>,
    Path(check_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    check_with(state, check_id, raw, Health::Critical).await
}

/// `PUT /v1/agent/check/update/{check_id}` with `{"Status": …, "Output": …}`.
pub(crate) async fn check_update(
    State(state): State<Ctx>,
    Path(check_id): Path<String>,
    RawQuery(raw): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    ReadParams::parse(raw.as_deref(), &state)?;
    let bytes = body_bytes(body)?;
    let value = json_body(&bytes)?;
    let (status, output) = wire::parse_check_update(&value).map_err(body_error)?;
    set_check(&state, &check_id, status, &output).await
}

/// `GET /v1/agent/checks`: every check on this agent, keyed by check id.
pub(crate) async fn checks(
    State(state): State<Ctx>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(raw.as_deref(), &state)?;
    super::health::no_filter(&params, "/v1/agent/checks")?;
    let answer = state.catalog.query(&Query::default(), &Page::default());
    let node = state.consul.node();
    let mut map = serde_json::Map::new();
    for instance in &answer.instances {
        for check in state.consul.views(instance) {
            let body = wire::health_check(instance, &check, node);
            map.insert(
                check.id.clone(),
                serde_json::to_value(body).unwrap_or_default(),
            );
        }
    }
    Ok(json(&map, params.pretty))
}

/// `GET /v1/agent/self`: what clients read at start-up (`Config.Datacenter`,
/// `Config.NodeName`, `Member`).
pub(crate) async fn agent_self(
    State(state): State<Ctx>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(raw.as_deref(), &state)?;
    let node = state.consul.node();
    let body = json!({
        "Config": {
            "Datacenter": node.datacenter,
            "PrimaryDatacenter": node.datacenter,
            "NodeName": node.name,
            "NodeID": node.id,
            "Server": true,
            "Revision": "",
            "Version": CONSUL_VERSION,
            "BuildDate": "",
        },
        "DebugConfig": {},
        "Coord": null,
        "Member": member(&state),
        "Stats": {
            "svcmeta": {
                "version": env!("CARGO_PKG_VERSION"),
                "store": state.catalog.store_kind(),
                "revision": state.catalog.revision().to_string(),
            }
        },
        "Meta": node.meta,
    });
    Ok(json(&body, params.pretty))
}

fn member(state: &Ctx) -> serde_json::Value {
    let node = state.consul.node();
    json!({
        "Name": node.name,
        "Addr": node.address,
        "Port": 8301,
        "Tags": {
            "dc": node.datacenter,
            "role": "consul",
            "build": format!("{CONSUL_VERSION}:svcmeta"),
            "port": "8300",
            "id": node.id,
            "vsn": "2",
        },
        "Status": 1,
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    })
}

/// `GET /v1/agent/members`: this node alone.
pub(crate) async fn members(
    State(state): State<Ctx>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(raw.as_deref(), &state)?;
    Ok(json(&json!([member(&state)]), params.pretty))
}

/// `GET /v1/status/leader`: this node, at Consul's server port.
pub(crate) async fn leader(
    State(state): State<Ctx>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(raw.as_deref(), &state)?;
    let address = format!("{}:8300", state.consul.node().address);
    Ok(json(&address, params.pretty))
}

/// `GET /v1/status/peers`: this node alone.
pub(crate) async fn peers(
    State(state): State<Ctx>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(raw.as_deref(), &state)?;
    let address = format!("{}:8300", state.consul.node().address);
    Ok(json(&[address], params.pretty))
}
