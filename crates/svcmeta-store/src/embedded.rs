//! The embedded store: one redb file in the data directory, written by one process.
//!
//! Tables: `instances` (id → record, see `codec.rs`), `events` (revision → change event, the
//! retained history for resumable watches), `leases` (id → lease deadline in Unix ms) and `meta`
//! (`revision` → the newest revision written, `format` → the file format version). Every commit
//! writes its changes, events, leases and the new revision in one durable transaction, so a
//! crash leaves either all of a batch or none of it. redb takes an exclusive file lock, so a second process gets
//! [`StoreError::Locked`] instead of sharing the file.

use std::path::{Path, PathBuf};

use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};
use svcmeta_core::{Change, Instance};

use crate::codec;
use crate::error::StoreError;
use crate::{Batch, Snapshot};

const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const LEASES: TableDefinition<&str, u64> = TableDefinition::new("leases");
const REVISION_KEY: &str = "revision";
const FORMAT_KEY: &str = "format";
/// Events are trimmed to the retention once per this many revisions.
pub(crate) const TRIM_STEP: u64 = 4096;
/// The file format this build writes and reads.
const FILE_FORMAT: u64 = 1;

/// The name of the database file inside the data directory.
pub const DATABASE_FILE: &str = "svcmeta.redb";

/// A redb database in a data directory.
pub struct EmbeddedStore {
    database: Database,
    path: PathBuf,
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

impl EmbeddedStore {
    /// Opens (creating if needed) the database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DATABASE_FILE);
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
                other => StoreError::Database(format!("{}: {other}", path.display())),
            })?;
        let store = EmbeddedStore { database, path };
        store.initialise()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn initialise(&self) -> Result<(), StoreError> {
        let txn = self.database.begin_write().map_err(StoreError::database)?;
        {
            let mut meta = txn.open_table(META).map_err(StoreError::database)?;
            let found = meta
                .get(FORMAT_KEY)
                .map_err(StoreError::database)?
                .map(|v| v.value());
            match found {
                Some(found) if found > FILE_FORMAT => {
                    return Err(StoreError::UnsupportedFormat {
                        found,
                        supported: FILE_FORMAT,
                    })
                }
                Some(_) => {}
                None => {
                    meta.insert(FORMAT_KEY, FILE_FORMAT)
                        .map_err(StoreError::database)?;
                }
            }
            txn.open_table(INSTANCES).map_err(StoreError::database)?;
            txn.open_table(EVENTS).map_err(StoreError::database)?;
            txn.open_table(LEASES).map_err(StoreError::database)?;
        }
        txn.commit().map_err(StoreError::database)
    }

    /// Reads every instance and the newest revision.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let mut instances = Vec::new();
        let mut snapshot = self.load_with(&mut |chunk| instances.extend(chunk))?;
        snapshot.instances = instances;
        Ok(snapshot)
    }

    /// Reads the store, handing the instances to `on_instances` in chunks, in id order, as
    /// they are decoded (so a caller can index one chunk while the next is read); the
    /// returned snapshot has everything else and no instances.
    pub fn load_with(
        &self,
        on_instances: &mut dyn FnMut(Vec<Instance>),
    ) -> Result<Snapshot, StoreError> {
        let txn = self.database.begin_read().map_err(StoreError::database)?;
        let meta = txn.open_table(META).map_err(StoreError::database)?;
        let revision = meta
            .get(REVISION_KEY)
            .map_err(StoreError::database)?
            .map(|v| v.value())
            .unwrap_or(0);
        let mut events = Vec::new();
        let table = txn.open_table(EVENTS).map_err(StoreError::database)?;
        for entry in table.iter().map_err(StoreError::database)? {
            let (key, value) = entry.map_err(StoreError::database)?;
            events.push(codec::decode_event(key.value(), value.value())?);
        }
        let mut leases = Vec::new();
        let table = txn.open_table(LEASES).map_err(StoreError::database)?;
        for entry in table.iter().map_err(StoreError::database)? {
            let (key, value) = entry.map_err(StoreError::database)?;
            leases.push((key.value().to_string(), value.value()));
        }
        // Records are decoded straight from the database's pages, sharing strings.
        const CHUNK: usize = 16_384;
        let table = txn.open_table(INSTANCES).map_err(StoreError::database)?;
        let mut interner = codec::Interner::default();
        let mut chunk: Vec<Instance> = Vec::with_capacity(CHUNK);
        // A record can never be newer than the revision stored with it, but be robust.
        let mut newest = 0;
        for entry in table.iter().map_err(StoreError::database)? {
            let (key, value) = entry.map_err(StoreError::database)?;
            let instance = codec::decode_interned(key.value(), value.value(), &mut interner)?;
            newest = newest.max(instance.modify_revision);
            chunk.push(instance);
            if chunk.len() == CHUNK {
                on_instances(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)));
            }
        }
        if !chunk.is_empty() {
            on_instances(chunk);
        }
        Ok(Snapshot {
            instances: Vec::new(),
            revision: revision.max(newest),
            events,
            leases,
        })
    }

    /// Writes a batch (changes, events, lease deadlines, revision) in one durable transaction,
    /// and drops events older than the retention.
    pub fn commit(&self, batch: &Batch<'_>) -> Result<(), StoreError> {
        let txn = self.database.begin_write().map_err(StoreError::database)?;
        {
            let mut table = txn.open_table(INSTANCES).map_err(StoreError::database)?;
            for change in batch.changes {
                match change {
                    Change::Put(instance) => {
                        let record = codec::encode(instance);
                        table
                            .insert(instance.id(), record.as_slice())
                            .map_err(StoreError::database)?;
                    }
                    Change::Remove { id, .. } => {
                        table.remove(id.as_str()).map_err(StoreError::database)?;
                    }
                }
            }
            let mut events = txn.open_table(EVENTS).map_err(StoreError::database)?;
            for event in batch.events {
                let record = codec::encode_event(event);
                events
                    .insert(event.revision, record.as_slice())
                    .map_err(StoreError::database)?;
            }
            // Old events are trimmed in steps of TRIM_STEP revisions rather than on every
            // commit: one range deletion per step instead of a B-tree edit per write. The file
            // keeps at most TRIM_STEP events beyond the retention; `load` callers trim exactly.
            let oldest_written = batch.events.first().map(|e| e.revision);
            if let (Some(oldest), Some(newest)) = (oldest_written, batch.events.last()) {
                // Revisions are contiguous, so this batch covers (oldest - 1, newest].
                let crossed_step =
                    oldest.saturating_sub(1) / TRIM_STEP != newest.revision / TRIM_STEP;
                let floor = newest.revision.saturating_sub(batch.event_retention);
                if crossed_step && floor > 0 {
                    events
                        .retain_in(..floor, |_, _| false)
                        .map_err(StoreError::database)?;
                }
            }
            let mut leases = txn.open_table(LEASES).map_err(StoreError::database)?;
            for (id, deadline) in batch.leases {
                match deadline {
                    Some(deadline) => {
                        leases
                            .insert(id.as_str(), *deadline)
                            .map_err(StoreError::database)?;
                    }
                    None => {
                        leases.remove(id.as_str()).map_err(StoreError::database)?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(StoreError::database)?;
            meta.insert(REVISION_KEY, batch.revision)
                .map_err(StoreError::database)?;
        }
        txn.commit().map_err(StoreError::database)
    }
}
