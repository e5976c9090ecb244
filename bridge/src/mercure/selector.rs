//! Topic selectors: `*` (every topic), an exact string, or an RFC 6570 URI template.
//!
//! A selector matches a topic when it is `*`, when it is byte-for-byte the topic, or when it is
//! a URI template (it holds a `{…}` expression) that the topic could be an expansion of. No
//! maintained Rust crate matches URI templates against URIs (the RFC 6570 crates expand only;
//! `uri-template-ex` extracts level 2 only and is a 0.0.x experiment), so this module compiles a
//! template into a regular expression: literals are escaped, and each expression becomes the
//! set of strings its operator can expand to (unreserved characters and percent-escapes for
//! `{x}`, plus the reserved set for `{+x}` and `{#x}`, with the operator's prefix and separators
//! for `.`, `/`, `;`, `?`, `&`; `:N` and `*` modifiers widen nothing further). Every variable
//! may be undefined, so every expression may be empty. The `regex` crate matches in linear
//! time and its compiled size is bounded, so a hostile template costs little.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use regex::Regex;

/// One compiled selector.
#[derive(Debug, Clone)]
pub enum Selector {
    Any,
    Exact(String),
    /// A URI template: the string (an exact match also counts) and its compiled form.
    Template(String, Arc<Regex>),
}

const U: &str = "(?:[A-Za-z0-9._~-]|%[0-9A-Fa-f]{2})";
const R: &str = "(?:[A-Za-z0-9._~:/?#\\[\\]@!$&'()*+,;=-]|%[0-9A-Fa-f]{2})";

/// The regular expression of one `{…}` expression's possible expansions.
fn expression(expr: &str) -> Option<String> {
    let (op, vars) = match expr.chars().next()? {
        c @ ('+' | '#' | '.' | '/' | ';' | '?' | '&') => (Some(c), &expr[1..]),
        _ => (None, expr),
    };
    let valid = vars.split(',').all(|v| {
        let name = v.trim_end_matches('*');
        let name = name.split_once(':').map_or(name, |(n, len)| {
            if len.bytes().all(|b| b.is_ascii_digit()) && !len.is_empty() {
                n
            } else {
                ""
            }
        });
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'%')
    });
    if !valid {
        return None;
    }
    // One prefixed part per variable, or any number when one is exploded (`{/path*}`).
    let reps = if vars.split(',').any(|v| v.ends_with('*')) {
        "*".to_string()
    } else {
        format!("{{0,{}}}", vars.split(',').count())
    };
    Some(match op {
        None => format!("(?:{U}|,)*"),
        Some('+') => format!("{R}*"),
        Some('#') => format!("(?:#{R}*)?"),
        Some('.') => format!("(?:\\.(?:{U}|,)*){reps}"),
        Some('/') => format!("(?:/(?:{U}|,)*){reps}"),
        Some(';') => format!("(?:;(?:{U}|[,=])*){reps}"),
        Some('?') => format!("(?:\\?(?:{U}|[,=&])*)?"),
        Some(_) => format!("(?:&(?:{U}|[,=])*){reps}"),
    })
}

/// The anchored regular expression of a URI template, or `None` if `t` is not one.
fn template_regex(t: &str) -> Option<Regex> {
    if !t.contains('{') {
        return None;
    }
    let mut re = String::from("^");
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        re.push_str(&regex::escape(&rest[..open]));
        let close = rest[open..].find('}')? + open;
        re.push_str(&expression(&rest[open + 1..close])?);
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return None;
    }
    re.push_str(&regex::escape(rest));
    re.push('$');
    regex::RegexBuilder::new(&re)
        .size_limit(1 << 20)
        .build()
        .ok()
}

impl Selector {
    pub fn parse(s: &str) -> Selector {
        if s == "*" {
            return Selector::Any;
        }
        match template_regex(s) {
            Some(re) => Selector::Template(s.to_string(), Arc::new(re)),
            None => Selector::Exact(s.to_string()),
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Selector::Any => true,
            Selector::Exact(s) => s == topic,
            Selector::Template(s, re) => s == topic || re.is_match(topic),
        }
    }
}

/// Does any of `selectors` match any of `topics`?
pub fn any_match(selectors: &[Selector], topics: &[String]) -> bool {
    selectors
        .iter()
        .any(|s| topics.iter().any(|t| s.matches(t)))
}

/// Compiled selectors from token claims, cached (tokens repeat; at most `CACHE` kept).
pub fn cached(list: &[String]) -> Vec<Selector> {
    const CACHE: usize = 4096;
    static C: Mutex<Option<HashMap<String, Selector>>> = Mutex::new(None);
    let mut guard = C.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() > CACHE {
        map.clear();
    }
    list.iter()
        .map(|s| {
            map.entry(s.clone())
                .or_insert_with(|| Selector::parse(s))
                .clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let t = Selector::parse("https://example.com/books/{id}");
        assert!(t.matches("https://example.com/books/1"));
        assert!(t.matches("https://example.com/books/a%20b"));
        assert!(!t.matches("https://example.com/books/1/reviews"));
        assert!(!t.matches("https://example.com/authors/1"));
        assert!(t.matches("https://example.com/books/{id}"));
        let r = Selector::parse("https://example.com/{+path}");
        assert!(r.matches("https://example.com/a/b/c"));
        let q = Selector::parse("/users{/id}{?fields}");
        assert!(q.matches("/users/3?fields=a,b"));
        assert!(q.matches("/users"));
        assert!(!q.matches("/users/3/x"));
        assert!(Selector::parse("/files{/path*}").matches("/files/a/b/c"));
        assert!(Selector::parse("*").matches("anything"));
        let e = Selector::parse("https://example.com/{");
        assert!(matches!(e, Selector::Exact(_)));
        assert!(e.matches("https://example.com/{"));
        assert!(!Selector::parse("foo").matches("Foo"));
        // Regex metacharacters in literals are literals.
        assert!(!Selector::parse("a.c/{x}").matches("abc/1"));
    }
}
