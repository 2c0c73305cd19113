//! The query-result cache: normalised query → answer, never stale.
//!
//! An entry remembers the scope revision of its query when it was computed (the revision of
//! the last change that could affect that query, see `Registry::scope_revision`). It is served
//! only while that scope revision is unchanged, so a write that could change the answer makes
//! the entry unusable at once, whatever its age. Entries also expire after a time to live and
//! the cache holds at most `max_entries`, evicting the oldest insertions first.
//! Time is passed in; the cache never reads a clock and does no locking of its own.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::model::Instance;

/// A cached answer, without the revision (the server stamps the current one when serving).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPage {
    /// Number of matches over all pages.
    pub total: u64,
    /// This page.
    pub instances: Vec<Arc<Instance>>,
    /// Cursor of the next page.
    pub next_cursor: Option<String>,
}

#[derive(Debug)]
struct Entry {
    /// Insertion number; the `order` queue item with the same number is this entry's.
    sequence: u64,
    scope_revision: u64,
    inserted_at_ms: u64,
    page: Arc<CachedPage>,
}

/// Bounded map from a normalised query to its answer.
#[derive(Debug)]
pub struct QueryCache {
    entries: HashMap<String, Entry>,
    /// Insertion order, for eviction: (insertion number, key). An item whose number is not
    /// its key's live entry's is left over from a replaced or removed entry and is skipped.
    order: VecDeque<(u64, String)>,
    next_sequence: u64,
    max_entries: usize,
    ttl_ms: u64,
    hits: u64,
    misses: u64,
}

impl QueryCache {
    /// A cache of at most `max_entries` answers, each kept at most `ttl_ms`.
    pub fn new(max_entries: usize, ttl_ms: u64) -> QueryCache {
        QueryCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_sequence: 0,
            max_entries,
            ttl_ms,
            hits: 0,
            misses: 0,
        }
    }

    /// The cached answer for `key`, if it was computed at the query's current scope revision
    /// and has not expired. Counts a hit or a miss.
    pub fn lookup(
        &mut self,
        key: &str,
        scope_revision: u64,
        now_ms: u64,
    ) -> Option<Arc<CachedPage>> {
        let fresh = match self.entries.get(key) {
            Some(entry) => {
                entry.scope_revision == scope_revision
                    && now_ms.saturating_sub(entry.inserted_at_ms) < self.ttl_ms
            }
            None => false,
        };
        if fresh {
            self.hits += 1;
            self.entries.get(key).map(|entry| Arc::clone(&entry.page))
        } else {
            self.misses += 1;
            self.entries.remove(key);
            None
        }
    }

    /// Stores an answer computed at `scope_revision`, evicting the oldest insertions first.
    pub fn insert(&mut self, key: String, scope_revision: u64, now_ms: u64, page: Arc<CachedPage>) {
        if self.max_entries == 0 {
            return;
        }
        // Replacing a cached key needs no room; a new key evicts the oldest live entries.
        self.entries.remove(&key);
        while self.entries.len() >= self.max_entries {
            match self.order.pop_front() {
                Some((sequence, oldest)) => {
                    if self
                        .entries
                        .get(&oldest)
                        .is_some_and(|e| e.sequence == sequence)
                    {
                        self.entries.remove(&oldest);
                    }
                }
                None => break,
            }
        }
        if self.order.len() > self.max_entries.saturating_mul(2) {
            let entries = &self.entries;
            self.order
                .retain(|(sequence, k)| entries.get(k).is_some_and(|e| e.sequence == *sequence));
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.order.push_back((sequence, key.clone()));
        self.entries.insert(
            key,
            Entry {
                sequence,
                scope_revision,
                inserted_at_ms: now_ms,
                page,
            },
        );
    }

    /// Number of cached answers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that had to compute.
    pub fn misses(&self) -> u64 {
        self.misses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(total: u64) -> Arc<CachedPage> {
        Arc::new(CachedPage {
            total,
            instances: Vec::new(),
            next_cursor: None,
        })
    }

    #[test]
    fn serves_only_at_the_same_scope_revision() {
        let mut cache = QueryCache::new(10, 60_000);
        cache.insert("q".into(), 5, 0, page(1));
        assert_eq!(cache.lookup("q", 5, 10).map(|p| p.total), Some(1));
        assert!(cache.lookup("q", 6, 10).is_none());
        // The stale entry is gone even if the revision comes back (it cannot, but be safe).
        assert!(cache.lookup("q", 5, 10).is_none());
        assert_eq!((cache.hits(), cache.misses()), (1, 2));
    }

    #[test]
    fn expires_after_ttl() {
        let mut cache = QueryCache::new(10, 1_000);
        cache.insert("q".into(), 1, 0, page(1));
        assert!(cache.lookup("q", 1, 999).is_some());
        assert!(cache.lookup("q", 1, 1_000).is_none());
    }

    #[test]
    fn stays_within_max_entries() {
        let mut cache = QueryCache::new(3, 60_000);
        for n in 0..10u64 {
            cache.insert(format!("q{n}"), 1, 0, page(n));
            assert!(cache.len() <= 3);
        }
        assert!(cache.lookup("q9", 1, 0).is_some());
        assert!(cache.lookup("q0", 1, 0).is_none());
        // Re-inserting the same key many times keeps the order queue bounded.
        for _ in 0..100 {
            cache.insert("same".into(), 1, 0, page(0));
        }
        assert!(cache.order.len() <= 3 * 4 + 1);
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let mut cache = QueryCache::new(0, 60_000);
        cache.insert("q".into(), 1, 0, page(1));
        assert!(cache.lookup("q", 1, 0).is_none());
    }
}
