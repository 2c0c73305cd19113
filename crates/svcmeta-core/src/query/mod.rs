//! Queries: a conjunction of indexed criteria, a page request, and the answer.
//!
//! A [`Query`] is built from already-parsed criteria (the HTTP and CLI edges turn strings into
//! one). It has a canonical, injective [`Query::cache_key`] so that equal queries share a cache
//! entry whatever order their parameters came in. Evaluation lives in `registry.rs`, which
//! owns the indexes; a direct per-instance check ([`Query::matches`]) serves as the reference
//! model in tests and for the non-indexed remainder of a query.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;

use crate::model::{Health, Instance};
use crate::version::VersionCriterion;

mod filter;
#[cfg(test)]
mod filter_tests;
mod parse;

pub use filter::{
    plan_filter, query_with_filter, Filter, Match, NodeInfo, Op, Pattern, Selector, Value,
};
pub use parse::{is_blank, parse_filter, FilterError, FilterErrorKind, FilterLimits};

/// A meta criterion: `meta.KEY=VALUE` or `meta.KEY` present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaCriterion {
    /// The key is present with exactly this value.
    Equals(String),
    /// The key is present, whatever its value.
    Present,
}

/// A conjunction of criteria; an empty query matches every instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Service name, compared case-insensitively.
    pub service: Option<String>,
    /// Exact environment.
    pub environment: Option<String>,
    /// Exact region.
    pub region: Option<String>,
    /// Exact version or a semver range.
    pub version: Option<VersionCriterion>,
    /// Every one of these tags.
    pub tags_all: Vec<String>,
    /// At least one of these tags (ignored when empty).
    pub tags_any: Vec<String>,
    /// None of these tags.
    pub tags_none: Vec<String>,
    /// Meta criteria, all of which must hold.
    pub meta: Vec<(String, MetaCriterion)>,
    /// Exact health.
    pub health: Option<Health>,
    /// The residual of a filter expression, checked per candidate after the indexed criteria
    /// (see `query_with_filter`); evaluated on [`NodeInfo::standalone_ref`].
    pub filter: Option<Arc<Filter>>,
}

fn push_field(key: &mut String, name: &str, value: &str) {
    // Length-prefixed, so that no value can forge a separator: the encoding is injective.
    let _ = write!(key, "{name}{}:{value};", value.len());
}

fn push_list(key: &mut String, name: &str, values: &[String]) {
    let mut sorted: Vec<&String> = values.iter().collect();
    sorted.sort();
    sorted.dedup();
    let _ = write!(key, "{name}#{}", sorted.len());
    for value in sorted {
        push_field(key, "", value);
    }
}

impl Query {
    /// A canonical text form: equal for queries that mean the same, different otherwise.
    pub fn cache_key(&self) -> String {
        let mut key = String::with_capacity(64);
        if let Some(service) = &self.service {
            push_field(&mut key, "s", &service.to_ascii_lowercase());
        }
        if let Some(environment) = &self.environment {
            push_field(&mut key, "e", environment);
        }
        if let Some(region) = &self.region {
            push_field(&mut key, "r", region);
        }
        if let Some(version) = &self.version {
            let kind = match version {
                VersionCriterion::Exact { .. } => "v",
                VersionCriterion::Range { .. } => "V",
            };
            push_field(&mut key, kind, version.text());
        }
        push_list(&mut key, "ta", &self.tags_all);
        push_list(&mut key, "ty", &self.tags_any);
        push_list(&mut key, "tn", &self.tags_none);
        let mut meta: Vec<String> = self
            .meta
            .iter()
            .map(|(k, criterion)| match criterion {
                MetaCriterion::Equals(v) => format!("={}:{k}{v}", k.len()),
                MetaCriterion::Present => format!("?{}:{k}", k.len()),
            })
            .collect();
        meta.sort();
        meta.dedup();
        push_list(&mut key, "m", &meta);
        if let Some(health) = self.health {
            push_field(&mut key, "h", health.as_str());
        }
        if let Some(filter) = &self.filter {
            // The canonical text parses back to the same filter, so it is injective.
            push_field(&mut key, "f", &filter.to_string());
        }
        key
    }

    /// Whether the query names no criterion at all.
    pub fn is_empty(&self) -> bool {
        self.service.is_none()
            && self.environment.is_none()
            && self.region.is_none()
            && self.version.is_none()
            && self.tags_all.is_empty()
            && self.tags_any.is_empty()
            && self.tags_none.is_empty()
            && self.meta.is_empty()
            && self.health.is_none()
            && self.filter.is_none()
    }

    /// Checks one instance directly, without indexes: the reference semantics.
    pub fn matches(&self, instance: &Instance) -> bool {
        let fields = &instance.fields;
        if let Some(service) = &self.service {
            if !fields.service().eq_ignore_ascii_case(service) {
                return false;
            }
        }
        if self.environment.is_some() && fields.environment() != self.environment.as_deref() {
            return false;
        }
        if self.region.is_some() && fields.region() != self.region.as_deref() {
            return false;
        }
        if let Some(criterion) = &self.version {
            match fields.version() {
                Some(version) => {
                    if !criterion.matches(version, crate::version::parse(version).as_ref()) {
                        return false;
                    }
                }
                None => return false,
            }
        }
        let has_tag = |tag: &String| fields.has_tag(tag);
        if !self.tags_all.iter().all(has_tag) {
            return false;
        }
        if !self.tags_any.is_empty() && !self.tags_any.iter().any(has_tag) {
            return false;
        }
        if self.tags_none.iter().any(has_tag) {
            return false;
        }
        for (key, criterion) in &self.meta {
            match (fields.meta_get(key), criterion) {
                (None, _) => return false,
                (Some(value), MetaCriterion::Equals(wanted)) if value != wanted => return false,
                _ => {}
            }
        }
        if let Some(health) = self.health {
            if instance.health != health {
                return false;
            }
        }
        if let Some(filter) = &self.filter {
            if !filter.matches(instance, NodeInfo::standalone_ref()) {
                return false;
            }
        }
        true
    }
}

/// Which part of the (service, id) ordered result to return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// Maximum number of instances to return; `None` returns all.
    pub limit: Option<usize>,
    /// Resume after this position.
    pub cursor: Option<Cursor>,
}

/// A position in the (service, id) order: the last instance of the previous page.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// Lower-cased service name.
    pub service_key: String,
    /// Instance id.
    pub id: String,
}

/// A cursor that is not one this registry handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cursor: not a cursor returned by a previous page")]
pub struct CursorError;

impl Cursor {
    /// The cursor that resumes after `instance`.
    pub fn after(instance: &Instance) -> Cursor {
        Cursor {
            service_key: instance.fields.service.to_ascii_lowercase(),
            id: instance.fields.id.clone(),
        }
    }

    /// The opaque text form: hex of `service_key NUL id`.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity((self.service_key.len() + self.id.len() + 1) * 2);
        for byte in self
            .service_key
            .bytes()
            .chain(std::iter::once(0))
            .chain(self.id.bytes())
        {
            let _ = write!(out, "{byte:02x}");
        }
        out
    }

    /// Parses the text form produced by [`Cursor::encode`].
    pub fn decode(text: &str) -> Result<Cursor, CursorError> {
        if !text.len().is_multiple_of(2) || text.len() > 1024 {
            return Err(CursorError);
        }
        let bytes: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(text.get(i..i + 2).ok_or(CursorError)?, 16)
                    .map_err(|_| CursorError)
            })
            .collect::<Result<_, _>>()?;
        let split = bytes.iter().position(|b| *b == 0).ok_or(CursorError)?;
        let service_key = String::from_utf8(bytes[..split].to_vec()).map_err(|_| CursorError)?;
        let id = String::from_utf8(bytes[split + 1..].to_vec()).map_err(|_| CursorError)?;
        Ok(Cursor { service_key, id })
    }
}

/// One page of a query's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryAnswer {
    /// The registry revision the answer is valid at.
    pub revision: u64,
    /// Number of matches over all pages.
    pub total: u64,
    /// This page, ordered by (service, id).
    pub instances: Vec<Arc<Instance>>,
    /// The cursor for the next page, when there is one.
    pub next_cursor: Option<String>,
}

/// One step of the plan an indexed query ran, for `--explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanStep {
    /// The criterion, e.g. `service=web` or `tag!=canary`.
    pub criterion: String,
    /// Size of its posting list (or union of lists).
    pub postings: u64,
    /// Candidates left after applying it.
    pub remaining: u64,
}
