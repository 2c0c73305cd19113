//! svcmeta's asynchronous edge: the catalog (write sequencing), the HTTP APIs and metrics.
//!
//! [`catalog::Catalog`] is the only code that sequences validate → store → registry → notify;
//! [`api::app`] builds the router; [`run`] serves it (HTTP/1.1 and cleartext HTTP/2 on one
//! port) until a shutdown signal, then lets in-flight requests finish and the committer
//! drain before returning.

pub mod api;
pub mod catalog;
pub mod metrics;
mod serve;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

pub use api::{app, AppState, ServerSettings};
pub use catalog::{
    Catalog, CatalogSettings, Clock, HistoryTrimmed, ManualClock, QueuedWrite, ReplicationStatus,
    SystemClock, WriteError, WriteOutcome,
};
pub use serve::{HTTP2_CONNECTION_WINDOW, HTTP2_MAX_CONCURRENT_STREAMS, HTTP2_STREAM_WINDOW};

/// How long a shutdown waits for open connections before dropping them.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
    let draining = Arc::new(tokio::sync::Notify::new());
    let drain_started = Arc::clone(&draining);
    // `with_state(())` turns the routes into services once (what `into_make_service` does),
    // and each connection takes an `Arc` clone of the result: serving the unconverted
    // `Router` would rebuild the whole routing table for every connection (axum clones it
    // deeply and calls `with_state(())`), ~27 KB and dozens of allocations per connection:
    // nearly all of what an idle keep-alive connection cost, and half of what a parked
    // blocking query did.
    let app = api::app_with(state, consul).with_state(());
    let serve = serve::serve(listener, app, async move {
        shutdown.await;
        // Parked blocking reads answer now and event streams end, so draining is quick.
        closing.begin_shutdown();
        drain_started.notify_one();
    });
    // A client that keeps a connection open without sending anything must not hold the
    // shutdown forever: after DRAIN_TIMEOUT the remaining connections are dropped. Every
    // acknowledged write is durable already; an unacknowledged one may or may not land.
    tokio::select! {
        () = serve => {},
        () = async {
            draining.notified().await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } => {
            tracing::warn!("connections still open {DRAIN_TIMEOUT:?} after the shutdown signal; closing them");
        }
    }
    reaper.abort();
    // Every acknowledged write is already durable; this finishes anything still queued.
    tokio::task::spawn_blocking(move || catalog.shutdown())
        .await
        .map_err(std::io::Error::other)
}
