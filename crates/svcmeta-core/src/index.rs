//! Inverted indexes: for every (dimension, value) a compressed bitmap of instance slots.
//!
//! Dimensions are service (case-insensitive), tag, version, environment, region, meta key
//! presence, meta key=value and health. A slot is a dense `u32` the registry assigns to each
//! live instance. Removing an instance removes every posting it added, and a value whose
//! bitmap becomes empty is dropped, so the index does not grow under churn.
//! This module knows nothing of queries or revisions.

use std::collections::HashMap;

use roaring::RoaringBitmap;
use semver::Version;

use crate::model::{Health, Instance};

/// Posting lists of one string-valued dimension.
pub(crate) type Postings = HashMap<Box<str>, RoaringBitmap>;

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
    pub(crate) versions: HashMap<Box<str>, VersionPosting>,
    pub(crate) environments: Postings,
    pub(crate) regions: Postings,
    /// Meta key → slots that have the key.
    pub(crate) meta_keys: Postings,
    /// Meta key → value → slots.
    pub(crate) meta_values: HashMap<Box<str>, Postings>,
    pub(crate) health: [RoaringBitmap; 3],
}

/// Lower-cases a service name into its index key (service names are ASCII by validation).
pub(crate) fn service_key(service: &str) -> Box<str> {
    service.to_ascii_lowercase().into_boxed_str()
}

fn add(postings: &mut Postings, value: &str, slot: u32) {
    match postings.get_mut(value) {
        Some(bitmap) => {
            bitmap.insert(slot);
        }
        None => {
            let mut bitmap = RoaringBitmap::new();
            bitmap.insert(slot);
            postings.insert(value.into(), bitmap);
        }
    }
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
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to_fit();
    }
}

impl Index {
    /// Adds every posting of `instance` at `slot`.
    pub(crate) fn insert(&mut self, slot: u32, instance: &Instance) {
        let fields = &instance.fields;
        self.all.insert(slot);
        add(&mut self.services, &service_key(&fields.service), slot);
        for tag in &fields.tags {
            add(&mut self.tags, tag, slot);
        }
        if let Some(version) = &fields.version {
            match self.versions.get_mut(version.as_str()) {
                Some(posting) => {
                    posting.slots.insert(slot);
                }
                None => {
                    let mut posting = VersionPosting {
                        parsed: crate::version::parse(version),
                        slots: RoaringBitmap::new(),
                    };
                    posting.slots.insert(slot);
                    self.versions.insert(version.as_str().into(), posting);
                }
            }
        }
        if let Some(environment) = &fields.environment {
            add(&mut self.environments, environment, slot);
        }
        if let Some(region) = &fields.region {
            add(&mut self.regions, region, slot);
        }
        for (key, value) in &fields.meta {
            add(&mut self.meta_keys, key, slot);
            match self.meta_values.get_mut(key.as_str()) {
                Some(values) => add(values, value, slot),
                None => {
                    let mut values = Postings::new();
                    add(&mut values, value, slot);
                    self.meta_values.insert(key.as_str().into(), values);
                }
            }
        }
        self.health[instance.health.slot()].insert(slot);
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
        for (key, value) in &fields.meta {
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

    /// Estimated heap bytes of the index: bitmap payloads, keys and map entries.
    pub(crate) fn memory_bytes(&self) -> u64 {
        const ENTRY_OVERHEAD: u64 = 64;
        fn bitmap_bytes(bitmap: &RoaringBitmap) -> u64 {
            bitmap.serialized_size() as u64
        }
        fn postings_bytes(postings: &Postings) -> u64 {
            postings
                .iter()
                .map(|(key, bitmap)| key.len() as u64 + bitmap_bytes(bitmap) + ENTRY_OVERHEAD)
                .sum()
        }
        bitmap_bytes(&self.all)
            + postings_bytes(&self.services)
            + postings_bytes(&self.tags)
            + self
                .versions
                .iter()
                .map(|(key, posting)| {
                    key.len() as u64 + bitmap_bytes(&posting.slots) + ENTRY_OVERHEAD + 40
                })
                .sum::<u64>()
            + postings_bytes(&self.environments)
            + postings_bytes(&self.regions)
            + postings_bytes(&self.meta_keys)
            + self
                .meta_values
                .iter()
                .map(|(key, values)| key.len() as u64 + ENTRY_OVERHEAD + postings_bytes(values))
                .sum::<u64>()
            + self.health.iter().map(bitmap_bytes).sum::<u64>()
    }
}
