//! The catalog on a shared (Redis) store: writing through Redis and following its stream.
//!
//! The committer resolves a batch against this node's registry as usual, then hands it to
//! [`SharedStore::commit`], whose script checks that no touched id changed meanwhile and
//! assigns the global revisions. The node does not apply its own writes directly: the
//! follower thread reads the change stream in order (XREAD BLOCK) and applies every entry,
//! this node's and the others', so all nodes apply the same changes in the same order. The
//! committer answers a writer once the follower has applied its revisions (read-your-writes on
//! one node). A conflict (another node wrote one of the ids first) makes the node catch up
//! and resolve the request again.
//!
//! Starting, and whenever the stream cannot continue (a gap after trimming, or a replaced data
//! set), the follower loads a snapshot and follows the stream from the position read before
//! the scan; a change is applied only if it is newer than the instance's revision, so nothing
//! is missed or applied twice. When Redis is unreachable the node keeps answering reads from
//! its registry, marked stale, refuses writes at once, and resumes by itself.
//!
//! Lease timers live in Redis sorted sets; a node carries one out only through a write whose
//! script removes the timer it saw, so each timer fires once across all nodes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use svcmeta_core::{Event, Health, Instance, Mutation};
use svcmeta_store::{
    fresh_token, real_revision, LeaseClaim, LeaseTimer, SharedStore, SharedWrite, SharedWriteError,
    Snapshot, StoreError, StreamEntry,
};
use tokio::sync::oneshot;

use super::{build_registry, Resolution, Shared, WriteError, WriteOutcome, WriteRequest};
use crate::catalog::Store;

/// How often a node looks for due lease timers in Redis (ms).
pub(super) const TIMER_POLL_MS: u64 = 100;
/// How long one stream read waits for new entries.
const READ_BLOCK: Duration = Duration::from_millis(500);
/// Most entries one stream read returns.
const READ_COUNT: usize = 1024;
/// How often a request is resolved again after conflicts before the writer is told.
const MAX_ATTEMPTS: u8 = 16;
/// How long a writer waits for its own write to be applied by the follower.
const APPLY_WAIT: Duration = Duration::from_secs(5);
/// Most due timers carried out per poll.
const TIMERS_PER_POLL: usize = 256;
/// After this many lost races a request takes the write fence for its next attempt.
const FENCE_AFTER: u8 = 3;
/// How long a node may hold the write fence (and others wait for it).
const FENCE_HOLD: Duration = Duration::from_secs(10);
/// How often a node looks again at a fence another node holds.
const FENCE_POLL: Duration = Duration::from_millis(5);
/// How often the follower checks that the data set is the one it follows.
const VERIFY_EVERY: Duration = Duration::from_secs(1);

/// Where the follower is in the shared store's history.
#[derive(Debug, Default)]
struct FollowState {
    /// The stream entry id applied last.
    position: String,
    /// The data set's epoch token.
    epoch: String,
    /// The newest revision applied from the stream (or the snapshot).
    applied: u64,
    /// Events of revisions up to here are not kept (they were caught up from a snapshot).
    history_floor: u64,
    /// The token of the entry at `position`: the next entry must name it as its predecessor.
    tail: String,
}

/// The follower's state, shared by the committer, the follower thread and readers.
#[derive(Debug, Default)]
pub(super) struct Replication {
    state: Mutex<FollowState>,
    applied_changed: Condvar,
    /// Why the node cannot reach Redis, while it cannot.
    problem: Mutex<Option<String>>,
    /// Times the node loaded a snapshot (start, gaps, a replaced data set).
    resyncs: std::sync::atomic::AtomicU64,
    /// Set once the committer has stopped: the follower may stop too (not earlier, so writes
    /// finishing during a graceful shutdown still see themselves applied).
    stop: AtomicBool,
    /// Set by a write that found the data set replaced: the follower checks at once.
    check_requested: AtomicBool,
}

/// How a node on a shared store stands (for `/healthz`, headers and stats).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicationStatus {
    /// False while Redis is unreachable: reads come from this node's last known state.
    pub connected: bool,
    /// Why Redis is unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The newest revision applied from the change stream.
    pub applied_revision: u64,
    /// The change stream position applied last.
    pub position: String,
    /// Snapshot loads so far (the first one at start).
    pub resyncs: u64,
}

impl Replication {
    fn lock(&self) -> std::sync::MutexGuard<'_, FollowState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the first snapshot (when the catalog opens).
    pub(super) fn start(&self, store: &SharedStore) -> Result<Snapshot, StoreError> {
        let snapshot = store.snapshot()?;
        {
            let mut state = self.lock();
            state.position = snapshot.position;
            state.epoch = snapshot.epoch;
            state.applied = snapshot.revision;
            state.history_floor = snapshot.settled;
            state.tail = snapshot.tail;
        }
        self.resyncs.fetch_add(1, Ordering::Relaxed);
        Ok(Snapshot {
            instances: snapshot.instances,
            revision: snapshot.revision,
            events: Vec::new(),
            leases: snapshot.leases,
        })
    }

    fn connected(&self) -> bool {
        self.problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    fn set_problem(&self, problem: Option<String>) {
        let mut slot = self.problem.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() != problem.is_none() {
            match &problem {
                Some(reason) => {
                    tracing::warn!(%reason, "redis unreachable; serving reads from the last known state")
                }
                None => tracing::info!("redis reachable again"),
            }
        }
        *slot = problem;
    }

    /// Waits until revision `revision` is applied; false when `timeout` passed first.
    fn wait_applied(&self, revision: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while state.applied < revision {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = match self.applied_changed.wait_timeout(state, deadline - now) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    pub(super) fn status(&self) -> ReplicationStatus {
        let problem = self
            .problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let state = self.lock();
        ReplicationStatus {
            connected: problem.is_none(),
            problem,
            applied_revision: state.applied,
            position: state.position.clone(),
            resyncs: self.resyncs.load(Ordering::Relaxed),
        }
    }
}

/// An instance state a write resolved, with the revisions Redis gave it.
fn fix_revisions(instance: Arc<Instance>, base: u64, first: u64) -> Arc<Instance> {
    if instance.modify_revision <= base {
        return instance;
    }
    let mut fixed = Instance::clone(&instance);
    fixed.modify_revision = real_revision(fixed.modify_revision, base, first);
    fixed.create_revision = real_revision(fixed.create_revision, base, first);
    Arc::new(fixed)
}

fn unavailable(reason: String) -> WriteError {
    WriteError::Store(StoreError::Unavailable(reason))
}

fn store_error(error: SharedWriteError) -> WriteError {
    WriteError::Store(StoreError::from(error))
}

impl Shared {
    /// Writes a batch through the shared store and answers once this node has applied it.
    /// Requests that lost a race are resolved again, one by one, after catching up.
    pub(super) fn commit_shared(&self, store: &SharedStore, batch: Vec<WriteRequest>) {
        let mut work: VecDeque<Vec<WriteRequest>> = VecDeque::from([batch]);
        while let Some(batch) = work.pop_front() {
            let again = self.commit_shared_once(store, batch);
            if again.is_empty() {
                continue;
            }
            // A short random pause, so two nodes writing one id do not keep colliding in
            // step, then catch up with the store.
            let jitter = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() % 2_000);
            std::thread::sleep(Duration::from_micros(u64::from(jitter)));
            match store.position() {
                Ok(position) => {
                    self.replication.wait_applied(position.revision, APPLY_WAIT);
                    work.extend(again.into_iter().map(|request| vec![request]));
                }
                Err(error) => {
                    for request in again {
                        let _ = request.reply.send(Err(store_error(error.clone())));
                    }
                }
            }
        }
    }

    /// Takes the write fence for a request that kept losing races, and catches up with the
    /// store, so its next attempt cannot lose. `None` when the fence could not be taken.
    fn fence_for_retry(&self, store: &SharedStore) -> Option<String> {
        let token = fresh_token();
        let deadline = Instant::now() + FENCE_HOLD;
        loop {
            match store.take_fence(&token, FENCE_HOLD) {
                Ok(true) => break,
                Ok(false) if Instant::now() < deadline => {
                    std::thread::sleep(FENCE_POLL);
                }
                _ => return None,
            }
        }
        match store.position() {
            Ok(position) => {
                self.replication.wait_applied(position.revision, APPLY_WAIT);
                Some(token)
            }
            Err(_) => {
                let _ = store.release_fence(&token);
                None
            }
        }
    }

    /// One attempt at a batch; returns the requests to resolve again.
    fn commit_shared_once(
        &self,
        store: &SharedStore,
        batch: Vec<WriteRequest>,
    ) -> Vec<WriteRequest> {
        if let Some(reason) = self
            .replication
            .problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            for request in batch {
                let _ = request.reply.send(Err(unavailable(reason.clone())));
            }
            return Vec::new();
        }
        let fence = match batch.as_slice() {
            [request] if request.attempt >= FENCE_AFTER => self.fence_for_retry(store),
            _ => None,
        };
        let epoch = self.replication.lock().epoch.clone();
        let now = self.clock.now_ms();
        let Resolution {
            base,
            changes,
            lease_updates,
            checks,
            claims,
            accepted,
            rejected,
            ..
        } = self.resolve_batch(batch, now, true);
        let mut again = Vec::new();
        for (mut request, error) in rejected {
            // This node may simply not have applied the write the request depends on yet
            // (registered through another node a moment ago): catch up and look again once.
            if request.attempt == 0 && !request.mutations.is_empty() {
                request.attempt = 1;
                again.push(request);
            } else {
                let _ = request.reply.send(Err(WriteError::Rejected(error)));
            }
        }
        if changes.is_empty() && lease_updates.is_empty() && claims.is_empty() {
            if let Some(token) = &fence {
                let _ = store.release_fence(token);
            }
            let revision = self.replication.lock().applied;
            for request in accepted {
                let _ = request.reply.send(Ok(WriteOutcome {
                    revision,
                    states: request.states,
                    changed: 0,
                }));
            }
            return again;
        }
        let write = SharedWrite {
            checks: &checks,
            claims: &claims,
            changes: &changes,
            placeholder_base: base,
            leases: &lease_updates,
            epoch: &epoch,
            fence: fence.as_deref(),
        };
        let result = store.commit(&write);
        if let (Err(_), Some(token)) = (&result, &fence) {
            let _ = store.release_fence(token);
        }
        match result {
            Ok(committed) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                if !self.replication.wait_applied(committed.last, APPLY_WAIT) {
                    tracing::warn!(
                        revision = committed.last,
                        "a committed write is not applied on this node yet"
                    );
                }
                for request in accepted {
                    let revision = if request.changed > 0 {
                        real_revision(request.revision, base, committed.first)
                    } else {
                        committed.last
                    };
                    let states = request
                        .states
                        .into_iter()
                        .map(|state| {
                            state.map(|instance| fix_revisions(instance, base, committed.first))
                        })
                        .collect();
                    let _ = request.reply.send(Ok(WriteOutcome {
                        revision,
                        states,
                        changed: request.changed,
                    }));
                }
            }
            Err(SharedWriteError::Conflict { id, revision }) => {
                self.replication.wait_applied(revision, APPLY_WAIT);
                for request in accepted {
                    match request.retry {
                        Some(retry) if retry.attempt < MAX_ATTEMPTS => {
                            let mut request = retry.into_request(request.reply);
                            request.attempt += 1;
                            again.push(request);
                        }
                        _ => {
                            let _ = request
                                .reply
                                .send(Err(WriteError::Contended { id: id.clone() }));
                        }
                    }
                }
            }
            Err(SharedWriteError::Fenced) => {
                // Another node is finishing a large write: wait for it, without counting an
                // attempt, for at most about FENCE_HOLD.
                std::thread::sleep(FENCE_POLL);
                for request in accepted {
                    match request.retry {
                        Some(retry)
                            if u64::from(retry.waits) * FENCE_POLL.as_millis() as u64
                                <= FENCE_HOLD.as_millis() as u64 =>
                        {
                            let mut request = retry.into_request(request.reply);
                            request.waits += 1;
                            again.push(request);
                        }
                        _ => {
                            let _ = request.reply.send(Err(unavailable(
                                "another node held the write fence too long".to_string(),
                            )));
                        }
                    }
                }
            }
            Err(error) => {
                match &error {
                    // (A write interrupted on a live connection says nothing about Redis
                    // as a whole: the follower decides whether it is reachable.)
                    SharedWriteError::Unavailable(reason) => {
                        self.replication.set_problem(Some(reason.clone()));
                    }
                    SharedWriteError::Replaced { .. } => self.replication.request_check(),
                    _ => {}
                }
                for request in accepted {
                    let _ = request.reply.send(Err(store_error(error.clone())));
                }
            }
        }
        again
    }

    /// Carries out the lease timers due in Redis at `now` (each through a claiming write).
    pub(super) fn expire_shared(&self, now: u64, writer: &mpsc::Sender<WriteRequest>) {
        let Store::Shared(store) = &self.store else {
            return;
        };
        if !self.replication.connected() {
            return;
        }
        let due = match store.due_timers(now, TIMERS_PER_POLL) {
            Ok(due) => due,
            Err(error) => {
                tracing::debug!(%error, "reading due lease timers");
                return;
            }
        };
        let mut replies = Vec::with_capacity(due.len());
        for timer in due {
            let (mutation, remove_at) = match timer.timer {
                LeaseTimer::Expire => (
                    Mutation::SetHealth {
                        id: timer.id.clone(),
                        health: Health::Critical,
                    },
                    self.settings
                        .deregister_after_ms
                        .map(|after| timer.deadline.saturating_add(after)),
                ),
                LeaseTimer::Remove => (Mutation::Deregister(timer.id.clone()), None),
            };
            let (reply, receiver) = oneshot::channel();
            let mut request = WriteRequest::new(vec![mutation], Vec::new(), reply);
            request.claim = Some(LeaseClaim {
                id: timer.id,
                timer: timer.timer,
                deadline: timer.deadline,
                remove_at,
            });
            // A conflict means another node carried the timer out (or the lease was renewed):
            // never retried.
            request.attempt = MAX_ATTEMPTS;
            if writer.send(request).is_err() {
                break;
            }
            replies.push(receiver);
        }
        for receiver in replies {
            let _ = receiver.blocking_recv();
        }
    }

    /// The follower thread: applies the change stream until the catalog stops.
    pub(super) fn run_follower(&self) {
        let Store::Shared(store) = &self.store else {
            return;
        };
        let mut follower = store.follower();
        let mut verify = false;
        let mut last_verified = Instant::now();
        let mut failures: u32 = 0;
        let mut backoff = Duration::from_millis(50);
        while !self.replication.stop.load(Ordering::SeqCst) {
            if last_verified.elapsed() >= VERIFY_EVERY
                || self
                    .replication
                    .check_requested
                    .swap(false, Ordering::SeqCst)
            {
                verify = true;
            }
            if verify {
                match store.position() {
                    Ok(now) => {
                        let (diverged, applied) = {
                            let state = self.replication.lock();
                            (
                                now.epoch != state.epoch
                                    || now.revision < state.applied
                                    || (now.position == state.position && now.tail != state.tail),
                                state.applied,
                            )
                        };
                        if diverged {
                            tracing::warn!(
                                revision = now.revision,
                                applied,
                                "the redis data set was replaced or lost writes; loading it again"
                            );
                            if let Err(error) = self.resync(store) {
                                self.replication.set_problem(Some(error.to_string()));
                                std::thread::sleep(backoff);
                                backoff = (backoff * 2).min(Duration::from_secs(1));
                                continue;
                            }
                        }
                        verify = false;
                        last_verified = Instant::now();
                    }
                    Err(error) => {
                        self.replication.set_problem(Some(error.to_string()));
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                }
            }
            let position = self.replication.lock().position.clone();
            match follower.read(&position, READ_BLOCK, READ_COUNT) {
                Ok(entries) => {
                    self.replication.set_problem(None);
                    failures = 0;
                    backoff = Duration::from_millis(50);
                    for entry in entries {
                        if let Err(gap) = self.apply_entry(entry) {
                            tracing::warn!(%gap, "loading a snapshot");
                            if let Err(error) = self.resync(store) {
                                self.replication.set_problem(Some(error.to_string()));
                                verify = true;
                            }
                            break;
                        }
                    }
                }
                Err(error) => {
                    failures += 1;
                    verify = true;
                    // One failed read (an interrupted system call, a connection that died
                    // idle) is retried at once on a fresh connection; Redis counts as
                    // unreachable only when that fails too.
                    if failures > 1 {
                        store.reset_connection();
                        self.replication.set_problem(Some(error.to_string()));
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            }
        }
    }

    /// Applies one stream entry; an error names a gap (entries this node never saw).
    fn apply_entry(&self, entry: StreamEntry) -> Result<(), String> {
        let mut state = self.replication.lock();
        if entry.previous != state.tail {
            return Err(format!(
                "entry {} does not follow the entry this node applied last (the stream was \
                 trimmed below this node, or the store's history changed)",
                entry.position
            ));
        }
        let count = entry.changes.len() as u64;
        if count > 0 && entry.first > state.applied + 1 {
            return Err(format!(
                "entry {} starts at revision {} but this node applied only up to {}",
                entry.position, entry.first, state.applied
            ));
        }
        if !entry.leases.is_empty() {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            for (id, deadline) in &entry.leases {
                leases.set(id, *deadline);
            }
        }
        let last = entry.first + count.saturating_sub(1);
        if count > 0 && last > state.applied {
            let mut registry = self.registry.write().unwrap_or_else(|p| p.into_inner());
            let mut events = Vec::new();
            for change in entry.changes {
                let revision = change.revision();
                if revision <= state.applied {
                    continue;
                }
                let current = registry.get(change.id()).cloned();
                // A snapshot may already hold a newer state of this instance.
                if current
                    .as_ref()
                    .is_some_and(|instance| instance.modify_revision >= revision)
                {
                    continue;
                }
                if revision > state.history_floor {
                    events.extend(Event::describe(current.as_ref(), &change));
                }
                registry.apply(change);
            }
            registry.advance_revision(last);
            let revision = registry.revision();
            // Records read from the stream are the registry's only where their strings were.
            self.retain_events(&registry, events, false);
            drop(registry);
            state.applied = last;
            self.revision_tx.send_replace(revision);
        }
        state.position = entry.position;
        state.tail = entry.token;
        drop(state);
        self.replication.applied_changed.notify_all();
        Ok(())
    }

    /// Loads a snapshot and replaces the registry with it (history starts again after it).
    fn resync(&self, store: &SharedStore) -> Result<(), StoreError> {
        let snapshot = store.snapshot()?;
        let (registry, leases) = build_registry(
            snapshot.instances,
            snapshot.revision,
            snapshot.leases,
            self.clock.now_ms(),
        );
        let mut state = self.replication.lock();
        let revision = registry.revision();
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = registry;
        *self.leases.lock().unwrap_or_else(|p| p.into_inner()) = leases;
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        state.position = snapshot.position;
        state.epoch = snapshot.epoch;
        state.applied = snapshot.revision;
        state.history_floor = snapshot.settled;
        state.tail = snapshot.tail;
        drop(state);
        self.replication.resyncs.fetch_add(1, Ordering::Relaxed);
        self.replication.set_problem(None);
        self.revision_tx.send_replace(revision);
        self.replication.applied_changed.notify_all();
        Ok(())
    }
}

impl Replication {
    /// Asks the follower to check the data set now.
    fn request_check(&self) {
        self.check_requested.store(true, Ordering::SeqCst);
    }

    /// Tells the follower thread to stop after its current read.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl super::Catalog {
    /// How this node follows its shared store (`None` for the memory and embedded stores).
    pub fn replication(&self) -> Option<ReplicationStatus> {
        matches!(self.shared.store, Store::Shared(_)).then(|| self.shared.replication.status())
    }

    /// True while reads come from a state that may be behind the store (Redis unreachable).
    pub fn is_stale(&self) -> bool {
        matches!(self.shared.store, Store::Shared(_)) && !self.shared.replication.connected()
    }
}
