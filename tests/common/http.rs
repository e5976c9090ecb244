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

/// Sending a request (a transport failure fails the test) and checking what it is answered.
pub trait SendOk {
    /// Sends the request and returns its response, whatever the status.
    fn send_ok(self) -> impl std::future::Future<Output = reqwest::Response> + Send;

    /// Sends the request and asserts that the response has `status`.
    fn send_expect(
        self,
        status: u16,
    ) -> impl std::future::Future<Output = reqwest::Response> + Send;

    /// Sends the request, asserts a 200 and returns the body.
    fn send_text(self) -> impl std::future::Future<Output = String> + Send;

    /// Sends the request, asserts a JSON error of `status` and returns its message.
    fn send_error(self, status: u16) -> impl std::future::Future<Output = String> + Send;

    /// Sends the request and asserts a JSON error of `status` whose message has all of `words`.
    fn send_refused(
        self,
        status: u16,
        words: &[&str],
    ) -> impl std::future::Future<Output = ()> + Send;
}

impl SendOk for reqwest::RequestBuilder {
    async fn send_ok(self) -> reqwest::Response {
        self.send().await.expect("HTTP request")
    }

    async fn send_expect(self, status: u16) -> reqwest::Response {
        let r = self.send_ok().await;
        assert_eq!(r.status(), status, "HTTP status of {}", r.url());
        r
    }

    async fn send_text(self) -> String {
        let r = self.send_expect(200).await;
        r.text().await.expect("response body")
    }

    async fn send_error(self, status: u16) -> String {
        error_message(self.send_ok().await, status).await
    }

    async fn send_refused(self, status: u16, words: &[&str]) {
        expect_error(self.send_ok().await, status, words).await
    }
}

/// Requests to one server's HTTP API that all carry one header (`authorization: Bearer …`, a
/// cookie, …): the caller's identity.
pub struct Authed {
    c: reqwest::Client,
    base: String,
    header: (&'static str, String),
}

impl Authed {
    /// Requests through `c` to `base` (`http://host:port`), each with `header`.
    pub fn new(c: &reqwest::Client, base: String, header: (&'static str, String)) -> Authed {
        Authed {
            c: c.clone(),
            base,
            header,
        }
    }

    /// `GET {base}{path}`.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let r = self.c.get(format!("{}{path}", self.base));
        r.header(self.header.0, self.header.1.clone())
    }

    /// `POST {base}{path}` with `body`.
    pub fn post(&self, path: &str, body: &'static str) -> reqwest::RequestBuilder {
        let r = self.c.post(format!("{}{path}", self.base));
        r.header(self.header.0, self.header.1.clone()).body(body)
    }
}
