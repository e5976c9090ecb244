//! `echo`: a responder for realtime-web's request/response bridge that answers every request
//! with what it got, in both conventions.
//!
//! * MQTT 5 (default): subscribes to `rpc/#`; each request carries a Response Topic and
//!   Correlation Data; the reply goes to that topic with the same correlation data, the same
//!   payload and content type, every `header:*` user property echoed back, plus
//!   `header:x-echo-method` / `header:x-echo-path`. A request header `x-echo-status: 418` becomes
//!   the reply's `status`.
//! * MQTT 3.1.1 (`--v311`): subscribes to `req/#` and copies each message to `res/…`, keeping the
//!   rest of the topic (the correlation id is its last level). If the payload is a JSON envelope
//!   with `headers["x-echo-status"]`, that becomes the envelope's `status`.
//!
//!   A request body that comes in chunks (the bridge's chunk protocol, see `stream.rs`) is
//!   acknowledged chunk by chunk and echoed back as a streamed reply.
//! * MQTT 3.1.1 (`--v311`) with `--reply-prefix`: copies `{first levels}/…` to
//!   `{reply prefix}/…`, e.g. the seed's `/$req/realtimeweb/…` to `/$res/realtimeweb/…` with
//!   `--filter '/$req/realtimeweb/#' --reply-prefix '/$res/realtimeweb'`; `--v5-topic` does the
//!   same as an MQTT 5 client.
//!
//! Run: `cargo run --example echo -- --port 1883` (add `--v311` for the 3.1.1 convention).

mod stream;

use std::time::Duration;

use bytes::Bytes;
use clap::Parser;

/// Largest MQTT packet the echo accepts or sends. rumqttc's default is 10 KiB, far below the
/// bridge's `max_body` (1 MiB); the broker enforces its own `limits.max_packet_size` anyway.
const MAX_PACKET: usize = 16 << 20;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Speak MQTT 3.1.1 and use the topic convention (`req/…` → `res/…`).
    #[arg(long)]
    v311: bool,
    /// Filter to serve (default `rpc/#`, or `req/#` with --v311).
    #[arg(long)]
    filter: Option<String>,
    /// Reply to `{this}/{rest}` where `rest` is the request topic after the filter's literal
    /// prefix (the topic convention; with MQTT 5, for requests without a Response Topic).
    /// Default with --v311: `res`.
    #[arg(long)]
    reply_prefix: Option<String>,
    /// Client id.
    #[arg(long, default_value = "echo")]
    id: String,
    /// Username and password (a token) when the broker requires them.
    #[arg(long)]
    username: Option<String>,
    #[arg(long)]
    password: Option<String>,
}

// One thread: the event loop does nearly all the work (a reply is queued to it without a task
// of its own), so more threads would only hand it between cores.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    if args.v311 {
        v311(args).await
    } else {
        v5(args).await
    }
}

async fn v5(args: Args) {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut opts = MqttOptions::new(&args.id, &args.host, args.port);
    opts.set_keep_alive(Duration::from_secs(30));
    if let (Some(u), Some(p)) = (&args.username, &args.password) {
        opts.set_credentials(u, p);
    }
    opts.set_max_packet_size(Some(MAX_PACKET as u32));
    opts.set_network_options(nodelay());
    let filter = args.filter.unwrap_or_else(|| "rpc/#".into());
    let ack_topic = format!("echo-acks/{}", args.id);
    let streams = stream::Shared::default();
    let (client, mut events) = AsyncClient::new(opts, 1000);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                for f in [&filter, &ack_topic] {
                    if let Err(e) = client.subscribe(f, QoS::AtLeastOnce).await {
                        eprintln!("echo: subscribe failed: {e}");
                    }
                }
                println!("echo: serving {filter} (MQTT 5)");
            }
            Ok(Event::Incoming(Packet::Publish(mut p))) => {
                let mut props = p.properties.take().unwrap_or_default();
                if p.topic == ack_topic.as_bytes() {
                    stream::acknowledged(&streams, &props);
                    continue;
                }
                let Some(reply_to) = props.response_topic.take() else {
                    // The topic convention, when asked for.
                    if let Some(to) = args
                        .reply_prefix
                        .as_deref()
                        .and_then(|r| reply_topic(&String::from_utf8_lossy(&p.topic), &filter, r))
                    {
                        let reply = PublishProperties {
                            content_type: props.content_type,
                            ..Default::default()
                        };
                        spawn_reply(&client, to, p.payload, reply);
                    }
                    continue; // not a request
                };
                let c = client.clone();
                if stream::prop(&props, "rtw-chunk").is_some() {
                    // A chunked body: collected in order here, echoed back as a stream.
                    let reply = reply_properties(props.clone());
                    let whole =
                        stream::take_chunk(&streams, &c, &reply_to, &props, p.payload).await;
                    let (s, ack_topic) = (streams.clone(), ack_topic.clone());
                    match whole {
                        Some(Ok(chunks)) => {
                            tokio::spawn(async move {
                                stream::send_back(&s, &c, &reply_to, &ack_topic, reply, chunks)
                                    .await
                            });
                        }
                        Some(Err(())) => {
                            let mut r = reply;
                            r.user_properties = vec![("status".into(), "413".into())];
                            spawn_reply(&c, reply_to, "too big for an echo", r);
                        }
                        None => {}
                    }
                    continue;
                }
                spawn_reply(&c, reply_to, p.payload, reply_properties(props));
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("echo: connection error: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn v311(args: Args) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut opts = MqttOptions::new(&args.id, &args.host, args.port);
    opts.set_keep_alive(Duration::from_secs(30));
    if let (Some(u), Some(p)) = (&args.username, &args.password) {
        opts.set_credentials(u, p);
    }
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    let filter = args.filter.unwrap_or_else(|| "req/#".into());
    let prefix = args.reply_prefix.unwrap_or_else(|| "res".into());
    let (client, mut events) = AsyncClient::new(opts, 1000);
    events.set_network_options(nodelay());
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Err(e) = client.subscribe(&filter, QoS::AtLeastOnce).await {
                    eprintln!("echo: subscribe failed: {e}");
                }
                println!("echo: serving {filter} (MQTT 3.1.1)");
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some(to) = reply_topic(&p.topic, &filter, &prefix) else {
                    continue;
                };
                let payload = with_status(&p.payload);
                // Queued to the event loop at once; a task waits for room only when its
                // queue is full.
                if let Err(rumqttc::ClientError::TryRequest(rumqttc::Request::Publish(p))) =
                    client.try_publish(to, QoS::AtLeastOnce, false, payload)
                {
                    let c = client.clone();
                    tokio::spawn(async move {
                        let _ = c.publish(p.topic, QoS::AtLeastOnce, false, p.payload).await;
                    });
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("echo: connection error: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The properties of the reply to a request with `props`: its correlation data and content
/// type, every `header:*` user property, and `header:x-echo-method` / `header:x-echo-path` /
/// `status` from the request's `method` / `path` / `header:x-echo-status` (moved, not copied).
fn reply_properties(
    props: rumqttc::v5::mqttbytes::v5::PublishProperties,
) -> rumqttc::v5::mqttbytes::v5::PublishProperties {
    let mut user = Vec::with_capacity(props.user_properties.len());
    for (k, v) in props.user_properties {
        match k.as_str() {
            "method" => user.push(("header:x-echo-method".to_string(), v)),
            "path" => user.push(("header:x-echo-path".to_string(), v)),
            "header:x-echo-status" => user.push(("status".to_string(), v)),
            h if h.starts_with("header:") => user.push((k, v)),
            _ => {}
        }
    }
    rumqttc::v5::mqttbytes::v5::PublishProperties {
        correlation_data: props.correlation_data,
        content_type: props.content_type,
        user_properties: user,
        ..Default::default()
    }
}

/// Publishes one MQTT 5 reply (QoS 1) without holding up the event loop: queued to it at once,
/// or, when its queue is full, from a task of its own that waits for room.
fn spawn_reply(
    c: &rumqttc::v5::AsyncClient,
    to: String,
    payload: impl Into<Bytes>,
    props: rumqttc::v5::mqttbytes::v5::PublishProperties,
) {
    use rumqttc::v5::{ClientError, Request};
    let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
    let Err(ClientError::TryRequest(Request::Publish(p))) =
        c.try_publish_with_properties(to, qos, false, payload.into(), props)
    else {
        return;
    };
    let c = c.clone();
    tokio::spawn(async move {
        let to = String::from_utf8_lossy(&p.topic).into_owned();
        let props = p.properties.unwrap_or_default();
        let _ = c
            .publish_with_properties(to, qos, false, p.payload, props)
            .await;
    });
}

/// `{prefix}/{rest}`, `rest` being `topic` after the literal levels of `filter` (`req/#`:
/// `req/a/b` → `res/a/b`; `/$req/realtimeweb/#`: `/$req/realtimeweb/chat/1` →
/// `/$res/realtimeweb/chat/1`).
fn reply_topic(topic: &str, filter: &str, prefix: &str) -> Option<String> {
    let literal = filter.find(['+', '#']).map_or(filter, |i| &filter[..i]);
    let rest = topic.strip_prefix(literal)?;
    Some(format!("{}/{rest}", prefix.trim_end_matches('/')))
}

/// TCP_NODELAY: rumqttc leaves Nagle's algorithm on, so a reply written right behind the
/// request's PUBACK waits for the broker's delayed ACK (about 40 ms a round trip on Linux).
fn nodelay() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n
}

/// An envelope with `headers["x-echo-status"]` gets that as its `status`; anything else is
/// copied unchanged.
fn with_status(payload: &Bytes) -> Bytes {
    let Ok(mut env) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return payload.clone();
    };
    let status = env
        .get("headers")
        .and_then(|h| h.get("x-echo-status"))
        .and_then(|s| s.as_str())
        .and_then(|s| s.parse::<u16>().ok());
    match (status, env.as_object_mut()) {
        (Some(s), Some(obj)) => {
            obj.insert("status".into(), s.into());
            Bytes::from(env.to_string())
        }
        _ => payload.clone(),
    }
}
