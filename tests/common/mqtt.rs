//! A small synchronous MQTT 3.1.1 / 5 client over a plain `TcpStream`, for tests that must see
//! exactly what the broker sends (reason codes, properties, QoS, packet ids, the close) and send
//! exactly what they want (including bytes no real client would send).
//!
//! Packets are encoded and decoded with rumqttc's codecs, independently of the broker's own
//! `codec` module. 3.1.1 packets from the broker are lifted into the MQTT 5 types here so one
//! test can run against both protocol versions.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes as m4;
use rumqttc::mqttbytes::v4;
pub use rumqttc::v5::mqttbytes::v5::*;
pub use rumqttc::v5::mqttbytes::QoS;

/// How long a test waits for something that must happen.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test watches for something that must not happen.
pub const QUIET: Duration = Duration::from_millis(1200);

/// The protocol a test client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V {
    V311,
    V5,
}

pub const BOTH: [V; 2] = [V::V311, V::V5];

/// Starts a server and runs `case` on it for each protocol version, 3.1.1 first.
pub fn on_both_versions(case: impl Fn(&super::Server, V)) {
    let s = super::Server::start();
    for v in BOTH {
        case(&s, v);
    }
}

/// What one read gave.
#[derive(Debug)]
pub enum Got {
    Packet(Box<Packet>),
    Closed,
    Timeout,
}

/// CONNECT options.
#[derive(Debug, Clone)]
pub struct Opts {
    pub id: String,
    pub clean: bool,
    pub keep_alive: u16,
    pub props: Option<ConnectProperties>,
    pub will: Option<LastWill>,
    pub login: Option<Login>,
}

impl Opts {
    pub fn new(id: &str) -> Opts {
        Opts {
            id: id.to_string(),
            clean: true,
            keep_alive: 60,
            props: None,
            will: None,
            login: None,
        }
    }

    /// Sets CONNECT properties (starting from none).
    pub fn props(mut self, f: impl FnOnce(&mut ConnectProperties)) -> Opts {
        let mut p = self.props.take().unwrap_or_default();
        f(&mut p);
        self.props = Some(p);
        self
    }

    pub fn clean(mut self, clean: bool) -> Opts {
        self.clean = clean;
        self
    }

    pub fn keep_alive(mut self, secs: u16) -> Opts {
        self.keep_alive = secs;
        self
    }

    pub fn will(mut self, w: LastWill) -> Opts {
        self.will = Some(w);
        self
    }

    /// Sends a user name and password.
    pub fn login(mut self, user: &str, password: &str) -> Opts {
        self.login = Some(Login::new(user, password));
        self
    }
}

/// Topic filters that break the filter syntax, with the MQTT 5 DISCONNECT reason a SUBSCRIBE
/// with one gets: empty (MQTT-4.7.3-1), `#` not alone or not last, `+` not a whole level
/// (MQTT-4.7.1-1/2): malformed; `$share/` without share name or inner filter (MQTT-4.8.2-1/2):
/// a protocol error.
pub const MALFORMED_FILTERS: [(&str, DisconnectReasonCode); 8] = [
    ("a/#/b", DisconnectReasonCode::MalformedPacket),
    ("a+", DisconnectReasonCode::MalformedPacket),
    ("a/b#", DisconnectReasonCode::MalformedPacket),
    ("#/a", DisconnectReasonCode::MalformedPacket),
    ("+a/b", DisconnectReasonCode::MalformedPacket),
    ("", DisconnectReasonCode::MalformedPacket),
    ("$share/g", DisconnectReasonCode::ProtocolError),
    ("$share//a", DisconnectReasonCode::ProtocolError),
];

/// A filter with options.
pub fn filter(path: &str, qos: QoS) -> Filter {
    Filter::new(path, qos)
}

pub fn q(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

pub struct Client {
    pub v: V,
    s: TcpStream,
    buf: BytesMut,
    closed: bool,
    pub connack: Option<ConnAck>,
    /// Publishes received and not yet taken.
    pubs: VecDeque<Publish>,
    /// Other packets received and not yet taken.
    other: VecDeque<Packet>,
    next_pkid: u16,
    /// Acknowledge incoming QoS 1/2 messages (and complete QoS 2 exchanges) automatically.
    pub auto_ack: bool,
    /// Every DISCONNECT the broker sent.
    pub disconnects: Vec<Disconnect>,
}

impl Client {
    /// Opens a TCP connection without sending anything.
    pub fn tcp(port: u16, v: V) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to broker");
        s.set_nodelay(true).ok();
        Client {
            v,
            s,
            buf: BytesMut::new(),
            closed: false,
            connack: None,
            pubs: VecDeque::new(),
            other: VecDeque::new(),
            next_pkid: 0,
            auto_ack: true,
            disconnects: Vec::new(),
        }
    }

    /// Connects and returns the client with the broker's CONNACK, whatever its code.
    pub fn try_connect(port: u16, v: V, o: Opts) -> (Client, ConnAck) {
        let mut c = Client::tcp(port, v);
        c.send(&Packet::Connect(
            Connect {
                keep_alive: o.keep_alive,
                client_id: o.id.clone(),
                clean_start: o.clean,
                properties: o.props,
            },
            o.will,
            o.login,
        ));
        match c.expect(WAIT, |p| matches!(p, Packet::ConnAck(_))) {
            Packet::ConnAck(a) => {
                c.connack = Some(a.clone());
                (c, a)
            }
            _ => unreachable!(),
        }
    }

    /// Connects and asserts success.
    pub fn connect(port: u16, v: V, o: Opts) -> Client {
        let id = o.id.clone();
        let (c, a) = Client::try_connect(port, v, o);
        assert_eq!(
            a.code,
            ConnectReturnCode::Success,
            "CONNACK for {id}: {a:?}"
        );
        c
    }

    /// A clean-start client with default options, subscribed to `filter` at `qos`.
    pub fn subscribed(port: u16, v: V, id: &str, filter: &str, qos: QoS) -> Client {
        let mut c = Client::new(port, v, id);
        c.subscribe(filter, qos);
        c
    }

    /// A clean-start client with default options, subscribed (one SUBSCRIBE each) to `subs`.
    pub fn subscribed_to(port: u16, v: V, id: &str, subs: &[(&str, QoS)]) -> Client {
        let mut c = Client::new(port, v, id);
        for (filter, qos) in subs {
            c.subscribe(filter, *qos);
        }
        c
    }

    /// A clean-start MQTT 5 client whose CONNECT carries the properties `f` sets.
    pub fn v5_with(port: u16, id: &str, f: impl FnOnce(&mut ConnectProperties)) -> Client {
        Client::connect(port, V::V5, Opts::new(id).props(f))
    }

    /// A clean-start client with default options.
    pub fn new(port: u16, v: V, id: &str) -> Client {
        Client::connect(port, v, Opts::new(id))
    }

    pub fn connack_props(&self) -> ConnAckProperties {
        self.connack
            .as_ref()
            .and_then(|a| a.properties.clone())
            .expect("CONNACK has properties")
    }

    pub fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
        self.next_pkid
    }

    // ---- raw I/O ----

    /// Writes raw bytes (errors ignored: the broker may already have closed).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes);
        let _ = self.s.flush();
    }

    /// Writes raw bytes and reports a failed write (a reset or broken pipe).
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes)?;
        self.s.flush()
    }

    /// The wire form of `p` for this client's protocol.
    pub fn encode(&self, p: &Packet) -> Vec<u8> {
        let mut b = BytesMut::new();
        match self.v {
            // rumqttc writes a DISCONNECT with a reason code and no properties as `E0 01 rc 00`
            // (one byte past its remaining length); the short form is `E0 01 rc`.
            V::V5 => match p {
                Packet::Disconnect(d)
                    if d.properties.is_none()
                        && d.reason_code != DisconnectReasonCode::NormalDisconnection =>
                {
                    b.extend_from_slice(&[0xE0, 0x01, d.reason_code as u8]);
                }
                _ => {
                    p.write(&mut b, None).expect("encode v5");
                }
            },
            V::V311 => {
                lower(p).write(&mut b, usize::MAX).expect("encode v4");
            }
        }
        b.to_vec()
    }

    /// Sends `p` (a QoS 1/2 PUBLISH without packet id gets a fresh one).
    pub fn send(&mut self, p: &Packet) {
        let b = match p {
            Packet::Publish(x) if x.qos != QoS::AtMostOnce && x.pkid == 0 => {
                let mut x = x.clone();
                x.pkid = self.pkid();
                self.encode(&Packet::Publish(x))
            }
            _ => self.encode(p),
        };
        self.send_raw(&b);
    }

    /// The next whole packet as it came on the wire, `(first byte, body)`, for tests that read
    /// codes byte for byte; `Err("closed")` or `Err("timeout")`.
    pub fn frame(&mut self, timeout: Duration) -> Result<(u8, Vec<u8>), &'static str> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((start, len)) = frame_len(&self.buf) {
                if self.buf.len() >= start + len {
                    let first = self.buf[0];
                    let whole = self.buf.split_to(start + len);
                    return Ok((first, whole[start..].to_vec()));
                }
            }
            if self.closed {
                return Err("closed");
            }
            if !self.fill(deadline) {
                return Err("timeout");
            }
        }
    }

    /// The next packet off the wire, as it comes: nothing is acknowledged or queued.
    pub fn read(&mut self, timeout: Duration) -> Got {
        self.read_packet(Instant::now() + timeout)
    }

    /// Reads until the broker closes the connection; returns every byte it sent. Panics if it
    /// does not close within `timeout`.
    pub fn read_to_close(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        while !self.closed {
            assert!(
                self.fill(deadline),
                "broker did not close the connection within {timeout:?}; sent so far: {:?}",
                &self.buf[..]
            );
        }
        self.buf.split().to_vec()
    }

    /// Reads more bytes into the buffer; false on timeout.
    fn fill(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        self.s
            .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
            .unwrap();
        let mut tmp = [0u8; 16 * 1024];
        match self.s.read(&mut tmp) {
            Ok(0) => self.closed = true,
            Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => self.closed = true,
        }
        true
    }

    fn decode(&mut self) -> Option<Packet> {
        if self.buf.is_empty() {
            return None;
        }
        match self.v {
            V::V5 => {
                // rumqttc refuses a DISCONNECT without body, which MQTT 5 allows.
                if self.buf.len() >= 2 && self.buf[0] == 0xE0 && self.buf[1] == 0 {
                    let _ = self.buf.split_to(2);
                    return Some(Packet::Disconnect(Disconnect::new(
                        DisconnectReasonCode::NormalDisconnection,
                    )));
                }
                // Nor one with only a reason code.
                if self.buf.len() >= 3 && self.buf[0] == 0xE0 && self.buf[1] == 1 {
                    let code = DisconnectReasonCode::try_from(self.buf[2])
                        .unwrap_or_else(|_| panic!("bad DISCONNECT reason {}", self.buf[2]));
                    let _ = self.buf.split_to(3);
                    return Some(Packet::Disconnect(Disconnect::new(code)));
                }
                match Packet::read(&mut self.buf, None) {
                    Ok(p) => Some(p),
                    Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => None,
                    Err(e) => panic!("broker sent an undecodable v5 packet: {e} {:?}", self.buf),
                }
            }
            V::V311 => match v4::Packet::read(&mut self.buf, usize::MAX) {
                Ok(p) => Some(lift(p)),
                Err(m4::Error::InsufficientBytes(_)) => None,
                Err(e) => panic!(
                    "broker sent an undecodable 3.1.1 packet: {e} {:?}",
                    self.buf
                ),
            },
        }
    }

    /// The next packet off the wire (not the queues).
    fn read_packet(&mut self, deadline: Instant) -> Got {
        loop {
            if let Some(p) = self.decode() {
                return Got::Packet(Box::new(p));
            }
            if self.closed {
                return Got::Closed;
            }
            if !self.fill(deadline) {
                return Got::Timeout;
            }
        }
    }

    /// Reads one packet and files it (acking as configured). False on timeout or close.
    fn pump(&mut self, deadline: Instant) -> bool {
        let p = match self.read_packet(deadline) {
            Got::Packet(p) => *p,
            Got::Closed | Got::Timeout => return false,
        };
        match p {
            Packet::Publish(p) => {
                if self.auto_ack {
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => self.send(&Packet::PubAck(PubAck::new(p.pkid, None))),
                        QoS::ExactlyOnce => self.send(&Packet::PubRec(PubRec::new(p.pkid, None))),
                    }
                }
                self.pubs.push_back(p);
            }
            Packet::PubRel(r) if self.auto_ack => {
                self.send(&Packet::PubComp(PubComp::new(r.pkid, None)));
            }
            Packet::Disconnect(d) => {
                self.disconnects.push(d.clone());
                self.other.push_back(Packet::Disconnect(d));
            }
            p => self.other.push_back(p),
        }
        true
    }

    /// Packets other than PUBLISH received and not yet taken (in order).
    pub fn unread(&self) -> impl Iterator<Item = &Packet> {
        self.other.iter()
    }

    /// Asserts that no packet read but not taken is one `pred` picks (`what` says which).
    pub fn assert_unread_none(&self, pred: impl Fn(&Packet) -> bool, what: &str) {
        assert!(!self.unread().any(pred), "{what}");
    }

    /// Is the connection closed (by the broker)? Only known after a read saw it.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Bytes received but not (yet) part of a whole packet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    // ---- waiting ----

    /// The next non-PUBLISH packet matching `pred`; panics after `timeout` or on close.
    pub fn expect(&mut self, timeout: Duration, pred: impl Fn(&Packet) -> bool) -> Packet {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.other.iter().position(&pred) {
                return self.other.remove(i).unwrap();
            }
            if !self.pump(deadline) {
                panic!(
                    "expected packet not received (closed: {}); other packets: {:?}; disconnects: {:?}",
                    self.closed, self.other, self.disconnects
                );
            }
        }
    }

    /// The next message, if one arrives within `timeout`.
    pub fn next_publish(&mut self, timeout: Duration) -> Option<Publish> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.pubs.pop_front() {
                return Some(p);
            }
            if !self.pump(deadline) {
                return None;
            }
        }
    }

    /// The next message; panics if none arrives within [`WAIT`].
    pub fn recv(&mut self) -> Publish {
        match self.next_publish(WAIT) {
            Some(p) => p,
            None => panic!(
                "no message within {WAIT:?} (closed: {}, disconnects: {:?})",
                self.closed, self.disconnects
            ),
        }
    }

    /// Every message arriving within `window`.
    pub fn drain(&mut self, window: Duration) -> Vec<Publish> {
        let deadline = Instant::now() + window;
        let mut v = Vec::new();
        while let Some(p) = self.next_publish(deadline.saturating_duration_since(Instant::now())) {
            v.push(p);
        }
        v
    }

    /// Asserts no message arrives within [`QUIET`].
    pub fn assert_no_publish(&mut self) {
        if let Some(p) = self.next_publish(QUIET) {
            panic!("unexpected message: {p:?}");
        }
    }

    /// Waits for the broker to close the connection; returns the DISCONNECT it sent first, if
    /// any. Panics if the connection is still open after `timeout`.
    pub fn expect_closed(&mut self, timeout: Duration) -> Option<Disconnect> {
        let deadline = Instant::now() + timeout;
        while !self.closed {
            if !self.pump(deadline) && !self.closed {
                panic!("broker did not close the connection within {timeout:?}");
            }
        }
        self.disconnects.first().cloned()
    }

    /// Waits for the broker to close with an MQTT 5 DISCONNECT carrying `code`.
    pub fn expect_disconnect(&mut self, code: DisconnectReasonCode) {
        let d = self.expect_closed(WAIT);
        match self.v {
            V::V5 => {
                let d = d.unwrap_or_else(|| panic!("closed without DISCONNECT, expected {code:?}"));
                assert_eq!(d.reason_code, code, "DISCONNECT: {d:?}");
            }
            V::V311 => assert!(d.is_none(), "3.1.1 has no server DISCONNECT: {d:?}"),
        }
    }

    // ---- operations ----

    /// SUBSCRIBE and wait for the SUBACK's codes.
    pub fn subscribe_with(
        &mut self,
        filters: Vec<Filter>,
        id: Option<usize>,
    ) -> Vec<SubscribeReasonCode> {
        let pkid = self.pkid();
        self.send(&Packet::Subscribe(Subscribe {
            pkid,
            filters,
            properties: id.map(|id| SubscribeProperties {
                id: Some(id),
                user_properties: Vec::new(),
            }),
        }));
        match self.expect(WAIT, |p| matches!(p, Packet::SubAck(a) if a.pkid == pkid)) {
            Packet::SubAck(a) => a.return_codes,
            _ => unreachable!(),
        }
    }

    /// SUBSCRIBE to one filter and assert it was granted at `qos`.
    pub fn subscribe(&mut self, path: &str, qos: QoS) {
        let codes = self.subscribe_with(vec![filter(path, qos)], None);
        assert_eq!(
            codes,
            vec![SubscribeReasonCode::Success(qos)],
            "SUBACK for {path}"
        );
    }

    pub fn unsubscribe(&mut self, filters: &[&str]) -> UnsubAck {
        let pkid = self.pkid();
        self.send(&Packet::Unsubscribe(Unsubscribe {
            pkid,
            filters: filters.iter().map(|f| f.to_string()).collect(),
            properties: None,
        }));
        match self.expect(WAIT, |p| matches!(p, Packet::UnsubAck(a) if a.pkid == pkid)) {
            Packet::UnsubAck(a) => a,
            _ => unreachable!(),
        }
    }

    /// Publishes and completes the QoS exchange; returns the broker's PUBACK (QoS 1) or PUBREC
    /// (QoS 2) reason code as a byte (0 for QoS 0).
    pub fn publish_msg(&mut self, mut p: Publish) -> u8 {
        if p.qos != QoS::AtMostOnce && p.pkid == 0 {
            p.pkid = self.pkid();
        }
        let pkid = p.pkid;
        let qos = p.qos;
        self.send(&Packet::Publish(p));
        match qos {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => {
                match self.expect(WAIT, |x| matches!(x, Packet::PubAck(a) if a.pkid == pkid)) {
                    Packet::PubAck(a) => puback_code(a.reason),
                    _ => unreachable!(),
                }
            }
            QoS::ExactlyOnce => {
                let rec =
                    match self.expect(WAIT, |x| matches!(x, Packet::PubRec(a) if a.pkid == pkid)) {
                        Packet::PubRec(a) => a,
                        _ => unreachable!(),
                    };
                self.send(&Packet::PubRel(PubRel::new(pkid, None)));
                let code = pubrec_code(rec.reason);
                if code < 0x80 {
                    self.expect(WAIT, |x| matches!(x, Packet::PubComp(a) if a.pkid == pkid));
                }
                code
            }
        }
    }

    /// Publishes and asserts success.
    pub fn publish(&mut self, topic: &str, qos: QoS, payload: &[u8]) {
        let code = self.publish_msg(Publish::new(
            topic,
            qos,
            Bytes::copy_from_slice(payload),
            None,
        ));
        assert!(code < 0x80, "publish to {topic} refused: 0x{code:02x}");
    }

    /// Publishes with properties (MQTT 5) and asserts success.
    pub fn publish_props(
        &mut self,
        topic: &str,
        qos: QoS,
        payload: &[u8],
        props: PublishProperties,
    ) {
        let code = self.publish_msg(Publish::new(
            topic,
            qos,
            Bytes::copy_from_slice(payload),
            Some(props),
        ));
        assert!(code < 0x80, "publish to {topic} refused: 0x{code:02x}");
    }

    pub fn publish_retained(&mut self, topic: &str, qos: QoS, payload: &[u8]) {
        let mut p = Publish::new(topic, qos, Bytes::copy_from_slice(payload), None);
        p.retain = true;
        let code = self.publish_msg(p);
        assert!(
            code < 0x80,
            "retained publish to {topic} refused: 0x{code:02x}"
        );
    }

    /// A PINGREQ/PINGRESP round trip: proves the connection is up and everything sent before it
    /// has been handled (the broker answers in order).
    pub fn ping(&mut self) {
        self.send(&Packet::PingReq(PingReq));
        self.expect(WAIT, |p| matches!(p, Packet::PingResp(_)));
    }

    pub fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Disconnect::new(
            DisconnectReasonCode::NormalDisconnection,
        )));
        let _ = self.s.shutdown(std::net::Shutdown::Write);
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.closed && self.fill(deadline) {}
    }

    /// Drops the TCP connection without DISCONNECT (a network failure, as far as the broker
    /// can tell: the will is published).
    pub fn drop_connection(self) {
        let _ = self.s.shutdown(std::net::Shutdown::Both);
    }
}

/// The reason code byte of a PUBACK or PUBREC reason (the two share their codes).
macro_rules! ack_code {
    ($name:ident, $reason:ident) => {
        pub fn $name(r: $reason) -> u8 {
            use $reason as R;
            match r {
                R::Success => 0x00,
                R::NoMatchingSubscribers => 0x10,
                R::UnspecifiedError => 0x80,
                R::ImplementationSpecificError => 0x83,
                R::NotAuthorized => 0x87,
                R::TopicNameInvalid => 0x90,
                R::PacketIdentifierInUse => 0x91,
                R::QuotaExceeded => 0x97,
                R::PayloadFormatInvalid => 0x99,
            }
        }
    };
}

ack_code!(puback_code, PubAckReason);
ack_code!(pubrec_code, PubRecReason);

pub fn q4(q: QoS) -> m4::QoS {
    match q {
        QoS::AtMostOnce => m4::QoS::AtMostOnce,
        QoS::AtLeastOnce => m4::QoS::AtLeastOnce,
        QoS::ExactlyOnce => m4::QoS::ExactlyOnce,
    }
}

pub fn q5(q: m4::QoS) -> QoS {
    match q {
        m4::QoS::AtMostOnce => QoS::AtMostOnce,
        m4::QoS::AtLeastOnce => QoS::AtLeastOnce,
        m4::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// A client packet in 3.1.1 form (properties dropped).
pub fn lower(p: &Packet) -> v4::Packet {
    match p {
        Packet::Connect(c, w, l) => v4::Packet::Connect(v4::Connect {
            protocol: m4::Protocol::V4,
            keep_alive: c.keep_alive,
            client_id: c.client_id.clone(),
            clean_session: c.clean_start,
            last_will: w.as_ref().map(|w| v4::LastWill {
                topic: String::from_utf8(w.topic.to_vec()).expect("will topic"),
                message: w.message.clone(),
                qos: q4(w.qos),
                retain: w.retain,
            }),
            login: l.as_ref().map(|l| v4::Login::new(&l.username, &l.password)),
        }),
        Packet::Publish(p) => v4::Packet::Publish(v4::Publish {
            dup: p.dup,
            qos: q4(p.qos),
            retain: p.retain,
            topic: String::from_utf8(p.topic.to_vec()).expect("3.1.1 topic"),
            pkid: p.pkid,
            payload: p.payload.clone(),
        }),
        Packet::PubAck(PubAck { pkid, .. }) => v4::Packet::PubAck(v4::PubAck { pkid: *pkid }),
        Packet::PubRec(PubRec { pkid, .. }) => v4::Packet::PubRec(v4::PubRec { pkid: *pkid }),
        Packet::PubRel(PubRel { pkid, .. }) => v4::Packet::PubRel(v4::PubRel { pkid: *pkid }),
        Packet::PubComp(PubComp { pkid, .. }) => v4::Packet::PubComp(v4::PubComp { pkid: *pkid }),
        Packet::Subscribe(s) => v4::Packet::Subscribe(v4::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .iter()
                .map(|f| v4::SubscribeFilter::new(f.path.clone(), q4(f.qos)))
                .collect(),
        }),
        Packet::Unsubscribe(u) => v4::Packet::Unsubscribe(v4::Unsubscribe {
            pkid: u.pkid,
            topics: u.filters.clone(),
        }),
        Packet::PingReq(_) => v4::Packet::PingReq,
        Packet::Disconnect(_) => v4::Packet::Disconnect,
        other => panic!("no 3.1.1 form for {other:?}"),
    }
}

/// A broker packet in 3.1.1 form, lifted to the MQTT 5 types.
pub fn lift(p: v4::Packet) -> Packet {
    match p {
        v4::Packet::ConnAck(a) => Packet::ConnAck(ConnAck {
            session_present: a.session_present,
            code: match a.code {
                v4::ConnectReturnCode::Success => ConnectReturnCode::Success,
                v4::ConnectReturnCode::RefusedProtocolVersion => {
                    ConnectReturnCode::RefusedProtocolVersion
                }
                v4::ConnectReturnCode::BadClientId => ConnectReturnCode::BadClientId,
                v4::ConnectReturnCode::ServiceUnavailable => ConnectReturnCode::ServiceUnavailable,
                v4::ConnectReturnCode::BadUserNamePassword => {
                    ConnectReturnCode::BadUserNamePassword
                }
                v4::ConnectReturnCode::NotAuthorized => ConnectReturnCode::NotAuthorized,
            },
            properties: None,
        }),
        // Acknowledgements carry their packet id alone in 3.1.1.
        v4::Packet::PubAck(v4::PubAck { pkid }) => Packet::PubAck(PubAck::new(pkid, None)),
        v4::Packet::PubRec(v4::PubRec { pkid }) => Packet::PubRec(PubRec::new(pkid, None)),
        v4::Packet::PubRel(v4::PubRel { pkid }) => Packet::PubRel(PubRel::new(pkid, None)),
        v4::Packet::PubComp(v4::PubComp { pkid }) => Packet::PubComp(PubComp::new(pkid, None)),
        v4::Packet::Publish(p) => Packet::Publish(Publish {
            topic: Bytes::from(p.topic),
            payload: p.payload,
            pkid: p.pkid,
            qos: q5(p.qos),
            retain: p.retain,
            dup: p.dup,
            properties: None,
        }),
        v4::Packet::SubAck(s) => Packet::SubAck(SubAck {
            pkid: s.pkid,
            return_codes: s
                .return_codes
                .into_iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(q) => SubscribeReasonCode::Success(q5(q)),
                    v4::SubscribeReasonCode::Failure => SubscribeReasonCode::Failure,
                })
                .collect(),
            properties: None,
        }),
        v4::Packet::UnsubAck(u) => Packet::UnsubAck(UnsubAck {
            pkid: u.pkid,
            reasons: Vec::new(),
            properties: None,
        }),
        v4::Packet::PingResp => Packet::PingResp(PingResp),
        other => panic!("a 3.1.1 broker may not send {other:?}"),
    }
}

/// Where a packet's body starts in `b` and how long it is, once its fixed header (type byte,
/// remaining length) is all there.
fn frame_len(b: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for (i, byte) in b.iter().enumerate().skip(1).take(4) {
        len += ((byte & 0x7f) as usize) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            return Some((i + 1, len));
        }
    }
    None
}

/// Hand-built CONNECT bytes: protocol `name`, `level`, clean start, keep-alive 60, client `id`.
pub fn raw_connect(name: &str, level: u8, id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name.as_bytes());
    body.push(level);
    body.push(0x02);
    body.extend_from_slice(&60u16.to_be_bytes());
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    frame(0x10, &body)
}

/// A packet from its first byte and body (remaining length computed).
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    // Remaining length: seven bits a byte, lowest first, the top bit set while more follow.
    while len >= 0x80 {
        out.push((len & 0x7f) as u8 | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(body);
    out
}

/// A QoS 0 PUBLISH with arbitrary topic bytes (v5 when `v5`, with an empty property block).
pub fn raw_publish(topic: &[u8], payload: &[u8], v5: bool) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic);
    if v5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    frame(0x30, &body)
}

// ---------------------------------------------------------------------------------------------
// Reading what a client received.

/// An MQTT 5 client connected as `id`.
pub fn v5(s: &super::Server, id: &str) -> Client {
    Client::new(s.mqtt, V::V5, id)
}

/// An MQTT 5 client connected as `id` and subscribed to `filter` at `qos`.
pub fn v5_subscribed(s: &super::Server, id: &str, filter: &str, qos: QoS) -> Client {
    Client::subscribed(s.mqtt, V::V5, id, filter, qos)
}

/// An MQTT 5 client connected as `id` and subscribed to `filter` at `qos` with the subscription
/// options `set` sets.
pub fn v5_subscribed_with(
    s: &super::Server,
    id: &str,
    path: &str,
    qos: QoS,
    set: impl FnOnce(&mut Filter),
) -> Client {
    let mut c = v5(s, id);
    let mut f = filter(path, qos);
    set(&mut f);
    c.subscribe_with(vec![f], None);
    c
}

/// A server with an MQTT 5 subscriber (`sub_id`, to `filter` at `qos`) and an MQTT 5 publisher
/// (`pub_id`) on it.
pub fn v5_pair(
    sub_id: &str,
    filter: &str,
    qos: QoS,
    pub_id: &str,
) -> (super::Server, Client, Client) {
    let s = super::Server::start();
    let sub = v5_subscribed(&s, sub_id, filter, qos);
    let publisher = v5(&s, pub_id);
    (s, sub, publisher)
}

pub fn payload(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

pub fn topic(p: &Publish) -> String {
    String::from_utf8_lossy(&p.topic).into_owned()
}

pub fn sub_ids(p: &Publish) -> Vec<usize> {
    let mut ids = p
        .properties
        .as_ref()
        .map(|x| x.subscription_identifiers.clone())
        .unwrap_or_default();
    ids.sort();
    ids
}

pub fn user_props(p: &Publish) -> Vec<(String, String)> {
    p.properties
        .as_ref()
        .map(|x| x.user_properties.clone())
        .unwrap_or_default()
}

/// Receives the next message and checks its topic and payload.
/// `p` publishes `body` on `t` at QoS 1 and `c` receives it next ([`recv_msg`]).
pub fn relay(p: &mut Client, c: &mut Client, t: &str, body: &str) -> Publish {
    p.publish(t, QoS::AtLeastOnce, body.as_bytes());
    recv_msg(c, t, body)
}

pub fn recv_msg(c: &mut Client, t: &str, body: &str) -> Publish {
    let p = c.recv();
    assert_eq!(
        (topic(&p).as_str(), payload(&p).as_str()),
        (t, body),
        "unexpected message {p:?}"
    );
    p
}
