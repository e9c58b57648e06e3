#!/usr/bin/env bash
# Where each proxy's CPU per request goes: user space against the kernel, and the system calls it
# makes, under run.sh's HTTP/1.1 load (wrk -c50, one worker pinned to CPU 1, the load generator and
# the nginx upstreams on CPU 0). nginx, HAProxy and Sluice (and Envoy when PROXIES names it) run
# one at a time, ROUNDS times each.
# User and system time come from /proc/PID/stat (clock ticks) over a DURATION-second window; the
# system calls from `perf stat` tracepoints over the same window, when perf is there.
#   benches/load/cpu_split.sh [RUN_DIR]      # RUN_DIR: the rendered configs of a run.sh run
#   ROUNDS=3 DURATION=5 PROXIES="nginx haproxy sluice"   # or "nginx haproxy envoy sluice"
#   LOAD=h2c: h2load -c50 -m1 (run.sh's h2c load) instead of wrk; nginx on its `http2` listener
# Needs what run.sh needs, and linux-perf for the system-call columns. Envoy reads with readv,
# which only the total of system calls counts (its recvfrom column stays 0).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
run=${1:-$(ls -d "$here"/target/bench/*/run 2>/dev/null | tail -1)}
[ -f "$run/sluice.yaml" ] || { echo "no run.sh configs in '$run': run benches/load/run.sh first" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
PROXIES=${PROXIES:-"nginx haproxy sluice"}
LOAD=${LOAD:-h1}
case $LOAD in h1|h2c) ;; *) echo "LOAD is h1 or h2c, not '$LOAD'" >&2; exit 2 ;; esac
sluice=${SLUICE_BIN:-$here/target/release/sluice}
. "$here/benches/load/fixtures.sh"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start_run_upstreams "$run" "$work"
sed -e "s|^pid .*|pid $work/proxy.pid;|" "$run/nginx-proxy.conf" > "$work/nginx-proxy.conf"
sleep 0.5

# proxy -> the pid doing the work (nginx: its worker)
start() {
  case $1 in
    nginx)
      taskset -c 1 nginx -c "$work/nginx-proxy.conf" >/dev/null 2>&1 &
      pids+=($!)
      sleep 0.5
      pgrep -P "$(cat "$work/proxy.pid")" | head -1 ;;
    haproxy) taskset -c 1 haproxy -f "$run/haproxy.cfg" >/dev/null 2>&1 & echo $! ;;
    sluice) taskset -c 1 "$sluice" proxy -c "$run/sluice.yaml" --concurrency 1 -l error >/dev/null 2>&1 & echo $! ;;
    envoy) taskset -c 1 envoy -c "$run/envoy.yaml" --concurrency 1 --disable-hot-restart -l error >/dev/null 2>&1 & echo $! ;;
  esac
}

stop() {
  case $1 in
    nginx) kill "$(cat "$work/proxy.pid")" 2>/dev/null || true ;;
    *) kill "$2" 2>/dev/null || true ;;
  esac
  while kill -0 "$2" 2>/dev/null; do sleep 0.1; done
}

# load SECONDS PORT: run the load on CPU 0 and print how many requests succeeded.
load() {
  if [ "$LOAD" = h2c ]; then
    taskset -c 0 h2load -t1 -c50 -m1 -D "$1" "http://127.0.0.1:$2/" | awk '/^requests:/ {print $8}'
  else
    taskset -c 0 wrk -t1 -c50 -d"$1s" "http://127.0.0.1:$2/" | awk '/requests in/ {print $1}'
  fi
}

# PERF=0: no system-call counts (perf's tracepoints add to the system time they measure).
have_perf=0
[ "${PERF:-1}" = 1 ] && perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1 && have_perf=1
events="raw_syscalls:sys_enter,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait"
tick=$(getconf CLK_TCK)
results="$work/results.tsv"
for round in $(seq "$ROUNDS"); do
  for proxy in $PROXIES; do
    pid=$(start "$proxy")
    sleep 1
    port=$(run_proxy_port "$run" "$proxy" "$LOAD")
    load 2 "$port" >/dev/null
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    if [ "$have_perf" = 1 ]; then
      perf stat -x, -e "$events" -p "$pid" -o "$work/perf.txt" -- sleep "$DURATION" &
      perf_pid=$!
    fi
    n=$(load "$DURATION" "$port")
    [ "$have_perf" = 1 ] && wait "$perf_pid"
    read -r u2 s2 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    calls="- - - - -"
    if [ "$have_perf" = 1 ]; then
      calls=$(awk -F, '/^[0-9]/ {printf "%s ", $1}' "$work/perf.txt")
    fi
    echo -e "$proxy\t$round\t$n\t$((u2 - u1))\t$((s2 - s1))\t$tick\t$calls" >> "$results"
    stop "$proxy" "$pid"
  done
done

python3 - "$results" "$PROXIES" "$LOAD" <<'EOF'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
proxies = sys.argv[2].split()
print(f"µs of CPU per request and system calls per request ({sys.argv[3]}, median of rounds)\n")
print("| proxy | user µs | system µs | total µs | system calls | recvfrom | sendto | writev | epoll_wait |")
print("|---|---|---|---|---|---|---|---|---|")
for p in proxies:
    mine = [r for r in rows if r[0] == p and int(r[2] or 0) > 0]
    if not mine:
        continue
    def med(f):
        return statistics.median(f(r) for r in mine)
    n = lambda r: int(r[2])
    user = med(lambda r: int(r[3]) / int(r[5]) * 1e6 / n(r))
    sys_ = med(lambda r: int(r[4]) / int(r[5]) * 1e6 / n(r))
    tot = med(lambda r: (int(r[3]) + int(r[4])) / int(r[5]) * 1e6 / n(r))
    calls = []
    for i in range(5):
        try:
            calls.append("%.2f" % med(lambda r: int(r[6].split()[i]) / n(r)))
        except (ValueError, IndexError):
            calls.append("-")
    print(f"| {p} | {user:.2f} | {sys_:.2f} | {tot:.2f} | " + " | ".join(calls) + " |")
# Each round runs every proxy once, back to back: the ratio within a round is the steadier figure
# on a host whose speed drifts.
if "sluice" in proxies and len(proxies) > 1:
    others = [p for p in proxies if p != "sluice"]
    total = {(r[0], r[1]): (int(r[3]) + int(r[4])) / int(r[5]) * 1e6 / int(r[2])
             for r in rows if int(r[2] or 0) > 0}
    print("\nSluice's requests per CPU-second ÷ each proxy's, by round (total µs per request)\n")
    print("| round | " + " | ".join(others) + " |")
    print("|---|" + "---|" * len(others))
    for rnd in sorted({r[1] for r in rows}, key=int):
        mine = total.get(("sluice", rnd))
        cells = [f"{total[(p, rnd)] / mine:.3f}" if mine and (p, rnd) in total else "-" for p in others]
        print(f"| {rnd} | " + " | ".join(cells) + " |")
EOF
