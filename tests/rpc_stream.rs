//! Large bodies through request/response, streamed both ways (issue 17): the `files` example
//! (an MQTT 5 responder speaking the chunk protocol) stores uploads and streams downloads;
//! bodies arrive byte-exact (SHA-256 on both sides), a responder that stops mid-stream gives the
//! caller a clean error and leaves nothing behind, and `rpc.max_stream_bytes` is enforced.
//! (How much memory the server takes while streaming is measured by `bench/rpc.sh`.)

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::files::TempDir;
use common::http::SendOk;
use common::rpc::*;
use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};

const T: Duration = Duration::from_secs(30);
const MIB: usize = 1 << 20;

fn http() -> reqwest::Client {
    common::http::client(Duration::from_secs(300))
}

/// The `files` example serving `dir`.
fn files(s: &Server, dir: &Path) -> Kid {
    let mut cmd = Command::new(example_bin("files"));
    cmd.args(["--port", &s.mqtt.to_string()])
        .args(["--id", &format!("files-{}", rand::random::<u32>())])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    Kid(cmd.spawn().expect("start files"))
}

/// A fresh directory (`rtw-{what}-…`, removed on drop) and the `files` example serving it.
fn files_in(s: &Server, what: &str) -> (TempDir, Kid) {
    let dir = TempDir::new(what);
    let kid = files(s, &dir.0);
    (dir, kid)
}

/// A server, and [`files_in`] on it.
fn files_server(what: &str) -> (Server, TempDir, Kid) {
    let s = Server::start();
    let (dir, kid) = files_in(&s, what);
    (s, dir, kid)
}

/// A request body fed from the returned channel: it ends when the sender is dropped.
fn piped_body() -> (
    tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    reqwest::Body,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let chunks =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    (tx, reqwest::Body::wrap_stream(chunks))
}

/// How many entries `dir` has.
fn entries(dir: &TempDir) -> usize {
    std::fs::read_dir(&dir.0).unwrap().count()
}

/// `PUT url` with `body` (willing to wait 20 s for a responder; `RTW-Timeout: timeout` when
/// given), on a task of its own.
fn spawn_put(
    c: &reqwest::Client,
    url: String,
    body: reqwest::Body,
    timeout: Option<&str>,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let mut req = c.put(url).header("RTW-Wait", "20").body(body);
    if let Some(t) = timeout {
        req = req.header("RTW-Timeout", t);
    }
    tokio::spawn(req.send_ok())
}

/// Polls `cond` every 20 ms until it holds; fails, saying `what` did not happen, after `T`.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` MiB of pseudo-random bytes (xorshift from `seed`), made as they are sent; the SHA-256 of
/// what was produced lands in `sum`.
fn generated(
    n: usize,
    seed: u64,
    sum: Arc<Mutex<Option<Vec<u8>>>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let state = (0usize, seed | 1, Sha256::new());
    futures_util::stream::unfold(Some(state), move |st| {
        let sum = sum.clone();
        async move {
            let (i, mut x, mut h) = st?;
            if i == n {
                *sum.lock().unwrap() = Some(h.finalize().to_vec());
                return None;
            }
            let mut block = Vec::with_capacity(MIB);
            while block.len() < MIB {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                block.extend_from_slice(&x.to_le_bytes());
            }
            h.update(&block);
            Some((Ok(Bytes::from(block)), Some((i + 1, x, h))))
        }
    })
}

/// Waits until nothing is in flight or waiting (the call's state is gone).
async fn wait_idle(c: &reqwest::Client, base: &str) -> Value {
    wait_rpc_stats(c, base, T, |st| st["in_flight"] == 0 && st["waiting"] == 0).await
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Uploads `n` MiB as a chunked (length-less) body; returns the response and the body's sum.
async fn upload(
    c: &reqwest::Client,
    url: &str,
    n: usize,
    seed: u64,
) -> (reqwest::Response, String) {
    let sum = Arc::new(Mutex::new(None));
    let r = c
        .put(url)
        .header("RTW-Wait", "20")
        .header("RTW-Timeout", "30")
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(generated(n, seed, sum.clone())))
        .send()
        .await
        .expect("upload");
    let s = sum
        .lock()
        .unwrap()
        .clone()
        .map(|s| hex(&s))
        .unwrap_or_default();
    (r, s)
}

/// [`upload`] of `n` MiB to the `files` example as `name`: the file's URL, the response and
/// the body's sum.
async fn upload_file(
    c: &reqwest::Client,
    base: &str,
    name: &str,
    n: usize,
    seed: u64,
) -> (String, reqwest::Response, String) {
    let url = format!("{base}/rpc/files/{name}");
    let (r, sum) = upload(c, &url, n, seed).await;
    (url, r, sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_upload_and_download_arrive_byte_exact() {
    let (s, dir, _files) = files_server("files");
    let (c, base) = (http(), s.http_base());
    let (url, r, sent) = upload_file(&c, &base, "big.bin", 200, 17).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["bytes"], 200 * MIB as u64, "{v}");
    let stored = hex(&Sha256::digest(
        std::fs::read(dir.0.join("big.bin")).unwrap(),
    ));
    assert_eq!(stored, sent, "the stored file is what was uploaded");

    let r = c
        .get(&url)
        .header("RTW-Timeout", "30")
        .send()
        .await
        .expect("download");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get("content-type").unwrap(),
        "application/octet-stream"
    );
    let mut h = Sha256::new();
    let mut len = 0usize;
    let mut body = r.bytes_stream();
    while let Some(b) = body.next().await {
        let b = b.expect("download body");
        len += b.len();
        h.update(&b);
    }
    assert_eq!(len, 200 * MIB);
    assert_eq!(hex(&h.finalize()), sent, "downloaded what was uploaded");

    let st = wait_idle(&c, &base).await;
    assert!(st["streams"].as_u64().unwrap() >= 2, "{st}");
    assert_eq!(st["stream_errors"], 0, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_that_stops_mid_upload_gives_a_clean_error() {
    let (s, dir, files_proc) = files_server("files-stop-up");
    let (c, base) = (http(), s.http_base());
    // The body comes from this channel: some now, the rest after the responder is gone.
    let (tx, body) = piped_body();
    let url = format!("{base}/rpc/files/partial.bin");
    let call = spawn_put(&c, url, body, Some("10"));
    for _ in 0..4 {
        tx.send(Ok(Bytes::from(vec![7u8; MIB]))).await.unwrap();
    }
    // The responder has written some of it…
    eventually("no part file written", || {
        std::fs::read_dir(&dir.0)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
    })
    .await;
    // …and goes away; the caller keeps sending until the bridge answers.
    drop(files_proc);
    let feeder = tokio::spawn(async move {
        for _ in 0..400 {
            if tx.send(Ok(Bytes::from(vec![8u8; MIB]))).await.is_err() {
                return;
            }
        }
    });
    let r = tokio::time::timeout(T, call)
        .await
        .expect("answered")
        .unwrap();
    let status = r.status().as_u16();
    assert!(status == 502 || status == 504, "status {status}");
    let v: Value = r.json().await.expect("JSON error");
    assert_eq!(v["error"]["status"], status, "{v}");
    feeder.abort();
    let st = wait_idle(&c, &base).await;
    assert!(st["stream_errors"].as_u64().unwrap() >= 1, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_that_stops_mid_download_cuts_the_body() {
    let (s, _dir, files_proc) = files_server("files-stop-down");
    let (c, base) = (http(), s.http_base());
    let (url, r, _) = upload_file(&c, &base, "movie.bin", 64, 5).await;
    assert_eq!(r.status(), 201);

    let r = c
        .get(&url)
        .header("RTW-Timeout", "10")
        .send_expect(200)
        .await;
    let mut body = r.bytes_stream();
    let mut len = 0usize;
    while len < 2 * MIB {
        len += body.next().await.expect("more body").expect("body").len();
    }
    drop(files_proc);
    // The rest never comes: the body ends in an error, not a clean short end.
    let end = tokio::time::timeout(T, async {
        while let Some(b) = body.next().await {
            match b {
                Ok(b) => len += b.len(),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await
    .expect("the body ends");
    assert!(end.is_err(), "the body ended cleanly after {len} bytes");
    assert!(len < 64 * MIB, "{len}");
    let st = wait_idle(&c, &base).await;
    assert!(st["stream_errors"].as_u64().unwrap() >= 1, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_stream_bytes_is_413() {
    let s = Server::builder()
        .env("RPC__MAX_STREAM_BYTES", 3 * MIB)
        .start();
    let (dir, _files) = files_in(&s, "files-max");
    let (c, base) = (http(), s.http_base());
    let url = format!("{base}/rpc/files/too-big.bin");
    // Declared length: refused at once.
    let r = c
        .put(&url)
        .header("RTW-Wait", "20")
        .body(vec![1u8; 4 * MIB])
        .send_ok()
        .await;
    assert_eq!(r.status(), 413);
    // Chunked (no length): refused once past the limit, and the responder is told (rtw-abort):
    // it removes its partial file. (curl: it reads the early answer while still sending.)
    let script = format!(
        "head -c {} /dev/zero | curl -sS -X PUT -H 'RTW-Wait: 20' -T - -w '\\n%{{http_code}}' {url}",
        5 * MIB
    );
    let (code, out, err) = run(Command::new("sh").args(["-c", &script]), T);
    assert_eq!(code, Some(0), "{err}");
    let (body, status) = out.rsplit_once('\n').expect("status line");
    assert_eq!(status, "413", "{out}");
    assert!(body.contains("max_stream_bytes"), "{body}");
    eventually("the partial upload was kept", || entries(&dir) == 0).await;
    wait_idle(&c, &base).await;
    // Within the limit it works.
    let (r, _) = upload(&c, &url, 2, 3).await;
    assert_eq!(r.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_leaves_mid_upload_frees_the_call_and_the_responder_is_told() {
    let (s, dir, _files) = files_server("files-leave");
    let (c, base) = (http(), s.http_base());
    let (tx, body) = piped_body();
    let call = spawn_put(&c, format!("{base}/rpc/files/left.bin"), body, None);
    for _ in 0..3 {
        tx.send(Ok(Bytes::from(vec![9u8; MIB]))).await.unwrap();
    }
    eventually("no part file written", || entries(&dir) > 0).await;
    // The caller goes away mid-body (its request is dropped; the body never ends).
    call.abort();
    wait_idle(&c, &base).await;
    // The responder got rtw-abort and removed its partial file.
    eventually("the partial upload was kept", || entries(&dir) == 0).await;
    drop(tx);
}
