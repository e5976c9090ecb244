//! The bridge's RPC counters (`GET /api/stats` → `rpc`), as the RPC tests read, wait on and
//! check them.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::SendOk;

/// The RPC counters now.
pub async fn rpc_stats(c: &reqwest::Client, base: &str) -> Value {
    let r = c.get(format!("{base}/api/stats")).send_expect(200).await;
    let v: Value = r.json().await.expect("stats JSON");
    v["rpc"].clone()
}

/// Polls the counters (they lag the HTTP answers by a moment) until `done` holds of them, for
/// `within` at most; returns them.
pub async fn wait_rpc_stats(
    c: &reqwest::Client,
    base: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let st = rpc_stats(c, base).await;
        if done(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "rpc counters stay at {st}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts each `(counter, value)` of `want` in `st`.
pub fn assert_counts(st: &Value, want: &[(&str, u64)]) {
    for (key, n) in want {
        assert_eq!(st[*key], *n, "rpc.{key} in {st}");
    }
}
