//! One message inside the node, and its frame: the bytes that carry it through the core.
//!
//! Every message that enters the node (a client's PUBLISH, an HTTP publish, a will) is encoded
//! once, by [`Message::frame`], into a frame: a short header (format, publisher, arrival time)
//! followed by the message as an MQTT 5 PUBLISH packet. The core's log holds frames, and the
//! message travels beside its frame ([`Message::routed`]: its topic and payload moved into the
//! frame's memory) to the fan-out, which shares it as an `Arc<Message>` with every matching
//! session; a frame that comes without its message is decoded ([`Message::from_frame`],
//! zero-copy for topic and payload). The frame is also what a link to another node carries, so
//! a message leaves and enters a node in one form.
//!
//! The frame keeps the QoS and retain flag as published (a session delivers at the lower of the
//! message's and its subscription's QoS, and honours retain-as-published), the publisher's
//! client hash (no-local), and the arrival time (MQTT 5 message expiry counts from it).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{check, Publish as WirePublish};

use crate::codec::{Publish, QoS};

/// Frame format version.
const FORMAT: u8 = 1;
/// Header: format (1), publisher hash (8), arrival time in ms since the epoch (8), the node's
/// sequence number (8), scope (1; for [`Scope::Group`] followed by the subscription path's length
/// (2) and the path).
const HEADER: usize = 26;
pub(crate) const SCOPE_AT: usize = 25;
/// The scope byte of [`Scope::Plain`].
pub(crate) const SCOPE_PLAIN: u8 = 1;

/// Which of the node's subscriptions a message is for. Only a cluster node
/// ([`crate::cluster`]) uses anything but `All`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every matching subscription: a message accepted on this node (and, when the node is in a
    /// cluster, not yet handed to it).
    #[default]
    All,
    /// Every matching subscription except share groups (their copy travels through the
    /// cluster's queue groups): a message from another node, or one of this node's already
    /// handed to the cluster. Never handed to the cluster (again).
    Plain,
    /// One member of this share group only (`$share/{group}/{filter}`): the cluster picked this
    /// node for the group's copy.
    Group(std::sync::Arc<str>),
}

/// A message on its way through the node.
#[derive(Debug, Clone)]
pub struct Message {
    /// The PUBLISH as published: topic, payload, QoS, retain flag and properties. Its packet id
    /// and DUP flag mean nothing here; topic alias and subscription identifiers are never set.
    pub publish: Publish,
    /// Hash of the publisher's client id (see [`client_hash`]); 0 for the node itself.
    pub src: u64,
    /// When the node accepted it.
    pub received: SystemTime,
    /// Its place in the node's order of accepted messages (a subscription made after a message
    /// was accepted does not get it; see [`crate::index::Sub::since`]).
    pub seq: u64,
    /// Which subscriptions it is for.
    pub scope: Scope,
    /// A message from another node: that node's boot id and its sequence number there (see
    /// [`Message::identity`]). Kept in memory only, not in the frame.
    pub origin: Option<(u64, u64)>,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[error("bad message frame: {0}")]
pub struct FrameError(String);

impl Message {
    /// A message accepted now from publisher `src`.
    pub fn new(mut publish: Publish, src: u64) -> Message {
        publish.dup = false;
        publish.pkid = node_pkid(publish.qos);
        if let Some(p) = publish.properties.as_mut() {
            p.topic_alias = None;
            p.subscription_identifiers.clear();
        }
        Message {
            publish,
            src,
            received: SystemTime::now(),
            seq: 0,
            scope: Scope::All,
            origin: None,
        }
    }

    /// The message's id across a cluster: its origin node's boot id and sequence number there,
    /// the same on every node that has it (`boot`: this node's, for a message accepted here).
    pub fn identity(&self, boot: u64) -> (u64, u64) {
        self.origin.unwrap_or((boot, self.seq))
    }

    pub fn topic(&self) -> &str {
        // Topics are checked as UTF-8 before a message is made (`Message::new` callers and
        // `from_frame`); an empty string is only a fallback that matches no filter.
        std::str::from_utf8(&self.publish.topic).unwrap_or("")
    }

    pub fn qos(&self) -> QoS {
        self.publish.qos
    }

    /// Bytes this message holds (topic, payload and properties), for queue accounting.
    pub fn weight(&self) -> usize {
        self.publish.size() + 32
    }

    /// Seconds left of its MQTT 5 message expiry interval: `None` when it has none, `Some(0)`
    /// when it has expired.
    pub fn expiry_left(&self, now: SystemTime) -> Option<u32> {
        self.expiry_left_at(|| now)
    }

    /// [`Message::expiry_left`] now; the clock is read only for a message that expires (most
    /// do not, and a clock read per delivery was ~2% of a 1 -> 1 QoS 0 burst).
    pub fn expiry_left_now(&self) -> Option<u32> {
        self.expiry_left_at(SystemTime::now)
    }

    fn expiry_left_at(&self, now: impl FnOnce() -> SystemTime) -> Option<u32> {
        let secs = self
            .publish
            .properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)?;
        let waited = now()
            .duration_since(self.received)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        Some((secs as u64).saturating_sub(waited) as u32)
    }

    /// Encodes the frame that carries this message through the core, as accepted `seq`-th.
    pub fn frame(&self, seq: u64) -> Result<Bytes, FrameError> {
        // The encoding wants a packet id at QoS 1/2: every message has the node's (see
        // [`node_pkid`]), so it is encoded as it is, without a copy.
        let p = &self.publish;
        let mut out = BytesMut::with_capacity(HEADER + p.size() + 8);
        out.put_u8(FORMAT);
        out.put_u64(self.src);
        out.put_u64(unix_ms(self.received));
        out.put_u64(seq);
        match &self.scope {
            Scope::All => out.put_u8(0),
            Scope::Plain => out.put_u8(SCOPE_PLAIN),
            Scope::Group(path) => {
                let len = u16::try_from(path.len()).map_err(|_| FrameError("path".into()))?;
                out.put_u8(2);
                out.put_u16(len);
                out.put_slice(path.as_bytes());
            }
        }
        p.write(&mut out).map_err(|e| FrameError(e.to_string()))?;
        Ok(out.freeze())
    }

    /// This message as the fan-out would read it back from `frame`, made for it by
    /// [`Message::frame`] and accepted `seq`-th: the frame's scope, and topic and payload sharing
    /// the frame's memory (not the buffer they were read into, which a queued message would
    /// otherwise keep whole). Saves the fan-out decoding again what this node just encoded.
    /// `None` if the frame does not hold them where they belong.
    pub fn routed(mut self, frame: &Bytes, seq: u64) -> Option<Message> {
        let (scope, start) = scope_of(frame).ok()?;
        // The PUBLISH: the topic, and the payload last (MQTT 5 §3.3).
        let at = start + crate::codec::topic_at(frame.get(start..)?)?;
        let topic = at..at + self.publish.topic.len();
        if frame.get(topic.clone())? != &self.publish.topic[..] {
            return None;
        }
        let payload = frame.len().checked_sub(self.publish.payload.len())?;
        if payload < topic.end {
            return None;
        }
        self.publish.topic = frame.slice(topic);
        self.publish.payload = frame.slice(payload..);
        self.seq = seq;
        if scope == Scope::Plain {
            self.scope = scope;
        }
        Some(self)
    }

    /// Reads a frame made by [`Message::frame`]; topic and payload share the frame's memory.
    pub fn from_frame(frame: Bytes) -> Result<Message, FrameError> {
        let (scope, start) = scope_of(&frame)?;
        let src = u64::from_be_bytes(frame[1..9].try_into().unwrap_or_default());
        let ms = u64::from_be_bytes(frame[9..17].try_into().unwrap_or_default());
        let seq = frame_seq(&frame);
        let body = frame.slice(start..);
        let fixed = check(body.iter(), None).map_err(|e| FrameError(e.to_string()))?;
        let mut publish = WirePublish::read(fixed, body).map_err(|e| FrameError(e.to_string()))?;
        if std::str::from_utf8(&publish.topic).is_err() {
            return Err(FrameError("topic is not UTF-8".into()));
        }
        publish.pkid = node_pkid(publish.qos);
        Ok(Message {
            publish,
            src,
            received: UNIX_EPOCH + Duration::from_millis(ms),
            seq,
            scope,
            origin: None,
        })
    }
}

/// The accepted-order number a frame carries (0 if it is too short to be one).
pub fn frame_seq(frame: &[u8]) -> u64 {
    frame
        .get(17..25)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// A frame's scope, and where its PUBLISH starts.
fn scope_of(frame: &Bytes) -> Result<(Scope, usize), FrameError> {
    if frame.len() < HEADER || frame[0] != FORMAT {
        return Err(FrameError("unknown format".into()));
    }
    Ok(match frame[SCOPE_AT] {
        0 => (Scope::All, HEADER),
        1 => (Scope::Plain, HEADER),
        2 => {
            let len = frame
                .get(HEADER..HEADER + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                .ok_or_else(|| FrameError("short scope".into()))?;
            let path = frame
                .get(HEADER + 2..HEADER + 2 + len)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or_else(|| FrameError("bad scope".into()))?;
            (Scope::Group(path.into()), HEADER + 2 + len)
        }
        _ => return Err(FrameError("unknown scope".into())),
    })
}

/// The hash of a client id that messages carry as their publisher (no-local compares it).
pub fn client_hash(client_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    client_id.hash(&mut h);
    // 0 is the node's own.
    h.finish().max(1)
}

/// `t` in milliseconds since the Unix epoch (0 before it), as frames, stored records and the
/// APIs carry times.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// The packet id a message has inside the node: none at QoS 0, 1 at QoS 1/2 (what the encoding
/// of its frame needs). It means nothing: every session gives each delivery its own.
fn node_pkid(qos: QoS) -> u16 {
    u16::from(qos != QoS::AtMostOnce)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::PublishProperties;

    #[test]
    fn frame_round_trips() {
        let mut p = Publish::new("a/b", QoS::ExactlyOnce, Bytes::from_static(b"hello"), None);
        p.retain = true;
        p.properties = Some(PublishProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            message_expiry_interval: Some(30),
            ..Default::default()
        });
        let m = Message::new(p, 42);
        let back = Message::from_frame(m.frame(9).unwrap()).unwrap();
        assert_eq!(back.seq, 9);
        assert_eq!(back.topic(), "a/b");
        assert_eq!(back.publish.payload, Bytes::from_static(b"hello"));
        assert_eq!(back.qos(), QoS::ExactlyOnce);
        assert!(back.publish.retain);
        assert_eq!(back.src, 42);
        assert_eq!(back.publish.properties, m.publish.properties);
        assert_eq!(back.expiry_left(back.received), Some(30));
        assert_eq!(back.scope, Scope::All);
        let mut g = m.clone();
        g.scope = Scope::Group("$share/g/a/#".into());
        let back = Message::from_frame(g.frame(3).unwrap()).unwrap();
        assert_eq!(back.scope, g.scope);
        assert_eq!(back.publish.payload, Bytes::from_static(b"hello"));
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(Message::from_frame(Bytes::from_static(b"")).is_err());
        assert!(Message::from_frame(Bytes::from_static(&[1; 20])).is_err());
        let mut f = vec![FORMAT];
        f.extend_from_slice(&[0; 25]);
        f.extend_from_slice(&[0x30, 0x05, 0x00, 0x02, 0xff, 0xfe, 0x00]);
        assert!(Message::from_frame(Bytes::from(f)).is_err());
    }

    #[test]
    fn a_routed_message_is_what_its_frame_reads_back_as() {
        let props = PublishProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        for (scope, qos, len) in [
            (Scope::All, QoS::AtMostOnce, 0),
            (Scope::Plain, QoS::AtLeastOnce, 300),
            (
                Scope::Group("$share/g/a/+".into()),
                QoS::ExactlyOnce,
                70_000,
            ),
        ] {
            let p = Publish::new("a/ü", qos, vec![5u8; len], Some(props.clone()));
            let mut m = Message::new(p, 3);
            m.scope = scope.clone();
            let frame = m.frame(77).unwrap();
            let back = Message::from_frame(frame.clone()).unwrap();
            let routed = m.routed(&frame, 77).unwrap();
            assert_eq!(routed.publish, back.publish);
            assert_eq!(
                (routed.seq, routed.src, &routed.scope),
                (back.seq, back.src, &back.scope)
            );
            assert_eq!(routed.scope, scope);
        }
        // The frame handed to the cluster says Plain: so does the routed message.
        let m = Message::new(Publish::new("x", QoS::AtMostOnce, "y", None), 3);
        let mut frame = BytesMut::from(&m.frame(1).unwrap()[..]);
        frame[SCOPE_AT] = SCOPE_PLAIN;
        let routed = m.routed(&frame.freeze(), 1).unwrap();
        assert_eq!(routed.scope, Scope::Plain);
        // A frame of another message is refused.
        let other = Message::new(Publish::new("z", QoS::AtMostOnce, "y", None), 3);
        let f = other.frame(2).unwrap();
        let m = Message::new(Publish::new("x", QoS::AtMostOnce, "y", None), 3);
        assert!(m.routed(&f, 2).is_none());
    }
}
