//! `realtime-web`: an MQTT broker and an HTTP bridge in one process.
//!
//! This file only wires things: CLI → settings → broker → bridge → wait for a signal → shut
//! down in order (stop accepting, disconnect clients, flush the store).

mod settings;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::settings::Settings;

#[derive(Parser)]
#[command(
    name = "realtime-web",
    version,
    about = "MQTT broker + HTTP bridge in one process"
)]
struct Cli {
    /// TOML config file (keys as in the README; RTW_<SECTION>__<KEY> variables override it).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (the default).
    Run,
}

fn init_logs(s: &Settings) {
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| EnvFilter::try_new(&s.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if s.log.format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("realtime-web: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    init_logs(&settings);
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => serve(&mut settings).await,
    }
}

async fn serve(settings: &mut Settings) -> anyhow::Result<()> {
    if settings.apply_local_only() {
        tracing::warn!(
            "no authentication configured: listening on loopback only \
             (set auth.allow_anonymous = true or configure an authenticator to listen elsewhere)"
        );
    }
    let broker = broker::Broker::start(
        settings.broker(),
        Arc::new(broker::auth::Anonymous),
        Arc::new(broker::auth::AllowAll),
    )
    .await?;
    let bridge = bridge::Bridge::start(
        broker.edge.clone(),
        bridge::BridgeConfig {
            http: settings.http.clone(),
            https: settings.https.clone(),
            bridge: settings.bridge.clone(),
            rpc: settings.rpc.clone(),
        },
    )
    .await?;
    for (name, addr) in [
        ("mqtt", broker.mqtt_addr),
        ("mqtts", broker.mqtts_addr),
        ("http", bridge.http_addr),
        ("https", bridge.https_addr),
    ] {
        if let Some(a) = addr {
            tracing::info!(listener = name, addr = %a, "listening");
        }
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    bridge.stop();
    broker.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
