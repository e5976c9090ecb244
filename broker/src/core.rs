//! The embedded rumqttd: routing, sessions and QoS state. The only module that names rumqttd.
//!
//! rumqttd runs on its own threads with N internal MQTT 5 listeners on loopback (each listener is
//! one single-threaded runtime in rumqttd, so more listeners spread connection work over cores).
//! They require a per-process random password, so no client can reach them: clients only ever
//! talk to the edge, and the edge opens one internal connection per client session
//! ([`Core::connect`]). Swapping the core for another engine means replacing this module.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::BytesMut;
use rand::distr::{Alphanumeric, SampleString};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::codec::{self, ConnAck, Connect, ConnectProperties, Login, Packet};
use crate::config;

/// Username the edge uses on the internal listeners.
const INTERNAL_USER: &str = "rtw-edge";

/// A running rumqttd and how to reach it.
pub struct Core {
    addrs: Vec<SocketAddr>,
    password: String,
    next: AtomicUsize,
    max_packet: u32,
}

/// What a session asks of its internal connection.
pub struct UpstreamConnect {
    pub client_id: String,
    pub clean_start: bool,
    pub receive_maximum: u16,
}

impl Core {
    /// Starts rumqttd and waits until every internal listener accepts connections.
    pub async fn start(cfg: &config::BrokerConfig) -> anyhow::Result<Core> {
        let n = match cfg.core.listeners {
            0 => auto_listeners(),
            n => n,
        };
        let password = Alphanumeric.sample_string(&mut rand::rng(), 32);
        let mut addrs = Vec::with_capacity(n);
        let mut servers = HashMap::new();
        for i in 0..n {
            let addr = internal_addr()?;
            addrs.push(addr);
            let mut auth = HashMap::new();
            auth.insert(INTERNAL_USER.to_string(), password.clone());
            servers.insert(
                format!("internal-{i}"),
                rumqttd::ServerSettings {
                    name: format!("core-{i}"),
                    listen: addr,
                    tls: None,
                    // rumqttd sleeps this long after every accept; the edge has its own limits.
                    next_connection_delay_ms: 0,
                    connections: rumqttd::ConnectionSettings {
                        connection_timeout_ms: 10_000,
                        max_payload_size: cfg.limits.max_packet_size as usize + 1024,
                        max_inflight_count: cfg.limits.max_inflight.max(1) as usize,
                        auth: Some(auth),
                        external_auth: None,
                        dynamic_filters: true,
                    },
                },
            );
        }
        let config = rumqttd::Config {
            id: 0,
            router: rumqttd::RouterConfig {
                max_connections: cfg.limits.max_connections + 1024,
                max_outgoing_packet_count: cfg.limits.max_inflight.max(1) as u64 * 2,
                max_segment_size: cfg.core.segment_size,
                max_segment_count: cfg.core.segment_count,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v5: Some(servers),
            ..Default::default()
        };
        std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "rumqttd stopped");
                }
            })?;
        for addr in &addrs {
            let mut ok = false;
            for _ in 0..200 {
                if TcpStream::connect(addr).await.is_ok() {
                    ok = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if !ok {
                bail!("the embedded rumqttd did not start listening on {addr}");
            }
        }
        let core = Core {
            addrs,
            password,
            next: AtomicUsize::new(0),
            max_packet: cfg.limits.max_packet_size.saturating_add(1024),
        };
        core.probe().await?;
        tracing::debug!(listeners = n, "rumqttd core ready");
        Ok(core)
    }

    /// Logs in to every internal listener once with the process's password. A port that accepts
    /// connections is not proof enough: another process may have taken it between our choice and
    /// rumqttd's bind (rumqttd then logs an error on its own thread and serves nothing there).
    async fn probe(&self) -> anyhow::Result<()> {
        for i in 0..self.addrs.len() {
            let req = UpstreamConnect {
                client_id: format!("rtw-probe-{i}"),
                clean_start: true,
                receive_maximum: 1,
            };
            let addr = self.addrs[i];
            let (mut link, ack) = self
                .connect_to(addr, &req)
                .await
                .map(|(link, ack, _)| (link, ack))
                .with_context(|| format!("the embedded rumqttd is not serving {addr}"))?;
            if ack.code != codec::ConnectReturnCode::Success {
                bail!(
                    "the embedded rumqttd refused the edge on {addr}: {:?}",
                    ack.code
                );
            }
            close_link(&mut link).await;
        }
        Ok(())
    }

    /// Opens an internal MQTT 5 connection for one client session and returns it with the CONNACK.
    /// Bytes the core sent right after CONNACK (a resumed session's queue) come back too.
    pub async fn connect(
        &self,
        req: &UpstreamConnect,
    ) -> anyhow::Result<(TcpStream, ConnAck, BytesMut)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len();
        self.connect_to(self.addrs[i], req).await
    }

    async fn connect_to(
        &self,
        addr: SocketAddr,
        req: &UpstreamConnect,
    ) -> anyhow::Result<(TcpStream, ConnAck, BytesMut)> {
        let mut stream = TcpStream::connect(addr).await.context("internal link")?;
        stream.set_nodelay(true)?;
        let connect = Packet::Connect(
            Connect {
                // rumqttd refuses keep-alive 0; the edge pings it (see session.rs).
                keep_alive: 60,
                client_id: req.client_id.clone(),
                clean_start: req.clean_start,
                properties: Some(ConnectProperties {
                    receive_maximum: Some(req.receive_maximum.max(1)),
                    // No broker→edge topic aliases: rumqttd's are keyed by filter, not topic.
                    topic_alias_max: None,
                    max_packet_size: Some(self.max_packet),
                    ..ConnectProperties::new()
                }),
            },
            None,
            Some(Login::new(INTERNAL_USER, self.password.clone())),
        );
        let mut out = BytesMut::new();
        connect.write(&mut out, None)?;
        stream.write_all(&out).await?;
        let mut buf = BytesMut::with_capacity(256);
        let connack = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if stream.read_buf(&mut buf).await? == 0 {
                    bail!("core closed the internal link during CONNECT");
                }
                match codec::read_v5(&mut buf, self.max_packet) {
                    Ok(Some(Packet::ConnAck(c))) => return Ok(c),
                    Ok(Some(other)) => bail!("core answered CONNECT with {other:?}"),
                    Ok(None) => {}
                    Err(e) => bail!("core sent a bad CONNACK: {e}"),
                }
            }
        })
        .await
        .context("core CONNACK timed out")??;
        Ok((stream, connack, buf))
    }

    /// Largest packet the core sends.
    pub fn max_packet(&self) -> u32 {
        self.max_packet
    }
}

/// Internal listeners when the config says 0: four per core, at least 8, at most 64.
///
/// rumqttd registers a new connection with a blocking round trip to its router thread from the
/// listener's single-threaded runtime, so one listener takes one connection at a time, and a
/// connection storm queues behind it. Measured on 2 cores (5,000 clients at once): 2 listeners
/// took ~600 connections/s with p99 8 s and refused some under load; 8 took ~4,000/s with p99
/// 0.7 s and refused none; 16 and 32 were no better; message throughput was the same.
fn auto_listeners() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores * 4).clamp(8, 64)
}

/// Closes an internal link and waits (bounded) until rumqttd has closed its end too.
///
/// No DISCONNECT, just the close: rumqttd handles a DISCONNECT and then the close as two
/// disconnections of the same connection id. And the close must be seen through: rumqttd queues
/// a link's disconnection for its router before it drops the socket, so once our read sees the
/// end, a new link under the same client id is queued after it. Without the wait, a client that
/// reconnects at once could have its new link registered first, the old one dropped as a
/// duplicate, and the old one's late disconnection end the new session (its id reused).
pub async fn close_link(link: &mut TcpStream) {
    let _ = link.shutdown().await;
    let mut scratch = [0u8; 4096];
    let drained = async {
        loop {
            match link.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drained).await;
}

/// Chooses a free loopback port for an internal listener, below the OS's ephemeral port range.
///
/// rumqttd binds the address itself and cannot report the port it got, so the edge has to
/// choose one. A port from `bind(0)` would come from the ephemeral range, where any outgoing
/// connection on the host (or another server choosing the same way) can take it before rumqttd
/// binds; ports below that range are only ever taken by an explicit bind. Linux publishes the
/// range in /proc (no crate reads it); elsewhere the IANA default start, 49152, is assumed.
fn internal_addr() -> anyhow::Result<SocketAddr> {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(49_152);
    const LOWEST: u16 = 10_000;
    if ephemeral_start > LOWEST + 1_000 {
        for _ in 0..64 {
            let port = rand::rng().random_range(LOWEST..ephemeral_start);
            if let Ok(l) = StdListener::bind(("127.0.0.1", port)) {
                return Ok(l.local_addr()?);
            }
        }
    }
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Acknowledges what was just read from an internal link at once (Linux `TCP_QUICKACK`).
///
/// rumqttd leaves Nagle's algorithm on for the sockets it accepts. When it writes two small
/// packets to one link in a row (a PUBACK, then a PUBLISH) and the edge has nothing to send
/// back in between, the second waits for the edge's delayed ACK: about 40 ms on Linux, which
/// every HTTP request/response round trip used to pay. Called after every read from the core.
pub(crate) fn ack_now(link: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(link).set_tcp_quickack(true);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = link;
}
