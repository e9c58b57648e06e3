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
# Each window also reads CPU 1's steal time from /proc/stat (time the hypervisor ran something
# else on that vCPU): rounds where it passes STEAL_MAX % (default 5) are marked, and the ratios by
# round are summed up over the unmarked rounds too, each with a confidence interval for its median.
# Needs what run.sh needs, and linux-perf for the system-call columns. Envoy reads with readv,
# which only the total of system calls counts (its recvfrom column stays 0).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
. "$here/benches/load/fixtures.sh"
run=$(find_run_dir "$here" "${1:-}")
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
PROXIES=${PROXIES:-"nginx haproxy sluice"}
LOAD=${LOAD:-h1}
case $LOAD in h1|h2c) ;; *) echo "LOAD is h1 or h2c, not '$LOAD'" >&2; exit 2 ;; esac
sluice=${SLUICE_BIN:-$here/target/release/sluice}
scratch_dir

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
# CPU 1's steal and total clock ticks so far.
cpu1_ticks() { awk '$1 == "cpu1" {t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t}' /proc/stat; }
results="$work/results.tsv"
for round in $(seq "$ROUNDS"); do
  for proxy in $PROXIES; do
    pid=$(start "$proxy")
    sleep 1
    port=$(run_proxy_port "$run" "$proxy" "$LOAD")
    load 2 "$port" >/dev/null
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    read -r st1 all1 < <(cpu1_ticks)
    if [ "$have_perf" = 1 ]; then
      perf stat -x, -e "$events" -p "$pid" -o "$work/perf.txt" -- sleep "$DURATION" &
      perf_pid=$!
    fi
    n=$(load "$DURATION" "$port")
    [ "$have_perf" = 1 ] && wait "$perf_pid"
    read -r u2 s2 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    read -r st2 all2 < <(cpu1_ticks)
    calls="- - - - -"
    if [ "$have_perf" = 1 ]; then
      calls=$(awk -F, '/^[0-9]/ {printf "%s ", $1}' "$work/perf.txt")
    fi
    steal=$(python3 -c "print(f'{100 * ($st2 - $st1) / max(1, $all2 - $all1):.1f}')")
    echo -e "$proxy\t$round\t$n\t$((u2 - u1))\t$((s2 - s1))\t$tick\t$calls\t$steal" >> "$results"
    stop "$proxy" "$pid"
  done
done

python3 - "$results" "$PROXIES" "$LOAD" "${STEAL_MAX:-5}" <<'EOF'
import sys, statistics
from math import comb
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
    steal_max = float(sys.argv[4])
    # The most CPU 1 steal in any of a round's windows.
    steal = {}
    for r in rows:
        steal[r[1]] = max(steal.get(r[1], 0.0), float(r[7]) if len(r) > 7 else 0.0)
    print("\nSluice's requests per CPU-second ÷ each proxy's, by round (total µs per request)\n")
    print("| round | " + " | ".join(others) + " | CPU 1 steal % |")
    print("|---|" + "---|" * (len(others) + 1))
    ratios = {p: [] for p in others}
    quiet = {p: [] for p in others}
    for rnd in sorted({r[1] for r in rows}, key=int):
        mine = total.get(("sluice", rnd))
        cells = []
        for p in others:
            if mine and (p, rnd) in total:
                x = total[(p, rnd)] / mine
                ratios[p].append(x)
                if steal[rnd] <= steal_max:
                    quiet[p].append(x)
                cells.append(f"{x:.3f}")
            else:
                cells.append("-")
        mark = "" if steal[rnd] <= steal_max else f" (over {steal_max:g})"
        print(f"| {rnd} | " + " | ".join(cells) + f" | {steal[rnd]:.1f}{mark} |")

    def median_interval(xs):
        # Distribution-free interval for the median: the k-th smallest and k-th largest values,
        # with k as large as keeps the binomial confidence at 90 % or more (none under 5 rounds).
        xs = sorted(xs)
        n = len(xs)
        best = None
        for k in range(1, n // 2 + 1):
            conf = 1 - 2 * sum(comb(n, i) for i in range(k)) / 2 ** n
            if conf >= 0.90:
                best = (xs[k - 1], xs[n - k], conf)
        return best

    print("\nMedian of the ratios by round, with an interval for it\n")
    print("| proxy | rounds | median | interval | rounds under the steal limit | median | interval |")
    print("|---|---|---|---|---|---|---|")
    for p in others:
        cells = []
        for xs in (ratios[p], quiet[p]):
            if not xs:
                cells += ["0", "-", "-"]
                continue
            iv = median_interval(xs)
            ivs = f"{iv[0]:.3f}–{iv[1]:.3f} ({iv[2]:.0%})" if iv else "-"
            cells += [str(len(xs)), f"{statistics.median(xs):.3f}", ivs]
        print(f"| {p} | " + " | ".join(cells) + " |")
EOF
