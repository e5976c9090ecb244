//! The rumqttd 0.20 defects that made us put rumqttd behind an edge, each shown twice with real
//! clients: once against plain rumqttd (`examples/plain_rumqttd.rs`, asserting the defect IS
//! there, so the list stays true) and once against realtime-web (asserting it is fixed).
//!
//! Clients are raw sockets speaking rumqttc's packet codecs (`rumqttc::mqttbytes::v4` for 3.1.1,
//! `rumqttc::v5::mqttbytes::v5` for 5) over TCP, TLS (the development CA in `certs/`) or
//! WebSocket (tokio-tungstenite, as re-exported by the broker crate), so every test sees exactly
//! which bytes arrive and whether the socket is closed. Every wait is bounded; nothing asserts on
//! speed. Where the plain side must show that something does NOT happen, it waits a bounded time
//! and, where possible, then proves the connection was still being served (a later message or a
//! PINGRESP arrives instead).

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use broker::transport::tokio_tungstenite;
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::QoS as Q4;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use common::plain::*;
use common::*;

// ---------------------------------------------------------------------------------------------
// 1. A v5 publish with properties, delivered to a v3.1.1 subscriber
// ---------------------------------------------------------------------------------------------

fn publish_with_properties(topic: &str) -> v5::Publish {
    let props = v5::PublishProperties {
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"corr-42")),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    let mut p = pub5(topic, Q5::AtLeastOnce, "with-props", 1);
    p.properties = Some(props);
    p
}

#[tokio::test]
async fn d1_plain_v311_subscriber_dropped_by_v5_properties() {
    let mut b = Plain::start();
    let mut sub = C4::subscribed_on(b.v4, "d1-sub", "d1/#", Q4::AtMostOnce).await;
    let mut publ = C5::on_tcp(b.v5, "d1-pub").await;
    publ.publish(publish_with_properties("d1/x")).await;

    // rumqttd's v4 encoder hits `unreachable!` for a PUBLISH with properties: the subscriber's
    // connection task panics and its socket is closed without the message.
    let (got, closed) = sub.drain(WAIT).await;
    assert!(
        got.iter().all(|p| !matches!(p, v4::Packet::Publish(_))),
        "the 3.1.1 subscriber unexpectedly got the message: {got:?}"
    );
    assert!(closed, "the 3.1.1 subscriber should have been dropped");
    let log = b.stderr();
    assert!(
        log.contains("panicked") && log.contains("not possible in v4"),
        "expected rumqttd's v4 encoder panic on stderr, got: {log}"
    );
    assert!(b.alive(), "the broker process itself survives the panic");
}

#[tokio::test]
async fn d1_fixed_v311_subscriber_gets_v5_message_with_properties() {
    let s = Server::start();
    let mut sub = C4::subscribed_on(s.mqtt, "d1-sub", "d1/#", Q4::AtLeastOnce).await;
    let mut publ = C5::on_tcp(s.mqtt, "d1-pub").await;
    publ.publish(publish_with_properties("d1/x")).await;
    let p = sub.publish_within(WAIT, "PUBLISH").await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("d1/x", &b"with-props"[..])
    );
    // Still connected and still served.
    sub.assert_alive("the 3.1.1 subscriber was dropped").await;
    publ.publish(pub5("d1/y", Q5::AtMostOnce, "second", 0))
        .await;
    let p = sub.publish_within(WAIT, "second PUBLISH").await;
    assert_eq!(&p.payload[..], b"second");

    // The same at QoS 2, and as a retained message delivered on subscribe (the edge's own path).
    let mut sub2 = C4::subscribed_on(s.mqtt, "d1-sub2", "d1/q2", Q4::ExactlyOnce).await;
    let mut q2 = publish_with_properties("d1/q2");
    (q2.qos, q2.pkid) = (Q5::ExactlyOnce, 2);
    publ.publish(q2).await;
    let p = sub2.publish_within(WAIT, "QoS 2 PUBLISH").await;
    assert_eq!(
        (&p.payload[..], p.qos),
        (&b"with-props"[..], Q4::ExactlyOnce)
    );
    sub2.send(v4::Packet::PubRec(v4::PubRec::new(p.pkid)))
        .await
        .unwrap();
    let rel = sub2
        .find(WAIT, |x| match x {
            v4::Packet::PubRel(r) => Some(r.pkid),
            _ => None,
        })
        .await
        .packet("PUBREL");
    assert_eq!(rel, p.pkid);
    sub2.send(v4::Packet::PubComp(v4::PubComp::new(rel)))
        .await
        .unwrap();
    assert!(sub2.alive().await);

    let mut r = publish_with_properties("d1/ret");
    (r.retain, r.pkid) = (true, 3);
    publ.publish(r).await;
    let mut late = C4::subscribed_on(s.mqtt, "d1-late", "d1/ret", Q4::AtLeastOnce).await;
    let p = late.publish_within(WAIT, "retained PUBLISH").await;
    assert_eq!((&p.payload[..], p.retain), (&b"with-props"[..], true));
    assert!(late.alive().await);
}

// ---------------------------------------------------------------------------------------------
// 2. Silent TLS / WebSocket sockets and the accept loop
// ---------------------------------------------------------------------------------------------

/// The soft RLIMIT_NOFILE of this process after trying to raise it to `want` with `prlimit`
/// (children started afterwards inherit it).
fn raise_nofile(want: u64) -> u64 {
    fn read() -> (u64, u64) {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap_or("");
        let mut n = line.split_whitespace().filter_map(|w| {
            w.parse::<u64>()
                .ok()
                .or((w == "unlimited").then_some(u64::MAX))
        });
        (n.next().unwrap_or(1024), n.next().unwrap_or(1024))
    }
    let (soft, hard) = read();
    if soft < want {
        let pid = std::process::id().to_string();
        // As root the hard limit can go up too; otherwise stay under it.
        for spec in [
            format!("{want}:{}", hard.max(want)),
            format!("{}:{hard}", want.min(hard)),
        ] {
            let ok = Command::new("prlimit")
                .args(["--pid", &pid, &format!("--nofile={spec}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
        }
    }
    read().0
}

/// Opens `n` TCP connections to `port` and sends nothing on them.
async fn silent_sockets(port: u16, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let s = tokio::time::timeout(WAIT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("silent socket connect timed out")
            .expect("silent socket connect");
        v.push(s);
    }
    v
}

#[tokio::test]
async fn d2_plain_one_silent_socket_blocks_tls_and_websocket_listeners() {
    let b = Plain::launch(true, None);
    let tls_port = b.tls.unwrap();

    // Sanity: both listeners work while nobody is silent.
    C4::open(tls(tls_port).await, "d2-tls-ok").await;
    C4::open(ws(b.ws).await, "d2-ws-ok").await;

    // One socket that connects and says nothing, on each listener...
    let silent_tls = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    let silent_ws = TcpStream::connect(("127.0.0.1", b.ws)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // ...and a well-behaved client behind it gets nowhere: the handshake runs inside rumqttd's
    // accept loop, with no timeout.
    let mut tls_client = tokio::spawn(async move {
        let sock = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
        let io = tls_over(sock).await.expect("TLS handshake");
        let (_c, ack) = C4::hello(io, connect4("d2-tls", 30, None)).await;
        ack.packet("CONNACK").code
    });
    let ws_port = b.ws;
    let mut ws_client = tokio::spawn(async move {
        let sock = TcpStream::connect(("127.0.0.1", ws_port)).await.unwrap();
        let io = ws_over(sock, ws_port).await.expect("WebSocket handshake");
        let (_c, ack) = C4::hello(io, connect4("d2-ws", 30, None)).await;
        ack.packet("CONNACK").code
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(3), &mut tls_client)
            .await
            .is_err(),
        "a TLS client got through while a silent socket was pending"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(3), &mut ws_client)
            .await
            .is_err(),
        "a WebSocket client got through while a silent socket was pending"
    );

    // Once the silent sockets go away, the waiting clients are served: they were blocked by them.
    drop(silent_tls);
    drop(silent_ws);
    let code = tokio::time::timeout(WAIT, tls_client)
        .await
        .expect("TLS client still blocked")
        .unwrap();
    assert_eq!(code, v4::ConnectReturnCode::Success);
    let code = tokio::time::timeout(WAIT, ws_client)
        .await
        .expect("WebSocket client still blocked")
        .unwrap();
    assert_eq!(code, v4::ConnectReturnCode::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_fixed_thousands_of_silent_sockets_block_nobody() {
    const SILENT: usize = 1000;
    let nofile = raise_nofile(8192);
    assert!(
        nofile >= (2 * SILENT + 500) as u64,
        "RLIMIT_NOFILE is {nofile}: need {} to hold {SILENT} silent sockets per listener",
        2 * SILENT + 500
    );
    // A long handshake timeout, so the silent sockets are all still pending on the server while
    // the new clients connect (the server does not get rid of them for us).
    let s = Server::builder()
        .tls()
        .env("LIMITS__CONNECT_TIMEOUT_SECS", 300)
        .start();
    let (mqtts, http) = (s.mqtts.unwrap(), s.http);

    let silent_tls = silent_sockets(mqtts, SILENT).await;
    let silent_http = silent_sockets(http, SILENT).await;

    // New clients behind them: MQTT 5 over TLS and MQTT 5 over WebSocket, exchanging messages.
    let mut tls_client = C5::open(tls(mqtts).await, "d2-tls").await;
    let mut ws_client = C5::open(ws(http).await, "d2-ws").await;
    tls_client.subscribe(1, "d2/tls", Q5::AtLeastOnce).await;
    ws_client.subscribe(1, "d2/ws", Q5::AtLeastOnce).await;
    ws_client
        .publish(pub5("d2/tls", Q5::AtLeastOnce, "from-ws", 2))
        .await;
    tls_client
        .publish(pub5("d2/ws", Q5::AtLeastOnce, "from-tls", 2))
        .await;
    let p = tls_client.publish_within(WAIT, "PUBLISH over TLS").await;
    assert_eq!(&p.payload[..], b"from-ws");
    let p = ws_client.publish_within(WAIT, "PUBLISH over WS").await;
    assert_eq!(&p.payload[..], b"from-tls");

    // The silent TLS sockets were really still pending on the server the whole time.
    let mut probe = [0u8; 1];
    for sock in [&silent_tls[0], &silent_tls[SILENT - 1]] {
        assert!(
            matches!(sock.try_read(&mut probe), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a silent TLS socket was closed early"
        );
    }
    drop(silent_http);
}

// ---------------------------------------------------------------------------------------------
// 3. Authentication refusals and per-topic authorization
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn d3_plain_refused_connect_closes_without_connack() {
    let b = Plain::launch(false, Some(("alice", "secret")));
    // Right password: works (the check is on).
    let (_ok, ack) = C4::hello(
        tcp(b.v4).await,
        connect4("d3-ok", 30, Some(("alice", "secret"))),
    )
    .await;
    assert_eq!(ack.packet("CONNACK").code, v4::ConnectReturnCode::Success);

    // Wrong password, 3.1.1 and 5: the socket is closed, no CONNACK (no 0x04 / 0x86).
    let (mut c, ack) = C4::hello(
        tcp(b.v4).await,
        connect4("d3-bad4", 30, Some(("alice", "nope"))),
    )
    .await;
    assert!(matches!(ack, Got::Closed), "3.1.1: {ack:?}");
    assert!(c.drain(QUIET).await.0.is_empty());

    let mut bad5 = connect5("d3-bad5", 30, None);
    if let v5::Packet::Connect(_, _, login) = &mut bad5 {
        *login = Some(v5::Login::new("alice", "nope"));
    }
    let (_c, ack) = C5::hello(tcp(b.v5).await, bad5).await;
    assert!(matches!(ack, Got::Closed), "5: {ack:?}");
    // No per-topic authorization exists to be tested: rumqttd's ConnectionSettings has only the
    // username/password map and a `Fn(client_id, user, pass) -> bool` hook.
}

/// The edge's refusal paths through the real binary: the default authenticator lets everyone in,
/// but a refusal the edge makes itself (enhanced authentication) comes with a reason code.
#[tokio::test]
async fn d3_fixed_refusal_carries_a_connack_reason_code() {
    let s = Server::start();
    let props = v5::ConnectProperties {
        authentication_method: Some("SCRAM-SHA-1".into()),
        ..v5::ConnectProperties::new()
    };
    let (_c, ack) = C5::hello(tcp(s.mqtt).await, connect5("d3-scram", 30, Some(props))).await;
    let ack = ack.packet("CONNACK");
    assert_eq!(ack.code, v5::ConnectReturnCode::BadAuthenticationMethod);
}

/// Authenticator/authorizer pair for the in-process edge: user `alice`/`secret`, topics under
/// `public/` only.
struct TestAuth;

impl broker::auth::Authenticator for TestAuth {
    fn authenticate(
        &self,
        c: &broker::auth::Credentials<'_>,
    ) -> Result<broker::auth::Identity, broker::auth::Refusal> {
        match (c.username, c.password) {
            (Some("alice"), Some("secret")) => Ok(broker::auth::Identity {
                subject: Some("alice".into()),
                ..Default::default()
            }),
            _ => Err(broker::auth::Refusal::BadCredentials(
                "bad username or password".into(),
            )),
        }
    }
    fn configured(&self) -> bool {
        true
    }
}

impl broker::auth::Authorizer for TestAuth {
    fn can_publish(&self, _: &broker::auth::Identity, _: &str, topic: &str) -> bool {
        topic.starts_with("public/")
    }
    fn can_subscribe(&self, _: &broker::auth::Identity, _: &str, filter: &str) -> bool {
        filter.starts_with("public/")
    }
}

/// The security layer's seam ([`broker::Broker::start`] with an authenticator and an authorizer),
/// exercised in-process until the binary gets a configurable authenticator: refusals come with
/// CONNACK codes, and topics are authorized one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_fixed_auth_refusals_and_topic_authorization_in_process() {
    let dir = std::env::temp_dir().join(format!("rtw-d3-{}", rand::random::<u64>()));
    let cfg = broker::BrokerConfig::local("127.0.0.1:0".parse().unwrap(), dir.clone());
    let auth = Arc::new(TestAuth);
    let b = broker::Broker::start(cfg, auth.clone(), auth)
        .await
        .expect("start the edge");
    let port = b.mqtt_addr.unwrap().port();

    let (_c, ack) = C4::hello(
        tcp(port).await,
        connect4("d3-bad4", 30, Some(("alice", "nope"))),
    )
    .await;
    // The security contract: every 3.1.1 refusal is 0x05 (not authorized).
    assert_eq!(
        ack.packet("3.1.1 CONNACK").code,
        v4::ConnectReturnCode::NotAuthorized
    );
    let mut bad5 = connect5("d3-bad5", 30, None);
    if let v5::Packet::Connect(_, _, login) = &mut bad5 {
        *login = Some(v5::Login::new("alice", "nope"));
    }
    let (_c, ack) = C5::hello(tcp(port).await, bad5).await;
    assert_eq!(
        ack.packet("5 CONNACK").code,
        v5::ConnectReturnCode::BadUserNamePassword
    );

    let mut good = connect5("d3-good", 30, None);
    if let v5::Packet::Connect(_, _, login) = &mut good {
        *login = Some(v5::Login::new("alice", "secret"));
    }
    let (mut c, ack) = C5::hello(tcp(port).await, good).await;
    assert_eq!(ack.packet("CONNACK").code, v5::ConnectReturnCode::Success);
    let sa = c.subscribe(1, "private/#", Q5::AtLeastOnce).await;
    assert_eq!(
        sa.return_codes,
        vec![v5::SubscribeReasonCode::NotAuthorized]
    );
    c.subscribe_granted(2, "public/#", Q5::AtLeastOnce).await;
    let ack = c
        .puback_reason(pub5("private/x", Q5::AtLeastOnce, "no", 3))
        .await;
    assert_eq!(ack, v5::PubAckReason::NotAuthorized);
    c.publish(pub5("public/x", Q5::AtLeastOnce, "yes", 4)).await;
    let p = c.publish_within(WAIT, "PUBLISH").await;
    assert_eq!(&p.payload[..], b"yes");
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// 4. Delivery QoS = min(publish QoS, subscription QoS)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn d4_plain_delivers_at_subscription_qos() {
    let b = Plain::start();
    let mut sub = C4::subscribed_on(b.v4, "d4-sub", "d4/#", Q4::AtLeastOnce).await;
    let mut publ = C4::on_tcp(b.v4, "d4-pub").await;
    publ.publish("d4/x", Q4::AtMostOnce, false, b"q0", 0).await;
    let p = sub.publish_within(WAIT, "PUBLISH").await;
    assert_eq!(&p.payload[..], b"q0");
    // Published at QoS 0, delivered at QoS 1 (the subscription's).
    assert_eq!(p.qos, Q4::AtLeastOnce);
}

#[tokio::test]
async fn d4_fixed_delivers_at_min_qos() {
    let s = Server::start();
    let mut sub4 = C4::subscribed_on(s.mqtt, "d4-sub4", "d4/#", Q4::AtLeastOnce).await;
    let mut sub5 = C5::subscribed_on(s.mqtt, "d4-sub5", "d4/#", Q5::ExactlyOnce).await;
    let mut publ = C4::on_tcp(s.mqtt, "d4-pub").await;
    publ.publish("d4/x", Q4::AtMostOnce, false, b"q0", 0).await;
    let p = sub4.publish_within(WAIT, "PUBLISH").await;
    assert_eq!((&p.payload[..], p.qos), (&b"q0"[..], Q4::AtMostOnce));
    let p = sub5.publish_within(WAIT, "PUBLISH").await;
    assert_eq!((&p.payload[..], p.qos), (&b"q0"[..], Q5::AtMostOnce));
    publ.publish("d4/y", Q4::AtLeastOnce, false, b"q1", 7).await;
    let p = sub5.publish_within(WAIT, "PUBLISH").await;
    assert_eq!((&p.payload[..], p.qos), (&b"q1"[..], Q5::AtLeastOnce));
    // QoS 2 to the QoS 1 subscription: QoS 1.
    let mut p5 = C5::on_tcp(s.mqtt, "d4-pub5").await;
    p5.publish(pub5("d4/z", Q5::ExactlyOnce, "q2", 8)).await;
    let p = sub4.publish_within(WAIT, "PUBLISH").await;
    assert_eq!((&p.payload[..], p.qos), (&b"q1"[..], Q4::AtLeastOnce));
    let p = sub4.publish_within(WAIT, "PUBLISH").await;
    assert_eq!((&p.payload[..], p.qos), (&b"q2"[..], Q4::AtLeastOnce));
    // A retained QoS 0 message, to a new QoS 1 subscription: QoS 0.
    publ.publish("d4/r", Q4::AtMostOnce, true, b"r0", 0).await;
    let mut late = C4::subscribed_on(s.mqtt, "d4-late", "d4/r", Q4::AtLeastOnce).await;
    let p = late.publish_within(WAIT, "retained PUBLISH").await;
    assert_eq!((&p.payload[..], p.qos), (&b"r0"[..], Q4::AtMostOnce));
}

/// A 3.1.1 publisher `id` on `port` that has left a retained "kept" (QoS 1, packet id 1) on
/// `topic`.
async fn retained_kept(port: u16, id: &str, topic: &str) -> C4 {
    let mut publ = C4::on_tcp(port, id).await;
    publ.publish(topic, Q4::AtLeastOnce, true, b"kept", 1).await;
    publ
}

/// After a quiet moment, `publ` publishes "live" on `topic` (QoS 1, packet id `pkid`) and it
/// is the next message `sub` gets (`what` says what it would mean if not).
async fn live_comes_next(publ: &mut C4, sub: &mut C4, topic: &str, pkid: u16, what: &str) {
    tokio::time::sleep(QUIET).await;
    publ.publish(topic, Q4::AtLeastOnce, false, b"live", pkid)
        .await;
    sub.expect_payload(b"live", what).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Retained messages: re-subscribe, and zero-length non-retained publishes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn d5_plain_retained_not_resent_on_resubscribe() {
    let b = Plain::start();
    let mut publ = retained_kept(b.v4, "d5-pub", "d5/r").await;
    let mut sub = C4::subscribed_on(b.v4, "d5-sub", "d5/r", Q4::AtLeastOnce).await;
    let p = sub.publish_within(WAIT, "retained PUBLISH").await;
    assert_eq!(&p.payload[..], b"kept");

    // Same subscription again: MQTT (3.3.1.3 / 3.8.4) wants the retained message re-sent.
    sub.subscribe_granted(2, "d5/r", Q4::AtLeastOnce).await;
    // The next message is the live one: the retained one was not re-sent.
    live_comes_next(&mut publ, &mut sub, "d5/r", 2, "retained re-sent").await;
}

#[tokio::test]
async fn d5_plain_zero_length_non_retained_publish_deletes_retained() {
    let b = Plain::start();
    let mut publ = retained_kept(b.v4, "d5-pub", "d5/z").await;
    // An empty payload WITHOUT the retain flag must not touch the retained message (3.3.1.3).
    publ.publish("d5/z", Q4::AtLeastOnce, false, b"", 2).await;
    let mut sub = C4::subscribed_on(b.v4, "d5-sub", "d5/z", Q4::AtLeastOnce).await;
    live_comes_next(&mut publ, &mut sub, "d5/z", 3, "retained message survived").await;
}

#[tokio::test]
async fn d5_fixed_retained_resent_and_kept() {
    let s = Server::start();
    let mut publ = retained_kept(s.mqtt, "d5-pub", "d5/r").await;
    publ.publish("d5/z", Q4::AtLeastOnce, true, b"kept-z", 2)
        .await;
    publ.publish("d5/z", Q4::AtLeastOnce, false, b"", 3).await;

    let mut sub = C4::subscribed_on(s.mqtt, "d5-sub", "d5/r", Q4::AtLeastOnce).await;
    let p = sub.publish_within(WAIT, "retained PUBLISH").await;
    assert_eq!((&p.payload[..], p.retain), (&b"kept"[..], true));
    sub.subscribe(2, "d5/r", Q4::AtLeastOnce).await;
    let p = sub.publish_within(WAIT, "retained PUBLISH again").await;
    assert_eq!((&p.payload[..], p.retain), (&b"kept"[..], true));

    // The zero-length non-retained publish left the retained message alone.
    sub.subscribe(3, "d5/z", Q4::AtLeastOnce).await;
    let p = sub.publish_within(WAIT, "retained PUBLISH on d5/z").await;
    assert_eq!((&p.payload[..], p.retain), (&b"kept-z"[..], true));

    // A v5 subscriber sees the same.
    let mut sub5 = C5::subscribed_on(s.mqtt, "d5-sub5", "d5/z", Q5::AtLeastOnce).await;
    let p = sub5.publish_within(WAIT, "retained PUBLISH (v5)").await;
    assert_eq!((&p.payload[..], p.retain), (&b"kept-z"[..], true));
    // ...but not on a re-subscribe that asks for retained messages only on new subscriptions.
    let mut f = v5::Filter::new("d5/z", Q5::AtLeastOnce);
    f.retain_forward_rule = v5::RetainForwardRule::OnNewSubscribe;
    sub5.send(v5::Packet::Subscribe(v5::Subscribe {
        pkid: 2,
        filters: vec![f],
        properties: None,
    }))
    .await
    .unwrap();
    sub5.suback(2).await.packet("SUBACK");

    // A zero-length RETAINED publish does delete it; live subscribers get the empty message.
    publ.publish("d5/z", Q4::AtLeastOnce, true, b"", 4).await;
    let p = sub5.publish_within(WAIT, "empty PUBLISH").await;
    assert!(p.payload.is_empty(), "retained re-sent after all: {p:?}");
    let mut late = C4::subscribed_on(s.mqtt, "d5-late", "d5/z", Q4::AtLeastOnce).await;
    publ.publish("d5/z", Q4::AtLeastOnce, false, b"live", 5)
        .await;
    let p = late.publish_within(WAIT, "PUBLISH").await;
    assert_eq!(
        &p.payload[..],
        b"live",
        "retained message not deleted: {p:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. `$` topics and `$SYS`
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn d6_plain_dollar_subscription_disconnects() {
    let b = Plain::start();
    for filter in ["$foo/#", "$SYS/#"] {
        let mut c = C4::on_tcp(b.v4, "d6-4").await;
        c.send(v4::Packet::Subscribe({
            let mut s = v4::Subscribe::new(filter, Q4::AtMostOnce);
            s.pkid = 1;
            s
        }))
        .await
        .unwrap();
        let (got, closed) = c.drain(WAIT).await;
        assert!(
            got.is_empty(),
            "3.1.1 {filter}: no SUBACK expected, got {got:?}"
        );
        assert!(
            closed,
            "3.1.1 {filter}: expected the connection to be closed"
        );

        let mut c = C5::on_tcp(b.v5, "d6-5").await;
        c.send(subscribe5(1, filter, Q5::AtMostOnce)).await.unwrap();
        let (got, closed) = c.drain(WAIT).await;
        assert!(
            got.iter().all(|p| !matches!(p, v5::Packet::SubAck(_))),
            "5 {filter}: no SUBACK expected, got {got:?}"
        );
        assert!(closed, "5 {filter}: expected the connection to be closed");
    }
}

#[tokio::test]
async fn d6_fixed_dollar_subscription_refused_and_sys_served() {
    let s = Server::builder().env("SYS__INTERVAL_SECS", 1).start();

    let mut c4 = C4::on_tcp(s.mqtt, "d6-4").await;
    let sa = c4.subscribe(1, "$foo/#", Q4::AtMostOnce).await;
    assert_eq!(sa.return_codes, vec![v4::SubscribeReasonCode::Failure]);
    c4.assert_alive("3.1.1 connection dropped after a $ subscription")
        .await;
    c4.subscribe_granted(2, "$SYS/#", Q4::AtMostOnce).await;
    let p = c4.publish_within(WAIT, "$SYS PUBLISH").await;
    assert!(p.topic.starts_with("$SYS/"), "{p:?}");

    let mut c5 = C5::on_tcp(s.mqtt, "d6-5").await;
    let sa = c5.subscribe(1, "$foo/#", Q5::AtMostOnce).await;
    assert!(
        !matches!(sa.return_codes[..], [v5::SubscribeReasonCode::Success(_)]),
        "{sa:?}"
    );
    c5.assert_alive("MQTT 5 connection dropped after a $ subscription")
        .await;
    c5.subscribe_granted(2, "$SYS/#", Q5::AtMostOnce).await;
    let p = c5.publish_within(WAIT, "$SYS PUBLISH").await;
    assert!(p.topic.starts_with(b"$SYS/"), "{p:?}");
    // Publishing to a `$` topic is refused, not a reason to disconnect either.
    let r = c5
        .puback_reason(pub5("$foo/x", Q5::AtLeastOnce, "no", 3))
        .await;
    assert_eq!(r, v5::PubAckReason::TopicNameInvalid);
    // `#` does not match `$SYS` topics (MQTT 4.7.2).
    let mut all = C5::subscribed_on(s.mqtt, "d6-all", "#", Q5::AtMostOnce).await;
    // Periodic updates too, not just the snapshot on subscribe.
    let (more, _) = c5.drain(Duration::from_secs(3)).await;
    assert!(
        more.iter().any(
            |p| matches!(p, v5::Packet::Publish(p) if p.topic.starts_with(b"$SYS/") && !p.retain)
        ),
        "no periodic $SYS update"
    );
    let (seen, _) = all.drain(Duration::from_millis(500)).await;
    assert!(
        seen.iter()
            .all(|p| !matches!(p, v5::Packet::Publish(p) if p.topic.starts_with(b"$"))),
        "`#` received $SYS: {seen:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. UNSUBACK, keep-alive 0, broker→client topic aliases
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn d7_plain_no_unsuback_for_unknown_filter() {
    let b = Plain::start();
    let mut c4 = C4::on_tcp(b.v4, "d7-4").await;
    c4.send_unsubscribe(5, "never/subscribed").await;
    let got = c4.unsuback_within(QUIET).await;
    assert!(matches!(got, Got::Nothing), "3.1.1: {got:?}");
    c4.assert_alive("the connection is otherwise served").await;

    let mut c5 = C5::on_tcp(b.v5, "d7-5").await;
    c5.send_unsubscribe(5, "never/subscribed").await;
    let got = c5.unsuback_within(QUIET).await;
    assert!(matches!(got, Got::Nothing), "5: {got:?}");
    c5.assert_alive("the connection is otherwise served").await;
}

#[tokio::test]
async fn d7_plain_keep_alive_zero_refused_without_connack() {
    let b = Plain::start();
    C4::closed_at_connect(b.v4, connect4("d7-ka4", 0, None), "3.1.1").await;
    C5::closed_at_connect(b.v5, connect5("d7-ka5", 0, None), "5").await;
}

/// Resolves broker→client topic aliases as a client must (MQTT 5 §3.3.2.3.4).
fn resolve(aliases: &mut HashMap<u16, Bytes>, p: &v5::Publish) -> String {
    let topic = match p.properties.as_ref().and_then(|x| x.topic_alias) {
        None => p.topic.clone(),
        Some(a) if !p.topic.is_empty() => {
            aliases.insert(a, p.topic.clone());
            p.topic.clone()
        }
        Some(a) => aliases
            .get(&a)
            .cloned()
            .unwrap_or_else(|| Bytes::from(format!("<unknown alias {a}>"))),
    };
    String::from_utf8_lossy(&topic).into_owned()
}

/// Subscribes `a/+` with topic alias maximum 10, receives `a/x` then `a/y`; returns the topics
/// as the client resolves them, and the raw publishes.
async fn alias_scenario(v5_port: u16, pub_port: u16) -> (Vec<String>, Vec<v5::Publish>) {
    let props = v5::ConnectProperties {
        topic_alias_max: Some(10),
        ..v5::ConnectProperties::new()
    };
    let (mut sub, ack) = C5::hello(tcp(v5_port).await, connect5("d7-alias", 30, Some(props))).await;
    assert_eq!(ack.packet("CONNACK").code, v5::ConnectReturnCode::Success);
    sub.subscribe(1, "a/+", Q5::AtMostOnce).await;
    let mut publ = C5::on_tcp(pub_port, "d7-alias-pub").await;
    let mut aliases = HashMap::new();
    let (mut topics, mut raw) = (Vec::new(), Vec::new());
    for (t, m) in [("a/x", "to-x"), ("a/y", "to-y")] {
        publ.publish(pub5(t, Q5::AtMostOnce, m, 0)).await;
        let p = sub.publish_within(WAIT, "PUBLISH").await;
        assert_eq!(std::str::from_utf8(&p.payload).unwrap(), m);
        topics.push(resolve(&mut aliases, &p));
        raw.push(p);
    }
    (topics, raw)
}

#[tokio::test]
async fn d7_plain_broken_topic_aliases() {
    let b = Plain::start();
    let (topics, raw) = alias_scenario(b.v5, b.v5).await;
    // rumqttd keys its aliases by subscription filter: the message for a/y arrives with an empty
    // topic and the alias it gave a/x, so the client files it under a/x.
    assert_eq!(topics, ["a/x", "a/x"], "raw: {raw:?}");
    assert!(raw[1].topic.is_empty(), "{raw:?}");
}

#[tokio::test]
async fn d7_fixed_unsuback_keepalive_zero_and_aliases() {
    let s = Server::start();
    // UNSUBACK for a filter never subscribed.
    let mut c4 = C4::on_tcp(s.mqtt, "d7-4").await;
    c4.send_unsubscribe(5, "never/subscribed").await;
    let got = c4
        .find(WAIT, |p| match p {
            v4::Packet::UnsubAck(a) => Some(a.pkid),
            _ => None,
        })
        .await;
    assert_eq!(got.packet("3.1.1 UNSUBACK"), 5);

    let mut c5 = C5::on_tcp(s.mqtt, "d7-5").await;
    c5.send_unsubscribe(5, "never/subscribed").await;
    let got = c5
        .find(WAIT, |p| match p {
            v5::Packet::UnsubAck(a) => Some(a.clone()),
            _ => None,
        })
        .await
        .packet("5 UNSUBACK");
    assert_eq!(got.pkid, 5);
    assert_eq!(got.reasons, vec![v5::UnsubAckReason::NoSubscriptionExisted]);

    // Keep-alive 0.
    let (mut k4, ack) = C4::hello(tcp(s.mqtt).await, connect4("d7-ka4", 0, None)).await;
    assert_eq!(
        ack.packet("3.1.1 CONNACK").code,
        v4::ConnectReturnCode::Success
    );
    assert!(k4.alive().await);
    let (mut k5, ack) = C5::hello(tcp(s.mqtt).await, connect5("d7-ka5", 0, None)).await;
    assert_eq!(ack.packet("5 CONNACK").code, v5::ConnectReturnCode::Success);
    assert!(k5.alive().await);

    // Topic aliases: every message resolves to its own topic.
    let (topics, raw) = alias_scenario(s.mqtt, s.mqtt).await;
    assert_eq!(topics, ["a/x", "a/y"], "raw: {raw:?}");
}

/// Not a rumqttd defect but a trap in the edge's own UNSUBACK handling: an UNSUBSCRIBE sent right
/// behind its SUBSCRIBE (before the SUBACK) must still end the subscription.
#[tokio::test]
async fn d7_fixed_unsubscribe_right_behind_subscribe() {
    let s = Server::start();
    let mut c = C5::on_tcp(s.mqtt, "d7-pipe").await;
    let mut out = BytesMut::new();
    P5::encode(&subscribe5(1, "d7/pipe", Q5::AtLeastOnce), &mut out);
    let mut u = v5::Unsubscribe::new("d7/pipe", None);
    u.pkid = 2;
    P5::encode(&v5::Packet::Unsubscribe(u), &mut out);
    c.io.write_all(&out).await.unwrap();
    let sa = c.suback(1).await.packet("SUBACK");
    assert_eq!(
        sa.return_codes,
        vec![v5::SubscribeReasonCode::Success(Q5::AtLeastOnce)]
    );
    let ua = c
        .find(WAIT, |p| match p {
            v5::Packet::UnsubAck(a) if a.pkid == 2 => Some(a.reasons.clone()),
            _ => None,
        })
        .await
        .packet("UNSUBACK");
    assert_eq!(ua, vec![v5::UnsubAckReason::Success]);
    let mut publ = C5::on_tcp(s.mqtt, "d7-pipe-pub").await;
    publ.publish(pub5("d7/pipe", Q5::AtLeastOnce, "gone", 1))
        .await;
    // A marker on a second subscription proves delivery ran; nothing came for the first.
    c.subscribe(3, "d7/marker", Q5::AtLeastOnce).await;
    publ.publish(pub5("d7/marker", Q5::AtLeastOnce, "marker", 2))
        .await;
    c.expect_payload(b"marker", "still subscribed").await;
}

// ---------------------------------------------------------------------------------------------
// 8. One port for 3.1.1 and 5; MQTT 5 over WebSocket
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn d8_plain_needs_a_port_per_version_and_ws_is_v311_only() {
    let b = Plain::start();
    // MQTT 5 CONNECT on the 3.1.1 port, and 3.1.1 CONNECT on the MQTT 5 port: closed, no CONNACK.
    C5::closed_at_connect(b.v4, connect5("d8-5on4", 30, None), "5 on the 3.1.1 port").await;
    C4::closed_at_connect(b.v5, connect4("d8-4on5", 30, None), "3.1.1 on the 5 port").await;

    // WebSocket: 3.1.1 works, MQTT 5 is closed without CONNACK.
    C4::open(ws(b.ws).await, "d8-ws4").await;
    let (_c, ack) = C5::hello(ws(b.ws).await, connect5("d8-ws5", 30, None)).await;
    assert!(matches!(ack, Got::Closed), "5 over WebSocket: {ack:?}");
}

#[tokio::test]
async fn d8_fixed_one_port_both_versions_and_v5_over_websocket() {
    let s = Server::start();
    let mut s4 = C4::on_tcp(s.mqtt, "d8-4").await;
    let mut s5 = C5::on_tcp(s.mqtt, "d8-5").await;
    let mut w5 = C5::open(ws(s.http).await, "d8-ws5").await;
    let mut w4 = C4::open(ws(s.http).await, "d8-ws4").await;
    s4.subscribe(1, "d8/4", Q4::AtLeastOnce).await;
    s5.subscribe(1, "d8/5", Q5::AtLeastOnce).await;
    w5.subscribe(1, "d8/w5", Q5::AtLeastOnce).await;

    s5.publish(pub5("d8/4", Q5::AtLeastOnce, "5-to-4", 2)).await;
    s4.publish("d8/5", Q4::AtLeastOnce, false, b"4-to-5", 2)
        .await;
    w4.publish("d8/w5", Q4::AtLeastOnce, false, b"ws4-to-ws5", 2)
        .await;
    let p = s4.publish_within(WAIT, "PUBLISH to 3.1.1").await;
    assert_eq!(&p.payload[..], b"5-to-4");
    let p = s5.publish_within(WAIT, "PUBLISH to 5").await;
    assert_eq!(&p.payload[..], b"4-to-5");
    let p = w5.publish_within(WAIT, "PUBLISH to 5 over WebSocket").await;
    assert_eq!(&p.payload[..], b"ws4-to-ws5");
}

#[tokio::test]
async fn d8_fixed_v5_over_secure_websocket() {
    let s = Server::builder().tls().start();
    let https = s.https.unwrap();
    let sock = TcpStream::connect(("127.0.0.1", https)).await.unwrap();
    let io = tokio::time::timeout(WAIT, tls_over(sock))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake");
    let mut req = format!("wss://localhost:{https}/mqtt")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, io))
        .await
        .expect("WebSocket handshake timed out")
        .expect("WebSocket handshake");
    let mut c = C5::open(Box::new(broker::transport::WsIo::new(ws)), "d8-wss5").await;
    c.subscribe(1, "d8/wss", Q5::AtLeastOnce).await;
    c.publish(pub5("d8/wss", Q5::AtLeastOnce, "over-wss", 2))
        .await;
    let p = c.publish_within(WAIT, "PUBLISH over WSS").await;
    assert_eq!(&p.payload[..], b"over-wss");
}
