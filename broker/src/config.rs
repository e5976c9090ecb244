//! Broker configuration: listeners, storage and limits.
//!
//! These types are deserialized by the binary (the `config` crate: embedded defaults, then an
//! optional TOML file, then `RTW_<SECTION>__<KEY>` environment overrides) and handed to
//! [`crate::Broker::start`]. Every field has a default that works, so an empty config runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A plain TCP listener (`[mqtt]`, `[http]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Address to bind; an empty string disables the listener.
    pub listen: String,
}

/// A TLS listener (`[mqtts]`, `[https]`): enabled only when `cert` and `key` are both set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListener {
    pub listen: String,
    /// PEM file with the server certificate chain (leaf first).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl TlsListener {
    /// The bind address and key material, when this listener is configured.
    pub fn enabled(&self) -> Option<(&str, &PathBuf, &PathBuf)> {
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) if !self.listen.is_empty() => Some((&self.listen, c, k)),
            _ => None,
        }
    }
}

/// `[storage]`: where retained messages are persisted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    pub dir: PathBuf,
}

/// `[limits]`: sizes, counts and times that bound what one client can make the broker do; a key
/// left out takes its value from [`Limits::default`].
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most client connections at once, all transports together (MQTT 5 CONNACK 0x97 past it).
    pub max_connections: usize,
    /// Most client connections from one IP address (CONNACK 0x97 past it).
    pub max_connections_per_ip: usize,
    /// PUBLISH packets per second one client may send (0: no limit). Past it, QoS 1/2 messages
    /// get PUBACK/PUBREC 0x97 (quota exceeded) and QoS 0 messages are dropped.
    pub max_publish_rate: u32,
    /// Largest MQTT packet accepted from a client, in bytes (DISCONNECT 0x95 past it).
    pub max_packet_size: u32,
    /// Seconds a new socket has to finish its TLS/WebSocket handshake and send CONNECT.
    pub connect_timeout_secs: u64,
    /// Receive Maximum: QoS 1/2 messages in flight per direction per client.
    pub max_inflight: u16,
    /// QoS 1/2 messages queued for one session beyond those in flight (the newest is dropped
    /// past it, counted).
    pub max_queued: usize,
    /// Bytes of messages (any QoS) queued for one session (the newest is dropped past it).
    pub max_queued_bytes: usize,
    /// Largest keep-alive a client may use, in seconds (0: no cap; default 65535, as Mosquitto).
    /// An MQTT 5 client asking for more, or for 0, is told the cap through Server Keep Alive; a
    /// 3.1.1 client cannot be told and keeps what it asked (see `conformance::keep_alive`).
    pub max_keepalive: u16,
    /// Topic aliases a client may use towards the broker (0: none), and the most the broker
    /// uses towards a client that allows them (MQTT 5 Topic Alias Maximum).
    pub topic_alias_max: u16,
    /// Subscriptions one client may hold (SUBACK 0x97 past it).
    pub max_subscriptions: usize,
    /// Seconds a write to a client may block before the client is dropped as not reading.
    pub write_timeout_secs: u64,
    /// Largest session expiry interval granted, in seconds.
    pub max_session_expiry_secs: u32,
    /// User properties one PUBLISH or will may carry (PUBACK/PUBREC or CONNACK 0x97 past it).
    pub max_user_properties: usize,
    /// Bytes of MQTT 5 properties one PUBLISH or will may carry, as encoded (0x97 past it).
    pub max_property_bytes: usize,
}

impl Limits {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.max(1))
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs.max(1))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100_000,
            max_connections_per_ip: 10_000,
            max_publish_rate: 0,
            max_packet_size: 1024 * 1024,
            connect_timeout_secs: 10,
            max_inflight: 100,
            max_queued: 100_000,
            max_queued_bytes: 16 * 1024 * 1024,
            max_keepalive: 65535,
            topic_alias_max: 32,
            max_subscriptions: 1000,
            write_timeout_secs: 30,
            max_session_expiry_secs: u32::MAX,
            max_user_properties: 64,
            max_property_bytes: 64 * 1024,
        }
    }
}

/// `[core]`: the embedded rumqttd's message log. Internal; the defaults suit most machines.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Core {
    /// Bytes per segment of the core's log (raised to twice the largest packet if smaller).
    pub segment_size: usize,
    /// Segments kept (at least 2). Publishers wait while the fan-out is more than about half
    /// the log behind, so nothing accepted is lost in the core.
    pub segment_count: usize,
}

impl Default for Core {
    fn default() -> Self {
        Core {
            segment_size: 2 * 1024 * 1024 + 4096,
            segment_count: 3,
        }
    }
}

/// `[sys]`: the `$SYS/#` tree the edge serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sys {
    /// Seconds between `$SYS` updates.
    pub interval_secs: u64,
}

impl Default for Sys {
    fn default() -> Self {
        Sys { interval_secs: 10 }
    }
}

/// Everything the broker half needs.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub mqtt: Listener,
    pub mqtts: TlsListener,
    pub storage: Storage,
    pub limits: Limits,
    pub core: Core,
    pub sys: Sys,
    /// Anonymous clients may connect (always true for loopback-only mode).
    pub allow_anonymous: bool,
    /// What a 3.1.1 client gets for a refused PUBLISH.
    pub deny_action: crate::security::DenyAction,
    /// `[cluster]`: the NATS link to other nodes (`None`: a node on its own).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl BrokerConfig {
    /// A config for tests and embedding: loopback listener on `mqtt`, storage in `dir`.
    pub fn local(mqtt: SocketAddr, dir: PathBuf) -> Self {
        BrokerConfig {
            mqtt: Listener {
                listen: mqtt.to_string(),
            },
            mqtts: TlsListener::default(),
            storage: Storage { dir },
            limits: Limits::default(),
            core: Core::default(),
            sys: Sys::default(),
            allow_anonymous: true,
            deny_action: Default::default(),
            cluster: None,
        }
    }
}
