//! `rtw-hello ADDR --files DIR`: the plain file server `bench/rpc.sh` measures realtime-web's
//! streamed RPC against. `PUT /{name}` streams the request body into `DIR/{name}` (201),
//! `GET /{name}` streams the file back (200, or 404). Nothing else: no auth, no MQTT, the same
//! hyper HTTP/1.1 stack, so the difference is what the bridge and the responder cost.

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

const CHUNK: usize = 256 * 1024;

/// A file as a response body, read `CHUNK` bytes at a time as hyper asks for more.
pub struct FileBody {
    file: tokio::fs::File,
    buf: BytesMut,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        this.buf.resize(CHUNK, 0);
        let mut rb = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(None);
                }
                let data = this.buf.split_to(n).freeze();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }
}

pub type Reply = Response<Either<Full<Bytes>, FileBody>>;

fn text(status: StatusCode, s: &'static str) -> Reply {
    Response::builder()
        .status(status)
        .body(Either::Left(Full::new(Bytes::from_static(s.as_bytes()))))
        .expect("static response")
}

pub async fn serve(dir: PathBuf, req: Request<Incoming>) -> Reply {
    let name = req.uri().path().trim_start_matches('/').replace('/', "_");
    if name.is_empty() || name.starts_with('.') {
        return text(StatusCode::BAD_REQUEST, "bad name");
    }
    let path = dir.join(name);
    match *req.method() {
        Method::PUT | Method::POST => {
            let Ok(mut f) = tokio::fs::File::create(&path).await else {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot create");
            };
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return text(StatusCode::BAD_REQUEST, "body broke");
                };
                if let Some(d) = frame.data_ref() {
                    if f.write_all(d).await.is_err() {
                        return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot write");
                    }
                }
            }
            let _ = f.flush().await;
            text(StatusCode::CREATED, "stored")
        }
        Method::GET => match tokio::fs::File::open(&path).await {
            Ok(file) => Response::builder()
                .header("content-type", "application/octet-stream")
                .body(Either::Right(FileBody {
                    file,
                    buf: BytesMut::new(),
                }))
                .expect("response"),
            Err(_) => text(StatusCode::NOT_FOUND, "no such file"),
        },
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "PUT or GET"),
    }
}
