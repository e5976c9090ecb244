//! `examples/embedded.rs` end to end: the example runs the broker and the bridge in its own
//! process and runtime; a real MQTT client (rumqttc) and a real HTTP client (reqwest) talk to
//! it, and its output says what it did.

mod common;

use std::process::Command;

use common::clients::{Proc, T, V4};
use common::{example_bin, free_port};

/// Starts the example on free ports; returns it once it says it is ready, with its MQTT and
/// HTTP ports.
fn start(dir: &std::path::Path) -> (Proc, u16, u16) {
    let (mqtt, http) = (free_port(), free_port());
    let mut p = Proc::spawn(
        Command::new(example_bin("embedded"))
            .arg("--mqtt")
            .arg(format!("127.0.0.1:{mqtt}"))
            .arg("--http")
            .arg(format!("127.0.0.1:{http}"))
            .arg("--dir")
            .arg(dir),
    );
    let ready = p.wait_line(T * 6, |l| l.starts_with("ready "));
    assert_eq!(
        ready,
        format!("ready mqtt=127.0.0.1:{mqtt} http=127.0.0.1:{http}")
    );
    (p, mqtt, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_example_publishes_reacts_and_stops() {
    let dir = std::env::temp_dir().join(format!("rtw-embedded-{}", std::process::id()));
    let (mut app, mqtt, http) = start(&dir);

    let (mut c, _) = V4::connect(rumqttc::MqttOptions::new("watcher", "127.0.0.1", mqtt)).await;

    // What the application published from code is there for a client that comes later.
    c.subscribe("app/status", rumqttc::QoS::AtLeastOnce).await;
    let status = c.publish_in(T).await;
    assert_eq!(&status.payload[..], b"up");
    assert!(status.retain, "app/status is retained");

    // The application reacts to an MQTT client's message.
    c.subscribe("app/replies/#", rumqttc::QoS::AtLeastOnce)
        .await;
    c.send(
        "app/commands/greet",
        rumqttc::QoS::AtLeastOnce,
        false,
        b"Ada",
    )
    .await;
    let reply = c.publish_in(T).await;
    assert_eq!(reply.topic, "app/replies/greet");
    assert_eq!(&reply.payload[..], b"hello, Ada");
    app.wait_line(T, |l| l == "received app/commands/greet: Ada");

    // And to an HTTP caller's, through the bridge it runs.
    let base = format!("http://127.0.0.1:{http}");
    let r = reqwest::Client::new()
        .post(format!("{base}/topics/app/commands/greet"))
        .body("Bob")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 200);
    let reply = c.publish_in(T).await;
    assert_eq!(reply.topic, "app/replies/greet");
    assert_eq!(&reply.payload[..], b"hello, Bob");
    let got = reqwest::get(format!("{base}/topics/app/status"))
        .await
        .expect("GET");
    assert_eq!(got.status(), 200);
    assert_eq!(got.text().await.expect("body"), "up");

    // Asked to stop, it shuts the broker down and exits cleanly.
    c.send("app/commands/stop", rumqttc::QoS::AtLeastOnce, false, b"")
        .await;
    let lines = app.success(T * 2);
    assert!(
        lines.iter().any(|l| l == "stopped"),
        "the example did not stop cleanly: {lines:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
