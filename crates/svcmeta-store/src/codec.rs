//! The versioned encoding of stored instances and events: the only place record bytes are
//! produced.
//!
//! A record is one format byte and a body. Format 2 (written by this build) is a compact
//! binary body (postcard) that decodes without a text parser, which keeps a restart fast;
//! format 1 (JSON) is still read, so data directories written by earlier builds open as they
//! are. Events are JSON (format 1): they are few and read only on start.
//! Write-ahead log frames (see `wal.rs`) hold a committed batch: its changes as binary records,
//! its lease deadlines and its revision.

use serde::{Deserialize, Serialize};
use svcmeta_core::{Change, Event, Health, Instance, InstanceFields, Meta, Text};

use crate::error::StoreError;
use crate::Batch;

/// The JSON record format (written by earlier builds; still read; used for events).
pub(crate) const RECORD_FORMAT: u8 = 1;
/// The binary instance record format this build writes.
pub(crate) const BINARY_FORMAT: u8 = 2;

/// The binary body of an instance record; strings borrow from the stored bytes.
#[derive(Serialize, Deserialize)]
struct BinaryRecord<'a> {
    #[serde(borrow)]
    id: &'a str,
    #[serde(borrow)]
    service: &'a str,
    #[serde(borrow)]
    address: &'a str,
    port: u16,
    #[serde(borrow)]
    tags: Vec<&'a str>,
    #[serde(borrow)]
    version: Option<&'a str>,
    #[serde(borrow)]
    environment: Option<&'a str>,
    #[serde(borrow)]
    region: Option<&'a str>,
    #[serde(borrow)]
    meta: Vec<(&'a str, &'a str)>,
    ttl_ms: Option<u64>,
    health: Health,
    create_revision: u64,
    modify_revision: u64,
    registered_at: u64,
    updated_at: u64,
}

/// The binary body of one instance, borrowing its strings.
fn binary_record(instance: &Instance) -> BinaryRecord<'_> {
    let fields = &instance.fields;
    BinaryRecord {
        id: &fields.id,
        service: &fields.service,
        address: &fields.address,
        port: fields.port,
        tags: fields.tags().collect(),
        version: fields.version(),
        environment: fields.environment(),
        region: fields.region(),
        meta: fields.meta_iter().collect(),
        ttl_ms: fields.ttl_ms,
        health: instance.health,
        create_revision: instance.create_revision,
        modify_revision: instance.modify_revision,
        registered_at: instance.registered_at,
        updated_at: instance.updated_at,
    }
}

/// Encodes an instance as a stored record.
pub(crate) fn encode(instance: &Instance) -> Vec<u8> {
    let mut bytes = vec![BINARY_FORMAT];
    // Serialising strings and integers into a Vec cannot fail.
    match postcard::to_allocvec(&binary_record(instance)) {
        Ok(body) => bytes.extend_from_slice(&body),
        Err(_) => debug_assert!(false, "instance serialisation failed"),
    }
    bytes
}

/// Shares the strings of decoded records: a tag, version or meta value that many instances
/// carry is allocated once per loader instead of once per instance (a restart of a large
/// store otherwise allocates, and the kernel zeroes, gigabytes it throws away at once).
#[derive(Debug, Default)]
pub(crate) struct Interner {
    strings: std::collections::HashSet<Text>,
}

impl Interner {
    fn text(&mut self, value: &str) -> Text {
        if let Some(known) = self.strings.get(value) {
            return Text::clone(known);
        }
        let text = Text::from(value);
        self.strings.insert(Text::clone(&text));
        text
    }
}

/// Decodes a stored record of either format, checking that it holds the id it is stored under.
#[cfg(test)]
pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<Instance, StoreError> {
    decode_interned(key, bytes, &mut Interner::default())
}

/// [`decode`] sharing strings through `interner`.
pub(crate) fn decode_interned(
    key: &str,
    bytes: &[u8],
    interner: &mut Interner,
) -> Result<Instance, StoreError> {
    let instance = decode_record(bytes, interner).map_err(|error| match error {
        StoreError::Corrupt { reason, .. } => StoreError::Corrupt {
            key: key.to_string(),
            reason,
        },
        other => other,
    })?;
    if instance.id() != key {
        return Err(StoreError::Corrupt {
            key: key.to_string(),
            reason: format!("record holds id {:?}", instance.id()),
        });
    }
    Ok(instance)
}

/// Decodes a record of either format that is not stored under its id (a change entry).
pub(crate) fn decode_any(bytes: &[u8]) -> Result<Instance, StoreError> {
    decode_record(bytes, &mut Interner::default())
}

/// Builds the instance a binary record describes.
fn instance_of(record: BinaryRecord<'_>, interner: &mut Interner) -> Instance {
    Instance {
        fields: InstanceFields {
            id: record.id.to_string(),
            service: interner.text(record.service),
            address: record.address.to_string(),
            port: record.port,
            tags: record.tags.into_iter().map(|t| interner.text(t)).collect(),
            version: record.version.map(|v| interner.text(v)),
            environment: record.environment.map(|e| interner.text(e)),
            region: record.region.map(|r| interner.text(r)),
            meta: record
                .meta
                .into_iter()
                .map(|(k, v)| (interner.text(k), interner.text(v)))
                .collect::<Meta>(),
            ttl_ms: record.ttl_ms,
        },
        health: record.health,
        create_revision: record.create_revision,
        modify_revision: record.modify_revision,
        registered_at: record.registered_at,
        updated_at: record.updated_at,
    }
}

fn decode_record(bytes: &[u8], interner: &mut Interner) -> Result<Instance, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: String::new(),
        reason,
    };
    let instance = match bytes.split_first() {
        Some((&BINARY_FORMAT, body)) => {
            let record: BinaryRecord<'_> =
                postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
            instance_of(record, interner)
        }
        Some((&RECORD_FORMAT, body)) => {
            serde_json::from_slice(body).map_err(|e| corrupt(e.to_string()))?
        }
        Some((format, _)) => return Err(corrupt(format!("unknown record format {format}"))),
        None => return Err(corrupt("empty record".to_string())),
    };
    Ok(instance)
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

/// The format of a write-ahead log frame body this build writes and reads.
pub(crate) const LOG_FORMAT: u8 = 1;

/// One change of a logged batch.
#[derive(Serialize, Deserialize)]
enum LoggedChange<'a> {
    #[serde(borrow)]
    Put(BinaryRecord<'a>),
    Remove {
        id: &'a str,
        revision: u64,
        service: &'a str,
    },
}

/// The body of a write-ahead log frame: one committed batch. Events are not logged: they
/// follow from each change and the stored state before it, which replay has.
#[derive(Serialize, Deserialize)]
struct LoggedBatch<'a> {
    revision: u64,
    event_retention: u64,
    #[serde(borrow)]
    changes: Vec<LoggedChange<'a>>,
    #[serde(borrow)]
    leases: Vec<(&'a str, Option<u64>)>,
}

/// A batch read back from the write-ahead log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecoveredBatch {
    pub(crate) changes: Vec<Change>,
    pub(crate) leases: Vec<(String, Option<u64>)>,
    pub(crate) revision: u64,
    pub(crate) event_retention: u64,
}

/// Encodes a batch as a write-ahead log frame body.
pub(crate) fn encode_logged_batch(batch: &Batch<'_>) -> Vec<u8> {
    let logged = LoggedBatch {
        revision: batch.revision,
        event_retention: batch.event_retention,
        changes: batch
            .changes
            .iter()
            .map(|change| match change {
                Change::Put(instance) => LoggedChange::Put(binary_record(instance)),
                Change::Remove {
                    id,
                    revision,
                    service,
                } => LoggedChange::Remove {
                    id,
                    revision: *revision,
                    service,
                },
            })
            .collect(),
        leases: batch
            .leases
            .iter()
            .map(|(id, deadline)| (id.as_str(), *deadline))
            .collect(),
    };
    let mut bytes = vec![LOG_FORMAT];
    match postcard::to_extend(&logged, bytes) {
        Ok(extended) => bytes = extended,
        Err(_) => {
            debug_assert!(false, "batch serialisation failed");
            bytes = vec![LOG_FORMAT];
        }
    }
    bytes
}

/// Decodes a write-ahead log frame body.
pub(crate) fn decode_logged_batch(
    bytes: &[u8],
    interner: &mut Interner,
) -> Result<RecoveredBatch, String> {
    let logged: LoggedBatch<'_> = match bytes.split_first() {
        Some((&LOG_FORMAT, body)) => postcard::from_bytes(body).map_err(|e| e.to_string())?,
        Some((format, _)) => return Err(format!("unknown log format {format}")),
        None => return Err("empty frame".to_string()),
    };
    Ok(RecoveredBatch {
        changes: logged
            .changes
            .into_iter()
            .map(|change| match change {
                LoggedChange::Put(record) => {
                    Change::Put(std::sync::Arc::new(instance_of(record, interner)))
                }
                LoggedChange::Remove {
                    id,
                    revision,
                    service,
                } => Change::Remove {
                    id: id.to_string(),
                    revision,
                    service: service.to_string(),
                },
            })
            .collect(),
        leases: logged
            .leases
            .into_iter()
            .map(|(id, deadline)| (id.to_string(), deadline))
            .collect(),
        revision: logged.revision,
        event_retention: logged.event_retention,
    })
}
