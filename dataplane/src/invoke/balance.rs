//! Endpoint choice: power of two choices over peak-EWMA latency.
//!
//! Each endpoint keeps an exponentially weighted moving average of its
//! response latency that jumps up at once on a slow response (the "peak") and
//! decays slowly. Its cost is that latency times the calls it has pending. A
//! pick compares two random endpoints and takes the cheaper one: load spreads
//! away from slow or busy instances without scanning all of them. Endpoints
//! that refused a connection sit out for [`DOWN_PENALTY`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use skiff_resolvers::Endpoint;

/// How fast old latency observations fade.
pub const DECAY: Duration = Duration::from_secs(10);
/// Assumed latency of an endpoint that has not answered yet.
pub const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// How long an endpoint that failed to connect is avoided.
pub const DOWN_PENALTY: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct EndpointStats {
    ewma_ns: AtomicU64,
    last_ns: AtomicU64,
    pending: AtomicUsize,
    down_until_ns: AtomicU64,
}

/// Per-endpoint statistics, shared by all calls.
pub struct Balancer {
    stats: DashMap<SocketAddr, Arc<EndpointStats>>,
    epoch: Instant,
}

/// A call in progress on an endpoint; records its latency when finished.
pub struct Pending {
    stats: Arc<EndpointStats>,
    start_ns: u64,
    epoch: Instant,
}

impl Default for Balancer {
    fn default() -> Self {
        Self {
            stats: DashMap::new(),
            epoch: Instant::now(),
        }
    }
}

impl Balancer {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn stats(&self, addr: SocketAddr) -> Arc<EndpointStats> {
        if let Some(s) = self.stats.get(&addr) {
            return s.clone();
        }
        self.stats
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(EndpointStats {
                    ewma_ns: AtomicU64::new(DEFAULT_RTT.as_nanos() as u64),
                    last_ns: AtomicU64::new(0),
                    pending: AtomicUsize::new(0),
                    down_until_ns: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Picks an endpoint not in `exclude`; `None` when none is left.
    pub fn pick<'a>(&self, eps: &'a [Endpoint], exclude: &[SocketAddr]) -> Option<&'a Endpoint> {
        let now = self.now_ns();
        let usable = |e: &&Endpoint| !exclude.contains(&e.addr);
        let candidates: usize = eps.iter().filter(usable).count();
        match candidates {
            0 => None,
            1 => eps.iter().find(usable),
            n => {
                let nth = |i: usize| eps.iter().filter(usable).nth(i);
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (nth(a)?, nth(b)?);
                Some(if self.cost(ea.addr, now) <= self.cost(eb.addr, now) {
                    ea
                } else {
                    eb
                })
            }
        }
    }

    fn cost(&self, addr: SocketAddr, now: u64) -> f64 {
        let s = self.stats(addr);
        if s.down_until_ns.load(Ordering::Relaxed) > now {
            return f64::MAX;
        }
        let pending = s.pending.load(Ordering::Relaxed) as f64;
        s.ewma_ns.load(Ordering::Relaxed) as f64 * (pending + 1.0)
    }

    /// Starts a call on `addr`.
    pub fn start(&self, addr: SocketAddr) -> Pending {
        let stats = self.stats(addr);
        stats.pending.fetch_add(1, Ordering::Relaxed);
        Pending {
            stats,
            start_ns: self.now_ns(),
            epoch: self.epoch,
        }
    }

    /// The endpoint refused or timed out a connection.
    pub fn mark_down(&self, addr: SocketAddr) {
        let until = self.now_ns() + DOWN_PENALTY.as_nanos() as u64;
        self.stats(addr)
            .down_until_ns
            .store(until, Ordering::Relaxed);
    }
}

impl Pending {
    /// Records the response latency (call when the response head arrives).
    pub fn finish(self) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.stats.observe(now.saturating_sub(self.start_ns), now);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.stats.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EndpointStats {
    fn observe(&self, rtt_ns: u64, now: u64) {
        let last = self.last_ns.swap(now, Ordering::Relaxed);
        let prev = self.ewma_ns.load(Ordering::Relaxed);
        let next = if rtt_ns > prev {
            rtt_ns
        } else {
            let dt = now.saturating_sub(last) as f64;
            let w = (-dt / DECAY.as_nanos() as f64).exp();
            (prev as f64 * w + rtt_ns as f64 * (1.0 - w)) as u64
        };
        // Races between concurrent observations only lose one sample.
        self.ewma_ns.store(next, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            instance: port.to_string().into(),
        }
    }

    #[test]
    fn avoids_slow_and_down_endpoints() {
        let b = Balancer::default();
        let eps = [ep(1), ep(2)];
        // Endpoint 1 answered slowly once; the peak sticks.
        b.stats(eps[0].addr).observe(50_000_000, 1);
        b.stats(eps[1].addr).observe(100_000, 1);
        for _ in 0..50 {
            assert_eq!(b.pick(&eps, &[]).map(|e| e.addr.port()), Some(2));
        }
        b.mark_down(eps[1].addr);
        for _ in 0..50 {
            assert_eq!(b.pick(&eps, &[]).map(|e| e.addr.port()), Some(1));
        }
    }

    #[test]
    fn spreads_load_and_respects_exclusions() {
        let b = Balancer::default();
        let eps = [ep(1), ep(2), ep(3)];
        let mut seen = [0; 3];
        let mut held = Vec::new();
        for _ in 0..30 {
            let e = b.pick(&eps, &[]).expect("endpoint");
            seen[(e.addr.port() - 1) as usize] += 1;
            held.push(b.start(e.addr));
        }
        assert!(
            seen.iter().all(|&n| n >= 5),
            "pending calls spread the load: {seen:?}"
        );
        assert_eq!(
            b.pick(&eps, &[eps[0].addr, eps[2].addr])
                .map(|e| e.addr.port()),
            Some(2)
        );
        assert!(
            b.pick(&eps, &[eps[0].addr, eps[1].addr, eps[2].addr])
                .is_none()
        );
    }

    #[test]
    fn ewma_decays_towards_fast_samples() {
        let s = EndpointStats {
            ewma_ns: AtomicU64::new(10_000_000),
            last_ns: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            down_until_ns: AtomicU64::new(0),
        };
        s.observe(1_000_000, DECAY.as_nanos() as u64 * 5);
        assert!(s.ewma_ns.load(Ordering::Relaxed) < 1_100_000);
    }
}
