#!/usr/bin/env bash
# What policy costs on the call path: one caller sidecar calls two callees
# over mTLS, "plain" (no policy) and "policed" (a 20-rule ACL on the callee,
# a retry + timeout policy on the caller), in interleaved rounds; prints the
# median latencies of each. Loopback only; bounded runs.
#
# Usage: perf/scripts/policy-overhead.sh [seconds per run] [rounds]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-5}
rounds=${2:-3}
B=target/release
[ -x $B/skiffd ] && [ -x $B/skiff-perf ] || cargo build --release --workspace
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT

# A 20-rule ACL: 19 operations that never match, then the one that does.
{
  echo "apiVersion: dapr.io/v1alpha1"
  echo "kind: Configuration"
  echo "metadata: {name: acl20}"
  echo "spec:"
  echo "  accessControl:"
  echo "    defaultAction: deny"
  echo "    policies:"
  echo "      - appId: caller"
  echo "        namespace: default"
  echo "        defaultAction: deny"
  echo "        operations:"
  for i in $(seq 1 19); do
    echo "          - {name: /service$i/*/items/**, httpVerb: [GET, PUT], action: allow}"
  done
  echo "          - {name: /echo, httpVerb: [POST], action: allow}"
} > "$work/acl.yaml"
mkdir "$work/res"
cat > "$work/res/resiliency.yaml" <<'YAML'
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: policed}
spec:
  policies:
    timeouts: {general: 5s}
    retries:
      transient: {policy: constant, duration: 10ms, maxRetries: 3, matching: {httpStatusCodes: "500-599"}}
  targets:
    apps:
      policed: {timeout: general, retry: transient}
YAML

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export SKIFF_HOME=$work/home SKIFF_WORKER_THREADS=1
ep=$(port)
$B/skiff-echo --http-port "$ep" 2>/dev/null & pids+=($!)
sidecar() { local h; h=$(port); $B/skiffd --app-id "$1" --dapr-http-port "$h" --dapr-grpc-port "$(port)" --metrics-port 0 \
  --enable-mtls --log-level warn "${@:2}" >/dev/null 2>"$work/$1.log" & pids+=($!); echo "$h"; }
# Not in $(...): the sidecar must not hold the substitution's pipe.
sidecar plain --app-port "$ep" >/dev/null
sidecar policed --app-port "$ep" --config "$work/acl.yaml" >/dev/null
sidecar caller --resources-path "$work/res" > "$work/caller.port"
cp=$(cat "$work/caller.port")
sleep 1

run() { # path mode...
  $B/skiff-perf load "http://127.0.0.1:$cp/v1.0/invoke/$1/method/echo" --duration "${secs}s" --warmup 1s \
    --payload-size 1024 --json --quiet "${@:2}"
}
for r in $(seq 1 "$rounds"); do
  for mode in serial rate; do
    for path in plain policed; do
      if [ $mode = serial ]; then args=(--concurrency 1); else args=(--rate 1000 --connections 16); fi
      run $path "${args[@]}" > "$work/$mode-$path-$r.json"
    done
  done
done
python3 - "$work" "$rounds" <<'PY'
import json, sys, statistics
work, rounds = sys.argv[1], int(sys.argv[2])
print("| scenario | path | p50 µs | p90 µs | p99 µs | errors |")
print("|---|---|---|---|---|---|")
for mode in ("serial", "rate"):
    for path in ("plain", "policed"):
        rs = [json.load(open(f"{work}/{mode}-{path}-{r}.json")) for r in range(1, rounds + 1)]
        med = lambda k: statistics.median(r["latency"][k] for r in rs)
        errs = sum(sum(r["errors"].values()) for r in rs)
        name = "1 in flight" if mode == "serial" else "1000 req/s"
        print(f"| {name} | {path} | {med('p50_us'):.0f} | {med('p90_us'):.0f} | {med('p99_us'):.0f} | {errs} |")
PY
