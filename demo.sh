#!/usr/bin/env bash
# Skiff in one command, on embedded defaults and with no Docker: builds,
# runs `skiff init` (the local CA, a Configuration, the embedded SQLite
# state store and durable broker under $SKIFF_HOME, default ~/.skiff), then
# starts the two sample apps with their sidecars from a Dapr-style run file
# (cli/samples/dapr.yaml): `checkout` (HTTP) and `inventory` (gRPC) call
# each other through mTLS between their sidecars, save and read state, and
# publish to each other. checkout prints a summary with the latencies it
# measured. Then `skiff list`, `skiff invoke`, `skiff publish`, and a clean
# stop. Everything runs on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")"

echo "==> building skiff, skiffd and the sample apps (first time: a few minutes)"
# What tests/run builds, so neither rebuilds after the other.
cargo build --quiet --workspace --bins
export PATH="$PWD/target/debug:$PATH"

for port in 7001 7002; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port (a sample app's) is in use; stop what holds it and run again" >&2; exit 1
  fi
done

echo; echo "\$ skiff init"
skiff init

echo; echo "\$ skiff run -f cli/samples      # checkout (HTTP) + inventory (gRPC), each with its sidecar"
log=$(mktemp /tmp/skiff-demo.XXXXXX)
# STAY=1: checkout keeps serving after its summary, for the commands below.
STAY=1 skiff run -f cli/samples >"$log" 2>&1 &
run=$!
tail -n +1 -f "$log" --pid "$run" &
tailer=$!
cleanup() { kill -TERM "$run" 2>/dev/null || true; wait "$run" 2>/dev/null || true; kill "$tailer" 2>/dev/null || true; rm -f "$log"; }
trap cleanup EXIT
for _ in $(seq 600); do
  grep -q "order published → shipment back" "$log" && break
  if ! kill -0 "$run" 2>/dev/null; then echo "skiff run ended early" >&2; exit 1; fi
  sleep 0.1
done
grep -q "order published → shipment back" "$log" || { echo "the samples did not finish" >&2; exit 1; }
sleep 0.3

show() { echo; echo "\$ $*"; "$@"; }
show skiff list
show skiff invoke -a inventory -m reserve -d '{"order":42,"item":"kayak"}'
show skiff publish -i checkout -p pubsub -t orders -d '{"order":43,"item":"paddle"}'
for _ in $(seq 50); do grep -q "order 43 came back" "$log" && break; sleep 0.1; done
show skiff components -a checkout
show skiff stop -f cli/samples
wait "$run" || true
sleep 0.2
echo; echo "==> done: both apps and their sidecars stopped. Next: \`skiff dashboard\` beside a \`skiff run\`, and the README."
