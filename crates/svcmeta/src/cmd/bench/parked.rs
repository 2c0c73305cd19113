//! The watch part of `svcmeta bench` (issue 6: "100,000 blocking queries held at once at
//! ≤ 1 KB each"): parks N blocking list queries on the real server, measures what they cost
//! the process, then makes one write and checks that every one of them wakes and answers.
//!
//! The client is as light as a client can be, so that the process's RSS delta is the server's:
//! N plain std sockets. Each first asks one ordinary query (so the RSS step measures what an
//! open keep-alive connection costs), then sends the blocking query and is not read until the
//! write (the second RSS step is what parking adds to the connection). Both ends
//! of every connection live in this process, so N is bounded by the open-file limit (two
//! descriptors per query); the bench raises the soft limit to the hard one first and reports
//! when N had to be smaller than asked.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use svcmeta_core::{validate, InstanceDraft, Mutation};
use svcmeta_server::{Catalog, CatalogSettings};
use svcmeta_store::Store;

use super::http::{header_end, parse_head, Server};
use super::measure::rss_bytes;

/// Descriptors kept free for everything else the process has open.
const SPARE_DESCRIPTORS: u64 = 256;

/// Connections opened before waiting for the server to park them (below the listen backlog).
const PARK_BATCH: usize = 64;

/// What the parked-queries run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ParkedRun {
    /// Blocking queries asked for.
    pub(crate) requested: usize,
    /// Blocking queries parked at once (smaller than asked when the open-file limit is).
    pub(crate) parked: usize,
    /// Why fewer were parked than asked, if they were.
    pub(crate) limited_by: Option<String>,
    /// Soft and hard `RLIMIT_NOFILE` after raising the soft limit.
    pub(crate) open_file_limit: (u64, u64),
    /// The request each connection sent (path and query).
    pub(crate) request: String,
    /// Resident memory before the connections were opened.
    pub(crate) rss_before_bytes: u64,
    /// Resident memory with every connection open and idle after one ordinary query.
    pub(crate) rss_connected_bytes: u64,
    /// Resident memory with every query parked.
    pub(crate) rss_parked_bytes: u64,
    /// (RSS parked − RSS before) / parked: the server's memory per parked query with its
    /// connection (the client side is a socket descriptor and a few bytes of `Vec`).
    pub(crate) bytes_per_query: f64,
    /// (RSS connected − RSS before) / parked: an idle keep-alive connection that has served
    /// one query (hyper's buffers, the connection task).
    pub(crate) connection_bytes: f64,
    /// (RSS parked − RSS connected) / parked: what parking the query adds to its connection
    /// (the handler's state, the watch receiver, the timer).
    pub(crate) query_bytes_beyond_connection: f64,
    /// Seconds to open and park them all.
    pub(crate) park_s: f64,
    /// Queries answered 200 after the one write (all of them, unless something is wrong).
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

/// Reads one whole answer from a blocking socket: its status.
fn read_answer(stream: &mut TcpStream) -> anyhow::Result<u16> {
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
            return Ok(status);
        }
        anyhow::ensure!(buffer.len() < 64 * 1024, "answer head too large");
    }
}

/// The watched service of [`park_on_fresh_server`].
const WATCHED: &str = "watched";

/// Runs [`park`] on a server of its own over a small `memory` catalog (20 instances of one
/// service), before anything else has grown the process's heap: an RSS delta is only the
/// memory the parked queries took when the allocator has no freed, still-resident memory to
/// hand out again (after the 1M phases it has hundreds of MiB, and the delta reads low).
pub(crate) fn park_on_fresh_server(wanted: usize) -> anyhow::Result<ParkedRun> {
    let catalog = std::sync::Arc::new(
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
    let server = Server::start(std::sync::Arc::clone(&catalog))?;
    let path = format!("/api/v1/instances?service={WATCHED}&env=prod&tag=blue&limit=100");
    let run = park(&catalog, server.address(), &path, WATCHED, wanted);
    server.stop()?;
    run
}

/// Parks up to `wanted` blocking reads of `path` (a list query of `service`, without
/// `index`/`wait`) on the server at `address`, measures the RSS they add, then registers one
/// new instance of `service` and reads every answer.
pub(crate) fn park(
    catalog: &Catalog,
    address: SocketAddr,
    path: &str,
    service: &str,
    wanted: usize,
) -> anyhow::Result<ParkedRun> {
    let open_file_limit = raise_open_file_limit();
    let available = open_file_limit
        .0
        .saturating_sub(open_descriptors() + SPARE_DESCRIPTORS)
        / 2;
    let parked_target = wanted.min(available as usize);
    let limited_by = (parked_target < wanted).then(|| {
        format!(
            "open-file limit {} (hard {}): both ends of every connection are in this process, \
             so at most {} queries fit",
            open_file_limit.0, open_file_limit.1, available
        )
    });
    anyhow::ensure!(parked_target > 0, "no descriptor left for parked queries");
    let index = catalog.revision();
    let request_path = format!("{path}&index={index}&wait=5m");
    let request = format!("GET {request_path} HTTP/1.1\r\nHost: {address}\r\n\r\n").into_bytes();
    let warm_up = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").into_bytes();
    let watchers_before = catalog.watchers();
    // Let the allocator settle after the load runs before taking the baseline.
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = rss_bytes();
    let started = Instant::now();
    // First every connection asks one ordinary (non-blocking) query and stays open, as a
    // client's keep-alive connection does between watches: what the connection costs.
    let mut streams = Vec::with_capacity(parked_target);
    while streams.len() < parked_target {
        // In batches that fit the listen backlog: a full accept queue drops the SYN and the
        // connection waits a second for the retransmission.
        let batch = PARK_BATCH.min(parked_target - streams.len());
        let first = streams.len();
        for _ in 0..batch {
            let mut stream = TcpStream::connect(address).context("opening a parked connection")?;
            stream.write_all(&warm_up).context("sending a request")?;
            streams.push(stream);
        }
        for stream in &mut streams[first..] {
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .context("read timeout")?;
            let status = read_answer(stream)?;
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
        if (sent + 1) % PARK_BATCH == 0 || sent + 1 == parked_target {
            // A request is parked once the server holds one more revision watcher for it.
            let deadline = Instant::now() + Duration::from_secs(60);
            while catalog.watchers() < watchers_before + sent + 1 {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "only {} of {} blocking queries parked after 60 s",
                    catalog.watchers().saturating_sub(watchers_before),
                    sent + 1
                );
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
    let park_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    let rss_parked = rss_bytes();

    // One write to the watched service wakes every parked query.
    let draft: InstanceDraft = serde_json::from_value(serde_json::json!({
        "id": "bench-wake-0",
        "service": service,
        "port": 1,
    }))
    .context("the wake-up instance")?;
    let registration = validate(draft, catalog.limits()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let woke_at = Instant::now();
    catalog
        .write_blocking(vec![Mutation::Register(registration)])
        .map_err(|e| anyhow::anyhow!("the wake-up write failed: {e}"))?;
    let mut woken = 0;
    for stream in &mut streams {
        if read_answer(stream)? == 200 {
            woken += 1;
        }
    }
    let wake_s = woke_at.elapsed().as_secs_f64();
    drop(streams);
    let parked = parked_target;
    Ok(ParkedRun {
        requested: wanted,
        parked,
        limited_by,
        open_file_limit,
        request: request_path,
        rss_before_bytes: rss_before,
        rss_connected_bytes: rss_connected,
        rss_parked_bytes: rss_parked,
        bytes_per_query: (rss_parked as f64 - rss_before as f64) / parked as f64,
        connection_bytes: (rss_connected as f64 - rss_before as f64) / parked as f64,
        query_bytes_beyond_connection: (rss_parked as f64 - rss_connected as f64) / parked as f64,
        park_s,
        woken,
        wake_s,
    })
}
