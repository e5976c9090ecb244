//! rtw-loadgen: the MQTT load generator behind `bench/broker.sh`.
//!
//! Why hand-written rather than a crates.io tool: `mqtt-benchmark` (0.2.4)
//! only publishes (it never measures what subscribers receive) and `mqttwrk`
//! (0.2.0, its latest release) looks unmaintained (still on rumqttc 0.20 and
//! the deprecated structopt) and has neither a connection-storm measurement
//! nor machine-readable output. This tool covers
//! exactly the scenarios of the benchmark and prints one `RESULT` line of
//! `key=value` pairs per run, easy to parse from bash.
//!
//! Modes (subcommands):
//! * `throughput`  1 publisher -> N subscribers on one topic, fixed message
//!   count, QoS 0/1, rumqttc 0.25 clients. Reports delivered msgs/s measured at
//!   the subscribers (from the first publish to the last delivery).
//! * `idle-conns`  opens N idle MQTT connections and, given `--broker-pid`,
//!   reports the broker's VmRSS growth per connection.
//! * `conn-storm`  N clients released at once; reports CONNACKs per second.
//! * `tls-check`   rustls/webpki check of the development certificates.
//!
//! The connection modes use a minimal raw MQTT 3.1.1 client (one CONNECT
//! packet, one CONNACK, optional PINGREQ) on tokio sockets instead of rumqttc:
//! with 10,000 connections on a 2-core machine the client shares the CPU with
//! the broker, and rumqttc's per-connection event loop and buffers would make
//! the measurement mostly about the client.
//!
//! Every run is bounded: fixed counts, per-operation timeouts and a global
//! `--max-secs` deadline. Only connect to loopback brokers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

#[derive(Parser, Debug)]
#[command(
    name = "rtw-loadgen",
    about = "MQTT load generator for bench/broker.sh"
)]
struct Cli {
    /// Broker host (loopback only).
    #[arg(long, global = true, default_value = "127.0.0.1")]
    host: String,
    /// Broker MQTT port.
    #[arg(long, global = true, default_value_t = 1883)]
    port: u16,
    /// Hard deadline for the whole run, in seconds.
    #[arg(long, global = true, default_value_t = 180)]
    max_secs: u64,
    /// Label copied into the RESULT line (e.g. the broker name).
    #[arg(long, global = true, default_value = "-")]
    label: String,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// 1 publisher -> N subscribers, fixed message count.
    Throughput {
        /// QoS for both the publish and the subscription (0 or 1).
        #[arg(long, default_value_t = 0)]
        qos: u8,
        /// Number of subscribers (each its own connection).
        #[arg(long, default_value_t = 1)]
        subscribers: usize,
        /// Messages published (each subscriber should receive all of them).
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Publisher's max in-flight QoS 1 messages.
        #[arg(long, default_value_t = 100)]
        inflight: u16,
        /// Stop waiting for deliveries after this many seconds without progress.
        #[arg(long, default_value_t = 5)]
        idle_timeout: u64,
    },
    /// Open N idle connections and measure the broker's RSS growth.
    IdleConns {
        /// Number of connections.
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// PID of the broker, to read VmRSS from /proc/PID/status.
        #[arg(long)]
        broker_pid: Option<u32>,
        /// Connections being set up at the same time (kept below common
        /// listen backlogs, e.g. Mosquitto's 100, so no SYN is dropped).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds to wait after the last CONNACK before reading VmRSS.
        #[arg(long, default_value_t = 2)]
        settle_secs: u64,
        /// MQTT keep-alive announced in CONNECT (seconds).
        #[arg(long, default_value_t = 300)]
        keepalive: u16,
    },
    /// N clients connect at once; measures CONNACKs per second.
    ConnStorm {
        /// Number of clients.
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// Per-connection timeout (TCP connect + CONNECT/CONNACK), seconds.
        #[arg(long, default_value_t = 30)]
        conn_timeout: u64,
        /// MQTT keep-alive announced in CONNECT (seconds).
        #[arg(long, default_value_t = 300)]
        keepalive: u16,
    },
    /// Check certs/ with rustls + webpki: handshake on loopback for
    /// localhost, 127.0.0.1 and ::1; a wrong name must be rejected.
    TlsCheck {
        /// Directory holding ca.pem, server.pem, server.key.
        #[arg(long, default_value = "certs")]
        certs_dir: std::path::PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let deadline = Duration::from_secs(cli.max_secs);
    let res = rt.block_on(async {
        match tokio::time::timeout(deadline, run(&cli)).await {
            Ok(r) => r,
            Err(_) => {
                println!(
                    "RESULT mode={} label={} status=timeout max_secs={}",
                    mode_name(&cli.mode),
                    cli.label,
                    cli.max_secs
                );
                Err(anyhow!("global deadline of {}s reached", cli.max_secs))
            }
        }
    });
    // Do not wait for lingering client tasks / sockets: exit right away.
    rt.shutdown_timeout(Duration::from_millis(200));
    if let Err(e) = res {
        eprintln!("rtw-loadgen: error: {e:#}");
        std::process::exit(2);
    }
    Ok(())
}

fn mode_name(m: &Mode) -> &'static str {
    match m {
        Mode::Throughput { .. } => "throughput",
        Mode::IdleConns { .. } => "idle-conns",
        Mode::ConnStorm { .. } => "conn-storm",
        Mode::TlsCheck { .. } => "tls-check",
    }
}

async fn run(cli: &Cli) -> Result<()> {
    match &cli.mode {
        Mode::Throughput {
            qos,
            subscribers,
            messages,
            payload,
            inflight,
            idle_timeout,
        } => {
            throughput(
                cli,
                *qos,
                *subscribers,
                *messages,
                *payload,
                *inflight,
                Duration::from_secs(*idle_timeout),
            )
            .await
        }
        Mode::IdleConns {
            conns,
            broker_pid,
            concurrency,
            settle_secs,
            keepalive,
        } => {
            idle_conns(
                cli,
                *conns,
                *broker_pid,
                *concurrency,
                Duration::from_secs(*settle_secs),
                *keepalive,
            )
            .await
        }
        Mode::ConnStorm {
            conns,
            conn_timeout,
            keepalive,
        } => conn_storm(cli, *conns, Duration::from_secs(*conn_timeout), *keepalive).await,
        Mode::TlsCheck { certs_dir } => tls_check(certs_dir).await,
    }
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{}", std::process::id(), nanos % 1_000_000_000)
}

fn to_qos(q: u8) -> Result<QoS> {
    Ok(match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => bail!("invalid qos {q}"),
    })
}

// ---------------------------------------------------------------------------
// throughput
// ---------------------------------------------------------------------------

async fn throughput(
    cli: &Cli,
    qos_n: u8,
    subscribers: usize,
    messages: u64,
    payload_len: usize,
    inflight: u16,
    idle_timeout: Duration,
) -> Result<()> {
    if subscribers == 0 || messages == 0 {
        bail!("need at least one subscriber and one message");
    }
    let qos = to_qos(qos_n)?;
    let id = run_id();
    let topic = format!("bench/{id}");
    let base = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);

    // Per-subscriber counters; last delivery time in ns since `base`.
    let received: Arc<Vec<AtomicU64>> =
        Arc::new((0..subscribers).map(|_| AtomicU64::new(0)).collect());
    let last_rx_ns = Arc::new(AtomicU64::new(0));
    let subacked = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    // Set before the final DISCONNECTs: errors after that are expected.
    let closing = Arc::new(AtomicBool::new(false));
    let mut sub_clients = Vec::with_capacity(subscribers);

    for i in 0..subscribers {
        let mut opts = MqttOptions::new(format!("lg-s-{id}-{i}"), cli.host.clone(), cli.port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(true);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(opts, 64);
        client.subscribe(topic.clone(), qos).await?;
        sub_clients.push(client);
        let received = received.clone();
        let last_rx_ns = last_rx_ns.clone();
        let subacked = subacked.clone();
        let errors = errors.clone();
        let closing = closing.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    ev = el.poll() => match ev {
                        Ok(Event::Incoming(Packet::Publish(_))) => {
                            received[i].fetch_add(1, Ordering::Relaxed);
                            last_rx_ns.fetch_max(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            subacked.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if !closing.load(Ordering::SeqCst) {
                                eprintln!("subscriber {i}: {e}");
                                errors.fetch_add(1, Ordering::SeqCst);
                            }
                            break;
                        }
                    }
                }
            }
        });
    }

    // Wait for every SUBACK (bounded).
    let t = Instant::now();
    while subacked.load(Ordering::SeqCst) < subscribers {
        if errors.load(Ordering::SeqCst) > 0 {
            bail!("a subscriber failed before SUBACK");
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!(
                "only {}/{} SUBACKs after 30s",
                subacked.load(Ordering::SeqCst),
                subscribers
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Publisher.
    let mut opts = MqttOptions::new(format!("lg-p-{id}"), cli.host.clone(), cli.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(true);
    opts.set_inflight(inflight.max(1));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (publisher, mut pel) = AsyncClient::new(opts, 1024);
    let (connack_tx, mut connack_rx) = watch::channel(false);
    let puback = Arc::new(AtomicU64::new(0));
    {
        let puback = puback.clone();
        let errors = errors.clone();
        let closing = closing.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    ev = pel.poll() => match ev {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => { let _ = connack_tx.send(true); }
                        Ok(Event::Incoming(Packet::PubAck(_))) => { puback.fetch_add(1, Ordering::Relaxed); }
                        Ok(_) => {}
                        Err(e) => {
                            if !closing.load(Ordering::SeqCst) {
                                eprintln!("publisher: {e}");
                                errors.fetch_add(1, Ordering::SeqCst);
                            }
                            break;
                        }
                    }
                }
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(30), connack_rx.wait_for(|v| *v))
        .await
        .context("publisher CONNACK timeout")?
        .context("publisher event loop ended")?;

    let payload = Bytes::from(vec![b'x'; payload_len]);
    let start = base.elapsed();
    for _ in 0..messages {
        publisher
            .publish_bytes(topic.clone(), qos, false, payload.clone())
            .await?;
    }
    let publish_done = base.elapsed();

    // Wait for deliveries: done, no progress for idle_timeout, or failure.
    let expected = messages * subscribers as u64;
    let mut last_total = 0u64;
    let mut last_progress = Instant::now();
    let status = loop {
        let total: u64 = received.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        if total >= expected {
            break "ok";
        }
        if total != last_total {
            last_total = total;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > idle_timeout {
            break "incomplete";
        }
        if errors.load(Ordering::SeqCst) > 0 {
            break "client-error";
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Let QoS 1 acks drain a moment (bounded), for the puback count.
    if qos_n > 0 {
        let t = Instant::now();
        while puback.load(Ordering::Relaxed) < messages && t.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    let delivered: u64 = received.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    let min_sub = received
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .min()
        .unwrap_or(0);
    let end_ns = last_rx_ns.load(Ordering::Relaxed);
    let elapsed = Duration::from_nanos(end_ns).saturating_sub(start);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let pub_secs = (publish_done - start).as_secs_f64().max(1e-9);
    println!(
        "RESULT mode=throughput label={} status={} qos={} subscribers={} messages={} payload={} \
         expected={} delivered={} lost={} min_per_sub={} pubacks={} elapsed_s={:.3} \
         msgs_per_s={:.0} publish_rate={:.0}",
        cli.label,
        status,
        qos_n,
        subscribers,
        messages,
        payload_len,
        expected,
        delivered,
        expected.saturating_sub(delivered),
        min_sub,
        puback.load(Ordering::Relaxed),
        secs,
        delivered as f64 / secs,
        messages as f64 / pub_secs,
    );

    // Best-effort clean disconnect, bounded.
    closing.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = publisher.disconnect().await;
        for c in &sub_clients {
            let _ = c.disconnect().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    let _ = stop_tx.send(true);
    if status == "client-error" {
        bail!("client error during the run");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// raw MQTT 3.1.1 connections (idle-conns, conn-storm)
// ---------------------------------------------------------------------------

/// MQTT 3.1.1 CONNECT with clean session, no will, no credentials.
fn connect_packet(client_id: &str, keepalive: u16) -> Vec<u8> {
    let id = client_id.as_bytes();
    let remaining = 10 + 2 + id.len();
    let mut p = Vec::with_capacity(remaining + 5);
    p.push(0x10);
    let mut n = remaining;
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        p.push(b);
        if n == 0 {
            break;
        }
    }
    p.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02]);
    p.extend_from_slice(&keepalive.to_be_bytes());
    p.extend_from_slice(&(id.len() as u16).to_be_bytes());
    p.extend_from_slice(id);
    p
}

async fn mqtt_connect(addr: SocketAddr, client_id: &str, keepalive: u16) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await.context("tcp connect")?;
    s.set_nodelay(true)?;
    s.write_all(&connect_packet(client_id, keepalive)).await?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.context("reading CONNACK")?;
    if ack[0] != 0x20 || ack[1] != 0x02 {
        bail!("not a CONNACK: {ack:02x?}");
    }
    if ack[3] != 0 {
        bail!("CONNACK refused, code {}", ack[3]);
    }
    Ok(s)
}

async fn ping(s: &mut TcpStream) -> Result<()> {
    s.write_all(&[0xC0, 0x00]).await?;
    let mut r = [0u8; 2];
    s.read_exact(&mut r).await?;
    if r != [0xD0, 0x00] {
        bail!("not a PINGRESP: {r:02x?}");
    }
    Ok(())
}

async fn resolve(cli: &Cli) -> Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host((cli.host.as_str(), cli.port)).await?;
    addrs
        .next()
        .ok_or_else(|| anyhow!("cannot resolve {}", cli.host))
}

fn vm_rss_kb(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    for line in s.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            return Ok(v.trim().trim_end_matches("kB").trim().parse()?);
        }
    }
    bail!("no VmRSS in /proc/{pid}/status")
}

async fn idle_conns(
    cli: &Cli,
    conns: usize,
    broker_pid: Option<u32>,
    concurrency: usize,
    settle: Duration,
    keepalive: u16,
) -> Result<()> {
    let addr = resolve(cli).await?;
    let id = run_id();
    let rss_before = broker_pid.map(vm_rss_kb).transpose()?;
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..conns {
        let permit = sem.clone().acquire_owned().await?;
        let cid = format!("lg-i-{id}-{i}");
        set.spawn(async move {
            let r =
                tokio::time::timeout(Duration::from_secs(30), mqtt_connect(addr, &cid, keepalive))
                    .await;
            drop(permit);
            match r {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(anyhow!("connect timeout")),
            }
        });
    }
    let mut streams = Vec::with_capacity(conns);
    let mut failed = 0usize;
    let mut first_err = None;
    while let Some(r) = set.join_next().await {
        match r? {
            Ok(s) => streams.push(s),
            Err(e) => {
                failed += 1;
                first_err.get_or_insert(e);
            }
        }
    }
    let connect_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let rss_after = broker_pid.map(vm_rss_kb).transpose()?;

    // Check the broker still holds the connections: PINGREQ on each (bounded).
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for mut s in streams.drain(..) {
        let sem = sem.clone();
        set.spawn(async move {
            let _p = sem.acquire_owned().await;
            let ok = matches!(
                tokio::time::timeout(Duration::from_secs(10), ping(&mut s)).await,
                Ok(Ok(()))
            );
            (ok, s)
        });
    }
    let mut alive = 0usize;
    let mut keep = Vec::with_capacity(conns);
    while let Some(r) = set.join_next().await {
        let (ok, s) = r?;
        alive += ok as usize;
        keep.push(s);
    }
    let connected = keep.len();
    let (before, after, delta, per_conn) = match (rss_before, rss_after) {
        (Some(b), Some(a)) => {
            let d = a as i64 - b as i64;
            let per = if connected > 0 {
                d as f64 * 1024.0 / connected as f64
            } else {
                0.0
            };
            (
                b.to_string(),
                a.to_string(),
                d.to_string(),
                format!("{per:.0}"),
            )
        }
        _ => ("-".into(), "-".into(), "-".into(), "-".into()),
    };
    println!(
        "RESULT mode=idle-conns label={} status={} conns={} connected={} failed={} alive={} \
         connect_s={:.3} conns_per_s={:.0} rss_before_kb={} rss_after_kb={} rss_delta_kb={} \
         bytes_per_conn={}",
        cli.label,
        if failed == 0 && alive == connected {
            "ok"
        } else {
            "incomplete"
        },
        conns,
        connected,
        failed,
        alive,
        connect_secs,
        connected as f64 / connect_secs.max(1e-9),
        before,
        after,
        delta,
        per_conn
    );
    if let Some(e) = first_err {
        eprintln!("first connection error: {e:#}");
    }
    drop(keep);
    Ok(())
}

async fn conn_storm(cli: &Cli, conns: usize, conn_timeout: Duration, keepalive: u16) -> Result<()> {
    let addr = resolve(cli).await?;
    let id = run_id();
    let (go_tx, go_rx) = watch::channel(false);
    let mut set = tokio::task::JoinSet::new();
    let ready = Arc::new(AtomicUsize::new(0));
    for i in 0..conns {
        let mut go = go_rx.clone();
        let cid = format!("lg-c-{id}-{i}");
        let ready = ready.clone();
        set.spawn(async move {
            ready.fetch_add(1, Ordering::SeqCst);
            let _ = go.wait_for(|v| *v).await;
            let t = Instant::now();
            let r = tokio::time::timeout(conn_timeout, mqtt_connect(addr, &cid, keepalive)).await;
            let lat = t.elapsed();
            match r {
                Ok(Ok(s)) => Ok((lat, s)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(anyhow!("timeout")),
            }
        });
    }
    // All tasks parked on the start signal (bounded wait).
    let t = Instant::now();
    while ready.load(Ordering::SeqCst) < conns && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let start = Instant::now();
    go_tx.send(true)?;
    let mut lats = Vec::with_capacity(conns);
    let mut streams = Vec::with_capacity(conns);
    let mut failed = 0usize;
    let mut first_err = None;
    let mut last_ok = Duration::ZERO;
    while let Some(r) = set.join_next().await {
        match r? {
            Ok((lat, s)) => {
                last_ok = last_ok.max(start.elapsed());
                lats.push(lat.as_secs_f64() * 1000.0);
                streams.push(s);
            }
            Err(e) => {
                failed += 1;
                first_err.get_or_insert(e);
            }
        }
    }
    let ok = streams.len();
    // Latencies of all clients, failed ones as +inf: "time until X% of the
    // clients had their CONNACK" is robust against a few stragglers stuck in
    // SYN/RTO back-off, unlike the time to the very last CONNACK.
    let mut all = lats.clone();
    all.extend(std::iter::repeat_n(f64::INFINITY, failed));
    all.sort_by(|a, b| a.total_cmp(b));
    let at = |frac: f64| -> f64 {
        if all.is_empty() {
            return f64::INFINITY;
        }
        let k = ((frac * all.len() as f64).ceil() as usize).clamp(1, all.len());
        all[k - 1]
    };
    let fmt_ms = |v: f64| {
        if v.is_finite() {
            format!("{v:.1}")
        } else {
            "inf".to_string()
        }
    };
    let t90 = at(0.90);
    let rate90 = if t90.is_finite() {
        format!(
            "{:.0}",
            (0.9 * conns as f64).ceil() / (t90 / 1000.0).max(1e-9)
        )
    } else {
        "0".to_string()
    };
    let secs = last_ok.as_secs_f64().max(1e-9);
    println!(
        "RESULT mode=conn-storm label={} status={} conns={} connected={} failed={} elapsed_s={:.3} \
         conns_per_s={:.0} t90_ms={} conns_per_s_90={} p50_ms={} p99_ms={} max_ms={}",
        cli.label,
        if failed == 0 { "ok" } else { "incomplete" },
        conns,
        ok,
        failed,
        secs,
        ok as f64 / secs,
        fmt_ms(t90),
        rate90,
        fmt_ms(at(0.50)),
        fmt_ms(at(0.99)),
        fmt_ms(at(1.0)),
    );
    if let Some(e) = first_err {
        eprintln!("first connection error: {e:#}");
    }
    drop(streams);
    Ok(())
}

// ---------------------------------------------------------------------------
// tls-check
// ---------------------------------------------------------------------------

async fn tls_check(dir: &std::path::Path) -> Result<()> {
    use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer, pki_types::ServerName};

    let read = |name: &str| -> Result<Vec<u8>> {
        std::fs::read(dir.join(name))
            .with_context(|| format!("reading {}", dir.join(name).display()))
    };
    let chain: Vec<_> =
        rustls_pemfile::certs(&mut &read("server.pem")?[..]).collect::<Result<_, _>>()?;
    let key = rustls_pemfile::private_key(&mut &read("server.key")?[..])?
        .ok_or_else(|| anyhow!("no private key in server.key"))?;
    if !matches!(key, PrivateKeyDer::Pkcs8(_)) {
        bail!("server.key is not PKCS#8");
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &read("ca.pem")?[..]) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("rustls rejected server.pem/server.key")?;
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));

    let mut cases: Vec<(&str, &str, bool)> = vec![
        ("127.0.0.1:0", "localhost", true),
        ("127.0.0.1:0", "127.0.0.1", true),
        ("127.0.0.1:0", "example.com", false),
    ];
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        cases.push(("[::1]:0", "::1", true));
    } else {
        eprintln!("tls-check: no IPv6 loopback here, skipping ::1");
    }
    let mut passed = 0;
    for (bind, name, expect_ok) in &cases {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let acceptor = acceptor.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await?;
            tls.write_all(&b).await?;
            tls.shutdown().await?;
            anyhow::Ok(())
        });
        let tcp = TcpStream::connect(addr).await?;
        let sn = ServerName::try_from(name.to_string())?;
        let res = tokio::time::timeout(Duration::from_secs(5), async {
            let mut tls = connector.connect(sn, tcp).await?;
            tls.write_all(b"!").await?;
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await?;
            anyhow::Ok(())
        })
        .await
        .map_err(|_| anyhow!("handshake timeout"))
        .and_then(|r| r);
        server.abort();
        match (res, expect_ok) {
            (Ok(()), true) => {
                eprintln!("tls-check: {name} via {addr}: ok");
                passed += 1;
            }
            (Err(e), false) => {
                eprintln!("tls-check: {name} via {addr}: rejected as expected ({e})");
                passed += 1;
            }
            (Ok(()), false) => bail!("{name}: accepted but must be rejected"),
            (Err(e), true) => bail!("{name}: handshake failed: {e:#}"),
        }
    }
    println!(
        "RESULT mode=tls-check status=ok cases={} passed={}",
        cases.len(),
        passed
    );
    Ok(())
}
