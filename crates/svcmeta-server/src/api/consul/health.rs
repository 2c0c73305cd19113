//! `/v1/health/*`: the instances of a service with their node and checks, the checks of a
//! service, of a node, and every check in a state.
//!
//! Each instance has the checks of the check table (see `checks.rs`), and, as on a real
//! Consul node, the node-level check `serfHealth` (always passing). `passing` keeps the
//! instances whose health is passing, which is exactly those whose every check passes.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use svcmeta_core::{Health, Instance, Page, Query};

use super::wire::{self, HealthCheck};
use super::{
    block, filter_matches, has_tags, node_info, read_response, read_response_bytes,
    service_instances, service_query, to_json, Ctx, Endpoint, ReadParams,
};
use crate::api::error::ApiError;

/// Refuses a non-blank `filter` on an endpoint that has no filterable rows in svcmeta.
pub(super) fn no_filter(params: &ReadParams, path: &str) -> Result<(), ApiError> {
    if params
        .filter
        .as_deref()
        .is_some_and(|f| !svcmeta_core::is_blank_filter(f))
    {
        return Err(ApiError::plain(
            StatusCode::BAD_REQUEST,
            format!("filter is not supported by svcmeta on {path}"),
        ));
    }
    Ok(())
}

fn service_checks(state: &Ctx, instance: &Instance) -> Vec<HealthCheck> {
    let node = state.consul.node();
    state
        .consul
        .views(instance)
        .iter()
        .map(|check| wire::health_check(instance, check, node))
        .collect()
}

/// `GET /v1/health/service/{name}`: `{Node, Service, Checks}` per matching instance.
///
/// The serialised answer is kept with the service's cached page (one per combination of
/// `tag`, `passing`, `filter` and `pretty`), tagged with the check table's generation, so a
/// repeated read serialises nothing until the service or a check changes.
pub(crate) async fn service(
    State(state): State<Ctx>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(raw.as_deref(), &state)?;
    let filter = params.compile_filter(Endpoint::Health, &state)?;
    let catalog = &state.catalog;
    let query = service_query(&name);
    block(catalog, params.blocking, || catalog.scope_revision(&query)).await;
    let index = catalog.scope_revision(&query);
    if !params.node_meta_matches(&state) {
        return Ok(read_response(
            &Vec::<wire::HealthEntry>::new(),
            params.pretty,
            index,
        ));
    }
    // Read before the page and the checks, so the bytes are never newer than their tag.
    let generation = state.consul.generation();
    let (_, page) = catalog.query_page(&query, &Page::default());
    let variant = rendering_variant(&params);
    if let Some(bytes) = variant
        .as_deref()
        .and_then(|variant| page.renderings.get(variant, generation))
    {
        return Ok(read_response_bytes(bytes, index));
    }
    let view_node = node_info(&state);
    let kept = page
        .instances
        .iter()
        .filter(|i| has_tags(i, &params.tags))
        .filter(|i| !params.passing || i.health == Health::Passing)
        .filter(|i| filter_matches(filter.as_ref(), i, &view_node));
    let bytes: Arc<[u8]> = if params.pretty {
        let node = state.consul.node();
        let entries: Vec<wire::HealthEntry> = kept
            .map(|instance| {
                let mut checks = vec![wire::serf_check(node)];
                checks.extend(service_checks(&state, instance));
                wire::HealthEntry {
                    node: node.body(),
                    service: wire::node_service(instance),
                    checks,
                }
            })
            .collect();
        to_json(&entries, true)?.into()
    } else {
        compact_entries(&state, kept)
            .map_err(|e| ApiError::plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .into()
    };
    if let Some(variant) = variant {
        page.renderings
            .put(&variant, generation, Arc::clone(&bytes));
    }
    Ok(read_response_bytes(bytes, index))
}

/// The compact JSON array of health entries, byte for byte what serialising
/// `Vec<HealthEntry>` gives, with the node and its `serfHealth` check (the same in every
/// entry) serialised once instead of built and serialised per entry.
fn compact_entries<'a>(
    state: &Ctx,
    instances: impl Iterator<Item = &'a Arc<Instance>>,
) -> Result<Vec<u8>, serde_json::Error> {
    let node = state.consul.node();
    let node_json = serde_json::to_vec(&node.body())?;
    let serf_json = serde_json::to_vec(&wire::serf_check(node))?;
    let mut out = Vec::with_capacity(4096);
    out.push(b'[');
    for (n, instance) in instances.enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"Node\":");
        out.extend_from_slice(&node_json);
        out.extend_from_slice(b",\"Service\":");
        serde_json::to_writer(&mut out, &wire::node_service(instance))?;
        out.extend_from_slice(b",\"Checks\":[");
        out.extend_from_slice(&serf_json);
        for check in service_checks(state, instance) {
            out.push(b',');
            serde_json::to_writer(&mut out, &check)?;
        }
        out.extend_from_slice(b"]}");
    }
    out.push(b']');
    Ok(out)
}

/// Longest per-request part of a rendering's name; longer requests (a huge filter) are
/// answered without keeping their bytes.
const MAX_VARIANT_BYTES: usize = 4096;

/// The name under which a health answer is kept with the service's page: everything of the
/// request that shapes the body besides the page and the check table (injective: `Debug`
/// quotes and escapes the strings).
fn rendering_variant(params: &ReadParams) -> Option<String> {
    let variant = format!(
        "consul-health|passing={}|pretty={}|tags={:?}|filter={:?}",
        params.passing, params.pretty, params.tags, params.filter
    );
    (variant.len() <= MAX_VARIANT_BYTES).then_some(variant)
}

/// `GET /v1/health/checks/{service}`: the service checks of every instance of a service.
pub(crate) async fn checks(
    State(state): State<Ctx>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(raw.as_deref(), &state)?;
    no_filter(&params, "/v1/health/checks")?;
    let catalog = &state.catalog;
    let query = service_query(&name);
    block(catalog, params.blocking, || catalog.scope_revision(&query)).await;
    let (index, instances) = service_instances(catalog, &name);
    let checks: Vec<HealthCheck> = instances
        .iter()
        .flat_map(|instance| service_checks(&state, instance))
        .collect();
    Ok(read_response(&checks, params.pretty, index))
}

/// Every check: the node's `serfHealth`, then each instance's.
fn all_checks(state: &Ctx) -> Vec<HealthCheck> {
    let answer = state.catalog.query(&Query::default(), &Page::default());
    let mut checks = vec![wire::serf_check(state.consul.node())];
    for instance in &answer.instances {
        checks.extend(service_checks(state, instance));
    }
    checks
}

/// `GET /v1/health/state/{state}`: every check in a state (`any` for all).
pub(crate) async fn state(
    State(state): State<Ctx>,
    Path(wanted): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(raw.as_deref(), &state)?;
    no_filter(&params, "/v1/health/state")?;
    let wanted = match wanted.as_str() {
        "any" => None,
        word => Some(
            Health::parse(word)
                .ok_or_else(|| ApiError::plain(StatusCode::BAD_REQUEST, "Invalid state"))?,
        ),
    };
    let catalog = &state.catalog;
    block(catalog, params.blocking, || catalog.revision()).await;
    let index = catalog.revision();
    let checks: Vec<HealthCheck> = if params.node_meta_matches(&state) {
        all_checks(&state)
            .into_iter()
            .filter(|c| wanted.is_none_or(|w| c.status() == w.as_str()))
            .collect()
    } else {
        Vec::new()
    };
    Ok(read_response(&checks, params.pretty, index))
}

/// `GET /v1/health/node/{node}`: every check of the node (`[]` for another node).
pub(crate) async fn node(
    State(state): State<Ctx>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(raw.as_deref(), &state)?;
    no_filter(&params, "/v1/health/node")?;
    let catalog = &state.catalog;
    block(catalog, params.blocking, || catalog.revision()).await;
    let index = catalog.revision();
    let checks = if name == state.consul.node().name {
        all_checks(&state)
    } else {
        Vec::new()
    };
    Ok(read_response(&checks, params.pretty, index))
}
