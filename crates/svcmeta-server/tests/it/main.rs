//! End-to-end tests of the native HTTP API: a real server on a free loopback port, started
//! in-process, driven over HTTP with ureq.
//!
//! Helpers outside `#[test]` functions panic on unexpected failures too: that is how a test
//! fails, so `expect` is allowed in this test binary.
//!
//! Modules: single-instance writes, bulk writes, queries and paging, serialised pages kept
//! in the cache, input validation and limits, the service/stats/metrics/health endpoints,
//! concurrent clients, HTTP/2 beside HTTP/1.1 on one port, and the Consul-compatible API (`consul`, with its golden fixtures under `fixtures/consul/`).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod bulk;
mod concurrency;
mod consul;
mod endpoints;
mod http2;
mod instances;
mod live;
mod queries;
mod rendered;
mod shared_store;
mod support;
mod validation;
