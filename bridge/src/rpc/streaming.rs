//! Large bodies, streamed both ways with bounded memory (MQTT 5 responders).
//!
//! The chunk protocol, for responder authors:
//! * A request body larger than `rpc.chunk_size` is sent as messages of that size on the request
//!   topic, each with the request's properties (Response Topic, Correlation Data, `method`,
//!   `path`, `header:…`) plus user properties `rtw-chunk` = 0, 1, 2, … and `rtw-last` = `true` on
//!   the final one (`false` on the others). The responder acknowledges each chunk it has taken by
//!   publishing an empty message to the Response Topic with the same Correlation Data and user
//!   property `rtw-ack` = the chunk's number; the bridge sends at most `rpc.stream_window` chunks
//!   ahead of the acknowledgements, so a slow responder slows the caller's upload (TCP flow
//!   control) instead of filling memory. A message with `rtw-abort` (a reason) and
//!   `rtw-last = true` means the caller went away or the body broke: drop what was received.
//! * A reply may be streamed the same way: reply messages to the Response Topic with the
//!   Correlation Data and `rtw-chunk`/`rtw-last`; status, `header:…` and content type are read from
//!   chunk 0. To be paced, the responder sets a Response Topic of its own on its reply chunks:
//!   the bridge acknowledges each chunk there (`rtw-ack`, same Correlation Data) once the HTTP
//!   caller has taken it, and the responder keeps at most `rpc.stream_window` chunks
//!   unacknowledged. A reply that runs further ahead, skips a number, or stops (the responder
//!   unsubscribes or goes quiet for the call's timeout) ends the HTTP body with an error; if
//!   the caller goes away, the bridge sends `rtw-abort` to that topic.
//!
//! Small bodies stay one message without these properties.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::http::StatusCode;
use broker::codec::{Publish, PublishProperties, QoS};
use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

use super::{Reply, Rpc};
use crate::error::ApiError;

pub const CHUNK: &str = "rtw-chunk";
pub const LAST: &str = "rtw-last";
pub const ACK: &str = "rtw-ack";
pub const ABORT: &str = "rtw-abort";

fn prop<'a>(props: &'a PublishProperties, name: &str) -> Option<&'a str> {
    props
        .user_properties
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `(number, last)` of a chunk message; `None` for a one-message body.
pub fn chunk_of(props: &PublishProperties) -> Option<(u64, bool)> {
    let n = prop(props, CHUNK)?.trim().parse().ok()?;
    let last = prop(props, LAST).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    Some((n, last))
}

/// The chunk number an acknowledgement message acknowledges.
pub fn ack_of(props: &PublishProperties) -> Option<u64> {
    prop(props, ACK)?.trim().parse().ok()
}

fn with_chunk(props: &PublishProperties, n: u64, last: bool) -> PublishProperties {
    let mut p = props.clone();
    p.user_properties.push((CHUNK.into(), n.to_string()));
    p.user_properties.push((LAST.into(), last.to_string()));
    p
}

/// An HTTP request body read in pieces of `size` bytes, never holding much more.
pub struct BodyChunks {
    stream: BodyDataStream,
    buf: BytesMut,
    done: bool,
    size: usize,
    total: u64,
}

impl BodyChunks {
    pub fn new(body: Body, size: usize) -> BodyChunks {
        BodyChunks {
            stream: body.into_data_stream(),
            buf: BytesMut::new(),
            done: false,
            size,
            total: 0,
        }
    }

    /// The next piece (`size` bytes, or what is left); reads one frame past it, so
    /// [`BodyChunks::finished`] is known.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ApiError> {
        while self.buf.len() <= self.size && !self.done {
            match self.stream.next().await {
                Some(Ok(b)) => {
                    self.total += b.len() as u64;
                    self.buf.extend_from_slice(&b);
                }
                Some(Err(e)) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("the request body could not be read: {e}"),
                    ))
                }
                None => self.done = true,
            }
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let n = self.size.min(self.buf.len());
        Ok(Some(self.buf.split_to(n).freeze()))
    }

    /// Everything has been returned.
    pub fn finished(&self) -> bool {
        self.done && self.buf.is_empty()
    }

    /// Bytes read so far.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// What a streamed upload needs of its call.
pub struct Upload<'a> {
    pub rpc: &'a Rpc,
    pub topic: &'a str,
    pub props: &'a PublishProperties,
    pub idle: Duration,
    pub acks: &'a mut watch::Receiver<u64>,
    pub replies: &'a mut mpsc::Receiver<Box<Reply>>,
    /// The upload ended (sent, answered early, or aborted); dropped before that — the caller
    /// went away — it tells the responder.
    pub settled: bool,
    /// Chunks published so far.
    pub sent: std::sync::atomic::AtomicU64,
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.rpc.stats.stream_errors.fetch_add(1, Ordering::Relaxed);
        let mut props = with_chunk(self.props, *self.sent.get_mut(), true);
        props
            .user_properties
            .push((ABORT.into(), "caller gone".into()));
        let p = Publish::new(self.topic, QoS::AtLeastOnce, Bytes::new(), Some(props));
        let client = self.rpc.client.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), client.publish(p)).await;
        });
    }
}

impl Upload<'_> {
    /// Publishes chunk `n`.
    pub async fn publish(&self, n: u64, last: bool, data: Bytes) -> Result<(), ApiError> {
        let p = Publish::new(
            self.topic,
            QoS::AtLeastOnce,
            data,
            Some(with_chunk(self.props, n, last)),
        );
        self.rpc.client.publish(p).await?;
        self.sent.store(n + 1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends the rest of the body after chunk 0 (already sent), `stream_window` chunks ahead of
    /// the responder's acknowledgements. Returns a reply that came before the upload ended.
    pub async fn rest(&mut self, body: &mut BodyChunks) -> Result<Option<Box<Reply>>, ApiError> {
        let r = self.send_rest(body).await;
        self.settled = true;
        r
    }

    async fn send_rest(&mut self, body: &mut BodyChunks) -> Result<Option<Box<Reply>>, ApiError> {
        let window = self.rpc.settings.stream_window as u64;
        let max = self.rpc.settings.max_stream_bytes;
        let mut changes = self.rpc.edge.subscriptions_changed();
        let mut n = 1u64;
        let result = loop {
            let data = match tokio::time::timeout(self.idle, body.next()).await {
                Ok(Ok(Some(d))) => d,
                Ok(Ok(None)) => break Ok(None),
                Ok(Err(r)) => break Err(r),
                Err(_) => break Err(stalled(self.idle)),
            };
            if body.total() > max {
                break Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over rpc.max_stream_bytes ({max} bytes)"),
                ));
            }
            // The window: chunk n goes once chunk n - window is acknowledged.
            while n >= *self.acks.borrow_and_update() + window {
                tokio::select! {
                    r = self.acks.changed() => if r.is_err() {
                        return Err(self.abort(n, overrun()).await);
                    },
                    r = self.replies.recv() => return match r {
                        Some(reply) => Ok(Some(reply)),
                        None => Err(overrun()),
                    },
                    _ = changes.changed() => if !self.rpc.edge.has_subscriber(self.topic) {
                        return Err(self.abort(n, gone()).await);
                    },
                    _ = tokio::time::sleep(self.idle) => {
                        return Err(self.abort(n, ApiError::new(
                            StatusCode::GATEWAY_TIMEOUT,
                            format!(
                                "the responder acknowledged no chunk within {} s (rtw-ack)",
                                self.idle.as_secs()
                            ),
                        )).await);
                    }
                }
            }
            let last = body.finished();
            if let Err(r) = self.publish(n, last, data).await {
                break Err(r);
            }
            n += 1;
            if last {
                break Ok(None);
            }
        };
        match result {
            Err(r) => Err(self.abort(n, r).await),
            ok => ok,
        }
    }

    /// Tells the responder the stream is abandoned; returns `why`.
    pub async fn abort(&self, n: u64, why: ApiError) -> ApiError {
        let mut props = with_chunk(self.props, n, true);
        props
            .user_properties
            .push((ABORT.into(), why.status().to_string()));
        let p = Publish::new(self.topic, QoS::AtLeastOnce, Bytes::new(), Some(props));
        let _ = tokio::time::timeout(Duration::from_secs(5), self.rpc.client.publish(p)).await;
        self.rpc.stats.stream_errors.fetch_add(1, Ordering::Relaxed);
        why
    }
}

/// The caller stopped sending its body.
pub fn stalled(idle: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        format!("the request body stalled for {} s", idle.as_secs()),
    )
}

pub fn gone() -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "the responder went away in the middle of the stream",
    )
}

pub fn overrun() -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "the responder's reply ran past the stream window",
    )
}

/// Keeps a call registered (and its in-flight slot taken) until dropped.
pub struct CallGuard {
    pub rpc: Arc<Rpc>,
    pub corr: u128,
    pub _slot: Option<OwnedSemaphorePermit>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.rpc.forget(self.corr);
    }
}

/// A streamed reply on its way to the HTTP caller.
struct ReplyStream {
    guard: CallGuard,
    rx: mpsc::Receiver<Box<Reply>>,
    first: Option<Bytes>,
    /// The number of the next chunk expected.
    next: u64,
    /// Chunk handed to the caller and not yet acknowledged to the responder.
    to_ack: Option<u64>,
    ack_to: Option<String>,
    corr: Option<Bytes>,
    request_topic: String,
    changes: watch::Receiver<u64>,
    idle: Duration,
    total: u64,
    /// Nothing more to yield (the last chunk, or an error).
    finished: bool,
    /// The last chunk was handed over.
    complete: bool,
}

/// The HTTP body of a reply whose chunk 0 is `first`; later chunks come on `rx`.
pub fn reply_body(
    guard: CallGuard,
    first: Reply,
    rx: mpsc::Receiver<Box<Reply>>,
    request_topic: String,
    idle: Duration,
) -> Body {
    let rpc = guard.rpc.clone();
    rpc.stats.streams.fetch_add(1, Ordering::Relaxed);
    let s = ReplyStream {
        total: first.payload.len() as u64,
        first: Some(first.payload),
        ack_to: first
            .props
            .response_topic
            .clone()
            .filter(|t| broker::topic::validate_topic(t).is_ok()),
        corr: first.props.correlation_data.clone(),
        guard,
        rx,
        next: 1,
        to_ack: Some(0),
        request_topic,
        changes: rpc.edge.subscriptions_changed(),
        idle,
        finished: false,
        complete: false,
    };
    Body::from_stream(futures_util::stream::unfold(s, |mut s| async move {
        if s.finished {
            return None;
        }
        if let Some(first) = s.first.take() {
            return Some((Ok(first), s));
        }
        if let Some(n) = s.to_ack.take() {
            s.send(ACK, n.to_string()).await;
        }
        let item = s.next_chunk().await;
        if item.is_err() {
            s.finished = true;
            s.guard
                .rpc
                .stats
                .stream_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        Some((item, s))
    }))
}

impl ReplyStream {
    /// Publishes an `rtw-ack` or `rtw-abort` to the responder's acknowledgement topic.
    async fn send(&self, what: &str, value: String) {
        let Some(topic) = &self.ack_to else { return };
        let props = PublishProperties {
            correlation_data: self.corr.clone(),
            user_properties: vec![(what.into(), value)],
            ..Default::default()
        };
        let p = Publish::new(topic.as_str(), QoS::AtLeastOnce, Bytes::new(), Some(props));
        let _ = self.guard.rpc.client.publish(p).await;
    }

    async fn next_chunk(&mut self) -> Result<Bytes, std::io::Error> {
        let fail = |m: String| Err(std::io::Error::other(m));
        let reply = loop {
            tokio::select! {
                r = self.rx.recv() => break r,
                _ = self.changes.changed() => {
                    if !self.guard.rpc.edge.has_subscriber(&self.request_topic) {
                        return fail("the responder went away in the middle of the reply".into());
                    }
                }
                _ = tokio::time::sleep(self.idle) => {
                    return fail(format!("no reply chunk within {} s", self.idle.as_secs()));
                }
            }
        };
        let Some(reply) = reply else {
            return fail("the reply ran past the stream window".into());
        };
        let Some((n, last)) = chunk_of(&reply.props) else {
            return fail("a reply message without rtw-chunk in a streamed reply".into());
        };
        if n != self.next {
            return fail(format!("reply chunk {n} came where {} was due", self.next));
        }
        self.total += reply.payload.len() as u64;
        let max = self.guard.rpc.settings.max_stream_bytes;
        if self.total > max {
            return fail(format!("the reply is over rpc.max_stream_bytes ({max})"));
        }
        self.next += 1;
        if last {
            self.finished = true;
            self.complete = true;
        } else {
            self.to_ack = Some(n);
        }
        Ok(reply.payload)
    }
}

impl Drop for ReplyStream {
    fn drop(&mut self) {
        if self.complete {
            return;
        }
        // The caller went away (or the stream broke): tell the responder to stop.
        if let Some(topic) = self.ack_to.clone() {
            let client = self.guard.rpc.client.clone();
            let props = PublishProperties {
                correlation_data: self.corr.clone(),
                user_properties: vec![(ABORT.into(), "caller gone".into())],
                ..Default::default()
            };
            tokio::spawn(async move {
                let p = Publish::new(topic.as_str(), QoS::AtLeastOnce, Bytes::new(), Some(props));
                let _ = client.publish(p).await;
            });
        }
    }
}
