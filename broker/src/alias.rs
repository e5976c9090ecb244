//! Topic aliases on the way out (server → client, MQTT 5 §3.3.2.3.4).
//!
//! A client that sets Topic Alias Maximum > 0 in CONNECT lets the server replace a PUBLISH's
//! topic by a number. The session keeps one [`OutAliases`] per connection and passes every
//! PUBLISH it sends through [`OutAliases::apply`] last, after the packet was stored for a resend:
//! the first message on a topic goes out with the topic *and* a new alias, later ones with the
//! alias alone (an empty topic). When every alias is taken, the least recently used one is given
//! to the new topic (sent with its topic again, which redefines the alias for the client).
//! Aliases live as long as the connection (MQTT-3.3.2-7), so a resumed session starts afresh.

use std::collections::HashMap;

use bytes::Bytes;

use crate::codec::{self, Packet, Publish, PublishProperties, Version};

/// Bytes a new alias may add to a PUBLISH: property id, two-byte value, and one more byte of
/// property length (and of remaining length) in the worst case.
const ALIAS_OVERHEAD: usize = 5;

/// The aliases one connection has given its client.
#[derive(Debug, Default)]
pub struct OutAliases {
    max: u16,
    /// Topic → alias.
    by_topic: HashMap<Bytes, u16>,
    /// Alias `i + 1` → (topic, last use).
    slots: Vec<(Bytes, u64)>,
    clock: u64,
}

impl OutAliases {
    /// Aliases 1..=`max` (0: none, the client did not allow any).
    pub fn new(max: u16) -> OutAliases {
        OutAliases {
            max,
            ..OutAliases::default()
        }
    }

    /// For an MQTT 5 client: the smaller of what the client allows and the server's own cap.
    pub fn for_client(version: Version, client_max: Option<u16>, cap: u16) -> OutAliases {
        match version {
            Version::V5 => OutAliases::new(client_max.unwrap_or(0).min(cap)),
            Version::V311 => OutAliases::new(0),
        }
    }

    /// The client allows aliases at all.
    pub fn is_on(&self) -> bool {
        self.max > 0
    }

    /// Rewrites `p` to use an alias where one applies. `max_packet` is the client's Maximum
    /// Packet Size: a new alias is not added to a message it would push over that size.
    pub fn apply(&mut self, p: &mut Publish, version: Version, max_packet: u32) {
        if self.max == 0 || p.topic.is_empty() {
            return;
        }
        self.clock += 1;
        if let Some(&a) = self.by_topic.get(&p.topic) {
            self.slots[a as usize - 1].1 = self.clock;
            set_alias(p, a);
            p.topic = Bytes::new();
            return;
        }
        if max_packet < u32::MAX {
            let size = codec::size(&Packet::Publish(p.clone()), version);
            if size + ALIAS_OVERHEAD > max_packet as usize {
                return;
            }
        }
        let a = if self.slots.len() < self.max as usize {
            self.slots.push((p.topic.clone(), self.clock));
            self.slots.len() as u16
        } else {
            let (i, _) = self
                .slots
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, used))| *used)
                .expect("max > 0, so slots is not empty");
            let old = std::mem::replace(&mut self.slots[i], (p.topic.clone(), self.clock));
            self.by_topic.remove(&old.0);
            i as u16 + 1
        };
        self.by_topic.insert(p.topic.clone(), a);
        set_alias(p, a);
    }
}

fn set_alias(p: &mut Publish, a: u16) {
    p.properties
        .get_or_insert_with(PublishProperties::default)
        .topic_alias = Some(a);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    fn msg(t: &str) -> Publish {
        Publish::new(t, QoS::AtMostOnce, "x", None)
    }

    /// Sends `topics` through `a` and resolves them as a client does; returns (alias, topic on
    /// the wire, resolved topic) per message.
    fn run(a: &mut OutAliases, topics: &[&str]) -> Vec<(Option<u16>, String, String)> {
        let mut client: HashMap<u16, Bytes> = HashMap::new();
        topics
            .iter()
            .map(|t| {
                let mut p = msg(t);
                a.apply(&mut p, Version::V5, u32::MAX);
                let alias = p.properties.as_ref().and_then(|x| x.topic_alias);
                let resolved = match alias {
                    Some(n) if p.topic.is_empty() => client[&n].clone(),
                    Some(n) => {
                        client.insert(n, p.topic.clone());
                        p.topic.clone()
                    }
                    None => p.topic.clone(),
                };
                let wire = String::from_utf8(p.topic.to_vec()).unwrap();
                (alias, wire, String::from_utf8(resolved.to_vec()).unwrap())
            })
            .collect()
    }

    #[test]
    fn first_send_defines_then_alias_alone() {
        let mut a = OutAliases::new(4);
        let got = run(&mut a, &["a", "a", "b", "a", "b"]);
        assert_eq!(
            got,
            vec![
                (Some(1), "a".into(), "a".into()),
                (Some(1), "".into(), "a".into()),
                (Some(2), "b".into(), "b".into()),
                (Some(1), "".into(), "a".into()),
                (Some(2), "".into(), "b".into()),
            ]
        );
    }

    #[test]
    fn stays_within_the_maximum_and_reuses_the_least_recently_used() {
        let mut a = OutAliases::new(2);
        let got = run(&mut a, &["a", "b", "a", "c", "a", "b", "c"]);
        for (alias, _, _) in &got {
            assert!(matches!(alias, Some(1..=2)), "{got:?}");
        }
        let resolved: Vec<&str> = got.iter().map(|g| g.2.as_str()).collect();
        assert_eq!(resolved, ["a", "b", "a", "c", "a", "b", "c"]);
        // "c" took b's alias (b was least recently used), so b had to be sent in full again.
        assert_eq!(got[3], (Some(2), "c".into(), "c".into()));
        assert_eq!(got[4], (Some(1), "".into(), "a".into()));
        assert_eq!(got[5].1, "b");
    }

    #[test]
    fn none_without_the_clients_consent() {
        let mut a = OutAliases::for_client(Version::V5, None, 32);
        assert_eq!(run(&mut a, &["a", "a"])[1], (None, "a".into(), "a".into()));
        let mut a = OutAliases::for_client(Version::V311, Some(10), 32);
        assert_eq!(run(&mut a, &["a", "a"])[1], (None, "a".into(), "a".into()));
        // The server's cap applies too.
        let mut a = OutAliases::for_client(Version::V5, Some(100), 1);
        let got = run(&mut a, &["a", "b"]);
        assert_eq!(got[1].0, Some(1));
    }

    #[test]
    fn no_new_alias_past_the_clients_packet_size() {
        let mut a = OutAliases::new(4);
        let mut p = msg("a/b");
        let size = codec::size(&Packet::Publish(p.clone()), Version::V5) as u32;
        a.apply(&mut p, Version::V5, size + 1);
        assert!(p.properties.is_none() && &p.topic[..] == b"a/b");
        a.apply(&mut p, Version::V5, size + ALIAS_OVERHEAD as u32);
        assert_eq!(p.properties.and_then(|x| x.topic_alias), Some(1));
    }
}
