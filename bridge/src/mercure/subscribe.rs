//! `GET /.well-known/mercure?topic=…`: a Mercure subscriber's Server-Sent Events stream.
//!
//! The subscriber names one or more topic selectors (`topic`, repeatable) and may present a
//! token (see [`super::auth`]); without one it is served only when `anonymous` is on. It is one
//! hub stream on the Mercure MQTT filters; each event is delivered when a selector matches one
//! of the update's topics and, for a private update, when one of the token's
//! `mercure.subscribe` selectors matches one of them too. `Last-Event-ID` (header, else the
//! `lastEventID` or `Last-Event-ID` query parameter) replays what was missed from the hub's
//! history: `earliest` asks for all of it; an id is either the bridge's event id or a
//! publisher-given id found in the history. When the history cannot prove the replay complete,
//! an `event: gap` says so (as on `/events`), as it does when the stream falls behind. The
//! response's `Last-Event-ID` header is the id of the newest event in the history (`earliest`
//! when there is none). Heartbeats are SSE comments every `[bridge] heartbeat_secs`; the stream
//! ends when the token's `exp` passes.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde_json::json;

use super::mapping::{self, received, wire_id};
use super::selector::{self, any_match, Selector};
use super::{auth, subscriptions, Mercure};
use crate::error::ApiError;
use crate::hub::{Event, Gap, Subscription};
use crate::state::AppState;

/// What one subscriber may see.
pub struct Filter {
    pub selectors: Vec<Selector>,
    /// The token's `mercure.subscribe` selectors (private updates).
    pub allowed: Vec<Selector>,
}

impl Filter {
    /// Should event `e` reach this subscriber? Then its SSE form.
    pub fn deliver(&self, m: &Mercure, e: &Event) -> Option<SseEvent> {
        let r = received(e)?;
        if !any_match(&self.selectors, &r.topics) {
            return None;
        }
        if r.private && !any_match(&self.allowed, &r.topics) {
            return None;
        }
        let mut ev = SseEvent::default()
            .id(wire_id(&m.hub, e))
            .data(String::from_utf8_lossy(&e.payload));
        if let Some(t) = r.event_type {
            ev = ev.event(t);
        }
        if let Some(ms) = r.retry {
            ev = ev.retry(Duration::from_millis(ms));
        }
        Some(ev)
    }
}

fn gap_event(why: &str, extra: serde_json::Value) -> SseEvent {
    let mut v = json!({ "gap": why });
    if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(x.clone());
    }
    SseEvent::default().event("gap").data(v.to_string())
}

/// Where a `Last-Event-ID` points in the hub's history.
fn resolve(m: &Mercure, id: &str) -> Result<u64, Gap> {
    if id == "earliest" {
        return Ok(0);
    }
    if let Ok(n) = m.hub.parse_id(id) {
        return Ok(n);
    }
    m.hub
        .find(|e| {
            e.user_properties
                .iter()
                .any(|(k, v)| k == "mercure-id" && v == id)
        })
        .ok_or(Gap(
            "Last-Event-ID is not in the history (too old, or not an id of this server)",
        ))
}

pub async fn subscribe(
    State(st): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let m = st
        .mercure
        .clone()
        .ok_or_else(|| ApiError::not_found("the Mercure hub is off"))?;
    let mut topics = Vec::new();
    let mut last_id = None;
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match &*k {
            "topic" => topics.push(v.into_owned()),
            "lastEventID" | "Last-Event-ID" | "lastEventId" => last_id = Some(v.into_owned()),
            _ => {}
        }
    }
    if topics.is_empty() {
        return Err(ApiError::bad_request(
            "give at least one topic selector: ?topic=https://example.com/books/{id}",
        ));
    }
    if topics.len() > st.settings.max_filters {
        return Err(ApiError::bad_request(format!(
            "at most {} topic selectors per subscription ([bridge] max_filters)",
            st.settings.max_filters
        )));
    }
    let grants = match auth::token(&headers, &uri) {
        Some((t, _)) => auth::verify(&m.keys, &t, false)?,
        None if m.settings.anonymous => auth::Grants::default(),
        None => {
            return Err(auth::unauthorized(
                "this hub serves no anonymous subscribers: present a token (Authorization, \
                 the authorization query parameter or the mercureAuthorization cookie)",
            ))
        }
    };
    let filter = Filter {
        selectors: topics.iter().map(|t| Selector::parse(t)).collect(),
        allowed: selector::cached(grants.claim.subscribe.as_deref().unwrap_or_default()),
    };
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(last_id);
    let since = last_id.as_deref().map(|id| resolve(&m, id));
    let header_id = m.last_event_id();
    let (sub, replay, head) = m.hub.attach(&mapping::filters(), since, None).await?;
    let mut first = VecDeque::new();
    match replay {
        Some(Ok(events)) => first.extend(events.iter().filter_map(|e| filter.deliver(&m, e))),
        Some(Err(Gap(why))) => first.push_back(
            gap_event(why, json!({ "last_id": m.hub.event_id(head) })).id(m.hub.event_id(head)),
        ),
        None => {}
    }
    if first.is_empty() {
        // The response head leaves with the body's first bytes: open the stream at once.
        first.push_back(SseEvent::default().comment("open"));
    }
    let presence = subscriptions::Presence::join(&m, topics, grants.claim.payload.clone()).await;
    let heartbeat = Duration::from_secs(st.settings.heartbeat_secs.max(1));
    let ends = crate::hub::expiry(grants.expires);
    use futures_util::StreamExt;
    let mut res = Sse::new(live(m, filter, sub, first, presence).take_until(ends))
        .keep_alive(KeepAlive::new().interval(heartbeat))
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&header_id) {
        res.headers_mut().insert("last-event-id", v);
    }
    Ok(res)
}

type LiveState = (
    Arc<Mercure>,
    Filter,
    Subscription,
    VecDeque<SseEvent>,
    subscriptions::Presence,
);

fn live(
    m: Arc<Mercure>,
    filter: Filter,
    sub: Subscription,
    first: VecDeque<SseEvent>,
    presence: subscriptions::Presence,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let st: LiveState = (m, filter, sub, first, presence);
    stream::unfold(st, |(m, filter, mut sub, mut first, p)| async move {
        if let Some(e) = first.pop_front() {
            if first.is_empty() {
                first = VecDeque::new();
            }
            return Some((Ok(e), (m, filter, sub, first, p)));
        }
        loop {
            // Queued events first, then the loss (if any), then newer ones (see stream.rs).
            let ev = match sub.rx.try_recv() {
                Ok(ev) => ev,
                Err(_) => {
                    let missed = sub.lagged().swap(0, Ordering::AcqRel);
                    if missed > 0 {
                        let e = gap_event(
                            "this stream fell behind and lost messages",
                            json!({ "missed": missed }),
                        );
                        return Some((Ok(e), (m, filter, sub, first, p)));
                    }
                    sub.rx.recv().await?
                }
            };
            if let Some(e) = filter.deliver(&m, &ev) {
                return Some((Ok(e), (m, filter, sub, first, p)));
            }
        }
    })
}
