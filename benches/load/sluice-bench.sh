#!/usr/bin/env bash
# PROXY_CMD wrapper for ../shared/bench/run.sh: renders the harness's own Envoy bootstrap
# (conf/envoy.yaml.in, the exact file Envoy runs) and execs sluice on it with one worker.
# Usage: sluice-bench.sh BENCH_DIR RUN_DIR PORT ADMIN_PORT STABLE_PORT CANARY_PORT
set -euo pipefail
bench=$1 run=$2 port=$3 admin=$4 stable=$5 canary=$6
here=$(cd "$(dirname "$0")/../.." && pwd)
cfg="$run/sluice.yaml"
sed -e "s/@PORT@/$port/g" -e "s/@ADMIN_PORT@/$admin/g" \
    -e "s/@STABLE_PORT@/$stable/g" -e "s/@CANARY_PORT@/$canary/g" \
    "$bench/conf/envoy.yaml.in" > "$cfg"
exec "${SLUICE_BIN:-$here/target/release/sluice}" proxy -c "$cfg" --concurrency 1 -l warn
