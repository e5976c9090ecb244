//! One RPC call, start to end: the HTTP request checked, a responder waited for if allowed, the
//! request published (one message, or chunks), and the reply turned into the HTTP response.
//!
//! Order of work: method, timeout and wait headers → topic and authorization → a responder is
//! subscribed (else wait in [`super::waiting`], or 503) → an in-flight slot (else 429) → the
//! body is read (only now: a waiting request holds no body, TCP holds it at the caller) → publish
//! → reply (504 at the deadline). The caller's timeout bounds the whole call, waiting included;
//! for a streamed body it bounds each wait for an acknowledgement or a reply chunk.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use broker::codec::{Publish, PublishProperties, QoS};
use broker::topic;
use serde_json::{json, Value};

use super::reply::{private_header, respond, Head};
use super::route::{fill, Convention, RpcRoute};
use super::streaming::{self, BodyChunks, CallGuard, Upload};
use crate::error::ApiError;
use crate::state::AppState;

/// A whole number of seconds from the query (`name=`) or a header, at most `max`.
fn secs_param(
    uri: &Uri,
    headers: &HeaderMap,
    query: Option<&str>,
    header: &str,
    max: u64,
) -> Result<Option<u64>, ApiError> {
    let q = query.and_then(|name| {
        uri.query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        })
    });
    let h = headers
        .get(header)
        .map(|v| v.to_str().unwrap_or("invalid").to_string());
    match q.or(h) {
        None => Ok(None),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(t) if t <= max => Ok(Some(t)),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{header} must be a whole number of seconds from 0 to {max}"),
            )),
        },
    }
}

fn too_many(message: &str) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
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
pub async fn call(st: AppState, req: Call, body: Body) -> Result<Response, ApiError> {
    serve(st, req, drained_after_answer(body)).await
}

/// How long, and how much, a request body is still read (and dropped) after the call ended
/// without it: a caller still sending then reads the answer instead of a broken pipe.
const DRAIN_SECS: u64 = 5;
const DRAIN_BYTES: usize = 64 * 1024 * 1024;

/// The body, read by the call where it is; if the call drops it unread (it answered early:
/// 502, 504, 413…), a task drains what the caller still sends, bounded in time and bytes. (No
/// task and no channel for a call that reads its body to the end, as almost every call does.)
fn drained_after_answer(body: Body) -> Body {
    Body::from_stream(DrainOnDrop {
        stream: Some(body.into_data_stream()),
        ended: false,
    })
}

/// A request body's frames; dropped before its end, it hands the rest to a draining task.
struct DrainOnDrop {
    stream: Option<axum::body::BodyDataStream>,
    ended: bool,
}

impl futures_util::Stream for DrainOnDrop {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use futures_util::StreamExt;
        let Some(s) = self.stream.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let item = std::task::ready!(s.poll_next_unpin(cx));
        if item.is_none() {
            self.ended = true;
        }
        std::task::Poll::Ready(item)
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        use futures_util::StreamExt;
        let Some(mut s) = self.stream.take() else {
            return;
        };
        if self.ended {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let drain = async {
                let mut n = 0;
                while let Some(Ok(b)) = s.next().await {
                    n += b.len();
                    if n > DRAIN_BYTES {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(DRAIN_SECS), drain).await;
        });
    }
}

async fn serve(st: AppState, req: Call, body: Body) -> Result<Response, ApiError> {
    let Call {
        route,
        captures,
        method,
        uri,
        headers,
        ip,
    } = req;
    let started = Instant::now();
    let rpc = st.rpc.clone();
    let set = &rpc.settings;
    let timeout = secs_param(
        &uri,
        &headers,
        Some("timeout"),
        "rtw-timeout",
        set.max_timeout_secs,
    )
    .map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "timeout must be a whole number of seconds from 0 to {}",
                set.max_timeout_secs
            ),
        )
    })?
    .unwrap_or_else(|| {
        route
            .as_ref()
            .and_then(|r| r.timeout_secs)
            .unwrap_or(set.default_timeout_secs)
            .min(set.max_timeout_secs)
    });
    let wait =
        secs_param(&uri, &headers, None, "rtw-wait", set.max_wait_secs)?.unwrap_or_else(|| {
            route
                .as_ref()
                .and_then(|r| r.wait_secs)
                .unwrap_or(0)
                .min(set.max_wait_secs)
        });
    if let Some(r) = &route {
        if !r.methods.is_empty()
            && !r
                .methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(method.as_str()))
        {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not served on this route"),
            ));
        }
    }
    let convention = route.as_ref().map_or(Convention::V5, |r| r.convention);
    let envelope = route.as_ref().is_some_and(|r| r.envelope);
    let fire_and_forget = timeout == 0;
    // Only an MQTT 5 responder that replies can take a chunked body.
    let streamable = convention == Convention::V5 && !fire_and_forget;
    let max_body = st.settings.max_body;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if streamable && n > set.max_stream_bytes => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is over rpc.max_stream_bytes ({} bytes)",
                    set.max_stream_bytes
                ),
            ))
        }
        Some(n) if !streamable && n > max_body as u64 => return Err(too_large(max_body)),
        _ => {}
    }
    let template = route.as_ref().map_or("rpc/{path...}", |r| r.topic.as_str());
    let topic = fill(template, &captures)?;
    if let Err(e) = topic::validate_topic(&topic) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid request topic {topic:?}: {e}"),
        ));
    }
    crate::access::check_publish(&st, &headers, &uri, ip, &topic).await?;
    let query = forwarded_query(&st, &uri);
    let id = rand::random::<u128>();
    let corr = super::corr_text(id);
    let publish_topic = match convention {
        Convention::V5 => topic.clone(),
        Convention::Topic => format!("{topic}/{corr}"),
    };
    rpc.stats.requests.fetch_add(1, Ordering::Relaxed);

    // A responder, now or after waiting.
    let deadline = started + Duration::from_secs(timeout);
    let mut released = None;
    if !st.edge.has_subscriber(&publish_topic) || rpc.waiting.queued_for(&topic) {
        if wait == 0 {
            rpc.stats.no_responder.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no service is subscribed to {topic:?}"),
            ));
        }
        let Some(mut ticket) = rpc.waiting.enter(&topic, &publish_topic) else {
            rpc.stats.rejected_waiting.fetch_add(1, Ordering::Relaxed);
            return Err(too_many(
                "too many requests waiting for a responder (rpc.max_waiting)",
            ));
        };
        let wait_end = started + Duration::from_secs(wait);
        // The caller's timeout bounds the wait too (a fire-and-forget call waits `wait` alone).
        let end = if fire_and_forget {
            wait_end
        } else {
            wait_end.min(deadline)
        };
        match tokio::time::timeout_at(end.into(), ticket.released()).await {
            Ok(Some(p)) => {
                rpc.stats.waited.fetch_add(1, Ordering::Relaxed);
                released = Some(p);
            }
            Ok(None) | Err(_) if !fire_and_forget && deadline < wait_end => {
                rpc.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "no responder subscribed to {topic:?} within the timeout ({timeout} s)"
                    ),
                ));
            }
            _ => {
                rpc.stats.no_responder.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no service subscribed to {topic:?} within {wait} s"),
                ));
            }
        }
    }
    let slot = if fire_and_forget {
        None
    } else {
        match rpc.slots.clone().try_acquire_owned() {
            Ok(s) => Some(s),
            Err(_) => {
                rpc.stats.rejected_busy.fetch_add(1, Ordering::Relaxed);
                return Err(too_many("too many requests waiting for replies"));
            }
        }
    };

    // The request's properties.
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut props = PublishProperties {
        content_type,
        ..Default::default()
    };
    if convention == Convention::V5 {
        let user = &mut props.user_properties;
        user.reserve(3 + headers.len());
        user.push(("method".into(), method.to_string()));
        user.push(("path".into(), uri.path().to_string()));
        if let Some(q) = &query {
            user.push(("query".into(), q.clone()));
        }
        for (k, v) in forwarded(&headers) {
            user.push((["header:", k].concat(), v.to_string()));
        }
        if !fire_and_forget {
            props.response_topic = Some(rpc.reply_topic.clone());
            props.correlation_data = Some(Bytes::copy_from_slice(corr.as_bytes()));
        }
    }

    // Registered before anything is published, so no reply can come too early.
    let (mut replies, mut acks) = if fire_and_forget {
        let (_, rx) = tokio::sync::mpsc::channel(1);
        (rx, tokio::sync::watch::channel(0).1)
    } else {
        let expect = match (&route, convention) {
            (Some(r), Convention::Topic) => {
                Some(format!("{}/{corr}", fill(&r.reply_template(), &captures)?))
            }
            _ => None,
        };
        rpc.register(id, envelope, expect)
    };
    let guard = CallGuard {
        rpc: rpc.clone(),
        corr: id,
        _slot: slot,
    };

    // The body: read only now, one piece at a time.
    let piece = if streamable { set.chunk_size } else { max_body };
    let mut body = BodyChunks::new(body, piece);
    // A caller that stops sending does not hold the call: the body is read under the timeout
    // (for a fire-and-forget call, the default one).
    let idle = Duration::from_secs(if fire_and_forget {
        set.default_timeout_secs.max(1)
    } else {
        timeout
    });
    let first = tokio::time::timeout(idle, body.next())
        .await
        .map_err(|_| streaming::stalled(idle))??
        .unwrap_or_default();
    let streamed = !body.finished();
    if (streamed && !streamable) || first.len() > max_body && !streamed {
        return Err(too_large(max_body));
    }
    let mut early = None;
    if streamed {
        rpc.stats.streams.fetch_add(1, Ordering::Relaxed);
        let mut up = Upload {
            rpc: &rpc,
            topic: &publish_topic,
            props: &props,
            idle,
            acks: &mut acks,
            replies: &mut replies,
            settled: false,
            sent: Default::default(),
        };
        up.publish(0, false, first).await?;
        if let Some(p) = released.take() {
            let _ = p.send(());
        }
        early = up.rest(&mut body).await?;
    } else {
        let payload = match (convention, envelope) {
            (Convention::Topic, true) => {
                let content_type = props.content_type.replace("application/json".into());
                wrap(
                    &method,
                    &uri,
                    query.as_deref(),
                    &headers,
                    content_type,
                    &first,
                )
            }
            _ => first,
        };
        let p = Publish::new(
            publish_topic.as_str(),
            QoS::AtLeastOnce,
            payload,
            Some(props),
        );
        if let Some(why) = broker::limits::publish_over_limits(&p, &st.edge.config.limits) {
            return Err(ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("the request's headers make {why}"),
            ));
        }
        rpc.client.publish(p).await?;
        if let Some(p) = released.take() {
            let _ = p.send(());
        }
    }
    if fire_and_forget {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "topic": topic, "accepted": true })),
        )
            .into_response());
    }

    // The reply.
    let first_reply = match early {
        Some(r) => Some(r),
        None => {
            let end = if streamed {
                Instant::now() + idle
            } else {
                deadline
            };
            match tokio::time::timeout_at(end.into(), replies.recv()).await {
                Ok(Some(r)) => Some(r),
                Ok(None) => return Err(streaming::overrun()),
                Err(_) => None,
            }
        }
    };
    let Some(reply) = first_reply else {
        rpc.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("no reply on {topic:?} within {timeout} s"),
        ));
    };
    rpc.stats.replies.fetch_add(1, Ordering::Relaxed);
    rpc.stats
        .latency_ms_total
        .fetch_add(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    rpc.stats.latency.record(started.elapsed());
    match streaming::chunk_of(&reply.props) {
        Some((0, false)) => {
            let head = Head::of(&reply);
            let body = streaming::reply_body(guard, *reply, replies, publish_topic, idle);
            Ok(head.response(body))
        }
        Some((n, false)) if n > 0 => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("the reply started with chunk {n} instead of 0"),
        )),
        _ => Ok(respond(reply)),
    }
}

/// The request headers forwarded to responders: the non-private ones with a text value.
fn forwarded(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .iter()
        .filter(|(k, _)| !private_header(k.as_str()))
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
}

fn too_large(max_body: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is over the maximum of {max_body} bytes"),
    )
}

/// A JSON envelope for a `topic`-convention route with `envelope = true`.
fn wrap(
    method: &Method,
    uri: &Uri,
    query: Option<&str>,
    headers: &HeaderMap,
    content_type: Option<String>,
    body: &Bytes,
) -> Bytes {
    let (b, enc) = crate::body::json_text(body);
    let hs: serde_json::Map<String, Value> = forwarded(headers)
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let env = json!({
        "method": method.as_str(), "path": uri.path(), "query": query,
        "headers": hs, "content_type": content_type, "body": b, "encoding": enc,
    });
    Bytes::from(env.to_string())
}
