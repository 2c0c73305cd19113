//! Filter expressions through the crate's public surface, as the server and CLI use them:
//! parse, plan onto a base query, answer from the registry plus the residual, explain.

use svcmeta_core::{
    is_blank_filter, parse_filter, plan_filter, query_with_filter, resolve, validate, Filter,
    FilterErrorKind, FilterLimits, FilterOp, FilterSelector, FilterValue, Health, InstanceDraft,
    Limits, Mutation, NodeInfo, Page, Query, Registry,
};

fn registry() -> Registry {
    let mut registry = Registry::new();
    let drafts = [
        (
            "web-1",
            "web",
            8080,
            vec!["http"],
            Some("prod"),
            vec![("team", "core")],
        ),
        (
            "web-2",
            "Web",
            8080,
            vec!["http", "canary"],
            Some("prod"),
            vec![],
        ),
        (
            "db-1",
            "db",
            5432,
            vec!["sql"],
            Some("staging"),
            vec![("team", "data")],
        ),
    ];
    for (revision, (id, service, port, tags, env, meta)) in drafts.into_iter().enumerate() {
        let draft = InstanceDraft {
            id: id.into(),
            service: service.into(),
            port,
            tags: tags.into_iter().map(String::from).collect(),
            environment: env.map(String::from),
            meta: meta
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..InstanceDraft::default()
        };
        let registration = validate(draft, &Limits::standard())
            .unwrap_or_else(|errors| panic!("invalid draft: {errors}"));
        let change = resolve(
            None,
            Mutation::Register(registration),
            revision as u64 + 1,
            0,
        );
        let Ok(Some(change)) = change else {
            panic!("registration gives no change: {change:?}");
        };
        registry.apply(change);
    }
    registry
}

/// Answers a query the way the registry will once it applies `Query::filter` itself.
fn answer(registry: &Registry, query: &Query) -> Vec<String> {
    let mut indexed = query.clone();
    let residual = indexed.filter.take();
    registry
        .query(&indexed, &Page::default())
        .instances
        .iter()
        .filter(|i| {
            residual
                .as_ref()
                .is_none_or(|f| f.matches(i, NodeInfo::standalone_ref()))
        })
        .map(|i| i.id().to_string())
        .collect()
}

#[test]
fn a_filter_narrows_a_query_and_its_indexable_part_is_pushed_down() {
    let registry = registry();
    let limits = FilterLimits::standard();
    let base = Query {
        health: Some(Health::Passing),
        ..Query::default()
    };
    let query = query_with_filter(
        base,
        "Service == web and \"http\" in Tags and Meta.team == core",
        &limits,
    )
    .expect("parses");
    assert_eq!(query.service.as_deref(), Some("web"));
    assert_eq!(query.tags_all, vec!["http".to_string()]);
    assert_eq!(query.meta.len(), 1);
    assert_eq!(
        query.filter.as_ref().map(|f| f.to_string()).as_deref(),
        Some("Service == \"web\"")
    );
    assert_eq!(answer(&registry, &query), vec!["web-1"]);

    let query = query_with_filter(
        Query::default(),
        "Port == 8080 and not \"canary\" in Tags",
        &limits,
    )
    .expect("parses");
    assert_eq!(query.tags_none, vec!["canary".to_string()]);
    assert_eq!(answer(&registry, &query), vec!["web-1"]);
}

#[test]
fn the_syntax_tree_is_inspectable() {
    let filter = parse_filter(
        "ServiceMeta[\"a.b\"] matches `^x`",
        &FilterLimits::standard(),
    )
    .expect("parses");
    let Filter::Match(m) = &filter else {
        panic!("a single match: {filter:?}");
    };
    assert_eq!(m.selector(), &FilterSelector::MetaKey("a.b".into()));
    assert_eq!(m.op(), FilterOp::Matches);
    assert!(matches!(m.value(), FilterValue::Regex(p) if p.as_str() == "^x" && p.is_match("xy")));
    assert_eq!(filter.to_string(), "Meta.a.b matches \"^x\"");
    let (query, residual) = plan_filter(filter.clone());
    assert_eq!(query.meta.len(), 1);
    assert_eq!(residual, Some(filter));
}

#[test]
fn errors_are_positioned_and_blank_is_no_filter() {
    let error = parse_filter("Service == web and Port = 80", &FilterLimits::standard())
        .expect_err("syntax error");
    assert_eq!(error.kind, FilterErrorKind::Syntax);
    assert_eq!(
        error.to_string(),
        "filter: 1:25 (24): expected \"==\" or \"!=\", found '='"
    );
    assert!(is_blank_filter("  "));
    let error = parse_filter("  ", &FilterLimits::standard()).expect_err("blank");
    assert!(error.is_blank());
}
