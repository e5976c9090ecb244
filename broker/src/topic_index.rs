//! The retained store's topics as a tree of levels (`a/b/c` is `a` → `b` → `c`), for browsing
//! (`GET /api/topics?prefix=&depth=`, the dashboard's topic tree).
//!
//! Kept beside the store's in-memory map and changed with it ([`crate::retained`] calls
//! [`TopicIndex::insert`] for a topic that gained a retained message and [`TopicIndex::remove`]
//! for one that lost it), so a listing walks only the levels it shows: finding a prefix costs
//! one map lookup per level and each node knows how many retained topics lie at or under it.

use std::collections::BTreeMap;

/// One topic level.
#[derive(Debug, Default)]
pub struct Node {
    pub children: BTreeMap<String, Node>,
    /// Retained topics at or under this level.
    pub count: usize,
    /// This very topic has a retained message.
    pub value: bool,
}

/// Every retained topic, by level.
#[derive(Debug, Default)]
pub struct TopicIndex {
    root: Node,
}

impl TopicIndex {
    /// `topic` gained a retained message (it had none).
    pub fn insert(&mut self, topic: &str) {
        let mut n = &mut self.root;
        n.count += 1;
        for level in topic.split('/') {
            n = n.children.entry(level.to_string()).or_default();
            n.count += 1;
        }
        n.value = true;
    }

    /// `topic` lost its retained message (it had one); empty levels go.
    pub fn remove(&mut self, topic: &str) {
        fn walk<'a>(n: &mut Node, mut levels: impl Iterator<Item = &'a str>) -> bool {
            let found = match levels.next() {
                None => std::mem::take(&mut n.value),
                Some(l) => match n.children.get_mut(l) {
                    Some(c) => {
                        let found = walk(c, levels);
                        if c.count == 0 {
                            n.children.remove(l);
                        }
                        found
                    }
                    None => false,
                },
            };
            if found {
                n.count -= 1;
            }
            found
        }
        walk(&mut self.root, topic.split('/'));
    }

    /// The node of topic `prefix` (whole levels: a topic or the start of one); `None`: the root.
    pub fn node(&self, prefix: Option<&str>) -> Option<&Node> {
        match prefix {
            None => Some(&self.root),
            Some(p) => p.split('/').try_fold(&self.root, |n, l| n.children.get(l)),
        }
    }

    /// Retained topics in all (the store keeps its own count; the tests check this one).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.root.count
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.root.count == 0
    }

    /// The children of `prefix` down to `depth` levels (at least 1), at most `budget` entries in
    /// all, in level order; `value` describes a topic that holds a retained message. `None` when
    /// no retained topic lies under `prefix`.
    pub fn list<V>(
        &self,
        prefix: Option<&str>,
        depth: usize,
        budget: usize,
        value: &mut dyn FnMut(&str) -> Option<V>,
    ) -> Option<Listing<V>> {
        let node = self.node(prefix)?;
        let mut left = budget;
        let (entries, more) = entries(node, prefix, depth.max(1), &mut left, value);
        Some(Listing {
            prefix: prefix.map(str::to_string),
            count: node.count,
            value: match prefix {
                Some(p) if node.value => value(p),
                _ => None,
            },
            entries,
            more,
        })
    }
}

/// What [`TopicIndex::list`] finds under a prefix.
#[derive(Debug, serde::Serialize)]
pub struct Listing<V> {
    /// `None`: the root.
    pub prefix: Option<String>,
    /// Retained topics at or under the prefix.
    pub count: usize,
    /// The prefix's own retained message, if it has one.
    pub value: Option<V>,
    pub entries: Vec<Entry<V>>,
    /// Children left out (over the budget).
    pub more: usize,
}

/// One level under a prefix.
#[derive(Debug, serde::Serialize)]
pub struct Entry<V> {
    /// This level.
    pub name: String,
    /// The whole topic down to this level.
    pub topic: String,
    /// Retained topics at or under this level.
    pub count: usize,
    /// Levels directly under this one.
    pub children: usize,
    /// The retained message of this very topic.
    pub value: Option<V>,
    /// Levels under this one, when the listing went that deep.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<Entry<V>>,
    /// Children left out (over the budget, or below the depth asked for).
    #[serde(skip_serializing_if = "is_zero")]
    pub more: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn entries<V>(
    node: &Node,
    prefix: Option<&str>,
    depth: usize,
    left: &mut usize,
    value: &mut dyn FnMut(&str) -> Option<V>,
) -> (Vec<Entry<V>>, usize) {
    let mut out = Vec::new();
    for (name, child) in &node.children {
        if *left == 0 {
            break;
        }
        *left -= 1;
        let topic = match prefix {
            None => name.clone(),
            Some(p) => format!("{p}/{name}"),
        };
        let v = if child.value { value(&topic) } else { None };
        let (sub, more) = if depth > 1 {
            entries(child, Some(&topic), depth - 1, left, value)
        } else {
            (Vec::new(), child.children.len())
        };
        out.push(Entry {
            name: name.clone(),
            count: child.count,
            children: child.children.len(),
            value: v,
            entries: sub,
            more,
            topic,
        });
    }
    let more = node.children.len() - out.len();
    (out, more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_inserts_and_removes() {
        let mut t = TopicIndex::default();
        for topic in ["a/b", "a/b/c", "a/d", "x", "/lead", "a//e"] {
            t.insert(topic);
        }
        assert_eq!(t.len(), 6);
        let a = t.node(Some("a")).unwrap();
        assert_eq!(a.count, 4);
        assert!(!a.value);
        assert_eq!(
            a.children.keys().collect::<Vec<_>>(),
            ["", "b", "d"].iter().collect::<Vec<_>>()
        );
        let b = t.node(Some("a/b")).unwrap();
        assert!(b.value);
        assert_eq!(b.count, 2);
        assert_eq!(t.node(None).unwrap().children[""].count, 1);
        t.remove("a/b/c");
        assert!(t.node(Some("a/b/c")).is_none());
        assert_eq!(t.node(Some("a")).unwrap().count, 3);
        t.remove("a/b");
        t.remove("a/b"); // not there any more: nothing changes
        assert!(t.node(Some("a/b")).is_none());
        assert_eq!(t.node(Some("a")).unwrap().count, 2);
        for topic in ["a/d", "x", "/lead", "a//e"] {
            t.remove(topic);
        }
        assert!(t.is_empty());
        assert!(t.node(None).unwrap().children.is_empty());
    }

    #[test]
    fn listing_is_bounded_and_names_whole_topics() {
        let mut t = TopicIndex::default();
        for topic in ["a/b", "a/b/c", "a/d", "/lead"] {
            t.insert(topic);
        }
        let mut v = |topic: &str| Some(topic.len());
        let l = t.list(None, 2, 100, &mut v).unwrap();
        assert_eq!(l.count, 4);
        assert_eq!(l.entries[0].topic, "");
        assert_eq!(l.entries[0].entries[0].topic, "/lead");
        assert_eq!(l.entries[0].entries[0].value, Some(5));
        let a = &l.entries[1];
        assert_eq!((a.topic.as_str(), a.count, a.children), ("a", 3, 2));
        assert_eq!(a.entries[0].topic, "a/b");
        assert_eq!(a.entries[0].more, 1); // a/b/c is below the depth asked for
        let l = t.list(Some("a"), 1, 1, &mut v).unwrap();
        assert_eq!((l.entries.len(), l.more), (1, 1));
        assert!(t.list(Some("nope"), 1, 10, &mut v).is_none());
    }
}
