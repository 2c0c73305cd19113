//! The accept loop: every connection speaks HTTP/1.1 or, when it opens with the HTTP/2
//! preface (prior knowledge, cleartext "h2c"), HTTP/2, on the same port.
//!
//! It is `axum::serve`'s loop with one difference: the connections are built here, so the
//! HTTP/2 limits are set here (axum's `serve` exposes none of them). HTTP/1.1 connections
//! are served exactly as `axum::serve` serves them (hyper's defaults, upgrades allowed),
//! and shutdown works the same way: stop accepting, ask every connection to finish
//! gracefully, wait until all have. The drain timeout stays in [`crate::run`].
//! It does not negotiate HTTP/2 through TLS/ALPN or the HTTP/1.1 `Upgrade: h2c` dance.

use std::fmt::Display;
use std::future::Future;
use std::pin::{pin, Pin};
use std::time::Duration;

use axum::serve::Listener;
use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What an HTTP/2 connection opens with (RFC 9113 §3.4); no HTTP/1.1 request starts so.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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
///
/// The protocol is told from the first bytes, peeked, and each connection's task then
/// holds only its own protocol's connection state: hyper-util's `auto` connection is an
/// enum as large as its HTTP/2 variant, which made every HTTP/1.1 connection ~1.5 KB larger.
pub(crate) async fn serve(
    mut listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW);
    // Dropping `signal_rx` tells every connection to finish; `close_tx` learns that every
    // connection has ended when the last `close_rx` clone is dropped (axum's scheme).
    let (signal_tx, signal_rx) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(signal_rx);
    });
    let (close_tx, close_rx) = watch::channel(());
    loop {
        let (stream, _remote) = tokio::select! {
            accepted = Listener::accept(&mut listener) => accepted,
            () = signal_tx.closed() => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let http2 = http2.clone();
        let signal_tx = signal_tx.clone();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            let mut closing = pin!(signal_tx.closed());
            let opens_with_preface = tokio::select! {
                preface = opens_with_http2_preface(&stream) => preface,
                // Nothing was asked yet: there is nothing to finish.
                () = &mut closing => return,
            };
            let io = TokioIo::new(stream);
            match opens_with_preface {
                Ok(true) => {
                    let connection = http2.serve_connection(io, service);
                    drive(connection, closing, |c| c.graceful_shutdown()).await;
                }
                Ok(false) => {
                    // HTTP/1.1 exactly as `axum::serve` serves it: hyper's defaults, upgrades.
                    let connection = http1::Builder::new()
                        .serve_connection(io, service)
                        .with_upgrades();
                    drive(connection, closing, |c| c.graceful_shutdown()).await;
                }
                Err(error) => {
                    tracing::trace!("connection failed before its first request: {error}")
                }
            }
            drop(close_rx);
        });
    }
    drop(close_rx);
    drop(listener);
    close_tx.closed().await;
}

/// Whether the connection starts with the HTTP/2 preface; waits for its first bytes
/// without consuming them. `PRI ` settles it (the HTTP/2 server checks the rest).
async fn opens_with_http2_preface(stream: &TcpStream) -> std::io::Result<bool> {
    let mut start = [0u8; 4];
    loop {
        let peeked = stream.peek(&mut start).await?;
        if peeked == 0 || start[..peeked] != HTTP2_PREFACE[..peeked] {
            return Ok(false);
        }
        if peeked == start.len() {
            return Ok(true);
        }
        // A prefix of `PRI ` arrived alone (peek returns at once while bytes wait): rare,
        // so wait a little rather than spin.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs a connection to its end; once `closing` resolves, asks it to finish gracefully.
async fn drive<C, E>(
    connection: C,
    closing: Pin<&mut impl Future<Output = ()>>,
    graceful: fn(Pin<&mut C>),
) where
    C: Future<Output = Result<(), E>>,
    E: Display,
{
    let mut connection = pin!(connection);
    let mut closing = closing;
    let mut asked_to_close = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::trace!("connection ended with an error: {error:#}");
                }
                return;
            }
            () = closing.as_mut(), if !asked_to_close => {
                asked_to_close = true;
                graceful(connection.as_mut());
            }
        }
    }
}
