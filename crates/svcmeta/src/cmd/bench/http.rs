//! The HTTP part of `svcmeta bench`: the real server (`svcmeta_server::run`) on a loopback
//! port, and an in-repo load generator — std threads, each with its own keep-alive
//! connection (ureq) — that reports throughput, latency, and its own CPU time (per-thread
//! `/proc/thread-self` deltas), so the server's share of the 2 cores is visible too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use svcmeta_server::{AppState, Catalog, ServerSettings};

use super::measure::{process_cpu_seconds, rate, thread_cpu_seconds, Latency};

/// A server running on a thread of its own, with its own tokio runtime.
pub(crate) struct Server {
    address: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Serves `catalog` on 127.0.0.1, port 0, with the default server settings and a
    /// multi-threaded runtime (one worker per core, as `svcmeta serve`).
    pub(crate) fn start(catalog: Arc<Catalog>) -> anyhow::Result<Server> {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
        listener
            .set_nonblocking(true)
            .context("non-blocking listener")?;
        let address = listener.local_addr().context("listener address")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the server runtime")?;
        let state = Arc::new(AppState {
            catalog,
            settings: ServerSettings::standard(),
        });
        let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-server".to_string())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    svcmeta_server::run(listener, state, async move {
                        let _ = signal.await;
                    })
                    .await
                })
            })
            .context("starting the server thread")?;
        Ok(Server {
            address,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The base URL.
    pub(crate) fn base(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops the server and waits for it to drain.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the server thread panicked"))?
                .context("the server failed")?;
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Largest answer body read (a Consul health answer lists every instance of a service).
const MAX_BODY: u64 = 1 << 30;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// `GET url`: the status and the body's length.
fn get(agent: &ureq::Agent, url: &str) -> anyhow::Result<(u16, usize)> {
    let mut response = agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .with_context(|| format!("reading the answer to GET {url}"))?;
    Ok((status, body.len()))
}

/// `GET url` once: the status and the body.
pub(crate) fn fetch(url: &str) -> anyhow::Result<(u16, String)> {
    let mut response = agent()
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .with_context(|| format!("reading the answer to GET {url}"))?;
    Ok((status, body))
}

/// What one load run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LoadRun {
    /// The endpoint, with placeholders for the varied parameters.
    pub(crate) endpoint: String,
    /// Concurrent keep-alive connections (one client thread each).
    pub(crate) connections: usize,
    /// Distinct URLs cycled through.
    pub(crate) distinct_urls: usize,
    /// Measured seconds (after one warm-up pass over every URL).
    pub(crate) seconds: f64,
    /// Requests answered in the measured time.
    pub(crate) requests: usize,
    /// Requests per second.
    pub(crate) queries_per_s: f64,
    /// Latency of one request, as the client saw it.
    pub(crate) latency: Latency,
    /// Answers other than 200.
    pub(crate) errors: usize,
    /// Mean body size of an answer.
    pub(crate) mean_response_bytes: f64,
    /// CPU seconds of the client threads.
    pub(crate) client_cpu_s: f64,
    /// CPU seconds of the whole process minus the client's (server, runtime, catalog).
    pub(crate) server_cpu_s: f64,
    /// Client CPU per request.
    pub(crate) client_cpu_us_per_query: f64,
    /// Server CPU per request.
    pub(crate) server_cpu_us_per_query: f64,
}

struct ThreadResult {
    latencies: Vec<Duration>,
    errors: usize,
    bytes: usize,
    cpu_s: f64,
}

/// Drives `urls` from `connections` threads for `duration` after one warm-up pass.
pub(crate) fn load(
    endpoint: &str,
    urls: &[String],
    connections: usize,
    duration: Duration,
) -> anyhow::Result<LoadRun> {
    anyhow::ensure!(!urls.is_empty(), "no URL to load");
    let connections = connections.max(1);
    let agents: Vec<ureq::Agent> = (0..connections).map(|_| agent()).collect();
    // Warm-up: every URL once (fills the result cache, opens the connections).
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = agents
            .iter()
            .enumerate()
            .map(|(t, agent)| {
                scope.spawn(move || -> anyhow::Result<()> {
                    for url in urls.iter().skip(t).step_by(connections) {
                        get(agent, url)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })?;
    let process_before = process_cpu_seconds();
    let started = Instant::now();
    let deadline = started + duration;
    let results: Vec<anyhow::Result<ThreadResult>> = std::thread::scope(|scope| {
        let handles: Vec<_> = agents
            .iter()
            .enumerate()
            .map(|(t, agent)| {
                scope.spawn(move || -> anyhow::Result<ThreadResult> {
                    let cpu_before = thread_cpu_seconds();
                    let mut result = ThreadResult {
                        latencies: Vec::with_capacity(1 << 16),
                        errors: 0,
                        bytes: 0,
                        cpu_s: 0.0,
                    };
                    let mut next = t;
                    while Instant::now() < deadline {
                        let url = &urls[next % urls.len()];
                        next += connections;
                        let began = Instant::now();
                        let (status, bytes) = get(agent, url)?;
                        result.latencies.push(began.elapsed());
                        result.bytes += bytes;
                        if status != 200 {
                            result.errors += 1;
                        }
                    }
                    result.cpu_s = thread_cpu_seconds() - cpu_before;
                    Ok(result)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a client thread panicked")))
            })
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let process_cpu = process_cpu_seconds() - process_before;
    let mut latencies = Vec::new();
    let (mut errors, mut bytes, mut client_cpu) = (0usize, 0usize, 0.0f64);
    for result in results {
        let result = result?;
        latencies.extend(result.latencies);
        errors += result.errors;
        bytes += result.bytes;
        client_cpu += result.cpu_s;
    }
    let requests = latencies.len();
    let server_cpu = (process_cpu - client_cpu).max(0.0);
    let per_query = |cpu: f64| {
        if requests > 0 {
            cpu * 1e6 / requests as f64
        } else {
            0.0
        }
    };
    Ok(LoadRun {
        endpoint: endpoint.to_string(),
        connections,
        distinct_urls: urls.len(),
        seconds,
        requests,
        queries_per_s: rate(requests, seconds),
        latency: Latency::of(&latencies),
        errors,
        mean_response_bytes: if requests > 0 {
            bytes as f64 / requests as f64
        } else {
            0.0
        },
        client_cpu_s: client_cpu,
        server_cpu_s: server_cpu,
        client_cpu_us_per_query: per_query(client_cpu),
        server_cpu_us_per_query: per_query(server_cpu),
    })
}
