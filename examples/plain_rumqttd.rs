//! Plain rumqttd 0.20, stand-alone, with no realtime-web edge in front of it.
//!
//! `tests/defects.rs` runs this to show, with real clients, the rumqttd defects that made us put
//! rumqttd behind an edge, and then checks the same scenarios against realtime-web. It is
//! configured entirely from the command line (or `PLAIN_…` variables), with the values of
//! rumqttd's own sample `rumqttd.toml` for everything not given:
//!
//! ```text
//! cargo run --example plain_rumqttd -- --v4 1883 --v5 1884 --ws 8083 \
//!     [--tls-v4 8883 --cert certs/server.pem --key certs/server.key] \
//!     [--auth-user U --auth-pass P]
//! ```
//!
//! Every listener binds 127.0.0.1 (`--host` to change). rumqttd's own logs go to stderr when
//! `RUST_LOG` is set (e.g. `RUST_LOG=rumqttd=info`); its panics always do.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};

#[derive(Parser, Debug)]
#[command(about = "Plain rumqttd 0.20 for comparison tests")]
struct Args {
    /// Address every listener binds.
    #[arg(long, env = "PLAIN_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// MQTT 3.1.1 listener port.
    #[arg(long, env = "PLAIN_V4")]
    v4: Option<u16>,
    /// MQTT 5 listener port.
    #[arg(long, env = "PLAIN_V5")]
    v5: Option<u16>,
    /// WebSocket listener port (rumqttd speaks MQTT 3.1.1 there).
    #[arg(long, env = "PLAIN_WS")]
    ws: Option<u16>,
    /// MQTT 3.1.1 over TLS listener port (needs --cert and --key).
    #[arg(long, env = "PLAIN_TLS_V4", requires_all = ["cert", "key"])]
    tls_v4: Option<u16>,
    /// PEM certificate chain for the TLS listener.
    #[arg(long, env = "PLAIN_CERT")]
    cert: Option<PathBuf>,
    /// PEM private key for the TLS listener.
    #[arg(long, env = "PLAIN_KEY")]
    key: Option<PathBuf>,
    /// With --auth-pass: the only username/password every listener accepts.
    #[arg(long, env = "PLAIN_AUTH_USER", requires = "auth_pass")]
    auth_user: Option<String>,
    #[arg(long, env = "PLAIN_AUTH_PASS", requires = "auth_user")]
    auth_pass: Option<String>,
}

fn server(
    name: &str,
    addr: SocketAddr,
    tls: Option<TlsConfig>,
    auth: &Option<HashMap<String, String>>,
) -> HashMap<String, ServerSettings> {
    let settings = ServerSettings {
        name: name.to_string(),
        listen: addr,
        tls,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 20_480,
            max_inflight_count: 100,
            auth: auth.clone(),
            external_auth: None,
            dynamic_filters: true,
        },
    };
    HashMap::from([("1".to_string(), settings)])
}

fn main() {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let auth = match (&args.auth_user, &args.auth_pass) {
        (Some(u), Some(p)) => Some(HashMap::from([(u.clone(), p.clone())])),
        _ => None,
    };
    let at = |port: u16| SocketAddr::new(args.host, port);

    let mut v4 = HashMap::new();
    if let Some(p) = args.v4 {
        v4.extend(server("v4", at(p), None, &auth));
    }
    if let (Some(p), Some(cert), Some(key)) = (args.tls_v4, &args.cert, &args.key) {
        let tls = TlsConfig::Rustls {
            capath: None,
            certpath: cert.display().to_string(),
            keypath: key.display().to_string(),
        };
        for (_, s) in server("tls-v4", at(p), Some(tls), &auth) {
            v4.insert("2".to_string(), s);
        }
    }
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            max_segment_size: 104_857_600,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: (!v4.is_empty()).then_some(v4),
        v5: args.v5.map(|p| server("v5", at(p), None, &auth)),
        ws: args.ws.map(|p| server("ws", at(p), None, &auth)),
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    if let Err(e) = broker.start() {
        eprintln!("plain_rumqttd: {e}");
        std::process::exit(1);
    }
}
