//! MQTT 3.1.1 / 5 conformance: the places where outside test suites found the broker lenient or
//! missing an optional feature (issue 16), each checked against the spec's normative statement
//! with the raw client ([`common::mqtt`]), which sends exactly the bytes a test wants and shows every
//! reason code and property the broker answers with.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::mqtt::*;
use common::*;

fn topic_of(p: &Publish) -> String {
    String::from_utf8_lossy(&p.topic).into_owned()
}

fn alias_of(p: &Publish) -> Option<u16> {
    p.properties.as_ref().and_then(|x| x.topic_alias)
}

/// A will on `topic` saying `body`.
fn will(topic: &str, body: &str) -> LastWill {
    LastWill::new(
        topic,
        body.as_bytes().to_vec(),
        QoS::AtMostOnce,
        false,
        None,
    )
}

// ---- CONNECT ----

/// MQTT 5 §3.1.2.11.3: "It is a Protocol Error to include the Receive Maximum value more than
/// once or for it to have the value 0." The server answers CONNACK 0x82 and closes (§4.13).
/// (The same holds for Maximum Packet Size 0, §3.1.2.11.4, and for a will whose Response Topic
/// has wildcards, MQTT-3.3.2-14.) 3.1.1 has no properties.
/// An MQTT 5 CONNECT with `opts` gets CONNACK 0x82 (Protocol Error), then the close.
fn refused_as_protocol_error(s: &Server, opts: Opts) {
    let (mut c, ack) = Client::try_connect(s.mqtt, V::V5, opts);
    assert_eq!(ack.code, ConnectReturnCode::ProtocolError, "{ack:?}");
    c.expect_closed(WAIT);
}

#[test]
fn receive_maximum_zero_is_a_protocol_error() {
    let s = Server::start();
    let opts = Opts::new("cf-rm0").props(|p| p.receive_maximum = Some(0));
    refused_as_protocol_error(&s, opts);
    let opts = Opts::new("cf-mps0").props(|p| p.max_packet_size = Some(0));
    refused_as_protocol_error(&s, opts);
    // A will whose Response Topic has a wildcard: the will would be published with it.
    let props = LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: Some("cf/+/reply".into()),
        correlation_data: None,
        user_properties: Vec::new(),
    };
    refused_as_protocol_error(
        &s,
        Opts::new("cf-wrt").will(LastWill::new(
            "cf/will",
            b"gone".to_vec(),
            QoS::AtMostOnce,
            false,
            Some(props),
        )),
    );

    // Receive Maximum 1 is fine.
    let mut c = Client::v5_with(s.mqtt, "cf-rm1", |p| p.receive_maximum = Some(1));
    c.ping();
}

// ---- DISCONNECT ----

/// MQTT 5 §3.14.2.2.2: "If the Session Expiry Interval in the CONNECT packet was zero, then it
/// is a Protocol Error to set a non-zero Session Expiry Interval in the DISCONNECT packet sent
/// by the Client." The server sends DISCONNECT 0x82 and closes; the session ends with the
/// connection (its expiry stays 0), so a reconnect finds none.
#[test]
fn disconnect_setting_expiry_after_zero_is_a_protocol_error() {
    let s = Server::start();
    let mut c = Client::subscribed(s.mqtt, V::V5, "cf-se", "cf/se", QoS::AtLeastOnce);
    c.send(&Packet::Disconnect(Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
        properties: Some(DisconnectProperties {
            session_expiry_interval: Some(300),
            reason_string: None,
            user_properties: Vec::new(),
            server_reference: None,
        }),
    }));
    c.expect_disconnect(DisconnectReasonCode::ProtocolError);

    let (mut back, ack) = Client::try_connect(
        s.mqtt,
        V::V5,
        Opts::new("cf-se")
            .clean(false)
            .props(|p| p.session_expiry_interval = Some(300)),
    );
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(!ack.session_present, "the session was kept: {ack:?}");
    let mut p = Client::new(s.mqtt, V::V311, "cf-se-pub");
    p.publish("cf/se", QoS::AtLeastOnce, b"after");
    back.assert_no_publish();
}

// ---- PUBLISH ----

/// MQTT 5 §3.3.2.3.5: "The Response Topic MUST NOT contain wildcard characters
/// [MQTT-3.3.2-14]." A PUBLISH breaking it is a protocol error: DISCONNECT 0x82, the message is
/// not delivered, and the will is published as for any connection the server closes.
#[test]
fn response_topic_with_wildcards_is_a_protocol_error() {
    let s = Server::start();
    let mut watcher =
        Client::subscribed(s.mqtt, V::V311, "cf-rt-watch", "cf/rt/#", QoS::AtLeastOnce);
    for (i, rt) in ["cf/+/reply", "cf/reply/#"].into_iter().enumerate() {
        let id = format!("cf-rt-{i}");
        let mut c = Client::connect(s.mqtt, V::V5, Opts::new(&id).will(will("cf/rt/will", &id)));
        let props = PublishProperties {
            response_topic: Some(rt.to_string()),
            ..Default::default()
        };
        c.send(&Packet::Publish(Publish::new(
            "cf/rt/req",
            QoS::AtLeastOnce,
            Bytes::from_static(b"request"),
            Some(props),
        )));
        c.expect_disconnect(DisconnectReasonCode::ProtocolError);
        let m = watcher.recv();
        assert_eq!(
            (topic_of(&m).as_str(), &m.payload[..]),
            ("cf/rt/will", id.as_bytes()),
            "response topic {rt:?}: expected only the will, got {m:?}"
        );
    }
    watcher.assert_no_publish();
}

// ---- server → client topic aliases ----

/// MQTT 5 §3.3.2.3.4: the server may send a Topic Alias (1..=the client's Topic Alias Maximum,
/// MQTT-3.3.2-9/10) with the topic to define it, then the alias with an empty topic. A client
/// that asked for aliases gets them: the first message on a topic defines one, the next ones
/// carry it alone, and never one above its maximum. A client that did not ask gets none
/// (MQTT-3.3.2-8), nor does a 3.1.1 client.
#[test]
fn topic_aliases_towards_the_client() {
    let s = Server::start();
    let mut plain = Client::subscribed(s.mqtt, V::V5, "cf-al-plain", "cf/al/#", QoS::AtLeastOnce);
    let mut old = Client::subscribed(s.mqtt, V::V311, "cf-al-311", "cf/al/#", QoS::AtLeastOnce);
    let mut aliased = Client::v5_with(s.mqtt, "cf-al", |p| p.topic_alias_max = Some(2));
    aliased.subscribe("cf/al/#", QoS::AtLeastOnce);

    let sent = [
        "cf/al/a", "cf/al/a", "cf/al/b", "cf/al/c", "cf/al/a", "cf/al/b",
    ];
    let mut p = Client::new(s.mqtt, V::V311, "cf-al-pub");
    for (i, t) in sent.iter().enumerate() {
        let qos = if i % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        p.publish(t, qos, format!("{i}").as_bytes());
    }

    // The aliased client resolves aliases as a client must.
    let mut table: HashMap<u16, String> = HashMap::new();
    let mut got = Vec::new();
    for i in 0..sent.len() {
        let m = aliased.recv();
        assert_eq!(&m.payload[..], format!("{i}").as_bytes(), "order: {m:?}");
        let topic = match alias_of(&m) {
            None => topic_of(&m),
            Some(a) => {
                assert!((1..=2).contains(&a), "alias {a} past the maximum 2: {m:?}");
                if m.topic.is_empty() {
                    table
                        .get(&a)
                        .cloned()
                        .unwrap_or_else(|| panic!("alias {a} used before it was defined: {m:?}"))
                } else {
                    table.insert(a, topic_of(&m));
                    topic_of(&m)
                }
            }
        };
        got.push((topic, alias_of(&m), m.topic.is_empty()));
    }
    let topics: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(topics, sent, "topics as resolved: {got:?}");
    assert!(
        got[0].1.is_some() && !got[0].2,
        "first message on a topic defines an alias: {got:?}"
    );
    assert!(
        got[1].1 == got[0].1 && got[1].2,
        "the next one carries the alias alone: {got:?}"
    );

    for c in [&mut plain, &mut old] {
        for t in sent {
            let m = c.recv();
            assert_eq!(topic_of(&m), t);
            assert_eq!(
                alias_of(&m),
                None,
                "alias sent to a client that allowed none"
            );
        }
    }
}

// ---- ending a connection ----

/// MQTT 5 §4.13: the server "SHOULD send a DISCONNECT packet containing the reason code before
/// closing the Network Connection". A client that is still writing when the server ends the
/// connection must still get to read it: the server reads and discards its input for a short
/// while instead of closing with input unread (which resets the connection, so the client's
/// next write fails with a broken pipe before it has read the reason).
#[test]
fn disconnect_reason_reaches_a_client_still_writing() {
    let s = Server::start();
    let mut c = Client::new(s.mqtt, V::V5, "cf-linger");
    // Topic alias 1000 is past the broker's Topic Alias Maximum (32): DISCONNECT 0x94.
    let props = PublishProperties {
        topic_alias: Some(1000),
        ..Default::default()
    };
    let bad = c.encode(&Packet::Publish(Publish::new(
        "cf/linger",
        QoS::AtMostOnce,
        Bytes::from_static(b"x"),
        Some(props),
    )));
    c.try_send_raw(&bad).expect("write the violation");
    // The client goes on with the burst it had queued: 16 MiB of QoS 0 messages, more than the
    // socket buffers hold, so it is still writing when the broker ends the connection.
    let chunk = raw_publish(b"cf/linger", &[b'x'; 16 * 1024], true);
    for i in 0..1024 {
        if let Err(e) = c.try_send_raw(&chunk) {
            panic!("write {i} failed ({e}) before the client could read the DISCONNECT");
        }
    }
    c.expect_disconnect(DisconnectReasonCode::TopicAliasInvalid);
}

// ---- keep-alive ----

/// MQTT 5 §3.2.2.3.14: a server that does not accept the client's keep-alive sends Server Keep
/// Alive, which the client must use (MQTT-3.1.2-21). By default the cap is Mosquitto's, 65,535 s:
/// an MQTT 5 client asking 0 (no keep-alive) is told 65,535, one asking any value keeps it. A
/// 3.1.1 client cannot be told and keeps what it asked, 0 included. A configured cap applies
/// the same way.
#[test]
fn server_keep_alive_default_and_configured_cap() {
    let s = Server::start();
    let c = Client::connect(s.mqtt, V::V5, Opts::new("cf-ka0").keep_alive(0));
    assert_eq!(c.connack_props().server_keep_alive, Some(65535));
    for asked in [1, 60, 65535] {
        let c = Client::connect(s.mqtt, V::V5, Opts::new("cf-ka").keep_alive(asked));
        let k = c.connack_props().server_keep_alive;
        assert!(k.is_none() || k == Some(asked), "keep-alive {asked}: {k:?}");
    }
    let mut c = Client::connect(s.mqtt, V::V311, Opts::new("cf-ka-311").keep_alive(0));
    c.ping();

    let s = Server::builder().env("LIMITS__MAX_KEEPALIVE", 30).start();
    for (asked, told) in [(0, Some(30)), (31, Some(30)), (30, None), (10, None)] {
        let c = Client::connect(s.mqtt, V::V5, Opts::new("cf-ka-cap").keep_alive(asked));
        assert_eq!(
            c.connack_props().server_keep_alive,
            told,
            "keep-alive {asked} with cap 30"
        );
    }
    // 3.1.1 above the cap: accepted as asked.
    let mut c = Client::connect(s.mqtt, V::V311, Opts::new("cf-ka-311").keep_alive(60));
    c.ping();
}

// ---- SUBSCRIBE / UNSUBSCRIBE payloads ----

/// A SUBSCRIBE whose topic filter breaks the filter syntax (empty: MQTT-4.7.3-1; `#` not alone
/// or not last, `+` not a whole level: MQTT-4.7.1-1/2) is malformed, not a filter the server may
/// refuse: MQTT 5 reason 0x8F is for a filter that "is correctly formed but is not allowed".
/// MQTT 5: DISCONNECT 0x81 (a `$share/` filter without share name or inner filter, MQTT-4.8.2-1/2:
/// 0x82); 3.1.1: the connection is closed (MQTT-4.8.0-1), no SUBACK. No SUBACK comes for the
/// good filter sent with it either.
#[test]
fn subscribe_with_a_malformed_filter_closes_the_connection() {
    on_both_versions(|s, v| {
        for (bad, code) in MALFORMED_FILTERS {
            let mut c = Client::new(s.mqtt, v, "cf-sub-bad");
            let pkid = c.pkid();
            c.send(&Packet::Subscribe(Subscribe {
                pkid,
                filters: vec![
                    filter("cf/sub/ok", QoS::AtLeastOnce),
                    filter(bad, QoS::AtLeastOnce),
                ],
                properties: None,
            }));
            c.expect_disconnect(code);
            let what = format!("{v:?} {bad:?}: SUBACK for a malformed SUBSCRIBE");
            c.assert_unread_none(|p| matches!(p, Packet::SubAck(_)), &what);
        }
    });
}

/// A filter that is correctly formed but that the server does not serve (`$` topics other than
/// `$SYS` and `$share`) is refused alone: SUBACK 0x8F (3.1.1: 0x80), the connection and the
/// packet's other filters stay.
#[test]
fn subscribe_with_a_refused_filter_gets_0x8f() {
    on_both_versions(|s, v| {
        let mut c = Client::new(s.mqtt, v, "cf-sub-refused");
        let codes = c.subscribe_with(
            vec![
                filter("$foo/bar", QoS::AtLeastOnce),
                filter("cf/ok", QoS::AtLeastOnce),
            ],
            None,
        );
        let refused = match v {
            V::V5 => SubscribeReasonCode::TopicFilterInvalid,
            V::V311 => SubscribeReasonCode::Failure,
        };
        assert_eq!(
            codes,
            vec![refused, SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        c.ping();
    });
}

/// An UNSUBSCRIBE body: packet id, (MQTT 5) an empty property block, then `filters` as MQTT
/// strings of raw bytes.
fn raw_unsubscribe(v: V, filters: &[&[u8]]) -> Vec<u8> {
    let mut body = vec![0, 7];
    if v == V::V5 {
        body.push(0);
    }
    for f in filters {
        body.extend_from_slice(&(f.len() as u16).to_be_bytes());
        body.extend_from_slice(f);
    }
    frame(0xA2, &body)
}

/// UNSUBSCRIBE payloads the spec rules out. No topic filter: "An UNSUBSCRIBE packet with no
/// Payload is a Protocol Error" (MQTT 5 §3.10.3, MQTT-3.10.3-2; 3.1.1: a protocol violation,
/// close). A filter that is not UTF-8 (MQTT-1.5.4-1 / MQTT-1.5.3-1) or breaks the filter syntax
/// (MQTT-4.7.1-*, MQTT-4.7.3-1): malformed, DISCONNECT 0x81 (3.1.1: close). No UNSUBACK in any
/// case, and the subscription the client held is untouched until the connection ends.
#[test]
fn unsubscribe_with_an_invalid_payload_closes_the_connection() {
    let s = Server::start();
    let cases: [(&[&[u8]], DisconnectReasonCode); 5] = [
        (&[], DisconnectReasonCode::ProtocolError),
        (
            &[b"cf/uns", b"a/#/b"],
            DisconnectReasonCode::MalformedPacket,
        ),
        (&[b"cf/uns", b"a+"], DisconnectReasonCode::MalformedPacket),
        (&[b"cf/uns", b""], DisconnectReasonCode::MalformedPacket),
        (
            &[b"cf/uns", b"\xc3\x28"],
            DisconnectReasonCode::MalformedPacket,
        ),
    ];
    for v in BOTH {
        for (filters, code) in cases {
            let mut c = Client::subscribed(s.mqtt, v, "cf-unsub-bad", "cf/uns", QoS::AtLeastOnce);
            c.send_raw(&raw_unsubscribe(v, filters));
            let d = c.expect_closed(WAIT);
            let what = format!("{v:?} UNSUBSCRIBE {filters:?}");
            match v {
                V::V5 => assert_eq!(d.map(|d| d.reason_code), Some(code), "{what}"),
                V::V311 => assert!(d.is_none(), "{what}"),
            }
            let what = format!("{what}: UNSUBACK for a malformed UNSUBSCRIBE");
            c.assert_unread_none(|p| matches!(p, Packet::UnsubAck(_)), &what);
        }
    }
}

// ---- where the spec leaves a choice (README, "MQTT conformance notes") ----

/// MQTT 5 §3.1.2.4 / 3.1.1 §3.1.2.4 let the server queue QoS 0 messages for an offline session
/// ("MAY"). realtime-web does: a persistent session gets, on resume, the QoS 0 messages
/// published while it was away (bounded by the core's per-filter log).
#[test]
fn note_qos0_messages_for_an_offline_session() {
    on_both_versions(|s, v| {
        let id = format!("cf-q0-{v:?}");
        let o = Opts::new(&id)
            .clean(false)
            .props(|p| p.session_expiry_interval = Some(300));
        let o = if v == V::V5 {
            o
        } else {
            Opts { props: None, ..o }
        };
        let mut c = Client::connect(s.mqtt, v, o.clone());
        c.subscribe("cf/q0", QoS::AtLeastOnce);
        c.disconnect();
        let mut p = Client::new(s.mqtt, V::V311, "cf-q0-pub");
        p.publish("cf/q0", QoS::AtMostOnce, b"while away");
        p.ping();
        let (mut c, ack) = Client::try_connect(s.mqtt, v, o);
        assert!(ack.session_present, "{v:?}: {ack:?}");
        let got = c.next_publish(WAIT).map(|m| (m.qos, m.payload));
        assert_eq!(
            got,
            Some((QoS::AtMostOnce, Bytes::from_static(b"while away"))),
            "{v:?}"
        );
    });
}

/// Shared subscriptions (MQTT 5 §4.8.2): each message goes to one member of the group, round
/// robin; a new shared subscription gets no retained messages; a client that also holds a plain
/// subscription on the same topics gets the plain one's copy as well (two subscriptions, two
/// copies; overlapping plain subscriptions give one copy, `tests/mqtt5.rs`).
#[test]
fn note_shared_subscriptions() {
    let s = Server::start();
    let mut p = Client::new(s.mqtt, V::V5, "cf-sh-pub");
    p.publish_retained("cf/sh/r", QoS::AtLeastOnce, b"retained");
    let mut a = Client::subscribed(
        s.mqtt,
        V::V5,
        "cf-sh-a",
        "$share/g/cf/sh/#",
        QoS::AtLeastOnce,
    );
    let mut b = Client::subscribed(
        s.mqtt,
        V::V5,
        "cf-sh-b",
        "$share/g/cf/sh/#",
        QoS::AtLeastOnce,
    );
    a.assert_no_publish();
    b.assert_no_publish();
    for i in 0..4 {
        p.publish("cf/sh/t", QoS::AtLeastOnce, format!("{i}").as_bytes());
    }
    let (ga, gb) = (a.drain(QUIET), b.drain(QUIET));
    assert_eq!((ga.len(), gb.len()), (2, 2), "a: {ga:?}\nb: {gb:?}");

    let mut both = Client::subscribed(
        s.mqtt,
        V::V5,
        "cf-sh-both",
        "$share/h/cf/sh2/#",
        QoS::AtLeastOnce,
    );
    both.subscribe("cf/sh2/#", QoS::AtLeastOnce);
    p.publish("cf/sh2/t", QoS::AtLeastOnce, b"x");
    // Two subscriptions, two copies: the share group's and the plain subscription's.
    let got = both.drain(QUIET);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|m| &m.payload[..] == b"x"), "{got:?}");
}
