//! [`AppState`], what every handler can reach, and [`Peer`], what a handler knows about the
//! connection a request came on.
//!
//! A leaf of the bridge: it names the services the handlers share (the broker's edge, the
//! bridge's broker session, the SSE hub, RPC, the Mercure hub, the dashboard's history) and
//! imports no handler, so handlers import it and [`crate::routes`] wires them, with no circle.

use std::net::SocketAddr;
use std::sync::Arc;

use broker::client::LocalClient;
use broker::Edge;

use crate::history::History;
use crate::hub::Hub;
use crate::mercure::Mercure;
use crate::rpc::Rpc;
use crate::settings::BridgeSettings;

/// What every handler can reach: a handle, cloned (one reference count) for every request.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> AppState {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services behind [`AppState`].
pub struct Services {
    pub edge: Arc<Edge>,
    /// The bridge's broker session: HTTP publishes go through it (the SSE hub receives on it).
    pub client: LocalClient,
    pub hub: Arc<Hub>,
    pub rpc: Arc<Rpc>,
    /// The Mercure hub, when `[mercure] publisher_jwt_key` is set.
    pub mercure: Option<Arc<Mercure>>,
    pub security: Arc<broker::security::Security>,
    pub settings: BridgeSettings,
    /// The dashboard's chart samples and the bridge's request counter.
    pub history: Arc<History>,
}

impl axum::extract::FromRef<AppState> for Arc<Edge> {
    fn from_ref(s: &AppState) -> Self {
        s.edge.clone()
    }
}

/// What a request handler knows about the connection it came on.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
}
