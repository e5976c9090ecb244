//! `GET /mqtt`: MQTT over WebSocket (RFC 6455, subprotocol `mqtt`), handed to the broker's edge.
//!
//! The handshake is answered here (hyper's upgrade mechanism; tungstenite computes the accept
//! key), then the upgraded connection is framed by tokio-tungstenite and served by the edge as
//! one more client byte stream.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use broker::transport::tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use broker::transport::tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use broker::transport::tokio_tungstenite::WebSocketStream;
use broker::transport::{Transport, WsIo};
use broker::Edge;
use hyper_util::rt::TokioIo;

use crate::routes::{error, AppState};
use crate::Peer;

/// Subprotocols accepted, in order of preference (`mqttv3.1` for old Paho clients).
const PROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Browsers send `Origin`: it must be the server's own origin or one of `[bridge] ws_origins`.
fn origin_allowed(h: &axum::http::HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true; // not a browser
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

pub async fn upgrade(State(st): State<AppState>, mut req: Request) -> Response {
    let edge: Arc<Edge> = st.edge.clone();
    if !origin_allowed(req.headers(), &st.settings.ws_origins) {
        return error(
            StatusCode::FORBIDDEN,
            "WebSocket Origin not allowed (see [bridge] ws_origins)",
        );
    }
    let h = req.headers();
    let is_upgrade = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade (Sec-WebSocket-Key missing)",
        );
    };
    if !is_upgrade {
        return error(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "unsupported WebSocket version (want 13)",
        );
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
        return error(
            StatusCode::BAD_REQUEST,
            "WebSocket subprotocol must be mqtt",
        );
    }
    let peer = req.extensions().get::<Peer>().copied();
    let Some(peer) = peer else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "no peer information");
    };
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
        edge.serve(Box::new(WsIo::new(ws)), peer.addr, t).await;
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
    res.into_response()
}
