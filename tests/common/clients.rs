//! Client-side helpers shared by `tests/clients.rs` and `tests/sessions.rs`: live-followed child
//! processes (mosquitto_sub/pub, the paho script in `tests/paho/`), rumqttc v4/v5 clients on
//! every transport, and a raw MQTT socket for what no library client does on purpose (never
//! acknowledging, going silent, dropping the socket).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command};
use std::sync::mpsc as smpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::Value;

use super::{ca_file, root, Server};

/// How long any single expected event may take.
pub const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Child processes followed line by line.

/// A child process whose stdout is read line by line as it comes; killed on drop.
pub struct Proc {
    pub child: Child,
    lines: smpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<std::sync::Mutex<String>>,
    what: String,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let what = format!("{cmd:?}");
        let mut child = super::spawn_piped(cmd);
        let (tx, rx) = smpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            sink.lock().unwrap_or_else(|e| e.into_inner()).push_str(&s);
        });
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
            stderr,
            what,
        }
    }

    fn context(&self) -> String {
        format!(
            "{}\nstdout so far:\n{}\nstderr:\n{}",
            self.what,
            self.seen.join("\n"),
            self.stderr.lock().unwrap_or_else(|e| e.into_inner())
        )
    }

    /// The next line, or `None` at end of output or after `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let l = self.lines.recv_timeout(timeout).ok()?;
        self.seen.push(l.clone());
        Some(l)
    }

    /// Waits for a line satisfying `pred` (skipping others); panics after `timeout`.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "expected line not seen within {timeout:?}\n{}",
                    self.context()
                ),
            }
        }
    }

    /// Next JSON event line of the paho script whose "event" is `event`; panics on timeout.
    pub fn wait_event(&mut self, event: &str, timeout: Duration) -> Value {
        let l = self.wait_line(timeout, |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| v["event"] == event)
        });
        serde_json::from_str(&l).unwrap()
    }

    /// Waits for the process to end (killing it after `timeout`); returns the exit code and
    /// every stdout line it printed.
    pub fn finish(mut self, timeout: Duration) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                break s.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(l);
        }
        (status, std::mem::take(&mut self.seen))
    }

    /// Like [`Proc::finish`], but panics unless the process exits 0.
    pub fn success(self, timeout: Duration) -> Vec<String> {
        let ctx_what = self.what.clone();
        let stderr = self.stderr.clone();
        let (code, lines) = self.finish(timeout);
        let stderr = stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(
            code,
            Some(0),
            "{ctx_what} failed\nstdout:\n{}\nstderr:\n{stderr}",
            lines.join("\n"),
        );
        lines
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every paho JSON event of `event` kind in `lines`.
pub fn events(lines: &[String], event: &str) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Transports.

/// A way to reach the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tr {
    Tcp,
    Tls,
    Ws,
    Wss,
}

pub const ALL_TRANSPORTS: [Tr; 4] = [Tr::Tcp, Tr::Tls, Tr::Ws, Tr::Wss];

impl Tr {
    pub fn port(self, s: &Server) -> u16 {
        match self {
            Tr::Tcp => s.mqtt,
            Tr::Tls => s.mqtts.expect("server started without .tls()"),
            Tr::Ws => s.http,
            Tr::Wss => s.https.expect("server started without .tls()"),
        }
    }

    /// The broker address a rumqttc client is given for this transport (a URL for WebSocket).
    fn address(self, s: &Server) -> (String, u16) {
        let port = self.port(s);
        let host = match self {
            Tr::Tcp | Tr::Tls => "127.0.0.1".to_string(),
            Tr::Ws => format!("ws://127.0.0.1:{port}/mqtt"),
            Tr::Wss => format!("wss://127.0.0.1:{port}/mqtt"),
        };
        (host, port)
    }

    /// rumqttc's transport (TLS trusting the development CA).
    fn transport(self) -> rumqttc::Transport {
        use rumqttc::{TlsConfiguration, Transport};
        match self {
            Tr::Tcp => Transport::Tcp,
            Tr::Tls => Transport::Tls(TlsConfiguration::Rustls(super::tls::client_config())),
            Tr::Ws => Transport::Ws,
            Tr::Wss => Transport::Wss(TlsConfiguration::Rustls(super::tls::client_config())),
        }
    }
}

/// The paho script: `python3 tests/paho/client.py MODE --port … [transport options]`.
pub fn paho(mode: &str, s: &Server, tr: Tr, version: &str) -> Command {
    let mut c = Command::new("python3");
    c.arg(root().join("tests/paho/client.py")).arg(mode).args([
        "--port",
        &tr.port(s).to_string(),
        "--version",
        version,
    ]);
    if matches!(tr, Tr::Ws | Tr::Wss) {
        c.args(["--transport", "websockets", "--path", "/mqtt"]);
    }
    if matches!(tr, Tr::Tls | Tr::Wss) {
        c.arg("--cafile").arg(ca_file());
    }
    c
}

/// `mosquitto_sub` with line-buffered output (`stdbuf -oL`), debug lines on (`-d`, so
/// "Subscribed (mid: …)" tells when the subscription is in place) and each message printed as
/// `MSG|topic|qos|retain|payload`. TCP, or TLS when `tls`.
pub fn mosquitto_sub(s: &Server, tls: bool, version: &str) -> Command {
    let mut c = Command::new("stdbuf");
    c.args([
        "-oL",
        "mosquitto_sub",
        "-h",
        "127.0.0.1",
        "-V",
        version,
        "-d",
    ])
    .args(["-F", "MSG|%t|%q|%r|%p"]);
    mosquitto_net(&mut c, s, tls);
    c
}

/// `mosquitto_pub` on TCP, or TLS when `tls`.
pub fn mosquitto_pub(s: &Server, tls: bool, version: &str) -> Command {
    let mut c = Command::new("mosquitto_pub");
    c.args(["-h", "127.0.0.1", "-V", version]);
    mosquitto_net(&mut c, s, tls);
    c
}

fn mosquitto_net(c: &mut Command, s: &Server, tls: bool) {
    if tls {
        c.args(["-p", &Tr::Tls.port(s).to_string()])
            .arg("--cafile")
            .arg(ca_file());
    } else {
        c.args(["-p", &s.mqtt.to_string()]);
    }
}

/// Waits until mosquitto_sub has its subscription acknowledged.
pub fn mosquitto_ready(p: &mut Proc) {
    p.wait_line(T, |l| l.starts_with("Subscribed (mid:"));
}

/// The `MSG|…` lines of mosquitto_sub as (topic, qos, retain, payload).
pub fn mosquitto_msgs(lines: &[String]) -> Vec<(String, u8, bool, String)> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("MSG|"))
        .map(|l| {
            let mut f = l.splitn(4, '|');
            let t = f.next().unwrap().to_string();
            let q = f.next().unwrap().parse().unwrap();
            let r = f.next().unwrap() == "1";
            let p = f.next().unwrap_or("").to_string();
            (t, q, r, p)
        })
        .collect()
}

/// Runs a command to completion (bounded) and panics unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let (code, out, err) = super::run(cmd, T);
    assert_eq!(
        code,
        Some(0),
        "{what} failed\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

// ---------------------------------------------------------------------------------------------
// rumqttc.

/// rumqttc (v4) options for `id` on transport `tr`.
pub fn v4_options(s: &Server, tr: Tr, id: &str) -> rumqttc::MqttOptions {
    let (host, port) = tr.address(s);
    let mut o = rumqttc::MqttOptions::new(id, host, port);
    o.set_transport(tr.transport());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// rumqttc v5 options for `id` on transport `tr`.
pub fn v5_options(s: &Server, tr: Tr, id: &str) -> rumqttc::v5::MqttOptions {
    let (host, port) = tr.address(s);
    let mut o = rumqttc::v5::MqttOptions::new(id, host, port);
    o.set_transport(tr.transport());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Gives 3.1.1 options a QoS 1, not retained will: `message` on `topic`.
pub fn set_v4_will(o: &mut rumqttc::MqttOptions, topic: &str, message: &str) {
    let qos = rumqttc::QoS::AtLeastOnce;
    o.set_last_will(rumqttc::LastWill::new(topic, message, qos, false));
}

/// Gives MQTT 5 options a QoS 1 will without properties: `message` on `topic`, retained or not.
pub fn set_v5_will(o: &mut rumqttc::v5::MqttOptions, topic: &str, message: &str, retain: bool) {
    let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
    o.set_last_will(p5::LastWill::new(topic, message, qos, retain, None));
}

/// Options for a persistent MQTT 5 session over TCP: clean start off, session expiry `expiry` s.
pub fn persistent_v5_options(s: &Server, id: &str, expiry: u32) -> rumqttc::v5::MqttOptions {
    let mut o = v5_options(s, Tr::Tcp, id);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(expiry));
    o
}

/// [`persistent_v5_options`] with a QoS 1 will "`{id}` is gone" on `topic`, delayed `delay` s.
pub fn delayed_will_options(
    s: &Server,
    id: &str,
    topic: &str,
    delay: u32,
    expiry: u32,
) -> rumqttc::v5::MqttOptions {
    let mut o = persistent_v5_options(s, id, expiry);
    let props = p5::LastWillProperties {
        delay_interval: Some(delay),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
    };
    let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
    let will = p5::LastWill::new(topic, format!("{id} is gone"), qos, false, Some(props));
    o.set_last_will(will);
    o
}

/// The events of a rumqttc event loop (v4 or v5), polled by a task of its own until the first
/// connection error, which is the last event; the task is aborted on drop.
struct Events<E> {
    rx: tokio::sync::mpsc::UnboundedReceiver<Result<E, String>>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts polling event loop `$el` (v4 or v5: the same methods, not one trait).
macro_rules! events {
    ($el:expr) => {{
        let mut el = $el;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(e) => {
                        if tx.send(Ok(e)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:?}")));
                        return;
                    }
                }
            }
        });
        Events { rx, task }
    }};
}

impl<E> Events<E> {
    async fn next(&mut self, timeout: Duration) -> Option<Result<E, String>> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for the connection to end; returns the error text.
    async fn closed(&mut self, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return e,
                None => panic!("connection still up after {timeout:?}"),
            }
        }
    }
}

impl<E> Drop for Events<E> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The rumqttc types of one protocol version, for [`rumqttc_client!`].
mod v4t {
    pub use rumqttc::{
        AsyncClient, ConnAck, ConnectReturnCode, Event, MqttOptions, Packet, Publish, QoS,
        SubscribeReasonCode,
    };
}

/// See [`v4t`].
mod v5t {
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnectReturnCode, Packet, Publish, SubscribeReasonCode,
    };
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::{AsyncClient, Event, MqttOptions};
}

/// The methods [`V4`] and [`V5`] share, written once over the types of module `$m` (rumqttc has
/// the same methods for both versions, not one trait).
macro_rules! rumqttc_client {
    ($client:ident, $m:ident, $options:ident) => {
        impl $client {
            /// Connects and waits for CONNACK (panics unless accepted).
            pub async fn connect(opts: $m::MqttOptions) -> ($client, $m::ConnAck) {
                let (client, el) = $m::AsyncClient::new(opts, 100);
                let mut c = $client {
                    client,
                    events: events!(el),
                };
                let ack = c.connack().await;
                assert_eq!(
                    ack.code,
                    $m::ConnectReturnCode::Success,
                    "connection refused"
                );
                (c, ack)
            }

            /// Connects over TCP as `id` and subscribes to `filter` at `qos` (SUBACK received).
            pub async fn subscribed(s: &Server, id: &str, filter: &str, qos: $m::QoS) -> $client {
                let (mut c, _) = $client::connect($options(s, Tr::Tcp, id)).await;
                c.subscribe(filter, qos).await;
                c
            }

            pub async fn next(&mut self, timeout: Duration) -> Option<Result<$m::Event, String>> {
                self.events.next(timeout).await
            }

            /// The next packet from the broker; panics on error or timeout.
            pub async fn incoming(&mut self, timeout: Duration) -> $m::Packet {
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match self.next(left).await {
                        Some(Ok($m::Event::Incoming(p))) => return p,
                        Some(Ok(_)) => {}
                        Some(Err(e)) => panic!("connection failed: {e}"),
                        None => panic!("nothing from the broker within {timeout:?}"),
                    }
                }
            }

            pub async fn connack(&mut self) -> $m::ConnAck {
                match self.incoming(T).await {
                    $m::Packet::ConnAck(a) => a,
                    other => panic!("expected CONNACK, got {other:?}"),
                }
            }

            /// Subscribes and waits for the SUBACK (skipping anything else); returns its codes.
            pub async fn subscribe(
                &mut self,
                filter: &str,
                qos: $m::QoS,
            ) -> Vec<$m::SubscribeReasonCode> {
                self.client.subscribe(filter, qos).await.expect("subscribe");
                self.suback().await
            }

            /// Waits for the next SUBACK (skipping anything else); returns its codes.
            pub async fn suback(&mut self) -> Vec<$m::SubscribeReasonCode> {
                loop {
                    if let $m::Packet::SubAck(s) = self.incoming(T).await {
                        return s.return_codes;
                    }
                }
            }

            /// The next PUBLISH from the broker (skipping other packets); panics on timeout.
            pub async fn publish_in(&mut self, timeout: Duration) -> $m::Publish {
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if let $m::Packet::Publish(p) = self.incoming(left).await {
                        return p;
                    }
                }
            }

            /// Publishes `payload` at QoS 1 on `topic`, which this client is subscribed to, and
            /// returns the message as it comes back. (The PUBACK is not waited for first: the
            /// broker may deliver the message before it, and waiting would pass over it.)
            pub async fn echo(&mut self, topic: &str, payload: &[u8]) -> $m::Publish {
                let qos = $m::QoS::AtLeastOnce;
                let publish = self.client.publish(topic, qos, false, payload.to_vec());
                publish.await.expect("publish");
                self.publish_in(T).await
            }

            /// Receives the next messages: their payloads must be `payloads`, in that order, each
            /// at `qos`. Returns them.
            pub async fn expect_payloads(
                &mut self,
                payloads: &[String],
                qos: $m::QoS,
            ) -> Vec<$m::Publish> {
                let mut got = Vec::new();
                for want in payloads {
                    let p = self.publish_in(T).await;
                    let text = String::from_utf8_lossy(&p.payload).into_owned();
                    assert_eq!((&text, p.qos), (want, qos), "{p:?}");
                    got.push(p);
                }
                got
            }

            /// Waits for the connection to end; returns the error text.
            pub async fn closed(&mut self, timeout: Duration) -> String {
                self.events.closed(timeout).await
            }

            /// Publishes `payload` on `topic` at `qos` (not retained, no properties) and waits
            /// until the broker acknowledged it (QoS 0: until it is written).
            pub async fn publish_acked(&mut self, topic: &str, qos: $m::QoS, payload: &[u8]) {
                let payload = payload.to_vec();
                self.client
                    .publish(topic, qos, false, payload)
                    .await
                    .expect("publish");
                self.acked(qos).await;
            }

            /// Waits until the broker acknowledged the publish just made at `qos` (PUBACK /
            /// PUBCOMP; QoS 0: once it is written).
            async fn acked(&mut self, qos: $m::QoS) {
                use $m::QoS;
                let deadline = tokio::time::Instant::now() + T;
                loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match self.next(left).await {
                        Some(Ok($m::Event::Outgoing(rumqttc::Outgoing::Publish(_))))
                            if qos == QoS::AtMostOnce =>
                        {
                            return
                        }
                        Some(Ok($m::Event::Incoming($m::Packet::PubAck(_))))
                            if qos == QoS::AtLeastOnce =>
                        {
                            return
                        }
                        Some(Ok($m::Event::Incoming($m::Packet::PubComp(_))))
                            if qos == QoS::ExactlyOnce =>
                        {
                            return
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => panic!("connection failed while publishing: {e}"),
                        None => panic!("publish not acknowledged within {T:?}"),
                    }
                }
            }

            /// DISCONNECT, and wait until it is on the wire.
            pub async fn disconnect(mut self) {
                let _ = self.client.disconnect().await;
                let _ = tokio::time::timeout(T, async {
                    while let Some(Ok(e)) = self.events.rx.recv().await {
                        if matches!(e, $m::Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                            break;
                        }
                    }
                })
                .await;
                // Let the event loop write it out and close.
                let _ = tokio::time::timeout(Duration::from_secs(2), self.events.rx.recv()).await;
            }
        }
    };
}

/// A rumqttc v4 client whose event loop runs in its own task. It does not reconnect: the first
/// connection error ends the loop. Dropping it aborts the task, which drops the socket without
/// DISCONNECT (an abnormal close, as far as the broker can tell).
pub struct V4 {
    pub client: rumqttc::AsyncClient,
    events: Events<rumqttc::Event>,
}

rumqttc_client!(V4, v4t, v4_options);

impl V4 {
    /// Publishes and waits until the broker acknowledged it (PUBACK / PUBCOMP; QoS 0: sent).
    pub async fn send(&mut self, topic: &str, qos: rumqttc::QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .expect("publish");
        self.acked(qos).await;
    }
}

/// A rumqttc v5 client; see [`V4`].
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    events: Events<rumqttc::v5::Event>,
}

pub use rumqttc::v5::mqttbytes::v5 as p5;

rumqttc_client!(V5, v5t, v5_options);

impl V5 {
    pub async fn send(
        &mut self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: &[u8],
        props: Option<p5::PublishProperties>,
    ) {
        match props {
            Some(p) => self
                .client
                .publish_with_properties(topic, qos, retain, payload.to_vec(), p)
                .await
                .expect("publish"),
            None => self
                .client
                .publish(topic, qos, retain, payload.to_vec())
                .await
                .expect("publish"),
        }
        self.acked(qos).await;
    }
}

/// Asserts that a message carries no user properties (none were sent with it).
pub fn assert_no_user_properties(p: &p5::Publish) {
    let props = p.properties.as_ref();
    assert!(props.is_none_or(|p| p.user_properties.is_empty()), "{p:?}");
}

/// `true` if a user property key is the broker's internal stamp.
pub fn is_internal(k: &str) -> bool {
    k.starts_with("$rtw")
}

// ---------------------------------------------------------------------------------------------
// Raw sockets.

/// A plain TCP MQTT connection driven packet by packet (blocking, with timeouts), with the
/// broker's packets decoded as their own protocol version sent them (3.1.1 ones not lifted), on
/// the raw client ([`super::mqtt::Client`]).
pub struct Raw {
    c: super::mqtt::Client,
    pub v5: bool,
}

/// A packet read from a raw connection.
#[derive(Debug)]
pub enum RawPacket {
    V4(rumqttc::mqttbytes::v4::Packet),
    V5(Box<p5::Packet>),
}

impl Raw {
    pub fn open(port: u16, v5: bool) -> Raw {
        use super::mqtt::V;
        Raw {
            c: super::mqtt::Client::tcp(port, if v5 { V::V5 } else { V::V311 }),
            v5,
        }
    }

    /// A 3.1.1 connection: CONNECT (client `id`, clean session as `clean`, `keep_alive` s), which
    /// must be accepted.
    pub fn connected4(port: u16, id: &str, clean: bool, keep_alive: u16) -> Raw {
        let mut raw = Raw::open(port, false);
        raw.send4(connect4(id, clean, keep_alive));
        let code = raw.connack4().code;
        assert_eq!(
            code,
            rumqttc::mqttbytes::v4::ConnectReturnCode::Success,
            "{id}"
        );
        raw
    }

    /// Bytes received but not (yet) part of a whole packet.
    pub fn leftover(&self) -> usize {
        self.c.buffered()
    }

    pub fn send4(&mut self, p: rumqttc::mqttbytes::v4::Packet) {
        let mut b = BytesMut::new();
        p.write(&mut b, 1 << 20).expect("encode");
        self.c.try_send_raw(&b).expect("write");
    }

    pub fn send5(&mut self, p: p5::Packet) {
        let mut b = BytesMut::new();
        p.write(&mut b, None).expect("encode");
        self.c.try_send_raw(&b).expect("write");
    }

    /// The next packet; `Err("closed")` if the broker closed the connection, `Err("timeout")`.
    pub fn recv(&mut self, timeout: Duration) -> Result<RawPacket, &'static str> {
        let (first, body) = self.c.frame(timeout)?;
        let mut b = BytesMut::from(&super::mqtt::frame(first, &body)[..]);
        Ok(if self.v5 {
            let p = p5::Packet::read(&mut b, None)
                .unwrap_or_else(|e| panic!("bad packet from broker: {e:?}"));
            RawPacket::V5(Box::new(p))
        } else {
            let p = rumqttc::mqttbytes::v4::Packet::read(&mut b, 1 << 20)
                .unwrap_or_else(|e| panic!("bad packet from broker: {e:?}"));
            RawPacket::V4(p)
        })
    }

    pub fn recv4(&mut self, timeout: Duration) -> rumqttc::mqttbytes::v4::Packet {
        match self.recv(timeout) {
            Ok(RawPacket::V4(p)) => p,
            other => panic!("expected a 3.1.1 packet, got {other:?}"),
        }
    }

    /// PINGREQ (3.1.1); the next packet must be PINGRESP: the connection is still served.
    pub fn ping4(&mut self) {
        use rumqttc::mqttbytes::v4;
        self.send4(v4::Packet::PingReq);
        assert!(matches!(self.recv4(T), v4::Packet::PingResp));
    }

    /// CONNECT (3.1.1) for the persistent session `id` (clean session 0, keep-alive 60); returns
    /// the CONNACK.
    pub fn resume4(&mut self, id: &str) -> rumqttc::mqttbytes::v4::ConnAck {
        self.send4(connect4(id, false, 60));
        self.connack4()
    }

    /// The next packet, which must be a CONNACK (3.1.1).
    pub fn connack4(&mut self) -> rumqttc::mqttbytes::v4::ConnAck {
        match self.recv4(T) {
            rumqttc::mqttbytes::v4::Packet::ConnAck(a) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// The next packet, which must be a PUBLISH (3.1.1).
    pub fn publish4(&mut self) -> rumqttc::mqttbytes::v4::Publish {
        match self.recv4(T) {
            rumqttc::mqttbytes::v4::Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// SUBSCRIBE (3.1.1, packet id 1) to `filter` at `qos`; the next packet must be its SUBACK.
    pub fn subscribe4(&mut self, filter: &str, qos: rumqttc::QoS) {
        use rumqttc::mqttbytes::v4;
        let mut sub = v4::Subscribe::new(filter, qos);
        sub.pkid = 1;
        self.send4(v4::Packet::Subscribe(sub));
        match self.recv4(T) {
            v4::Packet::SubAck(_) => {}
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub fn recv5(&mut self, timeout: Duration) -> p5::Packet {
        match self.recv(timeout) {
            Ok(RawPacket::V5(p)) => *p,
            other => panic!("expected an MQTT 5 packet, got {other:?}"),
        }
    }
}

/// A 3.1.1 CONNECT.
pub fn connect4(id: &str, clean: bool, keep_alive: u16) -> rumqttc::mqttbytes::v4::Packet {
    let mut c = rumqttc::mqttbytes::v4::Connect::new(id);
    c.clean_session = clean;
    c.keep_alive = keep_alive;
    rumqttc::mqttbytes::v4::Packet::Connect(c)
}

/// An MQTT 5 CONNECT with a session expiry interval.
pub fn connect5(id: &str, clean: bool, keep_alive: u16, expiry: Option<u32>) -> p5::Packet {
    let props = p5::ConnectProperties {
        session_expiry_interval: expiry,
        ..p5::ConnectProperties::new()
    };
    p5::Packet::Connect(
        p5::Connect {
            keep_alive,
            client_id: id.to_string(),
            clean_start: clean,
            properties: Some(props),
        },
        None,
        None,
    )
}
