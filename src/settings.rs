//! The one configuration: embedded defaults, then an optional TOML file, then `RTW_…` variables.
//!
//! Layering is done by the `config` crate; this module only declares the shape, turns it into the
//! broker's and bridge's own config types, and applies the secure-by-default rule: with no
//! authentication configured and `allow_anonymous` not set, every listener binds loopback only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::Context;
use broker::config as bc;
use serde::Deserialize;

const DEFAULTS: &str = include_str!("defaults.toml");

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// A tracing filter: `info`, `debug`, `broker=debug,info`…
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub mqtt: bc::Listener,
    pub mqtts: bc::TlsListener,
    pub http: bc::Listener,
    pub https: bc::TlsListener,
    pub storage: bc::Storage,
    pub limits: bc::Limits,
    pub core: bc::Core,
    pub sys: bc::Sys,
    pub bridge: bridge::BridgeSettings,
    pub rpc: bridge::rpc::RpcSettings,
    #[serde(default)]
    pub mercure: bridge::mercure::MercureSettings,
    #[serde(default)]
    pub auth: broker::security::AuthConfig,
    /// `[cluster]`: absent, the node runs alone.
    #[serde(default)]
    pub cluster: Option<broker::cluster::ClusterConfig>,
    pub log: Log,
}

impl Settings {
    /// Defaults, then `file`, then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        let mut b = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(f) = file {
            anyhow::ensure!(f.exists(), "config file {} does not exist", f.display());
            b = b.add_source(config::File::from(f).format(config::FileFormat::Toml));
        }
        // Only `RTW_<SECTION>__<KEY>` variables are configuration; others that merely start with
        // `RTW_` (a script's `RTW_BIN`, a test's switch) are not this program's business.
        let vars: config::Map<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("RTW_") && k.contains("__"))
            .collect();
        b = b.add_source(
            config::Environment::with_prefix("RTW")
                .source(Some(vars))
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("auth.jwt_public_keys")
                .with_list_parse_key("bridge.cors_origins")
                .with_list_parse_key("bridge.ws_origins")
                .with_list_parse_key("mercure.cors_origins")
                .try_parsing(true),
        );
        let c = b.build().context("cannot read configuration")?;
        c.try_deserialize().context("invalid configuration")
    }

    /// Defaults, then `text` as a config file, without the environment (the `config` fuzz
    /// target's entry point, see [`fuzz_config`]).
    #[allow(dead_code)]
    pub fn from_toml(text: &str) -> anyhow::Result<Settings> {
        let c = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .context("cannot read configuration")?;
        c.try_deserialize().context("invalid configuration")
    }

    /// Is any authenticator configured?
    pub fn auth_configured(&self) -> bool {
        self.auth.configured()
    }

    /// Loopback-only mode: no authentication and anonymous access not explicitly allowed.
    pub fn local_only(&self) -> bool {
        !self.auth_configured() && self.auth.allow_anonymous != Some(true)
    }

    /// Rewrites every listener onto loopback (keeping ports) when in loopback-only mode.
    pub fn apply_local_only(&mut self) -> bool {
        if !self.local_only() {
            return false;
        }
        for l in [
            &mut self.mqtt.listen,
            &mut self.mqtts.listen,
            &mut self.http.listen,
            &mut self.https.listen,
        ] {
            if let Ok(a) = l.parse::<SocketAddr>() {
                if !a.ip().is_loopback() {
                    *l = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a.port()).to_string();
                }
            }
        }
        true
    }

    pub fn broker(&self) -> bc::BrokerConfig {
        bc::BrokerConfig {
            mqtt: self.mqtt.clone(),
            mqtts: self.mqtts.clone(),
            storage: self.storage.clone(),
            limits: self.limits.clone(),
            core: self.core.clone(),
            sys: self.sys.clone(),
            allow_anonymous: self.local_only() || self.auth.allow_anonymous.unwrap_or(false),
            deny_action: self.auth.deny_action,
            cluster: self.cluster.clone(),
        }
    }
}

/// Target `config` of `fuzz/` (and `tests/fuzz_corpus.rs`, which includes this file): `data` as
/// a config file, then what the binary does with a loaded config short of opening files and
/// sockets.
#[allow(dead_code)]
pub fn fuzz_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mut s) = Settings::from_toml(text) {
        let _ = s.auth_configured();
        s.apply_local_only();
        let b = s.broker();
        let _ = (b.limits.connect_timeout(), b.limits.write_timeout());
        let _ = b.mqtts.enabled();
    }
}
