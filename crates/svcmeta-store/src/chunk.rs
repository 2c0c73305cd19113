//! Instances handed over in chunks while a store is read, so that one thread decodes records
//! while another indexes them (a restart costs about the longer of the two, not their sum).
//!
//! The decoding thread does not make the instances: it numbers their shared strings (tags,
//! versions, meta, …) and sends each chunk with the strings first seen in it. The indexing
//! thread keeps those strings in a [`LoadStrings`] and builds each [`Instance`] from the
//! numbers, so every clone of a shared string, an atomic reference-count increment, happens
//! on the thread that also reads that string while indexing it (see `codec::Interner`).

use svcmeta_core::{Health, Instance, InstanceFields, Meta, Text};

/// One record decoded with its shared strings as numbers into [`LoadStrings`]. The numbers
/// of its tags, then its meta keys and values in pairs, follow one another in the chunk's
/// `numbers`.
#[derive(Debug)]
pub(crate) struct NumberedRecord {
    pub(crate) id: String,
    pub(crate) address: String,
    pub(crate) port: u16,
    pub(crate) service: u32,
    pub(crate) version: Option<u32>,
    pub(crate) environment: Option<u32>,
    pub(crate) region: Option<u32>,
    /// How many tag numbers follow in `numbers`.
    pub(crate) tags: usize,
    /// How many meta pairs (two numbers each) follow the tags.
    pub(crate) meta_pairs: usize,
    pub(crate) ttl_ms: Option<u64>,
    pub(crate) health: Health,
    pub(crate) create_revision: u64,
    pub(crate) modify_revision: u64,
    pub(crate) registered_at: u64,
    pub(crate) updated_at: u64,
}

/// A chunk of stored instances, in the order they were read.
#[derive(Debug, Default)]
pub struct InstanceChunk {
    /// Shared strings first seen in this chunk, numbered after those of earlier chunks.
    pub(crate) new_strings: Vec<Text>,
    /// Records whose shared strings are numbers.
    pub(crate) numbered: Vec<NumberedRecord>,
    /// The tag and meta numbers of `numbered`, record after record.
    pub(crate) numbers: Vec<u32>,
    /// Instances made already (records of the JSON format, or a store read all at once).
    pub(crate) made: Vec<Instance>,
}

/// The shared strings of a load, as the indexing side has received them.
#[derive(Debug, Default)]
pub struct LoadStrings {
    texts: Vec<Text>,
}

impl InstanceChunk {
    /// A chunk of instances that are made already.
    pub fn of_instances(instances: Vec<Instance>) -> InstanceChunk {
        InstanceChunk {
            made: instances,
            ..InstanceChunk::default()
        }
    }

    /// How many instances the chunk holds.
    pub fn len(&self) -> usize {
        self.numbered.len() + self.made.len()
    }

    /// Whether the chunk holds no instance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The chunk's instances, built with `strings`, which must have received every earlier
    /// chunk of the same load first.
    pub fn into_instances(self, strings: &mut LoadStrings) -> impl Iterator<Item = Instance> + '_ {
        strings.texts.extend(self.new_strings);
        let texts = &strings.texts[..];
        let mut numbers = self.numbers.into_iter();
        let built = self
            .numbered
            .into_iter()
            .map(move |record| record.build(&mut numbers, texts));
        built.chain(self.made)
    }
}

impl NumberedRecord {
    /// The instance, its tag and meta numbers taken from `numbers`, its strings from `texts`.
    pub(crate) fn build(self, numbers: &mut impl Iterator<Item = u32>, texts: &[Text]) -> Instance {
        let text = |number: u32| Text::clone(&texts[number as usize]);
        let tags: Box<[Text]> = numbers.take(self.tags).map(text).collect();
        let mut meta = Vec::with_capacity(self.meta_pairs);
        for _ in 0..self.meta_pairs {
            if let (Some(key), Some(value)) = (numbers.next(), numbers.next()) {
                meta.push((text(key), text(value)));
            }
        }
        Instance {
            fields: InstanceFields {
                id: self.id,
                service: text(self.service),
                address: self.address,
                port: self.port,
                tags,
                version: self.version.map(text),
                environment: self.environment.map(text),
                region: self.region.map(text),
                meta: meta.into_iter().collect::<Meta>(),
                ttl_ms: self.ttl_ms,
            },
            health: self.health,
            create_revision: self.create_revision,
            modify_revision: self.modify_revision,
            registered_at: self.registered_at,
            updated_at: self.updated_at,
        }
    }
}
