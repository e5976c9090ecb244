//! Request/response as the seed describes it (issue 17): reply topic templates, so the seed's own
//! echo (`/$req/realtimeweb/…` copied to `/$res/realtimeweb/…`) completes round trips with
//! 3.1.1 and MQTT 5 responders; and requests that wait for a responder (`wait_secs`,
//! `RTW-Wait`, `rpc.max_waiting`), drained in arrival order once one subscribes.
//!
//! Real HTTP calls (reqwest) against the real binary; responders are the `echo` example and
//! rumqttc clients from `tests/common/clients.rs`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::clients::{v5_options, Tr, V5};
use common::files::Config;
use common::http::expect_error;
use common::http::SendOk;
use common::rpc::*;
use common::*;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;

const T: Duration = Duration::from_secs(20);

fn http() -> reqwest::Client {
    common::http::client(Duration::from_secs(70))
}

/// The seed's route, as a new user writes it (with `reply_topic`; `reply_level` is then unused).
const SEED: &str = r#"
[[rpc.routes]]
path = "/realtimeweb/{rest...}"
topic = "/$req/realtimeweb/{rest}"
convention = "topic"
reply_level = "$res"
reply_topic = "/$res/realtimeweb/{rest}"
wait_secs = 15
"#;

/// Starts `POST {base}/rpc/{path}` with `body`, willing to wait 30 s for a responder (timeout
/// 40 s), on a task of its own.
fn waiting_call(
    c: &reqwest::Client,
    base: &str,
    path: &str,
    body: String,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let call = c.post(format!("{base}/rpc/{path}")).body(body);
    let call = call.header("RTW-Wait", "30").header("RTW-Timeout", "40");
    tokio::spawn(call.send_ok())
}

/// The response to a call started by [`waiting_call`], within `T`.
async fn answer_of(call: tokio::task::JoinHandle<reqwest::Response>) -> reqwest::Response {
    let r = tokio::time::timeout(T, call).await.expect("answered");
    r.expect("call task")
}

/// Waits until `/api/stats` → `rpc.{key}` is `n`.
async fn wait_stat(c: &reqwest::Client, base: &str, key: &str, n: u64) {
    wait_rpc_stats(c, base, T, |st| st[key] == n).await;
}

/// Round trips through the seed's route: the calls wait for the echo (`wait_secs`), so no probe
/// loop is needed.
async fn seed_round_trips(c: &reqwest::Client, base: &str, who: &str) {
    for i in 0..5 {
        let body = format!("{who} says hello {i}");
        let r = c
            .post(format!("{base}/realtimeweb/chat/room-{i}"))
            .body(body.clone())
            .send_ok()
            .await;
        assert_eq!(r.status(), 200, "{who}, call {i}");
        assert_eq!(r.text().await.unwrap(), body, "{who}, call {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_echo_completes_round_trips_v311_and_v5() {
    let cfg = Config::new("rpc-wait", SEED);
    let s = Server::builder().config_file(&cfg.0).start();
    let (c, base) = (http(), s.http_base());
    let seed = [
        "--filter",
        "/$req/realtimeweb/#",
        "--reply-prefix",
        "/$res/realtimeweb",
    ];
    // An MQTT 3.1.1 echo copying `/$req/realtimeweb/…` to `/$res/realtimeweb/…`.
    let mut args = vec!["--v311"];
    args.extend(seed);
    let echo311 = common::echo(&s, &args);
    seed_round_trips(&c, &base, "3.1.1").await;
    drop(echo311);
    // The same copy done by an MQTT 5 client (no Response Topic used).
    let _echo5 = common::echo(&s, &seed);
    seed_round_trips(&c, &base, "MQTT 5").await;
    assert_eq!(rpc_stats(&c, &base).await["late_replies"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_filter_that_overlaps_its_requests_is_a_startup_error() {
    // Replies under the requests' own namespace: `svc/replies/x/<corr>` is a request topic too.
    let cfg = Config::new(
        "rpc-wait",
        r#"
[[rpc.routes]]
path = "/svc/{rest...}"
topic = "svc/{rest}"
convention = "topic"
reply_topic = "svc/replies/{rest}"
"#,
    );
    let dir = std::env::temp_dir().join(format!("rtw-rpc-overlap-{}", rand::random::<u32>()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_realtime-web"));
    cmd.arg("--config")
        .arg(&cfg.0)
        .env("RTW_MQTT__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("RTW_HTTP__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("RTW_STORAGE__DIR", &dir)
        .env_remove("RUST_LOG");
    let (code, _out, err) = run(&mut cmd, T);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}: {err}");
    assert!(
        err.contains("could match its own requests") && err.contains("/svc/{rest...}"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_before_the_responder_starts_succeeds_once_it_does() {
    let s = Server::start();
    let (c, base) = (http(), s.http_base());
    let call = {
        let (c, base) = (c.clone(), base.clone());
        tokio::spawn(async move {
            c.post(format!("{base}/rpc/later/echo"))
                .header("RTW-Wait", "20")
                .header("RTW-Timeout", "30")
                .body("are you there?")
                .send_ok()
                .await
        })
    };
    wait_stat(&c, &base, "waiting", 1).await;
    // The responder starts 2 s later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _echo = common::echo(&s, &[]);
    let r = tokio::time::timeout(T, call)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "are you there?");
    let st = rpc_stats(&c, &base).await;
    assert_counts(&st, &[("waited", 1), ("waiting", 0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_calls_drain_in_arrival_order_and_past_max_waiting_get_429() {
    let s = Server::builder().env("RPC__MAX_WAITING", 5).start();
    let (c, base) = (http(), s.http_base());
    let mut calls = Vec::new();
    for i in 0..5u64 {
        calls.push(waiting_call(&c, &base, "queue/job", format!("job {i}")));
        // Each joins the queue before the next is made: arrival order is this order.
        wait_stat(&c, &base, "waiting", i + 1).await;
    }
    // One more than rpc.max_waiting: 429 with Retry-After, at once.
    let r = c
        .post(format!("{base}/rpc/queue/job"))
        .header("RTW-Wait", "30")
        .body("one too many")
        .send_ok()
        .await;
    assert!(r.headers().contains_key("retry-after"), "Retry-After");
    expect_error(r, 429, &["max_waiting"]).await;
    assert_eq!(rpc_stats(&c, &base).await["rejected_waiting"], 1);

    // A responder comes: it gets the five in the order they came.
    let mut resp = V5::subscribed(&s, "queue-responder", "rpc/queue/#", QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(resp.publish_in(T).await);
    }
    let order: Vec<String> = got
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    let want: Vec<String> = (0..5).map(|i| format!("job {i}")).collect();
    assert_eq!(order, want, "drained in arrival order");
    for p in &got {
        let props = p.properties.clone().unwrap_or_default();
        let reply = PublishProperties {
            correlation_data: props.correlation_data.clone(),
            ..Default::default()
        };
        let body = format!("done: {}", String::from_utf8_lossy(&p.payload));
        resp.send(
            &props.response_topic.expect("response topic"),
            QoS::AtLeastOnce,
            false,
            body.as_bytes(),
            Some(reply),
        )
        .await;
    }
    for (i, call) in calls.into_iter().enumerate() {
        let r = answer_of(call).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), format!("done: job {i}"));
    }
    let st = rpc_stats(&c, &base).await;
    assert_eq!(
        (st["waited"].clone(), st["waiting"].clone()),
        (5.into(), 0.into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_are_bounded_by_wait_and_by_the_timeout() {
    let s = Server::builder().env("RPC__MAX_WAIT_SECS", 5).start();
    let (c, base) = (http(), s.http_base());
    // Nobody comes within the wait: 503, and nothing is left waiting.
    c.post(format!("{base}/rpc/nobody/home"))
        .header("RTW-Wait", "1")
        .send_refused(503, &["within 1 s"])
        .await;
    // The caller's timeout is shorter than the wait: 504 at the timeout.
    c.post(format!("{base}/rpc/nobody/home"))
        .header("RTW-Wait", "5")
        .header("RTW-Timeout", "1")
        .send_refused(504, &["timeout"])
        .await;
    // Over rpc.max_wait_secs, or not a number: 400.
    for bad in ["6", "soon", "-1"] {
        let msg = c
            .post(format!("{base}/rpc/nobody/home"))
            .header("RTW-Wait", bad)
            .send_error(400)
            .await;
        assert!(msg.contains("rtw-wait"), "{bad}: {msg}");
    }
    // Without a wait, still 503 at once.
    c.post(format!("{base}/rpc/nobody/home"))
        .send_error(503)
        .await;
    let st = rpc_stats(&c, &base).await;
    assert_counts(&st, &[("waiting", 0), ("in_flight", 0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_responders_take_one_waiting_request_each() {
    let s = Server::start();
    let (c, base) = (http(), s.http_base());
    let mut calls = Vec::new();
    for i in 0..6u64 {
        calls.push(waiting_call(&c, &base, "pool/work", format!("task {i}")));
    }
    wait_stat(&c, &base, "waiting", 6).await;
    // Two members of one share group; each request goes to one of them, once.
    let mut members = Vec::new();
    for m in 0..2 {
        let (mut v, _) = V5::connect(v5_options(&s, Tr::Tcp, &format!("pool-{m}"))).await;
        v.subscribe("$share/pool/rpc/pool/#", QoS::AtLeastOnce)
            .await;
        members.push(v);
    }
    // Everything is taken first (a member's `send` below reads past other packets).
    let mut got = Vec::new();
    let deadline = Instant::now() + T;
    while got.len() < 6 {
        assert!(Instant::now() < deadline, "{} of 6 delivered", got.len());
        for (m, v) in members.iter_mut().enumerate() {
            if let Ok(p) = tokio::time::timeout(Duration::from_millis(200), v.publish_in(T)).await {
                got.push((m, p));
            }
        }
    }
    let mut seen = Vec::new();
    for (m, p) in got {
        let props = p.properties.clone().unwrap_or_default();
        let reply = PublishProperties {
            correlation_data: props.correlation_data.clone(),
            ..Default::default()
        };
        let body = String::from_utf8_lossy(&p.payload).into_owned();
        seen.push(body.clone());
        members[m]
            .send(
                &props.response_topic.expect("response topic"),
                QoS::AtLeastOnce,
                false,
                format!("member {m}: {body}").as_bytes(),
                Some(reply),
            )
            .await;
    }
    seen.sort();
    let want: Vec<String> = (0..6).map(|i| format!("task {i}")).collect();
    assert_eq!(seen, want, "each request delivered to exactly one member");
    for (i, call) in calls.into_iter().enumerate() {
        let r = answer_of(call).await;
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(text.ends_with(&format!("task {i}")), "{text}");
    }
}
