//! Request/response: an HTTP request becomes an MQTT request, the MQTT reply becomes the HTTP
//! response, matched by a 128-bit random correlation id and bounded by a timeout.
//!
//! Data flow: a route (the default `/rpc/{path…}` → `rpc/{path…}`, or one from `[[rpc.routes]]`)
//! names a request topic template. The handler checks the caller may publish there, that some
//! client is subscribed (else 503 at once), takes an in-flight slot (else 429), registers the
//! correlation id, publishes the request through the bridge's own broker session and waits for
//! the reply (else 504). Replies arrive on that session and are matched here; a late or
//! duplicate reply finds nobody waiting, is dropped and counted.
//!
//! Two conventions, per route:
//! * `v5` (default): the request carries Response Topic `rtw/replies/{node}` and Correlation Data;
//!   user properties `method`, `path`, `query` and `header:{name}` carry the HTTP request; the
//!   reply may set user property `status` and `header:{name}` properties, and its content type.
//! * `topic`, for MQTT 3.1.1 responders: the request goes to `{topic}/{correlation id}` and the
//!   reply is expected on the same topic with its first level replaced by `reply_level` (default
//!   `res`), so a naive echo that copies `req/…` to `res/…` completes a round trip. With
//!   `envelope = true` the payloads are JSON envelopes carrying method, path, headers and status.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use broker::client::LocalClient;
use broker::codec::{Publish, PublishProperties, QoS};
use broker::topic;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::routes::{error, AppState};

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
    /// `topic` convention: the first topic level of replies.
    #[serde(default = "default_reply_level")]
    pub reply_level: String,
    /// Default timeout of this route, in seconds.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

fn default_reply_level() -> String {
    "res".into()
}

/// `[rpc]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcSettings {
    pub default_timeout_secs: u64,
    pub max_timeout_secs: u64,
    /// Requests waiting for a reply at once (429 past it).
    pub max_inflight: usize,
    #[serde(default)]
    pub routes: Vec<RpcRoute>,
}

impl Default for RpcSettings {
    fn default() -> Self {
        RpcSettings {
            default_timeout_secs: 10,
            max_timeout_secs: 60,
            max_inflight: 1000,
            routes: Vec::new(),
        }
    }
}

/// What a responder sent back.
struct Reply {
    payload: bytes::Bytes,
    props: PublishProperties,
    envelope: bool,
}

/// Counters shown by the metrics endpoint and the dashboard.
#[derive(Default)]
pub struct RpcStats {
    pub requests: AtomicU64,
    pub replies: AtomicU64,
    pub timeouts: AtomicU64,
    pub no_responder: AtomicU64,
    pub rejected_busy: AtomicU64,
    pub late_replies: AtomicU64,
    /// Sum of round-trip milliseconds of answered requests.
    pub latency_ms_total: AtomicU64,
}

/// Shared RPC state.
pub struct Rpc {
    client: LocalClient,
    reply_topic: String,
    pending: Mutex<HashMap<String, (oneshot::Sender<Reply>, bool)>>,
    slots: Arc<Semaphore>,
    pub settings: RpcSettings,
    pub stats: RpcStats,
}

impl Rpc {
    pub async fn start(
        edge: &Arc<broker::Edge>,
        settings: RpcSettings,
        node: &str,
    ) -> anyhow::Result<Arc<Rpc>> {
        for r in &settings.routes {
            validate_route(r)?;
        }
        let (tx, rx) = mpsc::channel(4096);
        let client = LocalClient::connect(edge, &format!("rtw-rpc-{node}"), tx)
            .await
            .map_err(|e| anyhow::anyhow!("RPC session: {e}"))?;
        let reply_topic = format!("{}{node}", broker::REPLY_PREFIX);
        client
            .subscribe(&reply_topic, QoS::AtLeastOnce)
            .await
            .map_err(|e| anyhow::anyhow!("RPC reply subscription: {e}"))?;
        for r in settings
            .routes
            .iter()
            .filter(|r| r.convention == Convention::Topic)
        {
            let f = reply_filter(r);
            client
                .subscribe(&f, QoS::AtLeastOnce)
                .await
                .map_err(|e| anyhow::anyhow!("RPC reply subscription {f}: {e}"))?;
        }
        let rpc = Arc::new(Rpc {
            client,
            reply_topic,
            pending: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(settings.max_inflight.max(1))),
            settings,
            stats: RpcStats::default(),
        });
        tokio::spawn(receive(Arc::downgrade(&rpc), rx));
        Ok(rpc)
    }

    /// Is the RPC session up?
    pub fn ready(&self) -> bool {
        !self.client.is_closed()
    }

    /// Requests waiting for a reply now.
    pub fn in_flight(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    fn complete(&self, corr: &str, payload: bytes::Bytes, props: PublishProperties) {
        let waiter = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(corr);
        match waiter {
            Some((tx, envelope)) => {
                let _ = tx.send(Reply {
                    payload,
                    props,
                    envelope,
                });
            }
            None => {
                self.stats.late_replies.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(corr, "late or duplicate RPC reply dropped");
            }
        }
    }
}

/// The reply filter of a `topic`-convention route: its template's literal prefix under the
/// reply level, then `#`.
fn reply_filter(r: &RpcRoute) -> String {
    let rest = r.topic.split_once('/').map_or("", |(_, rest)| rest);
    let literal: Vec<&str> = rest
        .split('/')
        .take_while(|s| !s.contains('{') && !s.is_empty())
        .collect();
    let mut f = r.reply_level.clone();
    for l in literal {
        f.push('/');
        f.push_str(l);
    }
    f.push_str("/#");
    f
}

fn validate_route(r: &RpcRoute) -> anyhow::Result<()> {
    anyhow::ensure!(
        r.path.starts_with('/'),
        "rpc route path {:?} must start with /",
        r.path
    );
    for reserved in [
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
    ] {
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
    anyhow::ensure!(
        !r.topic.is_empty() && !r.topic.starts_with('$'),
        "rpc route {:?}: bad topic template",
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
fn fill(template: &str, captures: &HashMap<String, String>) -> Result<String, Response> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find('}') else {
            return Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "bad topic template",
            ));
        };
        let name = rest[i + 1..i + j].trim_end_matches("...");
        let v = captures.get(name).ok_or_else(|| {
            error(
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

/// Headers never forwarded to responders.
fn private_header(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "cookie"
            | "host"
            | "connection"
            | "content-length"
            | "transfer-encoding"
            | "te"
            | "upgrade"
            | "keep-alive"
            | "content-type"
            | "rtw-timeout"
    ) || name.starts_with("proxy-")
}

fn timeout_of(
    st: &AppState,
    rpc: &Rpc,
    route: Option<&RpcRoute>,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<u64, Response> {
    let q: Option<String> = uri.query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "timeout")
            .map(|(_, v)| v.into_owned())
    });
    let h = headers
        .get("rtw-timeout")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let max = rpc.settings.max_timeout_secs;
    let _ = st;
    match q.or(h) {
        None => Ok(route
            .and_then(|r| r.timeout_secs)
            .unwrap_or(rpc.settings.default_timeout_secs)
            .min(max)),
        Some(v) => match v.parse::<u64>() {
            Ok(t) if t <= max => Ok(t),
            _ => Err(error(
                StatusCode::BAD_REQUEST,
                format!("timeout must be a whole number of seconds from 0 to {max}"),
            )),
        },
    }
}

/// One RPC request, as the router saw it (its body is read once the caller is authorized).
pub struct Call {
    pub route: Option<RpcRoute>,
    pub captures: HashMap<String, String>,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub ip: crate::access::ClientIp,
}

/// The query string forwarded to responders: without `access_token` when the bridge takes
/// credentials from the query (`[auth] allow_query_token`), so a token never reaches them.
fn forwarded_query(st: &AppState, uri: &Uri) -> Option<String> {
    let q = uri.query()?;
    if !st.security.config().allow_query_token {
        return Some(q.to_string());
    }
    let kept: Vec<&str> = q
        .split('&')
        .filter(|kv| {
            let key = kv.split('=').next().unwrap_or("");
            let key: String = form_urlencoded::parse(key.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            key != "access_token"
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Serves one RPC call.
pub async fn call(st: AppState, req: Call, body: Body) -> Response {
    let Call {
        route,
        captures,
        method,
        uri,
        headers,
        ip,
    } = req;
    let rpc = st.rpc.clone();
    let timeout = match timeout_of(&st, &rpc, route.as_ref(), &uri, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if let Some(r) = &route {
        if !r.methods.is_empty()
            && !r
                .methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(method.as_str()))
        {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not served on this route"),
            );
        }
    }
    let template = route.as_ref().map_or("rpc/{path...}", |r| r.topic.as_str());
    let topic = match fill(template, &captures) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if let Err(e) = topic::validate_topic(&topic) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("invalid request topic {topic:?}: {e}"),
        );
    }
    if let Err(r) = crate::access::check_publish(&st, &headers, &uri, ip, &topic).await {
        return r;
    }
    // Only an authorized caller's body is read.
    let body = match crate::routes::read_body(&st, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let query = forwarded_query(&st, &uri);
    let convention = route.as_ref().map_or(Convention::V5, |r| r.convention);
    let envelope = route.as_ref().is_some_and(|r| r.envelope);
    let corr = format!("{:032x}", rand::random::<u128>());
    let publish_topic = match convention {
        Convention::V5 => topic.clone(),
        Convention::Topic => format!("{topic}/{corr}"),
    };
    rpc.stats.requests.fetch_add(1, Ordering::Relaxed);
    if !st.edge.has_subscriber(&publish_topic) {
        rpc.stats.no_responder.fetch_add(1, Ordering::Relaxed);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no service is subscribed to {topic:?}"),
        );
    }
    let fire_and_forget = timeout == 0;
    let _slot = if fire_and_forget {
        None
    } else {
        match rpc.slots.clone().try_acquire_owned() {
            Ok(s) => Some(s),
            Err(_) => {
                rpc.stats.rejected_busy.fetch_add(1, Ordering::Relaxed);
                return error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many requests waiting for replies",
                );
            }
        }
    };

    // The request.
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let forwarded: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| !private_header(k.as_str()))
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_string(), v.to_string()))
        })
        .collect();
    let mut props = PublishProperties {
        content_type: content_type.clone(),
        ..Default::default()
    };
    let payload = match (convention, envelope) {
        (Convention::V5, _) => {
            props
                .user_properties
                .push(("method".into(), method.to_string()));
            props
                .user_properties
                .push(("path".into(), uri.path().to_string()));
            if let Some(q) = &query {
                props.user_properties.push(("query".into(), q.clone()));
            }
            for (k, v) in &forwarded {
                props
                    .user_properties
                    .push((format!("header:{k}"), v.clone()));
            }
            if !fire_and_forget {
                props.response_topic = Some(rpc.reply_topic.clone());
                props.correlation_data = Some(bytes::Bytes::from(corr.clone().into_bytes()));
            }
            body
        }
        (Convention::Topic, true) => {
            let (b, enc) = match std::str::from_utf8(&body) {
                Ok(s) => (Value::String(s.to_string()), "utf8"),
                Err(_) => (
                    Value::String(base64::engine::general_purpose::STANDARD.encode(&body)),
                    "base64",
                ),
            };
            let hs: serde_json::Map<String, Value> = forwarded
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            let env = json!({
                "method": method.as_str(), "path": uri.path(), "query": query,
                "headers": hs, "content_type": content_type, "body": b, "encoding": enc,
            });
            props.content_type = Some("application/json".into());
            Bytes::from(env.to_string())
        }
        (Convention::Topic, false) => body,
    };
    let rx = if fire_and_forget {
        None
    } else {
        let (tx, rx) = oneshot::channel();
        rpc.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(corr.clone(), (tx, envelope));
        Some(rx)
    };
    // Whatever ends this call (reply, timeout, error, or the caller going away, which drops
    // this future), its correlation id stops waiting.
    let _waiting = rx.is_some().then(|| Waiting {
        rpc: &rpc,
        corr: &corr,
    });
    let started = std::time::Instant::now();
    let p = Publish::new(
        publish_topic.as_str(),
        QoS::AtLeastOnce,
        payload,
        Some(props),
    );
    if let Some(why) = broker::limits::publish_over_limits(&p, &st.edge.config.limits) {
        return error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the request's headers make {why}"),
        );
    }
    if let Err(e) = rpc.client.publish(p).await {
        rpc.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&corr);
        return crate::access::broker_error(e);
    }
    let Some(rx) = rx else {
        return (
            StatusCode::ACCEPTED,
            Json(json!({ "topic": topic, "accepted": true })),
        )
            .into_response();
    };
    match tokio::time::timeout(Duration::from_secs(timeout), rx).await {
        Ok(Ok(reply)) => {
            rpc.stats.replies.fetch_add(1, Ordering::Relaxed);
            rpc.stats
                .latency_ms_total
                .fetch_add(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            respond(reply)
        }
        _ => {
            rpc.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&corr);
            rpc.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("no reply on {topic:?} within {timeout} s"),
            )
        }
    }
}

/// Removes a correlation id from the waiting requests when dropped.
struct Waiting<'a> {
    rpc: &'a Rpc,
    corr: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.rpc
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.corr);
    }
}

/// Turns a reply into the HTTP response.
fn respond(reply: Reply) -> Response {
    let mut status = StatusCode::OK;
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut content_type = reply.props.content_type.clone();
    let mut body = reply.payload.clone();
    for (k, v) in &reply.props.user_properties {
        if k == "status" {
            status = parse_status(v).unwrap_or(StatusCode::BAD_GATEWAY);
        } else if let Some(h) = k.strip_prefix("header:") {
            headers.push((h.to_string(), v.clone()));
        }
    }
    if reply.envelope {
        if let Ok(env) = serde_json::from_slice::<Value>(&reply.payload) {
            if let Some(s) = env.get("status") {
                status = s
                    .as_u64()
                    .and_then(|n| parse_status(&n.to_string()))
                    .unwrap_or(StatusCode::BAD_GATEWAY);
            }
            if let Some(hs) = env.get("headers").and_then(Value::as_object) {
                for (k, v) in hs {
                    if let Some(v) = v.as_str() {
                        headers.push((k.clone(), v.to_string()));
                    }
                }
            }
            if let Some(ct) = env.get("content_type").and_then(Value::as_str) {
                content_type = Some(ct.to_string());
            }
            body = match (env.get("body"), env.get("encoding").and_then(Value::as_str)) {
                (Some(Value::String(b)), Some("base64")) => {
                    base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .map(bytes::Bytes::from)
                        .unwrap_or_default()
                }
                (Some(Value::String(b)), _) => bytes::Bytes::from(b.clone()),
                (Some(other), _) => bytes::Bytes::from(other.to_string()),
                (None, _) => bytes::Bytes::new(),
            };
        }
    }
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    for (k, v) in headers {
        let lower = k.to_ascii_lowercase();
        if private_header(&lower) && lower != "content-type" {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(lower.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            res.headers_mut().append(k, v);
        }
    }
    if let Some(v) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        res.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    res
}

fn parse_status(s: &str) -> Option<StatusCode> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|n| (200..=599).contains(n))
        .and_then(|n| StatusCode::from_u16(n).ok())
}

/// Matches replies arriving on the RPC session to waiting requests.
async fn receive(rpc: std::sync::Weak<Rpc>, mut rx: mpsc::Receiver<Publish>) {
    while let Some(p) = rx.recv().await {
        let Some(rpc) = rpc.upgrade() else { return };
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let props = p.properties.unwrap_or_default();
        let corr = if topic == rpc.reply_topic {
            props
                .correlation_data
                .as_ref()
                .map(|c| String::from_utf8_lossy(c).into_owned())
        } else {
            topic.rsplit('/').next().map(str::to_string)
        };
        match corr {
            Some(c) => rpc.complete(&c, p.payload, props),
            None => {
                rpc.stats.late_replies.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
