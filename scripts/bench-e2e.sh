#!/usr/bin/env bash
# End-to-end load benchmark over loopback (see docs/benchmarks.md).
#
# Servers are pinned to core 1, h2load to core 0. Targets run interleaved, round after round:
#   noop      the same tonic stack answering Check with a constant (examples/noop_server.rs)
#   check     cedar-pdp Check, decision log off
#   check-log cedar-pdp Check, decision log on (JSON lines to a file)
#   check-default cedar-pdp Check on the default configuration: decision log on, text lines (to a file)
#   check-shadow cedar-pdp Check with --shadow-policies (the same set: every decision made twice)
#   check-traced cedar-pdp Check with OpenTelemetry traces on, sampled at 1%, exported to a local
#             OTLP sink (bench_client otlp-sink)
#   check-redis cedar-pdp Check with the same entities provisioned in Redis instead of files
#             (its own redis-server; warm cache after the verification)
#   health    cedar-pdp's gRPC health Check
#   batch100  cedar-pdp BatchCheck with 100 checks per call
#   ext-authz     Envoy's ext_authz Check on tests/fixtures/mesh, principal from jwt_authn metadata
#   ext-authz-jwt the same with a bearer JWT the PDP verifies (HS256)
# Each body is verified with a real gRPC client first; the report checks that every response h2load
# counted was a whole, successful gRPC answer (DATA bytes = responses x verified frame size).
#
# Usage: scripts/bench-e2e.sh            (DURATION=10 ROUNDS=3 by default)
#        SAT="noop check ext-authz" LAT="noop check" BATCH=0 scripts/bench-e2e.sh   (a subset)
#        HALF="check check-shadow" HALF_RPS=10000 ...   (also at a fixed rate, e.g. half of saturation)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-bench-out}
command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 1; }
rm -rf "$OUT" && mkdir -p "$OUT"

cargo build --release --quiet --bins --examples
BIN=target/release/cedar-pdp
NOOP=target/release/examples/noop_server
CLIENT=target/release/examples/bench_client
for kind in check batch100 health ext_authz ext_authz_jwt; do "$CLIENT" body "$kind" "$OUT/$kind.bin"; done

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

taskset -c 1 "$NOOP" 127.0.0.1:50161 >"$OUT/noop.out" 2>&1 & PIDS+=($!)
taskset -c 1 "$BIN" serve --http-listen off --listen 127.0.0.1:50162 --decision-log false --data-dir "$OUT/data-50162" >"$OUT/pdp.out" 2>&1 & PIDS+=($!)
taskset -c 1 "$BIN" --log-format json serve --http-listen off --listen 127.0.0.1:50163 --data-dir "$OUT/data-50163" >"$OUT/pdp-log.out" 2>&1 & PIDS+=($!)
taskset -c 1 "$BIN" serve --http-listen off --listen 127.0.0.1:50169 --data-dir "$OUT/data-50169" >"$OUT/pdp-default.out" 2>&1 & PIDS+=($!)
taskset -c 1 "$BIN" serve --http-listen off --listen 127.0.0.1:50165 --decision-log false --policies tests/fixtures/mesh --data-dir "$OUT/data-50165" \
  >"$OUT/pdp-mesh.out" 2>&1 & PIDS+=($!)
taskset -c 1 "$BIN" serve --http-listen off --listen 127.0.0.1:50166 --decision-log false --shadow-policies policies \
  --data-dir "$OUT/data-50166" >"$OUT/pdp-shadow.out" 2>&1 & PIDS+=($!)
taskset -c 0 "$CLIENT" otlp-sink 127.0.0.1:50168 "$OUT/otlp-spans" >"$OUT/otlp-sink.out" 2>&1 & PIDS+=($!)
taskset -c 1 "$BIN" serve --http-listen off --listen 127.0.0.1:50167 --decision-log false --otlp-endpoint http://127.0.0.1:50168 \
  --otlp-sample-ratio 0.01 --data-dir "$OUT/data-50167" >"$OUT/pdp-traced.out" 2>&1 & PIDS+=($!)
# The example policies without their entity file; the entities go to Redis instead.
mkdir -p "$OUT/no-entities" && cp policies/*.cedar policies/*.cedarschema policies/links.json "$OUT/no-entities/"
taskset -c 1 redis-server --port 50170 --bind 127.0.0.1 --save "" --appendonly no >"$OUT/redis.out" 2>&1 & PIDS+=($!)
taskset -c 1 "$BIN" serve --http-listen off --listen 127.0.0.1:50164 --decision-log false --policies "$OUT/no-entities" \
  --redis-url redis://127.0.0.1:50170/ --data-dir "$OUT/data-50164" >"$OUT/pdp-redis.out" 2>&1 & PIDS+=($!)

verify() { # kind url → prints the verified response frame size
  local deadline=$((SECONDS + 30))
  until "$CLIENT" verify "$1" "$2" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "verification of $1 at $2 failed" >&2; "$CLIENT" verify "$1" "$2"; exit 1; }
    sleep 0.2
  done
}
declare -A URL=([noop]=http://127.0.0.1:50161 [check]=http://127.0.0.1:50162 [check-log]=http://127.0.0.1:50163 [check-default]=http://127.0.0.1:50169
                [health]=http://127.0.0.1:50162 [batch100]=http://127.0.0.1:50162 [check-redis]=http://127.0.0.1:50164
                [ext-authz]=http://127.0.0.1:50165 [ext-authz-jwt]=http://127.0.0.1:50165
                [check-shadow]=http://127.0.0.1:50166 [check-traced]=http://127.0.0.1:50167)
declare -A KIND=([noop]=check [check]=check [check-log]=check [check-default]=check [health]=health [batch100]=batch100
                 [check-redis]=check [ext-authz]=ext_authz [ext-authz-jwt]=ext_authz_jwt [check-shadow]=check
                 [check-traced]=check)
declare -A RPC=([check]=/cedar_pdp.v1.AuthorizationService/Check [batch100]=/cedar_pdp.v1.AuthorizationService/BatchCheck
                [health]=/grpc.health.v1.Health/Check [ext_authz]=/envoy.service.auth.v3.Authorization/Check
                [ext_authz_jwt]=/envoy.service.auth.v3.Authorization/Check)
deadline=$((SECONDS + 30))
# With the token that server generated (no credential is configured).
until CEDAR_PDP_TOKEN=$(cat "$OUT/data-50164/cli.token" 2>/dev/null) \
  "$CLIENT" provision "${URL[check-redis]}" policies/entities.json >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || { echo "provisioning the Redis-backed server failed" >&2; exit 1; }
  sleep 0.2
done
for target in noop check check-log check-default health batch100 check-redis ext-authz ext-authz-jwt check-shadow check-traced; do
  verify "${KIND[$target]}" "${URL[$target]}" >"$OUT/$target.frame"
done

load() { # target level(sat|lat) round
  local target=$1 level=$2 round=$3 kind=${KIND[$1]}
  local conc=(-c16 -m100)
  [ "$level" = lat ] && conc=(-c4 -m10)
  # half: a fixed rate (HALF_RPS in all, over 4 clients), for the cost at part load.
  [ "$level" = half ] && conc=(-c4 -m10 "--rps=$((HALF_RPS / 4))")
  [ "$target" = batch100 ] && conc=(-c4 -m4)
  local name="$OUT/$target.$level.$round"
  taskset -c 0 h2load -t1 "${conc[@]}" -D "$DURATION" --warm-up-time=2 -d "$OUT/$kind.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' --log-file="$name.tsv" \
    "${URL[$target]}${RPC[$kind]}" >"$name.txt"
  "$CLIENT" verify "$kind" "${URL[$target]}" >/dev/null  # still answering correctly after the run
}

for round in $(seq 1 "$ROUNDS"); do
  for target in ${SAT:-noop check check-log health check-redis ext-authz ext-authz-jwt}; do load "$target" sat "$round"; done
  for target in ${LAT:-noop check check-redis ext-authz ext-authz-jwt}; do load "$target" lat "$round"; done
  for target in ${HALF:-}; do load "$target" half "$round"; done
  [ "${BATCH:-1}" = 0 ] || load batch100 sat "$round"
  echo "round $round done" >&2
done
[ -f "$OUT/otlp-spans" ] && echo "spans exported by check-traced: $(cat "$OUT/otlp-spans")" >&2
python3 scripts/bench_report.py "$OUT"
