//! Broker-wide counters, and the `$SYS/#` tree built from them.
//!
//! Sessions add to the counters once per batch of packets (not per packet) to keep shared cache
//! lines quiet. A task snapshots them every `[sys] interval_secs` into a `watch` channel;
//! sessions holding a `$SYS` subscription deliver each snapshot, and the metrics endpoint reads
//! the same counters, so `$SYS` and `/metrics` always agree.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crate::transport::Transport;

/// Shared counters.
pub struct Stats {
    started: Instant,
    /// Connected clients by transport: tcp, tls, ws, wss, internal.
    connected: [AtomicI64; 5],
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub messages_dropped: AtomicU64,
    /// Of the drops, by cause: QoS 1/2 messages past `limits.max_queued` for a slow client.
    pub dropped_queue_full: AtomicU64,
    /// Messages over a client's Maximum Packet Size (discarded), and packets over
    /// `limits.max_packet_size` from a client (its connection is closed). Each of these three is
    /// also counted in `messages_dropped`.
    pub dropped_too_large: AtomicU64,
    /// PUBLISH refused by `limits.max_publish_rate`.
    pub dropped_rate_limit: AtomicU64,
    pub subscriptions: AtomicI64,
}

fn slot(t: Transport) -> usize {
    match t {
        Transport::Tcp => 0,
        Transport::Tls => 1,
        Transport::Ws => 2,
        Transport::Wss => 3,
        Transport::Internal | Transport::Http => 4,
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            connected: Default::default(),
            connections_total: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            messages_dropped: AtomicU64::new(0),
            dropped_queue_full: AtomicU64::new(0),
            dropped_too_large: AtomicU64::new(0),
            dropped_rate_limit: AtomicU64::new(0),
            subscriptions: AtomicI64::new(0),
        }
    }
}

/// Per-session tallies, added to [`Stats`] in one go.
#[derive(Default)]
pub struct Tally {
    pub messages_received: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub dropped: u64,
    pub dropped_queue_full: u64,
    pub dropped_too_large: u64,
    pub dropped_rate_limit: u64,
}

impl Stats {
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub fn connected(&self, t: Transport) -> i64 {
        self.connected[slot(t)].load(Relaxed)
    }

    /// Clients connected over every external transport.
    pub fn clients_connected(&self) -> i64 {
        self.connected[..4].iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn connect(&self, t: Transport) {
        self.connected[slot(t)].fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
    }

    pub fn disconnect(&self, t: Transport) {
        self.connected[slot(t)].fetch_sub(1, Relaxed);
    }

    pub fn add(&self, t: &mut Tally) {
        if t.messages_received > 0 {
            self.messages_received
                .fetch_add(t.messages_received, Relaxed);
        }
        if t.messages_sent > 0 {
            self.messages_sent.fetch_add(t.messages_sent, Relaxed);
        }
        if t.bytes_received > 0 {
            self.bytes_received.fetch_add(t.bytes_received, Relaxed);
        }
        if t.bytes_sent > 0 {
            self.bytes_sent.fetch_add(t.bytes_sent, Relaxed);
        }
        if t.dropped > 0 {
            self.messages_dropped.fetch_add(t.dropped, Relaxed);
        }
        for (n, c) in [
            (t.dropped_queue_full, &self.dropped_queue_full),
            (t.dropped_too_large, &self.dropped_too_large),
            (t.dropped_rate_limit, &self.dropped_rate_limit),
        ] {
            if n > 0 {
                c.fetch_add(n, Relaxed);
            }
        }
        *t = Tally::default();
    }

    /// The `$SYS` topics and their values now.
    pub fn sys_tree(&self, retained: usize) -> Arc<Vec<(String, String)>> {
        let v = |s: &str, x: String| (format!("$SYS/broker/{s}"), x);
        Arc::new(vec![
            v(
                "version",
                format!("realtime-web {}", env!("CARGO_PKG_VERSION")),
            ),
            v("uptime", format!("{} seconds", self.uptime_secs())),
            v("clients/connected", self.clients_connected().to_string()),
            v(
                "clients/total",
                self.connections_total.load(Relaxed).to_string(),
            ),
            v(
                "messages/received",
                self.messages_received.load(Relaxed).to_string(),
            ),
            v(
                "messages/sent",
                self.messages_sent.load(Relaxed).to_string(),
            ),
            v(
                "messages/dropped",
                self.messages_dropped.load(Relaxed).to_string(),
            ),
            v(
                "bytes/received",
                self.bytes_received.load(Relaxed).to_string(),
            ),
            v("bytes/sent", self.bytes_sent.load(Relaxed).to_string()),
            v(
                "subscriptions/count",
                self.subscriptions.load(Relaxed).to_string(),
            ),
            v("retained messages/count", retained.to_string()),
        ])
    }
}
