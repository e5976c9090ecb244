//! The cluster as operators see it: this node, its NATS link and the other nodes, in
//! `/api/stats` (`cluster`, shown by the dashboard) and `/metrics` (`rtw_cluster_*`). Empty
//! when the node runs alone.

use broker::cluster::ClusterStats;
use prometheus::{IntCounter, IntGauge, Registry};
use serde_json::{json, Value};

use crate::state::AppState;

/// `cluster` in `/api/stats`: `null` for a lone node.
pub fn json(st: &AppState) -> Value {
    let Some(c) = &st.edge.cluster else {
        return Value::Null;
    };
    let peers: Vec<Value> = c
        .peers()
        .into_iter()
        .map(|n| json!({ "node": n.node, "clients": n.clients, "subscriptions": n.subscriptions }))
        .collect();
    let mut v = json!({
        "node": c.node,
        "nats_up": c.is_up(),
        "nats_filters": c.filters(),
        "nodes": peers.len() + 1,
        "peers": peers,
    });
    // Then every counter, under its field name.
    if let (Value::Object(m), Ok(Value::Object(counters))) =
        (&mut v, serde_json::to_value(&*c.stats))
    {
        m.extend(counters);
    }
    v
}

/// Adds the `rtw_cluster_*` series to `r` (none for a lone node).
pub fn metrics(r: &Registry, st: &AppState) -> prometheus::Result<()> {
    let Some(c) = &st.edge.cluster else {
        return Ok(());
    };
    let s = &c.stats;
    let gauges = [
        (
            "rtw_cluster_nats_up",
            "1 while the link to NATS is up",
            c.is_up() as i64,
        ),
        (
            "rtw_cluster_nodes",
            "Nodes of the cluster seen in the last 30 s, this one included",
            c.peers().len() as i64 + 1,
        ),
        (
            "rtw_cluster_nats_filters",
            "Filters (with share group) this node subscribes to on NATS",
            c.filters() as i64,
        ),
    ];
    for (name, help, v) in gauges {
        let g = IntGauge::new(name, help)?;
        g.set(v);
        r.register(Box::new(g))?;
    }
    let counters = [
        (
            "rtw_cluster_published_total",
            "Messages handed to NATS",
            &s.published,
        ),
        (
            "rtw_cluster_received_total",
            "Messages from other nodes routed here",
            &s.received,
        ),
        (
            "rtw_cluster_not_sent_total",
            "Messages kept on this node only (NATS down, or subject too long)",
            &s.not_sent,
        ),
        (
            "rtw_cluster_duplicates_total",
            "Second copies through overlapping filters, dropped",
            &s.duplicates,
        ),
        (
            "rtw_cluster_disconnects_total",
            "Times the link to NATS was lost",
            &s.disconnects,
        ),
        (
            "rtw_cluster_connects_total",
            "Times the link to NATS was made",
            &s.connects,
        ),
        (
            "rtw_cluster_slow_consumer_total",
            "Times NATS's client dropped messages this node read too slowly",
            &s.slow_consumer,
        ),
        (
            "rtw_cluster_pressure_total",
            "Times this node's NATS link fell behind and asked the other nodes to slow down",
            &s.pressure,
        ),
        (
            "rtw_cluster_throttled_total",
            "Messages accepted here that waited for another node to catch up",
            &s.throttled,
        ),
        (
            "rtw_cluster_throttle_timeouts_total",
            "Messages that went to NATS after 2 s with another node still behind",
            &s.throttle_timeouts,
        ),
        (
            "rtw_cluster_retained_errors_total",
            "Retained changes not stored in the cluster bucket",
            &s.retained_errors,
        ),
        (
            "rtw_cluster_takeovers_total",
            "Sessions handed between this node and another",
            &s.takeovers,
        ),
    ];
    for (name, help, v) in counters {
        let c = IntCounter::new(name, help)?;
        c.inc_by(ClusterStats::get(v));
        r.register(Box::new(c))?;
    }
    Ok(())
}
