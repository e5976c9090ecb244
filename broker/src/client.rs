//! An in-process MQTT 5 client of the edge, for the HTTP bridge.
//!
//! The bridge speaks to the broker through the same edge as every other client: a
//! [`LocalClient`] is one session served by [`crate::session::serve`] over an in-memory duplex
//! pipe (transport `internal`, which skips authentication: the bridge authorizes each HTTP caller
//! itself). A task owns the pipe: it assigns packet ids, keeps the number of QoS 1/2 publishes in
//! flight within the edge's Receive Maximum, completes each caller's request when its
//! acknowledgement arrives, and hands received messages to the owner's bounded inbox.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
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
    Subscribe(Reply<Vec<SubscribeReasonCode>>),
    Unsubscribe(Reply<()>),
}

/// A handle to the in-process session; cheap to clone.
#[derive(Clone)]
pub struct LocalClient {
    cmds: mpsc::Sender<Cmd>,
    inflight: Arc<Semaphore>,
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
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run(pipe, buf, rx, inbox));
        Ok(LocalClient {
            cmds: tx,
            inflight: Arc::new(Semaphore::new(window as usize)),
        })
    }

    /// Has the session ended?
    pub fn is_closed(&self) -> bool {
        self.cmds.is_closed()
    }

    /// Publishes and waits for the broker's acknowledgement (QoS 1/2) or the write (QoS 0).
    pub async fn publish(&self, p: Publish) -> Result<(), ClientError> {
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

async fn run(
    mut pipe: DuplexStream,
    mut buf: BytesMut,
    mut cmds: mpsc::Receiver<Cmd>,
    inbox: mpsc::Sender<Publish>,
) {
    let mut waiting: HashMap<u16, Waiting> = HashMap::new();
    let mut next: u16 = 0;
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut alloc = |waiting: &HashMap<u16, Waiting>| loop {
        next = next.wrapping_add(1).max(1);
        if !waiting.contains_key(&next) {
            return next;
        }
    };
    loop {
        if !out.is_empty() {
            if pipe.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(PIPE);
        }
        tokio::select! {
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { break };
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
                        (Packet::Subscribe(Subscribe { pkid: id, filters, properties: None }),
                         Some((id, Waiting::Subscribe(reply))))
                    }
                    Cmd::Unsubscribe(filters, reply) => {
                        let id = alloc(&waiting);
                        (Packet::Unsubscribe(Unsubscribe { pkid: id, filters, properties: None }),
                         Some((id, Waiting::Unsubscribe(reply))))
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
                if !matches!(r, Ok(n) if n > 0) { break }
                loop {
                    let p = match codec::read_v5(&mut buf, u32::MAX) {
                        Ok(Some(p)) => p,
                        Ok(None) => break,
                        Err(_) => return,
                    };
                    match p {
                        Packet::Publish(p) => {
                            match p.qos {
                                QoS::AtMostOnce => {}
                                QoS::AtLeastOnce => { let _ = Packet::PubAck(PubAck::new(p.pkid, None)).write(&mut out, None); }
                                QoS::ExactlyOnce => { let _ = Packet::PubRec(PubRec::new(p.pkid, None)).write(&mut out, None); }
                            }
                            // Back-pressure: a full inbox holds this task, and so the session.
                            if inbox.send(p).await.is_err() { return }
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
                        Packet::SubAck(s) => {
                            if let Some(Waiting::Subscribe(reply)) = waiting.remove(&s.pkid) {
                                let _ = reply.send(Ok(s.return_codes));
                            }
                        }
                        Packet::UnsubAck(u) => {
                            if let Some(Waiting::Unsubscribe(reply)) = waiting.remove(&u.pkid) {
                                let _ = reply.send(Ok(()));
                            }
                        }
                        Packet::Disconnect(_) => return,
                        _ => {}
                    }
                }
            }
        }
    }
    for (_, w) in waiting.drain() {
        fail(w, ClientError::Closed);
    }
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
        Waiting::Subscribe(r) => {
            let _ = r.send(Err(e));
        }
        Waiting::Unsubscribe(r) => {
            let _ = r.send(Err(e));
        }
    }
}
