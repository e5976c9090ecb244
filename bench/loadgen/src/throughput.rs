//! `throughput`: one publisher -> N subscribers on one topic, a fixed message
//! count at QoS 0 or 1; delivered msgs/s measured at the subscribers, from the
//! first publish to the last delivery.
//!
//! Two kinds of client (`--client`):
//! * `raw` (the default): the minimal MQTT 3.1.1 client of [`crate::raw`].
//!   The publisher writes its PUBLISH packets in batches of about 16 KiB (QoS 1:
//!   within a window of `--inflight` unacknowledged packet ids, freed by a
//!   reader task as PUBACKs arrive); each subscriber reads 64 KiB at a time and
//!   counts the PUBLISH packets in it, acknowledging QoS 1 ones in one write
//!   per read. The load generator shares the machine's two CPUs with the
//!   broker under test, so its own cost per message is kept small: this way a
//!   broker that uses both CPUs is not measured against its load generator.
//! * `rumqttc`: rumqttc 0.25 clients (one event loop per client). They cost
//!   about 3.5-4 µs of CPU per message on this machine, publisher and
//!   subscriber together. Recorded runs used them until BENCHMARKS.md's
//!   "2026-12-04 (late night)".
//!
//! Both print the same `RESULT` line.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use rumqttc::{AsyncClient, MqttOptions, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{watch, Semaphore};

use crate::{raw, run_id, to_qos, Cli, Loops};

/// Which MQTT client implementation drives the run.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Raw,
    Rumqttc,
}

#[derive(clap::Args, Debug, Clone, Copy)]
pub struct ThroughputOpts {
    /// QoS for both the publish and the subscription (0 or 1).
    #[arg(long, default_value_t = 0)]
    pub qos: u8,
    /// Number of subscribers (each its own connection).
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Messages published (each subscriber should receive all of them).
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Publisher's max in-flight QoS 1 messages.
    #[arg(long, default_value_t = 100)]
    pub inflight: u16,
    /// Stop waiting for deliveries after this many seconds without progress.
    #[arg(long, default_value_t = 5)]
    pub idle_timeout: u64,
    /// Subscribers hold persistent sessions (Clean Session 0), so the broker keeps what
    /// it queues for them (a broker with a durable store writes it to disk).
    #[arg(long)]
    pub persistent: bool,
    /// The MQTT client implementation.
    #[arg(long, value_enum, default_value_t = Client::Raw)]
    pub client: Client,
}

/// What the clients of one run count, shared with their tasks.
struct Counters {
    base: Instant,
    /// Per subscriber.
    received: Vec<AtomicU64>,
    /// Last delivery, in ns since `base`.
    last_rx_ns: AtomicU64,
    puback: AtomicU64,
    errors: Arc<AtomicUsize>,
    /// Set before the final DISCONNECTs: errors after that are expected.
    closing: Arc<AtomicBool>,
}

impl Counters {
    fn delivered(&self, i: usize, n: u64) {
        self.received[i].fetch_add(n, Ordering::Relaxed);
        self.last_rx_ns
            .fetch_max(self.base.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    fn total(&self) -> u64 {
        self.received
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// A client failed: counted and printed unless the run is closing.
    fn failed(&self, who: &str, e: impl std::fmt::Display) {
        if !self.closing.load(Ordering::SeqCst) {
            eprintln!("{who}: {e}");
            self.errors.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The publishing side, whichever client it is.
enum Publisher {
    Raw {
        tx: OwnedWriteHalf,
        window: Arc<Semaphore>,
    },
    Rumqttc(AsyncClient),
}

pub async fn throughput(cli: &Cli, o: ThroughputOpts) -> Result<()> {
    if o.subscribers == 0 || o.messages == 0 {
        bail!("need at least one subscriber and one message");
    }
    to_qos(o.qos)?;
    if o.qos > 1 && o.client == Client::Raw {
        bail!("the raw clients publish and subscribe at QoS 0 or 1 (--client rumqttc for QoS 2)");
    }
    let id = run_id();
    let topic = format!("bench/{id}");
    let (stop_tx, stop_rx) = watch::channel(false);
    let c = Arc::new(Counters {
        base: Instant::now(),
        received: (0..o.subscribers).map(|_| AtomicU64::new(0)).collect(),
        last_rx_ns: AtomicU64::new(0),
        puback: AtomicU64::new(0),
        errors: Arc::new(AtomicUsize::new(0)),
        closing: Arc::new(AtomicBool::new(false)),
    });
    let loops = Loops {
        stop: stop_rx.clone(),
        closing: c.closing.clone(),
        errors: c.errors.clone(),
    };

    let (subs, mut publisher) = match o.client {
        Client::Raw => {
            let addr = crate::resolve(cli).await?;
            for i in 0..o.subscribers {
                let cid = format!("lg-s-{id}-{i}");
                let s = tokio::time::timeout(SETUP_WAIT, async {
                    let mut s = raw::connect(addr, &cid, 30, !o.persistent).await?;
                    raw::subscribe(&mut s, 1, &topic, o.qos).await?;
                    anyhow::Ok(s)
                })
                .await
                .map_err(|_| anyhow!("subscriber {i}: no SUBACK within {SETUP_WAIT:?}"))??;
                tokio::spawn(raw_subscriber(s, i, c.clone(), stop_rx.clone()));
            }
            let pub_addr = SocketAddr::new(addr.ip(), cli.pub_port.unwrap_or(cli.port));
            (
                Vec::new(),
                raw_publisher(pub_addr, &id, o.inflight, &c, &stop_rx).await?,
            )
        }
        Client::Rumqttc => {
            let subs = rumqttc_subscribers(cli, &o, &id, &topic, &c, &loops).await?;
            (subs, rumqttc_publisher(cli, &o, &id, &c, &loops).await?)
        }
    };

    let start = c.base.elapsed();
    let sent = match publish(&mut publisher, &topic, &o).await {
        Ok(n) => n,
        Err((n, e)) => {
            // The RESULT line still follows, with status=client-error.
            c.failed("publisher", e);
            n
        }
    };
    let publish_done = c.base.elapsed();

    // Wait for deliveries: done, no progress for idle_timeout, or failure.
    let expected = o.messages * o.subscribers as u64;
    let mut last_total = 0u64;
    let mut last_progress = Instant::now();
    let status = loop {
        let total = c.total();
        if total >= expected {
            break "ok";
        }
        if total != last_total {
            last_total = total;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(o.idle_timeout) {
            break "incomplete";
        }
        if c.errors.load(Ordering::SeqCst) > 0 {
            break "client-error";
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Let QoS 1 acks drain a moment (bounded), for the puback count.
    if o.qos > 0 {
        let t = Instant::now();
        while c.puback.load(Ordering::Relaxed) < sent && t.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    let delivered = c.total();
    let min_sub = c
        .received
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .min()
        .unwrap_or(0);
    let end = Duration::from_nanos(c.last_rx_ns.load(Ordering::Relaxed));
    let secs = end.saturating_sub(start).as_secs_f64().max(1e-9);
    let pub_secs = (publish_done - start).as_secs_f64().max(1e-9);
    println!(
        "RESULT mode=throughput label={} status={} qos={} subscribers={} messages={} payload={} \
         published={} expected={} delivered={} lost={} min_per_sub={} pubacks={} elapsed_s={:.3} \
         msgs_per_s={:.0} publish_rate={:.0} persistent={} client={:?}",
        cli.label,
        status,
        o.qos,
        o.subscribers,
        o.messages,
        o.payload,
        sent,
        expected,
        delivered,
        expected.saturating_sub(delivered),
        min_sub,
        c.puback.load(Ordering::Relaxed),
        secs,
        delivered as f64 / secs,
        sent as f64 / pub_secs,
        o.persistent,
        o.client,
    );

    // Best-effort clean disconnect, bounded.
    c.closing.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        match &mut publisher {
            Publisher::Raw { tx, .. } => {
                let _ = tx.write_all(&[0xE0, 0x00]).await;
            }
            Publisher::Rumqttc(p) => {
                let _ = p.disconnect().await;
            }
        }
        for s in &subs {
            let _ = s.disconnect().await;
        }
        let _ = stop_tx.send(true);
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    if status == "client-error" {
        bail!("client error during the run");
    }
    Ok(())
}

/// Publishes `o.messages` messages; on failure, how many went out and why.
async fn publish(
    p: &mut Publisher,
    topic: &str,
    o: &ThroughputOpts,
) -> std::result::Result<u64, (u64, anyhow::Error)> {
    let payload = vec![b'x'; o.payload];
    match p {
        Publisher::Raw { tx, window } => {
            let idle = Duration::from_secs(o.idle_timeout);
            raw_publish(tx, window, topic, &payload, o.qos, o.messages, idle).await
        }
        Publisher::Rumqttc(client) => {
            let (qos, payload) = (to_qos(o.qos).map_err(|e| (0, e))?, Bytes::from(payload));
            for sent in 0..o.messages {
                client
                    .publish_bytes(topic.to_string(), qos, false, payload.clone())
                    .await
                    .map_err(|e| (sent, e.into()))?;
            }
            Ok(o.messages)
        }
    }
}

// --- raw clients ---------------------------------------------------------------

/// Bytes the raw publisher writes at a time (whole packets).
const BATCH_BYTES: usize = 16 * 1024;
/// Longest a raw client waits for its CONNACK and SUBACK.
const SETUP_WAIT: Duration = Duration::from_secs(30);

/// The raw publisher: connected, its PUBACK reader running (it returns a permit of `window`
/// per PUBACK).
async fn raw_publisher(
    addr: SocketAddr,
    id: &str,
    inflight: u16,
    c: &Arc<Counters>,
    stop: &watch::Receiver<bool>,
) -> Result<Publisher> {
    let s = tokio::time::timeout(
        SETUP_WAIT,
        raw::connect(addr, &format!("lg-p-{id}"), 30, true),
    )
    .await
    .map_err(|_| anyhow!("publisher: no CONNACK within {SETUP_WAIT:?}"))??;
    let (rx, tx) = s.into_split();
    let window = Arc::new(Semaphore::new(inflight.max(1) as usize));
    tokio::spawn(raw_pubacks(rx, window.clone(), c.clone(), stop.clone()));
    Ok(Publisher::Raw { tx, window })
}

/// Writes `n` PUBLISH packets, `BATCH_BYTES` at a time; at QoS 1 each takes a permit of
/// `window` (packet ids cycle through 1..=65535, the window being far smaller), failing when
/// no PUBACK frees one for `idle`.
async fn raw_publish(
    tx: &mut OwnedWriteHalf,
    window: &Semaphore,
    topic: &str,
    payload: &[u8],
    qos: u8,
    n: u64,
    idle: Duration,
) -> std::result::Result<u64, (u64, anyhow::Error)> {
    let packet = raw::publish_packet(topic, payload, qos, 0);
    let pid_at = raw::publish_pid_at(&packet, topic.len());
    let per_batch = (BATCH_BYTES / packet.len()).max(1) as u64;
    let mut batch = Vec::with_capacity(packet.len() * per_batch as usize);
    let (mut sent, mut pid) = (0u64, 0u16);
    while sent < n {
        let mut k = (n - sent).min(per_batch);
        if qos > 0 {
            // At least one permit (waiting for a PUBACK if need be), then all that are free.
            let first = tokio::time::timeout(idle, window.acquire())
                .await
                .map_err(|_| (sent, anyhow!("no PUBACK for {idle:?}")))?
                .map_err(|e| (sent, e.into()))?;
            first.forget();
            let more = (window.available_permits() as u64).min(k - 1);
            if more > 0 {
                if let Ok(p) = window.try_acquire_many(more as u32) {
                    p.forget();
                }
            }
            k = 1 + more;
        }
        batch.clear();
        for _ in 0..k {
            let at = batch.len();
            batch.extend_from_slice(&packet);
            if qos > 0 {
                pid = pid % u16::MAX + 1;
                batch[at + pid_at..at + pid_at + 2].copy_from_slice(&pid.to_be_bytes());
            }
        }
        tx.write_all(&batch).await.map_err(|e| (sent, e.into()))?;
        sent += k;
    }
    Ok(sent)
}

/// Reads what `rx` has into `buf`, making room for up to 64 KiB first (`read_buf` alone
/// would read 64 bytes at a time once the buffer's spare room is used up).
async fn read_more(rx: &mut OwnedReadHalf, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(64 * 1024);
    }
    rx.read_buf(buf).await
}

/// Counts the publisher's PUBACKs, one window permit each.
async fn raw_pubacks(
    mut rx: OwnedReadHalf,
    window: Arc<Semaphore>,
    c: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            r = read_more(&mut rx, &mut buf) => match r {
                Ok(0) => { c.failed("publisher", "connection closed"); break; }
                Ok(_) => {
                    let mut acks = 0usize;
                    while let Some((h, body)) = raw::split_packet(&mut buf) {
                        if h >> 4 == 4 && body.len() == 2 {
                            acks += 1;
                        }
                    }
                    c.puback.fetch_add(acks as u64, Ordering::Relaxed);
                    window.add_permits(acks);
                }
                Err(e) => { c.failed("publisher", e); break; }
            }
        }
    }
}

/// Counts what subscriber `i` receives, acknowledging QoS 1 PUBLISHes (one write per read).
async fn raw_subscriber(
    s: tokio::net::TcpStream,
    i: usize,
    c: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let (mut rx, mut tx) = s.into_split();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut acks = Vec::new();
    let who = format!("subscriber {i}");
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            r = read_more(&mut rx, &mut buf) => match r {
                Ok(0) => { c.failed(&who, "connection closed"); break; }
                Ok(_) => {
                    let mut n = 0;
                    while let Some((h, body)) = raw::split_packet(&mut buf) {
                        if h >> 4 == 3 {
                            n += 1;
                            if let Some(ack) = raw::puback_for(h, &body) {
                                acks.extend_from_slice(&ack);
                            }
                        }
                    }
                    if n > 0 {
                        c.delivered(i, n);
                    }
                    if !acks.is_empty() {
                        if let Err(e) = tx.write_all(&acks).await {
                            c.failed(&who, e);
                            break;
                        }
                        acks.clear();
                    }
                }
                Err(e) => { c.failed(&who, e); break; }
            }
        }
    }
    let _ = tx.write_all(&[0xE0, 0x00]).await;
}

// --- rumqttc clients -------------------------------------------------------------

/// rumqttc subscribers, each with its SUBACK in (30 s at most).
async fn rumqttc_subscribers(
    cli: &Cli,
    o: &ThroughputOpts,
    id: &str,
    topic: &str,
    c: &Arc<Counters>,
    loops: &Loops,
) -> Result<Vec<AsyncClient>> {
    let qos = to_qos(o.qos)?;
    let subacked = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::with_capacity(o.subscribers);
    for i in 0..o.subscribers {
        let mut opts = MqttOptions::new(format!("lg-s-{id}-{i}"), cli.host.clone(), cli.port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(!o.persistent);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, el) = AsyncClient::new(opts, 64);
        client.subscribe(topic, qos).await?;
        clients.push(client);
        let (c, subacked) = (c.clone(), subacked.clone());
        loops.drive(el, format!("subscriber {i}"), move |p| match p {
            Packet::Publish(_) => c.delivered(i, 1),
            Packet::SubAck(_) => {
                subacked.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        });
    }
    let t = Instant::now();
    while subacked.load(Ordering::SeqCst) < o.subscribers {
        if c.errors.load(Ordering::SeqCst) > 0 {
            bail!("a subscriber failed before SUBACK");
        }
        if t.elapsed() > Duration::from_secs(30) {
            return Err(anyhow!(
                "only {}/{} SUBACKs after 30s",
                subacked.load(Ordering::SeqCst),
                o.subscribers
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(clients)
}

/// The rumqttc publisher, once its CONNACK is in.
async fn rumqttc_publisher(
    cli: &Cli,
    o: &ThroughputOpts,
    id: &str,
    c: &Arc<Counters>,
    loops: &Loops,
) -> Result<Publisher> {
    let mut opts = MqttOptions::new(
        format!("lg-p-{id}"),
        cli.host.clone(),
        cli.pub_port.unwrap_or(cli.port),
    );
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(true);
    opts.set_inflight(o.inflight.max(1));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let c = c.clone();
    let client = loops
        .publisher(opts, 1024, "publisher", move |p| {
            if let Packet::PubAck(_) = p {
                c.puback.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await
        .context("publisher")?;
    Ok(Publisher::Rumqttc(client))
}
