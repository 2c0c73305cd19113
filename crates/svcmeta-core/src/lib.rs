//! svcmeta's core: the data model, validation, bitmap indexes, queries, the registry and the
//! query-result cache.
//!
//! This crate is pure: no I/O, no async, no clock, no logging. Time is passed in, and the only
//! failures are bad input (`ValidationErrors`, `VersionCriterionError`, `CursorError`) and
//! refused mutations (`MutationError`). Durability, locking and the network live in the other
//! crates of the workspace.

mod cache;
mod event;
mod index;
mod model;
mod query;
mod registry;
mod validate;
mod version;

pub use cache::{CachedPage, QueryCache, Renderings, DEFAULT_RENDERED_BYTES};
pub use event::{Event, EventKind};
pub use index::{FreshStrings, LabelsMut, MetaMut, PostingMemory};
pub use model::{
    format_duration_ms, parse_duration_ms, Health, Instance, InstanceDraft, InstanceFields, Meta,
    Registration, Text,
};
pub use query::{
    is_blank as is_blank_filter, parse_filter, plan_filter, query_with_filter, Filter, FilterError,
    FilterErrorKind, FilterLimits, Match as FilterMatch, NodeInfo, Op as FilterOp,
    Pattern as FilterPattern, Selector as FilterSelector, Value as FilterValue,
};
pub use query::{Cursor, CursorError, MetaCriterion, Page, PlanStep, Query, QueryAnswer};
pub use registry::{
    resolve, Change, IndexStats, MemoryBreakdown, Mutation, MutationError, Registry,
    RegistryLoader, ServiceSummary, ValueCount,
};
pub use validate::{
    slug_is_valid, validate, version_is_valid, Limits, RequiredField, ValidationErrors,
    VersionFormat, Violation,
};
pub use version::{parse as parse_version, VersionCriterion, VersionCriterionError};
