//! Persistent sessions on disk (issue 14): what a publisher was told is accepted survives a
//! SIGKILL of the server, for every persistent session it was for.
//!
//! Each test kills the real `realtime-web` process with SIGKILL (no shutdown code runs) and
//! starts it again on the same storage directory, then resumes the sessions with real clients
//! (rumqttc 3.1.1 and 5, raw sockets where a test must stop half way through a QoS 2
//! exchange, reqwest for HTTP publishes).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use rumqttc::mqttbytes::v4;

use common::clients::*;
use common::*;

fn q4(q: u8) -> rumqttc::QoS {
    rumqttc::qos(q).expect("qos")
}

fn q5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    rumqttc::v5::mqttbytes::qos(q).expect("qos")
}

/// How long receiving a whole backlog may take.
const BACKLOG: Duration = Duration::from_secs(60);

/// Publishes `n` QoS 1 messages `{prefix}{i}` on `topic` through one 3.1.1 connection and waits
/// until every one is acknowledged (PUBACK).
async fn publish_acked(s: &Server, id: &str, topic: &str, prefix: &str, n: usize) {
    let (mut p, _) = V4::connect(v4_options(s, Tr::Tcp, id)).await;
    let client = p.client.clone();
    let (topic, prefix) = (topic.to_string(), prefix.to_string());
    let sender = tokio::spawn(async move {
        for i in 0..n {
            client
                .publish(&topic, q4(1), false, format!("{prefix}{i}"))
                .await
                .expect("publish");
        }
    });
    let mut acks = 0;
    while acks < n {
        if let rumqttc::Packet::PubAck(_) = p.incoming(T).await {
            acks += 1;
        }
    }
    sender.await.expect("sender");
    p.disconnect().await;
}

fn options4(s: &Server, id: &str) -> rumqttc::MqttOptions {
    let mut o = v4_options(s, Tr::Tcp, id);
    o.set_clean_session(false);
    o
}

fn options5(s: &Server, id: &str, expiry: u32) -> rumqttc::v5::MqttOptions {
    persistent_v5_options(s, id, expiry)
}

/// A client that hands over the payloads of the messages it receives (3.1.1 or MQTT 5).
trait Payloads {
    async fn payload_in(&mut self, timeout: Duration) -> bytes::Bytes;
}

impl Payloads for V4 {
    async fn payload_in(&mut self, timeout: Duration) -> bytes::Bytes {
        self.publish_in(timeout).await.payload
    }
}

impl Payloads for V5 {
    async fn payload_in(&mut self, timeout: Duration) -> bytes::Bytes {
        self.publish_in(timeout).await.payload
    }
}

/// Which of `{prefix}0 … {prefix}{n-1}` never arrived, reading until all did (bounded).
async fn missing(c: &mut impl Payloads, prefix: &str, n: usize) -> Vec<usize> {
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + BACKLOG;
    while seen.len() < n && tokio::time::Instant::now() < deadline {
        let payload = c.payload_in(BACKLOG).await;
        if let Some(i) = std::str::from_utf8(&payload)
            .ok()
            .and_then(|t| t.strip_prefix(prefix))
            .and_then(|t| t.parse::<usize>().ok())
        {
            seen.insert(i);
        }
    }
    (0..n).filter(|i| !seen.contains(i)).collect()
}

/// Creates a 3.1.1 (clean session 0) and an MQTT 5 (expiry 1 h) persistent session subscribed
/// to `filter` at QoS 1, both left offline.
async fn offline_sessions(s: &Server, id4: &str, id5: &str, filter: &str) {
    let (mut c4, _) = V4::connect(options4(s, id4)).await;
    c4.subscribe(filter, q4(1)).await;
    c4.disconnect().await;
    let (mut c5, _) = V5::connect(options5(s, id5, 3600)).await;
    c5.subscribe(filter, q5(1)).await;
    c5.disconnect().await;
}

// ---------------------------------------------------------------------------------------------

/// The run: 2,000 QoS 1 messages acknowledged for two offline persistent sessions, the
/// server SIGKILLed and restarted on the same storage: both sessions are back
/// (`session_present`) and get all 2,000 (duplicates allowed, none missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_keeps_every_acknowledged_message_of_offline_sessions() {
    const N: usize = 2000;
    let mut s = Server::start();
    offline_sessions(&s, "dur-311", "dur-5", "dur/#").await;
    publish_acked(&s, "dur-pub", "dur/x", "m", N).await;
    s.kill();
    s.restart();

    let (mut c4, ack) = V4::connect(options4(&s, "dur-311")).await;
    assert!(ack.session_present, "3.1.1 session lost");
    assert_eq!(missing(&mut c4, "m", N).await, Vec::<usize>::new());
    let (mut c5, ack) = V5::connect(options5(&s, "dur-5", 3600)).await;
    assert!(ack.session_present, "MQTT 5 session lost");
    assert_eq!(missing(&mut c5, "m", N).await, Vec::<usize>::new());
}

/// The same through the HTTP bridge: `POST /topics/…` (QoS 1) answers 200 only once the
/// message is on disk for the offline session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_keeps_every_http_publish_answered_200() {
    const N: usize = 200;
    let mut s = Server::start();
    offline_sessions(&s, "dur-http-311", "dur-http-5", "web/#").await;
    let http = reqwest::Client::new();
    for i in 0..N {
        let r = http
            .post(format!("{}/topics/web/x?qos=1", s.http_base()))
            .body(format!("h{i}"))
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    }
    s.kill();
    s.restart();
    let (mut c4, ack) = V4::connect(options4(&s, "dur-http-311")).await;
    assert!(ack.session_present);
    assert_eq!(missing(&mut c4, "h", N).await, Vec::<usize>::new());
    let (mut c5, ack) = V5::connect(options5(&s, "dur-http-5", 3600)).await;
    assert!(ack.session_present);
    assert_eq!(missing(&mut c5, "h", N).await, Vec::<usize>::new());
}

// ---------------------------------------------------------------------------------------------
// QoS 2 across a kill.

/// The CONNACK `r` gets, which must accept: is a session present?
fn connack_present4(r: &mut Raw) -> bool {
    let a = r.connack4();
    assert_eq!(a.code, v4::ConnectReturnCode::Success);
    a.session_present
}

fn publish4(topic: &str, qos: u8, pkid: u16, payload: &str, dup: bool) -> v4::Packet {
    let mut p = v4::Publish::new(topic, q4(qos), payload.as_bytes().to_vec());
    p.pkid = pkid;
    p.dup = dup;
    v4::Packet::Publish(p)
}

/// Publishes `payload` on `topic` at QoS 2 under `pkid` and completes the exchange (PUBREC,
/// PUBREL, PUBCOMP).
fn publish_qos2(publ: &mut Raw, topic: &str, pkid: u16, payload: &str) {
    publ.send4(publish4(topic, 2, pkid, payload, false));
    assert!(matches!(publ.recv4(T), v4::Packet::PubRec(r) if r.pkid == pkid));
    publ.send4(v4::Packet::PubRel(v4::PubRel::new(pkid)));
    assert!(matches!(publ.recv4(T), v4::Packet::PubComp(c) if c.pkid == pkid));
}

/// The packet id of the next packet `sub` receives, which must be a PUBLISH of `payload`.
fn received_id(sub: &mut Raw, payload: &str) -> u16 {
    match sub.recv4(T) {
        v4::Packet::Publish(p) if p.payload == payload.as_bytes() => p.pkid,
        other => panic!("expected {payload}, got {other:?}"),
    }
}

/// Every packet that comes within `quiet` of the previous one.
fn drain4(r: &mut Raw, quiet: Duration) -> Vec<v4::Packet> {
    let mut out = Vec::new();
    while let Ok(RawPacket::V4(p)) = r.recv(quiet) {
        out.push(p);
    }
    out
}

/// QoS 2 exchanges half done when the server is SIGKILLed are completed exactly once after the
/// restart, on both sides:
/// * the subscriber had PUBREC'd message `a` (server sent PUBREL, no PUBCOMP yet): it gets the
///   PUBREL again under the same packet id, never `a` again;
/// * the subscriber had received message `b` without answering: it gets `b` again with DUP
///   under the same packet id (so a client that keeps its QoS 2 state delivers it once);
/// * the publisher had received PUBREC for `c` and not sent PUBREL: sending `c` again under
///   the same packet id (as a client unsure of its PUBREC does) is acknowledged and not routed
///   again; PUBREL completes it;
/// * message `d`, published (QoS 2, PUBCOMP received) while the subscriber was away, arrives
///   once.
#[test]
fn qos2_half_acknowledged_before_sigkill_is_delivered_exactly_once() {
    let mut s = Server::start();
    let mut sub = Raw::open(s.mqtt, false);
    sub.send4(connect4("dur-q2-sub", false, 60));
    assert!(!connack_present4(&mut sub));
    sub.subscribe4("q2/#", q4(2));

    let mut publ = Raw::open(s.mqtt, false);
    publ.send4(connect4("dur-q2-pub", false, 60));
    connack_present4(&mut publ);
    // a: the subscriber PUBRECs, the server PUBRELs, no PUBCOMP.
    publish_qos2(&mut publ, "q2/a", 1, "a");
    let a_id = received_id(&mut sub, "a");
    sub.send4(v4::Packet::PubRec(v4::PubRec::new(a_id)));
    assert!(matches!(sub.recv4(T), v4::Packet::PubRel(r) if r.pkid == a_id));
    // b: the subscriber receives it and says nothing.
    publish_qos2(&mut publ, "q2/b", 2, "b");
    let b_id = received_id(&mut sub, "b");
    // The subscriber goes away; d is published while it is.
    drop(sub);
    publish_qos2(&mut publ, "q2/d", 4, "d");
    // c: PUBREC received, no PUBREL.
    publ.send4(publish4("q2/c", 2, 3, "c", false));
    assert!(matches!(publ.recv4(T), v4::Packet::PubRec(r) if r.pkid == 3));

    s.kill();
    s.restart();

    // The publisher resends c under the same id, then releases it.
    let mut publ = Raw::open(s.mqtt, false);
    publ.send4(connect4("dur-q2-pub", false, 60));
    assert!(connack_present4(&mut publ), "publisher's session lost");
    publ.send4(publish4("q2/c", 2, 3, "c", true));
    assert!(matches!(publ.recv4(T), v4::Packet::PubRec(r) if r.pkid == 3));
    publ.send4(v4::Packet::PubRel(v4::PubRel::new(3)));
    assert!(matches!(publ.recv4(T), v4::Packet::PubComp(c) if c.pkid == 3));

    let mut sub = Raw::open(s.mqtt, false);
    sub.send4(connect4("dur-q2-sub", false, 60));
    assert!(connack_present4(&mut sub), "subscriber's session lost");
    let mut payloads = Vec::new();
    let mut pubrel_a = false;
    let mut b_again = false;
    for p in drain4(&mut sub, Duration::from_secs(3)) {
        match p {
            v4::Packet::PubRel(r) if r.pkid == a_id => {
                pubrel_a = true;
                sub.send4(v4::Packet::PubComp(v4::PubComp::new(r.pkid)));
            }
            v4::Packet::Publish(p) => {
                let body = String::from_utf8_lossy(&p.payload).into_owned();
                if body == "b" {
                    assert_eq!(p.pkid, b_id, "b resent under another packet id");
                    assert!(p.dup, "b resent without DUP");
                    b_again = true;
                }
                sub.send4(v4::Packet::PubRec(v4::PubRec::new(p.pkid)));
                payloads.push(body);
            }
            v4::Packet::PubRel(r) => sub.send4(v4::Packet::PubComp(v4::PubComp::new(r.pkid))),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pubrel_a, "PUBREL for a not sent again");
    assert!(b_again, "b not sent again");
    payloads.sort();
    assert_eq!(
        payloads,
        vec!["b", "c", "d"],
        "a must not come again, c and d once"
    );
}

// ---------------------------------------------------------------------------------------------
// Many sessions, several kills, expiry during the outage.

/// 100 offline persistent sessions (3.1.1 and 5, alternately) with 100 QoS 1 messages queued
/// each (10,000 in all) survive three SIGKILLs in a row; a session whose expiry (2 s) passed
/// while the server was down is gone, and so is a message whose MQTT 5 expiry (2 s) passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_sessions_survive_three_kills_and_expiry_counts_the_outage() {
    const SESSIONS: usize = 100;
    const EACH: usize = 100;
    let mut s = Server::start();
    for i in 0..SESSIONS {
        let filter = format!("many/{i}");
        if i % 2 == 0 {
            let (mut c, _) = V4::connect(options4(&s, &format!("many-{i}"))).await;
            c.subscribe(&filter, q4(1)).await;
            c.disconnect().await;
        } else {
            let (mut c, _) = V5::connect(options5(&s, &format!("many-{i}"), 3600)).await;
            c.subscribe(&filter, q5(1)).await;
            c.disconnect().await;
        }
    }
    // A session that expires 2 s after it leaves.
    let (mut short, _) = V5::connect(options5(&s, "many-short", 2)).await;
    short.subscribe("many/#", q5(1)).await;
    short.disconnect().await;

    // 10,000 messages, acknowledged, spread over the 100 topics.
    let (mut p, _) = V4::connect(v4_options(&s, Tr::Tcp, "many-pub")).await;
    let client = p.client.clone();
    let sender = tokio::spawn(async move {
        for k in 0..EACH {
            for i in 0..SESSIONS {
                client
                    .publish(format!("many/{i}"), q4(1), false, format!("n{k}"))
                    .await
                    .expect("publish");
            }
        }
    });
    let mut acks = 0;
    while acks < SESSIONS * EACH {
        if let rumqttc::Packet::PubAck(_) = p.incoming(T).await {
            acks += 1;
        }
    }
    sender.await.expect("sender");
    p.disconnect().await;
    // A message that expires during the outage.
    let (mut p5c, _) = V5::connect(v5_options(&s, Tr::Tcp, "many-pub5")).await;
    let props = p5::PublishProperties {
        message_expiry_interval: Some(2),
        ..Default::default()
    };
    p5c.send("many/0", q5(1), false, b"gone", Some(props)).await;
    p5c.disconnect().await;

    for _ in 0..3 {
        s.kill();
        // Long enough for the 2 s expiries to pass while the server is down.
        std::thread::sleep(Duration::from_millis(2500));
        s.restart();
    }

    let (_short, ack) = V5::connect(options5(&s, "many-short", 2)).await;
    assert!(!ack.session_present, "an expired session came back");
    for i in 0..SESSIONS {
        let id = format!("many-{i}");
        let missing = if i % 2 == 0 {
            let (mut c, ack) = V4::connect(options4(&s, &id)).await;
            assert!(ack.session_present, "{id} lost");
            missing(&mut c, "n", EACH).await
        } else {
            let (mut c, ack) = V5::connect(options5(&s, &id, 3600)).await;
            assert!(ack.session_present, "{id} lost");
            missing(&mut c, "n", EACH).await
        };
        assert_eq!(missing, Vec::<usize>::new(), "{id}");
    }
    // The expired message (queued behind the 100) is not delivered: what comes before a
    // fresh message is at most a resent duplicate.
    let (mut c, _) = V4::connect(options4(&s, "many-0")).await;
    publish_acked(&s, "many-pub", "many/0", "fresh", 1).await;
    loop {
        let p = c.publish_in(T).await;
        assert_ne!(&p.payload[..], b"gone", "an expired message was delivered");
        if &p.payload[..] == b"fresh0" {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A full disk.

/// A small tmpfs mounted for the storage directory; unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// `None` when mounting is not permitted here (not root, no tmpfs).
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = std::env::temp_dir().join(format!("rtw-full-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(SmallDisk(dir))
    }

    /// Writes a filler file until the disk is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Publishes one QoS 1 message and returns its PUBACK reason.
async fn puback5(c: &mut V5, topic: &str, payload: Vec<u8>) -> p5::PubAckReason {
    c.client
        .publish(topic, q5(1), false, payload)
        .await
        .expect("publish");
    loop {
        if let p5::Packet::PubAck(a) = c.incoming(T).await {
            return a.reason;
        }
    }
}

/// With the disk full, publishers into a persistent session are refused — MQTT 5 PUBACK 0x80,
/// 3.1.1 connection closed, HTTP 503 — never acknowledged and then lost: after space is freed
/// and the server SIGKILLed and restarted, every message that was acknowledged arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_publishes_and_loses_nothing_acknowledged() {
    let Some(disk) = SmallDisk::mount("16m") else {
        eprintln!("SKIPPED full_disk_refuses_publishes_and_loses_nothing_acknowledged: cannot mount a tmpfs here (needs root)");
        return;
    };
    let mut s = Server::builder().dir(&disk.0).start();
    let (mut sub, _) = V5::connect(options5(&s, "full-sub", 3600)).await;
    sub.subscribe("full/#", q5(1)).await;
    sub.disconnect().await;
    let big = |i: usize| {
        let mut v = format!("f{i}:").into_bytes();
        v.resize(8000, b'x');
        v
    };
    let (mut p, _) = V5::connect(v5_options(&s, Tr::Tcp, "full-pub5")).await;
    let mut acked = Vec::new();
    for i in 500..520 {
        assert_eq!(
            puback5(&mut p, "full/x", big(i)).await,
            p5::PubAckReason::Success
        );
        acked.push(i);
    }
    let filler = disk.fill();
    let mut refused = 0;
    for i in 0..200 {
        match puback5(&mut p, "full/x", big(i)).await {
            p5::PubAckReason::Success => acked.push(i),
            p5::PubAckReason::UnspecifiedError => refused += 1,
            other => panic!("unexpected PUBACK reason {other:?}"),
        }
    }
    assert!(refused > 0, "a full disk refused nothing");

    // 3.1.1: no reason code in PUBACK, so the connection is closed instead.
    let (mut p4, _) = V4::connect(v4_options(&s, Tr::Tcp, "full-pub4")).await;
    p4.client
        .publish("full/x", q4(1), false, big(1000))
        .await
        .expect("publish");
    loop {
        match p4.next(T).await {
            Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => {
                panic!("3.1.1 publish acknowledged on a full disk")
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    // HTTP: 503 with a JSON error.
    let r = reqwest::Client::new()
        .post(format!("{}/topics/full/x?qos=1", s.http_base()))
        .body(big(2000))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.expect("JSON error");
    assert_eq!(body["error"]["status"], 503);

    // Space again: the store reopens itself and acknowledges again.
    std::fs::remove_file(filler).expect("free space");
    let mut back = None;
    for i in 3000..3100 {
        if puback5(&mut p, "full/x", big(i)).await == p5::PubAckReason::Success {
            acked.push(i);
            back = Some(i);
            break;
        }
    }
    assert!(
        back.is_some(),
        "the store did not recover once space was freed"
    );
    drop(p);

    s.kill();
    s.restart();
    let (mut sub, ack) = V5::connect(options5(&s, "full-sub", 3600)).await;
    assert!(ack.session_present);
    let mut want: BTreeSet<usize> = acked.into_iter().collect();
    while !want.is_empty() {
        let m = sub.publish_in(BACKLOG).await;
        let text = String::from_utf8_lossy(&m.payload[..16]).into_owned();
        if let Some(i) = text
            .strip_prefix('f')
            .and_then(|t| t.split(':').next())
            .and_then(|t| t.parse().ok())
        {
            want.remove(&i);
        }
    }
    drop(sub);
    drop(s);
}

// ---------------------------------------------------------------------------------------------
// Wills across a kill.

fn will5(s: &Server, id: &str, topic: &str, delay: u32) -> rumqttc::v5::MqttOptions {
    delayed_will_options(s, id, topic, delay, 3600)
}

/// Wills of persistent sessions are kept with them: a delayed will whose delay passed while the
/// server was down is published after the restart; so are the wills of clients that were still
/// connected when it was killed (their connection ended then), once their delay has passed
/// from the restart; each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wills_due_during_the_outage_are_published_after_a_kill() {
    let mut s = Server::start();
    let (mut w, _) = V4::connect(options4(&s, "will-watch")).await;
    w.subscribe("dwill/#", q4(1)).await;
    w.disconnect().await;
    // a: gone before the kill, will due 2 s later (during the outage).
    let (a, _) = V5::connect(will5(&s, "will-a", "dwill/a", 2)).await;
    drop(a);
    // b: MQTT 5, connected at the kill, will delay 1 s.
    let (_b, _) = V5::connect(will5(&s, "will-b", "dwill/b", 1)).await;
    // c: 3.1.1, connected at the kill, will without delay.
    let mut o = options4(&s, "will-c");
    set_v4_will(&mut o, "dwill/c", "will-c is gone");
    let (_c, _) = V4::connect(o).await;
    // Let the server see a's socket close before it dies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.kill();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.restart();

    let (mut w, ack) = V4::connect(options4(&s, "will-watch")).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    while got.len() < 3 {
        let p = w.publish_in(T).await;
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    // Nothing more: each will once (a marker published now comes next).
    publish_acked(&s, "will-pub", "dwill/marker", "marker", 1).await;
    loop {
        let p = w.publish_in(T).await;
        let text = String::from_utf8_lossy(&p.payload).into_owned();
        if text == "marker0" {
            break;
        }
        got.push(text);
    }
    got.sort();
    assert_eq!(
        got,
        vec!["will-a is gone", "will-b is gone", "will-c is gone"]
    );
}
