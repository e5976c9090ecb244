//! `[bridge]`: the HTTP bridge's own settings, with their defaults (documented in the README's
//! configuration reference).

/// `[bridge]`: the HTTP bridge's own settings; a key left out takes its value from
/// [`BridgeSettings::default`].
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeSettings {
    /// Largest HTTP request body, in bytes (413 past it).
    pub max_body: usize,
    /// Messages kept for `Last-Event-ID` replay and long polling.
    pub history_size: usize,
    /// Seconds a message stays in the history (and a filter stays followed after its last stream).
    pub history_secs: u64,
    /// Seconds between SSE heartbeat comments.
    pub heartbeat_secs: u64,
    /// Messages buffered per stream before it is told it fell behind.
    pub stream_buffer: usize,
    /// Longest `timeout` a long poll may ask for, in seconds.
    pub poll_max_secs: u64,
    /// Most `topic=` filters one stream or long poll may name (400 past it).
    pub max_filters: usize,
    /// Most distinct filters one caller (token subject, else address) may follow at once over
    /// its open streams and long polls (429 past it); also how many of the filters it left may
    /// linger for `Last-Event-ID` replay (the oldest is released first).
    pub max_filters_per_caller: usize,
    /// Origins allowed to call the HTTP API from a browser (CORS); `*` for any. None by default.
    pub cors_origins: Vec<String>,
    /// Origins allowed to open `/mqtt` WebSockets from a browser, besides the server's own
    /// origin; `*` for any.
    pub ws_origins: Vec<String>,
    /// Directory served at `/examples/browser/` (the browser example page).
    pub examples_dir: std::path::PathBuf,
    /// Seconds a request body may take to arrive once the request is authorized (408 past it).
    pub body_timeout_secs: u64,
    /// HTTP connections open at once from one address (past it: 429, connection closed; over
    /// TLS closed before the handshake).
    pub max_connections_per_ip: usize,
}

impl Default for BridgeSettings {
    fn default() -> Self {
        BridgeSettings {
            max_body: 1024 * 1024,
            history_size: 10_000,
            history_secs: 300,
            heartbeat_secs: 15,
            stream_buffer: 256,
            poll_max_secs: 60,
            max_filters: 32,
            max_filters_per_caller: 256,
            cors_origins: Vec::new(),
            ws_origins: Vec::new(),
            examples_dir: "examples/browser".into(),
            body_timeout_secs: 30,
            max_connections_per_ip: 1024,
        }
    }
}
