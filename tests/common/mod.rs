//! Test harness: runs the real `realtime-web` binary on free loopback ports.
//!
//! Each test starts its own server process (`Server::start()` or `Server::builder()…start()`)
//! with its own storage directory, so tests run in parallel without sharing state. The server
//! is configured through `RTW_…` environment variables exactly as a user would.

#![allow(dead_code)]

pub mod auth;
pub mod browser;
pub mod clients;
pub mod files;
pub mod http;
pub mod mqtt;
pub mod nats;
pub mod plain;
pub mod reliability;
pub mod rpc;
pub mod sse;
pub mod tls;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (the OS picks it; the server binds it a moment later).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Is `port` on loopback listened on by process `pid` itself?
///
/// A port that merely accepts connections is not proof that a just-spawned server is up: between
/// `free_port()` and the server's bind, another test's process can take the port (an internal
/// listener, a client's source port), and then a probe reaches that process instead while ours
/// exits with "address in use". Linux says who owns a listening socket: its inode in
/// /proc/net/tcp{,6} against the socket links in /proc/PID/fd. Elsewhere, a connect has to do.
pub fn listened_by(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    let mut have_proc = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        have_proc = true;
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            let listening = f.get(3) == Some(&"0A");
            let on_port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .is_some_and(|(_, p)| u16::from_str_radix(p, 16) == Ok(port));
            if listening && on_port {
                if let Some(inode) = f.get(9) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    if !have_proc {
        return TcpStream::connect(("127.0.0.1", port)).is_ok();
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
    })
}

/// The repository root (for `certs/` and `tests/` assets).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The development CA that signed `certs/server.pem`.
pub fn ca_file() -> PathBuf {
    root().join("certs/ca.pem")
}

pub struct Builder {
    env: Vec<(String, String)>,
    tls: bool,
    dir: Option<PathBuf>,
    config: Option<PathBuf>,
    log_file: Option<PathBuf>,
}

impl Builder {
    /// Sets `RTW_<SECTION>__<KEY>`, e.g. `.env("LIMITS__MAX_INFLIGHT", "10")`.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((format!("RTW_{key}"), value.to_string()));
        self
    }

    /// Also listen on MQTT over TLS and HTTPS with the development certificates.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Use this storage directory (to restart over the same data).
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Pass `--config PATH` (a TOML file, e.g. for `[[rpc.routes]]`); `RTW_…` variables still
    /// override it.
    pub fn config_file(mut self, path: &Path) -> Self {
        self.config = Some(path.to_path_buf());
        self
    }

    /// Append the server's stderr (its log) to this file, e.g. to check what it logs.
    pub fn log_file(mut self, path: &Path) -> Self {
        self.log_file = Some(path.to_path_buf());
        self
    }

    pub fn start(self) -> Server {
        let dir = self.dir.unwrap_or_else(|| files::temp_dir("test"));
        let mut s = Server {
            child: None,
            mqtt: free_port(),
            http: free_port(),
            mqtts: self.tls.then(free_port),
            https: self.tls.then(free_port),
            dir,
            env: self.env,
            config: self.config,
            log_file: self.log_file,
            started: false,
        };
        s.spawn();
        s
    }
}

/// A running `realtime-web` process, killed on drop.
pub struct Server {
    child: Option<Child>,
    pub mqtt: u16,
    pub http: u16,
    pub mqtts: Option<u16>,
    pub https: Option<u16>,
    pub dir: PathBuf,
    env: Vec<(String, String)>,
    config: Option<PathBuf>,
    log_file: Option<PathBuf>,
    started: bool,
}

impl Server {
    pub fn builder() -> Builder {
        Builder {
            env: Vec::new(),
            tls: false,
            dir: None,
            config: None,
            log_file: None,
        }
    }

    pub fn start() -> Server {
        Self::builder().start()
    }

    /// Starts the process; a start that fails (a free port taken by someone else between
    /// `free_port()` and the bind) is retried, on fresh ports unless this is a restart.
    fn spawn(&mut self) {
        let restart = self.started;
        let mut last = String::new();
        for _ in 0..3 {
            match self.try_spawn() {
                Ok(()) => {
                    self.started = true;
                    return;
                }
                Err(e) => last = e,
            }
            if !restart {
                self.mqtt = free_port();
                self.http = free_port();
                self.mqtts = self.mqtts.map(|_| free_port());
                self.https = self.https.map(|_| free_port());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{last}");
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        // RTW_TEST_BIN runs the tests against another build (e.g. to see a test fail before
        // its fix); otherwise the binary cargo built with them.
        let bin = std::env::var_os("RTW_TEST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_realtime-web")));
        let mut cmd = Command::new(bin);
        cmd.env("RTW_MQTT__LISTEN", format!("127.0.0.1:{}", self.mqtt))
            .env("RTW_HTTP__LISTEN", format!("127.0.0.1:{}", self.http))
            .env("RTW_STORAGE__DIR", &self.dir)
            .env_remove("RUST_LOG")
            // The harness's own switch, not a config key (RTW_ is the config prefix).
            .env_remove("RTW_TEST_LOG")
            .env_remove("RTW_TEST_BIN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("RTW_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        if let (Some(m), Some(h)) = (self.mqtts, self.https) {
            let certs = root().join("certs");
            cmd.env("RTW_MQTTS__LISTEN", format!("127.0.0.1:{m}"))
                .env("RTW_MQTTS__CERT", certs.join("server.pem"))
                .env("RTW_MQTTS__KEY", certs.join("server.key"))
                .env("RTW_HTTPS__LISTEN", format!("127.0.0.1:{h}"))
                .env("RTW_HTTPS__CERT", certs.join("server.pem"))
                .env("RTW_HTTPS__KEY", certs.join("server.key"));
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        if let Some(f) = &self.log_file {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
                .expect("open log file");
            cmd.stderr(file);
        }
        let child = cmd.spawn().expect("start realtime-web");
        let pid = child.id();
        self.child = Some(child);
        let mut ports = vec![self.mqtt, self.http];
        ports.extend(self.mqtts);
        ports.extend(self.https);
        let deadline = Instant::now() + Duration::from_secs(20);
        for p in ports {
            while !listened_by(pid, p) {
                if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                    self.child = None;
                    return Err(format!("realtime-web exited during startup: {status}"));
                }
                assert!(
                    Instant::now() < deadline,
                    "realtime-web did not listen on {p}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no clean-up.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts a stopped server again on the same ports and storage directory.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Starts again on the same ports and storage directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Is the process still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn mqtt_url(&self) -> String {
        format!("127.0.0.1:{}", self.mqtt)
    }

    pub fn http_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `cmd` with no stdin and its stdout and stderr piped (panics, naming it, if it cannot).
pub fn spawn_piped(cmd: &mut Command) -> Child {
    let cmd = cmd.stdin(Stdio::null());
    let cmd = cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command with a timeout; returns (exit code, stdout, stderr).
pub fn run(cmd: &mut Command, timeout: Duration) -> (Option<i32>, String, String) {
    let mut child = spawn_piped(cmd);
    exit_within(&mut child, timeout);
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits for `child` to exit, killing it after `timeout`.
fn exit_within(child: &mut Child, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Spawns a long-running command (e.g. mosquitto_sub) whose output is read later.
pub fn spawn(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Waits for a child with a timeout and returns its stdout.
pub fn collect(mut child: Child, timeout: Duration) -> String {
    exit_within(&mut child, timeout);
    let out = child.wait_with_output().expect("wait");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where the Chromium tests expect the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// May a test that needs Chromium, the programs `tools` and the repository files `files`
/// (`(path, how to get it)`) run? Without CI it is skipped (false, with a note) when something is
/// missing; under CI a missing prerequisite fails it.
pub fn prerequisites(test: &str, tools: &[&str], files: &[(&str, &str)]) -> bool {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("{CHROMIUM} (apt-get install chromium)"));
    }
    for tool in tools {
        let found = Command::new(tool)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            missing.push(tool.to_string());
        }
    }
    for (file, how) in files {
        if !root().join(file).exists() {
            missing.push(format!("{file} ({how})"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} cannot run under CI: missing {}",
        missing.join(", ")
    );
    eprintln!(
        "SKIPPED {test}: missing {} (CI is unset, so this passes; under CI=true it fails)",
        missing.join(", ")
    );
    false
}

/// The Node packages the Chromium tests drive.
pub const PLAYWRIGHT: (&str, &str) = (
    "tests/browser/node_modules/playwright-core/package.json",
    "npm ci in tests/browser",
);
pub const MQTT_JS: (&str, &str) = (
    "examples/browser/node_modules/mqtt/dist/mqtt.min.js",
    "npm ci in examples/browser",
);

/// SIGKILLs and reaps the process in `child`, if there is one, leaving `None`.
pub fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A child process killed (by its id) on drop.
pub struct Kid(pub Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The echo example (`examples/echo`, an RPC responder) against `s` with extra arguments; its
/// output is discarded but for errors.
pub fn echo(s: &Server, args: &[&str]) -> Kid {
    let mut cmd = Command::new(example_bin("echo"));
    cmd.args(["--port", &s.mqtt.to_string()])
        .args(["--id", &format!("echo-{}", rand::random::<u32>())])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    Kid(cmd.spawn().expect("start echo"))
}

/// Builds example `name` once per test process (a no-op when `cargo test --all-targets` already
/// built it) and returns its path in this test's own profile directory.
pub fn example_bin(name: &str) -> PathBuf {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    // This test binary is target/<profile>/deps/<test>-<hash>.
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_path_buf();
    let bin = profile_dir.join("examples").join(name);
    let mut cargo = Command::new(env!("CARGO"));
    // `cargo test` hands this process the package's variables (CARGO_MANIFEST_DIR,
    // CARGO_PKG_NAME, …). Build scripts such as ring's rerun when those change, so passing them
    // on would rebuild ring and all above it here, and again in the next plain `cargo build`.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_EXE_")
            || k.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&k.as_str())
        {
            cargo.env_remove(&k);
        }
    }
    cargo
        .args(["build", "--quiet", "--example", name, "--manifest-path"])
        .arg(root().join("Cargo.toml"));
    if let Some(target) = profile_dir.parent() {
        cargo.env("CARGO_TARGET_DIR", target);
    }
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cargo.arg("--release");
        }
        Some(other) => {
            cargo.args(["--profile", other]);
        }
    }
    let (code, _, err) = run(&mut cargo, Duration::from_secs(900));
    // A workspace mid-edit may not build; an example built before is still that example.
    assert!(
        code == Some(0) || bin.exists(),
        "cargo build --example {name} failed: {err}"
    );
    assert!(bin.exists(), "{} is missing", bin.display());
    built.insert(name.to_string(), bin.clone());
    bin
}
