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

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use broker::codec::{Publish, PublishProperties, QoS};
use broker::topic;
use serde_json::json;

use crate::access::ClientIp;
use crate::routes::{error, AppState};

pub const USER_PROPERTY: &str = "mqtt-user-property";
pub const RESPONSE_TOPIC: &str = "mqtt-response-topic";
pub const CORRELATION_DATA: &str = "mqtt-correlation-data";

/// The topic named by the request path: each segment percent-decoded.
pub fn topic_of(uri: &Uri, prefix: &str) -> Result<String, Response> {
    let raw = uri.path().strip_prefix(prefix).unwrap_or("");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    let t = String::from_utf8(bytes)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "the topic is not valid UTF-8"))?;
    topic::validate_topic(&t)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid topic {t:?}: {e}")))?;
    if t.starts_with('$') {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "topics starting with $ are reserved for the broker",
        ));
    }
    Ok(t)
}

/// Reads `?qos=`.
pub fn qos_param(q: &HashMap<String, String>, default: QoS) -> Result<QoS, Response> {
    match q.get("qos").map(String::as_str) {
        None => Ok(default),
        Some("0") => Ok(QoS::AtMostOnce),
        Some("1") => Ok(QoS::AtLeastOnce),
        Some("2") => Ok(QoS::ExactlyOnce),
        Some(other) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("qos must be 0, 1 or 2, not {other:?}"),
        )),
    }
}

fn bool_param(q: &HashMap<String, String>, name: &str) -> Result<bool, Response> {
    match q.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("{name} must be true or false, not {other:?}"),
        )),
    }
}

/// MQTT 5 properties from request headers.
pub fn properties_from(headers: &HeaderMap, body: &[u8]) -> Result<PublishProperties, Response> {
    let mut props = PublishProperties::default();
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct
            .to_str()
            .map_err(|_| error(StatusCode::BAD_REQUEST, "Content-Type is not ASCII"))?;
        let textual = ct.starts_with("text/") || ct.contains("json") || ct.contains("xml");
        if textual && std::str::from_utf8(body).is_ok() {
            props.payload_format_indicator = Some(1);
        }
        props.content_type = Some(ct.to_string());
    }
    for v in headers.get_all(USER_PROPERTY) {
        let s = std::str::from_utf8(v.as_bytes())
            .map_err(|_| error(StatusCode::BAD_REQUEST, "MQTT-User-Property is not UTF-8"))?;
        let (k, v) = s.split_once('=').ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "MQTT-User-Property must be name=value",
            )
        })?;
        if k.trim() == broker::session::STAMP_KEY {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "that user property name is reserved",
            ));
        }
        props
            .user_properties
            .push((k.trim().to_string(), v.trim().to_string()));
    }
    if let Some(rt) = headers.get(RESPONSE_TOPIC) {
        let rt = std::str::from_utf8(rt.as_bytes())
            .map_err(|_| error(StatusCode::BAD_REQUEST, "MQTT-Response-Topic is not UTF-8"))?;
        topic::validate_topic(rt)
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("MQTT-Response-Topic: {e}")))?;
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

/// What a publishing request asks for, checked and authorized before its body is read.
struct Request<'a> {
    uri: &'a Uri,
    headers: &'a HeaderMap,
    q: &'a HashMap<String, String>,
    ip: ClientIp,
    retain: bool,
}

/// The body to publish: none (DELETE), or the request's, read once the caller is authorized.
enum Payload {
    Empty,
    Read { body: Body, require: bool },
}

async fn publish(st: &AppState, req: Request<'_>, payload: Payload) -> Response {
    let Request {
        uri,
        headers,
        q,
        ip,
        retain,
    } = req;
    let topic = match topic_of(uri, "/topics/") {
        Ok(t) => t,
        Err(r) => return r,
    };
    let qos = match qos_param(q, QoS::AtLeastOnce) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let retain = match bool_param(q, "retain") {
        Ok(r) => r || retain,
        Err(r) => return r,
    };
    if let Err(r) = crate::access::check_publish(st, headers, uri, ip, &topic).await {
        return r;
    }
    let body = match payload {
        Payload::Empty => Bytes::new(),
        Payload::Read { body, require } => match crate::routes::read_body(st, body).await {
            Ok(b) if require && b.is_empty() => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "an empty body would clear the state: use DELETE",
                )
            }
            Ok(b) => b,
            Err(r) => return r,
        },
    };
    let mut props = match properties_from(headers, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let Some(e) = q.get("expiry") {
        match e.parse::<u32>() {
            Ok(secs) if secs > 0 => props.message_expiry_interval = Some(secs),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "expiry must be a positive number of seconds",
                )
            }
        }
    }
    let mut p = Publish::new(topic.as_str(), qos, body, Some(props));
    p.retain = retain;
    if let Some(why) = broker::limits::publish_over_limits(&p, &st.edge.config.limits) {
        return error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the MQTT properties from the headers make {why}"),
        );
    }
    match st.hub.publish(p).await {
        Ok(()) => {
            Json(json!({ "topic": topic, "qos": qos as u8, "retain": retain })).into_response()
        }
        Err(e) => crate::access::broker_error(e),
    }
}

pub async fn post(
    State(st): State<AppState>,
    ip: ClientIp,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let req = Request {
        uri: &uri,
        headers: &headers,
        q: &q,
        ip,
        retain: false,
    };
    let body = Payload::Read {
        body,
        require: false,
    };
    publish(&st, req, body).await
}

pub async fn put(
    State(st): State<AppState>,
    ip: ClientIp,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let req = Request {
        uri: &uri,
        headers: &headers,
        q: &q,
        ip,
        retain: true,
    };
    publish(
        &st,
        req,
        Payload::Read {
            body,
            require: true,
        },
    )
    .await
}

pub async fn delete(
    State(st): State<AppState>,
    ip: ClientIp,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let req = Request {
        uri: &uri,
        headers: &headers,
        q: &q,
        ip,
        retain: true,
    };
    let r = publish(&st, req, Payload::Empty).await;
    if r.status() == StatusCode::OK {
        StatusCode::NO_CONTENT.into_response()
    } else {
        r
    }
}

pub async fn get(
    State(st): State<AppState>,
    ip: ClientIp,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let topic = match topic_of(&uri, "/topics/") {
        Ok(t) => t,
        Err(r) => return r,
    };
    if let Err(r) = crate::access::check_subscribe(&st, &headers, &uri, ip, &topic).await {
        return r;
    }
    let Some(r) = st.edge.retained.get(&topic) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no retained message on {topic:?}"),
        );
    };
    let Some(msg) = r.live(std::time::SystemTime::now()) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("the retained message on {topic:?} expired"),
        );
    };
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
        return res;
    }
    let mut res = Response::new(Body::from(msg.payload.clone()));
    headers_from(
        &msg.properties.clone().unwrap_or_default(),
        res.headers_mut(),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
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
