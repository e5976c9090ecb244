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

/// jemalloc, not glibc's malloc: messages are made on one thread and freed on another all the
/// time here (a request read on one worker, routed by the core's thread, written by another
/// worker), and glibc then takes the owning arena's lock on most frees. Under the RPC benchmark
/// 41% of the process's futex calls were glibc's arena locks; with jemalloc the futex calls per
/// round trip fell from 0.9 to 0.2 and the CPU per round trip by about a fifth (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Print a development token signed with the configured `auth.jwt_secret`.
    Token {
        /// The token's subject (`sub`).
        #[arg(long)]
        subject: String,
        /// A filter the token may publish to (repeatable).
        #[arg(long = "publish")]
        publish: Vec<String>,
        /// A filter the token may subscribe to (repeatable).
        #[arg(long = "subscribe")]
        subscribe: Vec<String>,
        /// Lifetime: `30s`, `15m`, `1h`, `7d`.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Grant the admin claim (dashboard, `$SYS`).
        #[arg(long)]
        admin: bool,
    },
    /// Add or change a user in a password file (argon2id hashes, as Mosquitto's mosquitto_passwd).
    Passwd {
        /// The password file (created if missing).
        file: PathBuf,
        /// The user name.
        user: String,
        /// The password (read from stdin when omitted).
        #[arg(long)]
        password: Option<String>,
        /// Remove the user instead.
        #[arg(long, short = 'D')]
        delete: bool,
    },
}

/// Parses `30s`, `15m`, `1h`, `7d` (or plain seconds).
fn parse_ttl(s: &str) -> anyhow::Result<std::time::Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("bad --ttl {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => anyhow::bail!("bad --ttl unit in {s:?} (use s, m, h or d)"),
    };
    Ok(std::time::Duration::from_secs(secs))
}

fn passwd(
    file: &std::path::Path,
    user: &str,
    password: Option<String>,
    delete: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !user.is_empty() && !user.contains(':'),
        "a user name may not be empty or contain ':'"
    );
    let mut users = if file.exists() {
        broker::security::read_password_file(file)?
    } else {
        Default::default()
    };
    if delete {
        anyhow::ensure!(
            users.remove(user).is_some(),
            "no user {user:?} in {}",
            file.display()
        );
    } else {
        let password = match password {
            Some(p) => p,
            None => {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line.trim_end_matches(['\r', '\n']).to_string()
            }
        };
        anyhow::ensure!(!password.is_empty(), "empty password");
        users.insert(
            user.to_string(),
            broker::security::hash_password(&password)?,
        );
    }
    let mut names: Vec<_> = users.keys().cloned().collect();
    names.sort();
    let text: String = names
        .iter()
        .map(|u| format!("{u}:{}\n", users[u]))
        .collect();
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, file)?;
    Ok(())
}

fn init_logs(s: &Settings) {
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| s.log.level.clone());
    // rumqttd wraps its router's work in `error_span!`s, enabled at every level, and a text
    // subscriber formats their fields each time: about 4% of the CPU of an HTTP publish. Its
    // logs are about its own links no client sees, so it is off unless the filter names it.
    let wanted = if wanted.contains("rumqttd") {
        wanted
    } else {
        format!("{wanted},rumqttd=off")
    };
    let filter = EnvFilter::try_new(&wanted).unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off"));
    // Colours only for a terminal: a file or a pipe gets plain text.
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
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
        Command::Token {
            subject,
            publish,
            subscribe,
            ttl,
            admin,
        } => {
            let spec = broker::security::TokenSpec {
                subject,
                publish,
                subscribe,
                admin,
                ttl: parse_ttl(&ttl)?,
            };
            println!("{}", broker::security::make_token(&settings.auth, &spec)?);
            Ok(())
        }
        Command::Passwd {
            file,
            user,
            password,
            delete,
        } => passwd(&file, &user, password, delete),
    }
}

/// Raises the open-file limit: every client costs this process one descriptor (its socket).
fn raise_fd_limit() {
    const WANT: u64 = 1 << 20;
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() {
        // Raising the hard limit works with CAP_SYS_RESOURCE (root); otherwise soft goes to hard.
        if rlimit::Resource::NOFILE
            .set(soft.max(WANT), hard.max(WANT))
            .is_err()
        {
            let _ = rlimit::increase_nofile_limit(WANT);
        }
    }
    if let Ok((soft, _)) = rlimit::Resource::NOFILE.get() {
        tracing::debug!(open_files = soft, "open-file limit");
        if soft < 10_000 {
            tracing::warn!(
                open_files = soft,
                "the open-file limit allows about {} clients (one descriptor each); raise it with ulimit -n",
                soft
            );
        }
    }
}

async fn serve(settings: &mut Settings) -> anyhow::Result<()> {
    raise_fd_limit();
    if settings.apply_local_only() {
        tracing::warn!(
            "no authentication configured: listening on loopback only \
             (set auth.allow_anonymous = true or configure an authenticator to listen elsewhere)"
        );
    }
    let security = Arc::new(broker::security::Security::new(
        settings.auth.clone(),
        settings.local_only(),
    )?);
    let broker =
        broker::Broker::start(settings.broker(), security.clone(), security.clone()).await?;
    let bridge = bridge::Bridge::start(
        broker.edge.clone(),
        bridge::BridgeConfig {
            http: settings.http.clone(),
            https: settings.https.clone(),
            bridge: settings.bridge.clone(),
            rpc: settings.rpc.clone(),
            mercure: settings.mercure.clone(),
            security: security.clone(),
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
    wait_for_signal(&broker.edge, &security).await;
    tracing::info!("shutting down");
    bridge.stop();
    broker.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Waits for SIGINT or SIGTERM; on SIGHUP reloads certificates and the password file.
async fn wait_for_signal(edge: &broker::Edge, security: &broker::security::Security) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading certificates and the password file");
                edge.reload_certs();
                if let Err(e) = security.reload_passwords() {
                    tracing::warn!(error = %e, "password file reload failed; keeping the old one");
                }
            }
        }
    }
}
