#!/usr/bin/env bash
# Cross-checks skiff-perf against h2load on the same target (the echo app,
# h2c, serial, then 10 streams on one connection): mean latency and
# throughput should agree within 20%. Interleaved, 3 rounds, medians.
#
# Usage: perf/scripts/cross-check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 1; }
cargo build --release --quiet -p skiff-perf
B=target/release
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
$B/skiff-echo --http-port "$port" 2>/dev/null & echo_pid=$!
trap 'kill $echo_pid' EXIT
sleep 0.3
url="http://127.0.0.1:$port/echo"
head -c 1024 /dev/zero > /tmp/skiff-xcheck.bin
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
to_us() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub("us","",v); print v+0} else if (v ~ /ms$/) {sub("ms","",v); print v*1000} else {sub("s","",v); print v*1000000} }'; }
for m in 1 10; do
  : > /tmp/xc.h2l; : > /tmp/xc.sp
  for r in 1 2 3; do
    out=$(h2load -n 20000 -c 1 -m $m -d /tmp/skiff-xcheck.bin "$url")
    echo "$(to_us "$(awk '/time for request:/ {print $6}' <<<"$out")") $(awk '/finished in/ {print $4}' <<<"$out")" >> /tmp/xc.h2l
    j=$($B/skiff-perf load "$url" --proto h2c --concurrency $m --connections 1 --payload-size 1024 --duration 2s --warmup 0.2s --json)
    echo "$(jq .latency.mean_us <<<"$j") $(jq .achieved_rps <<<"$j")" >> /tmp/xc.sp
  done
  hm=$(cut -d' ' -f1 /tmp/xc.h2l | median); hr=$(cut -d' ' -f2 /tmp/xc.h2l | median)
  sm=$(cut -d' ' -f1 /tmp/xc.sp | median); sr=$(cut -d' ' -f2 /tmp/xc.sp | median)
  awk -v m=$m -v hm="$hm" -v sm="$sm" -v hr="$hr" -v sr="$sr" 'BEGIN{
    printf "| %d in flight | h2load mean %.0f µs, %.0f req/s | skiff-perf mean %.0f µs, %.0f req/s | latency ratio %.2f, throughput ratio %.2f |\n", m, hm, hr, sm, sr, sm/hm, sr/hr }'
done
