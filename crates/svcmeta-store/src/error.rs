//! Errors of the storage layer: where bytes live and why they could not be read or written.

use std::path::PathBuf;

/// A failure of the store. User mistakes never reach this layer: validation runs first.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the data directory.
    #[error(
        "data directory {path} is in use by another svcmeta process (a running server?); \
         stop it, or talk to it with --server URL"
    )]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// The data directory or file could not be created or read.
    #[error("cannot open {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Writing or syncing a file failed (a full disk, an I/O error).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A stored record could not be decoded.
    #[error("stored record {key:?} is corrupt: {reason}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// Why it could not be decoded.
        reason: String,
    },
    /// The file was written by a newer svcmeta.
    #[error("stored format version {found} is newer than this svcmeta understands ({supported})")]
    UnsupportedFormat {
        /// The version in the file.
        found: u64,
        /// The newest version this build reads.
        supported: u64,
    },
    /// The shared store (Redis) could not be reached; nothing was written.
    #[error("redis is unreachable: {0}")]
    Unavailable(String),
    /// The shared store (Redis) stopped answering after a write was sent: it may or may not
    /// have been made.
    #[error("redis stopped answering during the write: {0}")]
    OutcomeUnknown(String),
    /// Redis answered with an error or an unexpected reply (or its URL is wrong).
    #[error("redis: {0}")]
    Redis(String),
    /// The embedded store could not make a write durable (an fsync failed): it may or may not
    /// survive a restart, and the store takes no more writes until then.
    #[error("the write may or may not have been kept: {0}")]
    SyncFailed(String),
    /// The embedded store's write-ahead log failed earlier or refused a batch.
    #[error("write-ahead log: {0}")]
    Log(String),
    /// The embedded database engine failed.
    #[error("embedded database: {0}")]
    Database(String),
}

impl StoreError {
    pub(crate) fn database(error: impl std::fmt::Display) -> StoreError {
        StoreError::Database(error.to_string())
    }
}
