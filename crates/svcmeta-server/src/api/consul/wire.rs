//! Consul's JSON shapes (PascalCase) and their mapping to and from svcmeta's model.
//!
//! Pure field mapping, nothing else: no HTTP, no catalog, no check state. Incoming register
//! bodies are read as loose JSON whose keys match case-insensitively and ignoring `_` (py-consul
//! sends `enabletagoverride`, Go sends `EnableTagOverride`); `null` is absent and unknown keys
//! are ignored. Outgoing shapes never hold `null` where clients iterate (`[]`, `{}` instead).
//!
//! Mapping (DESIGN §4): `Name` → service, `ID` → id (default `Name`), `Tags`, `Meta`,
//! `Address`, `Port` as given. `Meta["version"]`, `Meta["env"]` (or `Meta["environment"]`) and
//! `Meta["region"]` also set version, environment and region when they pass the field's rule
//! (a value that is no lower-case slug stays in meta only). Meta is kept verbatim, so a Consul
//! client reads back what it sent; a native instance shows its version, environment and region
//! as the Meta keys `version`, `env` and `region` unless its meta already has them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};
use svcmeta_core::{
    parse_duration_ms, slug_is_valid, version_is_valid, Health, Instance, InstanceDraft, Limits,
    Meta, Text,
};

/// Consul's version that svcmeta's API follows (reported by `/v1/agent/self`).
pub(crate) const CONSUL_VERSION: &str = "1.21.0";

/// The node svcmeta presents itself as: every instance lives on it.
#[derive(Debug, Clone)]
pub(crate) struct NodeIdentity {
    /// Node name (`Node`).
    pub(crate) name: String,
    /// Datacenter.
    pub(crate) datacenter: String,
    /// Node address (`Address`), where clients go when a service has no address.
    pub(crate) address: String,
    /// A UUID derived from the node name, stable across restarts.
    pub(crate) id: String,
    /// Node metadata (empty).
    pub(crate) meta: BTreeMap<String, String>,
}

impl NodeIdentity {
    pub(crate) fn new(name: &str, datacenter: &str, address: &str) -> NodeIdentity {
        NodeIdentity {
            name: name.to_string(),
            datacenter: datacenter.to_string(),
            address: address.to_string(),
            id: uuid_from(name),
            meta: BTreeMap::new(),
        }
    }

    /// Consul's node tagged addresses: `lan`, `lan_ipv4`, `wan`, `wan_ipv4` (or `_ipv6`).
    pub(crate) fn tagged_addresses(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        map.insert("lan".to_string(), self.address.clone());
        map.insert("wan".to_string(), self.address.clone());
        if let Some(family) = ip_family(&self.address) {
            map.insert(format!("lan_{family}"), self.address.clone());
            map.insert(format!("wan_{family}"), self.address.clone());
        }
        map
    }

    /// The node object of health entries and node listings.
    pub(crate) fn body(&self) -> NodeBody {
        NodeBody {
            id: self.id.clone(),
            node: self.name.clone(),
            address: self.address.clone(),
            datacenter: self.datacenter.clone(),
            tagged_addresses: self.tagged_addresses(),
            meta: self.meta.clone(),
            create_index: 1,
            modify_index: 1,
        }
    }
}

/// A UUID-shaped id from two FNV-1a hashes of `name` (deterministic, not random).
fn uuid_from(name: &str) -> String {
    let hash = |seed: u64| {
        name.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let (a, b) = (hash(0xcbf2_9ce4_8422_2325), hash(0x8422_2325_cbf2_9ce4));
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn ip_family(address: &str) -> Option<&'static str> {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => Some("ipv4"),
        Ok(std::net::IpAddr::V6(_)) => Some("ipv6"),
        Err(_) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Register bodies
// ---------------------------------------------------------------------------------------------

/// A TTL check as a register body defines it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CheckDefinition {
    /// `CheckID` (or `ID`), else `service:<ID>` (`service:<ID>:<n>` with several checks).
    pub(crate) id: String,
    /// `Name`, else `Service '<Name>' check`.
    pub(crate) name: String,
    /// `Notes`.
    pub(crate) notes: String,
    /// `Status` when given.
    pub(crate) status: Option<Health>,
    /// `TTL`.
    pub(crate) ttl_ms: u64,
    /// `DeregisterCriticalServiceAfter`, raised to Consul's minimum of one minute.
    pub(crate) deregister_after_ms: Option<u64>,
}

/// A parsed `PUT /v1/agent/service/register` body.
#[derive(Debug, Clone)]
pub(crate) struct RegisterBody {
    /// The instance, without its ttl (the checks decide it).
    pub(crate) draft: InstanceDraft,
    /// The TTL checks, in body order (`Check` first, then `Checks`).
    pub(crate) checks: Vec<CheckDefinition>,
    /// How many checks of other types (HTTP, TCP, …) were accepted and are not run.
    pub(crate) unrun_checks: usize,
}

/// Consul's minimum for `DeregisterCriticalServiceAfter`.
pub(crate) const MIN_DEREGISTER_AFTER_MS: u64 = 60_000;

/// `EnableTagOverride` → `enabletagoverride`: how keys are compared.
fn normalise(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// A JSON object whose keys are looked up as Consul's decoder does.
struct Loose<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Loose<'a> {
    fn new(value: &'a Value, path: &str) -> Result<Loose<'a>, String> {
        match value {
            Value::Object(map) => Ok(Loose {
                map,
                path: path.to_string(),
            }),
            other => Err(format!(
                "{}: expected an object, found {}",
                if path.is_empty() { "body" } else { path },
                kind(other)
            )),
        }
    }

    /// The first non-null value whose key normalises to one of `names`.
    fn get(&self, names: &[&str]) -> Option<(&'a str, &'a Value)> {
        self.map.iter().find_map(|(key, value)| {
            let norm = normalise(key);
            (!value.is_null() && names.iter().any(|n| *n == norm)).then_some((key.as_str(), value))
        })
    }

    fn field(&self, key: &str) -> String {
        format!("{}{key}", self.path)
    }

    fn string(&self, names: &[&str]) -> Result<Option<String>, String> {
        match self.get(names) {
            None => Ok(None),
            Some((_, Value::String(text))) => Ok(Some(text.clone())),
            Some((key, other)) => Err(format!(
                "{}: expected a string, found {}",
                self.field(key),
                kind(other)
            )),
        }
    }

    fn integer(&self, names: &[&str]) -> Result<Option<i64>, String> {
        match self.get(names) {
            None => Ok(None),
            Some((key, Value::Number(number))) => number
                .as_i64()
                .map(Some)
                .ok_or_else(|| format!("{}: expected an integer, found {number}", self.field(key))),
            Some((key, other)) => Err(format!(
                "{}: expected an integer, found {}",
                self.field(key),
                kind(other)
            )),
        }
    }

    fn boolean(&self, names: &[&str]) -> Result<Option<bool>, String> {
        match self.get(names) {
            None => Ok(None),
            Some((_, Value::Bool(flag))) => Ok(Some(*flag)),
            Some((key, other)) => Err(format!(
                "{}: expected true or false, found {}",
                self.field(key),
                kind(other)
            )),
        }
    }

    fn strings(&self, names: &[&str]) -> Result<Vec<String>, String> {
        match self.get(names) {
            None => Ok(Vec::new()),
            Some((key, Value::Array(items))) => items
                .iter()
                .enumerate()
                .map(|(n, item)| match item {
                    Value::String(text) => Ok(text.clone()),
                    other => Err(format!(
                        "{}[{n}]: expected a string, found {}",
                        self.field(key),
                        kind(other)
                    )),
                })
                .collect(),
            Some((key, other)) => Err(format!(
                "{}: expected an array of strings, found {}",
                self.field(key),
                kind(other)
            )),
        }
    }

    fn string_map(&self, names: &[&str]) -> Result<BTreeMap<String, String>, String> {
        match self.get(names) {
            None => Ok(BTreeMap::new()),
            Some((key, Value::Object(map))) => map
                .iter()
                .map(|(k, v)| match v {
                    Value::String(text) => Ok((k.clone(), text.clone())),
                    other => Err(format!(
                        "{}.{k}: expected a string, found {}",
                        self.field(key),
                        kind(other)
                    )),
                })
                .collect(),
            Some((key, other)) => Err(format!(
                "{}: expected an object of strings, found {}",
                self.field(key),
                kind(other)
            )),
        }
    }

    fn duration_ms(&self, names: &[&str]) -> Result<Option<u64>, String> {
        match self.string(names)? {
            None => Ok(None),
            Some(text) if text.is_empty() => Ok(None),
            Some(text) => parse_duration_ms(&text).map(Some).map_err(|reason| {
                let key = self.get(names).map_or("", |(k, _)| k);
                format!("{}: {reason}", self.field(key))
            }),
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Why a register body was refused: a decode problem (`Request decode failed: …`) or a
/// Consul rule with Consul's own message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// The JSON does not have the expected types.
    Decode(String),
    /// A Consul rule (`Missing service name`, `Invalid check: …`): the whole message.
    Rule(String),
}

/// Check definition keys that name a check type svcmeta does not run.
const UNRUN_CHECK_TYPES: [&str; 12] = [
    "http",
    "tcp",
    "udp",
    "grpc",
    "h2ping",
    "args",
    "script",
    "dockercontainerid",
    "aliasservice",
    "aliasnode",
    "osservice",
    "tcpusetls",
];

/// Reads a register body (DESIGN §4 mapping); `limits` decide which Meta values can also
/// become version, environment and region.
pub(crate) fn parse_register(body: &Value, limits: &Limits) -> Result<RegisterBody, BodyError> {
    let top = Loose::new(body, "").map_err(BodyError::Decode)?;
    let name = top.string(&["name"]).map_err(BodyError::Decode)?;
    let name = match name {
        Some(name) if !name.is_empty() => name,
        _ => return Err(BodyError::Rule("Missing service name".to_string())),
    };
    let id = top
        .string(&["id", "serviceid"])
        .map_err(BodyError::Decode)?
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| name.clone());
    let address = top
        .string(&["address"])
        .map_err(BodyError::Decode)?
        .unwrap_or_default();
    if matches!(address.as_str(), "0.0.0.0" | "::" | "[::]") {
        return Err(BodyError::Rule("Invalid service address".to_string()));
    }
    let port = top
        .integer(&["port"])
        .map_err(BodyError::Decode)?
        .unwrap_or(0);
    let tags = top.strings(&["tags"]).map_err(BodyError::Decode)?;
    let meta = top.string_map(&["meta"]).map_err(BodyError::Decode)?;
    if let Some(key) = meta.keys().find(|k| k.starts_with("consul-")) {
        return Err(BodyError::Rule(format!(
            "Invalid Service Meta: Key prefix 'consul-' is reserved for internal use (key {key:?})"
        )));
    }
    // Accepted for compatibility and checked as Consul does; svcmeta stores none of them.
    top.boolean(&["enabletagoverride"])
        .map_err(BodyError::Decode)?;
    if let Some((key, weights)) = top.get(&["weights"]) {
        let weights = Loose::new(weights, &format!("{key}.")).map_err(BodyError::Decode)?;
        let passing = weights.integer(&["passing"]).map_err(BodyError::Decode)?;
        let warning = weights.integer(&["warning"]).map_err(BodyError::Decode)?;
        if passing.is_some_and(|p| p < 1) {
            return Err(BodyError::Rule(
                "Invalid Weights: Passing must be greater than 0".to_string(),
            ));
        }
        if warning.is_some_and(|w| w < 0) {
            return Err(BodyError::Rule(
                "Invalid Weights: Warning must be greater or equal than 0".to_string(),
            ));
        }
    }
    let mut definitions: Vec<(String, &Value)> = Vec::new();
    if let Some((key, check)) = top.get(&["check"]) {
        definitions.push((key.to_string(), check));
    }
    if let Some((key, checks)) = top.get(&["checks"]) {
        match checks {
            Value::Array(items) => definitions.extend(
                items
                    .iter()
                    .enumerate()
                    .filter(|(_, item)| !item.is_null())
                    .map(|(n, item)| (format!("{key}[{n}]"), item)),
            ),
            other => {
                return Err(BodyError::Decode(format!(
                    "{key}: expected an array of checks, found {}",
                    kind(other)
                )))
            }
        }
    }
    let several = definitions.len() > 1;
    let mut checks = Vec::new();
    let mut unrun_checks = 0;
    for (position, (path, value)) in definitions.iter().enumerate() {
        let check = Loose::new(value, &format!("{path}.")).map_err(BodyError::Decode)?;
        let ttl_ms = check.duration_ms(&["ttl"]).map_err(BodyError::Decode)?;
        let status = match check.string(&["status"]).map_err(BodyError::Decode)? {
            None => None,
            Some(text) if text.is_empty() => None,
            Some(text) => Some(Health::parse(&text).ok_or_else(|| {
                BodyError::Rule(
                    "Status for checks must 'passing', 'warning', 'critical'".to_string(),
                )
            })?),
        };
        let Some(ttl_ms) = ttl_ms else {
            let has_type = check.map.iter().any(|(key, value)| {
                !value.is_null() && UNRUN_CHECK_TYPES.contains(&normalise(key).as_str())
            });
            if has_type {
                unrun_checks += 1;
                continue;
            }
            return Err(BodyError::Rule(format!(
                "Invalid check: {path} defines no check type (svcmeta supports TTL checks)"
            )));
        };
        if ttl_ms == 0 {
            return Err(BodyError::Rule(
                "Invalid check: TTL must be > 0 for TTL checks".to_string(),
            ));
        }
        let id = check
            .string(&["checkid", "id"])
            .map_err(BodyError::Decode)?
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| {
                if several {
                    format!("service:{id}:{}", position + 1)
                } else {
                    format!("service:{id}")
                }
            });
        let check_name = check
            .string(&["name"])
            .map_err(BodyError::Decode)?
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("Service '{name}' check"));
        let notes = check
            .string(&["notes"])
            .map_err(BodyError::Decode)?
            .unwrap_or_default();
        let deregister_after_ms = check
            .duration_ms(&["deregistercriticalserviceafter"])
            .map_err(BodyError::Decode)?
            .filter(|ms| *ms > 0)
            .map(|ms| ms.max(MIN_DEREGISTER_AFTER_MS));
        checks.push(CheckDefinition {
            id,
            name: check_name,
            notes,
            status,
            ttl_ms,
            deregister_after_ms,
        });
    }
    let MetaFields {
        version,
        environment,
        region,
    } = fields_from_meta(&meta, limits);
    Ok(RegisterBody {
        draft: InstanceDraft {
            id,
            service: name,
            address,
            port,
            tags,
            version,
            environment,
            region,
            meta,
            ttl: None,
        },
        checks,
        unrun_checks,
    })
}

/// Whether `value` passes the slug rule of environment and region (DESIGN §1). An allowed
/// list in the configuration is not consulted here: a slug outside it is a validation error.
/// The native fields a Consul registration's Meta carries (DESIGN §4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaFields {
    /// From `Meta["version"]`.
    pub version: Option<String>,
    /// From `Meta["env"]`, else `Meta["environment"]`.
    pub environment: Option<String>,
    /// From `Meta["region"]`.
    pub region: Option<String>,
}

/// Reads version, environment and region from Consul Meta. A value that would not pass the
/// field's rule is left in meta only, so one odd value (`"env": "Production EU"`) never makes
/// a whole registration or import fail. Used by the `/v1` API and by the Consul importer.
pub fn fields_from_meta(meta: &BTreeMap<String, String>, limits: &Limits) -> MetaFields {
    MetaFields {
        version: meta
            .get("version")
            .filter(|v| version_is_valid(v, limits))
            .cloned(),
        environment: meta
            .get("env")
            .filter(|v| slug_is_valid(v, limits))
            .or_else(|| meta.get("environment").filter(|v| slug_is_valid(v, limits)))
            .cloned(),
        region: meta
            .get("region")
            .filter(|v| slug_is_valid(v, limits))
            .cloned(),
    }
}

/// Reads a `PUT /v1/agent/check/update` body: `Status` and `Output`.
pub(crate) fn parse_check_update(body: &Value) -> Result<(Health, String), BodyError> {
    let top = Loose::new(body, "").map_err(BodyError::Decode)?;
    let status = top
        .string(&["status"])
        .map_err(BodyError::Decode)?
        .unwrap_or_default();
    let health = Health::parse(&status)
        .ok_or_else(|| BodyError::Rule(format!("Invalid check status: '{status}'")))?;
    let output = top
        .string(&["output"])
        .map_err(BodyError::Decode)?
        .unwrap_or_default();
    Ok((health, output))
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// The instance as Consul clients see it: meta with `version`, `env` and `region` added from
/// the native fields when meta lacks them. Borrowed when nothing is added.
pub(crate) fn consul_view(instance: &Arc<Instance>) -> Cow<'_, Instance> {
    let fields = &instance.fields;
    let additions = consul_meta_additions(instance);
    if additions.is_empty() {
        return Cow::Borrowed(instance);
    }
    let mut view = Instance::clone(instance);
    view.fields.meta = fields
        .meta
        .iter()
        .map(|(k, v)| (Text::clone(k), Text::clone(v)))
        .chain(additions)
        .collect::<Meta>();
    Cow::Owned(view)
}

fn consul_meta_additions(instance: &Instance) -> Vec<(Text, Text)> {
    let fields = &instance.fields;
    let mut additions = Vec::new();
    if let Some(version) = &fields.version {
        if !fields.meta.contains_key("version") {
            additions.push((Text::from("version"), Text::clone(version)));
        }
    }
    if let Some(environment) = &fields.environment {
        if !fields.meta.contains_key("env") && !fields.meta.contains_key("environment") {
            additions.push((Text::from("env"), Text::clone(environment)));
        }
    }
    if let Some(region) = &fields.region {
        if !fields.meta.contains_key("region") {
            additions.push((Text::from("region"), Text::clone(region)));
        }
    }
    additions
}

/// The Consul Meta map of an instance (see [`consul_view`]).
pub(crate) fn consul_meta(instance: &Instance) -> BTreeMap<String, String> {
    let mut meta: BTreeMap<String, String> = instance
        .fields
        .meta_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (key, value) in consul_meta_additions(instance) {
        meta.insert(key.to_string(), value.to_string());
    }
    meta
}

fn tags(instance: &Instance) -> Vec<String> {
    instance.fields.tags().map(str::to_string).collect()
}

/// `Weights`; svcmeta stores none, so Consul's default.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Weights {
    passing: u32,
    warning: u32,
}

const DEFAULT_WEIGHTS: Weights = Weights {
    passing: 1,
    warning: 1,
};

/// One entry of a service's `TaggedAddresses`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TaggedAddress {
    #[serde(rename = "Address")]
    address: String,
    #[serde(rename = "Port")]
    port: u16,
}

/// `lan_ipv4` / `wan_ipv4` (or `_ipv6`) when the service address is an IP, as Consul adds.
fn service_tagged_addresses(instance: &Instance) -> BTreeMap<String, TaggedAddress> {
    let fields = &instance.fields;
    let mut map = BTreeMap::new();
    if let Some(family) = ip_family(&fields.address) {
        for side in ["lan", "wan"] {
            map.insert(
                format!("{side}_{family}"),
                TaggedAddress {
                    address: fields.address.clone(),
                    port: fields.port,
                },
            );
        }
    }
    map
}

/// An entry of `/v1/agent/services` and the body of `/v1/agent/service/{id}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AgentService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    port: u16,
    address: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tagged_addresses: BTreeMap<String, TaggedAddress>,
    weights: Weights,
    enable_tag_override: bool,
    datacenter: String,
    /// Only on `/v1/agent/service/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content_hash: Option<String>,
}

pub(crate) fn agent_service(instance: &Instance, node: &NodeIdentity) -> AgentService {
    let fields = &instance.fields;
    AgentService {
        id: fields.id.clone(),
        service: fields.service().to_string(),
        tags: tags(instance),
        meta: consul_meta(instance),
        port: fields.port,
        address: fields.address.clone(),
        tagged_addresses: service_tagged_addresses(instance),
        weights: DEFAULT_WEIGHTS,
        enable_tag_override: false,
        datacenter: node.datacenter.clone(),
        content_hash: None,
    }
}

/// Consul's proxy object of a plain (non-mesh) service.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Proxy {
    mode: &'static str,
    mesh_gateway: Map<String, Value>,
    expose: Map<String, Value>,
}

fn empty_proxy() -> Proxy {
    Proxy {
        mode: "",
        mesh_gateway: Map::new(),
        expose: Map::new(),
    }
}

/// The service of a health entry and of `/v1/catalog/node/{node}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct NodeService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    tags: Vec<String>,
    address: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tagged_addresses: BTreeMap<String, TaggedAddress>,
    meta: BTreeMap<String, String>,
    port: u16,
    weights: Weights,
    enable_tag_override: bool,
    proxy: Proxy,
    connect: Map<String, Value>,
    create_index: u64,
    modify_index: u64,
}

pub(crate) fn node_service(instance: &Instance) -> NodeService {
    let fields = &instance.fields;
    NodeService {
        id: fields.id.clone(),
        service: fields.service().to_string(),
        tags: tags(instance),
        address: fields.address.clone(),
        tagged_addresses: service_tagged_addresses(instance),
        meta: consul_meta(instance),
        port: fields.port,
        weights: DEFAULT_WEIGHTS,
        enable_tag_override: false,
        proxy: empty_proxy(),
        connect: Map::new(),
        create_index: instance.create_revision.max(1),
        modify_index: instance.modify_revision.max(1),
    }
}

/// The node of health entries, `/v1/catalog/nodes` and `/v1/catalog/node/{node}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct NodeBody {
    #[serde(rename = "ID")]
    id: String,
    node: String,
    address: String,
    datacenter: String,
    tagged_addresses: BTreeMap<String, String>,
    meta: BTreeMap<String, String>,
    create_index: u64,
    modify_index: u64,
}

/// An entry of `/v1/catalog/service/{name}` (Consul's `ServiceNode`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ServiceNode {
    #[serde(rename = "ID")]
    id: String,
    node: String,
    address: String,
    datacenter: String,
    tagged_addresses: BTreeMap<String, String>,
    node_meta: BTreeMap<String, String>,
    service_kind: &'static str,
    #[serde(rename = "ServiceID")]
    service_id: String,
    service_name: String,
    service_tags: Vec<String>,
    service_address: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    service_tagged_addresses: BTreeMap<String, TaggedAddress>,
    service_weights: Weights,
    service_meta: BTreeMap<String, String>,
    service_port: u16,
    service_enable_tag_override: bool,
    service_proxy: Proxy,
    service_connect: Map<String, Value>,
    create_index: u64,
    modify_index: u64,
}

pub(crate) fn service_node(instance: &Instance, node: &NodeIdentity) -> ServiceNode {
    let fields = &instance.fields;
    ServiceNode {
        id: node.id.clone(),
        node: node.name.clone(),
        address: node.address.clone(),
        datacenter: node.datacenter.clone(),
        tagged_addresses: node.tagged_addresses(),
        node_meta: node.meta.clone(),
        service_kind: "",
        service_id: fields.id.clone(),
        service_name: fields.service().to_string(),
        service_tags: tags(instance),
        service_address: fields.address.clone(),
        service_tagged_addresses: service_tagged_addresses(instance),
        service_weights: DEFAULT_WEIGHTS,
        service_meta: consul_meta(instance),
        service_port: fields.port,
        service_enable_tag_override: false,
        service_proxy: empty_proxy(),
        service_connect: Map::new(),
        create_index: instance.create_revision.max(1),
        modify_index: instance.modify_revision.max(1),
    }
}

/// One check as the check table shows it for an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckView {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) notes: String,
    pub(crate) status: Health,
    pub(crate) output: String,
    /// `ttl` for TTL checks.
    pub(crate) kind: &'static str,
}

/// A check object (`/v1/health/*`, `/v1/agent/checks`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HealthCheck {
    node: String,
    #[serde(rename = "CheckID")]
    check_id: String,
    name: String,
    status: &'static str,
    notes: String,
    output: String,
    #[serde(rename = "ServiceID")]
    service_id: String,
    service_name: String,
    service_tags: Vec<String>,
    #[serde(rename = "Type")]
    kind: &'static str,
    interval: String,
    timeout: String,
    exposed_port: u16,
    definition: Map<String, Value>,
    create_index: u64,
    modify_index: u64,
}

impl HealthCheck {
    /// The check's status word.
    pub(crate) fn status(&self) -> &'static str {
        self.status
    }
}

pub(crate) fn health_check(
    instance: &Instance,
    check: &CheckView,
    node: &NodeIdentity,
) -> HealthCheck {
    let fields = &instance.fields;
    HealthCheck {
        node: node.name.clone(),
        check_id: check.id.clone(),
        name: check.name.clone(),
        status: check.status.as_str(),
        notes: check.notes.clone(),
        output: check.output.clone(),
        service_id: fields.id.clone(),
        service_name: fields.service().to_string(),
        service_tags: tags(instance),
        kind: check.kind,
        interval: String::new(),
        timeout: String::new(),
        exposed_port: 0,
        definition: Map::new(),
        create_index: instance.create_revision.max(1),
        modify_index: instance.modify_revision.max(1),
    }
}

/// The node-level check every Consul node has, always passing here.
pub(crate) fn serf_check(node: &NodeIdentity) -> HealthCheck {
    HealthCheck {
        node: node.name.clone(),
        check_id: "serfHealth".to_string(),
        name: "Serf Health Status".to_string(),
        status: Health::Passing.as_str(),
        notes: String::new(),
        output: "Agent alive and reachable".to_string(),
        service_id: String::new(),
        service_name: String::new(),
        service_tags: Vec::new(),
        kind: "",
        interval: String::new(),
        timeout: String::new(),
        exposed_port: 0,
        definition: Map::new(),
        create_index: 1,
        modify_index: 1,
    }
}

/// An entry of `/v1/health/service/{name}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HealthEntry {
    pub(crate) node: NodeBody,
    pub(crate) service: NodeService,
    pub(crate) checks: Vec<HealthCheck>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_match_case_insensitively_and_ignore_underscores() {
        let body = json!({
            "name": "web", "id": "web-1", "port": 80, "tags": ["a"],
            "meta": {"env": "prod", "region": "EU", "version": "1.2"},
            "enable_tag_override": true, "Ns": null,
            "checks": [{"ttl": "15s"}, {"TTL": "30s", "status": "passing", "CheckID": "x"}],
        });
        let parsed = parse_register(&body, &Limits::standard()).unwrap();
        assert_eq!(parsed.draft.id, "web-1");
        assert_eq!(parsed.draft.environment.as_deref(), Some("prod"));
        assert_eq!(parsed.draft.region, None, "not a slug: meta only");
        assert_eq!(
            parsed.draft.meta.get("region").map(String::as_str),
            Some("EU")
        );
        assert_eq!(parsed.draft.version.as_deref(), Some("1.2"));
        assert_eq!(parsed.checks.len(), 2);
        assert_eq!(parsed.checks[0].id, "service:web-1:1");
        assert_eq!(parsed.checks[0].name, "Service 'web' check");
        assert_eq!(parsed.checks[1].id, "x");
        assert_eq!(parsed.checks[1].status, Some(Health::Passing));
    }

    #[test]
    fn consul_rules_give_consuls_messages() {
        let limits = Limits::standard();
        let rule = |body: Value| match parse_register(&body, &limits) {
            Err(BodyError::Rule(message)) => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(rule(json!({"ID": "x"})), "Missing service name");
        assert_eq!(
            rule(json!({"Name": "x", "Address": "0.0.0.0"})),
            "Invalid service address"
        );
        assert!(
            rule(json!({"Name": "x", "Check": {"TTL": "1s", "Status": "up"}}))
                .starts_with("Status for checks must")
        );
        assert!(matches!(
            parse_register(&json!({"Name": "x", "Port": "80"}), &limits),
            Err(BodyError::Decode(_))
        ));
        let http = parse_register(
            &json!({"Name": "x", "Check": {"HTTP": "http://x/", "Interval": "10s"}}),
            &limits,
        )
        .unwrap();
        assert_eq!((http.checks.len(), http.unrun_checks), (0, 1));
    }

    #[test]
    fn node_ids_are_stable_uuids() {
        let id = uuid_from("svcmeta");
        assert_eq!(id, uuid_from("svcmeta"));
        assert_ne!(id, uuid_from("other"));
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
    }
}
