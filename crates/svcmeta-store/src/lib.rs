//! svcmeta's storage: where registrations live durably.
//!
//! [`Store`] is a closed set of backends: `Memory` keeps nothing (tests, benchmarks) and
//! `Embedded` writes one redb file. The store is the truth; the in-memory registry is rebuilt
//! from [`Store::load`] on start. Writes arrive as batches of already-sequenced changes
//! ([`Store::commit`]); batching is what makes group commit possible.

mod codec;
mod embedded;
mod error;

use std::path::Path;

use svcmeta_core::{Change, Instance};

pub use embedded::{EmbeddedStore, DATABASE_FILE};
pub use error::StoreError;

/// Everything a store holds: the instances and the newest revision written.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every stored instance, in no particular order.
    pub instances: Vec<Instance>,
    /// The newest revision written (0 for an empty store).
    pub revision: u64,
}

/// A storage backend.
#[derive(Debug)]
pub enum Store {
    /// Nothing is persisted.
    Memory,
    /// One redb file in a data directory.
    Embedded(EmbeddedStore),
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
        }
    }

    /// Reads everything the store holds.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        match self {
            Store::Memory => Ok(Snapshot::default()),
            Store::Embedded(store) => store.load(),
        }
    }

    /// Durably writes a batch of sequenced changes; `revision` is the newest among them (or
    /// the current revision when the batch is empty).
    pub fn commit(&self, changes: &[Change], revision: u64) -> Result<(), StoreError> {
        match self {
            Store::Memory => Ok(()),
            Store::Embedded(store) => store.commit(changes, revision),
        }
    }
}

#[cfg(test)]
mod tests;
