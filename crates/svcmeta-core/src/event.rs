//! Change events: what a sequenced write did, for the event stream, watches and resumption.
//!
//! An event carries the instance's state after the change (for a deregistration, its last
//! state), so a watcher can filter events with the same query semantics as a read.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::Instance;
use crate::registry::Change;

/// What kind of change an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A new instance.
    Register,
    /// An existing instance was replaced with different fields.
    Update,
    /// Only the health changed.
    Health,
    /// The instance was removed.
    Deregister,
}

impl EventKind {
    /// The lower-case word used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Register => "register",
            EventKind::Update => "update",
            EventKind::Health => "health",
            EventKind::Deregister => "deregister",
        }
    }
}

/// One change, with its revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The change's revision.
    pub revision: u64,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The instance after the change; for a deregistration, its last state.
    pub instance: Arc<Instance>,
    /// For an update or a health change, the state before it: a watcher of a query learns
    /// that an instance left its result when `previous` matched and `instance` does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Arc<Instance>>,
}

impl Event {
    /// Whether a watcher of instances matching `matches` must see this event: the instance
    /// matches after the change, or did before it (it left the result).
    pub fn concerns(&self, matches: impl Fn(&Instance) -> bool) -> bool {
        matches(&self.instance) || self.previous.as_deref().is_some_and(matches)
    }
}

impl Event {
    /// Describes `change`, given the instance's state before it.
    pub fn describe(previous: Option<&Arc<Instance>>, change: &Change) -> Option<Event> {
        match (change, previous) {
            (Change::Put(instance), None) => Some(Event {
                revision: instance.modify_revision,
                kind: EventKind::Register,
                instance: Arc::clone(instance),
                previous: None,
            }),
            (Change::Put(instance), Some(old)) => Some(Event {
                revision: instance.modify_revision,
                kind: if old.fields == instance.fields {
                    EventKind::Health
                } else {
                    EventKind::Update
                },
                instance: Arc::clone(instance),
                previous: Some(Arc::clone(old)),
            }),
            (Change::Remove { revision, .. }, Some(old)) => Some(Event {
                revision: *revision,
                kind: EventKind::Deregister,
                instance: Arc::clone(old),
                previous: None,
            }),
            (Change::Remove { .. }, None) => None,
        }
    }
}
