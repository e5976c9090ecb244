//! Drops the second copy of a message that reached this node through two of its NATS
//! subscriptions (overlapping filters such as `a/#` and `a/+`: NATS delivers once per matching
//! subscription). A message is known by its origin node's boot id and that node's sequence
//! number; the last [`Dedupe::new`]`(cap)` ids are remembered, so a copy that lags more than
//! `cap` messages behind the first would be delivered twice (the link's subscription buffers are
//! smaller than `cap`).

use std::collections::{HashSet, VecDeque};

pub struct Dedupe {
    seen: HashSet<(u64, u64)>,
    order: VecDeque<(u64, u64)>,
    cap: usize,
}

impl Dedupe {
    pub fn new(cap: usize) -> Dedupe {
        Dedupe {
            seen: HashSet::with_capacity(cap.min(4096)),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Is this the first time message (`origin`, `seq`) is seen?
    pub fn first(&mut self, origin: u64, seq: u64) -> bool {
        if !self.seen.insert((origin, seq)) {
            return false;
        }
        self.order.push_back((origin, seq));
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_copies_are_dropped_within_the_window() {
        let mut d = Dedupe::new(3);
        assert!(d.first(1, 1));
        assert!(d.first(2, 1));
        assert!(!d.first(1, 1));
        assert!(d.first(1, 2));
        assert!(d.first(1, 3));
        // (1, 1) left the window.
        assert!(d.first(1, 1));
        assert_eq!(d.seen.len(), 3);
    }
}
