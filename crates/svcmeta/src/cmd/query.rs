//! `svcmeta query`: flags → list-request parameters → pages → table, JSON or ids.

use anyhow::Context;
use serde_json::{json, Value};

use crate::backend::{Backend, CommandError};
use crate::cli::{Criteria, Output, QueryArgs};

/// Turns the flags into the same parameters the HTTP API takes.
pub(crate) fn pairs(args: &Criteria) -> Vec<(String, Option<String>)> {
    let mut pairs: Vec<(String, Option<String>)> = Vec::new();
    let mut push = |key: &str, value: &str| pairs.push((key.to_string(), Some(value.to_string())));
    if let Some(v) = &args.service {
        push("service", v);
    }
    if let Some(v) = &args.env {
        push("env", v);
    }
    if let Some(v) = &args.region {
        push("region", v);
    }
    for v in &args.tag {
        push("tag", v);
    }
    for v in &args.tag_any {
        push("tag_any", v);
    }
    for v in &args.tag_not {
        push("tag_not", v);
    }
    if let Some(v) = &args.version {
        push("version", v);
    }
    if let Some(v) = &args.health {
        push("health", v);
    }
    if let Some(v) = &args.filter {
        push("filter", v);
    }
    for criterion in &args.meta {
        match criterion.split_once('=') {
            Some((key, value)) => pairs.push((format!("meta.{key}"), Some(value.to_string()))),
            None => pairs.push((format!("meta.{criterion}"), None)),
        }
    }
    pairs
}

/// Runs the query, following cursors until `--limit` or the end.
pub(crate) fn run(backend: &Backend, args: &QueryArgs) -> Result<(), CommandError> {
    let base = pairs(&args.criteria);
    if args.count {
        let mut request = base.clone();
        request.push(("count".into(), Some("true".into())));
        if args.explain {
            request.push(("explain".into(), Some("true".into())));
        }
        let answer = backend.list(&request)?;
        if args.output == Output::Json {
            super::out!("{}", serde_json::to_string_pretty(&answer).context("json")?);
        } else {
            print_plan(&answer);
            super::out!("{}", answer["total"]);
        }
        return Ok(());
    }
    let mut instances: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut first: Option<Value> = None;
    loop {
        let mut request = base.clone();
        if let Some(limit) = args.limit.map(|l| l as usize) {
            let remaining = limit.saturating_sub(instances.len()).max(1);
            request.push(("limit".into(), Some(remaining.min(1000).to_string())));
        }
        if let Some(cursor) = &cursor {
            request.push(("cursor".into(), Some(cursor.clone())));
        }
        if args.explain && first.is_none() {
            request.push(("explain".into(), Some("true".into())));
        }
        let answer = backend.list(&request)?;
        if let Some(page) = answer["instances"].as_array() {
            instances.extend(page.iter().cloned());
        }
        cursor = answer["next_cursor"].as_str().map(str::to_string);
        if first.is_none() {
            first = Some(answer);
        }
        let enough = args
            .limit
            .map(|l| l as usize)
            .is_some_and(|limit| instances.len() >= limit);
        if cursor.is_none() || enough {
            break;
        }
    }
    if let Some(limit) = args.limit.map(|l| l as usize) {
        instances.truncate(limit);
    }
    let first = first.unwrap_or(Value::Null);
    match args.output {
        Output::Json => {
            let mut body = json!({
                "revision": first["revision"],
                "total": first["total"],
                "instances": instances,
            });
            if let Some(plan) = first.get("plan") {
                body["plan"] = plan.clone();
            }
            super::out!("{}", serde_json::to_string_pretty(&body).context("json")?);
        }
        Output::Ids => {
            print_plan(&first);
            for instance in &instances {
                super::out!("{}", instance["id"].as_str().unwrap_or_default());
            }
        }
        Output::Table => {
            print_plan(&first);
            let rows: Vec<Vec<String>> = instances
                .iter()
                .map(|i| {
                    let text = |key: &str| i[key].as_str().unwrap_or("").to_string();
                    vec![
                        text("id"),
                        text("service"),
                        text("address"),
                        i["port"].to_string(),
                        text("version"),
                        text("environment"),
                        text("region"),
                        text("health"),
                        i["tags"]
                            .as_array()
                            .map(|t| {
                                t.iter()
                                    .filter_map(Value::as_str)
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            super::print_table(
                &[
                    "ID", "SERVICE", "ADDRESS", "PORT", "VERSION", "ENV", "REGION", "HEALTH",
                    "TAGS",
                ],
                &rows,
            );
            eprintln!(
                "{} of {} instances (revision {})",
                instances.len(),
                first["total"],
                first["revision"]
            );
        }
    }
    Ok(())
}

fn print_plan(answer: &Value) {
    if let Some(plan) = answer["plan"].as_array() {
        eprintln!("plan (smallest posting list first):");
        for step in plan {
            eprintln!(
                "  {:<40} postings {:>10}  remaining {:>10}",
                step["criterion"].as_str().unwrap_or_default(),
                step["postings"],
                step["remaining"]
            );
        }
    }
}
