//! Turning a responder's reply into the HTTP response: status and headers from user properties
//! (`status`, `header:{name}`) or from a JSON envelope, the content type, and the body — the
//! payload, or (for a streamed reply, see [`super::streaming`]) a stream of chunks.

use axum::body::Body;
use axum::http::header::InvalidHeaderValue;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine;
use serde_json::Value;

use super::Reply;

/// Headers never forwarded to responders, nor taken from their replies.
pub fn private_header(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "cookie"
            | "host"
            | "connection"
            | "content-length"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "keep-alive"
            | "content-type"
            | "expect"
            | "rtw-timeout"
            | "rtw-wait"
    ) || name.starts_with("proxy-")
}

/// The response to a one-message reply.
pub fn respond(mut reply: Box<Reply>) -> Response {
    let mut head = Head::take(&mut reply);
    let mut body = reply.payload.clone();
    if reply.envelope {
        if let Ok(env) = serde_json::from_slice::<Value>(&reply.payload) {
            body = head.take_envelope(&env);
        }
    }
    head.response(Body::from(body))
}

/// Status, headers and content type of a reply.
pub struct Head {
    status: StatusCode,
    /// In the order given; without the private ones and those that are not valid HTTP.
    headers: Vec<(HeaderName, HeaderValue)>,
    content_type: Option<String>,
}

impl Head {
    pub fn of(reply: &Reply) -> Head {
        let props = &reply.props;
        let mut head = Head::new(props.content_type.clone(), props.user_properties.len());
        for (k, v) in &props.user_properties {
            head.add(k, v.as_str(), HeaderValue::from_str);
        }
        head
    }

    /// [`Head::of`], taking the values out of the reply instead of copying them (a reply answered
    /// in one message is not needed after).
    pub fn take(reply: &mut Reply) -> Head {
        let props = &mut reply.props;
        let mut head = Head::new(props.content_type.take(), props.user_properties.len());
        for (k, v) in std::mem::take(&mut props.user_properties) {
            head.add(&k, v, |v: String| {
                HeaderValue::from_maybe_shared(bytes::Bytes::from(v))
            });
        }
        head
    }

    fn new(content_type: Option<String>, properties: usize) -> Head {
        Head {
            status: StatusCode::OK,
            headers: Vec::with_capacity(properties),
            content_type,
        }
    }

    /// Takes user property `key`: the status, or a header (made by `value`) for `header:{name}`.
    fn add<V: AsRef<str>>(
        &mut self,
        key: &str,
        v: V,
        value: impl FnOnce(V) -> Result<HeaderValue, InvalidHeaderValue>,
    ) {
        if key == "status" {
            self.status = parse_status(v.as_ref()).unwrap_or(StatusCode::BAD_GATEWAY);
        } else if let Some(name) = key.strip_prefix("header:") {
            self.header(name, value(v));
        }
    }

    /// Adds header `name` (any case) unless it is private (`content-type` may be given this
    /// way too) or not valid HTTP.
    fn header(&mut self, name: &str, value: Result<HeaderValue, InvalidHeaderValue>) {
        // `from_bytes` lowercases the name.
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            return;
        };
        if private_header(name.as_str()) && name != header::CONTENT_TYPE {
            return;
        }
        if let Ok(value) = value {
            self.headers.push((name, value));
        }
    }

    /// Takes status, headers and content type from a JSON envelope; returns its body.
    fn take_envelope(&mut self, env: &Value) -> bytes::Bytes {
        if let Some(s) = env.get("status") {
            self.status = s
                .as_u64()
                .and_then(|n| parse_status(&n.to_string()))
                .unwrap_or(StatusCode::BAD_GATEWAY);
        }
        if let Some(hs) = env.get("headers").and_then(Value::as_object) {
            for (k, v) in hs {
                if let Some(v) = v.as_str() {
                    self.header(k, HeaderValue::from_str(v));
                }
            }
        }
        if let Some(ct) = env.get("content_type").and_then(Value::as_str) {
            self.content_type = Some(ct.to_string());
        }
        match (env.get("body"), env.get("encoding").and_then(Value::as_str)) {
            (Some(Value::String(b)), Some("base64")) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(bytes::Bytes::from)
                .unwrap_or_default(),
            (Some(Value::String(b)), _) => bytes::Bytes::from(b.clone()),
            (Some(other), _) => bytes::Bytes::from(other.to_string()),
            (None, _) => bytes::Bytes::new(),
        }
    }

    pub fn response(self, body: Body) -> Response {
        let mut res = Response::new(body);
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        // Room for the content type and the content length axum adds: a map that grows
        // afterwards is copied whole.
        headers.reserve(self.headers.len() + 2);
        for (k, v) in self.headers {
            headers.append(k, v);
        }
        if let Some(v) = self
            .content_type
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            res.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        res
    }
}

fn parse_status(s: &str) -> Option<StatusCode> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|n| (200..=599).contains(n))
        .and_then(|n| StatusCode::from_u16(n).ok())
}
