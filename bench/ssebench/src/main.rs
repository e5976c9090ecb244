//! `rtw-ssebench`: SSE fan-out load for realtime-web's HTTP bridge.
//!
//! 1. Reads the server's VmRSS (`--pid`), then opens `--streams` SSE streams on
//!    `GET /events?topic=T&retained=false` (raw HTTP/1.1 over tokio sockets, `--concurrency`
//!    set-ups in flight; a stream counts once its `200` response head arrived, which is when the
//!    bridge has registered it), waits `--settle-ms` and reads VmRSS again.
//! 2. Runs `--rounds` rounds: publishes one message (`POST /topics/T?qos=1`, on its own
//!    keep-alive connection) whose payload is `ssebench-round-K`, and records, for every stream,
//!    the time from just before the POST is written to the moment that stream has read the
//!    event. Per round, the last stream's time is the fan-out latency.
//!
//! With `--mercure-token JWT` the same load goes through the Mercure hub instead: streams are
//! `GET /.well-known/mercure?topic=T` (T a topic IRI, anonymous subscribers) and each round is a
//! form `POST /.well-known/mercure` (`topic=T&data=ssebench-round-K`, Bearer JWT).
//!
//! With `--rounds 0` it only opens the connections and reads the memory (any server that
//! answers `200` to the request, e.g. the hello-world baseline, for its cost per connection).
//!
//! Prints progress on stderr and one `RESULT key=value …` line on stdout; exit code 2 on error
//! (including the `--max-secs` deadline).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

const MARK: &[u8] = b"ssebench-round-";

struct Args {
    addr: SocketAddr,
    streams: usize,
    rounds: u32,
    topic: String,
    pid: Option<u32>,
    concurrency: usize,
    max_secs: u64,
    settle_ms: u64,
    round_timeout_secs: u64,
    mercure_token: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: rtw-ssebench --addr HOST:PORT [--streams 10000] [--rounds 5] [--topic bench/sse]\n\
         \x20                    [--pid SERVER_PID] [--concurrency 256] [--settle-ms 2000]\n\
         \x20                    [--round-timeout-secs 30] [--max-secs 180] [--mercure-token JWT]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:8080".parse().unwrap(),
        streams: 10_000,
        rounds: 5,
        topic: "bench/sse".into(),
        pid: None,
        concurrency: 256,
        max_secs: 180,
        settle_ms: 2000,
        round_timeout_secs: 30,
        mercure_token: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--help" || k == "-h" {
            usage();
        }
        let Some(v) = it.next() else { usage() };
        let bad = |_| -> ! {
            eprintln!("bad value for {k}: {v}");
            usage()
        };
        match k.as_str() {
            "--addr" => a.addr = v.parse().unwrap_or_else(|e| bad(format!("{e}"))),
            "--streams" => a.streams = v.parse().unwrap_or_else(|e| bad(format!("{e}"))),
            "--rounds" => a.rounds = v.parse().unwrap_or_else(|e| bad(format!("{e}"))),
            "--topic" => a.topic = v.clone(),
            "--mercure-token" => a.mercure_token = Some(v.clone()),
            "--pid" => a.pid = Some(v.parse().unwrap_or_else(|e| bad(format!("{e}")))),
            "--concurrency" => a.concurrency = v.parse().unwrap_or_else(|e| bad(format!("{e}"))),
            "--max-secs" => a.max_secs = v.parse().unwrap_or_else(|e| bad(format!("{e}"))),
            "--settle-ms" => a.settle_ms = v.parse().unwrap_or_else(|e| bad(format!("{e}"))),
            "--round-timeout-secs" => {
                a.round_timeout_secs = v.parse().unwrap_or_else(|e| bad(format!("{e}")))
            }
            _ => usage(),
        }
    }
    a
}

fn vmrss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Connects and sends the SSE request; returns the socket and any bytes read past the head.
async fn open_stream(
    addr: SocketAddr,
    topic: &str,
    mercure: bool,
) -> Result<(TcpStream, Vec<u8>), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let path = if mercure {
        format!("/.well-known/mercure?topic={topic}")
    } else {
        format!("/events?topic={topic}&retained=false")
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\
         Accept: text/event-stream\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before the response head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 200") {
                let line = String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned();
                return Err(format!("status: {line:?}"));
            }
            return Ok((s, buf[end + 4..].to_vec()));
        }
        if buf.len() > 16 * 1024 {
            return Err("response head too long".into());
        }
    }
}

/// Reads a stream forever, reporting each new round marker it sees.
async fn read_stream(
    mut s: TcpStream,
    mut buf: Vec<u8>,
    seen: mpsc::UnboundedSender<(u32, Instant)>,
) {
    let mut last_round: Option<u32> = None;
    let mut chunk = vec![0u8; 4096];
    loop {
        // Scan what we have.
        loop {
            let Some(i) = find(&buf, MARK) else {
                let keep = buf.len().min(MARK.len() + 12);
                buf.drain(..buf.len() - keep);
                break;
            };
            let digits = &buf[i + MARK.len()..];
            let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
            if n == digits.len() {
                buf.drain(..i); // the number may continue in the next read
                break;
            }
            let round: u32 = std::str::from_utf8(&digits[..n])
                .ok()
                .and_then(|d| d.parse().ok())
                .unwrap_or(u32::MAX);
            if last_round.is_none_or(|l| round > l) && round != u32::MAX {
                last_round = Some(round);
                if seen.send((round, Instant::now())).is_err() {
                    return;
                }
            }
            buf.drain(..i + MARK.len() + n);
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One request on a keep-alive connection; returns the status code.
async fn post(
    s: &mut TcpStream,
    addr: SocketAddr,
    path: &str,
    body: &str,
    extra_headers: &str,
) -> Result<u16, String> {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("publisher connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            return Ok(status);
        }
    }
}

async fn run(a: Args) -> Result<String, String> {
    let rss0 = a.pid.and_then(vmrss_kib);
    let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(u32, Instant)>();
    let (open_tx, mut open_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let t_open = Instant::now();
    for _ in 0..a.streams {
        let sem = sem.clone();
        let seen = seen_tx.clone();
        let opened = open_tx.clone();
        let topic = a.topic.clone();
        let addr = a.addr;
        let mercure = a.mercure_token.is_some();
        tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let r = open_stream(addr, &topic, mercure).await;
            drop(permit);
            match r {
                Ok((s, rest)) => {
                    let _ = opened.send(Ok(()));
                    read_stream(s, rest, seen).await;
                }
                Err(e) => {
                    let _ = opened.send(Err(e));
                }
            }
        });
    }
    drop(seen_tx);
    drop(open_tx);
    let mut ok = 0usize;
    let mut failed = 0usize;
    let mut first_err = None;
    while ok + failed < a.streams {
        match open_rx.recv().await {
            Some(Ok(())) => ok += 1,
            Some(Err(e)) => {
                failed += 1;
                first_err.get_or_insert(e);
            }
            None => break,
        }
        if (ok + failed) % 2000 == 0 {
            eprintln!("ssebench: {ok} streams open, {failed} failed");
        }
    }
    let open_secs = t_open.elapsed().as_secs_f64();
    if let Some(e) = &first_err {
        eprintln!("ssebench: {failed} streams failed to open; first: {e}");
    }
    if ok == 0 {
        return Err("no stream opened".into());
    }
    tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
    let rss1 = a.pid.and_then(vmrss_kib);
    eprintln!(
        "ssebench: {ok} streams open in {open_secs:.2}s; VmRSS {} -> {} KiB",
        rss0.map_or("-".into(), |v| v.to_string()),
        rss1.map_or("-".into(), |v| v.to_string())
    );

    let mut publisher = TcpStream::connect(a.addr)
        .await
        .map_err(|e| format!("publisher connect: {e}"))?;
    let _ = publisher.set_nodelay(true);
    let (path, headers) = match &a.mercure_token {
        Some(t) => (
            "/.well-known/mercure".to_string(),
            format!(
                "Content-Type: application/x-www-form-urlencoded\r\nAuthorization: Bearer {t}\r\n"
            ),
        ),
        None => (
            format!("/topics/{}?qos=1", a.topic),
            "Content-Type: text/plain\r\n".to_string(),
        ),
    };
    // A warm-up publish, not measured (first-use allocations in the hub and streams).
    let mut all: Vec<f64> = Vec::new();
    let mut last: Vec<f64> = Vec::new();
    let mut delivered = 0usize;
    // `--rounds 0`: only hold the connections (e.g. against a server that is not realtime-web,
    // for its memory per connection).
    let rounds = if a.rounds == 0 { 0..0 } else { 0..a.rounds + 1 };
    for round in rounds {
        let t0 = Instant::now();
        let status = post(
            &mut publisher,
            a.addr,
            &path,
            &match &a.mercure_token {
                Some(_) => format!("topic={}&data=ssebench-round-{round}", a.topic),
                None => format!("ssebench-round-{round}"),
            },
            &headers,
        )
        .await?;
        if status != 200 {
            return Err(format!("publish answered {status}"));
        }
        let ack_ms = t0.elapsed().as_secs_f64() * 1e3;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(a.round_timeout_secs);
        let mut got = 0usize;
        let mut lat: Vec<f64> = Vec::with_capacity(ok);
        while got < ok {
            match tokio::time::timeout_at(deadline, seen_rx.recv()).await {
                Ok(Some((r, at))) if r == round => {
                    got += 1;
                    lat.push(at.saturating_duration_since(t0).as_secs_f64() * 1e3);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        lat.sort_by(|x, y| x.total_cmp(y));
        let max = lat.last().copied().unwrap_or(f64::NAN);
        eprintln!(
            "ssebench: round {round}{}: {got}/{ok} streams, ack {ack_ms:.1} ms, \
             p50 {:.1} ms, p99 {:.1} ms, last {max:.1} ms",
            if round == 0 { " (warm-up)" } else { "" },
            pct(&lat, 50.0),
            pct(&lat, 99.0),
        );
        if round > 0 {
            delivered += got;
            last.push(max);
            all.extend(lat);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    all.sort_by(|x, y| x.total_cmp(y));
    last.sort_by(|x, y| x.total_cmp(y));
    let per_stream = match (rss0, rss1) {
        (Some(b), Some(a2)) => format!("{}", (a2.saturating_sub(b) * 1024) / ok as u64),
        _ => "-".into(),
    };
    Ok(format!(
        "RESULT streams={ok} failed={failed} open_secs={open_secs:.2} \
         rss_before_kib={} rss_after_kib={} rss_per_stream_bytes={per_stream} \
         rounds={} delivered={delivered} expected={} \
         lat_p50_ms={:.1} lat_p99_ms={:.1} last_p50_ms={:.1} last_max_ms={:.1}",
        rss0.map_or("-".into(), |v| v.to_string()),
        rss1.map_or("-".into(), |v| v.to_string()),
        a.rounds,
        ok * a.rounds as usize,
        pct(&all, 50.0),
        pct(&all, 99.0),
        pct(&last, 50.0),
        last.last().copied().unwrap_or(f64::NAN),
    ))
}

fn main() {
    let a = parse_args();
    let max = Duration::from_secs(a.max_secs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let r = rt.block_on(async move {
        match tokio::time::timeout(max, run(a)).await {
            Ok(r) => r,
            Err(_) => Err(format!("deadline of {max:?} passed")),
        }
    });
    match r {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("ssebench: error: {e}");
            std::process::exit(2);
        }
    }
    // Do not wait for 10,000 sockets to be dropped one by one.
    std::process::exit(0);
}
