//! `GET /mqtt`: MQTT over WebSocket (RFC 6455, subprotocol `mqtt`), handed to the broker's edge.
//!
//! The handshake is answered here (hyper's upgrade mechanism; tungstenite computes the accept
//! key), then the upgraded connection is framed by tokio-tungstenite and served by the edge as
//! one more client byte stream.
//!
//! Before that, the `Origin` a browser sends is checked ([`origin_refusal`]): every refusal is a
//! 403 whose JSON body, like the (rate-limited) warning in the log, names the origin and the
//! setting that would allow it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use broker::transport::tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use broker::transport::tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use broker::transport::tokio_tungstenite::WebSocketStream;
use broker::transport::{Transport, WsIo};
use broker::Edge;
use hyper_util::rt::TokioIo;

use crate::error::ApiError;
use crate::state::{AppState, Peer};

/// Subprotocols accepted, in order of preference (`mqttv3.1` for old Paho clients).
const PROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Is `host` (no port) a name or address of this machine's loopback interface?
fn loopback_name(host: &str) -> bool {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host (without port) of a serialized origin `scheme://host[:port]`; `None` for `null`
/// and anything that is not an http(s) origin.
fn origin_host(origin: &str) -> Option<&str> {
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))?;
    if rest.contains('/') || rest.is_empty() {
        return None;
    }
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let end = v6.find(']')? + 2;
            (&rest[..end], &rest[end..])
        }
        None => rest
            .find(':')
            .map_or((rest, ""), |i| (&rest[..i], &rest[i..])),
    };
    // The port, if any, is digits only: `http://127.0.0.1:80.evil.example` is not loopback.
    match port.strip_prefix(':') {
        None if port.is_empty() => Some(host),
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(host),
        _ => None,
    }
}

/// Why an upgrade's `Origin` is refused, or `None` when it is allowed.
///
/// No `Origin`: not a browser, allowed. The server's own origin (same host and port as `Host`)
/// and the origins listed in `[bridge] ws_origins` (`*`: any) are always allowed. Otherwise, in
/// loopback-only mode (no authentication configured), pages from loopback origins on any port
/// (local development servers) are allowed and every other origin, `null` included, is refused:
/// a page elsewhere must not reach an unauthenticated broker through the visitor's browser. With
/// authentication configured, MQTT credentials travel inside CONNECT (never in cookies), so the
/// origin protects nothing: any origin is allowed unless `ws_origins` lists some.
pub(crate) fn origin_refusal(
    h: &axum::http::HeaderMap,
    allowed: &[String],
    local_only: bool,
) -> Option<String> {
    let origin = h.get(header::ORIGIN)?;
    let Ok(origin) = origin.to_str() else {
        return Some("the Origin header is not text".into());
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return None;
    }
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let same = origin
        .split_once("://")
        .is_some_and(|(_, rest)| !host.is_empty() && rest.eq_ignore_ascii_case(host));
    if same {
        return None;
    }
    let key =
        format!("add \"{origin}\" to [bridge] ws_origins (RTW_BRIDGE__WS_ORIGINS) to allow it");
    if !allowed.is_empty() {
        return Some(format!(
            "WebSocket origin {origin} is not in [bridge] ws_origins; {key}"
        ));
    }
    if !local_only {
        return None;
    }
    if origin_host(origin).is_some_and(loopback_name) {
        return None;
    }
    Some(format!(
        "WebSocket origin {origin} refused: no authentication is configured (loopback-only \
         mode), so only pages from loopback origins (http://localhost:*, http://127.0.0.1:*) may \
         open /mqtt; {key}, or configure [auth]"
    ))
}

/// Logs a refused upgrade at warn, at most [`LOG_BURST`] per 10 s (the rest are counted and
/// reported with the next one logged).
fn log_refusal(why: &str, peer: Option<std::net::SocketAddr>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    const LOG_BURST: u64 = 10;
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static IN_WINDOW: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 10);
    if WINDOW.swap(now, Ordering::AcqRel) != now {
        IN_WINDOW.store(0, Ordering::Release);
    }
    if IN_WINDOW.fetch_add(1, Ordering::AcqRel) >= LOG_BURST {
        SUPPRESSED.fetch_add(1, Ordering::AcqRel);
        return;
    }
    let suppressed = SUPPRESSED.swap(0, Ordering::AcqRel);
    let peer = peer.map(|p| p.to_string()).unwrap_or_default();
    tracing::warn!(%peer, suppressed, "{why}");
}

pub async fn upgrade(State(st): State<AppState>, mut req: Request) -> Result<Response, ApiError> {
    let edge: Arc<Edge> = st.edge.clone();
    if let Some(why) = origin_refusal(
        req.headers(),
        &st.settings.ws_origins,
        st.security.local_only(),
    ) {
        log_refusal(&why, req.extensions().get::<Peer>().map(|p| p.addr));
        return Err(ApiError::forbidden(why));
    }
    let h = req.headers();
    let is_upgrade = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Err(ApiError::bad_request(
            "expected a WebSocket upgrade (Sec-WebSocket-Key missing)",
        ));
    };
    if !is_upgrade {
        return Err(ApiError::bad_request("expected a WebSocket upgrade"));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err(ApiError::bad_request(
            "unsupported WebSocket version (want 13)",
        ));
    }
    let offered: Vec<String> = h
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    let chosen = PROTOCOLS
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .copied();
    if !offered.is_empty() && chosen.is_none() {
        return Err(ApiError::bad_request("WebSocket subprotocol must be mqtt"));
    }
    let peer = req.extensions().get::<Peer>().copied();
    let peer = peer
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no peer information"))?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let max = edge.config.limits.max_packet_size as usize + 1024;
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let mut cfg = WebSocketConfig::default();
        cfg.max_message_size = Some(max);
        cfg.max_frame_size = Some(max);
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg)).await;
        let t = if peer.tls {
            Transport::Wss
        } else {
            Transport::Ws
        };
        // Boxed: the upgrade's state is not kept beside the session for the connection's life.
        Box::pin(edge.serve(Box::new(WsIo::new(ws)), peer.addr, t)).await;
    });
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hs = res.headers_mut();
    hs.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    hs.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        hs.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = chosen {
        hs.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_hosts() {
        assert_eq!(origin_host("http://127.0.0.1:5173"), Some("127.0.0.1"));
        assert_eq!(origin_host("http://localhost"), Some("localhost"));
        assert_eq!(origin_host("https://[::1]:8443"), Some("[::1]"));
        assert_eq!(origin_host("http://127.0.0.1:80.evil.example"), None);
        assert_eq!(origin_host("http://[::1].evil"), None);
        assert_eq!(origin_host("null"), None);
        assert_eq!(origin_host("file://"), None);
        assert!(loopback_name("[::1]") && loopback_name("app.localhost"));
        assert!(!loopback_name("localhost.evil.example"));
    }
}
