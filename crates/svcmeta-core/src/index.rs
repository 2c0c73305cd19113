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

use hashbrown::HashMap;
use roaring::RoaringBitmap;
use semver::Version;

use crate::model::{Health, Instance, InstanceFields, Text};

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
pub(crate) fn service_key(service: &str) -> Text {
    if service.bytes().any(|b| b.is_ascii_uppercase()) {
        Text::from(service.to_ascii_lowercase())
    } else {
        Text::from(service)
    }
}

/// Adds `slot` to the posting list of `value` and returns the index's copy of the value.
fn add(postings: &mut Postings, value: &Text, slot: u32) -> Text {
    match postings.get_key_value_mut(value.as_ref()) {
        Some((key, bitmap)) => {
            bitmap.insert(slot);
            Text::clone(key)
        }
        None => {
            let mut bitmap = RoaringBitmap::new();
            bitmap.insert(slot);
            postings.insert(Text::clone(value), bitmap);
            Text::clone(value)
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
    /// Adds every posting of an instance at `slot`, replacing its strings by the index's
    /// interned copies.
    pub(crate) fn insert(&mut self, slot: u32, fields: &mut InstanceFields, health: Health) {
        self.all.insert(slot);
        let key = service_key(&fields.service);
        let interned = add(&mut self.services, &key, slot);
        if interned.as_ref() == fields.service.as_ref() {
            fields.service = interned;
        }
        for tag in &mut fields.tags {
            *tag = add(&mut self.tags, tag, slot);
        }
        if let Some(version) = &mut fields.version {
            match self.versions.get_key_value_mut(version.as_ref()) {
                Some((key, posting)) => {
                    posting.slots.insert(slot);
                    *version = Text::clone(key);
                }
                None => {
                    let mut posting = VersionPosting {
                        parsed: crate::version::parse(version),
                        slots: RoaringBitmap::new(),
                    };
                    posting.slots.insert(slot);
                    self.versions.insert(Text::clone(version), posting);
                }
            }
        }
        if let Some(environment) = &mut fields.environment {
            *environment = add(&mut self.environments, environment, slot);
        }
        if let Some(region) = &mut fields.region {
            *region = add(&mut self.regions, region, slot);
        }
        for (key, value) in fields.meta.pairs_mut() {
            *key = add(&mut self.meta_keys, key, slot);
            let values = self.meta_values.entry(Text::clone(key)).or_default();
            *value = add(values, value, slot);
        }
        self.health[health.slot()].insert(slot);
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
            if let Some(posting) = self.versions.get_mut(version.as_ref()) {
                posting.slots.remove(slot);
                if posting.slots.is_empty() {
                    self.versions.remove(version.as_ref());
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
            if let Some(values) = self.meta_values.get_mut(key.as_ref()) {
                remove(values, value, slot);
                if values.is_empty() {
                    self.meta_values.remove(key.as_ref());
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
