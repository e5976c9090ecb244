//! A small fixed-size latency histogram (RPC round trips): 80 log-scaled buckets from 50 µs to
//! about a minute, four per doubling, so a percentile read from it is within ~19% of the truth.
//!
//! Recording is one atomic add. Readers take [`Histogram::counts`] now and then; the dashboard's
//! sampler subtracts the previous counts to get the last second's distribution and reads its
//! p50/p99 with [`percentile`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

pub const BUCKETS: usize = 80;
/// Upper bound of the first bucket, in microseconds.
const FIRST_US: f64 = 50.0;

pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The upper bound of bucket `i`, in milliseconds.
pub fn bound_ms(i: usize) -> f64 {
    FIRST_US * 2f64.powf(i as f64 / 4.0) / 1000.0
}

fn bucket(d: Duration) -> usize {
    let us = d.as_secs_f64() * 1e6;
    if us <= FIRST_US {
        return 0;
    }
    ((us / FIRST_US).log2() * 4.0)
        .ceil()
        .min((BUCKETS - 1) as f64) as usize
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        self.counts[bucket(d)].fetch_add(1, Relaxed);
    }

    pub fn counts(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.counts[i].load(Relaxed))
    }
}

/// The `q` quantile (0–1) of a distribution given as bucket counts, in milliseconds (the upper
/// bound of its bucket); `None` when it is empty.
pub fn percentile(counts: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(bound_ms(i));
        }
    }
    Some(bound_ms(BUCKETS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_fall_in_the_right_bucket() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.record(Duration::from_millis(2));
        }
        h.record(Duration::from_millis(100));
        h.record(Duration::from_secs(3600));
        let c = h.counts();
        let p50 = percentile(&c, 0.5).unwrap();
        assert!((2.0..2.0 * 1.19).contains(&p50), "{p50}");
        let p99 = percentile(&c, 0.99).unwrap();
        assert!((100.0..100.0 * 1.19).contains(&p99), "{p99}");
        assert_eq!(percentile(&c, 1.0), Some(bound_ms(BUCKETS - 1)));
        assert_eq!(percentile(&[0; BUCKETS], 0.5), None);
    }
}
