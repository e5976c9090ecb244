//! A real `nats-server` for cluster tests: its own port and JetStream store, killed on drop.
//! The binary comes from the Debian package `nats-server` (installed by `.ci/run`); without it
//! the tests fail and say so.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, listened_by};

pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    /// Its HTTP monitoring port (`/subsz`, `/connz`…).
    pub monitor: u16,
    pub store: PathBuf,
}

impl Nats {
    /// Starts `nats-server -js` on a free loopback port with a fresh store directory.
    pub fn start() -> Nats {
        let store = super::files::temp_dir("nats");
        let mut n = Nats {
            child: None,
            port: free_port(),
            monitor: free_port(),
            store,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-m",
                &self.monitor.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run nats-server ({e}): the cluster tests need it \
                     (Debian/Ubuntu: apt-get install nats-server; .ci/run installs it)"
                )
            });
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !listened_by(pid, self.port) {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The message subjects (`rtw.m.…`) subscribed on the server, sorted, with queue groups.
    pub fn message_subscriptions(&self) -> Vec<String> {
        let url = format!("http://127.0.0.1:{}/subsz?subs=1&limit=10000", self.monitor);
        let out = Command::new("curl")
            .args(["-s", &url])
            .output()
            .expect("curl");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("subsz JSON");
        let mut subs: Vec<String> = v["subscriptions_list"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|s| {
                let subject = s["subject"].as_str()?;
                subject
                    .starts_with("rtw.m.")
                    .then(|| match s["qgroup"].as_str() {
                        Some(q) if !q.is_empty() => format!("{subject} [{q}]"),
                        _ => subject.to_string(),
                    })
            })
            .collect();
        subs.sort();
        subs
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        super::kill_child(&mut self.child);
    }

    /// Starts again on the same port and store.
    pub fn start_again(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
