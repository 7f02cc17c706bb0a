//! The metric primitives behind the one registry: counters, gauges and
//! histograms on plain atomics, label families on sharded maps, and the
//! Prometheus text encoding.
//!
//! Recording is a map lookup by borrowed key (no allocation once a series
//! exists) and a relaxed atomic add. Series are created on first use and
//! never removed; a family holds at most [`MAX_SERIES`] of them and folds
//! the rest into one `_other` series, so a flood of unexpected label values
//! (app ids typed wrong, say) cannot grow memory or a scrape without bound.

use std::borrow::Borrow;
use std::fmt::Write;
use std::hash::Hash;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use dashmap::DashMap;

/// Series per family before new label values fold into `_other`.
pub const MAX_SERIES: usize = 1000;

/// Latency buckets in milliseconds: Dapr's distribution (1 ms to 100 s),
/// with three sub-millisecond buckets in front, since a sidecar hop is
/// measured in microseconds.
pub const LATENCY_MS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 30.0, 40.0,
    50.0, 65.0, 80.0, 100.0, 130.0, 160.0, 200.0, 250.0, 300.0, 400.0, 500.0, 650.0, 800.0, 1000.0,
    2000.0, 5000.0, 10000.0, 20000.0, 50000.0, 100000.0,
];

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }

    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Relaxed);
    }
}

/// A latency histogram in milliseconds over [`LATENCY_MS`].
#[derive(Debug)]
pub struct Histogram {
    /// Per bucket (not cumulative; summed when rendered), then +Inf.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..=LATENCY_MS.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1e3;
        // Prometheus buckets count observations <= their bound.
        let i = LATENCY_MS.partition_point(|b| *b < ms);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            cum += b.load(Relaxed);
            let le = LATENCY_MS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |v| v.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cum}");
        }
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cum}", braces(labels));
    }
}

/// A counter and a latency histogram over the same labels: Dapr's
/// `*_count` / `*_latency` pairs.
#[derive(Debug, Default)]
pub struct Timed {
    pub count: Counter,
    pub latency: Histogram,
}

impl Timed {
    pub fn record(&self, d: Duration) {
        self.count.inc();
        self.latency.observe(d);
    }
}

/// Series keyed by label values. `K` is the owned key; lookups take a
/// borrowed form of it (`&str` for `String`), so a hit allocates nothing.
#[derive(Debug)]
pub struct Family<K: Hash + Eq, V> {
    map: DashMap<K, V>,
    len: AtomicUsize,
    overflow: K,
}

impl<K: Hash + Eq + Clone, V: Default> Family<K, V> {
    /// `overflow` is the key new series get once the family is full.
    pub fn new(overflow: K) -> Self {
        Self {
            map: DashMap::new(),
            len: AtomicUsize::new(0),
            overflow,
        }
    }

    /// Runs `f` on the series for `key`, creating it on first use.
    pub fn with<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R) -> R
    where
        K: Borrow<Q>,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    {
        if let Some(v) = self.map.get(key) {
            return f(&v);
        }
        if self.len.load(Relaxed) >= MAX_SERIES {
            let v = self.map.entry(self.overflow.clone()).or_default();
            return f(&v);
        }
        let v = self.map.entry(key.to_owned()).or_insert_with(|| {
            self.len.fetch_add(1, Relaxed);
            V::default()
        });
        f(&v)
    }

    /// Every series, for rendering, in key order: the exposition is the
    /// same text for the same counts on every scrape and every run (the
    /// map's own order is its hasher's, random per process).
    pub fn each(&self, mut f: impl FnMut(&K, &V))
    where
        K: Ord,
    {
        let mut keys: Vec<K> = self.map.iter().map(|e| e.key().clone()).collect();
        keys.sort_unstable();
        for k in keys {
            if let Some(v) = self.map.get(&k) {
                f(&k, &v);
            }
        }
    }
}

fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

/// The text exposition of one scrape.
#[derive(Default)]
pub struct Encoder {
    pub out: String,
}

impl Encoder {
    pub fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{name}{} {v}", braces(labels));
    }

    pub fn histogram(&mut self, name: &str, labels: &str, h: &Histogram) {
        h.render(&mut self.out, name, labels);
    }
}

/// `k1="v1",k2="v2"` with Prometheus escaping.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s
}

impl<K: Hash + Eq + Clone + Default, V: Default> Default for Family<K, V> {
    /// A family whose key space is small and fixed (status codes, say):
    /// the overflow key is never reached in practice.
    fn default() -> Self {
        Self::new(K::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_inclusive() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100)); // == 0.1 ms: first bucket
        h.observe(Duration::from_micros(300)); // 0.5 bucket
        h.observe(Duration::from_secs(500)); // +Inf
        let mut e = Encoder::default();
        e.histogram("x", "a=\"b\"", &h);
        assert!(
            e.out.contains("x_bucket{a=\"b\",le=\"0.1\"} 1\n"),
            "{}",
            e.out
        );
        assert!(e.out.contains("x_bucket{a=\"b\",le=\"0.25\"} 1\n"));
        assert!(e.out.contains("x_bucket{a=\"b\",le=\"0.5\"} 2\n"));
        assert!(e.out.contains("x_bucket{a=\"b\",le=\"100000\"} 2\n"));
        assert!(e.out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"));
        assert!(e.out.contains("x_count{a=\"b\"} 3\n"));
        assert!(e.out.contains("x_sum{a=\"b\"} 500000.4\n"), "{}", e.out);
    }

    #[test]
    fn families_cap_their_series() {
        let f: Family<String, Counter> = Family::new("_other".into());
        for i in 0..MAX_SERIES + 50 {
            f.with(format!("app{i}").as_str(), Counter::inc);
        }
        f.with("app0", Counter::inc);
        let mut n = 0;
        let mut other = 0;
        f.each(|k, v| {
            n += 1;
            if &**k == "_other" {
                other = v.get();
            }
        });
        assert_eq!(n, MAX_SERIES + 1);
        assert_eq!(other, 50);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&[("a", "x\"y\\z")]), "a=\"x\\\"y\\\\z\"");
    }
}
