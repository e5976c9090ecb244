//! Security end to end, authentication by token: JWT of every family on MQTT 3.1.1 and 5,
//! WebSocket and HTTP, forged tokens and algorithm confusion, the user-name claim, token expiry
//! (connections and streams end), and what the log must never show.
//!
//! Real clients throughout: mosquitto_pub/sub (3.1.1 and 5), rumqttc, paho over WebSocket
//! (`tests/paho/auth.py`), reqwest and raw HTTP, openssl s_client. Where the exact reason code on
//! the wire matters, a raw socket reads it byte for byte (`common::mqtt::Client::frame`).

mod common;

use std::time::{Duration, Instant};

use common::auth::*;
use common::clients::{p5, v5_options, Tr, T};
use common::files::temp_dir;
use common::http::json_error;
use common::http::SendOk;
use common::sse::Sse;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs_tokens_on_mqtt311_and_mqtt5() {
    let s = jwt_server().start();
    let alice = cli_token("alice", &["a/#"], &["a/#"], "1h", false);

    // Byte-exact CONNACK codes: accepted 0; any bad token 0x05 on 3.1.1, 0x86 on 5.
    assert_eq!(token_codes(s.mqtt, "alice", &alice), (0x00, 0x00));
    for (what, t) in bad_hs_tokens() {
        assert_eq!(token_codes(s.mqtt, "mallory", &t), (0x05, 0x86), "{what}");
    }
    // No credentials: 0x05 / 0x87 (not authorized, not bad credentials).
    let mut h = Hello::new("nocreds");
    assert_eq!(connack(s.mqtt, &h), 0x05);
    h.v5 = true;
    assert_eq!(connack(s.mqtt, &h), 0x87);
    // Enhanced authentication is not supported: 0x8C.
    h.auth_method = Some("SCRAM-SHA-1");
    h.pass = Some(&alice);
    assert_eq!(connack(s.mqtt, &h), 0x8C);

    // Real clients: mosquitto exits with the CONNACK code it got.
    let (code, err) = mosq_pub(&s, "mqttv311", Some("alice"), Some(&alice), "a/1", 1);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = mosq_pub(&s, "mqttv5", Some("alice"), Some(&alice), "a/1", 1);
    assert_eq!(code, Some(0), "{err}");
    for (what, t) in bad_hs_tokens() {
        let (code, err) = mosq_pub(&s, "mqttv311", Some("mallory"), Some(&t), "a/1", 0);
        assert_eq!(code, Some(5), "3.1.1 {what}: {err}");
        assert!(err.contains("not authorised"), "{err}");
        let (code, err) = mosq_pub(&s, "mqttv5", Some("mallory"), Some(&t), "a/1", 0);
        assert_eq!(code, Some(0x86), "5 {what}: {err}");
        assert!(err.contains("Bad User Name or Password"), "{err}");
    }
    let (code, err) = mosq_pub(&s, "mqttv5", None, None, "a/1", 0);
    assert_eq!(code, Some(0x87), "{err}");

    // rumqttc: accepted with the good token, refused with an expired one.
    let mut c = v5_with(&s, Tr::Tcp, "rumqttc-ok", "alice", &alice).await;
    publish_allowed(&mut c, "a/x", "hi").await;
    let expired = hs(&claims("alice", &["a/#"], &["a/#"], -3600));
    let mut o = v5_options(&s, Tr::Tcp, "rumqttc-expired");
    o.set_credentials("alice", expired);
    let (_client, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    let e = tokio::time::timeout(T, el.poll()).await.expect("answer");
    let e = format!("{e:?}");
    assert!(e.contains("BadUserNamePassword"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asymmetric_tokens_and_algorithm_confusion() {
    let dir = temp_dir("keys");
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    for (name, args) in [
        (
            "rs",
            vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        (
            "rs2",
            vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        (
            "ec",
            vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        ("ed", vec!["-algorithm", "ED25519"]),
    ] {
        let key = p(&format!("{name}.key"));
        let mut a = vec!["genpkey"];
        a.extend(args);
        a.extend(["-out", &key]);
        openssl(&a);
        openssl(&[
            "pkey",
            "-in",
            &key,
            "-pubout",
            "-out",
            &p(&format!("{name}.pub")),
        ]);
    }
    let read = |n: &str| std::fs::read(dir.join(n)).expect("key file");
    let s = Server::builder()
        .env(
            "AUTH__JWT_PUBLIC_KEYS",
            format!("rs1={},{},{}", p("rs.pub"), p("ec.pub"), p("ed.pub")),
        )
        .env("AUTH__ISSUER", ISS)
        .env("AUTH__AUDIENCE", AUD)
        .start();
    let c = claims("alice", &["a/#"], &["a/#"], 3600);
    let rs = EncodingKey::from_rsa_pem(&read("rs.key")).expect("RSA key");
    let rs2 = EncodingKey::from_rsa_pem(&read("rs2.key")).expect("RSA key 2");
    let ec = EncodingKey::from_ec_pem(&read("ec.key")).expect("EC key");
    let ed = EncodingKey::from_ed_pem(&read("ed.key")).expect("Ed25519 key");

    let good = [
        (
            "RS256 kid rs1",
            sign(Algorithm::RS256, &rs, Some("rs1"), &c),
        ),
        ("RS512 without kid", sign(Algorithm::RS512, &rs, None, &c)),
        ("PS256", sign(Algorithm::PS256, &rs, Some("rs1"), &c)),
        ("ES256", sign(Algorithm::ES256, &ec, None, &c)),
        ("EdDSA", sign(Algorithm::EdDSA, &ed, None, &c)),
    ];
    // HS/RS confusion: HS256 "signed" with the RSA public key's PEM bytes as the secret.
    let confused = EncodingKey::from_secret(&read("rs.pub"));
    let mut expired = c.clone();
    expired["exp"] = json!(now() - 3600);
    let mut aud = c.clone();
    aud["aud"] = json!("someone-else");
    let bad = [
        (
            "RS256 by another key",
            sign(Algorithm::RS256, &rs2, Some("rs1"), &c),
        ),
        (
            "RS256 unknown kid",
            sign(Algorithm::RS256, &rs, Some("other"), &c),
        ),
        (
            "HS256 with the public key",
            sign(Algorithm::HS256, &confused, None, &c),
        ),
        (
            "HS256 with the public key, kid rs1",
            sign(Algorithm::HS256, &confused, Some("rs1"), &c),
        ),
        ("ES256 expired", sign(Algorithm::ES256, &ec, None, &expired)),
        (
            "EdDSA wrong audience",
            sign(Algorithm::EdDSA, &ed, None, &aud),
        ),
        ("alg none", alg_none(&c)),
    ];
    let h = http();
    let read = |t: &str| {
        h.get(format!("{}/topics/a/x", s.http_base()))
            .header("authorization", bearer(t))
    };
    for (what, t) in &good {
        assert_eq!(token_codes(s.mqtt, "alice", t), (0, 0), "{what}");
        // Authorized over HTTP too: 404 (nothing retained), not 401/403.
        assert_eq!(read(t).send_ok().await.status(), 404, "{what}");
    }
    for (what, t) in &bad {
        assert_eq!(token_codes(s.mqtt, "alice", t), (0x05, 0x86), "{what}");
        assert_401(read(t).send_ok().await, true).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tokens_and_authorization() {
    let s = jwt_server().start();
    let alice = cli_token("alice", &["a/#"], &["a/#"], "1h", false);
    for v in ["311", "5"] {
        let ev = paho_auth(s.http, true, v, Some("alice"), Some(&alice), &[]);
        assert_eq!(paho_connack(&ev), 0, "{v}: {ev:?}");
        for (what, t) in bad_hs_tokens() {
            let ev = paho_auth(s.http, true, v, Some("mallory"), Some(&t), &[]);
            let want = if v == "5" { 0x86 } else { 0x05 };
            assert_eq!(paho_connack(&ev), want, "{v} {what}: {ev:?}");
        }
        let ev = paho_auth(s.http, true, v, None, None, &[]);
        let want = if v == "5" { 0x87 } else { 0x05 };
        assert_eq!(paho_connack(&ev), want, "{v} anonymous: {ev:?}");
    }
    // Authorization over WebSocket (MQTT 5, as alice): SUBACK per filter, PUBACK 0x87.
    let as_alice = |args: &[&str]| paho_auth(s.http, true, "5", Some("alice"), Some(&alice), args);
    let ev = as_alice(&[
        "--subscribe",
        "a/#",
        "--subscribe",
        "b/#",
        "--publish",
        "b/1",
    ]);
    assert_eq!(
        paho_event(&ev, "suback").unwrap()["codes"],
        json!([1, 0x87]),
        "{ev:?}"
    );
    assert_eq!(paho_event(&ev, "puback").unwrap()["reason"], 0x87, "{ev:?}");
    let ev = as_alice(&["--subscribe", "a/#", "--publish", "a/1"]);
    assert_eq!(paho_event(&ev, "puback").unwrap()["reason"], 0, "{ev:?}");
    assert!(
        ev.iter()
            .any(|e| e["event"] == "msg" && e["topic"] == "a/1"),
        "{ev:?}"
    );
    let ev = paho_auth(
        s.http,
        true,
        "311",
        Some("alice"),
        Some(&alice),
        &["--subscribe", "a/#", "--subscribe", "b/#"],
    );
    assert_eq!(
        paho_event(&ev, "suback").unwrap()["codes"],
        json!([1, 0x80]),
        "{ev:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_authentication_401_and_403() {
    let s = jwt_server().start();
    let alice = cli_token("alice", &["a/#"], &["a/#"], "1h", false);
    let h = http();
    let url = |p: &str| format!("{}{p}", s.http_base());

    // No credentials: 401 with a plain challenge.
    let r = h.get(url("/topics/a/x")).send_ok().await;
    assert_401(r, false).await;
    let r = h.post(url("/topics/a/x")).body("x").send_ok().await;
    assert_401(r, false).await;
    // A read of /topics/a/x with header `name: value`.
    let read_with = |name: &str, value: String| h.get(url("/topics/a/x")).header(name, value);
    // Every bad token: 401 invalid_token, on reads and writes.
    for (what, t) in bad_hs_tokens() {
        let r = read_with("authorization", bearer(&t)).send_ok().await;
        assert_401(r, true).await;
        let write = h
            .post(url("/topics/a/x"))
            .header("authorization", bearer(&t));
        let r = write.body("x").send_ok().await;
        assert_eq!(r.status(), 401, "{what}");
        // The cookie is checked the same way.
        let r = read_with("cookie", format!("rtw_token={t}"))
            .send_ok()
            .await;
        assert_eq!(r.status(), 401, "cookie {what}");
    }
    // An unknown scheme: 401.
    let r = read_with("authorization", format!("Token {alice}"))
        .send_ok()
        .await;
    assert_401(r, true).await;
    // The query token is off by default.
    let r = h
        .get(url(&format!("/topics/a/x?access_token={alice}")))
        .send_ok()
        .await;
    assert_401(r, false).await;

    // Authenticated: allowed (200/404) or 403 with a JSON body.
    h.put(url("/topics/a/state"))
        .header("authorization", bearer(&alice))
        .body("v1")
        .send_expect(200)
        .await;
    assert_eq!(
        h.get(url("/topics/a/state"))
            .header("authorization", bearer(&alice))
            .send_text()
            .await,
        "v1"
    );
    let cookie = format!("other=1; rtw_token={alice}");
    let r = h.get(url("/topics/a/state")).header("cookie", cookie);
    assert_eq!(r.send_ok().await.status(), 200, "cookie");
    let refused = [
        ("GET", "state"),
        ("POST", "x"),
        ("PUT", "x"),
        ("DELETE", "x"),
    ];
    for (m, leaf) in refused {
        let req = h.request(m.parse().unwrap(), url(&format!("/topics/b/{leaf}")));
        let r = req
            .header("authorization", bearer(&alice))
            .body("x")
            .send_ok()
            .await;
        let (hd, msg) = json_error(r, 403).await;
        assert!(
            hd.get("www-authenticate").is_none(),
            "403 needs no challenge"
        );
        assert!(msg.contains("not allowed"), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_claim_binds_the_mqtt_user_name() {
    let s = jwt_server().env("AUTH__USERNAME_CLAIM", "sub").start();
    let alice = cli_token("alice", &["a/#"], &["a/#"], "1h", false);
    assert_eq!(token_codes(s.mqtt, "alice", &alice), (0, 0));
    assert_eq!(token_codes(s.mqtt, "mallory", &alice), (0x05, 0x87));
    // HTTP has no user name: the bearer token alone authenticates.
    let r = http()
        .get(format!("{}/topics/a/x", s.http_base()))
        .header("authorization", bearer(&alice))
        .send_ok()
        .await;
    assert_eq!(r.status(), 404, "{}", r.text().await.unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_placeholder_needs_a_verified_user_name() {
    // Without username_claim the MQTT user name is whatever the client says: a grant on
    // {username} must not let a token holder pick someone else's topics.
    let s = jwt_server().start();
    let t = hs(&claims(
        "mallory",
        &["u/{username}/#"],
        &["u/{username}/#"],
        3600,
    ));
    let mut c = v5_with(&s, Tr::Tcp, "pick-a-name", "alice", &t).await;
    publish_refused(&mut c, "u/alice/inbox", "x").await;
    assert_eq!(
        v5_subscribe_many(&mut c, &["u/alice/#"]).await,
        vec![p5::SubscribeReasonCode::NotAuthorized]
    );
    drop(c);
    // With username_claim = sub the user name is the token's subject: then it applies.
    let s = jwt_server().env("AUTH__USERNAME_CLAIM", "sub").start();
    let mut c = v5_with(&s, Tr::Tcp, "verified", "mallory", &t).await;
    publish_allowed(&mut c, "u/mallory/inbox", "x").await;
    publish_refused(&mut c, "u/alice/inbox", "x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_end_connections_and_streams() {
    let s = jwt_server().start();
    let short = cli_token("brief", &["a/#"], &["a/#"], "4s", false);
    let long = cli_token("steady", &["a/#"], &["a/#"], "1h", false);
    let started = Instant::now();
    let mut c5 = v5_with(&s, Tr::Tcp, "brief5", "brief", &short).await;
    let mut c4 = v4_with(&s, Tr::Tcp, "brief4", "brief", &short).await;
    let (mut raw, code) = raw_connect(
        s.mqtt,
        &Hello::new("brief-raw")
            .version5(true)
            .login("brief", &short),
    );
    assert_eq!(code, 0);
    let h = http();
    let events = format!("{}/events?topic=a/%23", s.http_base());
    let mut sse = Sse::get_ok(&h, &events, ("cookie", format!("rtw_token={short}"))).await;
    let mut steady = v5_with(&s, Tr::Tcp, "steady", "steady", &long).await;

    let e = c5.closed(Duration::from_secs(10)).await;
    assert!(e.contains("MaximumConnectTime"), "{e}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "kicked too early"
    );
    let (first, body) = raw.frame(Duration::from_secs(10)).expect("DISCONNECT");
    assert_eq!((first, body[0]), (0xE0, 0xA0));
    c4.closed(Duration::from_secs(10)).await;
    assert_eq!(
        sse.next_json(Duration::from_secs(10)).await.err(),
        Some(true),
        "SSE still open"
    );
    // Others carry on.
    publish_allowed(&mut steady, "a/still", "x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_log() {
    let dir = temp_dir("log");
    let log = dir.join("server.log");
    let file = dir.join("passwd");
    let password = "pw-Xy7Qa2Lk9Rt4";
    let wrong = "wrong-Pz3Mv8Nb1Kd6";
    passwd(&file, "alice", password);
    let mut s = jwt_server()
        .env("AUTH__PASSWORD_FILE", file.display())
        .env("AUTH__ALLOW_QUERY_TOKEN", "true")
        .env("LOG__LEVEL", "debug")
        .log_file(&log)
        .start();
    let token = cli_token("bob", &["a/#"], &["a/#"], "1h", false);
    let expired = hs(&claims("bob", &["a/#"], &["a/#"], -3600));
    let forged = alg_none(&claims("bob", &["#"], &["#"], 3600));

    // MQTT, every transport the edge has without TLS, good and bad credentials.
    let mut c = v5_with(&s, Tr::Tcp, "log5", "bob", &token).await;
    v5_subscribe_many(&mut c, &["a/#", "b/#"]).await;
    v5_puback(&mut c, "b/x", "x").await;
    c.disconnect().await;
    let c = v4_with(&s, Tr::Tcp, "log4", "bob", &token).await;
    c.disconnect().await;
    let c = v5_with(&s, Tr::Ws, "logws", "bob", &token).await;
    c.disconnect().await;
    let c = v5_with(&s, Tr::Tcp, "logpw", "alice", password).await;
    c.disconnect().await;
    for (u, p) in [
        ("bob", &expired),
        ("bob", &forged),
        ("alice", &wrong.to_string()),
    ] {
        token_codes(s.mqtt, u, p);
        paho_auth(s.http, true, "5", Some(u), Some(p), &[]);
    }
    // HTTP: bearer, cookie, query, Basic; good and bad.
    let h = http();
    let base = s.http_base();
    for t in [&token, &expired, &forged] {
        let _ = h
            .get(format!("{base}/topics/a/x"))
            .header("authorization", bearer(t))
            .send()
            .await;
        let _ = h
            .get(format!("{base}/topics/a/x"))
            .header("cookie", format!("rtw_token={t}"))
            .send()
            .await;
        let _ = h
            .get(format!("{base}/topics/a/x?access_token={t}"))
            .send()
            .await;
        let _ = h
            .post(format!("{base}/topics/z/x?access_token={t}"))
            .body("x")
            .send()
            .await;
    }
    for p in [password, wrong] {
        let _ = h
            .get(format!("{base}/topics/a/x"))
            .header("authorization", basic("alice", p))
            .send()
            .await;
    }
    s.stop();

    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("DEBUG"), "debug logging was not on:\n{text}");
    assert!(text.contains("connection refused"), "{text}");
    let sig = |t: &str| t.rsplit('.').next().unwrap().to_string();
    for (what, secret) in [
        ("JWT secret", SECRET.to_string()),
        ("token", token.clone()),
        ("token signature", sig(&token)),
        ("expired token", expired.clone()),
        ("expired token signature", sig(&expired)),
        ("forged token", forged.clone()),
        ("password", password.to_string()),
        ("wrong password", wrong.to_string()),
    ] {
        assert!(!secret.is_empty());
        if let Some(i) = text.find(&secret) {
            let line = text[..i].rsplit('\n').next().unwrap_or_default();
            panic!("the {what} is in the log: {line}…");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
