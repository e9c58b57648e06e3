#!/usr/bin/env bash
# Latency by request: each proxy alone under run.sh's h2c load (h2load -c50 -m1, pinned like
# run.sh: the proxy on CPU 1, h2load and the nginx upstreams on CPU 0), with h2load's per-request
# log. Prints p50/p90/p99/p99.9/max per run, and how the requests slower than that run's p99
# spread over its 100 ms windows: a proxy that stalls now and then shows a few full windows,
# a disturbed host shows bursts in every proxy's runs.
#   benches/load/latency.sh [RUN_DIR]     # RUN_DIR: the rendered configs of a run.sh run
#   ROUNDS=3 DURATION=5 PROXIES="haproxy sluice nginx envoy" SLUICE_BIN=…
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
. "$here/benches/load/fixtures.sh"
run=$(find_run_dir "$here" "${1:-}")
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
PROXIES=${PROXIES:-"haproxy sluice"}
sluice=${SLUICE_BIN:-$here/target/release/sluice}
scratch_dir
start_run_upstreams "$run" "$work"
sed -e "s|^pid .*|pid $work/proxy.pid;|" "$run/nginx-proxy.conf" > "$work/nginx-proxy.conf"   # nginx runs in the foreground
sleep 0.5

for round in $(seq "$ROUNDS"); do
  for proxy in $PROXIES; do
    case $proxy in
      nginx) taskset -c 1 nginx -c "$work/nginx-proxy.conf" >/dev/null 2>&1 & pids+=($!) ;;
      haproxy) taskset -c 1 haproxy -f "$run/haproxy.cfg" >/dev/null 2>&1 & pids+=($!) ;;
      sluice) taskset -c 1 "$sluice" proxy -c "$run/sluice.yaml" --concurrency 1 -l error >/dev/null 2>&1 & pids+=($!) ;;
      envoy) taskset -c 1 envoy -c "$run/envoy.yaml" --concurrency 1 --disable-hot-restart -l error >/dev/null 2>&1 & pids+=($!) ;;
      *) echo "unknown proxy '$proxy'" >&2; exit 2 ;;
    esac
    sleep 1
    port=$(run_proxy_port "$run" "$proxy" h2c)
    taskset -c 0 h2load -t1 -c50 -m1 -D 2 "http://127.0.0.1:$port/" >/dev/null
    log="$work/$proxy.$round.log"
    rate=$(taskset -c 0 h2load -t1 -c50 -m1 -D "$DURATION" --log-file "$log" "http://127.0.0.1:$port/" |
      awk '/^finished in/ {print $4}')
    kill "${pids[-1]}" 2>/dev/null || true
    wait "${pids[-1]}" 2>/dev/null || true
    unset 'pids[-1]'
    python3 - "$log" "$proxy" "$round" "$rate" <<'PY'
import sys
from collections import Counter
# h2load --log-file: start time (µs since the epoch), status, duration (µs) per request.
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
lat = sorted(int(r[2]) / 1000 for r in rows)
n = len(lat)
q = lambda p: lat[min(n - 1, int(p * n))]
t0 = min(int(r[0]) for r in rows)
p99 = q(0.99)
windows = Counter((int(r[0]) - t0) // 100_000 for r in rows if int(r[2]) / 1000 > p99)
busiest = sum(c for _, c in windows.most_common(5))
print(f"{sys.argv[2]:8s} round {sys.argv[3]}  {sys.argv[4]} req/s  p50 {q(.5):.2f}  p90 {q(.9):.2f}"
      f"  p99 {p99:.2f}  p99.9 {q(.999):.2f}  max {lat[-1]:.2f} ms;  over p99: {n - int(0.99 * n)}"
      f" requests in {len(windows)} of {(int(max(int(r[0]) for r in rows)) - t0) // 100_000 + 1}"
      f" windows of 100 ms, {busiest} in the busiest 5")
PY
  done
done
