//! The edge's subscription index: which sessions want a topic.
//!
//! A trie of filter levels (`+` and `#` as their own branches), each node holding the
//! subscriptions whose filter ends there and the shared-subscription groups (`$share/{group}/…`)
//! that end there. Matching a topic walks the levels once; `+` and `#` at the first level do not
//! match topics that start with `$` (MQTT-4.7.2-1), and `a/#` matches `a`. Nodes are removed as
//! soon as nothing is subscribed at or below them, so a filter costs nothing once no session
//! holds it.
//!
//! Each session appears at most once per filter; a message matching several of one session's
//! filters becomes one delivery with the highest QoS and every subscription identifier (done by
//! the caller, [`crate::fanout`], from the session keys). A share group gives each message to one
//! member, round robin among those connected with room, falling back to any member.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::codec::QoS;
use crate::inbox::Inbox;

/// One subscription, as the fan-out needs it.
#[derive(Clone)]
pub struct Sub {
    /// The session's key (unique per session, kept across a persistent session's connections).
    pub session: u64,
    pub inbox: Arc<Inbox>,
    pub qos: QoS,
    pub no_local: bool,
    pub rap: bool,
    pub id: Option<usize>,
    /// The session's client hash (no-local compares the publisher's).
    pub src: u64,
    /// The node's own session (the HTTP bridge): the only one that receives `rtw/replies/…`.
    pub internal: bool,
    /// Messages accepted before this sequence number are not for this subscription (they were
    /// published before it was made).
    pub since: u64,
}

struct Group {
    name: Box<str>,
    members: Vec<Sub>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Node {
    /// Boxed: most nodes are leaves under a wide parent, whose map then holds pointers.
    children: HashMap<Box<str>, Box<Node>>,
    plus: Option<Box<Node>>,
    /// Filters ending exactly here.
    exact: Vec<Sub>,
    /// `#` filters and share groups, boxed apart: most nodes are a client's own topic, with
    /// one exact subscription and none of these (every idle client pays for its node).
    rare: Option<Box<Rare>>,
}

#[derive(Default)]
struct Rare {
    /// Filters ending in `#` below this node's level (`a/#` lives at `a`).
    multi: Vec<Sub>,
    multi_groups: Vec<Group>,
    exact_groups: Vec<Group>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.multi.is_empty() && self.multi_groups.is_empty() && self.exact_groups.is_empty()
    }
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_empty()
            && self.rare.as_ref().is_none_or(|r| r.is_empty())
    }

    fn multi(&self) -> &[Sub] {
        self.rare.as_ref().map_or(&[], |r| &r.multi)
    }

    fn groups(&self, multi: bool) -> &[Group] {
        match &self.rare {
            Some(r) if multi => &r.multi_groups,
            Some(r) => &r.exact_groups,
            None => &[],
        }
    }

    /// Drops the rare part once it holds nothing.
    fn tidy(&mut self) {
        if self.rare.as_ref().is_some_and(|r| r.is_empty()) {
            self.rare = None;
        }
    }
}

/// The index. Readers (the fan-out, per message) share it; subscribe and unsubscribe write.
#[derive(Default)]
pub struct Index {
    root: std::sync::RwLock<Node>,
    filters: AtomicUsize,
}

/// Where a filter's subscriptions live in its last node.
fn slot<'a>(node: &'a mut Node, multi: bool, group: Option<&str>) -> SlotMut<'a> {
    if !multi && group.is_none() {
        return SlotMut::Plain(&mut node.exact);
    }
    let rare = node.rare.get_or_insert_with(Default::default);
    match group {
        None => SlotMut::Plain(&mut rare.multi),
        Some(g) if multi => SlotMut::Group(&mut rare.multi_groups, g.into()),
        Some(g) => SlotMut::Group(&mut rare.exact_groups, g.into()),
    }
}

enum SlotMut<'a> {
    Plain(&'a mut Vec<Sub>),
    Group(&'a mut Vec<Group>, Box<str>),
}

impl Index {
    /// Adds (or replaces) `sub` for `filter` (an inner filter: `$share/g/` already split off
    /// into `group`). Returns true when the session did not hold this filter before.
    pub fn insert(&self, filter: &str, group: Option<&str>, sub: Sub) -> bool {
        let mut root = self.root.write().unwrap_or_else(|e| e.into_inner());
        let (levels, multi) = split(filter);
        let mut node = &mut *root;
        for l in levels {
            node = match l {
                "+" => node.plus.get_or_insert_with(Default::default),
                l => node.children.entry(l.into()).or_default(),
            };
        }
        let added = match slot(node, multi, group) {
            SlotMut::Plain(v) => upsert(v, sub),
            SlotMut::Group(gs, name) => {
                let g = match gs.iter().position(|g| g.name == name) {
                    Some(i) => &mut gs[i],
                    None => {
                        gs.push(Group {
                            name,
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        gs.last_mut().expect("just pushed")
                    }
                };
                upsert(&mut g.members, sub)
            }
        };
        if added {
            self.filters.fetch_add(1, Ordering::Relaxed);
        }
        added
    }

    /// Removes session `session`'s subscription to `filter`; true if it had one.
    pub fn remove(&self, filter: &str, group: Option<&str>, session: u64) -> bool {
        let mut root = self.root.write().unwrap_or_else(|e| e.into_inner());
        let (levels, multi) = split(filter);
        let removed = remove_at(&mut root, &levels, multi, group, session);
        if removed {
            self.filters.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Subscriptions held (one per session and filter).
    pub fn count(&self) -> usize {
        self.filters.load(Ordering::Relaxed)
    }

    /// Calls `f` with the member of share group `group` on exactly `filter` chosen for one
    /// message (the cluster picked this node for the group's copy; see [`crate::cluster`]).
    pub fn for_group(&self, filter: &str, group: &str, qos: QoS, mut f: impl FnMut(&Sub, bool)) {
        let root = self.root.read().unwrap_or_else(|e| e.into_inner());
        let (levels, multi) = split(filter);
        let mut node = &*root;
        for l in levels {
            let next = match l {
                "+" => node.plus.as_deref(),
                l => node.children.get(l).map(|b| &**b),
            };
            match next {
                Some(n) => node = n,
                None => return,
            }
        }
        if let Some(g) = node.groups(multi).iter().find(|g| &*g.name == group) {
            pick(g, qos, &mut f);
        }
    }

    /// Calls `f` with every subscription matching `topic` and whether it is a share group's
    /// (then the member chosen for this message). `qos` is the message's QoS, used to prefer a
    /// group member with room.
    pub fn for_each_match(&self, topic: &str, qos: QoS, mut f: impl FnMut(&Sub, bool)) {
        let root = self.root.read().unwrap_or_else(|e| e.into_inner());
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        walk(&root, &levels, 0, dollar, qos, &mut f);
    }
}

/// A filter's levels, without a trailing `#` (reported as `multi`).
fn split(filter: &str) -> (Vec<&str>, bool) {
    let mut levels: Vec<&str> = filter.split('/').collect();
    let multi = levels.last() == Some(&"#");
    if multi {
        levels.pop();
    }
    (levels, multi)
}

fn upsert(v: &mut Vec<Sub>, sub: Sub) -> bool {
    match v.iter_mut().find(|s| s.session == sub.session) {
        Some(s) => {
            let since = s.since;
            *s = sub;
            s.since = since;
            false
        }
        None => {
            // Most filters have one subscriber: grow exactly, not by four at first.
            let n = v.len();
            if n == v.capacity() {
                v.reserve_exact(n.max(1));
            }
            v.push(sub);
            true
        }
    }
}

fn remove_at(node: &mut Node, levels: &[&str], multi: bool, group: Option<&str>, key: u64) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        let removed = match slot(node, multi, group) {
            SlotMut::Plain(v) => take(v, key),
            SlotMut::Group(gs, name) => match gs.iter().position(|g| g.name == name) {
                Some(i) => {
                    let r = take(&mut gs[i].members, key);
                    if gs[i].members.is_empty() {
                        gs.swap_remove(i);
                    }
                    r
                }
                None => false,
            },
        };
        node.tidy();
        return removed;
    };
    let removed;
    if *first == "+" {
        let Some(child) = node.plus.as_mut() else {
            return false;
        };
        removed = remove_at(child, rest, multi, group, key);
        if child.is_empty() {
            node.plus = None;
        }
    } else {
        let Some(child) = node.children.get_mut(*first) else {
            return false;
        };
        removed = remove_at(child, rest, multi, group, key);
        if child.is_empty() {
            node.children.remove(*first);
            if node.children.is_empty() {
                node.children = HashMap::new();
            }
        }
    }
    removed
}

fn take(v: &mut Vec<Sub>, key: u64) -> bool {
    match v.iter().position(|s| s.session == key) {
        Some(i) => {
            v.swap_remove(i);
            if v.is_empty() {
                *v = Vec::new();
            }
            true
        }
        None => false,
    }
}

fn walk(
    node: &Node,
    levels: &[&str],
    depth: usize,
    dollar: bool,
    qos: QoS,
    f: &mut impl FnMut(&Sub, bool),
) {
    let wild_ok = !(dollar && depth == 0);
    if wild_ok {
        node.multi().iter().for_each(|s| f(s, false));
        node.groups(true).iter().for_each(|g| pick(g, qos, f));
    }
    let Some((first, rest)) = levels.split_first() else {
        node.exact.iter().for_each(|s| f(s, false));
        node.groups(false).iter().for_each(|g| pick(g, qos, f));
        return;
    };
    if let Some(child) = node.children.get(*first) {
        walk(child, rest, depth + 1, dollar, qos, f);
    }
    if wild_ok {
        if let Some(plus) = &node.plus {
            walk(plus, rest, depth + 1, dollar, qos, f);
        }
    }
}

/// One member of a share group for this message: round robin over members that are connected
/// and have room, else over all.
fn pick(g: &Group, qos: QoS, f: &mut impl FnMut(&Sub, bool)) {
    let n = g.members.len();
    if n == 0 {
        return;
    }
    let start = g.next.fetch_add(1, Ordering::Relaxed);
    for i in 0..n {
        let m = &g.members[(start + i) % n];
        if m.inbox.is_online() && m.inbox.has_room(qos) {
            if i > 0 {
                g.next.fetch_add(i, Ordering::Relaxed);
            }
            return f(m, true);
        }
    }
    f(&g.members[start % n], true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(session: u64) -> Sub {
        Sub {
            session,
            inbox: Inbox::new("t", 10, 1 << 20),
            qos: QoS::AtLeastOnce,
            no_local: false,
            rap: false,
            id: None,
            src: session,
            internal: false,
            since: 0,
        }
    }

    fn matches(ix: &Index, topic: &str) -> Vec<u64> {
        let mut v = Vec::new();
        ix.for_each_match(topic, QoS::AtMostOnce, |s, _| v.push(s.session));
        v.sort();
        v
    }

    #[test]
    fn wildcards_match_as_the_spec_says() {
        let ix = Index::default();
        ix.insert("a/b", None, sub(1));
        ix.insert("a/+", None, sub(2));
        ix.insert("a/#", None, sub(3));
        ix.insert("#", None, sub(4));
        ix.insert("+/+/c", None, sub(5));
        ix.insert("a//c", None, sub(6));
        assert_eq!(matches(&ix, "a/b"), vec![1, 2, 3, 4]);
        assert_eq!(matches(&ix, "a"), vec![3, 4]);
        assert_eq!(matches(&ix, "a/x/c"), vec![3, 4, 5]);
        assert_eq!(matches(&ix, "a//c"), vec![3, 4, 5, 6]);
        assert_eq!(matches(&ix, "$SYS/a"), Vec::<u64>::new());
        ix.insert("$SYS/#", None, sub(7));
        assert_eq!(matches(&ix, "$SYS/a"), vec![7]);
    }

    #[test]
    fn removal_gives_memory_back() {
        let ix = Index::default();
        for i in 0..100 {
            ix.insert(&format!("x/{i}/y"), None, sub(i));
        }
        assert_eq!(ix.count(), 100);
        for i in 0..100 {
            assert!(ix.remove(&format!("x/{i}/y"), None, i));
        }
        assert!(!ix.remove("x/1/y", None, 1));
        assert_eq!(ix.count(), 0);
        assert!(ix.root.read().unwrap().is_empty());
    }

    #[test]
    fn a_share_group_gives_each_message_to_one_member() {
        let ix = Index::default();
        ix.insert("t/#", Some("g"), sub(1));
        ix.insert("t/#", Some("g"), sub(2));
        ix.insert("t/#", Some("h"), sub(3));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.extend(matches(&ix, "t/1"));
        }
        assert_eq!(seen.iter().filter(|&&s| s == 3).count(), 4);
        assert_eq!(seen.iter().filter(|&&s| s == 1).count(), 2);
        assert_eq!(seen.iter().filter(|&&s| s == 2).count(), 2);
        assert!(ix.remove("t/#", Some("g"), 1));
        assert!(ix.remove("t/#", Some("g"), 2));
        assert_eq!(matches(&ix, "t/1"), vec![3]);
    }
}
