#!/usr/bin/env bash
# The scim2-tester compliance checker (PyPI) against the real server on free loopback ports, with the
# example policies and an in-memory store. Installs scim2-tester when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import scim2_tester, httpx2' 2>/dev/null || python3 -m pip install -q 'scim2-tester[httpx2]'
cargo build --locked -q
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
grpc=$(free_port)
http=$(free_port)
data=$(mktemp -d)
token="compliance-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
CEDAR_PDP_SCIM_TOKENS="checker=$token" target/debug/cedar-pdp serve --policies policies --store memory \
  --data-dir "$data" --listen "127.0.0.1:$grpc" --http-listen "127.0.0.1:$http" --decision-log false \
  >"$data/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 200); do
  curl -fsS -o /dev/null -H "Authorization: Bearer $token" "http://127.0.0.1:$http/scim/v2/ServiceProviderConfig" && break
  kill -0 $server 2>/dev/null || { cat "$data/server.log"; exit 1; }
  sleep 0.05
done
python3 scripts/scim-compliance.py "http://127.0.0.1:$http/scim/v2" "$token"
