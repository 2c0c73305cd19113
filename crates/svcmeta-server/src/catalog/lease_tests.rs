//! Lease and event tests of the catalog, driven by a manual clock: expiry turns an instance
//! critical, renewal makes it passing and moves the deadline, `deregister_after` removes it,
//! deadlines come back from the store after a restart, and every change is an event with its
//! revision, contiguous and resumable.

use std::path::PathBuf;

use svcmeta_core::{validate, EventKind, InstanceDraft};

use super::*;

const START: u64 = 1_800_000_000_000;

struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "svcmeta-leases-{label}-{}-{}",
            std::process::id(),
            now_ms()
        ));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn leased(id: &str, ttl: &str) -> Mutation {
    let draft = InstanceDraft {
        id: id.to_string(),
        service: "web".to_string(),
        ttl: Some(ttl.to_string()),
        ..InstanceDraft::default()
    };
    Mutation::Register(validate(draft, &Limits::standard()).expect("valid"))
}

fn plain(id: &str) -> Mutation {
    let draft = InstanceDraft {
        id: id.to_string(),
        service: "web".to_string(),
        ..InstanceDraft::default()
    };
    Mutation::Register(validate(draft, &Limits::standard()).expect("valid"))
}

fn settings(deregister_after_ms: Option<u64>) -> CatalogSettings {
    CatalogSettings {
        deregister_after_ms,
        ..CatalogSettings::standard()
    }
}

fn health(catalog: &Catalog, id: &str) -> Option<Health> {
    catalog.get(id).map(|i| i.health)
}

#[test]
fn a_lease_expires_unless_renewed_and_is_removed_after_deregister_after() {
    let clock = Arc::new(ManualClock::new(START));
    let catalog =
        Catalog::open_with_clock(Store::Memory, settings(Some(60_000)), clock.clone()).unwrap();
    catalog
        .write_blocking(vec![leased("a", "10s"), plain("b")])
        .unwrap();
    assert_eq!(catalog.lease_deadline("a"), Some(START + 10_000));
    assert_eq!(catalog.lease_deadline("b"), None, "no ttl, no lease");

    clock.advance(5_000);
    assert_eq!(catalog.expire_due(), Some(START + 10_000));
    assert_eq!(health(&catalog, "a"), Some(Health::Passing));

    // Renewing moves the deadline without spending a revision when nothing else changes.
    let before = catalog.revision();
    let renewed = catalog
        .write_blocking(vec![Mutation::Renew("a".into())])
        .unwrap();
    assert_eq!(renewed.changed, 0);
    assert_eq!(catalog.revision(), before);
    assert_eq!(catalog.lease_deadline("a"), Some(START + 15_000));

    clock.advance(9_000); // 14 s: renewed at 5 s, so still within the lease
    catalog.expire_due();
    assert_eq!(health(&catalog, "a"), Some(Health::Passing));

    clock.advance(2_000); // 16 s: expired
    catalog.expire_due();
    assert_eq!(health(&catalog, "a"), Some(Health::Critical));
    assert_eq!(
        health(&catalog, "b"),
        Some(Health::Passing),
        "b has no lease"
    );
    let expiry = catalog.revision();
    assert_eq!(
        expiry,
        before + 1,
        "expiry is a change with its own revision"
    );

    // Renewing a critical instance makes it passing again (a change) and restarts the lease.
    catalog
        .write_blocking(vec![Mutation::Renew("a".into())])
        .unwrap();
    assert_eq!(health(&catalog, "a"), Some(Health::Passing));
    assert_eq!(catalog.revision(), expiry + 1);

    // Let it expire again and stay critical past deregister_after: it is removed.
    clock.advance(10_000);
    catalog.expire_due();
    assert_eq!(health(&catalog, "a"), Some(Health::Critical));
    clock.advance(59_999);
    catalog.expire_due();
    assert!(catalog.get("a").is_some(), "not yet");
    clock.advance(1);
    catalog.expire_due();
    assert!(catalog.get("a").is_none(), "removed after deregister_after");
    assert_eq!(catalog.lease_deadline("a"), None);

    let kinds: Vec<EventKind> = catalog
        .events_since(0)
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Register,
            EventKind::Register,
            EventKind::Health,
            EventKind::Health,
            EventKind::Health,
            EventKind::Deregister,
        ]
    );
}

#[test]
fn without_deregister_after_an_expired_instance_stays_critical() {
    let clock = Arc::new(ManualClock::new(START));
    let catalog = Catalog::open_with_clock(Store::Memory, settings(None), clock.clone()).unwrap();
    catalog.write_blocking(vec![leased("a", "1s")]).unwrap();
    clock.advance(3_600_000);
    catalog.expire_due();
    clock.advance(3_600_000);
    catalog.expire_due();
    assert_eq!(health(&catalog, "a"), Some(Health::Critical));
}

#[test]
fn renewal_errors_are_precise() {
    let clock = Arc::new(ManualClock::new(START));
    let catalog = Catalog::open_with_clock(Store::Memory, settings(None), clock).unwrap();
    catalog.write_blocking(vec![plain("b")]).unwrap();
    assert!(matches!(
        catalog.write_blocking(vec![Mutation::Renew("nope".into())]),
        Err(WriteError::Rejected(MutationError::NotFound(_)))
    ));
    assert!(matches!(
        catalog.write_blocking(vec![Mutation::Renew("b".into())]),
        Err(WriteError::Rejected(MutationError::NoLease(_)))
    ));
}

#[test]
fn re_registering_without_a_ttl_drops_the_lease() {
    let clock = Arc::new(ManualClock::new(START));
    let catalog = Catalog::open_with_clock(Store::Memory, settings(None), clock.clone()).unwrap();
    catalog.write_blocking(vec![leased("a", "1s")]).unwrap();
    catalog.write_blocking(vec![plain("a")]).unwrap();
    assert_eq!(catalog.lease_deadline("a"), None);
    clock.advance(10_000);
    catalog.expire_due();
    assert_eq!(health(&catalog, "a"), Some(Health::Passing));
}

#[test]
fn deadlines_and_events_survive_a_restart() {
    let dir = TempDir::new("restart");
    let clock = Arc::new(ManualClock::new(START));
    let last_before = {
        let store = Store::open_embedded(&dir.0).unwrap();
        let catalog = Catalog::open_with_clock(store, settings(None), clock.clone()).unwrap();
        catalog.write_blocking(vec![leased("a", "10s")]).unwrap();
        catalog.write_blocking(vec![plain("b")]).unwrap();
        catalog
            .write_blocking(vec![Mutation::Deregister("b".into())])
            .unwrap();
        catalog.revision()
    };
    // Down for 20 s: the lease ran out while nobody was watching.
    clock.advance(20_000);
    let store = Store::open_embedded(&dir.0).unwrap();
    let catalog = Catalog::open_with_clock(store, settings(None), clock.clone()).unwrap();
    assert_eq!(catalog.lease_deadline("a"), Some(START + 10_000));
    catalog.expire_due();
    assert_eq!(health(&catalog, "a"), Some(Health::Critical));

    let events = catalog.events_since(0).unwrap();
    let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
    assert_eq!(
        revisions,
        (1..=last_before + 1).collect::<Vec<_>>(),
        "no gap across the restart"
    );
    assert_eq!(events[2].kind, EventKind::Deregister);
    assert_eq!(
        events[2].instance.id(),
        "b",
        "a deregistration carries the last state"
    );
    assert_eq!(
        catalog.events_since(last_before).unwrap().len(),
        1,
        "resuming after the last seen revision gives only what is new"
    );
}

#[test]
fn history_older_than_the_retention_is_reported_not_skipped() {
    let clock = Arc::new(ManualClock::new(START));
    let settings = CatalogSettings {
        event_retention: 3,
        ..CatalogSettings::standard()
    };
    let catalog = Catalog::open_with_clock(Store::Memory, settings, clock).unwrap();
    for n in 0..10 {
        catalog
            .write_blocking(vec![plain(&format!("i{n}"))])
            .unwrap();
    }
    assert_eq!(
        catalog.events_since(1),
        Err(HistoryTrimmed {
            since: 1,
            oldest: 8
        })
    );
    let tail: Vec<u64> = catalog
        .events_since(7)
        .unwrap()
        .iter()
        .map(|e| e.revision)
        .collect();
    assert_eq!(tail, vec![8, 9, 10]);
    assert!(catalog.events_since(10).unwrap().is_empty());
    // A revision this registry never reached (it went back: a memory store restarted, a
    // replaced Redis data set) is not "nothing new": the watcher must re-list.
    assert_eq!(
        catalog.events_since(99),
        Err(HistoryTrimmed {
            since: 99,
            oldest: 11
        })
    );
}
