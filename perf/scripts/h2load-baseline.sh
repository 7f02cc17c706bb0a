#!/usr/bin/env bash
# First latency/throughput baseline with h2load (the skiff-perf tool replaces
# it): direct to the echo app versus through two skiffd sidecars, HTTP/1.1
# and gRPC unary, 1 KiB payloads, serial (1 in flight) and 40 in flight.
# Rounds are interleaved (direct, skiff, direct, skiff, ...) because these
# machines are noisy; the median of ROUNDS rounds is printed as markdown.
#
# Usage: perf/scripts/h2load-baseline.sh   (ROUNDS=3 N_SERIAL=5000 N_LOAD=40000)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
N_SERIAL=${N_SERIAL:-5000}
N_LOAD=${N_LOAD:-40000}
command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 1; }
cargo build --release --quiet -p skiff-dataplane -p skiff-perf
B=target/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
export SKIFF_HOME="$work/home"

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -fs -o /dev/null "http://127.0.0.1:$1/v1.0/healthz" && return; sleep 0.05; done; echo "sidecar on $1 not ready" >&2; exit 1; }

EH=$(free_port); EG=$(free_port)
$B/skiff-echo --http-port "$EH" --grpc-port "$EG" 2>/dev/null & pids+=($!)
start_sidecar() { # app-id http grpc [args...]
  local id=$1 h=$2 g=$3; shift 3
  $B/skiffd --app-id "$id" --dapr-http-port "$h" --dapr-grpc-port "$g" --metrics-port 0 --log-level warn "$@" 2>"$work/$id.log" & pids+=($!)
  wait_http "$h"
}
CH=$(free_port); CG=$(free_port)
start_sidecar web "$(free_port)" "$(free_port)" --app-port "$EH"
start_sidecar rpc "$(free_port)" "$(free_port)" --app-port "$EG" --app-protocol grpc
start_sidecar caller "$CH" "$CG"
CALLER_PID=${pids[-1]}

# 1 KiB payloads: raw for HTTP, a framed skiff.echo.v1.EchoMessage for gRPC.
python3 - "$work" <<'PY'
import sys
d = sys.argv[1]
payload = b"x" * 1024
open(d + "/body.bin", "wb").write(payload)
msg = b"\x0a" + bytes([0x80 | (len(payload) & 0x7f), len(payload) >> 7]) + payload
open(d + "/grpc.bin", "wb").write(b"\x00" + len(msg).to_bytes(4, "big") + msg)
PY

GRPC_H=(-H content-type:application/grpc -H te:trailers)
# run NAME -- h2load args...; prints "mean_us req_per_s"
run() {
  local out
  out=$(h2load "$@" 2>&1)
  if ! grep -q "requests:.* 0 failed, 0 errored" <<<"$out"; then
    echo "h2load reported failures for: $*" >&2; grep "requests:" <<<"$out" >&2; exit 1
  fi
  local mean rps
  mean=$(awk '/time for request:/ {print $6}' <<<"$out")
  rps=$(awk '/finished in/ {print $4}' <<<"$out")
  echo "$(to_us "$mean") $rps"
}
to_us() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub("us","",v); print v+0} else if (v ~ /ms$/) {sub("ms","",v); print v*1000} else {sub("s","",v); print v*1000000} }'; }

declare -A R
scenarios=(http_serial http_load grpc_serial grpc_load)
for round in $(seq "$ROUNDS"); do
  for path in direct skiff; do
    if [ $path = direct ]; then
      HURL="http://127.0.0.1:$EH/echo"; GURL="http://127.0.0.1:$EG/skiff.echo.v1.Echo/Unary"; EXTRA=()
    else
      HURL="http://127.0.0.1:$CH/v1.0/invoke/web/method/echo"; GURL="http://127.0.0.1:$CG/skiff.echo.v1.Echo/Unary"; EXTRA=(-H dapr-app-id:rpc)
    fi
    R[$path,http_serial,$round]=$(run --h1 -n "$N_SERIAL" -c 1 -m 1 -d "$work/body.bin" "$HURL")
    R[$path,http_load,$round]=$(run --h1 -n "$N_LOAD" -c 40 -m 1 -d "$work/body.bin" "$HURL")
    R[$path,grpc_serial,$round]=$(run -n "$N_SERIAL" -c 1 -m 1 -d "$work/grpc.bin" "${GRPC_H[@]}" "${EXTRA[@]}" "$GURL")
    R[$path,grpc_load,$round]=$(run -n "$N_LOAD" -c 4 -m 10 -d "$work/grpc.bin" "${GRPC_H[@]}" "${EXTRA[@]}" "$GURL")
  done
done

median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
field() { for r in $(seq "$ROUNDS"); do echo "${R[$1,$2,$r]}" | cut -d' ' -f"$3"; done | median; }
echo "| scenario | direct mean | skiff mean | added | direct req/s | skiff req/s | skiff/direct |"
echo "|---|---|---|---|---|---|---|"
for s in "${scenarios[@]}"; do
  dm=$(field direct "$s" 1); sm=$(field skiff "$s" 1); dr=$(field direct "$s" 2); sr=$(field skiff "$s" 2)
  awk -v s="$s" -v dm="$dm" -v sm="$sm" -v dr="$dr" -v sr="$sr" 'BEGIN{printf "| %s | %.0f µs | %.0f µs | +%.0f µs | %.0f | %.0f | %.2f |\n", s, dm, sm, sm-dm, dr, sr, sr/dr}'
done
echo
echo "rounds: $ROUNDS (median), serial n=$N_SERIAL, 40-in-flight n=$N_LOAD; caller sidecar RSS after the run: $(awk '/VmRSS/ {print $2" "$3}' /proc/$CALLER_PID/status)"
