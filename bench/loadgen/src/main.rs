//! rtw-loadgen: the MQTT load generator behind `bench/broker.sh` and
//! `bench/steady.sh`.
//!
//! Why hand-written: `mqtt-benchmark` (0.2.4) only publishes (it never
//! measures what subscribers receive) and `mqttwrk` (0.2.0, its latest
//! release) has neither a connection-storm nor a memory measurement and no
//! machine-readable output (it is run as a neutral cross-check by
//! `bench/mqttwrk.sh`). This tool covers exactly the scenarios of the
//! benchmarks and prints one `RESULT` line of `key=value` pairs per run, easy
//! to parse from bash.
//!
//! Modes (subcommands):
//! * `throughput`  1 publisher -> N subscribers on one topic, fixed message
//!   count, QoS 0/1, raw or rumqttc 0.25 clients. Reports delivered msgs/s
//!   measured at the subscribers (from the first publish to the last
//!   delivery) ([`throughput`]).
//! * `idle-conns`  opens N idle MQTT connections (optionally each subscribed
//!   to its own topic, optionally persistent sessions) and, given
//!   `--broker-pid`, reports the broker's VmRSS growth and open descriptors
//!   per connection ([`conns`]).
//! * `conn-storm`  N clients released at once; reports CONNACKs per second.
//! * `steady`      N subscribers on their own topics, one publisher at a fixed
//!   rate round-robin over them for minutes; delivered vs published and the
//!   broker's VmRSS every 10 s ([`steady`]).
//! * `tls-check`   rustls/webpki check of the development certificates.
//!
//! The connection-heavy modes use a minimal raw MQTT 3.1.1 client ([`raw`])
//! instead of rumqttc, so that thousands of connections cost the load
//! generator little on the 2 CPUs it shares with the broker.
//!
//! Every run is bounded: fixed counts, per-operation timeouts and a global
//! `--max-secs` deadline. Only connect to loopback brokers.

mod conns;
mod procfs;
mod raw;
mod steady;
mod throughput;
mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(
    name = "rtw-loadgen",
    about = "MQTT load generator for bench/broker.sh"
)]
pub(crate) struct Cli {
    /// Broker host (loopback only).
    #[arg(long, global = true, default_value = "127.0.0.1")]
    host: String,
    /// Broker MQTT port.
    #[arg(long, global = true, default_value_t = 1883)]
    port: u16,
    /// MQTT port the publisher connects to, when not `--port` (another node of a cluster:
    /// bench/cluster.sh).
    #[arg(long, global = true)]
    pub_port: Option<u16>,
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
    Throughput(throughput::ThroughputOpts),
    /// Open N idle connections and measure the broker's RSS growth.
    IdleConns(conns::IdleOpts),
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
    /// N subscribers on their own topics, one publisher at a fixed rate
    /// round-robin over them; broker VmRSS sampled during the run.
    Steady(steady::SteadyOpts),
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
        Mode::Throughput(_) => "throughput",
        Mode::IdleConns(_) => "idle-conns",
        Mode::ConnStorm { .. } => "conn-storm",
        Mode::Steady(_) => "steady",
        Mode::TlsCheck { .. } => "tls-check",
    }
}

async fn run(cli: &Cli) -> Result<()> {
    match &cli.mode {
        Mode::Throughput(o) => throughput::throughput(cli, *o).await,
        Mode::IdleConns(o) => conns::idle_conns(cli, *o).await,
        Mode::ConnStorm {
            conns,
            conn_timeout,
            keepalive,
        } => conns::conn_storm(cli, *conns, Duration::from_secs(*conn_timeout), *keepalive).await,
        Mode::Steady(o) => steady::steady(cli, *o).await,
        Mode::TlsCheck { certs_dir } => tls::tls_check(certs_dir).await,
    }
}

pub(crate) fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{}", std::process::id(), nanos % 1_000_000_000)
}

pub(crate) fn to_qos(q: u8) -> Result<QoS> {
    Ok(match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => bail!("invalid qos {q}"),
    })
}

/// What the event-loop task of a rumqttc client shares with its run: `stop` ends it; a
/// connection failure ends it too, and is printed and counted in `errors` unless `closing` is
/// set (then it is expected).
pub(crate) struct Loops {
    pub stop: watch::Receiver<bool>,
    pub closing: Arc<AtomicBool>,
    pub errors: Arc<AtomicUsize>,
}

impl Loops {
    /// Polls `el` in a task of its own; every incoming packet goes to `on_packet`. `who` names
    /// the client in error lines.
    pub fn drive(
        &self,
        mut el: EventLoop,
        who: String,
        mut on_packet: impl FnMut(Packet) + Send + 'static,
    ) {
        let mut stop = self.stop.clone();
        let (closing, errors) = (self.closing.clone(), self.errors.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    ev = el.poll() => match ev {
                        Ok(Event::Incoming(p)) => on_packet(p),
                        Ok(_) => {}
                        Err(e) => {
                            if !closing.load(Ordering::SeqCst) {
                                eprintln!("{who}: {e}");
                                errors.fetch_add(1, Ordering::SeqCst);
                            }
                            break;
                        }
                    }
                }
            }
        });
    }

    /// A publishing client with `opts` (request queue `cap`), once its CONNACK is in (30 s at
    /// most); its other incoming packets go to `on_packet`.
    pub async fn publisher(
        &self,
        opts: MqttOptions,
        cap: usize,
        who: &str,
        mut on_packet: impl FnMut(Packet) + Send + 'static,
    ) -> Result<AsyncClient> {
        let (client, el) = AsyncClient::new(opts, cap);
        let (connack_tx, mut connack_rx) = watch::channel(false);
        self.drive(el, who.to_string(), move |p| {
            if let Packet::ConnAck(_) = p {
                let _ = connack_tx.send(true);
            } else {
                on_packet(p);
            }
        });
        tokio::time::timeout(Duration::from_secs(30), connack_rx.wait_for(|v| *v))
            .await
            .context("publisher CONNACK timeout")?
            .context("publisher event loop ended")?;
        Ok(client)
    }
}

pub(crate) async fn resolve(cli: &Cli) -> Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host((cli.host.as_str(), cli.port)).await?;
    addrs
        .next()
        .ok_or_else(|| anyhow!("cannot resolve {}", cli.host))
}
