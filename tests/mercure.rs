//! The Mercure hub over real sockets with curl (the browser side is in `tests/webapps.rs`):
//!
//! * `subscription_events_token_expiry_and_anonymous`: without `anonymous`, a subscriber with no
//!   token is refused 401; a watcher allowed to see subscriptions receives the arrival of a
//!   subscriber (`active: true`, its topic and `mercure.payload`), that subscriber's stream ends
//!   by itself when its token's `exp` passes, and the watcher receives its departure.
//! * `replay_gap_and_earliest`: `Last-Event-ID` the history does not hold gives `event: gap`;
//!   `lastEventID=earliest` replays the whole history; the MQTT side sees the updates under the
//!   documented topic mapping (mosquitto_sub).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::auth::{hs256_with, now};
use common::clients::{mosquitto_msgs, mosquitto_ready, mosquitto_sub, Proc};
use common::*;
use serde_json::{json, Value};

const KEY: &str = "mercure-test-key-8Hq2Zt5Lw9Rc3Vn6";

fn hs256(claims: &Value) -> String {
    hs256_with(KEY, claims)
}

/// A server whose hub takes publishers' tokens signed with `KEY` and has `setting` on; the
/// hub's URL.
fn hub_with(setting: &str) -> (Server, String) {
    let s = Server::builder()
        .env("MERCURE__PUBLISHER_JWT_KEY", KEY)
        .env(setting, "true")
        .start();
    let hub = format!("http://127.0.0.1:{}/.well-known/mercure", s.http);
    (s, hub)
}

/// A curl SSE stream whose lines arrive on a channel.
struct Stream {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Stream {
    fn open(url: &str, token: Option<&str>) -> Stream {
        let mut cmd = Command::new("curl");
        cmd.args(["-sN", "-m", "60", url]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("curl");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Stream {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a `data:` line satisfying `pred`; returns it parsed as JSON if it is.
    fn wait_data(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if let Some(d) = l.strip_prefix("data: ") {
                        if pred(d) {
                            return d.to_string();
                        }
                    }
                }
                Err(_) => panic!(
                    "no {what} on the stream; it said:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits (bounded) for curl to end on its own; its exit code.
    fn wait_end(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            assert!(Instant::now() < deadline, "the stream did not end");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status(args: &[&str]) -> (String, String) {
    let (_, out, _) = run(
        Command::new("curl")
            .args(["-s", "-m", "10", "-w", "\n%{http_code}"])
            .args(args),
        Duration::from_secs(15),
    );
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code.to_string(), body.to_string())
}

#[test]
fn subscription_events_token_expiry_and_anonymous() {
    let (_s, hub) = hub_with("MERCURE__SUBSCRIPTIONS");
    let (code, body) = status(&["-m", "3", &format!("{hub}?topic=urn:a")]);
    assert_eq!(code, "401", "{body}");
    assert!(body.contains("anonymous"), "{body}");

    let watch_token = hs256(&json!({ "mercure": {
        "subscribe": ["/.well-known/mercure/subscriptions/{topic}/{subscriber}"] } }));
    let mut watcher = Stream::open(
        &format!(
            "{hub}?topic=%2F.well-known%2Fmercure%2Fsubscriptions%2F%7Btopic%7D%2F%7Bsubscriber%7D"
        ),
        Some(&watch_token),
    );
    // Its own arrival tells us it is live.
    watcher.wait_data("the watcher's own arrival", |d| {
        d.contains("\"active\":true")
    });

    let short = hs256(&json!({ "exp": now() + 3, "mercure": {
        "subscribe": ["urn:b"], "payload": { "user": "bob" } } }));
    let mut b = Stream::open(&format!("{hub}?topic=urn:b"), Some(&short));
    let arrived: Value = serde_json::from_str(&watcher.wait_data("b's arrival", |d| {
        d.contains("\"topic\":\"urn:b\"") && d.contains("\"active\":true")
    }))
    .unwrap();
    assert_eq!(arrived["type"], "Subscription", "{arrived}");
    assert_eq!(arrived["payload"]["user"], "bob", "{arrived}");
    let id = arrived["id"].as_str().unwrap();
    assert!(
        id.starts_with("/.well-known/mercure/subscriptions/urn%3Ab/urn%3Auuid%3A"),
        "{id}"
    );
    // b's token expires: its stream ends by itself, and the watcher hears it leave.
    assert_eq!(b.wait_end(), Some(0));
    let left: Value = serde_json::from_str(&watcher.wait_data("b's departure", |d| {
        d.contains("\"topic\":\"urn:b\"") && d.contains("\"active\":false")
    }))
    .unwrap();
    assert_eq!(left["id"], arrived["id"]);

    // The listing shows the watcher and no longer b; a token not covering it gets 403.
    let (code, body) = status(&[
        "-H",
        &format!("Authorization: Bearer {watch_token}"),
        &format!("{hub}/subscriptions"),
    ]);
    assert_eq!(code, "403", "{body}");
    let list_token = hs256(&json!({ "mercure": { "subscribe": ["*"] } }));
    let (code, body) = status(&[
        "-H",
        &format!("Authorization: Bearer {list_token}"),
        &format!("{hub}/subscriptions"),
    ]);
    assert_eq!(code, "200", "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let topics: Vec<&str> = v["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["topic"].as_str())
        .collect();
    assert_eq!(
        topics,
        ["/.well-known/mercure/subscriptions/{topic}/{subscriber}"],
        "{v}"
    );
}

#[test]
fn replay_gap_and_earliest() {
    let (s, hub) = hub_with("MERCURE__ANONYMOUS");
    let publisher = hs256(&json!({ "mercure": { "publish": ["*"] } }));
    let publish = |topic: &str, data: &str| {
        let (code, body) = status(&[
            "-H",
            &format!("Authorization: Bearer {publisher}"),
            "--data-urlencode",
            &format!("topic={topic}"),
            "--data-urlencode",
            &format!("data={data}"),
            &hub,
        ]);
        assert_eq!(code, "200", "{body}");
    };
    // An MQTT client on the mapped topic of `https://example.com/a+b#c` (`+` and `#` escaped).
    let mapped = "mercure/https://example.com/a%2Bb%23c";
    let mut mqtt = Proc::spawn(mosquitto_sub(&s, false, "mqttv5").args(["-C", "1", "-t", mapped]));
    mosquitto_ready(&mut mqtt);
    publish("https://example.com/a+b#c", "first");
    let line = mqtt.wait_line(Duration::from_secs(15), |l| l.starts_with("MSG|"));
    let got: Vec<_> = mosquitto_msgs(&[line])
        .into_iter()
        .map(|(topic, _, _, payload)| (topic, payload))
        .collect();
    assert_eq!(got, [(mapped.to_string(), "first".to_string())]);
    drop(mqtt);
    publish("https://example.com/x", "second");
    let mut gap = Stream::open(
        &format!("{hub}?topic=*&lastEventID=urn:uuid:not-seen"),
        None,
    );
    gap.wait_data("a gap event", |d| d.contains("\"gap\""));
    assert!(gap.seen.iter().any(|l| l == "event: gap"), "{:?}", gap.seen);
    let mut all = Stream::open(&format!("{hub}?topic=*&lastEventID=earliest"), None);
    all.wait_data("the first update", |d| d == "first");
    all.wait_data("the second update", |d| d == "second");
}
