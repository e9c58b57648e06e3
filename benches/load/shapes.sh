#!/usr/bin/env bash
# CPU per request under load shapes that run.sh does not cover: request bodies (4 KiB and 1 MiB),
# browser-sized request heads, a new connection per request, 1,000 connections, 100 KiB responses,
# gzip-compressed 20 KiB JSON responses, an access log line per request written to a file, and
# h2c multiplexed, uploading and downloading. Sluice, HAProxy and
# Envoy run one at a time, alternated, each on one worker pinned to CPU 1, with the load generator
# and the nginx upstreams on CPU 0; a proxy's CPU time (user + system, from /proc/PID/stat) is read
# before and after a 5 s run and divided by the requests served. Lower is better.
#   benches/load/shapes.sh [RUN_DIR]   # RUN_DIR: the rendered configs of a run.sh run (its
#                                      # OUT_DIR/run); default: the newest under target/bench
#   ROUNDS=2 DURATION=5 SHAPES="get post close c1000 big h2 h2m10 h2m100" PROXIES="sluice haproxy envoy"
#   SLUICE_BIN=… (default target/release/sluice); PROXIES="sluice sluice-base" with
#   SLUICE_BASE_BIN=… compares two Sluice builds
#   (more shapes: hdrs upload h2big h2post gzip alog)
# Needs what run.sh needs (wrk, h2load, nginx, haproxy, envoy) and a release build.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
. "$here/benches/load/fixtures.sh"
run=$(find_run_dir "$here" "${1:-}")
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
SHAPES=${SHAPES:-"get post close c1000 big h2 h2m10 h2m100"}
PROXIES=${PROXIES:-"sluice haproxy envoy"}
sluice=${SLUICE_BIN:-$here/target/release/sluice}
# A second Sluice build to compare with, alternated like the others: PROXIES="sluice sluice-base".
sluice_base=${SLUICE_BASE_BIN:-$here/target/release/sluice}
scratch_dir
chmod 755 "$work" # nginx workers (an unprivileged user) read /big from here

# Upstreams: the harness's nginx configs, plus a 100 KiB file at /big.
head -c 102400 /dev/urandom > "$work/big"
printf 'x%.0s' $(seq 4096) > "$work/body4k"
printf 'wrk.method = "POST"\nwrk.body = string.rep("x", 4096)\n' > "$work/post.lua"
printf 'wrk.headers["Connection"] = "close"\n' > "$work/close.lua"
head -c 65536 /dev/zero | tr '\0' x > "$work/body64k"
printf 'wrk.method = "POST"\nwrk.body = string.rep("x", 1048576)\n' > "$work/upload.lua"
write_browser_lua "$work/hdrs.lua"
write_json_text "$work/text"
gzip_filter_yaml > "$work/gzip-filter.yaml"
# The gzip shape's proxies: each compresses JSON with gzip level 1, HAProxy's default level.
python3 - "$run" "$work" <<'PY'
import sys
run, work = sys.argv[1:]
filt = open(f"{work}/gzip-filter.yaml").read()
for name in ("sluice", "envoy"):
    text = open(f"{run}/{name}.yaml").read()
    text = text.replace("          http_filters:\n", "          http_filters:\n" + filt, 1)
    open(f"{work}/{name}-gz.yaml", "w").write(text)
cfg = open(f"{run}/haproxy.cfg").read()
cfg = cfg.replace("backend be_split\n", "backend be_split\n    compression algo gzip\n    compression type application/json\n", 1)
open(f"{work}/haproxy-gz.cfg", "w").write(cfg)
# The alog shape's proxies: one access log line per request in Envoy's default format, to a file
# (HAProxy: its HTTP log format, to its standard output, which goes to a file).
for name in ("sluice", "envoy"):
    text = open(f"{run}/{name}.yaml").read()
    log = ("          access_log:\n"
           "          - name: envoy.access_loggers.file\n"
           "            typed_config:\n"
           '              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n'
           f"              path: {work}/{name}-access.log\n")
    text = text.replace("          http_filters:\n", log + "          http_filters:\n", 1)
    open(f"{work}/{name}-log.yaml", "w").write(text)
cfg = cfg.replace("defaults\n", "defaults\n    log stdout format raw local0\n    option httplog\n", 1)
open(f"{work}/haproxy-log.cfg", "w").write(cfg)
PY
for u in stable canary; do
  sed -e "$(upstream_extra_locations "$work")" -e "s|^pid .*|pid $work/$u.pid;|" "$run/upstream-$u.conf" > "$work/upstream-$u.conf"
  taskset -c 0 nginx -c "$work/upstream-$u.conf" >/dev/null 2>&1 &
  pids+=($!)
done
sleep 0.5

start() { # proxy shape -> pid of the proxy itself (taskset execs it)
  local cmd dir=$run gz="" out=/dev/null
  if [ "$2" = gzip ]; then dir=$work gz=-gz; fi
  if [ "$2" = alog ]; then dir=$work gz=-log out=$work/$1-stdout.log; fi
  case $1 in
    sluice) cmd=("$sluice" proxy -c "$dir/sluice$gz.yaml" --concurrency 1 -l error) ;;
    sluice-base) cmd=("$sluice_base" proxy -c "$dir/sluice$gz.yaml" --concurrency 1 -l error) ;;
    haproxy) cmd=(haproxy -f "$dir/haproxy$gz.cfg") ;;
    envoy) cmd=(envoy -c "$dir/envoy$gz.yaml" --concurrency 1 --disable-hot-restart -l error) ;;
  esac
  taskset -c 1 "${cmd[@]}" >"$out" 2>/dev/null &
  echo $!
}

load() { # shape port seconds -> requests served
  local url=http://127.0.0.1:$2 d=$3
  if [ "$1" = gzip ] && ! curl -s -m 5 -o /dev/null -D - -H "Accept-Encoding: gzip" "$url/text" \
      | grep -qi '^content-encoding: gzip'; then
    echo "gzip on port $2: the response is not compressed, run not counted" >&2
    echo 0
    return
  fi
  case $1 in
    get) taskset -c 0 wrk -t1 -c50 -d${d}s "$url/" ;;
    post) taskset -c 0 wrk -t1 -c50 -d${d}s -s "$work/post.lua" "$url/" ;;
    close) taskset -c 0 wrk -t1 -c50 -d${d}s -s "$work/close.lua" "$url/" ;;
    c1000) taskset -c 0 wrk -t1 -c1000 -d${d}s "$url/" ;;
    big) taskset -c 0 wrk -t1 -c50 -d${d}s "$url/big" ;;
    gzip) taskset -c 0 wrk -t1 -c50 -d${d}s -H "Accept-Encoding: gzip" "$url/text" ;;
    alog) taskset -c 0 wrk -t1 -c50 -d${d}s "$url/" ;;
    hdrs) taskset -c 0 wrk -t1 -c50 -d${d}s -s "$work/hdrs.lua" "$url/" ;;
    upload) taskset -c 0 wrk -t1 -c10 -d${d}s -s "$work/upload.lua" "$url/" ;;
    h2big) taskset -c 0 h2load -t1 -c50 -m1 -D "$d" "$url/big" ;;
    h2post) taskset -c 0 h2load -t1 -c50 -m1 -D "$d" -d "$work/body64k" "$url/" ;;
    h2) taskset -c 0 h2load -t1 -c50 -m1 -D "$d" "$url/" ;;
    h2m10) taskset -c 0 h2load -t1 -c50 -m10 -D "$d" "$url/" ;;
    # 10 x 100: 1,000 streams in flight, within the default circuit breakers (1,024 requests);
    # 50 x 100 overflows them, and Envoy and Sluice answer the excess 503 (UO).
    h2m100) taskset -c 0 h2load -t1 -c10 -m100 -D "$d" "$url/" ;;
  esac 2>/dev/null > "$work/load.out"
  # Only a run where every response was a 2xx counts.
  local h2_done h2_ok
  h2_done=$(awk '/^requests:/ {print $6}' "$work/load.out")
  h2_ok=$(awk '/^status codes:/ {print $3}' "$work/load.out")
  if grep -q 'Non-2xx' "$work/load.out" || [ "$h2_done" != "$h2_ok" ]; then
    echo "$1 on port $2: responses other than 2xx, run not counted:" >&2
    grep -E 'Non-2xx|^requests:|status codes' "$work/load.out" >&2
    echo 0
    return
  fi
  awk '/requests in/ {print $1} /^requests:/ {print $2}' "$work/load.out"
}

describe() {
  case $1 in
    get) echo "GET, keep-alive, 50 connections (run.sh's load)" ;;
    post) echo "POST 4 KiB body, keep-alive, 50 connections" ;;
    close) echo "GET, new connection per request (Connection: close), 50 at once" ;;
    c1000) echo "GET, keep-alive, 1,000 connections" ;;
    big) echo "GET of a 100 KiB response, keep-alive, 50 connections" ;;
    gzip) echo "GET of a 20 KiB JSON response compressed with gzip level 1, 50 connections" ;;
    alog) echo "GET, keep-alive, 50 connections, an access log line per request to a file" ;;
    hdrs) echo "GET with a browser's request head (14 headers, 1.3 KiB), 50 connections" ;;
    upload) echo "POST 1 MiB body, keep-alive, 10 connections" ;;
    h2big) echo "h2c GET of a 100 KiB response, 50 connections x 1 stream" ;;
    h2post) echo "h2c POST 64 KiB body, 50 connections x 1 stream" ;;
    h2) echo "h2c, 50 connections x 1 stream (run.sh's h2c load)" ;;
    h2m10) echo "h2c, 50 connections x 10 concurrent streams" ;;
    h2m100) echo "h2c, 10 connections x 100 concurrent streams" ;;
  esac
}

results="$work/results.tsv"
for shape in $SHAPES; do
  for round in $(seq "$ROUNDS"); do
    for proxy in $PROXIES; do
      port=$(run_proxy_port "$run" "$proxy")
      pid=$(start "$proxy" "$shape")
      pids+=("$pid")
      sleep 1.5
      load "$shape" "$port" 2 >/dev/null || true
      read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
      n=$(load "$shape" "$port" "$DURATION")
      read -r u2 s2 < <(awk '{print $14, $15}' "/proc/$pid/stat")
      kill "$pid"
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
      tick=$(getconf CLK_TCK)
      echo -e "$shape\t$proxy\t$round\t$n\t$(( (u2 - u1) + (s2 - s1) ))\t$tick" >> "$results"
    done
  done
done

python3 - "$results" "$SHAPES" "$PROXIES" <<'EOF'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
shapes, proxies = sys.argv[2].split(), sys.argv[3].split()
cpu = {}
for shape, proxy, _round, n, ticks, tck in rows:
    if int(n or 0) > 0:
        cpu.setdefault((shape, proxy), []).append(int(ticks) / int(tck) * 1e6 / int(n))
print("CPU µs per request (median of rounds; lower is better)\n")
base = "sluice-base" in proxies
print("| load | " + " | ".join(proxies) + " | Sluice ÷ HAProxy | Sluice ÷ Envoy |"
      + (" Sluice ÷ sluice-base |" if base else ""))
print("|---" * (len(proxies) + 3 + base) + "|")
for s in shapes:
    med = {p: statistics.median(cpu[(s, p)]) for p in proxies if (s, p) in cpu}
    cells = [f"{med[p]:.1f}" if p in med else "-" for p in proxies]
    ratio = lambda a, b: f"{med[a] / med[b]:.2f}" if a in med and b in med else "-"
    print(f"| {s} | " + " | ".join(cells) + f" | {ratio('sluice', 'haproxy')} | {ratio('sluice', 'envoy')} |"
          + (f" {ratio('sluice', 'sluice-base')} |" if base else ""))
EOF
for s in $SHAPES; do echo "  $s: $(describe "$s")"; done
