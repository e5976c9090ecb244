//! Session semantics through real clients and raw sockets: retained messages (set, clear,
//! re-subscribe, zero-length non-retained publishes, restarts), will messages (abnormal close,
//! retained wills, MQTT 5 will delay), persistent sessions (3.1.1 clean session 0, MQTT 5 session
//! expiry), client id takeover, shared subscriptions, redelivery of unacknowledged QoS 1,
//! zero-length client ids and keep-alive enforcement. Every test starts its own server.
//!
//! Where a test must show that something does *not* happen, it publishes a marker after the
//! point where the unwanted message would have been sent and asserts that the marker is the
//! first thing the subscriber gets: messages on one subscription arrive in order.

mod common;

use std::time::{Duration, Instant};

use rumqttc::mqttbytes::v4;

use common::clients::*;
use common::*;

fn q4(q: u8) -> rumqttc::QoS {
    rumqttc::qos(q).unwrap()
}

fn q5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    rumqttc::v5::mqttbytes::qos(q).unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Publishes `marker` on `topic` (QoS 1) from a fresh client and asserts that it is the next
/// message `sub` gets: nothing was queued or retained before it.
async fn assert_next_is_marker(s: &Server, sub: &mut V4, topic: &str) {
    let (mut m, _) = V4::connect(v4_options(s, Tr::Tcp, "marker-pub")).await;
    m.send(topic, q4(1), false, b"marker").await;
    let p = sub.publish_in(T).await;
    assert_eq!(
        (p.topic.as_str(), text(&p.payload).as_str()),
        (topic, "marker"),
        "something arrived before the marker: {p:?}"
    );
    m.disconnect().await;
}

/// A server and a 3.1.1 client on it that watches the wills published on `filter`.
async fn watching_wills(filter: &str, qos: rumqttc::QoS) -> (Server, V4) {
    let s = Server::start();
    let watch = V4::subscribed(&s, "will-watch", filter, qos).await;
    (s, watch)
}

/// Asserts that the next message `c` gets is `payload` on `topic`.
async fn expect_message(c: &mut V4, topic: &str, payload: &str) {
    let w = c.publish_in(T).await;
    assert_eq!(
        (w.topic.as_str(), &w.payload[..]),
        (topic, payload.as_bytes())
    );
}

async fn assert_next_is_marker5(s: &Server, sub: &mut V5, topic: &str) {
    let (mut m, _) = V4::connect(v4_options(s, Tr::Tcp, "marker-pub5")).await;
    m.send(topic, q4(1), false, b"marker").await;
    let p = sub.publish_in(T).await;
    assert_eq!(
        (text(&p.topic), text(&p.payload)),
        (topic.to_string(), "marker".to_string()),
        "something arrived before the marker: {p:?}"
    );
    m.disconnect().await;
}

// ---------------------------------------------------------------------------------------------
// Retained messages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_set_resubscribe_and_clear() {
    let s = Server::start();
    let (mut publ, _) = V4::connect(v4_options(&s, Tr::Tcp, "ret-pub")).await;
    publ.send("ret/a", q4(1), true, b"keep me").await;

    // A v5 subscriber gets it flagged retained, without the broker's internal stamp.
    let mut sub = V5::subscribed(&s, "ret-sub", "ret/#", q5(1)).await;
    let r = sub.publish_in(T).await;
    assert_eq!(
        (text(&r.topic), text(&r.payload), r.retain),
        ("ret/a".into(), "keep me".into(), true)
    );
    assert_no_user_properties(&r);

    // Subscribing again (same filter) sends it again.
    sub.subscribe("ret/#", q5(1)).await;
    let r = sub.publish_in(T).await;
    assert_eq!(
        (text(&r.topic), text(&r.payload), r.retain),
        ("ret/a".into(), "keep me".into(), true)
    );

    // A zero-length publish WITHOUT retain is an ordinary message: it does not clear anything.
    publ.send("ret/a", q4(1), false, b"").await;
    let live = sub.publish_in(T).await;
    assert_eq!((text(&live.payload), live.retain), (String::new(), false));
    let mut sub2 = V4::subscribed(&s, "ret-sub2", "ret/#", q4(1)).await;
    let r = sub2.publish_in(T).await;
    assert_eq!(
        (r.topic.as_str(), &r.payload[..], r.retain),
        ("ret/a", &b"keep me"[..], true)
    );
    sub2.disconnect().await;

    // A zero-length retained publish clears it.
    publ.send("ret/a", q4(1), true, b"").await;
    let mut sub3 = V4::subscribed(&s, "ret-sub3", "ret/#", q4(1)).await;
    assert_next_is_marker(&s, &mut sub3, "ret/marker").await;

    // And it can be set again afterwards.
    publ.send("ret/a", q4(0), true, b"again").await;
    // QoS 0 has no acknowledgement: a QoS 1 message behind it on the same connection is
    // acknowledged only once the broker has handled (and stored) the one before.
    publ.send("sync/ret", q4(1), false, b"").await;
    let mut sub4 = V4::subscribed(&s, "ret-sub4", "ret/a", q4(1)).await;
    let r = sub4.publish_in(T).await;
    assert_eq!(
        (&r.payload[..], r.retain, r.qos),
        (&b"again"[..], true, q4(0))
    );
}

#[test]
fn retained_survives_restart() {
    let mut s = Server::start();
    run_ok(
        mosquitto_pub(&s, false, "mqttv311")
            .args(["-t", "keep/a", "-m", "durable", "-q", "1", "-r"]),
    );
    run_ok(mosquitto_pub(&s, false, "mqttv5").args([
        "-t",
        "keep/b",
        "-m",
        "gone soon",
        "-q",
        "1",
        "-r",
    ]));
    run_ok(mosquitto_pub(&s, false, "mqttv5").args(["-t", "keep/b", "-n", "-q", "1", "-r"]));
    s.restart();
    // After the restart: keep/a is still retained, keep/b is still cleared.
    let mut sub = Proc::spawn(
        mosquitto_sub(&s, false, "mqttv311")
            .args(["-t", "keep/#", "-q", "1", "-C", "2", "-W", "15"]),
    );
    mosquitto_ready(&mut sub);
    run_ok(mosquitto_pub(&s, false, "mqttv311").args([
        "-t",
        "keep/marker",
        "-m",
        "marker",
        "-q",
        "1",
    ]));
    let lines = sub.success(T);
    assert_eq!(
        mosquitto_msgs(&lines),
        vec![
            ("keep/a".to_string(), 1, true, "durable".to_string()),
            ("keep/marker".to_string(), 1, false, "marker".to_string()),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Will messages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_sent_when_client_process_is_killed() {
    let (s, mut watch) = watching_wills("will/#", q4(1)).await;

    for version in ["311", "5"] {
        let mut holder = Proc::spawn(paho("hold", &s, Tr::Tcp, version).args([
            "--id",
            &format!("paho-will-{version}"),
            "--will-topic",
            &format!("will/paho{version}"),
            "--will-payload",
            &format!("paho {version} died"),
            "--will-qos",
            "1",
            "--timeout",
            "30",
        ]));
        let holder = tokio::task::spawn_blocking(move || {
            holder.wait_event("ready", T);
            holder.kill();
            holder
        })
        .await
        .unwrap();
        let w = watch.publish_in(T).await;
        assert_eq!(
            (w.topic.as_str(), text(&w.payload), w.qos),
            (
                format!("will/paho{version}").as_str(),
                format!("paho {version} died"),
                q4(1)
            ),
            "{}",
            holder.stderr()
        );
    }

    // mosquitto_sub with a will, killed with SIGKILL.
    let mut m = Proc::spawn(mosquitto_sub(&s, false, "mqttv5").args([
        "-t",
        "nothing",
        "--will-topic",
        "will/mosquitto",
        "--will-payload",
        "mosquitto died",
    ]));
    let _m = tokio::task::spawn_blocking(move || {
        mosquitto_ready(&mut m);
        m.kill();
        m
    })
    .await
    .unwrap();
    expect_message(&mut watch, "will/mosquitto", "mosquitto died").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_sent_on_dropped_socket_but_not_after_disconnect() {
    let (s, mut watch) = watching_wills("will/#", q4(2)).await;

    // A client that says DISCONNECT: no will.
    let mut o = v4_options(&s, Tr::Tcp, "polite");
    set_v4_will(&mut o, "will/polite", "should not be sent");
    let (polite, _) = V4::connect(o).await;
    polite.disconnect().await;
    // Once the same id connects again, the old session has ended (the registry waits for it).
    let mut o = v4_options(&s, Tr::Tcp, "polite");
    o.set_clean_session(true);
    let (again, _) = V4::connect(o).await;
    again.disconnect().await;
    assert_next_is_marker(&s, &mut watch, "will/marker").await;

    // A raw 3.1.1 client whose socket just goes away: will at QoS 2.
    let mut raw = Raw::open(s.mqtt, false);
    let mut c = v4::Connect::new("dropper");
    c.last_will = Some(v4::LastWill::new(
        "will/dropper",
        "socket dropped",
        q4(2),
        false,
    ));
    raw.send4(v4::Packet::Connect(c));
    assert!(
        matches!(raw.recv4(T), v4::Packet::ConnAck(a) if a.code == v4::ConnectReturnCode::Success)
    );
    drop(raw);
    let w = watch.publish_in(T).await;
    assert_eq!(
        (w.topic.as_str(), &w.payload[..], w.qos),
        ("will/dropper", &b"socket dropped"[..], q4(2))
    );

    // A rumqttc v5 client whose task is dropped (socket closed without DISCONNECT).
    let mut o = v5_options(&s, Tr::Tcp, "v5-dropper");
    set_v5_will(&mut o, "will/v5", "v5 dropped", false);
    let (c5, _) = V5::connect(o).await;
    drop(c5);
    expect_message(&mut watch, "will/v5", "v5 dropped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_will() {
    let (s, mut watch) = watching_wills("rwill/#", q4(1)).await;

    let mut o = v5_options(&s, Tr::Tcp, "rwill-client");
    set_v5_will(&mut o, "rwill/status", "offline", true);
    let (c, _) = V5::connect(o).await;
    drop(c);
    expect_message(&mut watch, "rwill/status", "offline").await;

    // A later subscriber gets the will as a retained message (3.1.1 and 5).
    let mut late = V4::subscribed(&s, "late4", "rwill/#", q4(1)).await;
    let r = late.publish_in(T).await;
    assert_eq!(
        (r.topic.as_str(), &r.payload[..], r.retain),
        ("rwill/status", &b"offline"[..], true)
    );
    let mut late5 = V5::subscribed(&s, "late5", "rwill/status", q5(1)).await;
    let r = late5.publish_in(T).await;
    assert_eq!((&r.payload[..], r.retain), (&b"offline"[..], true));
    assert_no_user_properties(&r);
}

/// Connects `id` (MQTT 5) with a will on `topic` delayed `delay` s and session expiry `expiry` s,
/// then drops the connection without DISCONNECT; returns when.
async fn leave_with_will(s: &Server, id: &str, topic: &str, delay: u32, expiry: u32) -> Instant {
    let (c, _) = V5::connect(delayed_will_options(s, id, topic, delay, expiry)).await;
    let t0 = Instant::now();
    drop(c);
    t0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_sent_after_the_delay() {
    let (s, mut watch) = watching_wills("dwill/#", q4(1)).await;
    let t0 = leave_with_will(&s, "late-will", "dwill/late", 2, 60).await;
    let w = watch.publish_in(T).await;
    let waited = t0.elapsed();
    assert_eq!(
        (w.topic.as_str(), &w.payload[..]),
        ("dwill/late", &b"late-will is gone"[..])
    );
    assert!(
        waited >= Duration::from_millis(1500),
        "will sent after {waited:?}, before its 2 s delay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_capped_by_session_expiry() {
    let (s, mut watch) = watching_wills("dwill/#", q4(1)).await;
    // Will delay 60 s, but the session ends after 1 s: the will goes when the session ends.
    let t0 = leave_with_will(&s, "short-session", "dwill/short", 60, 1).await;
    let w = watch.publish_in(T).await;
    assert_eq!(w.topic, "dwill/short");
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_not_sent_when_client_reconnects_in_time() {
    let (s, mut watch) = watching_wills("dwill/#", q4(1)).await;
    // A will delay long enough that the reconnect below lands inside it on any machine.
    let t0 = leave_with_will(&s, "comes-back", "dwill/back", 5, 60).await;
    // Back within the delay, resuming the session.
    let (mut back, ack) =
        V5::connect(delayed_will_options(&s, "comes-back", "dwill/back", 5, 60)).await;
    assert!(ack.session_present);
    // Past the original delay: the will must not have been sent.
    tokio::time::sleep_until((t0 + Duration::from_secs(6)).into()).await;
    assert_next_is_marker(&s, &mut watch, "dwill/marker").await;
    // The reconnected client works.
    back.subscribe("dwill/echo", q5(1)).await;
    let p = back.echo("dwill/echo", b"hi").await;
    assert_eq!(&p.payload[..], b"hi");
}

// ---------------------------------------------------------------------------------------------
// Persistent sessions

/// A persistent session (rumqttc `$client`, options from `$opts()`) subscribed to `$prefix/#`
/// at QoS 1 (QoS from `$q`) gets, on resume, the three messages published on `$prefix/t` while
/// it was away (by a client with `$options`), in order. Returns the resumed client, the
/// publisher and the messages.
macro_rules! queued_while_offline {
    ($client:ident, $options:ident, $opts:ident, $q:ident, $prefix:literal, $s:expr) => {{
        let (mut c, ack) = $client::connect($opts()).await;
        assert!(!ack.session_present, "a new session cannot be present");
        c.subscribe(concat!($prefix, "/#"), $q(1)).await;
        c.disconnect().await;
        let publisher = concat!($prefix, "-pub");
        let (mut publ, _) = $client::connect($options($s, Tr::Tcp, publisher)).await;
        let queued = offline(3);
        for m in &queued {
            publ.publish_acked(concat!($prefix, "/t"), $q(1), m.as_bytes())
                .await;
        }
        let (mut c, ack) = $client::connect($opts()).await;
        assert!(ack.session_present, "session present must be 1");
        let got = c.expect_payloads(&queued, $q(1)).await;
        (c, publ, got)
    }};
}

/// The payloads `offline 0` … `offline {n-1}`.
fn offline(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("offline {i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_persistent_session_queues_qos1_while_offline() {
    let s = Server::start();
    let opts = || {
        let mut o = v4_options(&s, Tr::Tcp, "persist4");
        o.set_clean_session(false);
        o
    };
    let (mut c, mut publ, _) = queued_while_offline!(V4, v4_options, opts, q4, "ps", &s);
    // The subscription survived too: a new message arrives without subscribing again.
    publ.send("ps/t", q4(1), false, b"online").await;
    assert_eq!(&c.publish_in(T).await.payload[..], b"online");
}

#[test]
fn v311_persistent_session_with_mosquitto_clients() {
    let s = Server::start();
    // -c: clean session off.
    let session = ["-c", "-i", "mosq-persist", "-q", "1", "-t", "mp/#"];
    // -E: exit once subscribed (with DISCONNECT).
    run_ok(mosquitto_sub(&s, false, "mqttv311").args(session).arg("-E"));
    for i in 0..3 {
        let queued = format!("queued {i}");
        let args = ["-t", "mp/t", "-q", "1", "-m", &queued];
        run_ok(mosquitto_pub(&s, false, "mqttv311").args(args));
    }
    // Back: the three queued messages, then exit (or give up after 15 s).
    let mut sub = mosquitto_sub(&s, false, "mqttv311");
    let lines = Proc::spawn(sub.args(session).args(["-C", "3", "-W", "15"])).success(T);
    let got: Vec<String> = mosquitto_msgs(&lines).into_iter().map(|m| m.3).collect();
    assert_eq!(got, vec!["queued 0", "queued 1", "queued 2"], "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expiry_queues_qos1_while_offline() {
    let s = Server::start();
    let opts = || persistent_v5_options(&s, "persist5", 300);
    let (_, _, got) = queued_while_offline!(V5, v5_options, opts, q5, "ps5", &s);
    for p in got {
        assert_no_user_properties(&p);
    }
}

/// An MQTT 5 client connected with `opts` and subscribed to `filter` at QoS 1.
async fn subscribed5(opts: rumqttc::v5::MqttOptions, filter: &str) -> V5 {
    let (mut c, _) = V5::connect(opts).await;
    c.subscribe(filter, q5(1)).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expiry_zero_keeps_nothing() {
    let s = Server::start();
    let opts = |expiry: u32| persistent_v5_options(&s, "ephemeral5", expiry);
    let c = subscribed5(opts(0), "eph/#").await;
    c.disconnect().await;
    let (mut publ, _) = V4::connect(v4_options(&s, Tr::Tcp, "eph-pub")).await;
    publ.send("eph/t", q4(1), false, b"nobody keeps this").await;

    let (mut c, ack) = V5::connect(opts(300)).await;
    assert!(!ack.session_present, "expiry 0 must not keep the session");
    // Nothing was queued, and the old subscription is gone: subscribe anew, the marker is first.
    c.subscribe("eph/#", q5(1)).await;
    assert_next_is_marker5(&s, &mut c, "eph/marker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expires_after_its_interval() {
    let s = Server::start();
    let opts = |expiry: u32| persistent_v5_options(&s, "short5", expiry);
    let c = subscribed5(opts(1), "short/#").await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_c, ack) = V5::connect(opts(60)).await;
    assert!(
        !ack.session_present,
        "the session should have expired after 1 s"
    );
}

// ---------------------------------------------------------------------------------------------
// Client id takeover

/// A rumqttc `$client` (options from `$options`) connects over TCP as `$id`; a second one with
/// the same id, over `$second`, takes its session over. Returns the server, the second client
/// and how the first connection ended.
macro_rules! take_over {
    ($client:ident, $options:ident, $id:literal, $second:expr) => {{
        let s = Server::start();
        let (mut first, _) = $client::connect($options(&s, Tr::Tcp, $id)).await;
        let (second, _) = $client::connect($options(&s, $second, $id)).await;
        let err = first.closed(T).await;
        (s, second, err)
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_takeover_v5() {
    let (_s, mut second, err) = take_over!(V5, v5_options, "same-id", Tr::Tcp);
    assert!(
        err.contains("SessionTakenOver"),
        "first connection ended with {err}"
    );
    second.subscribe("take/#", q5(1)).await;
    assert_eq!(&second.echo("take/x", b"works").await.payload[..], b"works");
}

/// The same on the wire: exactly DISCONNECT 0x8E, then the close; the new connection works.
#[test]
fn client_id_takeover_raw() {
    let s = Server::start();
    for v5 in [true, false] {
        let id = format!("raw-same-{v5}");
        let hello = |raw: &mut Raw| {
            if v5 {
                raw.send5(connect5(&id, true, 60, None));
                assert!(
                    matches!(raw.recv5(T), p5::Packet::ConnAck(a) if a.code == p5::ConnectReturnCode::Success)
                );
            } else {
                raw.send4(connect4(&id, true, 60));
                assert_eq!(raw.connack4().code, v4::ConnectReturnCode::Success);
            }
        };
        let mut first = Raw::open(s.mqtt, v5);
        hello(&mut first);
        let mut second = Raw::open(s.mqtt, v5);
        hello(&mut second);
        if v5 {
            match first.recv5(T) {
                p5::Packet::Disconnect(d) => {
                    assert_eq!(d.reason_code, p5::DisconnectReasonCode::SessionTakenOver)
                }
                other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
            }
        }
        // 3.1.1 has no DISCONNECT from the server: the connection just closes.
        assert!(matches!(first.recv(T), Err("closed")));
        assert_eq!(first.leftover(), 0, "stray bytes before the close");
        if v5 {
            second.send5(p5::Packet::PingReq(p5::PingReq));
            assert!(matches!(second.recv5(T), p5::Packet::PingResp(_)));
        } else {
            second.ping4();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_takeover_v311() {
    // Across transports and versions: the second arrives over WebSocket.
    let (_s, mut second, err) = take_over!(V4, v4_options, "same-id4", Tr::Ws);
    assert!(!err.is_empty());
    second.subscribe("take/#", q4(1)).await;
    assert_eq!(&second.echo("take/y", b"works").await.payload[..], b"works");
}

// ---------------------------------------------------------------------------------------------
// Shared subscriptions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_splits_messages() {
    let s = Server::start();
    let (mut a, _) = V5::connect(v5_options(&s, Tr::Tcp, "member-a")).await;
    let (mut b, _) = V4::connect(v4_options(&s, Tr::Tcp, "member-b")).await;
    assert_eq!(
        a.subscribe("$share/g/jobs/#", q5(1)).await,
        vec![p5::SubscribeReasonCode::Success(q5(1))]
    );
    assert_eq!(
        b.subscribe("$share/g/jobs/#", q4(1)).await,
        vec![rumqttc::SubscribeReasonCode::Success(q4(1))]
    );
    let (mut publ, _) = V4::connect(v4_options(&s, Tr::Tcp, "jobs-pub")).await;
    const N: usize = 20;
    for i in 0..N {
        publ.send("jobs/run", q4(1), false, format!("job {i}").as_bytes())
            .await;
    }
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while got_a.len() + got_b.len() < N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {N} messages arrived: a={got_a:?} b={got_b:?}",
            got_a.len() + got_b.len()
        );
        tokio::select! {
            p = a.publish_in(T) => got_a.push(text(&p.payload)),
            p = b.publish_in(T) => got_b.push(text(&p.payload)),
        }
    }
    let mut all: Vec<String> = got_a.iter().chain(&got_b).cloned().collect();
    all.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("job {i}")).collect();
    want.sort();
    assert_eq!(
        all, want,
        "each message exactly once: a={got_a:?} b={got_b:?}"
    );
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "both members should get messages: a={got_a:?} b={got_b:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Redelivery

#[test]
fn unacked_qos1_redelivered_on_reconnect_v311() {
    let s = Server::start();
    let connect = |raw: &mut Raw| raw.resume4("no-acker");
    let mut raw = Raw::open(s.mqtt, false);
    let ack = connect(&mut raw);
    assert_eq!(ack.code, v4::ConnectReturnCode::Success);
    raw.subscribe4("redo/#", q4(1));
    run_ok(mosquitto_pub(&s, false, "mqttv311").args(["-t", "redo/x", "-q", "1", "-m", "ack me"]));
    let first = raw.publish4();
    assert_eq!((&first.payload[..], first.qos), (&b"ack me"[..], q4(1)));
    drop(raw); // never acknowledged

    let mut raw = Raw::open(s.mqtt, false);
    let ack = connect(&mut raw);
    assert!(ack.session_present, "session present must be 1");
    let again = raw.publish4();
    assert_eq!(&again.payload[..], b"ack me");
    assert_eq!(
        again.pkid, first.pkid,
        "MQTT-4.4.0-1: original packet identifier"
    );
    raw.send4(v4::Packet::PubAck(v4::PubAck::new(again.pkid)));
    raw.send4(v4::Packet::Disconnect);
    drop(raw);

    // Acknowledged now: a third connection gets nothing again, the next message comes first.
    let mut raw = Raw::open(s.mqtt, false);
    assert!(connect(&mut raw).session_present);
    run_ok(mosquitto_pub(&s, false, "mqttv311").args(["-t", "redo/x", "-q", "1", "-m", "marker"]));
    let p = raw.publish4();
    assert_eq!(&p.payload[..], b"marker", "{p:?}");
}

/// MQTT-3.3.1-1: "The DUP flag MUST be set to 1 by the Client or Server when it attempts to
/// re-deliver a PUBLISH Packet"; and a message first sent after the reconnect is not a re-delivery.
#[test]
fn redelivery_sets_dup_v311() {
    let s = Server::start();
    let connect = |raw: &mut Raw| raw.resume4("dup-checker");
    let mut raw = Raw::open(s.mqtt, false);
    connect(&mut raw);
    raw.subscribe4("dup/#", q4(1));
    run_ok(mosquitto_pub(&s, false, "mqttv311").args([
        "-t",
        "dup/x",
        "-q",
        "1",
        "-m",
        "sent once",
    ]));
    let p = raw.publish4();
    assert!(!p.dup, "first delivery is no duplicate: {p:?}");
    drop(raw); // never acknowledged
               // Queued while offline: never sent before, so not a duplicate.
    run_ok(mosquitto_pub(&s, false, "mqttv311").args(["-t", "dup/x", "-q", "1", "-m", "queued"]));

    let mut raw = Raw::open(s.mqtt, false);
    assert!(connect(&mut raw).session_present);
    let mut got = Vec::new();
    for _ in 0..2 {
        match raw.recv4(T) {
            v4::Packet::Publish(p) => {
                raw.send4(v4::Packet::PubAck(v4::PubAck::new(p.pkid)));
                got.push((text(&p.payload), p.dup));
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    assert_eq!(
        got,
        vec![
            ("sent once".to_string(), true),
            ("queued".to_string(), false)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_qos1_redelivered_on_reconnect_v5_rumqttc() {
    let s = Server::start();
    let opts = || {
        let mut o = persistent_v5_options(&s, "manual-acker", 300);
        o.set_manual_acks(true);
        o
    };
    let (mut c, _) = V5::connect(opts()).await;
    c.subscribe("redo5/#", q5(1)).await;
    let (mut publ, _) = V4::connect(v4_options(&s, Tr::Tcp, "redo5-pub")).await;
    publ.send("redo5/x", q4(1), false, b"unacked").await;
    let p = c.publish_in(T).await;
    assert_eq!(&p.payload[..], b"unacked");
    drop(c); // socket closed, PUBACK never sent

    let (mut c, ack) = V5::connect(opts()).await;
    assert!(ack.session_present);
    let p = c.publish_in(T).await;
    assert_eq!(&p.payload[..], b"unacked");
    assert!(p.dup, "a re-delivery carries DUP: {p:?}");
    c.client.ack(&p).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Zero-length client ids

#[test]
fn zero_length_client_id_v311() {
    let s = Server::start();
    // Clean session 0 with no id: identifier rejected (0x02), and the connection closed.
    let mut raw = Raw::open(s.mqtt, false);
    raw.send4(connect4("", false, 60));
    match raw.recv4(T) {
        v4::Packet::ConnAck(a) => {
            assert_eq!(a.code, v4::ConnectReturnCode::BadClientId);
            assert!(!a.session_present);
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert!(matches!(raw.recv(T), Err("closed")));

    // Clean session 1 with no id: accepted, and usable.
    let mut raw = Raw::open(s.mqtt, false);
    raw.send4(connect4("", true, 60));
    match raw.recv4(T) {
        v4::Packet::ConnAck(a) => assert_eq!(a.code, v4::ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    raw.ping4();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_client_id_v5_is_assigned() {
    let s = Server::start();
    let (mut a, ack) = V5::connect(v5_options(&s, Tr::Tcp, "")).await;
    let id_a = ack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("assigned client identifier in CONNACK");
    assert!(!id_a.is_empty());
    let (_b, ack) = V5::connect(v5_options(&s, Tr::Tcp, "")).await;
    let id_b = ack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("assigned client identifier in CONNACK");
    assert_ne!(id_a, id_b, "each client gets its own id");
    // The first client still works (the second did not take it over).
    a.subscribe("anon/#", q5(1)).await;
    a.send("anon/x", q5(1), false, b"hello", None).await;
    assert_eq!(&a.publish_in(T).await.payload[..], b"hello");

    // Raw: even with clean start 0 an MQTT 5 client gets an id.
    let mut raw = Raw::open(s.mqtt, true);
    raw.send5(connect5("", false, 60, None));
    match raw.recv5(T) {
        p5::Packet::ConnAck(a) => {
            assert_eq!(a.code, p5::ConnectReturnCode::Success);
            let id = a.properties.and_then(|p| p.assigned_client_identifier);
            assert!(id.is_some_and(|i| !i.is_empty()));
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Keep-alive

#[test]
fn keep_alive_enforced_v311() {
    let s = Server::start();
    let mut raw = Raw::connected4(s.mqtt, "sleepy4", true, 1);
    let t0 = Instant::now();
    // Silence: the broker must close within 1.5 × keep-alive (plus scheduling slack).
    let r = raw.recv(Duration::from_secs(5));
    let waited = t0.elapsed();
    assert!(matches!(r, Err("closed")), "got {r:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited <= Duration::from_millis(3500),
        "closed after {waited:?}"
    );
}

#[test]
fn keep_alive_enforced_v5() {
    let s = Server::start();
    let mut raw = Raw::open(s.mqtt, true);
    raw.send5(connect5("sleepy5", true, 1, None));
    match raw.recv5(T) {
        p5::Packet::ConnAck(a) => {
            assert_eq!(a.code, p5::ConnectReturnCode::Success);
            // The default config does not override the client's keep-alive.
            assert!(a.properties.is_none_or(|p| p.server_keep_alive.is_none()));
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let t0 = Instant::now();
    match raw.recv(Duration::from_secs(5)) {
        Ok(RawPacket::V5(p)) => match *p {
            p5::Packet::Disconnect(d) => {
                assert_eq!(d.reason_code, p5::DisconnectReasonCode::KeepAliveTimeout)
            }
            other => panic!("expected DISCONNECT, got {other:?}"),
        },
        other => panic!("expected DISCONNECT 0x8D, got {other:?}"),
    }
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited <= Duration::from_millis(3500),
        "disconnected after {waited:?}"
    );
    assert!(matches!(raw.recv(T), Err("closed")));
    assert_eq!(raw.leftover(), 0, "stray bytes after DISCONNECT");
}

#[test]
fn keep_alive_traffic_keeps_the_connection() {
    let s = Server::start();
    let mut raw = Raw::open(s.mqtt, false);
    raw.send4(connect4("busy4", true, 1));
    assert!(matches!(raw.recv4(T), v4::Packet::ConnAck(_)));
    // PINGREQ every 0.5 s for 3 s: twice the time a silent client would last.
    for i in 1..=6 {
        std::thread::sleep(Duration::from_millis(500));
        raw.send4(v4::Packet::PingReq);
        let r = raw.recv(T);
        assert!(
            matches!(r, Ok(RawPacket::V4(v4::Packet::PingResp))),
            "got {r:?} at ping {i}"
        );
    }
}

#[test]
fn keep_alive_zero_is_accepted() {
    let s = Server::start();
    let mut r4 = Raw::connected4(s.mqtt, "no-ka4", true, 0);
    let mut r5 = Raw::open(s.mqtt, true);
    r5.send5(connect5("no-ka5", true, 0, None));
    match r5.recv5(T) {
        p5::Packet::ConnAck(a) => assert_eq!(a.code, p5::ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // Well past what any keep-alive of 1 s would allow, both still answer a PINGREQ.
    assert!(matches!(
        r4.recv(Duration::from_millis(2500)),
        Err("timeout")
    ));
    assert!(matches!(
        r5.recv(Duration::from_millis(500)),
        Err("timeout")
    ));
    r4.ping4();
    r5.send5(p5::Packet::PingReq(p5::PingReq));
    assert!(matches!(r5.recv5(T), p5::Packet::PingResp(_)));
}
