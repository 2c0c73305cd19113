//! The parser of filter expressions: the grammar of Consul's `?filter=` (hashicorp go-bexpr),
//! with svcmeta's selectors and a few documented leniencies.
//!
//! ```text
//! filter     = ws* or-expr ws* END
//! or-expr    = and-expr { "or" and-expr }                  a or b or c   →  Or[a, b, c]
//! and-expr   = not-expr { "and" not-expr }                 a and b       →  And[a, b]
//! not-expr   = "not" not-expr | primary                    not > and > or
//! primary    = "(" or-expr ")" | match
//! match      = selector ( "==" | "!=" ) value
//!            | selector ( "contains" | "not" "contains" ) value
//!            | selector ( "matches" | "not" "matches" ) value       (value is a regex)
//!            | selector "is" [ "not" ] "empty"
//!            | value [ "not" ] "in" selector
//! selector   = WORD [ "[" ( STRING | WORD ) "]" ]          the "[" directly after the word
//! value      = STRING | WORD                               a WORD value is its own text
//!
//! STRING     = '"' { char | escape } '"'                   escapes: \" \\ \n \t \r \a \b \f \v
//!                                                          \uXXXX \UXXXXXXXX; others are errors
//!            | '`' { any char but '`' } '`'                raw, no escapes
//! WORD       = one or more chars that are neither whitespace nor ( ) [ ] " ` = !
//! ws         = any Unicode whitespace; it separates tokens and is otherwise ignored
//! ```
//!
//! Keywords (`and`, `or`, `not`, `in`, `contains`, `matches`, `is`, `empty`) are lower-case
//! words. A WORD selector is `Name` or `Name.rest`: for `Meta`, `ServiceMeta` and `NodeMeta`
//! the whole rest after the first dot is the key (`Meta.user.name` is key `user.name`), for
//! the other names a rest is an unknown selector. Selector names and their types:
//!
//! | selector (Consul alias)                         | type        |
//! |-------------------------------------------------|-------------|
//! | `ID` (`ServiceID`), `Service` (`ServiceName`), `Address` (`ServiceAddress`), `Version`, `Environment`, `Region`, `Health`, `Node`, `Datacenter`, `Meta.KEY` (`ServiceMeta.KEY`), `NodeMeta.KEY` | string |
//! | `Port` (`ServicePort`)                          | integer     |
//! | `Tags` (`ServiceTags`)                          | string list |
//! | `Meta` (`ServiceMeta`), `NodeMeta`              | string map  |
//!
//! Operators allowed per type: string — all; integer — `==`, `!=` (the value, bare or
//! quoted, must be an integer: decimal or with a `0x`/`0o`/`0b` prefix); list — `in`,
//! `not in`, `contains`, `not contains`, `is empty`, `is not empty` (whole elements); map —
//! the same, where `in` tests keys.
//!
//! Differences from go-bexpr v0.1.2, all of them leniencies except the last:
//! `\"` is accepted inside double-quoted strings; bare words may contain `-`, `.`, `:`, `/`
//! and letters of any script (any other character is an error: quote the value) (`Environment == eu-west`, `Meta.my-key`); whitespace around
//! operators and parentheses is optional (`not(a)`, `Port==80`); `is empty` is allowed on
//! string selectors (true when the value is absent or empty); and a bare `not` before `in`
//! is always the operator, so a literal value `not` must be quoted (`"not" in Tags`).
//!
//! An empty or all-whitespace text is not a filter: [`parse_filter`] answers it with a
//! [`FilterErrorKind::Blank`] error, which callers treat as "no filter" ([`is_blank`] tells
//! it beforehand; `query_with_filter` does it for them).
//!
//! Every limit is checked while parsing: the text length first, then the nesting depth
//! (each `(` and each `not` is one level) as the recursive descent goes down, so no input can
//! overflow the stack, and the compiled size of every regular expression.

use regex::RegexBuilder;

use super::filter::{Filter, Match, Op, Pattern, Selector, Value};

/// Bounds on a filter expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLimits {
    /// Maximum length of the expression, in bytes of UTF-8.
    pub max_len: usize,
    /// Maximum nesting depth: every `(` and every `not` is one level. Values above
    /// [`FilterLimits::HARD_MAX_DEPTH`] are treated as that value.
    pub max_depth: usize,
    /// Maximum compiled size of one regular expression, in bytes (`RegexBuilder::size_limit`).
    pub max_regex_bytes: usize,
}

impl FilterLimits {
    /// The depth never exceeded whatever the configuration says, so that parsing, evaluating,
    /// printing and dropping a filter cannot exhaust a thread's stack.
    pub const HARD_MAX_DEPTH: usize = 256;

    /// 4096 bytes, depth 32, 1 MiB per regular expression.
    pub fn standard() -> FilterLimits {
        FilterLimits {
            max_len: 4096,
            max_depth: 32,
            max_regex_bytes: 1 << 20,
        }
    }
}

impl Default for FilterLimits {
    fn default() -> FilterLimits {
        FilterLimits::standard()
    }
}

/// What kind of problem a [`FilterError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FilterErrorKind {
    /// The text is empty or only whitespace: there is no filter (not a client error).
    Blank,
    /// The text does not follow the grammar.
    Syntax,
    /// A selector that does not exist.
    UnknownSelector,
    /// An operator that the selector's type does not allow.
    InvalidOperator,
    /// A value that cannot be converted to the selector's type.
    InvalidValue,
    /// A regular expression that does not compile or is too large.
    InvalidRegex,
    /// The text is longer than `max_len`.
    TooLong,
    /// The nesting is deeper than `max_depth`.
    TooDeep,
}

/// A filter that cannot be used, with the position of the problem.
///
/// Displays as `filter: <line>:<column> (<offset>): <message>`; `offset` is in bytes from 0,
/// `line` and `column` count from 1, the column in characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter: {line}:{column} ({offset}): {message}")]
pub struct FilterError {
    /// What kind of problem.
    pub kind: FilterErrorKind,
    /// Byte offset of the problem in the text.
    pub offset: usize,
    /// Line of the problem, from 1.
    pub line: usize,
    /// Column of the problem in characters, from 1.
    pub column: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

impl FilterError {
    fn new(text: &str, offset: usize, kind: FilterErrorKind, message: String) -> FilterError {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        FilterError {
            kind,
            offset,
            line,
            column,
            message,
        }
    }

    /// Whether the text was blank: no filter rather than a bad one.
    pub fn is_blank(&self) -> bool {
        self.kind == FilterErrorKind::Blank
    }
}

/// Whether a filter text is empty or only whitespace, i.e. means "no filter".
pub fn is_blank(text: &str) -> bool {
    text.chars().all(char::is_whitespace)
}

/// Parses a filter expression, checking selectors, operators, values and limits.
///
/// A blank text, however long, gives a [`FilterErrorKind::Blank`] error (see [`is_blank`]).
pub fn parse_filter(text: &str, limits: &FilterLimits) -> Result<Filter, FilterError> {
    if is_blank(text) {
        return Err(FilterError::new(
            text,
            0,
            FilterErrorKind::Blank,
            "empty filter".to_string(),
        ));
    }
    if text.len() > limits.max_len {
        return Err(FilterError::new(
            text,
            limits.max_len,
            FilterErrorKind::TooLong,
            format!(
                "the filter is {} bytes long, limit {}",
                text.len(),
                limits.max_len
            ),
        ));
    }
    let tokens = lex(text)?;
    let mut parser = Parser {
        text,
        tokens,
        pos: 0,
        limits,
        max_depth: limits.max_depth.min(FilterLimits::HARD_MAX_DEPTH),
    };
    let filter = parser.parse_or(0)?;
    let token = parser.peek();
    match token.tok {
        Tok::End => Ok(filter),
        Tok::RParen => Err(parser.syntax(token.start, "unmatched \")\"".to_string())),
        _ => Err(parser.syntax(
            token.start,
            format!(
                "expected \"and\", \"or\" or the end of the filter, found {}",
                parser.describe(token)
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok<'a> {
    Word(&'a str),
    Str(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Eq,
    Ne,
    End,
}

#[derive(Debug, Clone)]
struct Token<'a> {
    tok: Tok<'a>,
    start: usize,
    end: usize,
}

fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']' | '"' | '`' | '=' | '!')
}

/// Characters a bare word may contain: letters and digits (any script), `_ - . : /`.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/')
}

fn lex(text: &str) -> Result<Vec<Token<'_>>, FilterError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let simple = match c {
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            '[' => Some(Tok::LBracket),
            ']' => Some(Tok::RBracket),
            _ => None,
        };
        if let Some(tok) = simple {
            chars.next();
            tokens.push(Token {
                tok,
                start,
                end: start + 1,
            });
            continue;
        }
        match c {
            '=' | '!' => {
                chars.next();
                if chars.next_if(|&(_, next)| next == '=').is_none() {
                    return Err(FilterError::new(
                        text,
                        start,
                        FilterErrorKind::Syntax,
                        format!("expected \"==\" or \"!=\", found {c:?}"),
                    ));
                }
                let tok = if c == '=' { Tok::Eq } else { Tok::Ne };
                tokens.push(Token {
                    tok,
                    start,
                    end: start + 2,
                });
            }
            '`' => {
                chars.next();
                let body_start = start + 1;
                let close = text[body_start..].find('`').ok_or_else(|| {
                    FilterError::new(
                        text,
                        start,
                        FilterErrorKind::Syntax,
                        "unterminated `raw string`".to_string(),
                    )
                })?;
                let end = body_start + close + 1;
                while chars.next_if(|&(i, _)| i < end).is_some() {}
                tokens.push(Token {
                    tok: Tok::Str(text[body_start..end - 1].to_string()),
                    start,
                    end,
                });
            }
            '"' => {
                chars.next();
                let mut value = String::new();
                let end = loop {
                    let Some((i, c)) = chars.next() else {
                        return Err(FilterError::new(
                            text,
                            start,
                            FilterErrorKind::Syntax,
                            "unterminated \"string\"".to_string(),
                        ));
                    };
                    match c {
                        '"' => break i + 1,
                        '\\' => value.push(unescape(text, i, &mut chars)?),
                        c => value.push(c),
                    }
                };
                tokens.push(Token {
                    tok: Tok::Str(value),
                    start,
                    end,
                });
            }
            _ => {
                let mut end = start;
                while let Some((i, c)) = chars.next_if(|&(_, c)| !is_delimiter(c)) {
                    if !is_word_char(c) {
                        return Err(FilterError::new(
                            text,
                            i,
                            FilterErrorKind::Syntax,
                            format!("unexpected character {c:?}; quote values that contain it (\"…\" or `…`)"),
                        ));
                    }
                    end = i + c.len_utf8();
                }
                tokens.push(Token {
                    tok: Tok::Word(&text[start..end]),
                    start,
                    end,
                });
            }
        }
    }
    tokens.push(Token {
        tok: Tok::End,
        start: text.len(),
        end: text.len(),
    });
    Ok(tokens)
}

/// Decodes the escape whose backslash is at `at`; `chars` is just past the backslash.
fn unescape(
    text: &str,
    at: usize,
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
) -> Result<char, FilterError> {
    let bad = |message: String| FilterError::new(text, at, FilterErrorKind::Syntax, message);
    let Some((_, c)) = chars.next() else {
        return Err(bad("unterminated \"string\"".to_string()));
    };
    let simple = match c {
        '"' => Some('"'),
        '\\' => Some('\\'),
        'n' => Some('\n'),
        't' => Some('\t'),
        'r' => Some('\r'),
        'a' => Some('\u{7}'),
        'b' => Some('\u{8}'),
        'f' => Some('\u{c}'),
        'v' => Some('\u{b}'),
        _ => None,
    };
    if let Some(decoded) = simple {
        return Ok(decoded);
    }
    let digits = match c {
        'u' => 4,
        'U' => 8,
        _ => {
            return Err(bad(format!(
                "unknown escape \"\\{c}\" in a string: write \"\\\\{c}\" for a backslash, or use a `raw string`"
            )))
        }
    };
    let mut code: u32 = 0;
    for _ in 0..digits {
        let digit = chars
            .next_if(|(_, d)| d.is_ascii_hexdigit())
            .and_then(|(_, d)| d.to_digit(16))
            .ok_or_else(|| {
                bad(format!(
                    "escape \"\\{c}\" needs {digits} hexadecimal digits"
                ))
            })?;
        code = code.saturating_mul(16).saturating_add(digit);
    }
    char::from_u32(code).ok_or_else(|| {
        bad(format!(
            "escape \"\\{c}{code:X}\" is not a Unicode scalar value"
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

/// The list of what may follow a selector, for errors.
const AFTER_SELECTOR: &str = "\"==\", \"!=\", \"contains\", \"in\", \"is\", \"matches\" or \"not\"";

const SELECTORS: &str = "ID, Service, Address, Port, Tags, Version, Environment, Region, Health, \
     Meta, Meta.KEY, Meta[\"KEY\"], Node, Datacenter, NodeMeta, NodeMeta.KEY, or the Consul names \
     ServiceID, ServiceName, ServiceAddress, ServicePort, ServiceTags, ServiceMeta, ServiceMeta.KEY";

const NAMES: [&str; 17] = [
    "ID",
    "ServiceID",
    "Service",
    "ServiceName",
    "Address",
    "ServiceAddress",
    "Port",
    "ServicePort",
    "Tags",
    "ServiceTags",
    "Version",
    "Environment",
    "Region",
    "Health",
    "Node",
    "Datacenter",
    "NodeMeta",
];

struct Parser<'a, 'l> {
    text: &'a str,
    tokens: Vec<Token<'a>>,
    pos: usize,
    limits: &'l FilterLimits,
    max_depth: usize,
}

/// A parsed selector with the span of its source text.
struct SelectorAt {
    selector: Selector,
    start: usize,
    end: usize,
}

impl<'a> Parser<'a, '_> {
    fn peek(&self) -> Token<'a> {
        self.peek_at(0)
    }

    fn peek_at(&self, ahead: usize) -> Token<'a> {
        match self.tokens.get(self.pos + ahead) {
            Some(token) => token.clone(),
            None => Token {
                tok: Tok::End,
                start: self.text.len(),
                end: self.text.len(),
            },
        }
    }

    fn is_word(&self, ahead: usize, keyword: &str) -> bool {
        matches!(self.tokens.get(self.pos + ahead), Some(Token { tok: Tok::Word(w), .. }) if *w == keyword)
    }

    fn bump(&mut self) -> Token<'a> {
        let token = self.peek();
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
        token
    }

    fn error(&self, offset: usize, kind: FilterErrorKind, message: String) -> FilterError {
        FilterError::new(self.text, offset, kind, message)
    }

    fn syntax(&self, offset: usize, message: String) -> FilterError {
        self.error(offset, FilterErrorKind::Syntax, message)
    }

    fn describe(&self, token: Token<'_>) -> String {
        match token.tok {
            Tok::End => "the end of the filter".to_string(),
            _ => format!("{:?}", &self.text[token.start..token.end]),
        }
    }

    fn deeper(&self, depth: usize, at: usize) -> Result<usize, FilterError> {
        let depth = depth + 1;
        if depth > self.max_depth {
            return Err(self.error(
                at,
                FilterErrorKind::TooDeep,
                format!(
                    "the filter nests deeper than {} levels (each \"(\" and \"not\" is one)",
                    self.max_depth
                ),
            ));
        }
        Ok(depth)
    }

    fn parse_or(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut items = vec![self.parse_and(depth)?];
        while self.is_word(0, "or") {
            self.bump();
            items.push(self.parse_and(depth)?);
        }
        Ok(match items.len() {
            1 => items.swap_remove(0),
            _ => Filter::Or(items),
        })
    }

    fn parse_and(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut items = vec![self.parse_not(depth)?];
        while self.is_word(0, "and") {
            self.bump();
            items.push(self.parse_not(depth)?);
        }
        Ok(match items.len() {
            1 => items.swap_remove(0),
            _ => Filter::And(items),
        })
    }

    fn parse_not(&mut self, depth: usize) -> Result<Filter, FilterError> {
        // A word "not" directly followed by "==" / "!=" is a selector (an unknown one).
        if self.is_word(0, "not") && !matches!(self.peek_at(1).tok, Tok::Eq | Tok::Ne) {
            let token = self.bump();
            let depth = self.deeper(depth, token.start)?;
            let inner = self.parse_not(depth)?;
            return Ok(Filter::Not(Box::new(inner)));
        }
        self.parse_primary(depth)
    }

    fn parse_primary(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let token = self.peek();
        match token.tok {
            Tok::LParen => {
                let depth = self.deeper(depth, token.start)?;
                self.bump();
                let inner = self.parse_or(depth)?;
                let close = self.peek();
                if close.tok != Tok::RParen {
                    let (line, column) = {
                        let e = self.syntax(token.start, String::new());
                        (e.line, e.column)
                    };
                    return Err(self.syntax(
                        close.start,
                        format!(
                            "expected \"and\", \"or\" or \")\" to close the \"(\" at {line}:{column}, found {}",
                            self.describe(close)
                        ),
                    ));
                }
                self.bump();
                Ok(inner)
            }
            Tok::Word(_) | Tok::Str(_) => self.parse_match(),
            _ => Err(self.syntax(
                token.start,
                format!(
                    "expected a selector, a value, \"not\" or \"(\", found {}",
                    self.describe(token)
                ),
            )),
        }
    }

    fn parse_match(&mut self) -> Result<Filter, FilterError> {
        let first = self.peek();
        let value_first = match first.tok {
            Tok::Str(_) => true,
            _ => self.is_word(1, "in") || (self.is_word(1, "not") && self.is_word(2, "in")),
        };
        if value_first {
            return self.parse_value_in_selector();
        }
        let selector = self.parse_selector()?;
        let op_token = self.peek();
        let source = &self.text[selector.start..selector.end];
        let op = match op_token.tok {
            Tok::Eq => Op::Equal,
            Tok::Ne => Op::NotEqual,
            Tok::Word("contains") => Op::In,
            Tok::Word("matches") => Op::Matches,
            Tok::Word("is") => {
                self.bump();
                let negated = self.is_word(0, "not");
                if negated {
                    self.bump();
                }
                if !self.is_word(0, "empty") {
                    let found = self.peek();
                    let wanted = if negated {
                        "\"empty\" after \"is not\""
                    } else {
                        "\"empty\" or \"not empty\" after \"is\""
                    };
                    return Err(self.syntax(
                        found.start,
                        format!("expected {wanted}, found {}", self.describe(found.clone())),
                    ));
                }
                let op = if negated { Op::IsNotEmpty } else { Op::IsEmpty };
                let last = self.bump();
                return self.build(selector, op, (op_token.start, last.end), None);
            }
            Tok::Word("not") => {
                self.bump();
                let op = match self.peek().tok {
                    Tok::Word("contains") => Op::NotIn,
                    Tok::Word("matches") => Op::NotMatches,
                    _ => {
                        let found = self.peek();
                        return Err(self.syntax(
                            found.start,
                            format!(
                                "expected \"contains\" or \"matches\" after \"not\", found {}",
                                self.describe(found.clone())
                            ),
                        ));
                    }
                };
                op
            }
            _ => {
                return Err(self.syntax(
                    op_token.start,
                    format!(
                        "expected {AFTER_SELECTOR} after selector {source}, found {}",
                        self.describe(op_token)
                    ),
                ))
            }
        };
        let op_end = self.bump();
        let value = self.peek();
        match value.tok {
            Tok::Word(_) | Tok::Str(_) => {
                self.bump();
                self.build(selector, op, (op_token.start, op_end.end), Some(value))
            }
            _ => Err(self.syntax(
                value.start,
                format!(
                    "expected a value after {:?}, found {}",
                    &self.text[op_token.start..op_end.end],
                    self.describe(value)
                ),
            )),
        }
    }

    /// `value [not] in selector`.
    fn parse_value_in_selector(&mut self) -> Result<Filter, FilterError> {
        let value = self.bump();
        let op_token = self.peek();
        let negated = self.is_word(0, "not");
        if negated {
            self.bump();
        }
        if !self.is_word(0, "in") {
            let found = self.peek();
            let shown = &self.text[value.start..value.end];
            return Err(self.syntax(
                found.start,
                format!(
                    "expected \"in\" or \"not in\" after the value {shown}, found {}",
                    self.describe(found.clone())
                ),
            ));
        }
        let in_token = self.bump();
        if !matches!(self.peek().tok, Tok::Word(_)) {
            let found = self.peek();
            return Err(self.syntax(
                found.start,
                format!(
                    "expected a selector after \"in\", found {}",
                    self.describe(found.clone())
                ),
            ));
        }
        let selector = self.parse_selector()?;
        let op = if negated { Op::NotIn } else { Op::In };
        self.build(selector, op, (op_token.start, in_token.end), Some(value))
    }

    fn parse_selector(&mut self) -> Result<SelectorAt, FilterError> {
        let token = self.peek();
        let Tok::Word(word) = token.tok else {
            return Err(self.syntax(
                token.start,
                format!("expected a selector, found {}", self.describe(token)),
            ));
        };
        self.bump();
        let mut end = token.end;
        let mut index = None;
        let open = self.peek();
        if open.tok == Tok::LBracket && open.start == token.end {
            self.bump();
            let key = self.bump();
            let key_text = match key.tok {
                Tok::Str(s) => s,
                Tok::Word(w) => w.to_string(),
                _ => {
                    return Err(self.syntax(
                        key.start,
                        format!(
                            "expected a quoted key after \"[\", found {}",
                            self.describe(key)
                        ),
                    ))
                }
            };
            let close = self.bump();
            if close.tok != Tok::RBracket {
                return Err(self.syntax(
                    close.start,
                    format!("expected \"]\", found {}", self.describe(close)),
                ));
            }
            end = close.end;
            index = Some(key_text);
        }
        let unknown = |detail: String| {
            self.error(
                token.start,
                FilterErrorKind::UnknownSelector,
                format!(
                    "unknown selector {:?}{detail}",
                    &self.text[token.start..end]
                ),
            )
        };
        let (head, rest) = match word.split_once('.') {
            Some((head, rest)) => (head, Some(rest)),
            None => (word, None),
        };
        let plain = match head {
            "ID" | "ServiceID" => Some(Selector::Id),
            "Service" | "ServiceName" => Some(Selector::Service),
            "Address" | "ServiceAddress" => Some(Selector::Address),
            "Port" | "ServicePort" => Some(Selector::Port),
            "Tags" | "ServiceTags" => Some(Selector::Tags),
            "Version" => Some(Selector::Version),
            "Environment" => Some(Selector::Environment),
            "Region" => Some(Selector::Region),
            "Health" => Some(Selector::Health),
            "Node" => Some(Selector::Node),
            "Datacenter" => Some(Selector::Datacenter),
            _ => None,
        };
        let selector = if let Some(selector) = plain {
            if rest.is_some() || index.is_some() {
                return Err(unknown(format!(
                    ": {head} is {} and has no fields or keys",
                    selector.kind().name()
                )));
            }
            selector
        } else if matches!(head, "Meta" | "ServiceMeta" | "NodeMeta") {
            let node = head == "NodeMeta";
            let key = match (rest, index) {
                (None, None) => None,
                (Some(key), None) if !key.is_empty() => Some(key.to_string()),
                (Some(_), None) => {
                    return Err(unknown(format!(": write {head}.KEY or {head}[\"KEY\"]")))
                }
                (None, Some(key)) => Some(key),
                (Some(_), Some(_)) => {
                    return Err(unknown(format!(
                    ": a meta value is a string and has no keys; write {head}[\"a.b\"] for key a.b"
                )))
                }
            };
            match (node, key) {
                (false, None) => Selector::Meta,
                (false, Some(key)) => Selector::MetaKey(key),
                (true, None) => Selector::NodeMeta,
                (true, Some(key)) => Selector::NodeMetaKey(key),
            }
        } else {
            let hint = NAMES
                .iter()
                .chain(["Meta", "ServiceMeta"].iter())
                .find(|name| name.eq_ignore_ascii_case(head))
                .map(|name| format!(" (selectors are case-sensitive: did you mean {name}?)"))
                .unwrap_or_else(|| format!("; expected one of {SELECTORS}"));
            return Err(unknown(hint));
        };
        Ok(SelectorAt {
            selector,
            start: token.start,
            end,
        })
    }

    /// Checks the operator against the selector's type and converts the value.
    fn build(
        &self,
        selector: SelectorAt,
        op: Op,
        (op_start, op_end): (usize, usize),
        value: Option<Token<'_>>,
    ) -> Result<Filter, FilterError> {
        let kind = selector.selector.kind();
        let source = &self.text[selector.start..selector.end];
        if !kind.allows(op) {
            let written: Vec<&str> = self.text[op_start..op_end].split_whitespace().collect();
            return Err(self.error(
                op_start,
                FilterErrorKind::InvalidOperator,
                format!(
                    "operator \"{}\" is not allowed on {source} ({}); use {}",
                    written.join(" "),
                    kind.name(),
                    kind.allowed_words()
                ),
            ));
        }
        let value = match value {
            None => Value::None,
            Some(token) => {
                let text = match &token.tok {
                    Tok::Str(s) => s.as_str(),
                    Tok::Word(w) => w,
                    _ => "",
                };
                if kind == super::filter::Kind::Int {
                    match parse_int(text) {
                        Some(n) => Value::Int(n),
                        None => {
                            return Err(self.error(
                                token.start,
                                FilterErrorKind::InvalidValue,
                                format!("value {text:?} is not an integer, as {source} needs"),
                            ))
                        }
                    }
                } else if matches!(op, Op::Matches | Op::NotMatches) {
                    Value::Regex(compile(text, self.limits).map_err(|message| {
                        self.error(token.start, FilterErrorKind::InvalidRegex, message)
                    })?)
                } else {
                    Value::Str(text.to_string())
                }
            }
        };
        Ok(Filter::Match(Match::new(selector.selector, op, value)))
    }
}

/// Parses an integer as Go's `strconv.ParseInt(text, 0, 64)` would, without `_` separators.
fn parse_int(text: &str) -> Option<i64> {
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = unsigned.get(..2).map(str::to_ascii_lowercase);
    let (radix, digits) = match lower.as_deref() {
        Some("0x") => (16, &unsigned[2..]),
        Some("0o") => (8, &unsigned[2..]),
        Some("0b") => (2, &unsigned[2..]),
        _ => (10, unsigned),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let magnitude = i128::from_str_radix(digits, radix).ok()?;
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

/// Compiles a regular expression within the size limit; the error is one line.
fn compile(source: &str, limits: &FilterLimits) -> Result<Pattern, String> {
    RegexBuilder::new(source)
        .size_limit(limits.max_regex_bytes)
        .dfa_size_limit(limits.max_regex_bytes.max(1 << 16))
        .build()
        .map(|regex| Pattern::new(source.to_string(), regex))
        .map_err(|error| match error {
            regex::Error::CompiledTooBig(limit) => format!(
                "regular expression {source:?} is too large: its compiled form exceeds the limit of {limit} bytes"
            ),
            other => {
                let text = other.to_string();
                let reason = text
                    .lines()
                    .find_map(|line| line.strip_prefix("error: "))
                    .unwrap_or(text.as_str())
                    .trim()
                    .to_string();
                format!("invalid regular expression {source:?}: {reason}")
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_parse_as_go_does() {
        assert_eq!(parse_int("8080"), Some(8080));
        assert_eq!(parse_int("-1"), Some(-1));
        assert_eq!(parse_int("+7"), Some(7));
        assert_eq!(parse_int("0x1F90"), Some(8080));
        assert_eq!(parse_int("0o17"), Some(15));
        assert_eq!(parse_int("0b101"), Some(5));
        for bad in [
            "",
            "-",
            "80a",
            "8080.0",
            "0x",
            "0x+5",
            "1e3",
            " 1",
            "99999999999999999999",
        ] {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn errors_locate_lines_and_columns_in_characters() {
        let error = FilterError::new("ab\ncé d", 7, FilterErrorKind::Syntax, "x".into());
        assert_eq!((error.line, error.column, error.offset), (2, 4, 7));
        // An offset inside a character snaps back to its start.
        let error = FilterError::new("é", 1, FilterErrorKind::Syntax, "x".into());
        assert_eq!((error.line, error.column, error.offset), (1, 1, 0));
        assert_eq!(error.to_string(), "filter: 1:1 (0): x");
    }
}
