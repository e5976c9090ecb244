//! Helpers of the security tests (`tests/security_*.rs`): tokens (HS/RS/ES/EdDSA, forged ones,
//! the CLI's), raw CONNECTs on the one raw client (`common::mqtt`) read byte for byte, clients
//! with credentials (mosquitto_pub/sub, paho over WebSocket, rumqttc), and HTTP helpers (Basic
//! and Bearer headers, the JSON error and 401 checks, a raw WebSocket handshake, openssl).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rumqttc::mqttbytes::v4;
use serde_json::{json, Value};

use super::clients::{p5, run_ok, v4_options, v5_options, Proc, Tr, T, V4, V5};
use super::http::json_error;
use super::mqtt::{Client, V};
use super::{run, Builder, Server};

pub const SECRET: &str = "jwt-secret-Zq8v1Lr4Wm7Tn2Kc5Hx9";
pub const ISS: &str = "https://issuer.example";
pub const AUD: &str = "realtime-web-tests";

pub type Q5 = rumqttc::v5::mqttbytes::QoS;
pub type Q4 = rumqttc::QoS;

// ---------------------------------------------------------------------------------------------
// Tokens.

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

pub fn b64url(data: &[u8]) -> String {
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

pub fn realtime_web() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_realtime-web"));
    c.env_remove("RUST_LOG").env_remove("RTW_TEST_LOG");
    c
}

/// A token from `realtime-web token`, signed with SECRET for ISS and AUD.
pub fn cli_token(
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
pub fn admin_token() -> String {
    cli_token("admin", &["#"], &["#"], "1h", true)
}

/// Claims for ISS/AUD with grants, expiring `exp` seconds from now.
pub fn claims(sub: &str, publish: &[&str], subscribe: &[&str], exp: i64) -> Value {
    json!({
        "sub": sub,
        "iss": ISS,
        "aud": AUD,
        "iat": now(),
        "exp": now() + exp,
        "rtw": { "pub": publish, "sub": subscribe },
    })
}

pub fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, key).expect("sign")
}

/// HS256 with SECRET.
pub fn hs(claims: &Value) -> String {
    hs256_with(SECRET, claims)
}

/// HS256 with `secret`, no key id.
pub fn hs256_with(secret: &str, claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes());
    sign(Algorithm::HS256, &key, None, claims)
}

/// An unsigned token (`alg: none`), built by hand: no library will make one.
pub fn alg_none(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    )
}

/// The forged and broken HS tokens every transport must refuse, by name.
pub fn bad_hs_tokens() -> Vec<(&'static str, String)> {
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
pub fn jwt_server() -> Builder {
    Server::builder()
        .env("AUTH__JWT_SECRET", SECRET)
        .env("AUTH__ISSUER", ISS)
        .env("AUTH__AUDIENCE", AUD)
}

// ---------------------------------------------------------------------------------------------
// Raw MQTT on the wire, to read reason codes byte for byte.

/// What a raw CONNECT carries.
#[derive(Default, Clone)]
pub struct Hello<'a> {
    pub v5: bool,
    pub id: &'a str,
    pub user: Option<&'a str>,
    pub pass: Option<&'a str>,
    pub will: Option<&'a str>,
    pub auth_method: Option<&'a str>,
}

impl<'a> Hello<'a> {
    /// A 3.1.1 CONNECT from client `id`, without credentials.
    pub fn new(id: &'a str) -> Hello<'a> {
        Hello {
            id,
            ..Hello::default()
        }
    }

    /// MQTT 5 when `v5`, else 3.1.1.
    pub fn version5(mut self, v5: bool) -> Hello<'a> {
        self.v5 = v5;
        self
    }

    /// With a user name and password.
    pub fn login(mut self, user: &'a str, pass: &'a str) -> Hello<'a> {
        self.user = Some(user);
        self.pass = Some(pass);
        self
    }

    /// With a will on `topic`.
    pub fn with_will(mut self, topic: &'a str) -> Hello<'a> {
        self.will = Some(topic);
        self
    }
}

pub fn connect_bytes(h: &Hello) -> BytesMut {
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
pub fn raw_connect(port: u16, h: &Hello) -> (Client, u8) {
    let mut w = Client::tcp(port, if h.v5 { V::V5 } else { V::V311 });
    w.send_raw(&connect_bytes(h));
    let (first, body) = w.frame(T).expect("CONNACK");
    assert_eq!(first, 0x20, "expected CONNACK, got packet {first:#x}");
    (w, body[1])
}

pub fn connack(port: u16, h: &Hello) -> u8 {
    raw_connect(port, h).1
}

/// The CONNACK code for a token as password, 3.1.1 and 5.
pub fn token_codes(port: u16, user: &str, token: &str) -> (u8, u8) {
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
pub fn mosq_pub(
    s: &Server,
    version: &str,
    user: Option<&str>,
    pass: Option<&str>,
    topic: &str,
    qos: u8,
) -> (Option<i32>, String) {
    let mut c = super::clients::mosquitto_pub(s, false, version);
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
pub fn mosq_sub(s: &Server, version: &str, user: &str, pass: &str, filters: &[&str]) -> Proc {
    let mut c = super::clients::mosquitto_sub(s, false, version);
    c.args(["-u", user, "-P", pass, "-q", "1"]);
    for f in filters {
        c.args(["-t", f]);
    }
    Proc::spawn(&mut c)
}

/// `tests/paho/auth.py` to completion; its JSON events.
pub fn paho_auth(
    port: u16,
    ws: bool,
    version: &str,
    user: Option<&str>,
    pass: Option<&str>,
    extra: &[&str],
) -> Vec<Value> {
    let mut c = Command::new("python3");
    c.arg(super::root().join("tests/paho/auth.py")).args([
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

pub fn paho_event<'a>(events: &'a [Value], kind: &str) -> Option<&'a Value> {
    events.iter().find(|e| e["event"] == kind)
}

pub fn paho_connack(events: &[Value]) -> i64 {
    paho_event(events, "connack").unwrap_or_else(|| panic!("no CONNACK: {events:?}"))["reason"]
        .as_i64()
        .unwrap()
}

/// rumqttc v5 with a token.
pub async fn v5_with(s: &Server, tr: Tr, id: &str, user: &str, token: &str) -> V5 {
    let mut o = v5_options(s, tr, id);
    o.set_credentials(user, token);
    V5::connect(o).await.0
}

/// rumqttc v4 with a token.
pub async fn v4_with(s: &Server, tr: Tr, id: &str, user: &str, token: &str) -> V4 {
    let mut o = v4_options(s, tr, id);
    o.set_credentials(user, token);
    V4::connect(o).await.0
}

/// Publishes at QoS 1 and returns the PUBACK's reason.
pub async fn v5_puback(c: &mut V5, topic: &str, payload: &str) -> p5::PubAckReason {
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

/// Publishes at QoS 1 and asserts the PUBACK's reason.
pub async fn puback_is(c: &mut V5, topic: &str, payload: &str, want: p5::PubAckReason) {
    assert_eq!(
        v5_puback(c, topic, payload).await,
        want,
        "PUBACK for {topic}"
    );
}

/// Publishes at QoS 1 and asserts that it was accepted (PUBACK Success).
pub async fn publish_allowed(c: &mut V5, topic: &str, payload: &str) {
    puback_is(c, topic, payload, p5::PubAckReason::Success).await;
}

/// Publishes at QoS 1 and asserts that it was refused (PUBACK 0x87 Not authorized).
pub async fn publish_refused(c: &mut V5, topic: &str, payload: &str) {
    puback_is(c, topic, payload, p5::PubAckReason::NotAuthorized).await;
}

pub async fn v5_subscribe_many(c: &mut V5, filters: &[&str]) -> Vec<p5::SubscribeReasonCode> {
    c.client
        .subscribe_many(filters.iter().map(|f| p5::Filter::new(*f, Q5::AtLeastOnce)))
        .await
        .expect("subscribe");
    c.suback().await
}

pub async fn v4_subscribe_many(c: &mut V4, filters: &[&str]) -> Vec<rumqttc::SubscribeReasonCode> {
    c.client
        .subscribe_many(
            filters
                .iter()
                .map(|f| rumqttc::SubscribeFilter::new(f.to_string(), Q4::AtLeastOnce)),
        )
        .await
        .expect("subscribe");
    c.suback().await
}

/// The topics of what a v5 client receives until `end` arrives on `end_topic` (see [`v5_until`]).
pub async fn v5_topics_until(c: &mut V5, end_topic: &str) -> Vec<String> {
    let got = v5_until(c, end_topic).await;
    got.into_iter().map(|(t, _)| t).collect()
}

/// Publishes `topic`'s own name on it at QoS 1 (MQTT 5).
pub async fn publish_own_name(c: &mut V5, topic: &str) {
    c.send(topic, Q5::AtLeastOnce, false, topic.as_bytes(), None)
        .await;
}

/// Topics (and payloads) a v5 client receives until `end` arrives on `end_topic`.
pub async fn v5_until(c: &mut V5, end_topic: &str) -> Vec<(String, String)> {
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
pub async fn v5_until_all(c: &mut V5, ends: &[&str]) -> Vec<String> {
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
pub async fn v5_quiet(c: &mut V5, d: Duration) {
    if let Ok(p) = tokio::time::timeout(d, c.publish_in(Duration::from_secs(3600))).await {
        panic!("unexpected message: {p:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP.

pub fn http() -> reqwest::Client {
    super::http::client(Duration::from_secs(30))
}

pub fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

pub fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", {
        // Standard base64 (with padding) for Basic.
        let s = b64url(format!("{user}:{pass}").as_bytes())
            .replace('-', "+")
            .replace('_', "/");
        let pad = (4 - s.len() % 4) % 4;
        format!("{s}{}", "=".repeat(pad))
    })
}

/// Asserts a 401 with a Bearer challenge; `invalid`: it says `error="invalid_token"`.
pub async fn assert_401(r: reqwest::Response, invalid: bool) {
    let (h, msg) = json_error(r, 401).await;
    let www = h
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("401 without WWW-Authenticate ({msg})"));
    assert!(www.starts_with("Bearer realm="), "{www}");
    assert_eq!(www.contains("error=\"invalid_token\""), invalid, "{www}");
}

/// A raw WebSocket handshake on /mqtt; returns the status line.
pub fn ws_handshake(port: u16, origin: Option<&str>) -> String {
    ws_handshake_to(port, &format!("127.0.0.1:{port}"), origin)
}

/// The same, naming the server `host`.
pub fn ws_handshake_to(port: u16, host: &str, origin: Option<&str>) -> String {
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

pub fn openssl(args: &[&str]) -> String {
    let mut c = Command::new("openssl");
    c.args(args);
    run_ok(&mut c)
}

/// `openssl s_client` against a port; (exit code, all output).
pub fn s_client(port: u16, extra: &[&str]) -> (Option<i32>, String) {
    let mut c = Command::new("openssl");
    c.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(extra);
    let (code, out, err) = run(&mut c, T);
    (code, format!("{out}\n{err}"))
}

pub fn passwd(file: &Path, user: &str, password: &str) {
    let mut c = realtime_web();
    c.arg("passwd")
        .arg(file)
        .arg(user)
        .args(["--password", password]);
    run_ok(&mut c);
}
