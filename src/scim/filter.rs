//! SCIM filters (RFC 7644 §3.4.2.2): parsed against the resource type's schemas, so that an
//! attribute the server does not know, an operator it does not support or a value of the wrong type
//! is an `invalidFilter` error, never a filter silently ignored (an ignored filter answers with the
//! whole directory, and the IdP links the first row: the wrong user).

use serde_json::Value;

use super::attrs::{Target, target};
use crate::error::ScimError;
use crate::policy::scim::{Kind, SchemaDef};

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone)]
pub enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Present(Target),
    Compare(Target, Op, Value),
    /// `attr[filter]`, optionally `.sub op value` after it: some element matches the filter (and its
    /// `sub` the comparison).
    Within(Target, Box<Filter>, Option<(String, Op, Value)>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    Word(String),
    Text(String),
}

/// Deepest nesting of parentheses, `not` and value filters, and most tokens: a hostile filter must
/// not exhaust the stack (parsing, matching and dropping it all recurse).
const MAX_DEPTH: usize = 32;
const MAX_TOKENS: usize = 1000;

fn invalid(detail: impl Into<String>) -> ScimError {
    ScimError::invalid_filter(detail)
}

fn tokenize(text: &str) -> Result<Vec<Token>, ScimError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | '[' | ']' => {
                chars.next();
                tokens.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    '[' => Token::OpenBracket,
                    _ => Token::CloseBracket,
                });
            }
            '"' => {
                // A JSON string: its escapes are JSON's.
                let mut end = None;
                let mut escaped = false;
                for (i, c) in text[at + 1..].char_indices() {
                    match (escaped, c) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = Some(at + 1 + i);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.ok_or_else(|| invalid("a string that does not end"))?;
                let value: String =
                    serde_json::from_str(&text[at..=end]).map_err(|e| invalid(format!("the string at {at}: {e}")))?;
                tokens.push(Token::Text(value));
                while chars.peek().is_some_and(|&(i, _)| i <= end) {
                    chars.next();
                }
            }
            _ => {
                let mut word = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c.is_whitespace() || "()[]\"".contains(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
        if tokens.len() > MAX_TOKENS {
            return Err(invalid(format!("longer than {MAX_TOKENS} tokens")));
        }
    }
    Ok(tokens)
}

/// Parses `text` for a resource type described by `schemas`.
pub fn parse(text: &str, schemas: &'static [SchemaDef]) -> Result<Filter, ScimError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser { tokens, at: 0, schemas, within: None, depth: 0 };
    let filter = parser.or()?;
    if parser.at != parser.tokens.len() {
        return Err(invalid(format!("unexpected `{}`", parser.describe())));
    }
    Ok(filter)
}

/// Parses the filter inside `attr[...]` of a PATCH path: names are `outer`'s sub-attributes.
pub fn parse_within(text: &str, schemas: &'static [SchemaDef], outer: Target) -> Result<Filter, ScimError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser { tokens, at: 0, schemas, within: Some(outer), depth: 0 };
    let filter = parser.or()?;
    if parser.at != parser.tokens.len() {
        return Err(invalid(format!("unexpected `{}`", parser.describe())));
    }
    Ok(filter)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    schemas: &'static [SchemaDef],
    /// Inside `attr[...]`: attribute names are that attribute's sub-attributes.
    within: Option<Target>,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn describe(&self) -> String {
        match self.peek() {
            Some(Token::Word(w)) => w.clone(),
            Some(Token::Text(t)) => format!("\"{t}\""),
            Some(t) => format!("{t:?}"),
            None => "the end".into(),
        }
    }

    fn keyword(&mut self, word: &str) -> bool {
        let found = matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word));
        self.at += usize::from(found);
        found
    }

    fn expect(&mut self, token: &Token, what: &str) -> Result<(), ScimError> {
        if self.peek() != Some(token) {
            return Err(invalid(format!("expected {what}, found `{}`", self.describe())));
        }
        self.at += 1;
        Ok(())
    }

    fn or(&mut self) -> Result<Filter, ScimError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(invalid(format!("nested deeper than {MAX_DEPTH}")));
        }
        let result = self.or_inner();
        self.depth -= 1;
        result
    }

    fn or_inner(&mut self) -> Result<Filter, ScimError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, ScimError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, ScimError> {
        if self.keyword("not") {
            self.expect(&Token::Open, "`(` after `not`")?;
            let inner = self.or()?;
            self.expect(&Token::Close, "`)`")?;
            return Ok(Filter::Not(Box::new(inner)));
        }
        if self.peek() == Some(&Token::Open) {
            self.at += 1;
            let inner = self.or()?;
            self.expect(&Token::Close, "`)`")?;
            return Ok(inner);
        }
        self.comparison()
    }

    fn path(&mut self) -> Result<Target, ScimError> {
        let Some(Token::Word(word)) = self.peek().cloned() else {
            return Err(invalid(format!("expected an attribute, found `{}`", self.describe())));
        };
        self.at += 1;
        let found = match &self.within {
            Some(outer) => outer.sub(&word),
            None => target(self.schemas, &word),
        };
        found.ok_or_else(|| invalid(format!("`{word}` is not an attribute here")))
    }

    fn comparison(&mut self) -> Result<Filter, ScimError> {
        let path = self.path()?;
        if self.peek() == Some(&Token::OpenBracket) {
            if self.within.is_some() || !path.is_multi_complex() {
                return Err(invalid(format!("`{}[...]` is not a multi-valued complex attribute", path.name())));
            }
            self.at += 1;
            let outer = self.within.replace(path.clone());
            let inner = self.or();
            self.within = outer;
            let inner = inner?;
            self.expect(&Token::CloseBracket, "`]`")?;
            // `emails[type eq "work"].value eq "x"`: IdPs send this shape in filters too.
            let then = match self.peek() {
                Some(Token::Word(w)) if w.starts_with('.') => {
                    let sub = w[1..].to_string();
                    self.at += 1;
                    let sub_target =
                        path.sub(&sub).ok_or_else(|| invalid(format!("`{sub}` is not a sub-attribute")))?;
                    let (op, value) = self.operator(&sub_target)?;
                    let op = op.ok_or_else(|| invalid("`pr` after a value filter"))?;
                    Some((sub_target.name().to_string(), op, value))
                }
                _ => None,
            };
            return Ok(Filter::Within(path, Box::new(inner), then));
        }
        match self.operator(&path)? {
            (None, _) => Ok(Filter::Present(path)),
            (Some(op), value) => Ok(Filter::Compare(path, op, value)),
        }
    }

    /// The operator and value after `path` (`None` for `pr`), checked against its type.
    fn operator(&mut self, path: &Target) -> Result<(Option<Op>, Value), ScimError> {
        let Some(Token::Word(word)) = self.peek().cloned() else {
            return Err(invalid(format!("expected an operator after `{}`", path.name())));
        };
        self.at += 1;
        let op = match word.to_ascii_lowercase().as_str() {
            "pr" => return Ok((None, Value::Null)),
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "co" => Op::Co,
            "sw" => Op::Sw,
            "ew" => Op::Ew,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            other => return Err(invalid(format!("`{other}` is not an operator"))),
        };
        let value = match self.peek().cloned() {
            Some(Token::Text(t)) => Value::String(t),
            Some(Token::Word(w)) if w == "true" || w == "false" => Value::Bool(w == "true"),
            Some(Token::Word(w)) if w == "null" => Value::Null,
            Some(Token::Word(w)) => {
                return Err(invalid(format!("`{w}`: a value is a JSON string, true, false or null")));
            }
            _ => return Err(invalid(format!("expected a value after `{word}`"))),
        };
        self.at += 1;
        let kind = path.compared_kind().ok_or_else(|| invalid(format!("`{}` cannot be compared", path.name())))?;
        let fits = match (&value, kind) {
            (Value::Null, _) => matches!(op, Op::Eq | Op::Ne),
            (Value::Bool(_), Kind::Boolean) => matches!(op, Op::Eq | Op::Ne),
            (Value::String(_), Kind::Boolean) => false,
            (Value::String(_), Kind::Binary) => matches!(op, Op::Eq | Op::Ne),
            (Value::String(_), _) => true,
            _ => false,
        };
        if !fits {
            return Err(invalid(format!("`{}` {word} {value}: not for a {kind:?} attribute", path.name())));
        }
        Ok((Some(op), value))
    }
}

/// Whether `resource` matches `filter`.
pub fn matches(filter: &Filter, resource: &Value) -> bool {
    match filter {
        Filter::And(a, b) => matches(a, resource) && matches(b, resource),
        Filter::Or(a, b) => matches(a, resource) || matches(b, resource),
        Filter::Not(inner) => !matches(inner, resource),
        Filter::Present(path) if path.sub.is_none() => path.elements(resource).iter().any(|v| present(v)),
        Filter::Present(path) => path.values(resource).iter().any(|v| present(v)),
        Filter::Compare(path, Op::Ne, value) => !compare_any(path, Op::Eq, value, resource),
        Filter::Compare(path, op, value) => compare_any(path, *op, value, resource),
        Filter::Within(path, inner, then) => path.elements(resource).iter().any(|element| {
            matches(inner, element)
                && then.as_ref().is_none_or(|(sub, op, value)| {
                    let target = path.sub(sub);
                    target.is_some_and(|t| compare_any(&t, *op, value, element))
                })
        }),
    }
}

fn present(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

fn compare_any(path: &Target, op: Op, expected: &Value, resource: &Value) -> bool {
    let values = path.values(resource);
    if expected.is_null() {
        return !values.iter().any(|v| present(v));
    }
    if path.compared_kind() == Some(Kind::DateTime) {
        let time = |v: &Value| v.as_str().and_then(|s| humantime::parse_rfc3339_weak(s).ok());
        let Some(wanted) = time(expected) else { return false };
        return values.iter().filter_map(|v| time(v)).any(|t| match op {
            Op::Eq | Op::Ne => t == wanted,
            Op::Gt => t > wanted,
            Op::Ge => t >= wanted,
            Op::Lt => t < wanted,
            Op::Le => t <= wanted,
            Op::Co | Op::Sw | Op::Ew => false,
        });
    }
    values.iter().any(|v| compare(v, op, expected, path.case_exact()))
}

fn compare(actual: &Value, op: Op, expected: &Value, case_exact: bool) -> bool {
    match (actual, expected) {
        (Value::Bool(a), Value::Bool(b)) => a == b,
        // IdPs send booleans as strings; stored values are real booleans, but be lenient on reads.
        (Value::String(a), Value::Bool(b)) => a.eq_ignore_ascii_case(if *b { "true" } else { "false" }),
        (Value::String(a), Value::String(b)) => {
            let (a, b) = if case_exact { (a.clone(), b.clone()) } else { (a.to_lowercase(), b.to_lowercase()) };
            match op {
                Op::Eq | Op::Ne => a == b,
                Op::Co => a.contains(&b),
                Op::Sw => a.starts_with(&b),
                Op::Ew => a.ends_with(&b),
                Op::Gt => a > b,
                Op::Ge => a >= b,
                Op::Lt => a < b,
                Op::Le => a <= b,
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::scim::{GROUP, USER};

    fn user() -> Value {
        json!({
            "id": "2819c223", "externalId": "ext-1", "userName": "Barbara.Jensen@example.com",
            "name": {"givenName": "Barbara", "familyName": "Jensen"}, "active": true,
            "emails": [{"value": "bjensen@example.com", "type": "work", "primary": true},
                       {"value": "babs@home.example", "type": "home"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Sales"},
            "meta": {"lastModified": "2026-11-30T10:00:00.000Z", "resourceType": "User"}
        })
    }

    fn check(text: &str) -> bool {
        matches(&parse(text, USER).unwrap_or_else(|e| panic!("{text}: {e:?}")), &user())
    }

    #[test]
    fn the_filters_idps_send_match_as_the_rfc_says() {
        for (text, want) in [
            ("userName eq \"barbara.jensen@example.com\"", true),
            ("USERNAME Eq \"BARBARA.JENSEN@EXAMPLE.COM\"", true),
            ("userName eq \"someone@example.com\"", false),
            ("externalId eq \"ext-1\"", true),
            ("externalId eq \"EXT-1\"", false),
            ("emails[type eq \"work\"].value eq \"bjensen@example.com\"", true),
            ("emails[type eq \"home\"].value eq \"bjensen@example.com\"", false),
            ("emails[type eq \"work\" and primary eq true]", true),
            ("emails.value co \"home\"", true),
            ("emails co \"babs\"", true),
            ("name.givenName sw \"bar\" and name.familyName ew \"sen\"", true),
            ("not (active eq true)", false),
            ("active eq false or userName pr", true),
            ("title pr", false),
            ("name pr", true),
            ("title eq null", true),
            ("userName ne \"x\"", true),
            ("meta.lastModified gt \"2026-01-01T00:00:00Z\"", true),
            ("meta.lastModified lt \"2026-01-01T00:00:00Z\"", false),
            ("meta.lastModified gt \"2026-11-30T10:00:00Z\"", false),
            ("meta.lastModified ge \"2026-11-30T10:00:00Z\"", true),
            ("meta.lastModified lt \"2026-11-30T10:00:00.500Z\"", true),
            ("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq \"sales\"", true),
            ("(userName eq \"x\" or id eq \"2819c223\") and active eq true", true),
            ("userName eq \"a \\\"quoted\\\" name\"", false),
        ] {
            assert_eq!(check(text), want, "{text}");
        }
    }

    #[test]
    fn members_filters_work_on_groups() {
        let group = json!({"displayName": "Admins", "members": [{"value": "u1"}, {"value": "u2"}]});
        for (text, want) in [
            ("members[value eq \"u2\"]", true),
            ("members[value eq \"u3\"]", false),
            ("displayName eq \"admins\"", true),
            ("members.value eq \"u1\"", true),
        ] {
            assert_eq!(matches(&parse(text, GROUP).unwrap(), &group), want, "{text}");
        }
    }

    #[test]
    fn what_is_not_understood_is_an_invalid_filter_never_ignored() {
        for text in [
            "",
            "userName",
            "userName eq",
            "userName eq bob",
            "userName equals \"bob\"",
            "colour eq \"red\"",
            "name.nothing eq \"x\"",
            "active gt true",
            "active eq \"yes\"",
            "userName eq \"x\" and",
            "(userName eq \"x\"",
            "userName eq \"x\")",
            "emails[type eq \"work\"",
            "emails[colour eq \"work\"]",
            "userName[value eq \"x\"]",
            "emails[type eq \"work\"].value pr",
            "userName eq \"unterminated",
            "not userName eq \"x\"",
            "userName eq 12",
        ] {
            let err = parse(text, USER).expect_err(text);
            assert_eq!(err.scim_type, Some("invalidFilter"), "{text}");
        }
        // Hostile sizes are refused, not recursed into.
        let deep = format!("{}userName eq \"x\"{}", "(".repeat(100_000), ")".repeat(100_000));
        let long = vec!["userName eq \"x\""; 5000].join(" and ");
        let deep_not = format!("{}userName pr{}", "not (".repeat(40), ")".repeat(40));
        for text in [deep.as_str(), long.as_str(), deep_not.as_str()] {
            let err = parse(text, USER).expect_err(text);
            assert_eq!(err.scim_type, Some("invalidFilter"), "{text}");
        }
    }
}
