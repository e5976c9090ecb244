//! Drops the second copy of a message that reached this node through two of its NATS
//! subscriptions (overlapping filters such as `a/#` and `a/+`: NATS delivers once per matching
//! subscription). A message is known by its origin node's boot id and that node's sequence
//! number.
//!
//! Per origin, one bit per sequence number in a sliding window of the last `span` numbers (a
//! ring of bits, advanced as higher numbers arrive): checking a message is a few bit operations,
//! with no hashing and no allocation, and the memory is `span / 8` bytes per origin whatever the
//! traffic. A copy more than `span` numbers behind the highest seen cannot be told apart and is
//! let through (the link's subscription buffers hold far fewer messages than the window spans).
//! Origins are boot ids, so a restarted node is a new origin; the least recently seen is
//! forgotten past [`Dedupe::new`]'s `origins`.

use std::collections::HashMap;

pub struct Dedupe {
    windows: HashMap<u64, Window>,
    /// Window size in sequence numbers: a multiple of 64.
    span: u64,
    origins: usize,
    /// Bumped per message; a window's `used` says when it last saw one.
    clock: u64,
}

struct Window {
    /// One past the highest sequence number seen.
    top: u64,
    /// Bit `s % span` is set when `s` (in `top - span .. top`) was seen.
    bits: Box<[u64]>,
    used: u64,
}

impl Dedupe {
    /// Remembers the last `span` sequence numbers (rounded up to a multiple of 64) of each of at
    /// most `origins` origins.
    pub fn new(span: usize, origins: usize) -> Dedupe {
        Dedupe {
            windows: HashMap::new(),
            span: (span.max(1) as u64).div_ceil(64) * 64,
            origins: origins.max(1),
            clock: 0,
        }
    }

    /// Is this the first time message (`origin`, `seq`) is seen?
    pub fn first(&mut self, origin: u64, seq: u64) -> bool {
        self.clock += 1;
        if !self.windows.contains_key(&origin) && self.windows.len() >= self.origins {
            self.forget_oldest();
        }
        let span = self.span;
        let w = self.windows.entry(origin).or_insert_with(|| Window {
            top: 0,
            bits: vec![0; (span / 64) as usize].into_boxed_slice(),
            used: 0,
        });
        w.used = self.clock;
        if seq >= w.top {
            w.advance(seq + 1, span);
        } else if w.top - seq > span {
            // Older than the window: cannot tell, let it through.
            return true;
        }
        let (word, bit) = ((seq % span / 64) as usize, 1u64 << (seq % 64));
        let seen = w.bits[word] & bit != 0;
        w.bits[word] |= bit;
        !seen
    }

    fn forget_oldest(&mut self) {
        if let Some(&oldest) = self
            .windows
            .iter()
            .min_by_key(|(_, w)| w.used)
            .map(|(k, _)| k)
        {
            self.windows.remove(&oldest);
        }
    }
}

impl Window {
    /// Moves the window's end to `top`, clearing the bits of the numbers it passes over (a
    /// word at a time: `span` is a multiple of 64, so words never straddle the ring's end).
    fn advance(&mut self, top: u64, span: u64) {
        if top - self.top >= span {
            self.bits.fill(0);
        } else {
            let mut s = self.top;
            while s < top {
                let off = s % 64;
                let n = (64 - off).min(top - s);
                let mask = if n == 64 {
                    u64::MAX
                } else {
                    ((1u64 << n) - 1) << off
                };
                self.bits[(s % span / 64) as usize] &= !mask;
                s += n;
            }
        }
        self.top = top;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_copies_are_dropped_within_the_window() {
        let mut d = Dedupe::new(128, 4);
        assert!(d.first(1, 1));
        assert!(d.first(2, 1));
        assert!(!d.first(1, 1));
        assert!(d.first(1, 2));
        assert!(!d.first(1, 2));
        // Out of order within the window: each once.
        assert!(d.first(1, 100));
        assert!(d.first(1, 50));
        assert!(!d.first(1, 50));
        assert!(!d.first(1, 100));
        // The window slides: 1 and 2 fall out of it and are let through again (unknowable),
        // while a recent number is still known.
        assert!(d.first(1, 200));
        assert!(d.first(1, 1));
        assert!(!d.first(1, 100));
        assert!(d.first(1, 150));
        assert!(!d.first(1, 150));
    }

    #[test]
    fn sliding_clears_what_it_passes_over() {
        let mut d = Dedupe::new(64, 1);
        for s in 0..64 {
            assert!(d.first(7, s));
        }
        // 64..128 reuse the same bits: each is new once.
        for s in 64..128 {
            assert!(d.first(7, s), "{s}");
            assert!(!d.first(7, s), "{s}");
        }
        // A jump past the whole window clears it.
        assert!(d.first(7, 10_000));
        assert!(d.first(7, 9_990));
        assert!(!d.first(7, 9_990));
    }

    #[test]
    fn the_least_recently_seen_origin_is_forgotten() {
        let mut d = Dedupe::new(64, 2);
        assert!(d.first(1, 5));
        assert!(d.first(2, 5));
        assert!(!d.first(1, 5));
        // A third origin evicts origin 2 (seen least recently).
        assert!(d.first(3, 5));
        assert_eq!(d.windows.len(), 2);
        assert!(!d.first(1, 5));
        assert!(d.first(2, 5));
    }

    #[test]
    fn two_interleaved_copies_of_a_sparse_stream_pass_once_each() {
        // Two subscriptions' copies of the same messages, each copy in order, the second
        // lagging by up to 300 messages; sequence numbers with gaps (the origin's other traffic).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut seqs = Vec::new();
        let mut s = 0;
        for _ in 0..50_000 {
            s += 1 + rnd(40);
            seqs.push(s);
        }
        let mut d = Dedupe::new(1 << 16, 4);
        let (mut a, mut b, mut passed) = (0, 0, Vec::new());
        while b < seqs.len() {
            let take_a = a < seqs.len() && (a - b < 300 && rnd(2) == 0 || a == b);
            let i = if take_a { a } else { b };
            if d.first(9, seqs[i]) {
                passed.push(seqs[i]);
            }
            if take_a {
                a += 1;
            } else {
                b += 1;
            }
        }
        assert_eq!(passed, seqs);
    }
}
