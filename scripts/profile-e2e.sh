#!/usr/bin/env bash
# Where the server's time goes under load: a DWARF call-graph profile of one target of
# scripts/bench-e2e.sh, broken down per request by scripts/profile_breakdown.py (docs/benchmarks.md).
#
# Usage: scripts/profile-e2e.sh TARGET        TARGET: check | check-log | check-default | ext-authz | ext-authz-jwt
#        BIN=/path/to/cedar-pdp scripts/profile-e2e.sh check   (another build, e.g. before a change)
# The server runs on core 1, h2load (-c16 -m100) on core 0; perf records the server for 8 s of a 14 s
# run. Output: bench-out/profile-TARGET.{data,txt}.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:?target}
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
command -v perf >/dev/null || { echo "perf missing: apt-get install -y linux-perf" >&2; exit 1; }
[ -n "${BIN:-}" ] || cargo build --release --quiet --bins --examples
BIN=${BIN:-target/release/cedar-pdp}
CLIENT=target/release/examples/bench_client
PORT=50181
args=(serve --http-listen off --listen 127.0.0.1:$PORT --data-dir "$OUT/profile-data-$TARGET")
case "$TARGET" in
  check) kind=check; rpc=/cedar_pdp.v1.AuthorizationService/Check; args+=(--decision-log false) ;;
  check-log) kind=check; rpc=/cedar_pdp.v1.AuthorizationService/Check; args=(--log-format json "${args[@]}") ;;
  check-default) kind=check; rpc=/cedar_pdp.v1.AuthorizationService/Check ;;
  ext-authz|ext-authz-jwt) kind=${TARGET//-/_}; rpc=/envoy.service.auth.v3.Authorization/Check
    args+=(--decision-log false --policies tests/fixtures/mesh) ;;
  *) echo "unknown target $TARGET" >&2; exit 2 ;;
esac
"$CLIENT" body "$kind" "$OUT/$kind.bin"
taskset -c 1 "$BIN" "${args[@]}" >"$OUT/profile-$TARGET.log" 2>&1 & PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
deadline=$((SECONDS + 30))
until "$CLIENT" verify "$kind" http://127.0.0.1:$PORT >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || { echo "the server did not answer" >&2; exit 1; }
  sleep 0.2
done
taskset -c 0 h2load -t1 -c16 -m100 -D 14 -d "$OUT/$kind.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
  "http://127.0.0.1:$PORT$rpc" >"$OUT/profile-$TARGET.h2load" & LOAD=$!
sleep 3  # h2load's ramp-up, then 8 s recorded while the load is steady
perf record -q --call-graph dwarf,16384 -F 999 -p $PID -o "$OUT/profile-$TARGET.data" -- sleep 8 2>/dev/null
wait $LOAD
rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$OUT/profile-$TARGET.h2load")
perf script -i "$OUT/profile-$TARGET.data" -F comm,ip,sym,dso --no-inline 2>/dev/null \
  | python3 scripts/profile_breakdown.py "$(python3 -c "print($rps * 8)")" | tee "$OUT/profile-$TARGET.txt"
echo "$TARGET: $rps req/s under h2load" | tee -a "$OUT/profile-$TARGET.txt"
