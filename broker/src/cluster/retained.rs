//! Retained messages as one cluster state: a JetStream key-value bucket (`rtw_retained`, file
//! storage, one value per topic) that every node mirrors into its own retained store.
//!
//! Data flow: a retained publish accepted on a node is stored locally (as on a lone node), then
//! put in the bucket (an empty payload deletes the key) before its publisher is acknowledged.
//! Every node watches the bucket and applies each change to its local store, its own included,
//! so all nodes converge on the bucket's order. At start a node applies the bucket's whole
//! content and drops local retained messages the bucket no longer has (cleared while the node
//! was down), before it accepts a client. Key: [`super::subject::kv_key`]; value: the message's
//! frame ([`crate::message`]), so properties survive.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;

use super::{subject, ClusterStats};
use crate::codec::{Publish, QoS};
use crate::message::Message;
use crate::Edge;

const BUCKET: &str = "rtw_retained";

/// Opens the bucket, creating it on first use (kept for ever: no `max_age`).
pub async fn open(js: &jetstream::Context) -> anyhow::Result<kv::Store> {
    super::open_bucket(
        js,
        BUCKET,
        "realtime-web retained messages",
        "retained-messages",
        Duration::ZERO,
    )
    .await
}

/// Stores (or, with an empty payload, deletes) the retained message of `msg`'s topic.
pub async fn put(kv: &kv::Store, msg: &Message) -> anyhow::Result<()> {
    let key = subject::kv_key(msg.topic());
    if msg.publish.payload.is_empty() {
        kv.delete(key).await?;
    } else {
        let mut m = msg.clone();
        m.scope = Default::default();
        kv.put(key, m.frame(0)?).await?;
    }
    Ok(())
}

/// Applies the bucket's content to the node, then follows its changes (in a task).
pub async fn sync(
    js: &jetstream::Context,
    kv: kv::Store,
    edge: &Arc<Edge>,
    stats: Arc<ClusterStats>,
) -> anyhow::Result<()> {
    let mut stream = js
        .get_stream(format!("KV_{BUCKET}"))
        .await
        .context("retained bucket")?;
    let stored = stream
        .info()
        .await
        .context("retained bucket")?
        .state
        .messages;
    let mut watch = kv
        .watch_with_history(">")
        .await
        .context("cannot watch the retained bucket")?;
    let mut live = HashSet::new();
    let mut last = 0u64;
    if stored > 0 {
        let initial = async {
            while let Some(e) = watch.next().await {
                let e = e.context("retained bucket")?;
                last = last.max(e.revision);
                if let Some(t) = apply(edge, &e).await {
                    live.insert(t);
                }
                if e.delta == 0 {
                    break;
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(60), initial)
            .await
            .context("reading the retained bucket took over 60 s")??;
    }
    let mut cleared = 0;
    for r in edge.retained.matching("#") {
        let topic = String::from_utf8_lossy(&r.publish.topic).into_owned();
        if !live.contains(&topic) {
            clear(edge, &topic).await;
            cleared += 1;
        }
    }
    tracing::info!(
        retained = live.len(),
        cleared,
        "retained messages loaded from the cluster"
    );
    let edge = edge.clone();
    tokio::spawn(async move {
        let mut last = last;
        loop {
            loop {
                let e = tokio::select! {
                    e = watch.next() => e,
                    // The server's side of the watch may be gone with the old connection.
                    _ = stats.back.notified() => break,
                };
                let Some(e) = e else { break };
                match e {
                    Ok(e) => {
                        last = last.max(e.revision);
                        apply(&edge, &e).await;
                        ClusterStats::inc(&stats.retained_applied);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "retained bucket watch");
                        break;
                    }
                }
            }
            // Ended (NATS lost): watch again from the next revision, so nothing is missed.
            loop {
                if edge.shutdown.is_cancelled() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                match kv.watch_all_from_revision(last + 1).await {
                    Ok(w) => {
                        watch = w;
                        break;
                    }
                    Err(err) => tracing::debug!(error = %err, "retained bucket watch again"),
                }
            }
        }
    });
    Ok(())
}

/// Applies one bucket entry to the local store; the topic, if it now has a retained message.
async fn apply(edge: &Edge, e: &kv::Entry) -> Option<String> {
    match e.operation {
        kv::Operation::Put => {
            let m = match Message::from_frame(e.value.clone()) {
                Ok(m) => m,
                Err(err) => {
                    tracing::warn!(key = e.key, error = %err, "bad retained entry");
                    return None;
                }
            };
            let topic = m.topic().to_string();
            let mut p = m.publish;
            p.retain = true;
            let same = edge.retained.get(&topic).is_some_and(|r| {
                r.publish.payload == p.payload
                    && r.publish.properties == p.properties
                    && r.publish.qos == p.qos
            });
            if !same {
                if let Err(err) = edge.retained.set(&p).await {
                    tracing::warn!(topic, error = %err, "retained message from the cluster not stored");
                }
            }
            Some(topic)
        }
        kv::Operation::Delete | kv::Operation::Purge => {
            if let Some(topic) = subject::kv_topic(&e.key) {
                clear(edge, &topic).await;
            }
            None
        }
    }
}

async fn clear(edge: &Edge, topic: &str) {
    if edge.retained.get(topic).is_none() {
        return;
    }
    let mut p = Publish::new(topic, QoS::AtMostOnce, Bytes::new(), None);
    p.retain = true;
    if let Err(err) = edge.retained.set(&p).await {
        tracing::warn!(topic, error = %err, "retained message not cleared");
    }
}
