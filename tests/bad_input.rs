//! Bytes no well-behaved client sends: malformed packets, wrong protocol names and levels,
//! oversized packets, invalid topics and filters, protocol violations. Each must end in a clean
//! refusal (CONNACK, SUBACK code, or DISCONNECT with the MQTT 5 reason code, then close; a
//! 3.1.1 client is just disconnected), the process must stay up, and clients connected before
//! and after must keep exchanging messages.

mod common;

use bytes::Bytes;
use common::mqtt::*;
use common::*;

/// Well-behaved clients watching a broker while others misbehave.
struct Bystanders {
    /// MQTT 5 subscriber to `bystander/#`.
    sub: Client,
    /// 3.1.1 subscriber to everything: nothing a misbehaving client sent may reach it.
    all: Client,
    /// 3.1.1 publisher.
    publisher: Client,
    n: usize,
}

impl Bystanders {
    fn new(s: &Server) -> Bystanders {
        let sub = Client::subscribed(
            s.mqtt,
            V::V5,
            "bystander-sub",
            "bystander/#",
            QoS::AtLeastOnce,
        );
        let all = Client::subscribed(s.mqtt, V::V311, "bystander-all", "#", QoS::AtLeastOnce);
        let publisher = Client::new(s.mqtt, V::V311, "bystander-pub");
        Bystanders {
            sub,
            all,
            publisher,
            n: 0,
        }
    }

    /// [`expect_refused`] (client `id` of version `v` sends `bytes`, refused with `code`), then
    /// [`Bystanders::check`] that everyone else carries on after `what` (version added).
    fn refused(
        &mut self,
        s: &mut Server,
        v: V,
        id: &str,
        bytes: &[u8],
        code: DisconnectReasonCode,
        what: &str,
    ) {
        expect_refused(s, v, id, bytes, code);
        self.check(s, &format!("{what} ({v:?})"));
    }

    /// The process is up, the clients from before still work, and a new client works too.
    fn check(&mut self, s: &mut Server, after: &str) {
        assert!(s.alive(), "broker process died after {after}");
        self.n += 1;
        let mut late = Client::new(s.mqtt, V::V5, &format!("bystander-late-{}", self.n));
        late.subscribe("bystander/#", QoS::AtLeastOnce);
        let body = format!("after {after}");
        self.publisher
            .publish("bystander/x", QoS::AtLeastOnce, body.as_bytes());
        for c in [&mut self.sub, &mut self.all, &mut late] {
            let m = c.recv();
            assert_eq!(
                (&m.topic[..], &m.payload[..]),
                (&b"bystander/x"[..], body.as_bytes()),
                "after {after}: unexpected {m:?}"
            );
        }
        late.publish("bystander/y", QoS::AtMostOnce, b"late");
        assert_eq!(&self.sub.recv().payload[..], b"late");
        assert_eq!(&self.all.recv().payload[..], b"late");
        late.disconnect();
    }
}

/// `s`, and bystanders watching it.
fn watched(s: Server) -> (Server, Bystanders) {
    let b = Bystanders::new(&s);
    (s, b)
}

/// Starts a server with bystanders watching it and runs `case` for each protocol version.
fn each_version_watched(mut case: impl FnMut(&mut Server, &mut Bystanders, V)) {
    let (mut s, mut b) = watched(Server::start());
    for v in BOTH {
        case(&mut s, &mut b, v);
    }
}

fn connected(s: &Server, v: V, id: &str) -> Client {
    Client::new(s.mqtt, v, id)
}

/// Sends `bytes` on an established connection and expects the MQTT 5 reason `code` (3.1.1: a
/// plain close).
fn expect_refused(s: &Server, v: V, id: &str, bytes: &[u8], code: DisconnectReasonCode) {
    let mut c = connected(s, v, id);
    c.send_raw(bytes);
    c.expect_disconnect(code);
}

// ---- framing ----

#[test]
fn garbage_after_connect() {
    let (mut s, mut b) = watched(Server::start());
    let garbage: [(&str, &[u8]); 3] = [
        ("reserved packet type 0", &[0x00, 0x02, 0xde, 0xad]),
        ("packet type 15 with flags", &[0xff, 0x03, 0x01, 0x02, 0x03]),
        ("text", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ];
    for v in BOTH {
        for (what, bytes) in garbage {
            // In its own write, after CONNACK.
            b.refused(
                &mut s,
                v,
                "garbage",
                bytes,
                DisconnectReasonCode::MalformedPacket,
                what,
            );

            // In the same write as CONNECT.
            let mut c = Client::tcp(s.mqtt, v);
            let mut out = c.encode(&Packet::Connect(
                Connect {
                    keep_alive: 60,
                    client_id: "garbage-pipelined".into(),
                    clean_start: true,
                    properties: None,
                },
                None,
                None,
            ));
            out.extend_from_slice(bytes);
            c.send_raw(&out);
            c.expect(
                WAIT,
                |p| matches!(p, Packet::ConnAck(a) if a.code == ConnectReturnCode::Success),
            );
            c.expect_disconnect(DisconnectReasonCode::MalformedPacket);
            b.check(&mut s, &format!("{what} behind CONNECT ({v:?})"));
        }
    }
}

#[test]
fn bad_remaining_length() {
    let (mut s, mut b) = watched(Server::start());
    for v in BOTH {
        // Five length bytes: the encoding allows four.
        b.refused(
            &mut s,
            v,
            "badlen",
            &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00],
            DisconnectReasonCode::MalformedPacket,
            "5-byte remaining length",
        );

        // A remaining length shorter than the topic length inside it.
        b.refused(
            &mut s,
            v,
            "badlen",
            &[0x30, 0x03, 0x00, 0x0a, b'a'],
            DisconnectReasonCode::MalformedPacket,
            "topic crossing the packet end",
        );

        // A SUBSCRIBE too short for its packet identifier.
        b.refused(
            &mut s,
            v,
            "badlen",
            &[0x82, 0x01, 0x00],
            DisconnectReasonCode::MalformedPacket,
            "truncated SUBSCRIBE",
        );
    }
    // As the very first packet: no CONNACK (the version is unknown), just a close.
    let mut c = Client::tcp(s.mqtt, V::V311);
    c.send_raw(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert_eq!(c.read_to_close(WAIT), Vec::<u8>::new());
    b.check(&mut s, "bad remaining length in CONNECT");
}

#[test]
fn packet_before_connect() {
    let (mut s, mut b) = watched(Server::start());
    for (what, bytes) in [
        ("PUBLISH", raw_publish(b"bystander/x", b"sneaky", false)),
        ("SUBSCRIBE", frame(0x82, &[0, 1, 0, 1, b'#', 0])),
        ("PINGREQ", vec![0xc0, 0x00]),
    ] {
        let mut c = Client::tcp(s.mqtt, V::V311);
        c.send_raw(&bytes);
        assert_eq!(c.read_to_close(WAIT), Vec::<u8>::new(), "{what} first");
        b.check(&mut s, &format!("{what} before CONNECT"));
    }
}

// ---- CONNECT ----

/// A CONNECT with protocol `name` and `level` gets the 3.1.1 refusal CONNACK 0x01 (unacceptable
/// protocol version), then the close.
fn expect_version_refused(s: &Server, name: &str, level: u8, id: &str) {
    let mut c = Client::tcp(s.mqtt, V::V311);
    c.send_raw(&raw_connect(name, level, id));
    let answer = c.read_to_close(WAIT);
    assert_eq!(
        answer,
        [0x20, 0x02, 0x00, 0x01],
        "protocol {name:?} level {level}"
    );
}

#[test]
fn wrong_protocol_name() {
    let (mut s, mut b) = watched(Server::start());
    // Level 5: an MQTT 5 CONNACK 0x84 (Unsupported Protocol Version).
    let mut c = Client::tcp(s.mqtt, V::V5);
    c.send_raw(&raw_connect("MQTX", 5, "badname"));
    match c.expect(WAIT, |p| matches!(p, Packet::ConnAck(_))) {
        Packet::ConnAck(a) => assert_eq!(a.code, ConnectReturnCode::UnsupportedProtocolVersion),
        _ => unreachable!(),
    }
    c.expect_closed(WAIT);
    b.check(&mut s, "protocol name MQTX level 5");
    // Otherwise the 3.1.1 refusal: 0x01 (unacceptable protocol version).
    for (name, level) in [("MQTX", 4), ("MQIsdp", 3), ("mqtt", 4), ("", 4)] {
        expect_version_refused(&s, name, level, "badname");
        b.check(&mut s, &format!("protocol name {name:?}"));
    }
}

#[test]
fn wrong_protocol_level() {
    let (mut s, mut b) = watched(Server::start());
    for level in [0u8, 3, 6, 255] {
        expect_version_refused(&s, "MQTT", level, "badlevel");
        b.check(&mut s, &format!("protocol level {level}"));
    }
}

#[test]
fn second_connect() {
    each_version_watched(|s, b, v| {
        let mut c = connected(s, v, "twice");
        let again = c.encode(&Packet::Connect(
            Connect {
                keep_alive: 60,
                client_id: "twice".into(),
                clean_start: true,
                properties: None,
            },
            None,
            None,
        ));
        c.send_raw(&again);
        c.expect_disconnect(DisconnectReasonCode::ProtocolError);
        b.check(s, &format!("second CONNECT ({v:?})"));
    });
}

// ---- size ----

#[test]
fn packet_over_maximum_size() {
    let (mut s, mut b) = watched(
        Server::builder()
            .env("LIMITS__MAX_PACKET_SIZE", 1000)
            .start(),
    );
    for v in BOTH {
        let mut c = connected(&s, v, "big");
        c.send(&Packet::Publish(Publish::new(
            "bystander/big",
            QoS::AtLeastOnce,
            Bytes::from(vec![b'x'; 1100]),
            None,
        )));
        c.expect_disconnect(DisconnectReasonCode::PacketTooLarge);
        b.check(&mut s, &format!("1100-byte PUBLISH ({v:?})"));

        // Refused on the fixed header alone: the broker does not wait for a megabyte.
        let mut c = connected(&s, v, "big");
        c.send_raw(&[0x30, 0x80, 0x80, 0x40, 0x00, 0x01, b'a']);
        c.expect_disconnect(DisconnectReasonCode::PacketTooLarge);
        b.check(&mut s, &format!("1 MB announced ({v:?})"));

        // Any packet type.
        let mut c = connected(&s, v, "big");
        let filters = (0..200)
            .map(|i| filter(&format!("many/{i}"), QoS::AtMostOnce))
            .collect();
        c.send(&Packet::Subscribe(Subscribe {
            pkid: 1,
            filters,
            properties: None,
        }));
        c.expect_disconnect(DisconnectReasonCode::PacketTooLarge);
        b.check(&mut s, &format!("large SUBSCRIBE ({v:?})"));
    }
    // An oversized CONNECT is refused: MQTT 5 with CONNACK 0x95, 3.1.1 by closing.
    for v in BOTH {
        let mut c = Client::tcp(s.mqtt, v);
        c.send(&Packet::Connect(
            Connect {
                keep_alive: 60,
                client_id: "c".repeat(2000),
                clean_start: true,
                properties: None,
            },
            None,
            None,
        ));
        let reply = c.read_to_close(WAIT);
        match v {
            V::V5 => assert_eq!(&reply[..4], &[0x20, 0x03, 0x00, 0x95], "{reply:?}"),
            V::V311 => assert_eq!(reply, Vec::<u8>::new()),
        }
        b.check(&mut s, &format!("oversized CONNECT ({v:?})"));
    }
}

// ---- topics ----

#[test]
fn wildcards_in_publish_topic() {
    each_version_watched(|s, b, v| {
        for t in ["bystander/+", "bystander/#", "+", "#", "bystander/a+b"] {
            b.refused(
                s,
                v,
                "wild",
                &raw_publish(t.as_bytes(), b"wild", v == V::V5),
                DisconnectReasonCode::TopicNameInvalid,
                &format!("PUBLISH to {t:?}"),
            );
        }
    });
}

#[test]
fn nul_in_publish_topic() {
    each_version_watched(|s, b, v| {
        // MQTT 5 §1.5.4: U+0000 in a UTF-8 string makes the packet malformed.
        b.refused(
            s,
            v,
            "nul",
            &raw_publish(b"bystander/a\0b", b"nul", v == V::V5),
            DisconnectReasonCode::MalformedPacket,
            "U+0000 in topic",
        );
    });
}

#[test]
fn invalid_utf8_in_topic() {
    each_version_watched(|s, b, v| {
        for (what, t) in [
            ("0xff", &b"bystander/\xff"[..]),
            ("overlong NUL", &b"bystander/\xc0\x80"[..]),
            ("surrogate", &b"bystander/\xed\xa0\x80"[..]),
            ("truncated sequence", &b"bystander/\xe2\x82"[..]),
        ] {
            b.refused(
                s,
                v,
                "utf8",
                &raw_publish(t, b"bad", v == V::V5),
                DisconnectReasonCode::MalformedPacket,
                &format!("{what} in topic"),
            );
        }
    });
}

#[test]
fn empty_topic_without_alias() {
    // 3.1.1: a zero-length topic name is not allowed. MQTT 5: allowed only with a topic alias
    // (§3.3.2.1). Either way a protocol error.
    each_version_watched(|s, b, v| {
        let empty = raw_publish(b"", b"x", v == V::V5);
        let code = DisconnectReasonCode::ProtocolError;
        b.refused(s, v, "empty", &empty, code, "empty topic");
    });
}

/// A SUBSCRIBE with a filter that breaks the filter syntax is malformed (MQTT-4.7.1-1/2,
/// MQTT-4.7.3-1; a bad `$share/` filter, MQTT-4.8.2-1/2, a protocol error): the connection ends
/// (MQTT 5: DISCONNECT 0x81 / 0x82; 3.1.1: closed), nothing is subscribed, and everyone else
/// carries on. A well-formed filter the broker does not serve gets SUBACK 0x8F (3.1.1: 0x80)
/// with the connection kept (`tests/conformance.rs`).
#[test]
fn invalid_subscribe_filters() {
    each_version_watched(|s, b, v| {
        for (bad, code) in MALFORMED_FILTERS {
            let mut c = connected(s, v, "badfilter");
            let pkid = c.pkid();
            c.send(&Packet::Subscribe(Subscribe {
                pkid,
                filters: vec![
                    filter(bad, QoS::AtLeastOnce),
                    filter("bystander/ok", QoS::AtLeastOnce),
                ],
                properties: None,
            }));
            c.expect_disconnect(code);
        }
        // The watchers carry on.
        b.publisher.publish("bystander/ok", QoS::AtLeastOnce, b"ok");
        for watcher in [&mut b.sub, &mut b.all] {
            assert_eq!(&watcher.recv().payload[..], b"ok");
        }
        b.check(s, &format!("invalid filters ({v:?})"));
    });
}

// ---- other malformed packets ----

#[test]
fn malformed_fields() {
    use DisconnectReasonCode::{MalformedPacket as Malformed, ProtocolError};
    let (mut s, mut b) = watched(Server::start());
    for v in BOTH {
        let props = if v == V::V5 { &[0u8][..] } else { &[][..] };
        // A packet of type and flags `first`: `head`, the property block (MQTT 5), `tail`.
        let packet =
            |first: u8, head: &[u8], tail: &[u8]| frame(first, &[head, props, tail].concat());
        // 3.1.1 CONNACK has no property block.
        let connack = if v == V::V5 {
            vec![0x20, 0x03, 0x00, 0x00, 0x00]
        } else {
            vec![0x20, 0x02, 0x00, 0x00]
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<u8>, DisconnectReasonCode)> = vec![
            ("PUBLISH with QoS 3", packet(0x36, &[0, 1, b'a', 0, 1], b"x"), Malformed),
            ("QoS 1 PUBLISH with packet id 0", packet(0x32, &[0, 1, b'a', 0, 0], b"x"), Malformed),
            ("SUBSCRIBE with reserved flags 0", packet(0x80, &[0, 1], &[0, 1, b'a', 0]), Malformed),
            ("SUBSCRIBE without filters", packet(0x82, &[0, 1], &[]), ProtocolError),
            ("SUBSCRIBE with QoS 3", packet(0x82, &[0, 1], &[0, 1, b'a', 3]), Malformed),
            ("UNSUBSCRIBE without filters", packet(0xa2, &[0, 1], &[]), ProtocolError),
            ("CONNACK from a client", connack, ProtocolError),
            ("SUBACK from a client", packet(0x90, &[0, 1], &[0]), ProtocolError),
        ];
        for (what, bytes, code) in cases {
            b.refused(&mut s, v, "malformed", &bytes, code, what);
        }
    }
    // MQTT 5 only: property blocks.
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<u8>, DisconnectReasonCode)> = vec![
        ("unknown property id", frame(0x30, &[0, 1, b'a', 2, 0x7f, 0, b'x']), Malformed),
        ("property length past the packet end", frame(0x30, &[0, 1, b'a', 50, 0x01, 1]), Malformed),
        ("subscription options with retain handling 3", frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x30]), Malformed),
        ("subscription identifier 0", frame(0x82, &[0, 1, 2, 0x0b, 0, 0, 1, b'a', 0]), ProtocolError),
        ("DISCONNECT with an unknown reason code", vec![0xe0, 0x01, 0x03], Malformed),
    ];
    for (what, bytes, code) in cases {
        expect_refused(&s, V::V5, "malformed5", &bytes, code);
        b.check(&mut s, what);
    }
}
