//! Filter expressions: the syntax tree, its canonical text, per-instance evaluation, and the
//! planner that pushes the indexable parts of a filter down to a [`Query`].
//!
//! Semantics (DESIGN §8): every comparison is case-sensitive and exact, bytes for bytes — the
//! service name too, unlike the `service=` criterion. Tags match whole elements; `in` /
//! `contains` on a string is a substring test, on `Meta` / `NodeMeta` a key test. An absent
//! value (a missing meta key, no version) makes `==`, `in`, `matches` false and `!=`,
//! `not in`, `not matches`, `is empty` true; an empty value is a value. Every negated operator
//! is exactly the complement of its positive form (go-bexpr v0.1.2 instead answers `matches`
//! with true on a missing key; svcmeta does not).
//!
//! The [`Display`](fmt::Display) form is canonical — values always double-quoted, selectors
//! under their svcmeta names, parentheses only where needed — and parses back to the same
//! tree, so it serves as the cache key and for `--explain`.
//!
//! [`plan_filter`] splits the top-level conjunction: the conjuncts an index answers exactly
//! become criteria of a [`Query`]; the others stay in the residual filter, evaluated per
//! candidate. A conjunct the index answers only as a superset (service names are
//! case-insensitive there, `Version == "v2"` also matches `2.0.0` there, `Meta.k matches r`
//! needs at least the key) is pushed down *and* kept in the residual.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use regex::Regex;

use super::parse::{parse_filter, FilterError, FilterLimits};
use super::{MetaCriterion, Query};
use crate::model::{Health, Instance};
use crate::version::VersionCriterion;

/// The node a filter is evaluated on, for the `Node`, `Datacenter` and `NodeMeta` selectors
/// that Consul clients use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name (`Node`).
    pub name: String,
    /// Datacenter (`Datacenter`).
    pub datacenter: String,
    /// Node metadata (`NodeMeta`).
    pub meta: BTreeMap<String, String>,
}

static STANDALONE: LazyLock<NodeInfo> = LazyLock::new(NodeInfo::standalone);

impl NodeInfo {
    /// A single svcmeta node: name `svcmeta`, datacenter `dc1`, no metadata.
    pub fn standalone() -> NodeInfo {
        NodeInfo {
            name: "svcmeta".to_string(),
            datacenter: "dc1".to_string(),
            meta: BTreeMap::new(),
        }
    }

    /// A shared [`NodeInfo::standalone`], without allocating.
    pub fn standalone_ref() -> &'static NodeInfo {
        &STANDALONE
    }
}

impl Default for NodeInfo {
    fn default() -> NodeInfo {
        NodeInfo::standalone()
    }
}

/// A parsed filter expression.
///
/// Built by [`parse_filter`](super::parse::parse_filter) (and by [`plan_filter`] for
/// residuals), which only make `And` / `Or` of two or more items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// One match.
    Match(Match),
    /// Negation.
    Not(Box<Filter>),
    /// All of these.
    And(Vec<Filter>),
    /// Any of these.
    Or(Vec<Filter>),
}

/// What a selector names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// `ID` (`ServiceID`): string.
    Id,
    /// `Service` (`ServiceName`): string, compared case-sensitively.
    Service,
    /// `Address` (`ServiceAddress`): string.
    Address,
    /// `Port` (`ServicePort`): integer.
    Port,
    /// `Tags` (`ServiceTags`): list of strings.
    Tags,
    /// `Version`: optional string.
    Version,
    /// `Environment`: optional string.
    Environment,
    /// `Region`: optional string.
    Region,
    /// `Health`: `passing`, `warning` or `critical`.
    Health,
    /// `Meta` (`ServiceMeta`): map of strings.
    Meta,
    /// `Meta.KEY` / `Meta["KEY"]`: optional string.
    MetaKey(String),
    /// `Node`: string, from [`NodeInfo`].
    Node,
    /// `Datacenter`: string, from [`NodeInfo`].
    Datacenter,
    /// `NodeMeta`: map of strings, from [`NodeInfo`].
    NodeMeta,
    /// `NodeMeta.KEY`: optional string, from [`NodeInfo`].
    NodeMetaKey(String),
}

/// The type of a selector, which decides the operators it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Str,
    Int,
    List,
    Map,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Int => "an integer",
            Kind::List => "a list of strings",
            Kind::Map => "a map of strings",
        }
    }

    pub(crate) fn allows(self, op: Op) -> bool {
        match self {
            Kind::Str => true,
            Kind::Int => matches!(op, Op::Equal | Op::NotEqual),
            Kind::List | Kind::Map => {
                matches!(op, Op::In | Op::NotIn | Op::IsEmpty | Op::IsNotEmpty)
            }
        }
    }

    pub(crate) fn allowed_words(self) -> &'static str {
        match self {
            Kind::Str => "any operator",
            Kind::Int => "\"==\" or \"!=\"",
            Kind::List | Kind::Map => {
                "\"in\", \"not in\", \"contains\", \"not contains\", \"is empty\" or \"is not empty\""
            }
        }
    }
}

impl Selector {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Selector::Port => Kind::Int,
            Selector::Tags => Kind::List,
            Selector::Meta | Selector::NodeMeta => Kind::Map,
            _ => Kind::Str,
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keyed = |f: &mut fmt::Formatter<'_>, map: &str, key: &str| {
            let dotted = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if dotted {
                write!(f, "{map}.{key}")
            } else {
                write!(f, "{map}[")?;
                write_quoted(f, key)?;
                f.write_str("]")
            }
        };
        match self {
            Selector::Id => f.write_str("ID"),
            Selector::Service => f.write_str("Service"),
            Selector::Address => f.write_str("Address"),
            Selector::Port => f.write_str("Port"),
            Selector::Tags => f.write_str("Tags"),
            Selector::Version => f.write_str("Version"),
            Selector::Environment => f.write_str("Environment"),
            Selector::Region => f.write_str("Region"),
            Selector::Health => f.write_str("Health"),
            Selector::Meta => f.write_str("Meta"),
            Selector::MetaKey(key) => keyed(f, "Meta", key),
            Selector::Node => f.write_str("Node"),
            Selector::Datacenter => f.write_str("Datacenter"),
            Selector::NodeMeta => f.write_str("NodeMeta"),
            Selector::NodeMetaKey(key) => keyed(f, "NodeMeta", key),
        }
    }
}

/// A match operator. `contains` is `in` with its operands swapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `==`.
    Equal,
    /// `!=`.
    NotEqual,
    /// `value in selector` / `selector contains value`.
    In,
    /// `value not in selector` / `selector not contains value`.
    NotIn,
    /// `selector is empty`.
    IsEmpty,
    /// `selector is not empty`.
    IsNotEmpty,
    /// `selector matches regex` (unanchored search).
    Matches,
    /// `selector not matches regex`.
    NotMatches,
}

impl Op {
    /// The operator with the opposite answer on every instance.
    pub fn negated(self) -> Op {
        match self {
            Op::Equal => Op::NotEqual,
            Op::NotEqual => Op::Equal,
            Op::In => Op::NotIn,
            Op::NotIn => Op::In,
            Op::IsEmpty => Op::IsNotEmpty,
            Op::IsNotEmpty => Op::IsEmpty,
            Op::Matches => Op::NotMatches,
            Op::NotMatches => Op::Matches,
        }
    }

    fn is_negative(self) -> bool {
        matches!(
            self,
            Op::NotEqual | Op::NotIn | Op::IsNotEmpty | Op::NotMatches
        )
    }
}

/// A compiled regular expression with its source text (equality compares the source).
#[derive(Clone)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl Pattern {
    pub(crate) fn new(source: String, regex: Regex) -> Pattern {
        Pattern { source, regex }
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the expression matches anywhere in `text`.
    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

/// The operand of a match, already converted to the selector's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// No operand (`is empty`, `is not empty`).
    None,
    /// A string.
    Str(String),
    /// An integer (for `Port`).
    Int(i64),
    /// A regular expression (for `matches`, `not matches`).
    Regex(Pattern),
}

/// One `selector operator value` test. Only the parser builds one, so the operator always
/// suits the selector and the value its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    selector: Selector,
    op: Op,
    value: Value,
}

impl Match {
    pub(crate) fn new(selector: Selector, op: Op, value: Value) -> Match {
        Match {
            selector,
            op,
            value,
        }
    }

    /// The selector.
    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    /// The operator.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The operand.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The match with the opposite answer on every instance.
    pub fn negated(self) -> Match {
        Match {
            op: self.op.negated(),
            ..self
        }
    }

    /// Evaluates the match on one instance.
    pub fn matches(&self, instance: &Instance, node: &NodeInfo) -> bool {
        // Negative operators are the exact complement of their positive form.
        let negative = self.op.is_negative();
        let op = if negative { self.op.negated() } else { self.op };
        self.positive(op, instance, node) != negative
    }

    /// Evaluates a positive operator (`==`, `in`, `is empty`, `matches`).
    fn positive(&self, op: Op, instance: &Instance, node: &NodeInfo) -> bool {
        let fields = &instance.fields;
        let text = match &self.value {
            Value::Str(text) => text.as_str(),
            _ => "",
        };
        match &self.selector {
            Selector::Port => match (&self.value, op) {
                (Value::Int(port), Op::Equal) => i64::from(fields.port) == *port,
                _ => false,
            },
            Selector::Tags => match op {
                Op::In => fields.has_tag(text),
                Op::IsEmpty => fields.tags().len() == 0,
                _ => false,
            },
            Selector::Meta => match op {
                Op::In => fields.meta_get(text).is_some(),
                Op::IsEmpty => fields.meta_len() == 0,
                _ => false,
            },
            Selector::NodeMeta => match op {
                Op::In => node.meta.contains_key(text),
                Op::IsEmpty => node.meta.is_empty(),
                _ => false,
            },
            selector => {
                let id: &str = &fields.id;
                let address: &str = &fields.address;
                let actual: Option<&str> = match selector {
                    Selector::Id => Some(id),
                    Selector::Service => Some(fields.service()),
                    Selector::Address => Some(address),
                    Selector::Version => fields.version(),
                    Selector::Environment => fields.environment(),
                    Selector::Region => fields.region(),
                    Selector::Health => Some(instance.health.as_str()),
                    Selector::MetaKey(key) => fields.meta_get(key),
                    Selector::Node => Some(node.name.as_str()),
                    Selector::Datacenter => Some(node.datacenter.as_str()),
                    Selector::NodeMetaKey(key) => node.meta.get(key).map(String::as_str),
                    _ => None,
                };
                match op {
                    Op::Equal => actual == Some(text),
                    Op::In => actual.is_some_and(|a| a.contains(text)),
                    Op::IsEmpty => actual.is_none_or(str::is_empty),
                    Op::Matches => match &self.value {
                        Value::Regex(pattern) => actual.is_some_and(|a| pattern.is_match(a)),
                        _ => false,
                    },
                    _ => false,
                }
            }
        }
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let selector = &self.selector;
        let collection = matches!(self.selector.kind(), Kind::List | Kind::Map);
        let value = |f: &mut fmt::Formatter<'_>| match &self.value {
            Value::None => Ok(()),
            Value::Str(text) => write_quoted(f, text),
            Value::Int(n) => write!(f, "{n}"),
            Value::Regex(pattern) => write_quoted(f, pattern.as_str()),
        };
        match self.op {
            Op::Equal => {
                write!(f, "{selector} == ")?;
                value(f)
            }
            Op::NotEqual => {
                write!(f, "{selector} != ")?;
                value(f)
            }
            Op::In | Op::NotIn if collection => {
                value(f)?;
                let not = if self.op == Op::NotIn { "not " } else { "" };
                write!(f, " {not}in {selector}")
            }
            Op::In => {
                write!(f, "{selector} contains ")?;
                value(f)
            }
            Op::NotIn => {
                write!(f, "{selector} not contains ")?;
                value(f)
            }
            Op::IsEmpty => write!(f, "{selector} is empty"),
            Op::IsNotEmpty => write!(f, "{selector} is not empty"),
            Op::Matches => {
                write!(f, "{selector} matches ")?;
                value(f)
            }
            Op::NotMatches => {
                write!(f, "{selector} not matches ")?;
                value(f)
            }
        }
    }
}

/// Writes a double-quoted string that the parser reads back to the same text.
fn write_quoted(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in text.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            c if c.is_control() => write!(f, "\\u{:04x}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

impl Filter {
    /// Evaluates the filter on one instance, on `node` (see [`NodeInfo::standalone_ref`]).
    ///
    /// Recursion is bounded by the parser's depth limit.
    pub fn matches(&self, instance: &Instance, node: &NodeInfo) -> bool {
        match self {
            Filter::Match(m) => m.matches(instance, node),
            Filter::Not(inner) => !inner.matches(instance, node),
            Filter::And(items) => items.iter().all(|item| item.matches(instance, node)),
            Filter::Or(items) => items.iter().any(|item| item.matches(instance, node)),
        }
    }

    /// The conjunction of `items`, flattening nested conjunctions; `None` when empty.
    pub fn all_of(items: Vec<Filter>) -> Option<Filter> {
        let mut flat = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Filter::And(inner) => flat.extend(inner),
                other => flat.push(other),
            }
        }
        match flat.len() {
            0 => None,
            1 => flat.pop(),
            _ => Some(Filter::And(flat)),
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Match(m) => write!(f, "{m}"),
            Filter::Not(inner) => match **inner {
                Filter::Match(_) | Filter::Not(_) => write!(f, "not {inner}"),
                _ => write!(f, "not ({inner})"),
            },
            Filter::And(items) => write_joined(f, items, " and ", |item| {
                matches!(item, Filter::And(_) | Filter::Or(_))
            }),
            Filter::Or(items) => {
                write_joined(f, items, " or ", |item| matches!(item, Filter::Or(_)))
            }
        }
    }
}

fn write_joined(
    f: &mut fmt::Formatter<'_>,
    items: &[Filter],
    separator: &str,
    needs_parentheses: impl Fn(&Filter) -> bool,
) -> fmt::Result {
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            f.write_str(separator)?;
        }
        if needs_parentheses(item) {
            write!(f, "({item})")?;
        } else {
            write!(f, "{item}")?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Planning
// ---------------------------------------------------------------------------------------------

/// An indexed criterion a conjunct implies.
enum Criterion {
    Service(String),
    Environment(String),
    Region(String),
    Version(VersionCriterion),
    Health(Health),
    TagAll(String),
    TagNone(String),
    Meta(String, MetaCriterion),
}

/// Splits a filter into its top-level conjuncts, moving negations inwards where that keeps
/// the meaning exactly (`not not a` = `a`, `not (a or b)` = `not a and not b`,
/// `not X == v` = `X != v`).
fn conjuncts(filter: Filter, out: &mut Vec<Filter>) {
    match filter {
        Filter::And(items) => {
            for item in items {
                conjuncts(item, out);
            }
        }
        Filter::Not(inner) => match *inner {
            Filter::Not(inner) => conjuncts(*inner, out),
            Filter::Or(items) => {
                for item in items {
                    conjuncts(Filter::Not(Box::new(item)), out);
                }
            }
            Filter::Match(m) => out.push(Filter::Match(m.negated())),
            other => out.push(Filter::Not(Box::new(other))),
        },
        other => out.push(other),
    }
}

/// The criterion a match implies, and whether the index answers it exactly.
fn pushable(m: &Match) -> Option<(Criterion, bool)> {
    let text = match &m.value {
        Value::Str(text) => text.clone(),
        Value::Regex(_) | Value::None | Value::Int(_) => String::new(),
    };
    match (&m.selector, m.op) {
        // The service index ignores ASCII case; exact only if there is no letter to fold.
        (Selector::Service, Op::Equal) => {
            let exact = !text.bytes().any(|b| b.is_ascii_alphabetic());
            Some((Criterion::Service(text), exact))
        }
        (Selector::Environment, Op::Equal) => Some((Criterion::Environment(text), true)),
        (Selector::Region, Op::Equal) => Some((Criterion::Region(text), true)),
        (Selector::Version, Op::Equal) => match VersionCriterion::parse(&text) {
            // An exact criterion also matches semver-equal spellings unless it is not semver.
            Ok(criterion @ VersionCriterion::Exact { .. }) if criterion.text() == text => {
                let exact = matches!(&criterion, VersionCriterion::Exact { parsed: None, .. });
                Some((Criterion::Version(criterion), exact))
            }
            _ => None,
        },
        (Selector::Health, Op::Equal) => {
            Health::parse(&text).map(|health| (Criterion::Health(health), true))
        }
        (Selector::Tags, Op::In) => Some((Criterion::TagAll(text), true)),
        (Selector::Tags, Op::NotIn) => Some((Criterion::TagNone(text), true)),
        (Selector::MetaKey(key), Op::Equal) => Some((
            Criterion::Meta(key.clone(), MetaCriterion::Equals(text)),
            true,
        )),
        (Selector::Meta, Op::In) => Some((Criterion::Meta(text, MetaCriterion::Present), true)),
        // These need the key to be present, but say more about its value.
        (Selector::MetaKey(key), Op::IsNotEmpty | Op::In | Op::Matches) => {
            Some((Criterion::Meta(key.clone(), MetaCriterion::Present), false))
        }
        _ => None,
    }
}

/// Adds a criterion to a query's conjunction. Returns false, leaving the query unchanged,
/// when the query already holds a different value for a single-valued criterion; the
/// conjunct must then be checked per candidate.
fn merge(query: &mut Query, criterion: Criterion) -> bool {
    fn single<T: PartialEq>(slot: &mut Option<T>, value: T, same: impl Fn(&T, &T) -> bool) -> bool {
        match slot {
            None => {
                *slot = Some(value);
                true
            }
            Some(current) => same(current, &value),
        }
    }
    fn add<T: PartialEq>(list: &mut Vec<T>, value: T) -> bool {
        if !list.contains(&value) {
            list.push(value);
        }
        true
    }
    match criterion {
        Criterion::Service(service) => single(&mut query.service, service, |a, b| {
            a.eq_ignore_ascii_case(b)
        }),
        Criterion::Environment(env) => single(&mut query.environment, env, |a, b| a == b),
        Criterion::Region(region) => single(&mut query.region, region, |a, b| a == b),
        Criterion::Version(version) => single(&mut query.version, version, |a, b| {
            matches!(
                (a, b),
                (VersionCriterion::Exact { text: x, .. }, VersionCriterion::Exact { text: y, .. }) if x == y
            )
        }),
        Criterion::Health(health) => single(&mut query.health, health, |a, b| a == b),
        Criterion::TagAll(tag) => add(&mut query.tags_all, tag),
        Criterion::TagNone(tag) => add(&mut query.tags_none, tag),
        Criterion::Meta(key, criterion) => add(&mut query.meta, (key, criterion)),
    }
}

/// Pushes what the indexes can answer into `query` and returns the residual.
fn plan_into(filter: Filter, query: &mut Query) -> Option<Filter> {
    let mut parts = Vec::new();
    conjuncts(filter, &mut parts);
    let mut residual = Vec::new();
    for part in parts {
        if let Filter::Match(m) = &part {
            if let Some((criterion, exact)) = pushable(m) {
                if merge(query, criterion) && exact {
                    continue;
                }
            }
        }
        residual.push(part);
    }
    Filter::all_of(residual)
}

/// Splits a filter into indexed criteria and a residual.
///
/// An instance matches the filter exactly when it matches the returned query's criteria
/// (as `Query::matches` and the registry's indexes answer them) and the residual, if any.
/// The residual is `None` when every conjunct was pushed down exactly. The returned query's
/// own `filter` is `None`.
pub fn plan_filter(filter: Filter) -> (Query, Option<Filter>) {
    let mut query = Query::default();
    let residual = plan_into(filter, &mut query);
    (query, residual)
}

/// Parses `text`, pushes its indexable parts into `base` (a conjunction with `base`'s own
/// criteria) and adds the residual to `base.filter` (as a conjunction with any filter
/// already there). A blank `text` returns `base` unchanged.
///
/// When `base` already holds a different single-valued criterion (another environment, say),
/// the conjunct stays in the residual, so the result is the conjunction either way.
pub fn query_with_filter(
    mut base: Query,
    text: &str,
    limits: &FilterLimits,
) -> Result<Query, FilterError> {
    let filter = match parse_filter(text, limits) {
        Ok(filter) => filter,
        Err(error) if error.is_blank() => return Ok(base),
        Err(error) => return Err(error),
    };
    let residual = plan_into(filter, &mut base);
    let existing = base.filter.take().map(|f| Filter::clone(&f));
    base.filter = Filter::all_of(existing.into_iter().chain(residual).collect()).map(Arc::new);
    Ok(base)
}
