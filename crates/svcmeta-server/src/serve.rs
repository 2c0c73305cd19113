//! The accept loop: every connection speaks HTTP/1.1 or, when it opens with the HTTP/2
//! preface (prior knowledge, cleartext "h2c"), HTTP/2, on the same port.
//!
//! It is `axum::serve`'s loop with one difference: the connection builder is ours, so the
//! HTTP/2 limits are set here (axum's `serve` exposes none of them). HTTP/1.1 connections
//! are served exactly as `axum::serve` serves them (same builder defaults, upgrades allowed),
//! and shutdown works the same way: stop accepting, ask every connection to finish
//! gracefully, wait until all have. The drain timeout stays in [`crate::run`].
//! It does not negotiate HTTP/2 through TLS/ALPN or the HTTP/1.1 `Upgrade: h2c` dance.

use std::future::Future;
use std::pin::pin;

use axum::serve::Listener;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

/// How many streams (requests in flight, parked blocking queries included) one HTTP/2
/// connection may carry at once. A watch client multiplexes its blocking queries over one
/// connection, so this is far above hyper's default of 200; a client that needs more
/// opens another connection.
pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 16_384;

/// The receive window of one HTTP/2 stream: how much request body a client may send ahead
/// of the handler reading it. The protocol's default (64 KiB − 1) rather than hyper's
/// 1 MiB: requests are small JSON documents, and a window is a promise to buffer that much
/// per stream, which for thousands of parked streams must stay small.
pub const HTTP2_STREAM_WINDOW: u32 = 65_535;

/// The receive window of a whole HTTP/2 connection (hyper's default): what all its
/// streams together may have in flight towards the server.
pub const HTTP2_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// Serves `router` on `listener` until `shutdown` resolves, then waits until every
/// connection has finished (HTTP/1.1: its request in flight; HTTP/2: its open streams,
/// after a GOAWAY).
///
/// `router` must already be converted for serving (`with_state(())`, what
/// `Router::into_make_service` does): each connection then takes an `Arc` clone of it
/// instead of rebuilding the routing table (see [`crate::run`]).
pub(crate) async fn serve(
    mut listener: impl Listener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let builder = connection_builder();
    // Dropping `signal_rx` tells every connection to finish; `close_tx` learns that every
    // connection has ended when the last `close_rx` clone is dropped (axum's scheme).
    let (signal_tx, signal_rx) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(signal_rx);
    });
    let (close_tx, close_rx) = watch::channel(());
    loop {
        let (io, _remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = signal_tx.closed() => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let signal_tx = signal_tx.clone();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            let mut connection =
                pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
            let mut closing = pin!(signal_tx.closed());
            let mut asked_to_close = false;
            loop {
                tokio::select! {
                    served = connection.as_mut() => {
                        if let Err(error) = served {
                            tracing::trace!("connection ended with an error: {error:#}");
                        }
                        break;
                    }
                    () = &mut closing, if !asked_to_close => {
                        asked_to_close = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(close_rx);
        });
    }
    drop(close_rx);
    drop(listener);
    close_tx.closed().await;
}

/// HTTP/1.1 with hyper's defaults (those `axum::serve` uses), HTTP/2 with our limits.
fn connection_builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW);
    builder
}
