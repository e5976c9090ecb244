//! `embedded`: realtime-web inside an application's own process and tokio runtime, as a library.
//!
//! The application starts the broker ([`broker::Broker`]) and the HTTP bridge
//! ([`bridge::Bridge`]) on its runtime, then talks to them from code through an in-process
//! client ([`broker::client::LocalClient`]): no socket, no MQTT encoding, the same authorization
//! and routing as any client. Here it
//!
//! * publishes its state from code: the retained message `app/status` = `up`;
//! * reacts to messages: each `app/commands/greet` (from an MQTT client, a WebSocket, or
//!   `POST /topics/app/commands/greet`) is answered on `app/replies/greet` with `hello, <payload>`;
//! * stops when asked: `app/commands/stop` (or Ctrl-C) shuts the bridge and the broker down.
//!
//! It prints one line per thing it does (`ready …`, `received …`, `stopped`), which
//! `tests/embedded.rs` follows while real MQTT and HTTP clients talk to it.
//!
//! Run: `cargo run --example embedded -- --mqtt 127.0.0.1:1883 --http 127.0.0.1:8080`, then
//! `mosquitto_sub -t 'app/#' -v` and `curl -d Ada localhost:8080/topics/app/commands/greet`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bridge::{Bridge, BridgeConfig, BridgeSettings};
use broker::client::{LocalClient, Received};
use broker::codec::{Publish, QoS};
use broker::config::{Listener, TlsListener};
use broker::security::{AuthConfig, Security};
use broker::{Broker, BrokerConfig};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// The MQTT listener.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: SocketAddr,
    /// The HTTP listener (the bridge, and MQTT over WebSocket at `/mqtt`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Where the broker keeps retained messages and sessions.
    #[arg(long, default_value = "embedded-data")]
    dir: PathBuf,
}

/// Prints one line at once (a test reads them as they come).
fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();

    // No authenticator configured: anonymous clients, served on loopback only.
    let security = Arc::new(Security::new(AuthConfig::default(), true)?);
    let broker = Broker::start(
        BrokerConfig::local(args.mqtt, args.dir),
        security.clone(),
        security.clone(),
    )
    .await?;
    let bridge = Bridge::start(
        broker.edge.clone(),
        BridgeConfig {
            http: Listener {
                listen: args.http.to_string(),
            },
            https: TlsListener::default(),
            bridge: BridgeSettings::default(),
            rpc: Default::default(),
            mercure: Default::default(),
            security,
        },
    )
    .await?;

    // The application's own client: what arrives for its subscriptions comes on `rx`.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Received>(1024);
    let app = LocalClient::connect(&broker.edge, "embedded-app", tx).await?;
    app.subscribe("app/commands/+", QoS::AtLeastOnce).await?;

    let mut status = Publish::new("app/status", QoS::AtLeastOnce, "up", None);
    status.retain = true;
    app.publish(status).await?;

    let addr = |a: Option<SocketAddr>| a.map_or("-".to_string(), |a| a.to_string());
    say(format_args!(
        "ready mqtt={} http={}",
        addr(broker.mqtt_addr),
        addr(bridge.http_addr)
    ));

    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(Received { publish, .. }) = msg else {
            break;
        };
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let payload = String::from_utf8_lossy(&publish.payload).into_owned();
        say(format_args!("received {topic}: {payload}"));
        match topic.strip_prefix("app/commands/") {
            Some("greet") => {
                let reply = format!("hello, {payload}");
                let p = Publish::new("app/replies/greet", QoS::AtLeastOnce, reply, None);
                if let Err(e) = app.publish(p).await {
                    say(format_args!("reply not published: {e}"));
                }
            }
            Some("stop") => break,
            _ => say(format_args!("unknown command {topic}")),
        }
    }

    bridge.stop();
    drop(app);
    broker.shutdown().await;
    say("stopped");
    Ok(())
}
