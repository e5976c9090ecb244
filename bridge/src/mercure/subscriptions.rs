//! The active-subscriptions API and subscription events (when `[mercure] subscriptions` is on).
//!
//! Every open subscriber stream registers one subscription per topic selector, identified by
//! `/.well-known/mercure/subscriptions/{topic}/{subscriber}` (both parts percent-encoded; the
//! subscriber is a `urn:uuid:`). When it opens and when it closes, that subscription is
//! published as a private update on its own id, with the JSON-LD below (`active` true, then
//! false), so subscribers allowed to see it (a `mercure.subscribe` selector matching it, e.g.
//! `/.well-known/mercure/subscriptions/{topic}/{subscriber}`) follow presence live. The `GET`
//! routes list them (all, for one selector, or one), as JSON-LD, to subscribers whose token
//! allows the requested URL's path the same way:
//!
//! ```json
//! {"@context": "https://mercure.rocks/", "id": "/.well-known/mercure/subscriptions",
//!  "type": "Subscriptions", "lastEventID": "…", "subscriptions": [
//!   {"id": "/.well-known/mercure/subscriptions/…/…", "type": "Subscription",
//!    "subscriber": "urn:uuid:…", "topic": "…", "active": true, "payload": {…}}]}
//! ```

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use super::mapping::Update;
use super::registry::Entry;
use super::{auth, selector, Mercure};
use crate::error::ApiError;
use crate::state::AppState;

/// Everything but RFC 3986's unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The id (and topic) of one subscription.
pub fn subscription_id(topic: &str, subscriber: &str) -> String {
    format!(
        "{}/subscriptions/{}/{}",
        super::PATH,
        utf8_percent_encode(topic, COMPONENT),
        utf8_percent_encode(subscriber, COMPONENT)
    )
}

fn subscription_json(
    topic: &str,
    subscriber: &str,
    active: bool,
    payload: &Option<Value>,
) -> Value {
    let mut v = json!({
        "id": subscription_id(topic, subscriber),
        "type": "Subscription",
        "subscriber": subscriber,
        "topic": topic,
        "active": active,
    });
    if let Some(p) = payload {
        v["payload"] = p.clone();
    }
    v
}

/// Publishes the subscription events of `subscriber` (one per topic).
async fn announce(
    m: &Mercure,
    subscriber: &str,
    topics: &[String],
    active: bool,
    payload: &Option<Value>,
) {
    for t in topics {
        let mut v = subscription_json(t, subscriber, active, payload);
        v["@context"] = json!("https://mercure.rocks/");
        let u = Update {
            topics: vec![subscription_id(t, subscriber)],
            data: v.to_string(),
            private: true,
            id: format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            event_type: None,
            retry: None,
        };
        if let Err(e) = m.hub.client().publish(u.to_publish()).await {
            tracing::debug!(error = %e, "a Mercure subscription event was not published");
        }
    }
}

/// One open subscriber: registered while it lives; its departure is announced on drop.
pub struct Presence {
    m: Option<Arc<Mercure>>,
    subscriber: String,
}

impl Presence {
    /// Registers (and announces) a subscriber when the API is on.
    pub async fn join(m: &Arc<Mercure>, topics: Vec<String>, payload: Option<Value>) -> Presence {
        if !m.settings.subscriptions {
            return Presence {
                m: None,
                subscriber: String::new(),
            };
        }
        let subscriber = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        announce(m, &subscriber, &topics, true, &payload).await;
        m.registry
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(subscriber.clone(), Entry { topics, payload });
        Presence {
            m: Some(m.clone()),
            subscriber,
        }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        let Some(m) = self.m.take() else { return };
        let entry = m
            .registry
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.subscriber);
        if let Some(e) = entry {
            let subscriber = std::mem::take(&mut self.subscriber);
            tokio::spawn(async move {
                announce(&m, &subscriber, &e.topics, false, &e.payload).await;
            });
        }
    }
}

/// The caller's token must allow the requested path (as a topic).
fn authorize(m: &Mercure, headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let Some((t, _)) = auth::token(headers, uri) else {
        return Err(auth::unauthorized(
            "the subscriptions API needs a subscriber token",
        ));
    };
    let g = auth::verify(&m.keys, &t, false)?;
    let allowed = selector::cached(g.claim.subscribe.as_deref().unwrap_or_default());
    let path = uri.path().to_string();
    if !selector::any_match(&allowed, std::slice::from_ref(&path)) {
        return Err(ApiError::forbidden(format!(
            "the token's mercure.subscribe does not cover {path}"
        )));
    }
    Ok(())
}

fn ld(v: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/ld+json")],
        v.to_string(),
    )
        .into_response()
}

/// The hub, and the caller allowed to read the subscriptions API at this path.
fn authorized<'a>(
    st: &'a AppState,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<&'a Mercure, ApiError> {
    let m = st
        .mercure
        .as_deref()
        .ok_or_else(|| ApiError::not_found("the Mercure hub is off"))?;
    authorize(m, headers, uri)?;
    Ok(m)
}

fn listing(
    st: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    topic: Option<&str>,
) -> Result<Response, ApiError> {
    let m = authorized(st, uri, headers)?;
    let subs: Vec<Value> = m
        .registry
        .subscribers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .flat_map(|(s, e)| {
            e.topics
                .iter()
                .filter(|t| topic.is_none_or(|want| want == t.as_str()))
                .map(|t| subscription_json(t, s, true, &e.payload))
                .collect::<Vec<_>>()
        })
        .collect();
    Ok(ld(json!({
        "@context": "https://mercure.rocks/",
        "id": uri.path(),
        "type": "Subscriptions",
        "lastEventID": m.last_event_id(),
        "subscriptions": subs,
    })))
}

pub async fn list(
    State(st): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    listing(&st, &uri, &headers, None)
}

pub async fn list_topic(
    State(st): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    Path(topic): Path<String>,
) -> Result<Response, ApiError> {
    listing(&st, &uri, &headers, Some(&topic))
}

pub async fn one(
    State(st): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    Path((topic, subscriber)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let m = authorized(&st, &uri, &headers)?;
    let found = m
        .registry
        .subscribers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&subscriber)
        .filter(|e| e.topics.contains(&topic))
        .map(|e| subscription_json(&topic, &subscriber, true, &e.payload));
    let mut v = found.ok_or_else(|| ApiError::not_found("no such active subscription"))?;
    v["@context"] = json!("https://mercure.rocks/");
    v["lastEventID"] = json!(m.last_event_id());
    Ok(ld(v))
}
