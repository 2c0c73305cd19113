//! Filter expression tests: a table of expressions with their expected matches over a fixed
//! catalog registered through the public API, error cases with their positions, planner
//! pushdown, round-tripping of the canonical text, and property tests (pushed-down plan vs
//! naive evaluation; the parser never panics on arbitrary text; deep nesting is refused).

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::filter::{plan_filter, query_with_filter, Filter, NodeInfo};
use super::parse::{is_blank, parse_filter, FilterErrorKind, FilterLimits};
use super::{Cursor, MetaCriterion, Page, Query};
use crate::model::{Health, InstanceDraft};
use crate::registry::{resolve, Mutation, Registry};
use crate::validate::{validate, Limits};
use crate::version::VersionCriterion;

// ---------------------------------------------------------------------------------------------
// The catalog
// ---------------------------------------------------------------------------------------------

const ALL: [&str; 10] = [
    "api-1", "api-2", "cache-1", "db-1", "db-2", "num-1", "web-1", "web-2", "web-3", "web-4",
];

struct Spec {
    id: &'static str,
    service: &'static str,
    address: &'static str,
    port: i64,
    tags: &'static [&'static str],
    version: Option<&'static str>,
    environment: Option<&'static str>,
    region: Option<&'static str>,
    meta: &'static [(&'static str, &'static str)],
    health: Health,
}

const CATALOG: [Spec; 10] = [
    Spec {
        id: "web-1",
        service: "web",
        address: "10.0.0.1",
        port: 8080,
        tags: &["http", "primary", "a=b"],
        version: Some("v2"),
        environment: Some("prod"),
        region: Some("eu-west"),
        meta: &[("team", "core"), ("user.name", "alice"), ("owner", "Zoë")],
        health: Health::Passing,
    },
    Spec {
        id: "web-2",
        service: "Web",
        address: "10.0.0.2",
        port: 8080,
        tags: &["http", "canary"],
        version: Some("2.0.0"),
        environment: Some("prod"),
        region: Some("us-east"),
        meta: &[("team", "core"), ("empty", "")],
        health: Health::Passing,
    },
    Spec {
        id: "web-3",
        service: "web",
        address: "",
        port: 80,
        tags: &[],
        version: Some("1.4.2"),
        environment: Some("staging"),
        region: Some("eu-west"),
        meta: &[],
        health: Health::Passing,
    },
    Spec {
        id: "web-4",
        service: "WEB",
        address: "10.0.0.4",
        port: 8081,
        tags: &["http", "v2"],
        version: Some("V2.0"),
        environment: Some("prod"),
        region: Some("eu-west"),
        meta: &[("team", "core"), ("a-b", "dash")],
        health: Health::Passing,
    },
    Spec {
        id: "api-1",
        service: "api",
        address: "api.internal",
        port: 9000,
        tags: &["grpc", "http", "say \"hi\""],
        version: Some("alpine"),
        environment: Some("prod"),
        region: Some("eu-west"),
        meta: &[
            ("team", "platform"),
            ("quote", "say \"hi\""),
            ("path", "C:\\temp"),
        ],
        health: Health::Passing,
    },
    Spec {
        id: "api-2",
        service: "api",
        address: "api.internal",
        port: 9001,
        tags: &["grpc"],
        version: None,
        environment: None,
        region: None,
        meta: &[("team", "Core")],
        health: Health::Passing,
    },
    Spec {
        id: "db-1",
        service: "db",
        address: "db.local",
        port: 5432,
        tags: &["primary", "sql"],
        version: Some("14.1"),
        environment: Some("prod"),
        region: Some("us-east"),
        meta: &[("team", "data"), ("desc", "naïve café ☕")],
        health: Health::Critical,
    },
    Spec {
        id: "db-2",
        service: "db",
        address: "db.local",
        port: 5433,
        tags: &["replica", "sql"],
        version: Some("14"),
        environment: Some("staging"),
        region: Some("us-east"),
        meta: &[("team", "data"), ("lag", "0")],
        health: Health::Warning,
    },
    Spec {
        id: "cache-1",
        service: "cache",
        address: "127.0.0.1",
        port: 6379,
        tags: &["redis", "with space", "Primary", "日本"],
        version: Some("7.2.0"),
        environment: Some("dev"),
        region: None,
        meta: &[("tier", "gold"), ("note", "tab\there")],
        health: Health::Passing,
    },
    Spec {
        id: "num-1",
        service: "123",
        address: "",
        port: 0,
        tags: &["x"],
        version: None,
        environment: None,
        region: None,
        meta: &[("k", "v"), ("user.name", "bob")],
        health: Health::Passing,
    },
];

/// The catalog, registered the way the server does it: validate, resolve, apply.
fn catalog() -> Registry {
    let mut registry = Registry::new();
    let mut revision = 0;
    let mut apply = |registry: &mut Registry, mutation: Mutation| {
        revision += 1;
        let id = mutation.id().to_string();
        let change = resolve(
            registry.get(&id),
            mutation,
            revision,
            1_700_000_000_000 + revision,
        )
        .expect("mutation applies");
        if let Some(change) = change {
            registry.apply(change);
        }
    };
    for spec in &CATALOG {
        let draft = InstanceDraft {
            id: spec.id.to_string(),
            service: spec.service.to_string(),
            address: spec.address.to_string(),
            port: spec.port,
            tags: spec.tags.iter().map(|t| t.to_string()).collect(),
            version: spec.version.map(str::to_string),
            environment: spec.environment.map(str::to_string),
            region: spec.region.map(str::to_string),
            meta: spec
                .meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ttl: None,
        };
        let registration = validate(draft, &Limits::standard())
            .unwrap_or_else(|errors| panic!("{}: {errors}", spec.id));
        apply(&mut registry, Mutation::Register(registration));
        if spec.health != Health::Passing {
            apply(
                &mut registry,
                Mutation::SetHealth {
                    id: spec.id.to_string(),
                    health: spec.health,
                },
            );
        }
    }
    assert_eq!(registry.len(), CATALOG.len());
    registry
}

fn generous() -> FilterLimits {
    FilterLimits {
        max_len: 1 << 20,
        max_depth: 64,
        max_regex_bytes: 1 << 20,
    }
}

/// Naive evaluation: the filter on every instance.
fn naive(registry: &Registry, filter: &Filter, node: &NodeInfo) -> Vec<String> {
    let mut ids: Vec<String> = registry
        .instances()
        .filter(|instance| filter.matches(instance, node))
        .map(|instance| instance.id().to_string())
        .collect();
    ids.sort();
    ids
}

/// The planned evaluation: the query's indexed criteria answered by `Registry::query`, all
/// pages of `page_size`, then the residual filter per candidate.
fn planned(registry: &Registry, query: &Query, page_size: usize) -> Vec<String> {
    let mut indexed = query.clone();
    let residual = indexed.filter.take();
    let mut ids = Vec::new();
    let mut cursor = None;
    loop {
        let answer = registry.query(
            &indexed,
            &Page {
                limit: Some(page_size),
                cursor,
            },
        );
        for instance in &answer.instances {
            if residual
                .as_ref()
                .is_none_or(|f| f.matches(instance, NodeInfo::standalone_ref()))
            {
                ids.push(instance.id().to_string());
            }
        }
        match answer.next_cursor {
            Some(next) => cursor = Some(Cursor::decode(&next).expect("cursor decodes")),
            None => break,
        }
    }
    ids.sort();
    ids
}

/// The reference semantics of the whole query, per instance.
fn reference(registry: &Registry, query: &Query) -> Vec<String> {
    let mut ids: Vec<String> = registry
        .instances()
        .filter(|instance| query.matches(instance))
        .map(|instance| instance.id().to_string())
        .collect();
    ids.sort();
    ids
}

fn sorted(ids: &[&str]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    ids.sort();
    ids
}

fn all_but(excluded: &[&str]) -> Vec<&'static str> {
    ALL.iter()
        .copied()
        .filter(|id| !excluded.contains(id))
        .collect()
}

fn parse(text: &str) -> Filter {
    parse_filter(text, &FilterLimits::standard())
        .unwrap_or_else(|error| panic!("{text:?}: {error}"))
}

/// Checks that the canonical text parses back to the same filter.
fn assert_round_trip(filter: &Filter, limits: &FilterLimits) {
    let text = filter.to_string();
    let again = parse_filter(&text, limits)
        .unwrap_or_else(|error| panic!("canonical text {text:?} does not parse: {error}"));
    assert_eq!(&again, filter, "canonical text {text:?}");
    assert_eq!(again.to_string(), text);
}

// ---------------------------------------------------------------------------------------------
// The expression table
// ---------------------------------------------------------------------------------------------

#[test]
fn expression_table() {
    let registry = catalog();
    let everyone = ALL.to_vec();
    let table: Vec<(&str, Vec<&str>)> = vec![
        // Service names: exact bytes, case-sensitive (unlike the service= criterion).
        ("Service == web", vec!["web-1", "web-3"]),
        ("Service == \"Web\"", vec!["web-2"]),
        ("ServiceName == WEB", vec!["web-4"]),
        ("Service != web", all_but(&["web-1", "web-3"])),
        // `contains` / `in` on a string is a substring test.
        ("Service contains \"eb\"", vec!["web-1", "web-2", "web-3"]),
        (
            "\"e\" in Service",
            vec!["cache-1", "web-1", "web-2", "web-3"],
        ),
        (
            "Service not contains e",
            vec!["api-1", "api-2", "db-1", "db-2", "num-1", "web-4"],
        ),
        (
            "Service matches \"^(?i)web$\"",
            vec!["web-1", "web-2", "web-3", "web-4"],
        ),
        ("Service not matches \"^w\"", all_but(&["web-1", "web-3"])),
        ("Service == \"123\"", vec!["num-1"]),
        ("Service == 123", vec!["num-1"]),
        ("ID == \"web-1\"", vec!["web-1"]),
        ("ServiceID != \"web-1\" and Service == web", vec!["web-3"]),
        // Precedence: not > and > or; parentheses.
        (
            "Service == api or Service == db and Environment == prod",
            vec!["api-1", "api-2", "db-1"],
        ),
        (
            "(Service == api or Service == db) and Environment == prod",
            vec!["api-1", "db-1"],
        ),
        (
            "not Service == api and Environment == prod",
            vec!["db-1", "web-1", "web-2", "web-4"],
        ),
        (
            "not (Service == api and Environment == prod)",
            all_but(&["api-1"]),
        ),
        ("not not Service == db", vec!["db-1", "db-2"]),
        ("not(Service == db)", all_but(&["db-1", "db-2"])),
        ("( ( Service == db ) )", vec!["db-1", "db-2"]),
        ("Service==db and Port!=5432", vec!["db-2"]),
        (
            "Service == db or Service == cache or Service == \"123\"",
            vec!["cache-1", "db-1", "db-2", "num-1"],
        ),
        (
            "Service == web and Port == 8080 or Service == api and Port == 9001",
            vec!["api-2", "web-1"],
        ),
        (
            "Environment == prod and (Region == eu-west or Region == us-east) and Port == 8080",
            vec!["web-1", "web-2"],
        ),
        ("\n\tService == db\r\n", vec!["db-1", "db-2"]),
        // Numeric ports.
        ("Port == 8080", vec!["web-1", "web-2"]),
        ("Port == \"8080\"", vec!["web-1", "web-2"]),
        ("ServicePort == 0x1F90", vec!["web-1", "web-2"]),
        ("Port != 80", all_but(&["web-3"])),
        ("Port == 0", vec!["num-1"]),
        ("Port == -1", vec![]),
        ("Port == 70000", vec![]),
        // Tags: whole elements, case-sensitive.
        ("\"http\" in Tags", vec!["api-1", "web-1", "web-2", "web-4"]),
        ("\"htt\" in Tags", vec![]),
        ("Tags contains sql", vec!["db-1", "db-2"]),
        ("\"sql\" not in Tags", all_but(&["db-1", "db-2"])),
        ("Tags not contains primary", all_but(&["db-1", "web-1"])),
        ("Tags contains \"Primary\"", vec!["cache-1"]),
        (
            "\"primary\" in Tags or \"Primary\" in Tags",
            vec!["cache-1", "db-1", "web-1"],
        ),
        ("Tags is empty", vec!["web-3"]),
        ("ServiceTags is not empty", all_but(&["web-3"])),
        ("\"with space\" in Tags", vec!["cache-1"]),
        ("\"a=b\" in Tags", vec!["web-1"]),
        ("\"v2\" in Tags and Version == V2.0", vec!["web-4"]),
        // Escaping and unicode.
        ("\"say \\\"hi\\\"\" in Tags", vec!["api-1"]),
        ("`say \"hi\"` in Tags", vec!["api-1"]),
        ("Meta.quote == \"say \\\"hi\\\"\"", vec!["api-1"]),
        ("Meta.path == \"C:\\\\temp\"", vec!["api-1"]),
        ("Meta.path == `C:\\temp`", vec!["api-1"]),
        ("Meta.path contains `\\`", vec!["api-1"]),
        ("Meta.note == \"tab\\there\"", vec!["cache-1"]),
        ("Meta.note contains \"\t\"", vec!["cache-1"]),
        ("\"日本\" in Tags", vec!["cache-1"]),
        ("Meta.desc == \"naïve café ☕\"", vec!["db-1"]),
        (
            "Meta.desc == \"na\\u00efve caf\\u00e9 \\u2615\"",
            vec!["db-1"],
        ),
        ("Meta.desc contains \"é\"", vec!["db-1"]),
        ("Meta.owner == Zoë", vec!["web-1"]),
        ("Meta.desc matches \"^na.ve\"", vec!["db-1"]),
        // Dotted meta keys.
        ("Meta[\"user.name\"] == alice", vec!["web-1"]),
        ("Meta.user.name == alice", vec!["web-1"]),
        ("ServiceMeta.user.name is not empty", vec!["num-1", "web-1"]),
        ("Meta.a-b == dash", vec!["web-4"]),
        ("Meta[`a-b`] == \"dash\"", vec!["web-4"]),
        // Meta values.
        ("Meta.team == core", vec!["web-1", "web-2", "web-4"]),
        ("Meta.team != core", all_but(&["web-1", "web-2", "web-4"])),
        (
            "Meta.team contains ore",
            vec!["api-2", "web-1", "web-2", "web-4"],
        ),
        (
            "Meta.team matches \"^[Cc]ore$\"",
            vec!["api-2", "web-1", "web-2", "web-4"],
        ),
        (
            "Meta.team not matches \"^core$\"",
            all_but(&["web-1", "web-2", "web-4"]),
        ),
        (
            "Meta.team == core and not \"canary\" in Tags",
            vec!["web-1", "web-4"],
        ),
        // A missing meta key, operator by operator.
        ("Meta.missing == \"\"", vec![]),
        ("Meta.missing != \"\"", everyone.clone()),
        ("Meta.missing is empty", everyone.clone()),
        ("Meta.missing is not empty", vec![]),
        ("Meta.missing matches \".*\"", vec![]),
        ("Meta.missing not matches \"x\"", everyone.clone()),
        ("not Meta.missing matches \"x\"", everyone.clone()),
        ("\"x\" in Meta.missing", vec![]),
        ("Meta.missing not contains \"x\"", everyone.clone()),
        // An empty value is a value.
        ("Meta.empty == \"\"", vec!["web-2"]),
        ("Meta.empty == ``", vec!["web-2"]),
        ("\"empty\" in Meta and Meta.empty is empty", vec!["web-2"]),
        ("Meta.empty is not empty", vec![]),
        ("Meta.empty != \"\"", all_but(&["web-2"])),
        // The meta map: `in` tests keys.
        ("\"empty\" in Meta", vec!["web-2"]),
        ("\"team\" not in Meta", vec!["cache-1", "num-1", "web-3"]),
        ("\"core\" in Meta", vec![]),
        ("Meta contains \"tier\"", vec!["cache-1"]),
        ("Meta is empty", vec!["web-3"]),
        ("ServiceMeta is not empty", all_but(&["web-3"])),
        // Versions compare as exact strings in a filter.
        ("Version == v2", vec!["web-1"]),
        ("Version == \"2.0.0\"", vec!["web-2"]),
        ("Version == alpine", vec!["api-1"]),
        ("Version is empty", vec!["api-2", "num-1"]),
        ("Version != \"alpine\"", all_but(&["api-1"])),
        ("Version matches \"^v?2\"", vec!["web-1", "web-2"]),
        // Environment, region, health, address.
        ("Environment == staging", vec!["db-2", "web-3"]),
        ("Environment is empty", vec!["api-2", "num-1"]),
        (
            "Environment != prod",
            vec!["api-2", "cache-1", "db-2", "num-1", "web-3"],
        ),
        (
            "Region == \"eu-west\"",
            vec!["api-1", "web-1", "web-3", "web-4"],
        ),
        (
            "Region == eu-west",
            vec!["api-1", "web-1", "web-3", "web-4"],
        ),
        ("Health == critical", vec!["db-1"]),
        ("Health != passing", vec!["db-1", "db-2"]),
        ("Health == \"Passing\"", vec![]),
        ("Address == \"10.0.0.1\"", vec!["web-1"]),
        ("Address == 10.0.0.1", vec!["web-1"]),
        ("ServiceAddress is empty", vec!["num-1", "web-3"]),
        (
            "Address contains \"10.0.\"",
            vec!["web-1", "web-2", "web-4"],
        ),
        // The node (standalone).
        ("Node == svcmeta", everyone.clone()),
        ("Datacenter == dc1 and Service == db", vec!["db-1", "db-2"]),
        ("Datacenter != dc1", vec![]),
        ("NodeMeta is empty", everyone.clone()),
        ("NodeMeta.rack == r1", vec![]),
        ("\"rack\" in NodeMeta", vec![]),
    ];
    assert!(table.len() >= 60, "{} expressions", table.len());
    for (text, expected) in &table {
        let filter = parse(text);
        let expected = sorted(expected);
        assert_eq!(
            naive(&registry, &filter, NodeInfo::standalone_ref()),
            expected,
            "naive: {text}"
        );
        let query = query_with_filter(Query::default(), text, &FilterLimits::standard())
            .unwrap_or_else(|error| panic!("{text}: {error}"));
        assert_eq!(planned(&registry, &query, 3), expected, "planned: {text}");
        assert_eq!(
            reference(&registry, &query),
            expected,
            "Query::matches: {text}"
        );
        assert_round_trip(&filter, &FilterLimits::standard());
        if let Some(residual) = &query.filter {
            assert_round_trip(residual, &FilterLimits::standard());
        }
    }
}

#[test]
fn node_selectors_read_the_node_given() {
    let registry = catalog();
    let node = NodeInfo {
        name: "node-7".to_string(),
        datacenter: "eu1".to_string(),
        meta: BTreeMap::from([("rack".to_string(), "r1".to_string())]),
    };
    let cases: [(&str, bool); 8] = [
        ("Node == \"node-7\"", true),
        ("Node == svcmeta", false),
        ("Datacenter == eu1", true),
        ("NodeMeta.rack == r1", true),
        ("NodeMeta[\"rack\"] matches \"^r\"", true),
        ("\"rack\" in NodeMeta", true),
        ("NodeMeta is empty", false),
        ("NodeMeta.zone is empty", true),
    ];
    for (text, all) in cases {
        let expected = if all { sorted(&ALL) } else { Vec::new() };
        assert_eq!(naive(&registry, &parse(text), &node), expected, "{text}");
    }
    assert_eq!(NodeInfo::default(), NodeInfo::standalone());
    assert_eq!(NodeInfo::standalone_ref().name, "svcmeta");
    assert_eq!(NodeInfo::standalone_ref().datacenter, "dc1");
}

#[test]
fn consul_names_are_the_same_selectors() {
    for (consul, native) in [
        ("ServiceName == web", "Service == web"),
        ("ServiceID == x", "ID == x"),
        ("\"t\" in ServiceTags", "\"t\" in Tags"),
        ("ServiceMeta.team == core", "Meta.team == core"),
        ("ServiceMeta[\"a.b\"] == c", "Meta.a.b == c"),
        ("ServiceAddress == a", "Address == a"),
        ("ServicePort == 1", "Port == 1"),
        ("ServiceMeta is empty", "Meta is empty"),
        ("Tags contains t", "\"t\" in Tags"),
        ("\"x\" in Service", "Service contains x"),
        ("not Service == a", "not (Service == a)"),
    ] {
        assert_eq!(parse(consul), parse(native), "{consul} vs {native}");
    }
}

#[test]
fn canonical_text() {
    for (text, canonical) in [
        ("Service==web", "Service == \"web\""),
        ("ServiceMeta.user.name == `x`", "Meta.user.name == \"x\""),
        ("Meta[\"a b\"] == 1", "Meta[\"a b\"] == \"1\""),
        ("Meta[\"\"] is empty", "Meta[\"\"] is empty"),
        ("Port == \"0x50\"", "Port == 80"),
        ("Tags contains x", "\"x\" in Tags"),
        ("x not in Tags", "\"x\" not in Tags"),
        ("\"k\" in ServiceMeta", "\"k\" in Meta"),
        ("y in Service", "Service contains \"y\""),
        (
            "(ID == a or ID == b) and not (ID == c or ID == d)",
            "(ID == \"a\" or ID == \"b\") and not (ID == \"c\" or ID == \"d\")",
        ),
        (
            "ID == a or (ID == b or ID == c)",
            "ID == \"a\" or (ID == \"b\" or ID == \"c\")",
        ),
        (
            "ID == a and (ID == b and ID == c)",
            "ID == \"a\" and (ID == \"b\" and ID == \"c\")",
        ),
        (
            "ID == a or ID == b and ID == c",
            "ID == \"a\" or ID == \"b\" and ID == \"c\"",
        ),
        ("not not ID == a", "not not ID == \"a\""),
        ("Version matches `^1\\.2`", "Version matches \"^1\\\\.2\""),
    ] {
        let filter = parse(text);
        assert_eq!(filter.to_string(), canonical, "{text}");
        assert_round_trip(&filter, &FilterLimits::standard());
    }
    let control = parse("ID == \"q\\\"\\\\\\n\\u0001é\"");
    assert_eq!(control.to_string(), "ID == \"q\\\"\\\\\\n\\u0001é\"");
    assert_round_trip(&control, &FilterLimits::standard());
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn errors_name_the_position_and_what_was_expected() {
    use FilterErrorKind::*;
    let cases: Vec<(&str, FilterErrorKind, usize, &str)> = vec![
        ("Service = \"web\"", Syntax, 8, "expected \"==\" or \"!=\""),
        (
            "Service \"web\"",
            Syntax,
            8,
            "expected \"==\", \"!=\", \"contains\", \"in\", \"is\", \"matches\" or \"not\" after selector Service",
        ),
        ("Foo == 1", UnknownSelector, 0, "unknown selector \"Foo\""),
        ("service == web", UnknownSelector, 0, "did you mean Service?"),
        ("Port.x == 1", UnknownSelector, 0, "unknown selector \"Port.x\""),
        ("Meta.a[\"b\"] == 1", UnknownSelector, 0, "unknown selector"),
        ("Meta. == x", UnknownSelector, 0, "Meta.KEY or Meta[\"KEY\"]"),
        (
            "Port contains 1",
            InvalidOperator,
            5,
            "operator \"contains\" is not allowed on Port (an integer); use \"==\" or \"!=\"",
        ),
        (
            "Tags == http",
            InvalidOperator,
            5,
            "operator \"==\" is not allowed on Tags",
        ),
        ("Meta != x", InvalidOperator, 5, "not allowed on Meta"),
        ("Port is  not   empty", InvalidOperator, 5, "operator \"is not empty\""),
        ("1 not in Port", InvalidOperator, 2, "operator \"not in\" is not allowed on Port"),
        ("Port == \"80a\"", InvalidValue, 8, "value \"80a\" is not an integer"),
        ("ServicePort == 8080.0", InvalidValue, 15, "value \"8080.0\" is not an integer"),
        ("Service matches \"(\"", InvalidRegex, 16, "invalid regular expression \"(\""),
        (
            "Service matches \"a{1000}{1000}\"",
            InvalidRegex,
            16,
            "is too large",
        ),
        ("Service == \"web", Syntax, 11, "unterminated \"string\""),
        ("Service == `web", Syntax, 11, "unterminated `raw string`"),
        ("Meta.x == \"a\\.b\"", Syntax, 12, "unknown escape \"\\.\""),
        ("Meta.x == \"\\u00\"", Syntax, 11, "needs 4 hexadecimal digits"),
        ("Meta.x == \"\\uD800\"", Syntax, 11, "not a Unicode scalar value"),
        (
            "(Service == web",
            Syntax,
            15,
            "expected \"and\", \"or\" or \")\" to close the \"(\" at 1:1",
        ),
        ("Service == web)", Syntax, 14, "unmatched \")\""),
        (
            "Service == web and",
            Syntax,
            18,
            "expected a selector, a value, \"not\" or \"(\", found the end of the filter",
        ),
        (
            "Service == web xor Port == 1",
            Syntax,
            15,
            "expected \"and\", \"or\" or the end of the filter, found \"xor\"",
        ),
        ("Tags is full", Syntax, 8, "expected \"empty\" or \"not empty\" after \"is\""),
        ("Tags is not full", Syntax, 12, "expected \"empty\" after \"is not\""),
        ("Service not equals x", Syntax, 12, "expected \"contains\" or \"matches\" after \"not\""),
        ("Service not in \"x\"", Syntax, 15, "expected a selector after \"in\""),
        ("\"x\" == Service", Syntax, 4, "expected \"in\" or \"not in\" after the value \"x\""),
        ("Service == ", Syntax, 11, "expected a value after \"==\""),
        ("Service not contains )", Syntax, 21, "expected a value after \"not contains\""),
        ("not", Syntax, 3, "expected a selector, a value, \"not\" or \"(\""),
        ("()", Syntax, 1, "expected a selector, a value"),
        ("Meta[1 == x", Syntax, 7, "expected \"]\""),
        ("Meta[(] == x", Syntax, 5, "expected a quoted key after \"[\""),
        ("Service ! x", Syntax, 8, "expected \"==\" or \"!=\", found '!'"),
    ];
    assert!(cases.len() >= 15);
    for (text, kind, offset, fragment) in cases {
        let error = match parse_filter(text, &FilterLimits::standard()) {
            Ok(filter) => panic!("{text:?} parsed as {filter}"),
            Err(error) => error,
        };
        assert_eq!(error.kind, kind, "{text:?}: {error}");
        assert_eq!(error.offset, offset, "{text:?}: {error}");
        assert_eq!((error.line, error.column), (1, offset + 1), "{text:?}");
        assert!(
            error.message.contains(fragment),
            "{text:?}: {:?} lacks {fragment:?}",
            error.message
        );
        assert_eq!(
            error.to_string(),
            format!("filter: 1:{} ({offset}): {}", offset + 1, error.message)
        );
    }
}

#[test]
fn error_positions_count_lines_and_characters() {
    let error = parse_filter("Service == web\nand Port = 1", &FilterLimits::standard())
        .expect_err("syntax error");
    assert_eq!((error.line, error.column, error.offset), (2, 10, 24));
    assert!(error
        .to_string()
        .starts_with("filter: 2:10 (24): expected \"==\""));

    // Columns count characters, offsets bytes.
    let error = parse_filter("Meta.owner == \"Zoë\" and é", &FilterLimits::standard())
        .expect_err("unknown selector");
    assert_eq!(error.kind, FilterErrorKind::UnknownSelector);
    assert_eq!((error.line, error.column, error.offset), (1, 25, 25));
}

#[test]
fn blank_means_no_filter() {
    // Whitespace beyond the length limit is still no filter.
    let long_blank = " ".repeat(10_000);
    for blank in ["", " ", "\n\t \r\n", "\u{a0}\u{2003}", long_blank.as_str()] {
        assert!(is_blank(blank));
        let error = parse_filter(blank, &FilterLimits::standard()).expect_err("blank");
        assert_eq!(error.kind, FilterErrorKind::Blank);
        assert!(error.is_blank());
        let base = Query {
            environment: Some("prod".into()),
            ..Query::default()
        };
        let query = query_with_filter(base.clone(), blank, &FilterLimits::standard())
            .expect("blank is no filter");
        assert_eq!(query, base);
    }
    assert!(!is_blank(" x "));
}

#[test]
fn limits_are_errors_not_crashes() {
    let standard = FilterLimits::standard();
    assert_eq!(standard, FilterLimits::default());
    assert_eq!(
        (
            standard.max_len,
            standard.max_depth,
            standard.max_regex_bytes
        ),
        (4096, 32, 1 << 20)
    );

    // Length.
    let long = format!("ID == \"{}\"", "x".repeat(4096));
    let error = parse_filter(&long, &standard).expect_err("too long");
    assert_eq!(error.kind, FilterErrorKind::TooLong);
    assert_eq!(error.offset, 4096);
    assert!(error.message.contains("limit 4096"), "{error}");
    let exactly = format!("ID == \"{}\"", "x".repeat(4096 - 8));
    assert_eq!(exactly.len(), 4096);
    assert!(parse_filter(&exactly, &standard).is_ok());
    // A limit falling inside a multi-byte character still gives a valid position.
    let error = parse_filter(
        "ID == é",
        &FilterLimits {
            max_len: 7,
            ..standard
        },
    )
    .expect_err("too long");
    assert_eq!((error.kind, error.offset), (FilterErrorKind::TooLong, 6));

    // Depth: 32 levels pass, 33 do not, whether "(" or "not".
    let nested = |n: usize| format!("{}ID == x{}", "(".repeat(n), ")".repeat(n));
    assert!(parse_filter(&nested(32), &standard).is_ok());
    let error = parse_filter(&nested(33), &standard).expect_err("too deep");
    assert_eq!((error.kind, error.offset), (FilterErrorKind::TooDeep, 32));
    let nots = |n: usize| format!("{}ID == x", "not ".repeat(n));
    assert!(parse_filter(&nots(32), &standard).is_ok());
    let error = parse_filter(&nots(33), &standard).expect_err("too deep");
    assert_eq!((error.kind, error.offset), (FilterErrorKind::TooDeep, 128));
    let mixed = "not (".repeat(16) + "ID == x" + &")".repeat(16);
    assert!(parse_filter(&mixed, &standard).is_ok());
    let mixed = "not (".repeat(17) + "ID == x" + &")".repeat(17);
    assert_eq!(
        parse_filter(&mixed, &standard).map_err(|e| e.kind),
        Err(FilterErrorKind::TooDeep)
    );

    // 100 000 levels: refused by length, and by depth when the length is unbounded.
    let unbounded = FilterLimits {
        max_len: usize::MAX,
        max_depth: usize::MAX,
        max_regex_bytes: 1 << 20,
    };
    for deep in [
        "(".repeat(100_000),
        nested(100_000),
        nots(100_000),
        "not (".repeat(100_000),
    ] {
        assert_eq!(
            parse_filter(&deep, &standard).map_err(|e| e.kind),
            Err(FilterErrorKind::TooLong)
        );
        let error = parse_filter(&deep, &unbounded).expect_err("too deep");
        assert_eq!(error.kind, FilterErrorKind::TooDeep);
        assert!(error.message.contains("256"), "{error}");
    }

    // The hard cap still parses, evaluates, prints and round-trips on a test thread's stack.
    let registry = catalog();
    for text in [
        nested(FilterLimits::HARD_MAX_DEPTH),
        nots(FilterLimits::HARD_MAX_DEPTH),
        "not (ID == x or ".repeat(FilterLimits::HARD_MAX_DEPTH / 2)
            + "ID == x"
            + &")".repeat(FilterLimits::HARD_MAX_DEPTH / 2),
    ] {
        let filter = parse_filter(&text, &unbounded).expect("at the hard cap");
        let _ = naive(&registry, &filter, NodeInfo::standalone_ref());
        assert_round_trip(&filter, &unbounded);
        let (query, residual) = plan_filter(filter);
        assert!(residual.is_some() || !query.is_empty());
    }

    // Regex size.
    let small = FilterLimits {
        max_regex_bytes: 1000,
        ..standard
    };
    assert!(parse_filter("ID matches \"^web-[0-9]+$\"", &small).is_ok());
    let error = parse_filter("ID matches \"\\\\w{50}\"", &small).expect_err("too large");
    assert_eq!(error.kind, FilterErrorKind::InvalidRegex);
    assert_eq!(error.offset, 11);
    assert!(error.message.contains("too large"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Planning
// ---------------------------------------------------------------------------------------------

fn version(text: &str) -> Option<VersionCriterion> {
    Some(VersionCriterion::parse(text).expect("version criterion"))
}

#[test]
fn plan_pushes_indexable_conjuncts_down() {
    let (query, residual) = plan_filter(parse(
        "Service == web and Environment == prod and Region == \"eu-west\" and \"http\" in Tags \
         and \"x\" not in Tags and Meta.team == core and \"owner\" in Meta and Health == passing",
    ));
    assert_eq!(
        query,
        Query {
            service: Some("web".into()),
            environment: Some("prod".into()),
            region: Some("eu-west".into()),
            tags_all: vec!["http".into()],
            tags_none: vec!["x".into()],
            meta: vec![
                ("team".into(), MetaCriterion::Equals("core".into())),
                ("owner".into(), MetaCriterion::Present),
            ],
            health: Some(Health::Passing),
            ..Query::default()
        }
    );
    // The service index folds case, so the exact comparison stays.
    assert_eq!(
        residual.map(|r| r.to_string()),
        Some("Service == \"web\"".into())
    );

    let cases: Vec<(&str, Query, Option<&str>)> = vec![
        (
            "Environment == prod",
            Query {
                environment: Some("prod".into()),
                ..Query::default()
            },
            None,
        ),
        // Nothing to fold: exact.
        (
            "Service == \"123\"",
            Query {
                service: Some("123".into()),
                ..Query::default()
            },
            None,
        ),
        // Not semver: the exact criterion is exact.
        (
            "Version == alpine",
            Query {
                version: version("alpine"),
                ..Query::default()
            },
            None,
        ),
        // Semver: the index also answers "2.0.0", so the exact comparison stays.
        (
            "Version == v2",
            Query {
                version: version("v2"),
                ..Query::default()
            },
            Some("Version == \"v2\""),
        ),
        // Something the version parser reads as a range is not pushed down.
        (
            "Version == \">=1\"",
            Query::default(),
            Some("Version == \">=1\""),
        ),
        // Negations move inwards where that is exact.
        (
            "not (Environment == prod or \"x\" in Tags)",
            Query {
                tags_none: vec!["x".into()],
                ..Query::default()
            },
            Some("Environment != \"prod\""),
        ),
        (
            "not \"x\" not in Tags and not not Health == warning",
            Query {
                tags_all: vec!["x".into()],
                health: Some(Health::Warning),
                ..Query::default()
            },
            None,
        ),
        // A meta key that must be present for the residual to hold.
        (
            "Meta.team matches \"^c\"",
            Query {
                meta: vec![("team".into(), MetaCriterion::Present)],
                ..Query::default()
            },
            Some("Meta.team matches \"^c\""),
        ),
        // A disjunction is not pushed down.
        (
            "Environment == prod or Region == x",
            Query::default(),
            Some("Environment == \"prod\" or Region == \"x\""),
        ),
        // Two different environments: the second stays in the residual.
        (
            "Environment == prod and Environment == dev",
            Query {
                environment: Some("prod".into()),
                ..Query::default()
            },
            Some("Environment == \"dev\""),
        ),
        // A health word that is not one never reaches the index.
        (
            "Health == Passing",
            Query::default(),
            Some("Health == \"Passing\""),
        ),
        (
            "Port == 80 and Tags is empty",
            Query::default(),
            Some("Port == 80 and Tags is empty"),
        ),
    ];
    for (text, expected, residual) in cases {
        let (query, rest) = plan_filter(parse(text));
        assert_eq!(query, expected, "{text}");
        assert_eq!(rest.map(|r| r.to_string()).as_deref(), residual, "{text}");
    }
}

#[test]
fn query_with_filter_merges_with_the_base() {
    let registry = catalog();
    let limits = FilterLimits::standard();
    let check = |base: Query, text: &str, expected: &[&str]| {
        let query = query_with_filter(base.clone(), text, &limits).expect("parses");
        let expected = sorted(expected);
        assert_eq!(planned(&registry, &query, 2), expected, "{text}");
        assert_eq!(reference(&registry, &query), expected, "{text}");
        // Same as the base and the filter evaluated separately.
        let filter = parse(text);
        let mut naive_ids: Vec<String> = registry
            .instances()
            .filter(|i| base.matches(i) && filter.matches(i, NodeInfo::standalone_ref()))
            .map(|i| i.id().to_string())
            .collect();
        naive_ids.sort();
        assert_eq!(naive_ids, expected, "{text}");
        query
    };
    let staging = Query {
        environment: Some("staging".into()),
        ..Query::default()
    };
    // A contradiction matches nothing.
    let query = check(staging.clone(), "Environment == prod", &[]);
    assert_eq!(query.environment.as_deref(), Some("staging"));
    assert_eq!(
        query.filter.as_ref().map(|f| f.to_string()).as_deref(),
        Some("Environment == \"prod\"")
    );
    // Agreement is merged away.
    let query = check(
        staging.clone(),
        "Environment == staging and Port == 80",
        &["web-3"],
    );
    assert_eq!(
        query.filter.as_ref().map(|f| f.to_string()).as_deref(),
        Some("Port == 80")
    );
    // The service criterion folds case; the filter does not.
    let any_web = Query {
        service: Some("WEB".into()),
        ..Query::default()
    };
    check(any_web.clone(), "Service == Web", &["web-2"]);
    check(any_web.clone(), "Service == api", &[]);
    check(any_web, "Port == 8080", &["web-1", "web-2"]);
    let v2 = Query {
        version: version("^2"),
        ..Query::default()
    };
    check(v2.clone(), "Version == V2.0", &["web-4"]);
    check(v2, "Version == alpine", &[]);
    let passing = Query {
        health: Some(Health::Passing),
        tags_any: vec!["sql".into(), "grpc".into()],
        ..Query::default()
    };
    check(passing.clone(), "Health == critical", &[]);
    check(
        passing,
        "\"sql\" in Tags or Service == api",
        &["api-1", "api-2"],
    );
    // A second filter is a conjunction with the first.
    let first = query_with_filter(Query::default(), "Port != 80", &limits).expect("parses");
    let both = check(
        first,
        "Service contains e and Port == 1 or Port == 8080",
        &["web-1", "web-2"],
    );
    assert!(both.filter.is_some());
    let first =
        query_with_filter(Query::default(), "Port != 80 or ID == x", &limits).expect("parses");
    let both = check(first, "Service contains e", &["cache-1", "web-1", "web-2"]);
    assert_eq!(
        both.filter.as_ref().map(|f| f.to_string()).as_deref(),
        Some("(Port != 80 or ID == \"x\") and Service contains \"e\"")
    );
    // Errors come back unchanged.
    let error = query_with_filter(Query::default(), "Port == x", &limits).expect_err("bad");
    assert_eq!(error.kind, FilterErrorKind::InvalidValue);
}

#[test]
fn cache_keys_distinguish_filters() {
    let limits = FilterLimits::standard();
    let key = |text: &str| {
        query_with_filter(Query::default(), text, &limits)
            .expect("parses")
            .cache_key()
    };
    // The same filter however written; different filters differ.
    assert_eq!(key("Port==80"), key("( ServicePort == \"80\" )"));
    assert_eq!(key("Meta.a.b == c"), key("ServiceMeta[\"a.b\"] == `c`"));
    assert_ne!(key("Port == 80"), key("Port == 81"));
    assert_ne!(
        key("ID == \"a\" and ID == \"b\""),
        key("ID == \"a and ID == b\"")
    );
    assert_ne!(key("Service == web"), key("Service == Web"));
    assert_ne!(key("Service == web"), Query::default().cache_key());
    // A fully pushed-down filter has the key of the equivalent criteria.
    let criteria = Query {
        environment: Some("prod".into()),
        ..Query::default()
    };
    assert_eq!(key("Environment == prod"), criteria.cache_key());
    // A query holding only a filter is not empty.
    let only_filter = query_with_filter(Query::default(), "Port == 80", &limits).expect("parses");
    assert!(!only_filter.is_empty());
    assert!(only_filter.filter.is_some());
    let filter: Option<Arc<Filter>> = only_filter.filter.clone();
    assert_eq!(filter.map(|f| f.to_string()).as_deref(), Some("Port == 80"));
}

/// `Registry::candidates` applies the residual filter per candidate.
#[test]
fn registry_applies_the_residual_filter() {
    let registry = catalog();
    for text in [
        "Port == 80",
        "Service == Web",
        "Meta.team matches \"^c\"",
        "Tags is empty",
    ] {
        let query =
            query_with_filter(Query::default(), text, &FilterLimits::standard()).expect("parses");
        let mut ids: Vec<String> = registry
            .query(&query, &Page::default())
            .instances
            .iter()
            .map(|i| i.id().to_string())
            .collect();
        ids.sort();
        assert_eq!(ids, reference(&registry, &query), "{text}");
        assert_eq!(registry.count(&query), ids.len() as u64, "{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

/// Renders a string value in one of the three spellings.
fn spell(value: &str, style: u8) -> String {
    let bare_ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !matches!(
            value,
            "and" | "or" | "not" | "in" | "contains" | "matches" | "is" | "empty"
        );
    match style % 3 {
        0 if bare_ok => value.to_string(),
        1 if !value.contains('`') => format!("`{value}`"),
        _ => format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")),
    }
}

/// String selectors with values that hit the catalog (and a few near misses).
const STRING_SELECTORS: [(&str, &[&str]); 17] = [
    ("ID", &["web-1", "api-2", "db", "x"]),
    ("Service", &["web", "Web", "WEB", "api", "db", "123", "e"]),
    ("ServiceName", &["web", "db", "cache"]),
    ("Address", &["10.0.0.1", "", "api.internal", "10.0."]),
    (
        "Version",
        &["v2", "2.0.0", "V2.0", "alpine", "14", "1.4.2", ">=1", "2"],
    ),
    ("Environment", &["prod", "staging", "dev", ""]),
    ("Region", &["eu-west", "us-east", "west"]),
    ("Health", &["passing", "critical", "warning", "Passing"]),
    ("Meta.team", &["core", "Core", "data", "ore", "^c.*e$"]),
    ("ServiceMeta.team", &["core", "platform"]),
    ("Meta.user.name", &["alice", "bob", ""]),
    ("Meta[\"empty\"]", &["", "x"]),
    ("Meta.missing", &["", "x"]),
    ("Meta.desc", &["naïve café ☕", "é", "^na.ve"]),
    ("Node", &["svcmeta", "x"]),
    ("Datacenter", &["dc1", "dc2"]),
    ("NodeMeta.rack", &["r1", ""]),
];

const TAGS: [&str; 9] = [
    "http",
    "primary",
    "Primary",
    "sql",
    "canary",
    "grpc",
    "x",
    "v2",
    "with space",
];

const META_KEYS: [&str; 5] = ["team", "empty", "user.name", "tier", "missing"];

const PORTS: [&str; 6] = ["8080", "\"80\"", "9000", "0", "5432", "0x1F90"];

fn atom() -> impl Strategy<Value = String> {
    let string_match = (
        0..STRING_SELECTORS.len(),
        0..10usize,
        any::<usize>(),
        any::<u8>(),
    )
        .prop_map(|(s, op, v, style)| {
            let (selector, values) = STRING_SELECTORS[s];
            let value = spell(values[v % values.len()], style);
            match op {
                0 | 8 | 9 => format!("{selector} == {value}"),
                1 => format!("{selector} != {value}"),
                2 => format!("{selector} contains {value}"),
                3 => format!("{value} not in {selector}"),
                4 => format!("{selector} matches {value}"),
                5 => format!("{selector} not matches {value}"),
                6 => format!("{selector} is empty"),
                _ => format!("{selector} is not empty"),
            }
        });
    let tag_match = (0..TAGS.len(), 0..6usize, any::<u8>()).prop_map(|(t, op, style)| {
        let tag = spell(TAGS[t], style);
        let tags = if style % 2 == 0 {
            "Tags"
        } else {
            "ServiceTags"
        };
        match op {
            0 => format!("{tag} in {tags}"),
            1 => format!("{tag} not in {tags}"),
            2 => format!("{tags} contains {tag}"),
            3 => format!("{tags} not contains {tag}"),
            4 => format!("{tags} is empty"),
            _ => format!("{tags} is not empty"),
        }
    });
    let meta_match = (0..META_KEYS.len(), 0..4usize, any::<u8>()).prop_map(|(k, op, style)| {
        let key = spell(META_KEYS[k], style);
        match op {
            0 => format!("{key} in Meta"),
            1 => format!("{key} not in ServiceMeta"),
            2 => "Meta is empty".to_string(),
            _ => "Meta is not empty".to_string(),
        }
    });
    let port_match = (0..PORTS.len(), any::<bool>()).prop_map(|(p, equal)| {
        let op = if equal { "==" } else { "!=" };
        format!("Port {op} {}", PORTS[p])
    });
    // Equalities on the indexed fields, where pushdown and its supersets matter most.
    let indexed_match = (0..8usize, any::<usize>(), any::<u8>()).prop_map(|(s, v, style)| {
        let (selector, values) = STRING_SELECTORS[[1, 1, 4, 4, 5, 6, 7, 8][s]];
        format!("{selector} == {}", spell(values[v % values.len()], style))
    });
    prop_oneof![
        4 => string_match,
        3 => indexed_match,
        2 => tag_match,
        1 => meta_match,
        1 => port_match,
    ]
}

/// A top-level conjunction of 1 to 4 random expressions, so that pushdown has work to do.
fn expression() -> impl Strategy<Value = String> {
    prop::collection::vec(nested(), 1..5).prop_map(|parts| parts.join(" and "))
}

fn nested() -> impl Strategy<Value = String> {
    atom().prop_recursive(4, 16, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} and {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} or {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) and ({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} or {b})")),
            inner.clone().prop_map(|a| format!("not ({a})")),
            inner.clone().prop_map(|a| format!("not {a}")),
        ]
    })
}

fn base_query() -> impl Strategy<Value = Query> {
    (0..11usize).prop_map(|n| match n {
        1 => Query {
            environment: Some("prod".into()),
            ..Query::default()
        },
        2 => Query {
            service: Some("WEB".into()),
            ..Query::default()
        },
        3 => Query {
            tags_all: vec!["http".into()],
            ..Query::default()
        },
        4 => Query {
            health: Some(Health::Passing),
            ..Query::default()
        },
        5 => Query {
            version: version("v2"),
            ..Query::default()
        },
        6 => Query {
            meta: vec![("team".into(), MetaCriterion::Equals("core".into()))],
            tags_none: vec!["sql".into()],
            ..Query::default()
        },
        7 => Query {
            environment: Some("staging".into()),
            service: Some("web".into()),
            ..Query::default()
        },
        8 => Query {
            version: version("2.0.0"),
            health: Some(Health::Warning),
            ..Query::default()
        },
        9 => Query {
            region: Some("us-east".into()),
            tags_any: vec!["sql".into(), "canary".into()],
            ..Query::default()
        },
        _ => Query::default(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// The pushed-down plan (index, then residual per candidate) and naive evaluation agree.
    #[test]
    fn plan_agrees_with_naive_evaluation(
        text in expression(),
        base in base_query(),
        page_size in 1..12usize,
    ) {
        let registry = catalog();
        let limits = generous();
        let filter = parse_filter(&text, &limits)
            .map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        assert_round_trip(&filter, &limits);

        // The filter alone: naive vs plan_filter + registry + residual.
        let expected = naive(&registry, &filter, NodeInfo::standalone_ref());
        let (mut pushed, residual) = plan_filter(filter.clone());
        pushed.filter = residual.map(Arc::new);
        prop_assert_eq!(&planned(&registry, &pushed, page_size), &expected, "plan_filter: {}", text);
        prop_assert_eq!(&reference(&registry, &pushed), &expected, "Query::matches: {}", text);

        // With a base query: the conjunction of both.
        let mut expected: Vec<String> = registry
            .instances()
            .filter(|i| base.matches(i) && filter.matches(i, NodeInfo::standalone_ref()))
            .map(|i| i.id().to_string())
            .collect();
        expected.sort();
        let query = query_with_filter(base.clone(), &text, &limits)
            .map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        prop_assert_eq!(&planned(&registry, &query, page_size), &expected, "query_with_filter: {}", text);
        prop_assert_eq!(&reference(&registry, &query), &expected, "Query::matches: {}", text);
        if let Some(residual) = &query.filter {
            assert_round_trip(residual, &limits);
        }
    }

    /// No text makes the parser panic; errors point inside the text at a character boundary;
    /// whatever parses prints back to itself.
    #[test]
    fn parser_never_panics_on_arbitrary_text(text in any::<String>()) {
        check_total(&text);
    }

    #[test]
    fn parser_never_panics_on_token_soup(
        parts in prop::collection::vec(
            prop_oneof![
                Just("("), Just(")"), Just("not "), Just(" and "), Just(" or "), Just("Service"),
                Just("Meta."), Just("Meta[\""), Just("\"]"), Just("=="), Just("!="), Just("\""),
                Just("`"), Just("\\"), Just("\\u"), Just("["), Just("]"), Just(" in "),
                Just(" is "), Just("empty"), Just(" matches "), Just(" contains "), Just("x"),
                Just("é"), Just(" "), Just("Port"), Just("8080"), Just("Tags"), Just("\n"),
                Just("=") , Just("!"), Just("."), Just("-1"), Just("((((((((((((((((((((")
            ],
            0..80,
        )
    ) {
        check_total(&parts.concat());
    }
}

fn check_total(text: &str) {
    for limits in [FilterLimits::standard(), generous()] {
        match parse_filter(text, &limits) {
            Ok(filter) => assert_round_trip(&filter, &generous()),
            Err(error) => {
                assert!(error.offset <= text.len(), "{text:?}: {error}");
                assert!(text.is_char_boundary(error.offset), "{text:?}: {error}");
                assert!(error.line >= 1 && error.column >= 1);
                assert!(error.to_string().starts_with("filter: "));
                assert_eq!(error.is_blank(), is_blank(text), "{text:?}: {error}");
            }
        }
    }
}

#[test]
fn long_runs_of_open_parentheses_and_nots_are_refused() {
    let unbounded = FilterLimits {
        max_len: usize::MAX,
        max_depth: 1_000_000,
        max_regex_bytes: 1 << 20,
    };
    for text in [
        "(".repeat(100_000),
        "not ".repeat(100_000),
        "not(".repeat(50_000),
        format!("{}ID == x", "(not ".repeat(30_000)),
        "((((((((((".repeat(1000) + "é",
    ] {
        for limits in [FilterLimits::standard(), unbounded] {
            let error = parse_filter(&text, &limits).expect_err("refused");
            assert!(
                matches!(
                    error.kind,
                    FilterErrorKind::TooDeep | FilterErrorKind::TooLong
                ),
                "{error}"
            );
        }
    }
}
