#!/usr/bin/env bash
# Instructions one sidecar executes per call, counted by callgrind: a
# repeatable figure on a noisy shared machine, for A/B comparisons of a
# feature (and for catching regressions). Two sidecars (no mTLS, one worker
# each) in front of skiff-echo; the measured one runs under valgrind; 200
# warm-up calls are not counted, then N serial calls are.
#
# Usage: perf/scripts/instructions-per-call.sh MODE PROTO SIDE [N]
#   MODE  off (metrics and tracing off) | metrics | tracing (sampled at 0.1,
#         exported to a dead collector) | on (both)
#   PROTO http (/v1.0/invoke/.../hits, no header echo) | grpc (proxy mode,
#         skiff.echo.v1.Echo/Unary)
#   SIDE  caller | callee
# MTLS=1 runs both sidecars with mTLS (the embedded CA), as a production
# pair does; without it the hop between them is plaintext. PAYLOAD=1024
# sends that many bytes per call (HTTP then calls /mirror, which answers
# them back, as the bench does; without it, /hits).
# SKIFF_BIN_DIR=DIR measures the skiffd in DIR (A/B against another build).
# CG_OUT=FILE keeps the callgrind profile (for callgrind_annotate).
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=$1; proto=$2; which=$3; n=${4:-2000}
B=${SKIFF_BIN_DIR:-target/release}
[ -x $B/skiffd ] && [ -x $B/skiff-perf ] || cargo build --release --workspace
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
w=$(mktemp -d); pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$w"' EXIT
export SKIFF_HOME=$w/home SKIFF_WORKER_THREADS=1
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cat > "$w/t.yaml" <<Y
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata: {name: t}
spec:
  metrics: {enabled: $([ "$mode" = tracing ] && echo false || echo true)}
  tracing:
    samplingRate: "0.1"
    otel: {endpointAddress: "127.0.0.1:1", protocol: http}
Y
tls=""; [ -n "${MTLS:-}" ] && tls="--enable-mtls"
case $mode in
  off) extra="--enable-metrics=false";;
  metrics) extra="";;
  tracing|on) extra="--config $w/t.yaml";;
  *) echo "mode: off|metrics|tracing|on" >&2; exit 2;;
esac
eh=$(port); eg=$(port); h1=$(port); h2=$(port); g2=$(port)
$B/skiff-echo --grpc-port "$eg" --http-port "$eh" 2>/dev/null & pids+=($!)
if [ "$proto" = grpc ]; then app="--app-port $eg --app-protocol grpc"; else app="--app-port $eh"; fi
vg="valgrind --tool=callgrind --callgrind-out-file=$w/cg.out -q"
callee_vg=""; caller_vg=""
if [ "$which" = callee ]; then callee_vg=$vg; else caller_vg=$vg; fi
$callee_vg $B/skiffd --app-id rpc $app --dapr-http-port "$h1" --dapr-grpc-port "$(port)" --metrics-port 0 --log-level error $extra $tls & pids+=($!)
$caller_vg $B/skiffd --app-id caller --dapr-http-port "$h2" --dapr-grpc-port "$g2" --metrics-port 0 --log-level error $extra $tls & pids+=($!)
for _ in $(seq 300); do
  curl -fs -o /dev/null "http://127.0.0.1:$h1/v1.0/healthz" && curl -fs -o /dev/null "http://127.0.0.1:$h2/v1.0/healthz" && break
  sleep 0.2
done
body=""; hpath=hits
if [ -n "${PAYLOAD:-}" ]; then body="--payload-size $PAYLOAD"; hpath=mirror; fi
run() {
  if [ "$proto" = grpc ]; then
    $B/skiff-perf load "http://127.0.0.1:$g2/skiff.echo.v1.Echo/Unary" --proto grpc -H dapr-app-id:rpc $body \
      --concurrency 1 --requests "$1" --warmup 0s --duration 300s --quiet >/dev/null 2>&1
  else
    $B/skiff-perf load "http://127.0.0.1:$h2/v1.0/invoke/rpc/method/$hpath" $body \
      --concurrency 1 --requests "$1" --warmup 0s --duration 300s --quiet >/dev/null 2>&1
  fi
}
run 200
callgrind_control -z >/dev/null 2>&1
run "$n"
callgrind_control -d >/dev/null 2>&1
sleep 0.5
f=$(ls -t "$w"/cg.out* | head -1)
ir=$(grep -m1 "^summary:\|^totals:" "$f" | awk '{print $2}')
echo "$mode $proto $which${tls:+ mtls}${PAYLOAD:+ payload $PAYLOAD}: $((ir / n)) instructions/call"
# CG_OUT=path keeps the profile for callgrind_annotate.
if [ -n "${CG_OUT:-}" ]; then cp "$f" "$CG_OUT"; fi
