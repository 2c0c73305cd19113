//! The registry: live instances, their indexes, and the revision they are at.
//!
//! Writes arrive as [`Change`]s that already carry their revision (the caller sequences and
//! persists them; see `resolve`, which turns a client [`Mutation`] into a `Change`). Reads are
//! answered from the bitmap indexes: the planner intersects the posting lists of a query's
//! criteria smallest first, narrows with unions (any-of tags, version ranges) and subtracts
//! negations, then pages the matches in (service, id) order.
//! No I/O, no clock, no locking: callers wrap the registry in whatever lock they need.

use std::collections::{BTreeMap, BTreeSet};

use hashbrown::HashMap;
use std::sync::Arc;

use roaring::RoaringBitmap;
use serde::Serialize;

use crate::index::{
    service_key, service_key_text, table_bytes, FreshStrings, Index, LabelsMut, LoadBuffer,
    MetaMut, PostingMemory,
};
use crate::model::{Health, Instance, InstanceFields, Registration, Text};
use crate::query::{Cursor, MetaCriterion, NodeInfo, Page, PlanStep, Query, QueryAnswer};
use crate::validate::Limits;
use crate::version::VersionCriterion;

/// A write a client asks for, before it is sequenced.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Register or replace an instance.
    Register(Registration),
    /// Remove an instance.
    Deregister(String),
    /// Set an instance's health.
    SetHealth {
        /// The instance id.
        id: String,
        /// The new health.
        health: Health,
    },
    /// Renew an instance's lease: it must have a ttl; a non-passing instance becomes passing.
    Renew(String),
}

impl Mutation {
    /// The id of the instance the mutation is about.
    pub fn id(&self) -> &str {
        match self {
            Mutation::Register(registration) => registration.id(),
            Mutation::Deregister(id) | Mutation::SetHealth { id, .. } | Mutation::Renew(id) => id,
        }
    }
}

/// A sequenced write: the new state of one instance, with its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The instance now has this state (its `modify_revision` is the change's revision).
    Put(Arc<Instance>),
    /// The instance is gone.
    Remove {
        /// The removed instance's id.
        id: String,
        /// The removal's revision.
        revision: u64,
        /// The service it belonged to.
        service: String,
    },
}

impl Change {
    /// The change's revision.
    pub fn revision(&self) -> u64 {
        match self {
            Change::Put(instance) => instance.modify_revision,
            Change::Remove { revision, .. } => *revision,
        }
    }

    /// The instance id the change is about.
    pub fn id(&self) -> &str {
        match self {
            Change::Put(instance) => instance.id(),
            Change::Remove { id, .. } => id,
        }
    }
}

/// Why a mutation cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MutationError {
    /// The instance does not exist.
    #[error("instance {0:?} not found")]
    NotFound(String),
    /// The instance has no ttl, so it has no lease to renew.
    #[error("instance {0:?} has no ttl; register it with a ttl to use leases")]
    NoLease(String),
    /// A compare-and-set write found another revision than the one it expected.
    #[error("instance {id:?} is at revision {actual}, not {expected} (0: absent) as the write expected; read it again and retry")]
    Conflict {
        /// The instance id.
        id: String,
        /// The revision the write expected (0: the instance must not exist).
        expected: u64,
        /// The instance's revision (0: it does not exist).
        actual: u64,
    },
    /// The registry is full.
    #[error("the write would take the registry over its max_instances limit of {limit}")]
    Full {
        /// The configured limit.
        limit: u64,
    },
}

/// Decides what a mutation does to the current state of its instance.
///
/// Returns `Ok(None)` when the mutation changes nothing (re-registering identical fields,
/// setting the health it already has), so no revision is spent on it.
pub fn resolve(
    current: Option<&Arc<Instance>>,
    mutation: Mutation,
    revision: u64,
    now_ms: u64,
) -> Result<Option<Change>, MutationError> {
    match mutation {
        Mutation::Register(registration) => {
            let fields = registration.fields;
            match current {
                Some(old) if old.fields == fields && old.health == Health::Passing => Ok(None),
                Some(old) => Ok(Some(Change::Put(Arc::new(Instance {
                    fields,
                    health: Health::Passing,
                    create_revision: old.create_revision,
                    modify_revision: revision,
                    registered_at: old.registered_at,
                    updated_at: now_ms,
                })))),
                None => Ok(Some(Change::Put(Arc::new(Instance {
                    fields,
                    health: Health::Passing,
                    create_revision: revision,
                    modify_revision: revision,
                    registered_at: now_ms,
                    updated_at: now_ms,
                })))),
            }
        }
        Mutation::Deregister(id) => match current {
            Some(old) => Ok(Some(Change::Remove {
                id,
                revision,
                service: old.fields.service.to_string(),
            })),
            None => Err(MutationError::NotFound(id)),
        },
        Mutation::SetHealth { id, health } => match current {
            Some(old) if old.health == health => Ok(None),
            Some(old) => {
                let mut instance = Instance::clone(old);
                instance.health = health;
                instance.modify_revision = revision;
                instance.updated_at = now_ms;
                Ok(Some(Change::Put(Arc::new(instance))))
            }
            None => Err(MutationError::NotFound(id)),
        },
        Mutation::Renew(id) => match current {
            Some(old) if old.fields.ttl_ms.is_none() => Err(MutationError::NoLease(id)),
            Some(old) if old.health == Health::Passing => Ok(None),
            Some(old) => {
                let mut instance = Instance::clone(old);
                instance.health = Health::Passing;
                instance.modify_revision = revision;
                instance.updated_at = now_ms;
                Ok(Some(Change::Put(Arc::new(instance))))
            }
            None => Err(MutationError::NotFound(id)),
        },
    }
}

/// Summary of one service for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceSummary {
    /// The name as spelled by the service's oldest live instance.
    pub name: String,
    /// Number of live instances.
    pub instances: u64,
    /// Instances per health.
    pub passing: u64,
    /// Instances with warning health.
    pub warning: u64,
    /// Instances with critical health.
    pub critical: u64,
    /// Distinct tags, sorted.
    pub tags: Vec<String>,
    /// Distinct versions, sorted.
    pub versions: Vec<String>,
    /// Distinct environments, sorted.
    pub environments: Vec<String>,
    /// Distinct regions, sorted.
    pub regions: Vec<String>,
}

/// A value and how many instances have it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValueCount {
    /// The value.
    pub value: String,
    /// Number of instances.
    pub count: u64,
}

/// Index statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexStats {
    /// The registry revision.
    pub revision: u64,
    /// Live instances.
    pub instances: u64,
    /// Distinct services.
    pub services: u64,
    /// Instances per health word.
    pub health: BTreeMap<String, u64>,
    /// Most common environments.
    pub environments: Vec<ValueCount>,
    /// Most common regions.
    pub regions: Vec<ValueCount>,
    /// Most common versions.
    pub versions: Vec<ValueCount>,
    /// Most common tags.
    pub tags: Vec<ValueCount>,
    /// Distinct tags.
    pub distinct_tags: u64,
    /// Distinct meta keys.
    pub distinct_meta_keys: u64,
    /// Number of posting lists.
    pub posting_lists: u64,
    /// Estimated bytes held by the indexes (not the records).
    pub index_memory_bytes: u64,
    /// Instances stored under earlier, looser limits that the current limits would reject.
    pub instances_over_limits: u64,
}

/// Live instances, their indexes and the revision they are at.
#[derive(Debug, Default)]
pub struct Registry {
    /// Slot → instance; `None` for a free slot.
    slots: Vec<Option<Arc<Instance>>>,
    /// Free slots, reused before the slot vector grows.
    free: Vec<u32>,
    /// Instance id → slot.
    by_id: IdMap,
    index: Index,
    /// Lower-cased service names, sorted: the first key of the result order.
    sorted_services: BTreeSet<Text>,
    /// Lower-cased service → its slots ordered by instance id: a single-service page is read
    /// in order from here instead of sorting every candidate.
    service_order: HashMap<Text, Vec<u32>>,
    /// Lower-cased service → revision of the last change to any of its instances. Kept after
    /// the service's last instance is gone (a tombstone), so the value never goes back.
    service_revisions: HashMap<Text, u64>,
    /// Revision of the newest applied change.
    revision: u64,
    /// Postings of a bulk load not yet in the index (only while a [`RegistryLoader`] builds
    /// this registry; empty otherwise).
    loading: Option<Box<LoadBuffer>>,
    /// Records stored as a copy of the one a change carried (see [`Registry::stored_copies`]).
    copies: u64,
}

/// Builds a registry from stored instances (a restart): the fast path of [`Registry::put`],
/// with postings collected and appended to their bitmaps in bulk (see [`LoadBuffer`]). The
/// registry is only handed out by [`RegistryLoader::finish`], once every posting is in.
#[derive(Debug)]
pub struct RegistryLoader {
    registry: Registry,
    buffered: usize,
}

/// Instances a loader indexes between two moves of its buffered postings into the bitmaps
/// (bounds the buffer's memory).
const LOAD_FLUSH_EVERY: usize = 16_384;

/// Changes in one write from which [`Registry::apply_all`] collects postings in bulk: below
/// it, moving each collected list into its bitmap costs more than it saves.
const BULK_APPLY_FROM: usize = 256;

/// Changes in one write from which [`Registry::apply_all`] indexes runs of new instances as
/// a whole (see [`Registry::apply_all_parallel`]).
const PARALLEL_APPLY_FROM: usize = 4_096;

/// New instances in a row (between changes to known ids) from which a run is indexed on two
/// threads (starting a thread costs tens of microseconds; 1,024 instances take about a
/// millisecond to index); a shorter run is indexed on the committing thread.
const PARALLEL_RUN_FROM: usize = 1_024;

impl RegistryLoader {
    /// Adds a stored instance (no change event, no copy). The revision rises to the
    /// instance's own.
    pub fn load(&mut self, instance: Instance) {
        let revision = instance.modify_revision;
        self.registry.put(Arc::new(instance), revision);
        self.registry.revision = self.registry.revision.max(revision);
        self.buffered += 1;
        if self.buffered == LOAD_FLUSH_EVERY {
            self.registry.take_buffered();
            self.buffered = 0;
        }
    }

    /// The registry, every posting in its bitmap.
    pub fn finish(mut self) -> Registry {
        self.registry.take_buffered();
        self.registry.loading = None;
        self.registry
    }
}

/// A criterion satisfied by membership in any of several posting lists.
enum Union<'q> {
    Version(&'q VersionCriterion),
    TagsAny(&'q [String]),
}

impl Union<'_> {
    fn label(&self) -> String {
        match self {
            Union::Version(VersionCriterion::Exact { text, .. }) => format!("version={text}"),
            Union::Version(VersionCriterion::Range { text, .. }) => format!("version {text}"),
            Union::TagsAny(tags) => format!("tag any of {}", tags.join(",")),
        }
    }
}

/// At most this many candidates are checked one by one against a union criterion.
const PER_CANDIDATE_THRESHOLD: u64 = 256;

/// Above this many candidates, a single-service page is read in id order (no sort).
const IN_ORDER_THRESHOLD: u64 = 64;

/// Above this many candidates, a paged query walks services in order instead of sorting all.
const SORT_ALL_THRESHOLD: u64 = 4096;

impl Registry {
    /// An empty registry at revision 0.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// The revision of the newest applied change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Raises the revision without a change (after loading a store whose last write was a
    /// removal, for instance). Never lowers it.
    pub fn advance_revision(&mut self, revision: u64) {
        self.revision = self.revision.max(revision);
    }

    /// Number of live instances.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the registry holds no instance.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The instance with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Instance>> {
        let slot = self.by_id.get(id, &self.slots)?;
        self.slots.get(slot as usize)?.as_ref()
    }

    /// How many records so far were stored as a copy of the one their change carried (to
    /// share the index's strings) rather than as they came: while it stays the same, every
    /// applied change's record is the registry's own.
    pub fn stored_copies(&self) -> u64 {
        self.copies
    }

    /// Every live instance, in slot order.
    pub fn instances(&self) -> impl Iterator<Item = &Arc<Instance>> {
        self.slots.iter().flatten()
    }

    /// Applies the sequenced changes of one write, in order. A large batch collects the
    /// postings of its new instances and appends them to their bitmaps at the end (as a
    /// restart does, see [`RegistryLoader`]); a small one is applied change by change.
    pub fn apply_all(&mut self, changes: Vec<Change>) {
        if changes.len() < BULK_APPLY_FROM || self.loading.is_some() {
            for change in changes {
                self.apply(change);
            }
            return;
        }
        if changes.len() >= PARALLEL_APPLY_FROM {
            self.apply_all_parallel(changes);
            return;
        }
        self.loading = Some(Box::default());
        for change in changes {
            self.apply(change);
        }
        self.take_buffered();
        self.loading = None;
    }

    /// [`Registry::apply_all`] for a large write: each run of new instances takes its slots
    /// and id map entries one by one, then is indexed and finished as a whole (on two threads
    /// when it is long, see [`Registry::finish_new_run`]). Any other change ends the run
    /// first, so it sees a whole index.
    fn apply_all_parallel(&mut self, changes: Vec<Change>) {
        let mut run: Vec<(u32, u64)> = Vec::new();
        for change in changes {
            let revision = change.revision();
            let instance = match change {
                Change::Put(instance) => instance,
                other => {
                    self.finish_new_run(&mut run);
                    self.apply(other);
                    continue;
                }
            };
            match self.claim_slot(instance.id()) {
                Err(slot) => {
                    // New: readable in its slot at once (the id map's next growth reads it).
                    if let Some(entry) = self.slots.get_mut(slot as usize) {
                        *entry = Some(instance);
                    }
                    run.push((slot, revision));
                    self.revision = self.revision.max(revision);
                }
                Ok(_) => {
                    self.finish_new_run(&mut run);
                    self.apply(Change::Put(instance));
                }
            }
        }
        self.finish_new_run(&mut run);
    }

    /// Indexes a run of new instances already in their slots (see
    /// [`Registry::apply_all_parallel`]) and finishes each as [`Registry::put`] does. A long
    /// run is split over two threads by what they write: this one adds the label postings
    /// and then each service's name and revision, a second one (scoped, joined here) the meta
    /// postings and then each instance's place in its service's id order.
    fn finish_new_run(&mut self, run: &mut Vec<(u32, u64)>) {
        if run.is_empty() {
            return;
        }
        let parallel = run.len() >= PARALLEL_RUN_FROM;
        let Registry {
            slots,
            index,
            sorted_services,
            service_order,
            service_revisions,
            ..
        } = self;
        let slots: &Slots = slots;
        let new: Vec<(u32, &Arc<Instance>, u64)> = run
            .iter()
            .filter_map(|&(slot, revision)| {
                Some((slot, slots.get(slot as usize)?.as_ref()?, revision))
            })
            .collect();
        let fields: Vec<(u32, &InstanceFields, Health)> = new
            .iter()
            .map(|&(slot, instance, _)| (slot, &instance.fields, instance.health))
            .collect();
        let (mut labels, mut metas) = index.parts_mut();
        let mut label_side = || {
            let shared = labels.insert_run(&fields);
            for &(_, instance, revision) in &new {
                note_service(
                    sorted_services,
                    service_revisions,
                    &instance.fields.service,
                    revision,
                );
            }
            shared
        };
        let mut meta_side = || {
            let shared = metas.insert_run(&fields);
            for &(slot, instance, _) in &new {
                order_insert_into(
                    service_order,
                    slots,
                    &instance.fields.service,
                    slot,
                    instance.id(),
                );
            }
            shared
        };
        let (labels_shared, meta_shared) = if parallel {
            std::thread::scope(|scope| {
                match std::thread::Builder::new()
                    .name("svcmeta-index".to_string())
                    .spawn_scoped(scope, &mut meta_side)
                {
                    Ok(helper) => {
                        let labels_shared = label_side();
                        // A panic of the helper is the caller's, as on one thread.
                        let meta_shared = helper
                            .join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                        (labels_shared, meta_shared)
                    }
                    // No second thread: both sides run here.
                    Err(_) => (label_side(), Vec::new()),
                }
            })
        } else {
            (label_side(), meta_side())
        };
        let meta_shared = if meta_shared.len() == labels_shared.len() {
            meta_shared
        } else {
            meta_side()
        };
        let copies: Vec<u32> = new
            .iter()
            .zip(labels_shared.iter().zip(&meta_shared))
            .filter(|(_, (labels, meta))| !(**labels && **meta))
            .map(|(&(slot, _, _), _)| slot)
            .collect();
        drop(new);
        drop(fields);
        // Records with strings of their own (not prepared by the caller): every value has a
        // key now, so they take the keys.
        for slot in copies {
            if let Some(instance) = self.slots.get_mut(slot as usize).and_then(Option::take) {
                let instance = self.with_keys(instance);
                if let Some(entry) = self.slots.get_mut(slot as usize) {
                    *entry = Some(instance);
                }
            }
        }
        run.clear();
    }

    /// Applies a sequenced change and raises the revision to the change's.
    pub fn apply(&mut self, change: Change) {
        let revision = change.revision();
        match change {
            Change::Put(instance) => self.put(instance, revision),
            Change::Remove { id, service, .. } => {
                // The index must be whole before a removal.
                self.take_buffered();
                if let Some(slot) = self.by_id.remove(id.as_str(), &self.slots) {
                    if let Some(old) = self.slots.get_mut(slot as usize).and_then(Option::take) {
                        self.index.remove(slot, &old);
                        self.order_remove(&old.fields.service, slot, old.id());
                        self.forget_service_if_empty(&old.fields.service);
                        self.touch_service(&old.fields.service, revision);
                    }
                    self.free.push(slot);
                } else {
                    self.touch_service(&service, revision);
                }
                if self.by_id.is_empty() {
                    self.release_spare_capacity();
                }
            }
        }
        self.revision = self.revision.max(revision);
    }

    /// Makes room for `additional` more instances (a load that knows how many it reads), so
    /// the slot table and the id map do not grow step by step.
    pub fn reserve(&mut self, additional: usize) {
        self.slots.reserve(additional);
        self.by_id.reserve(additional, &self.slots);
    }

    /// A loader that fills this (empty) registry with stored instances: the fast path of a
    /// restart.
    pub fn loader(mut self) -> RegistryLoader {
        self.loading = Some(Box::default());
        RegistryLoader {
            registry: self,
            buffered: 0,
        }
    }

    /// Moves a loader's buffered postings into the index.
    fn take_buffered(&mut self) {
        if let Some(buffer) = self.loading.as_deref_mut() {
            self.index.take_buffered(buffer);
        }
    }

    /// Replaces the strings of a registration by the copies the index already holds, or by
    /// those of earlier registrations prepared with the same `fresh` (one batch of writes).
    /// A registration prepared this way is stored as it is, without a copy, when applied
    /// before the index changes; any other is copied once and interned then.
    pub fn intern(&self, mutation: &mut Mutation, fresh: &mut FreshStrings) {
        if let Mutation::Register(registration) = mutation {
            self.index.intern(&mut registration.fields, fresh);
        }
    }

    /// [`Registry::intern`] of a registration's labels alone (see [`Registration::strings_mut`]):
    /// the labels and the meta of a batch can be interned on two threads, each with its own
    /// `fresh`, without the two ever touching the same shared string.
    pub fn intern_labels(&self, labels: &mut LabelsMut<'_>, fresh: &mut FreshStrings) {
        self.index.intern_labels(labels, fresh);
    }

    /// [`Registry::intern`] of a registration's meta alone.
    pub fn intern_meta(&self, meta: &mut MetaMut<'_>, fresh: &mut FreshStrings) {
        self.index.intern_meta(meta, fresh);
    }

    /// Stores `instance` in its slot and indexes it. The record is kept as it is when its
    /// strings are the index's own (an interned registration, a health change, a restart's
    /// decoded records); otherwise a copy with the index's strings is stored, so equal
    /// strings are held once and the caller's copy is untouched.
    fn put(&mut self, mut instance: Arc<Instance>, revision: u64) {
        let mut shared = true;
        let slot = match self.claim_slot(instance.id()) {
            Ok(slot) => {
                // A load that meets an id twice: the index must be whole before a removal.
                self.take_buffered();
                let old = self.slots.get_mut(slot as usize).and_then(Option::take);
                match old {
                    Some(old) if old.fields == instance.fields => {
                        // Only health or revisions changed: move one posting instead of all.
                        self.index.set_health(slot, old.health, instance.health);
                        if !same_strings(&old.fields, &instance.fields) {
                            let mut stored = Instance::clone(&instance);
                            stored.fields = old.fields.clone();
                            instance = Arc::new(stored);
                            self.copies += 1;
                        }
                    }
                    Some(old) => {
                        self.index.remove(slot, &old);
                        shared = self.index.insert(slot, &instance.fields, instance.health);
                        if !old
                            .fields
                            .service
                            .eq_ignore_ascii_case(&instance.fields.service)
                        {
                            self.order_remove(&old.fields.service, slot, old.id());
                            self.order_insert(&instance.fields.service, slot, instance.id());
                            self.forget_service_if_empty(&old.fields.service);
                            self.touch_service(&old.fields.service, revision);
                        }
                    }
                    None => {
                        debug_assert!(false, "slot {slot} of a known id is empty");
                        shared = self.index.insert(slot, &instance.fields, instance.health);
                        self.order_insert(&instance.fields.service, slot, instance.id());
                    }
                }
                slot
            }
            Err(slot) => {
                let buffer = self.loading.as_deref_mut();
                shared =
                    self.index
                        .insert_buffered(slot, &instance.fields, instance.health, buffer);
                self.order_insert(&instance.fields.service, slot, instance.id());
                slot
            }
        };
        if !shared {
            instance = self.with_keys(instance);
        }
        self.finish_put(slot, instance, revision);
    }

    /// `id`'s slot (`Ok`), or a slot taken for a new id and recorded in the id map (`Err`):
    /// the last freed one, else a new one at the end, empty until the caller fills it.
    fn claim_slot(&mut self, id: &str) -> Result<u32, u32> {
        let free_slot = self.free.last().copied().unwrap_or(self.slots.len() as u32);
        let claimed = self.by_id.get_or_insert(id, &self.slots, free_slot);
        if claimed.is_err() && self.free.pop().is_none() {
            self.slots.push(None);
        }
        claimed
    }

    /// `instance` with the index's strings, once every value has a key: changed in place when
    /// nobody else holds it, else a copy (counted in [`Registry::stored_copies`]).
    fn with_keys(&mut self, mut instance: Arc<Instance>) -> Arc<Instance> {
        let mut fresh = FreshStrings::default();
        match Arc::get_mut(&mut instance) {
            Some(owned) => self.index.intern(&mut owned.fields, &mut fresh),
            None => {
                let mut owned = Instance::clone(&instance);
                self.index.intern(&mut owned.fields, &mut fresh);
                instance = Arc::new(owned);
                self.copies += 1;
            }
        }
        instance
    }

    /// The end of [`Registry::put`]: the service is known, touched at `revision`, and the
    /// record takes its slot.
    fn finish_put(&mut self, slot: u32, instance: Arc<Instance>, revision: u64) {
        note_service(
            &mut self.sorted_services,
            &mut self.service_revisions,
            &instance.fields.service,
            revision,
        );
        if let Some(entry) = self.slots.get_mut(slot as usize) {
            *entry = Some(instance);
        }
    }

    /// Puts `slot` into its service's id order (the slot itself is not yet readable).
    fn order_insert(&mut self, service: &Text, slot: u32, id: &str) {
        order_insert_into(&mut self.service_order, &self.slots, service, slot, id);
    }

    /// Takes `slot` out of its service's id order (its instance already taken out of `slots`).
    fn order_remove(&mut self, service: &str, slot: u32, id: &str) {
        let key = service_key(service);
        let slots = &self.slots;
        let Some(list) = self.service_order.get_mut(&*key) else {
            return;
        };
        let position = list.partition_point(|s| {
            slots
                .get(*s as usize)
                .and_then(Option::as_ref)
                .is_some_and(|instance| instance.id() < id)
        });
        if list.get(position) == Some(&slot) {
            list.remove(position);
        } else {
            debug_assert!(
                false,
                "slot {slot} not at its place in the order of {service}"
            );
            list.retain(|s| *s != slot);
        }
        if list.is_empty() {
            self.service_order.remove(&*key);
        }
    }

    fn touch_service(&mut self, service: &str, revision: u64) {
        touch(&mut self.service_revisions, service, revision);
    }

    fn forget_service_if_empty(&mut self, service: &str) {
        let key = service_key(service);
        if !self.index.services.contains_key(&*key) {
            self.sorted_services.remove(&*key);
        }
    }

    fn release_spare_capacity(&mut self) {
        self.service_order.clear();
        self.service_order.shrink_to_fit();
        self.slots.clear();
        self.slots.shrink_to_fit();
        self.free.clear();
        self.free.shrink_to_fit();
        self.by_id.shrink_to_fit(&self.slots);
        self.index.compact_all();
    }

    /// The revision of the last change that could affect this query's result: the service's
    /// revision when the query names a service, the global revision otherwise.
    pub fn scope_revision(&self, query: &Query) -> u64 {
        match &query.service {
            Some(service) => self
                .service_revisions
                .get(service.to_ascii_lowercase().as_str())
                .copied()
                .unwrap_or(0),
            None => self.revision,
        }
    }

    /// The revision of the last change to a service (0 when it never existed).
    pub fn service_revision(&self, service: &str) -> u64 {
        self.service_revisions
            .get(service.to_ascii_lowercase().as_str())
            .copied()
            .unwrap_or(0)
    }

    /// Answers a query, paged.
    pub fn query(&self, query: &Query, page: &Page) -> QueryAnswer {
        let candidates = self.candidates(query, None);
        let total = candidates.len();
        let limit = page.limit.unwrap_or(usize::MAX);
        let (instances, more) = if let (Some(service), Some(limit), true) =
            (&query.service, page.limit, total > IN_ORDER_THRESHOLD)
        {
            self.page_in_service(service, &candidates, page.cursor.as_ref(), limit)
        } else if query.service.is_some() || total <= SORT_ALL_THRESHOLD || page.limit.is_none() {
            let single_service = query.service.is_some();
            self.page_by_sorting(&candidates, page.cursor.as_ref(), limit, single_service)
        } else {
            self.page_by_service_walk(&candidates, page.cursor.as_ref(), limit)
        };
        let next_cursor = if more {
            instances.last().map(|last| Cursor::after(last).encode())
        } else {
            None
        };
        QueryAnswer {
            revision: self.revision,
            total,
            instances,
            next_cursor,
        }
    }

    /// Counts the matches of a query without materialising them.
    pub fn count(&self, query: &Query) -> u64 {
        if query.is_empty() {
            return self.index.all.len();
        }
        self.candidates(query, None).len()
    }

    /// The plan the query runs: each criterion with its posting size and what remains.
    pub fn explain(&self, query: &Query) -> Vec<PlanStep> {
        let mut steps = Vec::new();
        self.candidates(query, Some(&mut steps));
        steps
    }

    fn page_by_sorting(
        &self,
        candidates: &RoaringBitmap,
        cursor: Option<&Cursor>,
        limit: usize,
        single_service: bool,
    ) -> (Vec<Arc<Instance>>, bool) {
        // Within one service the order is the id order: skip the case-folding comparison.
        let order = if single_service { order_by_id } else { order };
        let mut matches: Vec<&Arc<Instance>> = candidates
            .iter()
            .filter_map(|slot| self.slots.get(slot as usize).and_then(Option::as_ref))
            .filter(|instance| cursor.is_none_or(|c| is_after(instance, c)))
            .collect();
        let more = matches.len() > limit;
        if more {
            matches.select_nth_unstable_by(limit, |a, b| order(a, b));
            matches.truncate(limit);
        }
        matches.sort_unstable_by(|a, b| order(a, b));
        (matches.into_iter().cloned().collect(), more)
    }

    /// A page of one service's candidates, read in id order until the page is full.
    fn page_in_service(
        &self,
        service: &str,
        candidates: &RoaringBitmap,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> (Vec<Arc<Instance>>, bool) {
        let key = service_key(service);
        let Some(list) = self.service_order.get(&*key) else {
            return (Vec::new(), false);
        };
        let start = match cursor {
            None => 0,
            Some(cursor) => match cursor.service_key.as_str().cmp(key.as_ref()) {
                std::cmp::Ordering::Less => 0,
                std::cmp::Ordering::Greater => list.len(),
                std::cmp::Ordering::Equal => list.partition_point(|s| {
                    self.slots
                        .get(*s as usize)
                        .and_then(Option::as_ref)
                        .is_some_and(|instance| instance.id() <= cursor.id.as_str())
                }),
            },
        };
        let mut page = Vec::with_capacity(limit.min(1024));
        for slot in list.iter().skip(start) {
            if !candidates.contains(*slot) {
                continue;
            }
            if page.len() == limit {
                return (page, true);
            }
            if let Some(instance) = self.slots.get(*slot as usize).and_then(Option::as_ref) {
                page.push(Arc::clone(instance));
            }
        }
        (page, false)
    }

    fn page_by_service_walk(
        &self,
        candidates: &RoaringBitmap,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> (Vec<Arc<Instance>>, bool) {
        let mut out = Vec::with_capacity(limit.min(1024));
        let start = cursor.map(|c| c.service_key.as_str()).unwrap_or("");
        let range = (std::ops::Bound::Included(start), std::ops::Bound::Unbounded);
        for service in self.sorted_services.range::<str, _>(range) {
            let Some(bitmap) = self.index.services.get(service.as_str()) else {
                continue;
            };
            let part = candidates & bitmap;
            if part.is_empty() {
                continue;
            }
            let (mut page, _) = self.page_by_sorting(&part, cursor, usize::MAX, true);
            let room = limit - out.len();
            if page.len() > room {
                page.truncate(room);
                out.extend(page);
                return (out, true);
            }
            out.extend(page);
            if out.len() == limit {
                // More only if some candidate lies beyond this service.
                let more = self
                    .sorted_services
                    .range::<str, _>((
                        std::ops::Bound::Excluded(service.as_ref()),
                        std::ops::Bound::Unbounded,
                    ))
                    .any(|next| {
                        self.index
                            .services
                            .get(next.as_str())
                            .is_some_and(|b| !b.is_disjoint(candidates))
                    });
                return (out, more);
            }
        }
        (out, false)
    }

    /// The candidate slots of a query, computed from the indexes alone.
    fn candidates(&self, query: &Query, mut plan: Option<&mut Vec<PlanStep>>) -> RoaringBitmap {
        let mut record = |criterion: String, postings: u64, remaining: u64| {
            if let Some(plan) = plan.as_deref_mut() {
                plan.push(PlanStep {
                    criterion,
                    postings,
                    remaining,
                });
            }
        };
        let empty = RoaringBitmap::new();
        // Exact criteria: one posting list each; a missing value means no match.
        let mut fixed: Vec<(String, &RoaringBitmap)> = Vec::new();
        fn push<'a>(
            fixed: &mut Vec<(String, &'a RoaringBitmap)>,
            empty: &'a RoaringBitmap,
            label: String,
            bitmap: Option<&'a RoaringBitmap>,
        ) {
            fixed.push((label, bitmap.unwrap_or(empty)));
        }
        if let Some(service) = &query.service {
            push(
                &mut fixed,
                &empty,
                format!("service={service}"),
                self.index.services.get(&*service_key(service)),
            );
        }
        if let Some(environment) = &query.environment {
            push(
                &mut fixed,
                &empty,
                format!("env={environment}"),
                self.index.environments.get(environment.as_str()),
            );
        }
        if let Some(region) = &query.region {
            push(
                &mut fixed,
                &empty,
                format!("region={region}"),
                self.index.regions.get(region.as_str()),
            );
        }
        for tag in &query.tags_all {
            push(
                &mut fixed,
                &empty,
                format!("tag={tag}"),
                self.index.tags.get(tag.as_str()),
            );
        }
        for (key, criterion) in &query.meta {
            match criterion {
                MetaCriterion::Equals(value) => push(
                    &mut fixed,
                    &empty,
                    format!("meta.{key}={value}"),
                    self.index
                        .meta_values
                        .get(key.as_str())
                        .and_then(|values| values.get(value.as_str())),
                ),
                MetaCriterion::Present => push(
                    &mut fixed,
                    &empty,
                    format!("meta.{key} present"),
                    self.index.meta_keys.get(key.as_str()),
                ),
            }
        }
        if let Some(health) = query.health {
            push(
                &mut fixed,
                &empty,
                format!("health={health}"),
                Some(&self.index.health[health.slot()]),
            );
        }
        // Union criteria: the candidate must be in at least one of several lists.
        let mut unions: Vec<Union<'_>> = Vec::new();
        if let Some(criterion) = &query.version {
            unions.push(Union::Version(criterion));
        }
        if !query.tags_any.is_empty() {
            unions.push(Union::TagsAny(&query.tags_any));
        }

        fixed.sort_by_key(|(_, bitmap)| bitmap.len());
        let mut candidates: Option<RoaringBitmap> = None;
        for (label, bitmap) in fixed {
            let next = match candidates.take() {
                None => bitmap.clone(),
                Some(mut current) => {
                    current &= bitmap;
                    current
                }
            };
            record(label, bitmap.len(), next.len());
            let exhausted = next.is_empty();
            candidates = Some(next);
            if exhausted {
                return RoaringBitmap::new();
            }
        }
        for union in unions {
            let label = union.label();
            let next = match candidates.take() {
                // Few candidates: check each one's own value instead of touching every list
                // the criterion could match (a version range can match thousands).
                Some(current) if current.len() <= PER_CANDIDATE_THRESHOLD => {
                    let next: RoaringBitmap = current
                        .iter()
                        .filter(|slot| {
                            self.slots
                                .get(*slot as usize)
                                .and_then(Option::as_ref)
                                .is_some_and(|instance| self.union_matches(&union, instance))
                        })
                        .collect();
                    record(label, current.len(), next.len());
                    next
                }
                current => {
                    let members = self.union_members(&union);
                    let postings: u64 = members.iter().map(|m| m.len()).sum();
                    let next = match current {
                        None => members
                            .into_iter()
                            .fold(RoaringBitmap::new(), |acc, m| acc | m),
                        Some(current) if members.len() == 1 => current & members[0],
                        Some(current) => members
                            .into_iter()
                            .fold(RoaringBitmap::new(), |acc, m| acc | (&current & m)),
                    };
                    record(label, postings, next.len());
                    next
                }
            };
            let exhausted = next.is_empty();
            candidates = Some(next);
            if exhausted {
                return RoaringBitmap::new();
            }
        }
        let mut candidates = match candidates {
            Some(candidates) => candidates,
            None => {
                record(
                    "all".to_string(),
                    self.index.all.len(),
                    self.index.all.len(),
                );
                self.index.all.clone()
            }
        };
        for tag in &query.tags_none {
            if let Some(bitmap) = self.index.tags.get(tag.as_str()) {
                candidates -= bitmap;
                record(format!("tag!={tag}"), bitmap.len(), candidates.len());
            }
        }
        // The part of a filter expression no index answers is checked per candidate.
        if let Some(filter) = &query.filter {
            let before = candidates.len();
            let node = NodeInfo::standalone_ref();
            candidates = candidates
                .iter()
                .filter(|slot| {
                    self.slots
                        .get(*slot as usize)
                        .and_then(Option::as_ref)
                        .is_some_and(|instance| filter.matches(instance, node))
                })
                .collect();
            record(format!("filter {filter}"), before, candidates.len());
        }
        candidates
    }

    /// The posting lists a union criterion accepts.
    fn union_members(&self, union: &Union<'_>) -> Vec<&RoaringBitmap> {
        match union {
            Union::Version(criterion) => self
                .index
                .versions
                .iter()
                .filter(|(text, posting)| criterion.matches(text, posting.parsed.as_ref()))
                .map(|(_, posting)| &posting.slots)
                .collect(),
            Union::TagsAny(tags) => tags
                .iter()
                .filter_map(|tag| self.index.tags.get(tag.as_str()))
                .collect(),
        }
    }

    /// Whether one instance satisfies a union criterion (same answer as its posting lists).
    fn union_matches(&self, union: &Union<'_>, instance: &Instance) -> bool {
        match union {
            Union::Version(criterion) => instance.fields.version.as_deref().is_some_and(|v| {
                let parsed = self.index.versions.get(v).and_then(|p| p.parsed.as_ref());
                criterion.matches(v, parsed)
            }),
            Union::TagsAny(tags) => tags.iter().any(|tag| instance.fields.has_tag(tag)),
        }
    }

    /// One summary per service, ordered by lower-cased name.
    pub fn services(&self) -> Vec<ServiceSummary> {
        self.sorted_services
            .iter()
            .filter_map(|key| {
                let bitmap = self.index.services.get(key)?;
                Some(self.summarise(bitmap))
            })
            .collect()
    }

    /// The summary of one service (case-insensitive), if it has live instances.
    pub fn service(&self, name: &str) -> Option<ServiceSummary> {
        let bitmap = self.index.services.get(&*service_key(name))?;
        Some(self.summarise(bitmap))
    }

    fn summarise(&self, bitmap: &RoaringBitmap) -> ServiceSummary {
        let mut tags = BTreeSet::new();
        let mut versions = BTreeSet::new();
        let mut environments = BTreeSet::new();
        let mut regions = BTreeSet::new();
        let mut health = [0u64; 3];
        let mut oldest: Option<&Arc<Instance>> = None;
        for slot in bitmap {
            let Some(instance) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
                continue;
            };
            let fields = &instance.fields;
            tags.extend(fields.tags());
            versions.extend(fields.version.as_deref());
            environments.extend(fields.environment.as_deref());
            regions.extend(fields.region.as_deref());
            health[instance.health as usize] += 1;
            if oldest.is_none_or(|o| {
                (instance.create_revision, instance.id()) < (o.create_revision, o.id())
            }) {
                oldest = Some(instance);
            }
        }
        let owned = |set: BTreeSet<&str>| set.into_iter().map(str::to_string).collect();
        ServiceSummary {
            name: oldest
                .map(|o| o.fields.service().to_string())
                .unwrap_or_default(),
            instances: bitmap.len(),
            passing: health[0],
            warning: health[1],
            critical: health[2],
            tags: owned(tags),
            versions: owned(versions),
            environments: owned(environments),
            regions: owned(regions),
        }
    }

    /// Index statistics with the `top` most common values per dimension.
    pub fn stats(&self, top: usize, limits: &Limits) -> IndexStats {
        fn top_values<'a>(
            entries: impl Iterator<Item = (&'a str, u64)>,
            top: usize,
        ) -> Vec<ValueCount> {
            let mut all: Vec<(&str, u64)> = entries.collect();
            all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            all.truncate(top);
            all.into_iter()
                .map(|(value, count)| ValueCount {
                    value: value.to_string(),
                    count,
                })
                .collect()
        }
        let counts = |postings: &crate::index::Postings| {
            top_values(postings.iter().map(|(k, b)| (k.as_ref(), b.len())), top)
        };
        let instances_over_limits = self
            .instances()
            .filter(|instance| exceeds(instance, limits))
            .count() as u64;
        IndexStats {
            revision: self.revision,
            instances: self.len() as u64,
            services: self.index.services.len() as u64,
            health: Health::ALL
                .iter()
                .map(|h| (h.as_str().to_string(), self.index.health[h.slot()].len()))
                .collect(),
            environments: counts(&self.index.environments),
            regions: counts(&self.index.regions),
            versions: top_values(
                self.index
                    .versions
                    .iter()
                    .map(|(k, p)| (k.as_ref(), p.slots.len())),
                top,
            ),
            tags: counts(&self.index.tags),
            distinct_tags: self.index.tags.len() as u64,
            distinct_meta_keys: self.index.meta_keys.len() as u64,
            posting_lists: self.index.posting_lists() as u64,
            index_memory_bytes: self.index_memory_bytes(),
            instances_over_limits,
        }
    }

    /// Estimated bytes held by the indexes: posting lists, the id map, the slot table and
    /// the per-service id orders (not the instance records). See [`MemoryBreakdown`].
    pub fn index_memory_bytes(&self) -> u64 {
        self.memory_parts(false).index_total()
    }

    /// Estimated heap bytes of the registry, part by part, records included (walks every
    /// instance, so it costs a few milliseconds per 100,000 instances).
    pub fn memory_breakdown(&self) -> MemoryBreakdown {
        self.memory_parts(true)
    }

    fn memory_parts(&self, with_records: bool) -> MemoryBreakdown {
        // Slots only: the ids are the records' own. The large tables are counted by their
        // capacity (what they hold), the per-service structures by their content (so churn
        // that brings the content back brings the figure back).
        let id_map = table_bytes::<u32, ()>(self.by_id.capacity());
        let service_order = table_bytes::<Text, Vec<u32>>(self.service_order.len())
            + self
                .service_order
                .values()
                .map(|list| list.len() as u64 * 4)
                .sum::<u64>();
        // A BTreeSet leaf holds up to 11 keys in about 200 bytes; the names are shared with
        // the service posting lists.
        let sorted_services = (self.sorted_services.len() as u64).div_ceil(11) * 200;
        let service_revisions = table_bytes::<Text, u64>(self.service_revisions.len());
        let records = if with_records {
            self.instances()
                .map(|instance| record_bytes(instance))
                .sum()
        } else {
            0
        };
        MemoryBreakdown {
            postings: self.index.memory(),
            id_map,
            slots: (self.slots.capacity() * std::mem::size_of::<Option<Arc<Instance>>>()
                + self.free.len() * 4) as u64,
            service_order: service_order + sorted_services,
            service_revisions,
            records,
        }
    }
}

/// Estimated heap bytes of the registry, part by part (hash tables by their capacity,
/// vectors by theirs, roaring bitmaps by their containers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryBreakdown {
    /// The posting lists, per dimension, with their keys (the interned strings).
    pub postings: PostingMemory,
    /// Instance id → slot.
    pub id_map: u64,
    /// The slot table (one pointer per slot, free ones included) and the free-slot list.
    pub slots: u64,
    /// Each service's slots in id order, and the sorted service names.
    pub service_order: u64,
    /// The last revision of every service ever seen (tombstones included); bookkeeping for
    /// blocking queries, not an index, so not in [`MemoryBreakdown::index_total`].
    pub service_revisions: u64,
    /// The instance records (the shared block, its id and address, tag and meta vectors;
    /// interned strings are counted with the posting lists). Only [`Registry::memory_breakdown`]
    /// fills it in; not in [`MemoryBreakdown::index_total`].
    pub records: u64,
}

impl MemoryBreakdown {
    /// What `index_memory_bytes` reports: posting lists, id map, slot table, service order.
    pub fn index_total(&self) -> u64 {
        self.postings.total() + self.id_map + self.slots + self.service_order
    }
}

/// Heap bytes of one record, apart from the interned strings it shares with the index: the
/// reference-counted block (two counts and the instance), the id and address strings, the tag
/// and meta vectors, each rounded to 8 bytes.
fn record_bytes(instance: &Instance) -> u64 {
    let fields = &instance.fields;
    let round = |bytes: usize| bytes.next_multiple_of(8) as u64;
    round(16 + std::mem::size_of::<Instance>())
        + round(fields.id.capacity())
        + round(fields.address.capacity())
        + round(fields.tags.len() * std::mem::size_of::<Text>())
        + round(fields.meta.len() * 2 * std::mem::size_of::<Text>())
}

/// Puts `slot` into the id order of `service` in `order` (the slot itself need not be
/// readable yet).
fn order_insert_into(
    order: &mut HashMap<Text, Vec<u32>>,
    slots: &Slots,
    service: &Text,
    slot: u32,
    id: &str,
) {
    let list = match order.get_mut(&*service_key(service)) {
        Some(list) => list,
        None => order.entry(service_key_text(service)).or_default(),
    };
    let before = |s: &u32| {
        slots
            .get(*s as usize)
            .and_then(Option::as_ref)
            .is_some_and(|instance| instance.id() < id)
    };
    // A load in id order (and many new ids) goes last: one comparison instead of a search.
    if list.last().is_none_or(before) {
        list.push(slot);
    } else {
        let position = list.partition_point(before);
        list.insert(position, slot);
    }
}

/// Records that `service` has an instance (in `sorted`) changed at `revision`.
fn note_service(
    sorted: &mut BTreeSet<Text>,
    revisions: &mut HashMap<Text, u64>,
    service: &Text,
    revision: u64,
) {
    if !sorted.contains(&*service_key(service)) {
        sorted.insert(service_key_text(service));
    }
    touch(revisions, service, revision);
}

/// Raises the revision of `service` in `revisions` to `revision`.
fn touch(revisions: &mut HashMap<Text, u64>, service: &str, revision: u64) {
    let key = service_key(service);
    match revisions.get_mut(&*key) {
        Some(entry) => *entry = (*entry).max(revision),
        None => {
            revisions.insert(Text::from(&*key), revision);
        }
    }
}

/// Whether two equal sets of fields hold the very same strings (not copies).
fn same_strings(a: &InstanceFields, b: &InstanceFields) -> bool {
    let same = |x: &Text, y: &Text| Text::ptr_eq(x, y);
    let same_option = |x: &Option<Text>, y: &Option<Text>| match (x, y) {
        (Some(x), Some(y)) => same(x, y),
        _ => true,
    };
    same(&a.service, &b.service)
        && a.tags.iter().zip(b.tags.iter()).all(|(x, y)| same(x, y))
        && same_option(&a.version, &b.version)
        && same_option(&a.environment, &b.environment)
        && same_option(&a.region, &b.region)
        && a.meta
            .iter()
            .zip(b.meta.iter())
            .all(|((xk, xv), (yk, yv))| same(xk, yk) && same(xv, yv))
}

/// Whether an instance breaks the (possibly lowered) size limits.
fn exceeds(instance: &Instance, limits: &Limits) -> bool {
    let fields = &instance.fields;
    fields.tags.len() > limits.max_tags
        || fields.tags.iter().any(|t| t.len() > limits.max_tag_len)
        || fields.meta.len() > limits.max_meta_keys
        || fields
            .meta
            .iter()
            .any(|(k, v)| k.len() > limits.max_meta_key_len || v.len() > limits.max_meta_value_len)
}

/// The result order: service case-insensitively, then id.
fn order(a: &Instance, b: &Instance) -> std::cmp::Ordering {
    let service_a = a.fields.service.bytes().map(|c| c.to_ascii_lowercase());
    let service_b = b.fields.service.bytes().map(|c| c.to_ascii_lowercase());
    service_a
        .cmp(service_b)
        .then_with(|| a.fields.id.cmp(&b.fields.id))
}

/// The result order within one service.
fn order_by_id(a: &Instance, b: &Instance) -> std::cmp::Ordering {
    a.fields.id.cmp(&b.fields.id)
}

fn is_after(instance: &Instance, cursor: &Cursor) -> bool {
    let service = instance
        .fields
        .service
        .bytes()
        .map(|c| c.to_ascii_lowercase());
    service
        .cmp(cursor.service_key.bytes())
        .then_with(|| instance.fields.id.as_str().cmp(cursor.id.as_str()))
        .is_gt()
}

mod id_map;

use id_map::{IdMap, Slots};

#[cfg(test)]
mod tests;
