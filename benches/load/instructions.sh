#!/usr/bin/env bash
# User-space instructions per request, counted by callgrind: a figure that does not move with the
# machine's load or steal time, for comparing builds and proxies where wall-clock runs are noisy.
# Kernel work (the loopback TCP stack, about 70 % of the CPU per request) is not counted.
# Each proxy runs under valgrind; after a warm-up the counters are zeroed, a fixed load runs, and
# the dump is divided by the requests served.
#   benches/load/instructions.sh [RUN_DIR]   # RUN_DIR: the rendered configs of a run.sh run
#   SHAPES="h1 h2" PROXIES="sluice haproxy nginx" SLUICE_BIN=target/release/sluice
#   KEEP=DIR keeps the callgrind files there, for `callgrind_annotate --inclusive=yes FILE`
# nginx runs as one process (`master_process off`), so its worker is the process counted.
# Needs valgrind, wrk, h2load, nginx, haproxy, and a release build.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
. "$here/benches/load/fixtures.sh"
run=$(find_run_dir "$here" "${1:-}")
SHAPES=${SHAPES:-"h1 h2"}
PROXIES=${PROXIES:-"sluice haproxy"}
sluice=${SLUICE_BIN:-$here/target/release/sluice}
scratch_dir

start_run_upstreams "$run" "$work"
sleep 0.5

# shape port requests -> requests served (10 connections, one request at a time on each)
load() {
  case $1 in
    h1) wrk -t1 -c10 -d"$3"s "http://127.0.0.1:$2/" | awk '/requests in/ {print $1}' ;;
    h2) h2load -t1 -c10 -m1 -n "$3" "http://127.0.0.1:$2/" | awk '/^requests:/ {print $8}' ;;
  esac
}

printf '| load | %s |\n|---|%s\n' "$(echo $PROXIES | sed 's/ / | /g')" "$(for _ in $PROXIES; do printf -- '---|'; done)"
for shape in $SHAPES; do
  row="| $shape |"
  for proxy in $PROXIES; do
    case $proxy in
      sluice) cmd=("$sluice" proxy -c "$run/sluice.yaml" --concurrency 1 -l error) ;;
      haproxy) cmd=(haproxy -f "$run/haproxy.cfg") ;;
      nginx)
        sed -e "s|^pid .*|pid $work/nginx-proxy.pid;|" "$run/nginx-proxy.conf" > "$work/nginx-proxy.conf"
        cmd=(nginx -c "$work/nginx-proxy.conf" -g 'master_process off;') ;;
    esac
    out="$work/cg.$proxy.$shape"
    valgrind --tool=callgrind --callgrind-out-file="$out.%p" "${cmd[@]}" >"$work/$proxy.log" 2>&1 &
    vpid=$!
    pids+=("$vpid")
    port=$(run_proxy_port "$run" "$proxy" "$shape")
    for _ in $(seq 100); do
      case $shape in
        h1) curl -s -o /dev/null "http://127.0.0.1:$port/" && break ;;
        h2) curl -s -o /dev/null --http2-prior-knowledge "http://127.0.0.1:$port/" && break ;;
      esac
      sleep 0.2
    done
    case $shape in h1) load h1 "$port" 2 >/dev/null ;; h2) load h2 "$port" 2000 >/dev/null ;; esac
    callgrind_control -z "$vpid" >/dev/null 2>&1
    case $shape in h1) n=$(load h1 "$port" 10) ;; h2) n=$(load h2 "$port" 20000) ;; esac
    callgrind_control -d "$vpid" >/dev/null 2>&1
    kill "$vpid"
    wait "$vpid" 2>/dev/null || true
    ir=$(awk '/^summary:/ {print $2}' "$out".*.1)
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$out".*.1 "$KEEP/$proxy.$shape.callgrind"; fi
    row="$row $(python3 -c "print(f'{$ir / $n:,.0f}')") |"
  done
  echo "$row"
done
