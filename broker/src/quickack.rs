//! [`QuickAck`]: an MQTT client's TCP stream that acknowledges what it reads at once.
//!
//! Why. Most client libraries leave Nagle's algorithm on: a client holds a small write (a
//! PUBACK) while an earlier segment of its own is unacknowledged. Linux delays the broker's ACK
//! once a connection looks interactive, expecting to piggyback it on data. When the broker has
//! nothing to send until that very PUBACK arrives (a QoS 1 message into a persistent session is
//! acknowledged to its publisher only once on disk or acknowledged by the subscriber, see
//! [`crate::durable`]), the two wait for each other until a timer ends it: with 100 messages in
//! flight, a delivery's PUBACK took 1-4 ms instead of ~0.3 ms. Re-arming `TCP_QUICKACK` after
//! every read (the kernel clears it as it goes) makes the broker's kernel acknowledge each
//! segment as it arrives, so a client's held writes leave at once. One `setsockopt` per short
//! read (see [`SMALL`]); reads are batched, so it is not one per packet.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Reads shorter than this re-arm quick ACKs: acknowledgements and control packets, which a
/// client may hold more of behind Nagle. A longer read is a stream of publishes, whose ACKs the
/// kernel paces well enough; an ACK per segment there cost a 1->1 QoS 0 burst ~20% of its rate.
const SMALL: usize = 1024;

/// A TCP stream that re-arms `TCP_QUICKACK` after each read (Linux; elsewhere a plain stream).
pub struct QuickAck(pub TcpStream);

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.0).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if matches!(r, Poll::Ready(Ok(()))) && n > 0 && n < SMALL {
            rearm(&self.0);
        }
        r
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn rearm(s: &TcpStream) {
    // A socket that refuses it still works, only with delayed ACKs.
    let _ = s.set_quickack(true);
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn rearm(_: &TcpStream) {}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_read_re_arms_quickack() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let mut s = QuickAck(server);
        // Interactive traffic puts the connection in delayed-ACK mode.
        for _ in 0..4 {
            client.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(b"pong").await.unwrap();
            client.read_exact(&mut b).await.unwrap();
        }
        s.0.set_quickack(false).unwrap();
        client.write_all(b"puback").await.unwrap();
        let mut b = [0u8; 6];
        s.read_exact(&mut b).await.unwrap();
        assert!(s.0.quickack().unwrap(), "a read left quick ACKs off");
    }
}
