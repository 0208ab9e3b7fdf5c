#!/usr/bin/env python3
"""SCIM figures for docs/benchmarks.md, end to end over loopback HTTP against the release binary.

    python3 scripts/bench-scim.py [target/release/cedar-pdp]

- writes/s: user creates and membership PATCHes (4 client threads), on the embedded store and on Redis;
- an IdP's initial sync: 10,000 users and 500 groups of 20 members, each looked up by name first (as
  Okta and Entra do), 4 threads, embedded store: total time and the server's peak memory (VmHWM);
- deprovision-to-deny: a user deactivated through replica A, then replica B's AuthZEN evaluation
  polled until it denies; 1,000 trials (activations in between), p50/p99.
Needs redis-server and `pip install httpx2`.
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx2

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/cedar-pdp"
POLICIES = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "scim")
TOKEN = "bench-token"
THREADS = 4


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port):
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            httpx2.get(f"http://127.0.0.1:{port}/scim/v2/ServiceProviderConfig",
                       headers={"Authorization": f"Bearer {TOKEN}"}).raise_for_status()
            return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError("the server did not start")


class Server:
    def __init__(self, store_args):
        self.data = tempfile.mkdtemp()
        self.http = free_port()
        env = dict(os.environ, CEDAR_PDP_SCIM_TOKENS=f"bench={TOKEN}")
        args = [BIN, "serve", "--policies", POLICIES, "--data-dir", self.data, "--listen",
                f"127.0.0.1:{free_port()}", "--http-listen", f"127.0.0.1:{self.http}", "--decision-log", "false",
                *store_args]
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(self.http)

    def client(self):
        return httpx2.Client(base_url=f"http://127.0.0.1:{self.http}",
                             headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/scim+json"})

    def peak_rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def run_threads(work, items):
    """Splits items over THREADS threads, each with its own connection; returns the seconds taken."""
    chunks = [items[i::THREADS] for i in range(THREADS)]
    errors = []

    def go(chunk):
        try:
            work(chunk)
        except Exception as e:  # reported after the run
            errors.append(e)

    threads = [threading.Thread(target=go, args=(c,)) for c in chunks]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


def ok(response, status=(200, 201)):
    if response.status_code not in status:
        raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
    return response.json() if response.content else None


def writes_per_second(server, label, n=2000):
    def create(names):
        with server.client() as c:
            for name in names:
                ok(c.post("/scim/v2/Users", json={"userName": name, "active": True}))
    secs = run_threads(create, [f"{label}-{i}@example.com" for i in range(n)])
    creates = n / secs
    with server.client() as c:
        groups = [ok(c.post("/scim/v2/Groups", json={"displayName": f"{label}-g{i}"}))["id"] for i in range(THREADS)]
        users = [r["id"] for r in ok(c.get("/scim/v2/Users", params={"count": 1000}))["Resources"]]

    def add(pairs):
        with server.client() as c:
            for group, user in pairs:
                body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                        "Operations": [{"op": "add", "path": "members", "value": [{"value": user}]}]}
                ok(c.patch(f"/scim/v2/Groups/{group}", json=body))
    # Each thread patches its own group, as an IdP pushes one group at a time.
    pairs = [(groups[i % THREADS], u) for i, u in enumerate(users)]
    secs = run_threads(add, pairs)
    return creates, len(pairs) / secs


def initial_sync(server, users=10_000, groups=500, size=20):
    ids = [None] * users

    def sync_users(indexes):
        with server.client() as c:
            for i in indexes:
                name = f"sync{i}@example.com"
                found = ok(c.get("/scim/v2/Users", params={"filter": f'userName eq "{name}"'}))
                assert found["totalResults"] == 0
                ids[i] = ok(c.post("/scim/v2/Users", json={"userName": name, "displayName": f"User {i}",
                                                           "emails": [{"value": name, "type": "work", "primary": True}]}))["id"]

    def sync_groups(indexes):
        with server.client() as c:
            for g in indexes:
                name = f"Team {g}"
                found = ok(c.get("/scim/v2/Groups", params={"filter": f'displayName eq "{name}"',
                                                            "excludedAttributes": "members"}))
                assert found["totalResults"] == 0
                members = [{"value": ids[(g * size + k) % users]} for k in range(size)]
                ok(c.post("/scim/v2/Groups", json={"displayName": name, "members": members}))
    start = time.perf_counter()
    run_threads(sync_users, list(range(users)))
    run_threads(sync_groups, list(range(groups)))
    return time.perf_counter() - start


def deprovision_to_deny(trials=1000):
    redis_port = free_port()
    redis_dir = tempfile.mkdtemp()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", redis_dir,
                              "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.2)
        url = ["--redis-url", f"redis://127.0.0.1:{redis_port}/"]
        a, b = Server(url), Server(url)
        try:
            with a.client() as ca, b.client() as cb:
                user = ok(ca.post("/scim/v2/Users", json={"userName": "probe@example.com"}))["id"]
                ok(ca.post("/scim/v2/Groups", json={"displayName": "Engineers", "members": [{"value": user}]}))
                question = {"subject": {"type": "User", "id": "probe@example.com"}, "action": {"name": "view"},
                            "resource": {"type": "Document", "id": "any"}}

                def decision():
                    return ok(cb.post("/access/v1/evaluation", json=question))["decision"]
                deny, allow = [], []
                for trial in range(trials * 2):
                    active = trial % 2 == 1
                    assert decision() != active  # B holds the old answer (cached) before the write
                    body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                            "Operations": [{"op": "replace", "path": "active", "value": active}]}
                    ok(ca.patch(f"/scim/v2/Users/{user}", json=body))
                    acknowledged = time.perf_counter()
                    while decision() != active:
                        pass
                    (allow if active else deny).append((time.perf_counter() - acknowledged) * 1000)
            return deny, allow
        finally:
            a.stop()
            b.stop()
    finally:
        redis.terminate()
        redis.wait()


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main():
    rows = []
    embedded = Server([])
    try:
        creates, patches = writes_per_second(embedded, "emb")
        rows.append(("embedded (redb, fsync per write)", creates, patches))
    finally:
        embedded.stop()
    redis_port = free_port()
    redis_dir = tempfile.mkdtemp()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", redis_dir,
                              "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
                             stdout=subprocess.DEVNULL)
    time.sleep(0.2)
    try:
        server = Server(["--redis-url", f"redis://127.0.0.1:{redis_port}/"])
        try:
            creates, patches = writes_per_second(server, "red")
            rows.append(("Redis (AOF everysec)", creates, patches))
        finally:
            server.stop()
    finally:
        redis.terminate()
        redis.wait()
    print("| store | user creates/s | membership PATCHes/s |")
    print("|---|---|---|")
    for name, c, p in rows:
        print(f"| {name} | {c:,.0f} | {p:,.0f} |")
    sync = Server([])
    try:
        secs = initial_sync(sync)
        print(f"\ninitial sync, embedded: 10,000 users + 500 groups x 20 members in {secs:.1f} s "
              f"({(10_500) / secs:,.0f} resources/s, each after a lookup); server peak RSS {sync.peak_rss_mib():.0f} MiB")
    finally:
        sync.stop()
    deny, allow = deprovision_to_deny()
    print(f"\ndeprovision-to-deny on replica B (Redis, {len(deny)} trials): p50 {pct(deny, 0.5):.2f} ms, "
          f"p99 {pct(deny, 0.99):.2f} ms, max {max(deny):.2f} ms; reactivation-to-allow p50 {pct(allow, 0.5):.2f} ms, "
          f"p99 {pct(allow, 0.99):.2f} ms")
    print(json.dumps({"deny_mean_ms": statistics.mean(deny)}))


if __name__ == "__main__":
    main()
