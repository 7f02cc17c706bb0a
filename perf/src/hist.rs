//! Latency histograms: hdrhistogram in microseconds with 3 significant
//! digits, and the percentiles every report prints.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded: one minute, in µs. Slower samples are clamped.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram.
#[derive(Debug)]
pub struct Latency {
    h: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            // 1 µs .. 60 s at 3 significant digits: bounds are constants that
            // hdrhistogram accepts, so this cannot fail.
            h: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant bounds are valid"),
        }
    }
}

/// The figures a report shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn record_us(&mut self, us: u64) {
        let _ = self.h.record(us.clamp(1, MAX_LATENCY_US));
    }

    pub fn merge(&mut self, other: &Latency) {
        let _ = self.h.add(&other.h);
    }

    pub fn len(&self) -> u64 {
        self.h.len()
    }

    pub fn is_empty(&self) -> bool {
        self.h.is_empty()
    }

    pub fn percentiles(&self) -> Percentiles {
        if self.h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: self.h.len(),
            mean_us: self.h.mean(),
            p50_us: self.h.value_at_quantile(0.50),
            p90_us: self.h.value_at_quantile(0.90),
            p99_us: self.h.value_at_quantile(0.99),
            p999_us: self.h.value_at_quantile(0.999),
            max_us: self.h.max(),
        }
    }

    /// (quantile, µs) points for plotting, from p0 up to p99.99.
    pub fn curve(&self) -> Vec<(f64, u64)> {
        [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999]
            .iter()
            .map(|&q| (q, self.h.value_at_quantile(q)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(v: u64, want: u64) -> bool {
        // 3 significant digits: relative error below 0.1%.
        (v as f64 - want as f64).abs() <= want as f64 * 0.001 + 1.0
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut l = Latency::default();
        for us in 1..=10_000 {
            l.record_us(us);
        }
        let p = l.percentiles();
        assert_eq!(p.count, 10_000);
        assert!(within(p.p50_us, 5_000), "{p:?}");
        assert!(within(p.p90_us, 9_000), "{p:?}");
        assert!(within(p.p99_us, 9_900), "{p:?}");
        assert!(within(p.p999_us, 9_990), "{p:?}");
        assert!(within(p.max_us, 10_000), "{p:?}");
        assert!((p.mean_us - 5_000.5).abs() < 10.0, "{p:?}");
    }

    #[test]
    fn a_slow_tail_shows_in_the_high_percentiles_only() {
        let mut l = Latency::default();
        for _ in 0..990 {
            l.record_us(100);
        }
        for _ in 0..10 {
            l.record_us(50_000);
        }
        let p = l.percentiles();
        assert!(within(p.p50_us, 100) && within(p.p90_us, 100), "{p:?}");
        assert!(within(p.p999_us, 50_000), "{p:?}");
    }

    #[test]
    fn merge_and_clamp() {
        let (mut a, mut b) = (Latency::default(), Latency::default());
        a.record_us(0);
        b.record_us(u64::MAX);
        a.merge(&b);
        let p = a.percentiles();
        assert_eq!(p.count, 2);
        assert!(within(p.max_us, MAX_LATENCY_US));
        assert!(Latency::default().percentiles() == Percentiles::default());
    }
}
