//! `rtw-hello [ADDR]`: answers every request with `200 OK` and a 13-byte body, HTTP/1.1 with
//! keep-alive, on a multi-threaded tokio runtime (one worker per CPU, as realtime-web).
//! The request body is read and dropped, so a POST costs what it costs realtime-web to
//! receive it. Prints `listening ADDR` once bound. With `--files DIR` it is a plain file server
//! instead (see `files.rs`, the peer of `bench/rpc.sh`'s streamed rows).

mod files;

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

async fn hello(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Drain the body (a publish sends one); ignore a client that goes away mid-body.
    let _ = req.into_body().collect().await;
    Ok(Response::builder()
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"Hello, world!")))
        .expect("static response"))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".to_string());
    let files_dir = std::env::args()
        .skip_while(|a| a != "--files")
        .nth(1)
        .map(std::path::PathBuf::from);
    let listener = TcpListener::bind(&addr).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let files_dir = files_dir.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            match files_dir {
                None => {
                    let _ = http1::Builder::new()
                        .serve_connection(io, service_fn(hello))
                        .await;
                }
                Some(dir) => {
                    let svc = service_fn(move |req| {
                        let dir = dir.clone();
                        async move { Ok::<_, Infallible>(files::serve(dir, req).await) }
                    });
                    let _ = http1::Builder::new().serve_connection(io, svc).await;
                }
            }
        });
    }
}
