//! Reports for people: aligned text tables and markdown.

use std::fmt::Write;

use crate::load::{Mode, Report};

/// The `load` command's table.
pub fn load_table(r: &Report) -> String {
    let mut s = String::new();
    let mode = match r.mode {
        Mode::Open { rate } => format!("open loop at {rate} req/s"),
        Mode::Closed { concurrency } => format!("closed loop, {concurrency} in flight"),
    };
    let _ = writeln!(
        s,
        "target      {} ({:?}, {} connection(s), {mode})",
        r.url, r.proto, r.connections
    );
    let _ = writeln!(
        s,
        "requests    {} ok, {} failed in {:.2}s: {:.0} req/s",
        r.ok,
        r.requests - r.ok,
        r.duration_s,
        r.achieved_rps
    );
    let l = &r.latency;
    let _ = writeln!(
        s,
        "latency µs  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.0}",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
    );
    for (kind, n) in &r.errors {
        let _ = writeln!(s, "errors      {kind}: {n}");
    }
    let _ = writeln!(
        s,
        "generator   {:.1}% of a core",
        r.generator_cpu_cores * 100.0
    );
    s
}
