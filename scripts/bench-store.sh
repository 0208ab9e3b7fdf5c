#!/usr/bin/env bash
# Provisioning at scale (see docs/benchmarks.md): `cedar-pdp entities import` of N generated users
# (name, suspended, 3 groups each: a typical directory user) into a server on the embedded store and
# into one on Redis; import throughput, the embedded database's size on disk and the server's RSS.
#
# Usage: scripts/bench-store.sh              (N="100000" by default)
#        N="100000 1000000" REDIS=0 scripts/bench-store.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
REDIS=${REDIS:-1}
OUT=${OUT:-bench-out/store}
rm -rf "$OUT" && mkdir -p "$OUT"
cargo build --release --quiet --bins
BIN=target/release/cedar-pdp

# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

# The CLI finds the token the server generated in the data directory it is given.
serve() { # port data-dir extra-args… → pid, once serving
  local port=$1 data=$2; shift 2
  "$BIN" serve --http-listen off --listen "127.0.0.1:$port" --decision-log false --log warn --data-dir "$data" "$@" >"$OUT/serve-$port.log" 2>&1 &
  local pid=$!
  until "$BIN" status --addr "http://127.0.0.1:$port" --data-dir "$data" >/dev/null 2>&1; do sleep 0.1; done
  echo "$pid"
}

rss_mib() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

import() { # label port n data-dir
  local start end
  start=$(date +%s.%N)
  "$BIN" entities import "$OUT/users-$3.jsonl" --addr "http://127.0.0.1:$2" --data-dir "$4" >"$OUT/import-$1-$3.txt"
  end=$(date +%s.%N)
  python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); print(f'{sys.argv[3]}: {int(sys.argv[4])} entities in {s:.1f} s = {int(sys.argv[4])/s:,.0f} entities/s')" \
    "$start" "$end" "$1" "$3"
}

for n in $N; do
  users "$n" >"$OUT/users-$n.jsonl"
  port=$(free_port)
  pid=$(serve "$port" "$OUT/data-$n"); PIDS+=("$pid")
  import embedded "$port" "$n" "$OUT/data-$n"
  echo "embedded, $n entities: $(du -sb "$OUT/data-$n" | cut -f1 | awk '{printf "%.0f MiB", $1/1048576}') on disk, server RSS $(rss_mib "$pid") MiB"
  # A restart opens (and integrity-checks) the database: how long until it serves again.
  kill "$pid"; wait "$pid" 2>/dev/null || true
  start=$(date +%s.%N); pid=$(serve "$port" "$OUT/data-$n"); PIDS+=("$pid"); end=$(date +%s.%N)
  python3 -c "import sys; print(f'embedded, {sys.argv[3]} entities: restart to serving in {float(sys.argv[2])-float(sys.argv[1]):.2f} s, RSS {sys.argv[4]} MiB')" "$start" "$end" "$n" "$(rss_mib "$pid")"
  kill "$pid"
  if [ "$REDIS" = 1 ]; then
    rport=$(free_port); port=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >"$OUT/redis.log" 2>&1 & PIDS+=($!)
    until redis-cli -p "$rport" ping >/dev/null 2>&1; do sleep 0.05; done
    pid=$(serve "$port" "$OUT/redis-data-$n" --redis-url "redis://127.0.0.1:$rport/"); PIDS+=("$pid")
    import redis "$port" "$n" "$OUT/redis-data-$n"
    echo "redis, $n entities: Redis used_memory $(redis-cli -p "$rport" info memory | awk -F: '/^used_memory:/ { printf "%.0f MiB", $2/1048576 }')"
    redis-cli -p "$rport" shutdown nosave >/dev/null 2>&1 || true
    kill "$pid"
  fi
done
