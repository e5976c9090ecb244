//! Helpers for the reliability tests (`faults.rs`, `hostile.rs`, `delivery.rs`): a small blocking
//! MQTT client that shows exactly what the broker sent (reason codes, packet ids, DUP, the close),
//! a raw HTTP request, the server's resident memory, and killing the server's internal sockets.
//!
//! Packets are encoded and decoded with rumqttc's codecs (MQTT 5 types throughout; a 3.1.1
//! client's packets are converted by [`super::mqtt`]'s `lower` and `lift`, the same as the raw
//! client there).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
pub use rumqttc::v5::mqttbytes::v5::*;
pub use rumqttc::v5::mqttbytes::QoS;

#[allow(unused_imports)] // not every test file that has this module uses both
pub use super::mqtt::{puback_code, pubrec_code};
use super::mqtt::{Client, Got as MqttGot, V};

pub const WAIT: Duration = Duration::from_secs(10);

/// What one read gave.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a test helper: one value at a time
pub enum Got {
    Packet(Packet),
    Closed,
    Timeout,
}

/// A blocking MQTT connection (3.1.1 when `v5` is false) on the raw client
/// ([`super::mqtt::Client`]), acknowledging nothing by itself: the test decides.
pub struct Mqtt {
    c: Client,
    /// Packets read while waiting for something else.
    pub backlog: VecDeque<Packet>,
}

impl Mqtt {
    /// A TCP connection with nothing sent yet.
    pub fn tcp(port: u16, v5: bool) -> Mqtt {
        Mqtt {
            c: Client::tcp(port, if v5 { V::V5 } else { V::V311 }),
            backlog: VecDeque::new(),
        }
    }

    /// Connects; returns the client and the CONNACK (whatever its code).
    pub fn try_connect(
        port: u16,
        v5: bool,
        id: &str,
        clean: bool,
        props: Option<ConnectProperties>,
    ) -> (Mqtt, ConnAck) {
        Mqtt::try_connect_as(port, v5, id, clean, props, None)
    }

    /// [`Mqtt::try_connect`] with a user name and password.
    pub fn try_connect_as(
        port: u16,
        v5: bool,
        id: &str,
        clean: bool,
        props: Option<ConnectProperties>,
        login: Option<(&str, &str)>,
    ) -> (Mqtt, ConnAck) {
        let mut c = Mqtt::tcp(port, v5);
        c.send(&Packet::Connect(
            Connect {
                keep_alive: 60,
                client_id: id.to_string(),
                clean_start: clean,
                properties: props,
            },
            None,
            login.map(|(u, p)| Login::new(u, p)),
        ));
        match c.wait(WAIT, |p| matches!(p, Packet::ConnAck(_))) {
            Some(Packet::ConnAck(a)) => (c, a),
            other => panic!("no CONNACK for {id}: {other:?}"),
        }
    }

    /// A clean-start connection that must succeed.
    pub fn connect(port: u16, v5: bool, id: &str) -> Mqtt {
        let (c, a) = Mqtt::try_connect(port, v5, id, true, None);
        assert_eq!(a.code, ConnectReturnCode::Success, "CONNACK for {id}");
        c
    }

    /// An MQTT 5 session kept by the broker (`expiry` seconds) and resumed when `clean` is false.
    pub fn persistent(port: u16, id: &str, clean: bool, expiry: u32) -> (Mqtt, ConnAck) {
        let props = ConnectProperties {
            session_expiry_interval: Some(expiry),
            ..ConnectProperties::new()
        };
        Mqtt::try_connect(port, true, id, clean, Some(props))
    }

    pub fn pkid(&mut self) -> u16 {
        self.c.pkid()
    }

    pub fn encode(&self, p: &Packet) -> Vec<u8> {
        self.c.encode(p)
    }

    /// Writes `p`; false if the socket is gone.
    pub fn try_send(&mut self, p: &Packet) -> bool {
        let b = self.c.encode(p);
        self.send_raw(&b)
    }

    pub fn send(&mut self, p: &Packet) {
        let _ = self.try_send(p);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> bool {
        self.c.try_send_raw(bytes).is_ok()
    }

    /// The next packet off the wire (the backlog is not consulted).
    pub fn read(&mut self, timeout: Duration) -> Got {
        match self.c.read(timeout) {
            MqttGot::Packet(p) => Got::Packet(*p),
            MqttGot::Closed => Got::Closed,
            MqttGot::Timeout => Got::Timeout,
        }
    }

    /// The first packet (backlog first) matching `pred`; others are kept in the backlog.
    pub fn wait(&mut self, timeout: Duration, pred: impl Fn(&Packet) -> bool) -> Option<Packet> {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline.saturating_duration_since(Instant::now())) {
                Got::Packet(p) if pred(&p) => return Some(p),
                Got::Packet(p) => self.backlog.push_back(p),
                Got::Closed | Got::Timeout => return None,
            }
        }
    }

    /// Subscribes and returns the SUBACK codes.
    pub fn subscribe_many(&mut self, filters: &[(&str, QoS)]) -> Vec<SubscribeReasonCode> {
        let pkid = self.pkid();
        self.send(&Packet::Subscribe(Subscribe {
            pkid,
            filters: filters
                .iter()
                .map(|(f, q)| Filter::new(f.to_string(), *q))
                .collect(),
            properties: None,
        }));
        match self.wait(WAIT, |p| matches!(p, Packet::SubAck(a) if a.pkid == pkid)) {
            Some(Packet::SubAck(a)) => a.return_codes,
            other => panic!("no SUBACK: {other:?}"),
        }
    }

    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
        let codes = self.subscribe_many(&[(filter, qos)]);
        assert!(
            matches!(codes[0], SubscribeReasonCode::Success(_)),
            "SUBACK {codes:?}"
        );
    }

    /// A PUBLISH with a fresh packet id (QoS 1/2); returns the id.
    pub fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) -> u16 {
        let pkid = if qos == QoS::AtMostOnce {
            0
        } else {
            self.pkid()
        };
        let mut p = Publish::new(topic, qos, Bytes::copy_from_slice(payload), None);
        p.retain = retain;
        p.pkid = pkid;
        self.send(&Packet::Publish(p));
        pkid
    }

    /// Publishes at QoS 1 and returns the PUBACK reason code (None: no PUBACK in time / closed).
    pub fn publish_acked(&mut self, topic: &str, retain: bool, payload: &[u8]) -> Option<u8> {
        let pkid = self.publish(topic, QoS::AtLeastOnce, retain, payload);
        match self.wait(WAIT, |p| matches!(p, Packet::PubAck(a) if a.pkid == pkid)) {
            Some(Packet::PubAck(a)) => Some(puback_code(a.reason)),
            _ => None,
        }
    }

    /// Acknowledges a received PUBLISH as its QoS asks (PUBREC for QoS 2).
    pub fn ack(&mut self, p: &Publish) {
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(PubAck::new(p.pkid, None))),
            QoS::ExactlyOnce => self.send(&Packet::PubRec(PubRec::new(p.pkid, None))),
        }
    }

    /// Reads PUBLISHes for `window`, acknowledging them (and completing QoS 2).
    pub fn drain(&mut self, window: Duration) -> Vec<Publish> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        let mut pending: Vec<Packet> = self.backlog.drain(..).collect();
        loop {
            let p = if !pending.is_empty() {
                pending.remove(0)
            } else {
                match self.read(deadline.saturating_duration_since(Instant::now())) {
                    Got::Packet(p) => p,
                    Got::Closed | Got::Timeout => return out,
                }
            };
            match p {
                Packet::Publish(p) => {
                    self.ack(&p);
                    out.push(p);
                }
                Packet::PubRel(r) => self.send(&Packet::PubComp(PubComp::new(r.pkid, None))),
                other => self.backlog.push_back(other),
            }
        }
    }

    /// Waits until the broker closes the connection; true if it did within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.c.is_closed() {
            match self.read(deadline.saturating_duration_since(Instant::now())) {
                Got::Timeout => return false,
                Got::Closed => return true,
                Got::Packet(p) => self.backlog.push_back(p),
            }
        }
        true
    }

    pub fn disconnect(mut self) {
        let _ = self.send_raw(&[0xE0, 0x00]);
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP, memory, sockets.

/// One HTTP/1.1 request on a fresh connection; returns (status, body). `None` if the server
/// closed or did not answer within `timeout`.
pub fn http(port: u16, request: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(timeout)).ok();
    s.write_all(request.as_bytes()).ok()?;
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut tmp = [0u8; 16 * 1024];
    loop {
        if let Some(r) = parse_response(&out) {
            return Some(r);
        }
        if Instant::now() >= deadline {
            return None;
        }
        match s.read(&mut tmp) {
            Ok(0) => return parse_response(&out),
            Ok(n) => out.extend_from_slice(&tmp[..n]),
            Err(_) => return parse_response(&out),
        }
    }
}

/// GET `path`.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
        WAIT,
    )
}

/// A complete response in `b` (Content-Length bodies only): (status, body).
fn parse_response(b: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(b);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    (body.len() >= len).then(|| (status, body[..len].to_string()))
}

/// Resident memory of process `pid`, in MB (VmRSS from /proc).
pub fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Open file descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Loopback TCP ports process `pid` listens on (from `ss -Htlnp`); `None` without `ss`.
pub fn listening_ports(pid: u32) -> Option<Vec<u16>> {
    let out = std::process::Command::new("ss")
        .args(["-Htlnp"])
        .output()
        .ok()?;
    let tag = format!("pid={pid},");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&tag))
        .filter_map(|l| {
            let local = l.split_whitespace().nth(3)?;
            local.rsplit_once(':')?.1.parse().ok()
        })
        .collect::<Vec<_>>()
        .into()
}

/// Destroys every established TCP connection to `port` on loopback, both ends (`ss -K`, which
/// needs root and a kernel with INET_DIAG_DESTROY). Returns how many sockets `ss` listed.
pub fn kill_connections(port: u16) -> usize {
    let mut n = 0;
    for dir in ["dport", "sport"] {
        let out = std::process::Command::new("ss")
            .args([
                "-HK",
                "-t",
                "state",
                "established",
                dir,
                "=",
                &format!(":{port}"),
            ])
            .output()
            .ok();
        let Some(out) = out else { return 0 };
        n += String::from_utf8_lossy(&out.stdout).lines().count();
    }
    n
}
