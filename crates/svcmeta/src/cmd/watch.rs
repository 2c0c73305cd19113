//! `svcmeta watch`: follows the server's event stream and prints each matching change.
//!
//! Watching needs a server: a data directory opened in-process has no other writer to watch.
//! The stream is read as server-sent events; a `reset` event (history trimmed) ends the watch
//! with an error telling the user to re-list.

use std::io::{BufRead, BufReader};

use anyhow::Context;
use serde_json::Value;

use crate::backend::{describe_error, Backend, CommandError};
use crate::cli::{Output, WatchArgs};

/// Runs the watch until interrupted, `--max-events`, or the server ends the stream.
pub(crate) fn run(backend: &Backend, args: &WatchArgs) -> Result<(), CommandError> {
    let Backend::Remote { base, .. } = backend else {
        return Err(CommandError::Rejected(
            "watch needs a running server: pass --server URL (or set SVCMETA_SERVER)".to_string(),
        ));
    };
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (key, value) in super::query::pairs(&args.criteria) {
        match value {
            Some(value) => serializer.append_pair(&key, &value),
            None => serializer.append_key_only(&key),
        };
    }
    if let Some(since) = args.since {
        serializer.append_pair("since", &since.to_string());
    }
    let url = format!("{base}/api/v1/events?{}", serializer.finish());
    // No overall timeout: a watch lasts as long as the user wants.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(&url)
        .header("accept", "text/event-stream")
        .call()
        .map_err(|e| {
            CommandError::Failed(anyhow::anyhow!("cannot reach the server at {base}: {e}"))
        })?;
    let status = response.status().as_u16();
    if status >= 400 {
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        return Err(CommandError::Rejected(describe_error(status, &body)));
    }
    let reader = BufReader::new(response.into_body().into_reader());
    let mut kind = String::new();
    let mut data = String::new();
    let mut seen = 0u64;
    for line in reader.lines() {
        let line = line.context("reading the event stream")?;
        if let Some(value) = line.strip_prefix("event:") {
            kind = value.trim().to_string();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.trim_start());
        } else if line.is_empty() && !data.is_empty() {
            if kind == "reset" {
                let body: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                return Err(CommandError::Rejected(format!(
                    "{}; run the query again and watch --since its revision",
                    body["message"]
                        .as_str()
                        .unwrap_or("the server's history was trimmed")
                )));
            }
            print_event(&data, args.output);
            data.clear();
            kind.clear();
            seen += 1;
            if args.max_events.is_some_and(|max| seen >= max) {
                return Ok(());
            }
        }
    }
    Err(CommandError::Rejected(
        "the server ended the event stream (it is shutting down?); resume with --since the last revision seen".to_string(),
    ))
}

fn print_event(data: &str, output: Output) {
    if output == Output::Json {
        super::out!("{data}");
        return;
    }
    let event: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let instance = &event["instance"];
    let text = |value: &Value| value.as_str().unwrap_or("-").to_string();
    if output == Output::Ids {
        super::out!("{}", text(&instance["id"]));
        return;
    }
    super::out!(
        "{:<8} {:<10} {:<30} {:<20} {:<8} {}",
        event["revision"],
        text(&event["type"]),
        text(&instance["id"]),
        text(&instance["service"]),
        text(&instance["health"]),
        text(&instance["version"])
    );
}
