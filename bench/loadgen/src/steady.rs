//! `steady`: steady traffic for minutes, to see whether the broker's memory
//! levels off. N subscribers (raw clients, [`crate::raw`]) each subscribe to a
//! topic of their own; one rumqttc publisher sends `rate` messages per second,
//! round-robin over those topics, for `duration`; the broker's VmRSS is
//! sampled every `sample` interval from the first publish to the end.
//!
//! Reported: published vs delivered (after a bounded drain), the RSS samples,
//! and the growth over the last half of the run (the sample at the middle vs
//! the last one): `plateau=yes` when it is below `plateau_pct`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use rumqttc::MqttOptions;
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Semaphore};

use crate::{procfs, raw, run_id, to_qos, Cli, Loops};

#[derive(clap::Args, Debug, Clone, Copy)]
pub struct SteadyOpts {
    /// Subscribers (each its own connection and topic).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Messages published per second (in total).
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 200)]
    pub payload: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 240)]
    pub duration: u64,
    /// QoS of the publishes and subscriptions (0 or 1).
    #[arg(long, default_value_t = 0)]
    pub qos: u8,
    /// PID of the broker, to sample VmRSS from /proc/PID/status.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Seconds between VmRSS samples.
    #[arg(long, default_value_t = 10)]
    pub sample_secs: u64,
    /// A run plateaus when RSS grew less than this over its last half (%).
    #[arg(long, default_value_t = 5.0)]
    pub plateau_pct: f64,
    /// Stop waiting for deliveries after this many seconds without progress.
    #[arg(long, default_value_t = 5)]
    pub idle_timeout: u64,
}

/// Counts what one raw subscriber receives until `stop` or an error.
async fn subscriber(
    mut s: tokio::net::TcpStream,
    count: Arc<AtomicU64>,
    errors: Arc<AtomicUsize>,
    closing: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = Vec::with_capacity(512);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            r = raw::read_packet(&mut s, &mut buf) => match r {
                Ok(h) => {
                    if h >> 4 == 3 {
                        count.fetch_add(1, Ordering::Relaxed);
                        if let Some(ack) = raw::puback_for(h, &buf) {
                            if s.write_all(&ack).await.is_err() {
                                errors.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    if !closing.load(Ordering::SeqCst) {
                        eprintln!("steady subscriber: {e:#}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
            }
        }
    }
    let _ = s.write_all(&[0xE0, 0x00]).await;
}

fn rss(pid: Option<u32>) -> Result<Option<u64>> {
    pid.map(procfs::vm_rss_kb).transpose()
}

pub async fn steady(cli: &Cli, o: SteadyOpts) -> Result<()> {
    if o.subscribers == 0 || o.rate == 0 {
        bail!("need at least one subscriber and a rate above 0");
    }
    let qos = to_qos(o.qos)?;
    let duration = Duration::from_secs(o.duration);
    let addr = crate::resolve(cli).await?;
    let id = run_id();
    let topics: Vec<String> = (0..o.subscribers)
        .map(|i| format!("steady/{id}/{i}"))
        .collect();
    let keepalive = (o.duration + 300).min(65_535) as u16;
    let rss_idle = rss(o.broker_pid)?;

    // Subscribers: connect + subscribe, 64 in flight (below listen backlogs).
    let sem = Arc::new(Semaphore::new(64));
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in topics.iter().enumerate() {
        let permit = sem.clone().acquire_owned().await?;
        let (cid, t) = (format!("lg-st-{id}-{i}"), t.clone());
        let qn = o.qos;
        set.spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(30), async {
                let mut s = raw::connect(addr, &cid, keepalive, true).await?;
                raw::subscribe(&mut s, 1, &t, qn).await?;
                anyhow::Ok(s)
            })
            .await;
            drop(permit);
            (
                i,
                r.map_err(|_| anyhow!("subscriber {i}: timeout"))
                    .and_then(|r| r),
            )
        });
    }
    let mut streams: Vec<Option<tokio::net::TcpStream>> =
        (0..o.subscribers).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, r) = r?;
        streams[i] = Some(r.with_context(|| format!("subscriber {i}"))?);
    }
    let counts: Vec<Arc<AtomicU64>> = (0..o.subscribers)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let errors = Arc::new(AtomicUsize::new(0));
    let closing = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    for (s, c) in streams.into_iter().zip(&counts) {
        let s = s.ok_or_else(|| anyhow!("a subscriber did not connect"))?;
        tokio::spawn(subscriber(
            s,
            c.clone(),
            errors.clone(),
            closing.clone(),
            stop_rx.clone(),
        ));
    }

    // Publisher (rumqttc: handles its own keep-alive and QoS 1 flow).
    let mut mo = MqttOptions::new(format!("lg-sp-{id}"), cli.host.clone(), cli.port);
    mo.set_keep_alive(Duration::from_secs(30));
    mo.set_clean_session(true);
    mo.set_inflight(100);
    let loops = Loops {
        stop: stop_rx.clone(),
        closing: closing.clone(),
        errors: errors.clone(),
    };
    let publisher = loops
        .publisher(mo, 1024, "steady publisher", |_| {})
        .await?;

    // RSS sampler: one sample at the start, then every `sample`.
    let samples = Arc::new(std::sync::Mutex::new(Vec::<(f64, u64)>::new()));
    let start = Instant::now();
    if let Some(pid) = o.broker_pid {
        let sample = Duration::from_secs(o.sample_secs.max(1));
        let samples = samples.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sample);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick() => {
                        if let Ok(kb) = procfs::vm_rss_kb(pid) {
                            if let Ok(mut v) = samples.lock() {
                                v.push((start.elapsed().as_secs_f64(), kb));
                            }
                        }
                    }
                }
            }
        });
    }

    // Publish at `rate`, paced against the clock (no drift), round-robin.
    let payload = Bytes::from(vec![b'x'; o.payload]);
    let mut sent = 0u64;
    let mut failed = false;
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * o.rate as f64) as u64;
        while sent < due {
            let t = &topics[(sent % o.subscribers as u64) as usize];
            if let Err(e) = publisher
                .publish_bytes(t.clone(), qos, false, payload.clone())
                .await
            {
                eprintln!("steady publisher: {e}");
                failed = true;
                break;
            }
            sent += 1;
        }
        if failed || errors.load(Ordering::Relaxed) > 0 {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let publish_secs = start.elapsed().as_secs_f64();
    let rss_pub_end = rss(o.broker_pid)?;
    let fds_end = o.broker_pid.map(procfs::open_fds).transpose()?;

    // Drain: everything delivered, or no progress for idle_timeout.
    let total = || {
        counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let (mut last, mut last_progress) = (0u64, Instant::now());
    let status = loop {
        let n = total();
        if failed || errors.load(Ordering::Relaxed) > 0 {
            break "client-error";
        }
        if n >= sent {
            break "ok";
        }
        if n != last {
            (last, last_progress) = (n, Instant::now());
        } else if last_progress.elapsed() > Duration::from_secs(o.idle_timeout) {
            break "incomplete";
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let delivered = total();
    let per: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let samples = samples.lock().map(|v| v.clone()).unwrap_or_default();

    // Growth over the last half: the first sample at or after the middle of
    // the publishing period vs the last sample taken while publishing.
    let half = publish_secs / 2.0;
    let during: Vec<&(f64, u64)> = samples.iter().filter(|(t, _)| *t <= publish_secs).collect();
    let mid = during.iter().find(|(t, _)| *t >= half).map(|s| s.1);
    let end = during.last().map(|s| s.1);
    let growth = mid
        .zip(end)
        .map(|(m, e)| (e as f64 - m as f64) * 100.0 / (m.max(1) as f64));
    let plateau = match growth {
        Some(g) if g < o.plateau_pct => "yes",
        Some(_) => "no",
        None => "-",
    };
    let list = samples
        .iter()
        .map(|(t, kb)| format!("{t:.0}:{kb}"))
        .collect::<Vec<_>>()
        .join(",");
    let o2 = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    println!(
        "RESULT mode=steady label={} status={} qos={} subscribers={} rate={} payload={} \
         duration_s={:.1} published={} delivered={} lost={} min_per_sub={} max_per_sub={} \
         publish_rate={:.0} rss_idle_kb={} rss_start_kb={} rss_mid_kb={} rss_end_kb={} \
         rss_max_kb={} growth_last_half_pct={} plateau={} fds_end={} rss_samples={}",
        cli.label,
        status,
        o.qos,
        o.subscribers,
        o.rate,
        o.payload,
        publish_secs,
        sent,
        delivered,
        sent.saturating_sub(delivered),
        per.iter().min().copied().unwrap_or(0),
        per.iter().max().copied().unwrap_or(0),
        sent as f64 / publish_secs.max(1e-9),
        o2(rss_idle),
        o2(samples.first().map(|s| s.1)),
        o2(mid),
        o2(end.or(rss_pub_end)),
        o2(samples.iter().map(|s| s.1).max()),
        growth
            .map(|g| format!("{g:.1}"))
            .unwrap_or_else(|| "-".into()),
        plateau,
        o2(fds_end),
        if list.is_empty() {
            "-".to_string()
        } else {
            list
        },
    );

    closing.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(2), publisher.disconnect()).await;
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    if status == "client-error" {
        bail!("client error during the run");
    }
    Ok(())
}
