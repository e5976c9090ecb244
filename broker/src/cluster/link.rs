//! The link task: subscribes and unsubscribes on NATS as local interest comes and goes, and
//! routes what NATS delivers into the node.
//!
//! One task owns every NATS subscription of the node (a `SelectAll` of them) and reads them in
//! one place, so a message and its second copy through an overlapping subscription meet the
//! same [`Dedupe`], and messages enter the node through [`crate::Edge::route`] in the order they
//! are first seen (per publisher and topic, NATS's order). A plain subscription's copy of this
//! node's own messages is dropped (the node delivered it already); a queue subscription's is
//! not (NATS chose this node for the share group's copy).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{BoxStream, SelectAll};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::dedupe::Dedupe;
use super::pressure::Backlog;
use super::{subject, Cluster, ClusterStats, Cmd, Key};
use crate::message::{Message, Scope};
use crate::Edge;

/// Sequence numbers per origin node remembered to drop second copies (128 KiB per origin).
const DEDUPE_SPAN: usize = 1 << 20;
/// Origin nodes (boot ids: a restart is a new one) remembered.
const DEDUPE_ORIGINS: usize = 64;
/// Messages routed per turn of the link's loop when NATS has them ready.
const BATCH: usize = 64;
/// A link that is behind and gets nothing for this long has caught up.
const IDLE: Duration = Duration::from_millis(2);
/// Subject of the round trip that proves earlier subscriptions reached the server (nobody
/// answers: NATS replies "no responders" itself).
const SYNC_SUBJECT: &str = "rtw.sync";

type Item = (u64, async_nats::Message);

struct Entry {
    id: u64,
    /// Dropping these ends the subscriptions (NATS UNSUB).
    stops: Vec<oneshot::Sender<()>>,
}

pub(super) async fn run(c: Arc<Cluster>, edge: Arc<Edge>, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
    let mut subs: SelectAll<BoxStream<'static, Item>> = SelectAll::new();
    let mut keys: HashMap<Key, Entry> = HashMap::new();
    // Per subscription id: the share group's subscription path, if any.
    let mut groups: HashMap<u64, Option<Arc<str>>> = HashMap::new();
    let mut next_id = 0u64;
    let mut dedupe = Dedupe::new(DEDUPE_SPAN, DEDUPE_ORIGINS);
    let mut backlog = Backlog::default();
    // Made once: a fresh one per message would register with the token and unregister again.
    let shutdown = edge.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                None => return,
                Some(Cmd::Subscribe(key)) => {
                    next_id += 1;
                    match subscribe(&c, &key, next_id).await {
                        Ok((streams, stops)) => {
                            for s in streams {
                                subs.push(s);
                            }
                            let path = key.1.as_ref().map(|g| Arc::from(format!("$share/{g}/{}", key.0)));
                            groups.insert(next_id, path);
                            keys.insert(key, Entry { id: next_id, stops });
                        }
                        Err(e) => tracing::error!(filter = key.0, error = %e, "NATS subscribe failed: the filter sees this node's messages only"),
                    }
                }
                Some(Cmd::Unsubscribe(key)) => {
                    if let Some(e) = keys.remove(&key) {
                        groups.remove(&e.id);
                        drop(e.stops);
                    }
                }
                Some(Cmd::Drain(done)) => {
                    // What the NATS client has already handed to the subscriptions' channels.
                    while let Some(Some((id, m))) = subs.next().now_or_never() {
                        let Some(group) = groups.get(&id) else { continue };
                        inbound(&c, &edge, group.clone(), m, &mut dedupe).await;
                    }
                    let _ = done.send(());
                }
                Some(Cmd::Sync(done)) => {
                    let client = c.client.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            client.request(SYNC_SUBJECT, bytes::Bytes::new()),
                        )
                        .await;
                        let _ = done.send(());
                    });
                }
            },
            Some(first) = subs.next(), if !subs.is_empty() => {
                // This one, then what else is already waiting, up to a batch, before looking at
                // commands again (a flood costs one pass through this loop per batch).
                let (mut item, mut n) = (Some(first), 0);
                while let Some((id, m)) = item {
                    n += 1;
                    if let Some(group) = groups.get(&id) {
                        inbound(&c, &edge, group.clone(), m, &mut dedupe).await;
                    }
                    item = if n < BATCH { subs.next().now_or_never().flatten() } else { None };
                }
                // Turn after turn of full batches: behind, so the other nodes are asked to
                // slow down ([`super::pressure`]).
                c.pressure.set_local(backlog.turn(n == BATCH));
            }
            // Behind, and nothing came for a moment: caught up (the last turn may have been
            // full and then the other nodes held back, so no turn would say it).
            _ = tokio::time::sleep(IDLE), if backlog.in_streak() => {
                c.pressure.set_local(backlog.turn(false));
            }
            _ = &mut shutdown => return,
        }
    }
}

type Streams = (Vec<BoxStream<'static, Item>>, Vec<oneshot::Sender<()>>);

async fn subscribe(c: &Cluster, key: &Key, id: u64) -> Result<Streams, async_nats::SubscribeError> {
    let (filter, group) = key;
    let mut streams = Vec::new();
    let mut stops = Vec::new();
    for s in subject::filter(filter) {
        if s.len() > subject::MAX_SUBJECT {
            tracing::warn!(
                filter,
                "filter too long for NATS: it sees this node's messages only"
            );
            continue;
        }
        let sub = match group {
            Some(g) => {
                c.client
                    .queue_subscribe(s, subject::queue(g, filter))
                    .await?
            }
            None => c.client.subscribe(s).await?,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        stops.push(stop);
        streams.push(sub.take_until(stopped).map(move |m| (id, m)).boxed());
    }
    Ok((streams, stops))
}

/// Routes one message from NATS into the node.
async fn inbound(
    c: &Cluster,
    edge: &Edge,
    group: Option<Arc<str>>,
    m: async_nats::Message,
    dedupe: &mut Dedupe,
) {
    let p = m.payload;
    if p.len() < 8 + 25 {
        ClusterStats::inc(&c.stats.bad);
        return;
    }
    let origin = u64::from_be_bytes(p[0..8].try_into().unwrap_or_default());
    let frame = p.slice(8..);
    let seq = crate::message::frame_seq(&frame);
    if group.is_none() {
        if origin == c.boot {
            ClusterStats::inc(&c.stats.echoes);
            return;
        }
        if !dedupe.first(origin, seq) {
            ClusterStats::inc(&c.stats.duplicates);
            return;
        }
    }
    let mut msg = match Message::from_frame(frame) {
        Ok(m) => m,
        Err(e) => {
            ClusterStats::inc(&c.stats.bad);
            tracing::warn!(error = %e, "dropping a bad message from NATS");
            return;
        }
    };
    msg.origin = Some((origin, seq));
    msg.scope = match group {
        Some(path) => Scope::Group(path),
        None => Scope::Plain,
    };
    ClusterStats::inc(&c.stats.received);
    if let Err(e) = edge.route(msg).await {
        tracing::warn!(error = %e, "message from the cluster not accepted");
    }
}
