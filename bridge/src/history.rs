//! The dashboard's memory: the last hour of the node's figures, one [`Sample`] a second, in a
//! ring of [`CAPACITY`] samples (the oldest falls out), and the bridge's HTTP request counter.
//! [`crate::charts`] fills it every second and serves it at `GET /api/history`.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

/// Samples kept: one hour of one-second samples.
pub const CAPACITY: usize = 3600;

/// One second of the node's life. Rates are per second over the interval that ends at `t`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Unix time, seconds.
    pub t: u64,
    pub msg_in: f32,
    pub msg_out: f32,
    pub conn_tcp: u32,
    pub conn_tls: u32,
    pub conn_ws: u32,
    pub conn_wss: u32,
    pub drop_queue_full: f32,
    pub drop_too_large: f32,
    pub drop_rate_limit: f32,
    pub drop_other: f32,
    pub http_requests: f32,
    pub sse_streams: u32,
    pub rpc_calls: f32,
    pub rpc_timeouts: f32,
    /// Round-trip percentiles of the RPC calls answered in this second, ms (NaN: none).
    pub rpc_p50_ms: f32,
    pub rpc_p99_ms: f32,
}

/// The ring of samples and the bridge's own request counter.
#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
    /// HTTP requests served, except the dashboard's own (`/`, `/api/…`, `/assets/…`).
    pub http_requests: AtomicU64,
}

impl History {
    pub(crate) fn push(&self, mut s: Sample) {
        let mut ring = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        // One sample per second of `t`, increasing, so `since` never skips one: a late tick
        // followed by a punctual one can land in the same wall-clock second (or the clock can
        // step back).
        if let Some(last) = ring.back() {
            s.t = s.t.max(last.t + 1);
        }
        if ring.len() >= CAPACITY {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    /// Samples after Unix time `since` (seconds), oldest first.
    pub fn since(&self, since: u64) -> Vec<Sample> {
        let ring = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let start = ring.partition_point(|s| s.t <= since);
        ring.range(start..).copied().collect()
    }
}
