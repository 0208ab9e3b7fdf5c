#!/usr/bin/env bash
# AuthZEN evaluation over HTTP against the gRPC Check, the same question to the same server, side by
# side (see docs/benchmarks.md). The server is pinned to core 1, h2load to core 0; targets alternate
# round by round: gRPC Check (h2), AuthZEN over HTTP/1.1 keep-alive, AuthZEN over h2 (prior knowledge).
#
# Usage: scripts/bench-authzen.sh   (DURATION=10 ROUNDS=3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-bench-out/authzen}
command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 1; }
rm -rf "$OUT" && mkdir -p "$OUT"
cargo build --release --quiet --bins --examples
BIN=target/release/cedar-pdp
CLIENT=target/release/examples/bench_client
"$CLIENT" body check "$OUT/check.bin"
# The same question as the gRPC body: bob views design-doc (allowed).
printf '%s' '{"subject":{"type":"User","id":"bob"},"action":{"name":"view"},"resource":{"type":"Document","id":"design-doc"}}' \
  >"$OUT/evaluation.json"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
taskset -c 1 "$BIN" serve --listen 127.0.0.1:50192 --http-listen 127.0.0.1:50193 --decision-log false \
  --data-dir "$OUT/data" >"$OUT/server.out" 2>&1 & PIDS+=($!)
deadline=$((SECONDS + 30))
until curl -s -d @"$OUT/evaluation.json" -H 'content-type: application/json' \
  http://127.0.0.1:50193/access/v1/evaluation | grep -q '"decision":true'; do
  [ $SECONDS -lt $deadline ] || { echo "the server did not answer an evaluation with true" >&2; cat "$OUT/server.out" >&2; exit 1; }
  sleep 0.2
done
"$CLIENT" verify check http://127.0.0.1:50192 >/dev/null

rps() { awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$1"; }
ok_only() { grep -q '0 failed, 0 errored' "$1" && grep -Eq 'status codes: [0-9]+ 2xx, 0 3xx, 0 4xx, 0 5xx' "$1" || { cat "$1" >&2; exit 1; }; }
for round in $(seq 1 "$ROUNDS"); do
  taskset -c 0 h2load -t1 -c16 -m100 -D "$DURATION" --warm-up-time=2 -d "$OUT/check.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    http://127.0.0.1:50192/cedar_pdp.v1.AuthorizationService/Check >"$OUT/grpc.$round.txt"
  taskset -c 0 h2load -t1 --h1 -c64 -D "$DURATION" --warm-up-time=2 -d "$OUT/evaluation.json" \
    -H 'content-type: application/json' http://127.0.0.1:50193/access/v1/evaluation >"$OUT/h1.$round.txt"
  taskset -c 0 h2load -t1 -c16 -m100 -D "$DURATION" --warm-up-time=2 -d "$OUT/evaluation.json" \
    -H 'content-type: application/json' http://127.0.0.1:50193/access/v1/evaluation >"$OUT/h2.$round.txt"
  for t in grpc h1 h2; do ok_only "$OUT/$t.$round.txt"; done
  echo "round $round: gRPC Check $(rps "$OUT/grpc.$round.txt") req/s, AuthZEN HTTP/1.1 $(rps "$OUT/h1.$round.txt") req/s, AuthZEN h2 $(rps "$OUT/h2.$round.txt") req/s"
done
