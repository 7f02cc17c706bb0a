//! The latency percentile curves as a hand-written SVG: one panel per
//! protocol and scenario, one line per path; x is the percentile on a
//! "nines" scale (50, 90, 99, 99.9, 99.99), y the latency on a log scale
//! (tails span two orders of magnitude; a linear axis would hide the body).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::topology::{BenchProto, PathKind, Row, Scenario};

const W: f64 = 420.0;
const H: f64 = 280.0;
const PAD: f64 = 56.0;

fn color(p: PathKind) -> &'static str {
    match p {
        PathKind::Direct => "#555555",
        PathKind::Skiff => "#1f77b4",
        PathKind::SkiffPlain => "#17becf",
        PathKind::Envoy => "#d62728",
        PathKind::Haproxy => "#2ca02c",
        PathKind::Nginx => "#ff7f0e",
    }
}

fn title(p: BenchProto, s: Scenario) -> String {
    let p = match p {
        BenchProto::Http => "HTTP",
        BenchProto::Grpc => "gRPC",
    };
    let s = match s {
        Scenario::Serial => "serial (1 in flight)",
        Scenario::Rate1000 => "1000 req/s, 1 KiB",
        Scenario::Max40 => "40 in flight",
    };
    format!("{p}, {s}")
}

/// x position of quantile `q`: log10(1 / (1 - q)), 0 at p0, 4 at p99.99.
fn nines(q: f64) -> f64 {
    (1.0 / (1.0 - q).max(1e-4)).log10()
}

/// One panel at (ox, oy).
struct Panel {
    ox: f64,
    oy: f64,
    decade_lo: f64,
    decade_hi: f64,
}

impl Panel {
    fn x(&self, q: f64) -> f64 {
        self.ox + PAD + nines(q) / 4.0 * (W - 2.0 * PAD)
    }

    fn y(&self, us: u64) -> f64 {
        let frac =
            ((us.max(1) as f64).log10() - self.decade_lo) / (self.decade_hi - self.decade_lo);
        self.oy + H - PAD - frac * (H - 2.0 * PAD)
    }
}

pub fn svg(rows: &[Row]) -> String {
    let mut panels: BTreeMap<(BenchProto, Scenario), Vec<&Row>> = BTreeMap::new();
    for r in rows.iter().filter(|r| !r.curve.is_empty()) {
        panels.entry((r.proto, r.scenario)).or_default().push(r);
    }
    let n = panels.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        W * 3.0,
        (n / 3.0).ceil() * H + 20.0
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, ((proto, scenario), rs)) in panels.iter().enumerate() {
        let values = || rs.iter().flat_map(|r| r.curve.iter().map(|c| c.1.max(1)));
        let lo = (values().min().unwrap_or(1) as f64).log10().floor();
        let hi = (values().max().unwrap_or(10) as f64)
            .log10()
            .ceil()
            .max(lo + 1.0);
        let p = Panel {
            ox: (i % 3) as f64 * W,
            oy: (i / 3) as f64 * H + 20.0,
            decade_lo: lo,
            decade_hi: hi,
        };
        draw_axes(&mut s, &p, &title(*proto, *scenario));
        for (j, r) in rs.iter().enumerate() {
            let pts: Vec<String> = r
                .curve
                .iter()
                .map(|&(q, us)| format!("{:.1},{:.1}", p.x(q), p.y(us)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
                color(r.path),
                pts.join(" ")
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" fill="{}">{}</text>"#,
                p.ox + PAD + 8.0,
                p.oy + PAD - 6.0 + 12.0 * j as f64,
                color(r.path),
                r.path.name()
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn draw_axes(s: &mut String, p: &Panel, title: &str) {
    let (left, right, bottom) = (p.ox + PAD, p.ox + W - PAD, p.oy + H - PAD);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="{}" font-weight="bold">{title}</text>"#,
        p.oy + 12.0
    );
    let mut d = p.decade_lo;
    while d <= p.decade_hi {
        let us = 10f64.powf(d).round() as u64;
        let y = p.y(us);
        let label = if us >= 1000 {
            format!("{} ms", us / 1000)
        } else {
            format!("{us} µs")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#dddddd"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{label}</text>"#,
            left - 4.0,
            y + 4.0
        );
        d += 1.0;
    }
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>"#
    );
    for (q, label) in [
        (0.5, "p50"),
        (0.9, "p90"),
        (0.99, "p99"),
        (0.999, "p99.9"),
        (0.9999, "p99.99"),
    ] {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            p.x(q),
            bottom + 14.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axis_maps_decades_to_the_panel() {
        let p = Panel {
            ox: 0.0,
            oy: 0.0,
            decade_lo: 2.0,
            decade_hi: 4.0,
        };
        assert!((p.y(100) - (H - PAD)).abs() < 1e-9);
        assert!((p.y(10_000) - PAD).abs() < 1e-9);
        assert!((p.x(0.99) - (PAD + 0.5 * (W - 2.0 * PAD))).abs() < 1e-9);
    }
}
