#!/usr/bin/env python3
"""Issue 8's targets, checked against one `skiff-perf bench --json` file.

Every ratio compares paths from the same run. Prints a Markdown table with
the figure, the target and whether it is met; exits 0 either way (the
table is the record).

Usage: perf/scripts/targets.py perf/results/bench.json
"""

import json
import sys

PEERS = ("envoy", "haproxy", "nginx")


def main():
    rows = json.load(open(sys.argv[1]))
    by = {(r["path"], r["proto"], r["scenario"]): r for r in rows}
    out = ["| target | proto | skiff | peers | ratio | goal | met |", "|---|---|---|---|---|---|---|"]

    def line(name, proto, skiff, peers, ratio, goal, met):
        out.append(f"| {name} | {proto} | {skiff} | {peers} | {ratio} | {goal} | {'yes' if met else 'no'} |")

    for proto in ("http", "grpc"):
        s = by.get(("skiff", proto, "serial"))
        if not s:
            continue
        # Added p50, serial, against each peer.
        for peer, goal in (("haproxy", 0.4), ("nginx", 0.4), ("envoy", 0.25)):
            p = by.get((peer, proto, "serial"))
            if not p:
                continue
            ratio = s["added_p50_us"] / max(p["added_p50_us"], 1)
            line(f"added p50, serial, vs {peer}", proto, f"+{s['added_p50_us']} µs",
                 f"+{p['added_p50_us']} µs", f"{ratio:.2f}×", f"≤ {goal}×", ratio <= goal)
        present = [p for p in PEERS if (p, proto, "serial") in by]
        if not present:
            continue
        # Added p99 at 1000 req/s against the best peer.
        r = by[("skiff", proto, "rate_1000")]
        best = min(present, key=lambda p: by[(p, proto, "rate_1000")]["added_p99_us"])
        b = by[(best, proto, "rate_1000")]
        ratio = r["added_p99_us"] / max(b["added_p99_us"], 1)
        line("added p99 at 1000 req/s, vs best peer", proto, f"+{r['added_p99_us']} µs",
             f"{best} +{b['added_p99_us']} µs", f"{ratio:.2f}×", "≤ 0.4×", ratio <= 0.4)
        # Throughput at 40 in flight.
        m = by[("skiff", proto, "max_40")]
        best = max(present, key=lambda p: by[(p, proto, "max_40")]["throughput_rps"])
        b = by[(best, proto, "max_40")]
        ratio = m["throughput_rps"] / b["throughput_rps"]
        line("req/s at 40 in flight, vs best peer", proto, f"{m['throughput_rps']:.0f}",
             f"{best} {b['throughput_rps']:.0f}", f"{ratio:.2f}×", "≥ 1.5×", ratio >= 1.5)
        line("req/s at 40 in flight, vs direct", proto, f"{m['throughput_rps']:.0f}", "",
             f"{m['throughput_vs_direct']:.2f}×", "≥ 0.35×", m["throughput_vs_direct"] >= 0.35)
        # CPU per 1000 req/s, both proxies together, at 1000 req/s.
        best = min(present, key=lambda p: by[(p, proto, "rate_1000")]["proxy_cpu_s_per_1000"])
        b = by[(best, proto, "rate_1000")]
        cpu = r["proxy_cpu_s_per_1000"]
        ratio = cpu / b["proxy_cpu_s_per_1000"]
        line("CPU (cores) at 1000 req/s, vs best peer", proto, f"{cpu:.3f}",
             f"{best} {b['proxy_cpu_s_per_1000']:.3f}", f"{ratio:.2f}×", "≤ 0.5×", ratio <= 0.5)
        line("CPU (cores) at 1000 req/s, absolute", proto, f"{cpu:.3f}", "", "", "< 0.05",
             cpu < 0.05)
        rss = r["proxy_peak_rss_kib"] / 1024
        line("peak sidecar RSS at 1000 req/s", proto, f"{rss:.1f} MiB", "", "", "< 15 MiB",
             rss < 15)
    print("\n".join(out))


if __name__ == "__main__":
    main()
