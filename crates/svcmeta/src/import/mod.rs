//! Import of registrations written in other formats: Kubernetes manifests (YAML, multi-document,
//! or their JSON form), Consul HTTP API responses (catalog, health and agent listings) and
//! svcmeta's own JSON / NDJSON drafts. The format is detected from the content.
//!
//! This module only maps a text to [`InstanceDraft`]s. It deliberately does not validate the
//! drafts (the registry does that when they are registered, with the configured limits), read
//! files, talk to a cluster or a Consul agent, or import health check states.

mod consul;
mod k8s;
mod native;
#[cfg(test)]
mod tests;

use std::fmt;

use serde_json::Value;
use svcmeta_core::InstanceDraft;

/// The input formats that [`parse`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Kubernetes manifests: Deployments and StatefulSets, with the Services that select them.
    Kubernetes,
    /// A Consul `/v1/catalog/service/:name` response (flat `ServiceName`, `ServiceID`, … entries).
    ConsulCatalogService,
    /// A Consul `/v1/health/service/:name` response (`Node`, `Service`, `Checks` entries).
    ConsulHealthService,
    /// A Consul `/v1/agent/services` response (an object keyed by service id).
    ConsulAgentServices,
    /// A Consul `/v1/catalog/services` response (service name to tags; it holds no instances).
    ConsulCatalogServices,
    /// svcmeta drafts: a JSON array, a single JSON object, or NDJSON.
    Native,
}

impl Format {
    /// A short, stable name for the format (`kubernetes`, `consul-health-service`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Kubernetes => "kubernetes",
            Format::ConsulCatalogService => "consul-catalog-service",
            Format::ConsulHealthService => "consul-health-service",
            Format::ConsulAgentServices => "consul-agent-services",
            Format::ConsulCatalogServices => "consul-catalog-services",
            Format::Native => "native",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Kubernetes => "Kubernetes manifests",
            Format::ConsulCatalogService => "Consul catalog service (/v1/catalog/service)",
            Format::ConsulHealthService => "Consul health service (/v1/health/service)",
            Format::ConsulAgentServices => "Consul agent services (/v1/agent/services)",
            Format::ConsulCatalogServices => "Consul catalog services (/v1/catalog/services)",
            Format::Native => "svcmeta JSON/NDJSON",
        })
    }
}

/// The result of a successful [`parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The detected format.
    pub format: Format,
    /// The drafts, in input order; not validated yet.
    pub drafts: Vec<InstanceDraft>,
    /// Things the user should know about: skipped objects, renamed ids, dropped values.
    pub warnings: Vec<String>,
}

/// Where in the input an [`ImportError`] was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A YAML document (1-based), with the line and column (1-based) when known, and the
    /// position (0-based) in the `items` of a `kind: List` object.
    Document {
        /// 1-based document number.
        document: usize,
        /// 1-based line of the error, or of the document's first node.
        line: Option<usize>,
        /// 1-based column of the error.
        column: Option<usize>,
        /// 0-based index in the document's `items` (a `kind: List`).
        item: Option<usize>,
    },
    /// A 1-based line of the text (JSON syntax errors, NDJSON), with the 1-based column.
    Line {
        /// 1-based line.
        line: usize,
        /// 1-based column, when known.
        column: Option<usize>,
    },
    /// A 0-based element of the top-level JSON array.
    Index(usize),
    /// A member of the top-level JSON object, by key.
    Key(String),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Document {
                document,
                line,
                column,
                item,
            } => {
                write!(f, "document {document}")?;
                if let Some(line) = line {
                    write!(f, ", line {line}")?;
                }
                if let Some(column) = column {
                    write!(f, ", column {column}")?;
                }
                if let Some(item) = item {
                    write!(f, ", items[{item}]")?;
                }
                Ok(())
            }
            Location::Line { line, column } => {
                write!(f, "line {line}")?;
                if let Some(column) = column {
                    write!(f, ", column {column}")?;
                }
                Ok(())
            }
            Location::Index(index) => write!(f, "[{index}]"),
            Location::Key(key) => write!(f, "[{key:?}]"),
        }
    }
}

/// Why an input could not be imported: the source name, where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    /// The name the caller gave the input (usually the file name).
    pub source_name: String,
    /// Where the problem is, when known.
    pub location: Option<Location>,
    /// What is wrong, lower-case, without a trailing period.
    pub message: String,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(location) => write!(f, "{}: {}: {}", self.source_name, location, self.message),
            None => write!(f, "{}: {}", self.source_name, self.message),
        }
    }
}

impl std::error::Error for ImportError {}

/// An import error before the source name is attached.
#[derive(Debug)]
struct Failure {
    location: Option<Location>,
    message: String,
}

impl Failure {
    fn at(location: Location, message: impl Into<String>) -> Failure {
        Failure {
            location: Some(location),
            message: message.into(),
        }
    }

    fn into_error(self, source_name: &str) -> ImportError {
        ImportError {
            source_name: source_name.to_string(),
            location: self.location,
            message: self.message,
        }
    }
}

/// Detects the format of `text` and maps it to drafts.
///
/// `source_name` only labels errors. Detection: text that does not start with `[` or `{` is
/// YAML (Kubernetes manifests); a JSON array of objects with `ServiceName`/`ServiceID` is a
/// Consul catalog service listing, one with `Service` objects and `Node` a health listing;
/// an object whose values are objects with a `Service` key is an agent listing; an object
/// whose values are all string arrays is a catalog services listing (no instances); JSON with
/// `apiVersion` and `kind` is a Kubernetes manifest; everything else is native drafts.
pub fn parse(source_name: &str, text: &str) -> Result<Parsed, ImportError> {
    parse_text(text).map_err(|failure| failure.into_error(source_name))
}

fn parse_text(text: &str) -> Result<Parsed, Failure> {
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = body.trim_start();
    if trimmed.is_empty() {
        return Ok(Parsed {
            format: Format::Native,
            drafts: Vec::new(),
            warnings: vec!["the input is empty: no instances".to_string()],
        });
    }
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        parse_json(body)
    } else {
        k8s::parse_yaml(body)
    }
}

fn parse_json(body: &str) -> Result<Parsed, Failure> {
    match serde_json::from_str::<Value>(body) {
        Ok(value) => classify(value, body),
        Err(err) => {
            if native::looks_like_ndjson(body) {
                return native::from_ndjson(body);
            }
            if body.contains("apiVersion:") {
                // A YAML flow mapping such as `{apiVersion: v1, kind: List, items: []}`.
                return k8s::parse_yaml(body);
            }
            Err(Failure::at(
                Location::Line {
                    line: err.line(),
                    column: Some(err.column()),
                },
                format!("invalid JSON: {}", json_message(&err)),
            ))
        }
    }
}

fn classify(value: Value, body: &str) -> Result<Parsed, Failure> {
    match value {
        Value::Array(items) => {
            let Some(first) = items.first() else {
                return Ok(Parsed {
                    format: Format::Native,
                    drafts: Vec::new(),
                    warnings: vec!["the input is an empty array: no instances".to_string()],
                });
            };
            if has_key(first, "ServiceName") || has_key(first, "ServiceID") {
                consul::catalog_service(items)
            } else if first.get("Service").is_some_and(Value::is_object) && has_key(first, "Node") {
                consul::health_service(items)
            } else if is_k8s_object(first) {
                k8s::from_json(items)
            } else {
                native::from_array(items)
            }
        }
        Value::Object(map) => {
            if map.is_empty() {
                return Ok(Parsed {
                    format: Format::ConsulAgentServices,
                    drafts: Vec::new(),
                    warnings: vec!["the input is an empty object: no instances".to_string()],
                });
            }
            if map.contains_key("apiVersion") && map.contains_key("kind") {
                return k8s::from_json(vec![Value::Object(map)]);
            }
            if map
                .values()
                .all(|v| v.is_object() && v.get("Service").is_some())
            {
                return consul::agent_services(map);
            }
            if map.values().all(|v| {
                v.as_array()
                    .is_some_and(|tags| tags.iter().all(Value::is_string))
            }) {
                return Ok(consul::catalog_services(&map));
            }
            native::from_object(body)
        }
        other => Err(Failure::at(
            Location::Line {
                line: 1,
                column: None,
            },
            format!(
                "expected a JSON array or object, found {}",
                json_kind(&other)
            ),
        )),
    }
}

fn has_key(value: &Value, key: &str) -> bool {
    value.as_object().is_some_and(|map| map.contains_key(key))
}

fn is_k8s_object(value: &Value) -> bool {
    has_key(value, "apiVersion") && has_key(value, "kind")
}

/// serde_json's message without its trailing " at line L column C".
fn json_message(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(pos) => text[..pos].to_string(),
        None => text,
    }
}

/// "a string", "a number", … for messages.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `n thing` / `n things`.
fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}
