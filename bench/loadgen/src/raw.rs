//! A minimal raw MQTT 3.1.1 client for the connection-heavy modes (idle
//! connections, connection storm, steady traffic) and the raw throughput
//! clients: CONNECT / CONNACK, SUBSCRIBE / SUBACK, PINGREQ / PINGRESP, PUBLISH
//! packets, whole packets taken off a buffer, and a reader that counts incoming
//! PUBLISH packets (acknowledging QoS 1 ones).
//!
//! Why not rumqttc here: with thousands of connections on a 2-core machine the
//! client shares the CPUs with the broker, and rumqttc's per-connection event
//! loop and buffers would make the measurement mostly about the client. Every
//! read here is bounded by the caller's timeouts; packet sizes are bounded by
//! `MAX_PACKET`.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest packet the reader accepts (the brokers are told nothing, the
/// workloads stay far below it).
pub const MAX_PACKET: usize = 1 << 20;

/// The Remaining Length: 7 bits a byte, low bits first, the top bit set on all but the last.
fn push_remaining_len(p: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        p.push((n & 0x7f) as u8 | 0x80);
        n >>= 7;
    }
    p.push(n as u8);
}

/// MQTT 3.1.1 CONNECT, no will, no credentials; `clean` sets Clean Session.
pub fn connect_packet(client_id: &str, keepalive: u16, clean: bool) -> Vec<u8> {
    let id = client_id.as_bytes();
    let remaining = 10 + 2 + id.len();
    let mut p = Vec::with_capacity(remaining + 5);
    p.push(0x10);
    push_remaining_len(&mut p, remaining);
    let flags = if clean { 0x02 } else { 0x00 };
    p.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, flags]);
    p.extend_from_slice(&keepalive.to_be_bytes());
    p.extend_from_slice(&(id.len() as u16).to_be_bytes());
    p.extend_from_slice(id);
    p
}

/// SUBSCRIBE to one filter.
pub fn subscribe_packet(pid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let f = filter.as_bytes();
    let remaining = 2 + 2 + f.len() + 1;
    let mut p = Vec::with_capacity(remaining + 5);
    p.push(0x82);
    push_remaining_len(&mut p, remaining);
    p.extend_from_slice(&pid.to_be_bytes());
    p.extend_from_slice(&(f.len() as u16).to_be_bytes());
    p.extend_from_slice(f);
    p.push(qos);
    p
}

/// TCP connect, CONNECT, CONNACK (must accept).
pub async fn connect(
    addr: SocketAddr,
    client_id: &str,
    keepalive: u16,
    clean: bool,
) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await.context("tcp connect")?;
    s.set_nodelay(true)?;
    s.write_all(&connect_packet(client_id, keepalive, clean))
        .await?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.context("reading CONNACK")?;
    if ack[0] != 0x20 || ack[1] != 0x02 {
        bail!("not a CONNACK: {ack:02x?}");
    }
    if ack[3] != 0 {
        bail!("CONNACK refused, code {}", ack[3]);
    }
    Ok(s)
}

/// SUBSCRIBE and wait for its SUBACK (the next packet: nothing is published
/// to the filter yet). Fails on a refused subscription (0x80).
pub async fn subscribe(s: &mut TcpStream, pid: u16, filter: &str, qos: u8) -> Result<()> {
    s.write_all(&subscribe_packet(pid, filter, qos)).await?;
    let mut ack = [0u8; 5];
    s.read_exact(&mut ack).await.context("reading SUBACK")?;
    if ack[0] != 0x90 || ack[1] != 0x03 || ack[2..4] != pid.to_be_bytes() {
        bail!("not the SUBACK: {ack:02x?}");
    }
    if ack[4] > 2 {
        bail!("subscription refused, code {:#04x}", ack[4]);
    }
    Ok(())
}

pub async fn ping(s: &mut TcpStream) -> Result<()> {
    s.write_all(&[0xC0, 0x00]).await?;
    let mut r = [0u8; 2];
    s.read_exact(&mut r).await?;
    if r != [0xD0, 0x00] {
        bail!("not a PINGRESP: {r:02x?}");
    }
    Ok(())
}

/// Reads one packet: (first header byte, body). Errors on EOF or oversize.
pub async fn read_packet(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u8> {
    let h = s.read_u8().await?;
    let mut len = 0usize;
    let mut mult = 1usize;
    for i in 0..4 {
        let b = s.read_u8().await?;
        len += (b & 0x7f) as usize * mult;
        mult *= 128;
        if b & 0x80 == 0 {
            break;
        }
        if i == 3 {
            bail!("malformed remaining length");
        }
    }
    if len > MAX_PACKET {
        bail!("packet of {len} bytes");
    }
    buf.resize(len, 0);
    s.read_exact(buf).await?;
    Ok(h)
}

/// If `(h, body)` is a QoS 1 PUBLISH, the PUBACK to send back.
pub fn puback_for(h: u8, body: &[u8]) -> Option<[u8; 4]> {
    if h >> 4 != 3 || (h >> 1) & 0x03 != 1 || body.len() < 2 {
        return None;
    }
    let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
    let pid = body.get(2 + tlen..4 + tlen)?;
    Some([0x40, 0x02, pid[0], pid[1]])
}

/// PUBLISH to `topic`, no retain, no DUP; at QoS 1/2 with packet id `pid` (see
/// [`publish_pid_at`] to change it in place).
pub fn publish_packet(topic: &str, payload: &[u8], qos: u8, pid: u16) -> Vec<u8> {
    let t = topic.as_bytes();
    let id_len = if qos > 0 { 2 } else { 0 };
    let remaining = 2 + t.len() + id_len + payload.len();
    let mut p = Vec::with_capacity(remaining + 5);
    p.push(0x30 | (qos << 1));
    push_remaining_len(&mut p, remaining);
    p.extend_from_slice(&(t.len() as u16).to_be_bytes());
    p.extend_from_slice(t);
    if qos > 0 {
        p.extend_from_slice(&pid.to_be_bytes());
    }
    p.extend_from_slice(payload);
    p
}

/// Where the packet id of a QoS 1/2 PUBLISH made by [`publish_packet`] for a topic of
/// `topic_len` bytes starts (after the fixed header and the topic).
pub fn publish_pid_at(packet: &[u8], topic_len: usize) -> usize {
    let remaining_len_bytes = packet[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
    1 + remaining_len_bytes + 2 + topic_len
}

/// Takes the first whole packet off `buf`: (first header byte, body); `None` while it is
/// incomplete (or its Remaining Length is malformed: the run then ends by its timeouts).
pub fn split_packet(buf: &mut bytes::BytesMut) -> Option<(u8, bytes::Bytes)> {
    let (mut len, mut shift, mut at) = (0usize, 0, 1);
    loop {
        let b = *buf.get(at)?;
        len |= ((b & 0x7f) as usize) << shift;
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if at > 4 {
            return None;
        }
    }
    if buf.len() < at + len {
        return None;
    }
    let h = buf[0];
    let mut packet = buf.split_to(at + len);
    bytes::Buf::advance(&mut packet, at);
    Some((h, packet.freeze()))
}
