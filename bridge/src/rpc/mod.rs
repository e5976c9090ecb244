//! Request/response: an HTTP request becomes an MQTT request, the MQTT reply becomes the HTTP
//! response, matched by a 128-bit random correlation id and bounded by a timeout.
//!
//! Data flow: a route ([`route`]: the default `/rpc/{path…}` → `rpc/{path…}`, or one from
//! `[[rpc.routes]]`) names a request topic template. The handler ([`call`]) checks the caller may
//! publish there and that some client is subscribed — else it waits for one ([`waiting`], when
//! the route or `RTW-Wait` allows) or answers 503 — takes an in-flight slot (else 429), registers
//! the correlation id here, publishes the request through the bridge's own broker session
//! (one message, or a window of chunks for a large body: [`streaming`]) and waits for the reply
//! (else 504). Replies arrive on that session and [`Rpc::receive`] hands them to the waiting call
//! through a small bounded channel, never blocking the shared session; a late or duplicate reply
//! finds nobody waiting, is dropped and counted. Chunk acknowledgements from responders
//! (`rtw-ack`) update the call's window instead.
//!
//! Two conventions, per route:
//! * `v5` (default): the request carries Response Topic `rtw/replies/{node}` and Correlation Data;
//!   user properties `method`, `path`, `query` and `header:{name}` carry the HTTP request; the
//!   reply may set user property `status` and `header:{name}` properties, and its content type.
//! * `topic`, for MQTT 3.1.1 responders: the request goes to `{topic}/{correlation id}` and the
//!   reply is expected on the route's reply topic template (`reply_topic`, or the request topic
//!   with its first level replaced by `reply_level`) plus `/{correlation id}`. With
//!   `envelope = true` the payloads are JSON envelopes carrying method, path, headers and status.

pub mod call;
mod reply;
pub mod route;
mod streaming;
mod waiting;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use broker::client::{LocalClient, Received};
use broker::codec::{PublishProperties, QoS};
use serde::Deserialize;
use tokio::sync::{mpsc, watch, Semaphore};

pub use route::{axum_path, Convention, RpcRoute};

/// `[rpc]`; a key left out takes its value from [`RpcSettings::default`].
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpcSettings {
    pub default_timeout_secs: u64,
    pub max_timeout_secs: u64,
    /// Requests waiting for a reply at once (429 past it).
    pub max_inflight: usize,
    /// Longest wait for a responder a request may ask for (`RTW-Wait`, a route's `wait_secs`).
    pub max_wait_secs: u64,
    /// Requests waiting for a responder at once (429 with `Retry-After` past it).
    pub max_waiting: usize,
    /// Bodies larger than this go to MQTT 5 responders as a sequence of chunks of this size.
    pub chunk_size: usize,
    /// Chunks sent ahead of the receiver's acknowledgement (`rtw-ack`), each way.
    pub stream_window: usize,
    /// Largest streamed body, each way (413 for a request; a reply is cut).
    pub max_stream_bytes: u64,
    pub routes: Vec<RpcRoute>,
}

impl Default for RpcSettings {
    fn default() -> Self {
        RpcSettings {
            default_timeout_secs: 10,
            max_timeout_secs: 60,
            max_inflight: 1000,
            max_wait_secs: 60,
            max_waiting: 1000,
            chunk_size: 256 * 1024,
            stream_window: 4,
            max_stream_bytes: 4 << 30,
            routes: Vec::new(),
        }
    }
}

/// What a responder sent back (one message of a reply).
pub(crate) struct Reply {
    pub payload: bytes::Bytes,
    pub props: PublishProperties,
    pub envelope: bool,
}

/// Counters shown by the metrics endpoint and the dashboard.
#[derive(Default)]
pub struct RpcStats {
    pub requests: AtomicU64,
    pub replies: AtomicU64,
    pub timeouts: AtomicU64,
    pub no_responder: AtomicU64,
    pub rejected_busy: AtomicU64,
    pub late_replies: AtomicU64,
    /// Sum of round-trip milliseconds of answered requests.
    pub latency_ms_total: AtomicU64,
    /// Round trips of answered requests (the dashboard's p50/p99).
    pub latency: crate::latency::Histogram,
    /// Requests that waited for a responder and were then sent.
    pub waited: AtomicU64,
    /// Requests refused because `max_waiting` were already waiting.
    pub rejected_waiting: AtomicU64,
    /// Streamed bodies (either way) and those that ended in an error.
    pub streams: AtomicU64,
    pub stream_errors: AtomicU64,
}

/// A call waiting for its reply.
struct Pending {
    /// Reply messages (one, or a reply's chunks), never blocking [`Rpc::receive`]. Boxed: the
    /// channel's first block of slots is then small (it is made with every call).
    replies: mpsc::Sender<Box<Reply>>,
    /// Highest request chunk the responder acknowledged, plus one.
    acked: watch::Sender<u64>,
    envelope: bool,
    /// `topic` convention: the exact topic the reply must come on.
    expect: Option<String>,
}

/// Shared RPC state.
pub struct Rpc {
    client: LocalClient,
    edge: Arc<broker::Edge>,
    reply_topic: String,
    /// Calls waiting for replies, by correlation id (see [`corr_id`]).
    pending: Mutex<HashMap<u128, Pending>>,
    slots: Arc<Semaphore>,
    waiting: Arc<waiting::WaitQueue>,
    pub settings: RpcSettings,
    pub stats: RpcStats,
}

impl Rpc {
    pub async fn start(
        edge: &Arc<broker::Edge>,
        mut settings: RpcSettings,
        node: &str,
    ) -> anyhow::Result<Arc<Rpc>> {
        for r in &settings.routes {
            route::validate(r)?;
        }
        let max_packet = edge.config.limits.max_packet_size as usize;
        anyhow::ensure!(
            settings.chunk_size >= 1024,
            "rpc.chunk_size ({}) must be at least 1024",
            settings.chunk_size
        );
        // A chunk and its properties fit one packet: a small limits.max_packet_size makes
        // chunks smaller (a body is then refused as too large past what one packet holds).
        let fits = max_packet.saturating_sub(16 * 1024).max(1024);
        if settings.chunk_size > fits {
            tracing::warn!(
                chunk_size = settings.chunk_size,
                fits,
                "rpc.chunk_size is over limits.max_packet_size - 16 KiB: using {fits}"
            );
            settings.chunk_size = fits;
        }
        anyhow::ensure!(
            settings.stream_window >= 1,
            "rpc.stream_window must be at least 1"
        );
        // Replies are matched on the session's own task, as they come: they wait for nobody
        // (see [`Rpc::complete`]), so no channel and no task of their own.
        let me: Arc<OnceLock<Weak<Rpc>>> = Arc::default();
        let sink = {
            let me = me.clone();
            move |r: Received| {
                if let Some(rpc) = me.get().and_then(Weak::upgrade) {
                    rpc.receive(r);
                }
            }
        };
        let client = LocalClient::connect_sink(edge, &format!("rtw-rpc-{node}"), sink)
            .await
            .map_err(|e| anyhow::anyhow!("RPC session: {e}"))?;
        let reply_topic = format!("{}{node}", broker::REPLY_PREFIX);
        client
            .subscribe(&reply_topic, QoS::AtLeastOnce)
            .await
            .map_err(|e| anyhow::anyhow!("RPC reply subscription: {e}"))?;
        for r in settings
            .routes
            .iter()
            .filter(|r| r.convention == Convention::Topic)
        {
            let f = r.reply_filter();
            client
                .subscribe(&f, QoS::AtLeastOnce)
                .await
                .map_err(|e| anyhow::anyhow!("RPC reply subscription {f}: {e}"))?;
        }
        let waiting = Arc::new(waiting::WaitQueue::new(settings.max_waiting));
        tokio::spawn(waiting::dispatch(waiting.clone(), edge.clone()));
        let rpc = Arc::new(Rpc {
            client,
            edge: edge.clone(),
            reply_topic,
            pending: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(settings.max_inflight.max(1))),
            waiting,
            settings,
            stats: RpcStats::default(),
        });
        let _ = me.set(Arc::downgrade(&rpc));
        Ok(rpc)
    }

    /// Is the RPC session up?
    pub fn ready(&self) -> bool {
        !self.client.is_closed()
    }

    /// Requests waiting for a reply now.
    pub fn in_flight(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Requests waiting for a responder now.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Registers a call; its replies come on the returned channel, acknowledgements of its
    /// request chunks on the watch.
    fn register(
        &self,
        corr: u128,
        envelope: bool,
        expect: Option<String>,
    ) -> (mpsc::Receiver<Box<Reply>>, watch::Receiver<u64>) {
        let (tx, rx) = mpsc::channel(2 * self.settings.stream_window + 2);
        let (acked, acks) = watch::channel(0);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                corr,
                Pending {
                    replies: tx,
                    acked,
                    envelope,
                    expect,
                },
            );
        (rx, acks)
    }

    fn forget(&self, corr: u128) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&corr);
    }

    /// Matches one message arriving on the RPC session to the call waiting for it.
    fn receive(&self, r: Received) {
        let p = r.publish;
        let props = p.properties.unwrap_or_default();
        let topic: &[u8] = &p.topic;
        let corr: Option<&[u8]> = if topic == self.reply_topic.as_bytes() {
            props.correlation_data.as_deref()
        } else {
            topic.rsplit(|b| *b == b'/').next()
        };
        match corr.map(|c| (corr_id(c), c)) {
            Some((Some(c), _)) => self.complete(c, topic, p.payload, props),
            Some((None, c)) => self.stray(&String::from_utf8_lossy(c), "matches no call"),
            None => {
                self.stats.late_replies.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn stray(&self, corr: &str, why: &str) {
        self.stats.late_replies.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(corr, why, "RPC reply dropped");
    }

    /// Hands one message to the call `corr` waits with.
    fn complete(&self, corr: u128, topic: &[u8], payload: bytes::Bytes, props: PublishProperties) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = pending.get(&corr) else {
            drop(pending);
            return self.stray(&corr_text(corr), "late or duplicate");
        };
        if p.expect.as_deref().is_some_and(|e| e.as_bytes() != topic) {
            drop(pending);
            return self.stray(&corr_text(corr), "on another route's reply topic");
        }
        if let Some(n) = streaming::ack_of(&props) {
            p.acked.send_modify(|a| *a = (*a).max(n.saturating_add(1)));
            return;
        }
        let more = streaming::chunk_of(&props).is_some_and(|(_, last)| !last);
        let reply = Box::new(Reply {
            payload,
            props,
            envelope: p.envelope,
        });
        let sent = p.replies.try_send(reply);
        // The whole reply is here: later messages for this id are late or duplicates.
        if !more || sent.is_err() {
            pending.remove(&corr);
        }
        if sent.is_err() {
            drop(pending);
            self.stats.stream_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                corr = corr_text(corr),
                "RPC reply stream overran its window: the call ends with an error"
            );
        }
    }
}

/// A call's correlation id as it travels (Correlation Data, the last topic level): 32 lowercase
/// hex digits.
pub(crate) fn corr_text(id: u128) -> String {
    format!("{id:032x}")
}

/// The call id of correlation data or a topic's last level: `None` unless it is exactly what
/// [`corr_text`] makes (so no other spelling of the number matches a call).
fn corr_id(text: &[u8]) -> Option<u128> {
    if text.len() != 32 || !text.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(std::str::from_utf8(text).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids_round_trip_and_other_spellings_match_nothing() {
        for id in [0, 1, 0xdead_beef, u128::MAX, rand::random()] {
            let t = corr_text(id);
            assert_eq!(t.len(), 32);
            assert_eq!(corr_id(t.as_bytes()), Some(id));
        }
        let t = corr_text(0xabc);
        assert_eq!(corr_id(t.to_uppercase().as_bytes()), None);
        assert_eq!(corr_id(b"abc"), None);
        assert_eq!(corr_id(format!("+{}", &t[1..]).as_bytes()), None);
        assert_eq!(corr_id(format!("{t}0").as_bytes()), None);
        assert_eq!(corr_id(b""), None);
    }
}
