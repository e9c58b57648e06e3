#!/usr/bin/env bash
# Quickstart: two demo upstreams (v1, v2), `sluice proxy` on examples/split.yaml (80/20 split,
# `x-canary: true` pinned to v2), then 1,000 requests with curl and the split they saw.
# Everything runs on 127.0.0.1 (ports 8081, 8082, 10000 and admin 9901) and stops at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/sluice
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
"$bin" demo-upstream --listen 127.0.0.1:8081 --name v1 & pids+=($!)
"$bin" demo-upstream --listen 127.0.0.1:8082 --name v2 & pids+=($!)
"$bin" proxy -c examples/split.yaml --concurrency 1 -l warn & pids+=($!)
for _ in $(seq 1 50); do curl -fs 127.0.0.1:9901/ready >/dev/null 2>&1 && break; sleep 0.1; done
echo "1000 requests to http://127.0.0.1:10000/ (80 % v1, 20 % v2 configured):"
for _ in $(seq 1 1000); do curl -s 127.0.0.1:10000/; done | sort | uniq -c
echo "with x-canary: true:"
for _ in $(seq 1 5); do curl -s -H 'x-canary: true' 127.0.0.1:10000/; done | sort | uniq -c
echo "metrics: curl -s 127.0.0.1:9901/stats/prometheus | grep istio_requests_total"
curl -s 127.0.0.1:9901/stats/prometheus | grep '^istio_requests_total' || true
