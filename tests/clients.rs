//! Real MQTT clients against the real binary: mosquitto_pub/sub (3.1.1 and 5, TCP and TLS),
//! paho-mqtt (3.1.1 and 5, TCP, TLS, WebSocket and secure WebSocket, via `tests/paho/client.py`)
//! and rumqttc (v4 and v5 clients, same four transports). Every test starts its own server.
//!
//! Also cross-version delivery with MQTT 5 properties: a 3.1.1 subscriber must get the payload
//! of a message that carried properties and keep its connection; a v5 subscriber must get every
//! property the publisher set, and never the broker's internal `$rtw` stamp.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{json, Value};

use common::clients::*;
use common::*;

/// What a subscriber saw, keyed by payload: (topic, QoS, retain).
type Seen = BTreeMap<String, (String, u8, bool)>;

fn tls_server() -> Server {
    Server::builder().tls().start()
}

// ---------------------------------------------------------------------------------------------
// mosquitto

#[test]
fn mosquitto_qos_0_1_2_over_tcp_and_tls() {
    let s = tls_server();
    for version in ["mqttv311", "mqttv5"] {
        for tls in [false, true] {
            let base = format!("mq/{version}/{}", if tls { "tls" } else { "tcp" });
            let mut sub = Proc::spawn(mosquitto_sub(&s, tls, version).args([
                "-t",
                &format!("{base}/#"),
                "-q",
                "2",
                "-C",
                "3",
                "-W",
                "15",
            ]));
            mosquitto_ready(&mut sub);
            for q in 0..3 {
                run_ok(mosquitto_pub(&s, tls, version).args([
                    "-t",
                    &format!("{base}/q{q}"),
                    "-q",
                    &q.to_string(),
                    "-m",
                    &format!("payload {q} over {base}"),
                ]));
            }
            let lines = sub.success(T);
            let got: Vec<_> = mosquitto_msgs(&lines)
                .into_iter()
                .map(|(t, q, r, p)| (p, (t, q, r)))
                .collect::<Seen>()
                .into_iter()
                .collect();
            let want: Vec<_> = (0..3)
                .map(|q| {
                    (
                        format!("payload {q} over {base}"),
                        (format!("{base}/q{q}"), q, false),
                    )
                })
                .collect();
            assert_eq!(got, want, "{version} tls={tls}");
        }
    }
}

#[test]
fn mosquitto_cross_version_tls() {
    let s = tls_server();
    for (sub_v, pub_v) in [("mqttv311", "mqttv5"), ("mqttv5", "mqttv311")] {
        let mut sub = Proc::spawn(
            mosquitto_sub(&s, true, sub_v).args(["-t", "x/#", "-q", "1", "-C", "1", "-W", "15"]),
        );
        mosquitto_ready(&mut sub);
        run_ok(mosquitto_pub(&s, true, pub_v).args(["-t", "x/y", "-q", "1", "-m", pub_v]));
        let lines = sub.success(T);
        assert_eq!(
            mosquitto_msgs(&lines),
            vec![("x/y".to_string(), 1, false, pub_v.to_string())]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// paho-mqtt

/// paho subscriber at QoS 2, paho publisher sending one message at each QoS, same version and
/// transport; the subscriber must get each at the QoS it was published with.
fn paho_qos_round(s: &Server, tr: Tr, version: &str) {
    let topic = format!("paho/{version}/{tr:?}");
    let mut sub = Proc::spawn(paho("sub", s, tr, version).args([
        "--topic",
        &format!("{topic}/#"),
        "--qos",
        "2",
        "--count",
        "3",
    ]));
    let ready = sub.wait_event("ready", T);
    assert_eq!(ready["granted"], json!([2]), "{version} {tr:?}");
    let mut pubc = paho("pub", s, tr, version);
    pubc.args(["--topic", &format!("{topic}/t")]);
    for q in 0..3 {
        pubc.args(["--message", &format!("m{q}"), "--msg-qos", &q.to_string()]);
    }
    let out = Proc::spawn(&mut pubc).success(T);
    assert_eq!(events(&out, "published")[0]["count"], 3);
    let lines = sub.success(T);
    let mut got: Seen = BTreeMap::new();
    for m in events(&lines, "msg") {
        got.insert(
            m["payload"].as_str().unwrap().to_string(),
            (
                m["topic"].as_str().unwrap().to_string(),
                m["qos"].as_u64().unwrap() as u8,
                m["retain"].as_bool().unwrap(),
            ),
        );
    }
    let want: Seen = (0..3)
        .map(|q| (format!("m{q}"), (format!("{topic}/t"), q, false)))
        .collect();
    assert_eq!(got, want, "{version} over {tr:?}");
    assert!(
        events(&lines, "disconnected")
            .iter()
            .all(|d| d["reason"] == 0),
        "subscriber lost its connection: {lines:?}"
    );
}

#[test]
fn paho_v311_qos_0_1_2_on_every_transport() {
    let s = tls_server();
    for tr in ALL_TRANSPORTS {
        paho_qos_round(&s, tr, "311");
    }
}

#[test]
fn paho_v5_qos_0_1_2_on_every_transport() {
    let s = tls_server();
    for tr in ALL_TRANSPORTS {
        paho_qos_round(&s, tr, "5");
    }
}

// ---------------------------------------------------------------------------------------------
// rumqttc

fn q4(q: u8) -> rumqttc::QoS {
    rumqttc::qos(q).unwrap()
}

fn q5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    rumqttc::v5::mqttbytes::qos(q).unwrap()
}

/// QoS 0, 1 and 2 round trips over every transport with rumqttc client `$client` (`V4` or
/// `V5`, connected with `$options`, QoS from `$q`, SUBACK `$granted` for QoS 2); `$check` looks
/// at each message received.
macro_rules! qos_0_1_2_on_every_transport {
    ($client:ident, $options:ident, $q:ident, $v:literal, $granted:expr, $check:expr) => {{
        let s = tls_server();
        for tr in ALL_TRANSPORTS {
            let (mut sub, _) =
                $client::connect($options(&s, tr, &format!("v{}sub-{tr:?}", $v))).await;
            let topic = format!("r{}/{tr:?}", $v);
            assert_eq!(
                sub.subscribe(&format!("{topic}/#"), $q(2)).await,
                vec![$granted]
            );
            let (mut publ, _) =
                $client::connect($options(&s, tr, &format!("v{}pub-{tr:?}", $v))).await;
            for q in 0..3 {
                let (topic, payload) = (format!("{topic}/q{q}"), format!("m{q}"));
                publ.publish_acked(&topic, $q(q), payload.as_bytes()).await;
            }
            let mut got: Seen = BTreeMap::new();
            for _ in 0..3 {
                let p = sub.publish_in(T).await;
                $check(&p);
                let topic = String::from_utf8(AsRef::<[u8]>::as_ref(&p.topic).to_vec()).unwrap();
                let payload = String::from_utf8(p.payload.to_vec()).unwrap();
                got.insert(payload, (topic, p.qos as u8, p.retain));
            }
            let want: Seen = (0..3)
                .map(|q| (format!("m{q}"), (format!("{topic}/q{q}"), q, false)))
                .collect();
            assert_eq!(got, want, "over {tr:?}");
            publ.disconnect().await;
            sub.disconnect().await;
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v4_qos_0_1_2_on_every_transport() {
    let granted = rumqttc::SubscribeReasonCode::Success(q4(2));
    qos_0_1_2_on_every_transport!(V4, v4_options, q4, 4, granted, |_: &rumqttc::Publish| {});
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v5_qos_0_1_2_on_every_transport() {
    let granted = p5::SubscribeReasonCode::Success(q5(2));
    qos_0_1_2_on_every_transport!(V5, v5_options, q5, 5, granted, assert_no_user_properties);
}

// ---------------------------------------------------------------------------------------------
// Cross-version delivery with MQTT 5 properties.

/// A paho subscriber (protocol `version`) to `filter` at `qos` that exits after `count`
/// messages; returned once it has subscribed.
fn paho_sub(s: &Server, version: &str, filter: &str, qos: u8, count: u32) -> Proc {
    let (qos, count) = (qos.to_string(), count.to_string());
    let args = ["--topic", filter, "--qos", &qos, "--count", &count];
    let mut sub = Proc::spawn(paho("sub", s, Tr::Tcp, version).args(args));
    sub.wait_event("ready", T);
    sub
}

/// What mosquitto_sub `msub` printed: `PROPS_PAYLOAD`, then "after", both QoS 1 on `topic`.
fn assert_mosquitto_got_both(msub: Proc, topic: &str) {
    let lines = msub.success(T);
    let want = [PROPS_PAYLOAD, "after"].map(|p| (topic.to_string(), 1, false, p.to_string()));
    assert_eq!(mosquitto_msgs(&lines), want);
}

const PROPS_PAYLOAD: &str = "héllo, wörld: {\"json\": [1, 2, 3]}";

fn paho_props() -> Value {
    json!({
        "response_topic": "reply/to/me",
        "correlation_data_hex": "00ff10deadbeef",
        "user_properties": [["k", "v1"], ["k", "v2"], ["trace", "abc-123"]],
        "content_type": "application/json; charset=utf-8",
        "payload_format": 1,
        "message_expiry": 300,
    })
}

/// A paho v5 publisher sends one message with properties, then a plain one (QoS 1).
fn paho_publish_with_props(s: &Server, topic: &str) {
    let out = Proc::spawn(paho("pub", s, Tr::Tcp, "5").args([
        "--topic",
        topic,
        "--qos",
        "1",
        "--props",
        &paho_props().to_string(),
        "--message",
        PROPS_PAYLOAD,
    ]))
    .success(T);
    assert_eq!(events(&out, "published").len(), 1);
    run_ok(mosquitto_pub(s, false, "mqttv5").args(["-t", topic, "-q", "1", "-m", "after"]));
}

#[test]
fn v5_properties_to_v311_subscribers() {
    let s = Server::start();
    // mosquitto_sub 3.1.1 and paho 3.1.1, both subscribed before anything is published.
    let mut msub = Proc::spawn(
        mosquitto_sub(&s, false, "mqttv311")
            .args(["-t", "props/#", "-q", "1", "-C", "2", "-W", "15"]),
    );
    mosquitto_ready(&mut msub);
    let psub = paho_sub(&s, "311", "props/#", 1, 2);

    paho_publish_with_props(&s, "props/a");

    assert_mosquitto_got_both(msub, "props/a");
    let lines = psub.success(T);
    let msgs = events(&lines, "msg");
    assert_eq!(msgs.len(), 2, "{lines:?}");
    assert_eq!(msgs[0]["payload"], PROPS_PAYLOAD);
    assert_eq!(
        msgs[0]["payload_hex"],
        hex(PROPS_PAYLOAD.as_bytes()),
        "payload bytes changed"
    );
    assert_eq!(msgs[0]["qos"], 1);
    assert_eq!(msgs[1]["payload"], "after");
    // The connection stayed up until the client itself said DISCONNECT.
    assert_eq!(
        events(&lines, "disconnected"),
        vec![json!({"event": "disconnected", "reason": 0})]
    );
}

#[test]
fn v5_properties_to_v5_subscriber_without_internal_stamp() {
    let s = Server::start();
    let psub = paho_sub(&s, "5", "props/#", 1, 2);
    let mut msub = Proc::spawn(
        mosquitto_sub(&s, false, "mqttv5")
            .args(["-t", "props/#", "-q", "1", "-C", "2", "-W", "15"]),
    );
    mosquitto_ready(&mut msub);

    paho_publish_with_props(&s, "props/b");

    let lines = psub.success(T);
    let msgs = events(&lines, "msg");
    assert_eq!(msgs.len(), 2, "{lines:?}");
    let m = &msgs[0];
    assert_eq!(m["payload"], PROPS_PAYLOAD);
    assert_eq!(m["qos"], 1);
    let want = paho_props();
    let p = &m["props"];
    assert_eq!(p["response_topic"], want["response_topic"], "{m}");
    assert_eq!(
        p["correlation_data_hex"], want["correlation_data_hex"],
        "{m}"
    );
    assert_eq!(p["content_type"], want["content_type"], "{m}");
    assert_eq!(p["payload_format"], want["payload_format"], "{m}");
    let expiry = p["message_expiry"].as_u64().expect("message expiry kept");
    assert!(expiry > 0 && expiry <= 300, "{m}");
    // Exactly the publisher's user properties, in order, duplicates kept: no `$rtw`.
    assert_eq!(p["user_properties"], want["user_properties"], "{m}");
    // The plain message carries no properties at all (in particular no stamp).
    let plain = &msgs[1];
    assert_eq!(plain["payload"], "after");
    assert!(
        plain["props"].get("user_properties").is_none(),
        "stamp leaked: {plain}"
    );
    assert_eq!(
        events(&lines, "disconnected"),
        vec![json!({"event": "disconnected", "reason": 0})]
    );

    assert_mosquitto_got_both(msub, "props/b");
}

#[test]
fn v311_publisher_to_v5_subscriber() {
    let s = Server::start();
    let psub = paho_sub(&s, "5", "old/#", 2, 2);
    run_ok(mosquitto_pub(&s, false, "mqttv311").args(["-t", "old/a", "-q", "2", "-m", "from 311"]));
    let out = Proc::spawn(paho("pub", &s, Tr::Tcp, "311").args([
        "--topic",
        "old/b",
        "--qos",
        "1",
        "--message",
        "paho 311",
    ]))
    .success(T);
    assert_eq!(events(&out, "published").len(), 1);
    let lines = psub.success(T);
    let msgs = events(&lines, "msg");
    assert_eq!(msgs.len(), 2, "{lines:?}");
    let by_topic: BTreeMap<String, &Value> = msgs
        .iter()
        .map(|m| (m["topic"].as_str().unwrap().to_string(), m))
        .collect();
    let a = by_topic["old/a"];
    assert_eq!(
        (a["payload"].as_str(), a["qos"].as_u64()),
        (Some("from 311"), Some(2))
    );
    let b = by_topic["old/b"];
    assert_eq!(
        (b["payload"].as_str(), b["qos"].as_u64()),
        (Some("paho 311"), Some(1))
    );
    for m in msgs {
        // Nothing the broker adds internally may show, and a 3.1.1 message has no properties.
        assert_eq!(m["props"], json!({}), "{m}");
    }
}

/// The same with rumqttc: a v5 publisher with properties to v4 and v5 subscribers, and a v4
/// publisher to the v5 subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_cross_version_properties() {
    let s = Server::start();
    let mut s4 = V4::subscribed(&s, "x-sub4", "cv/#", q4(1)).await;
    let mut s5 = V5::subscribed(&s, "x-sub5", "cv/#", q5(1)).await;

    let (mut p5c, _) = V5::connect(v5_options(&s, Tr::Tcp, "x-pub5")).await;
    let props = p5::PublishProperties {
        response_topic: Some("cv/reply".into()),
        correlation_data: Some(Bytes::from_static(b"\x00corr\xff")),
        user_properties: vec![
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("a".into(), "3".into()),
        ],
        content_type: Some("text/plain".into()),
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    p5c.send(
        "cv/five",
        q5(1),
        false,
        b"five with props",
        Some(props.clone()),
    )
    .await;
    let (mut p4c, _) = V4::connect(v4_options(&s, Tr::Tcp, "x-pub4")).await;
    p4c.send("cv/four", q4(1), false, b"from four").await;

    // v4 subscriber: both payloads, and the connection is still usable afterwards.
    let a = s4.publish_in(T).await;
    assert_eq!(
        (a.topic.as_str(), &a.payload[..], a.qos),
        ("cv/five", &b"five with props"[..], q4(1))
    );
    let b = s4.publish_in(T).await;
    assert_eq!(
        (b.topic.as_str(), &b.payload[..]),
        ("cv/four", &b"from four"[..])
    );
    s4.send("cv/again", q4(1), false, b"still connected").await;
    let c = s4.publish_in(T).await;
    assert_eq!(&c.payload[..], b"still connected");

    // v5 subscriber: every property as sent, nothing more.
    let a = s5.publish_in(T).await;
    assert_eq!(&a.payload[..], b"five with props");
    let got = a.properties.clone().expect("properties delivered");
    assert_eq!(got.response_topic, props.response_topic);
    assert_eq!(got.correlation_data, props.correlation_data);
    assert_eq!(got.content_type, props.content_type);
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.user_properties, props.user_properties);
    assert!(got.user_properties.iter().all(|(k, _)| !is_internal(k)));
    let b = s5.publish_in(T).await;
    assert_eq!(&b.payload[..], b"from four");
    assert_no_user_properties(&b);
    let c = s5.publish_in(T).await;
    assert_eq!(&c.payload[..], b"still connected");
    assert_no_user_properties(&c);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
