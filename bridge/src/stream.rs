//! `GET /events` (Server-Sent Events) and `GET /poll` (long polling).
//!
//! Both take one or more MQTT filters as repeated `topic=` parameters. An SSE stream first sends
//! the retained messages matching its filters (unless `retained=false`), or, when the client
//! reconnects with `Last-Event-ID` (header, or `last_event_id=` for clients that cannot set it),
//! exactly the messages it missed; then live messages. Every message is an SSE event whose `id`
//! is the bridge's event id and whose data is JSON:
//! `{"id","topic","payload","encoding":"utf8"|"base64","content_type"?,"user_properties"?,"retained"?}`.
//! An `event: gap` tells the client it lost messages (history too short, or it read too slowly)
//! and should resync from state. Heartbeats (`: heartbeat`, every `[bridge] heartbeat_secs`)
//! ring from the hub's one clock.
//!
//! Data flow of a stream: the handler checks the query and the caller, attaches to the hub,
//! encodes what is owed first (replay or retained state, else `: open`) into one buffer, and
//! answers with [`crate::sse::response`], whose body then polls `Live`: the stream's hub feed,
//! each event encoded once for every stream that carries it ([`Event::frame`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use broker::topic;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::access::Caller;
use crate::error::ApiError;
use crate::feed::Next;
use crate::hub::{Event, Gap, Hub, Subscription};
use crate::sse;
use crate::state::AppState;

/// Parsed query of `/events` and `/poll`.
pub(crate) struct StreamQuery {
    filters: Vec<String>,
    last_id: Option<String>,
    retained: bool,
    timeout: Option<String>,
}

pub(crate) fn parse_query(raw: Option<String>) -> Result<StreamQuery, ApiError> {
    let mut q = StreamQuery {
        filters: Vec::new(),
        last_id: None,
        retained: true,
        timeout: None,
    };
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match &*k {
            "topic" => q.filters.push(v.into_owned()),
            "last_event_id" | "lastEventId" | "since" => q.last_id = Some(v.into_owned()),
            "retained" => q.retained = !matches!(&*v, "false" | "0"),
            "timeout" => q.timeout = Some(v.into_owned()),
            _ => {}
        }
    }
    if q.filters.is_empty() {
        return Err(ApiError::bad_request(
            "give at least one MQTT filter: ?topic=a/+/b",
        ));
    }
    for f in &q.filters {
        topic::validate_filter(f)
            .map_err(|e| ApiError::bad_request(format!("invalid filter {f:?}: {e}")))?;
        if f.starts_with('$') {
            return Err(ApiError::bad_request(format!(
                "filter {f:?}: $ topics and shared subscriptions are not streamed"
            )));
        }
    }
    q.filters.sort();
    q.filters.dedup();
    Ok(q)
}

/// The JSON form of one message.
pub fn event_json(
    id: Option<String>,
    topic: &str,
    payload: &[u8],
    content_type: Option<&str>,
    user: &[(String, String)],
) -> Value {
    let (payload, encoding) = crate::body::json_text(payload);
    let mut v = json!({ "topic": topic, "payload": payload, "encoding": encoding });
    if let Some(id) = id {
        v["id"] = Value::String(id);
    }
    if let Some(ct) = content_type {
        v["content_type"] = Value::String(ct.to_string());
    }
    if !user.is_empty() {
        v["user_properties"] = Value::Array(user.iter().map(|(k, v)| json!([k, v])).collect());
    }
    v
}

fn live_json(hub: &Hub, e: &Event) -> Value {
    event_json(
        Some(hub.event_id(e.id)),
        &e.topic,
        &e.payload,
        e.content_type.as_deref(),
        &e.user_properties,
    )
}

fn gap_json(st: &AppState, why: &str, head: u64) -> Value {
    json!({ "gap": why, "last_id": st.hub.event_id(head) })
}

/// Authenticates the caller once and checks every filter; returns when the caller's
/// credentials expire (the stream ends then) and whose account its filters are on.
async fn authorize(
    st: &AppState,
    c: &Caller,
    filters: &[String],
) -> Result<(Option<std::time::SystemTime>, String), ApiError> {
    let who = crate::access::caller(st, &c.headers, Some(&c.uri), c.ip).await?;
    for f in filters {
        crate::access::may_read(st, &who, f)?;
    }
    Ok((who.expires_at, crate::access::account(&who, c.ip)))
}

fn last_event_id(headers: &HeaderMap, q: &StreamQuery) -> Option<String> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| q.last_id.clone())
}

/// The query, parsed and within `[bridge] max_filters`.
fn checked_query(st: &AppState, raw: Option<String>) -> Result<StreamQuery, ApiError> {
    let q = parse_query(raw)?;
    if q.filters.len() > st.settings.max_filters {
        return Err(ApiError::bad_request(format!(
            "at most {} topic filters per request",
            st.settings.max_filters
        )));
    }
    Ok(q)
}

pub async fn events(
    State(st): State<AppState>,
    c: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = checked_query(&st, raw)?;
    let (expires, account) = authorize(&st, &c, &q.filters).await?;
    let since = last_event_id(&c.headers, &q).map(|s| st.hub.parse_id(&s));
    let resumed = since.is_some();
    let (sub, replay, head) = st.hub.attach(&q.filters, since, Some(&account)).await?;
    // What is owed first, as one buffer (given back once sent).
    let mut first = Vec::new();
    match replay {
        Some(Ok(events)) => {
            for e in events {
                first.extend_from_slice(&live_frame(&st.hub, &e));
            }
        }
        Some(Err(Gap(why))) => sse::Event::new()
            .event("gap")
            .id(&st.hub.event_id(head))
            .data(gap_json(&st, why, head).to_string().as_bytes())
            .finish_into(&mut first),
        None => {}
    }
    if q.retained && !resumed {
        let now = std::time::SystemTime::now();
        // Overlapping filters match the same retained message: send it once.
        let mut sent = std::collections::HashSet::new();
        for f in &q.filters {
            for r in st.edge.retained().matching(f) {
                if !sent.insert(r.publish.topic.clone()) {
                    continue;
                }
                let Some(m) = r.live(now) else { continue };
                let props = m.properties.unwrap_or_default();
                let mut v = event_json(
                    None,
                    &String::from_utf8_lossy(&m.topic),
                    &m.payload,
                    props.content_type.as_deref(),
                    &props.user_properties,
                );
                v["retained"] = Value::Bool(true);
                sse::Event::new()
                    .data(v.to_string().as_bytes())
                    .finish_into(&mut first);
            }
        }
    }
    let first = if first.is_empty() {
        Bytes::from_static(sse::OPEN)
    } else {
        Bytes::from(first)
    };
    // The stream ends when the caller's credentials expire. Heartbeats come from the hub's
    // one clock, not from a timer per stream.
    Ok(sse::response(first, Live { sub }, expires))
}

/// An `/events` SSE frame for `e`: its id and its JSON, built once per event.
fn live_frame(hub: &Hub, e: &Event) -> Bytes {
    e.frame
        .get_or_init(|| {
            let json = live_json(hub, e).to_string();
            sse::Event::with_capacity(json.len() + 32)
                .id(&hub.event_id(e.id))
                .data(json.as_bytes())
                .finish()
        })
        .clone()
}

/// The frame that heartbeats an idle `/events` stream.
const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// The live part of an `/events` stream: its hub subscription, and nothing else (every open
/// stream keeps this).
struct Live {
    sub: Subscription,
}

impl sse::Source for Live {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        // What was queued before a loss goes first, then the gap, then newer messages (the hub
        // queues nothing for this stream while the loss is unreported).
        let beat = match self.sub.rx.poll_next(cx) {
            Poll::Ready(Next::Item(ev)) => {
                return Poll::Ready(Some(live_frame(self.sub.hub(), &ev)))
            }
            Poll::Ready(Next::Closed) => return Poll::Ready(None),
            Poll::Ready(Next::Beat) => true,
            Poll::Pending => false,
        };
        let missed = self.sub.lagged().swap(0, Ordering::AcqRel);
        if missed > 0 {
            let gap =
                json!({ "gap": "this stream fell behind and lost messages", "missed": missed });
            let e = sse::Event::new()
                .event("gap")
                .data(gap.to_string().as_bytes());
            return Poll::Ready(Some(e.finish()));
        }
        if beat {
            return Poll::Ready(Some(Bytes::from_static(HEARTBEAT)));
        }
        Poll::Pending
    }
}

pub async fn poll(
    State(st): State<AppState>,
    c: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = checked_query(&st, raw)?;
    let max = st.settings.poll_max_secs.max(1);
    let timeout = match q.timeout.as_deref().map(str::parse::<u64>) {
        None => 30.min(max),
        Some(Ok(t)) if t <= max => t,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "timeout must be a number of seconds from 0 to {max}"
            )))
        }
    };
    let (_, account) = authorize(&st, &c, &q.filters).await?;
    let since = last_event_id(&c.headers, &q).map(|s| st.hub.parse_id(&s));
    let (mut sub, replay, head) = st.hub.attach(&q.filters, since, Some(&account)).await?;
    let mut events: Vec<Arc<Event>> = Vec::new();
    let mut gap = None;
    match replay {
        Some(Ok(evs)) => events = evs,
        Some(Err(Gap(why))) => gap = Some(why),
        None => {}
    }
    if events.is_empty() && gap.is_none() {
        if let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(timeout), sub.rx.recv()).await
        {
            events.push(e);
        }
    }
    while let Ok(e) = sub.rx.try_recv() {
        events.push(e);
    }
    if events.is_empty() && gap.is_none() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let last = events.last().map_or(head, |e| e.id);
    let mut body = json!({
        "events": events.iter().map(|e| live_json(&st.hub, e)).collect::<Vec<_>>(),
        "last_id": st.hub.event_id(last),
    });
    if let Some(why) = gap {
        body["gap"] = Value::String(why.to_string());
    }
    Ok(Json(body).into_response())
}
