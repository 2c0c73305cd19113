//! svcmeta's asynchronous edge: the catalog (write sequencing), the HTTP APIs and metrics.
//!
//! [`catalog::Catalog`] is the only code that sequences validate → store → registry → notify;
//! [`api::app`] builds the router; [`run`] serves it until a shutdown signal, then lets
//! in-flight requests finish and the committer drain before returning.

pub mod api;
pub mod catalog;
pub mod metrics;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

pub use api::{app, AppState, ServerSettings};
pub use catalog::{
    Catalog, CatalogSettings, Clock, HistoryTrimmed, ManualClock, QueuedWrite, SystemClock,
    WriteError, WriteOutcome,
};

/// Serves the application on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let catalog = Arc::clone(&state.catalog);
    let closing = Arc::clone(&state.catalog);
    // The Consul API's check table, shared by its handlers and the task that applies
    // DeregisterCriticalServiceAfter (which ends with the catalog).
    let consul = Arc::new(api::consul::ConsulState::from_settings(
        &state.settings.consul,
    ));
    let reaper = tokio::spawn(api::consul::reap_loop(
        Arc::clone(&catalog),
        Arc::clone(&consul),
    ));
    let served = axum::serve(listener, api::app_with(state, consul))
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Parked blocking reads answer now and event streams end, so draining is quick.
            closing.begin_shutdown();
        })
        .await;
    reaper.abort();
    // Every acknowledged write is already durable; this finishes anything still queued.
    tokio::task::spawn_blocking(move || catalog.shutdown())
        .await
        .map_err(std::io::Error::other)?;
    served
}
