//! The HTTP routes and the JSON error shape every route uses.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use broker::Edge;
use serde_json::json;

/// A JSON error body: `{"error": {"status": 404, "message": "…"}}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({ "error": { "status": status.as_u16(), "message": message.into() } });
    (status, Json(body)).into_response()
}

pub fn router(edge: Arc<Edge>) -> Router {
    Router::new()
        .route("/mqtt", get(crate::ws::upgrade))
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route(
            "/readyz",
            get(|| async { Json(json!({ "status": "ready" })) }),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(edge)
}
