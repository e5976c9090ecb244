//! Bounds on what a message carries besides its topic and payload, and the checks of a will at
//! CONNECT, as functions the session calls.
//!
//! MQTT 5 properties (user properties above all) are kept with a message wherever it is kept
//! (queues, retained store, the core's log), yet the core counts only topic and payload bytes:
//! a client could make a 1-byte message hold a megabyte. So a PUBLISH, or a will, may carry at
//! most `limits.max_user_properties` user properties and `limits.max_property_bytes` bytes of
//! properties in all (as encoded on the wire). Past them:
//!
//! * PUBLISH QoS 1/2: PUBACK/PUBREC **0x97** (quota exceeded: "an implementation or
//!   administrative imposed limit has been exceeded"; the spec's PUBACK codes have no 0x95, and
//!   0x99 is about the payload format indicator). QoS 0: dropped and counted, as for
//!   `limits.max_publish_rate`. The connection stays up: the packet itself was within
//!   `limits.max_packet_size`, so the spec's DISCONNECT 0x95 does not apply.
//! * A will: CONNACK 0x97.
//!
//! A will is also refused when it would be retained under the reply namespace
//! (`rtw/replies/`), where a direct retained publish loses its retain flag: a will cannot be
//! changed after CONNECT, so it is refused there, with CONNACK **0x90** (topic name invalid:
//! "the Will Topic Name is not malformed, but is not accepted by this Server") for MQTT 5 and
//! 0x05 for 3.1.1 (its refusals are all 0x05 here).

use crate::codec::{ConnectReturnCode, LastWill, Publish, PublishProperties, Version};
use crate::config::Limits;

/// Bytes a string or binary property takes on the wire: identifier, length, data.
fn sized(len: usize) -> usize {
    1 + 2 + len
}

fn var_int_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn user_bytes(props: &[(String, String)]) -> usize {
    props
        .iter()
        .map(|(k, v)| 1 + 2 + k.len() + 2 + v.len())
        .sum()
}

/// The encoded size of a PUBLISH's properties.
pub fn publish_property_bytes(p: &PublishProperties) -> usize {
    p.payload_format_indicator.map_or(0, |_| 2)
        + p.message_expiry_interval.map_or(0, |_| 5)
        + p.topic_alias.map_or(0, |_| 3)
        + p.response_topic.as_ref().map_or(0, |t| sized(t.len()))
        + p.correlation_data.as_ref().map_or(0, |c| sized(c.len()))
        + user_bytes(&p.user_properties)
        + p.subscription_identifiers
            .iter()
            .map(|&id| 1 + var_int_len(id))
            .sum::<usize>()
        + p.content_type.as_ref().map_or(0, |t| sized(t.len()))
}

/// Why properties are over the limits, or `None` when they are within.
fn over(user_count: usize, bytes: usize, l: &Limits) -> Option<String> {
    if user_count > l.max_user_properties {
        return Some(format!(
            "{user_count} user properties, over the maximum of {}",
            l.max_user_properties
        ));
    }
    (bytes > l.max_property_bytes).then(|| {
        format!(
            "{bytes} bytes of properties, over the maximum of {}",
            l.max_property_bytes
        )
    })
}

/// Checks a PUBLISH's properties against `limits.max_user_properties` and
/// `limits.max_property_bytes`: `Some(why)` when it must be refused (0x97).
pub fn publish_over_limits(p: &Publish, l: &Limits) -> Option<String> {
    let props = p.properties.as_ref()?;
    over(
        props.user_properties.len(),
        publish_property_bytes(props),
        l,
    )
}

/// The CONNACK refusing a will, if it must be refused: reason code and why.
pub fn will_refusal(
    w: &LastWill,
    version: Version,
    l: &Limits,
) -> Option<(ConnectReturnCode, String)> {
    if w.retain && w.topic.starts_with(crate::REPLY_PREFIX.as_bytes()) {
        let code = match version {
            Version::V5 => ConnectReturnCode::TopicNameInvalid,
            Version::V311 => ConnectReturnCode::NotAuthorized,
        };
        return Some((
            code,
            "a retained will may not be under the reply namespace rtw/replies/".into(),
        ));
    }
    let props = w.properties.as_ref()?;
    let bytes = props.delay_interval.map_or(0, |_| 5)
        + props.payload_format_indicator.map_or(0, |_| 2)
        + props.message_expiry_interval.map_or(0, |_| 5)
        + props.content_type.as_ref().map_or(0, |t| sized(t.len()))
        + props.response_topic.as_ref().map_or(0, |t| sized(t.len()))
        + props
            .correlation_data
            .as_ref()
            .map_or(0, |c| sized(c.len()))
        + user_bytes(&props.user_properties);
    over(props.user_properties.len(), bytes, l)
        .map(|why| (ConnectReturnCode::QuotaExceeded, format!("will: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn property_bytes_match_the_encoder() {
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(9),
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(b"corr")),
            user_properties: vec![("k".into(), "v".into()), ("key".into(), "value".into())],
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        let p = Publish::new("a", crate::codec::QoS::AtMostOnce, "x", Some(props.clone()));
        let mut wire = bytes::BytesMut::new();
        crate::codec::Packet::Publish(p)
            .write(&mut wire, None)
            .unwrap();
        // fixed header (2) + topic (2 + 1) + property length (1) + properties + payload (1)
        assert_eq!(wire.len(), 2 + 3 + 1 + publish_property_bytes(&props) + 1);
    }

    #[test]
    fn limits_count_user_properties_and_bytes() {
        let l = Limits {
            max_user_properties: 2,
            max_property_bytes: 100,
            ..Limits::default()
        };
        let mk = |n: usize, len: usize| {
            let props = PublishProperties {
                user_properties: (0..n).map(|i| (format!("k{i}"), "v".repeat(len))).collect(),
                ..Default::default()
            };
            Publish::new("a", crate::codec::QoS::AtLeastOnce, "x", Some(props))
        };
        assert!(publish_over_limits(&mk(2, 10), &l).is_none());
        assert!(publish_over_limits(&mk(3, 1), &l).is_some());
        assert!(publish_over_limits(&mk(1, 200), &l).is_some());
    }
}
