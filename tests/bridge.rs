//! The HTTP bridge end to end: real HTTP clients (curl, reqwest) and real MQTT clients
//! (mosquitto_pub / mosquitto_sub) against the real binary, crossing both ways.
//!
//! Every test starts its own server. SSE streams are read with reqwest's `bytes_stream` and a
//! small parser of `id:` / `event:` / `data:` lines (comments, i.e. heartbeats, are counted).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use common::http::expect_error;
use common::http::SendOk;
use common::sse::{id_seq, Sse};
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

fn http() -> reqwest::Client {
    common::http::client(Duration::from_secs(60))
}

/// Runs blocking work (subprocesses) off the async workers.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

// ---------------------------------------------------------------------------------------------
// MQTT and HTTP helpers

/// `mosquitto_sub -d …`: a reader thread forwards stdout lines; debug lines tell when the
/// subscription is in place, the other lines are the formatted messages.
struct MosqSub {
    child: Child,
    lines: std_mpsc::Receiver<String>,
}

impl MosqSub {
    fn start(port: u16, args: &[&str]) -> MosqSub {
        // Line-buffered (stdbuf): mosquitto_sub's debug lines are plain stdio writes.
        let mut cmd = Command::new("stdbuf");
        cmd.args([
            "-oL",
            "mosquitto_sub",
            "-d",
            "-p",
            &port.to_string(),
            "-W",
            "20",
        ])
        .args(args);
        let mut child = spawn(&mut cmd);
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let sub = MosqSub { child, lines: rx };
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match sub.lines.recv_timeout(left) {
                Ok(l) if l.starts_with("Subscribed (mid") => return sub,
                Ok(_) => {}
                Err(e) => {
                    let mut sub = sub;
                    let _ = sub.child.kill();
                    let mut err = String::new();
                    if let Some(mut e) = sub.child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    panic!("mosquitto_sub {args:?} got no SUBACK ({e}); stderr: {err}")
                }
            }
        }
    }

    /// Message lines (debug lines skipped) until `n` arrived or `timeout` passed.
    fn messages(mut self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with("Client ") || l.starts_with("Subscribed (") => {}
                Ok(l) => got.push(l),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        got
    }
}

impl Drop for MosqSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosq_pub(port: u16, args: &[&str]) {
    let (code, _, err) = run(
        Command::new("mosquitto_pub")
            .args(["-p", &port.to_string()])
            .args(args),
        T,
    );
    assert_eq!(code, Some(0), "mosquitto_pub {args:?}: {err}");
}

/// `curl -s -i` with the given arguments; returns (status, headers lowercased, body).
fn curl(args: &[&str]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl {args:?} failed: {:?}", out);
    parse_http(&out.stdout)
}

fn parse_http(raw: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut rest = raw;
    loop {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("HTTP head");
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        rest = &rest[end + 4..];
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        if status == 100 {
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        return (status, headers, rest.to_vec());
    }
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    h.iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// `PUT {base}{path}` with `body` (the topic's retained state): the status.
async fn put(base: &str, path: &str, body: &'static str) -> u16 {
    let r = http()
        .put(format!("{base}{path}"))
        .body(body)
        .send_ok()
        .await;
    r.status().as_u16()
}

async fn post(base: &str, path_and_query: &str, body: impl Into<reqwest::Body>) -> u16 {
    http()
        .post(format!("{base}{path_and_query}"))
        .body(body)
        .send()
        .await
        .expect("POST")
        .status()
        .as_u16()
}

fn vmrss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

// ---------------------------------------------------------------------------------------------
// HTTP → MQTT

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_post_reaches_mosquitto_v5_subscriber() {
    let s = Server::start();
    let port = s.mqtt;
    let base = s.http_base();
    let sub = blocking(move || {
        MosqSub::start(
            port,
            &["-V", "mqttv5", "-t", "b/ct/#", "-F", "%t %p %C|%P|%R|%D"],
        )
    })
    .await;
    let (status, headers, body) = blocking(move || {
        curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-H",
            "MQTT-User-Property: k=v",
            "-H",
            "MQTT-User-Property: who=curl",
            "-H",
            "MQTT-Response-Topic: b/reply",
            "-H",
            "MQTT-Correlation-Data: c42",
            "--data-binary",
            r#"{"a":1}"#,
            &format!("{base}/topics/b/ct/caf%C3%A9?qos=1"),
        ])
    })
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(header(&headers, "content-type")[0].starts_with("application/json"));
    let ack: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(ack["topic"], "b/ct/café");
    assert_eq!(ack["qos"], 1);
    assert_eq!(ack["retain"], false);
    // A QoS 0 publish with a plain-text type, through the same path.
    let base = s.http_base();
    let (status, _, _) = blocking(move || {
        curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "hello",
            &format!("{base}/topics/b/ct/plain?qos=0"),
        ])
    })
    .await;
    assert_eq!(status, 200);
    let got = blocking(move || sub.messages(2, T)).await;
    assert_eq!(
        got,
        vec![
            r#"b/ct/café {"a":1} application/json|k:v who:curl|b/reply|c42"#.to_string(),
            "b/ct/plain hello text/plain|||".to_string(),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// MQTT → SSE

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_reaches_sse_stream() {
    let s = Server::builder().env("BRIDGE__HEARTBEAT_SECS", 1).start();
    let mut sse = Sse::open(&s.http_base(), "topic=b/sse/%2B&retained=false", None).await;
    let port = s.mqtt;
    blocking(move || {
        mosq_pub(
            port,
            &[
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-t",
                "b/sse/one",
                "-m",
                "héllo",
                "-D",
                "publish",
                "content-type",
                "text/plain",
                "-D",
                "publish",
                "user-property",
                "k",
                "v",
            ],
        );
        mosq_pub(
            port,
            &[
                "-V",
                "mqttv311",
                "-q",
                "0",
                "-t",
                "b/sse/two",
                "-m",
                "3.1.1",
            ],
        );
        // Not matched by the filter.
        mosq_pub(port, &["-t", "b/sse/one/deeper", "-m", "no"]);
        mosq_pub(port, &["-t", "b/other", "-m", "no"]);
    })
    .await;
    let e1 = sse.expect("first").await;
    assert_eq!(e1.event, "");
    let j = e1.json();
    assert_eq!(j["id"].as_str(), e1.id.as_deref(), "data id = SSE id");
    assert_eq!(j["topic"], "b/sse/one");
    assert_eq!(j["payload"], "héllo");
    assert_eq!(j["encoding"], "utf8");
    assert_eq!(j["content_type"], "text/plain");
    assert_eq!(j["user_properties"], serde_json::json!([["k", "v"]]));
    assert!(j.get("retained").is_none());
    let e2 = sse.expect("second").await;
    let j = e2.json();
    assert_eq!(j["topic"], "b/sse/two");
    assert_eq!(j["payload"], "3.1.1");
    assert!(j.get("content_type").is_none());
    assert!(j.get("user_properties").is_none(), "{j}");
    assert!(e2.seq() > e1.seq());
    // Only heartbeats from here on.
    sse.expect_quiet(Duration::from_millis(2500)).await;
    assert!(
        sse.comments.iter().any(|c| c.contains("heartbeat")),
        "no heartbeat comment in {:?}",
        sse.comments
    );
}

/// A stream with nothing to send yet answers at once (its head, then an `: open` comment), so an
/// `EventSource` fires `open` without waiting for a message or a heartbeat; and a plain-HTTP
/// client that starts with the HTTP/2 preface (prior knowledge) is served HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_opens_at_once_and_http2_prior_knowledge_is_served() {
    // Heartbeats far apart: only the opening comment can come in time.
    let s = Server::builder().env("BRIDGE__HEARTBEAT_SECS", 600).start();
    let base = s.http_base();
    let opening = Sse::open(&base, "topic=b/open/x&retained=false", None);
    let mut sse = tokio::time::timeout(Duration::from_secs(5), opening)
        .await
        .expect("the stream's head within 5 s, before any message");
    assert!(sse.next(Duration::from_millis(1500)).await.is_none());
    assert_eq!(sse.comments, vec!["open".to_string()]);
    assert_eq!(post(&base, "/topics/b/open/x", "hi").await, 200);
    assert_eq!(sse.expect("the message").await.json()["payload"], "hi");

    let url = format!("{base}/healthz");
    let out = blocking(move || {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "10"])
            .args([
                "--http2-prior-knowledge",
                "-w",
                "%{http_version} %{http_code}",
                &url,
            ])
            .output()
            .expect("run curl")
    })
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200", "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_several_filters_and_overlaps_deliver_once() {
    let s = Server::start();
    let base = s.http_base();
    // Overlapping filters in one stream, and a second stream on one of them.
    let mut both = Sse::open(&base, "topic=b/o/%23&topic=b/o/x&retained=false", None).await;
    let mut one = Sse::open(&base, "topic=b/o/x&retained=false", None).await;
    let mut other = Sse::open(&base, "topic=b/o/y&topic=b/p&retained=false", None).await;
    for (t, m) in [("b/o/x", "1"), ("b/p", "2"), ("b/o/y", "3")] {
        assert_eq!(post(&base, &format!("/topics/{t}"), m).await, 200);
    }
    let a: Vec<String> = vec![
        both.expect("x").await.payload(),
        both.expect("y").await.payload(),
    ];
    assert_eq!(a, ["1", "3"]);
    assert_eq!(one.expect("x").await.payload(), "1");
    let b: Vec<String> = vec![
        other.expect("p").await.payload(),
        other.expect("y").await.payload(),
    ];
    assert_eq!(b, ["2", "3"]);
    both.expect_quiet(Duration::from_millis(500)).await;
    one.expect_quiet(Duration::from_millis(100)).await;
    other.expect_quiet(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_sends_retained_first_once_and_not_when_asked() {
    let s = Server::start();
    let base = s.http_base();
    http()
        .put(format!("{base}/topics/b/r/x"))
        .header("content-type", "text/plain")
        .body("state")
        .send_expect(200)
        .await;
    // retained=false: the first filter subscription must not leak the retained message.
    let mut live_only = Sse::open(&base, "topic=b/r/%2B&retained=false", None).await;
    // Default: the retained message first, marked, without an id; exactly once.
    let mut with = Sse::open(&base, "topic=b/r/x", None).await;
    let r = with.expect("retained").await;
    let j = r.json();
    assert_eq!(j["retained"], true, "{j}");
    assert_eq!(j["payload"], "state");
    assert_eq!(j["content_type"], "text/plain");
    assert!(r.id.is_none());
    assert_eq!(post(&base, "/topics/b/r/x", "live").await, 200);
    let l = with.expect("live").await;
    assert_eq!(l.payload(), "live", "{l:?}");
    assert!(l.json().get("retained").is_none());
    let first = live_only.expect("live").await;
    assert_eq!(first.payload(), "live", "retained=false got {first:?}");
    with.expect_quiet(Duration::from_millis(500)).await;
    live_only.expect_quiet(Duration::from_millis(100)).await;
    // Overlapping filters: each retained message once, whichever filters match it.
    assert_eq!(put(&base, "/topics/b/r/y", "other").await, 200);
    let mut both = Sse::open(&base, "topic=b/r/%23&topic=b/r/x&topic=b/%2B/x", None).await;
    let mut got = vec![
        both.expect("retained 1").await.payload(),
        both.expect("retained 2").await.payload(),
    ];
    got.sort();
    assert_eq!(got, ["other", "state"]);
    both.expect_quiet(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_expiry() {
    let s = Server::start();
    let (base, c) = (s.http_base(), http());
    let url = format!("{base}/topics/b/exp/x");
    c.put(format!("{url}?expiry=1"))
        .body("brief")
        .send_expect(200)
        .await;
    assert_eq!(c.get(&url).send_ok().await.status(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    c.get(&url).send_refused(404, &["expired"]).await;
    // Nor is it sent to a new stream.
    let mut sse = Sse::open(&base, "topic=b/exp/x", None).await;
    sse.expect_quiet(Duration::from_millis(300)).await;
}

// ---------------------------------------------------------------------------------------------
// Last-Event-ID

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_replays_exactly_the_missed_messages() {
    let s = Server::start();
    let base = s.http_base();
    // A retained message on the topic: a resumed stream must not repeat it.
    assert_eq!(put(&base, "/topics/b/le/state", "retained").await, 200);
    let q = "topic=b/le/%2B&retained=false";
    let mut sse = Sse::open(&base, q, None).await;
    assert_eq!(post(&base, "/topics/b/le/a", "m1").await, 200);
    let e1 = sse.expect("m1").await;
    assert_eq!(e1.payload(), "m1");
    let last = e1.id.clone().unwrap();
    drop(sse);
    let port = s.mqtt;
    for m in ["m2", "m3"] {
        assert_eq!(post(&base, "/topics/b/le/a", m).await, 200);
    }
    assert_eq!(post(&base, "/topics/b/other", "not matched").await, 200);
    blocking(move || mosq_pub(port, &["-q", "1", "-t", "b/le/b", "-m", "m4"])).await;
    // Header form.
    let mut sse = Sse::open(&base, "topic=b/le/%2B", Some(&last)).await;
    let mut got = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let e = sse.expect("replay").await;
        assert!(!e.is_gap(), "unexpected gap: {e:?}");
        ids.push(e.seq());
        got.push(e.payload());
    }
    assert_eq!(got, ["m2", "m3", "m4"]);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids {ids:?}");
    assert!(ids[0] > id_seq(&last));
    sse.expect_quiet(Duration::from_millis(300)).await;
    assert_eq!(post(&base, "/topics/b/le/a", "m5").await, 200);
    let e5 = sse.expect("live m5").await;
    assert_eq!(e5.payload(), "m5");
    let last4 = ids[2];
    drop(sse);
    // Query form (for clients that cannot set the header), from m4's id: exactly m5.
    let epoch = last.rsplit_once('-').unwrap().0.to_string();
    let mut sse = Sse::open(&base, &format!("{q}&last_event_id={epoch}-{last4}"), None).await;
    assert_eq!(sse.expect("m5 again").await.payload(), "m5");
    sse.expect_quiet(Duration::from_millis(300)).await;
    // Resuming at the head: nothing to replay, and then live.
    let head = e5.id.unwrap();
    let mut sse = Sse::open(&base, q, Some(&head)).await;
    sse.expect_quiet(Duration::from_millis(300)).await;
    assert_eq!(post(&base, "/topics/b/le/a", "m6").await, 200);
    assert_eq!(sse.expect("m6").await.payload(), "m6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_or_foreign_last_event_id_gives_gap() {
    let s = Server::builder().env("BRIDGE__HISTORY_SIZE", 2).start();
    let base = s.http_base();
    let q = "topic=b/gap/x&retained=false";
    let mut sse = Sse::open(&base, q, None).await;
    assert_eq!(post(&base, "/topics/b/gap/x", "m1").await, 200);
    let e1 = sse.expect("m1").await;
    let last = e1.id.clone().unwrap();
    drop(sse);
    for i in 2..=5 {
        assert_eq!(post(&base, "/topics/b/gap/x", format!("m{i}")).await, 200);
    }
    // Wait until the bridge has seen m5 (a live stream gets it).
    let mut watch = Sse::open(&base, q, None).await;
    assert_eq!(post(&base, "/topics/b/gap/x", "m6").await, 200);
    assert_eq!(watch.expect("m6").await.payload(), "m6");
    // Older than the history (2 messages).
    let mut sse = Sse::open(&base, q, Some(&last)).await;
    let g = sse.expect("gap").await;
    assert!(g.is_gap(), "expected a gap, got {g:?}");
    let j = g.json();
    assert!(j["gap"].as_str().unwrap().contains("history"), "{j}");
    let head = j["last_id"].as_str().unwrap().to_string();
    assert_eq!(
        g.id.as_deref(),
        Some(head.as_str()),
        "the gap carries the head id"
    );
    sse.expect_quiet(Duration::from_millis(300)).await;
    assert_eq!(post(&base, "/topics/b/gap/x", "m7").await, 200);
    assert_eq!(sse.expect("live after gap").await.payload(), "m7");
    // Another epoch (a restarted server), and something that is no id at all.
    let epoch = last.rsplit_once('-').unwrap().0;
    let foreign = if epoch == "00000000" {
        "00000001-1"
    } else {
        "00000000-1"
    };
    for (id, words) in [
        (foreign, "restarted"),
        ("garbage", "not an id"),
        (&format!("{epoch}-999999") as &str, "newer"),
    ] {
        let mut sse = Sse::open(&base, q, Some(id)).await;
        let g = sse.expect("gap").await;
        assert!(g.is_gap(), "{id}: expected a gap, got {g:?}");
        assert!(
            g.json()["gap"].as_str().unwrap().contains(words),
            "{id}: {g:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Binary payloads

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_payloads_arrive_base64_marked() {
    let s = Server::start();
    let base = s.http_base();
    let mut sse = Sse::open(&base, "topic=b/bin/%23&retained=false", None).await;
    let bin: &[u8] = &[0xff, 0x00, 0xfe, 0x80];
    let file = s.dir.join("payload.bin");
    std::fs::write(&file, bin).unwrap();
    let port = s.mqtt;
    let f = file.to_str().unwrap().to_string();
    blocking(move || mosq_pub(port, &["-q", "1", "-t", "b/bin/mqtt", "-f", &f, "-r"])).await;
    let e = sse.expect("binary").await;
    let j = e.json();
    assert_eq!(j["encoding"], "base64", "{j}");
    assert_eq!(j["payload"], "/wD+gA==");
    // The same bytes by HTTP, and back by GET, byte for byte.
    http()
        .post(format!("{base}/topics/b/bin/http"))
        .header("content-type", "application/octet-stream")
        .body(bin.to_vec())
        .send_expect(200)
        .await;
    let j = sse.expect("binary 2").await.json();
    assert_eq!(
        (j["encoding"].as_str(), j["payload"].as_str()),
        (Some("base64"), Some("/wD+gA=="))
    );
    assert_eq!(j["content_type"], "application/octet-stream");
    let res = http()
        .get(format!("{base}/topics/b/bin/mqtt"))
        .send_expect(200)
        .await;
    assert_eq!(res.bytes().await.unwrap().as_ref(), bin);
}

// ---------------------------------------------------------------------------------------------
// Long polling

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_a_message_published_during_the_wait() {
    let s = Server::start();
    let base = s.http_base();
    let url = format!("{base}/poll?topic=b/lp/%2B&timeout=20");
    let waiting = tokio::spawn(async move { http().get(url).send_ok().await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let port = s.mqtt;
    blocking(move || mosq_pub(port, &["-q", "1", "-t", "b/lp/x", "-m", "during"])).await;
    let res = waiting.await.unwrap();
    // 200 with the message, not the 204 a 20 s timeout would give.
    assert_eq!(res.status(), 200);
    let j: Value = res.json().await.unwrap();
    let evs = j["events"].as_array().unwrap();
    assert_eq!(evs.len(), 1, "{j}");
    assert_eq!(evs[0]["payload"], "during");
    assert_eq!(evs[0]["topic"], "b/lp/x");
    assert_eq!(j["last_id"], evs[0]["id"]);
    assert!(j.get("gap").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_since_returns_the_history() {
    let s = Server::start();
    let (base, c) = (s.http_base(), http());
    // A first poll to get an id.
    let url = format!("{base}/poll?topic=b/lh/x&timeout=20");
    let first = tokio::spawn(async move { http().get(url).send_ok().await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(post(&base, "/topics/b/lh/x", "p1").await, 200);
    let j: Value = first.await.unwrap().json().await.unwrap();
    assert_eq!(j["events"][0]["payload"], "p1", "{j}");
    let since = j["last_id"].as_str().unwrap().to_string();
    // Published while nobody polls.
    for m in ["p2", "p3", "p4"] {
        assert_eq!(post(&base, "/topics/b/lh/x", m).await, 200);
    }
    assert_eq!(post(&base, "/topics/b/lh/other", "no").await, 200);
    let mut got = Vec::new();
    let mut cursor = since.clone();
    let mut polls = 0;
    while got.len() < 3 {
        polls += 1;
        assert!(polls <= 5, "3 messages not caught up in 5 polls: {got:?}");
        let res = c
            .get(format!("{base}/poll?topic=b/lh/x&since={cursor}&timeout=5"))
            .send_expect(200)
            .await;
        let j: Value = res.json().await.unwrap();
        assert!(j.get("gap").is_none(), "{j}");
        for e in j["events"].as_array().unwrap() {
            got.push(e["payload"].as_str().unwrap().to_string());
        }
        cursor = j["last_id"].as_str().unwrap().to_string();
    }
    assert_eq!(got, ["p2", "p3", "p4"]);
    // The history came back whole in the first answer, without waiting for new messages.
    assert_eq!(polls, 1, "catch-up took {polls} polls");
    // A since from another server run: a gap, at once.
    let res = c
        .get(format!(
            "{base}/poll?topic=b/lh/x&since=00000000-1&timeout=5"
        ))
        .send_expect(200)
        .await;
    let j: Value = res.json().await.unwrap();
    assert!(j["gap"].is_string(), "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_times_out_with_204() {
    let s = Server::start();
    let t0 = Instant::now();
    let res = http()
        .get(format!(
            "{}/poll?topic=b/quiet/%23&timeout=1",
            s.http_base()
        ))
        .send_ok()
        .await;
    let took = t0.elapsed();
    assert_eq!(res.status(), 204);
    assert!(res.bytes().await.unwrap().is_empty());
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

// ---------------------------------------------------------------------------------------------
// Retained state

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_state_put_get_delete_also_seen_by_mqtt() {
    let s = Server::start();
    let (base, c) = (s.http_base(), http());
    let url = format!("{base}/topics/b/state/lamp");
    c.get(&url)
        .send_refused(404, &["no retained message", "b/state/lamp"])
        .await;
    let res = c
        .put(&url)
        .header("content-type", "application/json")
        .header("MQTT-User-Property", "src=http")
        .body(r#"{"on":true}"#)
        .send_expect(200)
        .await;
    let ack: Value = res.json().await.unwrap();
    assert_eq!(ack["retain"], true);
    let res = c.get(&url).send_expect(200).await;
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["mqtt-user-property"], "src=http");
    assert!(res.headers().get("etag").is_some());
    assert_eq!(res.text().await.unwrap(), r#"{"on":true}"#);
    // An MQTT subscriber gets it as retained, with its properties.
    let port = s.mqtt;
    let got = blocking(move || {
        MosqSub::start(
            port,
            &["-V", "mqttv5", "-t", "b/state/#", "-F", "%t %p %r %C %P"],
        )
        .messages(1, T)
    })
    .await;
    assert_eq!(
        got,
        [r#"b/state/lamp {"on":true} 1 application/json src:http"#]
    );
    // POST ?retain=true is the same as PUT.
    let res = c
        .post(format!("{url}?retain=true&qos=2"))
        .body("v2")
        .send_ok()
        .await;
    let ack: Value = res.json().await.unwrap();
    assert_eq!(
        (ack["retain"].as_bool(), ack["qos"].as_u64()),
        (Some(true), Some(2))
    );
    let res = c.get(&url).send_ok().await;
    assert_eq!(res.headers()["content-type"], "application/octet-stream");
    assert_eq!(res.text().await.unwrap(), "v2");
    // A plain POST does not touch the state.
    assert_eq!(post(&base, "/topics/b/state/lamp", "transient").await, 200);
    assert_eq!(c.get(&url).send_ok().await.text().await.unwrap(), "v2");
    // DELETE clears it, for HTTP and for new MQTT subscribers.
    let res = c.delete(&url).send_expect(204).await;
    assert!(res.bytes().await.unwrap().is_empty());
    c.get(&url)
        .send_refused(404, &["no retained message"])
        .await;
    let got = blocking(move || {
        MosqSub::start(port, &["-V", "mqttv5", "-t", "b/state/#", "-F", "%t %p %r"])
            .messages(1, Duration::from_millis(1500))
    })
    .await;
    assert!(got.is_empty(), "a new subscriber got {got:?}");
    // DELETE of nothing is fine too.
    assert_eq!(c.delete(&url).send_ok().await.status(), 204);
    // PUT with an empty body is refused (it would clear the state).
    c.put(&url)
        .body("")
        .send_refused(400, &["empty body", "DELETE"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etag_and_if_none_match() {
    let s = Server::start();
    let c = http();
    let url = format!("{}/topics/b/etag/x", s.http_base());
    assert_eq!(c.put(&url).body("one").send_ok().await.status(), 200);
    let res = c.get(&url).send_ok().await;
    let etag = res.headers()["etag"].to_str().unwrap().to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong etag {etag}"
    );
    assert_eq!(res.text().await.unwrap(), "one");
    // Same etag on a second read.
    let res = c.get(&url).send_ok().await;
    assert_eq!(res.headers()["etag"].to_str().unwrap(), etag);
    for inm in [
        etag.clone(),
        format!("\"nope\", {etag}"),
        format!("W/{etag}"),
        "*".to_string(),
    ] {
        let res = c.get(&url).header("if-none-match", &inm).send_ok().await;
        assert_eq!(res.status(), 304, "If-None-Match: {inm}");
        assert_eq!(res.headers()["etag"].to_str().unwrap(), etag);
        assert!(res.bytes().await.unwrap().is_empty());
    }
    c.get(&url)
        .header("if-none-match", "\"other\"")
        .send_expect(200)
        .await;
    // A new value: a new etag, and the old one no longer matches.
    assert_eq!(c.put(&url).body("two").send_ok().await.status(), 200);
    let res = c
        .get(&url)
        .header("if-none-match", &etag)
        .send_expect(200)
        .await;
    assert_ne!(res.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(res.text().await.unwrap(), "two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_properties_both_ways() {
    let s = Server::start();
    let port = s.mqtt;
    let base = s.http_base();
    // MQTT 5 publisher → GET.
    blocking(move || {
        mosq_pub(
            port,
            &[
                "-V",
                "mqttv5",
                "-r",
                "-q",
                "1",
                "-t",
                "b/up/x",
                "-m",
                "v",
                "-D",
                "publish",
                "user-property",
                "k",
                "v",
                "-D",
                "publish",
                "user-property",
                "k2",
                "with space",
            ],
        )
    })
    .await;
    let b2 = base.clone();
    let (status, headers, body) = blocking(move || curl(&[&format!("{b2}/topics/b/up/x")])).await;
    assert_eq!(status, 200);
    assert_eq!(body, b"v");
    assert_eq!(
        header(&headers, "mqtt-user-property"),
        ["k=v", "k2=with space"],
        "{headers:?}"
    );
    // POST with the header → MQTT 5 subscriber.
    let sub =
        blocking(move || MosqSub::start(port, &["-V", "mqttv5", "-t", "b/up/y", "-F", "%t %p %P"]))
            .await;
    http()
        .post(format!("{base}/topics/b/up/y"))
        .header("MQTT-User-Property", "k=v")
        .header("MQTT-User-Property", "trace = 7")
        .body("from http")
        .send_expect(200)
        .await;
    let got = blocking(move || sub.messages(1, T)).await;
    assert_eq!(got, ["b/up/y from http k:v trace:7"]);
    // A malformed header is refused.
    http()
        .post(format!("{base}/topics/b/up/y"))
        .header("MQTT-User-Property", "no-equals-sign")
        .body("x")
        .send_refused(400, &["MQTT-User-Property", "name=value"])
        .await;
}

// ---------------------------------------------------------------------------------------------
// Bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_json_4xx_that_say_what_was_wrong() {
    let s = Server::builder().env("BRIDGE__MAX_BODY", 100).start();
    let (base, c) = (s.http_base(), http());
    use reqwest::Method as M;
    // A request for `path` on this server.
    let at = |method: M, path: &str| c.request(method, format!("{base}{path}"));
    #[rustfmt::skip]
    let cases: Vec<(reqwest::RequestBuilder, u16, &[&str])> = vec![
        (at(M::POST, "/topics/a/+/b"), 400, &["+ or #"]),
        (at(M::POST, "/topics/a/%2B"), 400, &["+ or #"]),
        (at(M::POST, "/topics/a/%23"), 400, &["+ or #"]),
        (at(M::PUT, "/topics/a/%23").body("x"), 400, &["+ or #"]),
        (at(M::DELETE, "/topics/a/+"), 400, &["+ or #"]),
        (at(M::GET, "/topics/a/+"), 400, &["+ or #"]),
        (at(M::POST, "/topics/a/%FF"), 400, &["UTF-8"]),
        (at(M::GET, "/topics/a/%C3"), 400, &["UTF-8"]),
        (at(M::POST, "/topics/a/%00"), 400, &["U+0000"]),
        (at(M::POST, "/topics/$SYS/x"), 400, &["$"]),
        (at(M::POST, "/topics"), 400, &["topic is missing"]),
        (at(M::POST, "/topics/"), 400, &["topic is missing"]),
        (at(M::POST, "/topics/a?qos=3"), 400, &["qos", "\"3\""]),
        (at(M::POST, "/topics/a?qos=x"), 400, &["qos"]),
        (at(M::POST, "/topics/a?retain=maybe"), 400, &["retain"]),
        (at(M::POST, "/topics/a?expiry=0"), 400, &["expiry"]),
        (at(M::POST, "/topics/a?expiry=-5"), 400, &["expiry"]),
        (at(M::POST, "/topics/a").body(vec![b'x'; 101]), 413, &["100 bytes"]),
        (at(M::PUT, "/topics/a").body(vec![b'x'; 5000]), 413, &["100 bytes"]),
        (at(M::POST, "/topics/a").header("MQTT-Response-Topic", "a/+"), 400, &["MQTT-Response-Topic"]),
        (at(M::GET, "/events"), 400, &["topic="]),
        (at(M::GET, "/events?topic=a/%23/b"), 400, &["invalid filter"]),
        (at(M::GET, "/events?topic=a%2Bb"), 400, &["invalid filter"]),
        (at(M::GET, "/events?topic=%24SYS/%23"), 400, &["$"]),
        (at(M::GET, "/poll"), 400, &["topic="]),
        (at(M::GET, "/poll?topic=a&timeout=999"), 400, &["timeout"]),
        (at(M::GET, "/poll?topic=a&timeout=soon"), 400, &["timeout"]),
        (at(M::GET, "/nope"), 404, &["no such route"]),
        (at(M::GET, "/topicsx/a"), 404, &["no such route"]),
        (at(M::PATCH, "/topics/a"), 405, &["method not allowed"]),
        (at(M::POST, "/events?topic=a"), 405, &["method not allowed"]),
        (at(M::DELETE, "/poll?topic=a"), 405, &["method not allowed"]),
        (at(M::PUT, "/healthz"), 405, &["method not allowed"]),
        (at(M::POST, "/mqtt"), 405, &["method not allowed"]),
        (at(M::GET, "/mqtt"), 400, &["WebSocket"]),
    ];
    for (req, status, words) in cases {
        let req = req.build().unwrap();
        let what = format!("{} {}", req.method(), req.url());
        let res = c.execute(req).await.unwrap();
        if res.status() == 405 {
            assert!(
                res.headers().get("allow").is_some(),
                "{what}: 405 without Allow"
            );
        }
        let got = res.status().as_u16();
        let text = res.text().await.unwrap();
        assert_eq!(got, status, "{what}: {text}");
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
        assert_eq!(v["error"]["status"], status, "{what}: {text}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        for w in words {
            assert!(
                msg.contains(w),
                "{what}: message {msg:?} should mention {w:?}"
            );
        }
    }
    // Nothing refused was published: a POST of exactly the maximum still works.
    assert_eq!(post(&base, "/topics/a", vec![b'x'; 100]).await, 200);
}

/// Bodies past the framework's own 2 MiB default must still get the JSON 413, and a
/// `max_body` above it must be honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_is_the_only_body_limit() {
    let s = Server::start(); // max_body = 1 MiB
    let res = http()
        .post(format!("{}/topics/b/big", s.http_base()))
        .body(vec![0u8; 3 * 1024 * 1024])
        .send_ok()
        .await;
    expect_error(res, 413, &["1048576 bytes"]).await;
    let s = Server::builder()
        .env("BRIDGE__MAX_BODY", 4 * 1024 * 1024)
        .env("LIMITS__MAX_PACKET_SIZE", 8 * 1024 * 1024)
        .start();
    let mut sse = Sse::open(&s.http_base(), "topic=b/big&retained=false", None).await;
    let res = http()
        .post(format!("{}/topics/b/big", s.http_base()))
        .body(vec![b'a'; 3 * 1024 * 1024])
        .send_ok()
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let e = sse.expect("3 MiB message").await;
    assert_eq!(e.payload().len(), 3 * 1024 * 1024);
    let res = http()
        .post(format!("{}/topics/b/big", s.http_base()))
        .body(vec![b'a'; 4 * 1024 * 1024 + 1])
        .send_ok()
        .await;
    expect_error(res, 413, &["4194304 bytes"]).await;
}

// ---------------------------------------------------------------------------------------------
// Slow consumers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sse_consumer_gets_a_gap_not_unbounded_buffering() {
    const N: usize = 3000;
    const SIZE: usize = 16 * 1024;
    let s = Server::builder()
        .env("BRIDGE__STREAM_BUFFER", 4)
        .env("BRIDGE__HISTORY_SIZE", 16)
        .start();
    let (base, c) = (s.http_base(), http());
    let filler = "y".repeat(SIZE - 8);
    let burst = |c: reqwest::Client, base: String, filler: String| async move {
        for i in 0..N {
            c.post(format!("{base}/topics/b/slow/x?qos=0"))
                .body(format!("{i:07} {filler}"))
                .send_expect(200)
                .await;
        }
    };
    // Warm-up: the same burst to a stream that reads (the broker's message log for the topic
    // and the allocator's pools fill up), so the memory reading below is about the stuck one.
    let mut reader = Sse::open(&base, "topic=b/slow/x&retained=false", None).await;
    let drain =
        tokio::spawn(async move { while reader.next(Duration::from_secs(3)).await.is_some() {} });
    let w0 = vmrss_kib(s.pid());
    burst(c.clone(), base.clone(), filler.clone()).await;
    drain.await.unwrap();
    eprintln!("warm-up: VmRSS {w0} -> {} KiB", vmrss_kib(s.pid()));
    let mut slow = Sse::open(&base, "topic=b/slow/x&retained=false", None).await;
    let rss0 = vmrss_kib(s.pid());
    // N × 16 KiB (48 MiB) while the stream is not read.
    burst(c.clone(), base.clone(), filler.clone()).await;
    let rss1 = vmrss_kib(s.pid());
    // The server stays healthy while the consumer is stuck.
    c.get(format!("{base}/healthz")).send_expect(200).await;
    // A fresh stream sees a marker published after the burst: the whole burst went by.
    let mut fresh = Sse::open(&base, "topic=b/slow/x&retained=false", None).await;
    assert_eq!(post(&base, "/topics/b/slow/x", "marker").await, 200);
    loop {
        let e = fresh.expect("marker").await;
        if e.payload() == "marker" {
            break;
        }
    }
    // Now read everything the slow stream has, then one more message.
    let mut seqs: Vec<Option<usize>> = Vec::new(); // None = gap event
    let mut missed = 0u64;
    let mut sent_final = false;
    loop {
        let Some(e) = slow.next(Duration::from_secs(2)).await else {
            assert!(!sent_final, "the message after the drain did not arrive");
            assert_eq!(post(&base, "/topics/b/slow/x", "final").await, 200);
            sent_final = true;
            continue;
        };
        if e.is_gap() {
            let j = e.json();
            missed += j["missed"].as_u64().unwrap_or(0);
            seqs.push(None);
            continue;
        }
        match e.payload().as_str() {
            "final" => {
                seqs.push(Some(N + 1));
                break;
            }
            "marker" => seqs.push(Some(N)),
            p => seqs.push(Some(p[..7].parse().unwrap())),
        }
    }
    let data: Vec<usize> = seqs.iter().flatten().copied().collect();
    let gaps = seqs.iter().filter(|x| x.is_none()).count();
    eprintln!(
        "slow consumer: {} of {N}+1 delivered, {gaps} gap events, missed {missed}, \
         VmRSS {rss0} -> {rss1} KiB",
        data.len() - 1
    );
    assert!(gaps >= 1, "no gap event: {seqs:?}");
    assert_eq!(
        data.last(),
        Some(&(N + 1)),
        "the message after the drain arrives"
    );
    assert!(data.len() < N / 2, "{} of {N} were buffered", data.len());
    assert_eq!(
        missed as usize,
        N + 2 - data.len(),
        "missed counts add up (delivered {})",
        data.len()
    );
    // Messages come in order, and every hole is announced by a gap *at* the hole: no message
    // older than the gap after it, none newer before it.
    let mut prev: Option<usize> = None;
    let mut gap_since_prev = false;
    for x in &seqs {
        match x {
            None => gap_since_prev = true,
            Some(n) => {
                let expected = prev.map_or(0, |p| p + 1);
                assert!(*n >= expected, "out of order: {seqs:?}");
                assert_eq!(
                    *n != expected,
                    gap_since_prev,
                    "message {n} after {prev:?}: a gap event must mark exactly the holes"
                );
                prev = Some(*n);
                gap_since_prev = false;
            }
        }
    }
    // Bounded buffering: far less than the 48 MiB published stayed resident.
    let grew = rss1.saturating_sub(rss0);
    assert!(grew < 16 * 1024, "VmRSS grew by {grew} KiB");
}
