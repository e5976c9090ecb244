//! `[[rpc.routes]]`: what a route says, its startup checks, and its topic templates.
//!
//! A route maps an HTTP path pattern (`/api/{id}`, `/files/{rest...}`) onto a request topic
//! template (`svc/{id}`). For the `topic` convention it also names where replies come: a reply
//! topic template (`reply_topic`, or the short form `reply_level`, which replaces the first level of
//! the request template), with the correlation id as one more last level. At start every route is
//! checked: captures exist, templates are valid, and the filter the bridge subscribes to for
//! replies cannot match a request topic of the same route (the bridge would take its own requests
//! as replies; see [`filters_overlap`]).

use std::collections::HashMap;

use axum::http::StatusCode;
use serde::Deserialize;

use crate::error::ApiError;

/// How a route's responders answer.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Convention {
    #[default]
    V5,
    Topic,
}

/// One `[[rpc.routes]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcRoute {
    /// HTTP methods served (empty: any).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path pattern: literal segments, `{name}` for one segment, `{name...}` (last) for the rest.
    pub path: String,
    /// Request topic template using the captures, e.g. `svc/users/{id}`.
    pub topic: String,
    #[serde(default)]
    pub convention: Convention,
    /// `topic` convention: JSON envelopes instead of raw bodies.
    #[serde(default)]
    pub envelope: bool,
    /// `topic` convention: the first topic level of replies (the short form of `reply_topic`).
    #[serde(default = "default_reply_level")]
    pub reply_level: String,
    /// `topic` convention: reply topic template (the correlation id is appended as a last level),
    /// e.g. `/$res/realtimeweb/{rest}`. Overrides `reply_level`.
    #[serde(default)]
    pub reply_topic: Option<String>,
    /// Default timeout of this route, in seconds.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Seconds a request waits for a responder to subscribe (0: 503 at once when none).
    #[serde(default)]
    pub wait_secs: Option<u64>,
}

fn default_reply_level() -> String {
    "res".into()
}

impl RpcRoute {
    /// The reply topic template of a `topic`-convention route (without the correlation level).
    pub fn reply_template(&self) -> String {
        match &self.reply_topic {
            Some(t) => t.clone(),
            None => {
                let rest = self.topic.split_once('/').map_or("", |(_, rest)| rest);
                format!("{}/{rest}", self.reply_level)
            }
        }
    }

    /// Captures that may span several topic levels (`{name...}` in the path).
    fn multi_captures(&self) -> Vec<&str> {
        self.path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix("...}"))
            .collect()
    }

    fn captures(&self) -> Vec<&str> {
        self.path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|s| s.strip_suffix("...").unwrap_or(s))
            .collect()
    }

    /// The MQTT filter that matches every topic `template` can produce, plus the correlation
    /// level when `corr`: literal levels stay, a level with a one-segment capture is `+`, a level
    /// with a many-segment capture ends the filter with `#`.
    fn filter_of(&self, template: &str, corr: bool) -> String {
        let multi = self.multi_captures();
        let mut levels: Vec<&str> = Vec::new();
        for level in template.split('/') {
            if !level.contains('{') {
                levels.push(level);
            } else if multi.iter().any(|m| level.contains(&format!("{{{m}}}"))) {
                levels.push("#");
                return levels.join("/");
            } else {
                levels.push("+");
            }
        }
        if corr {
            levels.push("+");
        }
        levels.join("/")
    }

    /// What the bridge subscribes to for this route's replies (`topic` convention).
    pub fn reply_filter(&self) -> String {
        self.filter_of(&self.reply_template(), true)
    }

    /// A filter matching every request topic of this route.
    pub fn request_filter(&self) -> String {
        self.filter_of(&self.topic, self.convention == Convention::Topic)
    }
}

/// Could some topic match both filters?
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('/'), b.split('/'));
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(x), Some(y)) => {
                if x != y && x != "+" && y != "+" {
                    return false;
                }
            }
        }
    }
}

const RESERVED: [&str; 11] = [
    "/topics",
    "/events",
    "/poll",
    "/mqtt",
    "/openapi.json",
    "/healthz",
    "/readyz",
    "/metrics",
    "/rpc",
    "/examples",
    "/dashboard",
];

/// Startup checks of one route.
pub fn validate(r: &RpcRoute) -> anyhow::Result<()> {
    anyhow::ensure!(
        r.path.starts_with('/'),
        "rpc route path {:?} must start with /",
        r.path
    );
    for reserved in RESERVED {
        anyhow::ensure!(
            r.path != reserved && !r.path.starts_with(&format!("{reserved}/")),
            "rpc route path {:?} is under the reserved {reserved}",
            r.path
        );
    }
    anyhow::ensure!(
        r.path != "/",
        "rpc route path / is reserved for the dashboard"
    );
    let segs: Vec<&str> = r.path[1..].split('/').collect();
    for (i, s) in segs.iter().enumerate() {
        if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let name = name.strip_suffix("...").unwrap_or(name);
            anyhow::ensure!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "rpc route {:?}: bad capture {s:?}",
                r.path
            );
            anyhow::ensure!(
                !s.ends_with("...}") || i == segs.len() - 1,
                "rpc route {:?}: {{name...}} must be last",
                r.path
            );
        } else {
            anyhow::ensure!(
                !s.contains(['{', '}']),
                "rpc route {:?}: bad segment {s:?}",
                r.path
            );
        }
    }
    check_template(r, "topic", &r.topic)?;
    match r.convention {
        Convention::V5 => anyhow::ensure!(
            r.reply_topic.is_none(),
            "rpc route {:?}: reply_topic applies to convention = \"topic\" only (MQTT 5 replies \
             go to the request's Response Topic)",
            r.path
        ),
        Convention::Topic => {
            let reply = r.reply_template();
            check_template(r, "reply topic", &reply).map_err(|e| {
                anyhow::anyhow!("{e} (set reply_topic, e.g. reply_topic = \"res/{{...}}\")")
            })?;
            let (req, rep) = (r.request_filter(), r.reply_filter());
            anyhow::ensure!(
                !filters_overlap(&req, &rep),
                "rpc route {:?}: its replies ({rep}) could match its own requests ({req}); \
                 choose a reply_topic (or reply_level) that differs from the request topic in a \
                 literal level",
                r.path
            );
        }
    }
    Ok(())
}

/// A template is not empty, does not start with `$` (clients cannot publish or be sent there),
/// has no wildcards, and names only captures of the path.
fn check_template(r: &RpcRoute, what: &str, t: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !t.is_empty() && !t.starts_with('$') && !t.contains(['+', '#']),
        "rpc route {:?}: bad {what} template {t:?} (empty, starting with $, or with wildcards)",
        r.path
    );
    let names = r.captures();
    let mut rest = t;
    while let Some(i) = rest.find('{') {
        let Some(j) = rest[i..].find('}') else {
            anyhow::bail!("rpc route {:?}: unclosed {{ in {what} {t:?}", r.path);
        };
        let name = rest[i + 1..i + j].trim_end_matches("...");
        anyhow::ensure!(
            names.contains(&name),
            "rpc route {:?}: {what} {t:?} names {{{name}}}, which the path does not capture",
            r.path
        );
        rest = &rest[i + j + 1..];
    }
    anyhow::ensure!(
        !rest.contains('}'),
        "rpc route {:?}: stray }} in {what} {t:?}",
        r.path
    );
    Ok(())
}

/// The axum path pattern of a route (`{name...}` becomes `{*name}`).
pub fn axum_path(r: &RpcRoute) -> String {
    r.path
        .split('/')
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix("...}")) {
                Some(name) => format!("{{*{name}}}"),
                None => s.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

/// Fills a topic template from captures.
pub fn fill(template: &str, captures: &HashMap<String, String>) -> Result<String, ApiError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find('}') else {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "bad topic template",
            ));
        };
        let name = rest[i + 1..i + j].trim_end_matches("...");
        let v = captures.get(name).ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("template names unknown capture {name}"),
            )
        })?;
        out.push_str(v);
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str, topic: &str, reply: Option<&str>, level: &str) -> RpcRoute {
        RpcRoute {
            methods: Vec::new(),
            path: path.into(),
            topic: topic.into(),
            convention: Convention::Topic,
            envelope: false,
            reply_level: level.into(),
            reply_topic: reply.map(str::to_string),
            timeout_secs: None,
            wait_secs: None,
        }
    }

    #[test]
    fn the_seed_echo_route_is_valid_and_its_filters_are_apart() {
        let r = route(
            "/realtimeweb/{rest...}",
            "/$req/realtimeweb/{rest}",
            Some("/$res/realtimeweb/{rest}"),
            "res",
        );
        validate(&r).unwrap();
        assert_eq!(r.reply_filter(), "/$res/realtimeweb/#");
        assert_eq!(r.request_filter(), "/$req/realtimeweb/#");
    }

    #[test]
    fn reply_level_is_the_short_form() {
        let r = route("/svc/{x}", "req/svc/{x}", None, "res");
        assert_eq!(r.reply_template(), "res/svc/{x}");
        assert_eq!(r.reply_filter(), "res/svc/+/+");
        validate(&r).unwrap();
    }

    #[test]
    fn overlapping_reply_filters_are_refused_at_start() {
        // Replies under the request namespace: `svc/replies/a/<corr>` is also a request topic.
        let r = route(
            "/svc/{rest...}",
            "svc/{rest}",
            Some("svc/replies/{rest}"),
            "",
        );
        let e = validate(&r).unwrap_err().to_string();
        assert!(e.contains("could match its own requests"), "{e}");
        // Same template: every reply is a request.
        let r = route("/a/{x}", "a/{x}", Some("a/{x}"), "");
        assert!(validate(&r).is_err());
        // `$` first level (the seed's short form with reply_level = "$res").
        let r = route("/rt/{rest...}", "/$req/rt/{rest}", None, "$res");
        assert!(validate(&r).is_err());
        // A capture the path does not have.
        let r = route("/a/{x}", "a/{x}", Some("b/{y}"), "");
        assert!(validate(&r).is_err());
    }

    #[test]
    fn overlap() {
        assert!(filters_overlap("a/+/c", "a/b/+"));
        assert!(filters_overlap("a/#", "a"));
        assert!(!filters_overlap("a/+", "a/b/c"));
        assert!(!filters_overlap("res/+/+", "req/+/+"));
    }
}
