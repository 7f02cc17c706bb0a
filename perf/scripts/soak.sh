#!/usr/bin/env bash
# The soak under faults (issue 21) on release builds: SOAK_SECS of
# invocation, state and pub/sub at SOAK_RATE requests a second through mTLS
# sidecars with four-second certificates, while every 20 s the callee app is
# killed and started again, Redis is restarted and the subscriber's sidecar
# is SIGTERMed and started again. Prints failed calls by cause, messages
# published / delivered / lost, and per-second RSS / descriptor / thread
# samples of the caller and callee sidecars; fails on a lost message, a
# failure no fault explains, or growth after the warm-up.
#
# Usage: perf/scripts/soak.sh   (SOAK_SECS=600 SOAK_RATE=1000; NO_BUILD=1
# to skip the build). tests/run runs the same test for one 20 s cycle at
# 150 requests a second on debug builds.
set -euo pipefail
cd "$(dirname "$0")/../.."
export SOAK_SECS=${SOAK_SECS:-600}
export SOAK_RATE=${SOAK_RATE:-1000}
[ -n "${NO_BUILD:-}" ] || cargo build --release --workspace --bins
# The soak profile (.config/nextest.toml) lets the test run 20 minutes.
exec cargo nextest run --release --profile soak -p skiff-tests --test soak --no-capture
