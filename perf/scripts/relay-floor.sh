#!/usr/bin/env bash
# The floor under any two-proxy path on this machine: two HAProxy TCP relays
# (mode tcp: no TLS, no HTTP parsing, one thread each) between the load
# generator and skiff-echo, against direct, serial 1 KiB calls to /mirror.
# What they add is the cost of four more loopback deliveries and wake-ups
# with nothing done in between; their CPU is what merely copying the bytes
# through two processes costs per call.
#
# Then the relays alone at 1000 req/s, for their CPU in cores at that rate.
#
# Usage: perf/scripts/relay-floor.sh   (ROUNDS=3; SKIFF_BIN_DIR=DIR)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
B=${SKIFF_BIN_DIR:-target/release}
[ -x $B/skiff-echo ] && [ -x $B/skiff-perf ] || cargo build --release -p skiff-perf
command -v haproxy >/dev/null || { echo "needs haproxy (apt-get install haproxy)" >&2; exit 1; }
w=$(mktemp -d); pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$w"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
eh=$(port); r1=$(port); r2=$(port)
relay() { # relay CONFIG LISTEN TARGET
  printf 'global\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\nfrontend f\n  bind 127.0.0.1:%s\n  default_backend b\nbackend b\n  server s 127.0.0.1:%s\n' "$2" "$3" > "$1"
  haproxy -f "$1" -db >/dev/null 2>&1 & pids+=($!)
}
$B/skiff-echo --http-port "$eh" --grpc-port "$(port)" >/dev/null 2>&1 & pids+=($!)
relay "$w/r1.cfg" "$r1" "$r2"; h1=${pids[-1]}
relay "$w/r2.cfg" "$r2" "$eh"; h2=${pids[-1]}
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$r1/mirror" && break; sleep 0.05; done
ticks() { awk '{s += $14 + $15} END {print s}' /proc/$h1/stat /proc/$h2/stat; }
hz=$(getconf CLK_TCK)
for r in $(seq "$ROUNDS"); do
  for path in direct relays; do
    port=$eh; [ $path = relays ] && port=$r1
    t0=$(ticks)
    $B/skiff-perf load "http://127.0.0.1:$port/mirror" --payload-size 1024 --concurrency 1 \
      --duration 5s --warmup 0s --json --quiet > "$w/out.json"
    t1=$(ticks)
    python3 - "$w/out.json" "$path" "$r" $((t1 - t0)) "$hz" <<'PY'
import json, sys
f, path, r, ticks, hz = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
d = json.load(open(f))
n = d["ok"]
lat = d["latency"]
print(f"round {r} {path:7} p50 {lat['p50_us']} µs  p99 {lat['p99_us']} µs  {n} calls  "
      f"relay CPU {ticks / hz / n * 1000:.3f} s per 1000 calls")
PY
  done
done
# The CPU figure the issue's target is stated in: at 1000 req/s.
t0=$(ticks)
$B/skiff-perf load "http://127.0.0.1:$r1/mirror" --payload-size 1024 --rate 1000 --connections 16 \
  --duration 5s --warmup 0s --json --quiet > "$w/out.json"
t1=$(ticks)
python3 - "$w/out.json" $((t1 - t0)) "$hz" <<'PY'
import json, sys
d, ticks, hz = json.load(open(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3])
lat = d["latency"]
print(f"1000 req/s relays p50 {lat['p50_us']} µs  p99 {lat['p99_us']} µs  {d['ok']} calls  "
      f"relay CPU {ticks / hz / d['ok'] * 1000:.3f} s per 1000 calls (cores at 1000 req/s)")
PY
