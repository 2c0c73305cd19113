//! `?filter=` on the Consul endpoints: Consul's selector names per endpoint, translated to
//! the core's filter language, with errors in Consul's plain-text shape.
//!
//! Each Consul endpoint has its own selectors (go-bexpr validates them against the row type):
//! `ServiceMeta.team` on `/v1/catalog/service`, `Service.Meta.team` on `/v1/health/service`,
//! `Meta.team` on `/v1/agent/services`. This module finds the selectors of an expression (a
//! small walk over the same tokens and grammar as the core parser), rejects those the endpoint
//! does not have or svcmeta cannot answer, rewrites the others to the core's names
//! (`Service.Meta.team` → `ServiceMeta.team`), and lets the core parse the result. Error
//! positions are mapped back to the text the client sent.
//!
//! It does not evaluate anything: the handlers evaluate the parsed filter on each instance's
//! Consul view (with version, environment and region as Meta keys).

use svcmeta_core::{parse_filter, Filter, FilterLimits};

/// The row type a Consul endpoint filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/v1/catalog/service/{name}` and `/v1/catalog/services` (`ServiceNode`).
    Catalog,
    /// `/v1/health/service/{name}` (`CheckServiceNode`).
    Health,
    /// `/v1/agent/services` (`AgentService`).
    Agent,
    /// `/v1/catalog/nodes` (`Node`).
    Nodes,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Catalog => "/v1/catalog/service",
            Endpoint::Health => "/v1/health/service",
            Endpoint::Agent => "/v1/agent/services",
            Endpoint::Nodes => "/v1/catalog/nodes",
        }
    }

    fn selectors(self) -> &'static str {
        match self {
            Endpoint::Catalog => {
                "Node, Datacenter, NodeMeta, NodeMeta.KEY, ServiceID, ServiceName, ServiceAddress, \
                 ServicePort, ServiceTags, ServiceMeta, ServiceMeta.KEY"
            }
            Endpoint::Health => {
                "Node.Node, Node.Datacenter, Node.Meta, Node.Meta.KEY, Service.ID, \
                 Service.Service, Service.Address, Service.Port, Service.Tags, Service.Meta, \
                 Service.Meta.KEY"
            }
            Endpoint::Agent => "ID, Service, Address, Port, Tags, Meta, Meta.KEY",
            Endpoint::Nodes => "Node, Datacenter, Meta, Meta.KEY",
        }
    }

    /// The core name of a Consul selector head (the word before any map key), `Err(true)` for
    /// a Consul selector svcmeta cannot answer, `Err(false)` for one the endpoint lacks.
    /// `keyed` tells whether a map key follows (`.KEY` or `["KEY"]`).
    fn translate(self, head: &str, keyed: bool) -> Result<String, bool> {
        let map = |core: &str| Ok(core.to_string());
        match (self, head, keyed) {
            (Endpoint::Catalog, "Node" | "Datacenter", false) => map(head),
            (Endpoint::Catalog, "NodeMeta" | "ServiceMeta", _) => map(head),
            (
                Endpoint::Catalog,
                "ServiceID" | "ServiceName" | "ServiceAddress" | "ServicePort" | "ServiceTags",
                false,
            ) => map(head),
            (
                Endpoint::Catalog,
                "ID"
                | "Address"
                | "TaggedAddresses"
                | "ServiceKind"
                | "ServiceEnableTagOverride"
                | "ServiceWeights"
                | "ServiceTaggedAddresses"
                | "ServiceConnect"
                | "ServiceProxy"
                | "ServiceSocketPath"
                | "PeerName",
                _,
            ) => Err(true),

            (Endpoint::Health, "Node.Node", false) => map("Node"),
            (Endpoint::Health, "Node.Datacenter", false) => map("Datacenter"),
            (Endpoint::Health, "Node.Meta", _) => map("NodeMeta"),
            (Endpoint::Health, "Service.ID", false) => map("ServiceID"),
            (Endpoint::Health, "Service.Service", false) => map("ServiceName"),
            (Endpoint::Health, "Service.Address", false) => map("ServiceAddress"),
            (Endpoint::Health, "Service.Port", false) => map("ServicePort"),
            (Endpoint::Health, "Service.Tags", false) => map("ServiceTags"),
            (Endpoint::Health, "Service.Meta", _) => map("ServiceMeta"),
            (Endpoint::Health, "Checks", _) => Err(true),
            (Endpoint::Health, other, _)
                if [
                    "Node.ID",
                    "Node.Address",
                    "Node.TaggedAddresses",
                    "Node.PeerName",
                    "Service.Kind",
                    "Service.EnableTagOverride",
                    "Service.Weights",
                    "Service.TaggedAddresses",
                    "Service.Connect",
                    "Service.Proxy",
                    "Service.PeerName",
                    "Service.SocketPath",
                ]
                .iter()
                .any(|known| other == *known || other.starts_with(&format!("{known}.")))
                    || other.starts_with("Checks.") =>
            {
                Err(true)
            }

            (Endpoint::Agent, "ID" | "Service" | "Address" | "Port" | "Tags", false) => map(head),
            (Endpoint::Agent, "Meta", _) => map(head),
            (
                Endpoint::Agent,
                "Kind" | "EnableTagOverride" | "Weights" | "TaggedAddresses" | "Connect" | "Proxy"
                | "SocketPath" | "Datacenter",
                _,
            ) => Err(true),

            (Endpoint::Nodes, "Node" | "Datacenter", false) => map(head),
            (Endpoint::Nodes, "Meta", _) => map("NodeMeta"),
            (Endpoint::Nodes, "ID" | "Address" | "TaggedAddresses" | "PeerName", _) => Err(true),
            _ => Err(false),
        }
    }
}

/// A filter that cannot be used: the message is the whole plain-text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConsulFilterError(pub(crate) String);

/// Consul's prefix of filter errors, kept so that clients matching on it still do.
const PREFIX: &str = "Failed to create boolean expression evaluator";

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word,
    Str,
    LParen,
    RParen,
    LBracket,
    RBracket,
    EqNe,
    End,
}

#[derive(Debug, Clone)]
struct Token<'a> {
    tok: Tok,
    text: &'a str,
    start: usize,
    end: usize,
}

fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']' | '"' | '`' | '=' | '!')
}

/// The core lexer's tokens (only their kinds and spans); `None` when the text does not lex,
/// which the core parser then reports.
fn lex(text: &str) -> Option<Vec<Token<'_>>> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let (tok, end) = match c {
            '(' | ')' | '[' | ']' => {
                chars.next();
                let tok = match c {
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    '[' => Tok::LBracket,
                    _ => Tok::RBracket,
                };
                (tok, start + 1)
            }
            '=' | '!' => {
                chars.next();
                chars.next_if(|&(_, next)| next == '=')?;
                (Tok::EqNe, start + 2)
            }
            '`' => {
                chars.next();
                let close = text[start + 1..].find('`')?;
                let end = start + 1 + close + 1;
                while chars.next_if(|&(i, _)| i < end).is_some() {}
                (Tok::Str, end)
            }
            '"' => {
                chars.next();
                let end = loop {
                    let (i, c) = chars.next()?;
                    match c {
                        '"' => break i + 1,
                        '\\' => {
                            chars.next()?;
                        }
                        _ => {}
                    }
                };
                (Tok::Str, end)
            }
            _ => {
                let mut end = start;
                while let Some((i, c)) = chars.next_if(|&(_, c)| !is_delimiter(c)) {
                    end = i + c.len_utf8();
                }
                (Tok::Word, end)
            }
        };
        tokens.push(Token {
            tok,
            text: &text[start..end],
            start,
            end,
        });
    }
    tokens.push(Token {
        tok: Tok::End,
        text: "",
        start: text.len(),
        end: text.len(),
    });
    Some(tokens)
}

/// A selector found in the expression: its word token and whether a `[key]` follows it.
#[derive(Debug, Clone)]
struct Found {
    token: usize,
    bracket: bool,
}

/// Walks the grammar of `svcmeta_core`'s parser, collecting selectors; stops at the first
/// syntax error (the core reports it).
struct Walker<'t, 'a> {
    tokens: &'t [Token<'a>],
    found: Vec<Found>,
}

impl Walker<'_, '_> {
    fn tok(&self, at: usize) -> &Tok {
        self.tokens.get(at).map_or(&Tok::End, |t| &t.tok)
    }

    fn word(&self, at: usize, keyword: &str) -> bool {
        self.tokens
            .get(at)
            .is_some_and(|t| t.tok == Tok::Word && t.text == keyword)
    }

    fn or(&mut self, at: usize) -> Option<usize> {
        let mut at = self.and(at)?;
        while self.word(at, "or") {
            at = self.and(at + 1)?;
        }
        Some(at)
    }

    fn and(&mut self, at: usize) -> Option<usize> {
        let mut at = self.not(at)?;
        while self.word(at, "and") {
            at = self.not(at + 1)?;
        }
        Some(at)
    }

    fn not(&mut self, at: usize) -> Option<usize> {
        if self.word(at, "not") && *self.tok(at + 1) != Tok::EqNe {
            return self.not(at + 1);
        }
        self.primary(at)
    }

    fn primary(&mut self, at: usize) -> Option<usize> {
        match self.tok(at) {
            Tok::LParen => {
                let at = self.or(at + 1)?;
                (*self.tok(at) == Tok::RParen).then_some(at + 1)
            }
            Tok::Word | Tok::Str => self.matcher(at),
            _ => None,
        }
    }

    fn selector(&mut self, at: usize) -> Option<usize> {
        if *self.tok(at) != Tok::Word {
            return None;
        }
        let adjacent = self
            .tokens
            .get(at + 1)
            .zip(self.tokens.get(at))
            .is_some_and(|(open, word)| open.tok == Tok::LBracket && open.start == word.end);
        self.found.push(Found {
            token: at,
            bracket: adjacent,
        });
        if adjacent {
            if !matches!(self.tok(at + 2), Tok::Word | Tok::Str)
                || *self.tok(at + 3) != Tok::RBracket
            {
                return None;
            }
            return Some(at + 4);
        }
        Some(at + 1)
    }

    fn value(&self, at: usize) -> Option<usize> {
        matches!(self.tok(at), Tok::Word | Tok::Str).then_some(at + 1)
    }

    fn matcher(&mut self, at: usize) -> Option<usize> {
        let value_first = *self.tok(at) == Tok::Str
            || self.word(at + 1, "in")
            || (self.word(at + 1, "not") && self.word(at + 2, "in"));
        if value_first {
            let mut next = at + 1;
            if self.word(next, "not") {
                next += 1;
            }
            if !self.word(next, "in") {
                return None;
            }
            return self.selector(next + 1);
        }
        let at = self.selector(at)?;
        match self.tok(at) {
            Tok::EqNe => self.value(at + 1),
            _ if self.word(at, "contains") || self.word(at, "matches") => self.value(at + 1),
            _ if self.word(at, "is") => {
                let at = if self.word(at + 1, "not") {
                    at + 2
                } else {
                    at + 1
                };
                self.word(at, "empty").then_some(at + 1)
            }
            _ if self.word(at, "not")
                && (self.word(at + 1, "contains") || self.word(at + 1, "matches")) =>
            {
                self.value(at + 2)
            }
            _ => None,
        }
    }
}

/// One rewritten span: the original `[from, to)` became `new` text.
#[derive(Debug)]
struct Replacement {
    from: usize,
    to: usize,
    original: String,
    new: String,
}

/// Line, column (in characters) and byte offset of `offset` in `text`.
fn locate(text: &str, offset: usize) -> (usize, usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1, offset)
}

fn error_at(text: &str, offset: usize, message: &str) -> ConsulFilterError {
    let (line, column, offset) = locate(text, offset);
    ConsulFilterError(format!("{PREFIX}: {line}:{column} ({offset}): {message}"))
}

/// Parses a Consul filter for `endpoint`; `Ok(None)` for a blank one (no filter).
pub(crate) fn compile(
    text: &str,
    endpoint: Endpoint,
    limits: &FilterLimits,
) -> Result<Option<Filter>, ConsulFilterError> {
    if svcmeta_core::is_blank_filter(text) {
        return Ok(None);
    }
    let mut replacements = Vec::new();
    if text.len() <= limits.max_len {
        if let Some(tokens) = lex(text) {
            let mut walker = Walker {
                tokens: &tokens,
                found: Vec::new(),
            };
            let _ = walker.or(0);
            for found in walker.found {
                let token = &tokens[found.token];
                let word = token.text;
                // Map selectors: everything after `Meta.` (or `NodeMeta.`, `Node.Meta.`,
                // `Service.Meta.`) is the key, as in the core.
                let (head, key) = split_key(word, endpoint);
                let keyed = key.is_some() || found.bracket;
                match endpoint.translate(head, keyed) {
                    Ok(core) => {
                        if core != head {
                            let new = match key {
                                Some(key) => format!("{core}.{key}"),
                                None => core,
                            };
                            replacements.push(Replacement {
                                from: token.start,
                                to: token.end,
                                original: word.to_string(),
                                new,
                            });
                        }
                    }
                    Err(true) => {
                        return Err(error_at(
                            text,
                            token.start,
                            &format!(
                            "selector {word:?} is not supported by svcmeta on {} (supported: {})",
                            endpoint.path(),
                            endpoint.selectors()
                        ),
                        ))
                    }
                    Err(false) => {
                        return Err(error_at(
                            text,
                            token.start,
                            &format!(
                                "Selector {word:?} is not valid on {} (valid: {})",
                                endpoint.path(),
                                endpoint.selectors()
                            ),
                        ))
                    }
                }
            }
        }
    }
    let mut rewritten = String::with_capacity(text.len() + 16);
    let mut last = 0;
    for replacement in &replacements {
        rewritten.push_str(&text[last..replacement.from]);
        rewritten.push_str(&replacement.new);
        last = replacement.to;
    }
    rewritten.push_str(&text[last..]);
    match parse_filter(&rewritten, limits) {
        Ok(filter) => Ok(Some(filter)),
        Err(error) if error.is_blank() => Ok(None),
        Err(error) => {
            let offset = original_offset(&replacements, error.offset);
            let mut message = error.message.clone();
            let mut names: Vec<&Replacement> = replacements.iter().collect();
            names.sort_by_key(|r| std::cmp::Reverse(r.new.len()));
            for replacement in names {
                message = message.replace(&replacement.new, &replacement.original);
            }
            Err(error_at(text, offset, &message))
        }
    }
}

/// Splits a selector word into its head and its dotted map key, for the endpoint's map
/// selectors.
fn split_key(word: &str, endpoint: Endpoint) -> (&str, Option<&str>) {
    let maps: &[&str] = match endpoint {
        Endpoint::Catalog => &["NodeMeta", "ServiceMeta"],
        Endpoint::Health => &["Node.Meta", "Service.Meta"],
        Endpoint::Agent | Endpoint::Nodes => &["Meta"],
    };
    for map in maps {
        if let Some(rest) = word.strip_prefix(map) {
            if let Some(key) = rest.strip_prefix('.') {
                return (map, Some(key));
            }
        }
    }
    (word, None)
}

/// The offset in the client's text of an offset in the rewritten text.
fn original_offset(replacements: &[Replacement], offset: usize) -> usize {
    let mut shift: isize = 0;
    for replacement in replacements {
        let new_start = (replacement.from as isize + shift) as usize;
        let new_end = new_start + replacement.new.len();
        if offset < new_start {
            break;
        }
        if offset < new_end {
            return replacement.from;
        }
        shift += replacement.new.len() as isize - (replacement.to - replacement.from) as isize;
    }
    (offset as isize - shift).max(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(text: &str, endpoint: Endpoint) -> String {
        compile(text, endpoint, &FilterLimits::standard())
            .map(|f| f.map(|f| f.to_string()).unwrap_or_default())
            .unwrap_or_else(|e| e.0)
    }

    #[test]
    fn selectors_are_translated_per_endpoint() {
        assert_eq!(
            canonical(
                r#"Service.Meta.region == "eu" and "v2" in Service.Tags"#,
                Endpoint::Health
            ),
            r#"Meta.region == "eu" and "v2" in Tags"#
        );
        assert_eq!(
            canonical(
                r#"Service.Meta["a.b"] == x or Node.Node == n"#,
                Endpoint::Health
            ),
            r#"Meta.a.b == "x" or Node == "n""#
        );
        assert_eq!(
            canonical(
                r#"ServiceMeta.team == core and NodeMeta.k is empty"#,
                Endpoint::Catalog
            ),
            r#"Meta.team == "core" and NodeMeta.k is empty"#
        );
        assert_eq!(
            canonical(r#"Meta.team == core and Port == 80"#, Endpoint::Agent),
            r#"Meta.team == "core" and Port == 80"#
        );
        // A value word is not a selector, even when it looks like one.
        assert_eq!(
            canonical(r#"Service.Service == Service.Tags"#, Endpoint::Health),
            r#"Service == "Service.Tags""#
        );
        assert_eq!(canonical("  ", Endpoint::Health), "");
    }

    #[test]
    fn foreign_and_unsupported_selectors_are_rejected_with_their_position() {
        let message = canonical(
            r#"Service.ID == a and ServiceTags is empty"#,
            Endpoint::Health,
        );
        assert!(
            message.starts_with(
                "Failed to create boolean expression evaluator: 1:21 (20): Selector \"ServiceTags\" is not valid"
            ),
            "{message}"
        );
        let message = canonical(r#"Version == "1""#, Endpoint::Catalog);
        assert!(
            message.contains("1:1 (0): Selector \"Version\""),
            "{message}"
        );
        let message = canonical(r#"Checks.Status == passing"#, Endpoint::Health);
        assert!(message.contains("not supported by svcmeta"), "{message}");
    }

    #[test]
    fn core_errors_point_into_the_original_text() {
        let message = canonical(r#"Service.Tags == "x""#, Endpoint::Health);
        assert!(
            message.starts_with("Failed to create boolean expression evaluator: 1:14 (13): "),
            "{message}"
        );
        assert!(message.contains("Service.Tags"), "{message}");
        let message = canonical(r#"Service.Meta.a == "x" and and"#, Endpoint::Health);
        assert!(message.contains("1:27 (26)"), "{message}");
    }
}
