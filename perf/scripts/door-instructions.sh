#!/usr/bin/env bash
# Instructions one sidecar executes per call of the hot building-block RPCs,
# through each front door, counted by callgrind: the repeatable figure on a
# noisy machine (latency here swings more between rounds than a door change
# moves it). One skiffd (one worker, metrics on, no tracing) with in-memory
# state and pub/sub runs under valgrind; for each call 200 unrecorded
# warm-up calls, then N serial calls counted:
#   gRPC GetState, SaveState and PublishEvent (1 KiB), and the same through
#   HTTP (GET and POST /v1.0/state, POST /v1.0/publish).
# The in-memory components keep the driver's share small and equal on both
# doors, so the differences are the doors'.
#
# Usage: perf/scripts/door-instructions.sh [N]   (default 2000)
# SKIFF_BIN_DIR=DIR measures the skiffd in DIR (A/B against another build;
# skiff-perf comes from target/release unless DIR has one). CG_DIR=DIR keeps
# each call's callgrind profile there (for callgrind_annotate).
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-2000}
B=${SKIFF_BIN_DIR:-target/release}
P=$B/skiff-perf; [ -x "$P" ] || P=target/release/skiff-perf
[ -x $B/skiffd ] && [ -x "$P" ] || cargo build --release -p skiff-dataplane -p skiff-perf --bins
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
w=$(mktemp -d); pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$w"' EXIT
export SKIFF_HOME=$w/home SKIFF_WORKER_THREADS=1
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mkdir -p "$w/res"
cat > "$w/res/c.yaml" <<Y
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: statestore}
spec: {type: state.in-memory, version: v1}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub}
spec: {type: pubsub.in-memory, version: v1}
Y
# The gRPC requests, serialized (protobuf by hand: field numbers from
# proto/dapr/proto/runtime/v1/dapr.proto).
python3 - "$w" <<'PY'
import sys
w = sys.argv[1]
def varint(n):
    out = b''
    while n >= 0x80:
        out += bytes([(n & 0x7f) | 0x80]); n >>= 7
    return out + bytes([n])
def ld(f, b):
    b = b.encode() if isinstance(b, str) else b
    return varint(f << 3 | 2) + varint(len(b)) + b
value = b'x' * 1024
# The event is the same JSON string on both doors.
event = b'"' + b'x' * 1022 + b'"'
open(f'{w}/get.bin', 'wb').write(ld(1, 'statestore') + ld(2, 'k'))
open(f'{w}/save.bin', 'wb').write(ld(1, 'statestore') + ld(2, ld(1, 'k') + ld(2, value)))
open(f'{w}/publish.bin', 'wb').write(ld(1, 'pubsub') + ld(2, 't') + ld(3, event) + ld(4, 'application/json'))
open(f'{w}/save.json', 'w').write('[{"key":"k","value":"' + 'x' * 1022 + '"}]')
open(f'{w}/event.json', 'w').write('"' + 'x' * 1022 + '"')
PY
h=$(port); g=$(port)
valgrind --tool=callgrind --callgrind-out-file="$w/cg.out" -q \
  $B/skiffd --app-id door --dapr-http-port "$h" --dapr-grpc-port "$g" --metrics-port 0 \
  --log-level error --resources-path "$w/res" & pids+=($!)
for _ in $(seq 300); do
  curl -fs -o /dev/null "http://127.0.0.1:$h/v1.0/healthz" && break
  sleep 0.2
done
grpc() { # method payload-file requests
  "$P" load "http://127.0.0.1:$g/dapr.proto.runtime.v1.Dapr/$1" --proto grpc --payload-file "$2" \
    --concurrency 1 --requests "$3" --warmup 0s --duration 600s --quiet >/dev/null 2>&1
}
http() { # method path payload-file requests
  local body=(); [ -n "$3" ] && body=(--payload-file "$3" -H content-type:application/json)
  "$P" load "http://127.0.0.1:$h$2" --method "$1" "${body[@]}" \
    --concurrency 1 --requests "$4" --warmup 0s --duration 600s --quiet >/dev/null 2>&1
}
count() { # label, then the command and its arguments without the request count
  local label=$1; shift
  "$@" 200
  callgrind_control -z >/dev/null 2>&1
  "$@" "$n"
  callgrind_control -d >/dev/null 2>&1
  sleep 0.5
  local f ir
  f=$(ls -t "$w"/cg.out* | head -1)
  ir=$(grep -m1 "^summary:\|^totals:" "$f" | awk '{print $2}')
  echo "| $label | $((ir / n)) |"
  if [ -n "${CG_DIR:-}" ]; then l=${label// /-}; cp "$f" "$CG_DIR/${l//\//_}.cg"; fi
  rm -f "$w"/cg.out.*
}
echo "| call (1 KiB) | instructions per call |"
echo "|---|---|"
count "gRPC SaveState" grpc SaveState "$w/save.bin"
count "gRPC GetState" grpc GetState "$w/get.bin"
count "gRPC PublishEvent" grpc PublishEvent "$w/publish.bin"
count "HTTP POST /v1.0/state" http POST /v1.0/state/statestore "$w/save.json"
count "HTTP GET /v1.0/state" http GET /v1.0/state/statestore/k ""
count "HTTP POST /v1.0/publish" http POST /v1.0/publish/pubsub/t "$w/event.json"
