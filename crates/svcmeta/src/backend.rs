//! Where a command's requests go: a running server (`--server URL`), or the data directory
//! opened in-process when no server holds it.
//!
//! Both paths speak the native API's JSON: the local backend calls the same parsing and
//! validation functions as the server's handlers, so a command behaves the same either way.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use svcmeta_core::{InstanceDraft, Mutation};
use svcmeta_server::api::error::ApiError;
use svcmeta_server::api::native::{parse_list_request, stats_body, validate_all};
use svcmeta_server::AppState;

use crate::config::{Config, StoreKind};

/// A failure a command reports; decides the exit code.
#[derive(Debug)]
pub(crate) enum CommandError {
    /// The registry refused the request (exit 1); the message is printed as given.
    Rejected(String),
    /// Something else went wrong (exit 1).
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for CommandError {
    fn from(error: anyhow::Error) -> CommandError {
        CommandError::Failed(error)
    }
}

/// Renders an API error body (`{"error":{...}}`) as lines for the terminal.
pub(crate) fn describe_error(status: u16, body: &Value) -> String {
    let error = &body["error"];
    let mut text = match error["message"].as_str() {
        Some(message) => format!("{message} (HTTP {status})"),
        None => format!("HTTP {status}: {body}"),
    };
    if let Some(details) = error["details"].as_array() {
        for detail in details {
            if let (Some(field), Some(message)) =
                (detail["field"].as_str(), detail["message"].as_str())
            {
                text.push_str(&format!("\n  {field}: {message}"));
            }
        }
    }
    text
}

fn rejected(error: ApiError) -> CommandError {
    CommandError::Rejected(describe_error(error.status().as_u16(), &error.body()))
}

/// A registry to talk to.
pub(crate) enum Backend {
    /// The data directory, opened in this process.
    Local(Arc<AppState>),
    /// A server's native API.
    Remote {
        /// Base URL without a trailing slash.
        base: String,
        /// The HTTP agent.
        agent: ureq::Agent,
    },
}

impl Backend {
    /// Connects to `server` when given, else opens the configured data directory.
    pub(crate) fn open(
        server: Option<&str>,
        config: &Config,
        creates: bool,
    ) -> Result<Backend, CommandError> {
        if let Some(server) = server {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(60)))
                .http_status_as_error(false)
                .build()
                .into();
            let base = server.trim_end_matches('/');
            let base = if base.contains("://") {
                base.to_string()
            } else {
                format!("http://{base}")
            };
            return Ok(Backend::Remote { base, agent });
        }
        // A read of a data directory that does not exist is a mistake (a typo, or the wrong
        // working directory), not an empty registry.
        if !creates
            && config.store == StoreKind::Embedded
            && !config.data_dir.join(svcmeta_store::DATABASE_FILE).exists()
        {
            return Err(CommandError::Rejected(format!(
                "no registry in data directory {} (import or register something first, or pass --server URL)",
                config.data_dir.display()
            )));
        }
        let catalog = config.open_catalog()?;
        Ok(Backend::Local(Arc::new(AppState {
            catalog: Arc::new(catalog),
            settings: config.server.clone(),
        })))
    }

    fn call(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Value, CommandError> {
        let Backend::Remote { base, agent } = self else {
            return Err(CommandError::Failed(anyhow::anyhow!(
                "not a remote backend"
            )));
        };
        let url = format!("{base}{path_and_query}");
        let result = match (method, body) {
            ("GET", _) => agent.get(&url).call(),
            ("DELETE", _) => agent.delete(&url).call(),
            ("POST", Some(body)) => agent
                .post(&url)
                .header("content-type", "application/x-ndjson")
                .send(&body[..]),
            ("PUT", Some(body)) => agent
                .put(&url)
                .header("content-type", "application/json")
                .send(&body[..]),
            _ => {
                return Err(CommandError::Failed(anyhow::anyhow!(
                    "unsupported request {method}"
                )))
            }
        };
        let mut response = result.map_err(|e| {
            CommandError::Failed(anyhow::anyhow!("cannot reach the server at {base}: {e}"))
        })?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(|e| {
            CommandError::Failed(anyhow::anyhow!("reading the answer from {base}: {e}"))
        })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            return Err(CommandError::Rejected(describe_error(status, &value)));
        }
        Ok(value)
    }

    /// Registers drafts as one all-or-nothing request; returns the answer JSON.
    pub(crate) fn register(&self, drafts: Vec<InstanceDraft>) -> Result<Value, CommandError> {
        match self {
            Backend::Local(state) => {
                let count = drafts.len();
                let mutations = validate_all(drafts, state.catalog.limits())
                    .map_err(|e| rejected(ApiError::from(e)))?;
                let outcome = state
                    .catalog
                    .write_blocking(mutations)
                    .map_err(|e| rejected(ApiError::from(e)))?;
                Ok(
                    json!({"revision": outcome.revision, "registered": count, "changed": outcome.changed}),
                )
            }
            Backend::Remote { .. } => {
                let mut body = Vec::with_capacity(drafts.len() * 256);
                for draft in &drafts {
                    serde_json::to_writer(&mut body, draft)
                        .map_err(|e| CommandError::Failed(e.into()))?;
                    body.push(b'\n');
                }
                self.call("POST", "/api/v1/instances", Some(body))
            }
        }
    }

    /// Removes one instance.
    pub(crate) fn deregister(&self, id: &str) -> Result<Value, CommandError> {
        match self {
            Backend::Local(state) => {
                let outcome = state
                    .catalog
                    .write_blocking(vec![Mutation::Deregister(id.to_string())])
                    .map_err(|e| rejected(ApiError::from(e)))?;
                Ok(json!({"revision": outcome.revision, "deregistered": id}))
            }
            Backend::Remote { .. } => {
                let path = format!("/api/v1/instances/{}", encode_path(id));
                self.call("DELETE", &path, None)
            }
        }
    }

    /// Runs a list request given as query-string pairs; returns the list JSON.
    pub(crate) fn list(&self, pairs: &[(String, Option<String>)]) -> Result<Value, CommandError> {
        match self {
            Backend::Local(state) => {
                let request = parse_list_request(pairs, &state.settings).map_err(rejected)?;
                let plan = request
                    .explain
                    .then(|| state.catalog.explain(&request.query));
                let mut body = if request.count {
                    let (total, revision) = state.catalog.count(&request.query);
                    json!({"revision": revision, "total": total})
                } else {
                    let answer = state.catalog.query(&request.query, &request.page);
                    serde_json::to_value(&answer).map_err(|e| CommandError::Failed(e.into()))?
                };
                if let Some(plan) = plan {
                    body["plan"] = json!(plan);
                }
                Ok(body)
            }
            Backend::Remote { .. } => {
                let mut serializer = form_urlencoded::Serializer::new(String::new());
                for (key, value) in pairs {
                    match value {
                        Some(value) => {
                            serializer.append_pair(key, value);
                        }
                        None => {
                            serializer.append_key_only(key);
                        }
                    }
                }
                self.call(
                    "GET",
                    &format!("/api/v1/instances?{}", serializer.finish()),
                    None,
                )
            }
        }
    }

    /// The services listing JSON.
    pub(crate) fn services(&self) -> Result<Value, CommandError> {
        match self {
            Backend::Local(state) => {
                let (services, revision) = state.catalog.services();
                Ok(json!({"revision": revision, "services": services}))
            }
            Backend::Remote { .. } => self.call("GET", "/api/v1/services", None),
        }
    }

    /// The statistics JSON.
    pub(crate) fn stats(&self) -> Result<Value, CommandError> {
        match self {
            Backend::Local(state) => Ok(stats_body(state)),
            Backend::Remote { .. } => self.call("GET", "/api/v1/stats", None),
        }
    }
}

fn encode_path(segment: &str) -> String {
    form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
