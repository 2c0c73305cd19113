//! The catalog: the only code that sequences validate → store → registry → notify.
//!
//! Writes are queued to one committer thread. It drains whatever is queued, resolves each
//! request's mutations against the current state (all-or-nothing per request), assigns the
//! next revisions, writes the whole batch to the store in one durable transaction (group
//! commit), applies it to the registry, wakes watchers, and only then answers the writers.
//! Reads take the registry's read lock briefly and go through the query-result cache.
//!
//! The catalog also keeps the retained change events (for the event stream and watchers that
//! resume after a restart) and the lease table: each instance with a ttl has a deadline in a
//! min-heap; [`Catalog::expire_due`] turns expired instances critical and, after
//! `deregister_after`, removes them, through the same committer as any other write.
//!
//! Everything here is synchronous (std threads and locks), so the CLI uses the catalog
//! directly on a data directory and the HTTP server shares one behind an `Arc`. Time comes from
//! a [`Clock`], so tests drive leases with a manual clock instead of sleeping.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hashbrown::HashMap;
use svcmeta_core::{
    resolve, CachedPage, Change, Event, FreshStrings, Health, IndexStats, Instance, LabelsMut,
    Limits, MetaMut, Mutation, MutationError, Page, PlanStep, Query, QueryAnswer, QueryCache,
    Registration, Registry, ServiceSummary,
};
use svcmeta_store::{Batch, InstanceChunk, LeaseClaim, LoadStrings, Store, StoreError};
use tokio::sync::{oneshot, watch};

use crate::metrics::QueryStats;

/// Settings of a catalog that come from the configuration.
#[derive(Debug, Clone)]
pub struct CatalogSettings {
    /// Validation limits.
    pub limits: Limits,
    /// Maximum number of live instances.
    pub max_instances: u64,
    /// Whether query results are cached.
    pub cache_enabled: bool,
    /// Cache capacity.
    pub cache_max_entries: usize,
    /// Cache entry lifetime in milliseconds.
    pub cache_ttl_ms: u64,
    /// How many of the newest change events are kept for resuming watchers.
    pub event_retention: u64,
    /// How long an instance whose lease expired stays (critical) before it is removed;
    /// `None` keeps it until it is renewed or deregistered.
    pub deregister_after_ms: Option<u64>,
}

impl CatalogSettings {
    /// Defaults of DESIGN §7.
    pub fn standard() -> CatalogSettings {
        CatalogSettings {
            limits: Limits::standard(),
            max_instances: 10_000_000,
            cache_enabled: true,
            cache_max_entries: 10_000,
            cache_ttl_ms: 60_000,
            event_retention: 100_000,
            deregister_after_ms: None,
        }
    }
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The mutation is not possible (unknown id, registry full).
    #[error(transparent)]
    Rejected(#[from] MutationError),
    /// The store failed; nothing was applied.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The catalog is shutting down.
    #[error("the registry is shutting down")]
    ShuttingDown,
    /// Other nodes kept writing the same instance; the request gave up after retrying.
    #[error("instance {id:?} is being written concurrently through other nodes; retry")]
    Contended {
        /// The instance id.
        id: String,
    },
}

/// What a write request did.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// The revision after the request (the registry's, when nothing changed).
    pub revision: u64,
    /// Per mutation, the instance's state afterwards (`None` once removed).
    pub states: Vec<Option<Arc<Instance>>>,
    /// Number of mutations that changed something.
    pub changed: usize,
}

/// A write queued with [`Catalog::write_queued`].
#[derive(Debug)]
pub struct QueuedWrite {
    receiver: oneshot::Receiver<Result<WriteOutcome, WriteError>>,
}

impl QueuedWrite {
    /// Blocks until the write is durable (or failed).
    pub fn wait(self) -> Result<WriteOutcome, WriteError> {
        self.receiver
            .blocking_recv()
            .unwrap_or(Err(WriteError::ShuttingDown))
    }
}

struct WriteRequest {
    mutations: Vec<Mutation>,
    /// Compare-and-set: each id must be at this modify revision (0: absent).
    expect: Vec<(String, u64)>,
    /// A lease timer this write carries out (shared store).
    claim: Option<LeaseClaim>,
    /// How often the request was resolved again after a conflict (shared store).
    attempt: u8,
    /// How often it waited for another node's write fence (shared store).
    waits: u16,
    /// Whether its registrations were interned when it was submitted (on the writer's own
    /// thread, so the committer does not do it again; a string new then may have a key by the
    /// time the request is applied, and the registry then stores a copy).
    interned: bool,
    reply: oneshot::Sender<Result<WriteOutcome, WriteError>>,
}

impl WriteRequest {
    fn new(
        mutations: Vec<Mutation>,
        expect: Vec<(String, u64)>,
        reply: oneshot::Sender<Result<WriteOutcome, WriteError>>,
    ) -> WriteRequest {
        WriteRequest {
            mutations,
            expect,
            claim: None,
            attempt: 0,
            waits: 0,
            interned: false,
            reply,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where the catalog reads the time (Unix milliseconds).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `now_ms`.
    pub fn new(now_ms: u64) -> ManualClock {
        ManualClock {
            now: AtomicU64::new(now_ms),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// A watcher asked for history older than what is retained: it must re-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("events after revision {since} are no longer retained (oldest retained: {oldest}); re-list and resume from the listing's revision")]
pub struct HistoryTrimmed {
    /// The revision asked for.
    pub since: u64,
    /// The oldest retained event's revision.
    pub oldest: u64,
}

/// What a lease timer entry does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum LeaseAction {
    /// The lease ran out: the instance turns critical.
    Expire,
    /// The instance has been critical for `deregister_after`: remove it.
    Remove,
}

/// Lease deadlines: the current deadline per id, and a min-heap of timer entries. A heap
/// entry whose deadline no longer matches the id's current one is stale and skipped.
#[derive(Debug, Default)]
struct Leases {
    deadlines: HashMap<String, u64>,
    timers: BinaryHeap<Reverse<(u64, LeaseAction, String, u64)>>,
}

impl Leases {
    fn set(&mut self, id: &str, deadline: Option<u64>) {
        match deadline {
            Some(deadline) => {
                self.deadlines.insert(id.to_string(), deadline);
                self.timers.push(Reverse((
                    deadline,
                    LeaseAction::Expire,
                    id.to_string(),
                    deadline,
                )));
            }
            None => {
                self.deadlines.remove(id);
            }
        }
        // Stale entries accumulate when leases are renewed; rebuild when they dominate.
        if self.timers.len() > 1024 && self.timers.len() > self.deadlines.len() * 4 {
            let deadlines = &self.deadlines;
            let live: Vec<_> = self
                .timers
                .drain()
                .filter(|Reverse((_, _, id, lease))| deadlines.get(id) == Some(lease))
                .collect();
            self.timers = live.into_iter().collect();
        }
    }
}

struct Shared {
    registry: RwLock<Registry>,
    cache: Mutex<QueryCache>,
    store: Store,
    settings: CatalogSettings,
    stats: QueryStats,
    revision_tx: watch::Sender<u64>,
    commits: AtomicU64,
    clock: Arc<dyn Clock>,
    /// The newest `event_retention` events, oldest first, contiguous in revision.
    events: Mutex<VecDeque<Event>>,
    leases: Mutex<Leases>,
    stopping: AtomicBool,
    /// Follower state when the store is shared (Redis).
    replication: replication::Replication,
}

/// The registry with its store, cache, statistics and write sequencer.
pub struct Catalog {
    shared: Arc<Shared>,
    writer: Mutex<Option<mpsc::Sender<WriteRequest>>>,
    committer: Mutex<Option<JoinHandle<()>>>,
    lease_timer: Mutex<Option<JoinHandle<()>>>,
    follower: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("store", &self.shared.store.kind())
            .finish()
    }
}

fn read_lock<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // A panic while holding the lock cannot leave the registry half-updated in a way readers
    // could observe differently from a completed apply, so recover the guard.
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Catalog {
    /// Loads the store into a fresh registry and starts the committer and the lease timer
    /// (on the system clock).
    pub fn open(store: Store, settings: CatalogSettings) -> Result<Catalog, StoreError> {
        let catalog = Catalog::open_with_clock(store, settings, Arc::new(SystemClock))?;
        catalog.start_lease_timer()?;
        Ok(catalog)
    }

    /// Loads the store with a given clock; leases expire only when [`Catalog::expire_due`]
    /// is called (tests drive it with a [`ManualClock`]).
    pub fn open_with_clock(
        store: Store,
        settings: CatalogSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Catalog, StoreError> {
        let now = clock.now_ms();
        let replication = replication::Replication::default();
        let started = Instant::now();
        let (snapshot, registry, leases) = match &store {
            Store::Shared(shared) => {
                let mut snapshot = replication.start(shared)?;
                let (registry, leases) = build_registry(
                    std::mem::take(&mut snapshot.instances),
                    snapshot.revision,
                    std::mem::take(&mut snapshot.leases),
                    now,
                );
                (snapshot, registry, leases)
            }
            _ => load_streaming(&store, now)?,
        };
        tracing::debug!(elapsed = ?started.elapsed(), "store loaded and indexed");
        let mut events: VecDeque<Event> = snapshot.events.into();
        while events.len() as u64 > settings.event_retention {
            events.pop_front();
        }
        // As when they were made, retained events share the registry's copy of the state
        // they describe, instead of holding a second copy of each record.
        for event in events.iter_mut() {
            if let Some(stored) = registry.get(event.instance.id()) {
                if stored.modify_revision == event.revision {
                    event.instance = Arc::clone(stored);
                }
            }
        }
        let (revision_tx, _) = watch::channel(registry.revision());
        let shared = Arc::new(Shared {
            registry: RwLock::new(registry),
            cache: Mutex::new(QueryCache::new(
                if settings.cache_enabled {
                    settings.cache_max_entries
                } else {
                    0
                },
                settings.cache_ttl_ms,
            )),
            store,
            settings,
            stats: QueryStats::default(),
            revision_tx,
            commits: AtomicU64::new(0),
            clock,
            events: Mutex::new(events),
            leases: Mutex::new(leases),
            stopping: AtomicBool::new(false),
            replication,
        });
        let (sender, receiver) = mpsc::channel();
        let committer_shared = Arc::clone(&shared);
        let committer = std::thread::Builder::new()
            .name("svcmeta-committer".to_string())
            .spawn(move || committer_shared.run_committer(receiver))
            .map_err(|source| StoreError::Io {
                path: "committer thread".into(),
                source,
            })?;
        let follower = if matches!(shared.store, Store::Shared(_)) {
            let follower_shared = Arc::clone(&shared);
            Some(
                std::thread::Builder::new()
                    .name("svcmeta-follower".to_string())
                    .spawn(move || follower_shared.run_follower())
                    .map_err(|source| StoreError::Io {
                        path: "follower thread".into(),
                        source,
                    })?,
            )
        } else {
            None
        };
        Ok(Catalog {
            shared,
            writer: Mutex::new(Some(sender)),
            committer: Mutex::new(Some(committer)),
            lease_timer: Mutex::new(None),
            follower: Mutex::new(follower),
        })
    }

    /// Starts the thread that expires leases on time.
    fn start_lease_timer(&self) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(writer) = writer else {
            return Ok(());
        };
        let handle = std::thread::Builder::new()
            .name("svcmeta-leases".to_string())
            .spawn(move || {
                while !shared.stopping.load(Ordering::SeqCst) {
                    let now = shared.clock.now_ms();
                    let next = if matches!(shared.store, Store::Shared(_)) {
                        shared.expire_shared(now, &writer);
                        Some(now + replication::TIMER_POLL_MS)
                    } else {
                        shared.expire_due(now, &writer)
                    };
                    let wait = next.map_or(200, |at| at.saturating_sub(now).clamp(1, 200));
                    std::thread::sleep(std::time::Duration::from_millis(wait));
                }
            })
            .map_err(|source| StoreError::Io {
                path: "lease thread".into(),
                source,
            })?;
        *self.lease_timer.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(())
    }

    /// Expires every lease due at the clock's current time; returns when the next is due.
    /// The writes it makes go through the committer like any other and are waited for.
    pub fn expire_due(&self) -> Option<u64> {
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let now = self.shared.clock.now_ms();
        if matches!(self.shared.store, Store::Shared(_)) {
            self.shared.expire_shared(now, &writer);
            return None;
        }
        self.shared.expire_due(now, &writer)
    }

    /// The lease deadline of an instance (Unix ms), if it has a lease.
    pub fn lease_deadline(&self, id: &str) -> Option<u64> {
        self.shared
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .deadlines
            .get(id)
            .copied()
    }

    /// The retained events after `since`, oldest first; an error when some are gone.
    pub fn events_since(&self, since: u64) -> Result<Vec<Event>, HistoryTrimmed> {
        let revision = self.revision();
        let events = self.shared.events.lock().unwrap_or_else(|p| p.into_inner());
        if since > revision {
            // The registry went back (a memory store restarted, a replaced Redis data set):
            // what the watcher saw is not this history.
            return Err(HistoryTrimmed {
                since,
                oldest: revision + 1,
            });
        }
        if since == revision {
            return Ok(Vec::new());
        }
        let oldest = events.front().map_or(revision + 1, |e| e.revision);
        if since + 1 < oldest {
            return Err(HistoryTrimmed { since, oldest });
        }
        let start = events.partition_point(|e| e.revision <= since);
        Ok(events.range(start..).cloned().collect())
    }

    /// The catalog clock's current time (Unix ms): the clock that stamps `updated_at`.
    pub fn now_ms(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    /// The validation limits in force.
    pub fn limits(&self) -> &Limits {
        &self.shared.settings.limits
    }

    /// The store's kind (`memory`, `embedded`).
    pub fn store_kind(&self) -> &'static str {
        self.shared.store.kind()
    }

    /// The newest applied revision.
    pub fn revision(&self) -> u64 {
        read_lock(&self.shared.registry).revision()
    }

    /// A receiver that sees every new revision (for blocking queries and watches).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.revision_tx.subscribe()
    }

    /// Receivers of the revision channel alive now: parked blocking reads and event streams.
    pub fn watchers(&self) -> usize {
        self.shared.revision_tx.receiver_count()
    }

    /// Why the store takes no more writes, if it failed (see [`Store::problem`]).
    pub fn store_problem(&self) -> Option<String> {
        self.shared.store.problem()
    }

    /// Writes every acknowledged write into the store's main file now (the embedded store
    /// otherwise does it in the background about once a second); benchmarks call it between
    /// phases so that one phase's checkpoint does not land on the next.
    pub fn flush_store(&self) -> Result<(), StoreError> {
        self.shared.store.flush()
    }

    /// Number of store commits so far (group commit makes this smaller than the write count).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// Submits mutations as one all-or-nothing request and returns the receiver of its outcome.
    fn submit(
        &self,
        mutations: Vec<Mutation>,
        expect: Vec<(String, u64)>,
    ) -> oneshot::Receiver<Result<WriteOutcome, WriteError>> {
        let (reply, receiver) = oneshot::channel();
        let mut request = WriteRequest::new(mutations, expect, reply);
        // The writer's thread interns the request's strings (under the read lock, as queries
        // read), which takes that work off the one committer thread; the strings interning
        // replaced are freed after the request is handed over, while the committer works.
        let registers = |m: &Mutation| matches!(m, Mutation::Register(_));
        let mut replaced = Vec::new();
        if request.mutations.iter().any(registers) {
            replaced = intern_all(
                &read_lock(&self.shared.registry),
                std::slice::from_mut(&mut request),
            );
        }
        request.interned = true;
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        match writer.as_ref() {
            Some(sender) => {
                if let Err(mpsc::SendError(request)) = sender.send(request) {
                    let _ = request.reply.send(Err(WriteError::ShuttingDown));
                }
            }
            None => {
                let _ = request.reply.send(Err(WriteError::ShuttingDown));
            }
        }
        drop(writer);
        drop(replaced);
        receiver
    }

    /// Queues mutations as one all-or-nothing request without waiting; the returned handle
    /// yields the outcome. Lets a bulk loader prepare its next batch while this one commits.
    pub fn write_queued(&self, mutations: Vec<Mutation>) -> QueuedWrite {
        QueuedWrite {
            receiver: self.submit(mutations, Vec::new()),
        }
    }

    /// Applies mutations durably, all or nothing, waiting for the commit (async callers).
    pub async fn write(&self, mutations: Vec<Mutation>) -> Result<WriteOutcome, WriteError> {
        self.write_checked(mutations, Vec::new()).await
    }

    /// Like [`Catalog::write`], but only if each `(id, revision)` of `expect` holds: the
    /// instance is at that modify revision (0: it does not exist). Otherwise nothing is
    /// written and the error is [`MutationError::Conflict`].
    pub async fn write_checked(
        &self,
        mutations: Vec<Mutation>,
        expect: Vec<(String, u64)>,
    ) -> Result<WriteOutcome, WriteError> {
        self.submit(mutations, expect)
            .await
            .unwrap_or(Err(WriteError::ShuttingDown))
    }

    /// Applies mutations durably, all or nothing, blocking the thread (CLI, tests).
    pub fn write_blocking(&self, mutations: Vec<Mutation>) -> Result<WriteOutcome, WriteError> {
        self.submit(mutations, Vec::new())
            .blocking_recv()
            .unwrap_or(Err(WriteError::ShuttingDown))
    }

    /// Tells parked blocking reads and event streams to finish (the server is stopping);
    /// writes still work until [`Catalog::shutdown`].
    pub fn begin_shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.revision_tx.send_modify(|_| {});
    }

    /// Whether [`Catalog::begin_shutdown`] was called.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    /// Stops accepting writes, lets the committer finish what is queued, and waits for it.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let timer = self
            .lease_timer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(timer) = timer {
            let _ = timer.join();
        }
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let handle = self
            .committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        self.shared.replication.stop();
        let follower = self
            .follower
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(follower) = follower {
            let _ = follower.join();
        }
    }

    /// The revision of the last change that could affect this query's answer.
    pub fn scope_revision(&self, query: &Query) -> u64 {
        read_lock(&self.shared.registry).scope_revision(query)
    }

    /// One instance.
    pub fn get(&self, id: &str) -> Option<Arc<Instance>> {
        read_lock(&self.shared.registry).get(id).cloned()
    }

    /// Answers a query through the cache, recording its latency.
    pub fn query(&self, query: &Query, page: &Page) -> QueryAnswer {
        let started = Instant::now();
        let answer = self.query_uncounted(query, page);
        self.shared.stats.record(started.elapsed());
        answer
    }

    fn query_uncounted(&self, query: &Query, page: &Page) -> QueryAnswer {
        if !self.shared.settings.cache_enabled {
            return read_lock(&self.shared.registry).query(query, page);
        }
        let (revision, cached) = self.query_cached(query, page);
        QueryAnswer {
            revision,
            total: cached.total,
            instances: cached.instances.clone(),
            next_cursor: cached.next_cursor.clone(),
        }
    }

    /// Answers a query through the cache like [`Catalog::query`], but hands out the cached
    /// page itself (with the current revision), so the HTTP edge can keep the page's
    /// serialised form in it (`CachedPage::renderings`). With the cache off, the page is a
    /// fresh one that keeps nothing.
    pub fn query_page(&self, query: &Query, page: &Page) -> (u64, Arc<CachedPage>) {
        let started = Instant::now();
        let answer = if self.shared.settings.cache_enabled {
            self.query_cached(query, page)
        } else {
            let answer = read_lock(&self.shared.registry).query(query, page);
            let page = CachedPage::new(answer.total, answer.instances, answer.next_cursor);
            (answer.revision, Arc::new(page))
        };
        self.shared.stats.record(started.elapsed());
        answer
    }

    fn query_cached(&self, query: &Query, page: &Page) -> (u64, Arc<CachedPage>) {
        let registry = read_lock(&self.shared.registry);
        let key = cache_key(query, page);
        let scope = registry.scope_revision(query);
        let now = now_ms();
        let cached = self
            .shared
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lookup(&key, scope, now);
        if let Some(cached) = cached {
            return (registry.revision(), cached);
        }
        let answer = registry.query(query, page);
        let page = Arc::new(CachedPage::new(
            answer.total,
            answer.instances,
            answer.next_cursor,
        ));
        self.shared
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, scope, now, Arc::clone(&page));
        (answer.revision, page)
    }

    /// Counts matches without building a page.
    pub fn count(&self, query: &Query) -> (u64, u64) {
        let started = Instant::now();
        let registry = read_lock(&self.shared.registry);
        let count = registry.count(query);
        let revision = registry.revision();
        drop(registry);
        self.shared.stats.record(started.elapsed());
        (count, revision)
    }

    /// The plan a query runs.
    pub fn explain(&self, query: &Query) -> Vec<PlanStep> {
        read_lock(&self.shared.registry).explain(query)
    }

    /// One summary per service, with the revision.
    pub fn services(&self) -> (Vec<ServiceSummary>, u64) {
        let registry = read_lock(&self.shared.registry);
        (registry.services(), registry.revision())
    }

    /// Index statistics.
    pub fn index_stats(&self, top: usize) -> IndexStats {
        read_lock(&self.shared.registry).stats(top, &self.shared.settings.limits)
    }

    /// Query counters and the latency histogram.
    pub fn query_stats(&self) -> &QueryStats {
        &self.shared.stats
    }

    /// Cache hits and misses.
    pub fn cache_counts(&self) -> (u64, u64, usize) {
        let cache = self.shared.cache.lock().unwrap_or_else(|p| p.into_inner());
        (cache.hits(), cache.misses(), cache.len())
    }
}

impl Drop for Catalog {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn cache_key(query: &Query, page: &Page) -> String {
    let mut key = query.cache_key();
    if let Some(limit) = page.limit {
        key.push_str(&format!("|l{limit}"));
    }
    if let Some(cursor) = &page.cursor {
        key.push_str("|c");
        key.push_str(&cursor.encode());
    }
    key
}

/// Most mutations one group commit takes, so one huge queue does not starve replies.
const MAX_BATCH_MUTATIONS: usize = 50_000;

/// A request accepted into the current batch, waiting for the commit.
struct Accepted {
    reply: oneshot::Sender<Result<WriteOutcome, WriteError>>,
    states: Vec<Option<Arc<Instance>>>,
    changed: usize,
    revision: u64,
    /// The request as it came, to resolve again after a conflict (shared store only).
    retry: Option<Retry>,
}

/// What is needed to resolve a request again.
struct Retry {
    mutations: Vec<Mutation>,
    expect: Vec<(String, u64)>,
    claim: Option<LeaseClaim>,
    attempt: u8,
    waits: u16,
}

impl Retry {
    fn into_request(
        self,
        reply: oneshot::Sender<Result<WriteOutcome, WriteError>>,
    ) -> WriteRequest {
        WriteRequest {
            mutations: self.mutations,
            expect: self.expect,
            claim: self.claim,
            attempt: self.attempt,
            waits: self.waits,
            // The kept mutations were interned before they were kept.
            interned: true,
            reply,
        }
    }
}

/// A batch resolved against the registry, not yet stored.
struct Resolution {
    /// The registry's revision when resolving; changes carry `base + 1 ..`.
    base: u64,
    /// The revision of the last change (`base` when there is none).
    revision: u64,
    changes: Vec<Change>,
    events: Vec<Event>,
    lease_updates: Vec<(String, Option<u64>)>,
    /// Each id read from the registry with the modify revision it had (0: absent).
    checks: Vec<(String, u64)>,
    claims: Vec<LeaseClaim>,
    accepted: Vec<Accepted>,
    rejected: Vec<(WriteRequest, MutationError)>,
}

/// Reads an id's state while a batch is resolved: the batch's own writes first (`overlay`),
/// then the registry. With `keep` (a shared store) it also notes the revision of each id read
/// from the registry, for the store to check.
struct Seen<'r> {
    registry: &'r Registry,
    keep: bool,
}

impl Seen<'_> {
    fn current(
        &self,
        id: &str,
        overlay: &HashMap<String, Option<Arc<Instance>>>,
        checked: &hashbrown::HashSet<String>,
        local_checks: &mut HashMap<String, u64>,
    ) -> Option<Arc<Instance>> {
        self.current_or(id, overlay, checked, local_checks, None)
    }

    /// [`Seen::current`], with the registry's state of `id` already read (`stored`).
    fn current_or(
        &self,
        id: &str,
        overlay: &HashMap<String, Option<Arc<Instance>>>,
        checked: &hashbrown::HashSet<String>,
        local_checks: &mut HashMap<String, u64>,
        stored: Option<Option<Arc<Instance>>>,
    ) -> Option<Arc<Instance>> {
        if let Some(state) = overlay.get(id) {
            return state.clone();
        }
        let state = match stored {
            Some(state) => state,
            None => self.registry.get(id).cloned(),
        };
        if self.keep && !checked.contains(id) && !local_checks.contains_key(id) {
            let revision = state.as_ref().map_or(0, |i| i.modify_revision);
            local_checks.insert(id.to_string(), revision);
        }
        state
    }
}

impl Shared {
    fn run_committer(&self, receiver: mpsc::Receiver<WriteRequest>) {
        while let Ok(first) = receiver.recv() {
            let mut batch = vec![first];
            let mut size = batch[0].mutations.len();
            while size < MAX_BATCH_MUTATIONS {
                match receiver.try_recv() {
                    Ok(request) => {
                        size += request.mutations.len();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            match &self.store {
                Store::Shared(store) => self.commit_shared(store, batch),
                _ => self.commit_batch(batch),
            }
        }
    }

    /// Decides which lease writes are due at `now` (without holding any lock while writing)
    /// and when the next timer fires.
    fn plan_expiry(&self, now: u64) -> (Vec<Mutation>, Option<u64>) {
        let mut due = Vec::new();
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(Reverse((at, _, _, _))) = leases.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, action, id, lease))) = leases.timers.pop() else {
                break;
            };
            if leases.deadlines.get(&id) != Some(&lease) {
                continue; // renewed or removed since this timer was set
            }
            match action {
                LeaseAction::Expire => {
                    due.push(Mutation::SetHealth {
                        id: id.clone(),
                        health: Health::Critical,
                    });
                    if let Some(after) = self.settings.deregister_after_ms {
                        leases.timers.push(Reverse((
                            at.saturating_add(after),
                            LeaseAction::Remove,
                            id,
                            lease,
                        )));
                    }
                }
                LeaseAction::Remove => due.push(Mutation::Deregister(id)),
            }
        }
        let next = leases.timers.peek().map(|Reverse((at, ..))| *at);
        (due, next)
    }

    fn expire_due(&self, now: u64, writer: &mpsc::Sender<WriteRequest>) -> Option<u64> {
        let (due, next) = self.plan_expiry(now);
        for mutation in due {
            let (tx, rx) = oneshot::channel();
            if writer
                .send(WriteRequest::new(vec![mutation], Vec::new(), tx))
                .is_err()
            {
                break;
            }
            let _ = rx.blocking_recv();
        }
        next
    }

    /// Resolves each request of a batch against the registry (and the requests before it),
    /// all or nothing per request, with placeholder revisions following the registry's.
    /// With `keep`, accepted and rejected requests keep a copy to be resolved again.
    fn resolve_batch(&self, mut batch: Vec<WriteRequest>, now: u64, keep: bool) -> Resolution {
        let registry = read_lock(&self.registry);
        // Registrations of the batch share the index's strings (and each other's new ones),
        // so the registry stores them without copying. Submitted requests were interned by
        // their writers; the committer's own (lease timers) are interned here.
        intern_all(&registry, &mut batch);
        let base = registry.revision();
        let mut resolution = Resolution {
            base,
            revision: base,
            changes: Vec::new(),
            events: Vec::new(),
            lease_updates: Vec::new(),
            checks: Vec::new(),
            claims: Vec::new(),
            accepted: Vec::new(),
            rejected: Vec::new(),
        };
        let mut revision = base;
        let mut live = registry.len() as u64;
        // The state of ids written earlier in this batch (by accepted requests and by the
        // request being resolved; a rejected request's entries are put back as they were).
        let total: usize = batch.iter().map(|r| r.mutations.len()).sum();
        let mut overlay: HashMap<String, Option<Arc<Instance>>> = HashMap::with_capacity(total);
        let mut checked: hashbrown::HashSet<String> = hashbrown::HashSet::new();
        let seen = Seen {
            registry: &registry,
            keep,
        };
        // The registry's state of every mutation's id, in order, read on two threads for a
        // large batch (empty otherwise: each is read when its mutation is resolved).
        let mut fetched = fetch_states(&registry, &batch, total);
        let mut offset = 0;
        for request in batch {
            let first_mutation = offset;
            offset += request.mutations.len();
            let start_revision = revision;
            let start_live = live;
            let start_changes = resolution.changes.len();
            let start_events = resolution.events.len();
            let start_leases = resolution.lease_updates.len();
            let retry = keep.then(|| Retry {
                mutations: request.mutations.clone(),
                expect: request.expect.clone(),
                claim: request.claim.clone(),
                attempt: request.attempt,
                waits: request.waits,
            });
            // What this request's changes replaced in the overlay, in order (to put back).
            let mut replaced: Vec<Option<Option<Arc<Instance>>>> = Vec::new();
            let mut local_checks: HashMap<String, u64> = HashMap::new();
            let mut states = Vec::with_capacity(request.mutations.len());
            let mut failure = None;
            for (id, expected) in &request.expect {
                let actual = seen
                    .current(id, &overlay, &checked, &mut local_checks)
                    .map_or(0, |instance| instance.modify_revision);
                if actual != *expected {
                    failure = Some(MutationError::Conflict {
                        id: id.clone(),
                        expected: *expected,
                        actual,
                    });
                    break;
                }
            }
            if let Some(claim) = &request.claim {
                // A timer is carried out against the instance as this node knows it.
                seen.current(&claim.id, &overlay, &checked, &mut local_checks);
            }
            let claim_only = request.claim.is_some();
            for (n, mutation) in request.mutations.into_iter().enumerate() {
                if failure.is_some() {
                    break;
                }
                let renews = matches!(mutation, Mutation::Register(_) | Mutation::Renew(_));
                let stored = fetched.get_mut(first_mutation + n).and_then(Option::take);
                let current =
                    seen.current_or(mutation.id(), &overlay, &checked, &mut local_checks, stored);
                // The id, kept for a lease restarted by an unchanged write.
                let leased_id = current
                    .as_ref()
                    .is_some_and(|i| i.fields.ttl_ms.is_some())
                    .then(|| mutation.id().to_string());
                match resolve(current.as_ref(), mutation, revision + 1, now) {
                    Ok(None) => {
                        // An unchanged registration or a renewal still restarts a lease.
                        let ttl = current.as_ref().and_then(|i| i.fields.ttl_ms);
                        if let (true, Some(ttl), Some(id)) = (renews, ttl, leased_id) {
                            resolution
                                .lease_updates
                                .push((id, Some(now.saturating_add(ttl))));
                        }
                        states.push(current);
                    }
                    Ok(Some(change)) => {
                        let state = match &change {
                            Change::Put(instance) => Some(Arc::clone(instance)),
                            Change::Remove { .. } => None,
                        };
                        match (&current, &state) {
                            (None, Some(_)) => live += 1,
                            (Some(_), None) => live = live.saturating_sub(1),
                            _ => {}
                        }
                        // Only a new instance can break the limit: removals and health
                        // changes stay possible after the limit was lowered.
                        if current.is_none() && live > self.settings.max_instances {
                            failure = Some(MutationError::Full {
                                limit: self.settings.max_instances,
                            });
                            break;
                        }
                        revision += 1;
                        let id = change.id().to_string();
                        let had_lease = current.as_ref().is_some_and(|i| i.fields.ttl_ms.is_some());
                        let ttl = state.as_ref().and_then(|i| i.fields.ttl_ms);
                        if (renews || state.is_none()) && (had_lease || ttl.is_some()) {
                            resolution
                                .lease_updates
                                .push((id.clone(), ttl.map(|ttl| now.saturating_add(ttl))));
                        }
                        resolution
                            .events
                            .extend(Event::describe(current.as_ref(), &change));
                        replaced.push(overlay.insert(id, state.clone()));
                        resolution.changes.push(change);
                        states.push(state);
                    }
                    // A timer whose instance is gone is still taken off the timer set.
                    Err(MutationError::NotFound(_)) if claim_only => states.push(None),
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                }
            }
            let reply = request.reply;
            if let Some(error) = failure {
                revision = start_revision;
                live = start_live;
                // Put the overlay back as it was before this request, newest change first.
                let undone = resolution.changes.drain(start_changes..).rev();
                for (change, previous) in undone.zip(replaced.into_iter().rev()) {
                    match previous {
                        Some(previous) => {
                            overlay.insert(change.id().to_string(), previous);
                        }
                        None => {
                            overlay.remove(change.id());
                        }
                    }
                }
                resolution.events.truncate(start_events);
                resolution.lease_updates.truncate(start_leases);
                let request = match retry {
                    Some(retry) => retry.into_request(reply),
                    None => WriteRequest::new(Vec::new(), Vec::new(), reply),
                };
                resolution.rejected.push((request, error));
                continue;
            }
            let changed = resolution.changes.len() - start_changes;
            for (id, revision) in local_checks {
                checked.insert(id.clone());
                resolution.checks.push((id, revision));
            }
            if let Some(claim) = &request.claim {
                resolution.claims.push(claim.clone());
            }
            resolution.accepted.push(Accepted {
                reply,
                states,
                changed,
                revision,
                retry,
            });
        }
        resolution.revision = revision;
        resolution
    }

    /// Applies stored changes to the registry, keeps their events, updates lease deadlines
    /// and wakes watchers.
    fn apply_stored(
        &self,
        changes: Vec<Change>,
        events: Vec<Event>,
        lease_updates: &[(String, Option<u64>)],
        revision: u64,
    ) {
        if !lease_updates.is_empty() {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            for (id, deadline) in lease_updates {
                leases.set(id, *deadline);
            }
        }
        if changes.is_empty() {
            return;
        }
        let mut registry = self.registry.write().unwrap_or_else(|p| p.into_inner());
        let copies = registry.stored_copies();
        registry.apply_all(changes);
        registry.advance_revision(revision);
        let applied = registry.revision();
        // Events carry their change's record, which is the registry's unless it was copied.
        let shared = registry.stored_copies() == copies;
        self.retain_events(&registry, events, shared);
        drop(registry);
        self.revision_tx.send_replace(applied);
    }

    /// Adds events to the retained history, dropping the oldest beyond the retention. They
    /// share the registry's copy (interned strings) where it is the event's state, so history
    /// does not hold a second copy of each record; with `shared`, the events' records are
    /// known to be the registry's already (no record was copied when they were applied).
    fn retain_events(&self, registry: &Registry, mut events: Vec<Event>, shared: bool) {
        if !shared {
            for event in &mut events {
                if let Some(stored) = registry.get(event.instance.id()) {
                    if stored.modify_revision == event.revision {
                        event.instance = Arc::clone(stored);
                    }
                }
            }
        }
        let mut retained = self.events.lock().unwrap_or_else(|p| p.into_inner());
        retained.extend(events);
        while retained.len() as u64 > self.settings.event_retention {
            retained.pop_front();
        }
    }

    /// The local-store commit: one durable transaction for the whole batch, then apply.
    fn commit_batch(&self, batch: Vec<WriteRequest>) {
        let now = self.clock.now_ms();
        let resolution = self.resolve_batch(batch, now, false);
        for (request, error) in resolution.rejected {
            let _ = request.reply.send(Err(WriteError::Rejected(error)));
        }
        let Resolution {
            revision,
            changes,
            events,
            lease_updates,
            accepted,
            ..
        } = resolution;
        if !changes.is_empty() || !lease_updates.is_empty() {
            let batch = Batch {
                changes: &changes,
                events: &events,
                leases: &lease_updates,
                revision,
                event_retention: self.settings.event_retention,
            };
            if let Err(error) = self.store.commit(&batch) {
                tracing::error!(%error, "commit failed; the batch was not applied");
                let message = error.to_string();
                for request in accepted {
                    let answer = match &error {
                        StoreError::SyncFailed(reason) => StoreError::SyncFailed(reason.clone()),
                        _ => StoreError::Database(message.clone()),
                    };
                    let _ = request.reply.send(Err(WriteError::Store(answer)));
                }
                return;
            }
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.apply_stored(changes, events, &lease_updates, revision);
        }
        for request in accepted {
            let revision = if request.changed > 0 {
                request.revision
            } else {
                revision
            };
            let _ = request.reply.send(Ok(WriteOutcome {
                revision,
                states: request.states,
                changed: request.changed,
            }));
        }
    }
}

/// The registry's state of each mutation's id in `batch`, in order (`None` for an id not
/// read), when the batch has at least [`PARALLEL_BATCH_FROM`] mutations: the second half is
/// read on a second thread. Smaller batches get an empty list.
fn fetch_states(
    registry: &Registry,
    batch: &[WriteRequest],
    total: usize,
) -> Vec<Option<Option<Arc<Instance>>>> {
    if total < PARALLEL_BATCH_FROM {
        return Vec::new();
    }
    let ids: Vec<&str> = batch
        .iter()
        .flat_map(|request| request.mutations.iter().map(Mutation::id))
        .collect();
    let read = |ids: &[&str]| -> Vec<Option<Option<Arc<Instance>>>> {
        ids.iter()
            .map(|id| Some(registry.get(id).cloned()))
            .collect()
    };
    let (first, second) = ids.split_at(ids.len() / 2);
    std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("svcmeta-fetch".to_string())
            .spawn_scoped(scope, || read(second));
        let mut states = read(first);
        match helper.map(|helper| helper.join()) {
            Ok(Ok(rest)) => states.extend(rest),
            // Ids without a state read are read when their mutation is resolved.
            _ => states.resize(ids.len(), None),
        }
        states
    })
}

/// Registrations or mutations in one batch from which [`intern_all`] and [`fetch_states`]
/// split their read-only work over two threads (starting a thread costs tens of
/// microseconds; a batch this large takes milliseconds).
const PARALLEL_BATCH_FROM: usize = 4_096;

/// Replaces the strings of every registration in `batch` not yet interned by the index's
/// copies, or by copies the batch shares. Read-only on the registry, so it runs on the
/// writer's thread when a request is submitted; a large batch (a bulk write) is split over
/// two threads: one takes the labels (service, tags, version, environment, region) and the
/// other the meta pairs, so no shared string's reference count is bumped from both cores.
/// Returns what holds the strings interning replaced: dropping it frees them.
fn intern_all(registry: &Registry, batch: &mut [WriteRequest]) -> Vec<FreshStrings> {
    let registrations: Vec<&mut Registration> = batch
        .iter_mut()
        .filter(|request| !request.interned)
        .flat_map(|request| request.mutations.iter_mut())
        .filter_map(|mutation| match mutation {
            Mutation::Register(registration) => Some(registration),
            _ => None,
        })
        .collect();
    let (mut labels, mut metas): (Vec<LabelsMut<'_>>, Vec<MetaMut<'_>>) = registrations
        .into_iter()
        .map(Registration::strings_mut)
        .unzip();
    let intern_labels = |labels: &mut [LabelsMut<'_>]| {
        let mut fresh = FreshStrings::default();
        for part in labels {
            registry.intern_labels(part, &mut fresh);
        }
        fresh
    };
    let intern_meta = |metas: &mut [MetaMut<'_>]| {
        let mut fresh = FreshStrings::default();
        for part in metas {
            registry.intern_meta(part, &mut fresh);
        }
        fresh
    };
    if labels.len() < PARALLEL_BATCH_FROM {
        return vec![intern_labels(&mut labels), intern_meta(&mut metas)];
    }
    std::thread::scope(|scope| {
        // A part left as it is (no thread could be started, or it failed) is still right:
        // the registry then stores those registrations with a copy of their strings.
        let helper = std::thread::Builder::new()
            .name("svcmeta-intern".to_string())
            .spawn_scoped(scope, || intern_meta(&mut metas));
        let mut replaced = vec![intern_labels(&mut labels)];
        if let Ok(Ok(meta)) = helper.map(|helper| helper.join()) {
            replaced.push(meta);
        }
        replaced
    })
}

/// Loads a local store on one thread while indexing what it has read on this one (a restart
/// costs about the longer of the two instead of their sum).
fn load_streaming(
    store: &Store,
    now: u64,
) -> Result<(svcmeta_store::Snapshot, Registry, Leases), StoreError> {
    let (chunks, received) = mpsc::sync_channel::<InstanceChunk>(4);
    std::thread::scope(|scope| {
        let loader = scope.spawn(move || {
            store.load_with(&mut |chunk| {
                // The receiver only goes away if indexing panicked; the error surfaces below.
                let _ = chunks.send(chunk);
            })
        });
        let mut registry = Registry::new();
        registry.reserve(usize::try_from(store.stored_instances()).unwrap_or(0));
        let mut indexer = registry.loader();
        let mut with_ttl: Vec<(String, u64)> = Vec::new();
        let mut strings = LoadStrings::default();
        for chunk in received {
            for instance in chunk.into_instances(&mut strings) {
                if let Some(ttl) = instance.fields.ttl_ms {
                    with_ttl.push((instance.id().to_string(), ttl));
                }
                indexer.load(instance);
            }
        }
        let mut registry = indexer.finish();
        let mut snapshot = loader.join().map_err(|_| {
            StoreError::Database(
                "the database engine failed while reading the store (a damaged file?)".to_string(),
            )
        })??;
        let leases = restore_leases(with_ttl, std::mem::take(&mut snapshot.leases), now);
        registry.advance_revision(snapshot.revision);
        Ok((snapshot, registry, leases))
    })
}

/// Builds a registry and its lease table from stored instances (start and resynchronisation).
fn build_registry(
    mut instances: Vec<Instance>,
    revision: u64,
    stored_leases: Vec<(String, u64)>,
    now: u64,
) -> (Registry, Leases) {
    // Loading in id order appends to each service's id order and to the posting lists
    // instead of inserting in the middle (the embedded store is already in id order; a Redis
    // scan is not).
    if !instances.is_sorted_by(|a, b| a.id() <= b.id()) {
        instances.sort_unstable_by(|a, b| a.id().cmp(b.id()));
    }
    let mut loader = Registry::new().loader();
    let mut with_ttl: Vec<(String, u64)> = Vec::new();
    for instance in instances {
        if let Some(ttl) = instance.fields.ttl_ms {
            with_ttl.push((instance.id().to_string(), ttl));
        }
        loader.load(instance);
    }
    let mut registry = loader.finish();
    registry.advance_revision(revision);
    (registry, restore_leases(with_ttl, stored_leases, now))
}

/// The lease table of loaded instances with a ttl (id, ttl ms): each gets its stored
/// deadline, or a fresh one when none was stored (an older file).
fn restore_leases(with_ttl: Vec<(String, u64)>, stored: Vec<(String, u64)>, now: u64) -> Leases {
    let stored: HashMap<String, u64> = stored.into_iter().collect();
    let mut leases = Leases::default();
    for (id, ttl) in with_ttl {
        let deadline = stored.get(&id).copied().unwrap_or(now.saturating_add(ttl));
        leases.set(&id, Some(deadline));
    }
    leases
}

mod replication;
pub use replication::ReplicationStatus;

#[cfg(test)]
mod lease_tests;
#[cfg(test)]
mod tests;
