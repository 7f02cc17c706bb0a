#!/usr/bin/env bash
# What an httpPipeline costs on the call path: one callee sidecar in front
# of skiff-echo, and two callers in front of nothing — "plain" (no
# pipeline) and "bearer" (a middleware.http.bearer pipeline, its JWKS
# cached) — called in interleaved rounds with the same RS256 token, so the
# only difference between them is the check. Prints the median latencies
# of each path and the added p50 of every round (the spread).
# Loopback only; bounded runs.
#
# Usage: perf/scripts/middleware-overhead.sh [seconds per run] [rounds]
# SKIFF_BIN_DIR=DIR measures the binaries in DIR. CALLGRIND=N instead runs
# both callers under callgrind and prints the instructions each executes
# per call over N serial calls (after 200 uncounted): a figure that does
# not swing with the machine's load, where the added microseconds drown in
# loopback noise.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-5}
rounds=${2:-5}
B=${SKIFF_BIN_DIR:-target/release}
[ -x $B/skiffd ] && [ -x $B/skiff-perf ] || cargo build --release -p skiff-dataplane -p skiff-perf --bins
command -v openssl >/dev/null || { echo "needs openssl (the CLI) to make the test key" >&2; exit 1; }
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# An RSA key, its JWKS, and an RS256 token valid for a day (what OpenID
# providers issue), made here and thrown away with $work.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/key.pem" 2>/dev/null
jp=$(port)
mkdir -p "$work/www" "$work/res"
python3 - "$work" "$jp" <<'PY'
import base64, json, re, subprocess, sys, time
work, port = sys.argv[1], sys.argv[2]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
text = subprocess.run(["openssl", "rsa", "-in", f"{work}/key.pem", "-noout", "-text"],
                      capture_output=True, text=True, check=True).stdout
n = bytes.fromhex(re.sub(r"[\s:]", "", re.search(r"modulus:\n((?:\s+[0-9a-f:]+\n)+)", text).group(1))).lstrip(b"\0")
e = int(re.search(r"publicExponent: (\d+)", text).group(1)).to_bytes(3, "big")
json.dump({"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "n": b64(n), "e": b64(e)}]},
          open(f"{work}/www/jwks.json", "w"))
issuer = f"http://127.0.0.1:{port}"
claims = {"iss": issuer, "aud": "bench", "sub": "perf", "iat": int(time.time()), "exp": int(time.time()) + 86400}
signed = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "k1"}).encode()) + "." + b64(json.dumps(claims).encode())
open(f"{work}/signed", "w").write(signed)
sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", f"{work}/key.pem", f"{work}/signed"],
                     capture_output=True, check=True).stdout
open(f"{work}/token", "w").write(signed + "." + b64(sig))
open(f"{work}/res/bearer.yaml", "w").write(f"""apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: oidc}}
spec:
  type: middleware.http.bearer
  version: v1
  metadata:
  - {{name: issuer, value: "{issuer}"}}
  - {{name: audience, value: bench}}
  - {{name: jwksURL, value: "{issuer}/jwks.json"}}
""")
open(f"{work}/pipeline.yaml", "w").write("""apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata: {name: pipeline}
spec:
  httpPipeline:
    handlers:
    - {name: oidc, type: middleware.http.bearer}
""")
PY
(cd "$work/www" && exec python3 -m http.server "$jp" --bind 127.0.0.1 >/dev/null 2>&1) & pids+=($!)
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$jp/jwks.json" && break; sleep 0.1; done

export SKIFF_HOME=$work/home SKIFF_WORKER_THREADS=1
ep=$(port)
$B/skiff-echo --http-port "$ep" 2>/dev/null & pids+=($!)
vg=""; [ -n "${CALLGRIND:-}" ] && vg="valgrind --tool=callgrind -q --callgrind-out-file=$work/cg.%p"
sidecar() { local h=$2 v=""; [ "$1" != rpc ] && v=$vg; $v $B/skiffd --app-id "$1" --dapr-http-port "$h" --dapr-grpc-port "$(port)" --metrics-port 0 \
  --log-level warn "${@:3}" >/dev/null 2>"$work/$1.log" & pids+=($!); }
sidecar rpc "$(port)" --app-port "$ep"
pp=$(port); bp=$(port)
sidecar plain "$pp" --resources-path "$work/www"
sidecar bearer "$bp" --resources-path "$work/res" --config "$work/pipeline.yaml"
for p in $pp $bp; do
  for _ in $(seq 300); do curl -fs -o /dev/null "http://127.0.0.1:$p/v1.0/healthz" && break; sleep 0.2; done
done
token=$(cat "$work/token")
# The token must pass (and its absence must not): a benchmark of refusals
# would measure nothing.
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" "http://127.0.0.1:$bp/v1.0/invoke/rpc/method/mirror")" = 200 ]
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$bp/v1.0/invoke/rpc/method/mirror")" = 401 ]

if [ -n "${CALLGRIND:-}" ]; then
  serial() { $B/skiff-perf load "http://127.0.0.1:$1/v1.0/invoke/rpc/method/mirror" --payload-size 1024 \
    --concurrency 1 --requests "$2" --warmup 0s --duration 300s --quiet -H "authorization:Bearer $token" >/dev/null 2>&1; }
  serial $pp 200; serial $bp 200
  callgrind_control -z >/dev/null 2>&1
  serial $pp "$CALLGRIND"; serial $bp "$CALLGRIND"
  callgrind_control -d >/dev/null 2>&1
  sleep 0.5
  # The dumps are cg.<pid>.<n>; the pid names the sidecar.
  for f in "$work"/cg.*.*; do
    pid=$(basename "$f" | cut -d. -f2)
    app=$(tr '\0' ' ' < "/proc/$pid/cmdline" | sed -n 's/.*--app-id \([a-z]*\).*/\1/p')
    ir=$(grep -h -m1 "^summary:\|^totals:" "$f" | awk '{print $2}' || true)
    echo "$app: $((ir / CALLGRIND)) instructions/call"
  done | sort
  exit 0
fi
for r in $(seq 1 "$rounds"); do
  for path in plain bearer; do
    p=$pp; [ $path = bearer ] && p=$bp
    $B/skiff-perf load "http://127.0.0.1:$p/v1.0/invoke/rpc/method/mirror" --duration "${secs}s" --warmup 1s \
      --payload-size 1024 --concurrency 1 --json --quiet -H "authorization:Bearer $token" > "$work/$path-$r.json"
  done
done
python3 - "$work" "$rounds" <<'PY'
import json, sys, statistics
work, rounds = sys.argv[1], int(sys.argv[2])
rs = {p: [json.load(open(f"{work}/{p}-{r}.json")) for r in range(1, rounds + 1)] for p in ("plain", "bearer")}
print("| path (1 in flight, 1 KiB) | p50 µs | p90 µs | p99 µs | req/s | errors |")
print("|---|---|---|---|---|---|")
for p, runs in rs.items():
    med = lambda k: statistics.median(r["latency"][k] for r in runs)
    rps = statistics.median(r["achieved_rps"] for r in runs)
    errs = sum(sum(r["errors"].values()) for r in runs)
    print(f"| {p} | {med('p50_us'):.0f} | {med('p90_us'):.0f} | {med('p99_us'):.0f} | {rps:.0f} | {errs} |")
added = [b["latency"]["p50_us"] - a["latency"]["p50_us"] for a, b in zip(rs["plain"], rs["bearer"])]
print(f"\nbearer adds p50 {statistics.median(added):.1f} µs (median of {rounds} rounds; per round: "
      + ", ".join(f"{x:.0f}" for x in added) + ")")
PY
