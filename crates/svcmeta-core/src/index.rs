//! Inverted indexes: for every (dimension, value) a compressed bitmap of instance slots.
//!
//! Dimensions are service (case-insensitive), tag, version, environment, region, meta key
//! presence, meta key=value and health. A slot is a dense `u32` the registry assigns to each
//! live instance. Removing an instance removes every posting it added, and a value whose
//! bitmap becomes empty is dropped, so the index does not grow under churn.
//! Inserting an instance also interns its strings: each tag, version, environment, region,
//! meta key and meta value of the stored instance is replaced by the index's own key, so equal
//! strings are held once however many instances carry them.
//! This module knows nothing of queries or revisions.

use std::borrow::Cow;

use hashbrown::HashMap;
use roaring::RoaringBitmap;
use semver::Version;

use crate::model::{Health, Instance, InstanceFields, Meta, Text};

/// Posting lists of one string-valued dimension.
pub(crate) type Postings = HashMap<Text, RoaringBitmap>;

/// Posting list of one distinct version string, with its semver reading cached.
#[derive(Debug, Default)]
pub(crate) struct VersionPosting {
    pub(crate) parsed: Option<Version>,
    pub(crate) slots: RoaringBitmap,
}

/// All posting lists of the registry.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Every live slot.
    pub(crate) all: RoaringBitmap,
    /// Lower-cased service name → slots.
    pub(crate) services: Postings,
    pub(crate) tags: Postings,
    pub(crate) versions: HashMap<Text, VersionPosting>,
    pub(crate) environments: Postings,
    pub(crate) regions: Postings,
    /// Meta key → slots that have the key.
    pub(crate) meta_keys: Postings,
    /// Meta key → value → slots.
    pub(crate) meta_values: HashMap<Text, Postings>,
    pub(crate) health: [RoaringBitmap; 3],
}

/// Lower-cases a service name into its index key (service names are ASCII by validation).
pub(crate) fn service_key(service: &str) -> Cow<'_, str> {
    if service.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(service.to_ascii_lowercase())
    } else {
        Cow::Borrowed(service)
    }
}

/// [`service_key`] as a shared string: the name itself when it is already lower-case (no
/// copy), else a lower-cased copy.
pub(crate) fn service_key_text(service: &Text) -> Text {
    match service_key(service) {
        Cow::Borrowed(_) => Text::clone(service),
        Cow::Owned(lower) => Text::from(lower),
    }
}

/// Adds `slot` to the posting list of `value`; returns whether `value` is the index's own
/// copy of the string (a new value becomes the key as it is).
fn add(postings: &mut Postings, value: &Text, slot: u32) -> bool {
    match postings.get_key_value_mut(value.as_str()) {
        Some((key, bitmap)) => {
            bitmap.insert(slot);
            Text::ptr_eq(key, value)
        }
        None => {
            let mut bitmap = RoaringBitmap::new();
            bitmap.insert(slot);
            postings.insert(Text::clone(value), bitmap);
            true
        }
    }
}

/// The index's copy of `value`, if the dimension has it.
fn interned(postings: &Postings, value: &Text) -> Option<Text> {
    postings
        .get_key_value(value.as_str())
        .map(|(key, _)| Text::clone(key))
}

/// Replaces `value` by the index's copy, else by the copy in `fresh` (strings first seen in
/// the same batch of writes), else records it in `fresh`.
fn share(known: Option<Text>, value: &mut Text, fresh: &mut FreshStrings) {
    let replacement = match known {
        Some(known) => known,
        None => match fresh.strings.get(value.as_str()) {
            Some(seen) => Text::clone(seen),
            None => {
                fresh.strings.insert(Text::clone(value));
                return;
            }
        },
    };
    fresh.replaced.push(std::mem::replace(value, replacement));
}

/// Strings that writes of one batch share before they reach the index, so a value new to the
/// index is held once however many of the batch's instances carry it; and the strings that
/// interning replaced, freed when this is dropped (a writer can drop it once its request is
/// handed over, so freeing them is not on the write's path).
#[derive(Debug, Default)]
pub struct FreshStrings {
    strings: hashbrown::HashSet<Text>,
    replaced: Vec<Text>,
}

/// The label strings of a record's fields (service, tags, version, environment, region),
/// borrowed apart from its meta so that the two can be interned on two threads.
#[derive(Debug)]
pub struct LabelsMut<'a> {
    service: &'a mut Text,
    tags: &'a mut [Text],
    version: Option<&'a mut Text>,
    environment: Option<&'a mut Text>,
    region: Option<&'a mut Text>,
}

/// The meta pairs of a record's fields, borrowed apart from its labels.
#[derive(Debug)]
pub struct MetaMut<'a>(&'a mut [(Text, Text)]);

/// Borrows the interned strings of `fields` as two disjoint parts.
pub(crate) fn split_strings(fields: &mut InstanceFields) -> (LabelsMut<'_>, MetaMut<'_>) {
    let InstanceFields {
        service,
        tags,
        version,
        environment,
        region,
        meta,
        ..
    } = fields;
    (
        LabelsMut {
            service,
            tags,
            version: version.as_mut(),
            environment: environment.as_mut(),
            region: region.as_mut(),
        },
        MetaMut(meta.pairs_mut()),
    )
}

fn remove(postings: &mut Postings, value: &str, slot: u32) {
    if let Some(bitmap) = postings.get_mut(value) {
        bitmap.remove(slot);
        if bitmap.is_empty() {
            postings.remove(value);
        }
    }
}

/// Shrinks a map whose capacity is far above its length, so churn does not leave it bloated.
fn compact<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.is_empty() || (map.capacity() > 64 && map.len() < map.capacity() / 4) {
        map.shrink_to_fit();
    }
}

/// The posting lists a [`LoadBuffer`] collects slots for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum List {
    Service,
    Tag,
    Version,
    Environment,
    Region,
    MetaKey,
    MetaValue,
}

/// Slots collected for one posting list while loading.
#[derive(Debug)]
struct Pending {
    list: List,
    /// The value (kept, so the address it is found by stays its own).
    value: Text,
    /// The meta key of a meta value.
    within: Option<Text>,
    /// Whether the value is the index's own string (as its first posting found).
    shared: bool,
    /// Slots, ascending, not yet in the bitmap.
    slots: Vec<u32>,
}

/// Postings of a bulk load not yet in their bitmaps. A restart indexes records in slot
/// order whose strings are shared (one allocation per distinct value), so after a value's
/// first posting, later ones are found by the string's address (no hashing of its bytes,
/// no comparison) and appended to a vector; [`Index::take_buffered`] then appends each
/// vector to its bitmap at once, instead of one bitmap insert per posting.
/// It has one part for the label lists and one for the meta lists, so the two can be filled
/// on two threads (see [`Index::parts_mut`]).
#[derive(Debug, Default)]
pub(crate) struct LoadBuffer {
    labels: PartBuffer,
    meta: PartBuffer,
}

/// The postings one part of the index ([`LabelLists`] or [`MetaLists`]) has buffered.
#[derive(Debug, Default)]
struct PartBuffer {
    /// By list, value address and meta key address (0 when none).
    lists: HashMap<(List, usize, usize), Pending>,
    /// Label part only: every slot, and slots by health.
    all: Vec<u32>,
    health: [Vec<u32>; 3],
}

impl LoadBuffer {
    fn parts(
        buffer: Option<&mut LoadBuffer>,
    ) -> (Option<&mut PartBuffer>, Option<&mut PartBuffer>) {
        match buffer {
            Some(buffer) => (Some(&mut buffer.labels), Some(&mut buffer.meta)),
            None => (None, None),
        }
    }
}

/// The posting lists of everything but meta, borrowed apart from the meta lists.
pub(crate) struct LabelLists<'a> {
    all: &'a mut RoaringBitmap,
    services: &'a mut Postings,
    tags: &'a mut Postings,
    versions: &'a mut HashMap<Text, VersionPosting>,
    environments: &'a mut Postings,
    regions: &'a mut Postings,
    health: &'a mut [RoaringBitmap; 3],
}

/// The meta posting lists, borrowed apart from the label lists.
pub(crate) struct MetaLists<'a> {
    meta_keys: &'a mut Postings,
    meta_values: &'a mut HashMap<Text, Postings>,
}

/// Adds `slot` to the list `(list, value, within)`: to its buffered slots when `buffer` has
/// seen the value before, else through `first` (which inserts it into the bitmap). Returns
/// whether the value is the index's own string.
fn post(
    buffer: Option<&mut PartBuffer>,
    (list, value, within): (List, &Text, Option<&Text>),
    slot: u32,
    first: impl FnOnce() -> bool,
) -> bool {
    let Some(buffer) = buffer else {
        return first();
    };
    let address = (
        list,
        value.as_ptr() as usize,
        within.map_or(0, |key| key.as_ptr() as usize),
    );
    match buffer.lists.get_mut(&address) {
        Some(pending) => {
            pending.slots.push(slot);
            pending.shared
        }
        None => {
            let shared = first();
            buffer.lists.insert(
                address,
                Pending {
                    list,
                    value: Text::clone(value),
                    within: within.cloned(),
                    shared,
                    slots: Vec::new(),
                },
            );
            shared
        }
    }
}

/// Appends `slots` to `bitmap`: in one go while they ascend above its largest slot, one by one
/// from the first that does not (two strings with equal text but different allocations
/// buffer the same list twice), so the result is right in any order.
fn append_sorted(bitmap: &mut RoaringBitmap, slots: &[u32]) {
    if let Err(stopped) = bitmap.append(slots.iter().copied()) {
        let done = usize::try_from(stopped.valid_until()).unwrap_or(slots.len());
        for &slot in slots.get(done..).unwrap_or_default() {
            bitmap.insert(slot);
        }
    }
}

/// Runs `insert` (one part's postings of one instance, collected in a buffer) over a run of
/// new instances; returns what each call returned and the buffer to take.
fn collect_run(
    new: &[(u32, &InstanceFields, Health)],
    mut insert: impl FnMut(u32, &InstanceFields, Health, &mut PartBuffer) -> bool,
) -> (Vec<bool>, PartBuffer) {
    let mut buffer = PartBuffer::default();
    let shared = new
        .iter()
        .map(|&(slot, fields, health)| insert(slot, fields, health, &mut buffer))
        .collect();
    (shared, buffer)
}

/// Appends a buffered list's slots to its bitmap (which its first posting made).
fn append_pending(bitmap: Option<&mut RoaringBitmap>, pending: &Pending) {
    match bitmap {
        Some(bitmap) => append_sorted(bitmap, &pending.slots),
        None => debug_assert!(false, "a buffered posting list has no bitmap"),
    }
}

impl LabelLists<'_> {
    /// Adds the label postings of an instance at `slot` (see [`Index::insert_buffered`]).
    fn insert(
        &mut self,
        slot: u32,
        fields: &InstanceFields,
        health: Health,
        mut buffer: Option<&mut PartBuffer>,
    ) -> bool {
        match buffer.as_deref_mut() {
            Some(buffer) => {
                buffer.all.push(slot);
                buffer.health[health.slot()].push(slot);
            }
            None => {
                self.all.insert(slot);
                self.health[health.slot()].insert(slot);
            }
        }
        let service = &fields.service;
        let mut shared = post(
            buffer.as_deref_mut(),
            (List::Service, service, None),
            slot,
            || {
                let key = service_key_text(service);
                // A mixed-case name is its own string; the key is its lower-cased copy.
                add(self.services, &key, slot) || key != *service
            },
        );
        for tag in fields.tags.iter() {
            shared &= post(buffer.as_deref_mut(), (List::Tag, tag, None), slot, || {
                add(self.tags, tag, slot)
            });
        }
        if let Some(version) = &fields.version {
            shared &= post(
                buffer.as_deref_mut(),
                (List::Version, version, None),
                slot,
                || match self.versions.get_key_value_mut(version.as_str()) {
                    Some((key, posting)) => {
                        posting.slots.insert(slot);
                        Text::ptr_eq(key, version)
                    }
                    None => {
                        let mut posting = VersionPosting {
                            parsed: crate::version::parse(version),
                            slots: RoaringBitmap::new(),
                        };
                        posting.slots.insert(slot);
                        self.versions.insert(Text::clone(version), posting);
                        true
                    }
                },
            );
        }
        if let Some(environment) = &fields.environment {
            let list = (List::Environment, environment, None);
            shared &= post(buffer.as_deref_mut(), list, slot, || {
                add(self.environments, environment, slot)
            });
        }
        if let Some(region) = &fields.region {
            shared &= post(buffer, (List::Region, region, None), slot, || {
                add(self.regions, region, slot)
            });
        }
        shared
    }

    /// Adds the label postings of the instances `new` (slots not in the index yet),
    /// collected in bulk as a restart does; returns, for each, whether its label strings are
    /// the index's own (see [`Index::insert`]).
    pub(crate) fn insert_run(&mut self, new: &[(u32, &InstanceFields, Health)]) -> Vec<bool> {
        let (shared, mut buffer) = collect_run(new, |slot, fields, health, buffer| {
            self.insert(slot, fields, health, Some(buffer))
        });
        self.take(&mut buffer);
        shared
    }

    /// Moves the label postings `buffer` collected into their bitmaps and empties it.
    fn take(&mut self, buffer: &mut PartBuffer) {
        for (_, pending) in buffer.lists.drain() {
            let value = pending.value.as_str();
            let bitmap = match pending.list {
                List::Service => self.services.get_mut(&*service_key(value)),
                List::Tag => self.tags.get_mut(value),
                List::Version => self.versions.get_mut(value).map(|p| &mut p.slots),
                List::Environment => self.environments.get_mut(value),
                List::Region => self.regions.get_mut(value),
                List::MetaKey | List::MetaValue => None,
            };
            append_pending(bitmap, &pending);
        }
        append_sorted(self.all, &buffer.all);
        buffer.all.clear();
        for (bitmap, pending) in self.health.iter_mut().zip(&mut buffer.health) {
            append_sorted(bitmap, pending);
            pending.clear();
        }
    }
}

impl MetaLists<'_> {
    /// Adds the meta postings of an instance at `slot` (see [`Index::insert_buffered`]).
    fn insert(&mut self, slot: u32, meta: &Meta, mut buffer: Option<&mut PartBuffer>) -> bool {
        let mut shared = true;
        for (key, value) in meta.iter() {
            shared &= post(
                buffer.as_deref_mut(),
                (List::MetaKey, key, None),
                slot,
                || add(self.meta_keys, key, slot),
            );
            let list = (List::MetaValue, value, Some(key));
            shared &= post(buffer.as_deref_mut(), list, slot, || {
                let values = match self.meta_values.get_mut(key.as_str()) {
                    Some(values) => values,
                    None => self.meta_values.entry(Text::clone(key)).or_default(),
                };
                add(values, value, slot)
            });
        }
        shared
    }

    /// [`LabelLists::insert_run`] for the meta postings.
    pub(crate) fn insert_run(&mut self, new: &[(u32, &InstanceFields, Health)]) -> Vec<bool> {
        let (shared, mut buffer) = collect_run(new, |slot, fields, _, buffer| {
            self.insert(slot, &fields.meta, Some(buffer))
        });
        self.take(&mut buffer);
        shared
    }

    /// Moves the meta postings `buffer` collected into their bitmaps and empties it.
    fn take(&mut self, buffer: &mut PartBuffer) {
        for (_, pending) in buffer.lists.drain() {
            let value = pending.value.as_str();
            let bitmap = match (pending.list, &pending.within) {
                (List::MetaKey, _) => self.meta_keys.get_mut(value),
                (List::MetaValue, Some(key)) => self
                    .meta_values
                    .get_mut(key.as_str())
                    .and_then(|values| values.get_mut(value)),
                _ => None,
            };
            append_pending(bitmap, &pending);
        }
    }
}

impl Index {
    /// Adds every posting of an instance at `slot`. Returns whether every string of the
    /// record is the index's own copy; if not, the caller replaces them with [`Index::intern`]
    /// (after this insert every value has a key).
    pub(crate) fn insert(&mut self, slot: u32, fields: &InstanceFields, health: Health) -> bool {
        self.insert_buffered(slot, fields, health, None)
    }

    /// [`Index::insert`], with the postings of values `buffer` has seen before collected there
    /// instead of inserted (see [`LoadBuffer`]). Fastest when slots ascend; any order is
    /// right, but a slot must not be removed while buffered.
    pub(crate) fn insert_buffered(
        &mut self,
        slot: u32,
        fields: &InstanceFields,
        health: Health,
        buffer: Option<&mut LoadBuffer>,
    ) -> bool {
        let (mut labels, mut metas) = self.parts_mut();
        let (label_buffer, meta_buffer) = LoadBuffer::parts(buffer);
        let labels_shared = labels.insert(slot, fields, health, label_buffer);
        let meta_shared = metas.insert(slot, &fields.meta, meta_buffer);
        labels_shared && meta_shared
    }

    /// The label lists and the meta lists, borrowed apart (two threads can fill them).
    pub(crate) fn parts_mut(&mut self) -> (LabelLists<'_>, MetaLists<'_>) {
        (
            LabelLists {
                all: &mut self.all,
                services: &mut self.services,
                tags: &mut self.tags,
                versions: &mut self.versions,
                environments: &mut self.environments,
                regions: &mut self.regions,
                health: &mut self.health,
            },
            MetaLists {
                meta_keys: &mut self.meta_keys,
                meta_values: &mut self.meta_values,
            },
        )
    }

    /// Moves every posting `buffer` collected into its bitmap and empties the buffer.
    pub(crate) fn take_buffered(&mut self, buffer: &mut LoadBuffer) {
        let (mut labels, mut metas) = self.parts_mut();
        labels.take(&mut buffer.labels);
        metas.take(&mut buffer.meta);
    }

    /// Replaces the strings of `fields` by the index's copies where it has them, else by the
    /// batch's (`fresh`). Read-only on the index, so writes can be prepared under a read lock.
    pub(crate) fn intern(&self, fields: &mut InstanceFields, fresh: &mut FreshStrings) {
        let (mut labels, mut meta) = split_strings(fields);
        self.intern_labels(&mut labels, fresh);
        self.intern_meta(&mut meta, fresh);
    }

    /// [`Index::intern`] of the labels alone (service, tags, version, environment, region).
    pub(crate) fn intern_labels(&self, labels: &mut LabelsMut<'_>, fresh: &mut FreshStrings) {
        // A mixed-case name is not a key (the key is lower-cased), so only the batch shares it.
        let known = match service_key(labels.service) {
            Cow::Borrowed(_) => interned(&self.services, labels.service),
            Cow::Owned(_) => None,
        };
        share(known, labels.service, fresh);
        for tag in labels.tags.iter_mut() {
            share(interned(&self.tags, tag), tag, fresh);
        }
        if let Some(version) = labels.version.as_deref_mut() {
            let known = self
                .versions
                .get_key_value(version.as_str())
                .map(|(key, _)| Text::clone(key));
            share(known, version, fresh);
        }
        if let Some(environment) = labels.environment.as_deref_mut() {
            share(
                interned(&self.environments, environment),
                environment,
                fresh,
            );
        }
        if let Some(region) = labels.region.as_deref_mut() {
            share(interned(&self.regions, region), region, fresh);
        }
    }

    /// [`Index::intern`] of the meta keys and values alone.
    pub(crate) fn intern_meta(&self, meta: &mut MetaMut<'_>, fresh: &mut FreshStrings) {
        for (key, value) in meta.0.iter_mut() {
            share(interned(&self.meta_keys, key), key, fresh);
            let known = self
                .meta_values
                .get(key.as_str())
                .and_then(|values| interned(values, value));
            share(known, value, fresh);
        }
    }

    /// Removes every posting of `instance` at `slot`; empty values disappear.
    pub(crate) fn remove(&mut self, slot: u32, instance: &Instance) {
        let fields = &instance.fields;
        self.all.remove(slot);
        remove(&mut self.services, &service_key(&fields.service), slot);
        for tag in &fields.tags {
            remove(&mut self.tags, tag, slot);
        }
        if let Some(version) = &fields.version {
            if let Some(posting) = self.versions.get_mut(version.as_str()) {
                posting.slots.remove(slot);
                if posting.slots.is_empty() {
                    self.versions.remove(version.as_str());
                }
            }
        }
        if let Some(environment) = &fields.environment {
            remove(&mut self.environments, environment, slot);
        }
        if let Some(region) = &fields.region {
            remove(&mut self.regions, region, slot);
        }
        for (key, value) in fields.meta.iter() {
            remove(&mut self.meta_keys, key, slot);
            if let Some(values) = self.meta_values.get_mut(key.as_str()) {
                remove(values, value, slot);
                if values.is_empty() {
                    self.meta_values.remove(key.as_str());
                }
            }
        }
        self.health[instance.health.slot()].remove(slot);
        if self.all.is_empty() {
            self.compact_all();
        }
    }

    /// Moves `slot` from one health posting to another.
    pub(crate) fn set_health(&mut self, slot: u32, from: Health, to: Health) {
        self.health[from.slot()].remove(slot);
        self.health[to.slot()].insert(slot);
    }

    /// Releases spare capacity left behind by churn.
    pub(crate) fn compact_all(&mut self) {
        compact(&mut self.services);
        compact(&mut self.tags);
        compact(&mut self.versions);
        compact(&mut self.environments);
        compact(&mut self.regions);
        compact(&mut self.meta_keys);
        compact(&mut self.meta_values);
    }

    /// Number of distinct posting lists.
    pub(crate) fn posting_lists(&self) -> usize {
        self.services.len()
            + self.tags.len()
            + self.versions.len()
            + self.environments.len()
            + self.regions.len()
            + self.meta_keys.len()
            + self.meta_values.values().map(HashMap::len).sum::<usize>()
            + 3
    }

    /// Estimated heap bytes of the posting lists, per dimension: bitmaps, keys and hash
    /// table buckets (see [`bitmap_bytes`] and [`table_bytes`]). The estimate follows from
    /// the content alone (the layout a list or table has when grown to its size), so it comes
    /// back to the same figure when churn brings the content back; spare capacity left by
    /// a larger past (a table that once held more values) is not in it.
    pub(crate) fn memory(&self) -> PostingMemory {
        fn postings_bytes(postings: &Postings) -> u64 {
            table_bytes::<Text, RoaringBitmap>(postings.len())
                + postings
                    .iter()
                    .map(|(key, bitmap)| text_bytes(key) + bitmap_bytes(bitmap))
                    .sum::<u64>()
        }
        PostingMemory {
            all: bitmap_bytes(&self.all),
            services: postings_bytes(&self.services),
            tags: postings_bytes(&self.tags),
            versions: table_bytes::<Text, VersionPosting>(self.versions.len())
                + self
                    .versions
                    .iter()
                    .map(|(key, posting)| text_bytes(key) + bitmap_bytes(&posting.slots))
                    .sum::<u64>(),
            environments: postings_bytes(&self.environments),
            regions: postings_bytes(&self.regions),
            meta_keys: postings_bytes(&self.meta_keys),
            meta_values: table_bytes::<Text, Postings>(self.meta_values.len())
                + self
                    .meta_values
                    .iter()
                    .map(|(key, values)| text_bytes(key) + postings_bytes(values))
                    .sum::<u64>(),
            health: self.health.iter().map(bitmap_bytes).sum(),
        }
    }
}

/// Estimated heap bytes of the posting lists, per dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PostingMemory {
    /// The list of every live slot.
    pub all: u64,
    /// Service lists and their (lower-cased) names.
    pub services: u64,
    /// Tag lists and the tags.
    pub tags: u64,
    /// Version lists, the version strings and their parsed semver.
    pub versions: u64,
    /// Environment lists.
    pub environments: u64,
    /// Region lists.
    pub regions: u64,
    /// Meta key presence lists and the keys.
    pub meta_keys: u64,
    /// Meta key=value lists and the values.
    pub meta_values: u64,
    /// The three health lists.
    pub health: u64,
}

impl PostingMemory {
    /// All dimensions together.
    pub fn total(&self) -> u64 {
        self.all
            + self.services
            + self.tags
            + self.versions
            + self.environments
            + self.regions
            + self.meta_keys
            + self.meta_values
            + self.health
    }
}

/// Bytes of one roaring container in its bitmap's container vector (key and store enum; 40
/// in roaring 0.12, checked against a counting allocator).
const CONTAINER_BYTES: u64 = 40;
/// Bytes of a bitset container's payload (65,536 bits).
const BITSET_BYTES: u64 = 8192;

/// Estimated heap bytes of a roaring bitmap: its container vector (which grows by doubling
/// from 4) and each container's payload (2 bytes per element of an array, 8 KiB per bitset,
/// 4 bytes per run).
pub(crate) fn bitmap_bytes(bitmap: &RoaringBitmap) -> u64 {
    let stats = bitmap.statistics();
    let containers = u64::from(stats.n_containers);
    if containers == 0 {
        return 0;
    }
    let arrays = u64::from(stats.n_values_array_containers) * 2;
    let bitsets = u64::from(stats.n_bitset_containers) * BITSET_BYTES;
    // roaring reports a run container's size as 2 bytes plus 4 per run.
    let run_containers = u64::from(stats.n_run_containers);
    let runs = stats
        .n_bytes_run_containers
        .saturating_sub(2 * run_containers);
    containers.max(4).next_power_of_two() * CONTAINER_BYTES + arrays + bitsets + runs
}

/// Estimated heap bytes of a hashbrown table of `entries` entries of `(K, V)`, as sized by
/// growing to them: its buckets (a power of two, at most 7/8 full) with one control byte each,
/// plus one group of trailing control bytes.
pub(crate) fn table_bytes<K, V>(entries: usize) -> u64 {
    if entries == 0 {
        return 0;
    }
    let buckets = if entries < 8 {
        (entries + 1).next_power_of_two()
    } else {
        (entries * 8).div_ceil(7).next_power_of_two()
    };
    (buckets * (std::mem::size_of::<(K, V)>() + 1) + 16) as u64
}

/// Heap bytes of one shared string: a 16-byte header (reference counts) and the bytes,
/// rounded to the allocator's 8-byte granularity.
pub(crate) fn text_bytes(text: &str) -> u64 {
    (16 + text.len()).next_multiple_of(8) as u64
}
