#!/usr/bin/env bash
# Skiff demo on embedded defaults: two sidecars — "web" in front of an HTTP
# app and "rpc" in front of a gRPC app — that find each other through the
# local registry (~/.skiff) and call each other, over HTTP and gRPC; then
# "web" saves and reads state through the embedded SQLite state store, and
# "rpc" publishes to web's app through the embedded durable broker.
# Everything runs on 127.0.0.1 and stops when the demo ends.
set -euo pipefail
cd "$(dirname "$0")"

echo "==> building (first time: a few minutes)"
cargo build --quiet -p skiff-dataplane -p skiff-perf
B=target/debug
pids=()
# The sidecars log to files: the demo's expected failure (a call to an app
# that does not exist) logs a warning that is not the demo's output.
logs=$(mktemp -d /tmp/skiff-demo.XXXXXX)
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

for port in 3500 3501 50001 50002 8080 8081; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use (a daprd or an earlier demo?); stop it and run again" >&2; exit 1
  fi
done

wait_ready() { for _ in $(seq 200); do curl -fs -o /dev/null "http://127.0.0.1:$1/v1.0/healthz" && return; sleep 0.05; done; echo "sidecar on $1 did not start:" >&2; tail -n 5 "$logs"/*.log >&2; exit 1; }

echo "==> starting an HTTP app (:8080) and a gRPC app (:8081)"
$B/skiff-echo --http-port 8080 --name http-app --subscribe pubsub/orders 2>/dev/null & pids+=($!)
$B/skiff-echo --grpc-port 8081 --name grpc-app 2>/dev/null & pids+=($!)

# The embedded default state store: SQLite, a file under $SKIFF_HOME,
# nothing to install.
home=${SKIFF_HOME:-$HOME/.skiff}
mkdir -p "$logs/components" "$home"
cat >"$logs/components/statestore.yaml" <<YAML
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.sqlite
  version: v1
  metadata:
  - name: connectionString
    value: "$home/demo-state.db"
YAML
# The embedded durable broker: Skiff's own, one SQLite file under
# $SKIFF_HOME that every sidecar on the machine shares.
cat >"$logs/components/pubsub.yaml" <<YAML
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.skiff.sqlite
  version: v1
  metadata:
  - name: connectionString
    value: "$home/demo-pubsub.db"
YAML

echo "==> starting sidecar 'web' (HTTP 3500, gRPC 50001) and sidecar 'rpc' (HTTP 3501, gRPC 50002)"
echo "    with mTLS between them: each signs its own SPIFFE certificate with the embedded CA in ${SKIFF_HOME:-$HOME/.skiff}/sentry"
echo "    (their logs: $logs)"
$B/skiffd --app-id web --app-port 8080 --enable-mtls --log-level warn --metrics-port 9090 \
  --resources-path "$logs/components" 2>"$logs/web.log" & pids+=($!)
$B/skiffd --app-id rpc --app-port 8081 --app-protocol grpc --enable-mtls \
  --dapr-http-port 3501 --dapr-grpc-port 50002 --metrics-port 9091 --log-level warn \
  --resources-path "$logs/components" 2>"$logs/rpc.log" & pids+=($!)
wait_ready 3500; wait_ready 3501

show() { echo; echo "\$ $*"; "$@"; echo; }

echo; echo "==> HTTP: web's app calls the gRPC app through both sidecars (delivered as AppCallback/OnInvoke)"
show curl -s -X POST "http://127.0.0.1:3500/v1.0/invoke/rpc/method/orders/submit?priority=high" -d '{"item":"kayak"}'

echo "==> HTTP: rpc's side calls the HTTP app; the app sees who called (dapr-caller-app-id)"
show curl -s -D - -o /dev/null "http://127.0.0.1:3501/v1.0/invoke/web/method/hello?lang=en"

echo "==> HTTP, header form: any path with dapr-app-id"
show curl -s -X PUT "http://127.0.0.1:3501/carts/7" -H "dapr-app-id: web" -d "paddle x2"

echo "==> gRPC InvokeService (what SDKs call): web's sidecar → the gRPC app"
show $B/skiff-grpc-call --sidecar http://127.0.0.1:50001 invoke rpc echo "hello over gRPC"

echo "==> gRPC InvokeService to the HTTP app, with an HTTP verb"
show $B/skiff-grpc-call --sidecar http://127.0.0.1:50002 invoke web greet "hi web" --verb POST

echo "==> gRPC proxy mode: a plain gRPC client with dapr-app-id metadata, unary and bidi streaming"
show $B/skiff-grpc-call --sidecar http://127.0.0.1:50001 proxy rpc "streamed"

echo "==> errors come back in Dapr's shape (a call to an app nobody runs; the sidecar logs it as a warning)"
show curl -s "http://127.0.0.1:3500/v1.0/invoke/nobody/method/x"

echo "==> web's metadata"
show curl -s "http://127.0.0.1:3500/v1.0/metadata"

echo "==> Prometheus metrics (Dapr's names): web's invocation counters"
show sh -c "curl -s http://127.0.0.1:9090/metrics | grep -E '^dapr_(runtime_service_invocation_re[qs]_[a-z]+_total|http_server_request_count)'"
echo "==> state: web saves two orders in the embedded SQLite store ($home/demo-state.db)"
show curl -s -w '%{http_code}\n' -X POST "http://127.0.0.1:3500/v1.0/state/statestore" \
  -H 'content-type: application/json' \
  -d '[{"key":"order-1","value":{"item":"kayak","qty":1}},{"key":"order-2","value":{"item":"paddle","qty":2}}]'
echo "==> state: read one back (its ETag in the header), then both in one bulk call"
show curl -s -D - "http://127.0.0.1:3500/v1.0/state/statestore/order-1"
show curl -s -X POST "http://127.0.0.1:3500/v1.0/state/statestore/bulk" -d '{"keys":["order-1","order-2","order-3"]}'
echo "==> state: a transaction, then a query (the state query language)"
show curl -s -w '%{http_code}\n' -X POST "http://127.0.0.1:3500/v1.0/state/statestore/transaction" \
  -d '{"operations":[{"operation":"upsert","request":{"key":"order-3","value":{"item":"life vest","qty":1}}},{"operation":"delete","request":{"key":"order-2"}}]}'
show curl -s -X POST "http://127.0.0.1:3500/v1.0-alpha1/state/statestore/query" \
  -d '{"filter":{"EQ":{"qty":1}},"sort":[{"key":"item"}]}'
echo "==> state calls are in Dapr's component metrics"
show sh -c "curl -s http://127.0.0.1:9090/metrics | grep '^dapr_component_state_count'"
echo "==> pub/sub: web's app subscribes to pubsub/orders (it lists it at /dapr/subscribe)"
for _ in $(seq 100); do
  curl -s http://127.0.0.1:3500/v1.0/metadata | grep -q '"topic":"orders"' && break; sleep 0.05
done
show sh -c "curl -s http://127.0.0.1:3500/v1.0/metadata | grep -o '\"subscriptions\":.*\"PROGRAMMATIC\"}'"
echo "==> pub/sub: rpc's side publishes three orders (CloudEvents built by the sidecar), one of them in a bulk call"
show curl -s -w '%{http_code}\n' -X POST "http://127.0.0.1:3501/v1.0/publish/pubsub/orders" \
  -H 'content-type: application/json' -d '{"order":1,"item":"kayak"}'
show curl -s -w '%{http_code}\n' -X POST "http://127.0.0.1:3501/v1.0-alpha1/publish/bulk/pubsub/orders" \
  -d '[{"entryId":"a","event":{"order":2,"item":"paddle"},"contentType":"application/json"},{"entryId":"b","event":"order 3: a life vest","contentType":"text/plain"}]'
for _ in $(seq 100); do
  [ "$(curl -s http://127.0.0.1:8080/events | grep -o '"topic"' | wc -l)" -ge 3 ] && break; sleep 0.05
done
echo "==> pub/sub: what web's app received (each acknowledged only after the app answered)"
show curl -s http://127.0.0.1:8080/events
show sh -c "curl -s http://127.0.0.1:9090/metrics | grep '^dapr_component_pubsub_ingress_count'"
echo "==> demo done; stopping (sidecar logs kept in $logs)"
