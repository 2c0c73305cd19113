//! The watch part of `svcmeta bench` (issue 6: "100,000 blocking queries held at once at
//! ≤ 1 KB each"): parks N blocking list queries on the real server, measures what they cost
//! the process, then makes one write and checks that every one of them wakes and answers
//! with the body the same query gets after the write.
//!
//! It runs twice, each time on a fresh server and heap. First over HTTP/2 (h2c, prior knowledge): the N
//! queries are streams multiplexed over a few connections (the server's
//! `HTTP2_MAX_CONCURRENT_STREAMS` each), so 100,000 fit under the open-file limit; this is
//! the run `bytes_per_query` reports. Then over HTTP/1.1, one connection per query, as
//! Consul's clients watch, in a child process: both ends of every connection live in this process, so N is
//! bounded by the open-file limit (two descriptors per query); the bench raises the soft
//! limit to the hard one first and reports when N had to be smaller than asked.
//!
//! The clients are as light as a client can be, so that the process's RSS delta is the
//! server's: plain std sockets, and for HTTP/2 a minimal client (`h2c.rs`) that keeps no
//! state per parked stream. Every connection first asks one ordinary query (so the first
//! RSS step measures the open, idle connections), then sends its blocking queries, which
//! are not read until the write (the second step is what parking adds).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use svcmeta_core::{validate, InstanceDraft, Mutation};
use svcmeta_server::{Catalog, CatalogSettings, HTTP2_MAX_CONCURRENT_STREAMS};
use svcmeta_store::Store;

use super::h2c;
use super::http::{header_end, parse_head, Server};
use super::measure::rss_bytes;

/// Descriptors kept free for everything else the process has open.
const SPARE_DESCRIPTORS: u64 = 256;

/// Connections opened before waiting for the server to park them (below the listen backlog).
const PARK_BATCH: usize = 64;

/// How long any step of the run may take before it counts as a failure.
const PATIENCE: Duration = Duration::from_secs(120);

/// What the parked-queries run measured: the HTTP/2 run's figures at the top level (what
/// `bytes_per_query` means), the HTTP/1.1 run's beside them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ParkedRun {
    /// N blocking queries as HTTP/2 streams over a few connections.
    #[serde(flatten)]
    pub(crate) http2: Parking,
    /// The same over HTTP/1.1, one connection per query.
    pub(crate) http1: Parking,
}

/// One protocol's parked queries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Parking {
    /// `h2c` (HTTP/2 with prior knowledge) or `http/1.1`.
    pub(crate) protocol: String,
    /// Blocking queries asked for.
    pub(crate) requested: usize,
    /// Blocking queries parked at once (smaller than asked when the open-file limit is).
    pub(crate) parked: usize,
    /// TCP connections carrying them.
    pub(crate) connections: usize,
    /// Why fewer were parked than asked, if they were.
    pub(crate) limited_by: Option<String>,
    /// Soft and hard `RLIMIT_NOFILE` after raising the soft limit.
    pub(crate) open_file_limit: (u64, u64),
    /// The request each query sent (path and query).
    pub(crate) request: String,
    /// Resident memory before the connections were opened.
    pub(crate) rss_before_bytes: u64,
    /// Resident memory with every connection open and idle after one ordinary query.
    pub(crate) rss_connected_bytes: u64,
    /// Resident memory with every query parked.
    pub(crate) rss_parked_bytes: u64,
    /// (RSS parked − RSS before) / parked: the server's memory per parked query with its
    /// share of the connections (the client keeps no per-query state but a socket for
    /// HTTP/1.1, nothing for HTTP/2).
    pub(crate) bytes_per_query: f64,
    /// (RSS connected − RSS before) / parked: the idle connections, per query (HTTP/1.1:
    /// hyper's buffers and the connection task of each; HTTP/2: a few connections shared).
    pub(crate) connection_bytes: f64,
    /// (RSS parked − RSS connected) / parked: what parking the query adds to its connection
    /// (the handler's state, the watch receiver, the timer; for HTTP/2 also the stream).
    pub(crate) query_bytes_beyond_connection: f64,
    /// Seconds to open and park them all.
    pub(crate) park_s: f64,
    /// Queries answered 200 after the one write with the body the same query gets after it
    /// (all of them, unless something is wrong).
    pub(crate) woken: usize,
    /// Seconds from the write being acknowledged to the last answer read.
    pub(crate) wake_s: f64,
}

/// Raises the soft open-file limit to the hard one; returns (soft, hard) as they are after.
fn raise_open_file_limit() -> (u64, u64) {
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() {
        if soft < hard && rlimit::Resource::NOFILE.set(hard, hard).is_ok() {
            return (hard, hard);
        }
        return (soft, hard);
    }
    (0, 0)
}

/// Descriptors this process has open.
fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count() as u64)
        .unwrap_or(0)
}

/// Reads one whole HTTP/1.1 answer from a blocking socket: its status and body.
fn read_answer(stream: &mut TcpStream) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let read = stream.read(&mut chunk).context("reading a woken answer")?;
        anyhow::ensure!(read > 0, "the server closed a parked connection");
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = header_end(&buffer) {
            let (status, length) = parse_head(&buffer[..end])?;
            while buffer.len() < end + length {
                let read = stream.read(&mut chunk).context("reading a woken answer")?;
                anyhow::ensure!(read > 0, "the server closed a connection mid-answer");
                buffer.extend_from_slice(&chunk[..read]);
            }
            buffer.drain(..end);
            buffer.truncate(length);
            return Ok((status, buffer));
        }
        anyhow::ensure!(buffer.len() < 64 * 1024, "answer head too large");
    }
}

/// `GET path` over a new HTTP/1.1 connection: the answer every woken query must give.
fn fetch(address: SocketAddr, path: &str) -> anyhow::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(address).context("opening a connection")?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
        .context("sending a request")?;
    let (status, body) = read_answer(&mut stream)?;
    anyhow::ensure!(status == 200, "GET {path} answered {status}");
    Ok(body)
}

/// The watched service of the parked queries.
const WATCHED: &str = "watched";

/// Parks the HTTP/2 queries on a server of its own, before anything else has grown the
/// process's heap, then runs the HTTP/1.1 parking in a child process (`svcmeta bench
/// --parked-http1-only`), so that each starts from a fresh heap: an RSS delta is only the
/// memory the parked queries took when the allocator has no freed, still-resident memory to
/// hand out again (after the 1M phases it has hundreds of MiB, and after the HTTP/2 wake-up
/// the answers of 100,000 streams; either way the delta reads low, even negative).
pub(crate) fn park_on_fresh_server(wanted: usize) -> anyhow::Result<ParkedRun> {
    let http2 = with_fresh_server(|catalog, address, path| {
        park_http2(catalog, address, path, WATCHED, wanted)
    })?;
    let exe = std::env::current_exe().context("locating the svcmeta binary")?;
    let output = std::process::Command::new(exe)
        .args(["bench", "--instances", "0", "--parked-http1-only"])
        .args(["--parked-queries", &wanted.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the HTTP/1.1 parking in a child process")?;
    anyhow::ensure!(
        output.status.success(),
        "the HTTP/1.1 parking failed ({})",
        output.status
    );
    let http1 =
        serde_json::from_slice(&output.stdout).context("reading the HTTP/1.1 parking's figures")?;
    Ok(ParkedRun { http2, http1 })
}

/// The HTTP/1.1 parking alone, on a fresh server (what `--parked-http1-only` runs).
pub(crate) fn park_http1_on_fresh_server(wanted: usize) -> anyhow::Result<Parking> {
    with_fresh_server(|catalog, address, path| park_http1(catalog, address, path, WATCHED, wanted))
}

/// Runs `park` against a server of its own over a small `memory` catalog (20 instances of
/// [`WATCHED`]), with the path of the list query to park.
fn with_fresh_server(
    park: impl FnOnce(&Catalog, SocketAddr, &str) -> anyhow::Result<Parking>,
) -> anyhow::Result<Parking> {
    let catalog = Arc::new(
        Catalog::open(Store::Memory, CatalogSettings::standard())
            .context("opening a memory catalog")?,
    );
    let mut mutations = Vec::new();
    for n in 0..20 {
        let draft: InstanceDraft = serde_json::from_value(serde_json::json!({
            "id": format!("{WATCHED}-{n}"),
            "service": WATCHED,
            "environment": "prod",
            "address": format!("10.0.0.{n}"),
            "port": 8080,
            "tags": ["blue", format!("zone=z{}", n % 3)],
            "version": "1.2.3",
        }))
        .context("a watched instance")?;
        let registration = validate(draft, catalog.limits()).map_err(|e| anyhow::anyhow!("{e}"))?;
        mutations.push(Mutation::Register(registration));
    }
    catalog
        .write_blocking(mutations)
        .map_err(|e| anyhow::anyhow!("registering the watched instances: {e}"))?;
    let server = Server::start(Arc::clone(&catalog))?;
    let path = format!("/api/v1/instances?service={WATCHED}&env=prod&tag=blue&limit=100");
    let run = park(&catalog, server.address(), &path);
    server.stop()?;
    run
}

/// What a parking run knows before it starts: the limit, the request, the baseline.
struct Setup {
    open_file_limit: (u64, u64),
    request_path: String,
    watchers_before: usize,
    rss_before: u64,
}

impl Setup {
    /// Raises the open-file limit, prepares the blocking request at the current revision
    /// and takes the RSS baseline.
    fn take(catalog: &Catalog, path: &str) -> Setup {
        let open_file_limit = raise_open_file_limit();
        let request_path = format!("{path}&index={}&wait=5m", catalog.revision());
        let watchers_before = catalog.watchers();
        // Let the allocator settle after what ran before taking the baseline.
        std::thread::sleep(Duration::from_millis(500));
        Setup {
            open_file_limit,
            request_path,
            watchers_before,
            rss_before: rss_bytes(),
        }
    }

    /// Descriptors left for connections.
    fn available_descriptors(&self) -> u64 {
        self.open_file_limit
            .0
            .saturating_sub(open_descriptors() + SPARE_DESCRIPTORS)
    }

    /// Waits until the server holds `parked` more revision watchers than at the start.
    fn wait_parked(&self, catalog: &Catalog, parked: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        while catalog.watchers() < self.watchers_before + parked {
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {parked} blocking queries parked after {PATIENCE:?}",
                catalog.watchers().saturating_sub(self.watchers_before),
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }
}

/// Registers one new instance of `service`, which wakes every parked query of it; returns
/// when it is acknowledged.
fn wake(catalog: &Catalog, service: &str, id: &str) -> anyhow::Result<Instant> {
    let draft: InstanceDraft = serde_json::from_value(serde_json::json!({
        "id": id,
        "service": service,
        "port": 1,
    }))
    .context("the wake-up instance")?;
    let registration = validate(draft, catalog.limits()).map_err(|e| anyhow::anyhow!("{e}"))?;
    catalog
        .write_blocking(vec![Mutation::Register(registration)])
        .map_err(|e| anyhow::anyhow!("the wake-up write failed: {e}"))?;
    Ok(Instant::now())
}

/// The figures of a run from its RSS samples.
struct Samples {
    rss_connected: u64,
    rss_parked: u64,
    park_s: f64,
    woken: usize,
    wake_s: f64,
}

fn figures(
    protocol: &'static str,
    setup: Setup,
    wanted: usize,
    parked: usize,
    connections: usize,
    limited_by: Option<String>,
    samples: Samples,
) -> Parking {
    let per_query = |high: u64, low: u64| (high as f64 - low as f64) / parked as f64;
    Parking {
        protocol: protocol.to_string(),
        requested: wanted,
        parked,
        connections,
        limited_by,
        open_file_limit: setup.open_file_limit,
        request: setup.request_path,
        rss_before_bytes: setup.rss_before,
        rss_connected_bytes: samples.rss_connected,
        rss_parked_bytes: samples.rss_parked,
        bytes_per_query: per_query(samples.rss_parked, setup.rss_before),
        connection_bytes: per_query(samples.rss_connected, setup.rss_before),
        query_bytes_beyond_connection: per_query(samples.rss_parked, samples.rss_connected),
        park_s: samples.park_s,
        woken: samples.woken,
        wake_s: samples.wake_s,
    }
}

/// One HTTP/2 connection's share of the run, on a thread of its own: connect and ask the
/// ordinary query, report ready, wait for the go, open `streams` blocking queries, then
/// read their answers once the expected body arrives. Returns how many answered 200 with it.
fn watch_over_http2(
    address: SocketAddr,
    warm_up: &str,
    request: &str,
    streams: usize,
    ready: &mpsc::Sender<anyhow::Result<()>>,
    go: &mpsc::Receiver<()>,
    expected: &mpsc::Receiver<Arc<Vec<u8>>>,
) -> anyhow::Result<usize> {
    let connected = (|| {
        let mut connection = h2c::Connection::open(address)?;
        let block = connection.get_block(warm_up);
        connection.send_gets(&block, 1)?;
        connection.read_answers(1, |_, answer| match answer {
            Ok(answer) if answer.status == 200 => Ok(()),
            Ok(answer) => anyhow::bail!("GET {warm_up} answered {}", answer.status),
            Err(code) => anyhow::bail!("GET {warm_up} was reset (error {code})"),
        })?;
        Ok(connection)
    })();
    let mut connection = match connected {
        Ok(connection) => {
            let _ = ready.send(Ok(()));
            connection
        }
        Err(error) => {
            let _ = ready.send(Err(error));
            return Ok(0);
        }
    };
    if go.recv().is_err() {
        return Ok(0);
    }
    let block = connection.get_block(request);
    connection.send_gets(&block, streams)?;
    let mut want: Option<Arc<Vec<u8>>> = None;
    let mut woken = 0;
    connection.read_answers(streams, |_, answer| {
        if want.is_none() {
            want = Some(expected.recv().context("the expected answer")?);
        }
        if let (Ok(answer), Some(want)) = (answer, &want) {
            if answer.status == 200 && answer.body == **want {
                woken += 1;
            }
        }
        Ok(())
    })?;
    Ok(woken)
}

/// Parks up to `wanted` blocking reads of `path` (a list query of `service`, without
/// `index`/`wait`) as HTTP/2 streams, `HTTP2_MAX_CONCURRENT_STREAMS` to a connection,
/// measures the RSS they add, then registers one new instance of `service` and reads
/// every answer.
fn park_http2(
    catalog: &Catalog,
    address: SocketAddr,
    path: &str,
    service: &str,
    wanted: usize,
) -> anyhow::Result<Parking> {
    let setup = Setup::take(catalog, path);
    let per_connection = HTTP2_MAX_CONCURRENT_STREAMS as usize;
    // Both ends of each connection are in this process.
    let max_connections = (setup.available_descriptors() / 2) as usize;
    let connections = wanted.div_ceil(per_connection).min(max_connections);
    let parked = wanted.min(connections * per_connection);
    anyhow::ensure!(parked > 0, "no descriptor left for parked queries");
    let limited_by = (parked < wanted).then(|| {
        format!(
            "open-file limit {} (hard {}): at most {connections} connections of \
             {per_connection} streams fit",
            setup.open_file_limit.0, setup.open_file_limit.1
        )
    });
    let started = Instant::now();
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut gos = Vec::with_capacity(connections);
    let mut expecteds = Vec::with_capacity(connections);
    let mut threads = Vec::with_capacity(connections);
    for n in 0..connections {
        // The first connections carry one more stream each when N does not divide evenly.
        let streams = parked / connections + usize::from(n < parked % connections);
        let (go_tx, go_rx) = mpsc::channel();
        let (expected_tx, expected_rx) = mpsc::channel();
        gos.push(go_tx);
        expecteds.push(expected_tx);
        let ready = ready_tx.clone();
        let warm_up = path.to_string();
        let request = setup.request_path.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("bench-h2-{n}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    watch_over_http2(
                        address,
                        &warm_up,
                        &request,
                        streams,
                        &ready,
                        &go_rx,
                        &expected_rx,
                    )
                })
                .context("starting a client thread")?,
        );
    }
    drop(ready_tx);
    for _ in 0..connections {
        ready_rx
            .recv_timeout(PATIENCE)
            .context("an HTTP/2 connection did not get ready")??;
    }
    std::thread::sleep(Duration::from_millis(200));
    let rss_connected = rss_bytes();
    for go in &gos {
        go.send(()).context("a client thread ended early")?;
    }
    setup.wait_parked(catalog, parked)?;
    let park_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    let rss_parked = rss_bytes();

    let woke_at = wake(catalog, service, "bench-wake-h2")?;
    let expected = Arc::new(fetch(address, path)?);
    for sender in &expecteds {
        // A thread that already failed has dropped its receiver; its error comes from join.
        let _ = sender.send(Arc::clone(&expected));
    }
    let mut woken = 0;
    for thread in threads {
        woken += thread
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    let wake_s = woke_at.elapsed().as_secs_f64();
    Ok(figures(
        "h2c",
        setup,
        wanted,
        parked,
        connections,
        limited_by,
        Samples {
            rss_connected,
            rss_parked,
            park_s,
            woken,
            wake_s,
        },
    ))
}

/// Parks up to `wanted` blocking reads of `path` (a list query of `service`, without
/// `index`/`wait`) over HTTP/1.1, one connection each, on the server at `address`,
/// measures the RSS they add, then registers one new instance of `service` and reads
/// every answer.
fn park_http1(
    catalog: &Catalog,
    address: SocketAddr,
    path: &str,
    service: &str,
    wanted: usize,
) -> anyhow::Result<Parking> {
    let setup = Setup::take(catalog, path);
    let available = setup.available_descriptors() / 2;
    let parked = wanted.min(available as usize);
    let limited_by = (parked < wanted).then(|| {
        format!(
            "open-file limit {} (hard {}): both ends of every connection are in this process, \
             so at most {available} queries fit",
            setup.open_file_limit.0, setup.open_file_limit.1
        )
    });
    anyhow::ensure!(parked > 0, "no descriptor left for parked queries");
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {address}\r\n\r\n",
        setup.request_path
    )
    .into_bytes();
    let warm_up = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").into_bytes();
    let started = Instant::now();
    // First every connection asks one ordinary (non-blocking) query and stays open, as a
    // client's keep-alive connection does between watches: what the connection costs.
    let mut streams = Vec::with_capacity(parked);
    while streams.len() < parked {
        // In batches that fit the listen backlog: a full accept queue drops the SYN and the
        // connection waits a second for the retransmission.
        let batch = PARK_BATCH.min(parked - streams.len());
        let first = streams.len();
        for _ in 0..batch {
            let mut stream = TcpStream::connect(address).context("opening a parked connection")?;
            stream.write_all(&warm_up).context("sending a request")?;
            streams.push(stream);
        }
        for stream in &mut streams[first..] {
            stream
                .set_read_timeout(Some(PATIENCE))
                .context("read timeout")?;
            let (status, _) = read_answer(stream)?;
            anyhow::ensure!(status == 200, "GET {path} answered {status}");
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let rss_connected = rss_bytes();
    // Then each connection parks one blocking query.
    for (sent, stream) in streams.iter_mut().enumerate() {
        stream
            .write_all(&request)
            .context("sending a parked request")?;
        if (sent + 1) % PARK_BATCH == 0 || sent + 1 == parked {
            // A request is parked once the server holds one more revision watcher for it.
            setup.wait_parked(catalog, sent + 1)?;
        }
    }
    let park_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    let rss_parked = rss_bytes();

    let woke_at = wake(catalog, service, "bench-wake-http1")?;
    let expected = fetch(address, path)?;
    let mut woken = 0;
    for stream in &mut streams {
        let (status, body) = read_answer(stream)?;
        if status == 200 && body == expected {
            woken += 1;
        }
    }
    let wake_s = woke_at.elapsed().as_secs_f64();
    drop(streams);
    Ok(figures(
        "http/1.1",
        setup,
        wanted,
        parked,
        parked,
        limited_by,
        Samples {
            rss_connected,
            rss_parked,
            park_s,
            woken,
            wake_s,
        },
    ))
}
