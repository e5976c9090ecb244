//! MQTT 5 features a client may rely on (subscription options and identifiers, properties, the
//! limits the broker announces), and the subscription semantics shared with 3.1.1, checked
//! through real sockets against the real binary with the raw client ([`common::mqtt`]) that sees
//! every reason code and property the broker sends. Sessions, expiry and wills are in
//! `mqtt5_sessions.rs`.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::mqtt::*;
use common::*;

// ---- subscriptions ----

#[test]
fn subscription_identifiers() {
    let s = Server::start();
    let mut c = v5(&s, "si-sub");
    assert_eq!(
        c.subscribe_with(vec![filter("si/+", QoS::AtLeastOnce)], Some(7)),
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    c.subscribe_with(vec![filter("si/a", QoS::AtLeastOnce)], Some(300));
    c.subscribe("si/#", QoS::AtLeastOnce);
    let mut p = v5(&s, "si-pub");

    // One copy for three matching subscriptions, carrying both identifiers.
    p.publish("si/a", QoS::AtLeastOnce, b"a");
    let got = recv_msg(&mut c, "si/a", "a");
    assert_eq!(sub_ids(&got), vec![7, 300]);
    p.publish("si/b", QoS::AtLeastOnce, b"b");
    let got = recv_msg(&mut c, "si/b", "b");
    assert_eq!(sub_ids(&got), vec![7]);
    p.publish("si/b/c", QoS::AtLeastOnce, b"c");
    let got = recv_msg(&mut c, "si/b/c", "c");
    assert_eq!(sub_ids(&got), Vec::<usize>::new());
    c.assert_no_publish();

    // Retained messages sent on subscribe carry the new subscription's identifier.
    p.publish_retained("si2/r", QoS::AtLeastOnce, b"r");
    c.subscribe_with(vec![filter("si2/#", QoS::AtLeastOnce)], Some(42));
    let got = recv_msg(&mut c, "si2/r", "r");
    assert_eq!(sub_ids(&got), vec![42]);

    // Subscribing again without an identifier removes it.
    c.subscribe("si/+", QoS::AtLeastOnce);
    p.publish("si/b", QoS::AtLeastOnce, b"b2");
    let got = recv_msg(&mut c, "si/b", "b2");
    assert_eq!(sub_ids(&got), Vec::<usize>::new());
}

#[test]
fn no_local() {
    let s = Server::start();
    let mut c = v5_subscribed_with(&s, "nl-self", "nl/t", QoS::AtLeastOnce, |f| {
        f.nolocal = true
    });
    c.subscribe("nl/marker", QoS::AtLeastOnce);
    c.publish("nl/t", QoS::AtLeastOnce, b"mine");
    c.publish("nl/marker", QoS::AtLeastOnce, b"m1");
    recv_msg(&mut c, "nl/marker", "m1");

    let mut o = v5(&s, "nl-other");
    relay(&mut o, &mut c, "nl/t", "theirs");

    // A second, overlapping subscription without no-local delivers own messages once.
    c.subscribe("nl/#", QoS::AtLeastOnce);
    c.publish("nl/t", QoS::AtLeastOnce, b"mine2");
    recv_msg(&mut c, "nl/t", "mine2");
    relay(&mut o, &mut c, "nl/t", "theirs2");
    c.assert_no_publish();
}

#[test]
fn retain_as_published() {
    let s = Server::start();
    let mut rap = v5_subscribed_with(&s, "rap-yes", "rap/t", QoS::AtLeastOnce, |f| {
        f.preserve_retain = true
    });
    let mut plain = v5_subscribed(&s, "rap-no", "rap/t", QoS::AtLeastOnce);

    let mut p = v5(&s, "rap-pub");
    p.publish_retained("rap/t", QoS::AtLeastOnce, b"live");
    assert!(
        recv_msg(&mut rap, "rap/t", "live").retain,
        "RAP keeps retain"
    );
    assert!(
        !recv_msg(&mut plain, "rap/t", "live").retain,
        "no RAP clears it"
    );
    p.publish("rap/t", QoS::AtLeastOnce, b"plain");
    assert!(!recv_msg(&mut rap, "rap/t", "plain").retain);

    // Retained messages sent because of a subscribe always have the flag.
    let mut late = v5_subscribed(&s, "rap-late", "rap/#", QoS::AtLeastOnce);
    assert!(recv_msg(&mut late, "rap/t", "live").retain);
}

#[test]
fn retain_handling() {
    let s = Server::start();
    let mut p = v5(&s, "rh-pub");
    p.publish_retained("rh/x", QoS::AtLeastOnce, b"kept");
    let sub = |c: &mut Client, rule: RetainForwardRule| {
        let mut f = filter("rh/#", QoS::AtLeastOnce);
        f.retain_forward_rule = rule;
        assert_eq!(
            c.subscribe_with(vec![f], None),
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        c.ping();
    };

    // 0: on every subscribe.
    let mut c = v5(&s, "rh-0");
    sub(&mut c, RetainForwardRule::OnEverySubscribe);
    recv_msg(&mut c, "rh/x", "kept");
    sub(&mut c, RetainForwardRule::OnEverySubscribe);
    recv_msg(&mut c, "rh/x", "kept");

    // 1: only when the subscription is new.
    let mut c = v5(&s, "rh-1");
    sub(&mut c, RetainForwardRule::OnNewSubscribe);
    recv_msg(&mut c, "rh/x", "kept");
    sub(&mut c, RetainForwardRule::OnNewSubscribe);
    c.assert_no_publish();

    // 2: never, but live messages still flow.
    let mut c = v5(&s, "rh-2");
    sub(&mut c, RetainForwardRule::Never);
    c.assert_no_publish();
    relay(&mut p, &mut c, "rh/x", "live");
}

// ---- properties ----

#[test]
fn payload_format_indicator() {
    let (_s, mut c, mut p) = v5_pair("pfi-sub", "pfi/#", QoS::AtLeastOnce, "pfi-pub");
    let utf8 = |body: &[u8], qos| {
        Publish::new(
            "pfi/t",
            qos,
            Bytes::copy_from_slice(body),
            Some(PublishProperties {
                payload_format_indicator: Some(1),
                ..Default::default()
            }),
        )
    };
    assert_eq!(
        p.publish_msg(utf8(&[0x66, 0xff, 0xfe], QoS::AtLeastOnce)),
        0x99
    );
    assert_eq!(p.publish_msg(utf8(&[0xc3, 0x28], QoS::ExactlyOnce)), 0x99);
    assert_eq!(p.publish_msg(utf8("héllo".as_bytes(), QoS::AtLeastOnce)), 0);
    let got = recv_msg(&mut c, "pfi/t", "héllo");
    assert_eq!(got.properties.unwrap().payload_format_indicator, Some(1));
    // Indicator 0 (unspecified bytes) accepts anything.
    let mut raw = utf8(&[0xff], QoS::AtLeastOnce);
    raw.properties.as_mut().unwrap().payload_format_indicator = Some(0);
    assert_eq!(p.publish_msg(raw), 0);
    assert_eq!(&c.recv().payload[..], &[0xff]);
    c.assert_no_publish();
}

#[test]
fn user_properties_round_trip() {
    let (_s, mut c, mut p) = v5_pair("up-sub", "up/#", QoS::ExactlyOnce, "up-pub");
    let props = vec![
        ("a".to_string(), "1".to_string()),
        ("b".to_string(), "two words".to_string()),
        ("a".to_string(), "3".to_string()),
        ("ünï".to_string(), "cödé".to_string()),
    ];
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        p.publish_props(
            "up/t",
            qos,
            b"x",
            PublishProperties {
                user_properties: props.clone(),
                content_type: Some("text/plain".into()),
                ..Default::default()
            },
        );
        let got = recv_msg(&mut c, "up/t", "x");
        assert_eq!(got.qos, qos);
        assert_eq!(user_props(&got), props, "user properties, in order");
        assert_eq!(
            got.properties.unwrap().content_type.as_deref(),
            Some("text/plain")
        );
    }
    // Without properties none appear (the broker's internal stamp is removed).
    p.publish("up/t", QoS::AtLeastOnce, b"bare");
    let got = recv_msg(&mut c, "up/t", "bare");
    assert_eq!(user_props(&got), vec![], "no internal properties leak");
}

#[test]
fn request_response() {
    let s = Server::start();
    let mut responder = v5_subscribed(&s, "rr-responder", "rr/req", QoS::AtLeastOnce);
    let mut requester = v5_subscribed(&s, "rr-requester", "rr/resp/requester", QoS::AtLeastOnce);
    let corr = Bytes::from_static(&[0, 1, 2, 0xff, 0xfe]);
    requester.publish_props(
        "rr/req",
        QoS::AtLeastOnce,
        b"ping",
        PublishProperties {
            response_topic: Some("rr/resp/requester".into()),
            correlation_data: Some(corr.clone()),
            ..Default::default()
        },
    );
    let req = recv_msg(&mut responder, "rr/req", "ping");
    let props = req.properties.expect("request properties");
    assert_eq!(props.response_topic.as_deref(), Some("rr/resp/requester"));
    assert_eq!(props.correlation_data.as_ref(), Some(&corr));
    responder.publish_props(
        props.response_topic.as_deref().unwrap(),
        QoS::AtLeastOnce,
        b"pong",
        PublishProperties {
            correlation_data: props.correlation_data,
            ..Default::default()
        },
    );
    let resp = recv_msg(&mut requester, "rr/resp/requester", "pong");
    assert_eq!(resp.properties.unwrap().correlation_data, Some(corr));

    // A 3.1.1 subscriber gets the same message without the properties.
    let mut old = Client::subscribed(s.mqtt, V::V311, "rr-old", "rr/req", QoS::AtLeastOnce);
    requester.publish_props(
        "rr/req",
        QoS::AtLeastOnce,
        b"ping2",
        PublishProperties {
            response_topic: Some("rr/resp/requester".into()),
            ..Default::default()
        },
    );
    recv_msg(&mut old, "rr/req", "ping2");
}

#[test]
fn assigned_client_identifier() {
    let s = Server::start();
    let mut a = v5(&s, "");
    let mut b = v5(&s, "");
    let ia = a
        .connack_props()
        .assigned_client_identifier
        .expect("assigned id");
    let ib = b
        .connack_props()
        .assigned_client_identifier
        .expect("assigned id");
    assert!(!ia.is_empty() && ia != ib, "{ia} vs {ib}");
    // The assigned id is the session's identity: no-local works with it.
    let mut f = filter("aci/t", QoS::AtLeastOnce);
    f.nolocal = true;
    a.subscribe_with(vec![f], None);
    a.publish("aci/t", QoS::AtLeastOnce, b"mine");
    relay(&mut b, &mut a, "aci/t", "theirs");

    // A named client is not assigned one.
    let c = v5(&s, "aci-named");
    assert_eq!(c.connack_props().assigned_client_identifier, None);
    // 3.1.1: an empty id is fine with a clean session, refused (0x02) without.
    Client::new(s.mqtt, V::V311, "");
    let (_c, ack) = Client::try_connect(s.mqtt, V::V311, Opts::new("").clean(false));
    assert_eq!(ack.code, ConnectReturnCode::BadClientId);
}

// ---- limits the broker announces ----

#[test]
fn server_keep_alive() {
    let s = Server::builder().env("LIMITS__MAX_KEEPALIVE", 5).start();
    for asked in [60, 0] {
        let c = Client::connect(s.mqtt, V::V5, Opts::new("ska").keep_alive(asked));
        assert_eq!(
            c.connack_props().server_keep_alive,
            Some(5),
            "keep-alive {asked}"
        );
    }
    let c = Client::connect(s.mqtt, V::V5, Opts::new("ska").keep_alive(3));
    let k = c.connack_props().server_keep_alive;
    assert!(k.is_none() || k == Some(3), "keep-alive 3 answered {k:?}");
}

#[test]
fn server_keep_alive_is_enforced() {
    let s = Server::builder().env("LIMITS__MAX_KEEPALIVE", 1).start();
    let mut c = Client::connect(s.mqtt, V::V5, Opts::new("ska-quiet").keep_alive(60));
    assert_eq!(c.connack_props().server_keep_alive, Some(1));
    let t = Instant::now();
    c.expect_disconnect(DisconnectReasonCode::KeepAliveTimeout);
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "closed too early: {:?}",
        t.elapsed()
    );
}

#[test]
fn receive_maximum_limits_messages_in_flight_to_client() {
    let s = Server::start();
    let mut c = Client::v5_with(s.mqtt, "rm-sub", |p| p.receive_maximum = Some(2));
    c.auto_ack = false;
    c.subscribe("rm/t", QoS::AtLeastOnce);
    let mut p = v5(&s, "rm-pub");
    for i in 0..6 {
        p.publish("rm/t", QoS::AtLeastOnce, format!("m{i}").as_bytes());
    }
    let mut first = vec![c.recv(), c.recv()];
    first.extend(c.next_publish(QUIET));
    let names: Vec<String> = first.iter().map(payload).collect();
    assert_eq!(
        names,
        ["m0", "m1"],
        "only receive-maximum messages in flight"
    );

    // Acking one opens room for exactly one more.
    c.send(&Packet::PubAck(PubAck::new(first[0].pkid, None)));
    let mut more = vec![c.recv()];
    more.extend(c.next_publish(QUIET));
    assert_eq!(more.iter().map(payload).collect::<Vec<_>>(), ["m2"]);
    // Acking everything delivers the rest, in order.
    c.auto_ack = true;
    for m in first[1..].iter().chain(&more) {
        c.send(&Packet::PubAck(PubAck::new(m.pkid, None)));
    }
    let mut rest = Vec::new();
    let deadline = Instant::now() + WAIT;
    while rest.len() < 3 && Instant::now() < deadline {
        rest.extend(
            c.next_publish(Duration::from_millis(200))
                .map(|m| payload(&m)),
        );
    }
    assert_eq!(rest, ["m3", "m4", "m5"]);
}

#[test]
fn receive_maximum_exceeded_by_client() {
    let s = Server::builder().env("LIMITS__MAX_INFLIGHT", 2).start();
    let mut c = v5(&s, "rm-greedy");
    assert_eq!(c.connack_props().receive_max, Some(2));
    // QoS 2 messages stay in flight until PUBREL/PUBCOMP: send none.
    for pkid in 1..=2 {
        c.send(&Packet::Publish(Publish {
            pkid,
            ..Publish::new("rm/x", QoS::ExactlyOnce, Bytes::from_static(b"x"), None)
        }));
        c.expect(WAIT, |p| matches!(p, Packet::PubRec(r) if r.pkid == pkid));
    }
    c.send(&Packet::Publish(Publish {
        pkid: 3,
        ..Publish::new("rm/x", QoS::ExactlyOnce, Bytes::from_static(b"x"), None)
    }));
    c.expect_disconnect(DisconnectReasonCode::ReceiveMaximumExceeded);

    // QoS 1: three PUBLISHes in one write, before the first PUBACK can come back.
    let mut c = v5(&s, "rm-burst");
    let mut burst = Vec::new();
    for pkid in 1..=3 {
        burst.extend(c.encode(&Packet::Publish(Publish {
            pkid,
            ..Publish::new("rm/x", QoS::AtLeastOnce, Bytes::from_static(b"x"), None)
        })));
    }
    c.send_raw(&burst);
    c.expect_disconnect(DisconnectReasonCode::ReceiveMaximumExceeded);

    // Completing each exchange keeps a client within the limit indefinitely.
    let mut ok = v5(&s, "rm-polite");
    for i in 0..5 {
        ok.publish("rm/x", QoS::ExactlyOnce, format!("{i}").as_bytes());
    }
    ok.ping();
}

#[test]
fn maximum_packet_size_towards_client() {
    let s = Server::start();
    let mut c = Client::v5_with(s.mqtt, "mps-small", |p| p.max_packet_size = Some(100));
    c.subscribe("mps/#", QoS::ExactlyOnce);
    let mut p = v5(&s, "mps-pub");
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        p.publish("mps/t", qos, &[b'x'; 150]);
        p.publish("mps/t", qos, b"small");
        let got = recv_msg(&mut c, "mps/t", "small");
        assert_eq!(got.qos, qos);
    }
    // A message that fits only without its user properties is still skipped.
    p.publish_props(
        "mps/t",
        QoS::AtLeastOnce,
        b"short",
        PublishProperties {
            user_properties: vec![("k".into(), "v".repeat(100))],
            ..Default::default()
        },
    );
    relay(&mut p, &mut c, "mps/t", "last");
    c.assert_no_publish();
}

#[test]
fn maximum_packet_size_from_client() {
    let s = Server::builder()
        .env("LIMITS__MAX_PACKET_SIZE", 1000)
        .start();
    let mut sub = v5_subscribed(&s, "mps-sub", "mps/#", QoS::AtLeastOnce);
    let mut c = v5(&s, "mps-big");
    assert_eq!(c.connack_props().max_packet_size, Some(1000));
    // The limit is on the whole packet, header included: exactly 1000 bytes pass.
    let sized = |total: usize| {
        let mut p = Publish::new("mps/t", QoS::AtLeastOnce, Bytes::new(), None);
        p.pkid = 1;
        let n = (0..total)
            .find(|&n| {
                p.payload = Bytes::from(vec![b'a'; n]);
                Packet::Publish(p.clone()).size() >= total
            })
            .unwrap();
        assert_eq!(Packet::Publish(p.clone()).size(), total);
        assert!(n > 900);
        p
    };
    assert_eq!(c.publish_msg(sized(1000)), 0);
    assert!(sub.recv().payload.len() > 900);
    c.send(&Packet::Publish(sized(1001)));
    c.expect_disconnect(DisconnectReasonCode::PacketTooLarge);
    sub.assert_no_publish();
}

#[test]
fn topic_alias_from_client() {
    let (s, mut sub, mut c) = v5_pair("ta-sub", "ta/#", QoS::AtLeastOnce, "ta-pub");
    let max = c
        .connack_props()
        .topic_alias_max
        .expect("topic alias maximum");
    assert!(max >= 1);
    let aliased = |t: &str, alias: u16, body: &'static [u8]| {
        Publish::new(
            t,
            QoS::AtLeastOnce,
            Bytes::from_static(body),
            Some(PublishProperties {
                topic_alias: Some(alias),
                ..Default::default()
            }),
        )
    };
    assert_eq!(c.publish_msg(aliased("ta/x", 1, b"set")), 0);
    assert_eq!(c.publish_msg(aliased("", 1, b"used")), 0);
    assert_eq!(c.publish_msg(aliased("ta/y", max, b"set max")), 0);
    assert_eq!(c.publish_msg(aliased("ta/z", 1, b"remapped")), 0);
    assert_eq!(c.publish_msg(aliased("", 1, b"used again")), 0);
    assert_eq!(c.publish_msg(aliased("", max, b"max used")), 0);
    for (t, body) in [
        ("ta/x", "set"),
        ("ta/x", "used"),
        ("ta/y", "set max"),
        ("ta/z", "remapped"),
        ("ta/z", "used again"),
        ("ta/y", "max used"),
    ] {
        let got = recv_msg(&mut sub, t, body);
        assert_eq!(got.properties.and_then(|p| p.topic_alias), None);
    }

    // Past the maximum: DISCONNECT 0x94.
    c.send(&Packet::Publish(aliased("ta/x", max + 1, b"too far")));
    c.expect_disconnect(DisconnectReasonCode::TopicAliasInvalid);
    // Alias 0 is never valid.
    let mut c = v5(&s, "ta-zero");
    c.send(&Packet::Publish(aliased("ta/x", 0, b"zero")));
    c.expect_disconnect(DisconnectReasonCode::TopicAliasInvalid);
    // An alias never set, with an empty topic: protocol error.
    let mut c = v5(&s, "ta-unknown");
    c.send(&Packet::Publish(aliased("", 2, b"unknown")));
    c.expect_disconnect(DisconnectReasonCode::ProtocolError);
    sub.assert_no_publish();
}

#[test]
fn topic_aliases_disabled() {
    let s = Server::builder().env("LIMITS__TOPIC_ALIAS_MAX", 0).start();
    let mut c = v5(&s, "ta-none");
    let max = c.connack_props().topic_alias_max;
    assert!(max.is_none() || max == Some(0), "{max:?}");
    c.send(&Packet::Publish(Publish::new(
        "ta/x",
        QoS::AtMostOnce,
        Bytes::from_static(b"x"),
        Some(PublishProperties {
            topic_alias: Some(1),
            ..Default::default()
        }),
    )));
    c.expect_disconnect(DisconnectReasonCode::TopicAliasInvalid);
}

// ---- both protocol versions ----

#[test]
fn overlapping_subscriptions_deliver_once_at_max_qos() {
    on_both_versions(|s, v| {
        let mut c = Client::subscribed_to(
            s.mqtt,
            v,
            &format!("ov-sub-{v:?}"),
            &[("ov/#", QoS::ExactlyOnce), ("ov/+", QoS::AtLeastOnce)],
        );
        c.subscribe("ov/x", QoS::AtMostOnce);
        c.subscribe("low/#", QoS::AtMostOnce);
        c.subscribe("low/x", QoS::AtLeastOnce);
        let mut p = Client::new(s.mqtt, v, &format!("ov-pub-{v:?}"));
        for qos in [QoS::ExactlyOnce, QoS::AtLeastOnce, QoS::AtMostOnce] {
            p.publish("ov/x", qos, b"ov");
            let got = recv_msg(&mut c, "ov/x", "ov");
            assert_eq!(got.qos, qos, "{v:?}: min(publish, max granted)");
            p.publish("low/x", qos, b"low");
            let got = recv_msg(&mut c, "low/x", "low");
            let want = if qos == QoS::AtMostOnce {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            assert_eq!(got.qos, want, "{v:?}: publish {qos:?} on low/x");
        }
        let extra = c.drain(QUIET);
        assert!(extra.is_empty(), "{v:?}: duplicate copies {extra:?}");
    });
}

#[test]
fn dollar_topics_not_matched_by_wildcards() {
    let s = Server::builder().env("SYS__INTERVAL_SECS", 1).start();
    for v in BOTH {
        let mut all = Client::subscribed_to(
            s.mqtt,
            v,
            &format!("dollar-all-{v:?}"),
            &[("#", QoS::AtMostOnce), ("+/broker/#", QoS::AtMostOnce)],
        );
        all.subscribe("+/+/+", QoS::AtMostOnce);
        let mut sys = Client::new(s.mqtt, v, &format!("dollar-sys-{v:?}"));
        sys.subscribe("$SYS/#", QoS::AtMostOnce);
        let got = sys.recv();
        assert!(topic(&got).starts_with("$SYS/"), "{got:?}");
        // Updates keep coming to $SYS/# (interval 1 s) but never to the wildcards.
        let later = sys.drain(Duration::from_millis(2500));
        assert!(
            later.iter().any(|p| !p.retain),
            "{v:?}: periodic $SYS updates"
        );
        let mut p = Client::new(s.mqtt, v, &format!("dollar-pub-{v:?}"));
        p.publish("plain/topic", QoS::AtMostOnce, b"plain");
        let seen = all.drain(QUIET);
        assert!(!seen.is_empty(), "{v:?}: # still matches normal topics");
        for m in &seen {
            assert!(!topic(m).starts_with('$'), "{v:?}: wildcard matched {m:?}");
        }
    }
}

#[test]
fn unsubscribe() {
    on_both_versions(|s, v| {
        let mut c = Client::new(s.mqtt, v, &format!("un-sub-{v:?}"));
        c.subscribe("un/a", QoS::AtLeastOnce);
        c.subscribe("un/marker", QoS::AtLeastOnce);
        let mut p = Client::new(s.mqtt, v, &format!("un-pub-{v:?}"));
        relay(&mut p, &mut c, "un/a", "1");

        let ack = c.unsubscribe(&["un/a", "un/never"]);
        if v == V::V5 {
            assert_eq!(
                ack.reasons,
                vec![
                    UnsubAckReason::Success,
                    UnsubAckReason::NoSubscriptionExisted
                ]
            );
        }
        p.publish("un/a", QoS::AtLeastOnce, b"2");
        relay(&mut p, &mut c, "un/marker", "m");
        c.assert_no_publish();

        // Only a filter never subscribed: UNSUBACK (0x11 in MQTT 5), connection fine.
        let ack = c.unsubscribe(&["un/never/again"]);
        if v == V::V5 {
            assert_eq!(ack.reasons, vec![UnsubAckReason::NoSubscriptionExisted]);
        }
        c.ping();
    });
}

#[test]
fn delivered_qos_is_min_of_publish_and_subscription() {
    let s = Server::start();
    for (pv, sv) in [
        (V::V5, V::V5),
        (V::V311, V::V311),
        (V::V5, V::V311),
        (V::V311, V::V5),
    ] {
        let mut c = Client::new(s.mqtt, sv, &format!("qm-sub-{pv:?}-{sv:?}"));
        for sq in 0..3 {
            c.subscribe(&format!("qm/{sq}"), q(sq));
        }
        let mut p = Client::new(s.mqtt, pv, &format!("qm-pub-{pv:?}-{sv:?}"));
        for pq in 0..3 {
            for sq in 0..3 {
                let t = format!("qm/{sq}");
                p.publish(&t, q(pq), b"m");
                let got = recv_msg(&mut c, &t, "m");
                assert_eq!(
                    got.qos,
                    q(pq.min(sq)),
                    "pub {pv:?} QoS {pq}, sub {sv:?} QoS {sq}"
                );
            }
        }
    }
}

#[test]
fn pipelined_packets_after_connect() {
    on_both_versions(|s, v| {
        let mut c = Client::tcp(s.mqtt, v);
        let id = format!("pipe-{v:?}");
        let mut bytes = c.encode(&Packet::Connect(
            Connect {
                keep_alive: 60,
                client_id: id,
                clean_start: true,
                properties: None,
            },
            None,
            None,
        ));
        bytes.extend(c.encode(&Packet::Subscribe(Subscribe {
            pkid: 1,
            ..Subscribe::new(filter("pipe/t", QoS::AtLeastOnce), None)
        })));
        bytes.extend(c.encode(&Packet::PingReq(PingReq)));
        c.send_raw(&bytes);
        c.expect(
            WAIT,
            |p| matches!(p, Packet::ConnAck(a) if a.code == ConnectReturnCode::Success),
        );
        c.expect(WAIT, |p| matches!(p, Packet::SubAck(_)));
        c.expect(WAIT, |p| matches!(p, Packet::PingResp(_)));
    });
}

/// The same features through Eclipse Paho (paho-mqtt 2.1, `tests/paho5/features.py`).
#[test]
fn paho_client_sees_mqtt5_features() {
    let s = Server::start();
    let script = root().join("tests/paho5/features.py");
    let (code, out, err) = run(
        std::process::Command::new("python3")
            .arg(&script)
            .arg(s.mqtt.to_string()),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "paho checks failed:\n{out}\n{err}");
    assert_eq!(out.trim(), "OK", "{out}\n{err}");
}

/// A persistent session that is the only member of a share group and drops its connection
/// with a message unacknowledged, then resumes: the node keeps working, and the resumed shared
/// subscription still gets the group's messages.
#[test]
fn shared_subscription_survives_a_dropped_persistent_member() {
    let s = Server::start();
    let o = |clean: bool| {
        Opts::new("share-member")
            .clean(clean)
            .props(|p| p.session_expiry_interval = Some(600))
    };
    let mut c = Client::connect(s.mqtt, V::V5, o(true));
    c.auto_ack = false;
    c.subscribe("$share/g/sh/t", QoS::AtLeastOnce);
    let mut p = v5(&s, "share-pub");
    p.publish("sh/t", QoS::AtLeastOnce, b"one");
    let first = recv_msg(&mut c, "sh/t", "one");
    drop(c); // unacknowledged
             // The node still routes for everyone else.
    let mut other = v5_subscribed(&s, "share-other", "plain/t", QoS::AtLeastOnce);
    relay(&mut p, &mut other, "plain/t", "still up");
    // The member comes back: the unacknowledged message again, then new ones.
    let mut c = Client::connect(s.mqtt, V::V5, o(false));
    assert!(c.connack.as_ref().unwrap().session_present);
    let again = recv_msg(&mut c, "sh/t", "one");
    assert_eq!(again.pkid, first.pkid);
    relay(&mut p, &mut c, "sh/t", "two");
}
