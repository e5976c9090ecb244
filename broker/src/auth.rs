//! Who a client is and what it may do: the two traits the edge asks on every CONNECT, PUBLISH
//! and SUBSCRIBE, whatever the transport (the HTTP bridge asks the same ones).
//!
//! The broker ships the open implementations ([`Anonymous`], [`AllowAll`]); the security layer
//! (JWT, password file, per-topic rules) plugs in its own through [`crate::Broker::start`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use crate::codec::ConnectReturnCode;
use crate::transport::Transport;

/// What a client presented when connecting.
#[derive(Debug)]
pub struct Credentials<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub peer: SocketAddr,
    pub transport: Transport,
}

/// Publish and subscribe filters a principal is granted.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// An authenticated principal.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Subject (token `sub`, password-file user), if any.
    pub subject: Option<String>,
    /// May see `$SYS` and the dashboard.
    pub admin: bool,
    /// When the credentials stop being valid; the connection is closed then.
    pub expires_at: Option<SystemTime>,
    /// Topic permissions, when the authenticator gives them (else the authorizer's rules apply).
    pub grants: Option<Arc<Grants>>,
}

/// Why a CONNECT is refused; each maps onto a CONNACK code for 3.1.1 and for 5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 3.1.1: 0x04; 5: 0x86.
    BadCredentials(String),
    /// 3.1.1: 0x05; 5: 0x87.
    NotAuthorized(String),
    /// 3.1.1: 0x05; 5: 0x8C.
    BadAuthMethod(String),
    /// Too many failed password checks from this address or for this user lately: refused
    /// without checking. 3.1.1: 0x05; 5: 0x9F (connection rate exceeded); HTTP 429.
    Throttled(String),
    /// The password checks are all busy and none came free in time. 3.1.1: 0x05; 5: 0x89
    /// (server busy); HTTP 503.
    Busy(String),
}

impl Refusal {
    /// The MQTT 5 CONNACK code and the reason text (3.1.1 clients get 0x05 for every refusal).
    pub fn connack(&self) -> (ConnectReturnCode, &str) {
        match self {
            Refusal::BadCredentials(w) => (ConnectReturnCode::BadUserNamePassword, w),
            Refusal::NotAuthorized(w) => (ConnectReturnCode::NotAuthorized, w),
            Refusal::BadAuthMethod(w) => (ConnectReturnCode::BadAuthenticationMethod, w),
            Refusal::Throttled(w) => (ConnectReturnCode::ConnectionRateExceeded, w),
            Refusal::Busy(w) => (ConnectReturnCode::ServerBusy, w),
        }
    }
}

/// What [`Authenticator::authenticate_async`] returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Identity, Refusal>> + Send + 'a>>;

/// Decides who a client is.
pub trait Authenticator: Send + Sync + 'static {
    /// Decides in place (it may block: slow checks such as password hashes run here).
    fn authenticate(&self, creds: &Credentials<'_>) -> Result<Identity, Refusal>;
    /// Decides without blocking the async workers: what the edge and the bridge call. The
    /// default decides in place, for authenticators with nothing slow to do.
    fn authenticate_async<'a>(&'a self, creds: &'a Credentials<'a>) -> AuthFuture<'a> {
        Box::pin(std::future::ready(self.authenticate(creds)))
    }
    /// Is any real authentication configured (else the broker stays on loopback)?
    fn configured(&self) -> bool;
}

/// Decides what an identity may do with a topic.
pub trait Authorizer: Send + Sync + 'static {
    fn can_publish(&self, who: &Identity, client_id: &str, topic: &str) -> bool;
    fn can_subscribe(&self, who: &Identity, client_id: &str, filter: &str) -> bool;
}

/// Lets everyone in as an anonymous identity.
pub struct Anonymous;

impl Authenticator for Anonymous {
    fn authenticate(&self, _: &Credentials<'_>) -> Result<Identity, Refusal> {
        Ok(Identity {
            admin: true,
            ..Identity::default()
        })
    }
    fn configured(&self) -> bool {
        false
    }
}

/// Allows every publish and subscribe (`$SYS` only to admins).
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn can_publish(&self, _: &Identity, _: &str, _: &str) -> bool {
        true
    }
    fn can_subscribe(&self, who: &Identity, _: &str, filter: &str) -> bool {
        !filter.starts_with("$SYS") || who.admin
    }
}
