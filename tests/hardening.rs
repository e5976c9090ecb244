//! What an adversarial probe of the landed binary found (issue 19), each checked end to end over
//! real sockets: property-heavy messages (1), password-check abuse (3), HTTP bodies read before
//! authentication without a time limit and unbounded HTTP connections per address (4), query
//! tokens forwarded to RPC responders (7), `iss`/`aud` not required (9), retained wills under the
//! reply namespace (10) and CONNECT leniencies (12).
//!
//! Clients: the suite's raw MQTT client (`tests/common/mqtt.rs`, exact reason codes and bytes),
//! mosquitto_pub, and plain HTTP/1.1 over `TcpStream` (to hold a body back, which HTTP client
//! libraries do not let a test do). Outcomes are waited for as events with bounded timeouts;
//! the memory and latency side of these findings is measured by `bench/abuse.sh`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::files::temp_dir;
use common::mqtt::*;
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "hardening-secret-Vb3Xq9Lm2Rt7Yk5P";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: &Value) -> String {
    common::auth::hs256_with(SECRET, claims)
}

/// CONNECT with a user name and password; the CONNACK code as a byte (3.1.1 codes as sent).
fn login(port: u16, v: V, id: &str, user: &str, pass: &str) -> (Client, u8, Option<String>) {
    let (c, ack) = Client::try_connect(port, v, Opts::new(id).keep_alive(30).login(user, pass));
    let reason = ack.properties.and_then(|p| p.reason_string);
    (c, connack_byte(v, ack.code), reason)
}

/// The CONNACK code as it was on the wire.
fn connack_byte(v: V, code: ConnectReturnCode) -> u8 {
    use ConnectReturnCode as C;
    match (v, code) {
        (_, C::Success) => 0,
        (V::V311, C::NotAuthorized) => 5,
        (V::V311, C::BadUserNamePassword) => 4,
        (V::V311, C::ServiceUnavailable) => 3,
        (V::V311, other) => panic!("unexpected 3.1.1 CONNACK {other:?}"),
        (V::V5, C::BadUserNamePassword) => 0x86,
        (V::V5, C::NotAuthorized) => 0x87,
        (V::V5, C::ServerBusy) => 0x89,
        (V::V5, C::TopicNameInvalid) => 0x90,
        (V::V5, C::PacketTooLarge) => 0x95,
        (V::V5, C::QuotaExceeded) => 0x97,
        (V::V5, C::ConnectionRateExceeded) => 0x9F,
        (V::V5, other) => panic!("unexpected CONNACK {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP/1.1, byte by byte.

/// Sends `head` (request line and headers, without the blank line) and `body`, then reads the
/// response until the server closes or `timeout` passes; returns what was read.
fn http_exchange(port: u16, head: &str, body: &[u8], timeout: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = s.write_all(format!("{head}\r\n\r\n").as_bytes());
    let _ = s.write_all(body);
    read_response(&mut s, timeout)
}

/// Reads one response (headers and a `content-length` body), or what arrived until close or
/// `timeout`.
fn read_response(s: &mut TcpStream, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if rest.len() >= len {
                return text;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return text;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&got).to_string(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {response:?}"))
}

// =============================================================================================
// 1. Properties.

fn user_props(n: usize, value_len: usize) -> PublishProperties {
    PublishProperties {
        user_properties: (0..n)
            .map(|i| (format!("k{i}"), "v".repeat(value_len)))
            .collect(),
        ..Default::default()
    }
}

#[test]
fn oversized_properties_are_refused_with_quota_exceeded() {
    let s = Server::start();
    let mut sub = Client::new(s.mqtt, V::V5, "props-sub");
    sub.subscribe("props/#", q(1));
    let mut p = Client::new(s.mqtt, V::V5, "props-pub");
    let publish = |c: &mut Client, qos: u8, props: PublishProperties, body: &'static str| {
        c.publish_msg(Publish::new(
            "props/t",
            q(qos),
            Bytes::from_static(body.as_bytes()),
            Some(props),
        ))
    };
    // Default limits: 64 user properties, 64 KiB of properties.
    assert_eq!(publish(&mut p, 1, user_props(64, 8), "ok-64"), 0x00);
    assert_eq!(publish(&mut p, 1, user_props(65, 8), "too-many"), 0x97);
    assert_eq!(publish(&mut p, 2, user_props(65, 8), "too-many-2"), 0x97);
    assert_eq!(publish(&mut p, 1, user_props(2, 40_000), "too-big"), 0x97);
    // QoS 0 over the limit is dropped; the connection stays up.
    publish(&mut p, 0, user_props(100, 1), "dropped");
    p.ping();
    assert_eq!(publish(&mut p, 1, user_props(1, 10), "ok-end"), 0x00);
    let got: Vec<Bytes> = [sub.recv(), sub.recv()]
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(got, vec![Bytes::from("ok-64"), Bytes::from("ok-end")]);
    sub.assert_no_publish();

    // A will over the limit: CONNACK 0x97.
    let mut will = LastWill::new("props/will", "w", q(0), false, None);
    will.properties = Some(LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: (0..65).map(|i| (format!("k{i}"), "v".into())).collect(),
    });
    let (_c, ack) = Client::try_connect(s.mqtt, V::V5, Opts::new("props-will").will(will));
    assert_eq!(ack.code, ConnectReturnCode::QuotaExceeded);

    // Over HTTP: properties come from MQTT-User-Property headers, refused with 431.
    let headers: String = (0..65)
        .map(|i| format!("\r\nmqtt-user-property: k{i}=v"))
        .collect();
    let r = http_exchange(
        s.http,
        &format!(
            "POST /topics/props/http HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 1{headers}"
        ),
        b"x",
        WAIT,
    );
    assert_eq!(status_of(&r), 431, "{r}");
}

#[test]
fn property_limits_are_configurable() {
    let s = Server::builder()
        .env("LIMITS__MAX_USER_PROPERTIES", 2)
        .env("LIMITS__MAX_PROPERTY_BYTES", 100)
        .start();
    let mut p = Client::new(s.mqtt, V::V5, "cfg-pub");
    let mut publish = |props| p.publish_msg(Publish::new("cfg/t", q(1), "x", Some(props)));
    assert_eq!(publish(user_props(2, 5)), 0x00);
    assert_eq!(publish(user_props(3, 1)), 0x97);
    assert_eq!(publish(user_props(1, 200)), 0x97);
}

// =============================================================================================
// 3. Password checks.

fn passwd(file: &std::path::Path, user: &str, password: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_realtime-web"))
        .arg("passwd")
        .arg(file)
        .arg(user)
        .args(["--password", password])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn password_server(name: &str) -> Server {
    let dir = temp_dir(name);
    let file = dir.join("passwd");
    passwd(&file, "alice", "alice-pw");
    passwd(&file, "bob", "bob-pw");
    Server::builder()
        .env("AUTH__PASSWORD_FILE", file.display())
        .start()
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

#[test]
fn repeated_password_failures_are_throttled_and_successes_cached() {
    let s = password_server("throttle");
    // alice logs in once: her password is now cached for a while.
    let (_a, code, _) = login(s.mqtt, V::V5, "alice-1", "alice", "alice-pw");
    assert_eq!(code, 0);

    // Wrong passwords for alice: refused as bad credentials, then, past a few failures, refused
    // at once as throttled (0x9F, connection rate exceeded) without a hash being checked.
    let mut codes = Vec::new();
    for i in 0..12 {
        let (_c, code, reason) = login(s.mqtt, V::V5, &format!("m{i}"), "alice", "guess");
        codes.push(code);
        if code == 0x9F {
            assert!(reason.unwrap_or_default().contains("retry in"));
            break;
        }
        assert_eq!(code, 0x86, "attempt {i}");
    }
    assert_eq!(codes.last(), Some(&0x9F), "never throttled: {codes:x?}");
    assert!(codes.len() > 3, "throttled too early: {codes:x?}");
    // 3.1.1 gets 0x05 for it.
    let (_c, code, _) = login(s.mqtt, V::V311, "m-v4", "alice", "guess");
    assert_eq!(code, 5);
    // HTTP Basic for the throttled user: 429 with Retry-After.
    let r = basic_exchange(s.http, "GET /topics/x", ("alice", "guess"), "", b"");
    assert_eq!(status_of(&r), 429, "{r}");
    assert!(r.to_ascii_lowercase().contains("retry-after:"), "{r}");

    // alice's real password still gets in (the cache knows it), over MQTT and HTTP; so does
    // another user, who was never throttled.
    let (_a2, code, _) = login(s.mqtt, V::V5, "alice-2", "alice", "alice-pw");
    assert_eq!(code, 0);
    let r = basic_exchange(s.http, "GET /topics/x", ("alice", "alice-pw"), "", b"");
    assert_eq!(status_of(&r), 404, "{r}");
    let (_b, code, _) = login(s.mqtt, V::V311, "bob-1", "bob", "bob-pw");
    assert_eq!(code, 0);
}

/// A raw HTTP/1.1 exchange: `request` ("METHOD /path") with HTTP Basic `(user, password)`,
/// further `headers` (each after a CRLF), then `body`; the raw answer.
fn basic_exchange(
    port: u16,
    request: &str,
    login: (&str, &str),
    headers: &str,
    body: &[u8],
) -> String {
    let auth = basic(login.0, login.1);
    let head =
        format!("{request} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Basic {auth}{headers}");
    http_exchange(port, &head, body, WAIT)
}

#[test]
fn http_basic_is_checked_before_the_body_is_read() {
    let s = password_server("basic-body");
    // A wrong Basic password with a body that never arrives: 401 at once. The right one, with
    // the whole body: published.
    let wrong: (_, _, &[u8], _) = (("bob", "nope"), 1000, b"only-a-little", 401);
    let right: (_, _, &[u8], _) = (("bob", "bob-pw"), 2, b"hi", 200);
    for (login, length, body, status) in [wrong, right] {
        let length = format!("\r\ncontent-length: {length}");
        let r = basic_exchange(s.http, "POST /topics/t", login, &length, body);
        assert_eq!(status_of(&r), status, "{r}");
    }
}

// =============================================================================================
// 4. HTTP bodies and connections.

fn jwt_server() -> common::Builder {
    Server::builder().env("AUTH__JWT_SECRET", SECRET)
}

#[test]
fn unauthenticated_requests_are_answered_before_their_body() {
    let s = jwt_server().start();
    for path in ["/topics/a/b", "/rpc/svc/x"] {
        // 1 MiB - 1 declared, a few bytes sent: the answer comes without the rest.
        let r = http_exchange(
            s.http,
            &format!("POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 1048575"),
            &[b'x'; 100],
            WAIT,
        );
        assert_eq!(status_of(&r), 401, "{path}: {r}");
    }
}

#[test]
fn a_trickled_body_times_out_with_408() {
    let s = jwt_server().env("BRIDGE__BODY_TIMEOUT_SECS", 1).start();
    let t = token(&json!({"sub": "u", "exp": now() + 3600}));
    let mut c = TcpStream::connect(("127.0.0.1", s.http)).unwrap();
    c.write_all(
        format!(
            "POST /topics/slow HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {t}\r\n\
             content-length: 100\r\n\r\nabc"
        )
        .as_bytes(),
    )
    .unwrap();
    let r = read_response(&mut c, WAIT);
    assert_eq!(status_of(&r), 408, "{r}");
    assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
}

#[test]
fn http_connections_per_address_are_limited() {
    let s = Server::builder()
        .env("BRIDGE__MAX_CONNECTIONS_PER_IP", 3)
        .start();
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", s.http)).unwrap())
        .collect();
    // The connections are counted once accepted: wait until a 4th is refused.
    let refused = healthz_until(s.http, "", 429, "4th connection served");
    assert!(refused.contains("too many HTTP connections"), "{refused}");
    // Once one closes, requests are served again.
    drop(held);
    healthz_until(s.http, "\r\nconnection: close", 200, "not served again");
}

/// Asks `GET /healthz` (with further `headers`) every 50 ms until the answer has `status`, for
/// `WAIT` at most (then fails saying `what`); that answer.
fn healthz_until(port: u16, headers: &str, status: u16, what: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let head = format!("GET /healthz HTTP/1.1\r\nhost: 127.0.0.1{headers}");
        let r = http_exchange(port, &head, b"", WAIT);
        if status_of(&r) == status {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// =============================================================================================
// 6. HTTP stream filters are on each caller's account.

/// Opens `GET {path}` with `bearer`; returns the connection (still open for a stream) and the
/// response head.
fn open_stream(port: u16, path: &str, bearer: &str) -> (TcpStream, String) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head =
        format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {bearer}\r\n\r\n");
    c.write_all(head.as_bytes()).unwrap();
    let r = read_response(&mut c, WAIT);
    (c, r)
}

fn sse_filters(port: u16, admin: &str) -> i64 {
    let r = http_exchange(
        port,
        &format!("GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {admin}\r\nconnection: close"),
        b"",
        WAIT,
    );
    assert_eq!(status_of(&r), 200, "{r}");
    r.lines()
        .find_map(|l| l.strip_prefix("rtw_sse_filters ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("rtw_sse_filters not in /metrics: {r}"))
}

#[test]
fn stream_filters_are_limited_per_caller_and_released_promptly() {
    let s = jwt_server()
        .env("BRIDGE__MAX_FILTERS_PER_CALLER", 4)
        .start();
    let user = |sub: &str| token(&json!({"sub": sub, "exp": now() + 3600}));
    let admin = token(&json!({"sub": "ops", "exp": now() + 3600, "rtw": {"admin": true}}));
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    // Alice follows four filters: her share.
    let (_held, r) = open_stream(
        s.http,
        "/events?topic=a/1&topic=a/2&topic=a/3&topic=a/4",
        &alice,
    );
    assert_eq!(status_of(&r), 200, "{r}");
    // A fifth is refused, with what to change; one she already follows is not new.
    let (_, r) = open_stream(s.http, "/events?topic=a/5", &alice);
    assert_eq!(status_of(&r), 429, "{r}");
    assert!(r.contains("max_filters_per_caller"), "{r}");
    let (_, r) = open_stream(s.http, "/poll?topic=a/5&timeout=0", &alice);
    assert_eq!(status_of(&r), 429, "{r}");
    let (_again, r) = open_stream(s.http, "/events?topic=a/1", &alice);
    assert_eq!(status_of(&r), 200, "{r}");
    // Others are not held up by her.
    let (_bobs, r) = open_stream(
        s.http,
        "/events?topic=b/1&topic=b/2&topic=b/3&topic=b/4",
        &bob,
    );
    assert_eq!(status_of(&r), 200, "{r}");
    // Filters a caller leaves linger for replay on its own account: past its share, the oldest
    // go at once instead of staying for `history_secs`.
    for round in 0..6 {
        let q: Vec<String> = (0..4).map(|i| format!("topic=c/{round}/{i}")).collect();
        let (_, r) = open_stream(s.http, &format!("/poll?{}&timeout=0", q.join("&")), &carol);
        assert_eq!(status_of(&r), 204, "{r}");
    }
    let deadline = Instant::now() + WAIT;
    loop {
        // Alice's 4 and Bob's 4 open, Carol's last 4 lingering.
        let n = sse_filters(s.http, &admin);
        if n == 12 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} filters followed, want 12");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// =============================================================================================
// 7. Query tokens never reach RPC responders.

#[test]
fn query_token_is_not_forwarded_to_rpc_responders() {
    let s = jwt_server().env("AUTH__ALLOW_QUERY_TOKEN", "true").start();
    let t = token(&json!({"sub": "svc", "exp": now() + 3600}));
    let (mut responder, code, _) = login(s.mqtt, V::V5, "responder", "svc", &t);
    assert_eq!(code, 0);
    responder.subscribe("rpc/#", q(1));
    // Fire and forget (timeout=0): the request is published with its user properties.
    let r = http_exchange(
        s.http,
        &format!(
            "POST /rpc/svc/echo?a=1&access_token={t}&b=2&timeout=0 HTTP/1.1\r\n\
             host: 127.0.0.1\r\ncontent-length: 2"
        ),
        b"hi",
        WAIT,
    );
    assert_eq!(status_of(&r), 202, "{r}");
    let m = responder.recv();
    let props = m.properties.expect("request properties");
    let query: Vec<&str> = props
        .user_properties
        .iter()
        .filter(|(k, _)| k == "query")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(query, ["a=1&b=2&timeout=0"]);
    for (k, v) in &props.user_properties {
        assert!(!v.contains(&t) && !k.contains("access_token"), "{k}={v}");
    }
}

// =============================================================================================
// 9. Configured issuer and audience are required.

#[test]
fn configured_issuer_and_audience_are_required() {
    let s = jwt_server()
        .env("AUTH__ISSUER", "https://iss.example")
        .env("AUTH__AUDIENCE", "rtw")
        .start();
    let base = json!({"sub": "u", "exp": now() + 3600});
    let with = |extra: Value| {
        let mut c = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        token(&c)
    };
    let cases = [
        (
            "both",
            with(json!({"iss": "https://iss.example", "aud": "rtw"})),
            0,
        ),
        ("no iss", with(json!({"aud": "rtw"})), 0x86),
        ("no aud", with(json!({"iss": "https://iss.example"})), 0x86),
        ("neither", with(json!({})), 0x86),
    ];
    for (what, t, want) in cases {
        let (_c, code, _) = login(s.mqtt, V::V5, "iss-aud", "u", &t);
        assert_eq!(code, want, "{what}");
        let r = http_exchange(
            s.http,
            &format!("GET /topics/x HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {t}"),
            b"",
            WAIT,
        );
        let status = if want == 0 { 404 } else { 401 };
        assert_eq!(status_of(&r), status, "{what}: {r}");
    }
}

// =============================================================================================
// 10. Retained wills under the reply namespace.

#[test]
fn retained_will_under_the_reply_namespace_is_refused() {
    let s = Server::start();
    for v in BOTH {
        let will = LastWill::new("rtw/replies/node/x", "w", q(0), true, None);
        let (_c, ack) = Client::try_connect(s.mqtt, v, Opts::new("will-reply").will(will));
        let want = match v {
            V::V5 => ConnectReturnCode::TopicNameInvalid,
            V::V311 => ConnectReturnCode::NotAuthorized,
        };
        assert_eq!(ack.code, want, "{v:?}");
        // Not retained: accepted, as a direct publish there is.
        let will = LastWill::new("rtw/replies/node/x", "w", q(0), false, None);
        let (_c, ack) = Client::try_connect(s.mqtt, v, Opts::new("will-reply-2").will(will));
        assert_eq!(ack.code, ConnectReturnCode::Success, "{v:?}");
    }
}

// =============================================================================================
// 12. CONNECT leniencies.

#[test]
fn oversized_mqtt5_connect_gets_connack_packet_too_large() {
    let s = Server::builder()
        .env("LIMITS__MAX_PACKET_SIZE", 4096)
        .start();
    let props = ConnectProperties {
        user_properties: vec![("big".into(), "x".repeat(300_000))],
        ..ConnectProperties::new()
    };
    let connect = Packet::Connect(
        Connect {
            keep_alive: 30,
            client_id: "big".into(),
            clean_start: true,
            properties: Some(props),
        },
        None,
        None,
    );
    // Sent whole, and with its fixed header first on its own (as a client writing the header
    // and then the body may): CONNACK 0x95 (no session), then the close, either way.
    for split in [false, true] {
        let mut c = Client::tcp(s.mqtt, V::V5);
        let bytes = c.encode(&connect);
        if split {
            c.send_raw(&bytes[..4]);
            std::thread::sleep(Duration::from_millis(300));
            c.send_raw(&bytes[4..]);
        } else {
            c.send_raw(&bytes);
        }
        let sent = c.read_to_close(WAIT);
        assert!(sent.len() >= 4, "split {split}: closed without CONNACK");
        assert_eq!(&sent[..4], &[0x20, sent[1], 0, 0x95], "split {split}");
    }
}

/// CONNECT bytes with these flags: `[user, password]` strings follow the client id if given.
fn connect_with_flags(level: u8, flags: u8, strings: &[&str]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 60];
    if level == 5 {
        body.push(0);
    }
    for s in std::iter::once("flags").chain(strings.iter().copied()) {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    frame(0x10, &body)
}

#[test]
fn connect_with_the_reserved_flag_is_malformed() {
    let s = Server::start();
    // 3.1.1: closed without CONNACK (MQTT-3.1.2-3).
    let mut c = Client::tcp(s.mqtt, V::V311);
    c.send_raw(&connect_with_flags(4, 0x03, &[]));
    assert_eq!(c.read_to_close(WAIT), Vec::<u8>::new());
    // 5: CONNACK 0x81 malformed packet, then closed.
    let mut c = Client::tcp(s.mqtt, V::V5);
    c.send_raw(&connect_with_flags(5, 0x03, &[]));
    let sent = c.read_to_close(WAIT);
    assert_eq!(sent.get(3), Some(&0x81), "{sent:?}");
    // The same CONNECT with the bit clear is fine.
    let mut c = Client::tcp(s.mqtt, V::V311);
    c.send_raw(&connect_with_flags(4, 0x02, &[]));
    c.expect(
        WAIT,
        |p| matches!(p, Packet::ConnAck(a) if a.code == ConnectReturnCode::Success),
    );
}

#[test]
fn mqtt311_password_without_user_name_is_refused() {
    let s = Server::start();
    // Password flag (0x40) without the user name flag (0x80): CONNACK 0x05, closed.
    let mut c = Client::tcp(s.mqtt, V::V311);
    c.send_raw(&connect_with_flags(4, 0x42, &["secret"]));
    assert_eq!(c.read_to_close(WAIT), vec![0x20, 2, 0, 5]);
    // MQTT 5 allows a password alone (anonymous server: accepted).
    let mut c = Client::tcp(s.mqtt, V::V5);
    c.send_raw(&connect_with_flags(5, 0x42, &["secret"]));
    c.expect(
        WAIT,
        |p| matches!(p, Packet::ConnAck(a) if a.code == ConnectReturnCode::Success),
    );
    // mosquitto_pub with a user name and password, 3.1.1: still fine.
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &s.mqtt.to_string()])
        .args(["-V", "mqttv311", "-u", "u", "-P", "p", "-t", "t", "-m", "x"])
        .output()
        .expect("mosquitto_pub");
    assert!(out.status.success(), "{out:?}");
}
