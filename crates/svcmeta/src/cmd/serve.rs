//! `svcmeta serve`: open the store, bind, serve until SIGINT/SIGTERM, drain, exit.

use std::sync::Arc;

use anyhow::Context;
use svcmeta_server::AppState;

use crate::backend::CommandError;
use crate::config::Config;

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
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
        tracing::info!(
            %address,
            store = catalog.store_kind(),
            instances = catalog.index_stats(0).instances,
            revision = catalog.revision(),
            "svcmeta listening"
        );
        // One line on stdout so scripts and tests learn the bound address (port 0 works).
        println!("svcmeta listening on http://{address}");
        svcmeta_server::run(listener, state, shutdown_signal())
            .await
            .context("server failed")?;
        anyhow::Ok(())
    })?;
    tracing::info!("stopped; every acknowledged write is durable");
    Ok(())
}
