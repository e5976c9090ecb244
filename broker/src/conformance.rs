//! The protocol checks that decide between serving a packet and ending the connection, as
//! MQTT 3.1.1 and MQTT 5 require them, kept out of the session so they can be tested alone.
//!
//! The session calls each check where the packet arrives (CONNECT, PUBLISH, SUBSCRIBE,
//! UNSUBSCRIBE, DISCONNECT) and, on an error, ends the connection with the reason code returned
//! (MQTT 5 DISCONNECT or CONNACK; a 3.1.1 client is just disconnected). [`keep_alive`] decides
//! the keep-alive a session runs with, and [`linger`] lets a client read the DISCONNECT it was
//! sent even while it is still writing.
//!
//! The node's own sessions (the HTTP bridge's, `Transport::Internal`) skip the filter and
//! Response Topic checks and keep the lenient answers (SUBACK 0x8F, UNSUBACK, the message passed
//! on): every HTTP caller shares them, the bridge refuses bad input with 400 before it gets there,
//! and one it missed must not end the session for everyone.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use crate::codec::{
    ConnectProperties, Disconnect, DisconnectReasonCode, LastWill, Publish, Version,
};
use crate::topic::{self, TopicError};
use crate::transport::Io;

/// How long the server keeps reading (and discarding) a client's input after it sent the client
/// a DISCONNECT, unless the client closes first.
pub const LINGER: Duration = Duration::from_secs(1);

/// CONNECT properties that make the CONNECT a protocol error (CONNACK 0x82, MQTT 5 §3.1.2.11):
/// Receive Maximum or Maximum Packet Size 0, or a will whose Response Topic is not a topic name
/// (the will is published with it, and a topic name has no wildcards, MQTT-4.7.1-1).
pub fn connect_error(props: Option<&ConnectProperties>, will: Option<&LastWill>) -> Option<String> {
    if let Some(p) = props {
        if p.receive_maximum == Some(0) {
            // §3.1.2.11.3: "It is a Protocol Error to include the Receive Maximum value more
            // than once or for it to have the value 0."
            return Some("Receive Maximum 0".into());
        }
        if p.max_packet_size == Some(0) {
            // §3.1.2.11.4: the same for Maximum Packet Size.
            return Some("Maximum Packet Size 0".into());
        }
    }
    let rt = will?.properties.as_ref()?.response_topic.as_deref()?;
    let e = topic::validate_topic(rt).err()?;
    Some(format!("invalid will Response Topic: {e}"))
}

/// A client DISCONNECT that is itself a protocol error (DISCONNECT 0x82): one setting a non-zero
/// Session Expiry Interval when the session's was 0 (MQTT 5 §3.14.2.2.2). `expiry` is the
/// interval in force: the client's from CONNECT, or the server's if CONNACK replaced it.
pub fn disconnect_error(expiry: u32, d: &Disconnect) -> Option<String> {
    let asked = d.properties.as_ref()?.session_expiry_interval?;
    (expiry == 0 && asked != 0)
        .then(|| format!("DISCONNECT sets Session Expiry Interval {asked} after a CONNECT with 0"))
}

/// A PUBLISH property that is a protocol error: a Response Topic that is not a valid topic name
/// (wildcards: MQTT-3.3.2-14; empty: MQTT-4.7.3-1; U+0000 makes it malformed, §1.5.4).
pub fn publish_error(p: &Publish) -> Option<(DisconnectReasonCode, String)> {
    let rt = p.properties.as_ref()?.response_topic.as_deref()?;
    let e = topic::validate_topic(rt).err()?;
    let code = match e {
        TopicError::Nul => DisconnectReasonCode::MalformedPacket,
        _ => DisconnectReasonCode::ProtocolError,
    };
    Some((code, format!("invalid Response Topic: {e}")))
}

/// A topic filter in SUBSCRIBE or UNSUBSCRIBE that makes the packet malformed (so the
/// connection ends) rather than one the server may refuse alone (SUBACK 0x8F / 0x80).
///
/// A filter that is empty (MQTT-4.7.3-1), holds U+0000 (§1.5.4), or misuses a wildcard
/// (MQTT-4.7.1-1/2: `#` alone and last, `+` a whole level) is not a topic filter at all: MQTT 5's
/// 0x8F is for a filter that "is correctly formed but is not allowed", and 3.1.1 closes the
/// connection on any protocol violation (MQTT-4.8.0-1). A `$share/` filter without a share name
/// or inner filter breaks MQTT-4.8.2-1/2: a protocol error.
pub fn filter_error(filter: &str) -> Option<(DisconnectReasonCode, String)> {
    let e = topic::validate_filter(filter).err()?;
    let code = match e {
        TopicError::BadShare => DisconnectReasonCode::ProtocolError,
        _ => DisconnectReasonCode::MalformedPacket,
    };
    Some((code, format!("topic filter {filter:?}: {e}")))
}

/// The first malformed filter of a SUBSCRIBE or UNSUBSCRIBE, if any (see [`filter_error`]).
pub fn filters_error<'a>(
    filters: impl IntoIterator<Item = &'a str>,
) -> Option<(DisconnectReasonCode, String)> {
    filters.into_iter().find_map(filter_error)
}

/// The keep-alive a session runs with, and the Server Keep Alive to put in CONNACK.
///
/// `cap` is `limits.max_keepalive` (0: none). An MQTT 5 client asking for more than the cap, or
/// for 0 (no keep-alive), gets the cap, and is told so (MQTT-3.1.2-21: it must then use it). A
/// 3.1.1 client cannot be told: it keeps what it asked for, 0 included. The node's own sessions
/// (`internal`) are never capped.
pub fn keep_alive(asked: u16, cap: u16, version: Version, internal: bool) -> (u16, Option<u16>) {
    let over = asked == 0 || asked > cap;
    if version == Version::V5 && cap > 0 && over && !internal {
        (cap, Some(cap))
    } else {
        (asked, None)
    }
}

/// After a DISCONNECT with a reason was written (and the write side shut down): reads and
/// discards what the client still sends, until it closes or [`LINGER`] has passed. Closing with
/// unread input makes the kernel reset the connection, and a client still writing then gets a
/// broken pipe instead of the DISCONNECT that says why (MQTT 5 §4.13).
pub async fn linger(io: &mut Box<dyn Io>, max: Duration) {
    let mut scratch = BytesMut::with_capacity(16 * 1024);
    let drain = async {
        loop {
            scratch.clear();
            match io.read_buf(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(max, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{DisconnectProperties, LastWillProperties, PublishProperties, QoS};

    #[test]
    fn receive_maximum_and_packet_size_zero() {
        let mut p = ConnectProperties::new();
        assert_eq!(connect_error(Some(&p), None), None);
        assert_eq!(connect_error(None, None), None);
        p.receive_maximum = Some(0);
        assert!(connect_error(Some(&p), None).is_some());
        p.receive_maximum = Some(1);
        p.max_packet_size = Some(0);
        assert!(connect_error(Some(&p), None).is_some());
    }

    #[test]
    fn will_response_topic_must_be_a_topic_name() {
        let will = |rt: Option<&str>| {
            let props = LastWillProperties {
                delay_interval: None,
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: rt.map(str::to_string),
                correlation_data: None,
                user_properties: Vec::new(),
            };
            LastWill::new("w", "gone", QoS::AtMostOnce, false, Some(props))
        };
        assert_eq!(connect_error(None, Some(&will(None))), None);
        assert_eq!(connect_error(None, Some(&will(Some("re/ply")))), None);
        assert!(connect_error(None, Some(&will(Some("re/+")))).is_some());
        assert!(connect_error(None, Some(&will(Some("re/#")))).is_some());
    }

    fn disconnect(expiry: Option<u32>) -> Disconnect {
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
            properties: expiry.map(|e| DisconnectProperties {
                session_expiry_interval: Some(e),
                reason_string: None,
                user_properties: Vec::new(),
                server_reference: None,
            }),
        }
    }

    #[test]
    fn disconnect_expiry_from_zero_is_an_error() {
        assert!(disconnect_error(0, &disconnect(Some(10))).is_some());
        assert!(disconnect_error(0, &disconnect(Some(0))).is_none());
        assert!(disconnect_error(0, &disconnect(None)).is_none());
        assert!(disconnect_error(5, &disconnect(Some(10))).is_none());
        assert!(disconnect_error(5, &disconnect(Some(0))).is_none());
    }

    #[test]
    fn response_topic_must_be_a_topic_name() {
        let with = |rt: &str| {
            let props = PublishProperties {
                response_topic: Some(rt.into()),
                ..Default::default()
            };
            publish_error(&Publish::new("a", QoS::AtMostOnce, "x", Some(props))).map(|e| e.0)
        };
        assert_eq!(with("reply/to/me"), None);
        assert_eq!(with("reply/+"), Some(DisconnectReasonCode::ProtocolError));
        assert_eq!(with("reply/#"), Some(DisconnectReasonCode::ProtocolError));
        assert_eq!(with(""), Some(DisconnectReasonCode::ProtocolError));
        assert_eq!(with("a\0b"), Some(DisconnectReasonCode::MalformedPacket));
        assert!(publish_error(&Publish::new("a", QoS::AtMostOnce, "x", None)).is_none());
    }

    #[test]
    fn malformed_filters_versus_refusable_ones() {
        for ok in [
            "a/b",
            "+",
            "#",
            "a/+/b/#",
            "$SYS/#",
            "$foo/bar",
            "$share/g/a/#",
        ] {
            assert_eq!(filter_error(ok), None, "{ok}");
        }
        for bad in ["", "a/#/b", "a+", "a/b#", "#/a", "+a/b", "a\0b"] {
            assert_eq!(
                filter_error(bad).map(|e| e.0),
                Some(DisconnectReasonCode::MalformedPacket),
                "{bad:?}"
            );
        }
        for bad in ["$share/g", "$share//a", "$share/g+/a", "$share/g/"] {
            assert_eq!(
                filter_error(bad).map(|e| e.0),
                Some(DisconnectReasonCode::ProtocolError),
                "{bad:?}"
            );
        }
        assert!(filters_error(["a", "b/#"]).is_none());
        assert!(filters_error(["a", "b/#/c"]).is_some());
    }

    #[test]
    fn keep_alive_cap() {
        let v5 = Version::V5;
        assert_eq!(keep_alive(60, 0, v5, false), (60, None));
        assert_eq!(keep_alive(0, 0, v5, false), (0, None));
        assert_eq!(keep_alive(60, 30, v5, false), (30, Some(30)));
        assert_eq!(keep_alive(0, 30, v5, false), (30, Some(30)));
        assert_eq!(keep_alive(20, 30, v5, false), (20, None));
        assert_eq!(keep_alive(0, 65535, v5, false), (65535, Some(65535)));
        assert_eq!(keep_alive(65535, 65535, v5, false), (65535, None));
        assert_eq!(keep_alive(0, 30, Version::V311, false), (0, None));
        assert_eq!(keep_alive(60, 30, Version::V311, false), (60, None));
        assert_eq!(keep_alive(0, 30, v5, true), (0, None));
    }
}
