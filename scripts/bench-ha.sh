#!/usr/bin/env bash
# Capacity planning for Redis deployments (see docs/benchmarks.md, "Running many replicas"):
#  1. what `--redis-min-replicas 1` costs a write: `cedar-pdp entities import` of N generated users
#     (3 groups each) into a primary that has one replica, with and without waiting for it, in
#     interleaved rounds;
#  2. Redis memory per stored entity (used_memory before and after the import): the first round
#     stores new entities (with their audit records), later rounds rewrite them (audit records only);
#  3. how many cold reads one Redis serves: redis-benchmark's MGET of 5 stored entities (one level of
#     a decision's entity graph) from 50 clients, Redis pinned to one core.
#
# Usage: scripts/bench-ha.sh            (N=20000 ROUNDS=3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-bench-out/ha}
rm -rf "$OUT" && mkdir -p "$OUT"
cargo build --release --quiet --bins
BIN=target/release/cedar-pdp

# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
users "$N" >"$OUT/users.jsonl"

primary=$(free_port); replica=$(free_port)
taskset -c 1 redis-server --port "$primary" --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT" --dbfilename primary.rdb >"$OUT/primary.log" 2>&1 & PIDS+=($!)
taskset -c 1 redis-server --port "$replica" --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT" --dbfilename replica.rdb --replicaof 127.0.0.1 "$primary" \
  >"$OUT/replica.log" 2>&1 & PIDS+=($!)
until redis-cli -p "$primary" info replication 2>/dev/null | grep -q 'state=online'; do sleep 0.05; done

serve() { # port data-dir extra-args… → pid, once serving
  local port=$1 data=$2; shift 2
  taskset -c 0 "$BIN" serve --http-listen off --listen "127.0.0.1:$port" --decision-log false --log warn --data-dir "$data" \
    --redis-url "redis://127.0.0.1:$primary/" "$@" >"$OUT/serve-$port.log" 2>&1 &
  local pid=$!
  until "$BIN" status --addr "http://127.0.0.1:$port" --data-dir "$data" >/dev/null 2>&1; do sleep 0.1; done
  echo "$pid"
}
used() { redis-cli -p "$primary" info memory | awk -F: '/^used_memory:/ { print $2 + 0 }'; }

port0=$(free_port); port1=$(free_port)
pid=$(serve "$port0" "$OUT/d0" --redis-prefix wait0:); PIDS+=("$pid")
pid=$(serve "$port1" "$OUT/d1" --redis-prefix wait1: --redis-min-replicas 1); PIDS+=("$pid")
for round in $(seq 1 "$ROUNDS"); do
  for variant in 0 1; do
    port=$([ "$variant" = 0 ] && echo "$port0" || echo "$port1")
    before=$(used)
    start=$(date +%s.%N)
    "$BIN" entities import "$OUT/users.jsonl" --addr "http://127.0.0.1:$port" --data-dir "$OUT/d$variant" >/dev/null
    end=$(date +%s.%N)
    after=$(used)
    python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); n=int(sys.argv[4]); print(f'round {sys.argv[5]}, min-replicas {sys.argv[3]}: {n} entities in {s:.2f} s = {n/s:,.0f} entities/s; Redis memory +{(int(sys.argv[7])-int(sys.argv[6]))/n:.0f} B per entity')" \
      "$start" "$end" "$variant" "$N" "$round" "$before" "$after"
  done
done
# Cold reads: MGET of five stored entities, as one level of a decision's graph asks for them.
keys=$(for i in 1 2 3 4 5; do printf 'wait0:e:User::"user%07d" ' $((i * 7)); done)
# shellcheck disable=SC2086
taskset -c 0 redis-benchmark -p "$primary" -c 50 -n 300000 -q MGET $keys | tr '\r' '\n' | tail -1
