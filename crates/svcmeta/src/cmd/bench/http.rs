//! The HTTP part of `svcmeta bench`: the real server (`svcmeta_server::run`) on a loopback
//! port, and two in-repo load generators that report throughput, latency, and their own CPU
//! time (per-thread `/proc/thread-self` deltas), so the server's share of the 2 cores is
//! visible too:
//! - [`load_raw`], the main one: a few client threads, each an event loop (a current-thread
//!   tokio runtime) over many keep-alive connections that send prepared HTTP/1.1 requests and
//!   read answers by `Content-Length`, one request in flight per connection (no pipelining),
//!   as `wrk` does. Its client cost is a few µs per request.
//! - [`load`]: std threads, each with its own keep-alive connection (ureq); a heavier client
//!   (~50 µs of CPU per request) that needs a thread switch per request, kept for comparison
//!   with earlier figures.

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

    /// The listening address.
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
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
    /// Which load generator: `raw` (event loops over raw HTTP/1.1) or `ureq` (one blocking
    /// thread per connection).
    pub(crate) client: &'static str,
    /// Client threads.
    pub(crate) client_threads: usize,
    /// Concurrent keep-alive connections.
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

/// What a load run was: everything of a [`LoadRun`] that is not counted.
struct Identity<'a> {
    endpoint: &'a str,
    client: &'static str,
    client_threads: usize,
    connections: usize,
    distinct_urls: usize,
    seconds: f64,
}

impl LoadRun {
    /// The figures of a run from its totals: every answered request's latency, the non-200
    /// answers, the body bytes, the client threads' CPU and the whole process's CPU seconds.
    fn from_totals(
        run: Identity<'_>,
        latencies: Vec<Duration>,
        errors: usize,
        bytes: usize,
        client_cpu: f64,
        process_cpu: f64,
    ) -> LoadRun {
        let requests = latencies.len();
        let server_cpu = (process_cpu - client_cpu).max(0.0);
        let per_request = |amount: f64| {
            if requests > 0 {
                amount / requests as f64
            } else {
                0.0
            }
        };
        LoadRun {
            endpoint: run.endpoint.to_string(),
            client: run.client,
            client_threads: run.client_threads,
            connections: run.connections,
            distinct_urls: run.distinct_urls,
            seconds: run.seconds,
            requests,
            queries_per_s: rate(requests, run.seconds),
            latency: Latency::of(&latencies),
            errors,
            mean_response_bytes: per_request(bytes as f64),
            client_cpu_s: client_cpu,
            server_cpu_s: server_cpu,
            client_cpu_us_per_query: per_request(client_cpu * 1e6),
            server_cpu_us_per_query: per_request(server_cpu * 1e6),
        }
    }
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
    Ok(LoadRun::from_totals(
        Identity {
            endpoint,
            client: "ureq",
            client_threads: connections,
            connections,
            distinct_urls: urls.len(),
            seconds,
        },
        latencies,
        errors,
        bytes,
        client_cpu,
        process_cpu,
    ))
}

/// One answer read by the raw client: the status and the body length.
struct RawAnswer {
    status: u16,
    body_len: usize,
}

/// The end of the header block (`\r\n\r\n`), as the index just past it.
pub(crate) fn header_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
}

/// The status code and `Content-Length` of a header block.
pub(crate) fn parse_head(head: &[u8]) -> anyhow::Result<(u16, usize)> {
    let text = std::str::from_utf8(head).context("answer head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                let length = value
                    .trim()
                    .parse::<usize>()
                    .with_context(|| format!("bad content-length {value:?}"))?;
                return Ok((status, length));
            }
        }
    }
    anyhow::bail!("answer without content-length (status {status})")
}

/// One keep-alive connection of the raw client.
struct RawConnection {
    stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
}

impl RawConnection {
    async fn open(address: SocketAddr) -> anyhow::Result<RawConnection> {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        Ok(RawConnection {
            stream,
            buffer: Vec::with_capacity(64 * 1024),
        })
    }

    /// Sends one prepared request and reads its answer.
    async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<RawAnswer> {
        self.write_all(request).await.context("sending a request")?;
        self.buffer.clear();
        let (status, head_len, body_len) = loop {
            self.read_more().await?;
            if let Some(end) = header_end(&self.buffer) {
                let (status, length) = parse_head(&self.buffer[..end])?;
                break (status, end, length);
            }
            anyhow::ensure!(self.buffer.len() < 64 * 1024, "answer head too large");
        };
        let total = head_len + body_len;
        anyhow::ensure!(total as u64 <= MAX_BODY, "answer too large");
        while self.buffer.len() < total {
            self.read_more().await?;
        }
        anyhow::ensure!(
            self.buffer.len() == total,
            "the server sent more than one answer"
        );
        Ok(RawAnswer { status, body_len })
    }

    async fn write_all(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            self.stream.writable().await?;
            match self.stream.try_write(bytes) {
                Ok(written) => bytes = &bytes[written..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Appends what the socket has (at least one byte) to the buffer.
    async fn read_more(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            self.stream.readable().await.context("reading")?;
            match self.stream.try_read(&mut chunk) {
                Ok(0) => anyhow::bail!("the server closed the connection"),
                Ok(read) => {
                    self.buffer.extend_from_slice(&chunk[..read]);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("reading"),
            }
        }
    }
}

/// What one connection of the raw client did in the measured time.
#[derive(Default)]
struct ConnectionResult {
    latencies: Vec<Duration>,
    errors: usize,
    bytes: usize,
}

/// Drives `paths` (path and query, e.g. `/api/v1/instances?…`) against `address` from
/// `threads` client threads with `connections` keep-alive connections in all, for `duration`
/// after one warm-up pass over every path. Each thread is an event loop over its share of the
/// connections; each connection has one request in flight at a time.
pub(crate) fn load_raw(
    endpoint: &str,
    address: SocketAddr,
    paths: &[String],
    threads: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<LoadRun> {
    anyhow::ensure!(!paths.is_empty(), "no URL to load");
    let threads = threads.max(1);
    let connections = connections.max(threads);
    let requests: Arc<[Vec<u8>]> = paths
        .iter()
        .map(|path| format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").into_bytes())
        .collect();
    // Every thread opens its connections and warms up, then all start measuring together.
    let start = std::sync::Barrier::new(threads + 1);
    let start = &start;
    let (results, process_cpu, seconds) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let requests = Arc::clone(&requests);
                scope.spawn(move || -> anyhow::Result<(Vec<ConnectionResult>, f64)> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("client runtime");
                    let runtime = match runtime {
                        Ok(runtime) => runtime,
                        Err(error) => {
                            start.wait();
                            start.wait();
                            return Err(error);
                        }
                    };
                    // Connections of this thread: t, t + threads, …
                    let mine: Vec<usize> = (t..connections).step_by(threads).collect();
                    let opened = runtime.block_on(async {
                        let mut opened = Vec::new();
                        for &c in &mine {
                            let mut connection = RawConnection::open(address).await?;
                            // Warm-up: this connection's share of the paths, once.
                            for request in requests.iter().skip(c).step_by(connections) {
                                connection.exchange(request).await?;
                            }
                            opened.push((c, connection));
                        }
                        anyhow::Ok(opened)
                    });
                    start.wait();
                    let cpu_before = thread_cpu_seconds();
                    start.wait();
                    let opened = opened?;
                    let deadline = tokio::time::Instant::now() + duration;
                    let results = runtime.block_on(async {
                        let mut tasks = tokio::task::JoinSet::new();
                        for (c, mut connection) in opened {
                            let requests = Arc::clone(&requests);
                            tasks.spawn(async move {
                                let mut result = ConnectionResult {
                                    latencies: Vec::with_capacity(1 << 16),
                                    ..ConnectionResult::default()
                                };
                                let mut next = c;
                                while tokio::time::Instant::now() < deadline {
                                    let request = &requests[next % requests.len()];
                                    next += connections;
                                    let began = Instant::now();
                                    let answer = connection.exchange(request).await?;
                                    result.latencies.push(began.elapsed());
                                    result.bytes += answer.body_len;
                                    if answer.status != 200 {
                                        result.errors += 1;
                                    }
                                }
                                anyhow::Ok(result)
                            });
                        }
                        let mut results = Vec::new();
                        while let Some(joined) = tasks.join_next().await {
                            results.push(joined.context("a client task failed")??);
                        }
                        anyhow::Ok(results)
                    })?;
                    Ok((results, thread_cpu_seconds() - cpu_before))
                })
            })
            .collect();
        start.wait();
        let process_before = process_cpu_seconds();
        let started = Instant::now();
        start.wait();
        let results: Vec<anyhow::Result<(Vec<ConnectionResult>, f64)>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a client thread panicked")))
            })
            .collect();
        let seconds = started.elapsed().as_secs_f64();
        (results, process_cpu_seconds() - process_before, seconds)
    });
    let mut latencies = Vec::new();
    let (mut errors, mut bytes, mut client_cpu) = (0usize, 0usize, 0.0f64);
    for result in results {
        let (connections, cpu) = result?;
        client_cpu += cpu;
        for connection in connections {
            latencies.extend(connection.latencies);
            errors += connection.errors;
            bytes += connection.bytes;
        }
    }
    Ok(LoadRun::from_totals(
        Identity {
            endpoint,
            client: "raw",
            client_threads: threads,
            connections,
            distinct_urls: paths.len(),
            seconds,
        },
        latencies,
        errors,
        bytes,
        client_cpu,
        process_cpu,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_client_parses_heads() {
        let head =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 12\r\n\r\n";
        assert_eq!(header_end(head), Some(head.len()));
        assert_eq!(parse_head(head).ok(), Some((200, 12)));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert_eq!(header_end(b"HTTP/1.1 200 OK\r\n"), None);
    }
}
