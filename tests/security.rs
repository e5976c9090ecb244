//! Security end to end: authentication (JWT of every family, forged tokens, the password file,
//! anonymous access), authorization of every path (PUBLISH, SUBSCRIBE, the will, shared
//! subscriptions, retained delivery, `$SYS`, every HTTP route), token expiry, limits, CORS, the
//! WebSocket Origin check, TLS versions, certificate reload and what the log must never show.
//!
//! Real clients throughout: mosquitto_pub/sub (3.1.1 and 5), rumqttc, paho over WebSocket
//! (`tests/paho/auth.py`), reqwest and curl-like raw HTTP, openssl s_client. Where the exact
//! reason code on the wire matters, a raw socket reads it byte for byte.

mod common;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use common::*;
use futures_util::{Stream, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rumqttc::mqttbytes::v4;
use serde_json::{json, Value};
use support::{p5, run_ok, v4_options, v5_options, Proc, Tr, T, V4, V5};

const SECRET: &str = "jwt-secret-Zq8v1Lr4Wm7Tn2Kc5Hx9";
const ISS: &str = "https://issuer.example";
const AUD: &str = "realtime-web-tests";

type Q5 = rumqttc::v5::mqttbytes::QoS;
type Q4 = rumqttc::QoS;

// ---------------------------------------------------------------------------------------------
// Tokens.

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "rtw-sec-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn realtime_web() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_realtime-web"));
    c.env_remove("RUST_LOG").env_remove("RTW_TEST_LOG");
    c
}

/// A token from `realtime-web token`, signed with SECRET for ISS and AUD.
fn cli_token(
    subject: &str,
    publish: &[&str],
    subscribe: &[&str],
    ttl: &str,
    admin: bool,
) -> String {
    let mut c = realtime_web();
    c.env("RTW_AUTH__JWT_SECRET", SECRET)
        .env("RTW_AUTH__ISSUER", ISS)
        .env("RTW_AUTH__AUDIENCE", AUD)
        .args(["token", "--subject", subject, "--ttl", ttl]);
    for p in publish {
        c.args(["--publish", p]);
    }
    for s in subscribe {
        c.args(["--subscribe", s]);
    }
    if admin {
        c.arg("--admin");
    }
    let t = run_ok(&mut c).trim().to_string();
    assert_eq!(t.split('.').count(), 3, "not a JWT: {t}");
    t
}

/// An admin token that may publish and subscribe everywhere.
fn admin_token() -> String {
    cli_token("admin", &["#"], &["#"], "1h", true)
}

/// Claims for ISS/AUD with grants, expiring `exp` seconds from now.
fn claims(sub: &str, publish: &[&str], subscribe: &[&str], exp: i64) -> Value {
    json!({
        "sub": sub,
        "iss": ISS,
        "aud": AUD,
        "iat": now(),
        "exp": now() + exp,
        "rtw": { "pub": publish, "sub": subscribe },
    })
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, key).expect("sign")
}

/// HS256 with SECRET.
fn hs(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        None,
        claims,
    )
}

/// An unsigned token (`alg: none`), built by hand: no library will make one.
fn alg_none(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    )
}

/// The forged and broken HS tokens every transport must refuse, by name.
fn bad_hs_tokens() -> Vec<(&'static str, String)> {
    let ok = claims("mallory", &["#"], &["#"], 3600);
    let mut nbf = ok.clone();
    nbf["nbf"] = json!(now() + 3600);
    let mut aud = ok.clone();
    aud["aud"] = json!("another-service");
    let mut iss = ok.clone();
    iss["iss"] = json!("https://evil.example");
    let mut no_exp = ok.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    // A valid token whose payload was swapped for one granting more (signature kept).
    let valid = hs(&claims("mallory", &["x/#"], &["x/#"], 3600));
    let parts: Vec<&str> = valid.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64url(ok.to_string().as_bytes()),
        parts[2]
    );
    vec![
        ("garbage", "not-a-token-at-all".to_string()),
        ("expired", hs(&claims("mallory", &["#"], &["#"], -3600))),
        ("not yet valid", hs(&nbf)),
        ("wrong audience", hs(&aud)),
        ("wrong issuer", hs(&iss)),
        ("no exp", hs(&no_exp)),
        (
            "wrong key",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"some-other-secret"),
                None,
                &ok,
            ),
        ),
        ("alg none", alg_none(&ok)),
        ("tampered payload", tampered),
    ]
}

/// A server checking HS tokens (SECRET, ISS, AUD).
fn jwt_server() -> Builder {
    Server::builder()
        .env("AUTH__JWT_SECRET", SECRET)
        .env("AUTH__ISSUER", ISS)
        .env("AUTH__AUDIENCE", AUD)
}

// ---------------------------------------------------------------------------------------------
// Raw MQTT on the wire, to read reason codes byte for byte.

/// A client socket reading whole MQTT packets as (first byte, body).
struct Wire {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    fn open(port: u16) -> Wire {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).unwrap();
        Wire { s, buf: Vec::new() }
    }

    fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("write");
    }

    /// The next packet, `Err("closed")` or `Err("timeout")`.
    fn packet(&mut self, timeout: Duration) -> Result<(u8, Vec<u8>), &'static str> {
        let deadline = Instant::now() + timeout;
        loop {
            // Fixed header: type byte, then the remaining length (variable byte integer).
            if self.buf.len() >= 2 {
                let (mut len, mut mul, mut i) = (0usize, 1usize, 1usize);
                let mut whole = None;
                while i < self.buf.len() && i <= 4 {
                    let b = self.buf[i];
                    len += (b & 0x7f) as usize * mul;
                    mul *= 128;
                    i += 1;
                    if b & 0x80 == 0 {
                        whole = Some((i, len));
                        break;
                    }
                }
                if let Some((start, len)) = whole {
                    if self.buf.len() >= start + len {
                        let first = self.buf[0];
                        let body = self.buf[start..start + len].to_vec();
                        self.buf.drain(..start + len);
                        return Ok((first, body));
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timeout");
            }
            self.s.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 8192];
            match self.s.read(&mut chunk) {
                Ok(0) => return Err("closed"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err("timeout")
                }
                Err(_) => return Err("closed"),
            }
        }
    }
}

/// What a raw CONNECT carries.
#[derive(Default, Clone)]
struct Hello<'a> {
    v5: bool,
    id: &'a str,
    user: Option<&'a str>,
    pass: Option<&'a str>,
    will: Option<&'a str>,
    auth_method: Option<&'a str>,
}

fn connect_bytes(h: &Hello) -> BytesMut {
    let mut b = BytesMut::new();
    if h.v5 {
        let props = p5::ConnectProperties {
            authentication_method: h.auth_method.map(str::to_string),
            ..p5::ConnectProperties::new()
        };
        let will = h
            .will
            .map(|t| p5::LastWill::new(t, "gone", Q5::AtMostOnce, false, None));
        let login = h.pass.map(|p| p5::Login::new(h.user.unwrap_or("user"), p));
        p5::Packet::Connect(
            p5::Connect {
                keep_alive: 30,
                client_id: h.id.to_string(),
                clean_start: true,
                properties: Some(props),
            },
            will,
            login,
        )
        .write(&mut b, None)
        .expect("encode");
    } else {
        let mut c = v4::Connect::new(h.id);
        c.keep_alive = 30;
        c.last_will = h
            .will
            .map(|t| v4::LastWill::new(t, "gone", Q4::AtMostOnce, false));
        c.login = h.pass.map(|p| v4::Login::new(h.user.unwrap_or("user"), p));
        v4::Packet::Connect(c)
            .write(&mut b, 1 << 20)
            .expect("encode");
    }
    b
}

/// Opens a raw connection and returns it with the CONNACK's return code / reason code.
fn raw_connect(port: u16, h: &Hello) -> (Wire, u8) {
    let mut w = Wire::open(port);
    w.send(&connect_bytes(h));
    let (first, body) = w.packet(T).expect("CONNACK");
    assert_eq!(first, 0x20, "expected CONNACK, got packet {first:#x}");
    (w, body[1])
}

fn connack(port: u16, h: &Hello) -> u8 {
    raw_connect(port, h).1
}

/// The CONNACK code for a token as password, 3.1.1 and 5.
fn token_codes(port: u16, user: &str, token: &str) -> (u8, u8) {
    let mut h = Hello {
        id: "raw",
        user: Some(user),
        pass: Some(token),
        ..Hello::default()
    };
    let c4 = connack(port, &h);
    h.v5 = true;
    (c4, connack(port, &h))
}

// ---------------------------------------------------------------------------------------------
// Real clients.

/// mosquitto_pub once; returns (exit code, stderr).
fn mosq_pub(
    s: &Server,
    version: &str,
    user: Option<&str>,
    pass: Option<&str>,
    topic: &str,
    qos: u8,
) -> (Option<i32>, String) {
    let mut c = support::mosquitto_pub(s, false, version);
    if let Some(u) = user {
        c.args(["-u", u]);
    }
    if let Some(p) = pass {
        c.args(["-P", p]);
    }
    c.args(["-t", topic, "-m", "via-mosquitto", "-q", &qos.to_string()]);
    let (code, _, err) = run(&mut c, T);
    (code, err)
}

/// mosquitto_sub, followed live.
fn mosq_sub(s: &Server, version: &str, user: &str, pass: &str, filters: &[&str]) -> Proc {
    let mut c = support::mosquitto_sub(s, false, version);
    c.args(["-u", user, "-P", pass, "-q", "1"]);
    for f in filters {
        c.args(["-t", f]);
    }
    Proc::spawn(&mut c)
}

/// `tests/paho/auth.py` to completion; its JSON events.
fn paho_auth(
    port: u16,
    ws: bool,
    version: &str,
    user: Option<&str>,
    pass: Option<&str>,
    extra: &[&str],
) -> Vec<Value> {
    let mut c = Command::new("python3");
    c.arg(root().join("tests/paho/auth.py")).args([
        "--port",
        &port.to_string(),
        "--version",
        version,
    ]);
    if ws {
        c.args(["--transport", "websockets"]);
    }
    if let Some(u) = user {
        c.args(["--username", u]);
    }
    if let Some(p) = pass {
        c.args(["--password", p]);
    }
    c.args(extra);
    let (code, out, err) = run(&mut c, Duration::from_secs(30));
    assert_eq!(code, Some(0), "paho failed\nstdout:\n{out}\nstderr:\n{err}");
    let events: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        events.iter().any(|e| e["event"] == "done"),
        "paho did not finish\nstdout:\n{out}\nstderr:\n{err}"
    );
    events
}

fn paho_event<'a>(events: &'a [Value], kind: &str) -> Option<&'a Value> {
    events.iter().find(|e| e["event"] == kind)
}

fn paho_connack(events: &[Value]) -> i64 {
    paho_event(events, "connack").unwrap_or_else(|| panic!("no CONNACK: {events:?}"))["reason"]
        .as_i64()
        .unwrap()
}

/// rumqttc v5 with a token.
async fn v5_with(s: &Server, tr: Tr, id: &str, user: &str, token: &str) -> V5 {
    let mut o = v5_options(s, tr, id);
    o.set_credentials(user, token);
    V5::connect(o).await.0
}

/// rumqttc v4 with a token.
async fn v4_with(s: &Server, tr: Tr, id: &str, user: &str, token: &str) -> V4 {
    let mut o = v4_options(s, tr, id);
    o.set_credentials(user, token);
    V4::connect(o).await.0
}

/// Publishes at QoS 1 and returns the PUBACK's reason.
async fn v5_puback(c: &mut V5, topic: &str, payload: &str) -> p5::PubAckReason {
    c.client
        .publish(topic, Q5::AtLeastOnce, false, payload.to_string())
        .await
        .expect("publish");
    loop {
        if let p5::Packet::PubAck(a) = c.incoming(T).await {
            return a.reason;
        }
    }
}

async fn v5_subscribe_many(c: &mut V5, filters: &[&str]) -> Vec<p5::SubscribeReasonCode> {
    c.client
        .subscribe_many(filters.iter().map(|f| p5::Filter::new(*f, Q5::AtLeastOnce)))
        .await
        .expect("subscribe");
    loop {
        if let p5::Packet::SubAck(a) = c.incoming(T).await {
            return a.return_codes;
        }
    }
}

async fn v4_subscribe_many(c: &mut V4, filters: &[&str]) -> Vec<rumqttc::SubscribeReasonCode> {
    c.client
        .subscribe_many(
            filters
                .iter()
                .map(|f| rumqttc::SubscribeFilter::new(f.to_string(), Q4::AtLeastOnce)),
        )
        .await
        .expect("subscribe");
    loop {
        if let rumqttc::Packet::SubAck(a) = c.incoming(T).await {
            return a.return_codes;
        }
    }
}

/// Topics (and payloads) a v5 client receives until `end` arrives on `end_topic`.
async fn v5_until(c: &mut V5, end_topic: &str) -> Vec<(String, String)> {
    let mut got = Vec::new();
    loop {
        let p = c.publish_in(T).await;
        let t = String::from_utf8_lossy(&p.topic).into_owned();
        let body = String::from_utf8_lossy(&p.payload).into_owned();
        if t == end_topic {
            return got;
        }
        got.push((t, body));
    }
}

/// Topics a v5 client receives until every one of `ends` arrived (the core keeps no order
/// between different filters: each filter a client holds needs its own end marker).
async fn v5_until_all(c: &mut V5, ends: &[&str]) -> Vec<String> {
    let mut got = Vec::new();
    let mut left: Vec<&str> = ends.to_vec();
    while !left.is_empty() {
        let p = c.publish_in(T).await;
        let t = String::from_utf8_lossy(&p.topic).into_owned();
        match left.iter().position(|e| *e == t) {
            Some(i) => {
                left.remove(i);
            }
            None if ends.contains(&t.as_str()) => {}
            None => got.push(t),
        }
    }
    got.sort();
    got.dedup();
    got
}

/// Asserts no PUBLISH reaches `c` for `d`.
async fn v5_quiet(c: &mut V5, d: Duration) {
    if let Ok(p) = tokio::time::timeout(d, c.publish_in(Duration::from_secs(3600))).await {
        panic!("unexpected message: {p:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP.

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest")
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", {
        // Standard base64 (with padding) for Basic.
        let s = b64url(format!("{user}:{pass}").as_bytes())
            .replace('-', "+")
            .replace('_', "/");
        let pad = (4 - s.len() % 4) % 4;
        format!("{s}{}", "=".repeat(pad))
    })
}

/// Asserts a JSON error of `status` and returns (headers, message).
async fn json_error(r: reqwest::Response, status: u16) -> (reqwest::header::HeaderMap, String) {
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

/// Asserts a 401 with a Bearer challenge; `invalid`: it says `error="invalid_token"`.
async fn assert_401(r: reqwest::Response, invalid: bool) {
    let (h, msg) = json_error(r, 401).await;
    let www = h
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("401 without WWW-Authenticate ({msg})"));
    assert!(www.starts_with("Bearer realm="), "{www}");
    assert_eq!(www.contains("error=\"invalid_token\""), invalid, "{www}");
}

/// An open SSE response read event by event.
struct Sse {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: String,
}

impl Sse {
    /// GET /events…; the status and, when 200, the stream.
    async fn open(
        c: &reqwest::Client,
        url: &str,
        header: Option<(&str, String)>,
    ) -> Result<Sse, reqwest::Response> {
        let mut rq = c.get(url).timeout(Duration::from_secs(3600));
        if let Some((k, v)) = header {
            rq = rq.header(k, v);
        }
        let r = rq.send().await.expect("GET /events");
        if r.status() != 200 {
            return Err(r);
        }
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Ok(Sse {
            body: Box::pin(r.bytes_stream()),
            buf: String::new(),
        })
    }

    /// The next event's data (JSON), `Err(true)` when the stream ended, `Err(false)` on timeout.
    async fn next(&mut self, timeout: Duration) -> Result<Value, bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    continue; // heartbeat comment
                }
                if let Ok(v) = serde_json::from_str(&data.join("\n")) {
                    return Ok(v);
                }
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Err(false),
                Ok(None) | Ok(Some(Err(_))) => return Err(true),
                Ok(Some(Ok(b))) => self.buf.push_str(&String::from_utf8_lossy(&b)),
            }
        }
    }

    /// Topics of events until one on `end_topic`.
    async fn until(&mut self, end_topic: &str) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            match self.next(T).await {
                Ok(v) => {
                    let t = v["topic"].as_str().unwrap_or_default().to_string();
                    if t == end_topic {
                        return got;
                    }
                    got.push(t);
                }
                Err(ended) => panic!("SSE: no {end_topic} (ended: {ended}); got {got:?}"),
            }
        }
    }
}

/// A raw WebSocket handshake on /mqtt; returns the status line.
fn ws_handshake(port: u16, origin: Option<&str>) -> String {
    ws_handshake_to(port, &format!("127.0.0.1:{port}"), origin)
}

/// The same, naming the server `host`.
fn ws_handshake_to(port: u16, host: &str, origin: Option<&str>) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut req = format!(
        "GET /mqtt HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n"
    );
    if let Some(o) = origin {
        req.push_str(&format!("Origin: {o}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

fn openssl(args: &[&str]) -> String {
    let mut c = Command::new("openssl");
    c.args(args);
    run_ok(&mut c)
}

/// `openssl s_client` against a port; (exit code, all output).
fn s_client(port: u16, extra: &[&str]) -> (Option<i32>, String) {
    let mut c = Command::new("openssl");
    c.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(extra);
    let (code, out, err) = run(&mut c, T);
    (code, format!("{out}\n{err}"))
}

// =============================================================================================
// Authentication: tokens.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs_tokens_on_mqtt311_and_mqtt5() {
    let s = jwt_server().start();
    let alice = cli_token("alice", &["a/#"], &["a/#"], "1h", false);

    // Byte-exact CONNACK codes: accepted 0; any bad token 0x05 on 3.1.1, 0x86 on 5.
    assert_eq!(token_codes(s.mqtt, "alice", &alice), (0x00, 0x00));
    for (what, t) in bad_hs_tokens() {
        assert_eq!(token_codes(s.mqtt, "mallory", &t), (0x05, 0x86), "{what}");
    }
    // No credentials: 0x05 / 0x87 (not authorized, not bad credentials).
    let mut h = Hello {
        id: "nocreds",
        ..Hello::default()
    };
    assert_eq!(connack(s.mqtt, &h), 0x05);
    h.v5 = true;
    assert_eq!(connack(s.mqtt, &h), 0x87);
    // Enhanced authentication is not supported: 0x8C.
    h.auth_method = Some("SCRAM-SHA-1");
    h.pass = Some(&alice);
    assert_eq!(connack(s.mqtt, &h), 0x8C);

    // Real clients: mosquitto exits with the CONNACK code it got.
    let (code, err) = mosq_pub(&s, "mqttv311", Some("alice"), Some(&alice), "a/1", 1);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = mosq_pub(&s, "mqttv5", Some("alice"), Some(&alice), "a/1", 1);
    assert_eq!(code, Some(0), "{err}");
    for (what, t) in bad_hs_tokens() {
        let (code, err) = mosq_pub(&s, "mqttv311", Some("mallory"), Some(&t), "a/1", 0);
        assert_eq!(code, Some(5), "3.1.1 {what}: {err}");
        assert!(err.contains("not authorised"), "{err}");
        let (code, err) = mosq_pub(&s, "mqttv5", Some("mallory"), Some(&t), "a/1", 0);
        assert_eq!(code, Some(0x86), "5 {what}: {err}");
        assert!(err.contains("Bad User Name or Password"), "{err}");
    }
    let (code, err) = mosq_pub(&s, "mqttv5", None, None, "a/1", 0);
    assert_eq!(code, Some(0x87), "{err}");

    // rumqttc: accepted with the good token, refused with an expired one.
    let mut c = v5_with(&s, Tr::Tcp, "rumqttc-ok", "alice", &alice).await;
    assert_eq!(
        v5_puback(&mut c, "a/x", "hi").await,
        p5::PubAckReason::Success
    );
    let expired = hs(&claims("alice", &["a/#"], &["a/#"], -3600));
    let mut o = v5_options(&s, Tr::Tcp, "rumqttc-expired");
    o.set_credentials("alice", expired);
    let (_client, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    let e = tokio::time::timeout(T, el.poll()).await.expect("answer");
    let e = format!("{e:?}");
    assert!(e.contains("BadUserNamePassword"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asymmetric_tokens_and_algorithm_confusion() {
    let dir = temp_dir("keys");
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    for (name, args) in [
        (
            "rs",
            vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        (
            "rs2",
            vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        (
            "ec",
            vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        ("ed", vec!["-algorithm", "ED25519"]),
    ] {
        let key = p(&format!("{name}.key"));
        let mut a = vec!["genpkey"];
        a.extend(args);
        a.extend(["-out", &key]);
        openssl(&a);
        openssl(&[
            "pkey",
            "-in",
            &key,
            "-pubout",
            "-out",
            &p(&format!("{name}.pub")),
        ]);
    }
    let read = |n: &str| std::fs::read(dir.join(n)).expect("key file");
    let s = Server::builder()
        .env(
            "AUTH__JWT_PUBLIC_KEYS",
            format!("rs1={},{},{}", p("rs.pub"), p("ec.pub"), p("ed.pub")),
        )
        .env("AUTH__ISSUER", ISS)
        .env("AUTH__AUDIENCE", AUD)
        .start();
    let c = claims("alice", &["a/#"], &["a/#"], 3600);
    let rs = EncodingKey::from_rsa_pem(&read("rs.key")).expect("RSA key");
    let rs2 = EncodingKey::from_rsa_pem(&read("rs2.key")).expect("RSA key 2");
    let ec = EncodingKey::from_ec_pem(&read("ec.key")).expect("EC key");
    let ed = EncodingKey::from_ed_pem(&read("ed.key")).expect("Ed25519 key");

    let good = [
        (
            "RS256 kid rs1",
            sign(Algorithm::RS256, &rs, Some("rs1"), &c),
        ),
        ("RS512 without kid", sign(Algorithm::RS512, &rs, None, &c)),
        ("PS256", sign(Algorithm::PS256, &rs, Some("rs1"), &c)),
        ("ES256", sign(Algorithm::ES256, &ec, None, &c)),
        ("EdDSA", sign(Algorithm::EdDSA, &ed, None, &c)),
    ];
    // HS/RS confusion: HS256 "signed" with the RSA public key's PEM bytes as the secret.
    let confused = EncodingKey::from_secret(&read("rs.pub"));
    let mut expired = c.clone();
    expired["exp"] = json!(now() - 3600);
    let mut aud = c.clone();
    aud["aud"] = json!("someone-else");
    let bad = [
        (
            "RS256 by another key",
            sign(Algorithm::RS256, &rs2, Some("rs1"), &c),
        ),
        (
            "RS256 unknown kid",
            sign(Algorithm::RS256, &rs, Some("other"), &c),
        ),
        (
            "HS256 with the public key",
            sign(Algorithm::HS256, &confused, None, &c),
        ),
        (
            "HS256 with the public key, kid rs1",
            sign(Algorithm::HS256, &confused, Some("rs1"), &c),
        ),
        ("ES256 expired", sign(Algorithm::ES256, &ec, None, &expired)),
        (
            "EdDSA wrong audience",
            sign(Algorithm::EdDSA, &ed, None, &aud),
        ),
        ("alg none", alg_none(&c)),
    ];
    let h = http();
    for (what, t) in &good {
        assert_eq!(token_codes(s.mqtt, "alice", t), (0, 0), "{what}");
        // Authorized over HTTP too: 404 (nothing retained), not 401/403.
        let r = h
            .get(format!("{}/topics/a/x", s.http_base()))
            .header("authorization", bearer(t))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{what}");
    }
    for (what, t) in &bad {
        assert_eq!(token_codes(s.mqtt, "alice", t), (0x05, 0x86), "{what}");
        let r = h
            .get(format!("{}/topics/a/x", s.http_base()))
            .header("authorization", bearer(t))
            .send()
            .await
            .unwrap();
        assert_401(r, true).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tokens_and_authorization() {
    let s = jwt_server().start();
    let alice = cli_token("alice", &["a/#"], &["a/#"], "1h", false);
    for v in ["311", "5"] {
        let ev = paho_auth(s.http, true, v, Some("alice"), Some(&alice), &[]);
        assert_eq!(paho_connack(&ev), 0, "{v}: {ev:?}");
        for (what, t) in bad_hs_tokens() {
            let ev = paho_auth(s.http, true, v, Some("mallory"), Some(&t), &[]);
            let want = if v == "5" { 0x86 } else { 0x05 };
            assert_eq!(paho_connack(&ev), want, "{v} {what}: {ev:?}");
        }
        let ev = paho_auth(s.http, true, v, None, None, &[]);
        let want = if v == "5" { 0x87 } else { 0x05 };
        assert_eq!(paho_connack(&ev), want, "{v} anonymous: {ev:?}");
    }
    // Authorization over WebSocket: SUBACK per filter, PUBACK 0x87.
    let ev = paho_auth(
        s.http,
        true,
        "5",
        Some("alice"),
        Some(&alice),
        &[
            "--subscribe",
            "a/#",
            "--subscribe",
            "b/#",
            "--publish",
            "b/1",
        ],
    );
    assert_eq!(
        paho_event(&ev, "suback").unwrap()["codes"],
        json!([1, 0x87]),
        "{ev:?}"
    );
    assert_eq!(paho_event(&ev, "puback").unwrap()["reason"], 0x87, "{ev:?}");
    let ev = paho_auth(
        s.http,
        true,
        "5",
        Some("alice"),
        Some(&alice),
        &["--subscribe", "a/#", "--publish", "a/1"],
    );
    assert_eq!(paho_event(&ev, "puback").unwrap()["reason"], 0, "{ev:?}");
    assert!(
        ev.iter()
            .any(|e| e["event"] == "msg" && e["topic"] == "a/1"),
        "{ev:?}"
    );
    let ev = paho_auth(
        s.http,
        true,
        "311",
        Some("alice"),
        Some(&alice),
        &["--subscribe", "a/#", "--subscribe", "b/#"],
    );
    assert_eq!(
        paho_event(&ev, "suback").unwrap()["codes"],
        json!([1, 0x80]),
        "{ev:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_authentication_401_and_403() {
    let s = jwt_server().start();
    let alice = cli_token("alice", &["a/#"], &["a/#"], "1h", false);
    let h = http();
    let url = |p: &str| format!("{}{p}", s.http_base());

    // No credentials: 401 with a plain challenge.
    let r = h.get(url("/topics/a/x")).send().await.unwrap();
    assert_401(r, false).await;
    let r = h.post(url("/topics/a/x")).body("x").send().await.unwrap();
    assert_401(r, false).await;
    // Every bad token: 401 invalid_token, on reads and writes.
    for (what, t) in bad_hs_tokens() {
        let r = h
            .get(url("/topics/a/x"))
            .header("authorization", bearer(&t))
            .send()
            .await
            .unwrap();
        assert_401(r, true).await;
        let r = h
            .post(url("/topics/a/x"))
            .header("authorization", bearer(&t))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{what}");
        // The cookie is checked the same way.
        let r = h
            .get(url("/topics/a/x"))
            .header("cookie", format!("rtw_token={t}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "cookie {what}");
    }
    // An unknown scheme: 401.
    let r = h
        .get(url("/topics/a/x"))
        .header("authorization", format!("Token {alice}"))
        .send()
        .await
        .unwrap();
    assert_401(r, true).await;
    // The query token is off by default.
    let r = h
        .get(url(&format!("/topics/a/x?access_token={alice}")))
        .send()
        .await
        .unwrap();
    assert_401(r, false).await;

    // Authenticated: allowed (200/404) or 403 with a JSON body.
    let r = h
        .put(url("/topics/a/state"))
        .header("authorization", bearer(&alice))
        .body("v1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = h
        .get(url("/topics/a/state"))
        .header("authorization", bearer(&alice))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "v1");
    let r = h
        .get(url("/topics/a/state"))
        .header("cookie", format!("other=1; rtw_token={alice}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "cookie");
    for (m, path) in [
        ("GET", "/topics/b/state"),
        ("POST", "/topics/b/x"),
        ("PUT", "/topics/b/x"),
        ("DELETE", "/topics/b/x"),
    ] {
        let r = h
            .request(m.parse().unwrap(), url(path))
            .header("authorization", bearer(&alice))
            .body("x")
            .send()
            .await
            .unwrap();
        let (hd, msg) = json_error(r, 403).await;
        assert!(
            hd.get("www-authenticate").is_none(),
            "403 needs no challenge"
        );
        assert!(msg.contains("not allowed"), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_claim_binds_the_mqtt_user_name() {
    let s = jwt_server().env("AUTH__USERNAME_CLAIM", "sub").start();
    let alice = cli_token("alice", &["a/#"], &["a/#"], "1h", false);
    assert_eq!(token_codes(s.mqtt, "alice", &alice), (0, 0));
    assert_eq!(token_codes(s.mqtt, "mallory", &alice), (0x05, 0x87));
    // HTTP has no user name: the bearer token alone authenticates.
    let r = http()
        .get(format!("{}/topics/a/x", s.http_base()))
        .header("authorization", bearer(&alice))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "{}", r.text().await.unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_placeholder_needs_a_verified_user_name() {
    // Without username_claim the MQTT user name is whatever the client says: a grant on
    // {username} must not let a token holder pick someone else's topics.
    let s = jwt_server().start();
    let t = hs(&claims(
        "mallory",
        &["u/{username}/#"],
        &["u/{username}/#"],
        3600,
    ));
    let mut c = v5_with(&s, Tr::Tcp, "pick-a-name", "alice", &t).await;
    assert_eq!(
        v5_puback(&mut c, "u/alice/inbox", "x").await,
        p5::PubAckReason::NotAuthorized
    );
    assert_eq!(
        v5_subscribe_many(&mut c, &["u/alice/#"]).await,
        vec![p5::SubscribeReasonCode::NotAuthorized]
    );
    drop(c);
    // With username_claim = sub the user name is the token's subject: then it applies.
    let s = jwt_server().env("AUTH__USERNAME_CLAIM", "sub").start();
    let mut c = v5_with(&s, Tr::Tcp, "verified", "mallory", &t).await;
    assert_eq!(
        v5_puback(&mut c, "u/mallory/inbox", "x").await,
        p5::PubAckReason::Success
    );
    assert_eq!(
        v5_puback(&mut c, "u/alice/inbox", "x").await,
        p5::PubAckReason::NotAuthorized
    );
}

// =============================================================================================
// Authorization.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_authorization_v5_reason_codes_and_v311_drop() {
    let s = jwt_server().start();
    let alice = cli_token("alice", &["a/#"], &["a/#"], "1h", false);
    let mut watch = v5_with(&s, Tr::Tcp, "watcher", "admin", &admin_token()).await;
    assert_eq!(
        v5_subscribe_many(&mut watch, &["#"]).await,
        vec![p5::SubscribeReasonCode::Success(Q5::AtLeastOnce)]
    );

    // MQTT 5: PUBACK 0x87 / PUBREC 0x87, the connection stays.
    let mut c5 = v5_with(&s, Tr::Tcp, "alice5", "alice", &alice).await;
    assert_eq!(
        v5_puback(&mut c5, "a/1", "ok5").await,
        p5::PubAckReason::Success
    );
    assert_eq!(
        v5_puback(&mut c5, "b/1", "no5").await,
        p5::PubAckReason::NotAuthorized
    );
    c5.client
        .publish("b/2", Q5::ExactlyOnce, false, "no5-qos2")
        .await
        .unwrap();
    loop {
        if let p5::Packet::PubRec(r) = c5.incoming(T).await {
            assert_eq!(r.reason, p5::PubRecReason::NotAuthorized);
            break;
        }
    }
    c5.send("b/3", Q5::AtMostOnce, false, b"no5-qos0", None)
        .await;
    assert_eq!(
        v5_puback(&mut c5, "a/2", "ok5b").await,
        p5::PubAckReason::Success
    );
    // Byte-exact: the PUBACK on the wire carries 0x87.
    let (mut w, code) = raw_connect(
        s.mqtt,
        &Hello {
            v5: true,
            id: "raw-pub",
            user: Some("alice"),
            pass: Some(&alice),
            ..Hello::default()
        },
    );
    assert_eq!(code, 0);
    let mut b = BytesMut::new();
    let mut p = p5::Publish::new("b/raw", Q5::AtLeastOnce, "no-raw", None);
    p.pkid = 7;
    p5::Packet::Publish(p).write(&mut b, None).unwrap();
    w.send(&b);
    let (first, body) = w.packet(T).expect("PUBACK");
    assert_eq!(first, 0x40);
    assert_eq!(&body[..3], &[0, 7, 0x87]);

    // 3.1.1: acknowledged and dropped, the connection stays.
    let mut c4 = v4_with(&s, Tr::Tcp, "alice4", "alice", &alice).await;
    c4.send("b/4", Q4::AtLeastOnce, false, b"no4").await;
    c4.send("b/5", Q4::ExactlyOnce, false, b"no4-qos2").await;
    c4.send("a/3", Q4::AtLeastOnce, false, b"ok4").await;
    let (code, err) = mosq_pub(&s, "mqttv311", Some("alice"), Some(&alice), "b/6", 1);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = mosq_pub(&s, "mqttv5", Some("alice"), Some(&alice), "b/7", 1);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("Not authorized"), "{err}");
    c4.send("a/end", Q4::AtLeastOnce, false, b"end").await;

    let got = v5_until(&mut watch, "a/end").await;
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, ["a/1", "a/2", "a/3"], "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_refusal_disconnects_v311_with_deny_action_disconnect() {
    let s = jwt_server().env("AUTH__DENY_ACTION", "disconnect").start();
    let alice = cli_token("alice", &["a/#"], &["a/#"], "1h", false);
    let mut watch = v5_with(&s, Tr::Tcp, "watcher", "admin", &admin_token()).await;
    v5_subscribe_many(&mut watch, &["#"]).await;

    let mut c4 = v4_with(&s, Tr::Tcp, "alice4", "alice", &alice).await;
    c4.send("a/1", Q4::AtLeastOnce, false, b"ok").await;
    c4.client
        .publish("b/1", Q4::AtLeastOnce, false, "no")
        .await
        .unwrap();
    let e = c4.closed(T).await;
    assert!(!e.is_empty());
    // Over the wire: no PUBACK, the socket closes.
    let (mut w, code) = raw_connect(
        s.mqtt,
        &Hello {
            id: "raw4",
            user: Some("alice"),
            pass: Some(&alice),
            ..Hello::default()
        },
    );
    assert_eq!(code, 0);
    let mut b = BytesMut::new();
    let mut p = v4::Publish::new("b/raw", Q4::AtLeastOnce, "no");
    p.pkid = 3;
    v4::Packet::Publish(p).write(&mut b, 1 << 20).unwrap();
    w.send(&b);
    assert_eq!(w.packet(T).err(), Some("closed"));
    // mosquitto_pub notices too (QoS 1: it never gets its PUBACK).
    let (code, _) = mosq_pub(&s, "mqttv311", Some("alice"), Some(&alice), "b/2", 1);
    assert_ne!(code, Some(0));
    // MQTT 5 clients still get a reason code and stay.
    let mut c5 = v5_with(&s, Tr::Tcp, "alice5", "alice", &alice).await;
    assert_eq!(
        v5_puback(&mut c5, "b/3", "no").await,
        p5::PubAckReason::NotAuthorized
    );
    assert_eq!(
        v5_puback(&mut c5, "a/end", "end").await,
        p5::PubAckReason::Success
    );
    let got = v5_until(&mut watch, "a/end").await;
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, ["a/1"], "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_authorization_per_filter_shared_and_sys() {
    let s = jwt_server().env("SYS__INTERVAL_SECS", "1").start();
    let bob = cli_token("bob", &["#"], &["a/#", "c/+/x"], "1h", false);
    let admin = admin_token();
    use p5::SubscribeReasonCode as S5;
    let filters = [
        "a/1",
        "b/1",
        "#",
        "+/1",
        "a/#",
        "$share/g/#",
        "$share/g/b/1",
        "$share/g/+/1",
        "c/+/x",
        "c/+/y",
        "c/#",
        "$SYS/#",
        "$SYS/broker/uptime",
        "rtw/replies/#",
    ];
    // (A shared and a plain subscription to the same filter on one connection trip a
    // debug_assert in rumqttd's router (debug builds): the shared ones are tested apart.)
    let ok = [0, 4, 8];
    let mut c5 = v5_with(&s, Tr::Tcp, "bob5", "bob", &bob).await;
    let codes = v5_subscribe_many(&mut c5, &filters).await;
    for (i, f) in filters.iter().enumerate() {
        if ok.contains(&i) {
            assert_eq!(codes[i], S5::Success(Q5::AtLeastOnce), "{f}");
        } else {
            assert_eq!(codes[i], S5::NotAuthorized, "{f}");
        }
    }
    let mut c4 = v4_with(&s, Tr::Tcp, "bob4", "bob", &bob).await;
    let codes = v4_subscribe_many(&mut c4, &filters).await;
    for (i, f) in filters.iter().enumerate() {
        if ok.contains(&i) {
            assert_eq!(
                codes[i],
                rumqttc::SubscribeReasonCode::Success(Q4::AtLeastOnce),
                "{f}"
            );
        } else {
            assert_eq!(codes[i], rumqttc::SubscribeReasonCode::Failure, "{f}");
        }
    }
    // mosquitto_sub shows the per-filter codes (-d).
    let mut m = mosq_sub(&s, "mqttv5", "bob", &bob, &["a/#", "b/#"]);
    let l = m.wait_line(T, |l| l.starts_with("Subscribed (mid:"));
    assert!(l.ends_with(": 1, 135"), "{l}");
    drop(m);
    let mut m = mosq_sub(&s, "mqttv311", "bob", &bob, &["a/#", "b/#"]);
    let l = m.wait_line(T, |l| l.starts_with("Subscribed (mid:"));
    assert!(l.ends_with(": 1, 128"), "{l}");
    drop(m);

    // A shared subscription only on the inner filter's grant: bob's $share/g/a/# gets a/…, and
    // nothing of b/… although he asked for $share/g/# and $share/g/b/1.
    let mut shared = v5_with(&s, Tr::Tcp, "bob-shared", "bob", &bob).await;
    let codes = v5_subscribe_many(
        &mut shared,
        &["$share/g/#", "$share/g/b/1", "$share/g2/a/#"],
    )
    .await;
    assert_eq!(
        codes,
        vec![
            S5::NotAuthorized,
            S5::NotAuthorized,
            S5::Success(Q5::AtLeastOnce)
        ]
    );
    let mut pubr = v5_with(&s, Tr::Tcp, "publisher", "admin", &admin).await;
    for t in ["b/1", "a/1", "c/1/x", "c/1/y", "b/2", "a/end", "c/end/x"] {
        assert_eq!(v5_puback(&mut pubr, t, t).await, p5::PubAckReason::Success);
    }
    assert_eq!(v5_until_all(&mut shared, &["a/end"]).await, ["a/1"]);
    assert_eq!(
        v5_until_all(&mut c5, &["a/end", "c/end/x"]).await,
        ["a/1", "c/1/x"]
    );

    // $SYS only with --admin.
    let mut a = v5_with(&s, Tr::Tcp, "admin-sys", "admin", &admin).await;
    assert_eq!(
        v5_subscribe_many(&mut a, &["$SYS/#"]).await,
        vec![S5::Success(Q5::AtLeastOnce)]
    );
    let p = a.publish_in(T).await;
    assert!(p.topic.starts_with(b"$SYS/"), "{p:?}");
    let all = cli_token("everything", &["#"], &["#"], "1h", false);
    let mut n = v5_with(&s, Tr::Tcp, "not-admin", "x", &all).await;
    assert_eq!(
        v5_subscribe_many(&mut n, &["$SYS/#", "$SYS/broker/clients/connected"]).await,
        vec![S5::NotAuthorized, S5::NotAuthorized]
    );
    // Publishing into $SYS is refused for everyone.
    assert_eq!(
        v5_puback(&mut a, "$SYS/fake", "x").await,
        p5::PubAckReason::TopicNameInvalid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_topic_is_authorized_at_connect() {
    let s = jwt_server().start();
    let alice = cli_token("alice", &["a/#"], &["a/#"], "1h", false);
    let mut watch = v5_with(&s, Tr::Tcp, "watcher", "admin", &admin_token()).await;
    v5_subscribe_many(&mut watch, &["#"]).await;
    for v5 in [false, true] {
        let h = Hello {
            v5,
            id: "will-no",
            user: Some("alice"),
            pass: Some(&alice),
            will: Some("b/will"),
            ..Hello::default()
        };
        assert_eq!(connack(s.mqtt, &h), if v5 { 0x87 } else { 0x05 }, "v5 {v5}");
    }
    // An allowed will is accepted and published when the connection drops.
    let (w, code) = raw_connect(
        s.mqtt,
        &Hello {
            v5: true,
            id: "will-ok",
            user: Some("alice"),
            pass: Some(&alice),
            will: Some("a/will"),
            ..Hello::default()
        },
    );
    assert_eq!(code, 0);
    drop(w);
    let p = watch.publish_in(T).await;
    assert_eq!(&p.topic[..], b"a/will");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_respect_read_permissions() {
    let s = jwt_server().start();
    let admin = admin_token();
    let reader = cli_token("reader", &[], &["pub/#"], "1h", false);
    let h = http();
    let url = |p: &str| format!("{}{p}", s.http_base());
    for (t, v) in [
        ("pub/news", "public news"),
        ("pub/deep/x", "public deep"),
        ("secret/plans", "top secret"),
        ("secret/pub/x", "also secret"),
    ] {
        let r = h
            .put(url(&format!("/topics/{t}")))
            .header("authorization", bearer(&admin))
            .body(v)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{t}");
    }

    // MQTT 5: every filter that would reach a secret is refused; pub/# gets only public state.
    let mut c = v5_with(&s, Tr::Tcp, "reader5", "reader", &reader).await;
    use p5::SubscribeReasonCode as S5;
    let codes = v5_subscribe_many(
        &mut c,
        &["#", "+/plans", "secret/#", "+/pub/#", "$share/g/#"],
    )
    .await;
    assert!(codes.iter().all(|c| *c == S5::NotAuthorized), "{codes:?}");
    let codes = v5_subscribe_many(&mut c, &["pub/#"]).await;
    assert_eq!(codes, vec![S5::Success(Q5::AtLeastOnce)]);
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = c.publish_in(T).await;
        assert!(p.retain);
        got.push(String::from_utf8_lossy(&p.topic).into_owned());
    }
    got.sort();
    assert_eq!(got, ["pub/deep/x", "pub/news"]);
    // Live messages: the secret one never arrives.
    let mut admin5 = v5_with(&s, Tr::Tcp, "admin5", "admin", &admin).await;
    for t in ["secret/live", "pub/live", "secret/pub/live", "pub/end"] {
        admin5
            .send(t, Q5::AtLeastOnce, false, t.as_bytes(), None)
            .await;
    }
    let live: Vec<String> = v5_until(&mut c, "pub/end")
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(live, ["pub/live"]);

    // 3.1.1 mosquitto_sub asking for '#' and 'pub/#': public retained state only.
    let mut m = mosq_sub(
        &s,
        "mqttv311",
        "reader",
        &reader,
        &["#", "+/plans", "pub/#"],
    );
    let l = m.wait_line(T, |l| l.starts_with("Subscribed (mid:"));
    assert!(l.ends_with(": 128, 128, 1"), "{l}");
    let mut msgs = Vec::new();
    while let Some(l) = m.next_line(Duration::from_secs(2)) {
        if let Some(rest) = l.strip_prefix("MSG|") {
            msgs.push(rest.split('|').next().unwrap().to_string());
        }
    }
    msgs.sort();
    assert_eq!(msgs, ["pub/deep/x", "pub/news"]);

    // WebSocket (paho).
    let ev = paho_auth(
        s.http,
        true,
        "5",
        Some("reader"),
        Some(&reader),
        &["--subscribe", "#", "--subscribe", "pub/#", "--wait", "1.5"],
    );
    assert_eq!(
        paho_event(&ev, "suback").unwrap()["codes"],
        json!([0x87, 1])
    );
    let mut topics: Vec<&str> = ev
        .iter()
        .filter(|e| e["event"] == "msg")
        .map(|e| e["topic"].as_str().unwrap())
        .collect();
    topics.sort();
    assert_eq!(topics, ["pub/deep/x", "pub/news"], "{ev:?}");

    // HTTP: state, SSE and long poll.
    let auth = ("authorization", bearer(&reader));
    let r = h
        .get(url("/topics/pub/news"))
        .header(auth.0, auth.1.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "public news");
    let r = h
        .get(url("/topics/secret/plans"))
        .header(auth.0, auth.1.clone())
        .send()
        .await
        .unwrap();
    json_error(r, 403).await;
    for q in [
        "topic=%23",
        "topic=secret/%23",
        "topic=pub/%23&topic=%2B/plans",
    ] {
        let r = Sse::open(&h, &url(&format!("/events?{q}")), Some(auth.clone())).await;
        json_error(r.err().expect("refused"), 403).await;
        let r = h
            .get(url(&format!("/poll?{q}&timeout=1")))
            .header(auth.0, auth.1.clone())
            .send()
            .await
            .unwrap();
        json_error(r, 403).await;
    }
    let mut sse = Sse::open(&h, &url("/events?topic=pub/%23"), Some(auth.clone()))
        .await
        .unwrap_or_else(|r| panic!("SSE: HTTP {}", r.status()));
    let mut first = Vec::new();
    for _ in 0..2 {
        let v = sse.next(T).await.expect("retained event");
        assert_eq!(v["retained"], true);
        first.push(v["topic"].as_str().unwrap().to_string());
    }
    first.sort();
    assert_eq!(first, ["pub/deep/x", "pub/news"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_session_keeps_only_what_the_new_credentials_allow() {
    let s = jwt_server().start();
    let broad = cli_token("dev", &[], &["secret/#", "pub/#"], "1h", false);
    let narrow = cli_token("dev", &[], &["pub/#"], "1h", false);
    let mut o = v5_options(&s, Tr::Tcp, "device-1");
    o.set_credentials("dev", broad);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(600));
    let (mut c, _) = V5::connect(o).await;
    assert_eq!(
        v5_subscribe_many(&mut c, &["secret/#", "pub/#"])
            .await
            .len(),
        2
    );
    c.disconnect().await;
    // The same client id comes back with a token that no longer grants secret/#.
    let mut o = v5_options(&s, Tr::Tcp, "device-1");
    o.set_credentials("dev", narrow);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(600));
    let (mut c, ack) = V5::connect(o).await;
    assert!(ack.session_present);
    let mut admin = v5_with(&s, Tr::Tcp, "admin", "admin", &admin_token()).await;
    for t in ["secret/x", "pub/x", "pub/end"] {
        admin
            .send(t, Q5::AtLeastOnce, false, t.as_bytes(), None)
            .await;
    }
    let got: Vec<String> = v5_until(&mut c, "pub/end")
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(got, ["pub/x"]);
    // (secret/# is another filter of the core's: no order with pub/#; give it time.)
    v5_quiet(&mut c, Duration::from_secs(2)).await;
}

// =============================================================================================
// HTTP routes.

/// An MQTT 5 responder on `rpc/#` (admin token) answering "pong:{payload}".
async fn responder(s: &Server, token: &str) -> Responder {
    let mut o = v5_options(s, Tr::Tcp, "responder");
    o.set_credentials("svc", token);
    let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 100);
    client.subscribe("rpc/#", Q5::AtLeastOnce).await.unwrap();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        // Ends at the first error (the server went away at the end of the test).
        while let Ok(e) = el.poll().await {
            let rumqttc::v5::Event::Incoming(p) = e else {
                continue;
            };
            match p {
                p5::Packet::SubAck(_) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                p5::Packet::Publish(p) => {
                    let props = p.properties.clone().unwrap_or_default();
                    let Some(to) = props.response_topic.clone() else {
                        continue;
                    };
                    let reply = p5::PublishProperties {
                        correlation_data: props.correlation_data.clone(),
                        ..Default::default()
                    };
                    let body = format!("pong:{}", String::from_utf8_lossy(&p.payload));
                    let c = client.clone();
                    tokio::spawn(async move {
                        let _ = c
                            .publish_with_properties(to, Q5::AtLeastOnce, false, body, reply)
                            .await;
                    });
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(T, ready_rx)
        .await
        .expect("responder SUBACK")
        .expect("responder running");
    Responder(task)
}

struct Responder(tokio::task::JoinHandle<()>);

impl Drop for Responder {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_state_sse_poll_and_rpc_are_authorized() {
    let s = jwt_server().env("AUTH__ALLOW_QUERY_TOKEN", "true").start();
    let carol = cli_token("carol", &["s/#", "rpc/ok/#"], &["s/#"], "1h", false);
    let admin = admin_token();
    let h = http();
    let url = |p: &str| format!("{}{p}", s.http_base());
    let auth = ("authorization", bearer(&carol));
    let cookie = ("cookie", format!("rtw_token={carol}"));

    // Publish.
    let r = h
        .post(url("/topics/s/1"))
        .header(auth.0, auth.1.clone())
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = h
        .post(url("/topics/t/1"))
        .header(auth.0, auth.1.clone())
        .body("x")
        .send()
        .await
        .unwrap();
    json_error(r, 403).await;
    // State, with the query token (allowed on this server).
    let r = h
        .put(url(&format!("/topics/s/state?access_token={carol}")))
        .body("st")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = h
        .get(url(&format!("/topics/s/state?access_token={carol}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "st");
    let r = h
        .get(url("/topics/s/state?access_token=forged"))
        .send()
        .await
        .unwrap();
    assert_401(r, true).await;

    // SSE: bearer and cookie get live messages; no credentials 401; another filter 403.
    let mut by_bearer = Sse::open(
        &h,
        &url("/events?topic=s/live/%23&retained=false"),
        Some(auth.clone()),
    )
    .await
    .unwrap_or_else(|r| panic!("SSE bearer: HTTP {}", r.status()));
    let mut by_cookie = Sse::open(
        &h,
        &url("/events?topic=s/live/%23&retained=false"),
        Some(cookie.clone()),
    )
    .await
    .unwrap_or_else(|r| panic!("SSE cookie: HTTP {}", r.status()));
    let r = Sse::open(&h, &url("/events?topic=s/%23"), None).await;
    assert_401(r.err().expect("401"), false).await;
    let expired = hs(&claims("carol", &["s/#"], &["s/#"], -3600));
    let r = Sse::open(
        &h,
        &url("/events?topic=s/%23"),
        Some(("cookie", format!("rtw_token={expired}"))),
    )
    .await;
    assert_401(r.err().expect("401"), true).await;
    let r = Sse::open(&h, &url("/events?topic=t/%23"), Some(cookie.clone())).await;
    json_error(r.err().expect("403"), 403).await;

    // Long poll.
    let poll = {
        let h = h.clone();
        let u = url("/poll?topic=s/live/%23&timeout=20");
        let a = auth.1.clone();
        tokio::spawn(async move { h.get(u).header("authorization", a).send().await.unwrap() })
    };
    let r = h
        .get(url("/poll?topic=t/%23&timeout=1"))
        .header(auth.0, auth.1.clone())
        .send()
        .await
        .unwrap();
    json_error(r, 403).await;
    let r = h
        .get(url("/poll?topic=s/%23&timeout=1"))
        .send()
        .await
        .unwrap();
    assert_401(r, false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = h
        .post(url("/topics/s/live/1"))
        .header(auth.0, auth.1.clone())
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for sse in [&mut by_bearer, &mut by_cookie] {
        let v = sse.next(T).await.expect("live event");
        assert_eq!(v["topic"], "s/live/1");
        assert_eq!(v["payload"], "hello");
    }
    let r = poll.await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["events"][0]["topic"], "s/live/1", "{v}");

    // RPC: /rpc/x needs publish on rpc/x.
    let _svc = responder(&s, &admin).await;
    let r = h
        .post(url("/rpc/ok/ping"))
        .header(auth.0, auth.1.clone())
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "pong:1");
    let r = h
        .post(url("/rpc/other/ping"))
        .header(auth.0, auth.1.clone())
        .body("1")
        .send()
        .await
        .unwrap();
    json_error(r, 403).await;
    let r = h.post(url("/rpc/ok/ping")).body("1").send().await.unwrap();
    assert_401(r, false).await;
    let r = h
        .post(url("/rpc/ok/ping"))
        .header("authorization", bearer(&expired))
        .body("1")
        .send()
        .await
        .unwrap();
    assert_401(r, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_replies_never_reach_other_readers() {
    let s = jwt_server().start();
    let admin = admin_token();
    let h = http();
    let url = |p: &str| format!("{}{p}", s.http_base());
    let auth = ("authorization", bearer(&admin));
    // Readers allowed to see everything a filter can name.
    let mut all = Sse::open(
        &h,
        &url("/events?topic=%23&retained=false"),
        Some(auth.clone()),
    )
    .await
    .unwrap_or_else(|r| panic!("SSE #: HTTP {}", r.status()));
    let replies = Sse::open(
        &h,
        &url("/events?topic=rtw/replies/%23&retained=false"),
        Some(auth.clone()),
    )
    .await;
    let mut mqtt = v5_with(&s, Tr::Tcp, "reader", "admin", &admin).await;
    v5_subscribe_many(&mut mqtt, &["#"]).await;
    let _svc = responder(&s, &admin).await;
    let r = h
        .post(url("/rpc/x"))
        .header(auth.0, auth.1.clone())
        .body("secret-reply")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "pong:secret-reply");
    let r = h
        .post(url("/topics/end"))
        .header(auth.0, auth.1.clone())
        .body("end")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = all.until("end").await;
    assert_eq!(seen, ["rpc/x"], "SSE '#' saw {seen:?}");
    let seen: Vec<String> = v5_until(&mut mqtt, "end")
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(seen, ["rpc/x"], "MQTT '#' saw {seen:?}");
    match replies {
        Err(r) => assert_eq!(r.status(), 403),
        Ok(mut sse) => {
            if let Ok(v) = sse.next(Duration::from_secs(2)).await {
                panic!("a reply reached an SSE reader: {v}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_namespace_is_no_way_around_publish_rules() {
    // Anyone may publish into rtw/replies/ (replies are guarded by their correlation ids), so
    // nothing published there may reach other readers: not live, not as retained state.
    let s = jwt_server().start();
    let admin = admin_token();
    let reader = cli_token("reader", &[], &["#"], "1h", false);
    let mut ro = v5_with(&s, Tr::Tcp, "read-only", "reader", &reader).await;
    assert_eq!(
        v5_puback(&mut ro, "anything", "x").await,
        p5::PubAckReason::NotAuthorized
    );
    ro.client
        .publish("rtw/replies/n1", Q5::AtLeastOnce, true, "injected")
        .await
        .unwrap();
    loop {
        if let p5::Packet::PubAck(_) = ro.incoming(T).await {
            break;
        }
    }
    let h = http();
    let url = |p: &str| format!("{}{p}", s.http_base());
    let r = h
        .put(url("/topics/rtw/replies/n2"))
        .header("authorization", bearer(&reader))
        .body("injected over http")
        .send()
        .await
        .unwrap();
    assert!(r.status() == 200 || r.status() == 403, "{}", r.status());
    // New subscribers get no retained reply, whatever filter reaches the namespace.
    let mut sub = v5_with(&s, Tr::Tcp, "fresh", "admin", &admin).await;
    assert_eq!(
        v5_subscribe_many(&mut sub, &["#", "rtw/#", "+/replies/+"]).await,
        vec![p5::SubscribeReasonCode::Success(Q5::AtLeastOnce); 3]
    );
    // Nor live ones.
    ro.client
        .publish("rtw/replies/n3", Q5::AtLeastOnce, false, "live")
        .await
        .unwrap();
    v5_quiet(&mut sub, Duration::from_secs(2)).await;
    // HTTP readers neither.
    let r = h
        .get(url("/topics/rtw/replies/n1"))
        .header("authorization", bearer(&admin))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 403 || r.status() == 404, "{}", r.status());
    let mut sse = Sse::open(
        &h,
        &url("/events?topic=%23"),
        Some(("authorization", bearer(&admin))),
    )
    .await
    .unwrap_or_else(|r| panic!("SSE: HTTP {}", r.status()));
    let r = h
        .post(url("/topics/end"))
        .header("authorization", bearer(&admin))
        .body("end")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sse.until("end").await, Vec::<String>::new());
}

// =============================================================================================
// Password file, anonymous access.

fn passwd(file: &Path, user: &str, password: &str) {
    let mut c = realtime_web();
    c.arg("passwd")
        .arg(file)
        .arg(user)
        .args(["--password", password]);
    run_ok(&mut c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_users_with_rules_and_reload() {
    let dir = temp_dir("passwd");
    let file = dir.join("passwd");
    passwd(&file, "alice", "alice-pw-1");
    passwd(&file, "bob", "bob-pw-2");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("alice-pw-1") && !text.contains("bob-pw-2"));
    for l in text.lines() {
        let (_, hash) = l.split_once(':').unwrap();
        assert!(hash.starts_with("$argon2id$"), "{l}");
    }
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[auth]
password_file = "{}"

[[auth.rules]]
user = "alice"
publish = ["alice/#"]
subscribe = ["alice/#", "shared/#"]

[[auth.rules]]
user = "bob"
publish = ["shared/#"]
subscribe = ["bob/#"]

[[auth.rules]]
user = "*"
subscribe = ["everyone/#"]
"#,
            file.display()
        ),
    )
    .unwrap();
    let s = Server::builder().config_file(&cfg).start();

    // Right and wrong passwords, unknown users, anonymous.
    let codes = |u: &str, p: &str| token_codes(s.mqtt, u, p);
    assert_eq!(codes("alice", "alice-pw-1"), (0, 0));
    assert_eq!(codes("alice", "bob-pw-2"), (0x05, 0x86));
    assert_eq!(codes("nobody", "alice-pw-1"), (0x05, 0x86));
    let (code, _) = mosq_pub(&s, "mqttv311", Some("alice"), Some("wrong"), "alice/x", 0);
    assert_eq!(code, Some(5));
    let (code, _) = mosq_pub(&s, "mqttv5", Some("alice"), Some("wrong"), "alice/x", 0);
    assert_eq!(code, Some(0x86));
    let (code, _) = mosq_pub(&s, "mqttv5", None, None, "alice/x", 0);
    assert_eq!(code, Some(0x87));

    // The rules.
    let mut alice = v5_with(&s, Tr::Tcp, "alice", "alice", "alice-pw-1").await;
    let mut bob = v5_with(&s, Tr::Tcp, "bob", "bob", "bob-pw-2").await;
    use p5::SubscribeReasonCode as S5;
    assert_eq!(
        v5_subscribe_many(&mut alice, &["alice/#", "shared/#", "bob/#", "everyone/#"]).await,
        vec![
            S5::Success(Q5::AtLeastOnce),
            S5::Success(Q5::AtLeastOnce),
            S5::NotAuthorized,
            S5::Success(Q5::AtLeastOnce)
        ]
    );
    assert_eq!(
        v5_subscribe_many(&mut bob, &["alice/#", "bob/#", "shared/#"]).await,
        vec![
            S5::NotAuthorized,
            S5::Success(Q5::AtLeastOnce),
            S5::NotAuthorized
        ]
    );
    assert_eq!(
        v5_puback(&mut bob, "shared/1", "from bob").await,
        p5::PubAckReason::Success
    );
    assert_eq!(
        v5_puback(&mut bob, "alice/1", "x").await,
        p5::PubAckReason::NotAuthorized
    );
    // (alice publishes on a second connection: waiting for a PUBACK skips messages.)
    let mut alice_pub = v5_with(&s, Tr::Tcp, "alice-pub", "alice", "alice-pw-1").await;
    assert_eq!(
        v5_puback(&mut alice_pub, "shared/2", "x").await,
        p5::PubAckReason::NotAuthorized
    );
    assert_eq!(
        v5_puback(&mut alice_pub, "alice/end", "x").await,
        p5::PubAckReason::Success
    );
    assert_eq!(
        v5_puback(&mut bob, "shared/end", "x").await,
        p5::PubAckReason::Success
    );
    assert_eq!(
        v5_until_all(&mut alice, &["alice/end", "shared/end"]).await,
        ["shared/1"]
    );
    // mosquitto with a password user.
    let (code, err) = mosq_pub(&s, "mqttv311", Some("bob"), Some("bob-pw-2"), "shared/3", 1);
    assert_eq!(code, Some(0), "{err}");

    // HTTP Basic.
    let h = http();
    let url = |p: &str| format!("{}{p}", s.http_base());
    let r = h
        .get(url("/topics/alice/x"))
        .header("authorization", basic("alice", "alice-pw-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = h
        .get(url("/topics/alice/x"))
        .header("authorization", basic("alice", "nope"))
        .send()
        .await
        .unwrap();
    assert_401(r, true).await;
    let r = h
        .post(url("/topics/alice/x"))
        .header("authorization", basic("bob", "bob-pw-2"))
        .body("x")
        .send()
        .await
        .unwrap();
    json_error(r, 403).await;

    // SIGHUP reloads the file: a new user gets in, a removed one no longer does.
    passwd(&file, "carol", "carol-pw-3");
    let mut c = realtime_web();
    c.arg("passwd").arg(&file).arg("alice").arg("-D");
    run_ok(&mut c);
    assert_eq!(codes("carol", "carol-pw-3"), (0x05, 0x86));
    run_ok(Command::new("kill").args(["-HUP", &s.pid().to_string()]));
    let deadline = Instant::now() + T;
    while codes("carol", "carol-pw-3") != (0, 0) {
        assert!(Instant::now() < deadline, "carol not accepted after SIGHUP");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(codes("alice", "alice-pw-1"), (0x05, 0x86));
    // carol has only the "*" rule.
    let mut carol = v5_with(&s, Tr::Tcp, "carol", "carol", "carol-pw-3").await;
    assert_eq!(
        v5_subscribe_many(&mut carol, &["everyone/#", "shared/#"]).await,
        vec![S5::Success(Q5::AtLeastOnce), S5::NotAuthorized]
    );
    // Bob's connection survived the reload.
    assert_eq!(
        v5_puback(&mut bob, "shared/4", "x").await,
        p5::PubAckReason::Success
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_only_when_allowed() {
    // Authentication configured: anonymous clients are refused everywhere.
    let s = jwt_server().start();
    let mut h = Hello {
        id: "anon",
        ..Hello::default()
    };
    assert_eq!(connack(s.mqtt, &h), 0x05);
    h.v5 = true;
    assert_eq!(connack(s.mqtt, &h), 0x87);
    // A user name without password is still anonymous.
    h.user = Some("alice");
    assert_eq!(connack(s.mqtt, &h), 0x87);
    let ev = paho_auth(s.http, true, "5", None, None, &[]);
    assert_eq!(paho_connack(&ev), 0x87);
    let r = http()
        .get(format!("{}/topics/x", s.http_base()))
        .send()
        .await
        .unwrap();
    assert_401(r, false).await;
    drop(s);

    // allow_anonymous = true, with rules for anonymous clients.
    let dir = temp_dir("anon");
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        r#"
[[auth.rules]]
user = "anonymous"
subscribe = ["public/#"]

[[auth.rules]]
user = "*"
publish = ["public/#"]
subscribe = ["public/#"]
"#,
    )
    .unwrap();
    let s = jwt_server()
        .env("AUTH__ALLOW_ANONYMOUS", "true")
        .config_file(&cfg)
        .start();
    let mut h = Hello {
        id: "anon",
        ..Hello::default()
    };
    assert_eq!(connack(s.mqtt, &h), 0);
    h.v5 = true;
    assert_eq!(connack(s.mqtt, &h), 0);
    // A bad token is still refused, not taken as anonymous.
    assert_eq!(token_codes(s.mqtt, "x", "forged.token.here"), (0x05, 0x86));
    let mut anon = V5::connect(v5_options(&s, Tr::Tcp, "anon5")).await.0;
    use p5::SubscribeReasonCode as S5;
    assert_eq!(
        v5_subscribe_many(&mut anon, &["public/#", "private/#"]).await,
        vec![S5::Success(Q5::AtLeastOnce), S5::NotAuthorized]
    );
    assert_eq!(
        v5_puback(&mut anon, "public/x", "x").await,
        p5::PubAckReason::NotAuthorized
    );
    // A token without grants gets the "*" rule.
    let plain = hs(&json!({"sub": "t", "iss": ISS, "aud": AUD, "exp": now() + 3600}));
    let mut t = v5_with(&s, Tr::Tcp, "plain", "t", &plain).await;
    assert_eq!(
        v5_puback(&mut t, "public/y", "y").await,
        p5::PubAckReason::Success
    );
    assert_eq!(
        v5_puback(&mut t, "private/y", "y").await,
        p5::PubAckReason::NotAuthorized
    );
    let got: Vec<String> = vec![anon.publish_in(T).await]
        .into_iter()
        .map(|p| String::from_utf8_lossy(&p.topic).into_owned())
        .collect();
    assert_eq!(got, ["public/y"]);
    let hc = http();
    let r = hc
        .get(format!("{}/topics/public/y", s.http_base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = hc
        .get(format!("{}/topics/private/y", s.http_base()))
        .send()
        .await
        .unwrap();
    json_error(r, 403).await;
    let r = hc
        .post(format!("{}/topics/public/y", s.http_base()))
        .body("x")
        .send()
        .await
        .unwrap();
    json_error(r, 403).await;
    let _ = std::fs::remove_dir_all(dir);
}

// =============================================================================================
// Token expiry.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_end_connections_and_streams() {
    let s = jwt_server().start();
    let short = cli_token("brief", &["a/#"], &["a/#"], "4s", false);
    let long = cli_token("steady", &["a/#"], &["a/#"], "1h", false);
    let started = Instant::now();
    let mut c5 = v5_with(&s, Tr::Tcp, "brief5", "brief", &short).await;
    let mut c4 = v4_with(&s, Tr::Tcp, "brief4", "brief", &short).await;
    let (mut raw, code) = raw_connect(
        s.mqtt,
        &Hello {
            v5: true,
            id: "brief-raw",
            user: Some("brief"),
            pass: Some(&short),
            ..Hello::default()
        },
    );
    assert_eq!(code, 0);
    let h = http();
    let mut sse = Sse::open(
        &h,
        &format!("{}/events?topic=a/%23", s.http_base()),
        Some(("cookie", format!("rtw_token={short}"))),
    )
    .await
    .unwrap_or_else(|r| panic!("SSE: HTTP {}", r.status()));
    let mut steady = v5_with(&s, Tr::Tcp, "steady", "steady", &long).await;

    let e = c5.closed(Duration::from_secs(10)).await;
    assert!(e.contains("MaximumConnectTime"), "{e}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "kicked too early"
    );
    let (first, body) = raw.packet(Duration::from_secs(10)).expect("DISCONNECT");
    assert_eq!((first, body[0]), (0xE0, 0xA0));
    c4.closed(Duration::from_secs(10)).await;
    assert_eq!(
        sse.next(Duration::from_secs(10)).await.err(),
        Some(true),
        "SSE still open"
    );
    // Others carry on.
    assert_eq!(
        v5_puback(&mut steady, "a/still", "x").await,
        p5::PubAckReason::Success
    );
}

// =============================================================================================
// Limits.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_connection_limit() {
    let s = Server::builder()
        .env("LIMITS__MAX_CONNECTIONS_PER_IP", "3")
        .start();
    let mut a = V5::connect(v5_options(&s, Tr::Tcp, "a")).await.0;
    let mut b = V4::connect(v4_options(&s, Tr::Tcp, "b")).await.0;
    let (_w, code) = raw_connect(
        s.mqtt,
        &Hello {
            v5: true,
            id: "c",
            ..Hello::default()
        },
    );
    assert_eq!(code, 0);
    // The fourth: 0x97 (quota exceeded) on 5, 0x03 (server unavailable) on 3.1.1; WebSocket too.
    let h = Hello {
        v5: true,
        id: "d",
        ..Hello::default()
    };
    assert_eq!(connack(s.mqtt, &h), 0x97);
    assert_eq!(
        connack(
            s.mqtt,
            &Hello {
                v5: false,
                ..h.clone()
            }
        ),
        0x03
    );
    let ev = paho_auth(s.http, true, "5", None, None, &[]);
    assert_eq!(paho_connack(&ev), 0x97);
    let (code, _) = mosq_pub(&s, "mqttv5", None, None, "x", 0);
    assert_eq!(code, Some(0x97));
    // The connected ones are still served, and so is HTTP.
    assert_eq!(
        v5_subscribe_many(&mut a, &["t/#"]).await,
        vec![p5::SubscribeReasonCode::Success(Q5::AtLeastOnce)]
    );
    b.send("t/1", Q4::AtLeastOnce, false, b"still here").await;
    assert_eq!(&a.publish_in(T).await.payload[..], b"still here");
    let r = http()
        .post(format!("{}/topics/t/2", s.http_base()))
        .body("http")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(&a.publish_in(T).await.payload[..], b"http");
    // A slot comes free when a client leaves.
    b.disconnect().await;
    let deadline = Instant::now() + T;
    while connack(s.mqtt, &h) != 0 {
        assert!(Instant::now() < deadline, "slot not released");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rate_subscriptions_packet_and_body_limits() {
    let s = Server::builder()
        .env("LIMITS__MAX_PUBLISH_RATE", "5")
        .env("LIMITS__MAX_SUBSCRIPTIONS", "3")
        .env("LIMITS__MAX_PACKET_SIZE", "2048")
        .env("BRIDGE__MAX_BODY", "1000")
        .start();
    let mut watch = V5::connect(v5_options(&s, Tr::Tcp, "watch")).await.0;
    v5_subscribe_many(&mut watch, &["fast/#", "calm/#"]).await;

    // Publish rate: a burst of 30 QoS 1 gets 0x97 for what is over 5/s.
    let mut fast = V5::connect(v5_options(&s, Tr::Tcp, "fast")).await.0;
    for i in 0..30 {
        fast.client
            .publish(format!("fast/{i}"), Q5::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    let (mut ok, mut quota) = (0, 0);
    while ok + quota < 30 {
        if let p5::Packet::PubAck(a) = fast.incoming(T).await {
            match a.reason {
                p5::PubAckReason::Success => ok += 1,
                p5::PubAckReason::QuotaExceeded => quota += 1,
                r => panic!("unexpected {r:?}"),
            }
        }
    }
    assert!(quota >= 10 && ok >= 5, "ok {ok}, quota exceeded {quota}");
    // Another client is served meanwhile, and the bucket refills.
    let mut calm = V5::connect(v5_options(&s, Tr::Tcp, "calm")).await.0;
    assert_eq!(
        v5_puback(&mut calm, "calm/1", "x").await,
        p5::PubAckReason::Success
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        v5_puback(&mut fast, "fast/again", "x").await,
        p5::PubAckReason::Success
    );
    let mut seen = Vec::new();
    while seen.len() < ok + 2 {
        let p = watch.publish_in(T).await;
        seen.push(String::from_utf8_lossy(&p.topic).into_owned());
    }
    assert!(seen.contains(&"calm/1".to_string()) && seen.contains(&"fast/again".to_string()));

    // 3.1.1: the refused ones are dropped, the connection stays.
    let mut c4 = V4::connect(v4_options(&s, Tr::Tcp, "fast4")).await.0;
    for i in 0..12 {
        c4.send(&format!("fast/v4/{i}"), Q4::AtLeastOnce, false, b"x")
            .await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c4.send("fast/v4/after", Q4::AtLeastOnce, false, b"x").await;

    // Max subscriptions: the 4th filter gets 0x97; an existing one can be renewed.
    use p5::SubscribeReasonCode as S5;
    let mut subs = V5::connect(v5_options(&s, Tr::Tcp, "subs")).await.0;
    assert_eq!(
        v5_subscribe_many(&mut subs, &["s/1", "s/2", "s/3", "s/4"]).await,
        vec![
            S5::Success(Q5::AtLeastOnce),
            S5::Success(Q5::AtLeastOnce),
            S5::Success(Q5::AtLeastOnce),
            S5::QuotaExceeded
        ]
    );
    assert_eq!(
        v5_subscribe_many(&mut subs, &["s/1", "s/5"]).await,
        vec![S5::Success(Q5::AtLeastOnce), S5::QuotaExceeded]
    );
    let mut subs4 = V4::connect(v4_options(&s, Tr::Tcp, "subs4")).await.0;
    let codes = v4_subscribe_many(&mut subs4, &["s/1", "s/2", "s/3", "s/4"]).await;
    assert_eq!(codes[3], rumqttc::SubscribeReasonCode::Failure);

    // Max packet size: DISCONNECT 0x95 on 5, the socket closed on 3.1.1.
    for v5 in [true, false] {
        let (mut w, code) = raw_connect(
            s.mqtt,
            &Hello {
                v5,
                id: "big",
                ..Hello::default()
            },
        );
        assert_eq!(code, 0);
        let mut b = BytesMut::new();
        let payload = vec![b'x'; 4000];
        if v5 {
            p5::Packet::Publish(p5::Publish::new("big/1", Q5::AtMostOnce, payload, None))
                .write(&mut b, None)
                .unwrap();
        } else {
            v4::Packet::Publish(v4::Publish::new("big/1", Q4::AtMostOnce, payload))
                .write(&mut b, 1 << 20)
                .unwrap();
        }
        w.send(&b);
        match w.packet(T) {
            Ok((first, body)) => {
                assert!(v5, "3.1.1 got a packet {first:#x}");
                assert_eq!((first, body[0]), (0xE0, 0x95));
                assert_eq!(w.packet(T).err(), Some("closed"));
            }
            Err(e) => {
                assert!(!v5, "5: {e} instead of DISCONNECT");
                assert_eq!(e, "closed");
            }
        }
    }
    // HTTP body over max_body: 413 with a JSON body.
    let h = http();
    let r = h
        .post(format!("{}/topics/calm/big", s.http_base()))
        .body(vec![b'x'; 2000])
        .send()
        .await
        .unwrap();
    json_error(r, 413).await;
    // An MQTT 5 RPC body over one message is streamed (bounded by rpc.max_stream_bytes, not
    // bridge.max_body, issue 17): with nobody subscribed it is 503 at once, body unread.
    let r = h
        .post(format!("{}/rpc/calm", s.http_base()))
        .body(vec![b'x'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // Everyone else is still served.
    assert_eq!(
        v5_puback(&mut calm, "calm/end", "x").await,
        p5::PubAckReason::Success
    );
    loop {
        let p = watch.publish_in(T).await;
        if &p.topic[..] == b"calm/end" {
            break;
        }
    }
}

// =============================================================================================
// CORS, WebSocket Origin.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_and_websocket_origin() {
    let h = http();
    let acao = |r: &reqwest::Response| {
        r.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string())
    };
    // Defaults: no CORS for anyone; WebSocket only from the server's own origin (or none).
    let s = Server::start();
    let r = h
        .get(format!("{}/healthz", s.http_base()))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(acao(&r), None);
    let r = h
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/topics/x", s.http_base()),
        )
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(acao(&r), None);
    let own = format!("http://127.0.0.1:{}", s.http);
    assert!(ws_handshake(s.http, Some("https://evil.example")).contains(" 403"));
    assert!(ws_handshake(
        s.http,
        Some(&format!("http://127.0.0.1:{}.evil.example", s.http))
    )
    .contains(" 403"));
    assert!(ws_handshake(s.http, Some("null")).contains(" 403"));
    assert!(ws_handshake(s.http, Some(&own)).contains(" 101"));
    assert!(ws_handshake(s.http, None).contains(" 101"));
    // paho with a foreign Origin cannot connect; with its own it can.
    let ev = paho_auth(
        s.http,
        true,
        "5",
        None,
        None,
        &["--origin", "https://evil.example"],
    );
    assert!(paho_event(&ev, "connack").is_none(), "{ev:?}");
    let ev = paho_auth(s.http, true, "5", None, None, &["--origin", &own]);
    assert_eq!(paho_connack(&ev), 0);
    drop(s);

    // Configured origins.
    let s = Server::builder()
        .env(
            "BRIDGE__CORS_ORIGINS",
            "https://app.example,https://two.example",
        )
        .env("BRIDGE__WS_ORIGINS", "https://app.example")
        .start();
    for (origin, allowed) in [
        ("https://app.example", true),
        ("https://two.example", true),
        ("https://evil.example", false),
    ] {
        let r = h
            .get(format!("{}/healthz", s.http_base()))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(acao(&r), allowed.then(|| origin.to_string()), "{origin}");
        let r = h
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/topics/x", s.http_base()),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .send()
            .await
            .unwrap();
        assert_eq!(
            acao(&r),
            allowed.then(|| origin.to_string()),
            "preflight {origin}"
        );
    }
    assert!(ws_handshake(s.http, Some("https://app.example")).contains(" 101"));
    assert!(ws_handshake(s.http, Some("https://two.example")).contains(" 403"));
    assert!(ws_handshake(s.http, Some("https://evil.example")).contains(" 403"));
}

// =============================================================================================
// TLS.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_is_the_minimum() {
    let s = Server::builder().tls().start();
    for port in [s.mqtts.unwrap(), s.https.unwrap()] {
        for old in ["-tls1", "-tls1_1"] {
            let (code, out) = s_client(port, &[old, "-cipher", "DEFAULT@SECLEVEL=0"]);
            assert_ne!(code, Some(0), "{old} accepted:\n{out}");
            assert!(out.contains("alert"), "the server should refuse it:\n{out}");
        }
        let (code, out) = s_client(port, &["-tls1_2"]);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("Protocol  : TLSv1.2"), "{out}");
        let (code, out) = s_client(port, &["-tls1_3"]);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("TLSv1.3"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_sighup_without_dropping_connections() {
    let dir = temp_dir("certs");
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    std::fs::copy(root().join("certs/server.pem"), &cert).unwrap();
    std::fs::copy(root().join("certs/server.key"), &key).unwrap();
    let s = Server::builder()
        .tls()
        .env("MQTTS__CERT", cert.display())
        .env("MQTTS__KEY", key.display())
        .env("HTTPS__CERT", cert.display())
        .env("HTTPS__KEY", key.display())
        .start();
    let mqtts = s.mqtts.unwrap();
    let (_, out) = s_client(mqtts, &[]);
    assert!(out.contains("CN = localhost"), "{out}");

    // A TLS client connected with the old certificate.
    let mut old = V5::connect(v5_options(&s, Tr::Tls, "old-tls")).await.0;
    v5_subscribe_many(&mut old, &["r/#"]).await;

    // New certificate (self-signed), written over the files, then SIGHUP.
    let new_cert = dir.join("new.pem");
    let new_key = dir.join("new.key");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &new_key.to_string_lossy(),
        "-out",
        &new_cert.to_string_lossy(),
        "-days",
        "2",
        "-subj",
        "/CN=reloaded.example",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
    ]);
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    run_ok(Command::new("kill").args(["-HUP", &s.pid().to_string()]));

    let deadline = Instant::now() + T;
    loop {
        let (_, out) = s_client(mqtts, &[]);
        if out.contains("CN = reloaded.example") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new certificate not presented:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, out) = s_client(s.https.unwrap(), &[]);
    assert!(out.contains("CN = reloaded.example"), "https:\n{out}");

    // The old connection is still up and served.
    let mut p = V5::connect(v5_options(&s, Tr::Tcp, "plain")).await.0;
    p.send("r/1", Q5::AtLeastOnce, false, b"after reload", None)
        .await;
    assert_eq!(&old.publish_in(T).await.payload[..], b"after reload");
    assert_eq!(
        v5_puback(&mut old, "r/2", "from old").await,
        p5::PubAckReason::Success
    );
    // A client trusting the development CA now fails the handshake (new self-signed cert).
    let mut o = v5_options(&s, Tr::Tls, "new-tls");
    o.set_keep_alive(Duration::from_secs(5));
    let (_c, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    let e = tokio::time::timeout(T, el.poll()).await.expect("answer");
    assert!(e.is_err(), "{e:?}");
    let _ = std::fs::remove_dir_all(dir);
}

// =============================================================================================
// Logs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_log() {
    let dir = temp_dir("log");
    let log = dir.join("server.log");
    let file = dir.join("passwd");
    let password = "pw-Xy7Qa2Lk9Rt4";
    let wrong = "wrong-Pz3Mv8Nb1Kd6";
    passwd(&file, "alice", password);
    let mut s = jwt_server()
        .env("AUTH__PASSWORD_FILE", file.display())
        .env("AUTH__ALLOW_QUERY_TOKEN", "true")
        .env("LOG__LEVEL", "debug")
        .log_file(&log)
        .start();
    let token = cli_token("bob", &["a/#"], &["a/#"], "1h", false);
    let expired = hs(&claims("bob", &["a/#"], &["a/#"], -3600));
    let forged = alg_none(&claims("bob", &["#"], &["#"], 3600));

    // MQTT, every transport the edge has without TLS, good and bad credentials.
    let mut c = v5_with(&s, Tr::Tcp, "log5", "bob", &token).await;
    v5_subscribe_many(&mut c, &["a/#", "b/#"]).await;
    v5_puback(&mut c, "b/x", "x").await;
    c.disconnect().await;
    let c = v4_with(&s, Tr::Tcp, "log4", "bob", &token).await;
    c.disconnect().await;
    let c = v5_with(&s, Tr::Ws, "logws", "bob", &token).await;
    c.disconnect().await;
    let c = v5_with(&s, Tr::Tcp, "logpw", "alice", password).await;
    c.disconnect().await;
    for (u, p) in [
        ("bob", &expired),
        ("bob", &forged),
        ("alice", &wrong.to_string()),
    ] {
        token_codes(s.mqtt, u, p);
        paho_auth(s.http, true, "5", Some(u), Some(p), &[]);
    }
    // HTTP: bearer, cookie, query, Basic; good and bad.
    let h = http();
    let base = s.http_base();
    for t in [&token, &expired, &forged] {
        let _ = h
            .get(format!("{base}/topics/a/x"))
            .header("authorization", bearer(t))
            .send()
            .await;
        let _ = h
            .get(format!("{base}/topics/a/x"))
            .header("cookie", format!("rtw_token={t}"))
            .send()
            .await;
        let _ = h
            .get(format!("{base}/topics/a/x?access_token={t}"))
            .send()
            .await;
        let _ = h
            .post(format!("{base}/topics/z/x?access_token={t}"))
            .body("x")
            .send()
            .await;
    }
    for p in [password, wrong] {
        let _ = h
            .get(format!("{base}/topics/a/x"))
            .header("authorization", basic("alice", p))
            .send()
            .await;
    }
    s.stop();

    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("DEBUG"), "debug logging was not on:\n{text}");
    assert!(text.contains("connection refused"), "{text}");
    let sig = |t: &str| t.rsplit('.').next().unwrap().to_string();
    for (what, secret) in [
        ("JWT secret", SECRET.to_string()),
        ("token", token.clone()),
        ("token signature", sig(&token)),
        ("expired token", expired.clone()),
        ("expired token signature", sig(&expired)),
        ("forged token", forged.clone()),
        ("password", password.to_string()),
        ("wrong password", wrong.to_string()),
    ] {
        assert!(!secret.is_empty());
        if let Some(i) = text.find(&secret) {
            let line = text[..i].rsplit('\n').next().unwrap_or_default();
            panic!("the {what} is in the log: {line}…");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// curl against the server's HTTP port with `Host: host`; (status, body).
fn curl_as(s: &Server, host: &str, args: &[&str], path: &str) -> (u16, String) {
    let out = run_ok(
        Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Host: {host}"))
            .args(args)
            .arg(format!("{}{path}", s.http_base())),
    );
    let (body, code) = out.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_string())
}

/// DNS rebinding: a web page whose domain is made to resolve to 127.0.0.1 passes same-origin
/// and CORS checks in the victim's browser, but names its domain in `Host`. With no
/// authentication configured (loopback-only mode) such requests are refused on every route and
/// on the WebSocket; loopback names are served; configured anonymous access serves any name.
#[test]
fn loopback_only_mode_refuses_rebound_host_names() {
    let s = Server::start();
    let port = s.http;
    let evil = format!("rebind.example:{port}");
    let origin = format!("http://{evil}");
    for (args, path) in [
        (&[][..], "/healthz"),
        (&[][..], "/topics/rebind/x"),
        (
            &["-X", "POST", "--data", "from a rebound page"][..],
            "/topics/rebind/x?retain=true",
        ),
        (&[][..], "/no/such/route"),
    ] {
        let (code, body) = curl_as(&s, &evil, args, path);
        assert_eq!(code, 403, "{path} with Host {evil}: {body}");
        let v: Value = serde_json::from_str(&body).expect("JSON error body");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|e| e.contains("loopback")),
            "{body}"
        );
    }
    assert!(
        ws_handshake_to(port, &evil, Some(&origin)).contains(" 403"),
        "WebSocket from a rebound page"
    );
    // Loopback names work, and the refused publish never happened.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("app.localhost:{port}"),
    ] {
        let (code, body) = curl_as(&s, &host, &[], "/topics/rebind/x");
        assert_eq!(code, 404, "Host {host}: {body}");
    }
    let local = format!("localhost:{port}");
    assert!(ws_handshake_to(port, &local, Some(&format!("http://{local}"))).contains(" 101"));

    // Anonymous access allowed explicitly: the operator chose to serve any name.
    let open = Server::builder()
        .env("AUTH__ALLOW_ANONYMOUS", "true")
        .start();
    let (code, body) = curl_as(
        &open,
        &format!("rebind.example:{}", open.http),
        &[],
        "/healthz",
    );
    assert_eq!(code, 200, "{body}");
}

/// A persistent session resumed with grants that no longer cover its shared subscription does
/// not rejoin the share group: the group's messages all go to the member still allowed (none
/// taken by a member the edge would have to drop them for), and none reach the resumed client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_session_with_narrower_grants_leaves_its_share_group() {
    let s = jwt_server().start();
    let wide = cli_token("carol", &[], &["jobs/#"], "1h", false);
    let narrow = cli_token("carol", &[], &["other/#"], "1h", false);
    let dave = cli_token("dave", &[], &["jobs/#"], "1h", false);
    let publisher = cli_token("pub", &["jobs/#"], &[], "1h", false);
    let carol = |token: &str, clean: bool| {
        let mut o = v5_options(&s, Tr::Tcp, "carol");
        o.set_credentials("carol", token)
            .set_clean_start(clean)
            .set_session_expiry_interval(Some(600));
        o
    };
    let (mut c, _) = V5::connect(carol(&wide, true)).await;
    let codes = v5_subscribe_many(&mut c, &["$share/workers/jobs/#"]).await;
    assert_eq!(
        codes,
        vec![p5::SubscribeReasonCode::Success(Q5::AtLeastOnce)]
    );
    c.disconnect().await;
    let (mut c, ack) = V5::connect(carol(&narrow, false)).await;
    assert!(ack.session_present, "the session resumes");

    let mut d = v5_with(&s, Tr::Tcp, "dave", "dave", &dave).await;
    let codes = v5_subscribe_many(&mut d, &["$share/workers/jobs/#"]).await;
    assert_eq!(
        codes,
        vec![p5::SubscribeReasonCode::Success(Q5::AtLeastOnce)]
    );
    let mut p = v5_with(&s, Tr::Tcp, "pub", "pub", &publisher).await;
    for i in 0..20 {
        assert_eq!(
            v5_puback(&mut p, "jobs/x", &format!("job {i}")).await,
            p5::PubAckReason::Success
        );
    }
    assert_eq!(
        v5_puback(&mut p, "jobs/end", "end").await,
        p5::PubAckReason::Success
    );
    let got = v5_until(&mut d, "jobs/end").await;
    assert_eq!(
        got.len(),
        20,
        "dave, the group's only member allowed jobs/#, gets every job: {got:?}"
    );
    v5_quiet(&mut c, Duration::from_millis(500)).await;
}
