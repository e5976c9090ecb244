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
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Is everything the Chromium tests need installed? Under CI it must be.
fn prerequisites(test: &str) -> bool {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("{CHROMIUM} (apt-get install chromium)"));
    }
    if Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        missing.push("node".into());
    }
    for (dir, file) in [
        ("tests/browser", "node_modules/playwright-core/package.json"),
        ("examples/browser", "node_modules/mqtt/dist/mqtt.min.js"),
    ] {
        if !root().join(dir).join(file).exists() {
            missing.push(format!("{dir}/{file} (npm ci in {dir})"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} cannot run under CI: missing {}",
        missing.join(", ")
    );
    eprintln!("SKIPPED {test}: missing {}", missing.join(", "));
    false
}

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
    if !prerequisites("ws_origins_loopback_only") {
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
    if !prerequisites("ws_origins_with_jwt_auth") {
        return;
    }
    let s = Server::builder().env("AUTH__JWT_SECRET", SECRET).start();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({ "sub": "webapp", "exp": now + 600, "rtw": { "pub": ["webapps/#"], "sub": ["webapps/#"] } });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    let summary = webapps(&s, "origins-auth", &[("token", token)]);
    assert_eq!(summary["foreign_auth"]["qos"], 1);
}
