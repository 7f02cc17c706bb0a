#!/usr/bin/env bash
# What observability costs on the call path: the same `skiff-perf bench`
# (direct and two skiffd with mTLS) run twice, interleaved:
#   off — --enable-metrics=false, no tracing;
#   on  — metrics recorded and served, tracing sampled at 0.1 (Dapr's
#         published test setting) exported over OTLP/HTTP to a local sink.
# Loopback only; bounded runs.
#
# Usage: perf/scripts/observability-overhead.sh [seconds per run] [rounds]
# The full reports stay in perf/results/observability/{off,on}-<round>.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-5}
rounds=${2:-3}
B=target/release
[ -x $B/skiffd ] && [ -x $B/skiff-perf ] || cargo build --release --workspace
work=$(mktemp -d)
out=perf/results/observability
mkdir -p "$out"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sink=$(port)
# An OTLP/HTTP sink: reads each export and answers 200.
python3 - "$sink" <<'PY' & pids+=($!)
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
cat > "$work/traced.yaml" <<YAML
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata: {name: observed}
spec:
  metrics: {enabled: true}
  tracing:
    samplingRate: "0.1"
    otel: {endpointAddress: "127.0.0.1:$sink", isSecure: false, protocol: http}
YAML

for r in $(seq 1 "$rounds"); do
  for mode in off on; do
    if [ "$mode" = off ]; then
      extra="--enable-metrics=false"
    else
      extra="--config $work/traced.yaml"
    fi
    SKIFFD_EXTRA_ARGS="$extra" $B/skiff-perf bench --paths direct,skiff --seconds "$secs" \
      --json "$out/$mode-$r.json" 2>/dev/null | grep -v '^round' >"$out/$mode-$r.txt"
    echo "== round $r, observability $mode"
    grep -E '^### |^\| skiff' "$out/$mode-$r.txt"
  done
done
