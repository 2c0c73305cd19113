//! The versioned encoding of stored instances and events: the only place record bytes are
//! produced.
//!
//! A record is one format byte and a body. Format 4 (written by this build) is a CRC-32 and
//! a compact binary body (postcard) that decodes without a text parser, which keeps a restart
//! fast; format 2 (the same body without the checksum) and format 1 (JSON) are still read, so data directories written by earlier builds open as they
//! are. Events are binary too (format 6: the kind, then the instance's and its previous
//! state's stored records); events written by earlier builds (JSON, format 1; postcard,
//! formats 3 and 5) still load.
//! Write-ahead log frames (see `wal.rs`) hold a committed batch: its changes as binary records,
//! its lease deadlines and its revision. Since format 2 of the frames and format 6 of the
//! events, an instance is encoded once per commit: the frame holds its stored record as the
//! instances table does, and the checkpoint copies those bytes into the instances and events
//! tables instead of encoding the instance twice more.

use serde::{Deserialize, Serialize};
use std::hash::BuildHasher as _;
use std::ops::Range;
use std::sync::Arc;

use svcmeta_core::{Change, Event, EventKind, Health, Instance, Text};

use crate::chunk::{InstanceChunk, NumberedRecord};
use crate::error::StoreError;
use crate::Batch;

/// The JSON record format (written by earlier builds; still read; used for events).
pub(crate) const RECORD_FORMAT: u8 = 1;
/// The binary instance record format of earlier builds (still read).
pub(crate) const BINARY_FORMAT: u8 = 2;
/// The binary instance record format this build writes: a CRC-32 of the body, then the body,
/// so a record damaged in the file is refused instead of served.
pub(crate) const CHECKED_FORMAT: u8 = 4;

/// The body of a checksummed record (what follows the format byte), if the checksum holds.
fn checked_body(bytes: &[u8]) -> Result<&[u8], String> {
    let (crc, body) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| "the record is cut short".to_string())?;
    if crc32fast::hash(body) == u32::from_le_bytes(*crc) {
        Ok(body)
    } else {
        Err("its checksum does not match: the stored bytes are damaged".to_string())
    }
}

/// The binary body of an instance record. Strings are written as text (`&str`) and read
/// back as the bytes they borrow from the stored record (`&[u8]`): the wire form is the same,
/// and the reader checks UTF-8 only for strings it has not seen before (see [`Interner`]).
#[derive(Serialize, Deserialize)]
struct BinaryRecord<S> {
    id: S,
    service: S,
    address: S,
    port: u16,
    tags: Vec<S>,
    version: Option<S>,
    environment: Option<S>,
    region: Option<S>,
    meta: Vec<(S, S)>,
    ttl_ms: Option<u64>,
    health: Health,
    create_revision: u64,
    modify_revision: u64,
    registered_at: u64,
    updated_at: u64,
}

/// A record as serde writes it: the reference [`append_record_body`] is checked against, and
/// how earlier formats are written in tests.
#[cfg(test)]
type RecordOut<'a> = BinaryRecord<&'a str>;
/// A record as read, borrowing the stored bytes.
type RecordIn<'a> = BinaryRecord<&'a [u8]>;

/// The binary body of one instance, borrowing its strings.
#[cfg(test)]
fn binary_record(instance: &Instance) -> RecordOut<'_> {
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

/// A postcard output that appends to a borrowed vector, so that many records can be written
/// one after another into one buffer without a vector of their own each.
#[cfg(test)]
struct Append<'a>(&'a mut Vec<u8>);

#[cfg(test)]
impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends `format`, a checksum placeholder and the postcard body of `value` to `out`, then
/// fills in the body's CRC-32: a checksummed record written in place.
#[cfg(test)]
fn append_checked<T: Serialize>(format: u8, value: &T, out: &mut Vec<u8>) {
    let start = out.len();
    out.push(format);
    out.extend_from_slice(&[0; 4]);
    // Serialising strings and integers into a vector cannot fail.
    if postcard::serialize_with_flavor(value, Append(out)).is_err() {
        debug_assert!(false, "record serialisation failed");
    }
    let crc = crc32fast::hash(&out[start + 5..]);
    out[start + 1..start + 5].copy_from_slice(&crc.to_le_bytes());
}

/// Appends the stored record of `instance` (format byte, checksum, body: exactly what
/// [`encode`] returns) to `out` and returns where it lies.
pub(crate) fn encode_into(instance: &Instance, out: &mut Vec<u8>) -> Range<usize> {
    let start = out.len();
    out.push(CHECKED_FORMAT);
    out.extend_from_slice(&[0; 4]);
    append_record_body(instance, out);
    let crc = crc32fast::hash(&out[start + 5..]);
    out[start + 1..start + 5].copy_from_slice(&crc.to_le_bytes());
    start..out.len()
}

/// Appends an unsigned integer as postcard does (LEB128: seven bits a byte, low bits first).
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a string as postcard does: its length, then its bytes.
fn put_str(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

fn put_option_str(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => {
            out.push(1);
            put_str(out, text);
        }
        None => out.push(0),
    }
}

/// Appends the postcard body of [`binary_record`]`(instance)`, written field by field without
/// going through serde (the committer encodes every instance it logs; the serde path collected
/// the tags and meta into vectors first and pushed most bytes one at a time). The bytes are
/// exactly postcard's: `a_hand_encoded_record_is_exactly_postcards` checks it.
fn append_record_body(instance: &Instance, out: &mut Vec<u8>) {
    let fields = &instance.fields;
    put_str(out, &fields.id);
    put_str(out, &fields.service);
    put_str(out, &fields.address);
    put_varint(out, u64::from(fields.port));
    let tags = fields.tags();
    put_varint(out, tags.len() as u64);
    for tag in tags {
        put_str(out, tag);
    }
    put_option_str(out, fields.version());
    put_option_str(out, fields.environment());
    put_option_str(out, fields.region());
    let meta = fields.meta_iter();
    put_varint(out, meta.len() as u64);
    for (key, value) in meta {
        put_str(out, key);
        put_str(out, value);
    }
    match fields.ttl_ms {
        Some(ttl) => {
            out.push(1);
            put_varint(out, ttl);
        }
        None => out.push(0),
    }
    // A unit variant is its index.
    put_varint(
        out,
        match instance.health {
            Health::Passing => 0,
            Health::Warning => 1,
            Health::Critical => 2,
        },
    );
    put_varint(out, instance.create_revision);
    put_varint(out, instance.modify_revision);
    put_varint(out, instance.registered_at);
    put_varint(out, instance.updated_at);
}

/// The postcard body of `instance` through serde, to check [`append_record_body`] against.
#[cfg(test)]
pub(crate) fn serde_record_body(instance: &Instance) -> Vec<u8> {
    let mut bytes = Vec::new();
    if postcard::serialize_with_flavor(&binary_record(instance), Append(&mut bytes)).is_err() {
        panic!("serialisation failed");
    }
    bytes
}

/// The postcard body of `instance` as [`encode_into`] writes it.
#[cfg(test)]
pub(crate) fn hand_record_body(instance: &Instance) -> Vec<u8> {
    let mut bytes = Vec::new();
    append_record_body(instance, &mut bytes);
    bytes
}

/// Encodes an instance as a stored record.
pub(crate) fn encode(instance: &Instance) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(RECORD_BYTES_GUESS);
    encode_into(instance, &mut bytes);
    bytes
}

/// About the size of a typical record, to size buffers before encoding.
const RECORD_BYTES_GUESS: usize = 320;

/// Shares the strings of decoded records: a tag, version or meta value that many instances
/// carry is allocated once per loader instead of once per instance (a restart of a large
/// store otherwise allocates, and the kernel zeroes, gigabytes it throws away at once). It
/// is looked up by the stored bytes, so only a string not seen before is checked as UTF-8.
///
/// Each distinct string is numbered in the order first seen, and the table compares against
/// its own copy of the bytes, never the shared [`Text`]: a load that decodes on one thread
/// and indexes on another (see [`InstanceChunk`]) then has the decoding thread touch no
/// memory the indexing thread uses. Cloning a shared string from the decoding thread bumps
/// its reference count, which pulls the string's cache line away from the indexing thread
/// that is reading it; on two cores that traffic cost more than the decoding itself.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    /// Numbers of the distinct strings, found by hash and compared through `spans`.
    numbers: hashbrown::HashTable<u32>,
    /// Every distinct string's bytes, one after another (the decoding thread's own copy).
    bytes: Vec<u8>,
    /// Where each numbered string lies in `bytes`.
    spans: Vec<(usize, usize)>,
    /// The shared string of each number.
    texts: Vec<Text>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl Interner {
    /// The number of `bytes`, numbering it (and making its shared string) if it is new.
    fn number(&mut self, bytes: &[u8]) -> Result<u32, String> {
        let hash = self.hasher.hash_one(bytes);
        let (arena, spans) = (&self.bytes, &self.spans);
        let stored = |number: &u32| {
            let (start, end) = spans[*number as usize];
            &arena[start..end]
        };
        if let Some(known) = self.numbers.find(hash, |n| stored(n) == bytes) {
            return Ok(*known);
        }
        let text = Text::from(utf8(bytes)?);
        let number = u32::try_from(self.texts.len())
            .map_err(|_| "more distinct strings than a load can number".to_string())?;
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        self.spans.push((start, self.bytes.len()));
        self.texts.push(text);
        let (arena, spans, hasher) = (&self.bytes, &self.spans, &self.hasher);
        self.numbers.insert_unique(hash, number, |n| {
            let (start, end) = spans[*n as usize];
            hasher.hash_one(&arena[start..end])
        });
        Ok(number)
    }

    /// Shared strings numbered since the last call, in number order (for the indexing side's
    /// [`LoadStrings`]).
    fn take_new(&mut self, handed_over: &mut usize) -> Vec<Text> {
        let new = self.texts[*handed_over..].to_vec();
        *handed_over = self.texts.len();
        new
    }
}

/// Stored bytes as text.
fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| format!("a string is not UTF-8: {e}"))
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
fn instance_of(record: RecordIn<'_>, interner: &mut Interner) -> Result<Instance, String> {
    let mut numbers = Vec::with_capacity(record.tags.len() + 2 * record.meta.len());
    let numbered = number_record(record, interner, &mut numbers)?;
    Ok(numbered.build(&mut numbers.into_iter(), &interner.texts))
}

/// The body of a stored instance record, by format.
enum RecordBody<'a> {
    /// A postcard body (formats 2 and 4, its checksum checked).
    Binary(&'a [u8]),
    /// A JSON body (format 1).
    Json(&'a [u8]),
}

fn record_body(bytes: &[u8]) -> Result<RecordBody<'_>, String> {
    match bytes.split_first() {
        Some((&CHECKED_FORMAT, rest)) => checked_body(rest).map(RecordBody::Binary),
        Some((&BINARY_FORMAT, body)) => Ok(RecordBody::Binary(body)),
        Some((&RECORD_FORMAT, body)) => Ok(RecordBody::Json(body)),
        Some((format, _)) => Err(format!("unknown record format {format}")),
        None => Err("empty record".to_string()),
    }
}

fn decode_record(bytes: &[u8], interner: &mut Interner) -> Result<Instance, StoreError> {
    let decoded = match record_body(bytes) {
        Ok(RecordBody::Binary(body)) => postcard::from_bytes::<RecordIn<'_>>(body)
            .map_err(|e| e.to_string())
            .and_then(|record| instance_of(record, interner)),
        Ok(RecordBody::Json(body)) => serde_json::from_slice(body).map_err(|e| e.to_string()),
        Err(reason) => Err(reason),
    };
    decoded.map_err(|reason| StoreError::Corrupt {
        key: String::new(),
        reason,
    })
}

/// Decodes the record stored under `key` into `chunk`, its shared strings numbered by
/// `interner` (see [`InstanceChunk`]); returns the record's modify revision.
pub(crate) fn decode_into_chunk(
    key: &str,
    bytes: &[u8],
    interner: &mut Interner,
    chunk: &mut InstanceChunk,
) -> Result<u64, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key.to_string(),
        reason,
    };
    let record = match record_body(bytes).map_err(corrupt)? {
        RecordBody::Binary(body) => {
            postcard::from_bytes::<RecordIn<'_>>(body).map_err(|e| corrupt(e.to_string()))?
        }
        RecordBody::Json(_) => {
            let instance = decode_interned(key, bytes, interner)?;
            let revision = instance.modify_revision;
            chunk.made.push(instance);
            return Ok(revision);
        }
    };
    if record.id != key.as_bytes() {
        return Err(corrupt(format!(
            "record holds id {:?}",
            String::from_utf8_lossy(record.id)
        )));
    }
    let numbered = number_record(record, interner, &mut chunk.numbers).map_err(corrupt)?;
    let revision = numbered.modify_revision;
    chunk.numbered.push(numbered);
    Ok(revision)
}

/// A binary record with its shared strings numbered; its tag and meta numbers are appended
/// to `numbers`.
fn number_record(
    record: RecordIn<'_>,
    interner: &mut Interner,
    numbers: &mut Vec<u32>,
) -> Result<NumberedRecord, String> {
    let mut number = |bytes: &[u8]| interner.number(bytes);
    for tag in &record.tags {
        numbers.push(number(tag)?);
    }
    for (key, value) in &record.meta {
        numbers.push(number(key)?);
        numbers.push(number(value)?);
    }
    Ok(NumberedRecord {
        id: utf8(record.id)?.to_string(),
        address: utf8(record.address)?.to_string(),
        port: record.port,
        service: number(record.service)?,
        version: record.version.map(&mut number).transpose()?,
        environment: record.environment.map(&mut number).transpose()?,
        region: record.region.map(&mut number).transpose()?,
        tags: record.tags.len(),
        meta_pairs: record.meta.len(),
        ttl_ms: record.ttl_ms,
        health: record.health,
        create_revision: record.create_revision,
        modify_revision: record.modify_revision,
        registered_at: record.registered_at,
        updated_at: record.updated_at,
    })
}

/// Hands the strings `interner` numbered since the last chunk to `chunk`.
pub(crate) fn hand_over_strings(
    interner: &mut Interner,
    handed_over: &mut usize,
    chunk: &mut InstanceChunk,
) {
    chunk.new_strings = interner.take_new(handed_over);
}

/// The binary event record format of builds before checksums (still read).
pub(crate) const EVENT_FORMAT: u8 = 3;
/// The checksummed binary event record format of earlier builds (still read): a postcard
/// body with the instance and its previous state re-encoded inside it.
pub(crate) const CHECKED_EVENT_FORMAT: u8 = 5;
/// The event record format this build writes: the format byte, a CRC-32 of the rest, the
/// kind (one byte), then the instance's stored record (as the instances table holds it,
/// length-prefixed) and, after a flag byte, the previous state's. A checkpoint copies the
/// record bytes the log frame already holds instead of encoding the instance again.
pub(crate) const RECORD_EVENT_FORMAT: u8 = 6;

fn kind_byte(kind: EventKind) -> u8 {
    match kind {
        EventKind::Register => 0,
        EventKind::Update => 1,
        EventKind::Health => 2,
        EventKind::Deregister => 3,
    }
}

fn kind_of_byte(byte: u8) -> Result<EventKind, String> {
    Ok(match byte {
        0 => EventKind::Register,
        1 => EventKind::Update,
        2 => EventKind::Health,
        3 => EventKind::Deregister,
        other => return Err(format!("unknown event kind {other}")),
    })
}

/// Appends a length-prefixed byte string.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // A record or id never comes near 4 GiB (the log refuses frames of more than 1 GiB).
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Writes the event record of `kind` into `out` (cleared first): `instance` is the stored
/// record of the instance after the change (or its last state), `previous` the state before.
pub(crate) fn encode_event_into(
    kind: EventKind,
    instance: &[u8],
    previous: Option<&Instance>,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.push(RECORD_EVENT_FORMAT);
    out.extend_from_slice(&[0; 4]);
    out.push(kind_byte(kind));
    put_bytes(out, instance);
    match previous {
        Some(previous) => {
            out.push(1);
            let length_at = out.len();
            out.extend_from_slice(&[0; 4]);
            let record = encode_into(previous, out);
            let length = (record.end - record.start) as u32;
            out[length_at..length_at + 4].copy_from_slice(&length.to_le_bytes());
        }
        None => out.push(0),
    }
    let crc = crc32fast::hash(&out[5..]);
    out[1..5].copy_from_slice(&crc.to_le_bytes());
}

/// Reads the length-prefixed, little-endian pieces of a hand-laid record or frame, refusing
/// anything cut short.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err("the record is cut short".to_string());
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let mut bytes = [0; 4];
        bytes.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(bytes))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(bytes))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let length = self.u32()? as usize;
        self.take(length)
    }

    fn finish(&self) -> Result<(), String> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(format!("{} unexpected bytes at the end", self.bytes.len()))
        }
    }
}

/// Decodes the body of a [`RECORD_EVENT_FORMAT`] event (after its checksum).
fn decode_record_event(
    revision: u64,
    body: &[u8],
    interner: &mut Interner,
) -> Result<Event, String> {
    let record = |bytes: &[u8], interner: &mut Interner| {
        decode_record(bytes, interner)
            .map(Arc::new)
            .map_err(|error| match error {
                StoreError::Corrupt { reason, .. } => reason,
                other => other.to_string(),
            })
    };
    let mut reader = Reader { bytes: body };
    let kind = kind_of_byte(reader.u8()?)?;
    let instance = record(reader.bytes()?, interner)?;
    let previous = match reader.u8()? {
        0 => None,
        1 => Some(record(reader.bytes()?, interner)?),
        other => return Err(format!("unknown previous-state flag {other}")),
    };
    reader.finish()?;
    Ok(Event {
        revision,
        kind,
        instance,
        previous,
    })
}

/// The binary body of an event record (its revision is the record's key).
#[derive(Serialize, Deserialize)]
struct BinaryEvent<S> {
    kind: EventKind,
    instance: BinaryRecord<S>,
    previous: Option<BinaryRecord<S>>,
}

/// Encodes a change event (the format this build writes).
pub(crate) fn encode_event(event: &Event) -> Vec<u8> {
    let instance = encode(&event.instance);
    let mut bytes = Vec::with_capacity(2 * instance.len() + 16);
    encode_event_into(event.kind, &instance, event.previous.as_deref(), &mut bytes);
    bytes
}

/// Encodes a change event as earlier builds did ([`CHECKED_EVENT_FORMAT`]), for tests of
/// data they left behind.
#[cfg(test)]
pub(crate) fn encode_event_v5(event: &Event) -> Vec<u8> {
    let record = BinaryEvent {
        kind: event.kind,
        instance: binary_record(&event.instance),
        previous: event.previous.as_deref().map(binary_record),
    };
    let mut bytes = Vec::new();
    append_checked(CHECKED_EVENT_FORMAT, &record, &mut bytes);
    bytes
}

/// Decodes a stored change event of either format, sharing strings through `interner`.
pub(crate) fn decode_event(
    revision: u64,
    bytes: &[u8],
    interner: &mut Interner,
) -> Result<Event, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: format!("event {revision}"),
        reason,
    };
    let binary = |body: &[u8], interner: &mut Interner| -> Result<Event, String> {
        let record: BinaryEvent<&[u8]> = postcard::from_bytes(body).map_err(|e| e.to_string())?;
        let previous = match record.previous {
            Some(previous) => Some(Arc::new(instance_of(previous, interner)?)),
            None => None,
        };
        Ok(Event {
            revision,
            kind: record.kind,
            instance: Arc::new(instance_of(record.instance, interner)?),
            previous,
        })
    };
    match bytes.split_first() {
        Some((&RECORD_EVENT_FORMAT, rest)) => checked_body(rest)
            .and_then(|body| decode_record_event(revision, body, interner))
            .map_err(corrupt),
        Some((&CHECKED_EVENT_FORMAT, rest)) => checked_body(rest)
            .and_then(|body| binary(body, interner))
            .map_err(corrupt),
        Some((&EVENT_FORMAT, body)) => binary(body, interner).map_err(corrupt),
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

/// The write-ahead log frame body format of earlier builds (still read): one postcard body.
pub(crate) const LOG_FORMAT: u8 = 1;
/// The frame body format this build writes, laid out by hand (little-endian, lengths as
/// `u32`): the revision and event retention (`u64` each), the number of changes, each change
/// (`0` and a put's stored record, exactly as the instances table holds it, or `1`, the
/// removal's revision, id and service), the number of lease updates, each (id, then `0`, or
/// `1` and the deadline). The checkpoint writes the records straight from the frame.
pub(crate) const RECORD_LOG_FORMAT: u8 = 2;

/// One change of a logged batch.
#[derive(Serialize, Deserialize)]
enum LoggedChange<S> {
    Put(BinaryRecord<S>),
    Remove { id: S, revision: u64, service: S },
}

/// The body of a write-ahead log frame: one committed batch. Events are not logged: they
/// follow from each change and the stored state before it, which replay has.
#[derive(Serialize, Deserialize)]
struct LoggedBatch<S> {
    revision: u64,
    event_retention: u64,
    changes: Vec<LoggedChange<S>>,
    leases: Vec<(S, Option<u64>)>,
}

/// A batch read back from the write-ahead log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecoveredBatch {
    pub(crate) changes: Vec<Change>,
    pub(crate) leases: Vec<(String, Option<u64>)>,
    pub(crate) revision: u64,
    pub(crate) event_retention: u64,
}

/// A write-ahead log frame body and where each put's stored record lies in it.
#[derive(Debug)]
pub(crate) struct EncodedBatch {
    /// The frame body.
    pub(crate) body: Vec<u8>,
    /// For each change of the batch, its stored record in `body` (empty for a removal).
    pub(crate) records: Vec<Range<usize>>,
}

/// Encodes a batch as a write-ahead log frame body ([`RECORD_LOG_FORMAT`]); each instance is
/// encoded once, and the checkpoint reuses those bytes for the instances and events tables.
pub(crate) fn encode_logged_batch(batch: &Batch<'_>) -> EncodedBatch {
    let mut body = Vec::with_capacity(32 + batch.changes.len() * RECORD_BYTES_GUESS);
    let mut records = Vec::with_capacity(batch.changes.len());
    body.push(RECORD_LOG_FORMAT);
    body.extend_from_slice(&batch.revision.to_le_bytes());
    body.extend_from_slice(&batch.event_retention.to_le_bytes());
    body.extend_from_slice(&(batch.changes.len() as u32).to_le_bytes());
    for change in batch.changes {
        match change {
            Change::Put(instance) => {
                body.push(0);
                let length_at = body.len();
                body.extend_from_slice(&[0; 4]);
                let record = encode_into(instance, &mut body);
                let length = (record.end - record.start) as u32;
                body[length_at..length_at + 4].copy_from_slice(&length.to_le_bytes());
                records.push(record);
            }
            Change::Remove {
                id,
                revision,
                service,
            } => {
                body.push(1);
                body.extend_from_slice(&revision.to_le_bytes());
                put_bytes(&mut body, id.as_bytes());
                put_bytes(&mut body, service.as_bytes());
                records.push(0..0);
            }
        }
    }
    body.extend_from_slice(&(batch.leases.len() as u32).to_le_bytes());
    for (id, deadline) in batch.leases {
        put_bytes(&mut body, id.as_bytes());
        match deadline {
            Some(deadline) => {
                body.push(1);
                body.extend_from_slice(&deadline.to_le_bytes());
            }
            None => body.push(0),
        }
    }
    EncodedBatch { body, records }
}

/// Encodes a batch as earlier builds did ([`LOG_FORMAT`]), for tests of logs they left behind.
#[cfg(test)]
pub(crate) fn encode_logged_batch_v1(batch: &Batch<'_>) -> Vec<u8> {
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
                    id: id.as_str(),
                    revision: *revision,
                    service: service.as_str(),
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
    let logged: LoggedBatch<&[u8]> = match bytes.split_first() {
        Some((&RECORD_LOG_FORMAT, body)) => return decode_record_batch(body, interner),
        Some((&LOG_FORMAT, body)) => postcard::from_bytes(body).map_err(|e| e.to_string())?,
        Some((format, _)) => return Err(format!("unknown log format {format}")),
        None => return Err("empty frame".to_string()),
    };
    let mut changes = Vec::with_capacity(logged.changes.len());
    for change in logged.changes {
        changes.push(match change {
            LoggedChange::Put(record) => Change::Put(Arc::new(instance_of(record, interner)?)),
            LoggedChange::Remove {
                id,
                revision,
                service,
            } => Change::Remove {
                id: utf8(id)?.to_string(),
                revision,
                service: utf8(service)?.to_string(),
            },
        });
    }
    let leases = logged
        .leases
        .into_iter()
        .map(|(id, deadline)| Ok((utf8(id)?.to_string(), deadline)))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(RecoveredBatch {
        changes,
        leases,
        revision: logged.revision,
        event_retention: logged.event_retention,
    })
}

/// Decodes a [`RECORD_LOG_FORMAT`] frame body (after its format byte).
fn decode_record_batch(body: &[u8], interner: &mut Interner) -> Result<RecoveredBatch, String> {
    let mut reader = Reader { bytes: body };
    let revision = reader.u64()?;
    let event_retention = reader.u64()?;
    let count = reader.u32()? as usize;
    // Each change takes at least five bytes, so a damaged count cannot reserve much.
    let mut changes = Vec::with_capacity(count.min(body.len() / 5));
    for _ in 0..count {
        changes.push(match reader.u8()? {
            0 => {
                let instance =
                    decode_record(reader.bytes()?, interner).map_err(|error| match error {
                        StoreError::Corrupt { reason, .. } => reason,
                        other => other.to_string(),
                    })?;
                Change::Put(Arc::new(instance))
            }
            1 => {
                let revision = reader.u64()?;
                let id = utf8(reader.bytes()?)?.to_string();
                let service = utf8(reader.bytes()?)?.to_string();
                Change::Remove {
                    id,
                    revision,
                    service,
                }
            }
            other => return Err(format!("unknown change tag {other}")),
        });
    }
    let count = reader.u32()? as usize;
    let mut leases = Vec::with_capacity(count.min(body.len() / 5));
    for _ in 0..count {
        let id = utf8(reader.bytes()?)?.to_string();
        let deadline = match reader.u8()? {
            0 => None,
            1 => Some(reader.u64()?),
            other => return Err(format!("unknown lease tag {other}")),
        };
        leases.push((id, deadline));
    }
    reader.finish()?;
    Ok(RecoveredBatch {
        changes,
        leases,
        revision,
        event_retention,
    })
}
