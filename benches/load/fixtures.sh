# What the load scripts share (sourced by shapes.sh, pgo.sh, cpu_split.sh, instructions.sh and
# latency.sh): finding a run's configs, a scratch directory cleared at exit with the processes
# started, starting a run's upstreams and finding its proxies' ports, what the upstreams serve besides the harness's answer, the
# compressor filter the gzip loads add, and a browser's request head.

# The configs a run.sh run rendered: RUN_DIR if given, else the newest under target/bench. Prints
# the directory, or says what is missing and fails.
find_run_dir() { # HERE [RUN_DIR]
  local run=${2:-$(ls -d "$1"/target/bench/*/run 2>/dev/null | tail -1)}
  [ -f "$run/sluice.yaml" ] || { echo "no run.sh configs in '$run': run benches/load/run.sh first" >&2; return 2; }
  echo "$run"
}

# Sets `work` to a new scratch directory and `pids` to an empty array for the processes the
# caller starts; at exit each of them is stopped and the directory removed.
scratch_dir() {
  work=$(mktemp -d)
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
}

# Start the two nginx upstreams of a run.sh run (its rendered configs in RUN) on CPU 0, with their
# pid files in WORK; their pids join the caller's `pids` array.
start_run_upstreams() { # RUN WORK
  local u
  for u in stable canary; do
    sed -e "s|^pid .*|pid $2/$u.pid;|" "$1/upstream-$u.conf" > "$2/upstream-$u.conf"
    taskset -c 0 nginx -c "$2/upstream-$u.conf" >/dev/null 2>&1 &
    pids+=($!)
  done
}

# The port a proxy of a run.sh run (its rendered configs in RUN) listens on: nginx's `http2`
# listener when LOAD is h2 or h2c; any Sluice variant (sluice-pgo, ...) has sluice.yaml.
run_proxy_port() { # RUN PROXY [LOAD]
  case $2 in
    nginx)
      case ${3:-h1} in h2|h2c) local kind=http2 ;; *) local kind=backlog ;; esac
      grep -o "listen 127.0.0.1:[0-9]* $kind" "$1/nginx-proxy.conf" | head -1 | sed 's/.*:\([0-9]*\).*/\1/' ;;
    haproxy) grep -o 'bind 127.0.0.1:[0-9]*' "$1/haproxy.cfg" | head -1 | cut -d: -f2 ;;
    sluice*) grep -o 'port_value: [0-9]*' "$1/sluice.yaml" | sed -n 2p | cut -d' ' -f2 ;;
    *) grep -o 'port_value: [0-9]*' "$1/$2.yaml" | sed -n 2p | cut -d' ' -f2 ;;
  esac
}

# A 20 KiB JSON document that compresses about as well as real API responses do (about 5:1).
write_json_text() { # FILE
  python3 - "$1" <<'PY'
import json, random, sys
random.seed(7)
words = "alpha beta gamma delta stable canary weight route cluster header ready".split()
items, size = [], 0
while size < 20480:
    items.append({"id": len(items), "name": " ".join(random.choices(words, k=3)),
                  "weight": random.randint(0, 100), "ready": random.random() < 0.8,
                  "token": "%016x" % random.getrandbits(64)})
    size = len(json.dumps(items))
open(sys.argv[1], "w").write(json.dumps(items)[:20480])
PY
}

# The sed expression that gives a harness nginx upstream config /big and /text from DIR (and any
# body size), before its catch-all location.
upstream_extra_locations() { # DIR
  echo "s|location / {|client_max_body_size 0;\n        location = /big { alias $1/big; default_type application/octet-stream; }\n        location = /text { alias $1/text; default_type application/json; }\n        location / {|"
}

# The compressor filter of the gzip loads: JSON responses, gzip level 1 (HAProxy's default level),
# as http_filters entries of the harness bootstrap's indentation.
gzip_filter_yaml() {
  cat <<'YAML'
          - name: envoy.filters.http.compressor
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              response_direction_config:
                common_config:
                  content_type: [application/json]
              compressor_library:
                name: json
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip
                  compression_level: BEST_SPEED
YAML
}

# A wrk script sending a browser's request head: 14 headers, 1.3 KiB, a 600-byte cookie.
write_browser_lua() { # FILE
  cat > "$1" <<'LUA'
wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
wrk.headers["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
wrk.headers["Accept-Language"] = "en-GB,en;q=0.9,fr;q=0.8"
wrk.headers["Accept-Encoding"] = "gzip, deflate, br, zstd"
wrk.headers["Referer"] = "https://shop.example.com/catalogue/items?page=3&sort=price"
wrk.headers["Cookie"] = "session=" .. string.rep("a", 300) .. "; prefs=" .. string.rep("b", 280)
wrk.headers["Sec-Fetch-Dest"] = "document"
wrk.headers["Sec-Fetch-Mode"] = "navigate"
wrk.headers["Sec-Fetch-Site"] = "same-origin"
wrk.headers["Sec-Fetch-User"] = "?1"
wrk.headers["Upgrade-Insecure-Requests"] = "1"
wrk.headers["Cache-Control"] = "max-age=0"
LUA
}
