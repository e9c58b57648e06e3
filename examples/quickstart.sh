#!/usr/bin/env bash
# Quickstart: the control plane on examples/mesh/config (Istio resources: a `web` service with
# v1 and v2, an 80/20 VirtualService), a gateway `sluice proxy` that takes its configuration
# from it over ADS, and two demo upstreams. It curls the split, moves the weights by editing
# the YAML (as GitOps would), curls again, and shows proxy-status.
# Everything runs on 127.0.0.1 (8080 gateway, 8081/8082 upstreams, 15010 xDS, 15080 API,
# 9901 admin) and stops at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/sluice
work=$(mktemp -d)
cp -r examples/mesh/config "$work/config"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
split() {
  for _ in $(seq 1 "$1"); do curl -s 127.0.0.1:8080/; done | sort | uniq -c
}
"$bin" demo-upstream --listen 127.0.0.1:8081 --name v1 & pids+=($!)
"$bin" demo-upstream --listen 127.0.0.1:8082 --name v2 & pids+=($!)
"$bin" control --config-dir "$work/config" -l warn & pids+=($!)
"$bin" proxy -c examples/mesh/gateway.yaml --concurrency 1 -l warn & pids+=($!)
for _ in $(seq 1 100); do curl -fs 127.0.0.1:8080/ >/dev/null 2>&1 && break; sleep 0.1; done
echo "1000 requests to http://127.0.0.1:8080/ (VirtualService: 80 % stable v1, 20 % canary v2):"
split 1000
echo "with lane: test-v2:"
for _ in $(seq 1 5); do curl -s -H "lane: test-v2" 127.0.0.1:8080/; done | sort | uniq -c
echo
echo "editing $work/config/web.yaml: weights 80/20 -> 50/50"
sed -i 's/weight: 80}/weight: 50}/; s/weight: 20}/weight: 50}/' "$work/config/web.yaml"
sleep 1
echo "1000 requests after the edit:"
split 1000
echo
"$bin" proxy-status
echo
echo "metrics: curl -s 127.0.0.1:9901/stats/prometheus | grep istio_requests_total"
curl -s 127.0.0.1:9901/stats/prometheus | grep '^istio_requests_total' || true
