#!/usr/bin/env bash
# Large-body throughput: SIZE MiB uploaded (chunked) and downloaded through two
# skiffd sidecars versus direct to the echo app, median of ROUNDS, plus the
# sidecars' peak RSS. Used to choose the HTTP/2 window sizes (perf/RESULTS.md).
#
# Usage: perf/scripts/large-body.sh   (SIZE=512 ROUNDS=3; MTLS=1 for mTLS between
# the sidecars; NO_BUILD=1 to skip cargo; SKIFF_BIN_DIR=DIR for another build)
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZE=${SIZE:-512}
ROUNDS=${ROUNDS:-3}
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet -p skiff-dataplane -p skiff-perf
B=${SKIFF_BIN_DIR:-target/release}
work=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
export SKIFF_HOME="$work/home"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -fs -o /dev/null "http://127.0.0.1:$1/v1.0/healthz" && return; sleep 0.05; done; exit 1; }
EH=$(free_port)
$B/skiff-echo --http-port "$EH" 2>/dev/null & pids+=($!)
H1=$(free_port); H2=$(free_port)
tls=(); [ -n "${MTLS:-}" ] && tls=(--enable-mtls)
$B/skiffd --app-id big --app-port "$EH" --dapr-http-port "$H1" --dapr-grpc-port "$(free_port)" --metrics-port 0 --log-level warn "${tls[@]}" & pids+=($!); P1=$!
$B/skiffd --app-id caller --dapr-http-port "$H2" --dapr-grpc-port "$(free_port)" --metrics-port 0 --log-level warn "${tls[@]}" & pids+=($!); P2=$!
wait_http "$H1"; wait_http "$H2"
peak=0
sample() { while :; do for p in $P1 $P2; do r=$(awk '/VmRSS/ {print $2}' /proc/$p/status); [ "$r" -gt "$(cat "$work/peak" 2>/dev/null || echo 0)" ] && echo "$r" > "$work/peak"; done; sleep 0.02; done; }
sample & pids+=($!)
up() { head -c "${SIZE}M" /dev/zero | curl -s -o /dev/null -w '%{time_total}' -X POST -T - "$1"; }
down() { curl -s -o /dev/null -w '%{time_total}' "$1"; }
mibs() { awk -v t="$1" -v s="$SIZE" 'BEGIN{printf "%.0f", s/t}'; }
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
for r in $(seq "$ROUNDS"); do
  echo "$(mibs "$(up "http://127.0.0.1:$EH/sink")")" >> "$work/du"
  echo "$(mibs "$(up "http://127.0.0.1:$H2/v1.0/invoke/big/method/sink")")" >> "$work/su"
  echo "$(mibs "$(down "http://127.0.0.1:$EH/source?bytes=$((SIZE<<20))")")" >> "$work/dd"
  echo "$(mibs "$(down "http://127.0.0.1:$H2/v1.0/invoke/big/method/source?bytes=$((SIZE<<20))")")" >> "$work/sd"
done
echo "| ${SIZE} MiB | direct up | skiff up | direct down | skiff down | peak sidecar RSS |"
echo "|---|---|---|---|---|---|"
echo "| MiB/s | $(median < "$work/du") | $(median < "$work/su") | $(median < "$work/dd") | $(median < "$work/sd") | $(( $(cat "$work/peak") / 1024 )) MiB |"
