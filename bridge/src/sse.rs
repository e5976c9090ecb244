//! Server-Sent Events on the wire: the frame encoder and the response body of an open stream
//! (`GET /events` in [`crate::stream`], the Mercure subscriber in
//! [`crate::mercure::subscribe`]).
//!
//! Data flow: the handler encodes what the stream owes first (replay, retained state, or the
//! `: open` comment) into one buffer and hands it, with a [`Source`] (which polls the stream's
//! hub subscription), to [`response`]. hyper then polls the [`Body`]: the first buffer, then one
//! frame per [`Source::poll_frame`] (an event, a gap, a heartbeat comment), until the source
//! ends or the caller's credentials expire. Each frame is one [`Bytes`], encoded in one go by
//! [`Event`]: `id:`, `event:`, `retry:` and `data:` lines (the data split into one `data:` line
//! per line of it, lines ending in CRLF, LF or CR as the WHATWG SSE parser reads them), then
//! the blank line that dispatches the event.
//!
//! Hand-written rather than axum's `Sse`: that boxes a stream (here an `unfold` future holding
//! the subscription, the pending receive and the heartbeat wait: ~300 bytes) for every open
//! response and builds each event in a growing `BytesMut`; no maintained crate gives an SSE body
//! that holds no more than its subscription. This one holds the first buffer until it is sent,
//! the source, and a deadline only when the credentials expire: an idle stream keeps ~70 bytes
//! here. The framing is axum's, byte for byte (field order as built, `field: value`, comments
//! `: text`, a data line per line), except that a CRLF in data is one line break (axum made it
//! two, adding an empty line to the data the client saw).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use axum::http::{header, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// The comment that opens a stream with nothing else to send yet: hyper sends the response
/// head with the body's first bytes, so without it a client would not see the stream open
/// (EventSource `open`) until the first event or heartbeat.
pub const OPEN: &[u8] = b": open\n\n";

/// One SSE event, built field by field (in call order) into one buffer.
#[derive(Debug, Default)]
pub struct Event {
    buf: Vec<u8>,
}

impl Event {
    pub fn new() -> Event {
        Event::default()
    }

    /// An event of about `n` bytes (saves regrowing the buffer).
    pub fn with_capacity(n: usize) -> Event {
        Event {
            buf: Vec::with_capacity(n),
        }
    }

    /// `id: <id>` (cut at a line break or NUL: one line, and a NUL would make clients ignore
    /// the field).
    pub fn id(mut self, id: &str) -> Event {
        self.field(b"id", id.as_bytes(), |b| matches!(b, b'\r' | b'\n' | 0));
        self
    }

    /// `event: <type>` (cut at a line break).
    pub fn event(mut self, kind: &str) -> Event {
        self.field(b"event", kind.as_bytes(), |b| matches!(b, b'\r' | b'\n'));
        self
    }

    /// `retry: <milliseconds>`.
    pub fn retry(mut self, ms: u64) -> Event {
        self.buf.extend_from_slice(b"retry: ");
        self.buf.extend_from_slice(ms.to_string().as_bytes());
        self.buf.push(b'\n');
        self
    }

    /// `: <text>`, a comment (cut at a line break).
    pub fn comment(mut self, text: &str) -> Event {
        self.field(b"", text.as_bytes(), |b| matches!(b, b'\r' | b'\n'));
        self
    }

    /// One `data: ` line per line of `data`; nothing for empty data (as axum: an event without
    /// data is not dispatched by a browser, one with an empty `data:` line would be).
    pub fn data(mut self, data: &[u8]) -> Event {
        if data.is_empty() {
            return self;
        }
        self.buf.reserve(data.len() + 7);
        let mut rest = data;
        loop {
            self.buf.extend_from_slice(b"data: ");
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    self.buf.extend_from_slice(&rest[..i]);
                    self.buf.push(b'\n');
                    let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                        2
                    } else {
                        1
                    };
                    rest = &rest[i + skip..];
                }
                None => {
                    self.buf.extend_from_slice(rest);
                    self.buf.push(b'\n');
                    return self;
                }
            }
        }
    }

    /// The event, ended by its blank line.
    pub fn finish(mut self) -> Bytes {
        self.buf.push(b'\n');
        Bytes::from(self.buf)
    }

    /// The event, ended by its blank line, added to `out` (several events sent as one frame).
    pub fn finish_into(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.buf);
        out.push(b'\n');
    }

    fn field(&mut self, name: &[u8], value: &[u8], ends: impl Fn(u8) -> bool) {
        let end = value.iter().position(|&b| ends(b)).unwrap_or(value.len());
        self.buf.extend_from_slice(name);
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(&value[..end]);
        self.buf.push(b'\n');
    }
}

/// What an open stream sends after its first buffer.
pub trait Source: Send + Unpin + 'static {
    /// The next frame (an encoded event or comment); `None` ends the stream. Registers `cx`'s
    /// waker when there is nothing yet, as a future does.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>>;
}

/// The first buffer goes out in pieces of at most this many bytes: hyper copies a frame into
/// its write buffer whole (and keeps that buffer's size), so one long replay must not be one
/// frame.
const FIRST_PIECE: usize = 16 * 1024;

/// The response body of an open stream.
pub struct SseBody<S> {
    /// Sent first (taken then, so its memory goes with it).
    first: Option<Bytes>,
    source: S,
    /// When the caller's credentials expire (boxed: most streams have none).
    ends: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl<S: Source> Body for SseBody<S> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(ends) = &mut this.ends {
            if ends.as_mut().poll(cx).is_ready() {
                this.ends = None;
                this.done = true;
                return Poll::Ready(None);
            }
        }
        if let Some(first) = &mut this.first {
            let piece = if first.len() > FIRST_PIECE {
                first.split_to(FIRST_PIECE)
            } else {
                std::mem::take(first)
            };
            if first.is_empty() {
                this.first = None;
            }
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        match this.source.poll_frame(cx) {
            Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The `200` response of an open stream: `first` (at least [`OPEN`]), then what `source`
/// gives, until `expires` (never for `None`). Its head is what axum's `Sse` sent:
/// `content-type: text/event-stream` and `cache-control: no-cache`.
pub fn response<S: Source>(first: Bytes, source: S, expires: Option<SystemTime>) -> Response {
    let ends = expires.map(|t| {
        let left = t.duration_since(SystemTime::now()).unwrap_or_default();
        Box::pin(tokio::time::sleep(left))
    });
    let body = SseBody {
        first: Some(first),
        source,
        ends,
        done: false,
    };
    let mut res = Response::new(axum::body::Body::new(body));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap_or_default()
    }

    #[test]
    fn fields_in_call_order_and_a_blank_line() {
        let e = Event::new().id("ab12-7").data(b"{\"x\":1}").finish();
        assert_eq!(text(e), "id: ab12-7\ndata: {\"x\":1}\n\n");
        let e = Event::new().event("gap").id("ab12-9").data(b"{}").finish();
        assert_eq!(text(e), "event: gap\nid: ab12-9\ndata: {}\n\n");
        let e = Event::new()
            .id("urn:1")
            .data(b"hi")
            .event("upd")
            .retry(1500)
            .finish();
        assert_eq!(text(e), "id: urn:1\ndata: hi\nevent: upd\nretry: 1500\n\n");
        assert_eq!(text(Event::new().comment("open").finish()), ": open\n\n");
        assert_eq!(text(Event::new().finish()), "\n");
        assert_eq!(OPEN, b": open\n\n");
    }

    #[test]
    fn data_is_one_line_per_line() {
        let d = |s: &str| text(Event::new().data(s.as_bytes()).finish());
        assert_eq!(d("a\nb"), "data: a\ndata: b\n\n");
        assert_eq!(d("a\rb"), "data: a\ndata: b\n\n");
        assert_eq!(d("a\r\nb"), "data: a\ndata: b\n\n");
        assert_eq!(d("a\n\nb"), "data: a\ndata: \ndata: b\n\n");
        assert_eq!(d("a\n"), "data: a\ndata: \n\n");
        assert_eq!(d("\n"), "data: \ndata: \n\n");
        assert_eq!(d("a\r"), "data: a\ndata: \n\n");
        assert_eq!(d("a\r\r\nb"), "data: a\ndata: \ndata: b\n\n");
        assert_eq!(d("data: x"), "data: data: x\n\n");
        // No data, no data line (a browser does not dispatch it).
        assert_eq!(d(""), "\n");
    }

    #[test]
    fn one_line_fields_cannot_break_the_framing() {
        let e = Event::new()
            .id("a\nb")
            .event("x\r\ndata: evil")
            .comment("c\nd")
            .finish();
        assert_eq!(text(e), "id: a\nevent: x\n: c\n\n");
        assert_eq!(text(Event::new().id("a\0b").finish()), "id: a\n\n");
    }

    #[test]
    fn several_events_in_one_frame() {
        let mut out = Vec::new();
        Event::new().data(b"1").finish_into(&mut out);
        Event::new().id("2").data(b"2").finish_into(&mut out);
        assert_eq!(out, b"data: 1\n\nid: 2\ndata: 2\n\n");
    }

    /// Frames a source gives, in order, then the end; and the credentials' deadline ends it.
    #[tokio::test]
    async fn body_sends_first_then_the_source_until_it_ends() {
        use http_body_util::BodyExt;
        struct Two(u8);
        impl Source for Two {
            fn poll_frame(&mut self, _: &mut Context<'_>) -> Poll<Option<Bytes>> {
                self.0 += 1;
                Poll::Ready((self.0 <= 2).then(|| Event::new().data(&[b'0' + self.0]).finish()))
            }
        }
        let res = response(Bytes::from_static(OPEN), Two(0), None);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        assert_eq!(res.headers().len(), 2);
        assert_eq!(res.headers()["cache-control"], "no-cache");
        let body = res.into_body().collect().await.map(|b| b.to_bytes());
        assert_eq!(
            body.ok().map(text).as_deref(),
            Some(": open\n\ndata: 1\n\ndata: 2\n\n")
        );

        // A long first buffer goes out in bounded pieces, whole.
        let mut long = Vec::new();
        for i in 0..5000 {
            Event::new()
                .id(&i.to_string())
                .data(b"0123456789")
                .finish_into(&mut long);
        }
        let mut body = response(Bytes::from(long.clone()), Two(2), None).into_body();
        let mut got = Vec::new();
        while let Some(Ok(f)) = body.frame().await {
            let Ok(d) = f.into_data() else { break };
            assert!(!d.is_empty() && d.len() <= FIRST_PIECE);
            got.extend_from_slice(&d);
        }
        assert!(long.len() > 2 * FIRST_PIECE);
        assert_eq!(got, long);

        struct Never;
        impl Source for Never {
            fn poll_frame(&mut self, _: &mut Context<'_>) -> Poll<Option<Bytes>> {
                Poll::Pending
            }
        }
        // Credentials that expire in 200 ms end a stream that has nothing more to send.
        let soon = SystemTime::now() + std::time::Duration::from_millis(200);
        let res = response(Bytes::from_static(OPEN), Never, Some(soon));
        let body =
            tokio::time::timeout(std::time::Duration::from_secs(5), res.into_body().collect())
                .await;
        let body = body.ok().and_then(Result::ok).map(|b| b.to_bytes());
        assert_eq!(body.as_deref(), Some(OPEN));
    }
}
