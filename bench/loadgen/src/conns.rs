//! Connection modes: `idle-conns` (N idle clients, optionally each subscribed
//! to its own topic, optionally persistent sessions; the broker's VmRSS growth
//! and open descriptors per client) and `conn-storm` (N clients released at
//! once; CONNACKs per second and latency percentiles). Both use the raw client
//! in [`crate::raw`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

use crate::{procfs, raw, run_id, Cli};

/// The idle-conns mode: how many clients, and what each does after its CONNACK.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct IdleOpts {
    /// Number of connections.
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// PID of the broker, to read VmRSS from /proc/PID/status.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Connections being set up at the same time (kept below common
    /// listen backlogs, e.g. Mosquitto's 100, so no SYN is dropped).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds to wait after the last CONNACK before reading VmRSS.
    #[arg(long, default_value_t = 2)]
    pub settle_secs: u64,
    /// MQTT keep-alive announced in CONNECT (seconds).
    #[arg(long, default_value_t = 300)]
    pub keepalive: u16,
    /// Each client subscribes (QoS 1) to a topic of its own.
    #[arg(long)]
    pub subscribe: bool,
    /// Persistent sessions (Clean Session 0) instead of clean ones.
    #[arg(long)]
    pub persistent: bool,
}

impl IdleOpts {
    /// Persistent sessions subscribe too (their queue is what they keep).
    fn subscribes(&self) -> bool {
        self.subscribe || self.persistent
    }
}

/// One idle client: CONNECT (and SUBSCRIBE), bounded by 30 s.
async fn idle_client(addr: SocketAddr, cid: String, o: IdleOpts) -> Result<TcpStream> {
    let work = async {
        let mut s = raw::connect(addr, &cid, o.keepalive, !o.persistent).await?;
        if o.subscribes() {
            raw::subscribe(&mut s, 1, &format!("bench/idle/{cid}"), 1).await?;
        }
        anyhow::Ok(s)
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .map_err(|_| anyhow!("connect/subscribe timeout"))?
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

pub async fn idle_conns(cli: &Cli, o: IdleOpts) -> Result<()> {
    let addr = crate::resolve(cli).await?;
    let id = run_id();
    let rss_before = o.broker_pid.map(procfs::vm_rss_kb).transpose()?;
    let fds_before = o.broker_pid.map(procfs::open_fds).transpose()?;
    let sem = Arc::new(Semaphore::new(o.concurrency.max(1)));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..o.conns {
        let permit = sem.clone().acquire_owned().await?;
        let cid = format!("lg-i-{id}-{i}");
        set.spawn(async move {
            let r = idle_client(addr, cid, o).await;
            drop(permit);
            r
        });
    }
    let mut streams = Vec::with_capacity(o.conns);
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
    tokio::time::sleep(Duration::from_secs(o.settle_secs)).await;
    let rss_after = o.broker_pid.map(procfs::vm_rss_kb).transpose()?;
    let fds_after = o.broker_pid.map(procfs::open_fds).transpose()?;

    // Check the broker still holds the connections: PINGREQ on each (bounded).
    let sem = Arc::new(Semaphore::new(o.concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for mut s in streams.drain(..) {
        let sem = sem.clone();
        set.spawn(async move {
            let _p = sem.acquire_owned().await;
            let ok = matches!(
                tokio::time::timeout(Duration::from_secs(10), raw::ping(&mut s)).await,
                Ok(Ok(()))
            );
            (ok, s)
        });
    }
    let mut alive = 0usize;
    let mut keep = Vec::with_capacity(o.conns);
    while let Some(r) = set.join_next().await {
        let (ok, s) = r?;
        alive += ok as usize;
        keep.push(s);
    }
    let connected = keep.len();
    let per = |d: i64, scale: f64| {
        if connected > 0 {
            d as f64 * scale / connected as f64
        } else {
            0.0
        }
    };
    let rss_delta = rss_after.zip(rss_before).map(|(a, b)| a as i64 - b as i64);
    let fds_delta = fds_after.zip(fds_before).map(|(a, b)| a as i64 - b as i64);
    println!(
        "RESULT mode=idle-conns label={} status={} subscribed={} clean={} conns={} connected={} \
         failed={} alive={} connect_s={:.3} conns_per_s={:.0} rss_before_kb={} rss_after_kb={} \
         rss_delta_kb={} bytes_per_conn={} fds_before={} fds_after={} fds_per_conn={}",
        cli.label,
        if failed == 0 && alive == connected {
            "ok"
        } else {
            "incomplete"
        },
        o.subscribes() as u8,
        (!o.persistent) as u8,
        o.conns,
        connected,
        failed,
        alive,
        connect_secs,
        connected as f64 / connect_secs.max(1e-9),
        opt(rss_before),
        opt(rss_after),
        opt(rss_delta),
        opt(rss_delta.map(|d| format!("{:.0}", per(d, 1024.0)))),
        opt(fds_before),
        opt(fds_after),
        opt(fds_delta.map(|d| format!("{:.2}", per(d, 1.0)))),
    );
    if let Some(e) = first_err {
        eprintln!("first connection error: {e:#}");
    }
    drop(keep);
    Ok(())
}

pub async fn conn_storm(
    cli: &Cli,
    conns: usize,
    conn_timeout: Duration,
    keepalive: u16,
) -> Result<()> {
    let addr = crate::resolve(cli).await?;
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
            let r =
                tokio::time::timeout(conn_timeout, raw::connect(addr, &cid, keepalive, true)).await;
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
