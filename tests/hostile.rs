//! Slow and hostile peers: slowloris on HTTP, handshakes never finished (WebSocket, TLS, MQTT),
//! connection floods, a client with 10,000 subscriptions, a 100 MB request body. Each runs into
//! its limit with the documented answer, and well-behaved clients are served throughout.
//!
//! | case | limit | what the peer gets |
//! |---|---|---|
//! | HTTP headers never finished | 10 s header read timeout | connection closed |
//! | WebSocket upgraded, no CONNECT | `limits.connect_timeout_secs` | connection closed |
//! | TLS handshake never finished | `limits.connect_timeout_secs` | connection closed |
//! | half a CONNECT, then silence | `limits.connect_timeout_secs` | connection closed |
//! | too many connections | `limits.max_connections` | CONNACK 0x97 (5) / 0x03 (3.1.1) |
//! | too many subscriptions | `limits.max_subscriptions` | SUBACK 0x97 for the excess |
//! | request body too large | `bridge.max_body` | 413 with a JSON error, body not buffered |

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::reliability::*;
use common::Server;

/// Connect timeout used by these tests (the default is 10 s).
const CONNECT_TIMEOUT: u64 = 2;

/// Reads until the server closes; returns how long that took (None: still open after `max`).
fn closed_after(s: &mut TcpStream, max: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = max.saturating_sub(start.elapsed());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).ok();
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// A client that keeps doing QoS 1 round trips through the broker and over HTTP while `stop` is
/// unset; returns (round trips, slowest one). Panics if one fails.
fn well_behaved(mqtt: u16, http_port: u16, stop: Arc<AtomicBool>) -> (u64, Duration) {
    let mut c = Mqtt::connect(mqtt, true, &format!("good-{}", rand::random::<u32>()));
    c.subscribe("good/echo", QoS::AtLeastOnce);
    let (mut n, mut slowest) = (0u64, Duration::ZERO);
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let body = n.to_string();
        assert_eq!(
            c.publish_acked("good/echo", false, body.as_bytes()),
            Some(0),
            "round trip {n}: no PUBACK"
        );
        let got = c.drain(Duration::from_millis(20));
        let got = if got.is_empty() {
            let p = c.wait(WAIT, |p| matches!(p, Packet::Publish(_)));
            match p {
                Some(Packet::Publish(p)) => {
                    c.ack(&p);
                    vec![p]
                }
                other => panic!("round trip {n}: no message back: {other:?}"),
            }
        } else {
            got
        };
        assert_eq!(got.last().unwrap().payload, body.as_bytes());
        if n % 10 == 0 {
            let r = get(http_port, "/healthz");
            assert!(
                matches!(r, Some((200, _))),
                "round trip {n}: /healthz {r:?}"
            );
        }
        slowest = slowest.max(t.elapsed());
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    (n, slowest)
}

fn spawn_well_behaved(s: &Server) -> (Arc<AtomicBool>, std::thread::JoinHandle<(u64, Duration)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (m, h, st) = (s.mqtt, s.http, stop.clone());
    (stop, std::thread::spawn(move || well_behaved(m, h, st)))
}

fn finish_well_behaved(
    stop: Arc<AtomicBool>,
    h: std::thread::JoinHandle<(u64, Duration)>,
    what: &str,
) {
    // Long enough for a fair number of round trips, however quick the case was.
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let (n, slowest) = h.join().expect("the well-behaved client failed");
    eprintln!("{what}: well-behaved client did {n} round trips, slowest {slowest:?}");
    assert!(n >= 5, "{what}: only {n} round trips");
    assert!(
        slowest < Duration::from_secs(3),
        "{what}: a round trip took {slowest:?}"
    );
}

#[test]
fn slowloris_and_unfinished_handshakes_are_closed_while_others_are_served() {
    let s = Server::builder()
        .tls()
        .env("LIMITS__CONNECT_TIMEOUT_SECS", CONNECT_TIMEOUT)
        .start();
    let (stop, good) = spawn_well_behaved(&s);
    let http_port = s.http;
    let start_rss = rss_mb(s.pid());

    // HTTP slowloris: request headers one byte a second, 20 connections.
    let slow: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(("127.0.0.1", http_port)).unwrap();
                let req = format!("GET /healthz?{i} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ");
                let start = Instant::now();
                for (sent, b) in req.bytes().chain(std::iter::repeat(b'a')).enumerate() {
                    if c.write_all(&[b]).is_err() {
                        return start.elapsed();
                    }
                    c.set_read_timeout(Some(Duration::from_secs(1))).ok();
                    let mut buf = [0u8; 512];
                    match c.read(&mut buf) {
                        Ok(0) => return start.elapsed(),
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return start.elapsed(),
                    }
                    // A byte about every second: the server's 10 s header timeout must have
                    // closed the connection long before 40 of them.
                    assert!(
                        sent < 40,
                        "slowloris connection still open after {sent} bytes"
                    );
                }
                unreachable!()
            })
        })
        .collect();

    let max = Duration::from_secs(CONNECT_TIMEOUT + 3);
    let opened = Instant::now();
    // WebSocket upgraded, then no CONNECT.
    let mut ws = TcpStream::connect(("127.0.0.1", s.http)).unwrap();
    ws.write_all(
        b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Protocol: mqtt\r\n\r\n",
    )
    .unwrap();
    let mut head = [0u8; 1024];
    ws.set_read_timeout(Some(WAIT)).unwrap();
    let n = ws.read(&mut head).unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    // TLS: TCP open, ClientHello never sent (MQTT over TLS and HTTPS).
    let mut mqtts = TcpStream::connect(("127.0.0.1", s.mqtts.unwrap())).unwrap();
    let mut https = TcpStream::connect(("127.0.0.1", s.https.unwrap())).unwrap();
    // TLS: a ClientHello cut short.
    let mut tls_half = TcpStream::connect(("127.0.0.1", s.mqtts.unwrap())).unwrap();
    tls_half
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    // MQTT: half a CONNECT, then silence (both plain TCP and after a TLS handshake would do).
    let mut half = TcpStream::connect(("127.0.0.1", s.mqtt)).unwrap();
    half.write_all(&[0x10, 0x10, 0x00, 0x04, b'M', b'Q'])
        .unwrap();
    // MQTT: nothing at all.
    let mut silent = TcpStream::connect(("127.0.0.1", s.mqtt)).unwrap();
    for (name, c) in [
        ("WebSocket without CONNECT", &mut ws),
        ("MQTT/TLS without ClientHello", &mut mqtts),
        ("HTTPS without ClientHello", &mut https),
        ("MQTT/TLS with half a ClientHello", &mut tls_half),
        ("half a CONNECT", &mut half),
        ("silent MQTT socket", &mut silent),
    ] {
        let t = closed_after(c, max);
        let at = opened.elapsed();
        eprintln!("{name}: closed {at:?} after opening");
        assert!(t.is_some(), "{name}: still open after {at:?}");
        // Closed by the timeout, not before.
        assert!(
            at >= Duration::from_millis(CONNECT_TIMEOUT * 1000 - 300),
            "{name}: closed after only {at:?}"
        );
    }

    for h in slow {
        let t = h.join().unwrap();
        assert!(
            t >= Duration::from_secs(8) && t <= Duration::from_secs(20),
            "slowloris closed after {t:?} (header read timeout is 10 s)"
        );
    }
    finish_well_behaved(stop, good, "slowloris");
    let rss = rss_mb(s.pid());
    eprintln!("RSS {start_rss:.0} MB before, {rss:.0} MB after");
}

#[test]
fn a_connect_flood_leaks_nothing_and_starves_no_one() {
    let s = Server::start();
    let pid = s.pid();
    let fds_before = fd_count(pid);
    let (stop, good) = spawn_well_behaved(&s);
    let port = s.mqtt;
    let ok = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let ok = ok.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
                        continue;
                    };
                    // CONNECT v4, clean session, id flood-t-i, keep-alive 60.
                    let id = format!("flood-{t}-{i}");
                    let mut p = vec![0x10, (12 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T'];
                    p.extend_from_slice(&[4, 2, 0, 60, 0, id.len() as u8]);
                    p.extend_from_slice(id.as_bytes());
                    if c.write_all(&p).is_err() {
                        continue;
                    }
                    c.set_read_timeout(Some(WAIT)).ok();
                    let mut ack = [0u8; 4];
                    if c.read_exact(&mut ack).is_ok() && ack == [0x20, 2, 0, 0] {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    // Every other one leaves without DISCONNECT.
                    if i % 2 == 0 {
                        let _ = c.write_all(&[0xE0, 0]);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let took = start.elapsed();
    finish_well_behaved(stop, good, "connect flood");
    let ok = ok.load(Ordering::Relaxed);
    eprintln!("2000 CONNECTs in {took:?}: {ok} accepted");
    assert_eq!(ok, 2000, "every CONNECT of the flood gets CONNACK 0");
    // Every flood connection is gone again: no descriptor kept.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fds = fd_count(pid);
        if fds <= fds_before + 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{fds} descriptors open, {fds_before} before the flood"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn connections_over_the_limit_get_connack_quota_exceeded() {
    let s = Server::builder()
        .env("LIMITS__MAX_CONNECTIONS", "5")
        .start();
    let held: Vec<Mqtt> = (0..5)
        .map(|i| Mqtt::connect(s.mqtt, true, &format!("held-{i}")))
        .collect();
    let (_, a) = Mqtt::try_connect(s.mqtt, true, "one-too-many", true, None);
    assert_eq!(a.code, ConnectReturnCode::QuotaExceeded);
    let (_, a) = Mqtt::try_connect(s.mqtt, false, "one-too-many-311", true, None);
    // 3.1.1's return code 3, "server unavailable".
    assert_eq!(a.code, ConnectReturnCode::ServiceUnavailable);
    // Room again once one leaves.
    drop(held);
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, a) = Mqtt::try_connect(s.mqtt, true, "after", true, None);
        if a.code == ConnectReturnCode::Success {
            break;
        }
        assert!(Instant::now() < deadline, "no room after the others left");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Subscribes `n` filters `many/{i}` in SUBSCRIBE packets of 100; returns the SUBACK codes.
fn subscribe_n(c: &mut Mqtt, n: usize) -> Vec<SubscribeReasonCode> {
    let mut codes = Vec::with_capacity(n);
    let names: Vec<String> = (0..n).map(|i| format!("many/{i}")).collect();
    let mut ids = Vec::new();
    for chunk in names.chunks(100) {
        let pkid = c.pkid();
        ids.push(pkid);
        c.send(&Packet::Subscribe(Subscribe {
            pkid,
            filters: chunk
                .iter()
                .map(|f| Filter::new(f.clone(), QoS::AtLeastOnce))
                .collect(),
            properties: None,
        }));
    }
    for pkid in ids {
        match c.wait(
            Duration::from_secs(30),
            |p| matches!(p, Packet::SubAck(a) if a.pkid == pkid),
        ) {
            Some(Packet::SubAck(a)) => codes.extend(a.return_codes),
            other => panic!("no SUBACK {pkid}: {other:?}"),
        }
    }
    codes
}

#[test]
fn ten_thousand_subscriptions_from_one_client() {
    let s = Server::builder()
        .env("LIMITS__MAX_SUBSCRIPTIONS", "20000")
        .start();
    let (stop, good) = spawn_well_behaved(&s);
    let mut c = Mqtt::connect(s.mqtt, true, "many-subs");
    let t = Instant::now();
    let codes = subscribe_n(&mut c, 10_000);
    eprintln!("10,000 subscriptions granted in {:?}", t.elapsed());
    assert_eq!(codes.len(), 10_000);
    assert!(codes
        .iter()
        .all(|c| matches!(c, SubscribeReasonCode::Success(QoS::AtLeastOnce))));
    let mut p = Mqtt::connect(s.mqtt, true, "many-pub");
    for i in [0, 4567, 9999] {
        assert_eq!(
            p.publish_acked(&format!("many/{i}"), false, i.to_string().as_bytes()),
            Some(0)
        );
    }
    let got: Vec<String> = c
        .drain(Duration::from_secs(2))
        .iter()
        .map(|m| String::from_utf8_lossy(&m.topic).into_owned())
        .collect();
    assert_eq!(got, ["many/0", "many/4567", "many/9999"]);
    finish_well_behaved(stop, good, "10,000 subscriptions");
}

#[test]
fn subscriptions_past_the_limit_get_quota_exceeded() {
    let s = Server::start(); // default limits.max_subscriptions = 1000
    let mut c = Mqtt::connect(s.mqtt, true, "over-subs");
    let codes = subscribe_n(&mut c, 1100);
    let granted = codes
        .iter()
        .filter(|c| matches!(c, SubscribeReasonCode::Success(_)))
        .count();
    assert_eq!(granted, 1000);
    assert!(codes[1000..]
        .iter()
        .all(|c| *c == SubscribeReasonCode::QuotaExceeded));
    // The granted ones work.
    let mut p = Mqtt::connect(s.mqtt, true, "over-pub");
    assert_eq!(p.publish_acked("many/999", false, b"x"), Some(0));
    assert_eq!(c.drain(Duration::from_secs(1)).len(), 1);
}

/// Sends a request head, then up to `total` body bytes in 1 MB writes, reading the response as
/// soon as it comes. Returns (status, body, bytes sent).
fn upload(port: u16, head: &str, total: usize, chunked: bool) -> (u16, String, usize) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'z'; 1 << 20];
    let mut sent = 0;
    let mut resp = Vec::new();
    c.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                resp.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&resp).contains("}}") {
                    break;
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        if sent < total {
            c.set_nonblocking(false).unwrap();
            c.set_write_timeout(Some(Duration::from_millis(200))).ok();
            let ok = if chunked {
                c.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .and_then(|_| c.write_all(&chunk))
                    .and_then(|_| c.write_all(b"\r\n"))
            } else {
                c.write_all(&chunk)
            };
            c.set_nonblocking(true).unwrap();
            match ok {
                Ok(()) => sent += chunk.len(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {}
            }
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    (status.unwrap_or(0), body.to_string(), sent)
}

#[test]
fn a_100_mb_body_gets_413_without_being_buffered() {
    // Default bridge.max_body = 1 MiB. An MQTT 5 RPC body streams (issue 17) up to
    // rpc.max_stream_bytes instead, set to 10 MiB here.
    let s = Server::builder()
        .env("RPC__MAX_STREAM_BYTES", 10 << 20)
        .start();
    let pid = s.pid();
    let (stop, good) = spawn_well_behaved(&s);
    let before = rss_mb(pid);
    const MB100: usize = 100 << 20;
    for (what, head, chunked) in [
        (
            "declared length",
            format!(
                "POST /topics/big HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {MB100}\r\n\r\n"
            ),
            false,
        ),
        (
            "chunked",
            "PUT /topics/big HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_string(),
            true,
        ),
        (
            "RPC",
            format!(
                "POST /rpc/svc/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {MB100}\r\n\r\n"
            ),
            false,
        ),
    ] {
        let (status, body, sent) = upload(s.http, &head, MB100, chunked);
        let rss = rss_mb(pid);
        eprintln!(
            "{what}: {status} after {} MB sent; RSS {before:.0} -> {rss:.0} MB; {body}",
            sent >> 20
        );
        assert_eq!(status, 413, "{what}: {body}");
        let v: serde_json::Value = serde_json::from_str(body.trim()).expect("JSON error body");
        assert_eq!(v["error"]["status"], 413, "{what}: {body}");
        assert!(
            rss - before < 50.0,
            "{what}: RSS grew from {before:.0} to {rss:.0} MB"
        );
    }
    // Nothing was published.
    assert!(matches!(get(s.http, "/topics/big"), Some((404, _))));
    finish_well_behaved(stop, good, "100 MB body");
}
