//! The embedded store: one redb file and a write-ahead log in the data directory, written by
//! one process.
//!
//! A commit appends the batch to the write-ahead log (`wal.rs`) as one frame and returns once
//! the frame is durable: one small `fdatasync` per group commit. A checkpoint thread then
//! writes the committed batches into the redb file, many at a time, in one durable
//! transaction that also records the last frame it holds (`meta.log_applied`); the log reuses
//! the segments the redb file has caught up with. Opening the store replays the frames after
//! that one into the redb file before anything is read, so a crash between a commit and its
//! checkpoint loses nothing, and a batch is in the store entirely or not at all. A frame holds
//! each put's stored record, and the checkpoint writes those bytes into the instances and
//! events tables: an instance is encoded once per commit, not once per table.
//!
//! redb tables: `instances` (id → record, see `codec.rs`), `events` (revision → change event,
//! the retained history for resumable watches), `leases` (id → lease deadline in Unix ms) and
//! `meta` (`revision` → the newest revision written, `log_applied`, `clean_close` → 1 once the
//! store was closed with every logged batch in the file, `format` → the file format version).
//! A lock on `svcmeta.lock` (and redb's own file lock) makes a second process get
//! [`StoreError::Locked`] instead of sharing the directory; only the lock holder touches the
//! log. A new database file is made under a temporary name and renamed once whole.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, WriteTransaction,
};
use svcmeta_core::{Change, Event};

use crate::chunk::{InstanceChunk, LoadStrings};
use crate::codec;
use crate::error::StoreError;
use crate::wal::WriteAheadLog;
use crate::{Batch, Snapshot};

const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const LEASES: TableDefinition<&str, u64> = TableDefinition::new("leases");
const REVISION_KEY: &str = "revision";
const FORMAT_KEY: &str = "format";
/// The sequence number of the last write-ahead log frame the redb file holds.
const LOG_APPLIED_KEY: &str = "log_applied";
/// 1 when the store was closed cleanly (every logged batch is in the redb file), 0 while it
/// is open: a redb file that was not closed cleanly needs its log.
const CLEAN_CLOSE_KEY: &str = "clean_close";
/// The file whose lock says a process holds the data directory.
const LOCK_FILE: &str = "svcmeta.lock";
/// Where a new database file is made before it takes its name, so a process killed while
/// creating it leaves no half-made `svcmeta.redb`.
const NEW_DATABASE_FILE: &str = "svcmeta.redb.new";
/// Events are trimmed to the retention once per this many revisions.
pub(crate) const TRIM_STEP: u64 = 4096;
/// The file format this build writes and reads. Format 2 has a write-ahead log beside the
/// redb file; a build that knows only format 1 would ignore the log, so it is refused.
/// Format 3 logs frames and stores events in the record formats of `codec.rs`'s
/// `RECORD_LOG_FORMAT` and `RECORD_EVENT_FORMAT`, which format-2 builds cannot read; a file
/// of format 2 is read as it is (its old frames and events included) and marked 3.
const FILE_FORMAT: u64 = 3;
/// The first file format with a write-ahead log.
const FIRST_LOGGED_FORMAT: u64 = 2;
/// The longest a committed batch waits before the checkpoint thread writes it into redb.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(1000);
/// Changes that start a checkpoint before the interval is over.
const CHECKPOINT_CHANGES: usize = 200_000;

/// The name of the database file inside the data directory.
pub const DATABASE_FILE: &str = "svcmeta.redb";

/// A committed batch on its way into the redb file.
struct LoggedWrite {
    seq: u64,
    bytes: u64,
    /// The log frame's body: it holds each put's stored record.
    body: Vec<u8>,
    /// Where each change's stored record lies in `body` (empty for a removal).
    records: Vec<Range<usize>>,
    changes: Vec<Change>,
    events: Vec<Event>,
    leases: Vec<(String, Option<u64>)>,
    revision: u64,
    event_retention: u64,
}

/// What the checkpoint thread is asked to do.
enum CheckpointRequest {
    /// Write this batch into redb soon.
    Write(Box<LoggedWrite>),
    /// Write everything committed so far into redb now, then answer.
    Flush(mpsc::SyncSender<Result<(), StoreError>>),
}

/// A redb database and its write-ahead log in a data directory.
pub struct EmbeddedStore {
    database: Arc<Database>,
    log: Arc<WriteAheadLog>,
    path: PathBuf,
    checkpoints: Option<mpsc::Sender<CheckpointRequest>>,
    checkpointer: Option<JoinHandle<()>>,
    /// Held (locked) while the store is open; released last.
    _lock: std::fs::File,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

/// redb's page cache.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// The tables one write transaction changes.
struct Tables<'t> {
    instances: Table<'t, &'static str, &'static [u8]>,
    events: Table<'t, u64, &'static [u8]>,
    leases: Table<'t, &'static str, u64>,
    meta: Table<'t, &'static str, u64>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>, StoreError> {
        Ok(Tables {
            instances: txn.open_table(INSTANCES).map_err(StoreError::database)?,
            events: txn.open_table(EVENTS).map_err(StoreError::database)?,
            leases: txn.open_table(LEASES).map_err(StoreError::database)?,
            meta: txn.open_table(META).map_err(StoreError::database)?,
        })
    }

    fn write_change(&mut self, change: &Change) -> Result<(), StoreError> {
        match change {
            Change::Put(instance) => {
                let record = codec::encode(instance);
                self.instances
                    .insert(instance.id(), record.as_slice())
                    .map_err(StoreError::database)?;
            }
            Change::Remove { id, .. } => {
                self.instances
                    .remove(id.as_str())
                    .map_err(StoreError::database)?;
            }
        }
        Ok(())
    }

    /// Writes the events of a logged batch, copying each put's stored record from the log
    /// frame instead of encoding the instance again.
    fn write_logged_events(
        &mut self,
        write: &LoggedWrite,
        scratch: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let mut next = 0;
        for event in &write.events {
            // Changes and events are both in revision order; an event's instance is its
            // change's when that change put it.
            while write
                .changes
                .get(next)
                .is_some_and(|change| change.revision() < event.revision)
            {
                next += 1;
            }
            let logged = match (write.changes.get(next), write.records.get(next)) {
                (Some(Change::Put(put)), Some(range)) if Arc::ptr_eq(put, &event.instance) => {
                    write.body.get(range.clone())
                }
                _ => None,
            };
            let encoded;
            let instance = match logged {
                Some(record) => record,
                None => {
                    encoded = codec::encode(&event.instance);
                    &encoded
                }
            };
            codec::encode_event_into(event.kind, instance, event.previous.as_deref(), scratch);
            self.events
                .insert(event.revision, scratch.as_slice())
                .map_err(StoreError::database)?;
        }
        Ok(())
    }

    fn write_events(&mut self, events: &[Event]) -> Result<(), StoreError> {
        for event in events {
            let record = codec::encode_event(event);
            self.events
                .insert(event.revision, record.as_slice())
                .map_err(StoreError::database)?;
        }
        Ok(())
    }

    fn write_leases(&mut self, leases: &[(String, Option<u64>)]) -> Result<(), StoreError> {
        self.write_lease_deadlines(leases.iter().map(|(id, deadline)| (id.as_str(), *deadline)))
    }

    fn write_lease_deadlines<'a>(
        &mut self,
        leases: impl IntoIterator<Item = (&'a str, Option<u64>)>,
    ) -> Result<(), StoreError> {
        for (id, deadline) in leases {
            match deadline {
                Some(deadline) => {
                    self.leases
                        .insert(id, deadline)
                        .map_err(StoreError::database)?;
                }
                None => {
                    self.leases.remove(id).map_err(StoreError::database)?;
                }
            }
        }
        Ok(())
    }

    /// Drops events older than the retention once the written events `(oldest, newest]`
    /// cross a step of [`TRIM_STEP`] revisions: one range deletion per step instead of a
    /// B-tree edit per write. The file keeps at most `TRIM_STEP` events beyond the retention;
    /// `load` callers trim exactly.
    fn trim_events(&mut self, oldest: u64, newest: u64, retention: u64) -> Result<(), StoreError> {
        let crossed_step = oldest.saturating_sub(1) / TRIM_STEP != newest / TRIM_STEP;
        let floor = newest.saturating_sub(retention);
        if crossed_step && floor > 0 {
            self.events
                .retain_in(..floor, |_, _| false)
                .map_err(StoreError::database)?;
        }
        Ok(())
    }

    /// Raises the stored revision and records the last log frame the file holds.
    fn finish(&mut self, revision: u64, log_applied: u64) -> Result<(), StoreError> {
        let stored = self
            .meta
            .get(REVISION_KEY)
            .map_err(StoreError::database)?
            .map_or(0, |v| v.value());
        self.meta
            .insert(REVISION_KEY, stored.max(revision))
            .map_err(StoreError::database)?;
        self.meta
            .insert(LOG_APPLIED_KEY, log_applied)
            .map_err(StoreError::database)?;
        Ok(())
    }
}

/// Writes committed batches into redb in one durable transaction.
fn checkpoint(database: &Database, writes: &[LoggedWrite]) -> Result<(), StoreError> {
    let Some(last) = writes.last() else {
        return Ok(());
    };
    let txn = database.begin_write().map_err(StoreError::database)?;
    {
        let mut tables = Tables::open(&txn)?;
        // Only each id's last change and last lease deadline matter, and writing them in key
        // order walks the B-tree once from left to right instead of jumping between pages
        // (at 1M instances the tree is far larger than redb's page cache).
        // A put's record is taken from the log frame's bytes.
        let mut changes: BTreeMap<&str, Option<&[u8]>> = BTreeMap::new();
        let mut leases: BTreeMap<&str, Option<u64>> = BTreeMap::new();
        let mut scratch = Vec::new();
        for write in writes {
            for (change, range) in write.changes.iter().zip(&write.records) {
                let record = match change {
                    Change::Put(_) => Some(write.body.get(range.clone()).ok_or_else(|| {
                        StoreError::Database("a logged record lies outside its frame".to_string())
                    })?),
                    Change::Remove { .. } => None,
                };
                changes.insert(change.id(), record);
            }
            for (id, deadline) in &write.leases {
                leases.insert(id.as_str(), *deadline);
            }
            tables.write_logged_events(write, &mut scratch)?;
        }
        for (id, record) in changes {
            match record {
                Some(record) => tables
                    .instances
                    .insert(id, record)
                    .map(drop)
                    .map_err(StoreError::database)?,
                None => tables
                    .instances
                    .remove(id)
                    .map(drop)
                    .map_err(StoreError::database)?,
            }
        }
        tables.write_lease_deadlines(leases)?;
        let oldest = writes
            .iter()
            .find_map(|w| w.events.first())
            .map(|e| e.revision);
        let newest = writes
            .iter()
            .rev()
            .find_map(|w| w.events.last())
            .map(|e| e.revision);
        if let (Some(oldest), Some(newest)) = (oldest, newest) {
            tables.trim_events(oldest, newest, last.event_retention)?;
        }
        let revision = writes.iter().map(|w| w.revision).max().unwrap_or(0);
        tables.finish(revision, last.seq)?;
    }
    txn.commit().map_err(StoreError::database)
}

/// The checkpoint thread: gathers committed batches and writes them into redb every
/// [`CHECKPOINT_INTERVAL`] (sooner when many arrive or a flush is asked), then lets the log
/// reuse what the file now holds. It writes what is left when the store is dropped. Without
/// `write_checkpoints` it never writes (see [`EmbeddedStore::open_without_checkpoints`]).
fn run_checkpointer(
    database: Arc<Database>,
    log: Arc<WriteAheadLog>,
    requests: mpsc::Receiver<CheckpointRequest>,
    write_checkpoints: bool,
) {
    let mut pending: Vec<LoggedWrite> = Vec::new();
    let mut pending_changes = 0usize;
    let mut oldest: Option<Instant> = None;
    let mut flushes: Vec<mpsc::SyncSender<Result<(), StoreError>>> = Vec::new();
    let mut open = true;
    while open {
        let wait = oldest.map_or(Duration::from_secs(1), |at| {
            CHECKPOINT_INTERVAL.saturating_sub(at.elapsed())
        });
        let mut take = |request: CheckpointRequest| match request {
            CheckpointRequest::Write(write) => {
                pending_changes += write.changes.len() + write.leases.len();
                oldest.get_or_insert_with(Instant::now);
                pending.push(*write);
            }
            CheckpointRequest::Flush(reply) => flushes.push(reply),
        };
        match requests.recv_timeout(wait) {
            Ok(request) => take(request),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
        }
        while let Ok(request) = requests.try_recv() {
            take(request);
        }
        let due = !open
            || !flushes.is_empty()
            || pending_changes >= CHECKPOINT_CHANGES
            || oldest.is_some_and(|at| at.elapsed() >= CHECKPOINT_INTERVAL);
        let mut outcome: Result<(), StoreError> = match log.failure() {
            Some(failure) => Err(StoreError::Log(failure)),
            None => Ok(()),
        };
        if !write_checkpoints {
            pending.clear();
            oldest = None;
        }
        if due && !pending.is_empty() {
            let written = checkpoint(&database, &pending);
            match written {
                Ok(()) => {
                    let bytes = pending.iter().map(|w| w.bytes).sum();
                    let seq = pending.last().map_or(0, |w| w.seq);
                    log.applied(seq, bytes);
                }
                Err(error) => {
                    // The batches are safe in the log and are replayed on the next start;
                    // until then the store takes no more writes.
                    tracing::error!(%error, "checkpoint into the redb file failed");
                    log.fail(format!("a checkpoint failed, restart to recover: {error}"));
                    outcome = Err(error);
                }
            }
            pending.clear();
            pending_changes = 0;
            oldest = None;
        }
        for reply in flushes.drain(..) {
            let answer = match &outcome {
                Ok(()) => Ok(()),
                Err(error) => Err(StoreError::Log(error.to_string())),
            };
            let _ = reply.send(answer);
        }
        if pending.is_empty() && open {
            log.prepare_spare();
        }
    }
    // Closing: every logged batch is in the redb file now, unless something failed.
    if write_checkpoints && pending.is_empty() && log.failure().is_none() {
        if let Err(error) = mark_closed_cleanly(&database) {
            tracing::warn!(%error, "could not mark the store closed cleanly");
        }
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the database in `data_dir` and replays its write-ahead log.
    pub fn open(data_dir: &Path) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(data_dir, true)
    }

    /// Opens the store with a checkpoint thread that never writes into the redb file: what
    /// a process killed right after its commits leaves behind (tests of replay).
    #[cfg(test)]
    pub(crate) fn open_without_checkpoints(data_dir: &Path) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(data_dir, false)
    }

    fn open_with(data_dir: &Path, write_checkpoints: bool) -> Result<EmbeddedStore, StoreError> {
        // The database engine panics on some damaged files; say so instead of unwinding.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            EmbeddedStore::open_unguarded(data_dir, write_checkpoints)
        }))
        .unwrap_or_else(|_| {
            Err(StoreError::Database(format!(
                "{}: the database engine failed while opening it (a damaged file?)",
                data_dir.join(DATABASE_FILE).display()
            )))
        })
    }

    fn open_unguarded(
        data_dir: &Path,
        write_checkpoints: bool,
    ) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let lock = lock_directory(data_dir)?;
        let path = data_dir.join(DATABASE_FILE);
        if !path.exists() {
            create_database(data_dir)?;
        }
        // The registry keeps everything in memory, so redb's page cache only needs to serve a
        // commit's pages; a small one is reused while a restart reads the whole file instead
        // of growing to the file's size in fresh memory.
        let database = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|error| match error {
                DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                    path: data_dir.to_path_buf(),
                },
                other => {
                    let text = other.to_string();
                    // Files made by earlier builds could be left half-made by a kill during
                    // the first start.
                    let hint = if text.contains("magic number") {
                        "; if this directory never held a registry, remove the file"
                    } else {
                        ""
                    };
                    StoreError::Database(format!("{}: {text}{hint}", path.display()))
                }
            })?;
        let (applied, log_required) = initialise(&database)?;
        let (log, frames) = WriteAheadLog::open(data_dir, applied, log_required)?;
        let last = replay(&database, &frames)?.unwrap_or(applied);
        log.applied(last, frames.iter().map(|f| f.bytes).sum());
        let database = Arc::new(database);
        let log = Arc::new(log);
        let (checkpoints, requests) = mpsc::channel();
        let checkpointer = {
            let database = Arc::clone(&database);
            let log = Arc::clone(&log);
            std::thread::Builder::new()
                .name("svcmeta-checkpoint".to_string())
                .spawn(move || run_checkpointer(database, log, requests, write_checkpoints))
                .map_err(|source| StoreError::Io {
                    path: "checkpoint thread".into(),
                    source,
                })?
        };
        Ok(EmbeddedStore {
            database,
            log,
            path,
            checkpoints: Some(checkpoints),
            checkpointer: Some(checkpointer),
            _lock: lock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the store takes no more writes, if it failed (a failed fsync or checkpoint); a
    /// restart recovers.
    pub fn problem(&self) -> Option<String> {
        self.log.failure()
    }

    /// Writes every committed batch into the redb file now.
    pub fn flush(&self) -> Result<(), StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(CheckpointRequest::Flush(reply))?;
        answer.recv().map_err(|_| stopped())?
    }

    fn send(&self, request: CheckpointRequest) -> Result<(), StoreError> {
        self.checkpoints
            .as_ref()
            .ok_or_else(stopped)?
            .send(request)
            .map_err(|_| stopped())
    }

    /// Reads every instance and the newest revision.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let mut instances = Vec::new();
        let mut strings = LoadStrings::default();
        let mut snapshot =
            self.load_with(&mut |chunk| instances.extend(chunk.into_instances(&mut strings)))?;
        snapshot.instances = instances;
        Ok(snapshot)
    }

    /// Reads the store, handing the instances to `on_instances` in chunks, in id order, as
    /// they are decoded (so a caller can index one chunk while the next is read); the
    /// returned snapshot has everything else and no instances.
    pub fn load_with(
        &self,
        on_instances: &mut dyn FnMut(InstanceChunk),
    ) -> Result<Snapshot, StoreError> {
        self.flush()?;
        let txn = self.database.begin_read().map_err(StoreError::database)?;
        let meta = txn.open_table(META).map_err(StoreError::database)?;
        let revision = meta
            .get(REVISION_KEY)
            .map_err(StoreError::database)?
            .map(|v| v.value())
            .unwrap_or(0);
        // Events and leases are read on a thread of their own while the instances are read
        // here and indexed by the caller: decoding 100,000 retained events costs about as
        // much as half the instances.
        std::thread::scope(|scope| {
            let history = scope.spawn(|| read_history(&txn));
            let read = read_instances(&txn, on_instances);
            let history = history.join().map_err(|_| {
                StoreError::Database(
                    "the database engine failed while reading the events (a damaged file?)"
                        .to_string(),
                )
            })?;
            let newest = read?;
            let (events, leases) = history?;
            Ok(Snapshot {
                instances: Vec::new(),
                revision: revision.max(newest),
                events,
                leases,
            })
        })
    }

    /// How many instances the store holds (a hint for sizing the registry before a load).
    pub fn stored_instances(&self) -> Result<u64, StoreError> {
        let txn = self.database.begin_read().map_err(StoreError::database)?;
        let table = txn.open_table(INSTANCES).map_err(StoreError::database)?;
        table.len().map_err(StoreError::database)
    }

    /// Makes a batch (changes, events, lease deadlines, revision) durable: one frame in the
    /// write-ahead log, written into the redb file by the checkpoint thread soon after.
    pub fn commit(&self, batch: &Batch<'_>) -> Result<(), StoreError> {
        let codec::EncodedBatch { body, records } = codec::encode_logged_batch(batch);
        let appended = self.log.append(&body)?;
        let write = LoggedWrite {
            seq: appended.seq,
            bytes: appended.bytes,
            body,
            records,
            changes: batch.changes.to_vec(),
            events: batch.events.to_vec(),
            leases: batch.leases.to_vec(),
            revision: batch.revision,
            event_retention: batch.event_retention,
        };
        // The batch is durable in the log now; if the checkpoint thread is gone it is written
        // into the redb file on the next start, but the store takes no more writes.
        self.send(CheckpointRequest::Write(Box::new(write)))
            .inspect_err(|error| self.log.fail(error.to_string()))
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the channel makes the checkpoint thread write what is left and stop; the
        // redb file lock is released once it has.
        self.checkpoints = None;
        if let Some(handle) = self.checkpointer.take() {
            let _ = handle.join();
        }
    }
}

/// Reads every stored instance into chunks handed to `on_instances`, in id order; returns the
/// newest modify revision among them. Records are decoded straight from the database's
/// pages, their shared strings numbered (see `InstanceChunk`).
fn read_instances(
    txn: &redb::ReadTransaction,
    on_instances: &mut dyn FnMut(InstanceChunk),
) -> Result<u64, StoreError> {
    const CHUNK: usize = 16_384;
    let table = txn.open_table(INSTANCES).map_err(StoreError::database)?;
    let mut interner = codec::Interner::default();
    let mut handed_over = 0;
    let mut chunk = InstanceChunk::default();
    // A record can never be newer than the revision stored with it, but be robust.
    let mut newest = 0;
    for entry in table.iter().map_err(StoreError::database)? {
        let (key, value) = entry.map_err(StoreError::database)?;
        let modified =
            codec::decode_into_chunk(key.value(), value.value(), &mut interner, &mut chunk)?;
        newest = newest.max(modified);
        if chunk.len() == CHUNK {
            codec::hand_over_strings(&mut interner, &mut handed_over, &mut chunk);
            on_instances(std::mem::take(&mut chunk));
        }
    }
    if !chunk.is_empty() {
        codec::hand_over_strings(&mut interner, &mut handed_over, &mut chunk);
        on_instances(chunk);
    }
    Ok(newest)
}

/// The retained events, oldest first, and the lease deadlines.
fn read_history(txn: &redb::ReadTransaction) -> Result<History, StoreError> {
    let mut interner = codec::Interner::default();
    let mut events = Vec::new();
    let table = txn.open_table(EVENTS).map_err(StoreError::database)?;
    for entry in table.iter().map_err(StoreError::database)? {
        let (key, value) = entry.map_err(StoreError::database)?;
        events.push(codec::decode_event(
            key.value(),
            value.value(),
            &mut interner,
        )?);
    }
    let mut leases = Vec::new();
    let table = txn.open_table(LEASES).map_err(StoreError::database)?;
    for entry in table.iter().map_err(StoreError::database)? {
        let (key, value) = entry.map_err(StoreError::database)?;
        leases.push((key.value().to_string(), value.value()));
    }
    Ok((events, leases))
}

/// Retained events and lease deadlines (instance id, Unix ms), as read at a start.
type History = (Vec<Event>, Vec<(String, u64)>);

fn stopped() -> StoreError {
    StoreError::Log("the checkpoint thread stopped".to_string())
}

/// Checks the file format, creates the tables, marks the file open (not cleanly closed), and
/// returns the last log frame the file holds and whether the log is needed to read it whole
/// (a file of this format that was not closed cleanly).
fn initialise(database: &Database) -> Result<(u64, bool), StoreError> {
    let txn = database.begin_write().map_err(StoreError::database)?;
    let applied;
    let required;
    {
        let mut meta = txn.open_table(META).map_err(StoreError::database)?;
        let found = meta
            .get(FORMAT_KEY)
            .map_err(StoreError::database)?
            .map(|v| v.value());
        if let Some(found) = found.filter(|found| *found > FILE_FORMAT) {
            return Err(StoreError::UnsupportedFormat {
                found,
                supported: FILE_FORMAT,
            });
        }
        if found != Some(FILE_FORMAT) {
            meta.insert(FORMAT_KEY, FILE_FORMAT)
                .map_err(StoreError::database)?;
        }
        applied = meta
            .get(LOG_APPLIED_KEY)
            .map_err(StoreError::database)?
            .map_or(0, |v| v.value());
        let clean = meta
            .get(CLEAN_CLOSE_KEY)
            .map_err(StoreError::database)?
            .map_or(0, |v| v.value());
        required = found.is_some_and(|found| found >= FIRST_LOGGED_FORMAT) && clean != 1;
        meta.insert(CLEAN_CLOSE_KEY, 0)
            .map_err(StoreError::database)?;
        txn.open_table(INSTANCES).map_err(StoreError::database)?;
        txn.open_table(EVENTS).map_err(StoreError::database)?;
        txn.open_table(LEASES).map_err(StoreError::database)?;
    }
    txn.commit().map_err(StoreError::database)?;
    Ok((applied, required))
}

/// Records that every logged batch is in the redb file (the store is closing).
fn mark_closed_cleanly(database: &Database) -> Result<(), StoreError> {
    let txn = database.begin_write().map_err(StoreError::database)?;
    {
        let mut meta = txn.open_table(META).map_err(StoreError::database)?;
        meta.insert(CLEAN_CLOSE_KEY, 1)
            .map_err(StoreError::database)?;
    }
    txn.commit().map_err(StoreError::database)
}

/// Takes the data directory's lock file, so that a second process gets
/// [`StoreError::Locked`] even if the database file is replaced or removed under the first.
fn lock_directory(data_dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: data_dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Io { path, source }),
    }
}

/// Makes a new, initialised database file under a temporary name and gives it its name once
/// it is whole (the directory lock is held, so no other process does the same).
fn create_database(data_dir: &Path) -> Result<(), StoreError> {
    let staging = data_dir.join(NEW_DATABASE_FILE);
    let _ = std::fs::remove_file(&staging);
    {
        let database = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&staging)
            .map_err(|error| StoreError::Database(format!("{}: {error}", staging.display())))?;
        initialise(&database)?;
        mark_closed_cleanly(&database)?;
    }
    let named = std::fs::rename(&staging, data_dir.join(DATABASE_FILE))
        .and_then(|()| std::fs::File::open(data_dir).and_then(|dir| dir.sync_all()));
    named.map_err(|source| StoreError::Io {
        path: data_dir.join(DATABASE_FILE),
        source,
    })
}

/// Writes the log frames the redb file does not hold yet into it, in one durable transaction,
/// and returns the last one's sequence number (`None` when there were none). Events are not in
/// the log: each follows from its change and the stored state before it, as when it was first
/// committed.
fn replay(
    database: &Database,
    frames: &[crate::wal::RecoveredFrame],
) -> Result<Option<u64>, StoreError> {
    let Some(last) = frames.last() else {
        return Ok(None);
    };
    let started = Instant::now();
    let txn = database.begin_write().map_err(StoreError::database)?;
    let mut interner = codec::Interner::default();
    let mut revision = 0;
    let mut changes = 0usize;
    {
        let mut tables = Tables::open(&txn)?;
        for frame in frames {
            let batch =
                codec::decode_logged_batch(&frame.body, &mut interner).map_err(|reason| {
                    StoreError::Corrupt {
                        key: format!("write-ahead log frame {}", frame.seq),
                        reason,
                    }
                })?;
            let mut events = Vec::with_capacity(batch.changes.len());
            for change in &batch.changes {
                let previous = match tables
                    .instances
                    .get(change.id())
                    .map_err(StoreError::database)?
                {
                    Some(record) => Some(Arc::new(codec::decode_interned(
                        change.id(),
                        record.value(),
                        &mut interner,
                    )?)),
                    None => None,
                };
                events.extend(Event::describe(previous.as_ref(), change));
                tables.write_change(change)?;
            }
            changes += batch.changes.len();
            tables.write_events(&events)?;
            tables.write_leases(&batch.leases)?;
            if let (Some(oldest), Some(newest)) = (events.first(), events.last()) {
                tables.trim_events(oldest.revision, newest.revision, batch.event_retention)?;
            }
            revision = revision.max(batch.revision);
        }
        tables.finish(revision, last.seq)?;
    }
    txn.commit().map_err(StoreError::database)?;
    tracing::info!(
        frames = frames.len(),
        changes,
        elapsed = ?started.elapsed(),
        "replayed the write-ahead log"
    );
    Ok(Some(last.seq))
}
