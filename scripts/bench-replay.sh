#!/usr/bin/env bash
# Replay speed (issue #13): a release server records real decisions with --decision-log-requests, the
# records are repeated to N lines (fresh decision ids), and `cedar-pdp replay` decides them all again on
# a changed policy directory, pinned to one core. Usage: N=1000000 scripts/bench-replay.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
OUT=${OUT:-bench-out/replay}
rm -rf "$OUT" && mkdir -p "$OUT"
cargo build --release --quiet --bin cedar-pdp
BIN=target/release/cedar-pdp
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" --log-format json serve --listen "127.0.0.1:$port" --http-listen off --data-dir "$OUT/data" \
  --decision-log-requests true 2>"$OUT/server.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do grep -q '"serving"' "$OUT/server.log" && break; sleep 0.1; done
# Every user, action and document of the example, with and without MFA and an office address.
for user in alice bob carol dave erin mallory; do
  for action in view comment edit delete; do
    for doc in design-doc handbook salaries; do
      for ctx in '{}' '{"mfa": true, "source_ip": "10.1.2.3"}'; do
        "$BIN" check --addr "http://127.0.0.1:$port" --principal "User::\"$user\"" --action "Action::\"$action\"" \
          --resource "Document::\"$doc\"" --context "$ctx" >/dev/null
      done
    done
  done
done
kill $server; wait $server 2>/dev/null || true
grep '"decision_id"' "$OUT/server.log" | grep '"context"' >"$OUT/recorded.jsonl"
python3 - "$OUT/recorded.jsonl" "$N" >"$OUT/decisions.jsonl" <<'PY'
import json, sys, uuid
records = [json.loads(l) for l in open(sys.argv[1])]
for i in range(int(sys.argv[2])):
    r = dict(records[i % len(records)])
    r["decision_id"] = str(uuid.UUID(int=i))
    print(json.dumps(r))
PY
# The change under test: engineering may edit, and alice may no longer delete.
mkdir -p "$OUT/proposed" && cp -r policies/. "$OUT/proposed/"
printf '%s\n' 'permit (principal in Group::"engineering", action in Action::"write", resource in Folder::"engineering");' \
  'forbid (principal == User::"alice", action == Action::"delete", resource);' >"$OUT/proposed/proposed.cedar"
echo "$(wc -l <"$OUT/recorded.jsonl") distinct decisions recorded, repeated to $N lines ($(du -h "$OUT/decisions.jsonl" | cut -f1))"
start=$(date +%s.%N)
taskset -c 1 "$BIN" replay --policies "$OUT/proposed" "$OUT/decisions.jsonl" >"$OUT/changes.jsonl" 2>"$OUT/summary.txt"
end=$(date +%s.%N)
cat "$OUT/summary.txt"
python3 -c "import sys; s = float(sys.argv[2]) - float(sys.argv[1]); n = int(sys.argv[3]); print(f'replayed {n:,} in {s:.1f} s on one core: {n / s:,.0f} decisions/s; {sys.argv[4]} changes printed')" \
  "$start" "$end" "$N" "$(wc -l <"$OUT/changes.jsonl")"
