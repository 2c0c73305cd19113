//! Instance id → slot without a second copy of the id.
//!
//! The table holds only slots (4 bytes each); an entry is hashed and compared through the id
//! of the record in its slot, so the ids live once, in the records. The price is one pointer
//! chase per probe. This module does not own the slot table; every call borrows it.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashTable};

use crate::model::Instance;

/// The registry's slot table: slot → record, `None` for a free slot.
pub(super) type Slots = [Option<Arc<Instance>>];

/// Instance id → slot; every slot in it holds a record with that id.
#[derive(Debug, Default)]
pub(super) struct IdMap {
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

/// The id of the record in `slot`, or "" for a free slot (which no entry may name).
fn id_at(slots: &Slots, slot: u32) -> &str {
    match slots.get(slot as usize).and_then(Option::as_ref) {
        Some(instance) => instance.id(),
        None => {
            debug_assert!(false, "the id map names free slot {slot}");
            ""
        }
    }
}

impl IdMap {
    /// Number of ids.
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there is no id.
    pub(super) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Entries the table can hold before it grows.
    pub(super) fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// The slot of `id`.
    pub(super) fn get(&self, id: &str, slots: &Slots) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        self.table
            .find(hash, |&slot| id_at(slots, slot) == id)
            .copied()
    }

    /// `Ok` with the slot of `id`, or, when `id` is not in the map, `Err(new_slot)` after
    /// recording `new_slot` for it: one probe instead of a look-up and an insert. The record in
    /// the new slot need not be readable yet, but every other entry's must.
    pub(super) fn get_or_insert(
        &mut self,
        id: &str,
        slots: &Slots,
        new_slot: u32,
    ) -> Result<u32, u32> {
        let hash = self.hasher.hash_one(id);
        if self.table.len() == self.table.capacity() {
            // `entry` would grow a full table even for an id it then finds; grow only to add.
            if let Some(&slot) = self.table.find(hash, |&slot| id_at(slots, slot) == id) {
                return Ok(slot);
            }
            self.grow(slots);
        }
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |&slot| id_at(slots, slot) == id,
            |&other| hasher.hash_one(id_at(slots, other)),
        ) {
            Entry::Occupied(entry) => Ok(*entry.get()),
            Entry::Vacant(entry) => {
                entry.insert(new_slot);
                Err(new_slot)
            }
        }
    }

    /// Grows a full table as hashbrown would (to the bucket count its next insert would
    /// take), but fills the new table by walking the slot table in order, which reads the
    /// records in about the order they were allocated; hashbrown's own growth reads them in
    /// bucket order, at random (at 1M instances a fifth of a bulk write's committer time).
    /// Every live slot is in the map; should the walk find another count than the map holds,
    /// the table grows hashbrown's way instead.
    fn grow(&mut self, slots: &Slots) {
        let hasher = &self.hasher;
        let rehash = |&other: &u32| hasher.hash_one(id_at(slots, other));
        let mut table = HashTable::with_capacity(self.table.capacity() + 1);
        for (slot, record) in slots.iter().enumerate() {
            if let (Some(record), Ok(slot)) = (record, u32::try_from(slot)) {
                table.insert_unique(hasher.hash_one(record.id()), slot, rehash);
            }
        }
        if table.len() == self.table.len() {
            self.table = table;
        } else {
            debug_assert!(false, "the id map and the slot table disagree");
            self.table.reserve(1, rehash);
        }
    }

    /// Forgets `id` and returns its slot; the record must still be in the slot.
    pub(super) fn remove(&mut self, id: &str, slots: &Slots) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        match self
            .table
            .find_entry(hash, |&slot| id_at(slots, slot) == id)
        {
            Ok(entry) => Some(entry.remove().0),
            Err(_) => None,
        }
    }

    /// Makes room for `additional` more ids without growing again.
    pub(super) fn reserve(&mut self, additional: usize, slots: &Slots) {
        let hasher = &self.hasher;
        self.table
            .reserve(additional, |&slot| hasher.hash_one(id_at(slots, slot)));
    }

    /// Releases spare capacity.
    pub(super) fn shrink_to_fit(&mut self, slots: &Slots) {
        let hasher = &self.hasher;
        self.table
            .shrink_to_fit(|&slot| hasher.hash_one(id_at(slots, slot)));
    }
}
