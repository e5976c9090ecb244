//! Plain rumqttd (`examples/plain_rumqttd.rs`) as a server process, and the async raw MQTT
//! clients the rumqttd comparison (`tests/defects.rs`) speaks to it and to realtime-web: rumqttc's
//! packet codecs (`v4` for 3.1.1, `v5` for 5) over TCP, TLS (the development CA) or WebSocket
//! (tokio-tungstenite, as re-exported by the broker crate), so a test sees exactly which bytes
//! arrive and whether the socket is closed.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use broker::transport::tokio_tungstenite;
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::QoS as Q4;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::*;

/// Upper bound for anything that should happen (a CONNACK, a delivery).
pub const WAIT: Duration = Duration::from_secs(10);
/// How long the plain side waits to conclude that something does not happen.
pub const QUIET: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Raw MQTT clients
// ---------------------------------------------------------------------------------------------

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A packet codec: MQTT 3.1.1 ([`P4`]) or 5 ([`P5`]).
pub trait Proto {
    type P: Debug + Send;
    fn decode(buf: &mut BytesMut) -> Result<Option<Self::P>, String>;
    fn encode(p: &Self::P, out: &mut BytesMut);
}

pub struct P4;
pub struct P5;

impl Proto for P4 {
    type P = v4::Packet;
    fn decode(buf: &mut BytesMut) -> Result<Option<v4::Packet>, String> {
        match v4::Packet::read(buf, 1 << 20) {
            Ok(p) => Ok(Some(p)),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(format!("{e:?}")),
        }
    }
    fn encode(p: &v4::Packet, out: &mut BytesMut) {
        p.write(out, 1 << 20).expect("encode 3.1.1 packet");
    }
}

impl Proto for P5 {
    type P = v5::Packet;
    fn decode(buf: &mut BytesMut) -> Result<Option<v5::Packet>, String> {
        // A DISCONNECT with no reason code is valid MQTT 5 (reason 0) but rumqttc rejects it.
        if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
            let _ = buf.split_to(2);
            return Ok(Some(v5::Packet::Disconnect(v5::Disconnect::new(
                v5::DisconnectReasonCode::NormalDisconnection,
            ))));
        }
        match v5::Packet::read(buf, None) {
            Ok(p) => Ok(Some(p)),
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(format!("{e:?}")),
        }
    }
    fn encode(p: &v5::Packet, out: &mut BytesMut) {
        p.write(out, None).expect("encode MQTT 5 packet");
    }
}

/// What a bounded read produced.
#[derive(Debug)]
pub enum Got<P> {
    Packet(P),
    /// The server closed (or reset) the connection.
    Closed,
    /// Nothing arrived in time.
    Nothing,
}

impl<P: Debug> Got<P> {
    pub fn packet(self, what: &str) -> P {
        match self {
            Got::Packet(p) => p,
            other => panic!("expected {what}, got {other:?}"),
        }
    }
}

/// One client connection; packets read while looking for another are kept for later.
pub struct Client<C: Proto> {
    pub io: Box<dyn Io>,
    pub buf: BytesMut,
    pub stash: VecDeque<C::P>,
    pub closed: bool,
    pub _p: PhantomData<C>,
}

pub type C4 = Client<P4>;
pub type C5 = Client<P5>;

impl<C: Proto> Client<C> {
    pub fn new(io: Box<dyn Io>) -> Self {
        Client {
            io,
            buf: BytesMut::with_capacity(4096),
            stash: VecDeque::new(),
            closed: false,
            _p: PhantomData,
        }
    }

    pub async fn send(&mut self, p: C::P) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        C::encode(&p, &mut out);
        self.io.write_all(&out).await?;
        self.io.flush().await
    }

    /// The next packet, within `wait`.
    pub async fn recv(&mut self, wait: Duration) -> Got<C::P> {
        if let Some(p) = self.stash.pop_front() {
            return Got::Packet(p);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match C::decode(&mut self.buf) {
                Ok(Some(p)) => return Got::Packet(p),
                Ok(None) => {}
                Err(e) => panic!("undecodable bytes from the server: {e}"),
            }
            if self.closed {
                return Got::Closed;
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(_)) => {}
                Err(_) => return Got::Nothing,
            }
        }
    }

    /// The first packet `pick` accepts, within `wait`; the others are kept for later reads.
    pub async fn find<T>(&mut self, wait: Duration, pick: impl Fn(&C::P) -> Option<T>) -> Got<T> {
        let deadline = Instant::now() + wait;
        let mut skipped = VecDeque::new();
        let got = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Got::Packet(p) => match pick(&p) {
                    Some(t) => break Got::Packet(t),
                    None => skipped.push_back(p),
                },
                Got::Closed => break Got::Closed,
                Got::Nothing => break Got::Nothing,
            }
        };
        skipped.append(&mut self.stash);
        self.stash = skipped;
        got
    }

    /// Reads until the server closes the connection or `wait` passes; returns what arrived.
    pub async fn drain(&mut self, wait: Duration) -> (Vec<C::P>, bool) {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Got::Packet(p) => got.push(p),
                Got::Closed => return (got, true),
                Got::Nothing => return (got, false),
            }
        }
    }
}

// ---- MQTT 5 ----

pub fn connect5(id: &str, keep_alive: u16, props: Option<v5::ConnectProperties>) -> v5::Packet {
    v5::Packet::Connect(
        v5::Connect {
            keep_alive,
            client_id: id.to_string(),
            clean_start: true,
            properties: props,
        },
        None,
        None,
    )
}

pub fn subscribe5(pkid: u16, filter: &str, qos: Q5) -> v5::Packet {
    v5::Packet::Subscribe(v5::Subscribe {
        pkid,
        filters: vec![v5::Filter::new(filter, qos)],
        properties: None,
    })
}

/// Connecting, subscribing and receiving, the same for [`C4`] and [`C5`] over their own packet module
/// `$m` (`v4` or `v5`; QoS `$q`), CONNECT made by `$connect`, PUBACK by `$puback`.
macro_rules! hello_and_suback {
    ($client:ident, $m:ident, $q:ident, $connect:ident, $puback:expr) => {
        impl $client {
            /// Sends `connect` and returns the CONNACK (or what happened instead).
            pub async fn hello(
                io: Box<dyn Io>,
                connect: $m::Packet,
            ) -> ($client, Got<$m::ConnAck>) {
                let mut c = $client::new(io);
                c.send(connect).await.expect("send CONNECT");
                let got = c
                    .find(WAIT, |p| match p {
                        $m::Packet::ConnAck(a) => Some(a.clone()),
                        _ => None,
                    })
                    .await;
                (c, got)
            }

            /// Connects and insists on CONNACK success.
            pub async fn open(io: Box<dyn Io>, id: &str) -> $client {
                let (c, ack) = $client::hello(io, $connect(id, 30, None)).await;
                let ack = ack.packet("CONNACK");
                assert_eq!(ack.code, $m::ConnectReturnCode::Success, "{id}: {ack:?}");
                c
            }

            /// The SUBACK for `pkid` (or what happened instead).
            pub async fn suback(&mut self, pkid: u16) -> Got<$m::SubAck> {
                self.find(WAIT, |p| match p {
                    $m::Packet::SubAck(s) if s.pkid == pkid => Some(s.clone()),
                    _ => None,
                })
                .await
            }

            /// A CONNECT (`connect`) over TCP to `port` is answered by closing the connection,
            /// without CONNACK (`what` says which CONNECT if not).
            pub async fn closed_at_connect(port: u16, connect: $m::Packet, what: &str) {
                let (_c, ack) = $client::hello(tcp(port).await, connect).await;
                assert!(matches!(ack, Got::Closed), "{what}: {ack:?}");
            }

            /// [`Self::on_tcp`], then SUBSCRIBE (packet id 1) to `filter` at `qos`.
            pub async fn subscribed_on(port: u16, id: &str, filter: &str, qos: $q) -> $client {
                let mut c = $client::on_tcp(port, id).await;
                c.subscribe(1, filter, qos).await;
                c
            }

            /// Connects over TCP to `port` as `id` and insists on CONNACK success.
            pub async fn on_tcp(port: u16, id: &str) -> $client {
                $client::open(tcp(port).await, id).await
            }

            /// The next PUBLISH within `wait` ([`Self::next_publish`]); fails, naming `what`,
            /// without one.
            pub async fn publish_within(&mut self, wait: Duration, what: &str) -> $m::Publish {
                self.next_publish(wait).await.packet(what)
            }

            /// The next PUBLISH (within `WAIT`), which must carry `payload` (`what` says what it
            /// means if not).
            pub async fn expect_payload(&mut self, payload: &[u8], what: &str) -> $m::Publish {
                let p = self.publish_within(WAIT, "PUBLISH").await;
                assert_eq!(&p.payload[..], payload, "{what}: {p:?}");
                p
            }

            /// SUBSCRIBE (`pkid`) to `filter` at `qos`, which must be granted as asked; the SUBACK.
            pub async fn subscribe_granted(
                &mut self,
                pkid: u16,
                filter: &str,
                qos: $q,
            ) -> $m::SubAck {
                let sa = self.subscribe(pkid, filter, qos).await;
                let granted = vec![$m::SubscribeReasonCode::Success(qos)];
                assert_eq!(sa.return_codes, granted, "{filter}");
                sa
            }

            /// Asserts that the connection is still served ([`Self::alive`]); `what` if not.
            pub async fn assert_alive(&mut self, what: &str) {
                assert!(self.alive().await, "{what}");
            }

            /// An UNSUBACK within `wait` (or what came instead).
            pub async fn unsuback_within(&mut self, wait: Duration) -> Got<()> {
                self.find(wait, |p| matches!(p, $m::Packet::UnsubAck(_)).then_some(()))
                    .await
            }

            /// Waits for the PUBACK of `pkid`.
            pub async fn puback(&mut self, pkid: u16) {
                self.find(WAIT, |p| match p {
                    $m::Packet::PubAck(a) if a.pkid == pkid => Some(()),
                    _ => None,
                })
                .await
                .packet("PUBACK");
            }

            /// The next PUBLISH within `wait` (acknowledged at QoS 1).
            pub async fn next_publish(&mut self, wait: Duration) -> Got<$m::Publish> {
                let got = self
                    .find(wait, |p| match p {
                        $m::Packet::Publish(p) => Some(p.clone()),
                        _ => None,
                    })
                    .await;
                if let Got::Packet(p) = &got {
                    if p.qos == $q::AtLeastOnce {
                        let _ = self.send($puback(p.pkid)).await;
                    }
                }
                got
            }
        }
    };
}

hello_and_suback!(C5, v5, Q5, connect5, |id| v5::Packet::PubAck(
    v5::PubAck::new(id, None)
));
hello_and_suback!(C4, v4, Q4, connect4, |id| v4::Packet::PubAck(
    v4::PubAck::new(id)
));

impl C5 {
    /// Sends UNSUBSCRIBE (`pkid`) from `filter`.
    pub async fn send_unsubscribe(&mut self, pkid: u16, filter: &str) {
        let mut u = v5::Unsubscribe::new(filter, None);
        u.pkid = pkid;
        self.send(v5::Packet::Unsubscribe(u))
            .await
            .expect("send UNSUBSCRIBE");
    }

    pub async fn subscribe(&mut self, pkid: u16, filter: &str, qos: Q5) -> v5::SubAck {
        self.send(subscribe5(pkid, filter, qos))
            .await
            .expect("send SUBSCRIBE");
        self.suback(pkid).await.packet("SUBACK")
    }

    /// Sends the QoS 1 PUBLISH `p` and returns the reason of its PUBACK.
    pub async fn puback_reason(&mut self, p: v5::Publish) -> v5::PubAckReason {
        let pkid = p.pkid;
        self.send(v5::Packet::Publish(p))
            .await
            .expect("send PUBLISH");
        self.find(WAIT, |p| match p {
            v5::Packet::PubAck(a) if a.pkid == pkid => Some(a.reason),
            _ => None,
        })
        .await
        .packet("PUBACK")
    }

    /// Publishes; at QoS 1 waits for the PUBACK.
    pub async fn publish(&mut self, p: v5::Publish) {
        let (qos, pkid) = (p.qos, p.pkid);
        self.send(v5::Packet::Publish(p))
            .await
            .expect("send PUBLISH");
        if qos == Q5::AtLeastOnce {
            self.puback(pkid).await;
        }
        if qos == Q5::ExactlyOnce {
            self.find(WAIT, |p| match p {
                v5::Packet::PubRec(a) if a.pkid == pkid => Some(()),
                _ => None,
            })
            .await
            .packet("PUBREC");
            self.send(v5::Packet::PubRel(v5::PubRel::new(pkid, None)))
                .await
                .expect("send PUBREL");
            self.find(WAIT, |p| match p {
                v5::Packet::PubComp(a) if a.pkid == pkid => Some(()),
                _ => None,
            })
            .await
            .packet("PUBCOMP");
        }
    }

    /// Is the connection still served? (PINGREQ answered by PINGRESP.)
    pub async fn alive(&mut self) -> bool {
        if self.send(v5::Packet::PingReq(v5::PingReq)).await.is_err() {
            return false;
        }
        matches!(
            self.find(WAIT, |p| matches!(p, v5::Packet::PingResp(_)).then_some(()))
                .await,
            Got::Packet(())
        )
    }
}

pub fn pub5(topic: &str, qos: Q5, payload: &str, pkid: u16) -> v5::Publish {
    let mut p = v5::Publish::new(topic, qos, Bytes::copy_from_slice(payload.as_bytes()), None);
    p.pkid = if qos == Q5::AtMostOnce { 0 } else { pkid };
    p
}

// ---- MQTT 3.1.1 ----

pub fn connect4(id: &str, keep_alive: u16, login: Option<(&str, &str)>) -> v4::Packet {
    let mut c = v4::Connect::new(id);
    c.keep_alive = keep_alive;
    if let Some((u, p)) = login {
        c.set_login(u, p);
    }
    v4::Packet::Connect(c)
}

impl C4 {
    /// Sends UNSUBSCRIBE (`pkid`) from `filter`.
    pub async fn send_unsubscribe(&mut self, pkid: u16, filter: &str) {
        let mut u = v4::Unsubscribe::new(filter);
        u.pkid = pkid;
        self.send(v4::Packet::Unsubscribe(u))
            .await
            .expect("send UNSUBSCRIBE");
    }

    pub async fn subscribe(&mut self, pkid: u16, filter: &str, qos: Q4) -> v4::SubAck {
        let mut s = v4::Subscribe::new(filter, qos);
        s.pkid = pkid;
        self.send(v4::Packet::Subscribe(s))
            .await
            .expect("send SUBSCRIBE");
        self.suback(pkid).await.packet("SUBACK")
    }

    pub async fn publish(&mut self, topic: &str, qos: Q4, retain: bool, payload: &[u8], pkid: u16) {
        let mut p = v4::Publish::new(topic, qos, payload.to_vec());
        p.retain = retain;
        p.pkid = if qos == Q4::AtMostOnce { 0 } else { pkid };
        self.send(v4::Packet::Publish(p))
            .await
            .expect("send PUBLISH");
        if qos == Q4::AtLeastOnce {
            self.puback(pkid).await;
        }
    }

    pub async fn alive(&mut self) -> bool {
        if self.send(v4::Packet::PingReq).await.is_err() {
            return false;
        }
        matches!(
            self.find(WAIT, |p| matches!(p, v4::Packet::PingResp).then_some(()))
                .await,
            Got::Packet(())
        )
    }
}

// ---- transports ----

pub async fn tcp(port: u16) -> Box<dyn Io> {
    let s = tokio::time::timeout(WAIT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("TCP connect timed out")
        .expect("TCP connect");
    s.set_nodelay(true).unwrap();
    Box::new(s)
}

/// TLS handshake on a connected socket (no timeout: callers bound it).
pub async fn tls_over(sock: TcpStream) -> std::io::Result<Box<dyn Io>> {
    Ok(Box::new(super::tls::connect(sock).await?))
}

pub async fn tls(port: u16) -> Box<dyn Io> {
    let sock = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("TCP connect");
    tokio::time::timeout(WAIT, tls_over(sock))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake")
}

/// WebSocket handshake (subprotocol `mqtt`) on a connected socket (no timeout: callers bound it).
pub async fn ws_over(sock: TcpStream, port: u16) -> Result<Box<dyn Io>, String> {
    let mut req = format!("ws://127.0.0.1:{port}/mqtt")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (ws, _) = tokio_tungstenite::client_async(req, sock)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Box::new(broker::transport::WsIo::new(ws)))
}

pub async fn ws(port: u16) -> Box<dyn Io> {
    let sock = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("TCP connect");
    tokio::time::timeout(WAIT, ws_over(sock, port))
        .await
        .expect("WebSocket handshake timed out")
        .expect("WebSocket handshake")
}

// ---------------------------------------------------------------------------------------------
// Plain rumqttd
// ---------------------------------------------------------------------------------------------

/// The plain-rumqttd example (built once).
pub fn plain_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| example_bin("plain_rumqttd"))
}

/// A plain rumqttd process: MQTT 3.1.1, MQTT 5 and WebSocket listeners (and optionally 3.1.1
/// over TLS and one username/password). Killed on drop.
pub struct Plain {
    child: Option<Child>,
    pub v4: u16,
    pub v5: u16,
    pub ws: u16,
    pub tls: Option<u16>,
    /// Where the process's output goes (kept for the failure messages).
    log: PathBuf,
}

impl Plain {
    pub fn start() -> Plain {
        Plain::launch(false, None)
    }

    /// Starts plain rumqttd on fresh ports, again on others if one was taken before its bind
    /// (rumqttd then only logs an error and never serves that port).
    pub fn launch(with_tls: bool, auth: Option<(&str, &str)>) -> Plain {
        let mut last = String::new();
        for _ in 0..3 {
            match Plain::try_launch(with_tls, auth) {
                Ok(p) => return p,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    pub fn try_launch(with_tls: bool, auth: Option<(&str, &str)>) -> Result<Plain, String> {
        let (v4, v5, ws) = (free_port(), free_port(), free_port());
        let tls = with_tls.then(free_port);
        let log = std::env::temp_dir().join(format!(
            "plain-rumqttd-{}-{}.log",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut cmd = Command::new(plain_bin());
        cmd.args(["--v4", &v4.to_string(), "--v5", &v5.to_string()])
            .args(["--ws", &ws.to_string()])
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if let Some(t) = tls {
            let certs = root().join("certs");
            cmd.args(["--tls-v4", &t.to_string(), "--cert"])
                .arg(certs.join("server.pem"))
                .arg("--key")
                .arg(certs.join("server.key"));
        }
        if let Some((u, p)) = auth {
            cmd.args(["--auth-user", u, "--auth-pass", p]);
        }
        let mut child = cmd.spawn().expect("start plain_rumqttd");
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [v4, v5, ws].into_iter().chain(tls) {
            while !listened_by(child.id(), port) {
                if let Ok(Some(s)) = child.try_wait() {
                    panic!(
                        "plain_rumqttd exited during startup ({s}): {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "plain_rumqttd did not listen on {port}: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(Plain {
            child: Some(child),
            v4,
            v5,
            ws,
            tls,
            log,
        })
    }

    /// What rumqttd wrote to stderr (its panics).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
