//! The data model: what a client sends ([`InstanceDraft`]), what validation lets through
//! ([`Registration`]), and what the registry holds ([`Instance`]).
//!
//! Plain data only. The rules live in `validate.rs`; revisions and timestamps are assigned by
//! the registry when a registration is applied.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A registration as a client sends it, before any rule has been checked.
///
/// Every field is as loose as the wire allows so that validation, not deserialisation,
/// reports what is wrong (a port of 70000 is a validation error naming the limit).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceDraft {
    /// Unique instance id; required.
    #[serde(default)]
    pub id: String,
    /// Service name; required.
    #[serde(default)]
    pub service: String,
    /// Host name or IP; empty means "use the node's address".
    #[serde(default)]
    pub address: String,
    /// Port; must fit in a u16.
    #[serde(default)]
    pub port: i64,
    /// Tags in the order given; duplicates are removed by validation.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Version string, semver where it parses.
    #[serde(default)]
    pub version: Option<String>,
    /// Environment slug.
    #[serde(default)]
    pub environment: Option<String>,
    /// Region slug.
    #[serde(default)]
    pub region: Option<String>,
    /// Free-form metadata; a key given twice is an error, not a silent overwrite.
    #[serde(default, deserialize_with = "unique_keys::deserialize")]
    pub meta: BTreeMap<String, String>,
    /// Lease duration, Go syntax (`30s`, `1m30s`).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// Health of an instance, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Healthy; also the state of an instance without a check.
    Passing,
    /// Degraded.
    Warning,
    /// Failing, for instance an expired TTL lease.
    Critical,
}

impl Health {
    /// Every health value, in index order.
    pub const ALL: [Health; 3] = [Health::Passing, Health::Warning, Health::Critical];

    /// The lower-case word used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }

    /// Parses `passing`, `warning` or `critical`.
    pub fn parse(text: &str) -> Option<Health> {
        match text {
            "passing" => Some(Health::Passing),
            "warning" => Some(Health::Warning),
            "critical" => Some(Health::Critical),
            _ => None,
        }
    }

    pub(crate) fn slot(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A registration that passed every rule. Only `validate::validate` builds one.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub(crate) fields: InstanceFields,
}

impl Registration {
    /// The validated fields.
    pub fn fields(&self) -> &InstanceFields {
        &self.fields
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.fields.id
    }

    /// The strings the registry interns, as two parts that can be interned apart
    /// ([`crate::Registry::intern_labels`], [`crate::Registry::intern_meta`]).
    pub fn strings_mut(&mut self) -> (crate::LabelsMut<'_>, crate::MetaMut<'_>) {
        crate::index::split_strings(&mut self.fields)
    }
}

/// Immutable shared text. The registry interns tags, meta keys and values, versions,
/// environments and regions, so a million instances share a few thousand strings.
///
/// A thin pointer (8 bytes; the length lives with the bytes), so each tag slot of a record
/// and each half of a meta pair costs 8 bytes instead of the 16 of an `Arc<str>`.
pub type Text = arcstr::ArcStr;

/// Meta pairs sorted by key, keys unique: a compact map (a `BTreeMap` node costs several
/// hundred bytes even for four pairs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Boxed, not a `Vec`: a record's meta never grows, so it needs no capacity field.
    pairs: Box<[(Text, Text)]>,
}

impl Meta {
    /// The value of a key.
    pub fn get(&self, key: &str) -> Option<&Text> {
        self.pairs
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|n| &self.pairs[n].1)
    }

    /// Whether the key is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Pairs in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Text, &Text)> + '_ {
        self.pairs.iter().map(|(k, v)| (k, v))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there is no pair.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Mutable access to the pairs, for interning; keys must not change.
    pub(crate) fn pairs_mut(&mut self) -> &mut [(Text, Text)] {
        &mut self.pairs
    }
}

impl From<BTreeMap<String, String>> for Meta {
    fn from(map: BTreeMap<String, String>) -> Meta {
        Meta {
            pairs: map
                .into_iter()
                .map(|(k, v)| (Text::from(k), Text::from(v)))
                .collect(),
        }
    }
}

impl FromIterator<(Text, Text)> for Meta {
    fn from_iter<I: IntoIterator<Item = (Text, Text)>>(iter: I) -> Meta {
        let mut pairs: Vec<(Text, Text)> = iter.into_iter().collect();
        // Stored records give their pairs sorted by key already, each key once.
        if !pairs.is_sorted_by(|a, b| a.0 < b.0) {
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            // Keep the last value given for a key, like a map insert would.
            pairs.reverse();
            pairs.dedup_by(|later, earlier| later.0 == earlier.0);
            pairs.reverse();
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Meta {
            pairs: pairs.into_boxed_slice(),
        }
    }
}

impl Serialize for Meta {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.pairs.len()))?;
        for (key, value) in &self.pairs {
            map.serialize_entry(key.as_str(), value.as_str())?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Meta {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Meta, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(deserializer)?;
        Ok(Meta::from(map))
    }
}

/// The client-owned fields of an instance, after validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceFields {
    /// Unique id, `[A-Za-z0-9._:-]{1,128}`.
    pub id: String,
    /// Service name, `[A-Za-z0-9._-]{1,128}`; compared case-insensitively.
    pub service: Text,
    /// Host name or IP, possibly empty.
    pub address: String,
    /// Port, 0 when unknown.
    pub port: u16,
    /// Tags, de-duplicated, in the order first given (boxed: a record's tags never grow).
    pub tags: Box<[Text]>,
    /// Version, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Text>,
    /// Environment slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Text>,
    /// Region slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<Text>,
    /// Metadata; keys are unique by construction.
    #[serde(default)]
    pub meta: Meta,
    /// Lease length in milliseconds, when the instance must be renewed. On the wire it is a
    /// Go-style duration string (`"30s"`).
    #[serde(
        default,
        rename = "ttl",
        skip_serializing_if = "Option::is_none",
        with = "ttl_text"
    )]
    pub ttl_ms: Option<u64>,
}

impl InstanceFields {
    /// The service name as registered.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The version, if any.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The environment, if any.
    pub fn environment(&self) -> Option<&str> {
        self.environment.as_deref()
    }

    /// The region, if any.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// The tags, in order.
    pub fn tags(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.tags.iter().map(|t| t.as_ref())
    }

    /// Whether the instance has this exact tag.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| AsRef::<str>::as_ref(t) == tag)
    }

    /// The value of a meta key.
    pub fn meta_get(&self, key: &str) -> Option<&str> {
        self.meta.get(key).map(|v| v.as_ref())
    }

    /// Meta pairs ordered by key.
    pub fn meta_iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.meta.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    /// Number of meta pairs.
    pub fn meta_len(&self) -> usize {
        self.meta.len()
    }
}

/// An instance as the registry holds it: validated fields plus what the registry tracks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The validated, client-owned fields.
    #[serde(flatten)]
    pub fields: InstanceFields,
    /// Current health.
    pub health: Health,
    /// Revision of the write that first registered this id (kept across replacements).
    pub create_revision: u64,
    /// Revision of the latest write to this instance.
    pub modify_revision: u64,
    /// Unix milliseconds of the first registration.
    pub registered_at: u64,
    /// Unix milliseconds of the latest write.
    pub updated_at: u64,
}

impl Instance {
    /// The instance id.
    pub fn id(&self) -> &str {
        &self.fields.id
    }

    /// The service name as registered.
    pub fn service(&self) -> &str {
        &self.fields.service
    }
}

/// Formats milliseconds as a Go-style duration (`1m30s`, `250ms`).
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = ms / 1000;
    let mut out = String::new();
    let hours = secs / 3600;
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
        secs %= 3600;
    }
    let minutes = secs / 60;
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
        secs %= 60;
    }
    if secs > 0 {
        out.push_str(&format!("{secs}s"));
    }
    out
}

/// Parses a Go-style duration (`30s`, `1m30s`, `1500ms`, `1.5s`, `2h`) into milliseconds.
///
/// A bare number without a unit is rejected, as Go does.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_string());
    }
    if text == "0" {
        return Ok(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {text:?}"))?;
        if number_len == 0 {
            return Err(format!("invalid duration {text:?}"));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            unit => return Err(format!("unknown unit {unit:?} in duration {text:?}")),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > u64::MAX as f64 / 2.0 {
        return Err(format!("duration {text:?} is too long"));
    }
    Ok(total.round() as u64)
}

/// Serde adapter: an optional millisecond count written as a duration string.
mod ttl_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(ms) => s.serialize_str(&super::format_duration_ms(*ms)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| super::parse_duration_ms(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Serde adapter: a string map that rejects a key given twice.
mod unique_keys {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{MapAccess, Visitor};
    use serde::Deserializer;

    struct UniqueKeys;

    impl<'de> Visitor<'de> for UniqueKeys {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of string values")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = BTreeMap::new();
            while let Some((key, value)) = access.next_entry::<String, String>()? {
                if map.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!(
                        "meta key {key:?} is given twice"
                    )));
                }
                map.insert(key, value);
            }
            Ok(map)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, String>, D::Error> {
        d.deserialize_any(UniqueKeys)
    }
}
