//! The latency percentile curves as a hand-written SVG: one panel per
//! protocol and scenario, one line per path; x is the percentile on a
//! "nines" scale (50, 90, 99, 99.9, 99.99), y the latency in µs.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::bench::{BenchProto, PathKind, Row, Scenario};

const W: f64 = 420.0;
const H: f64 = 260.0;
const PAD: f64 = 48.0;

fn color(p: PathKind) -> &'static str {
    match p {
        PathKind::Direct => "#555555",
        PathKind::Skiff => "#1f77b4",
        PathKind::Envoy => "#d62728",
        PathKind::Haproxy => "#2ca02c",
        PathKind::Nginx => "#ff7f0e",
    }
}

/// x position of quantile `q`: log10(1 / (1 - q)), 0 at p0, 4 at p99.99.
fn nines(q: f64) -> f64 {
    (1.0 / (1.0 - q).max(1e-4)).log10()
}

pub fn svg(rows: &[Row]) -> String {
    let mut panels: BTreeMap<(BenchProto, Scenario), Vec<&Row>> = BTreeMap::new();
    for r in rows.iter().filter(|r| !r.curve.is_empty()) {
        panels.entry((r.proto, r.scenario)).or_default().push(r);
    }
    let cols = 3.0;
    let n = panels.len().max(1) as f64;
    let total_h = (n / cols).ceil() * H + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{total_h}" font-family="sans-serif" font-size="11">"#,
        W * cols
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, ((proto, scenario), rs)) in panels.iter().enumerate() {
        let (ox, oy) = ((i % 3) as f64 * W, (i / 3) as f64 * H + 24.0);
        let ymax = rs
            .iter()
            .flat_map(|r| r.curve.iter().map(|c| c.1))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let x = |q: f64| ox + PAD + nines(q) / 4.0 * (W - 2.0 * PAD);
        let y = |us: u64| oy + H - PAD - us as f64 / ymax * (H - 2.0 * PAD);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-weight="bold">{proto:?} {scenario:?}</text>"#,
            ox + PAD,
            oy + 12.0
        );
        let _ = writeln!(
            s,
            r#"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="black"/>"#,
            ox + PAD,
            oy + H - PAD,
            ox + W - PAD
        );
        let _ = writeln!(
            s,
            r#"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="black"/>"#,
            ox + PAD,
            oy + PAD,
            oy + H - PAD
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
                r#"<text x="{}" y="{}" text-anchor="middle">{label}</text>"#,
                x(q),
                oy + H - PAD + 14.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{ymax:.0} µs</text>"#,
            ox + PAD - 4.0,
            oy + PAD + 4.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">0</text>"#,
            ox + PAD - 4.0,
            oy + H - PAD
        );
        for (j, r) in rs.iter().enumerate() {
            let pts: Vec<String> = r
                .curve
                .iter()
                .map(|&(q, us)| format!("{:.1},{:.1}", x(q), y(us)))
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
                ox + PAD + 8.0,
                oy + PAD + 12.0 * j as f64,
                color(r.path),
                r.path.name()
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
