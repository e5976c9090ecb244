//! The bridge's view of the message stream: subscriptions, a bounded history, and fan-out to
//! Server-Sent Events streams and long polls.
//!
//! Data flow: one in-process broker session ([`broker::client::LocalClient`]) subscribes to the
//! filters that HTTP streams ask for (QoS 0; the bridge is one subscriber however many streams
//! share a filter). Every message it receives gets the next event id, goes into the history ring
//! (bounded by count and age), and is offered to each stream whose filters match, through that
//! stream's bounded channel: a stream that falls behind loses messages and is told so (a gap
//! event), the hub never waits for it. A filter stays subscribed for the history age after its
//! last stream leaves, so a client that reconnects with `Last-Event-ID` within that time gets
//! exactly what it missed; when the history cannot prove that, the caller is told to resync.
//!
//! Filters are accounted to callers (token subject, else address): one caller may follow at most
//! `bridge.max_filters_per_caller` distinct filters over its open streams, and at most as many of
//! the filters it left linger for replay — past that its oldest lingering filter is released at
//! once — so no caller can fill the bridge with filters that others pay for.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker::client::{ClientError, LocalClient, Received};
use broker::codec::{QoS, SubscribeReasonCode};
use broker::topic;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::settings::BridgeSettings;

/// One message as the bridge saw it.
#[derive(Debug)]
pub struct Event {
    pub id: u64,
    pub topic: String,
    pub payload: Bytes,
    pub content_type: Option<String>,
    pub user_properties: Vec<(String, String)>,
    pub at: Instant,
    /// This event as an `/events` SSE frame, built once for however many streams carry it.
    pub frame: std::sync::OnceLock<Bytes>,
}

struct FilterState {
    /// Every message on this filter with an id ≥ `since` has been seen.
    since: u64,
    streams: HashSet<u64>,
    idle_since: Option<Instant>,
    /// The caller whose leaving made this filter idle: it lingers on that caller's account.
    left_by: Option<String>,
    /// Unsubscribe at the next sweep, without waiting for the linger time.
    release: bool,
}

/// What one caller holds in the hub.
#[derive(Default)]
struct CallerUse {
    /// Filters its open streams follow, with how many of its streams follow each.
    active: HashMap<String, usize>,
    /// Filters it left that still linger, oldest first.
    lingering: VecDeque<String>,
}

struct StreamEntry {
    filters: Vec<String>,
    /// Whose account the stream's filters are on (`None`: the bridge's own, unlimited).
    caller: Option<String>,
    /// Messages the node accepted before this sequence number are not for this stream: it was
    /// opened after they were published (and reads retained state from the store instead).
    /// 0 for a stream that resumes from `Last-Event-ID`, which is owed everything after it.
    after: u64,
    tx: crate::feed::Sender<Arc<Event>>,
}

struct State {
    next_id: u64,
    history: VecDeque<Arc<Event>>,
    filters: HashMap<String, FilterState>,
    streams: HashMap<u64, StreamEntry>,
    next_stream: u64,
    callers: HashMap<String, CallerUse>,
}

impl State {
    /// Takes `f` off the lingering account of whoever left it.
    fn unlinger(&mut self, f: &str) {
        let Some(fs) = self.filters.get_mut(f) else {
            return;
        };
        fs.release = false;
        let Some(c) = fs.left_by.take() else { return };
        if let Some(u) = self.callers.get_mut(&c) {
            u.lingering.retain(|g| g != f);
            if u.active.is_empty() && u.lingering.is_empty() {
                self.callers.remove(&c);
            }
        }
    }
}

/// Shared hub.
pub struct Hub {
    client: LocalClient,
    /// Distinguishes this process's event ids from another run's.
    pub epoch: String,
    settings: BridgeSettings,
    state: Mutex<State>,
    /// Serializes broker SUBSCRIBE/UNSUBSCRIBE so a sweep never undoes a new attach.
    ops: tokio::sync::Mutex<()>,
    /// Wakes the sweep when a filter is released before its linger time.
    sweep_now: tokio::sync::Notify,
}

/// Why a replay from `Last-Event-ID` is not exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap(pub &'static str);

/// A stream's registration; unregisters on drop.
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    pub rx: crate::feed::Receiver<Arc<Event>>,
}

impl Subscription {
    /// The hub this stream is registered with.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Messages dropped because the stream was full, not yet reported. While it is not zero
    /// the hub drops this stream's messages; report it (swap to 0) only once `rx` is empty.
    pub fn lagged(&self) -> &AtomicU64 {
        self.rx.lagged()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let max = self.hub.settings.max_filters_per_caller;
        let mut guard = self.hub.lock();
        let st = &mut *guard;
        let Some(e) = st.streams.remove(&self.id) else {
            return;
        };
        let mut released = false;
        let mut account = e
            .caller
            .as_ref()
            .map(|c| st.callers.entry(c.clone()).or_default());
        for f in e.filters {
            let Some(fs) = st.filters.get_mut(&f) else {
                continue;
            };
            fs.streams.remove(&self.id);
            let idle = fs.streams.is_empty();
            if idle {
                fs.idle_since = Some(Instant::now());
                fs.left_by = e.caller.clone();
            }
            let Some(u) = account.as_mut() else { continue };
            if let Some(n) = u.active.get_mut(&f) {
                *n -= 1;
                if *n == 0 {
                    u.active.remove(&f);
                }
            }
            if idle {
                u.lingering.push_back(f);
            }
            // Past the caller's share, its oldest lingering filter goes now.
            while u.lingering.len() > max {
                let Some(old) = u.lingering.pop_front() else {
                    break;
                };
                if let Some(fs) = st.filters.get_mut(&old) {
                    fs.left_by = None;
                    fs.release = true;
                    released = true;
                }
            }
        }
        if let Some(c) = &e.caller {
            if st
                .callers
                .get(c)
                .is_some_and(|u| u.active.is_empty() && u.lingering.is_empty())
            {
                st.callers.remove(c);
            }
        }
        drop(guard);
        if released {
            self.hub.sweep_now.notify_one();
        }
    }
}

impl Hub {
    pub async fn start(
        edge: &Arc<broker::Edge>,
        settings: BridgeSettings,
    ) -> Result<Arc<Hub>, ClientError> {
        let (tx, rx) = mpsc::channel(4096);
        let epoch = format!("{:08x}", rand::random::<u32>());
        let client = LocalClient::connect(edge, &format!("rtw-bridge-{epoch}"), tx).await?;
        let hub = Arc::new(Hub {
            client,
            epoch,
            settings,
            state: Mutex::new(State {
                next_id: 1,
                history: VecDeque::new(),
                filters: HashMap::new(),
                streams: HashMap::new(),
                next_stream: 1,
                callers: HashMap::new(),
            }),
            ops: tokio::sync::Mutex::new(()),
            sweep_now: tokio::sync::Notify::new(),
        });
        tokio::spawn(run(hub.clone(), rx));
        tokio::spawn(sweep(Arc::downgrade(&hub)));
        tokio::spawn(heartbeat(Arc::downgrade(&hub)));
        Ok(hub)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open SSE streams and long polls.
    pub fn streams(&self) -> usize {
        self.lock().streams.len()
    }

    /// Messages in the replay history.
    pub fn history_len(&self) -> usize {
        self.lock().history.len()
    }

    /// The client the bridge publishes with.
    pub fn client(&self) -> &LocalClient {
        &self.client
    }

    /// Formats an event id for the wire.
    pub fn event_id(&self, id: u64) -> String {
        format!("{}-{}", self.epoch, id)
    }

    /// Parses a wire event id: `Ok(n)` for this process, `Err(Gap)` for another.
    pub fn parse_id(&self, s: &str) -> Result<u64, Gap> {
        let (epoch, n) = s
            .rsplit_once('-')
            .ok_or(Gap("Last-Event-ID is not an id this server gave"))?;
        if epoch != self.epoch {
            return Err(Gap("the server restarted since Last-Event-ID"));
        }
        n.parse()
            .map_err(|_| Gap("Last-Event-ID is not an id this server gave"))
    }

    /// Filters the bridge follows (for streams, or lingering for replay).
    pub fn filters(&self) -> usize {
        self.lock().filters.len()
    }

    /// Registers a stream on `filters` (subscribing the bridge where needed) on `caller`'s
    /// account (`None`: the bridge's own). With `since`, also returns the messages after it
    /// from the history, or a [`Gap`] when the history cannot prove it has all of them.
    pub async fn attach(
        self: &Arc<Self>,
        filters: &[String],
        since: Option<Result<u64, Gap>>,
        caller: Option<&str>,
    ) -> Result<(Subscription, Option<Result<Vec<Arc<Event>>, Gap>>, u64), ClientError> {
        let ops = self.ops.lock().await;
        let missing: Vec<String> = {
            let st = self.lock();
            if let Some(u) = caller.and_then(|c| st.callers.get(c)) {
                let max = self.settings.max_filters_per_caller;
                let new = filters.iter().filter(|f| !u.active.contains_key(*f));
                let follows = u.active.len();
                if follows + new.count() > max {
                    return Err(ClientError::Refused(format!(
                        "QuotaExceeded: this caller's open streams already follow {follows} \
                         topic filters; at most {max} ([bridge] max_filters_per_caller)"
                    )));
                }
            }
            filters
                .iter()
                .filter(|f| !st.filters.contains_key(*f))
                .cloned()
                .collect()
        };
        for f in &missing {
            match self.client.subscribe(f, QoS::AtMostOnce).await? {
                SubscribeReasonCode::Success(_) => {}
                other => return Err(ClientError::Refused(format!("{other:?}"))),
            }
            let mut st = self.lock();
            let since = st.next_id;
            st.filters.entry(f.clone()).or_insert(FilterState {
                since,
                streams: HashSet::new(),
                idle_since: Some(Instant::now()),
                left_by: None,
                release: false,
            });
        }
        let (tx, rx) = crate::feed::feed(self.settings.stream_buffer);
        let mut st = self.lock();
        // Read under the hub's lock: a message the hub numbers after this was accepted after
        // the stream existed or is owed to it by the replay below.
        let after = if since.is_some() {
            0
        } else {
            self.client.next_seq()
        };
        let id = st.next_stream;
        st.next_stream += 1;
        for f in filters {
            st.unlinger(f);
            if let Some(fs) = st.filters.get_mut(f) {
                fs.streams.insert(id);
                fs.idle_since = None;
            }
            if let Some(c) = caller {
                let u = st.callers.entry(c.to_string()).or_default();
                *u.active.entry(f.clone()).or_default() += 1;
            }
        }
        st.streams.insert(
            id,
            StreamEntry {
                filters: filters.to_vec(),
                caller: caller.map(str::to_string),
                after,
                tx,
            },
        );
        let head = st.next_id - 1;
        let replay = since.map(|since| since.and_then(|n| replay(&st, filters, n)));
        drop(st);
        drop(ops);
        Ok((
            Subscription {
                hub: self.clone(),
                id,
                rx,
            },
            replay,
            head,
        ))
    }

    /// The id of the newest event in the history that satisfies `pred` (a scan of the bounded
    /// history, newest first).
    pub fn find(&self, pred: impl Fn(&Event) -> bool) -> Option<u64> {
        self.lock()
            .history
            .iter()
            .rev()
            .find(|e| pred(e))
            .map(|e| e.id)
    }

    /// The id of the newest event (0 before the first).
    pub fn head(&self) -> u64 {
        self.lock().next_id - 1
    }

    /// The event numbered `id`, while it is in the history.
    pub fn event(&self, id: u64) -> Option<Arc<Event>> {
        let st = self.lock();
        let i = st.history.binary_search_by_key(&id, |e| e.id).ok()?;
        st.history.get(i).cloned()
    }

    fn trim(&self, st: &mut State) {
        let max_age = Duration::from_secs(self.settings.history_secs);
        while st.history.len() > self.settings.history_size
            || st.history.front().is_some_and(|e| e.at.elapsed() > max_age)
        {
            st.history.pop_front();
        }
    }
}

fn replay(st: &State, filters: &[String], n: u64) -> Result<Vec<Arc<Event>>, Gap> {
    // 0 (no id this server gives) asks for everything the history holds, without a claim that
    // nothing older was lost (Mercure's `Last-Event-ID: earliest`).
    if n == 0 {
        return Ok(st
            .history
            .iter()
            .filter(|e| filters.iter().any(|f| topic::matches(f, &e.topic)))
            .cloned()
            .collect());
    }
    if n >= st.next_id {
        return Err(Gap("Last-Event-ID is newer than this server's events"));
    }
    for f in filters {
        match st.filters.get(f) {
            Some(fs) if fs.since <= n + 1 => {}
            _ => return Err(Gap("this filter was not followed since Last-Event-ID")),
        }
    }
    let oldest = st.history.front().map_or(st.next_id, |e| e.id);
    if oldest > n + 1 {
        return Err(Gap("the history no longer reaches back to Last-Event-ID"));
    }
    Ok(st
        .history
        .iter()
        .filter(|e| e.id > n && filters.iter().any(|f| topic::matches(f, &e.topic)))
        .cloned()
        .collect())
}

/// Receives the bridge session's messages: numbers them, keeps them, fans them out.
async fn run(hub: Arc<Hub>, mut rx: mpsc::Receiver<Received>) {
    let mut targets: Vec<u64> = Vec::new();
    while let Some(Received { publish: p, seq }) = rx.recv().await {
        // The broker sends a new subscription the matching retained messages (retain flag
        // set; live messages reach the bridge with it cleared). They are not new messages:
        // streams read retained state from the store themselves.
        if p.retain {
            continue;
        }
        // Replies to the bridge's RPC requests reach this (internal) session too, through any
        // filter that matches them: they are for the waiting HTTP caller alone.
        if p.topic.starts_with(broker::REPLY_PREFIX.as_bytes()) {
            continue;
        }
        let props = p.properties.unwrap_or_default();
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let mut st = hub.lock();
        let id = st.next_id;
        st.next_id += 1;
        let ev = Arc::new(Event {
            id,
            topic,
            payload: p.payload,
            content_type: props.content_type,
            user_properties: props.user_properties,
            at: Instant::now(),
            frame: std::sync::OnceLock::new(),
        });
        st.history.push_back(ev.clone());
        hub.trim(&mut st);
        targets.clear();
        for (f, fs) in &st.filters {
            if !fs.streams.is_empty() && topic::matches(f, &ev.topic) {
                targets.extend(fs.streams.iter().copied());
            }
        }
        targets.sort_unstable();
        targets.dedup();
        for sid in &targets {
            if let Some(s) = st.streams.get(sid).filter(|s| seq >= s.after) {
                // Once a stream has lost a message, it gets nothing more until it has told
                // its client (the gap event), so the gap sits exactly where the hole is.
                let lagged = s.tx.lagged();
                if lagged.load(Ordering::Acquire) > 0 || s.tx.try_send(ev.clone()).is_err() {
                    lagged.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
    }
}

/// Rings the streams' heartbeat until the hub is gone: every `[bridge] heartbeat_secs`, each
/// stream's feed is told (a stream with nothing to send then sends a heartbeat). One clock for
/// every stream, rather than a timer in each: an idle stream holds none.
async fn heartbeat(hub: std::sync::Weak<Hub>) {
    let every = match hub.upgrade() {
        Some(h) => Duration::from_secs(h.settings.heartbeat_secs.max(1)),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        for s in hub.lock().streams.values() {
            s.tx.beat();
        }
    }
}

/// Unsubscribes filters nobody has followed for the history age, and ages out history.
async fn sweep(hub: std::sync::Weak<Hub>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        let Some(woken) = hub.upgrade() else { return };
        let now = async { woken.sweep_now.notified().await };
        tokio::select! {
            _ = tick.tick() => {}
            _ = now => {}
        }
        drop(woken);
        let Some(hub) = hub.upgrade() else { return };
        let linger = Duration::from_secs(hub.settings.history_secs);
        let _ops = hub.ops.lock().await;
        let idle: Vec<String> = {
            let mut st = hub.lock();
            hub.trim(&mut st);
            let idle: Vec<String> = st
                .filters
                .iter()
                .filter(|(_, fs)| {
                    fs.streams.is_empty()
                        && (fs.release || fs.idle_since.is_some_and(|t| t.elapsed() > linger))
                })
                .map(|(f, _)| f.clone())
                .collect();
            for f in &idle {
                st.unlinger(f);
                st.filters.remove(f);
            }
            idle
        };
        for f in idle {
            let _ = hub.client.unsubscribe(&f).await;
        }
    }
}
