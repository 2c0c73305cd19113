//! Router assembly: the native API under `/api/v1`, the Consul-compatible API under `/v1`,
//! `/healthz` and `/metrics`.
//!
//! Only this module and its children know HTTP; the catalog below them does not.

pub mod consul;
pub mod error;
pub mod native;
mod stale;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, put};
use axum::Router;

use crate::catalog::Catalog;

/// Settings of the HTTP edge.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest page a list request may ask for (and the default page size).
    pub max_page: usize,
    /// How many values per dimension `stats` lists.
    pub stats_top: usize,
    /// Limits on filter expressions (length, nesting, regex size).
    pub filter_limits: svcmeta_core::FilterLimits,
    /// The node and datacenter the Consul API reports.
    pub consul: consul::ConsulSettings,
}

impl ServerSettings {
    /// Defaults of DESIGN §7.
    pub fn standard() -> ServerSettings {
        ServerSettings {
            max_body_bytes: 16 * 1024 * 1024,
            max_page: 1000,
            stats_top: 10,
            filter_limits: svcmeta_core::FilterLimits::standard(),
            consul: consul::ConsulSettings::standard(),
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The registry and its store.
    pub catalog: Arc<Catalog>,
    /// HTTP settings.
    pub settings: ServerSettings,
}

/// The whole HTTP application, with a fresh Consul check table.
pub fn app(state: Arc<AppState>) -> Router {
    let consul = Arc::new(consul::ConsulState::from_settings(&state.settings.consul));
    app_with(state, consul)
}

/// The whole HTTP application over a given Consul check table (see [`crate::run`]).
pub fn app_with(state: Arc<AppState>, consul: Arc<consul::ConsulState>) -> Router {
    let body_limit = state.settings.max_body_bytes;
    Router::new()
        .route(
            "/api/v1/instances",
            get(native::list_instances).post(native::post_instances),
        )
        .route(
            "/api/v1/instances/{id}",
            get(native::get_instance)
                .put(native::put_instance)
                .delete(native::delete_instance),
        )
        .route("/api/v1/instances/{id}/renew", put(native::renew_instance))
        .route("/api/v1/services", get(native::list_services))
        .route("/api/v1/events", get(native::events))
        .route("/api/v1/stats", get(native::stats))
        .route("/healthz", get(native::healthz))
        .route("/metrics", get(native::metrics))
        .merge(consul::routes(Arc::clone(&state), consul))
        .fallback(native::not_found)
        .method_not_allowed_fallback(native::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(stale::MarkStaleLayer::new(Arc::clone(&state)))
        .with_state(state)
}
