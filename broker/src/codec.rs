//! The client-facing MQTT codec: MQTT 3.1.1 and 5 on the wire, MQTT 5 types inside.
//!
//! The edge works on MQTT 5 packets only (the codec types of `rumqttc`, whose fields are public).
//! A 3.1.1 client's packets are read with the 3.1.1 decoder and lifted to MQTT 5 here, and every
//! packet sent to it is lowered back, dropping properties and mapping reason codes, so no MQTT 5
//! property ever reaches a 3.1.1 encoder. The same functions frame the internal link to rumqttd.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes as m4;
use rumqttc::mqttbytes::v4;
pub use rumqttc::v5::mqttbytes::v5::*;
pub use rumqttc::v5::mqttbytes::{qos, Error, QoS};

/// The lower of two QoS levels.
pub fn qmin(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) {
        a
    } else {
        b
    }
}

/// The higher of two QoS levels.
pub fn qmax(a: QoS, b: QoS) -> QoS {
    if (a as u8) >= (b as u8) {
        a
    } else {
        b
    }
}

/// A subscription's Retain Handling as its MQTT 5 option value (0: send retained messages on
/// subscribe, 1: only on a new subscription, 2: never), as sessions are stored and handed over.
pub fn retain_handling_code(r: &RetainForwardRule) -> u8 {
    match r {
        RetainForwardRule::OnEverySubscribe => 0,
        RetainForwardRule::OnNewSubscribe => 1,
        RetainForwardRule::Never => 2,
    }
}

/// The Retain Handling of option value `n` (anything but 0 and 1: never).
pub fn retain_handling(n: u8) -> RetainForwardRule {
    match n {
        0 => RetainForwardRule::OnEverySubscribe,
        1 => RetainForwardRule::OnNewSubscribe,
        _ => RetainForwardRule::Never,
    }
}

/// The protocol a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

impl Version {
    pub fn label(self) -> &'static str {
        match self {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

/// Why bytes from a peer could not be read as MQTT; each maps onto an MQTT 5 reason code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// 0x81: not valid MQTT.
    Malformed(String),
    /// 0x82: valid MQTT, but not allowed here (e.g. a CONNACK from a client).
    Protocol(String),
    /// 0x95: larger than the configured maximum.
    TooLarge { size: usize, max: u32 },
}

impl DecodeError {
    pub fn reason(&self) -> DisconnectReasonCode {
        match self {
            DecodeError::Malformed(_) => DisconnectReasonCode::MalformedPacket,
            DecodeError::Protocol(_) => DisconnectReasonCode::ProtocolError,
            DecodeError::TooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Malformed(m) => write!(f, "malformed packet: {m}"),
            DecodeError::Protocol(m) => write!(f, "protocol error: {m}"),
            DecodeError::TooLarge { size, max } => {
                write!(f, "packet of {size} bytes is over the maximum of {max}")
            }
        }
    }
}

/// What the first packet on a connection says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A CONNECT with protocol name "MQTT" and this level.
    Connect { level: u8 },
    /// A CONNECT whose protocol name is not "MQTT" (its level byte, if any).
    WrongName { level: Option<u8> },
    /// The first packet is not a CONNECT.
    NotConnect,
}

/// Reads the fixed header: `Some((header_len, remaining_len))`, `None` when more bytes are needed.
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((2 + i, len)));
        }
    }
    Err(DecodeError::Malformed(
        "remaining length over 4 bytes".into(),
    ))
}

/// The protocol level of a CONNECT named "MQTT" whose start is in `buf`, complete or not.
pub fn connect_level(buf: &[u8]) -> Option<u8> {
    let (hlen, _) = fixed_header(buf).ok()??;
    let body = buf.get(hlen..)?;
    (buf[0] == 0x10 && body.get(..6)? == b"\0\x04MQTT")
        .then(|| body.get(6).copied())
        .flatten()
}

/// Looks at the first packet without consuming it: `None` until it is complete.
pub fn peek_hello(buf: &[u8], max: u32) -> Result<Option<Hello>, DecodeError> {
    let Some((hlen, rlen)) = fixed_header(buf)? else {
        return Ok(None);
    };
    if hlen + rlen > max as usize {
        // An oversized CONNECT is answered by level: MQTT 5 has a CONNACK for it (0x95). Its
        // level byte may not be here yet (the fixed header can come alone): wait for it.
        if buf[0] == 0x10 && buf.len() < hlen + 7 {
            return Ok(None);
        }
        return Err(DecodeError::TooLarge {
            size: hlen + rlen,
            max,
        });
    }
    if buf[0] != 0x10 {
        return Ok(Some(Hello::NotConnect));
    }
    if buf.len() < hlen + rlen {
        return Ok(None);
    }
    let body = &buf[hlen..hlen + rlen];
    if body.len() < 2 {
        return Err(DecodeError::Malformed(
            "CONNECT without protocol name".into(),
        ));
    }
    let nlen = u16::from_be_bytes([body[0], body[1]]) as usize;
    let name = body.get(2..2 + nlen);
    let level = body.get(2 + nlen).copied();
    Ok(Some(match (name, level) {
        (Some(b"MQTT"), Some(level)) => Hello::Connect { level },
        _ => Hello::WrongName { level },
    }))
}

/// Checks of a complete CONNECT's flags that the decoder does not make, run before decoding it
/// (`buf` starts with a CONNECT named "MQTT" of this version). `Err` carries the bytes to answer
/// with before closing, if any:
///
/// * the reserved flag (bit 0) set is a malformed packet (MQTT-3.1.2-3): MQTT 5 gets CONNACK
///   0x81 (§4.13 allows it), 3.1.1 none ("the Server MUST … disconnect the Client");
/// * 3.1.1 only: the password flag without the user name flag (MQTT-3.1.2-22; MQTT 5 allows a
///   password alone) is refused with CONNACK 0x05, as every 3.1.1 refusal here.
pub fn check_connect(buf: &[u8], version: Version) -> Result<(), Option<BytesMut>> {
    let Ok(Some((hlen, _))) = fixed_header(buf) else {
        return Ok(());
    };
    // Protocol name (2 + 4 bytes), level (1), then the flags.
    let Some(&flags) = buf.get(hlen + 7) else {
        return Ok(());
    };
    let refuse = |code| {
        let mut out = BytesMut::new();
        let connack = Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties: None,
        });
        write(&connack, version, &mut out).map(|_| out).ok()
    };
    if flags & 0x01 != 0 {
        return Err(match version {
            Version::V5 => refuse(ConnectReturnCode::MalformedPacket),
            Version::V311 => None,
        });
    }
    if version == Version::V311 && flags & 0x40 != 0 && flags & 0x80 == 0 {
        return Err(refuse(ConnectReturnCode::NotAuthorized));
    }
    Ok(())
}

fn map_v5_err(e: Error) -> Option<DecodeError> {
    match e {
        Error::InsufficientBytes(_) => None,
        Error::PayloadSizeLimitExceeded { pkt_size, max } => Some(DecodeError::TooLarge {
            size: pkt_size,
            max,
        }),
        // MQTT 5 §3.8.3: a SUBSCRIBE without filters is a protocol error.
        Error::EmptySubscription => Some(DecodeError::Protocol(e.to_string())),
        other => Some(DecodeError::Malformed(other.to_string())),
    }
}

fn map_v4_err(e: m4::Error, max: u32) -> Option<DecodeError> {
    match e {
        m4::Error::InsufficientBytes(_) => None,
        m4::Error::PayloadSizeLimitExceeded(size) => Some(DecodeError::TooLarge { size, max }),
        m4::Error::EmptySubscription => Some(DecodeError::Protocol(e.to_string())),
        other => Some(DecodeError::Malformed(other.to_string())),
    }
}

/// Decodes one MQTT 5 packet from `buf`; `Ok(None)` when more bytes are needed.
pub fn read_v5(buf: &mut BytesMut, max: u32) -> Result<Option<Packet>, DecodeError> {
    // rumqttc refuses a DISCONNECT with no body, which MQTT 5 allows (§3.14.2.1).
    if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
        let _ = buf.split_to(2);
        return Ok(Some(Packet::Disconnect(Disconnect::new(
            DisconnectReasonCode::NormalDisconnection,
        ))));
    }
    // Nor one with a reason code and no property length (§3.14.2.2.1): it waits for more bytes.
    if buf.len() >= 3 && buf[0] == 0xE0 && buf[1] == 1 {
        let code = DisconnectReasonCode::try_from(buf[2])
            .map_err(|_| DecodeError::Malformed("invalid DISCONNECT reason code".into()))?;
        let _ = buf.split_to(3);
        return Ok(Some(Packet::Disconnect(Disconnect::new(code))));
    }
    match Packet::read(buf, Some(max)) {
        Ok(p) => Ok(Some(p)),
        Err(e) => map_v5_err(e).map_or(Ok(None), Err),
    }
}

/// Decodes one packet from a client speaking `version`, lifted to MQTT 5.
pub fn read(buf: &mut BytesMut, version: Version, max: u32) -> Result<Option<Packet>, DecodeError> {
    // The fixed header is judged as soon as it is here: reserved flags (§2.1.3), and the size
    // limit, which counts the whole packet (rumqttc compares only the remaining length).
    if let Some(&first) = buf.first() {
        check_first_byte(first, version)?;
        if let Some((hlen, rlen)) = fixed_header(buf)? {
            if hlen + rlen > max as usize {
                return Err(DecodeError::TooLarge {
                    size: hlen + rlen,
                    max,
                });
            }
        }
    }
    match version {
        Version::V5 => read_v5(buf, max),
        Version::V311 => match v4::Packet::read(buf, max as usize) {
            Ok(p) => lift(p).map(Some),
            Err(e) => map_v4_err(e, max).map_or(Ok(None), Err),
        },
    }
}

/// The first byte of a packet from a client: a known type with the flags the spec fixes for it
/// (PUBLISH: any but QoS 3). Anything else is malformed.
fn check_first_byte(b: u8, version: Version) -> Result<(), DecodeError> {
    let flags = b & 0x0f;
    let ok = match b >> 4 {
        3 => flags & 0x06 != 0x06,
        6 | 8 | 10 => flags == 0x02,
        15 => version == Version::V5 && flags == 0,
        1 | 2 | 4 | 5 | 7 | 9 | 11..=14 => flags == 0,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(DecodeError::Malformed(format!(
            "invalid packet type and flags 0x{b:02x}"
        )))
    }
}

/// Encodes `packet` for a client speaking `version`. Packets 3.1.1 has no form for (a server
/// DISCONNECT, AUTH) are skipped: the caller closes the socket instead.
pub fn write(packet: &Packet, version: Version, out: &mut BytesMut) -> Result<(), Error> {
    match version {
        // rumqttc encodes a DISCONNECT with a reason code and no properties as `E0 01 rc 00`
        // (one byte past its remaining length, corrupting the client's stream), and one with an
        // empty property block as `E0 00` (reason lost). Written by hand: `E0 02 rc 00`.
        Version::V5 => match packet {
            Packet::Disconnect(d)
                if d.properties.is_none()
                    && d.reason_code != DisconnectReasonCode::NormalDisconnection =>
            {
                out.extend_from_slice(&[0xE0, 0x02, d.reason_code as u8, 0x00]);
                Ok(())
            }
            _ => packet.write(out, None).map(|_| ()),
        },
        Version::V311 => {
            if let Packet::Publish(p) = packet {
                let flags = Flags::of(p);
                return write_publish_v311(p, &flags, out);
            }
            if let Some(p) = lower(packet) {
                p.write(out, usize::MAX).map(|_| ()).map_err(|e| {
                    tracing::warn!(error = %e, "3.1.1 encode failed");
                    Error::MalformedPacket
                })
            } else {
                Ok(())
            }
        }
    }
}

pub fn qos4to5(q: m4::QoS) -> QoS {
    match q {
        m4::QoS::AtMostOnce => QoS::AtMostOnce,
        m4::QoS::AtLeastOnce => QoS::AtLeastOnce,
        m4::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

pub fn qos5to4(q: QoS) -> m4::QoS {
    match q {
        QoS::AtMostOnce => m4::QoS::AtMostOnce,
        QoS::AtLeastOnce => m4::QoS::AtLeastOnce,
        QoS::ExactlyOnce => m4::QoS::ExactlyOnce,
    }
}

/// 3.1.1 → 5.
fn lift(p: v4::Packet) -> Result<Packet, DecodeError> {
    let proto = |what: &str| {
        Err(DecodeError::Protocol(format!(
            "a client may not send {what}"
        )))
    };
    Ok(match p {
        v4::Packet::Connect(c) => {
            let will = c.last_will.map(|w| LastWill {
                topic: Bytes::from(w.topic),
                message: w.message,
                qos: qos4to5(w.qos),
                retain: w.retain,
                properties: None,
            });
            let login = c.login.map(|l| Login {
                username: l.username,
                password: l.password,
            });
            Packet::Connect(
                Connect {
                    keep_alive: c.keep_alive,
                    client_id: c.client_id,
                    clean_start: c.clean_session,
                    properties: None,
                },
                will,
                login,
            )
        }
        v4::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: qos4to5(p.qos),
            retain: p.retain,
            topic: Bytes::from(p.topic),
            pkid: p.pkid,
            payload: p.payload,
            properties: None,
        }),
        v4::Packet::PubAck(a) => Packet::PubAck(PubAck::new(a.pkid, None)),
        v4::Packet::PubRec(a) => Packet::PubRec(PubRec::new(a.pkid, None)),
        v4::Packet::PubRel(a) => Packet::PubRel(PubRel::new(a.pkid, None)),
        v4::Packet::PubComp(a) => Packet::PubComp(PubComp::new(a.pkid, None)),
        v4::Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| Filter::new(f.path, qos4to5(f.qos)))
                .collect(),
            properties: None,
        }),
        v4::Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
            properties: None,
        }),
        v4::Packet::PingReq => Packet::PingReq(PingReq),
        v4::Packet::Disconnect => {
            Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection))
        }
        v4::Packet::ConnAck(_) => return proto("CONNACK"),
        v4::Packet::SubAck(_) => return proto("SUBACK"),
        v4::Packet::UnsubAck(_) => return proto("UNSUBACK"),
        v4::Packet::PingResp => return proto("PINGRESP"),
    })
}

/// The 3.1.1 CONNACK code closest to an MQTT 5 reason.
pub fn connack_code_v4(code: ConnectReturnCode) -> v4::ConnectReturnCode {
    use ConnectReturnCode as C;
    match code {
        C::Success => v4::ConnectReturnCode::Success,
        C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => {
            v4::ConnectReturnCode::RefusedProtocolVersion
        }
        C::BadClientId | C::ClientIdentifierNotValid => v4::ConnectReturnCode::BadClientId,
        C::BadUserNamePassword => v4::ConnectReturnCode::BadUserNamePassword,
        C::NotAuthorized | C::Banned | C::BadAuthenticationMethod => {
            v4::ConnectReturnCode::NotAuthorized
        }
        _ => v4::ConnectReturnCode::ServiceUnavailable,
    }
}

/// What one delivery of a shared message sets in its PUBLISH: the fixed header's flags and the
/// packet id.
#[derive(Debug, Clone, Copy)]
pub struct Flags {
    pub qos: QoS,
    pub dup: bool,
    pub retain: bool,
    pub pkid: u16,
}

impl Flags {
    fn of(p: &Publish) -> Flags {
        Flags {
            qos: p.qos,
            dup: p.dup,
            retain: p.retain,
            pkid: p.pkid,
        }
    }
}

/// Writes message `p` as a QoS 1/2 PUBLISH with `flags` (a QoS 1/2 delivery of a QoS 1/2
/// message: both have a packet id field), without copying it: a session keeps the message shared
/// and only its own flags and packet id differ. Returns the bytes written.
pub fn write_publish_as(
    p: &Publish,
    flags: &Flags,
    version: Version,
    out: &mut BytesMut,
) -> Result<usize, Error> {
    if p.qos == QoS::AtMostOnce || flags.qos == QoS::AtMostOnce {
        return Err(Error::MalformedPacket);
    }
    let start = out.len();
    match version {
        Version::V311 => write_publish_v311(p, flags, out)?,
        Version::V5 => {
            p.write(out)?;
            // The same packet with this delivery's flags and packet id: the first byte, and the
            // two bytes after the remaining length and the topic (MQTT 5 §3.3.1, §3.3.2).
            out[start] = first_byte(flags);
            let at = topic_at(&out[start..]).ok_or(Error::MalformedPacket)? + start;
            let at = at + p.topic.len();
            out[at..at + 2].copy_from_slice(&flags.pkid.to_be_bytes());
        }
    }
    Ok(out.len() - start)
}

/// Where the topic of the PUBLISH that `packet` starts with begins: after its first byte, its
/// Remaining Length (1-4 bytes) and the topic's 2-byte length (MQTT 5 §3.3.2.1). `None` if
/// `packet` is too short to say.
pub fn topic_at(packet: &[u8]) -> Option<usize> {
    let mut at = 1;
    while *packet.get(at)? & 0x80 != 0 {
        at += 1;
        if at > 4 {
            return None;
        }
    }
    let at = at + 1 + 2;
    (packet.len() >= at).then_some(at)
}

/// A PUBLISH's first byte: type 3 and `flags` (DUP only at QoS 1/2, MQTT 3.1.1 §3.3.1.1).
fn first_byte(flags: &Flags) -> u8 {
    let qos = qos5to4(flags.qos) as u8;
    let dup = flags.dup && qos > 0;
    0x30 | (dup as u8) << 3 | qos << 1 | flags.retain as u8
}

/// A PUBLISH for a 3.1.1 client, written from the node's MQTT 5 form (its properties dropped).
/// Written here rather than through rumqttc's 3.1.1 type, which owns its topic as a `String`:
/// that cost a copy and a UTF-8 check of the topic per delivery (MQTT 3.1.1 §3.3).
fn write_publish_v311(p: &Publish, flags: &Flags, out: &mut BytesMut) -> Result<(), Error> {
    use bytes::BufMut;
    let topic_len = u16::try_from(p.topic.len()).map_err(|_| Error::MalformedPacket)?;
    let qos = qos5to4(flags.qos) as u8;
    let len = 2 + p.topic.len() + if qos > 0 { 2 } else { 0 } + p.payload.len();
    // The largest Remaining Length four bytes can say.
    if len > 268_435_455 {
        return Err(Error::PayloadSizeLimitExceeded {
            pkt_size: len,
            max: 268_435_455,
        });
    }
    out.reserve(5 + len);
    out.put_u8(first_byte(flags));
    let mut rest = len;
    loop {
        let byte = (rest % 128) as u8;
        rest /= 128;
        out.put_u8(if rest > 0 { byte | 0x80 } else { byte });
        if rest == 0 {
            break;
        }
    }
    out.put_u16(topic_len);
    out.put_slice(&p.topic);
    if qos > 0 {
        out.put_u16(flags.pkid);
    }
    out.put_slice(&p.payload);
    Ok(())
}

/// 5 → 3.1.1, for packets the server sends.
fn lower(p: &Packet) -> Option<v4::Packet> {
    Some(match p {
        Packet::ConnAck(c) => v4::Packet::ConnAck(v4::ConnAck {
            session_present: c.session_present,
            code: connack_code_v4(c.code),
        }),
        Packet::Publish(p) => v4::Packet::Publish(v4::Publish {
            dup: p.dup,
            qos: qos5to4(p.qos),
            retain: p.retain,
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            pkid: p.pkid,
            payload: p.payload.clone(),
        }),
        Packet::PubAck(a) => v4::Packet::PubAck(v4::PubAck::new(a.pkid)),
        Packet::PubRec(a) => v4::Packet::PubRec(v4::PubRec::new(a.pkid)),
        Packet::PubRel(a) => v4::Packet::PubRel(v4::PubRel::new(a.pkid)),
        Packet::PubComp(a) => v4::Packet::PubComp(v4::PubComp::new(a.pkid)),
        Packet::SubAck(s) => v4::Packet::SubAck(v4::SubAck::new(
            s.pkid,
            s.return_codes
                .iter()
                .map(|c| match c {
                    SubscribeReasonCode::Success(q) => {
                        v4::SubscribeReasonCode::Success(qos5to4(*q))
                    }
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Packet::UnsubAck(u) => v4::Packet::UnsubAck(v4::UnsubAck::new(u.pkid)),
        Packet::PingResp(_) => v4::Packet::PingResp,
        _ => return None,
    })
}

/// The encoded size of a PUBLISH, without a copy of it for MQTT 5 (the only version whose
/// clients announce a maximum packet size).
pub fn publish_size(p: &Publish, version: Version) -> usize {
    match version {
        Version::V5 => p.size(),
        Version::V311 => size(&Packet::Publish(p.clone()), version),
    }
}

/// The size of `packet` on the wire for `version`.
pub fn size(packet: &Packet, version: Version) -> usize {
    match version {
        Version::V5 => packet.size(),
        Version::V311 => lower(packet).map_or(0, |p| p.size()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_311_publish_is_written_as_rumqttc_writes_it() {
        for (qos, dup, retain, payload_len) in [
            (QoS::AtMostOnce, false, false, 0),
            (QoS::AtMostOnce, true, true, 100),
            (QoS::AtLeastOnce, true, false, 200),
            (QoS::ExactlyOnce, false, true, 20_000),
            (QoS::AtLeastOnce, false, false, 2_100_000),
        ] {
            let mut p = Publish::new("a/b/ü", qos, vec![7u8; payload_len], None);
            p.pkid = if qos == QoS::AtMostOnce { 0 } else { 513 };
            p.dup = dup;
            p.retain = retain;
            let mut ours = BytesMut::new();
            write(&Packet::Publish(p.clone()), Version::V311, &mut ours).unwrap();
            let mut theirs = BytesMut::new();
            let mut v4p = lower(&Packet::Publish(p)).unwrap();
            if let v4::Packet::Publish(q) = &mut v4p {
                // DUP is written for QoS 1/2 only (MQTT 3.1.1 §3.3.1.1).
                q.dup &= q.qos != m4::QoS::AtMostOnce;
            }
            v4p.write(&mut theirs, usize::MAX).unwrap();
            assert_eq!(
                ours, theirs,
                "{qos:?} dup={dup} retain={retain} {payload_len} B"
            );
        }
    }

    #[test]
    fn a_shared_message_is_written_with_one_deliverys_flags_as_its_copy_would_be() {
        let props = PublishProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        for version in [Version::V5, Version::V311] {
            for (msg_qos, qos, dup, retain, len) in [
                (QoS::AtLeastOnce, QoS::AtLeastOnce, false, false, 10),
                (QoS::ExactlyOnce, QoS::AtLeastOnce, true, true, 300),
                (QoS::ExactlyOnce, QoS::ExactlyOnce, false, true, 70_000),
            ] {
                let mut shared = Publish::new("t/ü", msg_qos, vec![3u8; len], Some(props.clone()));
                shared.pkid = 1;
                let flags = Flags {
                    qos,
                    dup,
                    retain,
                    pkid: 40_000,
                };
                let mut ours = BytesMut::new();
                let n = write_publish_as(&shared, &flags, version, &mut ours).unwrap();
                assert_eq!(n, ours.len());
                let mut copy = shared.clone();
                (copy.qos, copy.dup, copy.retain, copy.pkid) = (qos, dup, retain, 40_000);
                let mut theirs = BytesMut::new();
                write(&Packet::Publish(copy), version, &mut theirs).unwrap();
                assert_eq!(ours, theirs, "{version:?} {msg_qos:?}->{qos:?} {len} B");
            }
        }
        let q0 = Publish::new("t", QoS::AtMostOnce, "x", None);
        let flags = Flags::of(&q0);
        assert!(write_publish_as(&q0, &flags, Version::V5, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn v311_publish_round_trips_through_v5_types() {
        let mut wire = BytesMut::new();
        let mut publish = v4::Publish::new("a/b", m4::QoS::AtLeastOnce, b"hi".to_vec());
        publish.pkid = 1; // a QoS 1 PUBLISH needs a packet id
        v4::Packet::Publish(publish).write(&mut wire, 1000).unwrap();
        let p = read(&mut wire, Version::V311, 1000).unwrap().unwrap();
        let Packet::Publish(p) = p else { panic!() };
        assert_eq!(&p.topic[..], b"a/b");
        let mut out = BytesMut::new();
        let mut with_props = p.clone();
        with_props.properties = Some(PublishProperties {
            correlation_data: Some(Bytes::from_static(b"x")),
            ..Default::default()
        });
        write(&Packet::Publish(with_props), Version::V311, &mut out).unwrap();
        let back = v4::Packet::read(&mut out, 1000).unwrap();
        assert!(matches!(back, v4::Packet::Publish(_)));
    }

    #[test]
    fn publish_size_is_the_written_size() {
        let mut p = Publish::new(
            "a/b",
            QoS::AtLeastOnce,
            Bytes::from_static(b"hello"),
            Some(PublishProperties {
                user_properties: vec![("k".into(), "v".into())],
                ..Default::default()
            }),
        );
        p.pkid = 7;
        for v in [Version::V5, Version::V311] {
            let mut wire = BytesMut::new();
            write(&Packet::Publish(p.clone()), v, &mut wire).unwrap();
            assert_eq!(publish_size(&p, v), wire.len(), "{v:?}");
        }
    }

    #[test]
    fn empty_v5_disconnect_is_normal() {
        let mut b = BytesMut::from(&[0xE0u8, 0][..]);
        let p = read_v5(&mut b, 100).unwrap().unwrap();
        assert!(
            matches!(p, Packet::Disconnect(d) if d.reason_code == DisconnectReasonCode::NormalDisconnection)
        );
    }

    #[test]
    fn v5_disconnect_with_reason_only() {
        let mut b = BytesMut::from(&[0xE0u8, 1, 0x04][..]);
        let p = read_v5(&mut b, 100).unwrap().unwrap();
        assert!(
            matches!(p, Packet::Disconnect(d) if d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage)
        );
        assert!(b.is_empty());
    }

    #[test]
    fn connect_flags_are_checked() {
        // 3.1.1, clean session, keep-alive 60, client id "c".
        let mut c = vec![
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'c',
        ];
        assert_eq!(check_connect(&c, Version::V311), Ok(()));
        c[9] = 0x03;
        assert_eq!(check_connect(&c, Version::V311), Err(None));
        c[9] = 0x42;
        let refused = check_connect(&c, Version::V311).unwrap_err().unwrap();
        assert_eq!(&refused[..], &[0x20, 2, 0, 5]);
        c[8] = 5;
        c[9] = 0x03;
        let refused = check_connect(&c, Version::V5).unwrap_err().unwrap();
        assert_eq!(refused[3], 0x81);
    }

    #[test]
    fn hello_detects_levels_and_names() {
        let c = [0x10, 10, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60];
        assert_eq!(
            peek_hello(&c, 100).unwrap(),
            Some(Hello::Connect { level: 5 })
        );
        let c = [0x10, 10, 0, 4, b'M', b'Q', b'T', b'X', 4, 2, 0, 60];
        assert_eq!(
            peek_hello(&c, 100).unwrap(),
            Some(Hello::WrongName { level: Some(4) })
        );
        assert_eq!(
            peek_hello(&[0x30, 1], 100).unwrap(),
            Some(Hello::NotConnect)
        );
        assert_eq!(peek_hello(&[0x10], 100).unwrap(), None);
        // Oversized: undecided until the level byte is here.
        assert_eq!(peek_hello(&[0x10, 0xff, 0x01], 100).unwrap(), None);
        let big = [0x10, 0xff, 0x01, 0, 4, b'M', b'Q', b'T', b'T', 5];
        assert!(matches!(
            peek_hello(&big, 100),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(connect_level(&big), Some(5));
    }
}
