//! Several nodes, one broker: a real `nats-server` (JetStream on) and three realtime-web nodes
//! on loopback, proven with real clients (rumqttc, mosquitto_pub/sub, curl). See
//! `broker/src/cluster/` and the README's "Cluster" section.

mod common;

use std::time::Duration;

use common::clients::{
    p5, persistent_v5_options, set_v4_will, v4_options, v5_options, Tr, T, V4, V5,
};
use common::nats::Nats;
use common::Server;
use rumqttc::v5::mqttbytes::QoS as Q5;

/// A node named `name` joined to `nats`.
fn node(nats: &Nats, name: &str) -> Server {
    Server::builder()
        .env("CLUSTER__NATS", nats.url())
        .env("CLUSTER__NODE", name)
        .start()
}

fn three(nats: &Nats) -> [Server; 3] {
    [node(nats, "n1"), node(nats, "n2"), node(nats, "n3")]
}

/// The publishes that arrive within `quiet` of each other, until none does.
async fn drain5(c: &mut V5, quiet: Duration) -> Vec<p5::Publish> {
    let mut v = Vec::new();
    while let Ok(p) = tokio::time::timeout(quiet, c.publish_in(T)).await {
        v.push(p);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_one_node_reaches_subscribers_on_every_node() {
    let nats = Nats::start();
    let [n1, n2, n3] = three(&nats);

    // n2: MQTT 5, overlapping filters (one copy expected per message).
    let mut s2 = V5::subscribed(&n2, "sub-n2", "c/#", Q5::ExactlyOnce).await;
    s2.subscribe("c/+/x", Q5::AtLeastOnce).await;
    // n3: MQTT 3.1.1.
    let mut s3 = V4::subscribed(&n3, "sub-n3", "c/#", rumqttc::QoS::ExactlyOnce).await;
    // n1, the publisher's own node: one copy too (nothing comes back from NATS twice).
    let mut s1 = V4::subscribed(&n1, "sub-n1", "c/#", rumqttc::QoS::ExactlyOnce).await;

    let (mut p, _) = V5::connect(v5_options(&n1, Tr::Tcp, "pub-n1")).await;
    let props = p5::PublishProperties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("k".into(), "v".into())],
        response_topic: Some("c/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr")),
        ..Default::default()
    };
    for (i, q) in [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        p.send(
            "c/a/x",
            q,
            false,
            format!("m{i}").as_bytes(),
            Some(props.clone()),
        )
        .await;
    }
    // Order per publisher and topic: 50 more at QoS 1.
    for i in 0..50 {
        p.publish_acked("c/seq", Q5::AtLeastOnce, format!("{i}").as_bytes())
            .await;
    }

    let got = drain5(&mut s2, Duration::from_secs(2)).await;
    let payloads: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    let mut want: Vec<String> = (0..3).map(|i| format!("m{i}")).collect();
    want.extend((0..50).map(|i| format!("{i}")));
    assert_eq!(payloads, want, "n2 gets each message once, in order");
    for (m, q) in got[..3].iter().zip([0u8, 1, 2]) {
        assert_eq!(m.qos as u8, q);
        let pr = m.properties.as_ref().expect("properties kept");
        assert_eq!(pr.content_type.as_deref(), Some("text/plain"));
        assert_eq!(pr.user_properties, vec![("k".to_string(), "v".to_string())]);
        assert_eq!(pr.response_topic.as_deref(), Some("c/reply"));
        assert_eq!(pr.correlation_data.as_deref(), Some(&b"corr"[..]));
    }
    for s in [&mut s3, &mut s1] {
        let mut v = Vec::new();
        for _ in 0..53 {
            let m = s.publish_in(T).await;
            v.push(String::from_utf8_lossy(&m.payload).into_owned());
        }
        assert_eq!(v, want);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), s.publish_in(T))
                .await
                .is_err(),
            "no duplicate"
        );
    }
    drop((n1, n2, n3));
}

#[test]
fn every_legal_topic_crosses_between_mosquitto_clients() {
    let nats = Nats::start();
    let n1 = node(&nats, "n1");
    let n2 = node(&nats, "n2");
    let topics = [
        "dots.in.level/x",
        "with space/ünïcødé/日本",
        "a//empty/",
        "/leading",
        "star*/gt>",
        "_~7E/x",
    ];
    for v in ["mqttv311", "mqttv5"] {
        let mut sub =
            common::clients::Proc::spawn(common::clients::mosquitto_sub(&n2, false, v).args([
                "-t",
                "#",
                "-q",
                "1",
                "-i",
                &format!("ms-{v}"),
            ]));
        common::clients::mosquitto_ready(&mut sub);
        for t in topics {
            common::clients::run_ok(
                common::clients::mosquitto_pub(&n1, false, v).args(["-t", t, "-m", t, "-q", "1"]),
            );
        }
        for t in topics {
            let line = sub.wait_line(T, |l| l.starts_with("MSG|"));
            let msgs = common::clients::mosquitto_msgs(&[line]);
            assert_eq!(msgs[0].0, t, "{v}");
            assert_eq!(msgs[0].3, t);
        }
    }
}

/// `curl -N` on `GET /events?…` (a real SSE client), its header lines and events as lines.
fn sse(s: &Server, query: &str) -> common::clients::Proc {
    let mut p = common::clients::Proc::spawn(std::process::Command::new("curl").args([
        "-sN",
        "-D",
        "-",
        &format!("{}/events?{query}", s.http_base()),
    ]));
    let status = p.wait_line(T, |l| l.starts_with("HTTP/"));
    assert!(status.contains(" 200"), "{status}");
    p
}

fn curl(args: &[&str]) -> String {
    common::clients::run_ok(std::process::Command::new("curl").arg("-s").args(args))
}

#[test]
fn http_post_on_one_node_reaches_sse_on_another() {
    let nats = Nats::start();
    let [n1, n2, n3] = three(&nats);
    let mut a = sse(&n2, "topic=news/%23&retained=false");
    let mut b = sse(&n3, "topic=news/%2B&retained=false");
    let code = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "--data-binary",
        "from n1",
        &format!("{}/topics/news/today", n1.http_base()),
    ]);
    assert_eq!(code, "200");
    for p in [&mut a, &mut b] {
        let data = p.wait_line(T, |l| l.starts_with("data:"));
        assert!(data.contains("from n1"), "{data}");
    }
}

#[test]
fn rpc_caller_and_responder_on_different_nodes() {
    let nats = Nats::start();
    let [n1, n2, _n3] = three(&nats);
    // The echo example (MQTT 5 responder on `rpc/#`) on n2; the HTTP caller on n1.
    let mut echo = common::clients::Proc::spawn(
        std::process::Command::new(common::example_bin("echo")).args([
            "--port",
            &n2.mqtt.to_string(),
            "--id",
            "echo-n2",
        ]),
    );
    let url = format!("{}/rpc/demo/echo", n1.http_base());
    // n1 learns of n2's responder through the cluster (503 "no responder" until then).
    let deadline = std::time::Instant::now() + T;
    let body = loop {
        let out = curl(&["-w", "\n%{http_code}", "--data-binary", "ping across", &url]);
        let (body, code) = out.rsplit_once('\n').expect("status line");
        if code == "200" {
            break body.to_string();
        }
        assert_eq!(code, "503", "{out}");
        assert!(
            std::time::Instant::now() < deadline,
            "no responder seen: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(body, "ping across");
    echo.kill();
}

/// `GET /topics/{topic}` on `s`: (status, body).
fn get_topic(s: &Server, topic: &str) -> (String, String) {
    let out = curl(&[
        "-w",
        "\n%{http_code}",
        &format!("{}/topics/{topic}", s.http_base()),
    ]);
    let (body, code) = out.rsplit_once('\n').expect("status line");
    (code.to_string(), body.to_string())
}

/// Waits (bounded) until `GET /topics/{topic}` on `s` answers `code`; returns the body.
fn wait_topic(s: &Server, topic: &str, code: &str) -> String {
    let deadline = std::time::Instant::now() + T;
    loop {
        let (c, body) = get_topic(s, topic);
        if c == code {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "GET /topics/{topic} on :{} is still {c} {body}",
            s.http
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn retained_messages_are_one_state_kept_across_restarts() {
    let mut nats = Nats::start();
    let [mut n1, mut n2, mut n3] = three(&nats);
    // Set on n1 (MQTT 3.1.1), read over HTTP on n2, delivered on subscribe on n3.
    common::clients::run_ok(
        common::clients::mosquitto_pub(&n1, false, "mqttv311").args([
            "-t",
            "state/lamp",
            "-m",
            "on",
            "-r",
            "-q",
            "1",
        ]),
    );
    assert_eq!(wait_topic(&n2, "state/lamp", "200"), "on");
    wait_topic(&n3, "state/lamp", "200");
    let mut sub = common::clients::Proc::spawn(
        common::clients::mosquitto_sub(&n3, false, "mqttv5").args(["-t", "state/#", "-q", "1"]),
    );
    let line = sub.wait_line(T, |l| l.starts_with("MSG|"));
    assert_eq!(line, "MSG|state/lamp|1|1|on");
    drop(sub);
    // Cleared on n2 (HTTP DELETE): gone on n1 and n3.
    curl(&[
        "-X",
        "DELETE",
        &format!("{}/topics/state/lamp", n2.http_base()),
    ]);
    wait_topic(&n1, "state/lamp", "404");
    wait_topic(&n3, "state/lamp", "404");

    // Changes made while a node is down reach it when it starts.
    curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "old",
        &format!("{}/topics/state/door", n1.http_base()),
    ]);
    wait_topic(&n3, "state/door", "200");
    n3.stop();
    curl(&[
        "-X",
        "DELETE",
        &format!("{}/topics/state/door", n1.http_base()),
    ]);
    curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "new",
        &format!("{}/topics/state/window", n2.http_base()),
    ]);
    n3.start_again();
    assert_eq!(get_topic(&n3, "state/door").0, "404");
    assert_eq!(get_topic(&n3, "state/window"), ("200".into(), "new".into()));

    // Every node and NATS itself stopped and started again: the state is still there, and a
    // node with an empty store of its own gets it from the bucket.
    wait_topic(&n1, "state/window", "200");
    for n in [&mut n1, &mut n2, &mut n3] {
        n.stop();
    }
    nats.start_again();
    for n in [&mut n1, &mut n2, &mut n3] {
        n.start_again();
    }
    for n in [&n1, &n2, &n3] {
        assert_eq!(get_topic(n, "state/window"), ("200".into(), "new".into()));
        assert_eq!(get_topic(n, "state/lamp").0, "404");
    }
    let fresh = node(&nats, "n4");
    assert_eq!(
        get_topic(&fresh, "state/window"),
        ("200".into(), "new".into())
    );
}

fn persistent(s: &Server, id: &str) -> rumqttc::v5::MqttOptions {
    persistent_v5_options(s, id, 300)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_is_unique_across_nodes_and_its_session_follows_it() {
    let nats = Nats::start();
    let [n1, n2, n3] = three(&nats);
    let (mut p, _) = V5::connect(v5_options(&n3, Tr::Tcp, "pub-n3")).await;

    // Connected on n1 with a subscription; the same id on n2 takes over (0x8E on n1).
    let (mut first, ack) = V5::connect(persistent(&n1, "roamer")).await;
    assert!(!ack.session_present);
    first.subscribe("roam/#", Q5::AtLeastOnce).await;
    let (mut second, ack) = V5::connect(persistent(&n2, "roamer")).await;
    let err = first.closed(T).await;
    assert!(
        err.contains("SessionTakenOver"),
        "first connection ended with {err}"
    );
    assert!(ack.session_present, "the session came over from n1");
    // Its subscription came along: a message published on n3 reaches it on n2, once.
    p.send("roam/a", Q5::AtLeastOnce, false, b"to n2", None)
        .await;
    assert_eq!(&second.publish_in(T).await.payload[..], b"to n2");

    // Away from n2, messages queue there; back on n1, they are handed over.
    second.disconnect().await;
    // A burst, every message acknowledged by n3 before the client comes back on n1 at once:
    // the last ones are still on their way through NATS and n2 when n1 claims the session, and
    // n2 lets them reach the session before it hands it over.
    const BURST: usize = 300;
    for i in 0..BURST {
        p.client
            .publish("roam/q", Q5::AtLeastOnce, false, format!("q{i}"))
            .await
            .expect("publish");
    }
    let mut acked = 0;
    while acked < BURST {
        match p.next(T).await {
            Some(Ok(rumqttc::v5::Event::Incoming(p5::Packet::PubAck(_)))) => acked += 1,
            Some(Ok(_)) => {}
            other => panic!("{acked} of {BURST} acknowledged, then {other:?}"),
        }
    }
    let (mut third, ack) = V5::connect(persistent(&n1, "roamer")).await;
    assert!(ack.session_present);
    let want: Vec<String> = (0..BURST).map(|i| format!("q{i}")).collect();
    third.expect_payloads(&want, Q5::AtLeastOnce).await;
    p.send("roam/z", Q5::AtLeastOnce, false, b"still", None)
        .await;
    assert_eq!(&third.publish_in(T).await.payload[..], b"still");
    // MQTT 3.1.1 too: the second connection ends the first, across nodes.
    let (mut a, _) = V4::connect(v4_options(&n1, Tr::Tcp, "same-311")).await;
    let (mut b, _) = V4::connect(v4_options(&n2, Tr::Tcp, "same-311")).await;
    a.closed(T).await;
    b.subscribe("x311", rumqttc::QoS::AtLeastOnce).await;
    p.send("x311", Q5::AtLeastOnce, false, b"v311", None).await;
    assert_eq!(&b.publish_in(T).await.payload[..], b"v311");
}

/// The payloads of the PUBLISH packets `c` receives until its connection ends, each
/// acknowledged only once seen here (`c` has manual acks: a message rumqttc read but did not
/// hand over before the connection ended stays unacknowledged, so the broker keeps it).
async fn received_until_closed(mut c: V5) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(Ok(e)) = c.next(T).await {
        if let rumqttc::v5::Event::Incoming(p5::Packet::Publish(p)) = e {
            got.push(String::from_utf8_lossy(&p.payload).into_owned());
            let _ = c.client.ack(&p).await;
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_moves_while_messages_flow_loses_none_of_them() {
    let nats = Nats::start();
    let [n1, n2, n3] = three(&nats);
    let mut opts = persistent(&n2, "mover");
    opts.set_manual_acks(true);
    let (mut first, _) = V5::connect(opts).await;
    first.subscribe("move/#", Q5::AtLeastOnce).await;
    let (mut p, _) = V5::connect(v5_options(&n3, Tr::Tcp, "pub-move")).await;
    // The subscription is live on NATS: a message from n3 reaches n2.
    p.publish_acked("move/x", Q5::AtLeastOnce, b"ready").await;
    let ready = first.publish_in(T).await;
    assert_eq!(&ready.payload[..], b"ready");
    first.client.ack(&ready).await.expect("ack");

    // n3 publishes one QoS 1 message after another, each acknowledged before the next, while
    // the client moves from n2 to n1 (n1 claims the session from n2 meanwhile).
    const N: usize = 1500;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = tokio::spawn({
        let sent = sent.clone();
        async move {
            for i in 0..N {
                p.publish_acked("move/x", Q5::AtLeastOnce, format!("m{i}").as_bytes())
                    .await;
                sent.store(i + 1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let first = tokio::spawn(received_until_closed(first));
    let deadline = std::time::Instant::now() + T;
    while sent.load(std::sync::atomic::Ordering::Relaxed) < N / 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the publisher stalled"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (mut second, ack) = V5::connect(persistent(&n1, "mover")).await;
    assert!(ack.session_present, "the session came over from n2");
    let moved_at = sent.load(std::sync::atomic::Ordering::Relaxed);
    publisher.await.expect("publisher");
    let mut got = first.await.expect("first connection");
    let on_first = got.len();
    let on_second: Vec<usize> = drain5(&mut second, Duration::from_secs(2))
        .await
        .into_iter()
        .filter_map(|m| {
            String::from_utf8_lossy(&m.payload)
                .strip_prefix('m')?
                .parse()
                .ok()
        })
        .collect();
    // In order on the new node too: the tail goes between the handed messages and those that
    // came straight to it.
    assert!(
        on_second.windows(2).all(|w| w[0] < w[1]),
        "out of order on the second connection: {:?}",
        &on_second[..on_second.len().min(40)]
    );
    got.extend(on_second.iter().map(|i| format!("m{i}")));
    let got: std::collections::HashSet<String> = got.into_iter().collect();
    let missing: Vec<usize> = (0..N).filter(|i| !got.contains(&format!("m{i}"))).collect();
    assert!(
        missing.is_empty(),
        "{} of {N} acknowledged messages never arrived (moved after ~{moved_at}, {on_first} \
         on the first connection), first ones: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(
        on_first > 0 && moved_at < N,
        "the move happened mid-stream ({on_first} on the first connection, moved at {moved_at})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_group_over_two_nodes_gets_each_message_exactly_once() {
    let nats = Nats::start();
    let [n1, n2, n3] = three(&nats);
    let mut a = V5::subscribed(&n1, "member-n1", "$share/g/jobs/#", Q5::AtLeastOnce).await;
    let mut b = V5::subscribed(&n2, "member-n2", "$share/g/jobs/#", Q5::AtLeastOnce).await;
    // A plain subscriber on n1 gets every message (the group is a copy of its own).
    let mut all = V4::subscribed(&n1, "plain-n1", "jobs/#", rumqttc::QoS::AtLeastOnce).await;
    // Publishers on n3 (no member) and on n1 (a member's node).
    let (mut p3, _) = V5::connect(v5_options(&n3, Tr::Tcp, "pub-n3")).await;
    let (mut p1, _) = V5::connect(v5_options(&n1, Tr::Tcp, "pub-n1")).await;
    const N: usize = 1000;
    for i in 0..N {
        let p = if i % 2 == 0 { &mut p3 } else { &mut p1 };
        p.publish_acked("jobs/x", Q5::AtLeastOnce, format!("{i}").as_bytes())
            .await;
    }
    let mut seen = vec![0u32; N];
    let (mut got_a, mut got_b) = (0, 0);
    for (c, got) in [(&mut a, &mut got_a), (&mut b, &mut got_b)] {
        for m in drain5(c, Duration::from_secs(2)).await {
            let i: usize = String::from_utf8_lossy(&m.payload).parse().expect("index");
            seen[i] += 1;
            *got += 1;
        }
    }
    assert!(
        seen.iter().all(|&n| n == 1),
        "each message exactly once: {:?}",
        seen.iter()
            .enumerate()
            .filter(|(_, &n)| n != 1)
            .take(10)
            .collect::<Vec<_>>()
    );
    assert!(
        got_a > 0 && got_b > 0,
        "both members served: {got_a} / {got_b}"
    );
    for _ in 0..N {
        all.publish_in(T).await;
    }
}

/// `GET /readyz` status code on `s`.
fn readyz(s: &Server) -> String {
    curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{}/readyz", s.http_base()),
    ])
}

fn wait_ready(s: &Server, code: &str) {
    let deadline = std::time::Instant::now() + T;
    while readyz(s) != code {
        assert!(std::time::Instant::now() < deadline, "/readyz never {code}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_costs_only_its_own_connections() {
    let nats = Nats::start();
    let [mut n1, n2, n3] = three(&nats);
    let mut s2 = V5::subscribed(&n2, "s2", "k/#", Q5::AtLeastOnce).await;
    let (mut victim, _) = V5::connect(persistent(&n1, "victim")).await;
    victim.subscribe("k/#", Q5::AtLeastOnce).await;
    let (mut p, _) = V5::connect(v5_options(&n3, Tr::Tcp, "p3")).await;
    p.send("k/1", Q5::AtLeastOnce, true, b"before", None).await;
    assert_eq!(&s2.publish_in(T).await.payload[..], b"before");
    assert_eq!(&victim.publish_in(T).await.payload[..], b"before");

    n1.kill();
    victim.closed(T).await;
    // The others keep serving each other.
    p.send("k/2", Q5::AtLeastOnce, false, b"after", None).await;
    assert_eq!(&s2.publish_in(T).await.payload[..], b"after");
    // Its client id is free: the client reconnects elsewhere (its session died with n1).
    let (mut back, ack) = V5::connect(persistent(&n3, "victim")).await;
    assert!(!ack.session_present);
    back.subscribe("k/#", Q5::AtLeastOnce).await;
    // The retained message set through the cluster is still there.
    let r = back.publish_in(T).await;
    assert_eq!(&r.payload[..], b"before");
    assert!(r.retain);
    assert_eq!(readyz(&n2), "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_under_load_is_survived() {
    let mut nats = Nats::start();
    let n1 = node(&nats, "n1");
    let n2 = node(&nats, "n2");
    let mut far = V5::subscribed(&n2, "far", "load/#", Q5::AtLeastOnce).await;
    let mut near = V4::subscribed(&n1, "near", "load/#", rumqttc::QoS::AtLeastOnce).await;
    // Load: a QoS 1 publisher on n1 that never stops while NATS goes away and comes back.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let (mut p, _) = V5::connect(v5_options(&n1, Tr::Tcp, "loader")).await;
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                p.publish_acked("load/x", Q5::AtLeastOnce, format!("{i}").as_bytes())
                    .await;
                i += 1;
            }
            i
        })
    };
    far.publish_in(T).await;

    nats.kill();
    wait_ready(&n1, "503");
    wait_ready(&n2, "503");
    // During the outage a node serves its own clients alone.
    let (mut p1, _) = V4::connect(v4_options(&n1, Tr::Tcp, "p1-outage")).await;
    p1.send("load/outage", rumqttc::QoS::AtLeastOnce, false, b"local")
        .await;
    loop {
        if &near.publish_in(T).await.payload[..] == b"local" {
            break;
        }
    }

    nats.start_again();
    wait_ready(&n1, "200");
    wait_ready(&n2, "200");
    // Subscriptions were renewed: n1's messages reach n2 again.
    let (mut p2, _) = V5::connect(v5_options(&n1, Tr::Tcp, "p1-back")).await;
    p2.send("load/back", Q5::AtLeastOnce, false, b"again", None)
        .await;
    loop {
        if &far.publish_in(T).await.payload[..] == b"again" {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = tokio::time::timeout(T, load)
        .await
        .expect("publisher stopped")
        .expect("publisher ok");
    assert!(sent > 0);
    let stats = curl(&[&format!("{}/api/stats", n1.http_base())]);
    let v: serde_json::Value = serde_json::from_str(&stats).expect("stats JSON");
    assert!(v["cluster"]["disconnects"].as_u64() >= Some(1), "{v}");
    assert!(v["cluster"]["not_sent"].as_u64() >= Some(1), "{v}");
    assert_eq!(v["cluster"]["nats_up"], true);
    // Retained state still flows between the nodes after the outage.
    curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "after outage",
        &format!("{}/topics/load/state", n2.http_base()),
    ]);
    assert_eq!(wait_topic(&n1, "load/state", "200"), "after outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wills_and_sys_span_the_cluster() {
    let nats = Nats::start();
    let n1 = Server::builder()
        .env("CLUSTER__NATS", nats.url())
        .env("CLUSTER__NODE", "n1")
        .env("SYS__INTERVAL_SECS", 1)
        .start();
    let n2 = node(&nats, "n2");
    let mut s2 = V5::subscribed(&n2, "watcher", "wills/#", Q5::AtLeastOnce).await;
    // A 3.1.1 client on n1 with a will, dropped without DISCONNECT: the will reaches n2.
    let mut o = v4_options(&n1, Tr::Tcp, "mortal");
    set_v4_will(&mut o, "wills/mortal", "gone");
    let (c, _) = V4::connect(o).await;
    drop(c);
    let w = s2.publish_in(T).await;
    assert_eq!(
        (&w.topic[..], &w.payload[..]),
        (&b"wills/mortal"[..], &b"gone"[..])
    );
    // `$SYS` on n1 names the node and sees n2 in the cluster summary.
    let mut sys = common::clients::Proc::spawn(
        common::clients::mosquitto_sub(&n1, false, "mqttv311")
            .args(["-t", "$SYS/broker/cluster/#"]),
    );
    let line = sys.wait_line(T, |l| {
        l.starts_with("MSG|$SYS/broker/cluster/nodes|") && l.ends_with("n1,n2")
    });
    assert!(line.ends_with("|n1,n2"), "{line}");
    sys.wait_line(T, |l| {
        l.starts_with("MSG|$SYS/broker/cluster/node|") && l.ends_with("|n1")
    });
}

/// Waits (bounded) until the server's message subscriptions are `want`.
fn wait_subs(nats: &Nats, want: &[&str]) {
    let deadline = std::time::Instant::now() + T;
    loop {
        let got = nats.message_subscriptions();
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "NATS subscriptions {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_subscribed_filters_cross_the_wire() {
    let nats = Nats::start();
    let n1 = node(&nats, "n1");
    // The bridge's RPC reply subscription is the only one at first.
    let replies: Vec<String> = nats.message_subscriptions();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].starts_with("rtw.m._rtw._replies._"),
        "{replies:?}"
    );
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = replies.clone();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.sort();
        v
    };
    let mut a = V5::subscribed(&n1, "a", "room 1/+/t.c", Q5::AtMostOnce).await;
    a.subscribe("$share/g/jobs/#", Q5::AtMostOnce).await;
    let b = V5::subscribed(&n1, "b", "room 1/+/t.c", Q5::AtMostOnce).await;
    let want = with(&[
        "rtw.m._jobs [rtw-g~~jobs~2F~23]",
        "rtw.m._jobs.> [rtw-g~~jobs~2F~23]",
        "rtw.m._room~201.*._t~2Ec",
    ]);
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    wait_subs(&nats, &want);
    // The last subscriber of a filter leaving unsubscribes it on NATS.
    a.disconnect().await;
    let want = with(&["rtw.m._room~201.*._t~2Ec"]);
    wait_subs(&nats, &want.iter().map(String::as_str).collect::<Vec<_>>());
    b.disconnect().await;
    let want = with(&[]);
    wait_subs(&nats, &want.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn an_unreachable_nats_is_a_clear_startup_error_and_toml_config_works() {
    let dir = std::env::temp_dir().join(format!("rtw-cl-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("dir");
    let dead = common::free_port();
    let (code, _, err) = common::run(
        std::process::Command::new(env!("CARGO_BIN_EXE_realtime-web"))
            .env("RTW_CLUSTER__NATS", format!("nats://127.0.0.1:{dead}"))
            .env(
                "RTW_MQTT__LISTEN",
                format!("127.0.0.1:{}", common::free_port()),
            )
            .env(
                "RTW_HTTP__LISTEN",
                format!("127.0.0.1:{}", common::free_port()),
            )
            .env("RTW_STORAGE__DIR", &dir),
        T,
    );
    assert_ne!(code, Some(0));
    assert!(
        err.contains(&format!("cannot reach NATS at nats://127.0.0.1:{dead}")),
        "{err}"
    );
    // `[cluster]` in a TOML file, `nats` as a list.
    let nats = Nats::start();
    let cfg = dir.join("cluster.toml");
    std::fs::write(
        &cfg,
        format!(
            "[cluster]\nnats = [\"{}\"]\nnode = \"from-toml\"\n",
            nats.url()
        ),
    )
    .expect("config");
    let s = Server::builder().config_file(&cfg).start();
    let v: serde_json::Value =
        serde_json::from_str(&curl(&[&format!("{}/api/stats", s.http_base())])).expect("JSON");
    assert_eq!(v["cluster"]["node"], "from-toml");
    assert_eq!(v["cluster"]["nats_up"], true);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `name` from node `s`'s `/metrics`.
fn metric(s: &Server, name: &str) -> u64 {
    let out = curl(&["-s", &format!("http://127.0.0.1:{}/metrics", s.http)]);
    out.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// A flood across nodes reaches every subscriber whole: 20 mosquitto_sub on node b (its
/// fan-out is the slow part), one mosquitto_pub on node a streaming 100,000 QoS 0 messages as
/// fast as it can. NATS has no flow control between nodes; `cluster.flow_control` (on) has b
/// ask a to hold its publisher while b's link is behind (the counters printed say how often).
/// With these debug builds b keeps up even without it; `bench/cluster.sh` (release builds,
/// ~400,000 messages/s) is where it makes the difference.
#[test]
fn a_flood_across_nodes_reaches_every_subscriber_whole() {
    const N: usize = 100_000;
    const SUBS: usize = 20;
    let nats = Nats::start();
    let a = node(&nats, "a");
    let b = node(&nats, "b");
    let subs: Vec<std::process::Child> = (0..SUBS)
        .map(|_| {
            std::process::Command::new("sh")
                .args([
                    "-c",
                    &format!(
                        "mosquitto_sub -p {} -t flood -q 0 -C {N} -W 90 | wc -l",
                        b.mqtt
                    ),
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("sh")
        })
        .collect();
    let deadline = std::time::Instant::now() + T;
    while !nats
        .message_subscriptions()
        .iter()
        .any(|s| s == "rtw.m._flood")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "b never subscribed on NATS"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every mosquitto_sub is subscribed (b subscribes on NATS at its first one).
    while metric(&b, "rtw_subscriptions") < SUBS as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto_sub not subscribed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines: String = (0..N).map(|i| format!("m{i}\n")).collect();
    let mut publisher = std::process::Command::new("mosquitto_pub")
        .args(["-p", &a.mqtt.to_string(), "-t", "flood", "-q", "0", "-l"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    {
        use std::io::Write;
        let mut stdin = publisher.stdin.take().expect("stdin");
        stdin.write_all(lines.as_bytes()).expect("write");
    }
    assert!(publisher.wait().expect("mosquitto_pub").success());
    let got: Vec<usize> = subs
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("mosquitto_sub");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0)
        })
        .collect();
    let (pressure, throttled, slow) = (
        metric(&b, "rtw_cluster_pressure_total"),
        metric(&a, "rtw_cluster_throttled_total"),
        metric(&b, "rtw_cluster_slow_consumer_total"),
    );
    eprintln!("received {got:?}; b asked to slow down {pressure} times, a held {throttled} messages, b's NATS client overflowed {slow} times");
    assert!(
        got.iter().all(|&n| n == N),
        "every subscriber gets all {N}: {got:?}"
    );
}
