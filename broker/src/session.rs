//! One client connection, from CONNECT to close: the edge's MQTT state machine.
//!
//! Data flow. The session owns two sockets: the client's (any transport, 3.1.1 or 5) and its own
//! MQTT 5 connection to the core. One task reads both, handles a whole batch of packets, and then
//! flushes one write to each side, so a busy connection costs one syscall per batch, not per
//! packet.
//!
//! * Client → core: packet ids pass through unchanged (so a QoS 2 exchange survives a reconnect).
//!   Every PUBLISH is checked (topic, alias, size, authorization, receive maximum) and *stamped*
//!   with one user property (`$rtw`: the original QoS, retain flag, source and sequence number)
//!   before the core sees it; the retain flag itself is cleared and the retained store updated
//!   here instead.
//! * Core → client: the stamp is taken off again and used to deliver at min(publish QoS,
//!   subscription QoS), to honour no-local and retain-as-published, and to drop the extra copies
//!   the core sends for overlapping subscriptions. Packet ids towards the client are the edge's
//!   own (the core's id when free), because retained and `$SYS` messages come from the edge.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use rand::distr::{Alphanumeric, SampleString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::auth::{Credentials, Identity};
use crate::codec::{self, *};
use crate::core::UpstreamConnect;
use crate::registry::{Control, LocalPending, Timer};
use crate::stats::Tally;
use crate::topic;
use crate::transport::{Io, Transport};
use crate::Edge;

/// User-property key of the edge's stamp on messages inside the node.
pub const STAMP_KEY: &str = "$rtw";
/// How often the edge pings its internal link.
const CORE_PING: Duration = Duration::from_secs(30);
/// Most duplicate-copy records a session keeps (overlapping subscriptions).
const MAX_COPY_RECORDS: usize = 4096;

/// What the stamp says about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub qos: QoS,
    pub retain: bool,
    /// Hash of the publishing client id (for no-local).
    pub src: u64,
    /// Sequence number within `src`'s connection.
    pub seq: u64,
}

impl Stamp {
    /// `{qos}{retain}{src:x}.{seq:x}`, written by hand: `format!` was most of the stamp's cost,
    /// and every message entering the node is stamped.
    fn encode(&self) -> String {
        fn push_hex(s: &mut String, v: u64) {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let digits = (64 - v.leading_zeros()).div_ceil(4).max(1);
            for i in (0..digits).rev() {
                s.push(HEX[((v >> (i * 4)) & 0xf) as usize] as char);
            }
        }
        let mut s = String::with_capacity(2 + 16 + 1 + 16);
        s.push((b'0' + self.qos as u8) as char);
        s.push(if self.retain { '1' } else { '0' });
        push_hex(&mut s, self.src);
        s.push('.');
        push_hex(&mut s, self.seq);
        s
    }

    fn decode(v: &str) -> Option<Stamp> {
        let b = v.as_bytes();
        let qos = codec::qos(b.first()?.checked_sub(b'0')?)?;
        let retain = *b.get(1)? == b'1';
        let (src, seq) = v.get(2..)?.split_once('.')?;
        Some(Stamp {
            qos,
            retain,
            src: u64::from_str_radix(src, 16).ok()?,
            seq: u64::from_str_radix(seq, 16).ok()?,
        })
    }
}

/// Adds the stamp to a publish entering the node (and clears its retain flag).
pub fn stamp(p: &mut Publish, s: Stamp) {
    p.retain = false;
    let props = p.properties.get_or_insert_with(Default::default);
    props.user_properties.retain(|(k, _)| k != STAMP_KEY);
    props
        .user_properties
        .push((STAMP_KEY.to_string(), s.encode()));
}

/// Removes the stamp from a publish leaving the node.
pub fn take_stamp(p: &mut Publish) -> Option<Stamp> {
    let props = p.properties.as_mut()?;
    let i = props
        .user_properties
        .iter()
        .rposition(|(k, _)| k == STAMP_KEY)?;
    let (_, v) = props.user_properties.remove(i);
    if *props == PublishProperties::default() {
        p.properties = None;
    }
    Stamp::decode(&v)
}

/// Hash of a client id, as carried in stamps.
pub fn client_hash(client_id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    client_id.hash(&mut h);
    h.finish()
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
        0xA0 => D::MaximumConnectTime,
        _ => D::UnspecifiedError,
    }
}

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
    /// Closed by the broker (takeover 0x8E, shutdown 0x8B, credentials expired 0x87).
    Kicked(u8),
    /// The internal link to the core failed.
    CoreLost,
}

/// Why the edge refuses a client's PUBLISH without closing the connection.
#[derive(Debug, Clone, Copy)]
enum Refuse {
    Unspecified,
    NotAuthorized,
    TopicNameInvalid,
    QuotaExceeded,
    PayloadFormatInvalid,
}

impl Refuse {
    fn puback(self) -> PubAckReason {
        match self {
            Refuse::Unspecified => PubAckReason::UnspecifiedError,
            Refuse::NotAuthorized => PubAckReason::NotAuthorized,
            Refuse::TopicNameInvalid => PubAckReason::TopicNameInvalid,
            Refuse::QuotaExceeded => PubAckReason::QuotaExceeded,
            Refuse::PayloadFormatInvalid => PubAckReason::PayloadFormatInvalid,
        }
    }
    fn pubrec(self) -> PubRecReason {
        match self {
            Refuse::Unspecified => PubRecReason::UnspecifiedError,
            Refuse::NotAuthorized => PubRecReason::NotAuthorized,
            Refuse::TopicNameInvalid => PubRecReason::TopicNameInvalid,
            Refuse::QuotaExceeded => PubRecReason::QuotaExceeded,
            Refuse::PayloadFormatInvalid => PubRecReason::PayloadFormatInvalid,
        }
    }
}

/// Where a message delivered to the client came from (and what to acknowledge when it is done).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// From the core with this packet id and QoS.
    Core(u16, QoS),
    /// From the edge itself (retained, `$SYS`).
    Local,
}

/// One subscription as the client made it.
#[derive(Debug, Clone)]
struct Sub {
    /// The filter messages are matched with (inner filter of `$share/…`).
    filter: String,
    qos: QoS,
    nolocal: bool,
    rap: bool,
    id: Option<usize>,
    shared: bool,
    /// Served by the edge (`$SYS/…`), not the core.
    sys: bool,
}

/// A SUBSCRIBE waiting for the core's SUBACK.
struct PendingSub {
    codes: Vec<SubscribeReasonCode>,
    filters: Vec<Filter>,
    existed: Vec<bool>,
    /// Indexes (into `filters`) sent to the core, in order.
    forwarded: Vec<usize>,
    /// Filters unsubscribed before the SUBACK came: not to be added when it does.
    cancelled: Vec<bool>,
    id: Option<usize>,
}

/// An UNSUBSCRIBE waiting for the core's UNSUBACK.
struct PendingUnsub {
    reasons: Vec<UnsubAckReason>,
}

/// Reads the first packet: CONNECT, or the bytes to answer with before closing.
async fn read_connect(
    io: &mut Box<dyn Io>,
    buf: &mut BytesMut,
    max: u32,
) -> Result<(Version, Connect, Option<LastWill>, Option<Login>), Option<BytesMut>> {
    loop {
        match codec::peek_hello(buf, max) {
            Ok(None) => {
                buf.reserve(1024);
                match io.read_buf(buf).await {
                    Ok(0) | Err(_) => return Err(None),
                    Ok(_) => continue,
                }
            }
            // MQTT 5 has a CONNACK for a CONNECT over the limit, if it says it is MQTT 5.
            Err(codec::DecodeError::TooLarge { .. }) if codec::connect_level(buf) == Some(5) => {
                return Err(Some(connack_bytes(
                    Version::V5,
                    ConnectReturnCode::PacketTooLarge,
                    None,
                )))
            }
            Ok(Some(codec::Hello::NotConnect)) | Err(_) => return Err(None),
            Ok(Some(codec::Hello::WrongName { level })) => {
                let v = if level == Some(5) {
                    Version::V5
                } else {
                    Version::V311
                };
                return Err(Some(connack_bytes(
                    v,
                    ConnectReturnCode::UnsupportedProtocolVersion,
                    None,
                )));
            }
            Ok(Some(codec::Hello::Connect { level })) => {
                let version = match level {
                    4 => Version::V311,
                    5 => Version::V5,
                    _ => {
                        return Err(Some(connack_bytes(
                            Version::V311,
                            ConnectReturnCode::RefusedProtocolVersion,
                            None,
                        )))
                    }
                };
                codec::check_connect(buf, version)?;
                return match codec::read(buf, version, max) {
                    Ok(Some(Packet::Connect(c, w, l))) => Ok((version, c, w, l)),
                    Ok(_) => Err(None),
                    Err(_) => Err(Some(connack_bytes(
                        version,
                        ConnectReturnCode::MalformedPacket,
                        None,
                    ))),
                };
            }
        }
    }
}

fn connack_bytes(
    v: Version,
    code: ConnectReturnCode,
    props: Option<ConnAckProperties>,
) -> BytesMut {
    let mut out = BytesMut::new();
    let _ = codec::write(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties: props,
        }),
        v,
        &mut out,
    );
    out
}

fn reason_props(reason: &str) -> Option<ConnAckProperties> {
    Some(ConnAckProperties {
        reason_string: Some(reason.to_string()),
        ..empty_connack_props()
    })
}

fn empty_connack_props() -> ConnAckProperties {
    ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

async fn refuse(io: &mut Box<dyn Io>, v: Version, code: ConnectReturnCode, reason: &str) {
    let props = if v == Version::V5 {
        reason_props(reason)
    } else {
        None
    };
    let out = connack_bytes(v, code, props);
    let _ = io.write_all(&out).await;
    let _ = io.flush().await;
    let _ = io.shutdown().await;
}

/// Serves one client connection until it ends.
pub async fn serve(edge: Arc<Edge>, mut io: Box<dyn Io>, peer: SocketAddr, transport: Transport) {
    let limits = edge.config.limits.clone();
    let mut cbuf = BytesMut::with_capacity(4096);
    let first = tokio::time::timeout(
        limits.connect_timeout(),
        read_connect(&mut io, &mut cbuf, limits.max_packet_size),
    )
    .await;
    let (version, connect, will, login) = match first {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time");
            return;
        }
        Ok(Err(reply)) => {
            if let Some(out) = reply {
                let _ = io.write_all(&out).await;
                let _ = io.flush().await;
            }
            crate::transport::close_gently(&mut io).await;
            return;
        }
        Ok(Ok(x)) => x,
    };
    let v5 = version == Version::V5;
    let props = connect.properties.clone();

    if props
        .as_ref()
        .is_some_and(|p| p.authentication_method.is_some())
    {
        return refuse(
            &mut io,
            version,
            ConnectReturnCode::BadAuthenticationMethod,
            "enhanced authentication is not supported",
        )
        .await;
    }
    if let Some(w) = &will {
        let ok = std::str::from_utf8(&w.topic)
            .ok()
            .is_some_and(|t| topic::validate_topic(t).is_ok() && !t.starts_with('$'));
        if !ok {
            return refuse(
                &mut io,
                version,
                ConnectReturnCode::TopicNameInvalid,
                "invalid will topic",
            )
            .await;
        }
    }

    if let Some((code, why)) = will
        .as_ref()
        .and_then(|w| crate::limits::will_refusal(w, version, &limits))
    {
        return refuse(&mut io, version, code, &why).await;
    }

    // Client identifier (MQTT-3.1.3-6/7/8 and MQTT 5 §3.1.3.1).
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        if !v5 && !connect.clean_start {
            return refuse(
                &mut io,
                version,
                ConnectReturnCode::BadClientId,
                "empty client id needs a clean session",
            )
            .await;
        }
        let id = format!("rtw-{}", Alphanumeric.sample_string(&mut rand::rng(), 16));
        assigned = Some(id.clone());
        id
    } else {
        connect.client_id.clone()
    };

    // Limits before authentication: a flood of bad passwords costs no hashing past them.
    // The node's own sessions (the HTTP bridge's) do not take client slots: with a small
    // `max_connections` the bridge could not even start.
    let permit = if transport == Transport::Internal {
        Ok(None)
    } else {
        edge.connections.clone().try_acquire_owned().map(Some)
    };
    let Ok(_permit) = permit else {
        edge.stats
            .connections_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return refuse(
            &mut io,
            version,
            ConnectReturnCode::QuotaExceeded,
            "too many connections",
        )
        .await;
    };
    let ip_guard = if transport == Transport::Internal {
        None
    } else if edge.ip_enter(peer.ip()) {
        Some(IpGuard(edge.clone(), peer.ip()))
    } else {
        edge.stats
            .connections_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return refuse(
            &mut io,
            version,
            ConnectReturnCode::QuotaExceeded,
            "too many connections from this address",
        )
        .await;
    };

    let creds = Credentials {
        client_id: &client_id,
        username: login.as_ref().map(|l| l.username.as_str()),
        password: login.as_ref().map(|l| l.password.as_str()),
        peer,
        transport,
    };
    // The in-process bridge session authorizes each HTTP caller itself.
    let authenticated = if transport == Transport::Internal {
        Ok(Identity {
            admin: true,
            ..Identity::default()
        })
    } else {
        // Password hashing takes milliseconds: the authenticator runs it off the async workers.
        edge.authenticator.authenticate_async(&creds).await
    };
    let identity = match authenticated {
        Ok(id) => id,
        Err(r) => {
            edge.stats
                .connections_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (code, why) = r.connack();
            tracing::info!(%peer, client_id, reason = why, "connection refused");
            // 3.1.1 has one code for every refusal here: 0x05, not authorized.
            let code = if v5 {
                code
            } else {
                ConnectReturnCode::NotAuthorized
            };
            return refuse(&mut io, version, code, why).await;
        }
    };
    if let Some(w) = &will {
        let t = String::from_utf8_lossy(&w.topic);
        if !edge.authorizer.can_publish(&identity, &client_id, &t) {
            return refuse(
                &mut io,
                version,
                ConnectReturnCode::NotAuthorized,
                "will topic not allowed",
            )
            .await;
        }
    }
    // Keep-alive, session expiry, flow control.
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if v5 && limits.max_keepalive > 0 && (keep_alive == 0 || keep_alive > limits.max_keepalive) {
        keep_alive = limits.max_keepalive;
        server_keep_alive = Some(keep_alive);
    }
    let asked_expiry = if v5 {
        props
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    let expiry = asked_expiry.min(limits.max_session_expiry_secs);
    let client_receive_max = props
        .as_ref()
        .and_then(|p| p.receive_maximum)
        .unwrap_or(u16::MAX);
    let window = client_receive_max.min(limits.max_inflight).max(1);
    let client_max_packet = props
        .as_ref()
        .and_then(|p| p.max_packet_size)
        .unwrap_or(u32::MAX);

    let conn_id = edge.conn_id();
    let (control_tx, control_rx) = mpsc::channel(4);
    let claim = edge.registry.claim(&client_id, conn_id, control_tx).await;

    // How the core keeps the session: rumqttd has one `clean` flag for both "start fresh" and
    // "forget at disconnect", so MQTT 5's two settings are mapped onto it here.
    let (upstream_clean, purge_first) = if !v5 || expiry == 0 {
        (connect.clean_start, false)
    } else {
        (false, connect.clean_start)
    };
    if purge_first {
        edge.purge_session(&client_id).await;
    }
    let req = UpstreamConnect {
        client_id: client_id.clone(),
        clean_start: upstream_clean,
        receive_maximum: window,
    };
    let (mut core, core_ack, mut ubuf) = match edge.core.connect(&req).await {
        Ok(x) => x,
        Err(e) => {
            drop(claim);
            return core_unavailable(&mut io, version, &client_id, e).await;
        }
    };
    if core_ack.code != ConnectReturnCode::Success {
        tracing::error!(client_id, code = ?core_ack.code, "core refused session");
        drop(claim);
        return refuse(
            &mut io,
            version,
            ConnectReturnCode::ServerUnavailable,
            "broker core refused the session",
        )
        .await;
    }

    let ack_props = v5.then(|| ConnAckProperties {
        session_expiry_interval: (expiry != asked_expiry).then_some(expiry),
        receive_max: Some(limits.max_inflight.max(1)),
        retain_available: Some(1),
        max_packet_size: Some(limits.max_packet_size),
        assigned_client_identifier: assigned,
        topic_alias_max: Some(limits.topic_alias_max),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(1),
        shared_subscription_available: Some(1),
        server_keep_alive,
        ..empty_connack_props()
    });
    let mut session = Session {
        internal: transport == Transport::Internal,
        src: client_hash(&client_id),
        edge: edge.clone(),
        version,
        client_id,
        identity,
        keep_alive,
        client_max_packet,
        window,
        will,
        expiry,
        upstream_clean,
        aliases: HashMap::new(),
        subs: HashMap::new(),
        inflight_in: HashSet::new(),
        local_qos2_in: HashSet::new(),
        out: HashMap::new(),
        local_out: HashMap::new(),
        keeps_core_copies: false,
        core_stamps: HashMap::new(),
        redelivered: HashSet::new(),
        core_to_client: HashMap::new(),
        resume: Default::default(),
        reserved: HashSet::new(),
        core_rel_local: HashSet::new(),
        core_acks: VecDeque::new(),
        core_comps: VecDeque::new(),
        rate_tokens: limits.max_publish_rate as f64,
        rate_at: tokio::time::Instant::now(),
        queue: VecDeque::new(),
        next_pkid: 32768,
        seq: 0,
        copies: HashMap::new(),
        copy_order: VecDeque::new(),
        pending_subs: HashMap::new(),
        pending_unsubs: HashMap::new(),
        client_out: BytesMut::new(),
        core_out: BytesMut::new(),
        tally: Tally::default(),
    };
    let session_present = !upstream_clean && !purge_first && core_ack.session_present;
    // The edge's half of a resumed session: its subscriptions, as the client made them.
    let saved = edge.registry.take_subscriptions(&session.client_id);
    let unacked = edge.registry.take_unacked(&session.client_id);
    let ids = edge.registry.take_ids(&session.client_id);
    let local = edge.registry.take_local(&session.client_id);
    if session_present {
        session.redelivered = unacked;
        session.reserved = ids
            .rel
            .values()
            .chain(ids.stamps.values())
            .copied()
            .collect();
        session.resume = ids;
        // Put back in the core what it no longer or should no longer hold.
        let mut dropped = Vec::new();
        let mut rejoin: Vec<(Option<usize>, Vec<Filter>)> = Vec::new();
        let mut keep = Vec::new();
        for (f, id) in saved {
            // The client may come back with other credentials: keep only what they allow.
            let inner = topic::match_filter(&f.path);
            let shared = topic::split_shared(&f.path).is_some();
            if session.internal
                || edge
                    .authorizer
                    .can_subscribe(&session.identity, &session.client_id, inner)
            {
                if shared {
                    let core_filter = Filter::new(f.path.clone(), f.qos);
                    match rejoin.iter_mut().find(|(gid, _)| *gid == id) {
                        Some((_, fs)) => fs.push(core_filter),
                        None => rejoin.push((id, vec![core_filter])),
                    }
                }
                keep.push((f, id));
            } else {
                tracing::debug!(
                    client_id = session.client_id,
                    filter = f.path,
                    "subscription no longer allowed"
                );
                if !shared && !f.path.starts_with("$SYS") {
                    dropped.push(f.path);
                }
            }
        }
        let mut requests: Vec<Packet> = rejoin
            .into_iter()
            .map(|(id, filters)| {
                Packet::Subscribe(Subscribe {
                    pkid: 0,
                    filters,
                    properties: id.map(|id| SubscribeProperties {
                        id: Some(id),
                        user_properties: Vec::new(),
                    }),
                })
            })
            .collect();
        if !dropped.is_empty() {
            requests.push(Packet::Unsubscribe(Unsubscribe {
                pkid: 0,
                filters: dropped,
                properties: None,
            }));
        }
        if let Err(e) = core_requests(&mut core, &mut ubuf, requests, edge.core.max_packet()).await
        {
            return core_unavailable(&mut io, version, &session.client_id, e).await;
        }
        for (f, id) in keep {
            session.add_sub(&f, id);
        }
    }
    session.send_client(Packet::ConnAck(ConnAck {
        session_present,
        code: ConnectReturnCode::Success,
        properties: ack_props,
    }));
    if session_present {
        session.resume_local(local);
    }
    edge.stats.connect(transport);
    tracing::debug!(%peer, client_id = session.client_id, version = version.label(), transport = transport.label(), "connected");

    let end = session.run(&mut io, core, cbuf, ubuf, control_rx).await;
    edge.stats.disconnect(transport);
    edge.stats.add(&mut session.tally);
    tracing::debug!(client_id = session.client_id, reason = ?end, "disconnected");
    session.finish(end, &mut io).await;
    let (will_timer, purge_timer) = session.timers().await;
    edge.registry
        .release(&session.client_id, conn_id, will_timer, purge_timer);
    drop(claim);
    drop(ip_guard);
}

/// Refuses a client whose session the core could not take: CONNACK "server unavailable".
async fn core_unavailable(io: &mut Box<dyn Io>, v: Version, client_id: &str, e: anyhow::Error) {
    tracing::error!(client_id, error = %e, "core unavailable");
    refuse(
        io,
        v,
        ConnectReturnCode::ServerUnavailable,
        "broker core unavailable",
    )
    .await
}

/// Sends SUBSCRIBE/UNSUBSCRIBE `requests` of the edge's own on a session's core link before the
/// session runs, and waits for the SUBACKs, so their packet ids cannot meet the client's. Whatever else the core sends meanwhile (a resumed session's queue)
/// stays in `ubuf`, in order, for the session.
async fn core_requests(
    core: &mut TcpStream,
    ubuf: &mut BytesMut,
    mut requests: Vec<Packet>,
    max: u32,
) -> anyhow::Result<()> {
    if requests.is_empty() {
        return Ok(());
    }
    let mut out = BytesMut::new();
    let mut waiting = HashSet::new();
    for (i, r) in requests.iter_mut().enumerate() {
        let pkid = i as u16 + 1;
        match r {
            Packet::Subscribe(s) => s.pkid = pkid,
            Packet::Unsubscribe(u) => u.pkid = pkid,
            _ => {}
        }
        // rumqttd sends no UNSUBACK for a filter it does not find (its defect 7): only SUBACKs
        // are waited for; a late UNSUBACK finds no pending UNSUBSCRIBE and is dropped, or, if
        // the client reused the id meanwhile, acknowledges the client's a moment early, after
        // the edge already stopped delivering what it unsubscribes.
        if matches!(r, Packet::Subscribe(_)) {
            waiting.insert(pkid);
        }
        r.write(&mut out, None)
            .map_err(|e| anyhow::anyhow!("encode: {e}"))?;
    }
    core.write_all(&out).await?;
    let mut kept = BytesMut::new();
    let wait = async {
        loop {
            loop {
                match codec::read_v5(ubuf, max) {
                    Ok(Some(Packet::SubAck(a))) if waiting.remove(&a.pkid) => {}
                    Ok(Some(other)) => {
                        other
                            .write(&mut kept, None)
                            .map_err(|e| anyhow::anyhow!("encode: {e}"))?;
                    }
                    Ok(None) => break,
                    Err(e) => anyhow::bail!("core sent a bad packet: {e}"),
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if core.read_buf(ubuf).await? == 0 {
                anyhow::bail!("core closed the link");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .map_err(|_| anyhow::anyhow!("core did not acknowledge in time"))??;
    // What was kept goes first, then any partial packet still in `ubuf`.
    kept.extend_from_slice(ubuf);
    *ubuf = kept;
    Ok(())
}

/// Gives back a per-address connection slot.
struct IpGuard(Arc<Edge>, std::net::IpAddr);

impl Drop for IpGuard {
    fn drop(&mut self) {
        self.0.ip_leave(self.1);
    }
}

struct Session {
    edge: Arc<Edge>,
    /// The in-process bridge session (may use the reply namespace).
    internal: bool,
    version: Version,
    client_id: String,
    src: u64,
    identity: Identity,
    keep_alive: u16,
    client_max_packet: u32,
    /// Most QoS 1/2 messages in flight towards the client.
    window: u16,
    will: Option<LastWill>,
    expiry: u32,
    upstream_clean: bool,
    aliases: HashMap<u16, Bytes>,
    subs: HashMap<String, Sub>,
    /// Client → core QoS 1/2 packet ids not yet completed.
    inflight_in: HashSet<u16>,
    /// Client QoS 2 publishes the edge refused itself (it answers their PUBREL).
    local_qos2_in: HashSet<u16>,
    /// Client-side packet id → origin, for messages in flight towards the client.
    out: HashMap<u16, (Origin, QoS)>,
    /// The messages in `out` from the edge itself not yet received by the client (no PUBACK or
    /// PUBREC): kept to send again if the session resumes on another connection.
    local_out: HashMap<u16, Publish>,
    /// A persistent session with a shared subscription: `local_out` also keeps the core's
    /// messages, and the session takes them over when its connection ends (see `run`).
    keeps_core_copies: bool,
    /// Core packet id → stamp (source, sequence) of the message last delivered under it.
    core_stamps: HashMap<u16, (u64, u64)>,
    /// Stamps of messages a resumed session had sent without acknowledgement (DUP when resent).
    redelivered: HashSet<(u64, u64)>,
    /// Core packet id → client packet id, for QoS 2 messages towards the client.
    /// Core packet id → client packet ids of QoS 2 messages delivered under it, oldest first,
    /// with whether their PUBREL went out. Several: the core reuses an id once it has the PUBREC,
    /// before the exchange is complete.
    core_to_client: HashMap<u16, Vec<(u16, bool)>>,
    /// A resumed session: the client ids of QoS 2 deliveries the previous connection left in
    /// flight, for the PUBRELs and messages the core sends again. Consumed as they come.
    resume: crate::registry::ResumeIds,
    /// Client packet ids the client may still hold from the previous connection: given to no
    /// other message until the one it holds them for comes again.
    reserved: HashSet<u16>,
    /// Core QoS 2 messages the edge completes itself (delivered at a lower QoS, or dropped).
    core_rel_local: HashSet<u16>,
    /// The core's QoS 1/2 publishes in arrival order: (packet id, QoS 2, acknowledgeable).
    core_acks: VecDeque<(u16, bool, bool)>,
    /// The core's PUBRELs in arrival order: (packet id, completable).
    core_comps: VecDeque<(u16, bool)>,
    /// Publish-rate token bucket.
    rate_tokens: f64,
    rate_at: tokio::time::Instant,
    /// QoS 1/2 messages waiting for room in the window.
    queue: VecDeque<(Publish, Origin)>,
    next_pkid: u16,
    seq: u64,
    /// Copies still expected of a message that matched several subscriptions.
    copies: HashMap<(u64, u64), usize>,
    copy_order: VecDeque<(u64, u64)>,
    pending_subs: HashMap<u16, PendingSub>,
    pending_unsubs: HashMap<u16, PendingUnsub>,
    client_out: BytesMut,
    core_out: BytesMut,
    tally: Tally,
}

impl Session {
    async fn run(
        &mut self,
        io: &mut Box<dyn Io>,
        mut core: TcpStream,
        mut cbuf: BytesMut,
        mut ubuf: BytesMut,
        mut control: mpsc::Receiver<Control>,
    ) -> End {
        let max_in = self.edge.config.limits.max_packet_size;
        let max_core = self.edge.core.max_packet();
        let write_timeout = self.edge.config.limits.write_timeout();
        let mut sys = self.edge.sys.clone();
        sys.mark_unchanged();
        let mut ping = tokio::time::interval(CORE_PING);
        ping.reset();
        let idle =
            (self.keep_alive > 0).then(|| Duration::from_millis(self.keep_alive as u64 * 1500));
        let mut last_rx = tokio::time::Instant::now();
        let expires = self.identity.expires_at.map(|t| {
            let left = t
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::Instant::now() + left
        });
        // A resumed session's queue may have arrived with the core's CONNACK.
        if !ubuf.is_empty() {
            if let Err(end) = self.on_core_bytes(&mut ubuf, max_core) {
                return end;
            }
        }
        // Packets the client sent right behind its CONNECT arrived with it.
        let mut pipelined = !cbuf.is_empty();
        let mut cgrow = Grow::new(16 * 1024);
        let mut ugrow = Grow::new(64 * 1024);
        let end = 'main: loop {
            if std::mem::take(&mut pipelined) {
                if let Err(end) = self.on_client_bytes(&mut cbuf, max_in).await {
                    break 'main end;
                }
            }
            if !self.client_out.is_empty() {
                self.tally.bytes_sent += self.client_out.len() as u64;
                let w = async {
                    io.write_all(&self.client_out).await?;
                    io.flush().await
                };
                match tokio::time::timeout(write_timeout, w).await {
                    Ok(Ok(())) => lean(&mut self.client_out),
                    _ => break 'main End::Gone,
                }
            }
            if !self.core_out.is_empty() {
                if core.write_all(&self.core_out).await.is_err() {
                    break 'main End::CoreLost;
                }
                lean(&mut self.core_out);
            }
            self.edge.stats.add(&mut self.tally);
            let has_sys = self.subs.values().any(|s| s.sys);
            let deadline = idle.map(|d| last_rx + d);
            cgrow.prepare(&mut cbuf);
            ugrow.prepare(&mut ubuf);
            tokio::select! {
                c = control.recv() => match c {
                    Some(Control::Kick(code)) => {
                        // What the replaced client sent before the new connection came (its last
                        // acknowledgements, its DISCONNECT) still counts.
                        use futures_util::FutureExt;
                        if let Some(Ok(1..)) = io.read_buf(&mut cbuf).now_or_never() {
                            if let Err(end) = self.on_client_bytes(&mut cbuf, max_in).await {
                                break 'main end;
                            }
                        }
                        break 'main End::Kicked(code)
                    }
                    None => break 'main End::Kicked(0x8B),
                },
                r = io.read_buf(&mut cbuf) => match r {
                    Ok(0) | Err(_) => break 'main End::Gone,
                    Ok(n) => {
                        cgrow.read(n);
                        last_rx = tokio::time::Instant::now();
                        self.tally.bytes_received += n as u64;
                        if let Err(end) = self.on_client_bytes(&mut cbuf, max_in).await {
                            break 'main end;
                        }
                    }
                },
                r = core.read_buf(&mut ubuf) => match r {
                    Ok(0) | Err(_) => break 'main End::CoreLost,
                    Ok(n) => {
                        ugrow.read(n);
                        crate::core::ack_now(&core);
                        if let Err(end) = self.on_core_bytes(&mut ubuf, max_core) {
                            break 'main end;
                        }
                    }
                },
                r = sys.changed(), if has_sys => {
                    if r.is_ok() {
                        let tree = sys.borrow_and_update().clone();
                        self.deliver_sys(&tree, None, false);
                    }
                }
                _ = ping.tick() => {
                    self.send_core(Packet::PingReq(PingReq));
                }
                _ = sleep_until(deadline) => break 'main End::KeepAlive,
                _ = sleep_until(expires) => break 'main End::Kicked(0xA0),
            }
        };
        // A persistent session in a share group hands everything it holds from the core back
        // to the core as delivered and keeps it itself (sent again on resume, as the edge's own
        // messages). rumqttd panics, taking every session down, when a persistent member of a
        // share group leaves with a message unacknowledged and was the group's last member.
        if self.keeps_core_copies && !matches!(end, End::CoreLost) {
            for e in self.core_acks.iter_mut() {
                e.2 = true;
            }
            self.ack_core_publish(0);
        }
        // Whatever the last batch produced still goes out: a QoS 0 PUBLISH read together with
        // the client's DISCONNECT must reach the core, acknowledgements must reach the client.
        let flush = async {
            if !self.core_out.is_empty() {
                core.write_all(&self.core_out).await?;
                self.core_out.clear();
            }
            Ok::<(), std::io::Error>(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
        // Closed, and seen closed by the core, before the claim on the client id goes (a
        // reconnect waits for it): see `core::close_link`.
        crate::core::close_link(&mut core).await;
        end
    }

    async fn on_client_bytes(&mut self, cbuf: &mut BytesMut, max: u32) -> Result<(), End> {
        loop {
            match codec::read(cbuf, self.version, max) {
                Ok(Some(p)) => self.on_client(p).await?,
                Ok(None) => return Ok(()),
                Err(e) => return Err(End::Violation(e.reason(), e.to_string())),
            }
        }
    }

    fn on_core_bytes(&mut self, ubuf: &mut BytesMut, max: u32) -> Result<(), End> {
        loop {
            match codec::read_v5(ubuf, max) {
                Ok(Some(p)) => self.on_core(p)?,
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::error!(error = %e, "bad packet from core");
                    return Err(End::CoreLost);
                }
            }
        }
    }

    fn send_client(&mut self, p: Packet) {
        if let Err(e) = codec::write(&p, self.version, &mut self.client_out) {
            tracing::warn!(error = %e, "cannot encode packet for client");
        }
    }

    fn send_core(&mut self, p: Packet) {
        if let Err(e) = p.write(&mut self.core_out, None) {
            tracing::warn!(error = %e, "cannot encode packet for core");
        }
    }

    // ---- client → core ----

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
                if self.local_qos2_in.remove(&r.pkid) {
                    self.send_client(Packet::PubComp(PubComp::new(r.pkid, None)));
                } else {
                    self.send_core(Packet::PubRel(PubRel::new(r.pkid, None)));
                }
                Ok(())
            }
            Packet::PubComp(c) => {
                self.client_done(c.pkid);
                Ok(())
            }
            Packet::Subscribe(s) => self.client_subscribe(s),
            Packet::Unsubscribe(u) if u.filters.is_empty() => Err(End::Violation(
                DisconnectReasonCode::ProtocolError,
                "UNSUBSCRIBE without filters".into(),
            )),
            Packet::Unsubscribe(u) => {
                self.client_unsubscribe(u);
                Ok(())
            }
            Packet::PingReq(_) => {
                self.send_client(Packet::PingResp(PingResp));
                Ok(())
            }
            Packet::Disconnect(d) => Err(End::Client {
                will: d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage,
                expiry: d.properties.and_then(|p| p.session_expiry_interval),
            }),
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

    fn refuse_publish(&mut self, qos: QoS, pkid: u16, why: Refuse) {
        tracing::debug!(client_id = self.client_id, reason = ?why, "publish refused");
        self.tally.dropped += 1;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send_client(Packet::PubAck(PubAck {
                pkid,
                reason: why.puback(),
                properties: None,
            })),
            QoS::ExactlyOnce => {
                self.local_qos2_in.insert(pkid);
                self.send_client(Packet::PubRec(PubRec {
                    pkid,
                    reason: why.pubrec(),
                    properties: None,
                }));
            }
        }
    }

    async fn client_publish(&mut self, mut p: Publish) -> Result<(), End> {
        self.tally.messages_received += 1;
        let (qos, pkid) = (p.qos, p.pkid);
        if let Some(alias) = p.properties.as_mut().and_then(|pr| pr.topic_alias.take()) {
            if alias == 0 || alias > self.edge.config.limits.topic_alias_max {
                return Err(End::Violation(
                    DisconnectReasonCode::TopicAliasInvalid,
                    format!("topic alias {alias} out of range"),
                ));
            }
            if p.topic.is_empty() {
                p.topic = self.aliases.get(&alias).cloned().ok_or_else(|| {
                    End::Violation(
                        DisconnectReasonCode::ProtocolError,
                        "unknown topic alias".into(),
                    )
                })?;
            } else {
                self.aliases.insert(alias, p.topic.clone());
            }
        }
        let Ok(topic) = std::str::from_utf8(&p.topic) else {
            return Err(End::Violation(
                DisconnectReasonCode::MalformedPacket,
                "topic is not UTF-8".into(),
            ));
        };
        if let Err(e) = topic::validate_topic(topic) {
            // U+0000 makes any MQTT string malformed (§1.5.4); an empty topic without alias is a
            // protocol error (§3.3.2.1); wildcards and the rest are an invalid topic name.
            let code = match e {
                topic::TopicError::Nul => DisconnectReasonCode::MalformedPacket,
                topic::TopicError::Empty => DisconnectReasonCode::ProtocolError,
                _ => DisconnectReasonCode::TopicNameInvalid,
            };
            return Err(End::Violation(code, e.to_string()));
        }
        if topic.starts_with('$') {
            self.refuse_publish(qos, pkid, Refuse::TopicNameInvalid);
            return Ok(());
        }
        let utf8_declared = p
            .properties
            .as_ref()
            .is_some_and(|pr| pr.payload_format_indicator == Some(1));
        if utf8_declared && std::str::from_utf8(&p.payload).is_err() {
            self.refuse_publish(qos, pkid, Refuse::PayloadFormatInvalid);
            return Ok(());
        }
        if crate::limits::publish_over_limits(&p, &self.edge.config.limits).is_some() {
            self.refuse_publish(qos, pkid, Refuse::QuotaExceeded);
            return Ok(());
        }
        if !self
            .edge
            .authorizer
            .can_publish(&self.identity, &self.client_id, topic)
        {
            if self.version == Version::V311
                && self.edge.config.deny_action == crate::security::DenyAction::Disconnect
            {
                return Err(End::Violation(
                    DisconnectReasonCode::NotAuthorized,
                    format!("not allowed to publish to {topic}"),
                ));
            }
            self.refuse_publish(qos, pkid, Refuse::NotAuthorized);
            return Ok(());
        }
        if !self.take_publish_token() {
            self.refuse_publish(qos, pkid, Refuse::QuotaExceeded);
            return Ok(());
        }
        if qos != QoS::AtMostOnce
            && !self.inflight_in.contains(&pkid)
            && self.inflight_in.len() >= self.edge.config.limits.max_inflight as usize
        {
            return Err(End::Violation(
                DisconnectReasonCode::ReceiveMaximumExceeded,
                "more QoS 1/2 messages in flight than Receive Maximum".into(),
            ));
        }
        // Replies are for the bridge alone: kept as retained state they would reach every `#`
        // subscriber (and anyone may publish there).
        if p.retain && topic.starts_with(crate::REPLY_PREFIX) {
            p.retain = false;
        }
        if p.retain {
            if let Err(e) = self.edge.retained.set(&p).await {
                tracing::warn!(error = %e, "retained write failed");
                // A 3.1.1 PUBACK/PUBREC has no reason code: acknowledging would tell the client
                // its state is stored. Closing leaves the message unacknowledged instead.
                if self.version == Version::V311 && qos != QoS::AtMostOnce {
                    return Err(End::Violation(
                        DisconnectReasonCode::UnspecifiedError,
                        format!("retained message not stored: {e}"),
                    ));
                }
                let why = match e {
                    crate::retained::StoreError::Busy => Refuse::QuotaExceeded,
                    crate::retained::StoreError::Failed(_) => Refuse::Unspecified,
                };
                self.refuse_publish(qos, pkid, why);
                return Ok(());
            }
        }
        if qos != QoS::AtMostOnce {
            self.inflight_in.insert(pkid);
        }
        self.seq += 1;
        let s = Stamp {
            qos,
            retain: p.retain,
            src: self.src,
            seq: self.seq,
        };
        stamp(&mut p, s);
        self.send_core(Packet::Publish(p));
        Ok(())
    }

    fn client_subscribe(&mut self, s: Subscribe) -> Result<(), End> {
        let id = s.properties.as_ref().and_then(|p| p.id);
        if id == Some(0) {
            return Err(End::Violation(
                DisconnectReasonCode::ProtocolError,
                "subscription identifier 0".into(),
            ));
        }
        let n = s.filters.len();
        let mut pending = PendingSub {
            codes: vec![SubscribeReasonCode::Unspecified; n],
            filters: s.filters.clone(),
            existed: vec![false; n],
            forwarded: Vec::new(),
            cancelled: vec![false; n],
            id,
        };
        let mut sys_granted = Vec::new();
        // New filters join `subs` only when the core's SUBACK comes: those of this SUBSCRIBE and
        // of any still waiting count towards `max_subscriptions` too.
        let mut adding: usize = self
            .pending_subs
            .values()
            .map(|p| {
                p.forwarded
                    .iter()
                    .filter(|&&i| !p.existed[i] && !p.cancelled[i])
                    .count()
            })
            .sum();
        for (i, f) in s.filters.iter().enumerate() {
            pending.existed[i] = self.subs.contains_key(&f.path);
            let shared = topic::split_shared(&f.path).is_some();
            if topic::validate_filter(&f.path).is_err() {
                pending.codes[i] = SubscribeReasonCode::TopicFilterInvalid;
                continue;
            }
            if shared && f.nolocal {
                return Err(End::Violation(
                    DisconnectReasonCode::ProtocolError,
                    "no-local on a shared subscription".into(),
                ));
            }
            let inner = topic::match_filter(&f.path);
            if !self
                .edge
                .authorizer
                .can_subscribe(&self.identity, &self.client_id, inner)
            {
                pending.codes[i] = SubscribeReasonCode::NotAuthorized;
                continue;
            }
            if !self.internal && crate::reserved_filter(inner) {
                pending.codes[i] = SubscribeReasonCode::NotAuthorized;
                continue;
            }
            let sys = !shared && f.path.starts_with("$SYS");
            if f.path.starts_with('$') && !shared && !sys {
                pending.codes[i] = SubscribeReasonCode::TopicFilterInvalid;
                continue;
            }
            if !pending.existed[i] {
                if self.subs.len() + adding >= self.edge.config.limits.max_subscriptions {
                    pending.codes[i] = SubscribeReasonCode::QuotaExceeded;
                    continue;
                }
                adding += 1;
            }
            if sys {
                self.add_sub(f, id);
                pending.codes[i] = SubscribeReasonCode::Success(f.qos);
                sys_granted.push(i);
            } else {
                pending.forwarded.push(i);
            }
        }
        if pending.forwarded.is_empty() {
            self.finish_subscribe(s.pkid, pending);
        } else {
            let filters = pending
                .forwarded
                .iter()
                .map(|&i| Filter::new(pending.filters[i].path.clone(), pending.filters[i].qos))
                .collect();
            self.send_core(Packet::Subscribe(Subscribe {
                pkid: s.pkid,
                filters,
                properties: id.map(|id| SubscribeProperties {
                    id: Some(id),
                    user_properties: Vec::new(),
                }),
            }));
            self.pending_subs.insert(s.pkid, pending);
        }
        Ok(())
    }

    fn add_sub(&mut self, f: &Filter, id: Option<usize>) {
        let shared = topic::split_shared(&f.path).is_some();
        let sub = Sub {
            filter: topic::match_filter(&f.path).to_string(),
            qos: f.qos,
            nolocal: f.nolocal,
            rap: f.preserve_retain,
            id,
            shared,
            sys: !shared && f.path.starts_with("$SYS"),
        };
        let inner = sub.filter.clone();
        let sys = sub.sys;
        if shared && !self.upstream_clean {
            self.keeps_core_copies = true;
        }
        if self.subs.insert(f.path.clone(), sub).is_none() {
            self.edge
                .stats
                .subscriptions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !self.internal && !sys {
                self.edge.interest(&inner, true);
            }
        }
    }

    /// Sends SUBACK, then the retained (or `$SYS`) messages each new subscription asks for.
    fn finish_subscribe(&mut self, pkid: u16, p: PendingSub) {
        self.send_client(Packet::SubAck(SubAck {
            pkid,
            return_codes: p.codes.clone(),
            properties: None,
        }));
        let now = SystemTime::now();
        for (i, f) in p.filters.iter().enumerate() {
            let SubscribeReasonCode::Success(granted) = p.codes[i] else {
                continue;
            };
            if topic::split_shared(&f.path).is_some() {
                continue; // MQTT 5 §4.8.2: no retained messages for shared subscriptions.
            }
            let send = match f.retain_forward_rule {
                RetainForwardRule::OnEverySubscribe => true,
                RetainForwardRule::OnNewSubscribe => !p.existed[i],
                RetainForwardRule::Never => false,
            };
            if !send {
                continue;
            }
            if f.path.starts_with("$SYS") {
                let tree = self.edge.sys.borrow().clone();
                self.deliver_sys(&tree, Some(&f.path), true);
                continue;
            }
            for r in self.edge.retained.matching(&f.path) {
                let Some(mut m) = r.live(now) else { continue };
                m.qos = qmin(m.qos, granted);
                m.retain = true;
                if let Some(id) = p.id {
                    m.properties
                        .get_or_insert_with(Default::default)
                        .subscription_identifiers = vec![id];
                }
                self.deliver(m, Origin::Local);
            }
        }
    }

    fn client_unsubscribe(&mut self, u: Unsubscribe) {
        let mut reasons = Vec::with_capacity(u.filters.len());
        let mut forward = Vec::new();
        for f in &u.filters {
            // A SUBSCRIBE for it may still wait for the core's SUBACK. The core sees this
            // UNSUBSCRIBE after it, so forward it, and do not add the subscription on that SUBACK.
            let mut in_flight = false;
            for p in self.pending_subs.values_mut() {
                for &i in &p.forwarded {
                    if p.filters[i].path == *f {
                        p.cancelled[i] = true;
                        in_flight = true;
                    }
                }
            }
            match self.subs.remove(f) {
                Some(sub) => {
                    self.edge
                        .stats
                        .subscriptions
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    if !self.internal && !sub.sys {
                        self.edge.interest(&sub.filter, false);
                    }
                    reasons.push(UnsubAckReason::Success);
                    if !sub.sys {
                        forward.push(f.clone());
                    }
                }
                None if in_flight => {
                    reasons.push(UnsubAckReason::Success);
                    forward.push(f.clone());
                }
                None => reasons.push(UnsubAckReason::NoSubscriptionExisted),
            }
        }
        if forward.is_empty() {
            self.send_client(Packet::UnsubAck(UnsubAck {
                pkid: u.pkid,
                reasons,
                properties: None,
            }));
        } else {
            self.send_core(Packet::Unsubscribe(Unsubscribe {
                pkid: u.pkid,
                filters: forward,
                properties: None,
            }));
            self.pending_unsubs.insert(u.pkid, PendingUnsub { reasons });
        }
    }

    /// One token from the client's publish-rate bucket (`[limits] max_publish_rate`).
    fn take_publish_token(&mut self) -> bool {
        let rate = self.edge.config.limits.max_publish_rate;
        if rate == 0 {
            return true;
        }
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.rate_at).as_secs_f64() * rate as f64;
        self.rate_tokens = (self.rate_tokens + refill).min(rate as f64);
        self.rate_at = now;
        if self.rate_tokens >= 1.0 {
            self.rate_tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets that client id `d` carries a QoS 2 message the core sent as `u`; false if it did
    /// not (delivered at QoS 1).
    fn unmap_core(&mut self, u: u16, d: u16) -> bool {
        let Some(ds) = self.core_to_client.get_mut(&u) else {
            return false;
        };
        let Some(i) = ds.iter().position(|e| e.0 == d) else {
            return false;
        };
        ds.remove(i);
        if ds.is_empty() {
            self.core_to_client.remove(&u);
        }
        true
    }

    /// PUBACK or PUBCOMP from the client for a message the edge delivered.
    fn client_done(&mut self, pkid: u16) {
        let Some((origin, _)) = self.out.remove(&pkid) else {
            return;
        };
        match origin {
            Origin::Core(u, QoS::ExactlyOnce) => {
                if self.unmap_core(u, pkid) {
                    self.complete_core_rel(u);
                } else {
                    // Delivered at QoS 1: the edge finishes the core's QoS 2 exchange.
                    self.core_rel_local.insert(u);
                    self.ack_core_publish(u);
                }
            }
            Origin::Core(u, _) => self.ack_core_publish(u),
            Origin::Local => {}
        }
        self.local_out.remove(&pkid);
        self.drain_queue();
    }

    fn client_pubrec(&mut self, r: PubRec) {
        let failed = !matches!(
            r.reason,
            PubRecReason::Success | PubRecReason::NoMatchingSubscribers
        );
        // Received: from here on, only PUBREL is ever sent again for it.
        self.local_out.remove(&r.pkid);
        match self.out.get(&r.pkid).copied() {
            None => self.send_client(Packet::PubRel(PubRel::new(r.pkid, None))),
            Some(_) if failed => {
                // The client refused the message: the exchange ends here.
                if let Some((Origin::Core(u, _), _)) = self.out.remove(&r.pkid) {
                    self.unmap_core(u, r.pkid);
                    self.core_rel_local.insert(u);
                    self.ack_core_publish(u);
                }
                self.drain_queue();
            }
            Some((Origin::Core(u, QoS::ExactlyOnce), QoS::ExactlyOnce)) => {
                self.ack_core_publish(u);
            }
            Some(_) => self.send_client(Packet::PubRel(PubRel::new(r.pkid, None))),
        }
    }

    // ---- core → client ----

    fn on_core(&mut self, p: Packet) -> Result<(), End> {
        match p {
            Packet::Publish(p) => self.core_publish(p),
            Packet::PubAck(a) => {
                self.inflight_in.remove(&a.pkid);
                self.send_client(Packet::PubAck(a));
            }
            Packet::PubRec(r) => {
                if !matches!(
                    r.reason,
                    PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                ) {
                    self.inflight_in.remove(&r.pkid);
                }
                self.send_client(Packet::PubRec(r));
            }
            Packet::PubComp(c) => {
                self.inflight_in.remove(&c.pkid);
                self.send_client(Packet::PubComp(c));
            }
            Packet::PubRel(r) => {
                let u = r.pkid;
                self.core_comps.push_back((u, false));
                if self.core_rel_local.remove(&u) {
                    self.complete_core_rel(u);
                } else if let Some(e) = self
                    .core_to_client
                    .get_mut(&u)
                    .and_then(|ds| ds.iter_mut().find(|e| !e.1))
                {
                    // The oldest message under `u` not yet released.
                    e.1 = true;
                    let d = e.0;
                    self.send_client(Packet::PubRel(PubRel::new(d, None)));
                } else {
                    // A resumed session: the core re-sends PUBREL for a message the client
                    // already has, under the id the client had it by (saved when the previous
                    // connection ended; the core's own when nothing was saved).
                    let d = self.resume.rel.remove(&u).unwrap_or(u);
                    self.reserved.remove(&d);
                    self.out
                        .entry(d)
                        .or_insert((Origin::Core(u, QoS::ExactlyOnce), QoS::ExactlyOnce));
                    self.core_to_client.entry(u).or_default().push((d, true));
                    self.send_client(Packet::PubRel(PubRel::new(d, None)));
                }
            }
            Packet::SubAck(s) => {
                let Some(mut pending) = self.pending_subs.remove(&s.pkid) else {
                    return Ok(());
                };
                let forwarded = std::mem::take(&mut pending.forwarded);
                for (k, &i) in forwarded.iter().enumerate() {
                    let code = s
                        .return_codes
                        .get(k)
                        .copied()
                        .unwrap_or(SubscribeReasonCode::Unspecified);
                    if let SubscribeReasonCode::Success(_) = code {
                        let f = pending.filters[i].clone();
                        if !pending.cancelled[i] {
                            self.add_sub(&f, pending.id);
                        }
                        pending.codes[i] = SubscribeReasonCode::Success(f.qos);
                    } else {
                        pending.codes[i] = code;
                    }
                }
                self.finish_subscribe(s.pkid, pending);
            }
            Packet::UnsubAck(u) => {
                if let Some(p) = self.pending_unsubs.remove(&u.pkid) {
                    self.send_client(Packet::UnsubAck(UnsubAck {
                        pkid: u.pkid,
                        reasons: p.reasons,
                        properties: None,
                    }));
                }
            }
            Packet::PingResp(_) => {}
            Packet::Disconnect(d) => {
                tracing::warn!(client_id = self.client_id, reason = ?d.reason_code, "core disconnected the session");
                return Err(End::CoreLost);
            }
            other => tracing::warn!(packet = packet_name(&other), "unexpected packet from core"),
        }
        Ok(())
    }

    /// Acknowledges the core's publish `u` (PUBACK, or PUBREC for QoS 2). rumqttd accepts
    /// acknowledgements only in the order it sent the messages, so an early one waits here until
    /// those before it are acknowledged too.
    fn ack_core_publish(&mut self, u: u16) {
        if let Some(e) = self.core_acks.iter_mut().find(|e| e.0 == u && !e.2) {
            e.2 = true;
        }
        while let Some(&(pkid, qos2, true)) = self.core_acks.front() {
            self.core_acks.pop_front();
            if qos2 {
                self.send_core(Packet::PubRec(PubRec::new(pkid, None)));
            } else {
                self.send_core(Packet::PubAck(PubAck::new(pkid, None)));
            }
        }
    }

    /// Sends PUBCOMP for the core's PUBREL `u`, in the order the PUBRELs came (as for acks).
    fn complete_core_rel(&mut self, u: u16) {
        if let Some(e) = self.core_comps.iter_mut().find(|e| e.0 == u && !e.1) {
            e.1 = true;
        }
        while let Some(&(pkid, true)) = self.core_comps.front() {
            self.core_comps.pop_front();
            self.send_core(Packet::PubComp(PubComp::new(pkid, None)));
        }
    }

    /// Completes the core's side of a message the client will not get (or gets at QoS 0).
    fn ack_core(&mut self, origin: Origin) {
        match origin {
            Origin::Core(u, QoS::AtLeastOnce) => self.ack_core_publish(u),
            Origin::Core(u, QoS::ExactlyOnce) => {
                self.core_rel_local.insert(u);
                self.ack_core_publish(u);
            }
            _ => {}
        }
    }

    fn core_publish(&mut self, mut p: Publish) {
        let origin = match p.qos {
            QoS::AtMostOnce => Origin::Local,
            q => Origin::Core(p.pkid, q),
        };
        if p.qos != QoS::AtMostOnce {
            self.core_acks
                .push_back((p.pkid, p.qos == QoS::ExactlyOnce, false));
        }
        let stamp = take_stamp(&mut p);
        let Ok(topic) = std::str::from_utf8(&p.topic) else {
            return self.ack_core(origin);
        };
        if !self.internal && topic.starts_with(crate::REPLY_PREFIX) {
            // Replies to the bridge's requests are for the bridge alone, whatever the filter.
            return self.ack_core(origin);
        }
        let mine = stamp.is_some_and(|s| s.src == self.src);
        let mut max_qos: Option<QoS> = None;
        let mut rap = false;
        let mut plain = 0usize;
        let mut ids: Vec<usize> = Vec::new();
        for s in self.subs.values() {
            if s.sys || !topic::matches(&s.filter, topic) {
                continue;
            }
            // The core sends a copy for a no-local subscription too: count it.
            if !s.shared {
                plain += 1;
            }
            if s.nolocal && mine {
                continue;
            }
            max_qos = Some(max_qos.map_or(s.qos, |q| qmax(q, s.qos)));
            rap |= s.rap;
            if let Some(id) = s.id {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        let Some(sub_qos) = max_qos else {
            return self.ack_core(origin);
        };
        // The core sends one copy per matching filter; the client gets one.
        if let (Some(s), true) = (stamp, plain > 1) {
            let key = (s.src, s.seq);
            match self.copies.get_mut(&key) {
                Some(left) => {
                    *left -= 1;
                    if *left == 0 {
                        self.copies.remove(&key);
                    }
                    return self.ack_core(origin);
                }
                None => {
                    self.copies.insert(key, plain - 1);
                    self.copy_order.push_back(key);
                    while self.copy_order.len() > MAX_COPY_RECORDS {
                        if let Some(old) = self.copy_order.pop_front() {
                            self.copies.remove(&old);
                        }
                    }
                }
            }
        }
        let orig_qos = stamp.map_or(p.qos, |s| s.qos);
        p.qos = qmin(orig_qos, sub_qos);
        p.retain = stamp.is_some_and(|s| s.retain) && rap;
        p.dup = false;
        if let (Some(s), Origin::Core(u, _)) = (stamp, origin) {
            // MQTT-3.3.1-1: what the client had before it reconnected comes again as DUP.
            p.dup = p.qos != QoS::AtMostOnce && self.redelivered.remove(&(s.src, s.seq));
            self.core_stamps.insert(u, (s.src, s.seq));
        }
        if let Some(props) = p.properties.as_mut() {
            props.subscription_identifiers = ids;
            props.topic_alias = None;
        } else if !ids.is_empty() {
            p.properties = Some(PublishProperties {
                subscription_identifiers: ids,
                ..Default::default()
            });
        }
        if p.qos == QoS::AtMostOnce {
            self.ack_core(origin);
            self.deliver(p, Origin::Local);
        } else {
            self.deliver(p, origin);
        }
    }

    fn alloc_pkid(&mut self, prefer: Option<u16>) -> u16 {
        if let Some(u) = prefer {
            if u != 0 && !self.out.contains_key(&u) && !self.reserved.contains(&u) {
                return u;
            }
        }
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            let d = self.next_pkid;
            if !self.out.contains_key(&d) && !self.reserved.contains(&d) {
                return d;
            }
        }
    }

    /// Sends a message to the client, within its window and size limit.
    fn deliver(&mut self, mut p: Publish, origin: Origin) {
        if self.client_max_packet < u32::MAX
            && codec::size(&Packet::Publish(p.clone()), self.version)
                > self.client_max_packet as usize
        {
            // MQTT 5 §3.1.2.11.4: a message too large for the client is discarded.
            self.tally.dropped += 1;
            return self.ack_core(origin);
        }
        if p.qos != QoS::AtMostOnce {
            if self.out.len() >= self.window as usize {
                if self.queue.len() >= self.edge.config.limits.max_queued {
                    self.tally.dropped += 1;
                    return self.ack_core(origin);
                }
                self.queue.push_back((p, origin));
                return;
            }
            let prefer = match origin {
                // Sent again after a resume: the id the client had it by, if it was not the
                // core's (the client may hold that id until PUBREL, MQTT-4.3.3).
                Origin::Core(u, _) => {
                    let again = self
                        .core_stamps
                        .get(&u)
                        .and_then(|st| self.resume.stamps.remove(st));
                    if let Some(d) = again {
                        self.reserved.remove(&d);
                    }
                    Some(again.unwrap_or(u))
                }
                Origin::Local => None,
            };
            let d = self.alloc_pkid(prefer);
            p.pkid = d;
            if let Origin::Core(u, QoS::ExactlyOnce) = origin {
                if p.qos == QoS::ExactlyOnce {
                    self.core_to_client.entry(u).or_default().push((d, false));
                }
            }
            self.out.insert(d, (origin, p.qos));
            if matches!(origin, Origin::Local) || self.keeps_core_copies {
                self.local_out.insert(d, p.clone());
            }
        } else {
            p.pkid = 0;
        }
        self.tally.messages_sent += 1;
        self.send_client(Packet::Publish(p));
    }

    /// Keeps the edge's own undelivered QoS 1/2 messages for a resume (the core's are the
    /// core's: it sends them again itself).
    fn save_local(&mut self) {
        let mut pending = LocalPending::default();
        // With `keeps_core_copies` the core's messages were handed back to it as delivered
        // (see `run`): they are the edge's to send again now. A core QoS 2 message the client
        // already has (PUBREC) is finished by the core's own PUBREL, as before.
        let ours = |o: &Origin| matches!(o, Origin::Local) || self.keeps_core_copies;
        for (&d, (origin, _)) in &self.out {
            if !ours(origin) {
                continue;
            }
            match self.local_out.remove(&d) {
                Some(mut p) => {
                    p.dup = true;
                    pending.sent.push(p);
                }
                None if matches!(origin, Origin::Local) => pending.released.push(d),
                None => {}
            }
        }
        pending.sent.sort_by_key(|p| p.pkid);
        pending.queued = self
            .queue
            .iter()
            .filter(|(p, o)| ours(o) && p.qos != QoS::AtMostOnce)
            .map(|(p, _)| p.clone())
            .collect();
        self.edge.registry.save_local(&self.client_id, pending);
    }

    /// Sends again what [`Session::save_local`] kept: unacknowledged messages with DUP under the
    /// packet ids the client knows them by, PUBREL for QoS 2 exchanges half done, then the queue.
    fn resume_local(&mut self, local: LocalPending) {
        for p in local.sent {
            let d = p.pkid;
            self.out.insert(d, (Origin::Local, p.qos));
            self.local_out.insert(d, p.clone());
            self.tally.messages_sent += 1;
            self.send_client(Packet::Publish(p));
        }
        for d in local.released {
            self.out.insert(d, (Origin::Local, QoS::ExactlyOnce));
            self.send_client(Packet::PubRel(PubRel::new(d, None)));
        }
        for p in local.queued {
            self.deliver(p, Origin::Local);
        }
    }

    fn drain_queue(&mut self) {
        while self.out.len() < self.window as usize {
            let Some((p, origin)) = self.queue.pop_front() else {
                return;
            };
            self.deliver(p, origin);
        }
    }

    /// Delivers `$SYS` values to the client's `$SYS` subscriptions (or to `only`).
    fn deliver_sys(&mut self, tree: &[(String, String)], only: Option<&str>, retain: bool) {
        let filters: Vec<String> = match only {
            Some(f) => vec![f.to_string()],
            None => self
                .subs
                .iter()
                .filter(|(_, s)| s.sys)
                .map(|(k, _)| k.clone())
                .collect(),
        };
        for (t, v) in tree {
            if filters.iter().any(|f| topic::matches(f, t)) {
                let p = Publish::new(t.as_str(), QoS::AtMostOnce, Bytes::from(v.clone()), None);
                let mut p = p;
                p.retain = retain;
                self.deliver(p, Origin::Local);
            }
        }
    }

    // ---- the end ----

    /// Tells the client why (MQTT 5), closes the core link, and forgets the core session if it
    /// must not outlive the connection.
    async fn finish(&mut self, end: End, io: &mut Box<dyn Io>) {
        let reason = match &end {
            End::Violation(code, why) => Some((*code, Some(why.clone()))),
            End::KeepAlive => Some((DisconnectReasonCode::KeepAliveTimeout, None)),
            End::Kicked(code) => Some((disconnect_code(*code), None)),
            End::CoreLost => Some((
                DisconnectReasonCode::ServerBusy,
                Some("the broker core closed this session".to_string()),
            )),
            End::Client { .. } | End::Gone => None,
        };
        if let (Some((code, why)), Version::V5) = (reason, self.version) {
            let d = Disconnect {
                reason_code: code,
                properties: why.map(|w| DisconnectProperties {
                    session_expiry_interval: None,
                    reason_string: Some(w),
                    user_properties: Vec::new(),
                    server_reference: None,
                }),
            };
            self.send_client(Packet::Disconnect(d));
        }
        if !self.client_out.is_empty() && !matches!(end, End::Gone) {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), io.write_all(&self.client_out)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), io.flush()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
        if let End::Client { will, expiry } = end {
            if !will {
                self.will = None;
            }
            if let Some(e) = expiry {
                // MQTT 5 §3.14.2.2.2: 0 → non-zero is a protocol error; ignore it then.
                if self.expiry != 0 || e == 0 {
                    self.expiry = e.min(self.edge.config.limits.max_session_expiry_secs);
                }
            }
        }
        if !self.upstream_clean && self.expiry != 0 {
            let subs = self
                .subs
                .iter()
                .map(|(path, s)| {
                    let mut f = Filter::new(path.clone(), s.qos);
                    f.nolocal = s.nolocal;
                    f.preserve_retain = s.rap;
                    (f, s.id)
                })
                .collect();
            // As `timers` below: a 3.1.1 session (and MQTT 5's 0xFFFFFFFF) never expires.
            let secs = if self.version == Version::V5 {
                self.expiry
            } else {
                u32::MAX
            };
            let expires_at =
                (secs != u32::MAX).then(|| SystemTime::now() + Duration::from_secs(secs as u64));
            self.edge
                .registry
                .save_subscriptions(&self.client_id, subs, expires_at);
            let mut unacked = std::mem::take(&mut self.redelivered);
            for (origin, _) in self.out.values() {
                if let Origin::Core(u, _) = origin {
                    unacked.extend(self.core_stamps.get(u));
                }
            }
            self.edge.registry.save_unacked(&self.client_id, unacked);
            self.save_local();
            // QoS 2 ids the client may hold: what is still unresolved from before, then every
            // QoS 2 delivery in flight, by the PUBREL the core will send again (the oldest under
            // each core id) and by the message itself (the newest: the core may have reused
            // the id for it), whichever comes first.
            let mut ids = std::mem::take(&mut self.resume);
            let reserved = std::mem::take(&mut self.reserved);
            ids.rel.retain(|_, d| reserved.contains(d));
            ids.stamps.retain(|_, d| reserved.contains(d));
            for (&u, ds) in &self.core_to_client {
                if let Some(&(d, _)) = ds.first() {
                    ids.rel.insert(u, d);
                }
                if let (Some(&(d, false)), Some(st)) = (ds.last(), self.core_stamps.get(&u)) {
                    ids.stamps.insert(*st, d);
                }
            }
            self.edge.registry.save_ids(&self.client_id, ids);
        }
        for (_, sub) in self.subs.drain() {
            if !self.internal && !sub.sys {
                self.edge.interest(&sub.filter, false);
            }
            self.edge
                .stats
                .subscriptions
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Publishes or schedules the will and the session's expiry; returns the timers to keep.
    async fn timers(
        &mut self,
    ) -> (
        Option<tokio::task::JoinHandle<()>>,
        Option<tokio::task::JoinHandle<()>>,
    ) {
        let edge = &self.edge;
        let expiry = if self.version == Version::V5 {
            self.expiry
        } else if self.upstream_clean {
            0
        } else {
            u32::MAX
        };
        if expiry == 0 && !self.upstream_clean {
            edge.purge_session(&self.client_id).await;
        }
        let will_timer = self.will.take().and_then(|w| {
            let delay = w
                .properties
                .as_ref()
                .and_then(|p| p.delay_interval)
                .unwrap_or(0)
                .min(expiry);
            let publish = will_publish(w);
            let src = self.src;
            let edge = edge.clone();
            if delay == 0 {
                tokio::spawn(async move { publish_will(&edge, publish, src).await });
                None
            } else {
                let id = self.client_id.clone();
                Some(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(delay as u64)).await;
                    publish_will(&edge, publish, src).await;
                    edge.registry.timer_fired(&id, Timer::Will);
                }))
            }
        });
        let purge_timer = (expiry != 0 && expiry != u32::MAX && !self.upstream_clean)
            .then(|| edge.purge_timer(&self.client_id, Duration::from_secs(expiry as u64)));
        (will_timer, purge_timer)
    }
}

fn will_publish(w: LastWill) -> Publish {
    let props = w.properties.map(|p| PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: None,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        subscription_identifiers: Vec::new(),
        content_type: p.content_type,
    });
    Publish {
        dup: false,
        qos: w.qos,
        retain: w.retain,
        topic: w.topic,
        pkid: 0,
        payload: w.message,
        properties: props,
    }
}

async fn publish_will(edge: &Arc<Edge>, mut p: Publish, src: u64) {
    if p.retain {
        if let Err(e) = edge.retained.set(&p).await {
            tracing::warn!(error = %e, "retained will not stored");
        }
    }
    let s = Stamp {
        qos: p.qos,
        retain: p.retain,
        src,
        seq: rand::random(),
    };
    stamp(&mut p, s);
    p.qos = QoS::AtMostOnce;
    edge.inject(p);
}

/// Read-buffer sizing: a connection that is idle or slow holds about 1 KiB per direction; one
/// whose reads fill the buffer gets a bigger one (up to `max`), so a busy connection still reads
/// whole batches with one syscall.
struct Grow {
    want: usize,
    max: usize,
    spare: usize,
}

impl Grow {
    const MIN: usize = 1024;

    fn new(max: usize) -> Grow {
        Grow {
            want: Self::MIN,
            max,
            spare: 0,
        }
    }

    /// Makes room before a read; frees a large empty buffer.
    fn prepare(&mut self, buf: &mut BytesMut) {
        if buf.is_empty() && buf.capacity() > self.want * 4 {
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

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips() {
        let s = Stamp {
            qos: QoS::ExactlyOnce,
            retain: true,
            src: 0xdead_beef,
            seq: 42,
        };
        let mut p = Publish::new("a", QoS::AtLeastOnce, Bytes::from_static(b"x"), None);
        stamp(&mut p, s);
        assert!(!p.retain);
        assert_eq!(take_stamp(&mut p), Some(s));
        assert!(p.properties.is_none());
    }

    #[test]
    fn stamp_encoding_matches_hex_formatting() {
        for (src, seq) in [(0, 0), (1, 0xf), (0x10, u64::MAX), (0xdead_beef, 1 << 63)] {
            for (qos, retain) in [(QoS::AtMostOnce, false), (QoS::ExactlyOnce, true)] {
                let s = Stamp {
                    qos,
                    retain,
                    src,
                    seq,
                };
                let want = format!("{}{}{src:x}.{seq:x}", qos as u8, retain as u8);
                assert_eq!(s.encode(), want);
                assert_eq!(Stamp::decode(&want), Some(s));
            }
        }
    }
}
