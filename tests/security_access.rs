//! Security end to end, who may connect at all: password-file users with rules (and reload
//! on SIGHUP), anonymous access only when allowed, and loopback-only mode refusing rebound host
//! names.
//!
//! Real clients throughout: mosquitto_pub/sub (3.1.1 and 5), rumqttc, paho over WebSocket
//! (`tests/paho/auth.py`), reqwest and raw HTTP, openssl s_client. Where the exact reason code on
//! the wire matters, a raw socket reads it byte for byte (`common::mqtt::Client::frame`).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::auth::*;
use common::clients::{p5, run_ok, v5_options, Tr, T, V5};
use common::files::{temp_dir, write_config};
use common::http::json_error;
use common::http::SendOk;
use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_users_with_rules_and_reload() {
    let dir = temp_dir("passwd");
    let file = dir.join("passwd");
    passwd(&file, "alice", "alice-pw-1");
    passwd(&file, "bob", "bob-pw-2");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("alice-pw-1") && !text.contains("bob-pw-2"));
    for l in text.lines() {
        let (_, hash) = l.split_once(':').unwrap();
        assert!(hash.starts_with("$argon2id$"), "{l}");
    }
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[auth]
password_file = "{}"

[[auth.rules]]
user = "alice"
publish = ["alice/#"]
subscribe = ["alice/#", "shared/#"]

[[auth.rules]]
user = "bob"
publish = ["shared/#"]
subscribe = ["bob/#"]

[[auth.rules]]
user = "*"
subscribe = ["everyone/#"]
"#,
            file.display()
        ),
    )
    .unwrap();
    let s = Server::builder().config_file(&cfg).start();

    // Right and wrong passwords, unknown users, anonymous.
    let codes = |u: &str, p: &str| token_codes(s.mqtt, u, p);
    assert_eq!(codes("alice", "alice-pw-1"), (0, 0));
    assert_eq!(codes("alice", "bob-pw-2"), (0x05, 0x86));
    assert_eq!(codes("nobody", "alice-pw-1"), (0x05, 0x86));
    let (code, _) = mosq_pub(&s, "mqttv311", Some("alice"), Some("wrong"), "alice/x", 0);
    assert_eq!(code, Some(5));
    let (code, _) = mosq_pub(&s, "mqttv5", Some("alice"), Some("wrong"), "alice/x", 0);
    assert_eq!(code, Some(0x86));
    let (code, _) = mosq_pub(&s, "mqttv5", None, None, "alice/x", 0);
    assert_eq!(code, Some(0x87));

    // The rules.
    let mut alice = v5_with(&s, Tr::Tcp, "alice", "alice", "alice-pw-1").await;
    let mut bob = v5_with(&s, Tr::Tcp, "bob", "bob", "bob-pw-2").await;
    use p5::SubscribeReasonCode as S5;
    assert_eq!(
        v5_subscribe_many(&mut alice, &["alice/#", "shared/#", "bob/#", "everyone/#"]).await,
        vec![
            S5::Success(Q5::AtLeastOnce),
            S5::Success(Q5::AtLeastOnce),
            S5::NotAuthorized,
            S5::Success(Q5::AtLeastOnce)
        ]
    );
    assert_eq!(
        v5_subscribe_many(&mut bob, &["alice/#", "bob/#", "shared/#"]).await,
        vec![
            S5::NotAuthorized,
            S5::Success(Q5::AtLeastOnce),
            S5::NotAuthorized
        ]
    );
    publish_allowed(&mut bob, "shared/1", "from bob").await;
    publish_refused(&mut bob, "alice/1", "x").await;
    // (alice publishes on a second connection: waiting for a PUBACK skips messages.)
    let mut alice_pub = v5_with(&s, Tr::Tcp, "alice-pub", "alice", "alice-pw-1").await;
    publish_refused(&mut alice_pub, "shared/2", "x").await;
    publish_allowed(&mut alice_pub, "alice/end", "x").await;
    publish_allowed(&mut bob, "shared/end", "x").await;
    assert_eq!(
        v5_until_all(&mut alice, &["alice/end", "shared/end"]).await,
        ["shared/1"]
    );
    // mosquitto with a password user.
    let (code, err) = mosq_pub(&s, "mqttv311", Some("bob"), Some("bob-pw-2"), "shared/3", 1);
    assert_eq!(code, Some(0), "{err}");

    // HTTP Basic.
    let h = http();
    let url = |p: &str| format!("{}{p}", s.http_base());
    h.get(url("/topics/alice/x"))
        .header("authorization", basic("alice", "alice-pw-1"))
        .send_expect(404)
        .await;
    let r = h
        .get(url("/topics/alice/x"))
        .header("authorization", basic("alice", "nope"))
        .send_ok()
        .await;
    assert_401(r, true).await;
    let r = h
        .post(url("/topics/alice/x"))
        .header("authorization", basic("bob", "bob-pw-2"))
        .body("x")
        .send_ok()
        .await;
    json_error(r, 403).await;

    // SIGHUP reloads the file: a new user gets in, a removed one no longer does.
    passwd(&file, "carol", "carol-pw-3");
    let mut c = realtime_web();
    c.arg("passwd").arg(&file).arg("alice").arg("-D");
    run_ok(&mut c);
    assert_eq!(codes("carol", "carol-pw-3"), (0x05, 0x86));
    run_ok(Command::new("kill").args(["-HUP", &s.pid().to_string()]));
    let deadline = Instant::now() + T;
    while codes("carol", "carol-pw-3") != (0, 0) {
        assert!(Instant::now() < deadline, "carol not accepted after SIGHUP");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(codes("alice", "alice-pw-1"), (0x05, 0x86));
    // carol has only the "*" rule.
    let mut carol = v5_with(&s, Tr::Tcp, "carol", "carol", "carol-pw-3").await;
    assert_eq!(
        v5_subscribe_many(&mut carol, &["everyone/#", "shared/#"]).await,
        vec![S5::Success(Q5::AtLeastOnce), S5::NotAuthorized]
    );
    // Bob's connection survived the reload.
    publish_allowed(&mut bob, "shared/4", "x").await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_only_when_allowed() {
    // Authentication configured: anonymous clients are refused everywhere.
    let s = jwt_server().start();
    let mut h = Hello::new("anon");
    assert_eq!(connack(s.mqtt, &h), 0x05);
    h.v5 = true;
    assert_eq!(connack(s.mqtt, &h), 0x87);
    // A user name without password is still anonymous.
    h.user = Some("alice");
    assert_eq!(connack(s.mqtt, &h), 0x87);
    let ev = paho_auth(s.http, true, "5", None, None, &[]);
    assert_eq!(paho_connack(&ev), 0x87);
    let r = http()
        .get(format!("{}/topics/x", s.http_base()))
        .send_ok()
        .await;
    assert_401(r, false).await;
    drop(s);

    // allow_anonymous = true, with rules for anonymous clients.
    let dir = temp_dir("anon");
    let cfg = write_config(
        &dir,
        r#"
[[auth.rules]]
user = "anonymous"
subscribe = ["public/#"]

[[auth.rules]]
user = "*"
publish = ["public/#"]
subscribe = ["public/#"]
"#,
    );
    let s = jwt_server()
        .env("AUTH__ALLOW_ANONYMOUS", "true")
        .config_file(&cfg)
        .start();
    let mut h = Hello::new("anon");
    assert_eq!(connack(s.mqtt, &h), 0);
    h.v5 = true;
    assert_eq!(connack(s.mqtt, &h), 0);
    // A bad token is still refused, not taken as anonymous.
    assert_eq!(token_codes(s.mqtt, "x", "forged.token.here"), (0x05, 0x86));
    let mut anon = V5::connect(v5_options(&s, Tr::Tcp, "anon5")).await.0;
    use p5::SubscribeReasonCode as S5;
    assert_eq!(
        v5_subscribe_many(&mut anon, &["public/#", "private/#"]).await,
        vec![S5::Success(Q5::AtLeastOnce), S5::NotAuthorized]
    );
    publish_refused(&mut anon, "public/x", "x").await;
    // A token without grants gets the "*" rule.
    let plain = hs(&json!({"sub": "t", "iss": ISS, "aud": AUD, "exp": now() + 3600}));
    let mut t = v5_with(&s, Tr::Tcp, "plain", "t", &plain).await;
    publish_allowed(&mut t, "public/y", "y").await;
    publish_refused(&mut t, "private/y", "y").await;
    let got: Vec<String> = vec![anon.publish_in(T).await]
        .into_iter()
        .map(|p| String::from_utf8_lossy(&p.topic).into_owned())
        .collect();
    assert_eq!(got, ["public/y"]);
    let hc = http();
    hc.get(format!("{}/topics/public/y", s.http_base()))
        .send_expect(404)
        .await;
    let r = hc
        .get(format!("{}/topics/private/y", s.http_base()))
        .send_ok()
        .await;
    json_error(r, 403).await;
    let r = hc
        .post(format!("{}/topics/public/y", s.http_base()))
        .body("x")
        .send_ok()
        .await;
    json_error(r, 403).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// curl against the server's HTTP port with `Host: host`; (status, body).
fn curl_as(s: &Server, host: &str, args: &[&str], path: &str) -> (u16, String) {
    let out = run_ok(
        Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Host: {host}"))
            .args(args)
            .arg(format!("{}{path}", s.http_base())),
    );
    let (body, code) = out.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_string())
}

/// DNS rebinding: a web page whose domain is made to resolve to 127.0.0.1 passes same-origin
/// and CORS checks in the victim's browser, but names its domain in `Host`. With no
/// authentication configured (loopback-only mode) such requests are refused on every route and
/// on the WebSocket; loopback names are served; configured anonymous access serves any name.
#[test]
fn loopback_only_mode_refuses_rebound_host_names() {
    let s = Server::start();
    let port = s.http;
    let evil = format!("rebind.example:{port}");
    let origin = format!("http://{evil}");
    for (args, path) in [
        (&[][..], "/healthz"),
        (&[][..], "/topics/rebind/x"),
        (
            &["-X", "POST", "--data", "from a rebound page"][..],
            "/topics/rebind/x?retain=true",
        ),
        (&[][..], "/no/such/route"),
    ] {
        let (code, body) = curl_as(&s, &evil, args, path);
        assert_eq!(code, 403, "{path} with Host {evil}: {body}");
        let v: Value = serde_json::from_str(&body).expect("JSON error body");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|e| e.contains("loopback")),
            "{body}"
        );
    }
    assert!(
        ws_handshake_to(port, &evil, Some(&origin)).contains(" 403"),
        "WebSocket from a rebound page"
    );
    // Loopback names work, and the refused publish never happened.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("app.localhost:{port}"),
    ] {
        let (code, body) = curl_as(&s, &host, &[], "/topics/rebind/x");
        assert_eq!(code, 404, "Host {host}: {body}");
    }
    let local = format!("localhost:{port}");
    assert!(ws_handshake_to(port, &local, Some(&format!("http://{local}"))).contains(" 101"));

    // Anonymous access allowed explicitly: the operator chose to serve any name.
    let open = Server::builder()
        .env("AUTH__ALLOW_ANONYMOUS", "true")
        .start();
    let (code, body) = curl_as(
        &open,
        &format!("rebind.example:{}", open.http),
        &[],
        "/healthz",
    );
    assert_eq!(code, 200, "{body}");
}
