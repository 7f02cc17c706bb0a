#!/usr/bin/env bash
# System calls each sidecar makes per call under load: two mTLS sidecars
# (the embedded CA, one worker each) in front of skiff-echo, CONC calls in
# flight with 1 KiB payloads (HTTP: /mirror over CONC keep-alive
# connections; gRPC: Echo/Unary as CONC streams on one connection), counted
# with `perf stat` tracepoints over N calls. Counts do not depend on how
# busy the machine is, so they compare builds where wall-clock cannot:
# every system call on loopback costs a kernel entry, and under TLS a
# write is also a record.
#
# Usage: perf/scripts/syscalls-per-call.sh PROTO [CONC] [N]
#   PROTO http | grpc; CONC calls in flight (40); N counted calls (20000)
# SKIFF_BIN_DIR=DIR measures the build in DIR (A/B against another build).
# Needs perf with tracepoint access (root, or perf_event_paranoid <= -1).
set -euo pipefail
cd "$(dirname "$0")/../.."
proto=$1; conc=${2:-40}; n=${3:-20000}
B=${SKIFF_BIN_DIR:-target/release}
[ -x $B/skiffd ] && [ -x $B/skiff-perf ] || cargo build --release -p skiff-dataplane -p skiff-perf
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-tools-generic or linux-perf)" >&2; exit 1; }
w=$(mktemp -d); pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$w"' EXIT
export SKIFF_HOME=$w/home SKIFF_WORKER_THREADS=1
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
eh=$(port); eg=$(port); h1=$(port); h2=$(port); g2=$(port)
$B/skiff-echo --grpc-port "$eg" --http-port "$eh" >/dev/null 2>&1 & pids+=($!)
if [ "$proto" = grpc ]; then app="--app-port $eg --app-protocol grpc"; else app="--app-port $eh"; fi
$B/skiffd --app-id rpc $app --dapr-http-port "$h1" --dapr-grpc-port "$(port)" --metrics-port 0 \
  --enable-mtls --log-level error >/dev/null 2>&1 & callee=$!; pids+=($callee)
$B/skiffd --app-id caller --dapr-http-port "$h2" --dapr-grpc-port "$g2" --metrics-port 0 \
  --enable-mtls --log-level error >/dev/null 2>&1 & caller=$!; pids+=($caller)
for _ in $(seq 200); do
  curl -fs -o /dev/null "http://127.0.0.1:$h1/v1.0/healthz" && curl -fs -o /dev/null "http://127.0.0.1:$h2/v1.0/healthz" && break
  sleep 0.05
done
load() {
  if [ "$proto" = grpc ]; then
    $B/skiff-perf load "http://127.0.0.1:$g2/skiff.echo.v1.Echo/Unary" --proto grpc -H dapr-app-id:rpc \
      --payload-size 1024 --concurrency "$conc" --warmup 0s --quiet "$@"
  else
    $B/skiff-perf load "http://127.0.0.1:$h2/v1.0/invoke/rpc/method/mirror" --payload-size 1024 \
      --concurrency "$conc" --connections "$conc" --warmup 0s --quiet "$@"
  fi
}
load --duration 1s >/dev/null 2>&1
ev="raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,context-switches"
perf stat -x, -e "$ev" -p "$caller" -o "$w/caller" & s1=$!
perf stat -x, -e "$ev" -p "$callee" -o "$w/callee" & s2=$!
sleep 0.3
# --duration bounds the run should the sidecars stall.
load --requests "$n" --duration 120s 2>&1 | grep requests
kill -INT $s1 $s2; wait $s1 $s2 2>/dev/null || true
for side in caller callee; do
  printf '%s per call:' "$side"
  awk -F, -v n="$n" '$1 ~ /^[0-9]+$/ { e = $3; sub(/^raw_syscalls:sys_enter$/, "all", e);
    sub(/^syscalls:sys_enter_/, "", e); printf " %s %.2f", e, $1 / n }' "$w/$side"
  echo
done
