//! Mercure updates ↔ MQTT messages: one message stream for both.
//!
//! A topic IRI `t` maps onto the MQTT topic `mercure/` + `escape(t)` for a public update and
//! `mercure-private/` + `escape(t)` for a private one, where `escape` percent-encodes exactly
//! four characters MQTT topic names cannot carry as themselves: `%` → `%25`, `+` → `%2B`,
//! `#` → `%23`, U+0000 → `%00`. Everything else is kept, so `/` separates MQTT levels (an IRI's
//! `//` gives an empty level, which MQTT allows), and `?`, `$`, spaces stay as they are:
//! `https://example.com/books/1?x#y` ↔ `mercure/https://example.com/books/1?x%23y`. Going back,
//! only those four escapes are decoded (any other `%xx` is part of the IRI).
//!
//! The update's other fields travel as MQTT 5 user properties: `mercure-id`, `mercure-type`,
//! `mercure-retry`, and one `mercure-topic` per alternate topic IRI. `data` is the payload.
//! An MQTT publish on `mercure/…` or `mercure-private/…` without them is an update with the
//! topic decoded from its name, the payload as `data` (UTF-8, invalid bytes replaced) and the
//! bridge's event id as its id.

use broker::codec::{Publish, PublishProperties, QoS};
use bytes::Bytes;

use crate::hub::Event;

/// MQTT topic prefix of public updates.
pub const PUBLIC: &str = "mercure/";
/// MQTT topic prefix of private updates.
pub const PRIVATE: &str = "mercure-private/";

/// The MQTT filters that carry every Mercure update.
pub fn filters() -> Vec<String> {
    vec![format!("{PUBLIC}#"), format!("{PRIVATE}#")]
}

/// A topic IRI as (part of) an MQTT topic name.
pub fn escape(iri: &str) -> String {
    let mut out = String::with_capacity(iri.len());
    for c in iri.chars() {
        match c {
            '%' => out.push_str("%25"),
            '+' => out.push_str("%2B"),
            '#' => out.push_str("%23"),
            '\0' => out.push_str("%00"),
            c => out.push(c),
        }
    }
    out
}

/// The inverse of [`escape`].
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3).map(str::to_ascii_uppercase);
        let c = match code.as_deref() {
            Some("25") => Some('%'),
            Some("2B") => Some('+'),
            Some("23") => Some('#'),
            Some("00") => Some('\0'),
            _ => None,
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[i + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The MQTT topic an update on `iri` is published to.
pub fn mqtt_topic(iri: &str, private: bool) -> String {
    let prefix = if private { PRIVATE } else { PUBLIC };
    format!("{prefix}{}", escape(iri))
}

/// An update as the publisher gave it.
#[derive(Debug, Clone, Default)]
pub struct Update {
    /// The canonical topic first, then the alternates.
    pub topics: Vec<String>,
    pub data: String,
    pub private: bool,
    pub id: String,
    pub event_type: Option<String>,
    pub retry: Option<u64>,
}

impl Update {
    /// The MQTT message carrying this update (QoS 1: the hub answers once the broker has it).
    pub fn to_publish(&self) -> Publish {
        let mut props = PublishProperties::default();
        props
            .user_properties
            .push(("mercure-id".into(), self.id.clone()));
        if let Some(t) = &self.event_type {
            props
                .user_properties
                .push(("mercure-type".into(), t.clone()));
        }
        if let Some(r) = self.retry {
            props
                .user_properties
                .push(("mercure-retry".into(), r.to_string()));
        }
        for alt in self.topics.iter().skip(1) {
            props
                .user_properties
                .push(("mercure-topic".into(), alt.clone()));
        }
        Publish::new(
            mqtt_topic(&self.topics[0], self.private).as_str(),
            QoS::AtLeastOnce,
            Bytes::from(self.data.clone().into_bytes()),
            Some(props),
        )
    }
}

/// An update as a Mercure subscriber receives it, read from a hub event.
#[derive(Debug, Clone)]
pub struct Received<'a> {
    pub topics: Vec<String>,
    pub private: bool,
    /// The publisher's id, if it gave one (else the caller uses the bridge's event id).
    pub id: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub retry: Option<u64>,
}

/// Can `s` go into an SSE `id:` or `event:` field?
pub fn field_safe(s: &str) -> bool {
    !s.is_empty() && !s.contains(['\r', '\n', '\0'])
}

/// Reads a hub event as a Mercure update; `None` when it is not on a Mercure topic.
pub fn received(e: &Event) -> Option<Received<'_>> {
    let (private, rest) = match e.topic.strip_prefix(PRIVATE) {
        Some(r) => (true, r),
        None => (false, e.topic.strip_prefix(PUBLIC)?),
    };
    let mut r = Received {
        topics: vec![unescape(rest)],
        private,
        id: None,
        event_type: None,
        retry: None,
    };
    for (k, v) in &e.user_properties {
        match k.as_str() {
            "mercure-id" if field_safe(v) => r.id = Some(v),
            "mercure-type" if field_safe(v) => r.event_type = Some(v),
            "mercure-retry" => r.retry = v.parse().ok(),
            "mercure-topic" => r.topics.push(v.clone()),
            _ => {}
        }
    }
    Some(r)
}

/// The id a subscriber sees for event `e`: the publisher's, or the bridge's event id.
pub fn wire_id(hub: &crate::hub::Hub, e: &Event) -> String {
    e.user_properties
        .iter()
        .find(|(k, v)| k == "mercure-id" && field_safe(v))
        .map_or_else(|| hub.event_id(e.id), |(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for iri in [
            "https://example.com/books/1",
            "https://example.com/a?b=c#frag",
            "urn:x:+/#/%41/%25",
            "",
            "//",
            "a\0b",
        ] {
            let t = mqtt_topic(iri, false);
            assert!(!t.contains(['+', '#', '\0']), "{t}");
            assert_eq!(unescape(t.strip_prefix(PUBLIC).unwrap()), iri);
        }
        assert_eq!(
            mqtt_topic("https://example.com/a?b#c", true),
            "mercure-private/https://example.com/a?b%23c"
        );
        assert_eq!(unescape("a%20b%2b%zz%"), "a%20b+%zz%");
    }
}
