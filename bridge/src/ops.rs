//! Operations endpoints: `/metrics` (Prometheus text), `/api/stats` (JSON, for the dashboard),
//! `/healthz` (the process answers) and `/readyz` (the broker core and the bridge's broker
//! sessions are up), and the dashboard page at `/` (static, embedded in the binary).
//!
//! Every figure comes from the same counters as the `$SYS` tree ([`broker::stats::Stats`]), so
//! the three views agree. Metrics and stats need an admin identity when authentication is on.
//!
//! The dashboard's other data come from [`crate::charts`], [`crate::clients`] and
//! [`crate::tree`]; its charting library, uPlot (MIT, `bridge/assets/uplot/LICENSE`), is
//! served from the binary under `/assets/`.

use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use broker::transport::Transport;
use prometheus::{Encoder, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use serde_json::{json, Value};

use crate::access::Admin;
use crate::error::ApiError;
use crate::state::AppState;

const DASHBOARD: &str = include_str!("../assets/dashboard.html");
const UPLOT_JS: &str = include_str!("../assets/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/uplot/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("../assets/uplot/LICENSE");

/// A static asset, cached for an hour (the binary's version names no file, so not longer).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

pub async fn uplot_js() -> Response {
    asset("text/javascript; charset=utf-8", UPLOT_JS)
}

pub async fn uplot_css() -> Response {
    asset("text/css; charset=utf-8", UPLOT_CSS)
}

pub async fn uplot_license() -> Response {
    asset("text/plain; charset=utf-8", UPLOT_LICENSE)
}

/// All figures, as JSON.
pub fn stats_json(st: &AppState) -> Value {
    let s = st.edge.stats();
    let rpc = &st.rpc.stats;
    json!({
        "uptime_secs": s.uptime_secs(),
        "connections": {
            "tcp": s.connected(Transport::Tcp),
            "tls": s.connected(Transport::Tls),
            "ws": s.connected(Transport::Ws),
            "wss": s.connected(Transport::Wss),
            "total": s.clients_connected(),
        },
        "connections_total": s.connections_total.load(Relaxed),
        "connections_refused": s.connections_refused.load(Relaxed),
        "subscriptions": s.subscriptions.load(Relaxed),
        "messages": {
            "received": s.messages_received.load(Relaxed),
            "sent": s.messages_sent.load(Relaxed),
            "dropped": s.messages_dropped.load(Relaxed),
            "dropped_queue_full": s.dropped_queue_full.load(Relaxed),
            "dropped_too_large": s.dropped_too_large.load(Relaxed),
            "dropped_rate_limit": s.dropped_rate_limit.load(Relaxed),
        },
        "bytes": {
            "received": s.bytes_received.load(Relaxed),
            "sent": s.bytes_sent.load(Relaxed),
        },
        "retained": st.edge.retained().len(),
        "retained_version": st.edge.retained().version(),
        "http_requests": st.history.http_requests.load(Relaxed),
        "streams": st.hub.streams(),
        "rpc": {
            "in_flight": st.rpc.in_flight(),
            "requests": rpc.requests.load(Relaxed),
            "replies": rpc.replies.load(Relaxed),
            "timeouts": rpc.timeouts.load(Relaxed),
            "no_responder": rpc.no_responder.load(Relaxed),
            "rejected_busy": rpc.rejected_busy.load(Relaxed),
            "late_replies": rpc.late_replies.load(Relaxed),
            "latency_ms_total": rpc.latency_ms_total.load(Relaxed),
            "waiting": st.rpc.waiting(),
            "waited": rpc.waited.load(Relaxed),
            "rejected_waiting": rpc.rejected_waiting.load(Relaxed),
            "streams": rpc.streams.load(Relaxed),
            "stream_errors": rpc.stream_errors.load(Relaxed),
        },
        "ready": ready(st),
        "cluster": crate::cluster_view::json(st),
    })
}

fn ready(st: &AppState) -> bool {
    st.edge.core_ready()
        && st.rpc.ready()
        && !st.hub.client().is_closed()
        && st.edge.cluster_ready()
}

pub async fn stats(State(st): State<AppState>, _: Admin) -> Result<Response, ApiError> {
    Ok(Json(stats_json(&st)).into_response())
}

pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

pub async fn readyz(State(st): State<AppState>) -> Result<Response, ApiError> {
    if !ready(&st) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker core, the bridge's broker session or the cluster link (NATS) is down",
        ));
    }
    Ok(Json(json!({ "status": "ready" })).into_response())
}

pub async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

fn counter(r: &Registry, name: &str, help: &str, v: u64) -> prometheus::Result<()> {
    let c = IntCounter::new(name, help)?;
    c.inc_by(v);
    r.register(Box::new(c))
}

fn gauge(r: &Registry, name: &str, help: &str, v: i64) -> prometheus::Result<()> {
    let g = IntGauge::new(name, help)?;
    g.set(v);
    r.register(Box::new(g))
}

/// Builds the scrape: a fresh registry filled from the live counters.
fn scrape(st: &AppState) -> prometheus::Result<String> {
    let s = st.edge.stats();
    let rpc = &st.rpc.stats;
    let r = Registry::new();
    let conns = IntGaugeVec::new(
        Opts::new("rtw_connections", "MQTT clients connected, by transport"),
        &["transport"],
    )?;
    for t in [
        Transport::Tcp,
        Transport::Tls,
        Transport::Ws,
        Transport::Wss,
    ] {
        conns.with_label_values(&[t.label()]).set(s.connected(t));
    }
    r.register(Box::new(conns))?;
    gauge(
        &r,
        "rtw_uptime_seconds",
        "Seconds since start",
        s.uptime_secs() as i64,
    )?;
    counter(
        &r,
        "rtw_connections_total",
        "MQTT connections accepted",
        s.connections_total.load(Relaxed),
    )?;
    counter(
        &r,
        "rtw_connections_refused_total",
        "MQTT connections refused",
        s.connections_refused.load(Relaxed),
    )?;
    gauge(
        &r,
        "rtw_subscriptions",
        "MQTT subscriptions held",
        s.subscriptions.load(Relaxed),
    )?;
    counter(
        &r,
        "rtw_messages_received_total",
        "PUBLISH packets received from clients",
        s.messages_received.load(Relaxed),
    )?;
    counter(
        &r,
        "rtw_messages_sent_total",
        "PUBLISH packets sent to clients",
        s.messages_sent.load(Relaxed),
    )?;
    counter(
        &r,
        "rtw_messages_dropped_total",
        "Messages refused or dropped (limits, permissions, slow clients)",
        s.messages_dropped.load(Relaxed),
    )?;
    for (name, help, c) in [
        (
            "rtw_messages_dropped_queue_full_total",
            "Of the drops: QoS 1/2 messages past limits.max_queued for a slow client",
            &s.dropped_queue_full,
        ),
        (
            "rtw_messages_dropped_too_large_total",
            "Of the drops: messages over a client's maximum packet size, packets over limits.max_packet_size",
            &s.dropped_too_large,
        ),
        (
            "rtw_messages_dropped_rate_limit_total",
            "Of the drops: PUBLISH refused by limits.max_publish_rate",
            &s.dropped_rate_limit,
        ),
    ] {
        counter(&r, name, help, c.load(Relaxed))?;
    }
    counter(
        &r,
        "rtw_bytes_received_total",
        "Bytes received from MQTT clients",
        s.bytes_received.load(Relaxed),
    )?;
    counter(
        &r,
        "rtw_bytes_sent_total",
        "Bytes sent to MQTT clients",
        s.bytes_sent.load(Relaxed),
    )?;
    gauge(
        &r,
        "rtw_retained_messages",
        "Retained messages stored",
        st.edge.retained().len() as i64,
    )?;
    gauge(
        &r,
        "rtw_sse_streams",
        "Open SSE streams and long polls",
        st.hub.streams() as i64,
    )?;
    gauge(
        &r,
        "rtw_sse_filters",
        "Topic filters the HTTP bridge follows for streams (open or lingering for replay)",
        st.hub.filters() as i64,
    )?;
    gauge(
        &r,
        "rtw_rpc_in_flight",
        "RPC requests waiting for a reply",
        st.rpc.in_flight() as i64,
    )?;
    counter(
        &r,
        "rtw_rpc_requests_total",
        "RPC requests received",
        rpc.requests.load(Relaxed),
    )?;
    counter(
        &r,
        "rtw_rpc_replies_total",
        "RPC replies delivered",
        rpc.replies.load(Relaxed),
    )?;
    counter(
        &r,
        "rtw_rpc_timeouts_total",
        "RPC requests that timed out (504)",
        rpc.timeouts.load(Relaxed),
    )?;
    counter(
        &r,
        "rtw_rpc_no_responder_total",
        "RPC requests with no subscriber (503)",
        rpc.no_responder.load(Relaxed),
    )?;
    counter(
        &r,
        "rtw_rpc_rejected_total",
        "RPC requests refused as too many (429)",
        rpc.rejected_busy.load(Relaxed),
    )?;
    counter(
        &r,
        "rtw_rpc_late_replies_total",
        "Late or duplicate RPC replies dropped",
        rpc.late_replies.load(Relaxed),
    )?;
    counter(
        &r,
        "rtw_rpc_latency_milliseconds_sum",
        "Sum of answered RPC round trips, ms",
        rpc.latency_ms_total.load(Relaxed),
    )?;
    let pw = st.security.password_stats();
    for (name, help, v) in [
        (
            "rtw_password_checks_total",
            "Password hashes checked by the password workers",
            &pw.hashed,
        ),
        (
            "rtw_password_cache_hits_total",
            "Logins let in by a recent successful check of the same password",
            &pw.cache_hits,
        ),
        (
            "rtw_password_failures_total",
            "Password checks that failed",
            &pw.failures,
        ),
        (
            "rtw_password_throttled_total",
            "Logins refused without a check after repeated failures (0x9F / 429)",
            &pw.throttled,
        ),
        (
            "rtw_password_busy_total",
            "Logins refused because every password worker was busy (0x89 / 503)",
            &pw.busy,
        ),
    ] {
        counter(&r, name, help, v.load(Relaxed))?;
    }
    gauge(
        &r,
        "rtw_index_subscriptions",
        "Subscriptions in the fan-out's index (one per session and filter; offline persistent sessions and the bridge included)",
        st.edge.index_len() as i64,
    )?;
    gauge(
        &r,
        "rtw_core_backlog_bytes",
        "Bytes of messages in the core not yet taken by the fan-out",
        st.edge.core_backlog() as i64,
    )?;
    gauge(
        &r,
        "rtw_ready",
        "1 when the broker core and bridge sessions are up",
        ready(st) as i64,
    )?;
    crate::cluster_view::metrics(&r, st)?;
    let mut buf = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

pub async fn metrics(State(st): State<AppState>, _: Admin) -> Result<Response, ApiError> {
    let text = scrape(&st)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
