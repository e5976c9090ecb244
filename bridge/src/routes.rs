//! The HTTP routes, the shared application state, and the JSON error shape every route uses.
//!
//! | route | what |
//! |---|---|
//! | `GET /mqtt` | MQTT over WebSocket ([`crate::ws`]) |
//! | `GET/POST/PUT/DELETE /topics/{topic…}` | retained state and publishing ([`crate::topics`]) |
//! | `GET /events?topic=…` | Server-Sent Events ([`crate::stream`]) |
//! | `GET /poll?topic=…&since=…` | long polling ([`crate::stream`]) |
//! | `GET /openapi.json`, `/healthz`, `/readyz` | API description and probes |
//! | `GET /metrics`, `/api/stats`, `/` | Prometheus metrics, JSON stats, the dashboard ([`crate::ops`]) |
//! | `GET /api/history` | the dashboard's charts: the last hour, a sample a second ([`crate::history`]) |
//! | `GET /api/clients`, `GET/DELETE /api/clients/{id}` | connected clients ([`crate::clients`]) |
//! | `GET /api/topics` | the retained messages as a tree ([`crate::tree`]) |
//! | `GET /assets/uPlot.*` | the dashboard's charting library |
//! | `GET /examples/browser/…` | the browser example page (`[bridge] examples_dir`) |
//! | `GET/POST /.well-known/mercure[/subscriptions…]` | the Mercure hub ([`crate::mercure`]), with its own CORS |

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use broker::Edge;
use serde_json::json;

use crate::hub::Hub;
use crate::rpc::Rpc;
use crate::BridgeSettings;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub edge: Arc<Edge>,
    pub hub: Arc<Hub>,
    pub rpc: Arc<Rpc>,
    /// The Mercure hub, when `[mercure] publisher_jwt_key` is set.
    pub mercure: Option<Arc<crate::mercure::Mercure>>,
    pub security: Arc<broker::security::Security>,
    pub settings: BridgeSettings,
    /// The dashboard's chart samples and the bridge's request counter.
    pub history: Arc<crate::history::History>,
}

/// Reads a request body, once the request is authorized: at most `[bridge] max_body` bytes
/// (413 as soon as the limit is passed, or the declared length is over it) within
/// `[bridge] body_timeout_secs` (408, and the connection is closed).
pub async fn read_body(
    st: &AppState,
    body: axum::body::Body,
) -> Result<axum::body::Bytes, Response> {
    let max = st.settings.max_body;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over the maximum of {max} bytes"),
        )
    };
    // A declared length over the limit fails on the first chunk read (not before: reading one
    // chunk lets hyper take in what the client already sent, so it reads the 413 rather than
    // a reset connection).
    let limit = std::time::Duration::from_secs(st.settings.body_timeout_secs.max(1));
    match tokio::time::timeout(limit, axum::body::to_bytes(body, max)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            Err(if over {
                too_large()
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                )
            })
        }
        Err(_) => {
            let mut r = error(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {} s", limit.as_secs()),
            );
            r.headers_mut().insert(
                header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            Err(r)
        }
    }
}

/// Path captures, or a JSON 400.
pub fn captures_or_error(
    p: Result<
        axum::extract::Path<std::collections::HashMap<String, String>>,
        axum::extract::rejection::PathRejection,
    >,
) -> Result<std::collections::HashMap<String, String>, Response> {
    p.map(|p| p.0)
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))
}

fn rpc_handler(route: Option<crate::rpc::RpcRoute>) -> axum::routing::MethodRouter<AppState> {
    any(
        move |axum::extract::State(st): axum::extract::State<AppState>,
              caps: Result<
            axum::extract::Path<std::collections::HashMap<String, String>>,
            axum::extract::rejection::PathRejection,
        >,
              ip: crate::access::ClientIp,
              method: axum::http::Method,
              uri: axum::http::Uri,
              headers: axum::http::HeaderMap,
              body: axum::body::Body| {
            let route = route.clone();
            async move {
                let caps = match captures_or_error(caps) {
                    Ok(c) => c,
                    Err(r) => return r,
                };
                let req = crate::rpc::Call {
                    route,
                    captures: caps,
                    method,
                    uri,
                    headers,
                    ip,
                };
                crate::rpc::call(st, req, body).await
            }
        },
    )
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

/// CORS for the configured origins (none by default: browsers on other origins are refused).
fn cors_layer(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    let base = CorsLayer::new()
        .allow_methods(Any)
        .allow_headers(Any)
        .expose_headers(Any);
    if origins.iter().any(|o| o == "*") {
        base.allow_origin(Any)
    } else {
        let list: Vec<axum::http::HeaderValue> = origins
            .iter()
            .filter_map(|o| axum::http::HeaderValue::from_str(o).ok())
            .collect();
        base.allow_origin(AllowOrigin::list(list))
    }
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

pub fn router(state: AppState) -> Router {
    let mut app = Router::new();
    for r in &state.rpc.settings.routes {
        app = app.route(&crate::rpc::axum_path(r), rpc_handler(Some(r.clone())));
    }
    let max_body = state.settings.max_body;
    let cors = cors_layer(&state.settings.cors_origins);
    let examples = tower_http::services::ServeDir::new(&state.settings.examples_dir);
    app.route("/mqtt", get(crate::ws::upgrade))
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
        .route("/rpc/{*path}", rpc_handler(None))
        .route("/events", get(crate::stream::events))
        .route("/poll", get(crate::stream::poll))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/healthz", get(crate::ops::healthz))
        .route("/readyz", get(crate::ops::readyz))
        .route("/metrics", get(crate::ops::metrics))
        .route("/api/stats", get(crate::ops::stats))
        .route("/api/history", get(crate::history::history))
        .route("/api/clients", get(crate::clients::list))
        .route(
            "/api/clients/{id}",
            get(crate::clients::get).delete(crate::clients::kick),
        )
        .route("/api/topics", get(crate::tree::topics))
        .route("/assets/uPlot.iife.min.js", get(crate::ops::uplot_js))
        .route("/assets/uPlot.min.css", get(crate::ops::uplot_css))
        .route("/assets/uPlot.LICENSE.txt", get(crate::ops::uplot_license))
        .route("/", get(crate::ops::dashboard))
        .nest_service("/examples/browser", examples)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(cors)
        .merge(crate::mercure::routes(&state))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::history::count_request,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::access::loopback_only,
        ))
        .with_state(state)
}
