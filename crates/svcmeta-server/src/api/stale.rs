//! `X-Svcmeta-Stale: true` (and Consul's `X-Consul-KnownLeader: false`) on every answer of a
//! node whose shared store is unreachable, as a tower layer around every route.
//!
//! It replaces axum's `map_response_with_state`, whose boxed future also keeps a clone of
//! the inner service and room for the request: ~730 B for as long as the request runs,
//! which for a parked blocking query is minutes. This layer's future is the inner future
//! and the state, not boxed. It only edits headers; it never changes a status or a body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::Response;
use tower_layer::Layer;
use tower_service::Service;

use super::native::STALE_HEADER;
use super::AppState;

/// The layer: wraps each route in [`MarkStale`].
#[derive(Clone)]
pub(crate) struct MarkStaleLayer {
    state: Arc<AppState>,
}

impl MarkStaleLayer {
    pub(crate) fn new(state: Arc<AppState>) -> MarkStaleLayer {
        MarkStaleLayer { state }
    }
}

impl<S> Layer<S> for MarkStaleLayer {
    type Service = MarkStale<S>;

    fn layer(&self, inner: S) -> MarkStale<S> {
        MarkStale {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

/// A route whose answers are marked while the node is stale.
#[derive(Clone)]
pub(crate) struct MarkStale<S> {
    inner: S,
    state: Arc<AppState>,
}

impl<S> Service<Request> for MarkStale<S>
where
    S: Service<Request, Response = Response>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = S::Error;
    type Future = MarkStaleFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        MarkStaleFuture {
            inner: self.inner.call(request),
            state: Arc::clone(&self.state),
        }
    }
}

/// The inner route's answer, marked when it is ready.
pub(crate) struct MarkStaleFuture<F> {
    inner: F,
    state: Arc<AppState>,
}

impl<F, E> Future for MarkStaleFuture<F>
where
    F: Future<Output = Result<Response, E>> + Unpin,
{
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = ready!(Pin::new(&mut self.inner).poll(cx))?;
        if self.state.catalog.is_stale() {
            let headers = response.headers_mut();
            headers.insert(STALE_HEADER, HeaderValue::from_static("true"));
            if headers.contains_key("x-consul-knownleader") {
                headers.insert("x-consul-knownleader", HeaderValue::from_static("false"));
            }
        }
        Poll::Ready(Ok(response))
    }
}
