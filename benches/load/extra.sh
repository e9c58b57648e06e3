#!/usr/bin/env bash
# Two measurements beside the throughput run (loopback only, bounded, everything stopped at exit):
#  1. config swaps under load: wrk -c50 against sluice while the bootstrap is rewritten and
#     reloaded (SIGHUP) SWAPS times (default 1000), each swap waiting for its reload to apply;
#     reports wrk's errors and non-2xx responses.
#  2. memory with IDLE (default 10000) idle keep-alive client connections, sluice vs Envoy 1.40,
#     both on the same bootstrap with one worker.
# Usage: benches/load/extra.sh   (needs wrk, envoy, python3; raises the open-files limit)
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
SWAPS=${SWAPS:-1000}
IDLE=${IDLE:-10000}
ulimit -n "$(ulimit -Hn)"   # 10,000 connections need about as many descriptors per process
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
bin="$here/target/release/sluice"
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$bin" demo-upstream --listen 127.0.0.1:18481 --name v1 & pids+=($!)
"$bin" demo-upstream --listen 127.0.0.1:18482 --name v2 & pids+=($!)
render() {  # render STABLE_WEIGHT CANARY_WEIGHT LISTEN_PORT ADMIN_PORT
  sed -e "s/port_value: 10000/port_value: $3/" -e "s/port_value: 9901/port_value: $4/" \
      -e "s/port_value: 8081/port_value: 18481/" -e "s/port_value: 8082/port_value: 18482/" \
      -e "s/{ name: stable, weight: 80 }/{ name: stable, weight: $1 }/" \
      -e "s/{ name: canary, weight: 20 }/{ name: canary, weight: $2 }/" "$here/examples/split.yaml"
}
wait_ready() { for _ in $(seq 1 100); do curl -fs "127.0.0.1:$1/ready" >/dev/null 2>&1 && return 0; sleep 0.05; done; return 1; }
reloads() { curl -s "127.0.0.1:$1/stats/prometheus" | awk '/^sluice_config_reload_total/{print $2}'; }

echo "== $SWAPS config swaps under load =="
render 80 20 18480 18490 > "$work/swap.yaml"
taskset -c 1 "$bin" proxy -c "$work/swap.yaml" --concurrency 1 -l error & proxy=$!; pids+=($proxy)
wait_ready 18490
taskset -c 0 timeout 600 wrk -t1 -c50 -d600s http://127.0.0.1:18480/ > "$work/wrk.txt" & wrk=$!
start=$(date +%s.%N)
for i in $(seq 1 "$SWAPS"); do
  if (( i % 2 )); then render 20 80 18480 18490; else render 80 20 18480 18490; fi > "$work/swap.yaml"
  kill -HUP "$proxy"
  for _ in $(seq 1 500); do [[ $(reloads 18490) == "$i" ]] && break; sleep 0.005; done
done
end=$(date +%s.%N)
kill -INT "$wrk"; wait "$wrk" || true
grep -E "requests in|Socket errors|Non-2xx" "$work/wrk.txt" || true
echo "reloads applied: $(reloads 18490) of $SWAPS in $(python3 -c "print(round($end-$start,1))") s; failed: $(curl -s 127.0.0.1:18490/stats/prometheus | awk '/^sluice_config_reload_failed_total/{print $2}')"
grep -q "Socket errors\|Non-2xx" "$work/wrk.txt" && echo "FAILED REQUESTS DURING SWAPS" || echo "zero failed requests"
kill "$proxy"; wait "$proxy" 2>/dev/null || true

echo "== RSS with $IDLE idle keep-alive connections =="
cat > "$work/idle.py" <<'PY'
import asyncio, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
async def one(conns):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"); await w.drain()
    await r.readuntil(b"\r\n\r\n"); await r.read(3)
    conns.append((r, w))
async def main():
    conns = []
    sem = asyncio.Semaphore(500)
    async def guarded():
        async with sem: await one(conns)
    await asyncio.gather(*(guarded() for _ in range(n)))
    print("open", len(conns), flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
PY
rss() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
for system in sluice envoy; do
  render 80 20 18500 18510 > "$work/idle.yaml"
  if [[ $system == sluice ]]; then "$bin" proxy -c "$work/idle.yaml" --concurrency 1 -l error & p=$!
  else envoy -c "$work/idle.yaml" --concurrency 1 --disable-hot-restart -l error & p=$!; fi
  pids+=($p); wait_ready 18510
  idle=$(rss $p)
  python3 "$work/idle.py" 18500 "$IDLE" > "$work/idle.out" & c=$!; pids+=($c)
  for _ in $(seq 1 600); do grep -q open "$work/idle.out" 2>/dev/null && break; sleep 0.1; done
  sleep 1
  echo "$system: idle RSS $((idle/1024)) MiB, with $(cat "$work/idle.out") connections: $(( $(rss $p) / 1024 )) MiB"
  kill "$c" "$p"; wait "$c" "$p" 2>/dev/null || true
done
