//! The MQTT topic ↔ NATS subject mapping, and the names derived from it (KV keys, queue groups,
//! client-id subjects).
//!
//! A topic's levels become subject tokens after the prefix `rtw.m`: each level is written as `_`
//! followed by the level with every byte outside `A-Z a-z 0-9 - _` escaped as `~HH` (upper-case
//! hex of the UTF-8 byte). So `sensors/room 1/t.c` is `rtw.m._sensors._room~201._t~2Ec`. The
//! leading `_` keeps empty levels (`a//b` → `rtw.m._a._._b`) non-empty and makes a level that is
//! literally `*` or `>` (`~2A`, `~3E`) a plain token, never a NATS wildcard; dots, spaces,
//! control characters, `$` (`$SYS` → `_~24SYS`) and non-ASCII are escaped, so every legal MQTT
//! topic has exactly one subject and two topics never share one. A filter maps level by level
//! with `+` → `*`; `a/#` becomes two subjects, `…_a` and `…_a.>`, since MQTT's `a/#` also
//! matches `a` and NATS's `>` needs at least one token; `#` alone is `rtw.m.>`. NATS's `*` and
//! `>` match `$` topics where MQTT's first-level wildcards do not: the receiving node's index
//! applies the MQTT rule (MQTT-4.7.2-1), so such a message crosses the wire and stops there.
//! Subjects longer than [`MAX_SUBJECT`] bytes are not carried (NATS's control line is 4 KiB by
//! default): such a topic reaches only the subscribers of the node it was published on, counted.

/// Prefix of the subjects that carry messages.
pub const PREFIX: &str = "rtw.m";
/// Longest subject handed to NATS (its default `max_control_line` is 4096 bytes).
pub const MAX_SUBJECT: usize = 3800;

fn escape_into(out: &mut String, s: &str, esc: char) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push(esc);
            out.push_str(&format!("{b:02X}"));
        }
    }
}

fn level(out: &mut String, l: &str) {
    out.push('_');
    escape_into(out, l, '~');
}

/// The subject a message on `topic` is published on.
pub fn topic(topic: &str) -> String {
    let mut s = String::with_capacity(PREFIX.len() + topic.len() * 2 + 8);
    s.push_str(PREFIX);
    for l in topic.split('/') {
        s.push('.');
        level(&mut s, l);
    }
    s
}

/// The subjects a node subscribes to for MQTT filter `filter` (one, or two for `…/#`).
pub fn filter(filter: &str) -> Vec<String> {
    let mut s = String::from(PREFIX);
    let mut levels: Vec<&str> = filter.split('/').collect();
    let multi = levels.last() == Some(&"#");
    if multi {
        levels.pop();
    }
    for l in &levels {
        s.push('.');
        match *l {
            "+" => s.push('*'),
            l => level(&mut s, l),
        }
    }
    if !multi {
        return vec![s];
    }
    let deeper = format!("{s}.>");
    if levels.is_empty() {
        vec![deeper]
    } else {
        vec![s, deeper]
    }
}

/// The queue group of shared subscription `$share/{group}/{filter}`: one name per group and
/// filter, made of escaped characters only (no dots or spaces).
pub fn queue(group: &str, filter: &str) -> String {
    let mut s = String::from("rtw-");
    escape_into(&mut s, group, '~');
    s.push_str("~~"); // never in escaped text: `~` is always followed by two hex digits
    escape_into(&mut s, filter, '~');
    s
}

/// The key of `topic` in the retained-messages bucket (keys allow `A-Z a-z 0-9 - _ = . /`):
/// levels as `_`-prefixed tokens joined by `.`, other bytes escaped as `=HH`.
pub fn kv_key(topic: &str) -> String {
    let mut s = String::with_capacity(topic.len() * 2 + 4);
    for (i, l) in topic.split('/').enumerate() {
        if i > 0 {
            s.push('.');
        }
        s.push('_');
        escape_into(&mut s, l, '=');
    }
    s
}

/// The topic of retained-bucket key `key` (the inverse of [`kv_key`]).
pub fn kv_topic(key: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(key.len());
    for (i, tok) in key.split('.').enumerate() {
        if i > 0 {
            bytes.push(b'/');
        }
        let t = tok.strip_prefix('_')?.as_bytes();
        let mut j = 0;
        while j < t.len() {
            if t[j] == b'=' {
                let hex = std::str::from_utf8(t.get(j + 1..j + 3)?).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                j += 3;
            } else {
                bytes.push(t[j]);
                j += 1;
            }
        }
    }
    String::from_utf8(bytes).ok()
}

/// The subject a node listens on while it holds client id `id`.
pub fn client(id: &str) -> String {
    let mut s = String::from("rtw.client._");
    escape_into(&mut s, id, '~');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NATS's own matching rules, to check the mapping against MQTT's.
    fn nats_matches(sub: &str, subject: &str) -> bool {
        let s: Vec<&str> = sub.split('.').collect();
        let t: Vec<&str> = subject.split('.').collect();
        for (i, tok) in s.iter().enumerate() {
            match *tok {
                ">" => return t.len() > i,
                "*" if i < t.len() => {}
                x if i < t.len() && t[i] == x => {}
                _ => return false,
            }
        }
        s.len() == t.len()
    }

    fn valid_subject(s: &str) -> bool {
        !s.is_empty()
            && s.split('.').all(|t| !t.is_empty())
            && !s
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b > 0x7e)
    }

    fn mqtt_matches(f: &str, t: &str) -> bool {
        crate::topic::matches(f, t)
    }

    const TOPICS: &[&str] = &[
        "a",
        "a/b",
        "a/b/c",
        "a//b",
        "/",
        "/a",
        "a/",
        "a.b/c",
        "a b/c d",
        "*",
        "a/>",
        "a/*/b",
        "$SYS/x",
        "$share",
        "ünïcødé/日本",
        "a_b/~7E",
        "+x/#y",
        "tab\there",
    ];

    #[test]
    fn every_topic_has_its_own_valid_subject() {
        let mut seen = std::collections::HashSet::new();
        for t in TOPICS {
            let s = topic(t);
            assert!(valid_subject(&s), "{t:?} → {s:?}");
            assert!(seen.insert(s.clone()), "{t:?} shares {s:?}");
            assert!(!s.split('.').any(|x| x == "*" || x == ">"), "{s}");
        }
        assert_eq!(
            topic("sensors/room 1/t.c"),
            "rtw.m._sensors._room~201._t~2Ec"
        );
        assert_eq!(topic("a//b"), "rtw.m._a._._b");
        assert_eq!(topic("$SYS/x"), "rtw.m._~24SYS._x");
    }

    #[test]
    fn filters_match_what_mqtt_matches() {
        let filters = [
            "a",
            "a/b",
            "a/+",
            "+",
            "+/+",
            "a/#",
            "#",
            "+/#",
            "a/+/c",
            "a//b",
            "/",
            "/#",
            "*",
            "a b/#",
            "ünïcødé/+",
            "$SYS/#",
            "a/b/#",
        ];
        for f in filters {
            let subs = filter(f);
            for s in &subs {
                assert!(valid_subject(s), "{f:?} → {s:?}");
            }
            for t in TOPICS {
                let subject = topic(t);
                let hits = subs.iter().filter(|s| nats_matches(s, &subject)).count();
                // A subject never matches both subscriptions of one filter (no duplicate).
                assert!(hits <= 1, "{f} / {t}: {hits}");
                let mqtt = mqtt_matches(f, t);
                if mqtt {
                    assert_eq!(hits, 1, "{f} should carry {t}");
                } else if hits == 1 {
                    // Only NATS wildcards over `$` topics cross without matching; the
                    // receiving index drops them.
                    assert!(t.starts_with('$') && (f.starts_with('+') || f.starts_with('#')));
                }
            }
        }
        assert_eq!(filter("a/#"), vec!["rtw.m._a", "rtw.m._a.>"]);
        assert_eq!(filter("#"), vec!["rtw.m.>"]);
        assert_eq!(filter("+/b"), vec!["rtw.m.*._b"]);
    }

    #[test]
    fn keys_and_names_are_legal() {
        let key_ok = |k: &str| {
            !k.starts_with('.')
                && !k.ends_with('.')
                && !k.contains("..")
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=./".contains(&b))
        };
        let mut seen = std::collections::HashSet::new();
        for t in TOPICS {
            let k = kv_key(t);
            assert!(key_ok(&k), "{t:?} → {k:?}");
            assert_eq!(kv_topic(&k).as_deref(), Some(*t));
            assert!(seen.insert(k), "{t:?}");
        }
        let q = queue("g 1", "a/+/#");
        assert!(
            q.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_~".contains(&b)),
            "{q}"
        );
        assert_ne!(queue("a/b", "c"), queue("a", "b/c"));
        assert!(valid_subject(&client("x.y z/é")));
    }
}
