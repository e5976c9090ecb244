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
pub mod registry;
pub mod routes;
pub mod selector;
pub mod subscribe;
pub mod subscriptions;

use std::sync::Arc;

use crate::hub::Hub;

/// The hub's path (the Mercure well-known URI).
pub const PATH: &str = "/.well-known/mercure";

/// `[mercure]`: the hub is on when `publisher_jwt_key` is set.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MercureSettings {
    /// The key publishers' tokens are verified with: the secret for HS*, a PEM public key (or a
    /// path to one) for RS*/PS*/ES*/EdDSA. Unset: no hub.
    pub publisher_jwt_key: Option<String>,
    /// The key subscribers' tokens are verified with (default: the publisher's).
    pub subscriber_jwt_key: Option<String>,
    /// The JWS algorithm (default HS256).
    pub jwt_algorithm: Option<String>,
    /// Serve subscribers that present no token (public updates only).
    pub anonymous: bool,
    /// The active-subscriptions API and subscription events.
    pub subscriptions: bool,
    /// Origins allowed to use the hub from a browser (CORS, with credentials); `*` for any.
    pub cors_origins: Vec<String>,
}

/// The running hub.
pub struct Mercure {
    pub settings: MercureSettings,
    pub keys: auth::Keys,
    pub hub: Arc<Hub>,
    pub registry: registry::Registry,
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
                sub.lagged().store(0, std::sync::atomic::Ordering::Release);
            }
        });
        Ok(Some(Arc::new(Mercure {
            settings,
            keys,
            hub: hub.clone(),
            registry: registry::Registry::default(),
            _keeper: keeper,
        })))
    }
}

impl Mercure {
    /// The id of the newest event, for the `Last-Event-ID` response header.
    pub fn last_event_id(&self) -> String {
        match self.hub.head() {
            0 => "earliest".into(),
            n => self
                .hub
                .event(n)
                .map_or_else(|| self.hub.event_id(n), |e| mapping::wire_id(&self.hub, &e)),
        }
    }
}

impl Drop for Mercure {
    fn drop(&mut self) {
        self._keeper.abort();
    }
}
