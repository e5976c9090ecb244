//! The Mercure hub's routes at [`PATH`] (none when the hub is off), with the hub's own CORS.

use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::routing::get;
use axum::Router;

use super::{publish, subscribe, subscriptions, PATH};
use crate::error::ApiError;
use crate::state::AppState;

/// CORS for the hub: the configured origins, with credentials (the `mercureAuthorization`
/// cookie rides on `EventSource(url, {withCredentials: true})`).
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CACHE_CONTROL,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([HeaderName::from_static("last-event-id")])
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

/// The hub's routes (empty when the hub is off).
pub fn routes(state: &AppState) -> Router<AppState> {
    let Some(m) = &state.mercure else {
        return Router::new();
    };
    let mut r = Router::new().route(
        PATH,
        get(subscribe::subscribe)
            .post(publish::publish)
            .fallback(method_not_allowed),
    );
    if m.settings.subscriptions {
        r = r
            .route(
                "/.well-known/mercure/subscriptions",
                get(subscriptions::list).fallback(method_not_allowed),
            )
            .route(
                "/.well-known/mercure/subscriptions/{selector}",
                get(subscriptions::list_topic).fallback(method_not_allowed),
            )
            .route(
                "/.well-known/mercure/subscriptions/{selector}/{subscriber}",
                get(subscriptions::one).fallback(method_not_allowed),
            );
    }
    r.layer(axum::extract::DefaultBodyLimit::max(
        state.settings.max_body,
    ))
    .layer(cors(&m.settings.cors_origins))
}
