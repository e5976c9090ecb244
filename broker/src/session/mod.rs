//! One client connection, from CONNECT to close: the edge's MQTT session.
//!
//! Data flow. [`serve`] reads CONNECT and admits the client ([`connect`]), then one task runs
//! the session: a `select!` over the client's socket, the session's inbox, its control channel
//! (takeover, shutdown), `$SYS` updates and its timers, dispatching each to one handler —
//! [`publish`] for what the client publishes (checked, authorized, stored if retained, handed to
//! the core), [`subscribe`] for (un)subscriptions (the edge's index, retained messages), and
//! [`deliver`] for what goes to the client (packet ids, the receive window, acknowledgements).
//! Replies are batched: a busy connection costs one write per batch, not per packet. When the
//! connection ends, [`end`] says why, publishes or schedules the will, and keeps the session's
//! [`state`] for the next connection if it is persistent.

mod connect;
mod deliver;
mod durable;
mod end;
mod publish;
pub(crate) mod state;
mod subscribe;

pub(crate) use end::publish_will;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::alias::OutAliases;
use crate::auth::Identity;
use crate::codec::{self, *};
use crate::registry::Line;
use crate::stats::Tally;
use crate::transport::{Io, Transport};
use crate::Edge;
use state::SessionState;

/// User-property name reserved for the node (clients' properties of that name are removed).
pub const STAMP_KEY: &str = "$rtw";

/// Messages taken from the inbox per batch before the session writes and looks around again.
const BATCH: usize = 256;

/// Why a session ends.
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT.
    Client {
        will: bool,
        expiry: Option<u32>,
    },
    /// The client's socket closed or failed.
    Gone,
    /// The client broke the protocol or a limit: DISCONNECT with this reason.
    Violation(DisconnectReasonCode, String),
    KeepAlive,
    /// Closed by the broker (takeover 0x8E, shutdown 0x8B, credentials expired 0xA0…).
    Kicked(u8),
    /// The node's core is gone.
    CoreLost,
}

/// Everything admission settled, to build a [`Session`] from.
struct SessionSetup {
    client: crate::directory::Handle,
    edge: Arc<Edge>,
    internal: bool,
    version: Version,
    src: u64,
    client_id: String,
    identity: Identity,
    keep_alive: u16,
    client_max_packet: u32,
    window: u16,
    will: Option<LastWill>,
    expiry: u32,
    persistent: bool,
    state: SessionState,
    session_present: bool,
    ack_props: Option<ConnAckProperties>,
    out_aliases: OutAliases,
}

/// A running session.
struct Session {
    /// This connection's entry in the operators' client list (`crate::directory`).
    client: crate::directory::Handle,
    edge: Arc<Edge>,
    internal: bool,
    version: Version,
    client_id: String,
    /// Hash of the client id, carried by its messages (no-local).
    src: u64,
    identity: Identity,
    keep_alive: u16,
    client_max_packet: u32,
    /// Most QoS 1/2 messages in flight towards the client.
    window: u16,
    /// Boxed, as the CONNACK's properties: most clients have none, and every session is in
    /// memory for as long as its client stays connected.
    will: Option<Box<LastWill>>,
    expiry: u32,
    /// The session outlives the connection.
    persistent: bool,
    state: SessionState,
    session_present: bool,
    ack_props: Option<Box<ConnAckProperties>>,
    /// Topic aliases the client set (client → broker); boxed at the first, as the next: most
    /// clients use none, and every connected session is in memory.
    // Boxed on purpose: the point is the 8 bytes an idle session holds instead of 48.
    #[allow(clippy::box_collection)]
    aliases: Option<Box<HashMap<u16, Bytes>>>,
    /// Topic aliases towards the client (broker → client), when it allows any.
    out_aliases: Option<Box<OutAliases>>,
    /// Publish-rate token bucket.
    rate_tokens: f64,
    rate_at: tokio::time::Instant,
    client_out: BytesMut,
    /// PUBACKs in `client_out`, not yet written (their messages still count as in flight).
    unflushed_acks: usize,
    /// Acknowledgements waiting for the session store (see [`durable`]).
    held: Vec<durable::Held>,
    /// The session-store op that must be on disk before the next write to the client.
    barrier: u64,
    /// A QoS 1/2 message went to the cluster's NATS client since its last flush: acknowledgements
    /// wait for one ([`crate::Edge::route_held`]).
    nats_unflushed: bool,
    tally: Tally,
}

/// Serves one client connection until it ends.
///
/// Each phase runs in its own boxed future, so the connection's task holds only the phase it
/// is in: an idle client costs its session and the read loop, not the admission's state too.
pub async fn serve(edge: Arc<Edge>, mut io: Box<dyn Io>, peer: SocketAddr, transport: Transport) {
    let Some((admitted, cbuf)) = Box::pin(open(&edge, &mut io, peer, transport)).await else {
        return;
    };
    let connect::Admitted {
        mut session,
        claim,
        line,
        ip_guard,
        permit,
        conn_id,
    } = admitted;
    session.start();
    edge.stats.connect(transport);
    tracing::debug!(%peer, client_id = session.client_id, version = session.version.label(), transport = transport.label(), "connected");

    let end = Box::pin(session.run(&mut io, cbuf, &line)).await;
    edge.stats.disconnect(transport);
    edge.stats.add(&mut session.tally);
    tracing::debug!(client_id = session.client_id, reason = ?end, "disconnected");
    let client_id = session.client_id.clone();
    let (will_timer, purge_timer, linger) = Box::pin(session.finish(end, &mut io)).await;
    edge.registry
        .release(&client_id, conn_id, will_timer, purge_timer);
    edge.cluster_release(&client_id);
    drop(claim);
    drop(ip_guard);
    drop(permit);
    if linger {
        Box::pin(crate::conformance::linger(
            &mut io,
            crate::conformance::LINGER,
        ))
        .await;
    }
}

/// Reads CONNECT (bounded in time) and admits the client: the session, and what the client
/// sent behind its CONNECT. `None` when the connection ends here (answered if it should be).
async fn open(
    edge: &Arc<Edge>,
    io: &mut Box<dyn Io>,
    peer: SocketAddr,
    transport: Transport,
) -> Option<(connect::Admitted, BytesMut)> {
    let limits = &edge.config.limits;
    let mut cbuf = BytesMut::with_capacity(Grow::MIN);
    let first = tokio::time::timeout(
        limits.connect_timeout(),
        connect::read_connect(io, &mut cbuf, limits.max_packet_size),
    )
    .await;
    let hello = match first {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time");
            return None;
        }
        Ok(Err(reply)) => {
            if let Some(out) = reply {
                let _ = io.write_all(&out).await;
                let _ = io.flush().await;
            }
            crate::transport::close_gently(io).await;
            return None;
        }
        Ok(Ok(x)) => x,
    };
    let admitted = connect::admit(edge, io, hello, peer, transport)
        .await
        .ok()?;
    Some((admitted, cbuf))
}

impl Session {
    fn new(s: SessionSetup) -> Session {
        let rate = s.edge.config.limits.max_publish_rate as f64;
        Session {
            client: s.client,
            edge: s.edge,
            internal: s.internal,
            version: s.version,
            client_id: s.client_id,
            src: s.src,
            identity: s.identity,
            keep_alive: s.keep_alive,
            client_max_packet: s.client_max_packet,
            window: s.window,
            will: s.will.map(Box::new),
            expiry: s.expiry,
            persistent: s.persistent,
            state: s.state,
            session_present: s.session_present,
            ack_props: s.ack_props.map(Box::new),
            aliases: None,
            out_aliases: s.out_aliases.is_on().then(|| Box::new(s.out_aliases)),
            rate_tokens: rate,
            rate_at: tokio::time::Instant::now(),
            client_out: BytesMut::new(),
            unflushed_acks: 0,
            held: Vec::new(),
            nats_unflushed: false,
            barrier: 0,
            tally: Tally::default(),
        }
    }

    /// CONNACK, then what a resumed session owes its client.
    fn start(&mut self) {
        if self.session_present {
            self.resume_subscriptions();
        }
        self.state.inbox.set_online(true);
        self.store_connected();
        let ack = ConnAck {
            session_present: self.session_present,
            code: ConnectReturnCode::Success,
            properties: self.ack_props.take().map(|p| *p),
        };
        self.send_client(Packet::ConnAck(ack));
        if self.session_present {
            self.resend_in_flight();
        }
    }

    async fn run(&mut self, io: &mut Box<dyn Io>, mut cbuf: BytesMut, line: &Line) -> End {
        let max_in = self.edge.config.limits.max_packet_size;
        let write_timeout = self.edge.config.limits.write_timeout();
        let mut sys = self.edge.sys.clone();
        sys.mark_unchanged();
        let idle =
            (self.keep_alive > 0).then(|| Duration::from_millis(self.keep_alive as u64 * 1500));
        let mut last_rx = tokio::time::Instant::now();
        let expires = self.identity.expires_at.map(|t| {
            let left = t
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::Instant::now() + left
        });
        // One timer serves the keep-alive and the credentials' expiry. It is not moved by each
        // read: when it fires, it checks the keep-alive against the last read and sleeps on.
        let wake = |last_rx: tokio::time::Instant| {
            [idle.map(|d| last_rx + d), expires]
                .into_iter()
                .flatten()
                .min()
        };
        let armed = wake(last_rx).is_some();
        let mut timer = std::pin::pin!(tokio::time::sleep_until(
            wake(last_rx).unwrap_or_else(tokio::time::Instant::now)
        ));
        let inbox = self.state.inbox.clone();
        // Packets the client sent right behind its CONNECT arrived with it.
        let mut pipelined = !cbuf.is_empty();
        let mut grow = Grow::new(64 * 1024);
        loop {
            if std::mem::take(&mut pipelined) {
                if let Err(end) = Box::pin(self.on_client_bytes(&mut cbuf, max_in)).await {
                    return end;
                }
            }
            self.drain_inbox();
            // Boxed: a waiting session holds the wait's state, an idle one does not.
            if self.must_settle() {
                if let Err(end) = Box::pin(self.settle()).await {
                    return end;
                }
            }
            if !self.client_out.is_empty() {
                self.tally.bytes_sent += self.client_out.len() as u64;
                let w = async {
                    io.write_all(&self.client_out).await?;
                    io.flush().await
                };
                // Boxed: a write's timer lives only while it writes, not in every idle session.
                match Box::pin(tokio::time::timeout(write_timeout, w)).await {
                    Ok(Ok(())) => lean(&mut self.client_out),
                    _ => return End::Gone,
                }
                self.unflushed_acks = 0;
            }
            self.client.update(
                self.state.out.len(),
                self.state.inbox.len(),
                self.tally.dropped,
                self.state
                    .inbox
                    .dropped
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
            self.edge.stats.add(&mut self.tally);
            let has_sys = self.state.subs.keys().any(|p| state::is_sys(p));
            let can_take = self.can_take();
            let more = can_take && !inbox.is_empty();
            grow.prepare(&mut cbuf);
            tokio::select! {
                code = line.kicked() => {
                    // What the replaced client sent before the new connection came (its last
                    // acknowledgements, its DISCONNECT) still counts.
                    use futures_util::FutureExt;
                    if let Some(Ok(1..)) = io.read_buf(&mut cbuf).now_or_never() {
                        if let Err(end) = Box::pin(self.on_client_bytes(&mut cbuf, max_in)).await {
                            return end;
                        }
                    }
                    return End::Kicked(code);
                }
                r = io.read_buf(&mut cbuf) => match r {
                    Ok(0) | Err(_) => return End::Gone,
                    Ok(n) => {
                        grow.read(n);
                        last_rx = tokio::time::Instant::now();
                        self.tally.bytes_received += n as u64;
                        if let Err(end) = Box::pin(self.on_client_bytes(&mut cbuf, max_in)).await {
                            return end;
                        }
                    }
                },
                _ = inbox.wait(), if can_take && !more => {}
                _ = std::future::ready(()), if more => {}
                r = sys.changed(), if has_sys => {
                    if r.is_ok() {
                        let tree = sys.borrow_and_update().clone();
                        self.deliver_sys(&tree, None, false);
                    }
                }
                _ = &mut timer, if armed => {
                    let now = tokio::time::Instant::now();
                    if expires.is_some_and(|t| now >= t) {
                        return End::Kicked(0xA0);
                    }
                    if idle.is_some_and(|d| now >= last_rx + d) {
                        return End::KeepAlive;
                    }
                    if let Some(w) = wake(last_rx) {
                        timer.as_mut().reset(w);
                    }
                }
            }
        }
    }

    async fn on_client_bytes(&mut self, cbuf: &mut BytesMut, max: u32) -> Result<(), End> {
        loop {
            match codec::read(cbuf, self.version, max) {
                Ok(Some(p)) => self.on_client(p).await?,
                Ok(None) => return Ok(()),
                Err(e) => {
                    if matches!(e, codec::DecodeError::TooLarge { .. }) {
                        self.tally.dropped += 1;
                        self.tally.dropped_too_large += 1;
                    }
                    return Err(End::Violation(e.reason(), e.to_string()));
                }
            }
        }
    }

    fn send_client(&mut self, p: Packet) {
        if let Err(e) = codec::write(&p, self.version, &mut self.client_out) {
            tracing::warn!(error = %e, "cannot encode packet for client");
        }
    }

    /// One handler per packet type.
    async fn on_client(&mut self, p: Packet) -> Result<(), End> {
        match p {
            Packet::Publish(p) => self.client_publish(p).await,
            Packet::PubAck(a) => {
                self.client_done(a.pkid);
                Ok(())
            }
            Packet::PubRec(r) => {
                self.client_pubrec(r);
                Ok(())
            }
            Packet::PubRel(r) => {
                self.client_pubrel(r.pkid);
                Ok(())
            }
            Packet::PubComp(c) => {
                self.client_done(c.pkid);
                Ok(())
            }
            Packet::Subscribe(s) => self.client_subscribe(s).await,
            Packet::Unsubscribe(u) if u.filters.is_empty() => Err(End::Violation(
                DisconnectReasonCode::ProtocolError,
                "UNSUBSCRIBE without filters".into(),
            )),
            Packet::Unsubscribe(u) => {
                // Not for the node's own session (see `conformance`'s module comment).
                let filters = u.filters.iter().map(String::as_str);
                if let Some((code, why)) =
                    crate::conformance::filters_error(filters).filter(|_| !self.internal)
                {
                    return Err(End::Violation(code, why));
                }
                self.client_unsubscribe(u);
                Ok(())
            }
            Packet::PingReq(_) => {
                self.send_client(Packet::PingResp(PingResp));
                Ok(())
            }
            Packet::Disconnect(d) => {
                if let Some(why) = crate::conformance::disconnect_error(self.expiry, &d) {
                    return Err(End::Violation(DisconnectReasonCode::ProtocolError, why));
                }
                Err(End::Client {
                    will: d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage,
                    expiry: d.properties.and_then(|p| p.session_expiry_interval),
                })
            }
            Packet::Connect(..) => Err(End::Violation(
                DisconnectReasonCode::ProtocolError,
                "second CONNECT".into(),
            )),
            other => Err(End::Violation(
                DisconnectReasonCode::ProtocolError,
                format!("unexpected {:?} from client", packet_name(&other)),
            )),
        }
    }
}

fn disconnect_code(code: u8) -> DisconnectReasonCode {
    use DisconnectReasonCode as D;
    match code {
        0x00 => D::NormalDisconnection,
        0x81 => D::MalformedPacket,
        0x82 => D::ProtocolError,
        0x87 => D::NotAuthorized,
        0x89 => D::ServerBusy,
        0x8B => D::ServerShuttingDown,
        0x8D => D::KeepAliveTimeout,
        0x8E => D::SessionTakenOver,
        0x90 => D::TopicNameInvalid,
        0x93 => D::ReceiveMaximumExceeded,
        0x94 => D::TopicAliasInvalid,
        0x95 => D::PacketTooLarge,
        0x96 => D::MessageRateTooHigh,
        0x97 => D::QuotaExceeded,
        0x98 => D::AdministrativeAction,
        0xA0 => D::MaximumConnectTime,
        _ => D::UnspecifiedError,
    }
}

/// Read-buffer sizing: a connection that is idle or slow holds a small buffer (64 bytes: a
/// PINGREQ, an acknowledgement, a short PUBLISH); one whose reads fill the buffer gets a bigger
/// one (up to `max`), so a busy connection still reads whole batches with one syscall. An empty
/// buffer bigger than what is wanted now is given back (the one CONNECT was read into, a burst's):
/// thousands of idle clients each keep only the small one.
struct Grow {
    want: usize,
    max: usize,
    spare: usize,
}

impl Grow {
    const MIN: usize = 64;

    fn new(max: usize) -> Grow {
        Grow {
            want: Self::MIN,
            max,
            spare: 0,
        }
    }

    /// Makes room before a read; frees an empty buffer larger than wanted (a busy connection's
    /// only when it is far larger: freeing and allocating 64 KiB per read would cost more than
    /// the read).
    fn prepare(&mut self, buf: &mut BytesMut) {
        let roomy = if self.want == Self::MIN {
            Self::MIN
        } else {
            self.want * 4
        };
        if buf.is_empty() && buf.capacity() > roomy {
            *buf = BytesMut::new();
        }
        if buf.capacity() - buf.len() < self.want {
            buf.reserve(self.want);
        }
        self.spare = buf.capacity() - buf.len();
    }

    /// Adapts to a read of `n` bytes.
    fn read(&mut self, n: usize) {
        if n >= self.spare {
            self.want = (self.want * 2).min(self.max);
        } else if n < self.want / 8 {
            self.want = (self.want / 2).max(Self::MIN);
        }
    }
}

/// Clears a written buffer, freeing it when a burst made it large.
fn lean(buf: &mut BytesMut) {
    if buf.capacity() > 64 * 1024 {
        *buf = BytesMut::new();
    } else {
        buf.clear();
    }
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Auth(_) => "AUTH",
        Packet::Connect(..) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PingReq(_) => "PINGREQ",
        Packet::PingResp(_) => "PINGRESP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::Disconnect(_) => "DISCONNECT",
    }
}
