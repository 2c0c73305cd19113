//! The Consul check table: what svcmeta remembers of Consul TTL checks beyond the instance.
//!
//! The instance model has one health value and one lease (`ttl`) per instance. Consul clients
//! see checks: ids, names, notes, per-check statuses and outputs. This table keeps those, in
//! memory only, keyed by service (instance) id; it is not persisted, so after a restart an
//! instance with a ttl shows one synthesized check `service:<ID>` whose status is the
//! instance's health. The instance stays the truth: when its health differs from what the
//! table's statuses add up to (the lease expired, or a native renewal made it passing), every
//! check shows the instance's health.
//!
//! It also holds each instance's `DeregisterCriticalServiceAfter`, which [`ConsulState::reap`]
//! applies: an instance critical for that long is deregistered through the catalog.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use hashbrown::HashMap;
use svcmeta_core::{Health, Instance, Mutation};

use super::wire::{CheckDefinition, CheckView, NodeIdentity};
use crate::catalog::Catalog;

/// Consul's cap on a check's output.
const MAX_OUTPUT_BYTES: usize = 4096;

/// One TTL check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TtlCheck {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) notes: String,
    pub(crate) status: Health,
    pub(crate) output: String,
    pub(crate) ttl_ms: u64,
    pub(crate) deregister_after_ms: Option<u64>,
}

#[derive(Debug, Default)]
struct Table {
    /// Checks per instance id, in registration order.
    by_instance: HashMap<String, Vec<TtlCheck>>,
    /// Instance id per check id.
    by_check: HashMap<String, String>,
}

impl Table {
    fn remove(&mut self, instance_id: &str) {
        if let Some(checks) = self.by_instance.remove(instance_id) {
            for check in checks {
                if self.by_check.get(&check.id).map(String::as_str) == Some(instance_id) {
                    self.by_check.remove(&check.id);
                }
            }
        }
    }

    fn set(&mut self, instance_id: &str, checks: Vec<TtlCheck>) {
        self.remove(instance_id);
        if checks.is_empty() {
            return;
        }
        for check in &checks {
            // A check id names one check: registering it on another instance moves it.
            if let Some(previous) = self
                .by_check
                .insert(check.id.clone(), instance_id.to_string())
            {
                if previous != instance_id {
                    if let Some(list) = self.by_instance.get_mut(&previous) {
                        list.retain(|c| c.id != check.id);
                    }
                }
            }
        }
        self.by_instance.insert(instance_id.to_string(), checks);
    }
}

/// The worst of some statuses; passing when there are none.
pub(crate) fn aggregate<'a>(statuses: impl IntoIterator<Item = &'a Health>) -> Health {
    statuses
        .into_iter()
        .copied()
        .max()
        .unwrap_or(Health::Passing)
}

/// Why a check write failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CheckError {
    /// No such check.
    Unknown,
    /// The instance exists but has no TTL (its checks are not TTL checks).
    NoTtl,
}

/// The Consul API's own state, next to the catalog.
#[derive(Debug)]
pub struct ConsulState {
    node: NodeIdentity,
    table: Mutex<Table>,
    /// Raised after every change to the table, while its lock is still held. Serialised
    /// answers that show checks are kept with this number and served only while it is
    /// unchanged: check notes and outputs can change without a catalog revision.
    generation: AtomicU64,
}

impl ConsulState {
    pub(crate) fn new(node: NodeIdentity) -> ConsulState {
        ConsulState {
            node,
            table: Mutex::new(Table::default()),
            generation: AtomicU64::new(0),
        }
    }

    /// The table's generation. Read it before reading any check: answers built afterwards
    /// show the table at least as new as this generation.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Marks a change to the table; called with the table's lock held, after the change.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The node svcmeta presents itself as.
    pub(crate) fn node(&self) -> &NodeIdentity {
        &self.node
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The checks a registration of `instance_id` will have: the body's TTL checks (a check
    /// whose id exists keeps its status, a new one starts as its `Status` or critical, as in
    /// Consul), plus the existing ones the body does not name unless `replace` is set.
    pub(crate) fn plan(
        &self,
        existing: Option<&Instance>,
        definitions: Vec<CheckDefinition>,
        replace: bool,
    ) -> Vec<TtlCheck> {
        let current = match existing {
            Some(instance) => self.current_checks(instance),
            None => Vec::new(),
        };
        let mut planned: Vec<TtlCheck> = definitions
            .into_iter()
            .map(|definition| {
                let kept = current.iter().find(|c| c.id == definition.id);
                TtlCheck {
                    status: kept
                        .map(|c| c.status)
                        .or(definition.status)
                        .unwrap_or(Health::Critical),
                    output: kept.map(|c| c.output.clone()).unwrap_or_default(),
                    id: definition.id,
                    name: definition.name,
                    notes: definition.notes,
                    ttl_ms: definition.ttl_ms,
                    deregister_after_ms: definition.deregister_after_ms,
                }
            })
            .collect();
        if !replace {
            for check in current {
                if !planned.iter().any(|c| c.id == check.id) {
                    planned.push(check);
                }
            }
        }
        // One check id names one check: the last definition wins.
        let mut seen = std::collections::HashSet::new();
        planned.reverse();
        planned.retain(|c| seen.insert(c.id.clone()));
        planned.reverse();
        planned
    }

    /// Records the checks of a registration that the catalog accepted.
    pub(crate) fn commit(&self, instance_id: &str, checks: Vec<TtlCheck>) {
        let mut table = self.table();
        table.set(instance_id, checks);
        self.changed();
    }

    /// Forgets an instance's checks.
    pub(crate) fn forget(&self, instance_id: &str) {
        let mut table = self.table();
        table.remove(instance_id);
        self.changed();
    }

    /// The table's checks of an instance, or the one check synthesized from its lease.
    fn current_checks(&self, instance: &Instance) -> Vec<TtlCheck> {
        if let Some(checks) = self.table().by_instance.get(instance.id()) {
            if lease_of(checks) == instance.fields.ttl_ms {
                return checks.clone();
            }
        }
        synthesized(instance).into_iter().collect()
    }

    /// The checks shown for an instance (see the module comment for the reconciliation).
    pub(crate) fn views(&self, instance: &Instance) -> Vec<CheckView> {
        let checks = self.current_checks(instance);
        let agreed = aggregate(checks.iter().map(|c| &c.status)) == instance.health;
        checks
            .into_iter()
            .map(|check| {
                let (status, output) = if agreed {
                    (check.status, check.output)
                } else if instance.health == Health::Critical {
                    (
                        Health::Critical,
                        format!(
                            "TTL expired (last output before timeout follows): {}",
                            check.output
                        ),
                    )
                } else {
                    (instance.health, check.output)
                };
                CheckView {
                    id: check.id,
                    name: check.name,
                    notes: check.notes,
                    status,
                    output,
                    kind: "ttl",
                }
            })
            .collect()
    }

    /// The instance a check id belongs to: the table's, or `service:<ID>` of an instance with
    /// a ttl (a check the table lost in a restart).
    pub(crate) fn owner(&self, catalog: &Catalog, check_id: &str) -> Result<String, CheckError> {
        if let Some(owner) = self.table().by_check.get(check_id) {
            if catalog.get(owner).is_some() {
                return Ok(owner.clone());
            }
        }
        let instance = check_id
            .strip_prefix("service:")
            .and_then(|id| catalog.get(id))
            .ok_or(CheckError::Unknown)?;
        if instance.fields.ttl_ms.is_none() {
            return Err(CheckError::NoTtl);
        }
        Ok(instance.id().to_string())
    }

    /// Sets one check's status and output; returns the mutations that bring the instance to
    /// the checks' aggregate (renewing the lease unless the new status is critical).
    pub(crate) fn set_status(
        &self,
        instance: &Instance,
        check_id: &str,
        status: Health,
        output: &str,
    ) -> Result<Vec<Mutation>, CheckError> {
        let mut checks = self.current_checks(instance);
        let check = checks
            .iter_mut()
            .find(|c| c.id == check_id)
            .ok_or(CheckError::Unknown)?;
        check.status = status;
        check.output = truncate(output, MAX_OUTPUT_BYTES);
        let overall = aggregate(checks.iter().map(|c| &c.status));
        let id = instance.id().to_string();
        {
            let mut table = self.table();
            table.set(&id, checks);
            self.changed();
        }
        let mut mutations = Vec::new();
        if status != Health::Critical {
            mutations.push(Mutation::Renew(id.clone()));
        }
        if overall != Health::Passing || status == Health::Critical {
            mutations.push(Mutation::SetHealth {
                id,
                health: overall,
            });
        }
        Ok(mutations)
    }

    /// Deregisters every instance critical for longer than its
    /// `DeregisterCriticalServiceAfter`, and forgets the checks of instances that are gone.
    pub(crate) async fn reap(&self, catalog: &Catalog) {
        let now = catalog.now_ms();
        let mut due = Vec::new();
        {
            let mut table = self.table();
            let mut gone = Vec::new();
            for (id, checks) in &table.by_instance {
                let Some(instance) = catalog.get(id) else {
                    gone.push(id.clone());
                    continue;
                };
                let after = checks.iter().filter_map(|c| c.deregister_after_ms).min();
                if let Some(after) = after {
                    // The write that made it critical set `updated_at`; later writes to a
                    // critical instance (other than a health change) are re-registrations,
                    // which reset the health anyway.
                    if instance.health == Health::Critical
                        && now.saturating_sub(instance.updated_at) >= after
                    {
                        due.push(id.clone());
                    }
                }
            }
            if !gone.is_empty() {
                for id in gone {
                    table.remove(&id);
                }
                self.changed();
            }
        }
        for id in due {
            match catalog.write(vec![Mutation::Deregister(id.clone())]).await {
                Ok(_) => {
                    tracing::info!(
                        id,
                        "deregistered: critical for longer than DeregisterCriticalServiceAfter"
                    );
                    self.forget(&id);
                }
                Err(error) => {
                    tracing::warn!(id, %error, "could not deregister a critical instance")
                }
            }
        }
    }
}

/// The lease length a set of checks gives an instance: the shortest TTL.
pub(crate) fn lease_of(checks: &[TtlCheck]) -> Option<u64> {
    checks.iter().map(|c| c.ttl_ms).min()
}

/// The one check an instance without table entries shows: `service:<ID>` when it has a
/// lease or is not passing; none otherwise.
fn synthesized(instance: &Instance) -> Option<TtlCheck> {
    if instance.fields.ttl_ms.is_none() && instance.health == Health::Passing {
        return None;
    }
    Some(TtlCheck {
        id: format!("service:{}", instance.id()),
        name: format!("Service '{}' check", instance.service()),
        notes: String::new(),
        status: instance.health,
        output: String::new(),
        ttl_ms: instance.fields.ttl_ms.unwrap_or(0),
        deregister_after_ms: None,
    })
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}
