//! Who a client is and what it may do: the two traits the edge asks on every CONNECT, PUBLISH
//! and SUBSCRIBE, whatever the transport (the HTTP bridge asks the same ones).
//!
//! The broker ships the open implementations ([`Anonymous`], [`AllowAll`]); the security layer
//! (JWT, password file, per-topic rules) plugs in its own through [`crate::Broker::start`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

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
}

/// Decides who a client is.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, creds: &Credentials<'_>) -> Result<Identity, Refusal>;
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
