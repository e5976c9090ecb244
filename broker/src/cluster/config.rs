//! `[cluster]`: the NATS servers a node joins and its name. Without this section a node runs
//! alone and needs no NATS.

use std::path::PathBuf;

use serde::Deserialize;

/// A list of NATS URLs, written as one string (commas between URLs) or as a TOML list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Urls {
    One(String),
    Many(Vec<String>),
}

impl Default for Urls {
    fn default() -> Self {
        Urls::One("nats://127.0.0.1:4222".into())
    }
}

impl Urls {
    /// Each URL, trimmed, empty ones dropped.
    pub fn list(&self) -> Vec<String> {
        let all: Vec<&str> = match self {
            Urls::One(s) => s.split(',').collect(),
            Urls::Many(v) => v.iter().flat_map(|s| s.split(',')).collect(),
        };
        all.into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }
}

/// `[cluster]`; every key is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URL(s), e.g. `nats://10.0.0.5:4222` (default `nats://127.0.0.1:4222`).
    pub nats: Urls,
    /// This node's name in the cluster (default: the host name). Unique per node.
    pub node: Option<String>,
    /// A NATS credentials file (`.creds`: JWT and NKey seed).
    pub credentials: Option<PathBuf>,
    /// NATS user name and password.
    pub user: Option<String>,
    pub password: Option<String>,
    /// NATS authentication token.
    pub token: Option<String>,
    /// PEM file of the CA that signed the NATS servers' certificates (implies TLS).
    pub ca: Option<PathBuf>,
    /// Require TLS to NATS (`tls://` URLs do too).
    pub tls: bool,
    /// A node whose NATS link falls behind asks the others to hold their publishers until it
    /// catches up, and this node holds its own when another asks (`super::pressure`).
    pub flow_control: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats: Urls::default(),
            node: None,
            credentials: None,
            user: None,
            password: None,
            token: None,
            ca: None,
            tls: false,
            flow_control: true,
        }
    }
}

impl ClusterConfig {
    /// The node name: `node`, else the host name, else `node`.
    pub fn node_name(&self) -> String {
        if let Some(n) = self
            .node
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            return n.to_string();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_one_or_many() {
        assert_eq!(
            Urls::One("nats://a:1, nats://b:2".into()).list(),
            vec!["nats://a:1", "nats://b:2"]
        );
        assert_eq!(
            Urls::Many(vec!["nats://a:1".into()]).list(),
            vec!["nats://a:1"]
        );
        let c = ClusterConfig {
            node: Some(" n1 ".into()),
            ..Default::default()
        };
        assert_eq!(c.node_name(), "n1");
        assert!(!ClusterConfig::default().node_name().is_empty());
    }
}
