//! `/v1/catalog/*`: service names with tags, the instances of one service (`ServiceNode`
//! rows), the node list, one node with its services, and the datacenters.
//!
//! Every read blocks on `index`/`wait`: `/v1/catalog/service/{name}` on the service's own
//! revision (so churn elsewhere does not wake it), the others on the global revision.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use svcmeta_core::{Instance, Page, Query};

use super::wire;
use super::{
    block, filter_matches, has_tags, json, node_info, read_response, service_instances,
    service_query, Ctx, Endpoint, ReadParams,
};
use crate::api::error::ApiError;

/// `GET /v1/catalog/services`: service name → the distinct tags of its matching instances
/// (sorted). `filter` and `node-meta` narrow the instances; a service is listed when at least
/// one instance matches.
pub(crate) async fn services(
    State(state): State<Ctx>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(raw.as_deref(), &state)?;
    let filter = params.compile_filter(Endpoint::Catalog, &state)?;
    let catalog = &state.catalog;
    block(catalog, params.blocking, || catalog.revision()).await;
    let mut body: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let index;
    if !params.node_meta_matches(&state) {
        index = catalog.revision();
    } else if filter.is_none() {
        let (summaries, revision) = catalog.services();
        index = revision;
        for summary in summaries {
            body.insert(summary.name, summary.tags);
        }
    } else {
        // The listing's spelling of each service (its oldest live instance's).
        let (summaries, revision) = catalog.services();
        index = revision;
        let names: BTreeMap<String, String> = summaries
            .into_iter()
            .map(|s| (s.name.to_ascii_lowercase(), s.name))
            .collect();
        let answer = catalog.query(&Query::default(), &Page::default());
        let node = node_info(&state);
        let mut tags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for instance in answer
            .instances
            .iter()
            .filter(|i| filter_matches(filter.as_ref(), i, &node))
        {
            let key = instance.service().to_ascii_lowercase();
            let name = names
                .get(&key)
                .cloned()
                .unwrap_or_else(|| instance.service().to_string());
            tags.entry(name)
                .or_default()
                .extend(instance.fields.tags().map(str::to_string));
        }
        body = tags
            .into_iter()
            .map(|(name, tags)| (name, tags.into_iter().collect()))
            .collect();
    }
    Ok(read_response(&body, params.pretty, index))
}

/// The instances of `name` that pass `tag`, `node-meta`, `filter` and (for health reads)
/// `passing`, after blocking on the service's index; with that index.
pub(super) async fn matching_instances(
    state: &Ctx,
    name: &str,
    params: &ReadParams,
    endpoint: Endpoint,
) -> Result<(u64, Vec<Arc<Instance>>), ApiError> {
    let filter = params.compile_filter(endpoint, state)?;
    let catalog = &state.catalog;
    let query = service_query(name);
    block(catalog, params.blocking, || catalog.scope_revision(&query)).await;
    let (index, instances) = service_instances(catalog, name);
    if !params.node_meta_matches(state) {
        return Ok((index, Vec::new()));
    }
    let node = node_info(state);
    let kept = instances
        .into_iter()
        .filter(|i| has_tags(i, &params.tags))
        .filter(|i| !params.passing || i.health == svcmeta_core::Health::Passing)
        .filter(|i| filter_matches(filter.as_ref(), i, &node))
        .collect();
    Ok((index, kept))
}

/// `GET /v1/catalog/service/{name}`: `ServiceNode` rows; `[]` for an unknown service.
pub(crate) async fn service(
    State(state): State<Ctx>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = ReadParams::parse(raw.as_deref(), &state)?;
    // `passing` belongs to the health endpoint; the catalog lists every instance.
    params.passing = false;
    let (index, instances) = matching_instances(&state, &name, &params, Endpoint::Catalog).await?;
    let node = state.consul.node();
    let rows: Vec<wire::ServiceNode> = instances
        .iter()
        .map(|i| wire::service_node(i, node))
        .collect();
    Ok(read_response(&rows, params.pretty, index))
}

/// `GET /v1/catalog/nodes`: svcmeta's one node (`filter` over `Node`, `Datacenter`, `Meta`).
pub(crate) async fn nodes(
    State(state): State<Ctx>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(raw.as_deref(), &state)?;
    let filter = params.compile_filter(Endpoint::Nodes, &state)?;
    let catalog = &state.catalog;
    block(catalog, params.blocking, || catalog.revision()).await;
    let index = catalog.revision();
    let node = state.consul.node();
    // A node filter names node fields only, so any instance stands in for the row.
    let keep = params.node_meta_matches(&state)
        && filter.as_ref().is_none_or(|filter| {
            let stand_in = node_stand_in();
            filter.matches(&stand_in, &node_info(&state))
        });
    let rows: Vec<wire::NodeBody> = if keep { vec![node.body()] } else { Vec::new() };
    Ok(read_response(&rows, params.pretty, index))
}

/// An instance for evaluating filters that only name node fields.
fn node_stand_in() -> Instance {
    Instance {
        fields: svcmeta_core::InstanceFields {
            id: String::new(),
            service: svcmeta_core::Text::from(""),
            address: String::new(),
            port: 0,
            tags: Box::default(),
            version: None,
            environment: None,
            region: None,
            meta: svcmeta_core::Meta::default(),
            ttl_ms: None,
        },
        health: svcmeta_core::Health::Passing,
        create_revision: 0,
        modify_revision: 0,
        registered_at: 0,
        updated_at: 0,
    }
}

/// `GET /v1/catalog/node/{node}`: the node and its services keyed by id; `null` for another
/// node, as Consul.
pub(crate) async fn node(
    State(state): State<Ctx>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(raw.as_deref(), &state)?;
    let catalog = &state.catalog;
    block(catalog, params.blocking, || catalog.revision()).await;
    let index = catalog.revision();
    let node = state.consul.node();
    if name != node.name {
        return Ok(read_response(
            &serde_json::Value::Null,
            params.pretty,
            index,
        ));
    }
    let answer = catalog.query(&Query::default(), &Page::default());
    let services: serde_json::Map<String, serde_json::Value> = answer
        .instances
        .iter()
        .map(|i| {
            (
                i.id().to_string(),
                serde_json::to_value(wire::node_service(i)).unwrap_or_default(),
            )
        })
        .collect();
    let body = serde_json::json!({ "Node": node.body(), "Services": services });
    Ok(read_response(&body, params.pretty, index))
}

/// `GET /v1/catalog/datacenters`: the one datacenter.
pub(crate) async fn datacenters(
    State(state): State<Ctx>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = ReadParams::parse(raw.as_deref(), &state)?;
    Ok(json(&[&state.consul.node().datacenter], params.pretty))
}
