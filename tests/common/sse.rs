//! The tests' one Server-Sent Events client: an `/events` response (reqwest) read event by
//! event, with comments (heartbeats) kept apart.
//!
//! [`Sse::open`] opens `/events?…` and asserts a 200 event stream; [`Sse::request`] sends any
//! request and hands back a refused response untouched. [`Sse::next`] returns the next event
//! (panics if the stream fails), [`Sse::next_json`] the next event's JSON data, telling an ended
//! stream from a quiet one.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

/// How long an expected event may take.
const T: Duration = Duration::from_secs(10);

/// One event.
#[derive(Debug, Clone, Default)]
pub struct Ev {
    /// `event:` field; empty for the default ("message").
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl Ev {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {:?}", self.data))
    }
    pub fn is_gap(&self) -> bool {
        self.event == "gap"
    }
    pub fn payload(&self) -> String {
        self.json()["payload"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    /// The number after the epoch in the event id.
    pub fn seq(&self) -> u64 {
        id_seq(self.id.as_deref().expect("event without id"))
    }
}

/// The number after the epoch in an event id (`<epoch>-<n>`).
pub fn id_seq(id: &str) -> u64 {
    id.rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("odd event id {id:?}"))
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// What reading the stream gave.
#[derive(Debug)]
pub enum Read {
    Event(Ev),
    /// Nothing within the time given.
    Quiet,
    /// The server ended the stream.
    Ended,
    /// The connection failed.
    Failed(String),
}

/// An open event stream.
pub struct Sse {
    stream: ByteStream,
    buf: Vec<u8>,
    /// Comment lines seen (heartbeats).
    pub comments: Vec<String>,
}

impl Sse {
    /// `GET {base}/events?{query}` (with `Last-Event-ID`), which must answer 200 with an event
    /// stream.
    pub async fn open(base: &str, query: &str, last_id: Option<&str>) -> Sse {
        let mut req = reqwest::Client::new().get(format!("{base}/events?{query}"));
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id);
        }
        match Sse::request(req).await {
            Ok(s) => s,
            Err(r) => panic!("GET /events?{query}: {}", r.status()),
        }
    }

    /// `GET url` with `client` and one optional header: the stream when the answer is 200 (an
    /// event stream), else the response.
    pub async fn get(
        client: &reqwest::Client,
        url: &str,
        header: Option<(&str, String)>,
    ) -> Result<Sse, reqwest::Response> {
        let mut rq = client.get(url).timeout(Duration::from_secs(3600));
        if let Some((k, v)) = header {
            rq = rq.header(k, v);
        }
        Sse::request(rq).await
    }

    /// [`Sse::get`] that must succeed: the stream (panics with the status otherwise).
    pub async fn get_ok(client: &reqwest::Client, url: &str, header: (&str, String)) -> Sse {
        let r = Sse::get(client, url, Some(header)).await;
        r.unwrap_or_else(|r| panic!("SSE {url}: HTTP {}", r.status()))
    }

    /// Sends `rq`: the stream when the answer is 200 (an event stream), else the response.
    pub async fn request(rq: reqwest::RequestBuilder) -> Result<Sse, reqwest::Response> {
        let r = rq.send().await.expect("SSE request");
        if r.status() != 200 {
            return Err(r);
        }
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "content type {ct}");
        Ok(Sse {
            stream: Box::pin(r.bytes_stream()),
            buf: Vec::new(),
            comments: Vec::new(),
        })
    }

    /// The next event (not a comment), or why there is none.
    pub async fn read(&mut self, timeout: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = find_blank_line(&self.buf) {
                let block: Vec<u8> = self.buf.drain(..end.1).collect();
                let text = String::from_utf8(block[..end.0].to_vec()).expect("UTF-8 SSE");
                let mut ev = Ev::default();
                let mut data: Vec<String> = Vec::new();
                let mut any = false;
                for line in text.split('\n') {
                    let line = line.strip_suffix('\r').unwrap_or(line);
                    if let Some(c) = line.strip_prefix(':') {
                        self.comments.push(c.trim().to_string());
                        continue;
                    }
                    let (k, v) = line.split_once(':').unwrap_or((line, ""));
                    let v = v.strip_prefix(' ').unwrap_or(v);
                    any = true;
                    match k {
                        "event" => ev.event = v.to_string(),
                        "id" => ev.id = Some(v.to_string()),
                        "data" => data.push(v.to_string()),
                        _ => {}
                    }
                }
                if any {
                    ev.data = data.join("\n");
                    return Read::Event(ev);
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(b))) => self.buf.extend_from_slice(&b),
                Ok(Some(Err(e))) => return Read::Failed(e.to_string()),
                Ok(None) => return Read::Ended,
                Err(_) => return Read::Quiet,
            }
        }
    }

    /// The next event (not a comment), or None when `timeout` passes or the stream ends;
    /// panics if the connection fails.
    pub async fn next(&mut self, timeout: Duration) -> Option<Ev> {
        match self.read(timeout).await {
            Read::Event(e) => Some(e),
            Read::Failed(e) => panic!("SSE stream failed: {e}"),
            Read::Quiet | Read::Ended => None,
        }
    }

    /// The next event's data that is JSON (others are skipped); `Err(true)` when the stream
    /// ended (or failed), `Err(false)` on timeout.
    pub async fn next_json(&mut self, timeout: Duration) -> Result<Value, bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                Read::Event(e) => {
                    if let Ok(v) = serde_json::from_str(&e.data) {
                        return Ok(v);
                    }
                }
                Read::Quiet => return Err(false),
                Read::Ended | Read::Failed(_) => return Err(true),
            }
        }
    }

    pub async fn expect(&mut self, what: &str) -> Ev {
        match self.next(T).await {
            Some(e) => e,
            None => panic!("no SSE event ({what}) within {T:?}"),
        }
    }

    /// Asserts nothing but comments arrives within `d`.
    pub async fn expect_quiet(&mut self, d: Duration) {
        if let Some(e) = self.next(d).await {
            panic!("unexpected SSE event: {e:?}");
        }
    }

    /// Topics of events until one on `end_topic`.
    pub async fn until(&mut self, end_topic: &str) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            match self.next_json(T).await {
                Ok(v) => {
                    let t = v["topic"].as_str().unwrap_or_default().to_string();
                    if t == end_topic {
                        return got;
                    }
                    got.push(t);
                }
                Err(ended) => panic!("SSE: no {end_topic} (ended: {ended}); got {got:?}"),
            }
        }
    }
}

/// (end of the block, end of the separator) of the first blank line.
fn find_blank_line(b: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}
