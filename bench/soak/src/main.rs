//! rtw-soak: a bounded soak of realtime-web with a thousand mixed clients (see bench/soak.sh).
//!
//! Clients (default 1,000): MQTT 3.1.1 over TCP (40%), MQTT 5 over TCP (40%), MQTT 3.1.1 over
//! WebSocket (10%), SSE readers that also publish over HTTP (5%), RPC callers through the echo
//! example (5%). MQTT client i publishes QoS 1 (QoS 2 for every fourth MQTT 5 client) on
//! `soak/m/{i}` once per interval; client i+1 subscribes to it at the same QoS, so every message
//! crosses protocols and transports. Every message carries its sequence number.
//!
//! Lost = messages the broker acknowledged to their publisher (PUBACK / PUBCOMP) that the
//! subscriber never received, counted after publishing stops and a drain period. It must be 0.
//! Every 10 s a line reports throughput, errors and the server's RSS (from /proc/PID/status).
//! Bounded: `--secs` of load, then at most `--drain-secs`, then exit.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// MQTT port on 127.0.0.1.
    #[arg(long, default_value_t = 1883)]
    mqtt: u16,
    /// HTTP port on 127.0.0.1 (WebSocket /mqtt, SSE, /topics, /rpc).
    #[arg(long, default_value_t = 8080)]
    http: u16,
    /// Server PID for RSS samples.
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// How many of the clients are HTTP ones (SSE and RPC, half each); default a tenth.
    #[arg(long)]
    http_clients: Option<usize>,
    /// Seconds of load.
    #[arg(long, default_value_t = 600)]
    secs: u64,
    /// Milliseconds between two messages of one client.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Most seconds to wait for the last messages after publishing stops.
    #[arg(long, default_value_t = 15)]
    drain_secs: u64,
}

#[derive(Default)]
struct Stats {
    published: AtomicU64,
    acked: AtomicU64,
    received: AtomicU64,
    duplicates: AtomicU64,
    errors: AtomicU64,
    reconnects: AtomicU64,
    sse_posted: AtomicU64,
    sse_events: AtomicU64,
    rpc_ok: AtomicU64,
    rpc_failed: AtomicU64,
    rpc_ms_total: AtomicU64,
}

/// One topic: acknowledged sequence numbers (publisher side) and received ones (subscriber).
#[derive(Default)]
struct Flow {
    acked: Mutex<HashSet<u64>>,
    got: Mutex<HashSet<u64>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    V4,
    V5,
    Ws,
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stats = Arc::new(Stats::default());
    let n_http = args
        .http_clients
        .unwrap_or(args.clients / 10)
        .min(args.clients);
    let n_mqtt = args.clients - n_http;
    let n_sse = n_http / 2;
    let n_rpc = n_http - n_sse;
    let flows: Arc<Vec<Flow>> = Arc::new((0..n_mqtt).map(|_| Flow::default()).collect());
    let publishing = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicU64::new(0));
    println!(
        "soak: {} clients ({} MQTT: 3.1.1 / 5 / WebSocket; {n_sse} SSE; {n_rpc} RPC), {} s, one message per {} ms each",
        args.clients, n_mqtt, args.secs, args.interval_ms
    );
    let mut tasks = Vec::new();
    for i in 0..n_mqtt {
        let kind = match i % 9 {
            0..=3 => Kind::V4,
            4..=7 => Kind::V5,
            _ => Kind::Ws,
        };
        let a = args.clone();
        let (st, fl, p, s, r) = (
            stats.clone(),
            flows.clone(),
            publishing.clone(),
            stop.clone(),
            ready.clone(),
        );
        tasks.push(tokio::spawn(async move {
            mqtt_client(a, i, n_mqtt, kind, st, fl, p, s, r).await
        }));
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The HTTP clients: n_sse SSE readers, then n_rpc RPC callers (each numbered from 0).
    for k in 0..n_http {
        let (a, st, p, s) = (
            args.clone(),
            stats.clone(),
            publishing.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if k < n_sse {
                sse_client(a, k, st, p, s).await
            } else {
                rpc_client(a, k - n_sse, st, p, s).await
            }
        }));
    }
    // Every MQTT client connected and subscribed before the first message.
    let t0 = Instant::now();
    while ready.load(Relaxed) < n_mqtt as u64 {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "only {} of {n_mqtt} MQTT clients ready after 120 s",
            ready.load(Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("all {n_mqtt} MQTT clients subscribed in {:?}", t0.elapsed());
    publishing.store(true, Relaxed);
    let start = Instant::now();
    let mut rss = Vec::new();
    let mut last = 0;
    while start.elapsed() < Duration::from_secs(args.secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let secs = start.elapsed().as_secs();
        if secs / 10 != last / 10 || start.elapsed() >= Duration::from_secs(args.secs) {
            last = secs;
            let r = args.pid.map(rss_mb).unwrap_or(0.0);
            rss.push(r);
            println!(
                "t={secs:>4}s rss={r:.0}MB published={} acked={} received={} dup={} errors={} reconnects={} sse={}/{} rpc_ok={} rpc_failed={}",
                stats.published.load(Relaxed),
                stats.acked.load(Relaxed),
                stats.received.load(Relaxed),
                stats.duplicates.load(Relaxed),
                stats.errors.load(Relaxed),
                stats.reconnects.load(Relaxed),
                stats.sse_events.load(Relaxed),
                stats.sse_posted.load(Relaxed),
                stats.rpc_ok.load(Relaxed),
                stats.rpc_failed.load(Relaxed),
            );
        }
    }
    publishing.store(false, Relaxed);
    // Drain: wait until every acknowledged message has arrived, or the drain time is up.
    let drain = Instant::now();
    let lost = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let lost = lost(&flows);
        if lost == 0 || drain.elapsed() > Duration::from_secs(args.drain_secs) {
            break lost;
        }
    };
    stop.store(true, Relaxed);
    for t in tasks {
        t.abort();
    }
    let rpc_ok = stats.rpc_ok.load(Relaxed);
    let max_rss = rss.iter().copied().fold(0.0, f64::max);
    let first_rss = rss.first().copied().unwrap_or(0.0);
    let last_rss = rss.last().copied().unwrap_or(0.0);
    println!("---");
    println!(
        "summary: secs={} clients={} published={} acked={} received={} duplicates={} lost_qos_ge1={} errors={} reconnects={} sse_events={} sse_posted={} rpc_ok={} rpc_failed={} rpc_mean_ms={:.1} rss_first_mb={:.0} rss_max_mb={:.0} rss_last_mb={:.0}",
        args.secs,
        args.clients,
        stats.published.load(Relaxed),
        stats.acked.load(Relaxed),
        stats.received.load(Relaxed),
        stats.duplicates.load(Relaxed),
        lost,
        stats.errors.load(Relaxed),
        stats.reconnects.load(Relaxed),
        stats.sse_events.load(Relaxed),
        stats.sse_posted.load(Relaxed),
        rpc_ok,
        stats.rpc_failed.load(Relaxed),
        stats.rpc_ms_total.load(Relaxed) as f64 / rpc_ok.max(1) as f64,
        first_rss,
        max_rss,
        last_rss,
    );
    println!(
        "rss_samples_mb: {}",
        rss.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if lost > 0 {
        anyhow::bail!("{lost} acknowledged QoS >= 1 messages were never delivered");
    }
    Ok(())
}

fn lost(flows: &[Flow]) -> u64 {
    flows
        .iter()
        .map(|f| {
            let acked = f.acked.lock().unwrap();
            let got = f.got.lock().unwrap();
            acked.iter().filter(|s| !got.contains(s)).count() as u64
        })
        .sum()
}

/// An event of either rumqttc client (MQTT 5 or 3.1.1), as far as the soak cares.
/// `ev!(&result)` makes one from what `EventLoop::poll` returned, with `Event` and `P` (the
/// packet type) of the client's rumqttc module in scope: the two modules' types differ, the
/// shape of their events does not.
macro_rules! ev {
    ($ev:expr) => {
        match $ev {
            Ok(Event::Incoming(P::SubAck(_))) => Ev::SubAck,
            Ok(Event::Incoming(P::Publish(p))) => Ev::Publish(&p.payload),
            Ok(Event::Incoming(P::PubAck(_) | P::PubComp(_))) => Ev::Acked,
            Ok(_) => Ev::Other,
            Err(e) => Ev::Failed(e.to_string()),
        }
    };
}

/// `qos!(exactly_once)`: QoS 2 or 1, as the `QoS` type in scope (MQTT 5's or 3.1.1's).
macro_rules! qos {
    ($exactly_once:expr) => {
        if $exactly_once {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        }
    };
}

enum Ev<'a> {
    SubAck,
    Publish(&'a [u8]),
    /// PUBACK or PUBCOMP: the oldest message in flight is acknowledged.
    Acked,
    Other,
    Failed(String),
}

#[allow(clippy::too_many_arguments)]
async fn mqtt_client(
    a: Args,
    i: usize,
    n: usize,
    kind: Kind,
    st: Arc<Stats>,
    flows: Arc<Vec<Flow>>,
    publishing: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicU64>,
) {
    let id = format!("soak-{i}");
    let pub_topic = format!("soak/m/{i}");
    let from = (i + n - 1) % n;
    let sub_topic = format!("soak/m/{from}");
    let qos2 = kind == Kind::V5 && i.is_multiple_of(4);
    let sub_qos2 = kind == Kind::V5 && from.is_multiple_of(4);
    // Sequence numbers in flight, in publish order: acknowledgements come in that order.
    let inflight = Arc::new(Mutex::new(VecDeque::<u64>::new()));
    let ticker = Ticker::new(&a, publishing, stop.clone());
    let mut peer = Peer {
        st: &st,
        own: &flows[i],
        from: &flows[from],
        inflight: &inflight,
        ready: &ready,
        subscribed: false,
        label: String::new(),
    };
    if kind == Kind::V5 {
        use rumqttc::v5::mqttbytes::v5::Packet as P;
        use rumqttc::v5::mqttbytes::QoS;
        use rumqttc::v5::{AsyncClient, Event, MqttOptions};
        let mut o = MqttOptions::new(&id, "127.0.0.1", a.mqtt);
        o.set_keep_alive(Duration::from_secs(30));
        let (c, mut el) = AsyncClient::new(o, 64);
        let q = qos!(sub_qos2);
        let _ = c.subscribe(sub_topic.clone(), q).await;
        let pq = qos!(qos2);
        let pubber = ticker.spawn_publisher(st.clone(), inflight.clone(), move |seq| {
            let (c, t) = (c.clone(), pub_topic.clone());
            async move { c.publish(t, pq, false, seq.to_string()).await.is_ok() }
        });
        peer.label = format!("{id} (MQTT 5)");
        while !stop.load(Relaxed) {
            let ev = el.poll().await;
            peer.on(ev!(&ev)).await;
        }
        pubber.abort();
    } else {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet as P, QoS, Transport};
        let mut o = if kind == Kind::Ws {
            let mut o = MqttOptions::new(&id, format!("ws://127.0.0.1:{}/mqtt", a.http), a.http);
            o.set_transport(Transport::Ws);
            o
        } else {
            MqttOptions::new(&id, "127.0.0.1", a.mqtt)
        };
        o.set_keep_alive(Duration::from_secs(30));
        let (c, mut el) = AsyncClient::new(o, 64);
        let q = qos!(sub_qos2);
        let _ = c.subscribe(sub_topic.clone(), q).await;
        let pubber = ticker.spawn_publisher(st.clone(), inflight.clone(), move |seq| {
            let (c, t) = (c.clone(), pub_topic.clone());
            async move {
                c.publish(t, QoS::AtLeastOnce, false, seq.to_string())
                    .await
                    .is_ok()
            }
        });
        let transport = if kind == Kind::Ws { "WebSocket" } else { "TCP" };
        peer.label = format!("{id} (MQTT 3.1.1, {transport})");
        while !stop.load(Relaxed) {
            let ev = el.poll().await;
            peer.on(ev!(&ev)).await;
        }
        pubber.abort();
    }
}

/// Calls its closure with the next sequence number (1, 2, ...) once per `--interval-ms` while
/// `publishing` is set, until `stop`.
struct Ticker {
    interval: Duration,
    publishing: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Ticker {
    fn new(a: &Args, publishing: Arc<AtomicBool>, stop: Arc<AtomicBool>) -> Self {
        let interval = Duration::from_millis(a.interval_ms);
        Ticker {
            interval,
            publishing,
            stop,
        }
    }

    async fn run<F, Fut>(&self, mut each: F)
    where
        F: FnMut(u64) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut seq = 0u64;
        while !self.stop.load(Relaxed) {
            tokio::time::sleep(self.interval).await;
            if !self.publishing.load(Relaxed) {
                continue;
            }
            seq += 1;
            each(seq).await;
        }
    }

    /// An MQTT client's publisher task: `publish(seq)` sends one message and says whether the
    /// client took it. Acknowledgements come back in publish order, so each number is queued
    /// in `inflight` first.
    fn spawn_publisher<F, Fut>(
        self,
        st: Arc<Stats>,
        inflight: Arc<Mutex<VecDeque<u64>>>,
        publish: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn(u64) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        tokio::spawn(async move {
            self.run(|seq| {
                inflight.lock().unwrap().push_back(seq);
                let (sent, st) = (publish(seq), &st);
                async move {
                    if sent.await {
                        st.published.fetch_add(1, Relaxed);
                    }
                }
            })
            .await
        })
    }
}

/// The bookkeeping of one MQTT client: its own flow (what it published), the flow it
/// subscribes to, and the shared counters.
struct Peer<'a> {
    st: &'a Stats,
    own: &'a Flow,
    from: &'a Flow,
    inflight: &'a Mutex<VecDeque<u64>>,
    ready: &'a AtomicU64,
    subscribed: bool,
    label: String,
}

impl Peer<'_> {
    async fn on(&mut self, ev: Ev<'_>) {
        match ev {
            Ev::SubAck if !self.subscribed => {
                self.subscribed = true;
                self.ready.fetch_add(1, Relaxed);
            }
            Ev::Publish(payload) => got(self.st, self.from, payload),
            Ev::Acked => acked(self.st, self.own, self.inflight),
            Ev::SubAck | Ev::Other => {}
            Ev::Failed(e) => {
                if self.st.errors.fetch_add(1, Relaxed) < 20 {
                    eprintln!("{}: {e}", self.label);
                }
                self.st.reconnects.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn got(st: &Stats, flow: &Flow, payload: &[u8]) {
    let Some(seq) = std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        st.errors.fetch_add(1, Relaxed);
        return;
    };
    st.received.fetch_add(1, Relaxed);
    if !flow.got.lock().unwrap().insert(seq) {
        st.duplicates.fetch_add(1, Relaxed);
    }
}

fn acked(st: &Stats, flow: &Flow, inflight: &Mutex<VecDeque<u64>>) {
    if let Some(seq) = inflight.lock().unwrap().pop_front() {
        flow.acked.lock().unwrap().insert(seq);
        st.acked.fetch_add(1, Relaxed);
    }
}

/// One HTTP/1.1 request on a new connection: (status, body).
async fn request(port: u16, req: String) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out);
    // "HTTP/1.1 200 OK\r\n...\r\n\r\nbody"; no blank line: no body.
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).map_or(0, |s| s.parse().unwrap_or(0));
    Ok((status, body.to_string()))
}

/// An SSE reader of `soak/sse/{k}` that also publishes to it over HTTP once per interval.
async fn sse_client(
    a: Args,
    k: usize,
    st: Arc<Stats>,
    publishing: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let topic = format!("soak/sse/{k}");
    let reader = {
        let (st, stop, topic) = (st.clone(), stop.clone(), topic.clone());
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", a.http)).await else {
                    st.errors.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                let req = format!(
                    "GET /events?topic={topic}&retained=false HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
                );
                if s.write_all(req.as_bytes()).await.is_err() {
                    continue;
                }
                let mut lines = BufReader::new(s).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if l.starts_with("data:") && l.contains("\"topic\"") {
                        st.sse_events.fetch_add(1, Relaxed);
                    }
                }
                st.errors.fetch_add(1, Relaxed);
                st.reconnects.fetch_add(1, Relaxed);
            }
        })
    };
    let (ticker, port) = (Ticker::new(&a, publishing, stop), a.http);
    ticker
        .run(|seq| {
            let body = seq.to_string();
            let req = format!(
                "POST /topics/{topic}?qos=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let st = &st;
            async move {
                match request(port, req).await {
                    Ok((200, _)) => st.sse_posted.fetch_add(1, Relaxed),
                    _ => st.errors.fetch_add(1, Relaxed),
                };
            }
        })
        .await;
    reader.abort();
}

/// Calls `POST /rpc/soak/{k}` once per interval; the echo example answers with the same body.
async fn rpc_client(
    a: Args,
    k: usize,
    st: Arc<Stats>,
    publishing: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let (ticker, port) = (Ticker::new(&a, publishing, stop), a.http);
    ticker
        .run(|seq| {
            let body = format!("{k}-{seq}");
            let req = format!(
                "POST /rpc/soak/{k} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let st = &st;
            async move {
                let t = Instant::now();
                match request(port, req).await {
                    Ok((200, b)) if b == body => {
                        st.rpc_ok.fetch_add(1, Relaxed);
                        st.rpc_ms_total
                            .fetch_add(t.elapsed().as_millis() as u64, Relaxed);
                    }
                    _ => {
                        st.rpc_failed.fetch_add(1, Relaxed);
                        st.errors.fetch_add(1, Relaxed);
                    }
                }
            }
        })
        .await;
}
