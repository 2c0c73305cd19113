//! Consul HTTP API responses as import input: `/v1/catalog/service/:name`,
//! `/v1/health/service/:name`, `/v1/agent/services` and `/v1/catalog/services`.
//!
//! Mapping (DESIGN §4): `Name`/`ServiceName` → service, `ID`/`ServiceID` → id, tags, meta,
//! address and port as given; version, environment and region come from `Meta["version"]`,
//! `Meta["env"]` (or `environment`) and `Meta["region"]`, by the same rule as the `/v1` API
//! (`fields_from_meta`: a value that is not a valid slug or version stays in meta only).
//! Missing optional fields are not errors. It deliberately does not substitute the node address for an empty service address
//! (clients do that, as with Consul) and does not import check states.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};
use svcmeta_core::{InstanceDraft, Limits};
use svcmeta_server::api::consul::wire::{fields_from_meta, MetaFields};

use super::{json_kind, plural, Failure, Format, Location, Parsed};

/// One service instance read from a response, before ids are made unique.
struct Entry {
    location: Location,
    node: Option<String>,
    datacenter: Option<String>,
    id: Option<String>,
    service: String,
    tags: Vec<String>,
    address: String,
    port: i64,
    meta: BTreeMap<String, String>,
}

/// `/v1/catalog/service/:name`: flat entries with `Node`, `Datacenter` and `Service*` fields.
pub(super) fn catalog_service(items: Vec<Value>) -> Result<Parsed, Failure> {
    let mut entries = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let location = Location::Index(index);
        let entry = Fields::new(item, "", &location)?;
        entries.push(Entry {
            node: entry.opt_str("Node")?,
            datacenter: entry.opt_str("Datacenter")?,
            id: entry.opt_str("ServiceID")?,
            service: entry.required_str("ServiceName")?,
            tags: entry.tags("ServiceTags")?,
            address: entry.opt_str("ServiceAddress")?.unwrap_or_default(),
            port: entry.port("ServicePort")?,
            meta: entry.meta("ServiceMeta")?,
            location,
        });
    }
    finish(Format::ConsulCatalogService, entries)
}

/// `/v1/health/service/:name`: `{Node: {...}, Service: {...}, Checks: [...]}` entries.
pub(super) fn health_service(items: Vec<Value>) -> Result<Parsed, Failure> {
    let mut entries = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let location = Location::Index(index);
        let entry = Fields::new(item, "", &location)?;
        let (node, datacenter) = match entry.obj.get("Node") {
            None | Some(Value::Null) => (None, None),
            Some(Value::String(name)) => (non_empty(name.clone()), None),
            Some(node) => {
                let node = Fields::new(node, "Node.", &location)?;
                (node.opt_str("Node")?, node.opt_str("Datacenter")?)
            }
        };
        let service = match entry.obj.get("Service") {
            Some(service) => Fields::new(service, "Service.", &location)?,
            None => return Err(Failure::at(location, "missing Service")),
        };
        entries.push(Entry {
            node,
            datacenter,
            id: service.opt_str("ID")?,
            service: service.required_str("Service")?,
            tags: service.tags("Tags")?,
            address: service.opt_str("Address")?.unwrap_or_default(),
            port: service.port("Port")?,
            meta: service.meta("Meta")?,
            location,
        });
    }
    finish(Format::ConsulHealthService, entries)
}

/// `/v1/agent/services`: an object keyed by service id; the key stands in for a missing `ID`.
pub(super) fn agent_services(map: Map<String, Value>) -> Result<Parsed, Failure> {
    let mut entries = Vec::with_capacity(map.len());
    for (key, value) in &map {
        let location = Location::Key(key.clone());
        let service = Fields::new(value, "", &location)?;
        entries.push(Entry {
            node: None,
            datacenter: service.opt_str("Datacenter")?,
            id: service.opt_str("ID")?.or_else(|| non_empty(key.clone())),
            service: service.required_str("Service")?,
            tags: service.tags("Tags")?,
            address: service.opt_str("Address")?.unwrap_or_default(),
            port: service.port("Port")?,
            meta: service.meta("Meta")?,
            location,
        });
    }
    finish(Format::ConsulAgentServices, entries)
}

/// `/v1/catalog/services` names services and their tags but no instances.
pub(super) fn catalog_services(map: &Map<String, Value>) -> Parsed {
    Parsed {
        format: Format::ConsulCatalogServices,
        drafts: Vec::new(),
        warnings: vec![format!(
            "a Consul service listing (/v1/catalog/services) names {} but holds no instances: \
             nothing imported; import /v1/health/service/NAME or /v1/catalog/service/NAME \
             responses instead",
            plural(map.len(), "service")
        )],
    }
}

/// Assigns ids (making duplicates unique with the node name) and builds the drafts.
fn finish(format: Format, entries: Vec<Entry>) -> Result<Parsed, Failure> {
    let mut warnings = Vec::new();
    let mut drafts = Vec::with_capacity(entries.len());
    let mut seen: HashMap<String, Location> = HashMap::with_capacity(entries.len());
    for entry in entries {
        let Entry {
            location,
            node,
            datacenter,
            id,
            service,
            tags,
            address,
            port,
            mut meta,
        } = entry;
        let (mut id, derived) = match (id, &node) {
            (Some(id), _) => (id, false),
            (None, Some(node)) => (format!("{node}:{service}"), true),
            (None, None) => (service.clone(), true),
        };
        if let Some(first) = seen.get(&id) {
            let renamed = match &node {
                Some(node) if !derived => format!("{node}:{id}"),
                _ => {
                    return Err(Failure::at(
                        location,
                        format!("duplicate id {id:?} (first used by {first})"),
                    ))
                }
            };
            if let Some(other) = seen.get(&renamed) {
                return Err(Failure::at(
                    location,
                    format!(
                        "duplicate id {id:?} (first used by {first}), and {renamed:?} is taken \
                         by {other} as well"
                    ),
                ));
            }
            warnings.push(format!(
                "{location}: id {id:?} is already used by {first}: renamed to {renamed:?}"
            ));
            id = renamed;
        }
        seen.insert(id.clone(), location);

        // The same rule as a registration through the Consul API: values that would not
        // pass the field's rule stay in meta only.
        let MetaFields {
            version,
            environment,
            region,
        } = fields_from_meta(&meta, &Limits::standard());
        if let Some(node) = node {
            meta.entry("consul_node".to_string()).or_insert(node);
        }
        if let Some(datacenter) = datacenter {
            meta.entry("consul_datacenter".to_string())
                .or_insert(datacenter);
        }
        drafts.push(InstanceDraft {
            id,
            service,
            address,
            port,
            tags,
            version,
            environment,
            region,
            meta,
            ttl: None,
        });
    }
    Ok(Parsed {
        format,
        drafts,
        warnings,
    })
}

fn non_empty(text: String) -> Option<String> {
    if text.is_empty() {
        None
    } else {
        Some(text)
    }
}

/// The fields of one JSON object, with the prefix (`Service.`) and location used in errors.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    prefix: &'static str,
    location: &'a Location,
}

impl<'a> Fields<'a> {
    fn new(
        value: &'a Value,
        prefix: &'static str,
        location: &'a Location,
    ) -> Result<Fields<'a>, Failure> {
        match value.as_object() {
            Some(obj) => Ok(Fields {
                obj,
                prefix,
                location,
            }),
            None => {
                let what = match prefix.strip_suffix('.') {
                    Some(name) => name.to_string(),
                    None => "an entry".to_string(),
                };
                Err(Failure::at(
                    location.clone(),
                    format!("{what} must be an object, found {}", json_kind(value)),
                ))
            }
        }
    }

    fn fail(&self, message: String) -> Failure {
        Failure::at(self.location.clone(), message)
    }

    /// A string field; absent, null and empty are `None`.
    fn opt_str(&self, key: &str) -> Result<Option<String>, Failure> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(non_empty(text.clone())),
            Some(other) => Err(self.fail(format!(
                "{}{key} must be a string, found {}",
                self.prefix,
                json_kind(other)
            ))),
        }
    }

    fn required_str(&self, key: &str) -> Result<String, Failure> {
        self.opt_str(key)?
            .ok_or_else(|| self.fail(format!("missing {}{key} (the service name)", self.prefix)))
    }

    fn tags(&self, key: &str) -> Result<Vec<String>, Failure> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(index, item)| match item {
                    Value::String(tag) => Ok(tag.clone()),
                    other => Err(self.fail(format!(
                        "{}{key}[{index}] must be a string, found {}",
                        self.prefix,
                        json_kind(other)
                    ))),
                })
                .collect(),
            Some(other) => Err(self.fail(format!(
                "{}{key} must be an array of strings, found {}",
                self.prefix,
                json_kind(other)
            ))),
        }
    }

    /// A string map; numbers and booleans are kept as their JSON text, null as "".
    fn meta(&self, key: &str) -> Result<BTreeMap<String, String>, Failure> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(name, value)| match value {
                    Value::String(text) => Ok((name.clone(), text.clone())),
                    Value::Number(number) => Ok((name.clone(), number.to_string())),
                    Value::Bool(flag) => Ok((name.clone(), flag.to_string())),
                    Value::Null => Ok((name.clone(), String::new())),
                    other => Err(self.fail(format!(
                        "{}{key}.{name} must be a string, found {}",
                        self.prefix,
                        json_kind(other)
                    ))),
                })
                .collect(),
            Some(other) => Err(self.fail(format!(
                "{}{key} must be an object, found {}",
                self.prefix,
                json_kind(other)
            ))),
        }
    }

    /// An integer port; absent or null is 0. The range is checked by validation later.
    fn port(&self, key: &str) -> Result<i64, Failure> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(Value::Number(number)) => number.as_i64().ok_or_else(|| {
                self.fail(format!(
                    "{}{key} must be an integer, found {number}",
                    self.prefix
                ))
            }),
            Some(other) => Err(self.fail(format!(
                "{}{key} must be an integer, found {}",
                self.prefix,
                json_kind(other)
            ))),
        }
    }
}
