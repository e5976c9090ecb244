//! `POST /.well-known/mercure`: a publisher's update, form-encoded.
//!
//! Fields: `topic` (one or more; the first is canonical, the rest alternates), `data`,
//! `private` (present: private), `id`, `type`, `retry`. The publisher's token must verify and
//! its `mercure.publish` selectors must match every topic of the update (none given: 401;
//! otherwise 403). The update becomes one MQTT message ([`super::mapping`]) published through
//! the bridge's broker session; the answer, once the broker has it, is `200 text/plain` with
//! the update's id (the given one, or a generated `urn:uuid:…`).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::auth::{self, Source};
use super::mapping::{field_safe, Update};
use super::selector;
use crate::body::read_body;
use crate::error::ApiError;
use crate::state::AppState;

/// Longest topic IRI accepted (the MQTT topic it maps onto must fit 65,535 bytes).
const MAX_TOPIC: usize = 60_000;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

/// Parses the form into an update (400 on a malformed field).
pub fn parse_form(body: &[u8]) -> Result<Update, ApiError> {
    let mut u = Update::default();
    let mut id = None;
    for (k, v) in form_urlencoded::parse(body) {
        match &*k {
            "topic" => u.topics.push(v.into_owned()),
            "data" => u.data = v.into_owned(),
            "private" => u.private = true,
            "id" => id = Some(v.into_owned()),
            "type" => u.event_type = Some(v.into_owned()),
            "retry" => {
                u.retry = Some(
                    v.parse()
                        .map_err(|_| bad("retry must be a number of milliseconds"))?,
                )
            }
            _ => {}
        }
    }
    if u.topics.is_empty() {
        return Err(bad("missing \"topic\": give at least one topic IRI"));
    }
    if let Some(t) = u.topics.iter().find(|t| t.len() > MAX_TOPIC) {
        return Err(bad(format!(
            "topic of {} bytes is over the maximum of {MAX_TOPIC}",
            t.len()
        )));
    }
    if let Some(t) = &u.event_type {
        if !field_safe(t) {
            return Err(bad("type must be non-empty and hold no line breaks"));
        }
    }
    u.id = match id {
        Some(id) if field_safe(&id) => id,
        Some(_) => return Err(bad("id must be non-empty and hold no line breaks")),
        None => format!("urn:uuid:{}", uuid::Uuid::new_v4()),
    };
    Ok(u)
}

/// A token carried by a cookie is ambient authority: a browser request from another origin
/// must come from one the hub allows (CORS origins), else it could be a forged form post.
fn cookie_origin_allowed(m: &super::Mercure, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, h)| h.eq_ignore_ascii_case(host))
        || m.settings
            .cors_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

pub async fn publish(
    State(st): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let m = st
        .mercure
        .clone()
        .ok_or_else(|| ApiError::not_found("the Mercure hub is off"))?;
    let (token, source) = auth::token(&headers, &uri).ok_or_else(|| {
        auth::unauthorized("publishing needs a token with a mercure.publish claim")
    })?;
    if source == Source::Cookie && !cookie_origin_allowed(&m, &headers) {
        return Err(ApiError::forbidden(
            "a cookie token may publish only from the hub's origin or mercure.cors_origins",
        ));
    }
    let grants = auth::verify(&m.keys, &token, true)?;
    // Only an authorized publisher's body is read.
    let body = read_body(&st, body).await?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // A body without a Content-Type is read as the form it must be.
    if !ct.is_empty()
        && !ct
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a Mercure update is application/x-www-form-urlencoded",
        ));
    }
    let update = parse_form(&body)?;
    let allowed = selector::cached(grants.claim.publish.as_deref().unwrap_or_default());
    if allowed.is_empty() {
        return Err(ApiError::forbidden(
            "the token has no mercure.publish claim (or an empty one)",
        ));
    }
    if let Some(t) = update
        .topics
        .iter()
        .find(|t| !allowed.iter().any(|s| s.matches(t)))
    {
        return Err(ApiError::forbidden(format!(
            "the token's mercure.publish does not cover the topic {t:?}"
        )));
    }
    st.client.publish(update.to_publish()).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        update.id,
    )
        .into_response())
}
