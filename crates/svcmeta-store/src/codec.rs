//! The versioned encoding of stored instances: the only place record bytes are produced.
//!
//! A record is one format byte followed by the instance as JSON. JSON keeps the file readable
//! with ordinary tools and tolerant of added optional fields; the format byte lets a later
//! release change the encoding and still read old files.

use svcmeta_core::{Event, Instance};

use crate::error::StoreError;

/// The record format this build writes.
pub(crate) const RECORD_FORMAT: u8 = 1;

/// Encodes an instance as a stored record.
pub(crate) fn encode(instance: &Instance) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(256);
    bytes.push(RECORD_FORMAT);
    // Serialising plain strings, integers and maps into a Vec cannot fail.
    if serde_json::to_writer(&mut bytes, instance).is_err() {
        debug_assert!(false, "instance serialisation failed");
    }
    bytes
}

/// Decodes a stored record.
pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<Instance, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key.to_string(),
        reason,
    };
    match bytes.split_first() {
        Some((&RECORD_FORMAT, body)) => {
            let instance: Instance =
                serde_json::from_slice(body).map_err(|e| corrupt(e.to_string()))?;
            if instance.id() != key {
                return Err(corrupt(format!("record holds id {:?}", instance.id())));
            }
            Ok(instance)
        }
        Some((format, _)) => Err(corrupt(format!("unknown record format {format}"))),
        None => Err(corrupt("empty record".to_string())),
    }
}

/// Encodes a change event.
pub(crate) fn encode_event(event: &Event) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(256);
    bytes.push(RECORD_FORMAT);
    if serde_json::to_writer(&mut bytes, event).is_err() {
        debug_assert!(false, "event serialisation failed");
    }
    bytes
}

/// Decodes a stored change event.
pub(crate) fn decode_event(revision: u64, bytes: &[u8]) -> Result<Event, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: format!("event {revision}"),
        reason,
    };
    match bytes.split_first() {
        Some((&RECORD_FORMAT, body)) => {
            let event: Event = serde_json::from_slice(body).map_err(|e| corrupt(e.to_string()))?;
            if event.revision != revision {
                return Err(corrupt(format!("record holds revision {}", event.revision)));
            }
            Ok(event)
        }
        Some((format, _)) => Err(corrupt(format!("unknown record format {format}"))),
        None => Err(corrupt("empty record".to_string())),
    }
}
