#!/usr/bin/env bash
# What TLS costs (see docs/benchmarks.md): Check throughput on persistent connections over TLS against
# plaintext, side by side in one run, and full TLS handshakes per second.
#
# Two servers on core 1 (one plaintext, one TLS with an ECDSA P-256 certificate made here by openssl),
# h2load on core 0, alternating round by round. Handshakes: `openssl s_time -new` (no session reuse)
# on core 0 against the TLS server on core 1, with the server's CPU time read from /proc, so the rate
# per busy core of the server can be given too.
#
# Usage: scripts/bench-tls.sh   (DURATION=10 ROUNDS=3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-bench-out/tls}
command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 1; }
rm -rf "$OUT" && mkdir -p "$OUT"
cargo build --release --quiet --bins --examples
BIN=target/release/cedar-pdp
CLIENT=target/release/examples/bench_client
"$CLIENT" body check "$OUT/check.bin"

# A CA and a server certificate for 127.0.0.1, as cert-manager or a SPIFFE helper would leave them.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$OUT/ca.key" -out "$OUT/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=pdp \
  -keyout "$OUT/tls.key" -out "$OUT/tls.csr" 2>/dev/null
openssl x509 -req -in "$OUT/tls.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" -CAcreateserial -days 2 \
  -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost') -out "$OUT/tls.crt" 2>/dev/null

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
taskset -c 1 "$BIN" serve --http-listen off --listen 127.0.0.1:50182 --decision-log false --data-dir "$OUT/data-plain" \
  >"$OUT/plain.out" 2>&1 & PIDS+=($!)
taskset -c 1 "$BIN" serve --http-listen off --listen 127.0.0.1:50183 --decision-log false --data-dir "$OUT/data-tls" \
  --tls-cert "$OUT/tls.crt" --tls-key "$OUT/tls.key" >"$OUT/tls.out" 2>&1 & PIDS+=($!)
TLS_PID=$!

# Both answer a real check, through the CLI (TLS verified against the CA).
check() { "$BIN" check --principal 'User::"alice"' --action 'Action::"view"' --resource 'Document::"design-doc"' "$@"; }
deadline=$((SECONDS + 30))
until check --addr http://127.0.0.1:50182 >/dev/null 2>&1 && check --addr https://127.0.0.1:50183 --tls-ca "$OUT/ca.crt" >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || { echo "the servers did not answer" >&2; cat "$OUT"/*.out >&2; exit 1; }
  sleep 0.2
done
check --addr https://127.0.0.1:50183 --tls-ca "$OUT/ca.crt" | grep -q 'decision: ALLOW'

rps() { awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$1"; }
for round in $(seq 1 "$ROUNDS"); do
  for target in plain tls; do
    url=http://127.0.0.1:50182
    [ "$target" = tls ] && url=https://127.0.0.1:50183
    taskset -c 0 h2load -t1 -c16 -m100 -D "$DURATION" --warm-up-time=2 -d "$OUT/check.bin" \
      -H 'content-type: application/grpc' -H 'te: trailers' \
      "$url/cedar_pdp.v1.AuthorizationService/Check" >"$OUT/$target.$round.txt"
    grep -q '0 failed, 0 errored' "$OUT/$target.$round.txt" || { cat "$OUT/$target.$round.txt" >&2; exit 1; }
  done
  echo "round $round: plaintext $(rps "$OUT/plain.$round.txt") req/s, TLS $(rps "$OUT/tls.$round.txt") req/s"
done

# Full handshakes (TLS 1.3, ECDHE + ECDSA P-256), no session reuse.
ticks() { awk '{ print $14 + $15 }' "/proc/$TLS_PID/stat"; }
hz=$(getconf CLK_TCK)
before=$(ticks)
taskset -c 0 openssl s_time -connect 127.0.0.1:50183 -new -time "$DURATION" >"$OUT/handshakes.txt" 2>&1
after=$(ticks)
connections=$(awk '/connections in [0-9.]+s;/ { print $1; exit }' "$OUT/handshakes.txt")
awk -v n="$connections" -v d="$DURATION" -v t=$((after - before)) -v hz="$hz" 'BEGIN {
  busy = t / hz; printf "handshakes: %d in %ds = %.0f/s; server CPU %.2f s (%.0f%% of one core) = %.0f handshakes per server core-second\n",
  n, d, n / d, busy, 100 * busy / d, n / busy }'
