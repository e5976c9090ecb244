//! `GET /events` (Server-Sent Events) and `GET /poll` (long polling).
//!
//! Both take one or more MQTT filters as repeated `topic=` parameters. An SSE stream first sends
//! the retained messages matching its filters (unless `retained=false`), or, when the client
//! reconnects with `Last-Event-ID` (header, or `last_event_id=` for clients that cannot set it),
//! exactly the messages it missed; then live messages. Every message is an SSE event whose `id`
//! is the bridge's event id and whose data is JSON:
//! `{"id","topic","payload","encoding":"utf8"|"base64","content_type"?,"user_properties"?,"retained"?}`.
//! An `event: gap` tells the client it lost messages (history too short, or it read too slowly)
//! and should resync from state. SSE framing is axum's; heartbeats (`: heartbeat`, every
//! `[bridge] heartbeat_secs`) ring from the hub's one clock.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use broker::topic;
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};

use crate::access::Caller;
use crate::error::ApiError;
use crate::hub::{Event, Gap, Hub, Subscription};
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
    let mut first: VecDeque<SseEvent> = VecDeque::new();
    match replay {
        Some(Ok(events)) => {
            for e in events {
                first.push_back(sse_event(&st.hub, &e));
            }
        }
        Some(Err(Gap(why))) => {
            first.push_back(
                SseEvent::default()
                    .event("gap")
                    .id(st.hub.event_id(head))
                    .data(gap_json(&st, why, head).to_string()),
            );
        }
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
                first.push_back(SseEvent::default().data(v.to_string()));
            }
        }
    }
    if first.is_empty() {
        // hyper sends the response head with the body's first bytes: without this comment a
        // client would not see the stream open (EventSource `open`) until the first message or
        // heartbeat.
        first.push_back(SseEvent::default().comment("open"));
    }
    // The stream ends when the caller's credentials expire. Heartbeats come from the hub's
    // one clock ([`Hub::heartbeat`]), not from a timer per stream.
    let ends = crate::hub::expiry(expires);
    use futures_util::StreamExt;
    Ok(Sse::new(live(st.hub.clone(), sub, first).take_until(ends)).into_response())
}

fn sse_event(hub: &Hub, e: &Event) -> SseEvent {
    SseEvent::default()
        .id(hub.event_id(e.id))
        .data(e.json.get_or_init(|| live_json(hub, e).to_string()))
}

/// The stream's events: `first` (replay or retained state), then live ones. It holds the hub
/// alone, not the whole [`AppState`]: every open stream keeps this state.
fn live(
    hub: Arc<Hub>,
    sub: Subscription,
    first: VecDeque<SseEvent>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    stream::unfold((hub, sub, first), |(st, mut sub, mut first)| async move {
        if let Some(e) = first.pop_front() {
            if first.is_empty() {
                // Its buffer would stay as long as the stream: give it back.
                first = VecDeque::new();
            }
            return Some((Ok(e), (st, sub, first)));
        }
        // What was queued before the loss goes first, then the gap, then newer messages (the
        // hub queues nothing for this stream while the loss is unreported).
        if let Ok(ev) = sub.rx.try_recv() {
            let e = sse_event(&st, &ev);
            return Some((Ok(e), (st, sub, first)));
        }
        let missed = sub.lagged().swap(0, Ordering::AcqRel);
        if missed > 0 {
            let e = SseEvent::default().event("gap").data(
                json!({ "gap": "this stream fell behind and lost messages", "missed": missed })
                    .to_string(),
            );
            return Some((Ok(e), (st, sub, first)));
        }
        let e = tokio::select! {
            ev = sub.rx.recv() => sse_event(&st, &*ev?),
            () = st.heartbeat() => SseEvent::default().comment("heartbeat"),
        };
        Some((Ok(e), (st, sub, first)))
    })
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
