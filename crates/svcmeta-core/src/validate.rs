//! Validation: turns an [`InstanceDraft`] into a [`Registration`] or reports every rule it breaks.
//!
//! Limits come from the caller ([`Limits`]); nothing here reads configuration files or the
//! environment. Every violation names the field and the limit, and all of them are reported at
//! once so that a client can fix a registration in one round trip.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use crate::model::{parse_duration_ms, InstanceDraft, InstanceFields, Meta, Registration, Text};

/// The limits and rules a registration is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Maximum number of tags after de-duplication.
    pub max_tags: usize,
    /// Maximum length of one tag, in bytes.
    pub max_tag_len: usize,
    /// Maximum number of meta keys.
    pub max_meta_keys: usize,
    /// Maximum length of a meta key, in bytes.
    pub max_meta_key_len: usize,
    /// Maximum length of a meta value, in bytes.
    pub max_meta_value_len: usize,
    /// Maximum length of an id or a service name, in bytes.
    pub max_name_len: usize,
    /// Maximum length of an address, in bytes.
    pub max_address_len: usize,
    /// Maximum length of a version string, in bytes.
    pub max_version_len: usize,
    /// Maximum length of an environment or region slug, in bytes.
    pub max_slug_len: usize,
    /// When set, the only environments accepted.
    pub environments: Option<Vec<String>>,
    /// When set, the only regions accepted.
    pub regions: Option<Vec<String>>,
    /// Optional fields that must be present (`version`, `environment`, `region`, `address`, `port`).
    pub required: Vec<RequiredField>,
    /// Whether a version must parse as semver.
    pub version_format: VersionFormat,
}

impl Limits {
    /// The limits of DESIGN §1.
    pub fn standard() -> Limits {
        Limits {
            max_tags: 64,
            max_tag_len: 128,
            max_meta_keys: 64,
            max_meta_key_len: 128,
            max_meta_value_len: 512,
            max_name_len: 128,
            max_address_len: 255,
            max_version_len: 128,
            max_slug_len: 64,
            environments: None,
            regions: None,
            required: Vec::new(),
            version_format: VersionFormat::Any,
        }
    }
}

/// An optional field that the configuration can make mandatory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequiredField {
    /// `address` must be non-empty.
    Address,
    /// `port` must be non-zero.
    Port,
    /// `version` must be present.
    Version,
    /// `environment` must be present.
    Environment,
    /// `region` must be present.
    Region,
}

impl RequiredField {
    /// Parses a field name as written in the configuration.
    pub fn parse(text: &str) -> Option<RequiredField> {
        match text {
            "address" => Some(RequiredField::Address),
            "port" => Some(RequiredField::Port),
            "version" => Some(RequiredField::Version),
            "environment" | "env" => Some(RequiredField::Environment),
            "region" => Some(RequiredField::Region),
            _ => None,
        }
    }
}

/// How strictly versions are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionFormat {
    /// Any string; semver where it parses, opaque otherwise.
    Any,
    /// Must parse as (lenient) semver.
    Semver,
}

/// One broken rule: the field (`tags[3]`, `meta.team`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Path of the offending field.
    pub field: String,
    /// What is wrong, with the size and the limit where there is one.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every violation found in one registration, in field order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    /// The violations; never empty.
    pub violations: Vec<Violation>,
}

impl ValidationErrors {
    /// Prefixes every field path, e.g. with `[3].` for the fourth record of a bulk request.
    pub fn prefixed(mut self, prefix: &str) -> ValidationErrors {
        for violation in &mut self.violations {
            violation.field = format!("{prefix}{}", violation.field);
        }
        self
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, violation) in self.violations.iter().enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{violation}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Report {
    violations: Vec<Violation>,
}

impl Report {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.violations.push(Violation {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Checks a draft against the limits, returning the registration or every violation.
pub fn validate(draft: InstanceDraft, limits: &Limits) -> Result<Registration, ValidationErrors> {
    let mut report = Report::default();
    check_required(&mut report, &draft, limits);

    check_name(
        &mut report,
        "id",
        &draft.id,
        limits.max_name_len,
        is_id_char,
        "[A-Za-z0-9._:-]",
    );
    check_name(
        &mut report,
        "service",
        &draft.service,
        limits.max_name_len,
        is_service_char,
        "[A-Za-z0-9._-]",
    );
    check_address(&mut report, &draft.address, limits);
    let port = check_port(&mut report, draft.port);
    let tags = check_tags(&mut report, draft.tags, limits);
    check_version(&mut report, draft.version.as_deref(), limits);
    check_slug(
        &mut report,
        "environment",
        draft.environment.as_deref(),
        limits.max_slug_len,
        limits.environments.as_deref(),
    );
    check_slug(
        &mut report,
        "region",
        draft.region.as_deref(),
        limits.max_slug_len,
        limits.regions.as_deref(),
    );
    check_meta(&mut report, &draft.meta, limits);
    let ttl_ms = check_ttl(&mut report, draft.ttl.as_deref());

    if !report.violations.is_empty() {
        return Err(ValidationErrors {
            violations: report.violations,
        });
    }
    Ok(Registration {
        fields: InstanceFields {
            id: draft.id,
            service: Text::from(draft.service),
            address: draft.address,
            port,
            tags: tags.into_iter().map(Text::from).collect(),
            version: draft.version.map(Text::from),
            environment: draft.environment.map(Text::from),
            region: draft.region.map(Text::from),
            meta: Meta::from(draft.meta),
            ttl_ms,
        },
    })
}

/// Whether `version` would pass the version rule of [`validate`]; for mappings that keep a
/// value out of a field rather than reject it (Consul `Meta["version"]`).
pub fn version_is_valid(version: &str, limits: &Limits) -> bool {
    let mut report = Report::default();
    check_version(&mut report, Some(version), limits);
    report.violations.is_empty()
}

/// Whether `value` has the shape [`validate`] requires of an environment or region (a
/// lower-case slug within the length limit); the configured allowed lists are not consulted.
pub fn slug_is_valid(value: &str, limits: &Limits) -> bool {
    let mut report = Report::default();
    check_slug(&mut report, "", Some(value), limits.max_slug_len, None);
    report.violations.is_empty()
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

fn is_service_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn is_meta_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Describes the first character of `text` that `allowed` rejects, with its byte offset.
fn first_bad_char(text: &str, allowed: impl Fn(char) -> bool) -> Option<String> {
    text.char_indices()
        .find(|(_, c)| !allowed(*c))
        .map(|(offset, c)| {
            if c.is_control() {
                format!("control character U+{:04X} at byte {offset}", c as u32)
            } else {
                format!("character {c:?} at byte {offset}")
            }
        })
}

fn check_name(
    report: &mut Report,
    field: &str,
    value: &str,
    max_len: usize,
    allowed: fn(char) -> bool,
    class: &str,
) {
    if value.is_empty() {
        report.push(field, format!("required, must be 1 to {max_len} bytes"));
        return;
    }
    if value.len() > max_len {
        report.push(field, format!("{} bytes, limit {max_len}", value.len()));
    }
    if let Some(bad) = first_bad_char(value, allowed) {
        report.push(field, format!("{bad} is not allowed, use {class}"));
    }
}

fn check_address(report: &mut Report, address: &str, limits: &Limits) {
    if address.len() > limits.max_address_len {
        report.push(
            "address",
            format!("{} bytes, limit {}", address.len(), limits.max_address_len),
        );
    }
    let allowed =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']' | '%');
    if let Some(bad) = first_bad_char(address, allowed) {
        report.push(
            "address",
            format!("{bad} is not allowed in a host name or IP"),
        );
    }
}

fn check_port(report: &mut Report, port: i64) -> u16 {
    match u16::try_from(port) {
        Ok(port) => port,
        Err(_) => {
            report.push("port", format!("{port} is out of range 0 to 65535"));
            0
        }
    }
}

fn check_tags(report: &mut Report, tags: Vec<String>, limits: &Limits) -> Vec<String> {
    let mut unique: Vec<String> = Vec::with_capacity(tags.len().min(limits.max_tags + 1));
    // Small lists are de-duplicated by scanning; large ones by a set of borrowed strings.
    let mut seen: Option<HashSet<String>> = None;
    for (position, tag) in tags.into_iter().enumerate() {
        let field = || format!("tags[{position}]");
        if tag.is_empty() {
            report.push(
                field(),
                format!("empty, must be 1 to {} bytes", limits.max_tag_len),
            );
            continue;
        }
        if tag.len() > limits.max_tag_len {
            report.push(
                field(),
                format!("{} bytes, limit {}", tag.len(), limits.max_tag_len),
            );
        }
        if let Some(bad) = first_bad_char(&tag, |c| !c.is_control()) {
            report.push(field(), format!("{bad} is not allowed"));
        }
        let duplicate = match &mut seen {
            Some(set) => !set.insert(tag.clone()),
            None if unique.len() < 16 => unique.contains(&tag),
            None => {
                let mut set: HashSet<String> = unique.iter().cloned().collect();
                let duplicate = !set.insert(tag.clone());
                seen = Some(set);
                duplicate
            }
        };
        if !duplicate {
            unique.push(tag);
        }
    }
    if unique.len() > limits.max_tags {
        report.push(
            "tags",
            format!("{} distinct tags, limit {}", unique.len(), limits.max_tags),
        );
    }
    unique
}

fn check_version(report: &mut Report, version: Option<&str>, limits: &Limits) {
    let Some(version) = version else { return };
    if version.is_empty() {
        report.push("version", "empty; omit the field instead");
        return;
    }
    if version.len() > limits.max_version_len {
        report.push(
            "version",
            format!("{} bytes, limit {}", version.len(), limits.max_version_len),
        );
    }
    if let Some(bad) = first_bad_char(version, |c| !c.is_control() && !c.is_whitespace()) {
        report.push("version", format!("{bad} is not allowed"));
    }
    if limits.version_format == VersionFormat::Semver && crate::version::parse(version).is_none() {
        report.push(
            "version",
            format!("{version:?} is not a semantic version (like 1.4.2 or v2)"),
        );
    }
}

fn check_slug(
    report: &mut Report,
    field: &str,
    value: Option<&str>,
    max_len: usize,
    allowed: Option<&[String]>,
) {
    let Some(value) = value else { return };
    if value.is_empty() {
        report.push(field, "empty; omit the field instead");
        return;
    }
    if value.len() > max_len {
        report.push(field, format!("{} bytes, limit {max_len}", value.len()));
    }
    let mut chars = value.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok {
        report.push(
            field,
            format!("{value:?} must start with a lower-case letter or digit"),
        );
    } else if let Some(bad) = first_bad_char(value, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
    }) {
        report.push(
            field,
            format!("{bad} is not allowed, use a lower-case slug [a-z0-9._-]"),
        );
    }
    if let Some(allowed) = allowed {
        if !allowed.iter().any(|a| a == value) {
            report.push(
                field,
                format!(
                    "{value:?} is not one of the allowed values: {}",
                    allowed.join(", ")
                ),
            );
        }
    }
}

fn check_meta(report: &mut Report, meta: &BTreeMap<String, String>, limits: &Limits) {
    if meta.len() > limits.max_meta_keys {
        report.push(
            "meta",
            format!("{} keys, limit {}", meta.len(), limits.max_meta_keys),
        );
    }
    for (key, value) in meta {
        let field = || format!("meta.{key}");
        if key.is_empty() {
            report.push(
                "meta",
                format!(
                    "empty key, keys must be 1 to {} bytes",
                    limits.max_meta_key_len
                ),
            );
        } else {
            if key.len() > limits.max_meta_key_len {
                report.push(
                    field(),
                    format!(
                        "key is {} bytes, limit {}",
                        key.len(),
                        limits.max_meta_key_len
                    ),
                );
            }
            if let Some(bad) = first_bad_char(key, is_meta_key_char) {
                report.push(
                    field(),
                    format!("{bad} is not allowed in a key, use [A-Za-z0-9_.-]"),
                );
            }
        }
        if value.len() > limits.max_meta_value_len {
            report.push(
                field(),
                format!(
                    "value is {} bytes, limit {}",
                    value.len(),
                    limits.max_meta_value_len
                ),
            );
        }
        if let Some(bad) = first_bad_char(value, |c| !c.is_control() || c == '\t') {
            report.push(field(), format!("{bad} is not allowed in a value"));
        }
    }
}

fn check_ttl(report: &mut Report, ttl: Option<&str>) -> Option<u64> {
    let ttl = ttl?;
    match parse_duration_ms(ttl) {
        Ok(0) => {
            report.push("ttl", format!("{ttl} is shorter than the minimum of 1ms"));
            None
        }
        Ok(ms) if ms > 7 * 24 * 3_600_000 => {
            report.push("ttl", format!("{ttl} is longer than the limit of 168h"));
            None
        }
        Ok(ms) => Some(ms),
        Err(reason) => {
            report.push("ttl", reason);
            None
        }
    }
}

fn check_required(report: &mut Report, draft: &InstanceDraft, limits: &Limits) {
    for field in &limits.required {
        let (name, missing) = match field {
            RequiredField::Address => ("address", draft.address.is_empty()),
            RequiredField::Port => ("port", draft.port == 0),
            RequiredField::Version => ("version", draft.version.is_none()),
            RequiredField::Environment => ("environment", draft.environment.is_none()),
            RequiredField::Region => ("region", draft.region.is_none()),
        };
        if missing {
            report.push(name, "required by the configuration");
        }
    }
}

#[cfg(test)]
mod tests;
