//! HTTP for the tests: a bounded reqwest client, and the answers the tests check: the JSON error shape every route refuses with,
//! `{"error": {"status": N, "message": "…"}}` (`application/json`).

use std::time::Duration;

use serde_json::Value;

/// A reqwest client whose requests (body included) give up after `timeout`.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("reqwest client")
}

/// Asserts a JSON error of `status` and returns (headers, message).
pub async fn json_error(r: reqwest::Response, status: u16) -> (reqwest::header::HeaderMap, String) {
    let got = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(got, status, "HTTP status (body {text})");
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content type {ct:?}");
    let v: Value = serde_json::from_str(&text).expect("JSON error body");
    assert_eq!(v["error"]["status"], status, "{v}");
    let msg = v["error"]["message"].as_str().expect("message").to_string();
    (headers, msg)
}

/// Asserts a JSON error of `status` and returns its message.
pub async fn error_message(r: reqwest::Response, status: u16) -> String {
    json_error(r, status).await.1
}

/// Asserts a JSON error response: status, and a message containing each of `words`.
pub async fn expect_error(res: reqwest::Response, status: u16, words: &[&str]) {
    let (_, msg) = json_error(res, status).await;
    for w in words {
        assert!(
            msg.contains(w),
            "error message {msg:?} should mention {w:?}"
        );
    }
}
