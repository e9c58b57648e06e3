#!/usr/bin/env bash
# TLS beside Envoy 1.40: the same bootstrap (TLS listener, 80/20 split to two demo upstreams) in
# Sluice and in Envoy, one worker each pinned to CPU 1, wrk pinned to CPU 0, loopback only.
#   HTTPS req/s     : wrk -t1 -c50 over kept-alive TLS connections
#   handshakes/s    : wrk -t1 -c50 with "Connection: close" (one full TLS handshake per request)
# Usage: benches/load/tls.sh   (DURATION=10 ROUNDS=3 SLUICE_BIN=…; needs wrk, envoy, openssl)
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
if [ -z "${SLUICE_BIN:-}" ]; then
  cargo build --release --quiet --manifest-path "$here/Cargo.toml"
fi
bin=${SLUICE_BIN:-$here/target/release/sluice}
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench.local \
  -addext subjectAltName=DNS:bench.local -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
taskset -c 0 "$bin" demo-upstream --listen 127.0.0.1:18581 --name v1 & pids+=($!)
taskset -c 0 "$bin" demo-upstream --listen 127.0.0.1:18582 --name v2 & pids+=($!)
render() {  # PORT ADMIN
  python3 - "$1" "$2" "$work" > "$work/tls-$1.yaml" <<'PY'
import sys
port, admin, work = sys.argv[1:]
print(f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: tls
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [http/1.1]
            tls_certificates:
            - certificate_chain: {{filename: {work}/cert.pem}}
              private_key: {{filename: {work}/key.pem}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: tls
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{weighted_clusters: {{clusters: [{{name: stable, weight: 80}}, {{name: canary, weight: 20}}]}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - {{name: stable, type: STATIC, load_assignment: {{cluster_name: stable, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 18581}}}}}}}}]}}]}}}}
  - {{name: canary, type: STATIC, load_assignment: {{cluster_name: canary, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 18582}}}}}}}}]}}]}}}}
""")
PY
}
render 18591 18601; render 18592 18602
taskset -c 1 "$bin" proxy -c "$work/tls-18591.yaml" --concurrency 1 -l error & pids+=($!)
taskset -c 1 envoy -c "$work/tls-18592.yaml" --concurrency 1 --disable-hot-restart -l error & pids+=($!)
for a in 18601 18602; do for _ in $(seq 1 100); do curl -fs "127.0.0.1:$a/ready" >/dev/null 2>&1 && break; sleep 0.1; done; done
curl -fsk --resolve bench.local:18591:127.0.0.1 https://bench.local:18591/ >/dev/null
curl -fsk --resolve bench.local:18592:127.0.0.1 https://bench.local:18592/ >/dev/null
run() {  # PORT [extra wrk args]
  local port=$1; shift
  taskset -c 0 wrk -t1 -c50 -d"${DURATION}s" "$@" "https://127.0.0.1:$port/" | awk '/Requests\/sec/{print $2}'
}
printf "%-7s %-6s %14s %14s\n" round system "https req/s" "handshakes/s"
for r in $(seq 1 "$ROUNDS"); do
  for s in sluice:18591 envoy:18592; do
    name=${s%%:*}; port=${s##*:}
    keep=$(run "$port"); close=$(run "$port" -H "Connection: close")
    printf "%-7s %-6s %14s %14s\n" "$r" "$name" "$keep" "$close"
  done
done
