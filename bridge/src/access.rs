//! Who an HTTP caller is and whether it may touch a topic: the same [`Security`] the MQTT edge
//! asks, so HTTP and MQTT clients get the same decisions.
//!
//! Credentials, in order: `Authorization: Bearer <token>`, `Authorization: Basic` (password-file
//! users), the token cookie (`[auth] cookie_name`, for EventSource, which cannot set headers),
//! and `?access_token=` when `[auth] allow_query_token` is on. None: anonymous, if allowed.
//! Refusals are 401 with `WWW-Authenticate`, or 403 when authenticated but not allowed.
//!
//! [`Security`]: broker::security::Security

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use broker::auth::{Authenticator, Authorizer, Credentials, Identity, Refusal};
use broker::transport::Transport;

use crate::error::ApiError;
use crate::state::AppState;

/// Does `Host` name this machine's loopback interface (`localhost`, `*.localhost`, 127.0.0.0/8,
/// `::1`)? A missing `Host` (HTTP/1.0 tools) passes: browsers always send one.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    // Strip the port: "[::1]:8080", "127.0.0.1:8080", "localhost:8080".
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Guards loopback-only mode against DNS rebinding: a web page whose domain is made to resolve
/// to 127.0.0.1 runs in the victim's browser with that domain as its origin, so same-origin and
/// CORS checks pass, but its requests carry that domain in `Host`. With no authentication
/// configured, only loopback names are served (403 otherwise), as Jupyter and other local
/// servers do; once an authenticator is configured or anonymous access is allowed explicitly,
/// any `Host` is served. `Some`: the refusal to answer with.
pub fn foreign_host_refusal(st: &AppState, headers: &HeaderMap) -> Option<Response> {
    if st.security.local_only() && !loopback_host(headers) {
        return Some(
            ApiError::forbidden(
                "no authentication is configured, so only loopback host names (localhost, \
                 127.0.0.1, [::1]) are served; configure [auth] or set auth.allow_anonymous = true \
                 to serve other names",
            )
            .into_response(),
        );
    }
    None
}

fn unauthorized(why: &str, invalid: bool) -> ApiError {
    let e = ApiError::new(StatusCode::UNAUTHORIZED, why);
    let challenge = if invalid {
        format!(
            "Bearer realm=\"realtime-web\", error=\"invalid_token\", error_description=\"{}\"",
            why.replace('"', "'")
        )
    } else {
        "Bearer realm=\"realtime-web\"".to_string()
    };
    match HeaderValue::from_str(&challenge) {
        Ok(v) => e.with_header(header::WWW_AUTHENTICATE, v),
        Err(_) => e,
    }
}

/// The address a request came from (failed password checks are counted against it); the
/// unspecified address when the router is used without the listener's [`crate::state::Peer`].
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(peer_ip(parts))
    }
}

/// What identifies an HTTP caller, as an extractor: its address, the URI (for
/// `?access_token=`) and the headers (credentials, cookies).
pub struct Caller {
    pub ip: ClientIp,
    pub uri: Uri,
    pub headers: HeaderMap,
}

impl From<Parts> for Caller {
    /// The caller of a request taken apart (its URI and headers moved, not copied).
    fn from(parts: Parts) -> Caller {
        Caller {
            ip: peer_ip(&parts),
            uri: parts.uri,
            headers: parts.headers,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller {
            ip: peer_ip(parts),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        })
    }
}

/// An admin caller, as an extractor: the request is refused (401/403) before the handler runs
/// unless the caller is an admin (or authentication is off).
pub struct Admin(pub Identity);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let ip = peer_ip(parts);
        admin(st, &parts.headers, &parts.uri, ip).await.map(Admin)
    }
}

fn peer_ip(parts: &Parts) -> ClientIp {
    ClientIp(
        parts
            .extensions
            .get::<crate::state::Peer>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.addr.ip()),
    )
}

/// 429 or 503 with `Retry-After`.
fn retry_later(status: StatusCode, why: &str, secs: u64) -> ApiError {
    ApiError::new(status, why).with_header(header::RETRY_AFTER, HeaderValue::from(secs.max(1)))
}

/// The caller's identity, or the 401 response (429 when its address or user is throttled
/// after failed password checks, 503 when the password checks are all busy). Password hashes
/// are verified on the password workers, never on the async workers.
pub async fn caller(
    st: &AppState,
    headers: &HeaderMap,
    uri: Option<&Uri>,
    ip: ClientIp,
) -> Result<Identity, ApiError> {
    let sec = &st.security;
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let mut user: Option<String> = None;
    let mut secret: Option<String> = None;
    if let Some(a) = auth {
        if let Some(t) = a
            .strip_prefix("Bearer ")
            .or_else(|| a.strip_prefix("bearer "))
        {
            secret = Some(t.trim().to_string());
        } else if let Some(b) = a
            .strip_prefix("Basic ")
            .or_else(|| a.strip_prefix("basic "))
        {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .ok_or_else(|| unauthorized("malformed Basic credentials", true))?;
            let (u, p) = decoded
                .split_once(':')
                .ok_or_else(|| unauthorized("malformed Basic credentials", true))?;
            user = Some(u.to_string());
            secret = Some(p.to_string());
        } else {
            return Err(unauthorized(
                "unsupported Authorization scheme (use Bearer)",
                true,
            ));
        }
    }
    if secret.is_none() {
        secret = crate::cookies::cookie(headers, &sec.config().cookie_name);
    }
    if secret.is_none() && sec.config().allow_query_token {
        secret = uri.and_then(|u| u.query()).and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "access_token")
                .map(|(_, v)| v.into_owned())
        });
    }
    let creds = Credentials {
        client_id: "",
        username: user.as_deref(),
        password: secret.as_deref(),
        peer: SocketAddr::new(ip.0, 0),
        transport: Transport::Http,
    };
    match sec.authenticate_async(&creds).await {
        Ok(id) => Ok(id),
        Err(Refusal::BadCredentials(why)) | Err(Refusal::BadAuthMethod(why)) => {
            Err(unauthorized(&why, true))
        }
        Err(Refusal::NotAuthorized(why)) => Err(unauthorized(&why, secret.is_some())),
        Err(Refusal::Throttled(why)) => Err(retry_later(StatusCode::TOO_MANY_REQUESTS, &why, 5)),
        Err(Refusal::Busy(why)) => Err(retry_later(StatusCode::SERVICE_UNAVAILABLE, &why, 1)),
    }
}

pub async fn check_publish(
    st: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    ip: ClientIp,
    topic: &str,
) -> Result<Identity, ApiError> {
    let who = caller(st, headers, Some(uri), ip).await?;
    if !st.security.can_publish(&who, "", topic) {
        return Err(ApiError::forbidden(format!(
            "not allowed to publish to {topic:?}"
        )));
    }
    Ok(who)
}

pub async fn check_subscribe(
    st: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    ip: ClientIp,
    filter: &str,
) -> Result<Identity, ApiError> {
    let who = caller(st, headers, Some(uri), ip).await?;
    may_read(st, &who, filter)?;
    Ok(who)
}

/// May `who` read `filter`? (403 if not.)
pub fn may_read(st: &AppState, who: &Identity, filter: &str) -> Result<(), ApiError> {
    // The reply namespace is the bridge's own, as over MQTT (SUBACK 0x87).
    if !st.security.can_subscribe(who, "", filter)
        || broker::reserved_filter(broker::topic::match_filter(filter))
    {
        return Err(ApiError::forbidden(format!(
            "not allowed to read {filter:?}"
        )));
    }
    Ok(())
}

/// The admin check for operator views: the caller, or 401/403.
pub async fn admin(
    st: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    ip: ClientIp,
) -> Result<Identity, ApiError> {
    let who = caller(st, headers, Some(uri), ip).await?;
    if !who.admin {
        return Err(ApiError::forbidden("an admin token is needed"));
    }
    Ok(who)
}

/// Whose account a caller's streams are on: its token subject (or user), else its address
/// (IPv6 by /64, one host's share).
pub fn account(who: &Identity, ip: ClientIp) -> String {
    match &who.subject {
        Some(s) => format!("sub:{s}"),
        None => format!("ip:{}", broker::ip_key(ip.0)),
    }
}
