//! Tests of the stores: round trips, atomic batches, revisions, locking and corrupt records.

use std::collections::BTreeMap;
use std::sync::Arc;

use svcmeta_core::{validate, Change, Event, Health, Instance, InstanceDraft, Limits};

use super::*;
use crate::embedded::EmbeddedStore;
use crate::embedded::TRIM_STEP;

fn instance(id: &str, revision: u64) -> Arc<Instance> {
    let draft = InstanceDraft {
        id: id.to_string(),
        service: "web".to_string(),
        tags: vec!["a=1".to_string(), "ünïcode".to_string()],
        meta: BTreeMap::from([("team".to_string(), "core".to_string())]),
        version: Some("v2".to_string()),
        ..InstanceDraft::default()
    };
    stored(draft, revision)
}

/// The passing instance `draft` describes, as a write at `revision` stores it.
fn stored(draft: InstanceDraft, revision: u64) -> Arc<Instance> {
    let fields = validate(draft, &Limits::standard())
        .unwrap()
        .fields()
        .clone();
    Arc::new(Instance {
        fields,
        health: Health::Passing,
        create_revision: revision,
        modify_revision: revision,
        registered_at: 1,
        updated_at: 1,
    })
}

fn changes(changes: &[Change], events: &[Event], revision: u64) -> Batch<'static> {
    // Leaked so the batch can borrow for 'static in a test; tiny and test-only.
    let changes: &'static [Change] = Box::leak(changes.to_vec().into_boxed_slice());
    let events: &'static [Event] = Box::leak(events.to_vec().into_boxed_slice());
    Batch {
        changes,
        events,
        leases: &[],
        revision,
        event_retention: 1000,
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("svcmeta-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn embedded_round_trip_keeps_instances_and_revision() {
    let dir = temp_dir("round-trip");
    {
        let store = Store::open_embedded(&dir).unwrap();
        store
            .commit(&changes(
                &[Change::Put(instance("a", 1)), Change::Put(instance("b", 2))],
                &[],
                2,
            ))
            .unwrap();
        store
            .commit(&changes(
                &[Change::Remove {
                    id: "a".into(),
                    revision: 3,
                    service: "web".into(),
                }],
                &[],
                3,
            ))
            .unwrap();
    }
    let store = Store::open_embedded(&dir).unwrap();
    let snapshot = store.load().unwrap();
    assert_eq!(
        snapshot.revision, 3,
        "a removal's revision survives a reopen"
    );
    assert_eq!(snapshot.instances.len(), 1);
    assert_eq!(snapshot.instances[0], *instance("b", 2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn second_open_of_a_held_directory_is_a_clear_error() {
    let dir = temp_dir("locked");
    let _held = Store::open_embedded(&dir).unwrap();
    let error = Store::open_embedded(&dir).unwrap_err();
    assert!(matches!(error, StoreError::Locked { .. }), "{error:?}");
    assert!(error
        .to_string()
        .contains("in use by another svcmeta process"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_records_are_reported_with_their_key() {
    assert!(matches!(
        codec::decode("x", &[]),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        codec::decode("x", &[9, b'{']),
        Err(StoreError::Corrupt { .. })
    ));
    let good = codec::encode(&instance("a", 1));
    let error = codec::decode("b", &good).unwrap_err();
    assert!(error.to_string().contains("\"b\""), "{error}");
    assert_eq!(codec::decode("a", &good).unwrap(), *instance("a", 1));
}

#[test]
fn memory_store_keeps_nothing() {
    let store = Store::Memory;
    store
        .commit(&changes(&[Change::Put(instance("a", 1))], &[], 1))
        .unwrap();
    let snapshot = store.load().unwrap();
    assert!(snapshot.instances.is_empty());
    assert_eq!(snapshot.revision, 0);
}

#[test]
fn events_and_leases_survive_a_reopen_and_old_events_are_trimmed() {
    let dir = temp_dir("events");
    let commit_one = |store: &Store, revision: u64| {
        let put = Change::Put(instance("a", revision));
        let event = Event::describe(None, &put).unwrap();
        let mut batch = changes(&[put], &[event], revision);
        batch.event_retention = 4;
        let leases = vec![("a".to_string(), Some(1_000 + revision))];
        batch.leases = Box::leak(leases.into_boxed_slice());
        store.commit(&batch).unwrap();
    };
    let revisions = |store: &Store| -> Vec<u64> {
        store
            .load()
            .unwrap()
            .events
            .iter()
            .map(|e| e.revision)
            .collect()
    };
    {
        let store = Store::open_embedded(&dir).unwrap();
        for revision in 1..=10u64 {
            commit_one(&store, revision);
        }
        // Trimming happens once per step of revisions, so these are all still there.
        assert_eq!(revisions(&store), (1..=10).collect::<Vec<_>>());
        // A commit that crosses a step boundary drops everything older than the retention.
        commit_one(&store, 2 * TRIM_STEP);
    }
    let snapshot = Store::open_embedded(&dir).unwrap().load().unwrap();
    let kept: Vec<u64> = snapshot.events.iter().map(|e| e.revision).collect();
    assert_eq!(
        kept,
        vec![2 * TRIM_STEP],
        "events older than the retention are dropped"
    );
    assert_eq!(
        snapshot.leases,
        vec![("a".to_string(), 1_000 + 2 * TRIM_STEP)]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn records_of_the_earlier_json_format_still_load() {
    // Format 1 as the first release wrote it: the format byte, then the instance as JSON.
    let original = instance("a", 7);
    let mut json_record = vec![codec::RECORD_FORMAT];
    json_record.extend(serde_json::to_vec(&*original).unwrap());
    assert_eq!(codec::decode("a", &json_record).unwrap(), *original);
    // This build writes the binary format, which round-trips every field.
    let binary = codec::encode(&original);
    assert_eq!(binary[0], codec::CHECKED_FORMAT);
    assert!(binary.len() < json_record.len(), "binary is more compact");
    let mut critical = Instance::clone(&original);
    critical.health = Health::Critical;
    critical.fields.ttl_ms = Some(30_000);
    assert_eq!(
        codec::decode("a", &codec::encode(&critical)).unwrap(),
        critical
    );
    // A truncated binary record is reported, not mis-read.
    assert!(matches!(
        codec::decode("a", &binary[..binary.len() / 2]),
        Err(StoreError::Corrupt { .. })
    ));
}

/// Commits a batch the way the catalog does: events described against the state before.
fn commit_changes(
    store: &Store,
    state: &mut std::collections::HashMap<String, Arc<Instance>>,
    changes: Vec<Change>,
    leases: Vec<(String, Option<u64>)>,
) -> Vec<Event> {
    let mut events = Vec::new();
    for change in &changes {
        events.extend(Event::describe(state.get(change.id()), change));
        match change {
            Change::Put(instance) => {
                state.insert(change.id().to_string(), Arc::clone(instance));
            }
            Change::Remove { .. } => {
                state.remove(change.id());
            }
        }
    }
    let revision = changes.iter().map(Change::revision).max().unwrap_or(0);
    let batch = Batch {
        changes: &changes,
        events: &events,
        leases: &leases,
        revision,
        event_retention: 1000,
    };
    store.commit(&batch).unwrap();
    events
}

fn revised(
    instance: &Arc<Instance>,
    revision: u64,
    change: impl FnOnce(&mut Instance),
) -> Arc<Instance> {
    let mut next = Instance::clone(instance);
    next.modify_revision = revision;
    change(&mut next);
    Arc::new(next)
}

#[test]
fn commits_only_in_the_log_are_replayed_after_a_crash() {
    let dir = temp_dir("replay");
    let mut state = std::collections::HashMap::new();
    let mut events = Vec::new();
    let a1 = instance("a", 1);
    let b2 = instance("b", 2);
    let a3 = revised(&a1, 3, |i| i.fields.port = 9090);
    let b4 = revised(&b2, 4, |i| i.health = Health::Critical);
    {
        // A process killed right after these commits: none of them reached the redb file.
        let store = Store::Embedded(EmbeddedStore::open_without_checkpoints(&dir).unwrap());
        events.extend(commit_changes(
            &store,
            &mut state,
            vec![Change::Put(Arc::clone(&a1)), Change::Put(Arc::clone(&b2))],
            vec![("b".to_string(), Some(5_000))],
        ));
        events.extend(commit_changes(
            &store,
            &mut state,
            vec![Change::Put(Arc::clone(&a3))],
            vec![],
        ));
        events.extend(commit_changes(
            &store,
            &mut state,
            vec![
                Change::Put(Arc::clone(&b4)),
                Change::Remove {
                    id: "a".to_string(),
                    revision: 5,
                    service: "web".to_string(),
                },
            ],
            vec![("b".to_string(), Some(6_000))],
        ));
        // A renewal that changed nothing but the lease deadline is a frame of its own.
        commit_changes(
            &store,
            &mut state,
            vec![],
            vec![("b".to_string(), Some(7_000))],
        );
    }
    let expect = |snapshot: &Snapshot| {
        assert_eq!(snapshot.instances, vec![Instance::clone(&b4)]);
        assert_eq!(snapshot.revision, 5);
        assert_eq!(
            snapshot.events, events,
            "events are described again as committed"
        );
        assert_eq!(snapshot.leases, vec![("b".to_string(), 7_000)]);
    };
    let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["register", "register", "update", "health", "deregister"]
    );
    expect(&Store::open_embedded(&dir).unwrap().load().unwrap());
    // Replay happened once: opening again finds the same state, nothing applied twice.
    expect(&Store::open_embedded(&dir).unwrap().load().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_reopened_store_goes_on_after_replayed_frames() {
    let dir = temp_dir("replay-continue");
    let mut state = std::collections::HashMap::new();
    // A crash, a clean close (the frames reach the redb file), and another crash.
    for (crash, id, revision) in [(true, "a", 1), (false, "b", 2), (true, "c", 3)] {
        let store = if crash {
            Store::Embedded(EmbeddedStore::open_without_checkpoints(&dir).unwrap())
        } else {
            Store::open_embedded(&dir).unwrap()
        };
        let put = Change::Put(instance(id, revision));
        commit_changes(&store, &mut state, vec![put], vec![]);
    }
    let snapshot = Store::open_embedded(&dir).unwrap().load().unwrap();
    let ids: Vec<&str> = snapshot.instances.iter().map(|i| i.id()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(snapshot.revision, 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn events_round_trip_in_binary_and_earlier_json_events_still_load() {
    let before = instance("a", 3);
    let after = revised(&before, 4, |i| i.fields.port = 81);
    let update = Event::describe(Some(&before), &Change::Put(Arc::clone(&after))).unwrap();
    let removal = Event::describe(
        Some(&after),
        &Change::Remove {
            id: "a".to_string(),
            revision: 5,
            service: "web".to_string(),
        },
    )
    .unwrap();
    let mut interner = codec::Interner::default();
    for event in [&update, &removal] {
        let binary = codec::encode_event(event);
        assert_eq!(binary[0], codec::RECORD_EVENT_FORMAT);
        let decoded = codec::decode_event(event.revision, &binary, &mut interner).unwrap();
        assert_eq!(&decoded, event);
        // Events as earlier builds wrote them (format 5) still load.
        let earlier = codec::encode_event_v5(event);
        assert_eq!(earlier[0], codec::CHECKED_EVENT_FORMAT);
        assert_eq!(
            &codec::decode_event(event.revision, &earlier, &mut interner).unwrap(),
            event
        );
        // The record's key is its revision; a binary body does not repeat it.
        let elsewhere = codec::decode_event(9, &binary, &mut interner).unwrap();
        assert_eq!(elsewhere.revision, 9);
        assert!(matches!(
            codec::decode_event(event.revision, &binary[..binary.len() - 3], &mut interner),
            Err(StoreError::Corrupt { .. })
        ));
    }
    // Format 1, as earlier builds wrote events: the format byte, then JSON.
    let mut json_record = vec![codec::RECORD_FORMAT];
    json_record.extend(serde_json::to_vec(&update).unwrap());
    assert_eq!(
        codec::decode_event(4, &json_record, &mut interner).unwrap(),
        update
    );
    let error = codec::decode_event(7, &json_record, &mut interner).unwrap_err();
    assert!(error.to_string().contains("revision 4"), "{error}");
}

#[test]
fn a_stored_string_that_is_not_utf8_is_reported_as_corrupt() {
    // Without a checksum (format 2) to catch the damage first.
    let mut good = vec![codec::BINARY_FORMAT];
    good.extend_from_slice(&codec::encode(&instance("a", 1))[5..]);
    let tag = "ünïcode".as_bytes();
    let at = good
        .windows(tag.len())
        .position(|w| w == tag)
        .expect("the tag is in the record");
    let mut bad = good.clone();
    bad[at] = 0xff;
    let error = codec::decode("a", &bad).unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    assert!(error.to_string().contains("not UTF-8"), "{error}");
    // With the good strings known to the reader, the changed bytes are still new, so checked.
    let mut interner = codec::Interner::default();
    codec::decode_interned("a", &good, &mut interner).unwrap();
    assert!(codec::decode_interned("a", &bad, &mut interner).is_err());
}

#[test]
fn a_damaged_record_is_refused_and_records_without_checksums_still_load() {
    let original = instance("a", 7);
    let good = codec::encode(&original);
    assert_eq!(good[0], codec::CHECKED_FORMAT);
    // One changed byte in an address, a tag, anywhere in the body: refused, not served.
    for at in [6, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let error = codec::decode("a", &bad).unwrap_err();
        assert!(error.to_string().contains("checksum"), "byte {at}: {error}");
    }
    // Format 2, as builds before checksums wrote it: the same body without the checksum.
    let mut unchecked = vec![codec::BINARY_FORMAT];
    unchecked.extend_from_slice(&good[5..]);
    assert_eq!(codec::decode("a", &unchecked).unwrap(), *original);
    let event = Event::describe(None, &Change::Put(Arc::clone(&original))).unwrap();
    let mut interner = codec::Interner::default();
    let good = codec::encode_event(&event);
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    let error = codec::decode_event(7, &bad, &mut interner).unwrap_err();
    assert!(error.to_string().contains("checksum"), "{error}");
    // Every single flipped bit of an event record is caught.
    for at in 0..good.len() * 8 {
        let mut bad = good.clone();
        bad[at / 8] ^= 1 << (at % 8);
        assert!(
            codec::decode_event(7, &bad, &mut interner).is_err(),
            "bit {at} of {}",
            good.len() * 8
        );
    }
    let earlier = codec::encode_event_v5(&event);
    let mut unchecked = vec![codec::EVENT_FORMAT];
    unchecked.extend_from_slice(&earlier[5..]);
    assert_eq!(
        codec::decode_event(7, &unchecked, &mut interner).unwrap(),
        event
    );
}

#[test]
fn a_redb_file_that_was_not_closed_cleanly_is_not_opened_without_its_log() {
    let dir = temp_dir("needs-log");
    let mut state = std::collections::HashMap::new();
    {
        let store = Store::open_embedded(&dir).unwrap();
        commit_changes(
            &store,
            &mut state,
            vec![Change::Put(instance("a", 1))],
            vec![],
        );
    }
    // Closed cleanly: the redb file alone is whole, and a missing log is simply made again.
    std::fs::remove_dir_all(dir.join(crate::wal::LOG_DIR)).unwrap();
    {
        let store = Store::Embedded(EmbeddedStore::open_without_checkpoints(&dir).unwrap());
        commit_changes(
            &store,
            &mut state,
            vec![Change::Put(instance("b", 2))],
            vec![],
        );
    }
    // Killed: "b" is only in the log. Copying the redb file without it would lose "b" and
    // hand revision 2 out again, so it is refused.
    let log = dir.join(crate::wal::LOG_DIR);
    let moved = dir.join("wal-elsewhere");
    std::fs::rename(&log, &moved).unwrap();
    let error = Store::open_embedded(&dir).unwrap_err();
    assert!(error.to_string().contains("not closed cleanly"), "{error}");
    std::fs::remove_dir_all(&log).unwrap();
    std::fs::rename(&moved, &log).unwrap();
    let snapshot = Store::open_embedded(&dir).unwrap().load().unwrap();
    assert_eq!(snapshot.instances.len(), 2);
    assert_eq!(snapshot.revision, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_half_made_database_file_is_never_left_behind() {
    let dir = temp_dir("first-start");
    std::fs::create_dir_all(&dir).unwrap();
    // What a process killed while creating the file leaves: the staging file only.
    std::fs::write(dir.join("svcmeta.redb.new"), b"half made").unwrap();
    let store = Store::open_embedded(&dir).unwrap();
    assert!(!dir.join("svcmeta.redb.new").exists());
    assert!(dir.join(DATABASE_FILE).exists());
    assert_eq!(store.load().unwrap().revision, 0);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_directory_stays_locked_even_if_the_database_file_is_removed() {
    let dir = temp_dir("dir-lock");
    let held = Store::open_embedded(&dir).unwrap();
    std::fs::rename(dir.join(DATABASE_FILE), dir.join("moved.redb")).unwrap();
    let error = Store::open_embedded(&dir).unwrap_err();
    assert!(matches!(error, StoreError::Locked { .. }), "{error:?}");
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_checkpoint_of_many_writes_to_one_id_keeps_the_last() {
    let dir = temp_dir("checkpoint-last");
    let mut state = std::collections::HashMap::new();
    let a1 = instance("a", 1);
    let a2 = revised(&a1, 2, |i| i.fields.port = 2);
    let a4 = revised(&a1, 4, |i| i.fields.port = 4);
    {
        let store = Store::open_embedded(&dir).unwrap();
        // All within one checkpoint interval: the checkpoint sees every batch at once.
        let remove = |revision| Change::Remove {
            id: "a".to_string(),
            revision,
            service: "web".to_string(),
        };
        let lease = |deadline| vec![("a".to_string(), deadline)];
        commit_changes(&store, &mut state, vec![Change::Put(a1)], lease(Some(10)));
        commit_changes(&store, &mut state, vec![Change::Put(a2)], lease(Some(20)));
        commit_changes(&store, &mut state, vec![remove(3)], lease(None));
        commit_changes(
            &store,
            &mut state,
            vec![Change::Put(Arc::clone(&a4))],
            vec![],
        );
        commit_changes(
            &store,
            &mut state,
            vec![Change::Put(instance("b", 5))],
            lease(Some(50)),
        );
        let snapshot = store.load().unwrap();
        let ids: Vec<&str> = snapshot.instances.iter().map(|i| i.id()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(snapshot.instances[0], *a4);
        assert_eq!(snapshot.leases, vec![("a".to_string(), 50)]);
        assert_eq!(snapshot.events.len(), 5, "every event is kept");
    }
    let snapshot = Store::open_embedded(&dir).unwrap().load().unwrap();
    assert_eq!(snapshot.instances[0], *a4);
    assert_eq!(snapshot.revision, 5);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A load longer than one chunk: strings first seen in one chunk are used by later ones, each
/// instance comes back exactly as written, and equal strings are shared across chunks.
#[test]
fn a_load_over_several_chunks_rebuilds_every_instance_and_shares_strings() {
    let dir = temp_dir("chunks");
    let count = 40_000;
    let written: Vec<Arc<Instance>> = (0..count)
        .map(|n| {
            let draft = InstanceDraft {
                id: format!("svc-{n:06}"),
                service: format!("service-{}", n % 7),
                address: format!("10.0.{}.{}", n / 256 % 256, n % 256),
                port: (n % 60_000) as i64,
                tags: vec![format!("shard={}", n % 13), "common".to_string()],
                meta: BTreeMap::from([
                    ("build".to_string(), format!("{}", n / 1000)),
                    ("owner".to_string(), format!("ö-{}", n % 3)),
                ]),
                version: Some(format!("1.{}.0", n % 5)),
                environment: (n % 2 == 0).then(|| "prod".to_string()),
                region: (n % 3 == 0).then(|| "eu-west-1".to_string()),
                ..InstanceDraft::default()
            };
            stored(draft, n as u64 + 1)
        })
        .collect();
    {
        let store = Store::open_embedded(&dir).unwrap();
        let puts: Vec<Change> = written.iter().cloned().map(Change::Put).collect();
        store.commit(&changes(&puts, &[], count as u64)).unwrap();
    }
    let store = Store::open_embedded(&dir).unwrap();
    let mut chunk_sizes = Vec::new();
    let mut strings = LoadStrings::default();
    let mut loaded = Vec::new();
    store
        .load_with(&mut |chunk| {
            chunk_sizes.push(chunk.len());
            loaded.extend(chunk.into_instances(&mut strings));
        })
        .unwrap();
    assert!(chunk_sizes.len() >= 2, "one chunk only: {chunk_sizes:?}");
    assert_eq!(loaded.len(), count);
    for (loaded, written) in loaded.iter().zip(&written) {
        assert_eq!(loaded, written.as_ref());
    }
    let (first, last) = (&loaded[0], &loaded[count - 1 - (count - 1) % 13]);
    assert_eq!(first.fields.tags[0], last.fields.tags[0]);
    assert!(svcmeta_core::Text::ptr_eq(
        &first.fields.tags[0],
        &last.fields.tags[0]
    ));
    assert!(svcmeta_core::Text::ptr_eq(
        first.fields.environment.as_ref().unwrap(),
        last.fields.environment.as_ref().unwrap()
    ));
}

#[test]
fn a_checkpoint_stores_every_kind_of_event_as_it_was_described() {
    let dir = temp_dir("checkpoint-events");
    let mut state = std::collections::HashMap::new();
    let mut events = Vec::new();
    let a1 = instance("a", 1);
    let b2 = instance("b", 2);
    let a3 = revised(&a1, 3, |i| i.fields.port = 9090);
    let b4 = revised(&b2, 4, |i| i.health = Health::Critical);
    let c5 = instance("c", 5);
    {
        let store = Store::open_embedded(&dir).unwrap();
        events.extend(commit_changes(
            &store,
            &mut state,
            vec![Change::Put(Arc::clone(&a1)), Change::Put(Arc::clone(&b2))],
            vec![],
        ));
        // An update and a health change (events with a previous state), a removal (an event
        // whose instance is no change's), and a put and removal of one id in one batch.
        events.extend(commit_changes(
            &store,
            &mut state,
            vec![
                Change::Put(Arc::clone(&a3)),
                Change::Put(Arc::clone(&b4)),
                Change::Remove {
                    id: "a".to_string(),
                    revision: 5,
                    service: "web".to_string(),
                },
            ],
            vec![],
        ));
        events.extend(commit_changes(
            &store,
            &mut state,
            vec![
                Change::Put(Arc::clone(&revised(&c5, 6, |_| {}))),
                Change::Remove {
                    id: "c".to_string(),
                    revision: 7,
                    service: "web".to_string(),
                },
            ],
            vec![],
        ));
    }
    let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "register",
            "register",
            "update",
            "health",
            "deregister",
            "register",
            "deregister"
        ]
    );
    let snapshot = Store::open_embedded(&dir).unwrap().load().unwrap();
    assert_eq!(snapshot.events, events);
    assert_eq!(snapshot.instances, vec![Instance::clone(&b4)]);
    assert_eq!(snapshot.revision, 7);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A batch of `changes` as a format-2 build logged it.
fn logged_v1(changes: &[Change], leases: &[(String, Option<u64>)], revision: u64) -> Vec<u8> {
    codec::encode_logged_batch_v1(&Batch {
        changes,
        events: &[],
        leases,
        revision,
        event_retention: 1000,
    })
}

#[test]
fn a_data_directory_of_the_previous_format_opens_with_its_log_and_events() {
    use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
    const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
    let dir = temp_dir("format-2");
    let a1 = instance("a", 1);
    let b2 = instance("b", 2);
    let a3 = revised(&a1, 3, |i| i.fields.port = 9090);
    let register = |instance: &Arc<Instance>| {
        Event::describe(None, &Change::Put(Arc::clone(instance))).unwrap()
    };
    // What a format-2 build left after a crash: a redb file that was not closed cleanly, its
    // events in format 5, and two frames in the log (format 1) that never reached the file.
    drop(Store::open_embedded(&dir).unwrap());
    {
        let database = redb::Database::open(dir.join(DATABASE_FILE)).unwrap();
        let txn = database.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("format", 2).unwrap();
            meta.insert("clean_close", 0).unwrap();
            meta.insert("revision", 2).unwrap();
            meta.insert("log_applied", 0).unwrap();
            let mut instances = txn.open_table(INSTANCES).unwrap();
            instances
                .insert("a", codec::encode(&a1).as_slice())
                .unwrap();
            instances
                .insert("b", codec::encode(&b2).as_slice())
                .unwrap();
            let mut events = txn.open_table(EVENTS).unwrap();
            for event in [register(&a1), register(&b2)] {
                let record = codec::encode_event_v5(&event);
                assert_eq!(record[0], codec::CHECKED_EVENT_FORMAT);
                events.insert(event.revision, record.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    {
        let (log, frames) = crate::wal::WriteAheadLog::open(&dir, 0, false).unwrap();
        assert!(frames.is_empty());
        let put = [Change::Put(Arc::clone(&a3))];
        let lease = [("b".to_string(), Some(5_000))];
        let first = logged_v1(&put, &lease, 3);
        assert_eq!(first[0], codec::LOG_FORMAT);
        log.append(&first).unwrap();
        let remove = [Change::Remove {
            id: "a".to_string(),
            revision: 4,
            service: "web".to_string(),
        }];
        log.append(&logged_v1(&remove, &[], 4)).unwrap();
    }
    let expected_events = vec![
        register(&a1),
        register(&b2),
        Event::describe(Some(&a1), &Change::Put(Arc::clone(&a3))).unwrap(),
        Event::describe(
            Some(&a3),
            &Change::Remove {
                id: "a".to_string(),
                revision: 4,
                service: "web".to_string(),
            },
        )
        .unwrap(),
    ];
    let expect = |snapshot: &Snapshot| {
        assert_eq!(snapshot.instances, vec![Instance::clone(&b2)]);
        assert_eq!(snapshot.revision, 4);
        assert_eq!(snapshot.events, expected_events);
        assert_eq!(snapshot.leases, vec![("b".to_string(), 5_000)]);
    };
    {
        let store = Store::open_embedded(&dir).unwrap();
        expect(&store.load().unwrap());
        // New writes go on in this build's formats next to the old records.
        let mut state = std::collections::HashMap::from([("b".to_string(), Arc::clone(&b2))]);
        let c5 = instance("c", 5);
        commit_changes(
            &store,
            &mut state,
            vec![Change::Put(Arc::clone(&c5))],
            vec![],
        );
    }
    let snapshot = Store::open_embedded(&dir).unwrap().load().unwrap();
    assert_eq!(snapshot.revision, 5);
    assert_eq!(snapshot.events.len(), 5);
    assert_eq!(&snapshot.events[..4], &expected_events[..]);
    assert_eq!(snapshot.instances.len(), 2);
    let database = redb::Database::open(dir.join(DATABASE_FILE)).unwrap();
    let txn = database.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    assert_eq!(meta.get("format").unwrap().unwrap().value(), 3);
    drop(meta);
    let events = txn.open_table(EVENTS).unwrap();
    let formats: Vec<u8> = events
        .iter()
        .unwrap()
        .map(|entry| entry.unwrap().1.value()[0])
        .collect();
    assert_eq!(
        formats,
        [
            codec::CHECKED_EVENT_FORMAT,
            codec::CHECKED_EVENT_FORMAT,
            codec::RECORD_EVENT_FORMAT,
            codec::RECORD_EVENT_FORMAT,
            codec::RECORD_EVENT_FORMAT
        ]
    );
    drop(events);
    drop(txn);
    drop(database);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn log_frames_round_trip_and_damaged_frames_are_refused() {
    let a1 = instance("a", 1);
    let changes = [
        Change::Put(Arc::clone(&a1)),
        Change::Remove {
            id: "b".to_string(),
            revision: 2,
            service: "web".to_string(),
        },
    ];
    let leases = [("a".to_string(), Some(7)), ("b".to_string(), None)];
    let batch = Batch {
        changes: &changes,
        events: &[],
        leases: &leases,
        revision: 2,
        event_retention: 10,
    };
    let encoded = codec::encode_logged_batch(&batch);
    assert_eq!(encoded.body[0], codec::RECORD_LOG_FORMAT);
    // The put's stored record lies in the frame exactly as the instances table keeps it.
    assert_eq!(
        encoded.body[encoded.records[0].clone()],
        codec::encode(&a1)[..]
    );
    assert!(encoded.records[1].is_empty());
    let mut interner = codec::Interner::default();
    let decoded = codec::decode_logged_batch(&encoded.body, &mut interner).unwrap();
    assert_eq!(decoded.changes, changes);
    assert_eq!(decoded.leases, leases);
    assert_eq!((decoded.revision, decoded.event_retention), (2, 10));
    let earlier = codec::decode_logged_batch(&logged_v1(&changes, &leases, 2), &mut interner);
    assert_eq!(earlier.unwrap().changes, changes);
    // A frame cut anywhere is refused, never read as a shorter batch.
    for end in 1..encoded.body.len() {
        assert!(
            codec::decode_logged_batch(&encoded.body[..end], &mut interner).is_err(),
            "cut at {end}"
        );
    }
}

#[test]
fn a_hand_encoded_record_is_exactly_postcards() {
    let mut checked = 0;
    for n in 0..400u64 {
        let tags: Vec<String> = (0..n % 7)
            .map(|t| format!("t{t}-{}", "x".repeat((n * t) as usize % 150)))
            .collect();
        let meta: BTreeMap<String, String> = (0..n % 5)
            .map(|m| {
                (
                    format!("k{m}"),
                    "v".repeat((n as usize * 37 + m as usize) % 300),
                )
            })
            .collect();
        let draft = InstanceDraft {
            id: format!("svc-{n}-{}", "i".repeat(n as usize % 140)),
            service: format!("service-{}", n % 9),
            address: format!("10.0.{}.{}", n / 256, n % 256),
            port: (n * 163 % 65_535) as i64 + 1,
            tags,
            meta,
            version: (n % 3 != 0).then(|| format!("{}.{}.0", n % 4, n % 11)),
            environment: (n % 4 != 0).then(|| "prod".to_string()),
            region: (n % 5 != 0).then(|| "eu-west-1".to_string()),
            ttl: (n % 2 == 0).then(|| format!("{}s", n + 1)),
        };
        let Ok(registration) = validate(draft, &Limits::standard()) else {
            continue;
        };
        let shift = |k: u64| if k == 0 { 0 } else { 1u64 << (k * 7 % 64) };
        let instance = Instance {
            fields: registration.fields().clone(),
            health: [Health::Passing, Health::Warning, Health::Critical][n as usize % 3],
            create_revision: n + shift(n % 10),
            modify_revision: u64::MAX - n,
            registered_at: shift(n % 9) + n,
            updated_at: 1_700_000_000_000 + n,
        };
        assert_eq!(
            codec::hand_record_body(&instance),
            codec::serde_record_body(&instance),
            "instance {n}"
        );
        assert_eq!(
            codec::decode(instance.id(), &codec::encode(&instance)).unwrap(),
            instance
        );
        checked += 1;
    }
    assert!(checked > 250, "only {checked} drafts were valid");
}
