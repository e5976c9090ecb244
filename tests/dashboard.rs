//! The dashboard (issue 18) and the APIs behind it, with real clients over real sockets:
//!
//! * `dashboard_in_chromium`: headless Chromium (`tests/browser/dashboard.mjs`, playwright-core
//!   driving `/usr/bin/chromium`) opens `/` while curl and mosquitto_pub make traffic (MQTT,
//!   HTTP publishes, RPC calls answered by a raw MQTT 5 responder), and checks that the charts
//!   draw points that move (RPC latency included), that the clients table lists a mosquitto_sub with its
//!   subscription, and that the topic tree shows a retained topic set by curl and drops it when
//!   it is deleted from the page. Screenshots: `target/test-output/dashboard/`.
//! * `operator_apis_need_an_admin_token`: 401 without credentials, 403 with a non-admin token,
//!   200 with an admin token, for every operator route.
//! * `clients_api_lists_details_and_disconnects`: search, detail, DELETE (MQTT 5 DISCONNECT
//!   0x98; a 3.1.1 client is closed), bad paging.
//! * `clients_paging_over_ten_thousand_connections`: 10,000 raw MQTT connections, paged through
//!   (fewer where the open-file limit cannot be raised that far: see `clients_this_machine_holds`).
//! * `topics_api_walks_the_retained_tree`: levels, counts, values, depth, deletes, bad input.
//! * `history_api_charts_traffic_and_drops`: samples a second, `since`, messages and rate-limit
//!   drops as they happen, the drop causes in `/api/stats` and `/metrics`.
//!
//! The browser test skips (and passes) outside CI when Chromium, node or the npm packages are
//! missing, like `tests/browser.rs`; under CI it always runs.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::browser::script_summary;
use common::http::SendOk;
use common::mqtt::{
    Client, Connect, ConnectReturnCode, DisconnectReasonCode, Login, Packet, QoS, V,
};
use common::*;
use reqwest::StatusCode;
use serde_json::Value;

const SECRET: &str = "dashboard-test-secret-0123456789abcdef";

fn http() -> reqwest::Client {
    common::http::client(Duration::from_secs(30))
}

/// `target/` (this test binary is `target/debug/deps/dashboard-…`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

async fn get_json(c: &reqwest::Client, url: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = c.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send_ok().await;
    let status = res.status();
    let text = res.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{url}: not JSON: {text}"));
    (status, v)
}

/// Polls `url` (admin access, no auth configured) until `done` holds; panics after `WAIT`.
async fn until(c: &reqwest::Client, url: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, v) = get_json(c, url, None).await;
        assert_eq!(status, 200, "{url}: {v}");
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: last answer {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The page, in Chromium.

/// The string `field` of each element of the JSON array `v`.
fn each_str<'a>(v: &'a Value, field: &'a str) -> impl Iterator<Item = &'a str> {
    let items = v.as_array().expect("an array");
    items
        .iter()
        .map(move |x| x[field].as_str().expect("a string"))
}

#[test]
fn dashboard_in_chromium() {
    if !prerequisites(
        "dashboard_in_chromium",
        &["node", "curl", "mosquitto_sub", "mosquitto_pub"],
        &[PLAYWRIGHT],
    ) {
        return;
    }
    let s = Server::start();
    let id = format!("dash-sub-{}", rand::random::<u16>());
    let filter = "dash/sub/#";
    let mut sub = spawn(
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &s.mqtt.to_string()])
            .args(["-V", "mqttv5", "-q", "1", "-i", &id, "-t", filter]),
    );
    // A retained value set over HTTP before the page opens.
    let topic = "dash/tree/leaf";
    let value = "21.5 degrees";
    let (code, out, err) = run(
        Command::new("curl")
            .args(["-sS", "--fail-with-body", "-X", "PUT"])
            .args(["-H", "Content-Type: text/plain", "--data", value])
            .arg(format!("{}/topics/{topic}", s.http_base())),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "curl PUT: {out} {err}");
    // An MQTT 5 responder for the page's RPC traffic (`POST /rpc/dash/echo`), until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut responder =
        Client::subscribed(s.mqtt, V::V5, "dash-rpc", "rpc/dash/#", QoS::AtLeastOnce);
    let responder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut answered = 0;
            for _ in 0..10_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let Some(req) = responder.next_publish(Duration::from_millis(200)) else {
                    continue;
                };
                let Some(props) = req.properties else {
                    continue;
                };
                let Some(to) = props.response_topic else {
                    continue;
                };
                responder.publish_props(
                    &to,
                    QoS::AtLeastOnce,
                    &req.payload,
                    common::mqtt::PublishProperties {
                        correlation_data: props.correlation_data,
                        ..Default::default()
                    },
                );
                answered += 1;
            }
            answered
        })
    };
    let out_dir = target_dir().join("test-output").join("dashboard");
    let _ = std::fs::remove_dir_all(&out_dir);
    let started = Instant::now();
    let ran = run(
        Command::new("node")
            .arg(root().join("tests/browser/dashboard.mjs"))
            .args(["--http", &s.http.to_string()])
            .args(["--mqtt", &s.mqtt.to_string()])
            .args(["--client", &id, "--filter", filter])
            .args(["--retained", topic, "--value", value])
            .arg("--out")
            .arg(&out_dir)
            .current_dir(root().join("tests/browser")),
        Duration::from_secs(200),
    );
    let _ = sub.kill();
    let _ = sub.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = responder.join().unwrap();
    let (summary, pretty) = script_summary("dashboard.mjs", &ran, started);
    let code = ran.0;
    assert_eq!(summary["ok"], true, "{}\n{pretty}", summary["error"]);
    assert_eq!(code, Some(0), "{pretty}");
    // The page polls once a second at most: never more figure or chart requests than seconds.
    let polls = &summary["polls"];
    let secs = polls["seconds"].as_u64().unwrap();
    for kind in ["stats", "history"] {
        let n = polls[kind].as_u64().unwrap();
        assert!(
            n >= 1 && n <= secs + 1,
            "{kind}: {n} polls in {secs} s: {pretty}"
        );
    }
    assert_eq!(summary["get_after_delete"], "404", "{pretty}");
    assert!(answered >= 1, "the page's traffic made no RPC call");
    for shot in summary["screenshots"].as_array().unwrap() {
        let png = std::fs::read(shot.as_str().unwrap()).expect("screenshot");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
            "{shot} is not a sensible PNG"
        );
    }
    eprintln!("screenshots in {}", out_dir.display());
}

// ---------------------------------------------------------------------------------------------
// Access.

/// A token from `realtime-web token`, signed with SECRET.
fn token(subject: &str, admin: bool) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_realtime-web"));
    c.env_remove("RUST_LOG")
        .env_remove("RTW_TEST_LOG")
        .env("RTW_AUTH__JWT_SECRET", SECRET)
        .args(["token", "--subject", subject, "--ttl", "1h"])
        .args(["--publish", "#", "--subscribe", "#"]);
    if admin {
        c.arg("--admin");
    }
    let (code, out, err) = run(&mut c, Duration::from_secs(30));
    assert_eq!(code, Some(0), "realtime-web token: {err}");
    out.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_apis_need_an_admin_token() {
    let s = Server::builder().env("AUTH__JWT_SECRET", SECRET).start();
    let (base, c) = (s.http_base(), http());
    let admin = token("ops", true);
    let user = token("alice", false);
    // A client to look at and disconnect (token in the password field).
    let mut watched = Client::tcp(s.mqtt, V::V5);
    watched.send(&Packet::Connect(
        Connect {
            keep_alive: 60,
            client_id: "watched".into(),
            clean_start: true,
            properties: None,
        },
        None,
        Some(Login::new("ops", admin.clone())),
    ));
    match watched.expect(common::mqtt::WAIT, |p| matches!(p, Packet::ConnAck(_))) {
        Packet::ConnAck(a) => assert_eq!(a.code, ConnectReturnCode::Success, "{a:?}"),
        _ => unreachable!(),
    }
    let routes: [(&str, &str); 6] = [
        ("GET", "/api/history"),
        ("GET", "/api/clients"),
        ("GET", "/api/clients/watched"),
        ("GET", "/api/topics"),
        ("GET", "/api/stats"),
        ("DELETE", "/api/clients/watched"),
    ];
    for (m, path) in routes {
        let url = format!("{base}{path}");
        let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
        let res = c.request(method.clone(), &url).send_ok().await;
        assert_eq!(res.status(), 401, "{m} {path} without credentials");
        assert!(res.headers().contains_key("www-authenticate"), "{m} {path}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"]["status"], 401);
        let res = c
            .request(method.clone(), &url)
            .bearer_auth(&user)
            .send_ok()
            .await;
        assert_eq!(res.status(), 403, "{m} {path} with a non-admin token");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"]["status"], 403);
        let res = c.request(method, &url).bearer_auth(&admin).send_ok().await;
        let want = if m == "DELETE" { 204 } else { 200 };
        assert_eq!(res.status(), want, "{m} {path} with an admin token");
    }
    // The DELETE above disconnected it.
    watched.expect_disconnect(DisconnectReasonCode::AdministrativeAction);
    // The page itself and its assets are static (no token needed to load them), served from
    // the binary, and light: under 300 KB together.
    let mut total = 0;
    for path in [
        "/",
        "/assets/uPlot.iife.min.js",
        "/assets/uPlot.min.css",
        "/assets/uPlot.LICENSE.txt",
    ] {
        let res = c.get(format!("{base}{path}")).send_ok().await;
        assert_eq!(res.status(), 200, "{path}");
        total += res.bytes().await.unwrap().len();
    }
    assert!(
        total < 300 * 1024,
        "the dashboard's assets weigh {total} bytes"
    );
    // What the page loads is exactly what is served under /assets/.
    let page = c.get(format!("{base}/")).send_ok().await;
    let html = page.text().await.unwrap();
    assert!(html.contains("src=\"/assets/uPlot.iife.min.js\""));
    assert!(html.contains("href=\"/assets/uPlot.min.css\""));
}

// ---------------------------------------------------------------------------------------------
// Clients.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_api_lists_details_and_disconnects() {
    let s = Server::start();
    let (base, c) = (s.http_base(), http());
    let mut five = Client::subscribed(
        s.mqtt,
        V::V5,
        "api-five",
        "sensors/+/temp",
        QoS::AtLeastOnce,
    );
    five.subscribe("$share/g/jobs/#", QoS::AtMostOnce);
    let mut old = Client::subscribed(s.mqtt, V::V311, "api-three", "alerts/#", QoS::ExactlyOnce);
    five.ping();
    old.ping();

    let (st, v) = get_json(&c, &format!("{base}/api/clients"), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["total"], 2,
        "the bridge's own sessions are not listed: {v}"
    );
    let ids: Vec<&str> = each_str(&v["clients"], "client_id").collect();
    assert_eq!(ids, ["api-five", "api-three"], "sorted by client id");

    let (st, v) = get_json(&c, &format!("{base}/api/clients?search=THREE"), None).await;
    assert_eq!(st, 200);
    assert_eq!(v["total"], 1, "{v}");
    let three = &v["clients"][0];
    assert_eq!(three["client_id"], "api-three");
    assert_eq!(three["protocol_version"], "3.1.1");
    assert_eq!(three["transport"], "tcp");
    assert_eq!(three["subscriptions"][0]["filter"], "alerts/#");
    assert_eq!(three["subscriptions"][0]["qos"], 2);
    assert!(three["peer"].as_str().unwrap().starts_with("127.0.0.1:"));

    let (st, d) = get_json(&c, &format!("{base}/api/clients/api-five"), None).await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["protocol_version"], "5");
    let filters: BTreeSet<&str> = each_str(&d["subscriptions"], "filter").collect();
    assert_eq!(
        filters,
        BTreeSet::from(["sensors/+/temp", "$share/g/jobs/#"])
    );
    let since = d["connected_since_ms"].as_u64().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(since <= now_ms && since > now_ms - 600_000, "{d}");
    // Unsubscribing shows.
    five.unsubscribe(&["sensors/+/temp"]);
    let (_, d) = get_json(&c, &format!("{base}/api/clients/api-five"), None).await;
    assert_eq!(d["subscriptions"].as_array().unwrap().len(), 1, "{d}");

    // Bad paging and unknown clients.
    for q in ["page=0", "per_page=0", "per_page=501", "page=x"] {
        let (st, v) = get_json(&c, &format!("{base}/api/clients?{q}"), None).await;
        assert_eq!(st, 400, "{q}: {v}");
        assert_eq!(v["error"]["status"], 400);
    }
    let (st, v) = get_json(&c, &format!("{base}/api/clients/nobody"), None).await;
    assert_eq!(st, 404, "{v}");

    // Disconnect: MQTT 5 gets DISCONNECT 0x98, 3.1.1 is closed; both leave the list.
    c.delete(format!("{base}/api/clients/api-five"))
        .send_expect(204)
        .await;
    five.expect_disconnect(DisconnectReasonCode::AdministrativeAction);
    c.delete(format!("{base}/api/clients/api-three"))
        .send_expect(204)
        .await;
    old.expect_disconnect(DisconnectReasonCode::AdministrativeAction);
    let (_, v) = get_json(&c, &format!("{base}/api/clients"), None).await;
    assert_eq!(v["total"], 0, "{v}");
    c.delete(format!("{base}/api/clients/api-five"))
        .send_expect(404)
        .await;
    // A client id that needs escaping in a path.
    let odd = "odd id ü";
    let _odd = Client::new(s.mqtt, V::V5, odd);
    let (st, d) = get_json(&c, &format!("{base}/api/clients/odd%20id%20%C3%BC"), None).await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["client_id"], odd);
}

/// A 3.1.1 CONNECT for `id`: clean session, no keep-alive (the connections stay idle).
fn connect_bytes(id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    common::mqtt::frame(0x10, &body)
}

/// Connects `id` and waits for its CONNACK (accepted).
async fn raw_connect(port: u16, id: String) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connect {id}: {e}"));
    s.write_all(&connect_bytes(&id)).await.unwrap();
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(60), s.read_exact(&mut ack))
        .await
        .unwrap_or_else(|_| panic!("no CONNACK for {id}"))
        .unwrap_or_else(|e| panic!("CONNACK for {id}: {e}"));
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "CONNACK for {id}");
    s
}

/// How many clients a server can hold here: 10,000, or fewer when the open-file limit is lower
/// than one descriptor per client (in the server, and in this process) allows. The hard limit
/// caps what either process can raise itself to without CAP_SYS_RESOURCE; this process raises
/// its own soft limit to it (as src/main.rs does).
fn clients_this_machine_holds() -> usize {
    const WANT: usize = 10_000;
    let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() else {
        return WANT;
    };
    let _ = rlimit::Resource::NOFILE.set(hard.max(soft), hard);
    let limit = rlimit::Resource::NOFILE.get().map_or(soft, |(s, _)| s);
    // Headroom for the server's own files, internal listeners and the bridge.
    let fit = limit.saturating_sub(1_000) as usize;
    if fit < WANT {
        eprintln!(
            "NOTE: the open-file limit here is {limit} (hard {hard}), so this run pages over \
             {fit} clients instead of {WANT}"
        );
    }
    fit.min(WANT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_paging_over_ten_thousand_connections() {
    const BATCH: usize = 200;
    const PER_PAGE: usize = 500;
    let n = clients_this_machine_holds();
    assert!(n >= 1_000, "the open-file limit allows only {n} clients");
    let s = Server::builder()
        .env("LIMITS__MAX_CONNECTIONS_PER_IP", 20_000)
        .start();
    let (base, c) = (s.http_base(), http());
    let mut conns = Vec::with_capacity(n);
    let started = Instant::now();
    let mut next = 0;
    while next < n {
        let tasks: Vec<_> = (next..(next + BATCH).min(n))
            .map(|i| tokio::spawn(raw_connect(s.mqtt, format!("page-{i:05}"))))
            .collect();
        next += tasks.len();
        for t in tasks {
            conns.push(t.await.unwrap());
        }
    }
    eprintln!("{n} clients connected in {:?}", started.elapsed());
    // Every page, in order, each client once.
    let pages = n.div_ceil(PER_PAGE);
    let mut seen = Vec::with_capacity(n);
    for page in 1..=pages {
        let (st, v) = get_json(
            &c,
            &format!("{base}/api/clients?page={page}&per_page={PER_PAGE}"),
            None,
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["total"], n, "page {page}");
        assert_eq!(v["pages"], pages);
        for cl in v["clients"].as_array().unwrap() {
            seen.push(cl["client_id"].as_str().unwrap().to_string());
        }
    }
    let want: Vec<String> = (0..n).map(|i| format!("page-{i:05}")).collect();
    assert_eq!(seen, want, "pages in client-id order, each client once");
    // Past the end: an empty page, not an error.
    let (st, v) = get_json(
        &c,
        &format!("{base}/api/clients?page={}&per_page={PER_PAGE}", pages + 1),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["clients"].as_array().unwrap().len(), 0);
    // The default page size, and a search over all of them.
    let (_, v) = get_json(&c, &format!("{base}/api/clients?page=3"), None).await;
    assert_eq!(v["clients"][0]["client_id"], "page-00100", "{}", v["page"]);
    assert_eq!(v["pages"], n.div_ceil(50));
    let needle = format!("PAGE-{:04}", (n - 1) / 10);
    let hits: Vec<&String> = want
        .iter()
        .filter(|id| id.contains(&needle.to_lowercase()))
        .collect();
    let (_, v) = get_json(&c, &format!("{base}/api/clients?search={needle}"), None).await;
    assert_eq!(v["total"], hits.len(), "search {needle}");
    let found: Vec<&str> = each_str(&v["clients"], "client_id").collect();
    assert_eq!(found, hits);
    // Half of them leave; the list follows.
    conns.truncate(n / 2);
    until(
        &c,
        &format!("{base}/api/clients?per_page=1"),
        "the list did not shrink to the clients still connected",
        |v| v["total"] == n / 2,
    )
    .await;
    let (_, v) = get_json(&c, &format!("{base}/api/clients?page=2&per_page=1"), None).await;
    assert_eq!(v["clients"][0]["client_id"], "page-00001");
    assert_eq!(v["pages"], n / 2);
    drop(conns);
}

// ---------------------------------------------------------------------------------------------
// Topic tree.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_api_walks_the_retained_tree() {
    let s = Server::start();
    let (base, c) = (s.http_base(), http());
    let (_, empty) = get_json(&c, &format!("{base}/api/topics"), None).await;
    assert_eq!(empty["total"], 0, "{empty}");
    assert_eq!(empty["entries"].as_array().unwrap().len(), 0);
    let v0 = empty["version"].as_u64().unwrap();
    for (t, body, ct) in [
        ("home/kitchen/temp", "21.5", "text/plain"),
        ("home/kitchen/light", "on", "text/plain"),
        ("home/hall/temp", "19", "application/json"),
        ("home", "the house", "text/plain"),
        ("garden/rain", "0", "text/plain"),
    ] {
        let res = c
            .put(format!("{base}/topics/{t}"))
            .header("content-type", ct)
            .body(body)
            .send_ok()
            .await;
        assert_eq!(res.status(), 200, "PUT {t}");
    }
    // Retained over MQTT too, with a binary payload.
    let mut m = Client::new(s.mqtt, V::V5, "tree-writer");
    m.publish_retained("garden/raw", QoS::AtLeastOnce, &[0xff, 0x00, 0x10]);

    let (st, top) = get_json(&c, &format!("{base}/api/topics"), None).await;
    assert_eq!(st, 200);
    assert_eq!(top["total"], 6, "{top}");
    assert!(top["version"].as_u64().unwrap() > v0);
    let names: Vec<(&str, u64, u64)> = top["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["count"].as_u64().unwrap(),
                e["children"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, [("garden", 2, 2), ("home", 4, 2)]);
    let home = &top["entries"][1];
    assert_eq!(home["value"]["preview"], "the house");
    assert_eq!(home["more"], 2, "depth 1: its children are not listed");

    let (_, k) = get_json(&c, &format!("{base}/api/topics?prefix=home/kitchen"), None).await;
    assert_eq!(k["count"], 2);
    let temp = &k["entries"][1];
    assert_eq!(temp["topic"], "home/kitchen/temp");
    assert_eq!(temp["value"]["preview"], "21.5");
    assert_eq!(temp["value"]["content_type"], "text/plain");
    assert_eq!(temp["value"]["size"], 4);
    assert_eq!(temp["value"]["encoding"], "utf8");
    assert!(temp["value"]["updated_ms"].as_u64().unwrap() > 1_600_000_000_000);

    let (_, deep) = get_json(&c, &format!("{base}/api/topics?prefix=home&depth=2"), None).await;
    assert_eq!(deep["value"]["preview"], "the house");
    let hall = &deep["entries"][0];
    assert_eq!(hall["topic"], "home/hall");
    assert_eq!(
        hall["entries"][0]["value"]["content_type"],
        "application/json"
    );

    let (_, g) = get_json(&c, &format!("{base}/api/topics?prefix=garden"), None).await;
    let raw = &g["entries"][1];
    assert_eq!(raw["topic"], "garden/raw");
    assert_eq!(raw["value"]["encoding"], "hex");
    assert_eq!(raw["value"]["preview"], "ff0010");

    // A delete through the bridge's own route leaves the tree at once; emptied levels go.
    c.delete(format!("{base}/topics/garden/rain"))
        .send_expect(204)
        .await;
    m.publish_retained("garden/raw", QoS::AtLeastOnce, b"");
    let (_, top) = get_json(&c, &format!("{base}/api/topics"), None).await;
    assert_eq!(top["total"], 4, "{top}");
    assert_eq!(top["entries"].as_array().unwrap().len(), 1, "{top}");
    let (st, gone) = get_json(&c, &format!("{base}/api/topics?prefix=garden"), None).await;
    assert_eq!(st, 200);
    assert_eq!(gone["count"], 0, "{gone}");

    for q in [
        "depth=0",
        "depth=9",
        "prefix=home/%23",
        "prefix=%2B",
        "depth=x",
    ] {
        let (st, v) = get_json(&c, &format!("{base}/api/topics?{q}"), None).await;
        assert_eq!(st, 400, "{q}: {v}");
        assert_eq!(v["error"]["status"], 400);
    }
}

// ---------------------------------------------------------------------------------------------
// Charts.

/// The sum of one series over the samples in a history answer.
fn series_sum(h: &Value, key: &str) -> f64 {
    h[key]
        .as_array()
        .unwrap_or_else(|| panic!("no series {key}: {h}"))
        .iter()
        .filter_map(Value::as_f64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_api_charts_traffic_and_drops() {
    let s = Server::builder().env("LIMITS__MAX_PUBLISH_RATE", 5).start();
    let (base, c) = (s.http_base(), http());
    let first = until(&c, &format!("{base}/api/history"), "no sample", |h| {
        !h["t"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(first["interval_secs"], 1);
    assert_eq!(first["capacity"], 3600);
    let t0 = first["t"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_u64()
        .unwrap();
    // Traffic: 40 QoS 1 publishes at once from one client, 5 a second allowed, the rest
    // refused (PUBACK 0x97) and counted as rate-limit drops; and a subscriber receiving the
    // allowed ones.
    let _sub = Client::subscribed(s.mqtt, V::V5, "hist-sub", "hist/#", QoS::AtMostOnce);
    let mut p = Client::new(s.mqtt, V::V5, "hist-pub");
    let mut refused = 0;
    for i in 0..40 {
        let code = p.publish_msg(common::mqtt::Publish::new(
            "hist/x",
            QoS::AtLeastOnce,
            bytes::Bytes::from(format!("m{i}")),
            None,
        ));
        if code == 0x97 {
            refused += 1;
        }
    }
    assert!(refused > 0, "the rate limit refused nothing");
    c.post(format!("{base}/topics/hist/http"))
        .body("x")
        .send_expect(200)
        .await;
    let since = format!("{base}/api/history?since={t0}");
    let h = until(&c, &since, "the samples never showed the traffic", |h| {
        series_sum(h, "drops_rate_limit") > 0.0
            && series_sum(h, "messages_in") > 0.0
            && series_sum(h, "http_requests") > 0.0
    })
    .await;
    let ts: Vec<u64> = h["t"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert!(ts.iter().all(|&t| t > t0), "since={t0} gave {ts:?}");
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "{ts:?}");
    assert!(series_sum(&h, "messages_out") > 0.0, "{h}");
    assert!(series_sum(&h, "connections_tcp") >= 2.0, "{h}");
    for key in ["rpc_p50_ms", "rpc_p99_ms"] {
        assert!(
            h[key].as_array().unwrap().iter().all(Value::is_null),
            "no RPC, no latency: {h}"
        );
    }
    // One RPC call, answered by an MQTT 5 responder: a call and its latency in the samples.
    let mut responder =
        Client::subscribed(s.mqtt, V::V5, "hist-responder", "rpc/#", QoS::AtLeastOnce);
    let answer = std::thread::spawn(move || {
        let req = responder
            .next_publish(common::mqtt::WAIT)
            .expect("the RPC request");
        let props = req.properties.expect("request properties");
        let to = props.response_topic.expect("response topic");
        responder.publish_props(
            &to,
            QoS::AtLeastOnce,
            b"pong",
            common::mqtt::PublishProperties {
                correlation_data: props.correlation_data,
                ..Default::default()
            },
        );
        responder
    });
    let ping = c.post(format!("{base}/rpc/demo/ping"));
    assert_eq!(ping.body("ping").send_text().await, "pong");
    let _responder = answer.join().unwrap();
    let h = until(&c, &since, "the RPC call never reached the samples", |h| {
        series_sum(h, "rpc_calls") > 0.0
            && h["rpc_p50_ms"]
                .as_array()
                .unwrap()
                .iter()
                .any(Value::is_f64)
    })
    .await;
    let latencies = |key: &str| -> Vec<f64> {
        h[key]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_f64)
            .collect()
    };
    let (p50, p99) = (latencies("rpc_p50_ms"), latencies("rpc_p99_ms"));
    assert_eq!(p50.len(), 1, "one call, one second with a latency: {h}");
    assert!(p50[0] > 0.0 && p50[0] <= p99[0], "{h}");
    assert_eq!(series_sum(&h, "rpc_timeouts"), 0.0);
    // The same causes in the figures and the metrics.
    let (_, st) = get_json(&c, &format!("{base}/api/stats"), None).await;
    assert_eq!(st["messages"]["dropped_rate_limit"], refused, "{st}");
    let metrics = c
        .get(format!("{base}/metrics"))
        .send_ok()
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("rtw_messages_dropped_rate_limit_total {refused}")),
        "{metrics}"
    );
    let (st, v) = get_json(&c, &format!("{base}/api/history?since=soon"), None).await;
    assert_eq!(st, 400, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_are_counted_by_cause() {
    let s = Server::builder()
        .env("LIMITS__MAX_QUEUED", 2)
        .env("LIMITS__MAX_PACKET_SIZE", 4096)
        .start();
    let (base, c) = (s.http_base(), http());
    // Queue full: ten retained messages, delivered by the edge itself on subscribe to a client
    // that reads but never acknowledges, one message in flight at a time.
    let mut p = Client::new(s.mqtt, V::V5, "dropper");
    for i in 0..10 {
        p.publish_retained(&format!("drops/q/{i}"), QoS::AtLeastOnce, b"q");
    }
    let mut slow = Client::connect(
        s.mqtt,
        V::V5,
        common::mqtt::Opts::new("slow").props(|p| p.receive_maximum = Some(1)),
    );
    slow.auto_ack = false;
    slow.subscribe("drops/q/#", QoS::AtLeastOnce);
    // Too large for its client: a 300-byte message to a client that takes 100-byte packets.
    let mut small = Client::connect(
        s.mqtt,
        V::V5,
        common::mqtt::Opts::new("small").props(|p| p.max_packet_size = Some(100)),
    );
    small.subscribe("drops/big", QoS::AtMostOnce);
    p.publish("drops/big", QoS::AtMostOnce, &[b'x'; 300]);
    // And a packet over limits.max_packet_size from a client: closed with 0x95, counted too.
    let mut big = Client::new(s.mqtt, V::V5, "too-big");
    big.send(&Packet::Publish(common::mqtt::Publish::new(
        "drops/huge",
        QoS::AtMostOnce,
        vec![0u8; 8192],
        None,
    )));
    big.expect_disconnect(DisconnectReasonCode::PacketTooLarge);
    p.ping();
    // One in flight, two queued, seven dropped; one too large for its client, one too large
    // for the broker.
    let st = until(&c, &format!("{base}/api/stats"), "drop causes", |v| {
        v["messages"]["dropped_queue_full"] == 7 && v["messages"]["dropped_too_large"] == 2
    })
    .await;
    assert_eq!(st["messages"]["dropped_rate_limit"], 0, "{st}");
    assert_eq!(st["messages"]["dropped"], 9, "{st}");
    let (_, slow_info) = get_json(&c, &format!("{base}/api/clients/slow"), None).await;
    assert_eq!(slow_info["inflight"], 1, "{slow_info}");
    assert_eq!(slow_info["queued"], 2, "{slow_info}");
    assert_eq!(slow_info["drops"], 7, "{slow_info}");
    let (_, small_info) = get_json(&c, &format!("{base}/api/clients/small"), None).await;
    assert_eq!(small_info["drops"], 1, "{small_info}");
    let h = until(
        &c,
        &format!("{base}/api/history"),
        "drops in the samples",
        |h| series_sum(h, "drops_queue_full") > 0.0 && series_sum(h, "drops_too_large") > 0.0,
    )
    .await;
    assert!(series_sum(&h, "drops_other") < 0.5, "{h}");
    drop(slow);
}
