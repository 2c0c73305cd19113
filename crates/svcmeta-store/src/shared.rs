//! The `redis` store: one Redis server shared by several svcmeta nodes is the store of record.
//!
//! Keys (all under one prefix, in one hash slot `{prefix}`):
//! - `{P}:revision` — the global revision counter;
//! - `{P}:instances` — hash id → `"<modify_revision>,<create_revision>,"` + the binary record;
//! - `{P}:changes` — the change stream; the entry id is `<last revision>-<seq>`, fields `b`
//!   (first revision), `n` (number of changes), `p` (the writer's placeholder base) and `d`
//!   (the changes and lease updates, binary);
//! - `{P}:leases` / `{P}:removals` — sorted sets of lease deadlines and of removal times of
//!   expired instances (Unix ms);
//! - `{P}:epoch` — a random token set once; a different token means the data set was replaced
//!   (a write names the epoch it was resolved in and is refused in another one);
//! - `{P}:tail` — the token of the newest stream entry; every entry carries its own token (`t`)
//!   and its predecessor's (`q`), so a node whose last entry is not the new entry's predecessor
//!   (Redis rolled back to older data and written again) knows its history diverged;
//! - `{P}:fence` — held briefly by a node whose request kept losing races: other nodes' writes
//!   wait until it is written, so a large request cannot starve.
//!
//! A node writes with one Lua script per group commit ([`SharedStore::commit`]): it checks
//! that every id still has the revision the node resolved it against (and, for lease expiry,
//! that the deadline is still the one seen), then takes the next revisions from the counter,
//! writes the records, the lease deadlines and one stream entry. Everything or nothing: a
//! failed check changes nothing and reports a conflict.
//!
//! Nodes resolve writes against their own registry, so the records a node sends carry
//! placeholder revisions `placeholder_base + 1 ..`; the script and the readers translate them
//! into the revisions the counter gave (see [`real_revision`]).

use std::sync::Mutex;
use std::time::Duration;

use redis::{Connection, Value};
use serde::{Deserialize, Serialize};
use svcmeta_core::{Change, Instance};

use crate::codec;
use crate::error::StoreError;

/// How long connecting to Redis may take before the node calls it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long one command may take (a stream read adds its blocking time).
const COMMAND_TIMEOUT: Duration = Duration::from_millis(3000);
/// Instances read per `HSCAN` step of a snapshot.
const SCAN_COUNT: usize = 10_000;

const WRITE_SCRIPT: &str = r#"
local n_checks = tonumber(ARGV[1])
local n_lease_checks = tonumber(ARGV[2])
local n_changes = tonumber(ARGV[3])
local n_lease_ops = tonumber(ARGV[4])
if redis.call('GET', KEYS[6]) ~= ARGV[8] then
  return {'replaced', redis.call('GET', KEYS[1]) or '0'}
end
local fence = redis.call('GET', KEYS[8])
if fence and fence ~= ARGV[10] then
  return {'fenced', redis.call('GET', KEYS[1]) or '0'}
end
local i = 11
for _ = 1, n_checks do
  local id, expected = ARGV[i], ARGV[i + 1]
  i = i + 2
  local stored = redis.call('HGET', KEYS[2], id)
  local current = '0'
  if stored then current = string.match(stored, '^(%d+),') end
  if current ~= expected then
    return {'conflict', id, redis.call('GET', KEYS[1]) or '0'}
  end
end
for _ = 1, n_lease_checks do
  local set, id, expected = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  local key = KEYS[4]
  if set == 'r' then key = KEYS[5] end
  local score = redis.call('ZSCORE', key, id)
  if (not score) or tonumber(score) ~= tonumber(expected) then
    return {'conflict', id, redis.call('GET', KEYS[1]) or '0'}
  end
end
local first = 0
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if n_changes > 0 then
  last = redis.call('INCRBY', KEYS[1], n_changes)
  first = last - n_changes + 1
end
for k = 0, n_changes - 1 do
  local id, op, created, record = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  if op == 'p' then
    local create
    if string.sub(created, 1, 1) == '+' then
      create = first + tonumber(string.sub(created, 2))
    else
      create = tonumber(created)
    end
    redis.call('HSET', KEYS[2], id, string.format('%d,%d,', first + k, create) .. record)
  else
    redis.call('HDEL', KEYS[2], id)
  end
end
for _ = 1, n_lease_ops do
  local op, id, score = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  if op == 's' then
    redis.call('ZADD', KEYS[4], score, id)
    redis.call('ZREM', KEYS[5], id)
  elseif op == 'c' then
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZREM', KEYS[5], id)
  elseif op == 'r' then
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZADD', KEYS[5], score, id)
  elseif op == 'x' then
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZREM', KEYS[5], id)
  end
end
if n_changes > 0 or n_lease_ops > 0 then
  local oldest = last - tonumber(ARGV[5])
  if oldest < 0 then oldest = 0 end
  redis.call('XADD', KEYS[3], 'MINID', '~', string.format('%d', oldest), string.format('%d-*', last),
    'b', string.format('%d', first), 'n', string.format('%d', n_changes), 'p', ARGV[7],
    't', ARGV[9], 'q', redis.call('GET', KEYS[7]) or '', 'd', ARGV[6])
  redis.call('SET', KEYS[7], ARGV[9])
end
if fence and fence == ARGV[10] then redis.call('DEL', KEYS[8]) end
return {'ok', string.format('%d', first), string.format('%d', last)}
"#;

const RELEASE_FENCE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"#;

const POSITION_SCRIPT: &str = r#"
redis.call('SET', KEYS[3], ARGV[1], 'NX')
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local position = '0-0'
if last[1] then position = last[1][1] end
return {redis.call('GET', KEYS[1]) or '0', position, redis.call('GET', KEYS[3]),
  redis.call('GET', KEYS[4]) or ''}
"#;

/// The key names of one data set.
#[derive(Debug, Clone)]
struct Keys {
    revision: String,
    instances: String,
    changes: String,
    leases: String,
    removals: String,
    epoch: String,
    tail: String,
    fence: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        let key = |name: &str| format!("{{{prefix}}}:{name}");
        Keys {
            revision: key("revision"),
            instances: key("instances"),
            changes: key("changes"),
            leases: key("leases"),
            removals: key("removals"),
            epoch: key("epoch"),
            tail: key("tail"),
            fence: key("fence"),
        }
    }

    /// Every key of the data set, in the order the write script numbers them (`KEYS[1]` is
    /// the revision … `KEYS[8]` the fence).
    fn all(&self) -> [&str; 8] {
        [
            &self.revision,
            &self.instances,
            &self.changes,
            &self.leases,
            &self.removals,
            &self.epoch,
            &self.tail,
            &self.fence,
        ]
    }
}

/// Which lease timer an expiry claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseTimer {
    /// The lease ran out (the instance turns critical).
    Expire,
    /// The instance was critical long enough (it is removed).
    Remove,
}

/// The claim of one node to carry out one lease timer: the write happens only if the timer is
/// still due at `deadline`, so a timer fires once however many nodes see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseClaim {
    /// The instance.
    pub id: String,
    /// Which timer.
    pub timer: LeaseTimer,
    /// The deadline the node saw.
    pub deadline: u64,
    /// For an expiry: when the instance is to be removed (`deregister_after`), if ever.
    pub remove_at: Option<u64>,
}

/// One write: everything a group commit of one node changes.
#[derive(Debug, Clone, Copy)]
pub struct SharedWrite<'a> {
    /// Each touched id with the modify revision it was resolved against (0: absent).
    pub checks: &'a [(String, u64)],
    /// Lease timers this write carries out.
    pub claims: &'a [LeaseClaim],
    /// The changes, with placeholder revisions `placeholder_base + 1 ..` in order.
    pub changes: &'a [Change],
    /// The node's revision when it resolved the changes.
    pub placeholder_base: u64,
    /// Lease deadlines to set or clear.
    pub leases: &'a [(String, Option<u64>)],
    /// The data set's epoch the node resolved the write in.
    pub epoch: &'a str,
    /// The fence token this node holds, if any (released by the write).
    pub fence: Option<&'a str>,
}

/// Revisions a successful write took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The first revision (0 when the write had no change).
    pub first: u64,
    /// The newest revision after the write.
    pub last: u64,
}

/// Why a shared write did not happen. Nothing was written in every case.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SharedWriteError {
    /// An id changed since the node resolved it (or a lease timer was already carried out).
    #[error("instance {id:?} was changed concurrently (the store is at revision {revision})")]
    Conflict {
        /// The id whose check failed.
        id: String,
        /// The store's revision when the check failed.
        revision: u64,
    },
    /// The data set was replaced (flushed, restored) since the node loaded it.
    #[error("the redis data set was replaced since this node loaded it (the store is at revision {revision}); the node is loading it again")]
    Replaced {
        /// The store's revision.
        revision: u64,
    },
    /// Another node holds the write fence; retry shortly.
    #[error("another node is finishing a large write; retry")]
    Fenced,
    /// Redis could not be reached; the write was not sent.
    #[error("redis is unreachable: {0}")]
    Unavailable(String),
    /// The connection failed after the write was sent: it may or may not have been made.
    #[error("redis stopped answering during the write ({0}); it may or may not have been made")]
    Interrupted(String),
    /// Redis answered with an error.
    #[error("redis: {0}")]
    Failed(String),
}

/// Where the shared store stands, read atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePosition {
    /// The global revision.
    pub revision: u64,
    /// The newest stream entry id (`0-0` when the stream is empty).
    pub position: String,
    /// The data set's epoch token.
    pub epoch: String,
    /// The newest stream entry's token (empty when there is none).
    pub tail: String,
}

/// A consistent starting point: instances, the revision they are at, and the stream position
/// to follow from.
#[derive(Debug, Default)]
pub struct SharedSnapshot {
    /// Every stored instance; some may be newer than `revision` (written while scanning).
    pub instances: Vec<Instance>,
    /// The revision the position corresponds to.
    pub revision: u64,
    /// The stream entry id of that revision (`0-0` when the stream is empty).
    pub position: String,
    /// The store's revision when the scan ended: changes up to it may have been seen
    /// half-way (by the scan and again in the stream), so history starts after it.
    pub settled: u64,
    /// The data set's epoch token.
    pub epoch: String,
    /// The token of the entry at `position`.
    pub tail: String,
    /// Lease deadlines (id, Unix ms).
    pub leases: Vec<(String, u64)>,
}

/// One stream entry, with real revisions.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    /// The entry id (the position after applying it).
    pub position: String,
    /// The revision of its first change (the entry's changes are `first ..= first + n - 1`).
    pub first: u64,
    /// Its changes in revision order.
    pub changes: Vec<Change>,
    /// Lease deadlines it set (`Some`) or cleared (`None`).
    pub leases: Vec<(String, Option<u64>)>,
    /// The entry's token.
    pub token: String,
    /// The token of the entry before it (empty for the first).
    pub previous: String,
}

/// A timer that is due, as read from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueTimer {
    /// The instance.
    pub id: String,
    /// Which timer.
    pub timer: LeaseTimer,
    /// Its deadline.
    pub deadline: u64,
}

/// One record as an `HSCAN` step returns it: id and stored value.
type RawRecord = (String, Vec<u8>);
/// One `HSCAN` step: the next cursor and the records.
type ScanStep = (u64, Vec<RawRecord>);

/// The body of a stream entry.
#[derive(Serialize, Deserialize)]
struct EntryBody {
    changes: Vec<EntryChange>,
    leases: Vec<(String, Option<u64>)>,
}

#[derive(Serialize, Deserialize)]
enum EntryChange {
    /// A binary record with placeholder revisions.
    Put(Vec<u8>),
    Remove {
        id: String,
        service: String,
    },
}

/// A token unlikely to repeat: process id, a counter and the time in nanoseconds.
pub fn fresh_token() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{:x}-{:x}-{:x}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// Translates a placeholder revision of a write into the revision Redis gave it.
pub fn real_revision(revision: u64, placeholder_base: u64, first: u64) -> u64 {
    if revision > placeholder_base {
        first + (revision - placeholder_base - 1)
    } else {
        revision
    }
}

/// The Redis store of a node.
pub struct SharedStore {
    client: redis::Client,
    keys: Keys,
    stream_retention: u64,
    connection: Mutex<Option<Connection>>,
    write_script: redis::Script,
    position_script: redis::Script,
    release_fence_script: redis::Script,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("keys", &self.keys.revision)
            .finish()
    }
}

fn unavailable(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
}

fn describe(error: redis::RedisError) -> SharedWriteError {
    if unavailable(&error) {
        SharedWriteError::Unavailable(error.to_string())
    } else {
        SharedWriteError::Failed(error.to_string())
    }
}

impl From<SharedWriteError> for StoreError {
    fn from(error: SharedWriteError) -> StoreError {
        match error {
            SharedWriteError::Unavailable(reason) => StoreError::Unavailable(reason),
            SharedWriteError::Interrupted(reason) => StoreError::OutcomeUnknown(reason),
            other => StoreError::Redis(other.to_string()),
        }
    }
}

impl SharedStore {
    /// A store on the Redis at `url` (`redis://host:port/db`), keys under `prefix`. Nothing
    /// is contacted yet; the change stream keeps about the last `stream_retention` revisions.
    pub fn open(url: &str, prefix: &str, stream_retention: u64) -> Result<SharedStore, StoreError> {
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(StoreError::Redis(format!(
                "redis key prefix {prefix:?} must be non-empty and without braces"
            )));
        }
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Redis(format!("redis url {url:?}: {e}")))?;
        Ok(SharedStore {
            client,
            keys: Keys::new(prefix),
            stream_retention: stream_retention.max(16),
            connection: Mutex::new(None),
            write_script: redis::Script::new(WRITE_SCRIPT),
            position_script: redis::Script::new(POSITION_SCRIPT),
            release_fence_script: redis::Script::new(RELEASE_FENCE_SCRIPT),
        })
    }

    /// A new connection with the store's timeouts; `extra_read` is added to the read timeout
    /// (for blocking stream reads).
    fn connect(&self, extra_read: Duration) -> Result<Connection, SharedWriteError> {
        let connection = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(describe)?;
        connection
            .set_read_timeout(Some(COMMAND_TIMEOUT + extra_read))
            .map_err(describe)?;
        connection
            .set_write_timeout(Some(COMMAND_TIMEOUT))
            .map_err(describe)?;
        Ok(connection)
    }

    /// Runs `work` on the shared command connection, reconnecting first if needed; a
    /// connection that failed is dropped so the next call starts afresh.
    fn with_connection<T>(
        &self,
        work: impl Fn(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, SharedWriteError> {
        self.run_on_connection(true, work)
    }

    /// Runs `work` on the shared command connection. With `resend`, a command that failed on
    /// a connection that sat idle (and may have died with a Redis restart) is sent once more
    /// on a fresh connection: only for commands that may run twice. Without it, a failure after
    /// the command was sent is [`SharedWriteError::Interrupted`]: it may have run.
    fn run_on_connection<T>(
        &self,
        resend: bool,
        work: impl Fn(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, SharedWriteError> {
        let mut slot = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let reused = slot.is_some();
        let connection = match slot.as_mut() {
            Some(connection) => connection,
            None => slot.insert(self.connect(Duration::ZERO)?),
        };
        match work(connection) {
            Ok(value) => Ok(value),
            Err(error) if resend && reused && error.is_io_error() && !error.is_timeout() => {
                *slot = None;
                let connection = slot.insert(self.connect(Duration::ZERO)?);
                work(connection).map_err(|error| {
                    if unavailable(&error) {
                        *slot = None;
                    }
                    describe(error)
                })
            }
            Err(error) if !resend && unavailable(&error) => {
                *slot = None;
                Err(SharedWriteError::Interrupted(error.to_string()))
            }
            Err(error) => {
                if unavailable(&error) {
                    *slot = None;
                }
                Err(describe(error))
            }
        }
    }

    /// Drops the command connection, so the next command connects afresh (the follower
    /// calls it when Redis stops answering, so a write after a Redis restart does not go
    /// to a connection that died meanwhile).
    pub fn reset_connection(&self) {
        *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Writes one group commit atomically (see the module documentation).
    pub fn commit(&self, write: &SharedWrite<'_>) -> Result<Committed, SharedWriteError> {
        let mut invocation = self.write_script.prepare_invoke();
        for key in self.keys.all() {
            invocation.key(key);
        }
        let mut lease_ops: Vec<(&str, &str, u64)> = write
            .leases
            .iter()
            .map(|(id, deadline)| match deadline {
                Some(at) => ("s", id.as_str(), *at),
                None => ("c", id.as_str(), 0),
            })
            .collect();
        for claim in write.claims {
            lease_ops.push(match (claim.timer, claim.remove_at) {
                (LeaseTimer::Expire, Some(at)) => ("r", claim.id.as_str(), at),
                _ => ("x", claim.id.as_str(), 0),
            });
        }
        let body = EntryBody {
            changes: write
                .changes
                .iter()
                .map(|change| match change {
                    Change::Put(instance) => EntryChange::Put(codec::encode(instance)),
                    Change::Remove { id, service, .. } => EntryChange::Remove {
                        id: id.clone(),
                        service: service.clone(),
                    },
                })
                .collect(),
            leases: write.leases.to_vec(),
        };
        let body = postcard::to_allocvec(&body)
            .map_err(|e| SharedWriteError::Failed(format!("encoding the change entry: {e}")))?;
        invocation
            .arg(write.checks.len())
            .arg(write.claims.len())
            .arg(write.changes.len())
            .arg(lease_ops.len())
            .arg(self.stream_retention)
            .arg(body)
            .arg(write.placeholder_base)
            .arg(write.epoch)
            .arg(fresh_token())
            .arg(write.fence.unwrap_or(""));
        for (id, expected) in write.checks {
            invocation.arg(id).arg(expected);
        }
        for claim in write.claims {
            let set = match claim.timer {
                LeaseTimer::Expire => "l",
                LeaseTimer::Remove => "r",
            };
            invocation.arg(set).arg(&claim.id).arg(claim.deadline);
        }
        for change in write.changes {
            match change {
                Change::Put(instance) => {
                    let created = if instance.create_revision > write.placeholder_base {
                        format!("+{}", instance.create_revision - write.placeholder_base - 1)
                    } else {
                        instance.create_revision.to_string()
                    };
                    invocation
                        .arg(instance.id())
                        .arg("p")
                        .arg(created)
                        .arg(codec::encode(instance));
                }
                Change::Remove { id, .. } => {
                    invocation.arg(id).arg("d").arg("").arg("");
                }
            }
        }
        for (op, id, score) in lease_ops {
            invocation.arg(op).arg(id).arg(score);
        }
        // Never sent twice: a write that ran but whose answer was lost must not be retried
        // here (a compare-and-set would then conflict with itself).
        let reply: Vec<String> = self.run_on_connection(false, |c| invocation.invoke(c))?;
        let number = |text: Option<&String>| -> Result<u64, SharedWriteError> {
            text.and_then(|t| t.parse().ok())
                .ok_or_else(|| SharedWriteError::Failed(format!("unexpected reply {reply:?}")))
        };
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(Committed {
                first: number(reply.get(1))?,
                last: number(reply.get(2))?,
            }),
            Some("conflict") => Err(SharedWriteError::Conflict {
                id: reply.get(1).cloned().unwrap_or_default(),
                revision: number(reply.get(2))?,
            }),
            Some("replaced") => Err(SharedWriteError::Replaced {
                revision: number(reply.get(1))?,
            }),
            Some("fenced") => Err(SharedWriteError::Fenced),
            _ => Err(SharedWriteError::Failed(format!(
                "unexpected reply {reply:?}"
            ))),
        }
    }

    /// The store's current revision, stream position, epoch and tail, read atomically (and
    /// the epoch created when the data set is new).
    pub fn position(&self) -> Result<StorePosition, SharedWriteError> {
        let fresh_epoch = fresh_token();
        let reply: Vec<String> = self.with_connection(|c| {
            self.position_script
                .key(&self.keys.revision)
                .key(&self.keys.changes)
                .key(&self.keys.epoch)
                .key(&self.keys.tail)
                .arg(&fresh_epoch)
                .invoke(c)
        })?;
        match reply.as_slice() {
            [revision, position, epoch, tail] => Ok(StorePosition {
                revision: revision.parse().map_err(|_| {
                    SharedWriteError::Failed(format!("revision {revision:?} is not a number"))
                })?,
                position: position.clone(),
                epoch: epoch.clone(),
                tail: tail.clone(),
            }),
            _ => Err(SharedWriteError::Failed(format!(
                "unexpected reply {reply:?}"
            ))),
        }
    }

    /// Takes the write fence for `hold` unless another node holds it (true when taken).
    pub fn take_fence(&self, token: &str, hold: Duration) -> Result<bool, SharedWriteError> {
        let reply: Option<String> = self.with_connection(|c| {
            redis::cmd("SET")
                .arg(&self.keys.fence)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(hold.as_millis() as u64)
                .query(c)
        })?;
        Ok(reply.is_some())
    }

    /// Releases the write fence if this token still holds it.
    pub fn release_fence(&self, token: &str) -> Result<(), SharedWriteError> {
        self.with_connection(|c| {
            self.release_fence_script
                .key(&self.keys.fence)
                .arg(token)
                .invoke::<i64>(c)
        })
        .map(|_| ())
    }

    /// Reads a consistent starting point: the position first, then every instance (those
    /// changed during the scan are caught up by following the stream from the position,
    /// applying a change only when it is newer than the instance's revision).
    pub fn snapshot(&self) -> Result<SharedSnapshot, StoreError> {
        let start = self.position()?;
        // One thread scans while another decodes what the previous step returned.
        let (pages, decoder_input) = std::sync::mpsc::sync_channel::<Vec<RawRecord>>(4);
        let started = std::time::Instant::now();
        let instances: Vec<Instance> = std::thread::scope(|scope| {
            let decoder = scope.spawn(move || -> Result<Vec<Instance>, StoreError> {
                let mut decoded: Vec<Instance> = Vec::new();
                let mut interner = codec::Interner::default();
                // HSCAN may return an id twice; keep its newest record.
                let mut slots: std::collections::HashMap<String, usize> =
                    std::collections::HashMap::new();
                for page in decoder_input {
                    for (id, value) in page {
                        let instance = decode_stored(&id, &value, &mut interner)?;
                        match slots.entry(id) {
                            std::collections::hash_map::Entry::Occupied(slot) => {
                                let kept = &mut decoded[*slot.get()];
                                if instance.modify_revision > kept.modify_revision {
                                    *kept = instance;
                                }
                            }
                            std::collections::hash_map::Entry::Vacant(slot) => {
                                slot.insert(decoded.len());
                                decoded.push(instance);
                            }
                        }
                    }
                }
                Ok(decoded)
            });
            let mut cursor: u64 = 0;
            let scanned = loop {
                let step: Result<ScanStep, SharedWriteError> = self.with_connection(|c| {
                    redis::cmd("HSCAN")
                        .arg(&self.keys.instances)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(SCAN_COUNT)
                        .query(c)
                });
                let (next, pairs) = match step {
                    Ok(step) => step,
                    Err(error) => break Err(error),
                };
                if pages.send(pairs).is_err() {
                    break Ok(()); // the decoder failed; its error is reported below
                }
                if next == 0 {
                    break Ok(());
                }
                cursor = next;
            };
            drop(pages);
            let decoded = decoder
                .join()
                .map_err(|_| StoreError::Database("the decoding thread panicked".to_string()))?;
            scanned?;
            decoded
        })?;
        tracing::debug!(instances = instances.len(), elapsed = ?started.elapsed(), "redis snapshot scanned");
        let settled = self.position()?.revision;
        let scores: Vec<(String, f64)> = self.with_connection(|c| {
            redis::cmd("ZRANGE")
                .arg(&self.keys.leases)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query(c)
        })?;
        Ok(SharedSnapshot {
            instances,
            revision: start.revision,
            position: start.position,
            settled,
            epoch: start.epoch,
            tail: start.tail,
            leases: scores.into_iter().map(|(id, at)| (id, at as u64)).collect(),
        })
    }

    /// Timers due at `now` (at most `limit` of each kind).
    pub fn due_timers(&self, now: u64, limit: usize) -> Result<Vec<DueTimer>, SharedWriteError> {
        let mut due = Vec::new();
        for (key, timer) in [
            (&self.keys.leases, LeaseTimer::Expire),
            (&self.keys.removals, LeaseTimer::Remove),
        ] {
            let scores: Vec<(String, f64)> = self.with_connection(|c| {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(key)
                    .arg("-inf")
                    .arg(now)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query(c)
            })?;
            due.extend(scores.into_iter().map(|(id, at)| DueTimer {
                id,
                timer,
                deadline: at as u64,
            }));
        }
        Ok(due)
    }

    /// Trims the change stream to about `keep` entries (tests, and operators who want less).
    pub fn trim_stream(&self, keep: u64) -> Result<(), SharedWriteError> {
        self.with_connection(|c| {
            redis::cmd("XTRIM")
                .arg(&self.keys.changes)
                .arg("MAXLEN")
                .arg(keep)
                .query::<u64>(c)
        })
        .map(|_| ())
    }

    /// Deletes every key of this data set (benchmarks and tests clean up with it).
    pub fn remove_data_set(&self) -> Result<(), SharedWriteError> {
        self.with_connection(|c| redis::cmd("DEL").arg(&self.keys.all()[..]).query::<u64>(c))
            .map(|_| ())
    }

    /// A reader of the change stream, with a connection of its own.
    pub fn follower(&self) -> StreamFollower<'_> {
        StreamFollower {
            store: self,
            connection: None,
        }
    }
}

/// Reads the change stream in order on its own connection.
pub struct StreamFollower<'a> {
    store: &'a SharedStore,
    connection: Option<Connection>,
}

impl StreamFollower<'_> {
    /// Entries after `position`, waiting up to `block` for the first one.
    pub fn read(
        &mut self,
        position: &str,
        block: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, SharedWriteError> {
        if self.connection.is_none() {
            self.connection = Some(self.store.connect(block)?);
        }
        let Some(connection) = self.connection.as_mut() else {
            return Err(SharedWriteError::Unavailable("no connection".to_string()));
        };
        let reply: redis::RedisResult<Value> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.store.keys.changes)
            .arg(position)
            .query(connection);
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => {
                if unavailable(&error) {
                    self.connection = None;
                }
                return Err(describe(error));
            }
        };
        parse_read_reply(reply)
    }
}

fn malformed(what: &str) -> SharedWriteError {
    SharedWriteError::Failed(format!("malformed change stream reply: {what}"))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse_read_reply(reply: Value) -> Result<Vec<StreamEntry>, SharedWriteError> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams,
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return Err(malformed("not an array")),
    };
    let mut entries = Vec::new();
    for stream in streams {
        let Value::Array(mut parts) = stream else {
            return Err(malformed("stream is not an array"));
        };
        let Some(Value::Array(items)) = parts.pop() else {
            return Err(malformed("no entries"));
        };
        for item in items {
            let Value::Array(item) = item else {
                return Err(malformed("entry is not an array"));
            };
            let [id, Value::Array(fields)] = item.as_slice() else {
                return Err(malformed("entry shape"));
            };
            let position = text(id).ok_or_else(|| malformed("entry id"))?;
            entries.push(parse_entry(position, fields)?);
        }
    }
    Ok(entries)
}

fn parse_entry(position: String, fields: &[Value]) -> Result<StreamEntry, SharedWriteError> {
    let mut first = None;
    let mut placeholder = None;
    let mut body: Option<&[u8]> = None;
    let mut token = String::new();
    let mut previous = String::new();
    for pair in fields.chunks(2) {
        let [name, value] = pair else {
            return Err(malformed("odd field list"));
        };
        match text(name).as_deref() {
            Some("b") => first = text(value).and_then(|t| t.parse::<u64>().ok()),
            Some("p") => placeholder = text(value).and_then(|t| t.parse::<u64>().ok()),
            Some("t") => token = text(value).unwrap_or_default(),
            Some("q") => previous = text(value).unwrap_or_default(),
            Some("d") => {
                if let Value::BulkString(bytes) = value {
                    body = Some(bytes);
                }
            }
            _ => {}
        }
    }
    let (Some(first), Some(placeholder), Some(body)) = (first, placeholder, body) else {
        return Err(malformed("entry fields"));
    };
    let body: EntryBody =
        postcard::from_bytes(body).map_err(|e| malformed(&format!("entry {position}: {e}")))?;
    let mut changes = Vec::with_capacity(body.changes.len());
    for (offset, change) in body.changes.into_iter().enumerate() {
        let revision = first + offset as u64;
        changes.push(match change {
            EntryChange::Put(record) => {
                let mut instance = codec::decode_any(&record)
                    .map_err(|e| malformed(&format!("entry {position}: {e}")))?;
                instance.create_revision =
                    real_revision(instance.create_revision, placeholder, first);
                instance.modify_revision = revision;
                Change::Put(std::sync::Arc::new(instance))
            }
            EntryChange::Remove { id, service } => Change::Remove {
                id,
                revision,
                service,
            },
        });
    }
    Ok(StreamEntry {
        position,
        first,
        changes,
        leases: body.leases,
        token,
        previous,
    })
}

/// Decodes a value of the instances hash: `"<modify>,<create>,"` and a binary record.
fn decode_stored(
    id: &str,
    value: &[u8],
    interner: &mut codec::Interner,
) -> Result<Instance, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: id.to_string(),
        reason: reason.to_string(),
    };
    let mut parts = value.splitn(3, |b| *b == b',');
    let number =
        |part: Option<&[u8]>| -> Option<u64> { std::str::from_utf8(part?).ok()?.parse().ok() };
    let modify = number(parts.next()).ok_or_else(|| corrupt("no modify revision"))?;
    let create = number(parts.next()).ok_or_else(|| corrupt("no create revision"))?;
    let record = parts.next().ok_or_else(|| corrupt("no record"))?;
    let mut instance = codec::decode_interned(id, record, interner)?;
    instance.modify_revision = modify;
    instance.create_revision = create;
    Ok(instance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_revisions_map_onto_the_revisions_redis_gave() {
        // A node at revision 10 resolved three changes as 11, 12, 13; Redis gave 40..=42.
        assert_eq!(real_revision(11, 10, 40), 40);
        assert_eq!(real_revision(13, 10, 40), 42);
        // A create revision the node already knew is kept.
        assert_eq!(real_revision(7, 10, 40), 7);
    }

    #[test]
    fn a_stored_value_without_its_revisions_is_corrupt() {
        let mut interner = codec::Interner::default();
        assert!(decode_stored("a", b"12", &mut interner).is_err());
        assert!(decode_stored("a", b"x,1,", &mut interner).is_err());
    }
}
