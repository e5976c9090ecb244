//! Reading what a request carries, once it is authorized: the body (bounded in size and time),
//! the path captures and the query string, each refused with an [`ApiError`]; and a body or
//! payload as JSON text ([`json_text`]).

use std::collections::HashMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{header, HeaderValue, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;

use crate::error::ApiError;
use crate::state::AppState;

/// Reads a request body, once the request is authorized: at most `[bridge] max_body` bytes
/// (413 as soon as the limit is passed, or the declared length is over it) within
/// `[bridge] body_timeout_secs` (408, and the connection is closed).
pub async fn read_body(st: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let max = st.settings.max_body;
    // A declared length over the limit fails on the first chunk read (not before: reading one
    // chunk lets hyper take in what the client already sent, so it reads the 413 rather than
    // a reset connection).
    let limit = Duration::from_secs(st.settings.body_timeout_secs.max(1));
    match tokio::time::timeout(limit, axum::body::to_bytes(body, max)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            Err(if over {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over the maximum of {max} bytes"),
                )
            } else {
                ApiError::bad_request(format!("cannot read the body: {e}"))
            })
        }
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {} s", limit.as_secs()),
        )
        .with_header(header::CONNECTION, HeaderValue::from_static("close"))),
    }
}

/// Path captures, or a 400.
pub fn captures(
    p: Result<Path<HashMap<String, String>>, PathRejection>,
) -> Result<HashMap<String, String>, ApiError> {
    p.map(|p| p.0)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// The query string's parameters, or a 400.
pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|q| q.0)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// A body or payload as a JSON string and its encoding: its text when it is UTF-8 (`utf8`), else
/// base64 (`base64`).
pub fn json_text(bytes: &[u8]) -> (Value, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Value::String(s.to_string()), "utf8"),
        Err(_) => (Value::String(STANDARD.encode(bytes)), "base64"),
    }
}
