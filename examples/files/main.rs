//! `files`: a file service behind realtime-web's request/response bridge, speaking the chunk
//! protocol for large bodies (MQTT 5, rumqttc).
//!
//! * `PUT`/`POST /rpc/files/{name}` stores the body as `{dir}/{name}`; `GET` streams it back;
//!   `DELETE` removes it. Requests come on `rpc/files/#` (the default `/rpc/…` route).
//! * Upload: a body over the bridge's `rpc.chunk_size` comes as chunks (`rtw-chunk` 0, 1, …,
//!   `rtw-last`); each is written to a temporary file, then acknowledged (`rtw-ack` to the
//!   request's Response Topic, same Correlation Data), which is what lets the bridge send more:
//!   a slow disk slows the HTTP upload. `rtw-abort` removes the partial file. On the last chunk
//!   the file is renamed into place and the reply is `201` with `{"name","bytes"}`.
//! * Download: the file is read `--chunk` bytes at a time and sent as reply chunks, at most
//!   `--window` ahead of the bridge's acknowledgements, which come on this responder's own ack
//!   topic (`files-acks/{id}`, given as the Response Topic of each reply chunk). A small file is
//!   one message. A missing file is `404`.
//!
//! Run: `cargo run --release --example files -- --port 1883 --dir /tmp/rtw-files`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

const MAX_PACKET: u32 = 16 << 20;
/// How long a download waits for the bridge's acknowledgement before giving up.
const ACK_WAIT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug, Clone)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Where files are kept.
    #[arg(long, default_value = "rtw-files")]
    dir: PathBuf,
    /// Filter to serve; the file name is the topic after its literal prefix.
    #[arg(long, default_value = "rpc/files/#")]
    filter: String,
    #[arg(long, default_value = "files")]
    id: String,
    /// Bytes per reply chunk (keep it within the broker's packet size).
    #[arg(long, default_value_t = 256 * 1024)]
    chunk: usize,
    /// Reply chunks sent ahead of the bridge's acknowledgements.
    #[arg(long, default_value_t = 4)]
    window: u64,
    #[arg(long)]
    username: Option<String>,
    #[arg(long)]
    password: Option<String>,
}

/// A transfer in progress, by correlation data.
enum Job {
    Upload(mpsc::Sender<Publish>),
    Download(watch::Sender<Ack>),
}

#[derive(Clone, Copy, Default)]
struct Ack {
    /// Highest chunk acknowledged, plus one.
    next: u64,
    aborted: bool,
}

type Jobs = Arc<Mutex<HashMap<Bytes, Job>>>;

fn prop<'a>(p: &'a PublishProperties, name: &str) -> Option<&'a str> {
    p.user_properties
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::fs::create_dir_all(&args.dir).await?;
    let mut opts = MqttOptions::new(&args.id, &args.host, args.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(Some(MAX_PACKET));
    if let (Some(u), Some(p)) = (&args.username, &args.password) {
        opts.set_credentials(u, p);
    }
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    opts.set_network_options(net);
    let (client, mut events) = AsyncClient::new(opts, 64);
    let ack_topic = format!("files-acks/{}", args.id);
    let prefix = args.filter.trim_end_matches('#').to_string();
    let jobs: Jobs = Arc::default();
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                client.subscribe(&args.filter, QoS::AtLeastOnce).await?;
                client.subscribe(&ack_topic, QoS::AtLeastOnce).await?;
                println!("files: serving {} from {}", args.filter, args.dir.display());
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                let props = p.properties.clone().unwrap_or_default();
                let Some(corr) = props.correlation_data.clone() else {
                    continue;
                };
                if topic == ack_topic {
                    acknowledged(&jobs, &corr, &props);
                    continue;
                }
                let Some(name) = topic.strip_prefix(&prefix).map(str::to_string) else {
                    continue;
                };
                let Some(reply_to) = props.response_topic.clone() else {
                    continue;
                };
                let chunk = prop(&props, "rtw-chunk").and_then(|n| n.parse::<u64>().ok());
                let upload = jobs.lock().unwrap().get(&corr).and_then(|j| match j {
                    Job::Upload(tx) => Some(tx.clone()),
                    Job::Download(_) => None,
                });
                match (chunk, upload) {
                    // The next chunk of an upload in progress (in order: one task writes them).
                    (Some(_), Some(tx)) => {
                        let _ = tx.send(p).await;
                    }
                    (Some(0), None) => {
                        let (tx, rx) = mpsc::channel(16);
                        jobs.lock()
                            .unwrap()
                            .insert(corr.clone(), Job::Upload(tx.clone()));
                        let (c, j, dir) = (client.clone(), jobs.clone(), args.dir.clone());
                        tokio::spawn(async move {
                            let reply = upload_file(&c, &dir, &name, &reply_to, &corr, rx).await;
                            j.lock().unwrap().remove(&corr);
                            if let Some((status, body)) = reply {
                                respond(&c, &reply_to, &corr, status, body).await;
                            }
                        });
                        let _ = tx.send(p).await;
                    }
                    (Some(_), None) => {} // a chunk of an abandoned upload
                    (None, _) => {
                        let method = prop(&props, "method").unwrap_or("GET").to_string();
                        let (c, j, a) = (client.clone(), jobs.clone(), args.clone());
                        let ack_topic = ack_topic.clone();
                        tokio::spawn(async move {
                            let req = Request {
                                client: &c,
                                reply_to: &reply_to,
                                corr: &corr,
                                jobs: &j,
                            };
                            req.handle(&a, &ack_topic, &method, &name, p.payload).await;
                        });
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("files: connection error: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The bridge acknowledged a reply chunk (or the caller went away).
fn acknowledged(jobs: &Jobs, corr: &Bytes, props: &PublishProperties) {
    if let Some(Job::Download(w)) = jobs.lock().unwrap().get(corr) {
        let n = prop(props, "rtw-ack").and_then(|n| n.parse::<u64>().ok());
        let aborted = prop(props, "rtw-abort").is_some();
        w.send_modify(|a| {
            if let Some(n) = n {
                a.next = a.next.max(n + 1);
            }
            a.aborted |= aborted;
        });
    }
}

/// A file name under `dir`, refusing anything that could leave it.
fn path_of(dir: &Path, name: &str) -> Option<PathBuf> {
    let ok = !name.is_empty()
        && name
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    ok.then(|| dir.join(name.replace('/', "_")))
}

fn json(v: serde_json::Value) -> Bytes {
    Bytes::from(v.to_string())
}

async fn respond(c: &AsyncClient, to: &str, corr: &Bytes, status: u16, body: Bytes) {
    let props = PublishProperties {
        correlation_data: Some(corr.clone()),
        content_type: Some("application/json".into()),
        user_properties: vec![("status".into(), status.to_string())],
        ..Default::default()
    };
    let _ = c
        .publish_with_properties(to, QoS::AtLeastOnce, false, body, props)
        .await;
}

/// Writes an upload's chunks in order, acknowledging each once written.
async fn upload_file(
    c: &AsyncClient,
    dir: &Path,
    name: &str,
    reply_to: &str,
    corr: &Bytes,
    mut rx: mpsc::Receiver<Publish>,
) -> Option<(u16, Bytes)> {
    let Some(path) = path_of(dir, name) else {
        return Some((400, json(serde_json::json!({"error": "bad file name"}))));
    };
    let tmp = path.with_extension(format!("part-{:x}", rand_id()));
    let mut file = match tokio::fs::File::create(&tmp).await {
        Ok(f) => f,
        Err(e) => return Some((500, json(serde_json::json!({"error": e.to_string()})))),
    };
    let mut bytes = 0u64;
    let mut next = 0u64;
    let outcome = loop {
        let Ok(Some(p)) = tokio::time::timeout(ACK_WAIT, rx.recv()).await else {
            break Err("the upload stopped".to_string());
        };
        let props = p.properties.clone().unwrap_or_default();
        if prop(&props, "rtw-abort").is_some() {
            break Err(String::new());
        }
        let n = prop(&props, "rtw-chunk").and_then(|n| n.parse::<u64>().ok());
        if n != Some(next) {
            break Err(format!("chunk {n:?} came where {next} was due"));
        }
        if let Err(e) = file.write_all(&p.payload).await {
            break Err(e.to_string());
        }
        bytes += p.payload.len() as u64;
        let ack = PublishProperties {
            correlation_data: Some(corr.clone()),
            user_properties: vec![("rtw-ack".into(), next.to_string())],
            ..Default::default()
        };
        let _ = c
            .publish_with_properties(reply_to, QoS::AtLeastOnce, false, Bytes::new(), ack)
            .await;
        next += 1;
        if prop(&props, "rtw-last") == Some("true") {
            break Ok(());
        }
    };
    let done = match outcome {
        Ok(()) => file.flush().await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    drop(file);
    match done {
        Ok(()) => match tokio::fs::rename(&tmp, &path).await {
            Ok(()) => Some((201, json(serde_json::json!({"name": name, "bytes": bytes})))),
            Err(e) => Some((500, json(serde_json::json!({"error": e.to_string()})))),
        },
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            // An aborted upload has nobody to answer.
            (!e.is_empty()).then(|| (502, json(serde_json::json!({"error": e}))))
        }
    }
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// A one-message request.
struct Request<'a> {
    client: &'a AsyncClient,
    reply_to: &'a str,
    corr: &'a Bytes,
    jobs: &'a Jobs,
}

impl Request<'_> {
    async fn handle(&self, a: &Args, ack_topic: &str, method: &str, name: &str, body: Bytes) {
        let Some(path) = path_of(&a.dir, name) else {
            return self
                .reply(400, serde_json::json!({"error": "bad file name"}))
                .await;
        };
        match method {
            "PUT" | "POST" => match tokio::fs::write(&path, &body).await {
                Ok(()) => {
                    let v = serde_json::json!({"name": name, "bytes": body.len()});
                    self.reply(201, v).await
                }
                Err(e) => {
                    self.reply(500, serde_json::json!({"error": e.to_string()}))
                        .await
                }
            },
            "DELETE" => match tokio::fs::remove_file(&path).await {
                Ok(()) => self.reply(200, serde_json::json!({"deleted": name})).await,
                Err(_) => {
                    self.reply(404, serde_json::json!({"error": "no such file"}))
                        .await
                }
            },
            "GET" => match tokio::fs::File::open(&path).await {
                Ok(f) => self.download(a, ack_topic, f).await,
                Err(_) => {
                    self.reply(404, serde_json::json!({"error": "no such file"}))
                        .await
                }
            },
            _ => {
                self.reply(405, serde_json::json!({"error": "PUT, GET or DELETE"}))
                    .await
            }
        }
    }

    async fn reply(&self, status: u16, v: serde_json::Value) {
        respond(self.client, self.reply_to, self.corr, status, json(v)).await
    }

    /// Streams a file as reply chunks, `window` ahead of the bridge's acknowledgements.
    async fn download(&self, a: &Args, ack_topic: &str, mut f: tokio::fs::File) {
        let (tx, mut acks) = watch::channel(Ack::default());
        self.jobs
            .lock()
            .unwrap()
            .insert(self.corr.clone(), Job::Download(tx));
        let mut buf = vec![0u8; a.chunk];
        let mut filled = read_full(&mut f, &mut buf).await;
        let mut n = 0u64;
        loop {
            let data = Bytes::copy_from_slice(&buf[..filled]);
            filled = if filled == a.chunk {
                read_full(&mut f, &mut buf).await
            } else {
                0
            };
            let last = filled == 0;
            let mut user = Vec::new();
            if n == 0 {
                user.push(("status".to_string(), "200".to_string()));
            }
            if !(n == 0 && last) {
                user.push(("rtw-chunk".to_string(), n.to_string()));
                user.push(("rtw-last".to_string(), last.to_string()));
            }
            let props = PublishProperties {
                correlation_data: Some(self.corr.clone()),
                response_topic: Some(ack_topic.to_string()),
                content_type: Some("application/octet-stream".into()),
                user_properties: user,
                ..Default::default()
            };
            // The window: chunk n goes once chunk n - window is acknowledged.
            let ok = tokio::time::timeout(
                ACK_WAIT,
                acks.wait_for(|ack| ack.aborted || n < ack.next + a.window),
            )
            .await
            .map(|r| r.map(|ack| *ack));
            if !matches!(ok, Ok(Ok(ack)) if !ack.aborted) {
                break;
            }
            let sent = self
                .client
                .publish_with_properties(self.reply_to, QoS::AtLeastOnce, false, data, props)
                .await;
            if sent.is_err() || last {
                break;
            }
            n += 1;
        }
        self.jobs.lock().unwrap().remove(self.corr);
    }
}

/// Fills `buf` from the file as far as it goes; returns how much.
async fn read_full(f: &mut tokio::fs::File, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => filled += k,
        }
    }
    filled
}
