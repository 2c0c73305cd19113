//! The query mix of `svcmeta bench`: six query classes, each instantiated many times with
//! parameters drawn from random instances of the catalog, as a svcmeta [`Query`], as SQL for
//! SQLite, and as a per-instance check for the linear scan. All three give an [`Answer`]
//! (total and the first page of ids in (service, id) order) that must be equal.

use std::cmp::Ordering;
use std::sync::Arc;

use anyhow::Context;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rusqlite::types::Value;
use svcmeta_core::{query_with_filter, FilterLimits, Instance, Page, Query, VersionCriterion};

/// The page size of every paged class.
pub(crate) const PAGE: usize = 100;

/// A query class of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// service.
    One,
    /// service + environment + tag.
    Three,
    /// service + environment + tag + region + version range.
    Five,
    /// environment + tag none-of.
    Negation,
    /// environment + a filter expression with a non-indexed remainder.
    Filter,
    /// environment + region + tag, counted only.
    Count,
}

impl Class {
    /// Every class, in report order.
    pub(crate) const ALL: [Class; 6] = [
        Class::One,
        Class::Three,
        Class::Five,
        Class::Negation,
        Class::Filter,
        Class::Count,
    ];

    /// The key in the JSON report.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Class::One => "one_criterion",
            Class::Three => "three_criteria",
            Class::Five => "five_criteria",
            Class::Negation => "negation",
            Class::Filter => "filter",
            Class::Count => "count",
        }
    }

    /// What the class asks, for the report.
    pub(crate) fn description(self) -> &'static str {
        match self {
            Class::One => "service=S, first page of 100",
            Class::Three => "service=S env=E tag=T, first page of 100",
            Class::Five => "service=S env=E tag=T region=R version>=M.m, first page of 100",
            Class::Negation => "env=E tag_not=T, first page of 100",
            Class::Filter => {
                "env=E filter='Service == \"S\" and \"T\" in Tags and Address matches \"^10\\\\.O\\\\.\"', first page of 100"
            }
            Class::Count => "env=E region=R tag=T, count only",
        }
    }

    /// The SQL condition over `instances i`, numbered parameters as in [`Case::params`].
    fn sql_where(self) -> &'static str {
        match self {
            Class::One => "i.service_key = ?1",
            Class::Three => concat!(
                "i.service_key = ?1 AND i.environment = ?2 AND ",
                "EXISTS (SELECT 1 FROM tags t WHERE t.instance = i.slot AND t.tag = ?3)"
            ),
            Class::Five => concat!(
                "i.service_key = ?1 AND i.environment = ?2 AND ",
                "EXISTS (SELECT 1 FROM tags t WHERE t.instance = i.slot AND t.tag = ?3) AND ",
                "i.region = ?4 AND (i.v_major > ?5 OR (i.v_major = ?5 AND i.v_minor >= ?6)) ",
                "AND i.v_pre = 0"
            ),
            Class::Negation => concat!(
                "i.environment = ?1 AND ",
                "NOT EXISTS (SELECT 1 FROM tags t WHERE t.instance = i.slot AND t.tag = ?2)"
            ),
            Class::Filter => concat!(
                "i.service_key = ?1 AND i.service = ?2 AND i.environment = ?3 AND ",
                "EXISTS (SELECT 1 FROM tags t WHERE t.instance = i.slot AND t.tag = ?4) AND ",
                "i.address GLOB ?5"
            ),
            Class::Count => concat!(
                "i.environment = ?1 AND i.region = ?2 AND ",
                "EXISTS (SELECT 1 FROM tags t WHERE t.instance = i.slot AND t.tag = ?3)"
            ),
        }
    }

    /// The SQL counting the matches.
    pub(crate) fn sql_count(self) -> String {
        format!(
            "SELECT COUNT(*) FROM instances i WHERE {}",
            self.sql_where()
        )
    }

    /// The SQL of the first page, in (service, id) order.
    pub(crate) fn sql_page(self) -> String {
        format!(
            "SELECT i.id FROM instances i WHERE {} ORDER BY i.service_key, i.id LIMIT {PAGE}",
            self.sql_where()
        )
    }

    /// Whether the class only counts.
    pub(crate) fn count_only(self) -> bool {
        self == Class::Count
    }
}

/// One instantiated query.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    /// The svcmeta query.
    pub(crate) query: Query,
    /// The SQL parameters of the class's statements.
    pub(crate) params: Vec<Value>,
    /// The query string of the native HTTP API (three-criteria class only; empty otherwise).
    pub(crate) http_query: String,
    /// The service and tag, for the Consul health endpoint.
    pub(crate) service_tag: (String, String),
}

/// The answer every engine must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// Number of matches.
    pub(crate) total: u64,
    /// Ids of the first page (empty for count-only queries).
    pub(crate) ids: Vec<String>,
}

/// The page every paged query asks for.
pub(crate) fn page() -> Page {
    Page {
        limit: Some(PAGE),
        cursor: None,
    }
}

fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `count` cases of `class`, with parameters from instances picked by `rng`.
pub(crate) fn build(
    class: Class,
    instances: &[Arc<Instance>],
    count: usize,
    rng: &mut ChaCha8Rng,
) -> anyhow::Result<Vec<Case>> {
    anyhow::ensure!(!instances.is_empty(), "the catalog is empty");
    let mut cases = Vec::with_capacity(count);
    let mut attempts = 0usize;
    while cases.len() < count {
        attempts += 1;
        anyhow::ensure!(
            attempts <= count * 20 + 100,
            "cannot draw {count} {} queries from the catalog",
            class.key()
        );
        let instance = &instances[rng.random_range(0..instances.len())];
        let fields = &instance.fields;
        let (Some(env), Some(region), Some(version)) =
            (fields.environment(), fields.region(), fields.version())
        else {
            continue;
        };
        let tags: Vec<&str> = fields.tags().collect();
        if tags.is_empty() {
            continue;
        }
        let tag = tags[rng.random_range(0..tags.len())].to_string();
        let service = fields.service().to_string();
        let service_key = service.to_ascii_lowercase();
        let text = |s: &str| Value::Text(s.to_string());
        let mut query = Query::default();
        let mut http_query = String::new();
        let params = match class {
            Class::One => {
                query.service = Some(service.clone());
                vec![text(&service_key)]
            }
            Class::Three => {
                query.service = Some(service.clone());
                query.environment = Some(env.to_string());
                query.tags_all = vec![tag.clone()];
                http_query = form_urlencoded::Serializer::new(String::new())
                    .append_pair("service", &service)
                    .append_pair("env", env)
                    .append_pair("tag", &tag)
                    .append_pair("limit", &PAGE.to_string())
                    .finish();
                vec![text(&service_key), text(env), text(&tag)]
            }
            Class::Five => {
                let Some(parsed) = svcmeta_core::parse_version(version) else {
                    continue;
                };
                let range = format!(">={}.{}", parsed.major, parsed.minor);
                query.service = Some(service.clone());
                query.environment = Some(env.to_string());
                query.tags_all = vec![tag.clone()];
                query.region = Some(region.to_string());
                query.version = Some(
                    VersionCriterion::parse(&range)
                        .with_context(|| format!("version range {range}"))?,
                );
                vec![
                    text(&service_key),
                    text(env),
                    text(&tag),
                    text(region),
                    Value::Integer(i64::try_from(parsed.major).unwrap_or(i64::MAX)),
                    Value::Integer(i64::try_from(parsed.minor).unwrap_or(i64::MAX)),
                ]
            }
            Class::Negation => {
                query.environment = Some(env.to_string());
                query.tags_none = vec![tag.clone()];
                vec![text(env), text(&tag)]
            }
            Class::Filter => {
                let Some(octet) = fields.address.split('.').nth(1) else {
                    continue;
                };
                if octet.is_empty() || !octet.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let base = Query {
                    environment: Some(env.to_string()),
                    ..Query::default()
                };
                let filter = format!(
                    "Service == {} and {} in Tags and Address matches {}",
                    quoted(&service),
                    quoted(&tag),
                    quoted(&format!("^10\\.{octet}\\."))
                );
                query = query_with_filter(base, &filter, &FilterLimits::standard())
                    .with_context(|| format!("filter {filter}"))?;
                vec![
                    text(&service_key),
                    text(&service),
                    text(env),
                    text(&tag),
                    Value::Text(format!("10.{octet}.*")),
                ]
            }
            Class::Count => {
                query.environment = Some(env.to_string());
                query.region = Some(region.to_string());
                query.tags_all = vec![tag.clone()];
                vec![text(env), text(region), text(&tag)]
            }
        };
        cases.push(Case {
            query,
            params,
            http_query,
            service_tag: (service, tag),
        });
    }
    Ok(cases)
}

/// The result order: service case-insensitively, then id (as the registry orders).
pub(crate) fn order(a: &Instance, b: &Instance) -> Ordering {
    let service_a = a.fields.service.bytes().map(|c| c.to_ascii_lowercase());
    let service_b = b.fields.service.bytes().map(|c| c.to_ascii_lowercase());
    service_a
        .cmp(service_b)
        .then_with(|| a.fields.id.cmp(&b.fields.id))
}

/// The linear scan: [`Query::matches`] on every instance, then the first page by sorting.
pub(crate) fn scan(instances: &[Arc<Instance>], query: &Query, count_only: bool) -> Answer {
    if count_only {
        let total = instances.iter().filter(|i| query.matches(i)).count() as u64;
        return Answer {
            total,
            ids: Vec::new(),
        };
    }
    let mut matches: Vec<&Arc<Instance>> = instances.iter().filter(|i| query.matches(i)).collect();
    let total = matches.len() as u64;
    if matches.len() > PAGE {
        matches.select_nth_unstable_by(PAGE, |a, b| order(a, b));
        matches.truncate(PAGE);
    }
    matches.sort_unstable_by(|a, b| order(a, b));
    Answer {
        total,
        ids: matches.iter().map(|i| i.fields.id.clone()).collect(),
    }
}
