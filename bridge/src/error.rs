//! [`ApiError`]: how every HTTP route refuses a request. A status and a message, answered as the
//! JSON body `{"error": {"status": N, "message": "…"}}` (plus any header the refusal needs:
//! `WWW-Authenticate`, `Retry-After`, `Connection: close`).
//!
//! Handlers return `Result<_, ApiError>` and use `?`; helpers that check a request return
//! `Result<_, ApiError>` too. A broker failure ([`ClientError`]) converts into the matching HTTP
//! status with `?`. This module imports no handler and no other module of the bridge.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use broker::client::ClientError;
use serde_json::json;

/// A refused request: status, message, and the headers the refusal carries.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// The same refusal, answered with one more header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "status": self.status.as_u16(), "message": self.message } });
        let mut r = (self.status, Json(body)).into_response();
        for (k, v) in self.headers {
            r.headers_mut().insert(k, v);
        }
        r
    }
}

/// A broker failure, as HTTP: not authorized 403, too large 413, over quota 429, another
/// refusal 502, broker gone 503, no answer in time 504.
impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> ApiError {
        let status = match &e {
            ClientError::Refused(why) if why.contains("NotAuthorized") => StatusCode::FORBIDDEN,
            ClientError::Refused(why) if why.starts_with("PacketTooLarge") => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ClientError::Refused(why) if why.contains("QuotaExceeded") => {
                StatusCode::TOO_MANY_REQUESTS
            }
            // The session store could not write a message for a persistent session.
            ClientError::Refused(why) if why.starts_with("StoreUnavailable") => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ClientError::Refused(_) => StatusCode::BAD_GATEWAY,
            ClientError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            ClientError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        };
        let message = match &e {
            ClientError::Refused(why) => format!("the broker refused: {why}"),
            _ => e.to_string(),
        };
        ApiError::new(status, message)
    }
}

/// A JSON error response (for the places that answer with a [`Response`] directly).
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}
