# Shared by the provisioning benchmarks (sourced): background processes stopped at exit, free ports,
# and N generated directory users (name, suspended, 3 groups each).
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

users() { # n → JSON lines
  python3 - "$1" <<'PY'
import json, sys
n = int(sys.argv[1])
for i in range(n):
    print(json.dumps({"uid": {"type": "User", "id": f"user{i:07d}"},
                      "attrs": {"name": f"User {i}", "suspended": i % 50 == 0},
                      "parents": [{"type": "Group", "id": f"team{i % 500}"},
                                  {"type": "Group", "id": f"dept{i % 20}"},
                                  {"type": "Group", "id": "everyone"}]}))
PY
}
