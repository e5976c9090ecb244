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
//! when there is none). Heartbeats are empty SSE comments (`:`) every `[bridge] heartbeat_secs`
//! on a stream with nothing to send, rung by the hub's one clock; the stream ends when the
//! token's `exp` passes.
//!
//! Data flow: the handler authorizes, attaches to the hub, encodes the replay (or `: open`)
//! into one buffer and answers with [`crate::sse::response`]; its body then polls `Live`,
//! which reads the stream's hub feed and encodes each event this subscriber may see.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::Response;
use bytes::Bytes;
use serde_json::json;

use super::mapping::{self, received, wire_id};
use super::selector::{self, any_match, Selector};
use super::{auth, subscriptions, Mercure};
use crate::error::ApiError;
use crate::feed::Next;
use crate::hub::{Event, Gap, Subscription};
use crate::sse;
use crate::state::AppState;

/// What one subscriber may see.
pub struct Filter {
    pub selectors: Vec<Selector>,
    /// The token's `mercure.subscribe` selectors (private updates).
    pub allowed: Vec<Selector>,
}

impl Filter {
    /// Should event `e` reach this subscriber? Then its SSE form.
    pub fn deliver(&self, m: &Mercure, e: &Event) -> Option<sse::Event> {
        let r = received(e)?;
        if !any_match(&self.selectors, &r.topics) {
            return None;
        }
        if r.private && !any_match(&self.allowed, &r.topics) {
            return None;
        }
        let data = String::from_utf8_lossy(&e.payload);
        let mut ev = sse::Event::with_capacity(data.len() + 64)
            .id(&wire_id(&m.hub, e))
            .data(data.as_bytes());
        if let Some(t) = r.event_type {
            ev = ev.event(t);
        }
        if let Some(ms) = r.retry {
            ev = ev.retry(ms);
        }
        Some(ev)
    }
}

fn gap_event(why: &str, extra: serde_json::Value) -> sse::Event {
    let mut v = json!({ "gap": why });
    if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(x.clone());
    }
    sse::Event::new()
        .event("gap")
        .data(v.to_string().as_bytes())
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
    // What is owed first, as one buffer (given back once sent).
    let mut first = Vec::new();
    match replay {
        Some(Ok(events)) => {
            for e in &events {
                if let Some(ev) = filter.deliver(&m, e) {
                    ev.finish_into(&mut first);
                }
            }
        }
        Some(Err(Gap(why))) => gap_event(why, json!({ "last_id": m.hub.event_id(head) }))
            .id(&m.hub.event_id(head))
            .finish_into(&mut first),
        None => {}
    }
    let first = if first.is_empty() {
        Bytes::from_static(sse::OPEN)
    } else {
        Bytes::from(first)
    };
    let presence = subscriptions::Presence::join(&m, topics, grants.claim.payload.clone()).await;
    let live = Live {
        m,
        filter,
        sub,
        _presence: presence,
    };
    let mut res = sse::response(first, live, grants.expires);
    if let Ok(v) = HeaderValue::from_str(&header_id) {
        res.headers_mut().insert("last-event-id", v);
    }
    Ok(res)
}

/// The frame that heartbeats an idle Mercure stream: an empty comment, as axum's keep-alive
/// sent it before.
const HEARTBEAT: &[u8] = b":\n\n";

/// The live part of a subscriber's stream: what it may see, its hub subscription, and its
/// presence in the active-subscriptions list (for as long as the stream is open).
struct Live {
    m: Arc<Mercure>,
    filter: Filter,
    sub: Subscription,
    _presence: subscriptions::Presence,
}

impl sse::Source for Live {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        loop {
            // Queued events first, then the loss (if any), then newer ones (see stream.rs).
            let beat = match self.sub.rx.poll_next(cx) {
                Poll::Ready(Next::Item(ev)) => match self.filter.deliver(&self.m, &ev) {
                    Some(e) => return Poll::Ready(Some(e.finish())),
                    // Not for this subscriber: the next one (the feed is bounded).
                    None => continue,
                },
                Poll::Ready(Next::Closed) => return Poll::Ready(None),
                Poll::Ready(Next::Beat) => true,
                Poll::Pending => false,
            };
            let missed = self.sub.lagged().swap(0, Ordering::AcqRel);
            if missed > 0 {
                let e = gap_event(
                    "this stream fell behind and lost messages",
                    json!({ "missed": missed }),
                );
                return Poll::Ready(Some(e.finish()));
            }
            if beat {
                return Poll::Ready(Some(Bytes::from_static(HEARTBEAT)));
            }
            return Poll::Pending;
        }
    }
}
