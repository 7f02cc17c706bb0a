#!/usr/bin/env bash
# Where a sidecar's CPU goes at 1000 req/s: user versus kernel time of each of
# two mTLS sidecars (from /proc/<pid>/stat), and the syscalls each makes per
# call (strace -c on a separate serial run of 2000 calls, since strace slows
# every syscall it counts).
#
# Usage: perf/scripts/cpu-split.sh [PROTO] [SECONDS]   (PROTO http|grpc, default http, 5)
set -euo pipefail
cd "$(dirname "$0")/../.."
proto=${1:-http}; secs=${2:-5}
B=target/release
[ -x $B/skiffd ] && [ -x $B/skiff-perf ] || cargo build --release -p skiff-dataplane -p skiff-perf
w=$(mktemp -d); pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$w"' EXIT
export SKIFF_HOME=$w/home
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
eh=$(port); eg=$(port); h1=$(port); h2=$(port); g2=$(port)
$B/skiff-echo --grpc-port "$eg" --http-port "$eh" 2>/dev/null & pids+=($!)
if [ "$proto" = grpc ]; then app="--app-port $eg --app-protocol grpc"; else app="--app-port $eh"; fi
$B/skiffd --app-id rpc $app --dapr-http-port "$h1" --dapr-grpc-port "$(port)" --metrics-port 0 --log-level error --enable-mtls & pids+=($!); callee=$!
$B/skiffd --app-id caller --dapr-http-port "$h2" --dapr-grpc-port "$g2" --metrics-port 0 --log-level error --enable-mtls & pids+=($!); caller=$!
for _ in $(seq 300); do
  curl -fs -o /dev/null "http://127.0.0.1:$h1/v1.0/healthz" && curl -fs -o /dev/null "http://127.0.0.1:$h2/v1.0/healthz" && break
  sleep 0.05
done
load() {
  if [ "$proto" = grpc ]; then
    $B/skiff-perf load "http://127.0.0.1:$g2/skiff.echo.v1.Echo/Unary" --proto grpc -H dapr-app-id:rpc --payload-size 1024 --quiet "$@"
  else
    $B/skiff-perf load "http://127.0.0.1:$h2/v1.0/invoke/rpc/method/mirror" --payload-size 1024 --quiet "$@"
  fi
}
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
load --concurrency 1 --requests 500 --warmup 0s >/dev/null
read -r cu0 cs0 < <(ticks $caller); read -r eu0 es0 < <(ticks $callee)
load --rate 1000 --connections 16 --duration "${secs}s" --warmup 0s >/dev/null
read -r cu1 cs1 < <(ticks $caller); read -r eu1 es1 < <(ticks $callee)
n=$((secs * 1000))
awk -v hz="$hz" -v n="$n" -v cu=$((cu1 - cu0)) -v cs=$((cs1 - cs0)) -v eu=$((eu1 - eu0)) -v es=$((es1 - es0)) 'BEGIN {
  printf "| %s at 1000 req/s, %d calls | user µs/call | kernel µs/call |\n|---|---|---|\n", "'"$proto"'", n
  printf "| caller sidecar | %.0f | %.0f |\n| callee sidecar | %.0f | %.0f |\n", cu/hz/n*1e6, cs/hz/n*1e6, eu/hz/n*1e6, es/hz/n*1e6 }'
if command -v strace >/dev/null; then
  for side in caller callee; do
    pid=$caller; [ $side = callee ] && pid=$callee
    strace -c -f -p "$pid" -o "$w/strace.$side" & sp=$!
    sleep 0.5
    load --concurrency 1 --requests 2000 --warmup 0s >/dev/null
    kill -INT $sp; wait $sp 2>/dev/null || true
    echo "$side syscalls per call (strace -c, 2000 serial calls):"
    awk 'NR>2 && $NF!="total" && $(NF-1) ~ /^[0-9]+$/ {printf "  %s %.2f\n", $NF, $(NF-1)/2000} /total$/ {printf "  total %.2f\n", $(NF-1)/2000}' "$w/strace.$side" | grep -v ' 0.0[0-4]$'
  done
fi
