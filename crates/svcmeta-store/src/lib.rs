//! svcmeta's storage: where registrations live durably.
//!
//! [`Store`] is a closed set of backends: `Memory` keeps nothing (tests, benchmarks),
//! `Embedded` writes a write-ahead log and one redb file (see `embedded.rs`, `wal.rs`) and
//! `Shared` is a Redis server several nodes share (see `shared.rs`). The store is the truth; the in-memory registry is rebuilt from
//! [`Store::load`] on start. Writes arrive as batches of already-sequenced changes
//! ([`Store::commit`]); batching is what makes group commit possible.

mod chunk;
mod codec;
mod embedded;
mod error;
mod shared;
#[cfg(feature = "test-support")]
pub mod test_support;
mod wal;

use std::path::Path;

use svcmeta_core::{Change, Event, Instance};

pub use chunk::{InstanceChunk, LoadStrings};
pub use embedded::{EmbeddedStore, DATABASE_FILE};
pub use error::StoreError;
pub use shared::{
    fresh_token, real_revision, Committed, DueTimer, LeaseClaim, LeaseTimer, SharedSnapshot,
    SharedStore, SharedWrite, SharedWriteError, StorePosition, StreamEntry, StreamFollower,
};

/// Everything a store holds.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every stored instance, in no particular order.
    pub instances: Vec<Instance>,
    /// The newest revision written (0 for an empty store).
    pub revision: u64,
    /// The retained change events, oldest first.
    pub events: Vec<Event>,
    /// Lease deadlines (instance id, Unix ms).
    pub leases: Vec<(String, u64)>,
}

/// One atomic write: sequenced changes, their events, lease updates and the new revision.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// The changes, in revision order.
    pub changes: &'a [Change],
    /// One event per change, in revision order.
    pub events: &'a [Event],
    /// Lease deadlines to set (`Some`) or clear (`None`).
    pub leases: &'a [(String, Option<u64>)],
    /// The newest revision (the current one when the batch has no change).
    pub revision: u64,
    /// How many of the newest events to keep.
    pub event_retention: u64,
}

/// A storage backend.
#[derive(Debug)]
pub enum Store {
    /// Nothing is persisted.
    Memory,
    /// One redb file in a data directory.
    Embedded(EmbeddedStore),
    /// A Redis server shared with other nodes; the catalog writes to it with
    /// [`SharedStore::commit`] and follows its change stream instead of calling
    /// [`Store::commit`].
    Shared(Box<SharedStore>),
}

impl Store {
    /// Opens the embedded store in `data_dir`, creating it if needed.
    pub fn open_embedded(data_dir: &Path) -> Result<Store, StoreError> {
        EmbeddedStore::open(data_dir).map(Store::Embedded)
    }

    /// The backend's name as used in the configuration.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::Embedded(_) => "embedded",
            Store::Shared(_) => "redis",
        }
    }

    /// Reads everything the store holds.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        match self {
            Store::Memory => Ok(Snapshot::default()),
            Store::Embedded(store) => store.load(),
            Store::Shared(store) => {
                let snapshot = store.snapshot()?;
                Ok(Snapshot {
                    instances: snapshot.instances,
                    revision: snapshot.revision,
                    events: Vec::new(),
                    leases: snapshot.leases,
                })
            }
        }
    }

    /// Reads the store like [`Store::load`], handing the instances to `on_instances` in
    /// chunks as they are decoded; the returned snapshot has no instances.
    pub fn load_with(
        &self,
        on_instances: &mut dyn FnMut(InstanceChunk),
    ) -> Result<Snapshot, StoreError> {
        match self {
            Store::Embedded(store) => store.load_with(on_instances),
            _ => {
                let mut snapshot = self.load()?;
                on_instances(InstanceChunk::of_instances(std::mem::take(
                    &mut snapshot.instances,
                )));
                Ok(snapshot)
            }
        }
    }

    /// Writes everything committed so far into the store's main file now (the embedded
    /// store's checkpoint, which otherwise runs about once a second); nothing for the others.
    pub fn flush(&self) -> Result<(), StoreError> {
        match self {
            Store::Embedded(store) => store.flush(),
            _ => Ok(()),
        }
    }

    /// Why the store takes no more writes, if it failed (the embedded store after a failed
    /// fsync or checkpoint, until a restart).
    pub fn problem(&self) -> Option<String> {
        match self {
            Store::Embedded(store) => store.problem(),
            _ => None,
        }
    }

    /// How many instances the store holds, when it can tell cheaply (0 otherwise): a hint for
    /// sizing the registry before [`Store::load_with`].
    pub fn stored_instances(&self) -> u64 {
        match self {
            Store::Embedded(store) => store.stored_instances().unwrap_or(0),
            _ => 0,
        }
    }

    /// Durably writes a batch, all or nothing.
    pub fn commit(&self, batch: &Batch<'_>) -> Result<(), StoreError> {
        match self {
            Store::Memory => Ok(()),
            Store::Embedded(store) => store.commit(batch),
            Store::Shared(_) => Err(StoreError::Database(
                "a shared store is written with SharedStore::commit".to_string(),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
