//! The dashboard's charts, served by `GET /api/history?since=` from the ring in
//! [`crate::history`].
//!
//! Data flow. One task ([`start`]) wakes every second, reads the broker's counters
//! ([`broker::Edge::stats`]), the bridge's own (HTTP requests counted by [`count_request`], SSE
//! streams, RPC counters and latency histogram), turns counters into per-second rates against
//! the previous reading, and pushes one [`Sample`] into the ring. Requests read the ring under a
//! short lock and answer with column arrays, the shape uPlot draws.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use broker::transport::Transport;
use serde_json::{json, Value};

use crate::access::Admin;
use crate::error::ApiError;
use crate::history::{Sample, CAPACITY};
use crate::latency::{percentile, BUCKETS};
use crate::state::AppState;

/// Counter readings, to turn into rates.
struct Reading {
    at: Instant,
    msg_in: u64,
    msg_out: u64,
    dropped: u64,
    queue_full: u64,
    too_large: u64,
    rate_limit: u64,
    http: u64,
    rpc_calls: u64,
    rpc_timeouts: u64,
    latency: [u64; BUCKETS],
}

fn read(st: &AppState) -> Reading {
    let s = st.edge.stats();
    let rpc = &st.rpc.stats;
    Reading {
        at: Instant::now(),
        msg_in: s.messages_received.load(Relaxed),
        msg_out: s.messages_sent.load(Relaxed),
        dropped: s.messages_dropped.load(Relaxed),
        queue_full: s.dropped_queue_full.load(Relaxed),
        too_large: s.dropped_too_large.load(Relaxed),
        rate_limit: s.dropped_rate_limit.load(Relaxed),
        http: st.history.http_requests.load(Relaxed),
        rpc_calls: rpc.requests.load(Relaxed),
        rpc_timeouts: rpc.timeouts.load(Relaxed),
        latency: rpc.latency.counts(),
    }
}

fn sample(st: &AppState, prev: &Reading, now: &Reading) -> Sample {
    let secs = now.at.duration_since(prev.at).as_secs_f64().max(0.001);
    let rate = |a: u64, b: u64| (b.saturating_sub(a) as f64 / secs) as f32;
    let s = st.edge.stats();
    let gauge = |t| s.connected(t).max(0) as u32;
    let mut latency = [0u64; BUCKETS];
    for (i, l) in latency.iter_mut().enumerate() {
        *l = now.latency[i].saturating_sub(prev.latency[i]);
    }
    let pct = |q| percentile(&latency, q).map_or(f32::NAN, |v| v as f32);
    // Drops with a cause of their own are charted by it; the rest (permissions, invalid topics,
    // a busy store…) together.
    let counted = (now.queue_full + now.too_large + now.rate_limit)
        .saturating_sub(prev.queue_full + prev.too_large + prev.rate_limit);
    let dropped = now.dropped.saturating_sub(prev.dropped);
    Sample {
        t: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        msg_in: rate(prev.msg_in, now.msg_in),
        msg_out: rate(prev.msg_out, now.msg_out),
        conn_tcp: gauge(Transport::Tcp),
        conn_tls: gauge(Transport::Tls),
        conn_ws: gauge(Transport::Ws),
        conn_wss: gauge(Transport::Wss),
        drop_queue_full: rate(prev.queue_full, now.queue_full),
        drop_too_large: rate(prev.too_large, now.too_large),
        drop_rate_limit: rate(prev.rate_limit, now.rate_limit),
        drop_other: (dropped.saturating_sub(counted) as f64 / secs) as f32,
        http_requests: rate(prev.http, now.http),
        sse_streams: st.hub.streams() as u32,
        rpc_calls: rate(prev.rpc_calls, now.rpc_calls),
        rpc_timeouts: rate(prev.rpc_timeouts, now.rpc_timeouts),
        rpc_p50_ms: pct(0.5),
        rpc_p99_ms: pct(0.99),
    }
}

/// Starts the sampling task (stops with the broker).
pub fn start(st: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await;
        let mut prev = read(&st);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = st.edge.shutdown_token().cancelled() => return,
            }
            let now = read(&st);
            st.history.push(sample(&st, &prev, &now));
            prev = now;
        }
    });
}

/// Counts a request towards the chart of HTTP requests, unless the dashboard made it.
pub fn count_request(st: &AppState, path: &str) {
    if !(path == "/" || path.starts_with("/api/") || path.starts_with("/assets/")) {
        st.history.http_requests.fetch_add(1, Relaxed);
    }
}

#[derive(serde::Deserialize)]
pub struct Since {
    /// Unix time in seconds: only samples after it.
    since: Option<u64>,
}

/// A series as JSON numbers (NaN, "no value", as `null`).
fn column(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> Value {
    Value::Array(
        samples
            .iter()
            .map(|s| {
                let v = f(s);
                if v.is_finite() && v.fract() == 0.0 {
                    json!(v as i64)
                } else if v.is_finite() {
                    json!((v * 100.0).round() / 100.0)
                } else {
                    Value::Null
                }
            })
            .collect(),
    )
}

/// `GET /api/history?since=T`: the samples after T (all of the last hour without it).
pub async fn history(
    State(st): State<AppState>,
    _: Admin,
    q: Result<Query<Since>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|_| ApiError::bad_request("since must be a Unix time in seconds"))?;
    let s = st.history.since(q.since.unwrap_or(0));
    let col = |f: fn(&Sample) -> f64| column(&s, f);
    Ok(Json(json!({
        "interval_secs": 1,
        "capacity": CAPACITY,
        "t": s.iter().map(|x| x.t).collect::<Vec<_>>(),
        "messages_in": col(|x| x.msg_in as f64),
        "messages_out": col(|x| x.msg_out as f64),
        "connections_tcp": col(|x| x.conn_tcp as f64),
        "connections_tls": col(|x| x.conn_tls as f64),
        "connections_ws": col(|x| x.conn_ws as f64),
        "connections_wss": col(|x| x.conn_wss as f64),
        "drops_queue_full": col(|x| x.drop_queue_full as f64),
        "drops_too_large": col(|x| x.drop_too_large as f64),
        "drops_rate_limit": col(|x| x.drop_rate_limit as f64),
        "drops_other": col(|x| x.drop_other as f64),
        "http_requests": col(|x| x.http_requests as f64),
        "sse_streams": col(|x| x.sse_streams as f64),
        "rpc_calls": col(|x| x.rpc_calls as f64),
        "rpc_timeouts": col(|x| x.rpc_timeouts as f64),
        "rpc_p50_ms": col(|x| x.rpc_p50_ms as f64),
        "rpc_p99_ms": col(|x| x.rpc_p99_ms as f64),
    }))
    .into_response())
}
