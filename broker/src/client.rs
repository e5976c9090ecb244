//! An in-process MQTT 5 client of the edge, for the HTTP bridge.
//!
//! The bridge speaks to the broker through the same edge as every other client: a
//! [`LocalClient`] is one session served by [`crate::session::serve`] over an in-memory duplex
//! pipe (transport `internal`, which skips authentication: the bridge authorizes each HTTP caller
//! itself). A task owns the pipe: it assigns packet ids, keeps the number of QoS 1/2 publishes in
//! flight within the edge's Receive Maximum, completes each caller's request when its
//! acknowledgement arrives, and hands received messages to the owner's bounded inbox.
//!
//! If the session ends under it (its link to the core broke, say), the task opens a new one and
//! subscribes again to what the owner had subscribed; requests in flight then fail with
//! [`ClientError::Closed`], and [`LocalClient::is_closed`] is true until the session is back.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::codec::{self, *};
use crate::transport::Transport;
use crate::Edge;

/// Why a request through the local client failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("the broker session of the bridge is gone")]
    Closed,
    #[error("refused by the broker: {0}")]
    Refused(String),
    #[error("timed out waiting for the broker")]
    Timeout,
}

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

enum Cmd {
    Publish(Box<Publish>, Option<OwnedSemaphorePermit>, Reply<()>),
    Subscribe(Vec<Filter>, Reply<Vec<SubscribeReasonCode>>),
    Unsubscribe(Vec<String>, Reply<()>),
}

enum Waiting {
    Publish(Reply<()>, Option<OwnedSemaphorePermit>),
    Subscribe(Reply<Vec<SubscribeReasonCode>>, Vec<Filter>),
    Unsubscribe(Reply<()>, Vec<String>),
    /// The subscriptions made again on a new session (nobody waits for them).
    Resubscribe,
}

/// Why [`run`] returned.
enum Ended {
    /// The owner is gone (every handle dropped, or the inbox closed).
    Owner,
    /// The session ended.
    Session,
}

/// A handle to the in-process session; cheap to clone.
#[derive(Clone)]
pub struct LocalClient {
    cmds: mpsc::Sender<Cmd>,
    inflight: Arc<Semaphore>,
    /// The session is up (false while the task opens a new one).
    up: Arc<AtomicBool>,
    /// The edge's `limits.max_packet_size`: a bigger PUBLISH would end the session.
    max_packet: usize,
}

const PIPE: usize = 256 * 1024;
const WAIT: Duration = Duration::from_secs(30);

impl LocalClient {
    /// Opens a session named `client_id`; messages for its subscriptions go to `inbox`.
    pub async fn connect(
        edge: &Arc<Edge>,
        client_id: &str,
        inbox: mpsc::Sender<Publish>,
    ) -> Result<LocalClient, ClientError> {
        let (pipe, buf, window) = open(edge, client_id).await?;
        let (tx, rx) = mpsc::channel(1024);
        let up = Arc::new(AtomicBool::new(true));
        tokio::spawn(supervise(
            edge.clone(),
            client_id.to_string(),
            (pipe, buf),
            rx,
            inbox,
            up.clone(),
        ));
        Ok(LocalClient {
            cmds: tx,
            inflight: Arc::new(Semaphore::new(window as usize)),
            up,
            max_packet: edge.config.limits.max_packet_size as usize,
        })
    }

    /// Is the session down (ended for good, or being opened again)?
    pub fn is_closed(&self) -> bool {
        self.cmds.is_closed() || !self.up.load(Ordering::Relaxed)
    }

    /// Publishes and waits for the broker's acknowledgement (QoS 1/2) or the write (QoS 0).
    pub async fn publish(&self, p: Publish) -> Result<(), ClientError> {
        // The edge ends a session that sends a packet over its limit (DISCONNECT 0x95), which
        // for this shared session would fail every later caller: refuse this one instead.
        // (+2: the packet id, not yet assigned.)
        let size = p.size() + 2;
        if size > self.max_packet {
            return Err(ClientError::Refused(format!(
                "PacketTooLarge: {size} bytes, over the broker's maximum packet size of {}",
                self.max_packet
            )));
        }
        let permit = if p.qos == QoS::AtMostOnce {
            None
        } else {
            let acquire = self.inflight.clone().acquire_owned();
            Some(
                tokio::time::timeout(WAIT, acquire)
                    .await
                    .map_err(|_| ClientError::Timeout)?
                    .map_err(|_| ClientError::Closed)?,
            )
        };
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Publish(Box::new(p), permit, tx), rx).await
    }

    /// Subscribes to one filter; returns the broker's reason code.
    pub async fn subscribe(
        &self,
        filter: &str,
        qos: QoS,
    ) -> Result<SubscribeReasonCode, ClientError> {
        let (tx, rx) = oneshot::channel();
        // Retained messages are read from the store by whoever needs them, not replayed here.
        let mut f = Filter::new(filter, qos);
        f.retain_forward_rule = RetainForwardRule::Never;
        let codes = self.send(Cmd::Subscribe(vec![f], tx), rx).await?;
        codes.first().copied().ok_or(ClientError::Closed)
    }

    pub async fn unsubscribe(&self, filter: &str) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Unsubscribe(vec![filter.to_string()], tx), rx)
            .await
    }

    async fn send<T>(
        &self,
        cmd: Cmd,
        rx: oneshot::Receiver<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        self.cmds.send(cmd).await.map_err(|_| ClientError::Closed)?;
        tokio::time::timeout(WAIT, rx)
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|_| ClientError::Closed)?
    }
}

/// Opens the in-process session: the pipe, bytes read past the CONNACK, and the edge's Receive
/// Maximum.
async fn open(
    edge: &Arc<Edge>,
    client_id: &str,
) -> Result<(DuplexStream, BytesMut, u16), ClientError> {
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let e = edge.clone();
    tokio::spawn(async move {
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        e.serve(Box::new(theirs), peer, Transport::Internal).await
    });
    let mut pipe = ours;
    let connect = Packet::Connect(
        Connect {
            keep_alive: 0,
            client_id: client_id.to_string(),
            clean_start: true,
            properties: None,
        },
        None,
        None,
    );
    let mut out = BytesMut::new();
    connect
        .write(&mut out, None)
        .map_err(|e| ClientError::Refused(e.to_string()))?;
    pipe.write_all(&out)
        .await
        .map_err(|_| ClientError::Closed)?;
    let mut buf = BytesMut::with_capacity(PIPE);
    let ack = tokio::time::timeout(WAIT, async {
        loop {
            if pipe
                .read_buf(&mut buf)
                .await
                .map_err(|_| ClientError::Closed)?
                == 0
            {
                return Err(ClientError::Closed);
            }
            match codec::read_v5(&mut buf, u32::MAX) {
                Ok(Some(Packet::ConnAck(a))) => return Ok(a),
                Ok(None) => continue,
                _ => return Err(ClientError::Closed),
            }
        }
    })
    .await
    .map_err(|_| ClientError::Timeout)??;
    if ack.code != ConnectReturnCode::Success {
        return Err(ClientError::Refused(format!("{:?}", ack.code)));
    }
    let window = ack
        .properties
        .as_ref()
        .and_then(|p| p.receive_max)
        .unwrap_or(u16::MAX);
    Ok((pipe, buf, window))
}

/// Runs the session, and opens a new one each time it ends (with backoff) until the owner is gone
/// or the node shuts down.
async fn supervise(
    edge: Arc<Edge>,
    client_id: String,
    (mut pipe, mut buf): (DuplexStream, BytesMut),
    mut cmds: mpsc::Receiver<Cmd>,
    inbox: mpsc::Sender<Publish>,
    up: Arc<AtomicBool>,
) {
    // What the owner subscribed to, made again on every new session.
    let mut subs: Vec<Filter> = Vec::new();
    loop {
        if let Ended::Owner = run(pipe, buf, &mut cmds, &inbox, &mut subs).await {
            return;
        }
        up.store(false, Ordering::Relaxed);
        let mut delay = Duration::from_millis(50);
        loop {
            if edge.shutdown.is_cancelled() || cmds.is_closed() {
                return;
            }
            tokio::time::sleep(delay).await;
            match open(&edge, &client_id).await {
                Ok((p, b, _)) => {
                    (pipe, buf) = (p, b);
                    break;
                }
                Err(e) => {
                    tracing::warn!(client_id, error = %e, "cannot reopen the bridge's session");
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        tracing::warn!(
            client_id,
            subscriptions = subs.len(),
            "the bridge's broker session was reopened"
        );
        up.store(true, Ordering::Relaxed);
    }
}

async fn run(
    mut pipe: DuplexStream,
    mut buf: BytesMut,
    cmds: &mut mpsc::Receiver<Cmd>,
    inbox: &mpsc::Sender<Publish>,
    subs: &mut Vec<Filter>,
) -> Ended {
    let mut waiting: HashMap<u16, Waiting> = HashMap::new();
    let mut next: u16 = 0;
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut alloc = |waiting: &HashMap<u16, Waiting>| loop {
        next = next.wrapping_add(1).max(1);
        if !waiting.contains_key(&next) {
            return next;
        }
    };
    // A reopened session: subscribe again to everything the owner had.
    for chunk in subs.chunks(64) {
        let id = alloc(&waiting);
        let p = Packet::Subscribe(Subscribe {
            pkid: id,
            filters: chunk.to_vec(),
            properties: None,
        });
        if p.write(&mut out, None).is_ok() {
            waiting.insert(id, Waiting::Resubscribe);
        }
    }
    let ended = 'main: loop {
        if !out.is_empty() {
            if pipe.write_all(&out).await.is_err() {
                break Ended::Session;
            }
            out.clear();
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(PIPE);
        }
        tokio::select! {
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { break Ended::Owner };
                let (packet, wait) = match cmd {
                    Cmd::Publish(mut p, permit, reply) => {
                        if p.qos == QoS::AtMostOnce {
                            p.pkid = 0;
                            let _ = reply.send(Ok(()));
                            (Packet::Publish(*p), None)
                        } else {
                            let id = alloc(&waiting);
                            p.pkid = id;
                            (Packet::Publish(*p), Some((id, Waiting::Publish(reply, permit))))
                        }
                    }
                    Cmd::Subscribe(filters, reply) => {
                        let id = alloc(&waiting);
                        (Packet::Subscribe(Subscribe { pkid: id, filters: filters.clone(), properties: None }),
                         Some((id, Waiting::Subscribe(reply, filters))))
                    }
                    Cmd::Unsubscribe(filters, reply) => {
                        let id = alloc(&waiting);
                        (Packet::Unsubscribe(Unsubscribe { pkid: id, filters: filters.clone(), properties: None }),
                         Some((id, Waiting::Unsubscribe(reply, filters))))
                    }
                };
                if packet.write(&mut out, None).is_err() {
                    if let Some((_, w)) = wait {
                        fail(w, ClientError::Refused("cannot encode".into()));
                    }
                    continue;
                }
                if let Some((id, w)) = wait {
                    waiting.insert(id, w);
                }
            }
            r = pipe.read_buf(&mut buf) => {
                if !matches!(r, Ok(n) if n > 0) { break Ended::Session }
                loop {
                    let p = match codec::read_v5(&mut buf, u32::MAX) {
                        Ok(Some(p)) => p,
                        Ok(None) => break,
                        Err(_) => break 'main Ended::Session,
                    };
                    match p {
                        Packet::Publish(p) => {
                            match p.qos {
                                QoS::AtMostOnce => {}
                                QoS::AtLeastOnce => { let _ = Packet::PubAck(PubAck::new(p.pkid, None)).write(&mut out, None); }
                                QoS::ExactlyOnce => { let _ = Packet::PubRec(PubRec::new(p.pkid, None)).write(&mut out, None); }
                            }
                            // Back-pressure: a full inbox holds this task, and so the session.
                            if inbox.send(p).await.is_err() { break 'main Ended::Owner }
                        }
                        Packet::PubRel(r) => { let _ = Packet::PubComp(PubComp::new(r.pkid, None)).write(&mut out, None); }
                        Packet::PubAck(a) => {
                            let ok = matches!(a.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers);
                            done_publish(&mut waiting, a.pkid, ok, format!("{:?}", a.reason));
                        }
                        Packet::PubRec(r) => {
                            let ok = matches!(r.reason, PubRecReason::Success | PubRecReason::NoMatchingSubscribers);
                            if ok {
                                let _ = Packet::PubRel(PubRel::new(r.pkid, None)).write(&mut out, None);
                            } else {
                                done_publish(&mut waiting, r.pkid, false, format!("{:?}", r.reason));
                            }
                        }
                        Packet::PubComp(c) => done_publish(&mut waiting, c.pkid, true, String::new()),
                        Packet::SubAck(s) => match waiting.remove(&s.pkid) {
                            Some(Waiting::Subscribe(reply, filters)) => {
                                for (f, c) in filters.into_iter().zip(&s.return_codes) {
                                    if matches!(c, SubscribeReasonCode::Success(_)) {
                                        subs.retain(|x| x.path != f.path);
                                        subs.push(f);
                                    }
                                }
                                let _ = reply.send(Ok(s.return_codes));
                            }
                            Some(Waiting::Resubscribe) | None => {}
                            Some(other) => fail(other, ClientError::Closed),
                        },
                        Packet::UnsubAck(u) => {
                            if let Some(Waiting::Unsubscribe(reply, filters)) = waiting.remove(&u.pkid) {
                                subs.retain(|x| !filters.contains(&x.path));
                                let _ = reply.send(Ok(()));
                            }
                        }
                        Packet::Disconnect(_) => break 'main Ended::Session,
                        _ => {}
                    }
                }
            }
        }
    };
    for (_, w) in waiting.drain() {
        fail(w, ClientError::Closed);
    }
    ended
}

fn done_publish(waiting: &mut HashMap<u16, Waiting>, id: u16, ok: bool, why: String) {
    if let Some(Waiting::Publish(reply, _permit)) = waiting.remove(&id) {
        let _ = reply.send(if ok {
            Ok(())
        } else {
            Err(ClientError::Refused(why))
        });
    }
}

fn fail(w: Waiting, e: ClientError) {
    match w {
        Waiting::Publish(r, _) => {
            let _ = r.send(Err(e));
        }
        Waiting::Subscribe(r, _) => {
            let _ = r.send(Err(e));
        }
        Waiting::Unsubscribe(r, _) => {
            let _ = r.send(Err(e));
        }
        Waiting::Resubscribe => {}
    }
}
