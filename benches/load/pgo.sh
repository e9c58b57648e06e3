#!/usr/bin/env bash
# The profile-guided build of sluice (the `dist` profile: fat LTO, one codegen unit, and LLVM
# profile guidance). An instrumented build serves a training load; LLVM's profile of that run then
# guides the second build: which branches are hot, what to inline, how to lay the code out.
# Training: the harness's header-routing bootstrap (conf/envoy-header.yaml.in: an `x-canary`
# header route before the 80/20 split) over two nginx upstreams: HTTP/1.1 GETs (with and without
# the header, with a browser's head, a new connection each, 1,000 connections, 100 KiB answers),
# 4 KiB POSTs, h2c with one and with ten streams per connection; then the same bootstrap with
# gzip response compression, and behind a TLS listener (kept-alive and new connections). The main
# loads run longest, so that their branch weights lead the profile.
#   benches/load/pgo.sh                 # -> target/pgo/dist/sluice (about 20 min on 2 cores)
#   TRAIN=10 (seconds per training load)
# Needs llvm-profdata of rustc's LLVM major version (rustc -vV; Debian: apt-get install llvm-22),
# wrk, h2load, nginx, openssl and python3.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
bench=${BENCH_DIR:-$here/../shared/bench}
TRAIN=${TRAIN:-10}
llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=$(command -v "llvm-profdata-$llvm" || command -v llvm-profdata || true)
[ -n "$profdata" ] || { echo "llvm-profdata for LLVM $llvm not found (apt-get install llvm-$llvm)" >&2; exit 2; }
. "$here/benches/load/fixtures.sh"
out=$here/target/pgo
raw=$out/raw
scratch_dir

rm -rf "$raw" && mkdir -p "$raw" "$work/tmp"
RUSTFLAGS="-Cprofile-generate=$raw" cargo build --profile dist --bin sluice \
  --manifest-path "$here/Cargo.toml" --target-dir "$out/gen"

read -r port admin stable canary tls_port tls_admin < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
# Upstreams: the harness's nginx, plus a 20 KiB JSON document at /text and 100 KiB at /big.
chmod 755 "$work"
head -c 102400 /dev/urandom > "$work/big"
write_json_text "$work/text"
for u in stable:$stable:v1 canary:$canary:v2; do
  IFS=: read -r name p body <<<"$u"
  sed -e "s|@RUN_DIR@|$work|g" -e "s|@NAME@|upstream-$name|g" -e "s|@PORT@|$p|g" \
    -e "s|@BODY@|$body|g" -e "$(upstream_extra_locations "$work")" \
    "$bench/conf/upstream-nginx.conf.in" > "$work/upstream-$name.conf"
  nginx -p "$work" -e "$work/upstream-$name.error.log" -c "$work/upstream-$name.conf" >/dev/null 2>&1 &
  pids+=($!)
done
# Three configurations: the header-routing bootstrap; the same with gzip response compression;
# the same behind a TLS listener (a throw-away certificate).
sed -e "s|@STABLE_PORT@|$stable|g" -e "s|@CANARY_PORT@|$canary|g" -e "s|@PORT@|$port|g" \
  -e "s|@ADMIN_PORT@|$admin|g" "$bench/conf/envoy-header.yaml.in" > "$work/plain.yaml"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=pgo.local \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
gzip_filter_yaml > "$work/gzip-filter.yaml"
python3 - "$work" "$tls_port" "$tls_admin" <<'PY'
import sys
work, tls_port, tls_admin = sys.argv[1:]
plain = open(f"{work}/plain.yaml").read()
gzip = open(f"{work}/gzip-filter.yaml").read()
open(f"{work}/gzip.yaml", "w").write(plain.replace("          http_filters:\n", "          http_filters:\n" + gzip, 1))
tls = f"""    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {{filename: {work}/cert.pem}}
              private_key: {{filename: {work}/key.pem}}
      filters:
"""
text = plain.replace("    filter_chains:\n    - filters:\n", "    filter_chains:\n" + tls, 1)
text = text.replace("port_value: " + plain.split("port_value: ")[2].split()[0].rstrip("}").strip(), "port_value: " + tls_port, 1)
open(f"{work}/tls.yaml", "w").write(text)
PY
grep -q transport_socket "$work/tls.yaml" || { echo "TLS training config not made" >&2; exit 1; }
printf 'wrk.method = "POST"\nwrk.body = string.rep("x", 4096)\n' > "$work/post.lua"
printf 'wrk.headers["Connection"] = "close"\n' > "$work/close.lua"
write_browser_lua "$work/browser.lua"

# train CONFIG PORT LOAD...: serve CONFIG with the instrumented build under each load in turn.
# A load is "wrk ARGS..." or "h2load ARGS..." against the proxy (the URL is added).
train() {
  local config=$1 scheme=$2 p=$3; shift 3
  "$out/gen/dist/sluice" proxy -c "$config" --concurrency 1 -l error &
  local proxy=$!
  for _ in $(seq 100); do curl -sk -o /dev/null "$scheme://127.0.0.1:$p/" && break; sleep 0.2; done
  if [ "$config" = "$work/gzip.yaml" ] && ! curl -s -o /dev/null -D - -H 'Accept-Encoding: gzip' \
      "$scheme://127.0.0.1:$p/text" | grep -qi '^content-encoding: gzip'; then
    echo "the gzip training configuration does not compress" >&2
    exit 1
  fi
  local load
  for load in "$@"; do
    read -r -a args <<<"$load"
    local path=${args[-1]}
    unset 'args[-1]'
    echo "training: ${args[*]} $scheme://…$path"
    "${args[@]}" "$scheme://127.0.0.1:$p$path" | grep -E 'Requests/sec|Non-2xx|^requests:' || true
  done
  kill -TERM "$proxy"
  wait "$proxy" || true
}
long=$TRAIN short=$((TRAIN / 3 + 1))
# The main loads, longest: their branch weights should dominate the profile.
train "$work/plain.yaml" http "$port" \
  "wrk -t1 -c50 -d${long}s /" \
  "wrk -t1 -c50 -d${short}s -H x-canary:true /" \
  "wrk -t1 -c50 -d${short}s -s $work/post.lua /" \
  "wrk -t1 -c50 -d${short}s -s $work/browser.lua /" \
  "wrk -t1 -c50 -d${short}s -s $work/close.lua /" \
  "wrk -t1 -c1000 -d${short}s /" \
  "wrk -t1 -c50 -d${short}s /big" \
  "h2load -t1 -c50 -m1 -D $long /" \
  "h2load -t1 -c10 -m10 -D $short /"
train "$work/gzip.yaml" http "$port" \
  "wrk -t1 -c50 -d${short}s -H Accept-Encoding:gzip /text"
train "$work/tls.yaml" https "$tls_port" \
  "wrk -t1 -c50 -d${short}s /" \
  "wrk -t1 -c50 -d${short}s -s $work/close.lua /"

"$profdata" merge -o "$out/sluice.profdata" "$raw"
RUSTFLAGS="-Cprofile-use=$out/sluice.profdata" cargo build --profile dist --bin sluice \
  --manifest-path "$here/Cargo.toml" --target-dir "$out"
echo "profile-guided build: $out/dist/sluice"
