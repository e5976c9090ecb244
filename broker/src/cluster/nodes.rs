//! Who is in the cluster: each node's name, clients and the filters its clients subscribe to,
//! in a JetStream key-value bucket (`rtw_nodes`, one key per running node, entries older than
//! [`TTL`] dropped by NATS).
//!
//! Data flow: a node writes its own entry when its clients' filters change (at most every
//! [`DEBOUNCE`]) and every [`REFRESH`] (so a node that died without a word disappears within
//! [`TTL`]); it deletes it on shutdown. Every node watches the bucket and keeps the others'
//! entries: the HTTP bridge's RPC asks [`Cluster::remote_subscriber`] whether a responder is
//! subscribed anywhere, and the dashboard and `/api/stats` list the nodes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::Cluster;
use crate::Edge;

const BUCKET: &str = "rtw_nodes";
/// How long an entry lives unless refreshed.
pub const TTL: Duration = Duration::from_secs(30);
const REFRESH: Duration = Duration::from_secs(10);
const DEBOUNCE: Duration = Duration::from_millis(50);

/// One node as the others see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: String,
    pub boot: u64,
    pub clients: i64,
    pub subscriptions: i64,
    /// Filters this node's MQTT clients subscribe to (not the bridge's own).
    pub filters: Vec<String>,
}

/// Opens the bucket, creating it on first use.
pub async fn open(js: &jetstream::Context) -> anyhow::Result<kv::Store> {
    super::open_bucket(js, BUCKET, "realtime-web nodes", "nodes", TTL).await
}

fn key(boot: u64) -> String {
    format!("{boot:016x}")
}

fn me(c: &Cluster, edge: &Edge) -> NodeInfo {
    let filters = edge
        .interest
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect();
    NodeInfo {
        node: c.node.clone(),
        boot: c.boot,
        clients: edge.stats.clients_connected(),
        subscriptions: edge
            .stats
            .subscriptions
            .load(std::sync::atomic::Ordering::Relaxed),
        filters,
    }
}

/// Publishes this node's entry (on change and every [`REFRESH`]).
pub async fn announce(c: Arc<Cluster>, edge: Arc<Edge>, kv: kv::Store) {
    let mut changes = edge.subscriptions_changed();
    let mut tick = tokio::time::interval(REFRESH);
    loop {
        if let Ok(v) = serde_json::to_vec(&me(&c, &edge)) {
            if let Err(e) = kv.put(key(c.boot), v.into()).await {
                tracing::debug!(error = %e, "node entry not written");
            }
        }
        tokio::select! {
            _ = tick.tick() => {}
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                tokio::time::sleep(DEBOUNCE).await;
                changes.borrow_and_update();
            }
            _ = edge.shutdown.cancelled() => {
                let _ = kv.delete(key(c.boot)).await;
                return;
            }
        }
    }
}

/// Follows the other nodes' entries.
pub async fn follow(c: Arc<Cluster>, edge: Arc<Edge>, kv: kv::Store) {
    loop {
        let mut watch = match kv.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the nodes bucket; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if edge.shutdown.is_cancelled() {
            return;
        }
        loop {
            let e = tokio::select! {
                e = watch.next() => e,
                // The server's side of the watch may be gone with the old connection.
                _ = c.stats.back.notified() => break,
            };
            let Some(Ok(e)) = e else { break };
            let mut nodes = c.nodes.write().unwrap_or_else(|e| e.into_inner());
            match e.operation {
                kv::Operation::Put => match serde_json::from_slice::<NodeInfo>(&e.value) {
                    Ok(n) if n.boot != c.boot => {
                        nodes.insert(e.key.clone(), (n, std::time::Instant::now()));
                    }
                    _ => {}
                },
                _ => {
                    nodes.remove(&e.key);
                }
            }
            drop(nodes);
            edge.interest_changed
                .send_modify(|n| *n = n.wrapping_add(1));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Cluster {
    /// Does a client on another node subscribe to a filter matching `topic`?
    pub fn remote_subscriber(&self, topic: &str) -> bool {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes.values().any(|(n, at)| {
            at.elapsed() < TTL && n.filters.iter().any(|f| crate::topic::matches(f, topic))
        })
    }

    /// The other nodes seen in the last [`TTL`].
    pub fn peers(&self) -> Vec<NodeInfo> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<NodeInfo> = nodes
            .values()
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(n, _)| n.clone())
            .collect();
        v.sort_by(|a, b| a.node.cmp(&b.node));
        v
    }
}

/// Type of the nodes map kept by [`Cluster`].
pub type Nodes = std::sync::RwLock<HashMap<String, (NodeInfo, std::time::Instant)>>;

impl Cluster {
    /// `$SYS/broker/cluster/…`: this node, its NATS link and the cluster summary (nodes,
    /// clients and subscriptions over every node seen in the last [`TTL`]).
    pub fn sys_entries(&self, edge: &Edge) -> Vec<(String, String)> {
        let peers = self.peers();
        let clients = edge.stats.clients_connected() + peers.iter().map(|n| n.clients).sum::<i64>();
        let subs = edge
            .stats
            .subscriptions
            .load(std::sync::atomic::Ordering::Relaxed)
            + peers.iter().map(|n| n.subscriptions).sum::<i64>();
        let mut names: Vec<String> = peers.iter().map(|n| n.node.clone()).collect();
        names.push(self.node.clone());
        names.sort();
        let s = &self.stats;
        let g = super::ClusterStats::get;
        let v = |k: &str, x: String| (format!("$SYS/broker/cluster/{k}"), x);
        vec![
            v("node", self.node.clone()),
            v("nats", if self.is_up() { "up" } else { "down" }.into()),
            v("nodes", names.join(",")),
            v("clients/connected", clients.to_string()),
            v("subscriptions", subs.to_string()),
            v("messages/published", g(&s.published).to_string()),
            v("messages/received", g(&s.received).to_string()),
            v("messages/not_sent", g(&s.not_sent).to_string()),
        ]
    }
}
