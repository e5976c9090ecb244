//! The in-process core (issue 11) and the findings of the adversarial probe it fixes (issue 19:
//! filters kept forever, internal sessions taken over, someone else's session resumed,
//! duplicates from overlapping subscriptions): real clients over real sockets.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::reliability::*;
use common::Server;

/// A value from the Prometheus text of `/metrics`.
fn metric(port: u16, name: &str) -> i64 {
    let (status, body) = get(port, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let v = rest.strip_prefix(' ')?;
            v.trim().parse::<f64>().ok()
        })
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}")) as i64
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("not within {WAIT:?}: {what}");
}

/// Receives until `n` PUBLISHes came (acknowledging QoS 1), or nothing came for `WAIT`.
fn receive(c: &mut Mqtt, n: usize) -> Vec<Publish> {
    let mut got = Vec::new();
    while got.len() < n {
        match c.read(WAIT) {
            Got::Packet(Packet::Publish(p)) => {
                c.ack(&p);
                got.push(p);
            }
            Got::Packet(_) => {}
            Got::Closed | Got::Timeout => break,
        }
    }
    got
}

#[test]
fn a_qos0_burst_reaches_a_subscriber_that_keeps_up() {
    let s = Server::start();
    for v5 in [false, true] {
        let n = 20_000;
        let mut sub = Mqtt::connect(s.mqtt, v5, &format!("burst-sub-{v5}"));
        sub.subscribe("burst/t", QoS::AtMostOnce);
        let port = s.mqtt;
        let publisher = std::thread::spawn(move || {
            let mut p = Mqtt::connect(port, v5, &format!("burst-pub-{v5}"));
            for i in 0..n {
                p.publish("burst/t", QoS::AtMostOnce, false, format!("{i}").as_bytes());
            }
            p.disconnect();
        });
        let got = receive(&mut sub, n);
        publisher.join().expect("publisher");
        assert_eq!(got.len(), n, "every QoS 0 message (MQTT 5: {v5})");
        for (i, p) in got.iter().enumerate() {
            assert_eq!(p.payload, format!("{i}").as_bytes(), "in order");
        }
    }
    assert_eq!(metric(s.http, "rtw_messages_dropped_total"), 0);
}

#[test]
fn overlapping_subscriptions_deliver_once_even_when_the_subscriber_lags() {
    let s = Server::start();
    let props = ConnectProperties {
        receive_maximum: Some(4),
        ..ConnectProperties::new()
    };
    let (mut sub, ack) = Mqtt::try_connect(s.mqtt, true, "overlap-sub", true, Some(props));
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let codes = sub.subscribe_many(&[
        ("ov/#", QoS::AtLeastOnce),
        ("ov/+", QoS::ExactlyOnce),
        ("ov/a", QoS::AtMostOnce),
    ]);
    assert!(codes
        .iter()
        .all(|c| matches!(c, SubscribeReasonCode::Success(_))));
    // The subscriber does not read while 500 QoS 1 messages are published: they queue.
    let n = 500;
    let mut p = Mqtt::connect(s.mqtt, true, "overlap-pub");
    for i in 0..n {
        assert_eq!(
            p.publish_acked("ov/a", false, format!("{i}").as_bytes()),
            Some(0)
        );
    }
    let got = receive(&mut sub, n + 1);
    let mut count: HashMap<Vec<u8>, usize> = HashMap::new();
    for m in &got {
        // The highest QoS of the matching subscriptions, capped by the message's.
        assert_eq!(m.qos, QoS::AtLeastOnce);
        *count.entry(m.payload.to_vec()).or_default() += 1;
    }
    assert_eq!(got.len(), n, "one copy per message, none missing");
    assert!(count.values().all(|&c| c == 1));
}

#[test]
fn filters_are_given_back_when_no_session_holds_them() {
    let s = Server::start();
    let base = metric(s.http, "rtw_index_subscriptions");
    for round in 0..5 {
        let mut c = Mqtt::connect(s.mqtt, true, &format!("filters-{round}"));
        for batch in 0..20 {
            let names: Vec<String> = (0..50)
                .map(|i| format!("f/{round}/{batch}/{i}/+/#"))
                .collect();
            let filters: Vec<(&str, QoS)> = names
                .iter()
                .map(|n| (n.as_str(), QoS::AtMostOnce))
                .collect();
            c.subscribe_many(&filters);
        }
        eventually("1,000 filters indexed", || {
            metric(s.http, "rtw_index_subscriptions") == base + 1000
        });
        c.disconnect();
        eventually("filters released at disconnect", || {
            metric(s.http, "rtw_index_subscriptions") == base
        });
    }
    assert_eq!(metric(s.http, "rtw_subscriptions"), 0);
}

#[test]
fn no_client_can_take_over_the_bridge_sessions() {
    let s = Server::start();
    // The bridge's subscribers are not sessions under a client id: these are plain clients.
    let mut impostors = Vec::new();
    for id in ["rtw-bridge", "rtw-rpc", "rtw-bridge-0", "rtw-rpc-node"] {
        impostors.push(Mqtt::connect(s.mqtt, true, id));
    }
    let mut sse = common::clients::Proc::spawn(
        std::process::Command::new("curl")
            .args(["-sN", &format!("{}/events?topic=imp/%23", s.http_base())]),
    );
    eventually("the SSE stream is open", || {
        metric(s.http, "rtw_sse_streams") == 1
    });
    let mut p = Mqtt::connect(s.mqtt, true, "imp-pub");
    for i in 0..20 {
        assert_eq!(
            p.publish_acked("imp/x", false, format!("m{i}").as_bytes()),
            Some(0)
        );
        // Connecting under a bridge-like id does nothing to the bridge.
        impostors.push(Mqtt::connect(s.mqtt, true, "rtw-bridge"));
    }
    for i in 0..20 {
        let l = sse.wait_line(WAIT, |l| l.starts_with("data:") || l.starts_with("event:"));
        assert!(
            l.contains(&format!("m{i}")),
            "message {i} in order, no gap: {l}"
        );
    }
    sse.kill();
}

/// A token from the binary's `token` subcommand, signed with `secret`.
fn token(secret: &str, subject: &str, filter: &str) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_realtime-web"));
    cmd.env("RTW_AUTH__JWT_SECRET", secret).args([
        "token",
        "--subject",
        subject,
        "--publish",
        filter,
        "--subscribe",
        filter,
    ]);
    let (code, out, err) = common::run(&mut cmd, WAIT);
    assert_eq!(code, Some(0), "{err}");
    out.trim().to_string()
}

#[test]
fn a_persistent_session_belongs_to_the_identity_that_made_it() {
    const SECRET: &str = "core-test-secret-0123456789abcdef";
    let s = Server::builder().env("AUTH__JWT_SECRET", SECRET).start();
    let alice = token(SECRET, "alice", "alice/#");
    let mallory = token(SECRET, "mallory", "mallory/#");
    for v5 in [false, true] {
        let id = format!("alice-phone-{v5}");
        let props = v5.then(|| ConnectProperties {
            session_expiry_interval: Some(3600),
            ..ConnectProperties::new()
        });
        // CONNECT as `token`'s identity (the user name is not what counts).
        let connect = |id: &str, clean: bool, props: Option<ConnectProperties>, token: &str| {
            Mqtt::try_connect_as(s.mqtt, v5, id, clean, props, Some(("u", token)))
        };
        let (mut c, ack) = connect(&id, true, props.clone(), &alice);
        assert_eq!(ack.code, ConnectReturnCode::Success);
        c.subscribe("alice/inbox", QoS::AtLeastOnce);
        c.disconnect();
        // Queued for alice while she is away.
        let (mut p, _) = connect(&format!("alice-laptop-{v5}"), true, None, &alice);
        assert_eq!(p.publish_acked("alice/inbox", false, b"secret"), Some(0));
        // Mallory claims alice's client id and asks to resume: a fresh session, nothing of hers.
        let (mut m, ack) = connect(&id, false, props.clone(), &mallory);
        assert_eq!(ack.code, ConnectReturnCode::Success);
        assert!(
            !ack.session_present,
            "another identity's session (MQTT 5: {v5})"
        );
        assert!(
            m.drain(Duration::from_millis(500)).is_empty(),
            "nothing of alice's reaches mallory"
        );
    }
}

/// What the broker acknowledged first reaches subscribers first, whoever published it: five
/// MQTT publishers (3.1.1 and 5) and HTTP take turns, each waiting for its acknowledgement before
/// the next one publishes, and the subscriber gets the messages in exactly that order. (MQTT only
/// promises order per publisher; Mosquitto keeps this one too, and tests that publish a marker
/// "after" something rely on it.)
#[test]
fn what_is_acknowledged_first_is_delivered_first_whoever_published_it() {
    let s = Server::start();
    let mut sub = Mqtt::connect(s.mqtt, true, "order-sub");
    sub.subscribe("order/#", QoS::AtLeastOnce);
    let mut pubs: Vec<Mqtt> = (0..5)
        .map(|i| Mqtt::connect(s.mqtt, i % 2 == 0, &format!("order-pub-{i}")))
        .collect();
    let n = 600;
    for i in 0..n {
        let payload = format!("{i}");
        let topic = format!("order/{}", i % 3);
        match i % 6 {
            5 => {
                let req = format!(
                    "POST /topics/{topic}?qos=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
                    payload.len()
                );
                let (status, body) = http(s.http, &req, WAIT).expect("HTTP publish answered");
                assert_eq!(status, 200, "{body}");
            }
            p => assert_eq!(
                pubs[p].publish_acked(&topic, false, payload.as_bytes()),
                Some(0),
                "message {i}"
            ),
        }
    }
    let got = receive(&mut sub, n);
    let order: Vec<String> = got
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    let want: Vec<String> = (0..n).map(|i| format!("{i}")).collect();
    assert_eq!(order, want);
}
