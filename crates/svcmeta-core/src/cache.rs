//! The query-result cache: normalised query → answer, never stale.
//!
//! An entry remembers the scope revision of its query when it was computed (the revision of
//! the last change that could affect that query, see `Registry::scope_revision`). It is served
//! only while that scope revision is unchanged, so a write that could change the answer makes
//! the entry unusable at once, whatever its age. Entries also expire after a time to live and
//! the cache holds at most `max_entries`, evicting the oldest insertions first.
//! Time is passed in; the cache never reads a clock, and the map does no locking of its own
//! (the caller holds it behind one lock).
//!
//! A cached page can also carry its serialised forms ([`Renderings`]), made by the HTTP edge
//! on first use, so that a hit writes stored bytes instead of serialising every instance
//! again. They live inside the page, so they are served exactly as long as the page is: never
//! after a write that could change the answer. Their total size is bounded by a byte budget
//! shared by every page of one cache.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Serialised forms of this page, filled by the edge; empty until the page is cached.
    pub renderings: Renderings,
}

impl CachedPage {
    /// A page with no serialised forms yet.
    pub fn new(total: u64, instances: Vec<Arc<Instance>>, next_cursor: Option<String>) -> Self {
        CachedPage {
            total,
            instances,
            next_cursor,
            renderings: Renderings::default(),
        }
    }
}

/// Most serialised forms one page keeps (an API may render one page in several shapes, e.g.
/// with different per-request filters); a new one replaces the oldest.
const MAX_RENDERINGS_PER_PAGE: usize = 4;

/// Default bound on the serialised bytes all pages of one cache keep together.
pub const DEFAULT_RENDERED_BYTES: usize = 64 * 1024 * 1024;

/// The byte budget shared by the renderings of one cache's pages.
#[derive(Debug)]
struct RenderBudget {
    used: AtomicUsize,
    limit: usize,
}

impl RenderBudget {
    /// Takes `bytes` from the budget if they fit.
    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct Rendering {
    /// Which serialised shape (chosen by the edge, e.g. `native` or a Consul endpoint with its
    /// per-request parameters).
    variant: Box<str>,
    /// A value the bytes also depend on besides the page (e.g. the generation of a table the
    /// edge joins in); the bytes are served only while the caller presents the same tag.
    tag: u64,
    bytes: Arc<[u8]>,
}

#[derive(Debug, Default)]
struct RenderState {
    /// Set when the page enters a cache; a page outside any cache keeps nothing.
    budget: Option<Arc<RenderBudget>>,
    items: Vec<Rendering>,
}

/// The serialised forms of one cached page (see the module comment).
///
/// The bytes are a function of the page (which never changes once built), the variant and
/// the tag, so they are exactly as fresh as the page itself. Renderings take no part in
/// equality, and a clone starts without any (they are derived data, cheap to make again).
#[derive(Debug, Default)]
pub struct Renderings {
    state: Mutex<RenderState>,
}

impl Renderings {
    fn lock(&self) -> std::sync::MutexGuard<'_, RenderState> {
        // The state is a plain list; a panic elsewhere cannot leave it half-updated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Links the page to its cache's budget; only the first link counts.
    fn attach(&self, budget: &Arc<RenderBudget>) {
        let mut state = self.lock();
        if state.budget.is_none() {
            state.budget = Some(Arc::clone(budget));
        }
    }

    /// The bytes kept for `variant` with `tag`, if any.
    pub fn get(&self, variant: &str, tag: u64) -> Option<Arc<[u8]>> {
        self.lock()
            .items
            .iter()
            .find(|r| r.tag == tag && &*r.variant == variant)
            .map(|r| Arc::clone(&r.bytes))
    }

    /// Keeps `bytes` as the form `variant` with `tag` (replacing an older one of the same
    /// variant), if the page is in a cache and the cache's byte budget has room. Returns
    /// whether they were kept.
    pub fn put(&self, variant: &str, tag: u64, bytes: Arc<[u8]>) -> bool {
        let mut state = self.lock();
        let Some(budget) = state.budget.clone() else {
            return false;
        };
        if let Some(position) = state.items.iter().position(|r| &*r.variant == variant) {
            let old = state.items.remove(position);
            budget.give_back(old.bytes.len());
        }
        if state.items.len() >= MAX_RENDERINGS_PER_PAGE {
            let old = state.items.remove(0);
            budget.give_back(old.bytes.len());
        }
        if !budget.take(bytes.len()) {
            return false;
        }
        state.items.push(Rendering {
            variant: variant.into(),
            tag,
            bytes,
        });
        true
    }

    /// Bytes kept by this page.
    pub fn bytes(&self) -> usize {
        self.lock().items.iter().map(|r| r.bytes.len()).sum()
    }
}

impl Drop for Renderings {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(budget) = &state.budget {
            budget.give_back(state.items.iter().map(|r| r.bytes.len()).sum());
        }
    }
}

impl Clone for Renderings {
    fn clone(&self) -> Self {
        Renderings::default()
    }
}

impl PartialEq for Renderings {
    fn eq(&self, _: &Renderings) -> bool {
        true
    }
}

impl Eq for Renderings {}

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
    /// Shared by the renderings of every page this cache holds.
    budget: Arc<RenderBudget>,
}

impl QueryCache {
    /// A cache of at most `max_entries` answers, each kept at most `ttl_ms`, whose pages keep
    /// at most [`DEFAULT_RENDERED_BYTES`] of serialised forms together.
    pub fn new(max_entries: usize, ttl_ms: u64) -> QueryCache {
        QueryCache::with_rendered_bytes(max_entries, ttl_ms, DEFAULT_RENDERED_BYTES)
    }

    /// Like [`QueryCache::new`] with another bound on the pages' serialised forms.
    pub fn with_rendered_bytes(
        max_entries: usize,
        ttl_ms: u64,
        max_rendered_bytes: usize,
    ) -> QueryCache {
        QueryCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_sequence: 0,
            max_entries,
            ttl_ms,
            hits: 0,
            misses: 0,
            budget: Arc::new(RenderBudget {
                used: AtomicUsize::new(0),
                limit: max_rendered_bytes,
            }),
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
    /// From now on the page can keep serialised forms, within this cache's byte budget.
    pub fn insert(&mut self, key: String, scope_revision: u64, now_ms: u64, page: Arc<CachedPage>) {
        if self.max_entries == 0 {
            return;
        }
        page.renderings.attach(&self.budget);
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

    /// Serialised bytes the pages of this cache keep (including pages evicted from the map
    /// but still being served).
    pub fn rendered_bytes(&self) -> usize {
        self.budget.used.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(total: u64) -> Arc<CachedPage> {
        Arc::new(CachedPage::new(total, Vec::new(), None))
    }

    fn bytes(text: &str) -> Arc<[u8]> {
        Arc::from(text.as_bytes())
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

    #[test]
    fn renderings_are_kept_only_for_cached_pages() {
        let outside = page(1);
        assert!(!outside.renderings.put("native", 0, bytes("{}")));
        assert!(outside.renderings.get("native", 0).is_none());

        let mut cache = QueryCache::new(10, 60_000);
        let cached = page(1);
        cache.insert("q".into(), 5, 0, Arc::clone(&cached));
        assert!(cached.renderings.put("native", 0, bytes("{\"total\":1}")));
        let hit = cache
            .lookup("q", 5, 1)
            .map(|p| p.renderings.get("native", 0));
        assert_eq!(hit.flatten().as_deref(), Some(&b"{\"total\":1}"[..]));
        // Another tag (e.g. a newer generation of a joined table) does not match.
        assert!(cached.renderings.get("native", 1).is_none());
        assert_eq!(cache.rendered_bytes(), 11);
    }

    #[test]
    fn renderings_go_with_a_stale_entry() {
        let mut cache = QueryCache::new(10, 60_000);
        let cached = page(1);
        cache.insert("q".into(), 5, 0, Arc::clone(&cached));
        assert!(cached.renderings.put("native", 0, bytes("old")));
        drop(cached);
        // A write moved the scope revision: no page, so no bytes, and the budget is free.
        assert!(cache.lookup("q", 6, 1).is_none());
        assert_eq!(cache.rendered_bytes(), 0);
        let fresh = page(2);
        cache.insert("q".into(), 6, 1, Arc::clone(&fresh));
        assert!(fresh.renderings.get("native", 0).is_none());
    }

    #[test]
    fn renderings_stay_within_the_byte_budget() {
        let mut cache = QueryCache::with_rendered_bytes(10, 60_000, 10);
        let (a, b) = (page(1), page(2));
        cache.insert("a".into(), 1, 0, Arc::clone(&a));
        cache.insert("b".into(), 1, 0, Arc::clone(&b));
        assert!(a.renderings.put("v", 0, bytes("123456")));
        assert!(!b.renderings.put("v", 0, bytes("123456")));
        assert_eq!(cache.rendered_bytes(), 6);
        // Replacing a variant gives its bytes back first.
        assert!(a.renderings.put("v", 1, bytes("1234567890")));
        assert_eq!(cache.rendered_bytes(), 10);
        // At most a few variants per page; the oldest goes.
        let mut roomy = QueryCache::new(10, 60_000);
        let c = page(3);
        roomy.insert("c".into(), 1, 0, Arc::clone(&c));
        for n in 0..10 {
            assert!(c.renderings.put(&format!("v{n}"), 0, bytes("x")));
        }
        assert_eq!(c.renderings.bytes(), MAX_RENDERINGS_PER_PAGE);
        assert!(c.renderings.get("v9", 0).is_some());
        assert!(c.renderings.get("v0", 0).is_none());
        // Evicting a page hands its bytes back once nothing serves it any more.
        drop(c);
        for n in 0..10 {
            roomy.insert(format!("other{n}"), 1, 0, page(0));
        }
        assert_eq!(roomy.rendered_bytes(), 0);
    }
}
