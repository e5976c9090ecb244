//! The HTTP routes, the shared application state, and the JSON error shape every route uses.
//!
//! | route | what |
//! |---|---|
//! | `GET /mqtt` | MQTT over WebSocket ([`crate::ws`]) |
//! | `GET/POST/PUT/DELETE /topics/{topic…}` | retained state and publishing ([`crate::topics`]) |
//! | `GET /events?topic=…` | Server-Sent Events ([`crate::stream`]) |
//! | `GET /poll?topic=…&since=…` | long polling ([`crate::stream`]) |
//! | `GET /openapi.json`, `/healthz`, `/readyz` | API description and probes |

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use broker::Edge;
use serde_json::json;

use crate::hub::Hub;
use crate::BridgeSettings;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub edge: Arc<Edge>,
    pub hub: Arc<Hub>,
    pub settings: BridgeSettings,
}

impl axum::extract::FromRef<AppState> for Arc<Edge> {
    fn from_ref(s: &AppState) -> Self {
        s.edge.clone()
    }
}

/// The OpenAPI document of these routes (kept in the repository, checked by a test).
pub const OPENAPI: &str = include_str!("../openapi.json");

/// A JSON error body: `{"error": {"status": 404, "message": "…"}}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({ "error": { "status": status.as_u16(), "message": message.into() } });
    (status, Json(body)).into_response()
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/mqtt", get(crate::ws::upgrade))
        .route(
            "/topics/{*topic}",
            get(crate::topics::get)
                .post(crate::topics::post)
                .put(crate::topics::put)
                .delete(crate::topics::delete),
        )
        .route(
            "/topics",
            any(|| async {
                error(
                    StatusCode::BAD_REQUEST,
                    "the topic is missing: /topics/{topic}",
                )
            }),
        )
        .route(
            "/topics/",
            any(|| async {
                error(
                    StatusCode::BAD_REQUEST,
                    "the topic is missing: /topics/{topic}",
                )
            }),
        )
        .route("/events", get(crate::stream::events))
        .route("/poll", get(crate::stream::poll))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route(
            "/readyz",
            get(|| async { Json(json!({ "status": "ready" })) }),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(state)
}
