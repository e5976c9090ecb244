//! A person's view, checked by machine (issue 7):
//!
//! * `browser_example_and_dashboard`: headless Chromium (Debian's `/usr/bin/chromium`, driven by
//!   `tests/browser/run.mjs` through playwright-core) loads the browser example from the binary
//!   and does MQTT.js round trips with 3.1.1 and 5 over ws and wss, receives an SSE message
//!   published by curl, makes an RPC call answered by the echo example, and sees the dashboard's
//!   counters move; it saves `target/test-output/dashboard.png`.
//! * `metrics_parse_and_move_with_traffic`: `/metrics` is strict Prometheus text, its counters
//!   move with MQTT traffic, `$SYS/broker/messages/received` agrees with it, and `/healthz` and
//!   `/readyz` answer 200.
//!
//! The browser test skips (and passes) only outside CI (`CI` unset) when Chromium, node or the
//! npm packages are missing; under CI it always runs. Set up with:
//! `apt-get install chromium`, `npm ci` in `examples/browser` and in `tests/browser`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::browser::*;
use common::*;

/// `target/` (this test binary is `target/debug/deps/browser-…`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

/// Starts the echo example (MQTT 5, `rpc/#`) and waits until it serves.
fn start_echo(s: &Server) -> Kid {
    let mut child = Command::new(example_bin("echo"))
        .args(["--port", &s.mqtt.to_string()])
        .args(["--id", &format!("echo-{}", rand::random::<u32>())])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start echo");
    let out = child.stdout.take().expect("echo stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("serving") {
                let _ = tx.send(());
            }
        }
    });
    let p = Kid(child);
    rx.recv_timeout(Duration::from_secs(15))
        .expect("the echo example did not report `serving rpc/#`");
    // Its SUBSCRIBE went out just before that line; give the SUBACK a moment.
    std::thread::sleep(Duration::from_millis(300));
    p
}

/// The base64 SHA-256 of the server certificate's SubjectPublicKeyInfo (certs/README.md).
fn server_spki_sha256() -> String {
    let pem = root().join("certs/server.pem");
    let (code, out, err) = run(
        Command::new("sh").arg("-c").arg(format!(
            "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | openssl base64 -A",
            pem.display()
        )),
        Duration::from_secs(20),
    );
    let spki = out.trim().to_string();
    assert!(
        code == Some(0) && spki.len() == 44 && spki.ends_with('='),
        "computing the SPKI hash with openssl failed ({code:?}): {out} {err}"
    );
    spki
}

#[test]
fn browser_example_and_dashboard() {
    if !page_prerequisites("browser_example_and_dashboard") {
        return;
    }
    let s = Server::builder()
        .tls()
        .env(
            "BRIDGE__EXAMPLES_DIR",
            root().join("examples/browser").display(),
        )
        .start();
    let _echo = start_echo(&s);
    let shot = target_dir().join("test-output").join("dashboard.png");
    std::fs::create_dir_all(shot.parent().unwrap()).expect("create target/test-output");
    let _ = std::fs::remove_file(&shot);
    let script = root().join("tests/browser/run.mjs");
    let started = Instant::now();
    let ran = run(
        Command::new("node")
            .arg(&script)
            .args(["--http", &s.http.to_string()])
            .args(["--https", &s.https.unwrap().to_string()])
            .args(["--spki", &server_spki_sha256()])
            .arg("--screenshot")
            .arg(&shot)
            .current_dir(root().join("tests/browser")),
        Duration::from_secs(200),
    );
    let (summary, pretty) = script_summary("run.mjs", &ran, started);
    let code = ran.0;
    assert_eq!(
        summary["ok"], true,
        "the browser run failed: {}\n{pretty}",
        summary["error"]
    );
    assert_eq!(code, Some(0), "run.mjs exited {code:?}\n{pretty}");
    for key in ["ws", "wss"] {
        let rts = summary[key].as_array().expect(key);
        let versions: Vec<_> = rts.iter().map(|r| r["version"].as_i64()).collect();
        assert_eq!(versions, [Some(4), Some(5)], "{key}: {pretty}");
        for r in rts {
            assert!(
                r["url"].as_str().unwrap().starts_with(&format!("{key}://")),
                "{pretty}"
            );
        }
    }
    assert_eq!(summary["sse"]["topic"], "browser/x", "{pretty}");
    assert_eq!(summary["rpc"]["status"], 200, "{pretty}");
    assert_eq!(summary["rpc"]["body"], "ping", "{pretty}");
    assert_ne!(
        summary["dashboard_before"]["m_in"], summary["dashboard_after"]["m_in"],
        "{pretty}"
    );
    let png = std::fs::read(&shot).expect("the dashboard screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} is not a sensible PNG ({} bytes)",
        shot.display(),
        png.len()
    );
    eprintln!(
        "browser run ok in {:?}; screenshot at {}",
        started.elapsed(),
        shot.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Prometheus text format (0.0.4), parsed strictly.

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: Option<String>,
    samples: Vec<Sample>,
}

#[derive(Debug, Default)]
struct Exposition {
    families: BTreeMap<String, Family>,
}

impl Exposition {
    /// The one sample `name` with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.families
            .values()
            .flat_map(|f| &f.samples)
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    fn value(&self, name: &str) -> f64 {
        self.get(name, &[])
            .unwrap_or_else(|| panic!("/metrics has no sample {name}"))
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => s
            .parse::<f64>()
            .map_err(|e| format!("bad value {s:?}: {e}")),
        _ => Err(format!("bad value {s:?}")),
    }
}

/// `{a="x",b="y\"z"}` → labels, and the rest of the line after `}`.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = rest[..eq].trim();
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label value")),
                },
                Some((_, '\n')) => return Err("newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} repeated"));
        }
        rest = &rest[end + 1..];
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

/// The family a sample belongs to: its own name, or for `_sum`/`_count`/`_bucket` a
/// histogram's or summary's base name.
fn family_of<'a>(name: &'a str, families: &BTreeMap<String, Family>) -> Option<&'a str> {
    if families.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_sum", "_count", "_bucket"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if let Some(f) = families.get(base) {
                if f.kind == "histogram" || f.kind == "summary" {
                    return Some(base);
                }
            }
        }
    }
    None
}

fn parse_prometheus(text: &str) -> Result<Exposition, String> {
    let mut exp = Exposition::default();
    let mut seen = std::collections::HashSet::new();
    let mut last_family: Option<String> = None;
    let mut closed = std::collections::HashSet::new();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let c = c.trim_start();
            let mut parts = c.splitn(3, ' ');
            let keyword = parts.next().unwrap_or("");
            if keyword != "HELP" && keyword != "TYPE" {
                continue; // a plain comment
            }
            let name = parts.next().ok_or_else(|| at("no metric name".into()))?;
            if !is_metric_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            let arg = parts.next().unwrap_or("");
            if closed.contains(name) {
                return Err(at(format!("{name} appears again after other families")));
            }
            let f = exp.families.entry(name.to_string()).or_default();
            if keyword == "TYPE" {
                if !f.kind.is_empty() {
                    return Err(at(format!("second TYPE for {name}")));
                }
                if !f.samples.is_empty() {
                    return Err(at(format!("TYPE for {name} after its samples")));
                }
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                    return Err(at(format!("unknown type {arg:?}")));
                }
                f.kind = arg.to_string();
            } else {
                if f.help.is_some() {
                    return Err(at(format!("second HELP for {name}")));
                }
                f.help = Some(arg.to_string());
            }
            if last_family.as_deref() != Some(name) {
                if let Some(prev) = last_family.replace(name.to_string()) {
                    closed.insert(prev);
                }
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        if !rest.starts_with(' ') {
            return Err(at("expected a space before the value".into()));
        }
        let value = parse_value(fields.next().ok_or_else(|| at("no value".into()))?).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|e| at(format!("bad timestamp: {e}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing text after the timestamp".into()));
        }
        let family = family_of(name, &exp.families)
            .ok_or_else(|| at(format!("sample {name} has no # TYPE")))?
            .to_string();
        if closed.contains(&family) || last_family.as_deref() != Some(family.as_str()) {
            return Err(at(format!(
                "sample of {family} is not with the rest of its family"
            )));
        }
        let f = exp.families.get_mut(&family).unwrap();
        if f.kind.is_empty() {
            return Err(at(format!("sample {name} has no # TYPE")));
        }
        if f.kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at(format!("counter {name} is {value}")));
        }
        if !seen.insert((name.to_string(), labels.clone())) {
            return Err(at(format!("duplicate sample {name}{labels:?}")));
        }
        f.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for (name, f) in &exp.families {
        if f.kind.is_empty() {
            return Err(format!("{name} has HELP but no TYPE"));
        }
    }
    Ok(exp)
}

#[test]
fn prometheus_parser_is_strict() {
    let good = "# HELP a_total A thing\n# TYPE a_total counter\na_total 3\n\
                # TYPE g gauge\ng{t=\"x\",u=\"q\\\"\\\\\\n\"} -1.5e3 1700000000000\n\
                # TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 2\nh_count 1\n";
    let e = parse_prometheus(good).expect("valid exposition");
    assert_eq!(e.value("a_total"), 3.0);
    assert_eq!(e.get("g", &[("t", "x"), ("u", "q\"\\\n")]), Some(-1500.0));
    assert_eq!(e.value("h_count"), 1.0);
    for bad in [
        "a 1\n",                                        // no TYPE
        "# HELP a x\na 1\n",                            // HELP only
        "# TYPE a counter\na 1",                        // no final newline
        "# TYPE a counter\na one\n",                    // bad value
        "# TYPE a counter\na -1\n",                     // negative counter
        "# TYPE a counter\na{b=c} 1\n",                 // unquoted label
        "# TYPE a counter\na{b=\"c} 1\n",               // unterminated label
        "# TYPE a counter\na{1b=\"c\"} 1\n",            // bad label name
        "# TYPE a counter\na 1\na 2\n",                 // duplicate sample
        "# TYPE a counter\n# TYPE a gauge\na 1\n",      // two TYPEs
        "# TYPE a counter\na 1\n# TYPE a counter\n",    // TYPE after samples
        "# TYPE a wibble\na 1\n",                       // unknown type
        "# TYPE a counter\na 1 2 3\n",                  // trailing text
        "# TYPE a counter\n# TYPE b gauge\nb 1\na 1\n", // family split up
        "# TYPE a gauge\na_sum 1\n",                    // _sum of a gauge
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------

fn http_get(url: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    })
}

fn scrape(s: &Server) -> Exposition {
    let (status, text) = http_get(&format!("{}/metrics", s.http_base()));
    assert_eq!(status, 200, "/metrics: {text}");
    parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("/metrics is not Prometheus text: {e}\n{text}"))
}

/// Scrapes until `done` holds (counters are added per batch, a moment after the packets).
fn scrape_until(s: &Server, what: &str, done: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = scrape(s);
        if done(&e) {
            return e;
        }
        assert!(Instant::now() < deadline, "/metrics never showed {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `mosquitto_pub` sending `count` QoS 1 messages of `payload` on one connection.
fn publish(s: &Server, version: &str, count: usize, delay: &str, payload: &str) -> Command {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-p", &s.mqtt.to_string(), "-V", version, "-q", "1"])
        .args(["-t", "metrics/x", "-m", payload])
        .args(["--repeat", &count.to_string(), "--repeat-delay", delay]);
    cmd
}

/// `$SYS/broker/messages/received` values seen by `mosquitto_sub` on `$SYS/#` for `secs`.
fn sys_received(s: &Server, secs: u32) -> Child {
    spawn(Command::new("mosquitto_sub").args([
        "-p",
        &s.mqtt.to_string(),
        "-t",
        "$SYS/#",
        "-v",
        "-W",
        &secs.to_string(),
    ]))
}

fn sys_values(out: &str) -> HashMap<String, Vec<u64>> {
    let mut m: HashMap<String, Vec<u64>> = HashMap::new();
    for line in out.lines() {
        if let Some((topic, value)) = line.split_once(' ') {
            if let Ok(v) = value.trim().parse::<u64>() {
                m.entry(topic.to_string()).or_default().push(v);
            }
        }
    }
    m
}

#[test]
fn metrics_parse_and_move_with_traffic() {
    let s = Server::builder().env("SYS__INTERVAL_SECS", 1).start();
    let base = s.http_base();
    let (code, body) = http_get(&format!("{base}/healthz"));
    assert_eq!(code, 200, "/healthz: {body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = http_get(&format!("{base}/readyz"));
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {code}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let m0 = scrape(&s);
    for name in [
        "rtw_messages_received_total",
        "rtw_connections_total",
        "rtw_bytes_received_total",
        "rtw_messages_sent_total",
    ] {
        assert_eq!(m0.families[name].kind, "counter", "{name}");
    }
    assert_eq!(m0.families["rtw_connections"].kind, "gauge");
    assert!(m0.get("rtw_connections", &[("transport", "tcp")]).is_some());
    assert_eq!(m0.value("rtw_ready"), 1.0);

    // Traffic: 3.1.1 and 5 publishers, one connection each.
    let payload = "x".repeat(100);
    let n = 20;
    for v in ["mqttv311", "mqttv5"] {
        let (code, _, err) = run(
            &mut publish(&s, v, n, "0", &payload),
            Duration::from_secs(20),
        );
        assert_eq!(code, Some(0), "mosquitto_pub -V {v}: {err}");
    }
    let received0 = m0.value("rtw_messages_received_total");
    let m1 = scrape_until(&s, "the published messages", |e| {
        e.value("rtw_messages_received_total") >= received0 + 2.0 * n as f64
    });
    assert_eq!(
        m1.value("rtw_messages_received_total") - received0,
        2.0 * n as f64,
        "messages received moved by exactly what was published"
    );
    assert_eq!(
        m1.value("rtw_connections_total") - m0.value("rtw_connections_total"),
        2.0,
        "one connection per mosquitto_pub"
    );
    let bytes = m1.value("rtw_bytes_received_total") - m0.value("rtw_bytes_received_total");
    assert!(
        bytes >= (2 * n * payload.len()) as f64,
        "bytes received moved by {bytes}, less than the payloads"
    );

    // Quiet: `$SYS` (every second) equals /metrics.
    std::thread::sleep(Duration::from_millis(1500));
    let before = scrape(&s);
    let out = collect(sys_received(&s, 3), Duration::from_secs(15));
    let after = scrape(&s);
    let sys = sys_values(&out);
    let seen = sys
        .get("$SYS/broker/messages/received")
        .unwrap_or_else(|| panic!("no $SYS/broker/messages/received in:\n{out}"));
    assert!(seen.len() >= 2, "one $SYS update a second: {seen:?}\n{out}");
    let (lo, hi) = (
        before.value("rtw_messages_received_total") as u64,
        after.value("rtw_messages_received_total") as u64,
    );
    assert_eq!(lo, hi, "nothing was published meanwhile");
    assert!(
        seen.iter().all(|&v| v == lo),
        "$SYS messages/received {seen:?} but /metrics says {lo}"
    );
    let total = sys["$SYS/broker/clients/total"].last().copied();
    assert!(
        total >= Some(after.value("rtw_connections_total") as u64 - 1),
        "$SYS clients/total {total:?} vs /metrics {}",
        after.value("rtw_connections_total")
    );

    // In flight: every `$SYS` figure lies between the scrapes before and after the traffic.
    let before = scrape(&s);
    let sub = sys_received(&s, 4);
    std::thread::sleep(Duration::from_millis(300));
    let (code, _, err) = run(
        &mut publish(&s, "mqttv5", 150, "0.01", "in flight"),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "mosquitto_pub: {err}");
    let out = collect(sub, Duration::from_secs(15));
    let lo = before.value("rtw_messages_received_total") as u64;
    let after = scrape_until(&s, "the in-flight messages", |e| {
        e.value("rtw_messages_received_total") as u64 >= lo + 150
    });
    let hi = after.value("rtw_messages_received_total") as u64;
    let seen = sys_values(&out)
        .remove("$SYS/broker/messages/received")
        .unwrap_or_else(|| panic!("no $SYS/broker/messages/received in:\n{out}"));
    assert!(seen.len() >= 2, "one $SYS update a second: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "$SYS went backwards: {seen:?}"
    );
    assert!(
        seen.iter().all(|&v| (lo..=hi).contains(&v)),
        "$SYS messages/received {seen:?} outside /metrics {lo}..={hi}"
    );
    assert!(
        seen.iter().any(|&v| v > lo),
        "$SYS never showed the traffic: {seen:?} (from {lo})"
    );
}
