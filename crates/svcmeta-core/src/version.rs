//! Version strings: lenient semver parsing and version criteria (exact or a range).
//!
//! `v2` is 2.0.0 and `1.4` is 1.4.0; a version that does not parse is an opaque string that
//! only an exact criterion can match. Ranges use Cargo's requirement syntax (`>=2.3`, `^2`,
//! `~1.4`, `>=1.0, <2.0`) as implemented by the `semver` crate.

use std::fmt;

use semver::{Version, VersionReq};

/// Parses a version leniently: an optional leading `v`, and missing minor/patch parts.
pub fn parse(text: &str) -> Option<Version> {
    let trimmed = text.strip_prefix(['v', 'V']).unwrap_or(text);
    if let Ok(version) = Version::parse(trimmed) {
        return Some(version);
    }
    // Split off pre-release / build suffixes, pad the numeric core, and try again.
    let core_end = trimmed.find(['-', '+']).unwrap_or(trimmed.len());
    let (core, suffix) = trimmed.split_at(core_end);
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty()
        || parts.len() > 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let mut padded = parts.join(".");
    for _ in parts.len()..3 {
        padded.push_str(".0");
    }
    padded.push_str(suffix);
    Version::parse(&padded).ok()
}

/// A version criterion of a query.
#[derive(Debug, Clone)]
pub enum VersionCriterion {
    /// The version string as given, and its semver reading if it has one: matches instances
    /// whose version is the same string or the same semver version (`v2` matches `2.0.0`).
    Exact {
        /// The text as given.
        text: String,
        /// The parsed version, when the text parses.
        parsed: Option<Version>,
    },
    /// A semver range; matches only versions that parse.
    Range {
        /// The text as given.
        text: String,
        /// The parsed requirement.
        req: VersionReq,
    },
}

impl PartialEq for VersionCriterion {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
    }
}

impl Eq for VersionCriterion {}

/// A version criterion that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version: bad version range {text:?}: {reason}")]
pub struct VersionCriterionError {
    /// The text as given.
    pub text: String,
    /// Why it is rejected.
    pub reason: String,
}

impl VersionCriterion {
    /// Parses `v2`, `1.4.0` (exact) or `>=2.3`, `^2`, `~1.4`, `>=1.0, <2.0`, `*` (ranges).
    pub fn parse(text: &str) -> Result<VersionCriterion, VersionCriterionError> {
        let trimmed = text.trim();
        let error = |reason: String| VersionCriterionError {
            text: text.to_string(),
            reason,
        };
        if trimmed.is_empty() {
            return Err(error("empty".to_string()));
        }
        let is_range = trimmed.starts_with(['>', '<', '=', '^', '~', '*'])
            || trimmed.contains(',')
            || trimmed.contains(' ');
        if !is_range {
            return Ok(VersionCriterion::Exact {
                text: trimmed.to_string(),
                parsed: parse(trimmed),
            });
        }
        // Accept a `v` after the operator (`>=v2.3`), as users write it.
        let cleaned = strip_v_after_operators(trimmed);
        VersionReq::parse(&cleaned)
            .map(|req| VersionCriterion::Range {
                text: trimmed.to_string(),
                req,
            })
            .map_err(|e| error(e.to_string()))
    }

    /// The text of the criterion as given (trimmed).
    pub fn text(&self) -> &str {
        match self {
            VersionCriterion::Exact { text, .. } | VersionCriterion::Range { text, .. } => text,
        }
    }

    /// Whether an instance version (as stored, with its parsed form) matches.
    pub fn matches(&self, version: &str, parsed: Option<&Version>) -> bool {
        match self {
            VersionCriterion::Exact {
                text,
                parsed: wanted,
            } => {
                // Semver equality ignores build metadata (`1.4.7` matches `1.4.7+build.5`).
                version == text
                    || matches!((wanted, parsed), (Some(w), Some(p)) if w.cmp_precedence(p).is_eq())
            }
            VersionCriterion::Range { req, .. } => parsed.is_some_and(|v| req.matches(v)),
        }
    }
}

impl fmt::Display for VersionCriterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

fn strip_v_after_operators(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut previous_is_operator_or_start = true;
    for c in text.chars() {
        if (c == 'v' || c == 'V') && previous_is_operator_or_start {
            continue;
        }
        previous_is_operator_or_start = matches!(c, '>' | '<' | '=' | '^' | '~' | ',' | ' ');
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_parse_pads_and_strips_v() {
        assert_eq!(parse("v2"), Some(Version::new(2, 0, 0)));
        assert_eq!(parse("1.4"), Some(Version::new(1, 4, 0)));
        assert_eq!(parse("1.4.2"), Some(Version::new(1, 4, 2)));
        assert_eq!(parse("V3.1").map(|v| v.to_string()), Some("3.1.0".into()));
        assert_eq!(
            parse("1.4-rc1").map(|v| v.to_string()),
            Some("1.4.0-rc1".into())
        );
        assert_eq!(parse("alpine"), None);
        assert_eq!(parse("1.2.3.4"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("v"), None);
    }

    #[test]
    fn criteria_match_as_documented() {
        let check = |criterion: &str, version: &str| {
            VersionCriterion::parse(criterion)
                .unwrap()
                .matches(version, parse(version).as_ref())
        };
        assert!(check("v2", "v2"));
        assert!(check("v2", "2.0.0"));
        assert!(check("1.4.7", "1.4.7+build.5"));
        assert!(!check("1.4.7", "1.4.7-rc1"));
        assert!(!check("v2", "v2.1"));
        assert!(check(">=2.3", "2.3.0"));
        assert!(check(">=2.3", "v2.10"));
        assert!(!check(">=2.3", "2.2.9"));
        assert!(check("^2", "2.9.1"));
        assert!(!check("^2", "3.0.0"));
        assert!(check("~1.4", "1.4.7"));
        assert!(!check("~1.4", "1.5.0"));
        assert!(check(">=1.0, <2.0", "1.9.9"));
        assert!(!check(">=1.0, <2.0", "2.0.0"));
        assert!(check(">=v1.0", "1.2.0"));
        assert!(check("alpine", "alpine"));
        assert!(!check(">=1.0", "alpine"));
    }

    #[test]
    fn bad_ranges_are_errors() {
        for bad in [">=", ">=x.y", "^^2", ">=1.0,, <2", ""] {
            assert!(VersionCriterion::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
