//! A log-linear latency histogram (the HDR idea, 2 significant digits).
//!
//! Hand-rolled rather than the `hdrhistogram` crate so the bench adds no
//! dependency to the shared lock file; it needs only record, merge and
//! percentile. Values are nanoseconds. Each power of two is split into
//! `SUB` linear buckets, so a reported percentile is at most 1/SUB (0.8 %)
//! above the true value and never below it (we report a bucket's upper
//! edge, as HDR's `highest_equivalent` does). The maximum is kept exactly.

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Values below SUB get one bucket each; every power of two above that
/// (2^7 .. 2^63) gets SUB buckets.
const BUCKETS: usize = (SUB + (64 - SUB_BITS as u64) * SUB) as usize;

#[derive(Clone)]
pub struct Hist {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    max: u64,
    min: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist { counts: vec![0; BUCKETS], total: 0, sum: 0, max: 0, min: u64::MAX }
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = e - SUB_BITS;
    let mantissa = (v >> shift) - SUB; // 0..SUB
    (SUB + (shift as u64) * SUB + mantissa) as usize
}

/// The largest value that lands in bucket `i`.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = (i - SUB) / SUB;
    let mantissa = (i - SUB) % SUB;
    let low = (SUB + mantissa) << shift;
    low + ((1u64 << shift) - 1)
}

impl Hist {
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.sum += v as u128;
        self.max = self.max.max(v);
        self.min = self.min.min(v);
    }

    /// `n` values of `v` at once (a histogram another process sent as bucket edges).
    pub fn record_n(&mut self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.counts[index(v)] += n;
        self.total += n;
        self.sum += v as u128 * n as u128;
        self.max = self.max.max(v);
        self.min = self.min.min(v);
    }

    /// Lowers the maximum to `m` when the true maximum is known and lies in
    /// the top bucket (values merged as bucket edges overstate it).
    pub fn cap_max(&mut self, m: u64) {
        if self.total > 0 && m < self.max && index(m) == index(self.max) {
            self.max = m;
        }
    }

    pub fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += *b;
        }
        self.total += o.total;
        self.sum += o.sum;
        self.max = self.max.max(o.max);
        self.min = self.min.min(o.min);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            (self.sum / self.total as u128) as u64
        }
    }

    /// The value at quantile `q` (0..=1): the smallest bucket edge with at
    /// least `ceil(q * count)` values at or below it, capped at the true max.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_within_precision() {
        for v in [0u64, 1, 127, 128, 129, 255, 256, 1000, 123_456, 9_999_999, u64::MAX / 3] {
            let i = index(v);
            assert!(upper(i) >= v, "{v}");
            assert!(upper(i) - v <= v / SUB + 1, "{v} -> {}", upper(i));
            if i > 0 {
                assert!(upper(i - 1) < v, "{v}");
            }
        }
        assert!(index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles() {
        let mut h = Hist::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5);
        assert!((5_000_000..=5_050_000).contains(&p50), "{p50}");
        assert_eq!(h.quantile(1.0), 10_000_000);
        let p9999 = h.quantile(0.9999);
        assert!((9_999_000..=10_000_000).contains(&p9999), "{p9999}");
        let mut g = Hist::default();
        g.record(50);
        g.merge(&h);
        assert_eq!(g.count(), 10_001);
        assert_eq!(g.quantile(0.0), 50);
    }
}
