//! `/topics/{topic…}`: HTTP verbs onto MQTT topics.
//!
//! `POST` publishes the body (`?qos=0|1|2`, default 1; `?retain=true`; `?expiry=SECONDS`) and
//! answers once the broker has accepted it; `PUT` publishes it retained; `DELETE` clears the
//! retained message; `GET` returns the retained message from the broker's store, with its
//! content type, user properties as headers, and an `ETag`.
//!
//! Header convention (both directions): `Content-Type` ↔ MQTT content type;
//! `MQTT-User-Property: name=value` (repeatable) ↔ user properties; `MQTT-Response-Topic` and
//! `MQTT-Correlation-Data` ↔ response topic and correlation data.

use std::borrow::Cow;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use broker::codec::{Publish, PublishProperties, QoS};
use broker::topic;

use crate::access::Caller;
use crate::error::ApiError;
use crate::state::AppState;

pub const USER_PROPERTY: &str = "mqtt-user-property";
pub const RESPONSE_TOPIC: &str = "mqtt-response-topic";
pub const CORRELATION_DATA: &str = "mqtt-correlation-data";

/// The topic named by the request path: each segment percent-decoded.
pub fn topic_of(uri: &Uri, prefix: &str) -> Result<String, ApiError> {
    let raw = uri.path().strip_prefix(prefix).unwrap_or("");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    let t = String::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request("the topic is not valid UTF-8"))?;
    topic::validate_topic(&t)
        .map_err(|e| ApiError::bad_request(format!("invalid topic {t:?}: {e}")))?;
    if t.starts_with('$') {
        return Err(ApiError::bad_request(
            "topics starting with $ are reserved for the broker",
        ));
    }
    Ok(t)
}

/// The query parameters a write reads (`?qos=`, `?retain=`, `?expiry=`), the last of each
/// when repeated; the others are ignored. Borrowed from the URI unless percent-encoded.
#[derive(Default)]
pub struct WriteParams<'a> {
    qos: Option<Cow<'a, str>>,
    retain: Option<Cow<'a, str>>,
    expiry: Option<Cow<'a, str>>,
}

impl<'a> WriteParams<'a> {
    pub fn of(query: Option<&'a str>) -> WriteParams<'a> {
        let mut w = WriteParams::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "qos" => w.qos = Some(v),
                "retain" => w.retain = Some(v),
                "expiry" => w.expiry = Some(v),
                _ => {}
            }
        }
        w
    }
}

/// Reads `?qos=`.
pub fn qos_param(q: &WriteParams, default: QoS) -> Result<QoS, ApiError> {
    match q.qos.as_deref() {
        None => Ok(default),
        Some("0") => Ok(QoS::AtMostOnce),
        Some("1") => Ok(QoS::AtLeastOnce),
        Some("2") => Ok(QoS::ExactlyOnce),
        Some(other) => Err(ApiError::bad_request(format!(
            "qos must be 0, 1 or 2, not {other:?}"
        ))),
    }
}

fn bool_param(value: Option<&str>, name: &str) -> Result<bool, ApiError> {
    match value {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "{name} must be true or false, not {other:?}"
        ))),
    }
}

/// MQTT 5 properties from request headers.
pub fn properties_from(headers: &HeaderMap, body: &[u8]) -> Result<PublishProperties, ApiError> {
    let mut props = PublishProperties::default();
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct
            .to_str()
            .map_err(|_| ApiError::bad_request("Content-Type is not ASCII"))?;
        let textual = ct.starts_with("text/") || ct.contains("json") || ct.contains("xml");
        if textual && std::str::from_utf8(body).is_ok() {
            props.payload_format_indicator = Some(1);
        }
        props.content_type = Some(ct.to_string());
    }
    for v in headers.get_all(USER_PROPERTY) {
        let s = std::str::from_utf8(v.as_bytes())
            .map_err(|_| ApiError::bad_request("MQTT-User-Property is not UTF-8"))?;
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| ApiError::bad_request("MQTT-User-Property must be name=value"))?;
        if broker::reserved_user_property(k.trim()) {
            return Err(ApiError::bad_request("that user property name is reserved"));
        }
        props
            .user_properties
            .push((k.trim().to_string(), v.trim().to_string()));
    }
    if let Some(rt) = headers.get(RESPONSE_TOPIC) {
        let rt = std::str::from_utf8(rt.as_bytes())
            .map_err(|_| ApiError::bad_request("MQTT-Response-Topic is not UTF-8"))?;
        topic::validate_topic(rt)
            .map_err(|e| ApiError::bad_request(format!("MQTT-Response-Topic: {e}")))?;
        props.response_topic = Some(rt.to_string());
    }
    if let Some(cd) = headers.get(CORRELATION_DATA) {
        props.correlation_data = Some(bytes::Bytes::copy_from_slice(cd.as_bytes()));
    }
    Ok(props)
}

/// Response headers from MQTT 5 properties.
pub fn headers_from(props: &PublishProperties, h: &mut HeaderMap) {
    let ct = props
        .content_type
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, ct);
    for (k, v) in &props.user_properties {
        if let Ok(v) = HeaderValue::from_str(&format!("{k}={v}")) {
            h.append(USER_PROPERTY, v);
        }
    }
    if let Some(v) = props
        .response_topic
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        h.insert(RESPONSE_TOPIC, v);
    }
    if let Some(v) = props
        .correlation_data
        .as_ref()
        .and_then(|c| HeaderValue::from_bytes(c).ok())
    {
        h.insert(CORRELATION_DATA, v);
    }
}

/// The body to publish: none (DELETE), or the request's, read once the caller is authorized.
enum Payload {
    Empty,
    Read { body: Body, require: bool },
}

/// Publishes what a request asks for, checked and authorized before its body is read.
async fn publish(
    st: &AppState,
    c: &Caller,
    retain: bool,
    payload: Payload,
) -> Result<Response, ApiError> {
    let (uri, headers) = (&c.uri, &c.headers);
    let q = WriteParams::of(uri.query());
    let topic = topic_of(uri, "/topics/")?;
    let qos = qos_param(&q, QoS::AtLeastOnce)?;
    let retain = bool_param(q.retain.as_deref(), "retain")? || retain;
    crate::access::check_publish(st, headers, uri, c.ip, &topic).await?;
    let body = match payload {
        Payload::Empty => Bytes::new(),
        Payload::Read { body, require } => {
            let b = crate::body::read_body(st, body).await?;
            if require && b.is_empty() {
                return Err(ApiError::bad_request(
                    "an empty body would clear the state: use DELETE",
                ));
            }
            b
        }
    };
    let mut props = properties_from(headers, &body)?;
    if let Some(e) = q.expiry.as_deref() {
        match e.parse::<u32>() {
            Ok(secs) if secs > 0 => props.message_expiry_interval = Some(secs),
            _ => {
                return Err(ApiError::bad_request(
                    "expiry must be a positive number of seconds",
                ))
            }
        }
    }
    let mut p = Publish::new(topic.as_str(), qos, body, Some(props));
    p.retain = retain;
    if let Some(why) = broker::limits::publish_over_limits(&p, &st.edge.config.limits) {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the MQTT properties from the headers make {why}"),
        ));
    }
    st.client.publish(p).await?;
    Ok(Json(Published {
        topic: &topic,
        qos: qos as u8,
        retain,
    })
    .into_response())
}

/// What a write answers.
#[derive(serde::Serialize)]
struct Published<'a> {
    topic: &'a str,
    qos: u8,
    retain: bool,
}

/// `POST` publishes the body; `PUT` publishes it retained, and refuses an empty one (that is
/// `DELETE`).
pub async fn write(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let put = parts.method == Method::PUT;
    let c = Caller::from(parts);
    let body = Payload::Read { body, require: put };
    publish(&st, &c, put, body).await
}

pub async fn delete(State(st): State<AppState>, c: Caller) -> Result<StatusCode, ApiError> {
    publish(&st, &c, true, Payload::Empty).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn get(State(st): State<AppState>, c: Caller) -> Result<Response, ApiError> {
    let (uri, headers) = (&c.uri, &c.headers);
    let topic = topic_of(uri, "/topics/")?;
    crate::access::check_subscribe(&st, headers, uri, c.ip, &topic).await?;
    let r = st
        .edge
        .retained()
        .get(&topic)
        .ok_or_else(|| ApiError::not_found(format!("no retained message on {topic:?}")))?;
    let msg = r
        .live(std::time::SystemTime::now())
        .ok_or_else(|| ApiError::not_found(format!("the retained message on {topic:?} expired")))?;
    let etag = etag(&r);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            // If-None-Match uses the weak comparison (RFC 9110 §13.1.2): W/ is ignored.
            v.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
        })
    {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&etag) {
            res.headers_mut().insert(header::ETAG, v);
        }
        return Ok(res);
    }
    let mut res = Response::new(Body::from(msg.payload.clone()));
    headers_from(
        &msg.properties.clone().unwrap_or_default(),
        res.headers_mut(),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        res.headers_mut().insert(header::ETAG, v);
    }
    Ok(res)
}

/// A strong validator for a retained message: its store time and a hash of its content.
fn etag(r: &broker::retained::Retained) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    r.publish.payload.hash(&mut h);
    r.publish
        .properties
        .as_ref()
        .map(|p| &p.content_type)
        .hash(&mut h);
    r.stored_at.hash(&mut h);
    format!("\"{:016x}\"", h.finish())
}
