//! `bridge/openapi.json` against the real server: the document it serves is the one in the
//! repository, every documented operation exists, and nothing undocumented answers.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::http::SendOk;
use common::*;
use reqwest::Method;
use serde_json::Value;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document() -> Value {
    let text = std::fs::read_to_string(root().join("bridge/openapi.json")).expect("openapi.json");
    serde_json::from_str(&text).expect("openapi.json is JSON")
}

/// A server with every optional route on (the Mercure hub and its subscriptions API).
fn server() -> Server {
    Server::builder()
        .env("MERCURE__PUBLISHER_JWT_KEY", "openapi-check-key")
        .env("MERCURE__SUBSCRIPTIONS", "true")
        .start()
}

fn http() -> reqwest::Client {
    common::http::client(Duration::from_secs(30))
}

/// A concrete URL for a documented path, with its required query parameters.
fn url_for(base: &str, path: &str, item: &Value, op: Option<&Value>) -> String {
    let path = path
        .replace("{topic}", "openapi/check/x")
        .replace("{path}", "openapi/check/x")
        .replace("{id}", "openapi-check");
    let mut query: Vec<String> = Vec::new();
    let params = item["parameters"].as_array().into_iter().flatten().chain(
        op.and_then(|o| o["parameters"].as_array())
            .into_iter()
            .flatten(),
    );
    for p in params {
        if p["in"] == "query" && p["required"] == true {
            let name = p["name"].as_str().unwrap();
            query.push(format!("{name}=openapi/check/%23"));
        }
    }
    if path == "/poll" {
        // Do not wait for the default 30 s.
        query.push("timeout=0".into());
    }
    if query.is_empty() {
        format!("{base}{path}")
    } else {
        format!("{base}{path}?{}", query.join("&"))
    }
}

fn body_for(op: &Value) -> Option<&'static str> {
    op.get("requestBody").map(|_| "openapi check")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_document_is_the_repository_document() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()));
    let s = server();
    let res = http()
        .get(format!("{}/openapi.json", s.http_base()))
        .send_expect(200)
        .await;
    let ct = res.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/json"), "{ct}");
    let served: Value = res.json().await.unwrap();
    assert_eq!(served, doc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_exists() {
    let (doc, s) = (document(), server());
    let (base, c) = (s.http_base(), http());
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        // PUT before GET (so there is a retained message to read), DELETE last.
        for m in [
            "put", "post", "get", "head", "patch", "options", "trace", "delete",
        ] {
            let Some(op) = item.get(m) else { continue };
            let url = url_for(&base, path, item, Some(op));
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap();
            let mut req = c.request(method, &url);
            if let Some(b) = body_for(op) {
                req = req.body(b);
            }
            let res = req.send_ok().await;
            let status = res.status().as_u16();
            let documented: BTreeSet<String> = op["responses"]
                .as_object()
                .map(|r| r.keys().cloned().collect())
                .unwrap_or_default();
            let text = res.text().await.unwrap_or_default();
            // A 404 is the route's own answer only where it is documented (no such client) and
            // is not the router's "no such route".
            let route_404 =
                status == 404 && (!documented.contains("404") || text.contains("no such route"));
            assert!(
                !route_404 && status != 405,
                "{} {path} ({url}) is documented but answered {status}: {text}",
                m.to_uppercase(),
            );
            assert!(
                documented.contains(&status.to_string()),
                "{} {path} answered {status}, documented {documented:?}",
                m.to_uppercase()
            );
            checked += 1;
        }
    }
    assert!(checked >= 9, "only {checked} operations checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undocumented_methods_are_405_with_allow() {
    let (doc, s) = (document(), server());
    let (base, c) = (s.http_base(), http());
    // A retained message, so that HEAD on the topic finds something (a 404 would be ambiguous).
    c.put(format!("{base}/topics/openapi/check/x"))
        .body("x")
        .send_expect(200)
        .await;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let documented: BTreeSet<&str> = METHODS
            .iter()
            .copied()
            .filter(|m| item.get(*m).is_some())
            .collect();
        // OPTIONS is left out: the CORS layer answers it (preflight) on every path.
        for m in ["get", "put", "post", "delete", "patch"] {
            if documented.contains(m) {
                continue;
            }
            let url = url_for(&base, path, item, None);
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap();
            let res = c.request(method, &url).body("x").send_ok().await;
            let status = res.status().as_u16();
            let allow = res
                .headers()
                .get("allow")
                .map(|v| v.to_str().unwrap().to_ascii_lowercase());
            let text = res.text().await.unwrap_or_default();
            assert_eq!(
                status,
                405,
                "{} {path} is not documented but answered {status}: {text}",
                m.to_uppercase()
            );
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"));
            assert_eq!(v["error"]["status"], 405);
            // Allow lists exactly the documented methods (HEAD comes with GET).
            let allow = allow.unwrap_or_else(|| panic!("{m} {path}: 405 without Allow"));
            let allowed: BTreeSet<&str> = allow
                .split(',')
                .map(str::trim)
                .filter(|a| *a != "head")
                .collect();
            assert_eq!(allowed, documented, "Allow of {path}");
        }
        // HEAD is answered wherever GET is documented, and only there.
        let res = c
            .head(url_for(&base, path, item, item.get("get")))
            .send_ok()
            .await;
        if documented.contains("get") {
            // 404 only where GET documents it (`/api/clients/{id}`: no such client).
            let may_404 = item["get"]["responses"].get("404").is_some();
            assert!(
                (res.status() != 404 || may_404) && res.status() != 405,
                "HEAD {path}: {}",
                res.status()
            );
        } else {
            assert_eq!(res.status(), 405, "HEAD {path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_outside_the_document_are_404() {
    let doc = document();
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    let s = server();
    let c = http();
    for p in [
        "/nope",
        "/openapi",
        "/openapi.yaml",
        "/topic/a",
        "/topicsx/a",
        "/event",
        "/events/x",
        "/poll/x",
        "/healthz/x",
        "/mqtt/x",
        "/api/topics/a",
    ] {
        assert!(!paths.iter().any(|d| d.as_str() == p), "{p} is documented");
        for m in [Method::GET, Method::POST] {
            let res = c
                .request(m.clone(), format!("{}{p}", s.http_base()))
                .send_ok()
                .await;
            let status = res.status().as_u16();
            let text = res.text().await.unwrap();
            assert_eq!(status, 404, "{m} {p}: {text}");
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"));
            assert_eq!(v["error"]["status"], 404, "{text}");
        }
    }
}
