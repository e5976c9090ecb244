//! The cluster link's counters (`/metrics`, `/api/stats`, `$SYS`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Serialized, the counters by name (`cluster` in `/api/stats`).
#[derive(Default, Debug, Serialize)]
pub struct ClusterStats {
    /// Signalled each time the link to NATS comes back (watchers start again from where they
    /// were).
    #[serde(skip)]
    pub back: tokio::sync::Notify,
    /// Messages handed to NATS.
    pub published: AtomicU64,
    /// Messages from NATS routed into this node.
    pub received: AtomicU64,
    /// This node's own messages that came back (dropped).
    pub echoes: AtomicU64,
    /// Second copies through overlapping subscriptions (dropped).
    pub duplicates: AtomicU64,
    /// Messages kept on this node only: NATS was down, or the topic's subject is too long.
    pub not_sent: AtomicU64,
    /// QoS 1/2 messages acknowledged although NATS's client had not written them within 2 s
    /// (the link was going down; they are sent if it comes back).
    pub flush_timeouts: AtomicU64,
    /// Payloads from NATS that were not a message frame.
    pub bad: AtomicU64,
    /// Times the NATS connection was lost / made (the first one included).
    pub disconnects: AtomicU64,
    pub connects: AtomicU64,
    /// Messages NATS's client dropped because this node read too slowly.
    pub slow_consumer: AtomicU64,
    /// Times this node's NATS link fell behind and asked the other nodes to slow down.
    pub pressure: AtomicU64,
    /// Messages accepted here that waited for another node to catch up before going to NATS.
    pub throttled: AtomicU64,
    /// ... and went on after the longest wait (2 s) with the other node still behind.
    pub throttle_timeouts: AtomicU64,
    /// Retained changes applied from the cluster's bucket.
    pub retained_applied: AtomicU64,
    /// Retained changes that could not be written to the bucket.
    pub retained_errors: AtomicU64,
    /// Sessions taken over from or by another node.
    pub takeovers: AtomicU64,
}

impl ClusterStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
}
