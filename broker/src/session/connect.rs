//! Connect and admission: from the first bytes to CONNACK.
//!
//! Reads CONNECT (or answers what is not one), checks the will and the client id, takes a
//! connection slot (overall and per address) before any password is hashed, authenticates,
//! settles keep-alive, session expiry and flow control, claims the client id (a live session
//! under it is closed first, MQTT 5 reason 0x8E), and takes over the session the client left, if
//! it may: a persistent session belongs to the identity that created it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use rand::distr::{Alphanumeric, SampleString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::state::SessionState;
use super::{Session, SessionSetup};
use crate::auth::{Credentials, Identity};
use crate::codec::{self, *};
use crate::message::client_hash;
use crate::registry::{Claim, Line};
use crate::topic;
use crate::transport::{Io, Transport};
use crate::Edge;

/// Reads the first packet: CONNECT, or the bytes to answer with before closing.
pub(super) async fn read_connect(
    io: &mut Box<dyn Io>,
    buf: &mut BytesMut,
    max: u32,
) -> Result<(Version, Connect, Option<LastWill>, Option<Login>), Option<BytesMut>> {
    loop {
        match codec::peek_hello(buf, max) {
            Ok(None) => {
                buf.reserve(256);
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

pub(super) fn connack_bytes(
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

pub(super) fn empty_connack_props() -> ConnAckProperties {
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

/// Refuses a connection over a connection limit (counted; CONNACK quota exceeded).
async fn over_quota<T>(edge: &Edge, io: &mut Box<dyn Io>, v: Version, why: &str) -> Result<T, ()> {
    edge.stats
        .connections_refused
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    refuse(io, v, ConnectReturnCode::QuotaExceeded, why).await;
    Err(())
}

pub(super) async fn refuse(io: &mut Box<dyn Io>, v: Version, code: ConnectReturnCode, why: &str) {
    let props = if v == Version::V5 {
        reason_props(why)
    } else {
        None
    };
    let out = connack_bytes(v, code, props);
    let _ = io.write_all(&out).await;
    let _ = io.flush().await;
    let _ = io.shutdown().await;
}

/// Gives back a per-address connection slot.
pub(super) struct IpGuard(Arc<Edge>, std::net::IpAddr);

impl Drop for IpGuard {
    fn drop(&mut self) {
        self.0.ip_leave(self.1);
    }
}

/// What admission hands to the running session besides the session itself.
pub(super) struct Admitted {
    pub session: Box<Session>,
    pub claim: Claim,
    pub line: Arc<Line>,
    pub ip_guard: Option<IpGuard>,
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
    pub conn_id: u64,
}

/// Admits a client whose CONNECT was read: everything up to (not including) CONNACK, which the
/// session sends once it runs. `Err(())`: refused, and already told so.
pub(super) async fn admit(
    edge: &Arc<Edge>,
    io: &mut Box<dyn Io>,
    hello: (Version, Connect, Option<LastWill>, Option<Login>),
    peer: SocketAddr,
    transport: Transport,
) -> Result<Admitted, ()> {
    let (version, connect, will, login) = hello;
    let limits = &edge.config.limits;
    let v5 = version == Version::V5;
    let props = connect.properties.clone();
    let internal = transport == Transport::Internal;

    if props
        .as_ref()
        .is_some_and(|p| p.authentication_method.is_some())
    {
        refuse(
            io,
            version,
            ConnectReturnCode::BadAuthenticationMethod,
            "enhanced authentication is not supported",
        )
        .await;
        return Err(());
    }
    if let Some(why) = crate::conformance::connect_error(props.as_ref(), will.as_ref()) {
        refuse(io, version, ConnectReturnCode::ProtocolError, &why).await;
        return Err(());
    }
    if let Some(w) = &will {
        let ok = std::str::from_utf8(&w.topic)
            .ok()
            .is_some_and(|t| topic::validate_topic(t).is_ok() && !t.starts_with('$'));
        if !ok {
            refuse(
                io,
                version,
                ConnectReturnCode::TopicNameInvalid,
                "invalid will topic",
            )
            .await;
            return Err(());
        }
    }

    if let Some((code, why)) = will
        .as_ref()
        .and_then(|w| crate::limits::will_refusal(w, version, limits))
    {
        refuse(io, version, code, &why).await;
        return Err(());
    }

    // Client identifier (MQTT-3.1.3-6/7/8 and MQTT 5 §3.1.3.1).
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        if !v5 && !connect.clean_start {
            refuse(
                io,
                version,
                ConnectReturnCode::BadClientId,
                "empty client id needs a clean session",
            )
            .await;
            return Err(());
        }
        let id = format!("rtw-{}", Alphanumeric.sample_string(&mut rand::rng(), 16));
        assigned = Some(id.clone());
        id
    } else {
        connect.client_id.clone()
    };
    // Limits before authentication: a flood of bad passwords costs no hashing past them.
    // The node's own sessions do not take client slots.
    let permit = if internal {
        None
    } else {
        match edge.connections.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => return over_quota(edge, io, version, "too many connections").await,
        }
    };
    let ip_guard = if internal {
        None
    } else if edge.ip_enter(peer.ip()) {
        Some(IpGuard(edge.clone(), peer.ip()))
    } else {
        let why = "too many connections from this address";
        return over_quota(edge, io, version, why).await;
    };

    let creds = Credentials {
        client_id: &client_id,
        username: login.as_ref().map(|l| l.username.as_str()),
        password: login.as_ref().map(|l| l.password.as_str()),
        peer,
        transport,
    };
    let authenticated = if internal {
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
            refuse(io, version, code, why).await;
            return Err(());
        }
    };
    if let Some(w) = &will {
        let t = String::from_utf8_lossy(&w.topic);
        if !edge.authorizer.can_publish(&identity, &client_id, &t) {
            refuse(
                io,
                version,
                ConnectReturnCode::NotAuthorized,
                "will topic not allowed",
            )
            .await;
            return Err(());
        }
    }
    // Keep-alive, session expiry, flow control.
    let (keep_alive, server_keep_alive) =
        crate::conformance::keep_alive(connect.keep_alive, limits.max_keepalive, version, internal);
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
    let line = Line::new();
    let claim = edge.registry.claim(&client_id, conn_id, line.clone()).await;

    // In a cluster, the node that held the id (if another) closes it and hands its session over.
    let handover = if internal {
        None
    } else {
        edge.cluster_claim(&client_id).await
    };
    // The session the client left, if it resumes it and may.
    let owner = identity.subject.clone();
    let old = edge.registry.take_offline(&client_id);
    let mut tail = None;
    let (state, session_present) = match old {
        Some(s) if !connect.clean_start && s.owner == owner => (s, true),
        Some(s) => {
            if s.owner != owner {
                tracing::info!(
                    client_id,
                    "session left by another identity: starting a new one"
                );
            }
            s.discard(edge, internal);
            (SessionState::new(edge, client_id.as_str(), owner), false)
        }
        None => match handover {
            Some(h) if !connect.clean_start && h.owner == owner => {
                tail = h.tail_request();
                (h.into_state(edge, &client_id), true)
            }
            _ => (SessionState::new(edge, client_id.as_str(), owner), false),
        },
    };
    if session_present {
        // In a cluster: the session's subscriptions are active everywhere before the CONNACK.
        edge.cluster_sync().await;
    }
    if let Some(ask) = tail {
        // What reached the old node while the session moved (now that NATS sends it here too).
        edge.cluster_tail(&client_id, ask, &state).await;
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
    let persistent = if v5 {
        expiry != 0
    } else {
        !connect.clean_start
    };
    let client = edge.directory.register(crate::directory::ClientInfo::new(
        // The inbox's copy of the id, shared.
        state.inbox.client_id.clone(),
        version.label(),
        transport,
        peer,
        login.map(|l| l.username),
        identity.subject.clone(),
        line.clone(),
    ));
    let out_aliases = crate::alias::OutAliases::for_client(
        version,
        props.as_ref().and_then(|p| p.topic_alias_max),
        limits.topic_alias_max,
    );
    let session = Box::new(Session::new(SessionSetup {
        client,
        edge: edge.clone(),
        internal,
        version,
        src: client_hash(&client_id),
        client_id,
        identity,
        keep_alive,
        client_max_packet,
        window,
        will,
        expiry,
        persistent,
        state,
        session_present,
        ack_props,
        out_aliases,
    }));
    Ok(Admitted {
        session,
        claim,
        line,
        ip_guard,
        permit,
        conn_id,
    })
}
