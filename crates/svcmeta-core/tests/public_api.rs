//! Integration tests of the core's public surface that the other crates rely on: cursor text,
//! canonical cache keys, the query cache's eviction order, the JSON shape of instances and
//! Go-style durations.

use std::collections::BTreeMap;
use std::sync::Arc;

use svcmeta_core::{
    format_duration_ms, parse_duration_ms, resolve, validate, CachedPage, Change, Cursor, Health,
    Instance, InstanceDraft, Limits, MetaCriterion, Mutation, Query, QueryCache, VersionCriterion,
};

fn page(total: u64) -> Arc<CachedPage> {
    Arc::new(CachedPage::new(total, Vec::new(), None))
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

#[test]
fn cursors_round_trip_at_the_largest_ids_and_reject_garbage() {
    let largest = Cursor {
        service_key: "s".repeat(128),
        id: "i".repeat(128),
    };
    let text = largest.encode();
    assert_eq!(text.len(), (128 + 1 + 128) * 2);
    assert_eq!(Cursor::decode(&text), Ok(largest));

    let ordinary = Cursor {
        service_key: "web".into(),
        id: "web-1:8080".into(),
    };
    assert_eq!(ordinary.encode(), "776562007765622d313a38303830");
    assert_eq!(Cursor::decode(&ordinary.encode()), Ok(ordinary.clone()));
    // Upper-case hex is the same cursor.
    assert_eq!(
        Cursor::decode(&ordinary.encode().to_ascii_uppercase()),
        Ok(ordinary)
    );

    for bad in [
        "",
        "0",
        "zz",
        "616",
        "6162",
        "ff00",
        "00ff",
        "\u{e9}00",
        "6100\u{e9}",
    ] {
        assert!(Cursor::decode(bad).is_err(), "{bad:?} accepted");
    }
    let too_long = "61".repeat(512) + "00";
    assert!(Cursor::decode(&too_long).is_err());
}

#[test]
fn cache_keys_are_canonical_and_injective() {
    let base = Query {
        service: Some("Web".into()),
        environment: Some("prod".into()),
        tags_all: strings(&["b", "a"]),
        tags_any: strings(&["x", "y"]),
        meta: vec![
            ("team".into(), MetaCriterion::Equals("core".into())),
            ("owner".into(), MetaCriterion::Present),
        ],
        health: Some(Health::Passing),
        ..Query::default()
    };
    // The same meaning gives the same key: list order, repeats and service case do not matter.
    let same = Query {
        service: Some("wEB".into()),
        tags_all: strings(&["a", "b", "a"]),
        tags_any: strings(&["y", "x"]),
        meta: vec![
            ("owner".into(), MetaCriterion::Present),
            ("team".into(), MetaCriterion::Equals("core".into())),
        ],
        ..base.clone()
    };
    assert_eq!(base.cache_key(), same.cache_key());

    // Different meanings give different keys, however the values are chosen.
    let variants: Vec<Query> = vec![
        Query::default(),
        Query {
            tags_all: strings(&["a;b"]),
            ..Query::default()
        },
        Query {
            tags_all: strings(&["a", "b"]),
            ..Query::default()
        },
        Query {
            tags_any: strings(&["a", "b"]),
            ..Query::default()
        },
        Query {
            tags_none: strings(&["a", "b"]),
            ..Query::default()
        },
        Query {
            tags_all: strings(&["1:a;"]),
            ..Query::default()
        },
        Query {
            service: Some("x".into()),
            ..Query::default()
        },
        Query {
            environment: Some("x".into()),
            ..Query::default()
        },
        Query {
            region: Some("x".into()),
            ..Query::default()
        },
        Query {
            meta: vec![("a".into(), MetaCriterion::Equals("bc".into()))],
            ..Query::default()
        },
        Query {
            meta: vec![("ab".into(), MetaCriterion::Equals("c".into()))],
            ..Query::default()
        },
        Query {
            meta: vec![("ab".into(), MetaCriterion::Equals(String::new()))],
            ..Query::default()
        },
        Query {
            meta: vec![("ab".into(), MetaCriterion::Present)],
            ..Query::default()
        },
        Query {
            version: VersionCriterion::parse("2").ok(),
            ..Query::default()
        },
        Query {
            version: VersionCriterion::parse("=2").ok(),
            ..Query::default()
        },
        Query {
            health: Some(Health::Warning),
            ..Query::default()
        },
        base,
    ];
    for (i, a) in variants.iter().enumerate() {
        for b in &variants[i + 1..] {
            assert_ne!(a.cache_key(), b.cache_key(), "{a:?} and {b:?} share a key");
        }
    }
}

#[test]
fn query_cache_evicts_the_oldest_insertion_first() {
    let mut cache = QueryCache::new(2, 60_000);
    cache.insert("a".into(), 1, 0, page(1));
    cache.insert("b".into(), 1, 0, page(2));
    // `a` is invalidated by a write and recomputed: its entry is now the newest insertion.
    assert!(cache.lookup("a", 2, 0).is_none());
    cache.insert("a".into(), 2, 0, page(3));
    // A third key evicts the oldest insertion, which is `b`.
    cache.insert("c".into(), 1, 0, page(4));
    assert_eq!(cache.len(), 2);
    assert_eq!(
        cache.lookup("a", 2, 0).map(|p| p.total),
        Some(3),
        "the newest insertion was evicted instead of the oldest"
    );
    assert_eq!(cache.lookup("c", 1, 0).map(|p| p.total), Some(4));
    assert!(cache.lookup("b", 1, 0).is_none());
}

#[test]
fn instances_round_trip_through_json_with_a_duration_ttl() {
    let draft = InstanceDraft {
        id: "web-1".into(),
        service: "Web".into(),
        address: "10.0.0.1".into(),
        port: 8080,
        tags: strings(&["b", "a", "b"]),
        version: Some("v2".into()),
        environment: Some("prod".into()),
        region: None,
        meta: [("user.name", "ann"), ("empty", "")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into_iter()
            .collect(),
        ttl: Some("1m30s".into()),
    };
    let registration = match validate(draft, &Limits::standard()) {
        Ok(registration) => registration,
        Err(errors) => panic!("rejected: {errors}"),
    };
    let instance = match resolve(None, Mutation::Register(registration), 7, 1_000) {
        Ok(Some(Change::Put(instance))) => instance,
        other => panic!("unexpected {other:?}"),
    };
    let json = serde_json::to_value(instance.as_ref()).expect("serialises");
    assert_eq!(
        json,
        serde_json::json!({
            "id": "web-1",
            "service": "Web",
            "address": "10.0.0.1",
            "port": 8080,
            "tags": ["b", "a"],
            "version": "v2",
            "environment": "prod",
            "meta": {"empty": "", "user.name": "ann"},
            "ttl": "1m30s",
            "health": "passing",
            "create_revision": 7,
            "modify_revision": 7,
            "registered_at": 1000,
            "updated_at": 1000
        })
    );
    let back: Instance = serde_json::from_value(json).expect("deserialises");
    assert_eq!(&back, instance.as_ref());
    assert_eq!(back.fields.ttl_ms, Some(90_000));
}

#[test]
fn drafts_reject_a_meta_key_given_twice_and_accept_null_meta() {
    let twice = serde_json::from_str::<InstanceDraft>(
        r#"{"id":"a","service":"web","meta":{"k":"1","k":"2"}}"#,
    );
    match twice {
        Ok(draft) => panic!("accepted {draft:?}"),
        Err(error) => assert!(
            error.to_string().contains("meta key \"k\" is given twice"),
            "{error}"
        ),
    }
    let null = serde_json::from_str::<InstanceDraft>(r#"{"id":"a","service":"web","meta":null}"#);
    assert_eq!(null.map(|d| d.meta).ok(), Some(BTreeMap::new()));
}

#[test]
fn durations_parse_go_syntax_and_round_trip() {
    for (text, ms) in [
        ("0", 0),
        ("0s", 0),
        ("250ms", 250),
        ("1.5s", 1_500),
        ("30s", 30_000),
        ("1m30s", 90_000),
        ("2h45m", 9_900_000),
        ("1h1m1s", 3_661_000),
        ("1.5h", 5_400_000),
        ("1500000us", 1_500),
        ("2000000000ns", 2_000),
        (" 5m ", 300_000),
    ] {
        assert_eq!(parse_duration_ms(text), Ok(ms), "{text:?}");
    }
    for bad in ["", "30", "5m30", "-1s", "1d", "s", "1e3s", "3 s", "1..5s"] {
        assert!(parse_duration_ms(bad).is_err(), "{bad:?} accepted");
    }
    for ms in [
        0, 1, 999, 1_000, 1_500, 59_000, 60_000, 90_000, 3_600_000, 3_661_000, 86_400_000,
    ] {
        let text = format_duration_ms(ms);
        assert_eq!(parse_duration_ms(&text), Ok(ms), "{ms} -> {text}");
    }
    assert_eq!(format_duration_ms(90_000), "1m30s");
    assert_eq!(format_duration_ms(3_600_000), "1h");
    assert_eq!(format_duration_ms(1_500), "1500ms");
}
