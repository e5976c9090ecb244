//! The HTTP routes: which handler serves which path. Only wiring: the handlers' shared state is
//! [`crate::state::AppState`], their refusals [`crate::error::ApiError`].
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

use axum::http::{header, StatusCode};
use axum::routing::{any, get};
use axum::Router;

use crate::error::ApiError;
use crate::rpc::route::{axum_path, RpcRoute};
use crate::state::AppState;

/// The OpenAPI document of these routes (kept in the repository, checked by a test).
pub const OPENAPI: &str = include_str!("../openapi.json");

/// An RPC route (`None`: the generic `/rpc/{*path}`). The request's head is moved into the call,
/// not copied: extracting `HeaderMap` or `Uri` on their own would clone them.
fn rpc_handler(route: Option<RpcRoute>) -> axum::routing::MethodRouter<AppState> {
    any(
        move |axum::extract::State(st): axum::extract::State<AppState>,
              caps: Result<
            axum::extract::Path<std::collections::HashMap<String, String>>,
            axum::extract::rejection::PathRejection,
        >,
              ip: crate::access::ClientIp,
              req: axum::extract::Request| {
            let route = route.clone();
            async move {
                let (head, body) = req.into_parts();
                let req = crate::rpc::call::Call {
                    route,
                    captures: crate::body::captures(caps)?,
                    method: head.method,
                    uri: head.uri,
                    headers: head.headers,
                    ip,
                };
                crate::rpc::call::call(st, req, body).await
            }
        },
    )
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

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

async fn no_topic() -> ApiError {
    ApiError::bad_request("the topic is missing: /topics/{topic}")
}

/// The bridge's whole HTTP service: what every request passes first ([`App::admit`]), then the
/// router. The check runs before the router rather than as a router layer: a layer costs a boxed
/// future and a boxed service per request.
#[derive(Clone)]
pub struct App {
    pub router: Router,
    state: AppState,
}

impl App {
    pub fn new(state: AppState) -> App {
        App {
            router: router(state.clone()),
            state,
        }
    }

    /// The answer to a request refused before routing (the loopback-only guard); otherwise
    /// `None`, and the request chart counts it.
    pub fn admit<B>(&self, req: &axum::http::Request<B>) -> Option<axum::response::Response> {
        if let Some(refusal) = crate::access::foreign_host_refusal(&self.state, req.headers()) {
            return Some(refusal);
        }
        crate::charts::count_request(&self.state, req.uri().path());
        None
    }
}

fn router(state: AppState) -> Router {
    let mut app = Router::new();
    for r in &state.rpc.settings.routes {
        app = app.route(&axum_path(r), rpc_handler(Some(r.clone())));
    }
    let max_body = state.settings.max_body;
    let origins = &state.settings.cors_origins;
    // No origin allowed: no CORS layer at all (it would only add `Vary` to every answer).
    let cors = (!origins.is_empty()).then(|| cors_layer(origins));
    let examples = tower_http::services::ServeDir::new(&state.settings.examples_dir);
    let mut app = app
        .route("/mqtt", get(crate::ws::upgrade))
        .route(
            "/topics/{*topic}",
            get(crate::topics::get)
                .post(crate::topics::write)
                .put(crate::topics::write)
                .delete(crate::topics::delete),
        )
        .route("/topics", any(no_topic))
        .route("/topics/", any(no_topic))
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
        .route("/api/history", get(crate::charts::history))
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
        .layer(axum::extract::DefaultBodyLimit::max(max_body));
    if let Some(cors) = cors {
        app = app.layer(cors);
    }
    app.merge(crate::mercure::routes::routes(&state))
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
}
