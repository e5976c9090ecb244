//! MQTT 5 sessions, message expiry and wills: session expiry (capped, echoed, surviving a
//! disconnect and a restart, gone after it), message expiry counting down in the retained store
//! and in queues, will delay; checked with the raw client ([`common::mqtt`]) over real sockets.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::mqtt::*;
use common::*;

// ---- sessions ----

#[test]
fn session_expiry_is_capped_and_echoed() {
    let s = Server::builder()
        .env("LIMITS__MAX_SESSION_EXPIRY_SECS", 100)
        .start();
    let (_c, ack) = Client::try_connect(
        s.mqtt,
        V::V5,
        Opts::new("se-long").props(|p| p.session_expiry_interval = Some(3600)),
    );
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let props = ack.properties.expect("CONNACK properties");
    assert_eq!(props.session_expiry_interval, Some(100), "capped expiry");

    // Within the cap: the broker either says nothing (the client's value holds) or echoes it.
    let (_c, ack) = Client::try_connect(
        s.mqtt,
        V::V5,
        Opts::new("se-short").props(|p| p.session_expiry_interval = Some(50)),
    );
    let e = ack.properties.and_then(|p| p.session_expiry_interval);
    assert!(
        matches!(e, None | Some(50)),
        "expiry 50 answered with {e:?}"
    );
}

/// Options for a session kept 60 s after the connection ends (MQTT 5: clean start as `clean`
/// says; 3.1.1: clean session 0 always).
fn session_opts(id: &str, v: V, clean: bool) -> Opts {
    let opts = Opts::new(id).clean(clean && v == V::V5);
    opts.props(|p| p.session_expiry_interval = Some(60))
}

#[test]
fn session_survives_disconnect_within_expiry() {
    on_both_versions(|s, v| {
        let id = format!("se-keep-{v:?}");
        // MQTT 5: a session expiry interval; 3.1.1: clean session 0.
        let o = |clean| session_opts(&id, v, clean);
        let mut c = Client::connect(s.mqtt, v, o(true));
        assert!(!c.connack.as_ref().unwrap().session_present);
        c.subscribe("se/keep", QoS::AtLeastOnce);
        let mut f = filter("se/own", QoS::AtLeastOnce);
        f.nolocal = true;
        c.subscribe_with(vec![f], Some(5));
        c.disconnect();

        let mut p = Client::new(s.mqtt, v, &format!("se-pub-{v:?}"));
        p.publish("se/keep", QoS::AtLeastOnce, b"while away");

        let mut c = Client::connect(s.mqtt, v, o(false));
        assert!(
            c.connack.as_ref().unwrap().session_present,
            "{v:?}: session present after reconnect within expiry"
        );
        recv_msg(&mut c, "se/keep", "while away");
        // The subscriptions themselves survived too, with their options.
        relay(&mut p, &mut c, "se/keep", "after");
        if v == V::V5 {
            c.publish("se/own", QoS::AtLeastOnce, b"mine");
            p.publish("se/own", QoS::AtLeastOnce, b"theirs");
            let got = recv_msg(&mut c, "se/own", "theirs");
            assert_eq!(sub_ids(&got), vec![5]);
        }
        c.disconnect();
        // A clean start forgets them.
        let mut c = Client::connect(s.mqtt, v, Opts::new(&id));
        assert!(!c.connack.as_ref().unwrap().session_present);
        p.publish("se/keep", QoS::AtLeastOnce, b"forgotten");
        c.assert_no_publish();
    });
}

/// Retained messages sent on subscribe come from the edge, not the core, so the edge itself
/// must keep the unacknowledged ones with the session: sent again on resume with DUP under the
/// same packet id, PUBREL again for a QoS 2 exchange half done, and the rest of the queue after.
#[test]
fn retained_deliveries_resume_with_the_session() {
    let s = Server::builder().env("LIMITS__MAX_INFLIGHT", 2).start();
    let mut p = v5(&s, "rr-pub");
    p.publish_msg(retained_msg("rr/a", QoS::AtLeastOnce, "a"));
    p.publish_msg(retained_msg("rr/b", QoS::ExactlyOnce, "b"));
    p.publish_msg(retained_msg("rr/c", QoS::AtLeastOnce, "c"));
    for v in BOTH {
        let id = format!("rr-sub-{v:?}");
        let o = |clean| session_opts(&id, v, clean);
        let mut c = Client::connect(s.mqtt, v, o(true));
        c.auto_ack = false;
        c.subscribe("rr/#", QoS::ExactlyOnce);
        // Two in flight (the window), the third waits.
        let a = recv_msg(&mut c, "rr/a", "a");
        let b = recv_msg(&mut c, "rr/b", "b");
        assert!(!a.dup && !b.dup);
        assert!(c.next_publish(QUIET).is_none(), "{v:?}: window of 2");
        // The client has b (PUBREC, the broker answers PUBREL) but never completes it, and
        // never acknowledges a. Then the connection drops.
        c.send(&Packet::PubRec(PubRec::new(b.pkid, None)));
        c.expect(WAIT, |x| matches!(x, Packet::PubRel(r) if r.pkid == b.pkid));
        drop(c);

        let mut c = Client::connect(s.mqtt, v, o(false));
        c.auto_ack = false;
        assert!(c.connack.as_ref().unwrap().session_present, "{v:?}");
        let again = recv_msg(&mut c, "rr/a", "a");
        assert!(again.dup, "{v:?}: MQTT-3.3.1-1 DUP on redelivery");
        assert_eq!(again.pkid, a.pkid, "{v:?}: MQTT-4.4.0-1 same packet id");
        c.expect(WAIT, |x| matches!(x, Packet::PubRel(r) if r.pkid == b.pkid));
        assert!(c.next_publish(QUIET).is_none(), "{v:?}: window still full");
        // Completing both lets the queued one through; nothing comes twice.
        c.send(&Packet::PubAck(PubAck::new(a.pkid, None)));
        c.send(&Packet::PubComp(PubComp::new(b.pkid, None)));
        let cm = recv_msg(&mut c, "rr/c", "c");
        assert!(!cm.dup, "{v:?}: first delivery of c");
        c.send(&Packet::PubAck(PubAck::new(cm.pkid, None)));
        c.disconnect();
        // All acknowledged: a resume sends nothing again.
        let mut c = Client::connect(s.mqtt, v, o(false));
        assert!(c.connack.as_ref().unwrap().session_present, "{v:?}");
        c.assert_no_publish();
        c.disconnect();
        // Forget the session for the next version's run.
        drop(Client::connect(s.mqtt, v, Opts::new(&id)));
    }
}

/// Persistent sessions outlive a restart (SIGTERM, then a new process on the same storage):
/// the client finds `session_present = 1`, its subscriptions with their options, and the
/// messages published while it was away after the restart. A session with clean start, or one
/// whose expiry has passed, is gone.
#[test]
fn persistent_sessions_survive_a_restart() {
    let mut s = Server::start();
    let persistent = |v: V, id: &str, clean: bool| {
        Opts::new(id)
            .clean(clean && v == V::V5)
            .props(|p| p.session_expiry_interval = Some(3600))
    };
    for v in BOTH {
        let id = format!("restart-{v:?}");
        let mut c = Client::connect(s.mqtt, v, persistent(v, &id, true));
        let mut f = filter("restart/+/x", QoS::AtLeastOnce);
        f.nolocal = true;
        c.subscribe_with(vec![f], (v == V::V5).then_some(9));
        c.subscribe("restart/plain", QoS::AtMostOnce);
        c.disconnect();
    }
    // A session that expires while the server is down, and a clean one.
    let mut short = Client::connect(
        s.mqtt,
        V::V5,
        Opts::new("restart-short")
            .clean(true)
            .props(|p| p.session_expiry_interval = Some(1)),
    );
    short.subscribe("restart/+/x", QoS::AtLeastOnce);
    short.disconnect();
    let clean = Client::subscribed(
        s.mqtt,
        V::V311,
        "restart-clean",
        "restart/+/x",
        QoS::AtLeastOnce,
    );
    clean.disconnect();

    s.restart();
    std::thread::sleep(Duration::from_millis(1100)); // past restart-short's expiry
    let mut p = v5(&s, "restart-pub");
    p.publish("restart/a/x", QoS::AtLeastOnce, b"while away");
    p.publish("restart/plain", QoS::AtLeastOnce, b"plain");
    for v in BOTH {
        let id = format!("restart-{v:?}");
        let mut c = Client::connect(s.mqtt, v, persistent(v, &id, false));
        assert!(
            c.connack.as_ref().unwrap().session_present,
            "{v:?}: session present after the restart"
        );
        // Order holds per topic, not across the two subscriptions' topics.
        let mut got: Vec<Publish> = vec![c.recv(), c.recv()];
        got.sort_by_key(topic);
        assert_eq!(
            got.iter()
                .map(|m| (topic(m), payload(m), m.qos))
                .collect::<Vec<_>>(),
            [
                ("restart/a/x".into(), "while away".into(), QoS::AtLeastOnce),
                // min(publish QoS 1, subscription QoS 0): the subscription's QoS was kept.
                ("restart/plain".into(), "plain".into(), QoS::AtMostOnce),
            ],
            "{v:?}"
        );
        if v == V::V5 {
            assert_eq!(sub_ids(&got[0]), vec![9], "subscription identifier kept");
            // No-local kept: its own message does not come back, the other one does.
            c.publish("restart/b/x", QoS::AtLeastOnce, b"own");
            relay(&mut p, &mut c, "restart/b/x", "other");
        }
        c.assert_no_publish();
        c.disconnect();
    }
    for (v, id) in [(V::V5, "restart-short"), (V::V311, "restart-clean")] {
        let o = Opts::new(id).clean(false).props(|p| {
            p.session_expiry_interval = Some(60);
        });
        let c = Client::connect(s.mqtt, v, o);
        assert!(
            !c.connack.as_ref().unwrap().session_present,
            "{id}: no session after the restart"
        );
    }
}

fn retained_msg(t: &str, qos: QoS, body: &str) -> Publish {
    let mut m = Publish::new(t, qos, body.as_bytes().to_vec(), None);
    m.retain = true;
    m
}

/// Connects with `opts`, subscribes to `filter` (QoS 1) and says DISCONNECT: a session left
/// for as long as its expiry says.
fn leave_subscribed(s: &Server, opts: Opts, filter: &str) {
    let mut c = Client::connect(s.mqtt, V::V5, opts);
    c.subscribe(filter, QoS::AtLeastOnce);
    c.disconnect();
}

#[test]
fn session_is_gone_after_expiry() {
    let s = Server::start();
    let o = || Opts::new("se-exp").props(|p| p.session_expiry_interval = Some(1));
    leave_subscribed(&s, o(), "se/exp");
    std::thread::sleep(Duration::from_millis(2500));

    let mut c = Client::connect(s.mqtt, V::V5, o().clean(false));
    assert!(
        !c.connack.as_ref().unwrap().session_present,
        "session expired after 1 s"
    );
    let mut p = v5(&s, "se-pub");
    p.publish("se/exp", QoS::AtLeastOnce, b"nobody");
    c.subscribe("se/marker", QoS::AtLeastOnce);
    relay(&mut p, &mut c, "se/marker", "marker");
    c.assert_no_publish();
}

#[test]
fn session_expiry_zero_ends_with_connection() {
    let s = Server::start();
    let c = v5_subscribed(&s, "se-zero", "se/zero", QoS::AtLeastOnce);
    c.disconnect();
    let c = Client::connect(s.mqtt, V::V5, Opts::new("se-zero").clean(false));
    assert!(!c.connack.as_ref().unwrap().session_present);
}

// ---- message expiry ----

/// Properties with a message expiry interval of `secs`.
fn expiring(secs: u32) -> PublishProperties {
    PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    }
}

/// A retained PUBLISH of `payload` on `topic` that expires after `secs`.
fn retained_expiring(topic: &str, qos: QoS, payload: &'static [u8], secs: u32) -> Publish {
    let mut m = Publish::new(
        topic,
        qos,
        Bytes::from_static(payload),
        Some(expiring(secs)),
    );
    m.retain = true;
    m
}

#[test]
fn retained_message_expires() {
    let s = Server::start();
    let mut p = v5(&s, "me-pub");
    let m = retained_expiring("me/short", QoS::AtLeastOnce, b"short", 1);
    let t0 = Instant::now();
    assert_eq!(p.publish_msg(m), 0);

    let mut c = v5_subscribed(&s, "me-early", "me/short", QoS::AtLeastOnce);
    match c.next_publish(QUIET) {
        Some(got) => {
            assert!(got.retain && &got.payload[..] == b"short", "{got:?}");
            let e = got.properties.and_then(|x| x.message_expiry_interval);
            assert!(matches!(e, Some(1)), "expiry of a fresh message: {e:?}");
        }
        // Only a very slow machine may take a second to get here.
        None => assert!(
            t0.elapsed() >= Duration::from_secs(1),
            "retained message missing"
        ),
    }

    std::thread::sleep(Duration::from_millis(2100));
    let mut c = v5_subscribed(&s, "me-late", "me/short", QoS::AtLeastOnce);
    c.assert_no_publish();
}

#[test]
fn retained_message_expiry_counts_down() {
    let s = Server::start();
    let mut p = v5(&s, "me-pub");
    let m = retained_expiring("me/long", QoS::AtMostOnce, b"long", 60);
    p.publish_msg(m);
    p.ping();
    std::thread::sleep(Duration::from_millis(2100));
    let mut c = v5_subscribed(&s, "me-sub", "me/#", QoS::AtMostOnce);
    let got = recv_msg(&mut c, "me/long", "long");
    let e = got
        .properties
        .and_then(|x| x.message_expiry_interval)
        .expect("message expiry interval delivered");
    assert!(
        (50..=58).contains(&e),
        "expiry after 2 s: {e}, want 60 - waited"
    );
}

#[test]
fn live_message_keeps_its_expiry() {
    let (_s, mut c, mut p) = v5_pair("me-sub", "me/live", QoS::AtLeastOnce, "me-pub");
    p.publish_props("me/live", QoS::AtLeastOnce, b"x", expiring(30));
    let got = recv_msg(&mut c, "me/live", "x");
    let e = got.properties.and_then(|x| x.message_expiry_interval);
    assert!(matches!(e, Some(29 | 30)), "expiry forwarded: {e:?}");
}

#[test]
fn queued_message_expiry_counts_down_and_expires() {
    let s = Server::start();
    let o = || Opts::new("me-away").props(|p| p.session_expiry_interval = Some(60));
    leave_subscribed(&s, o(), "me/q/#");

    let mut p = v5(&s, "me-pub");
    p.publish_props("me/q/short", QoS::AtLeastOnce, b"short", expiring(1));
    p.publish_props("me/q/long", QoS::AtLeastOnce, b"long", expiring(60));
    std::thread::sleep(Duration::from_millis(2100));

    let mut c = Client::connect(s.mqtt, V::V5, o().clean(false));
    let got = recv_msg(&mut c, "me/q/long", "long");
    let e = got.properties.and_then(|x| x.message_expiry_interval);
    assert!(
        matches!(e, Some(50..=58)),
        "queued message expiry after 2 s: {e:?}"
    );
    c.assert_no_publish();
}

// ---- wills ----

fn will(topic: &str, body: &str, delay: Option<u32>) -> LastWill {
    LastWill::new(
        topic,
        body.as_bytes().to_vec(),
        QoS::AtLeastOnce,
        false,
        Some(LastWillProperties {
            delay_interval: delay,
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![("from".into(), "will".into())],
        }),
    )
}

/// An MQTT 5 client watching `will/#`.
fn will_watch(s: &Server) -> Client {
    let mut w = v5(s, "will-watch");
    w.subscribe("will/#", QoS::AtLeastOnce);
    w
}

/// Options for client `id` with session expiry `expiry` s and `will`.
fn expiring_with_will(id: &str, expiry: u32, will: LastWill) -> Opts {
    let opts = Opts::new(id).props(|p| p.session_expiry_interval = Some(expiry));
    opts.will(will)
}

#[test]
fn will_delay() {
    let s = Server::start();
    let mut w = will_watch(&s);

    let opts = expiring_with_will("will-delayed", 60, will("will/delayed", "gone", Some(2)));

    let c = Client::connect(s.mqtt, V::V5, opts);
    let t = Instant::now();
    c.drop_connection();
    assert!(
        w.next_publish(Duration::from_millis(1200)).is_none(),
        "will sent before its delay"
    );
    let got = recv_msg(&mut w, "will/delayed", "gone");
    assert!(
        t.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(user_props(&got), vec![("from".into(), "will".into())]);
}

#[test]
fn will_delay_cancelled_by_reconnect() {
    let s = Server::start();
    let mut w = will_watch(&s);
    let o = || expiring_with_will("will-back", 60, will("will/back", "gone", Some(2)));
    Client::connect(s.mqtt, V::V5, o()).drop_connection();
    std::thread::sleep(Duration::from_millis(300));
    let c = Client::connect(s.mqtt, V::V5, o().clean(false));
    assert!(
        w.next_publish(Duration::from_millis(3000)).is_none(),
        "will sent although the client came back"
    );
    c.disconnect();
}

#[test]
fn will_delay_capped_by_session_expiry() {
    let s = Server::start();
    let mut w = will_watch(&s);
    let c = Client::connect(
        s.mqtt,
        V::V5,
        expiring_with_will(
            "will-short",
            1,
            will("will/short", "session over", Some(60)),
        ),
    );
    c.drop_connection();
    recv_msg(&mut w, "will/short", "session over");
}

#[test]
fn will_on_normal_and_will_disconnect() {
    let s = Server::start();
    let mut w = will_watch(&s);
    // Normal DISCONNECT: no will.
    Client::connect(
        s.mqtt,
        V::V5,
        Opts::new("will-normal").will(will("will/normal", "no", None)),
    )
    .disconnect();
    // DISCONNECT 0x04: will, at once.
    let mut c = Client::connect(
        s.mqtt,
        V::V5,
        Opts::new("will-asked").will(will("will/asked", "yes", None)),
    );
    c.send(&Packet::Disconnect(Disconnect::new(
        DisconnectReasonCode::DisconnectWithWillMessage,
    )));
    recv_msg(&mut w, "will/asked", "yes");
    w.assert_no_publish();
}
