//! svcmeta's own draft format: a JSON array of drafts, a single draft object, or NDJSON (one
//! draft per line, blank lines allowed).
//!
//! Drafts are deserialised as they are, so unknown fields are rejected by name (the draft type
//! denies them). It does not validate values (ids, limits, slugs): the registry does.

use serde_json::Value;
use svcmeta_core::InstanceDraft;

use super::{json_kind, json_message, Failure, Format, Location, Parsed};

/// True when the first non-blank line is a complete JSON object on its own, so a text that is
/// not one JSON value is a sequence of lines rather than a broken document.
pub(super) fn looks_like_ndjson(text: &str) -> bool {
    text.lines()
        .find(|line| !line.trim().is_empty())
        .is_some_and(|line| matches!(serde_json::from_str::<Value>(line), Ok(Value::Object(_))))
}

/// A JSON array of drafts; errors name the element index.
pub(super) fn from_array(items: Vec<Value>) -> Result<Parsed, Failure> {
    let mut drafts = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        if !item.is_object() {
            return Err(Failure::at(
                Location::Index(index),
                format!("expected a draft object, found {}", json_kind(&item)),
            ));
        }
        let draft = serde_json::from_value::<InstanceDraft>(item)
            .map_err(|err| Failure::at(Location::Index(index), json_message(&err)))?;
        drafts.push(draft);
    }
    Ok(Parsed {
        format: Format::Native,
        drafts,
        warnings: Vec::new(),
    })
}

/// A single draft object; errors carry the line and column.
pub(super) fn from_object(text: &str) -> Result<Parsed, Failure> {
    let draft = serde_json::from_str::<InstanceDraft>(text).map_err(|err| {
        Failure::at(
            Location::Line {
                line: err.line(),
                column: Some(err.column()),
            },
            json_message(&err),
        )
    })?;
    Ok(Parsed {
        format: Format::Native,
        drafts: vec![draft],
        warnings: Vec::new(),
    })
}

/// One draft per line; blank lines are skipped; errors carry the line number.
pub(super) fn from_ndjson(text: &str) -> Result<Parsed, Failure> {
    let mut drafts = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if !trimmed.starts_with('{') {
            return Err(Failure::at(
                Location::Line {
                    line: number,
                    column: None,
                },
                "expected a JSON object (one draft per line)",
            ));
        }
        let draft = serde_json::from_str::<InstanceDraft>(line).map_err(|err| {
            Failure::at(
                Location::Line {
                    line: number,
                    column: Some(err.column()),
                },
                json_message(&err),
            )
        })?;
        drafts.push(draft);
    }
    Ok(Parsed {
        format: Format::Native,
        drafts,
        warnings: Vec::new(),
    })
}
