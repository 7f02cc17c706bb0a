//! The open-loop schedule: request `i` is due at `start + i / rate`, whatever
//! happened to earlier requests. Latency is measured from that due time, so a
//! stalled server shows up as latency instead of silently slowing the load
//! (no coordinated omission).
//!
//! Tokio's timers have millisecond resolution, which at 1000 req/s would add
//! up to a millisecond of the generator's own lateness to every sample. The
//! pacer therefore runs on its own thread and sleeps with the OS's
//! high-resolution timer, handing due times to the runtime.

use std::time::{Duration, Instant};

/// Due times at a fixed rate.
#[derive(Clone, Debug)]
pub struct Schedule {
    start: Instant,
    interval_ns: f64,
}

impl Schedule {
    /// `rate` requests per second, the first due at `start`.
    pub fn new(start: Instant, rate: f64) -> Self {
        Self {
            start,
            interval_ns: 1e9 / rate.max(1e-9),
        }
    }

    /// The due time of request `i`.
    pub fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_nanos((i as f64 * self.interval_ns) as u64)
    }
}

/// How long to sleep before a request due at `due`; none when it is already
/// due or overdue (a late pacer catches up at once and keeps the due times).
pub fn wait_for(due: Instant, now: Instant) -> Option<Duration> {
    due.checked_duration_since(now).filter(|d| !d.is_zero())
}

/// Sends the due time of every request until `end` (or until the receiver
/// is gone) from a thread of its own.
pub fn spawn_pacer(
    schedule: Schedule,
    end: Instant,
    tx: tokio::sync::mpsc::UnboundedSender<Instant>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("skiff-perf-pacer".into())
        .spawn(move || {
            for i in 0.. {
                let due = schedule.due(i);
                if due >= end {
                    return;
                }
                if let Some(d) = wait_for(due, Instant::now()) {
                    std::thread::sleep(d);
                }
                if tx.send(due).is_err() {
                    return;
                }
            }
        })
        .unwrap_or_else(|e| {
            // Without a pacer thread nothing is sent; the run reports zero
            // requests and the caller says so.
            eprintln!("skiff-perf: cannot start the pacer thread: {e}");
            std::thread::spawn(|| {})
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_follow_the_rate() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 1000.0);
        for i in 0..5u64 {
            assert_eq!(s.due(i) - t0, Duration::from_millis(i));
        }
        let s = Schedule::new(t0, 3.0);
        assert_eq!(s.due(3) - t0, Duration::from_secs(1));
    }

    #[test]
    fn a_late_pacer_does_not_sleep_and_keeps_due_times() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 100.0);
        let late = t0 + Duration::from_millis(55);
        // Requests 1..=5 are overdue at 55 ms: no sleeping, due times unchanged.
        for i in 1..=5u64 {
            assert_eq!(wait_for(s.due(i), late), None);
            assert_eq!(s.due(i) - t0, Duration::from_millis(10 * i));
        }
        assert_eq!(wait_for(s.due(6), late), Some(Duration::from_millis(5)));
    }

    #[tokio::test]
    async fn the_pacer_sends_every_due_time_then_stops() {
        let t0 = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let h = spawn_pacer(
            Schedule::new(t0, 2000.0),
            t0 + Duration::from_millis(50),
            tx,
        );
        let mut got = Vec::new();
        while let Some(d) = rx.recv().await {
            got.push(d);
        }
        h.join().expect("pacer");
        assert_eq!(got.len(), 100);
        assert!(
            got.windows(2)
                .all(|w| w[1] - w[0] == Duration::from_micros(500))
        );
        // Sent no earlier than due.
        assert!(Instant::now() >= *got.last().expect("some"));
    }
}
