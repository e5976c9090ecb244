//! A Mercure hub at `/.well-known/mercure` (the Mercure protocol, 0.x: `topic` selectors,
//! `private` updates, `mercure.publish` / `mercure.subscribe` / `mercure.payload` claims), on
//! the bridge's one message stream.
//!
//! Data flow: a publish (`POST`, [`publish`]) is checked against the publisher's JWS ([`auth`]),
//! turned into one MQTT message under the documented topic mapping ([`mapping`]: `mercure/<IRI>`,
//! or `mercure-private/<IRI>` for private updates, Mercure fields in user properties) and
//! published through the bridge's broker session. The bridge's [`Hub`](crate::hub::Hub) numbers
//! it, keeps it in its bounded history and fans it out, exactly as it does any MQTT publish, so
//! an MQTT client on `mercure/#`, an `/events` stream and a Mercure subscriber all see the same
//! message, and an MQTT publish under `mercure/…` reaches Mercure subscribers. Each Mercure
//! subscriber ([`subscribe`]) is a hub stream on `mercure/#` and `mercure-private/#` whose
//! events are filtered by its topic selectors ([`selector`]) and, for private updates, by its
//! claims; replay by `Last-Event-ID` and gaps are the hub's. With `subscriptions` on, the
//! active subscriptions are listed and announced ([`subscriptions`]).

pub mod auth;
pub mod mapping;
pub mod publish;
pub mod selector;
pub mod subscribe;
pub mod subscriptions;

use std::sync::Arc;

use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::routing::get;
use axum::Router;

use crate::hub::Hub;
use crate::routes::AppState;

/// The hub's path (the Mercure well-known URI).
pub const PATH: &str = "/.well-known/mercure";

/// `[mercure]`: the hub is on when `publisher_jwt_key` is set.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MercureSettings {
    /// The key publishers' tokens are verified with: the secret for HS*, a PEM public key (or a
    /// path to one) for RS*/PS*/ES*/EdDSA. Unset: no hub.
    #[serde(default)]
    pub publisher_jwt_key: Option<String>,
    /// The key subscribers' tokens are verified with (default: the publisher's).
    #[serde(default)]
    pub subscriber_jwt_key: Option<String>,
    /// The JWS algorithm (default HS256).
    #[serde(default)]
    pub jwt_algorithm: Option<String>,
    /// Serve subscribers that present no token (public updates only).
    #[serde(default)]
    pub anonymous: bool,
    /// The active-subscriptions API and subscription events.
    #[serde(default)]
    pub subscriptions: bool,
    /// Origins allowed to use the hub from a browser (CORS, with credentials); `*` for any.
    #[serde(default)]
    pub cors_origins: Vec<String>,
}

/// The running hub.
pub struct Mercure {
    pub settings: MercureSettings,
    pub keys: auth::Keys,
    pub hub: Arc<Hub>,
    pub registry: subscriptions::Registry,
    /// Holds the hub's filters on `mercure/#` and `mercure-private/#` for as long as the hub
    /// runs, so the history can always prove what a reconnecting subscriber missed.
    _keeper: tokio::task::JoinHandle<()>,
}

impl Mercure {
    /// The hub, or `None` when no publisher key is configured.
    pub async fn start(
        settings: MercureSettings,
        hub: &Arc<Hub>,
    ) -> anyhow::Result<Option<Arc<Mercure>>> {
        let Some(keys) = auth::Keys::from_settings(&settings)? else {
            return Ok(None);
        };
        let (mut sub, _, _) = hub
            .attach(&mapping::filters(), None, None)
            .await
            .map_err(|e| anyhow::anyhow!("the Mercure hub cannot follow its topics: {e}"))?;
        let keeper = tokio::spawn(async move {
            while sub.rx.recv().await.is_some() {
                sub.lagged.store(0, std::sync::atomic::Ordering::Release);
            }
        });
        Ok(Some(Arc::new(Mercure {
            settings,
            keys,
            hub: hub.clone(),
            registry: subscriptions::Registry::default(),
            _keeper: keeper,
        })))
    }
}

impl Drop for Mercure {
    fn drop(&mut self) {
        self._keeper.abort();
    }
}

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

async fn method_not_allowed() -> axum::response::Response {
    crate::routes::error(
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
