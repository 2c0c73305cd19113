//! `svcmeta serve`: open the store, bind, serve until SIGINT/SIGTERM, drain, exit.

use std::sync::Arc;

use anyhow::Context;
use svcmeta_server::AppState;

use crate::backend::CommandError;
use crate::config::Config;

/// Installs the SIGINT and SIGTERM handlers now (so a signal that arrives right after the
/// server announces itself is never the default, killing action) and returns a future that
/// resolves on the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let (mut interrupt, mut terminate) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        )
    };
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing in-flight requests");
    })
}

/// Runs the server.
pub(crate) fn run(config: &Config) -> Result<(), CommandError> {
    let catalog = Arc::new(config.open_catalog()?);
    let state = Arc::new(AppState {
        catalog: Arc::clone(&catalog),
        settings: config.server.clone(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let address = listener.local_addr().context("listener address")?;
        let shutdown = shutdown_signal()?;
        tracing::info!(
            %address,
            store = catalog.store_kind(),
            instances = catalog.index_stats(0).instances,
            revision = catalog.revision(),
            "svcmeta listening"
        );
        // One line on stdout so scripts and tests learn the bound address (port 0 works).
        println!("svcmeta listening on http://{address}");
        svcmeta_server::run(listener, state, shutdown)
            .await
            .context("server failed")?;
        anyhow::Ok(())
    })?;
    if catalog.store_kind() == "memory" {
        tracing::info!("stopped (memory store: nothing was persisted)");
    } else {
        tracing::info!("stopped; every acknowledged write is durable");
    }
    Ok(())
}
