//! Web apps on their own origin (issue 13), in headless Chromium (`tests/browser/webapps.mjs`,
//! playwright-core driving Debian's `/usr/bin/chromium`, as `tests/browser.rs` does):
//!
//! * `ws_origins_loopback_only`: in loopback-only mode a page served from a second loopback port
//!   does a QoS 1 MQTT.js round trip over `/mqtt`; the same page from `evil.test` (mapped to
//!   127.0.0.1 with `--host-resolver-rules`) is refused, and the refusal is in the server's log
//!   with the origin and the key that would allow it.
//! * `ws_origins_with_jwt_auth`: with JWT authentication on, the `evil.test` page connects with a
//!   token and does the round trip.
//! * `mercure_in_chromium` (see `tests/browser/mercure.mjs`): the Mercure hub with EventSource and
//!   fetch.
//!
//! Like the browser test, these skip (and pass) only outside CI when Chromium, node or the npm
//! packages are missing (`npm ci` in `tests/browser` and `examples/browser`).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::auth::hs256_with;
use common::browser::*;
use common::*;
use serde_json::{json, Value};

/// Runs webapps.mjs in `mode` against `s`; returns its JSON summary, asserting it succeeded.
pub fn webapps(s: &Server, mode: &str, extra: &[(&str, String)]) -> Value {
    let mut cmd = Command::new("node");
    cmd.arg(root().join("tests/browser/webapps.mjs"))
        .args(["--mode", mode, "--http", &s.http.to_string()])
        .current_dir(root().join("tests/browser"));
    for (k, v) in extra {
        cmd.arg(format!("--{k}")).arg(v);
    }
    let (code, out, err) = run(&mut cmd, Duration::from_secs(200));
    eprintln!("{err}");
    let summary: Value = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("webapps.mjs printed no summary ({code:?})\n{out}\n{err}"));
    let pretty = serde_json::to_string_pretty(&summary).unwrap();
    assert_eq!(summary["ok"], true, "{mode} failed: {pretty}");
    assert_eq!(code, Some(0), "{pretty}");
    eprintln!("{mode}: {pretty}");
    summary
}

/// Polls `file` until it holds a line with every one of `needles` (bounded wait).
fn wait_for_log_line(file: &Path, needles: &[&str]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line with {needles:?} in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ws_origins_loopback_only() {
    if !page_prerequisites("ws_origins_loopback_only") {
        return;
    }
    let log = std::env::temp_dir().join(format!("rtw-webapps-{}.log", rand::random::<u64>()));
    let s = Server::builder().log_file(&log).start();
    let summary = webapps(&s, "origins", &[]);
    assert_eq!(summary["loopback"]["qos"], 1);
    assert_eq!(summary["foreign"]["ok"], false);
    let line = wait_for_log_line(&log, &["WARN", "http://evil.test:", "ws_origins"]);
    assert!(line.contains("RTW_BRIDGE__WS_ORIGINS"), "{line}");
    // The 403 body says the same, for clients that can read it.
    let port = s.http;
    let (_, body, _) = run(
        Command::new("curl").args([
            "-s",
            "-m",
            "10",
            "-H",
            "Origin: null",
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:{port}/mqtt"),
        ]),
        Duration::from_secs(15),
    );
    let (json_body, status) = body.rsplit_once('\n').expect("curl output");
    assert_eq!(status, "403", "{body}");
    let v: Value = serde_json::from_str(json_body).expect("JSON body");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("null") && msg.contains("[bridge] ws_origins"),
        "{msg}"
    );
    let _ = std::fs::remove_file(&log);
}

const SECRET: &str = "webapps-secret-9f3KcQ2vXw7mLp4R";

#[test]
fn ws_origins_with_jwt_auth() {
    if !page_prerequisites("ws_origins_with_jwt_auth") {
        return;
    }
    let s = Server::builder().env("AUTH__JWT_SECRET", SECRET).start();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({ "sub": "webapp", "exp": now + 600, "rtw": { "pub": ["webapps/#"], "sub": ["webapps/#"] } });
    let token = hs256_with(SECRET, &claims);
    let summary = webapps(&s, "origins-auth", &[("token", token)]);
    assert_eq!(summary["foreign_auth"]["qos"], 1);
}

const MERCURE_KEY: &str = "mercure-publisher-key-4Kp9Wz2Qx7Lm";

/// A loopback-only server with the Mercure hub on (anonymous subscribers, subscriptions API,
/// CORS for any origin) and CORS on the bridge's routes (for the page's `/events`).
fn mercure_server() -> Server {
    Server::builder()
        .env("MERCURE__PUBLISHER_JWT_KEY", MERCURE_KEY)
        .env("MERCURE__ANONYMOUS", "true")
        .env("MERCURE__SUBSCRIPTIONS", "true")
        .env("MERCURE__CORS_ORIGINS", "*")
        .env("BRIDGE__CORS_ORIGINS", "*")
        .start()
}

#[test]
fn mercure_in_chromium() {
    if !page_prerequisites("mercure_in_chromium") {
        return;
    }
    let s = mercure_server();
    // Mercure's own tokens carry no `exp`; neither do these.
    let tokens = json!({
        "pub_all": hs256_with(MERCURE_KEY, &json!({ "mercure": { "publish": ["*"] } })),
        "pub_narrow": hs256_with(MERCURE_KEY, &json!({ "mercure": { "publish": ["https://example.com/other/{id}"] } })),
        "pub_none": hs256_with(MERCURE_KEY, &json!({ "sub": "nobody" })),
        "forged": hs256_with("not-the-key", &json!({ "mercure": { "publish": ["*"] } })),
        "sub_private": hs256_with(MERCURE_KEY, &json!({ "mercure": {
            "subscribe": ["https://example.com/private/{id}"], "payload": { "user": "alice" } } })),
    });
    let summary = webapps(&s, "mercure", &[("tokens", tokens.to_string())]);
    assert_eq!(summary["codes"]["none"], 401);
    assert_eq!(summary["private"]["anon"], json!(["public"]));
}

/// The request Symfony's Mercure component sends (`Hub::publishFast`: HttpClient `POST` with
/// `auth_bearer` and the body from `Internal\QueryBuilder::build`, i.e. PHP `urlencode`d
/// `key=value` pairs, `topic` repeated, `private=on`, null fields left out), byte for byte on a
/// raw socket: answered `200 text/plain` with the update's id, and the update is delivered.
#[test]
fn symfony_publish_request() {
    use std::io::{Read, Write};
    let s = mercure_server();
    // The token the MercureBundle's factory makes for `publish: ['*']` (no exp).
    let jwt = hs256_with(MERCURE_KEY, &json!({ "mercure": { "publish": ["*"] } }));
    let body = "topic=https%3A%2F%2Fexample.com%2Fbooks%2F1&topic=https%3A%2F%2Fexample.com%2Fusers%2Fdunglas%2Fbooks%2F1\
                &data=%7B%22status%22%3A%22OutOfStock%22%2C%22note%22%3A%22a+b%22%7D&private=on&id=%2Fbooks%2F1%2Fv2\
                &type=book.updated&retry=5000";
    let req = format!(
        "POST /.well-known/mercure HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: Symfony HttpClient (Curl)\r\n\
         Accept: */*\r\nAuthorization: Bearer {jwt}\r\nContent-Length: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n{body}",
        s.http,
        body.len()
    );
    // A subscriber allowed to see the private update, through the subscriptions of the hub.
    let sub = hs256_with(
        MERCURE_KEY,
        &json!({ "mercure": { "subscribe": ["https://example.com/books/{id}"] } }),
    );
    let mut curl = spawn(Command::new("curl").args([
        "-sN",
        "-m",
        "8",
        "-H",
        &format!("Authorization: Bearer {sub}"),
        &format!(
            "http://127.0.0.1:{}/.well-known/mercure?topic=https%3A%2F%2Fexample.com%2Fbooks%2F%7Bid%7D",
            s.http
        ),
    ]));
    // Wait until the hub lists the subscriber (the subscriptions API), so the publish is live.
    let list_token = hs256_with(
        MERCURE_KEY,
        &json!({ "mercure": { "subscribe": ["/.well-known/mercure/subscriptions{/topic}{/subscriber}"] } }),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out, _) = run(
            Command::new("curl").args([
                "-s",
                "-H",
                &format!("Authorization: Bearer {list_token}"),
                &format!(
                    "http://127.0.0.1:{}/.well-known/mercure/subscriptions",
                    s.http
                ),
            ]),
            Duration::from_secs(10),
        );
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        if v["subscriptions"].as_array().is_some_and(|a| {
            a.iter()
                .any(|s| s["topic"] == "https://example.com/books/{id}")
        }) {
            assert_eq!(v["type"], "Subscriptions", "{v}");
            assert_eq!(v["@context"], "https://mercure.rocks/", "{v}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the subscriber is never listed: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.http)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(req.as_bytes()).expect("send");
    let mut answer = String::new();
    sock.read_to_string(&mut answer).expect("read");
    let (head, id) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    assert_eq!(id, "/books/1/v2", "{answer}");
    let out = collect_until(&mut curl, "OutOfStock");
    assert!(out.contains("id: /books/1/v2\n"), "{out}");
    assert!(out.contains("event: book.updated\n"), "{out}");
    assert!(out.contains("retry: 5000\n"), "{out}");
    assert!(
        out.contains("data: {\"status\":\"OutOfStock\",\"note\":\"a b\"}\n"),
        "{out}"
    );
    let _ = curl.kill();
    let _ = curl.wait();
}

/// Reads a child's stdout until it holds `needle` (or the child ends); returns what it read.
fn collect_until(child: &mut std::process::Child, needle: &str) -> String {
    use std::io::Read;
    let mut out = child.stdout.take().expect("stdout piped");
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains(needle) {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    // The rest of the event (its fields end with a blank line).
    while text.contains(needle) && !text[text.find(needle).unwrap()..].contains("\n\n") {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    text
}
