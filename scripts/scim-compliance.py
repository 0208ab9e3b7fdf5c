#!/usr/bin/env python3
"""Runs every scim2-tester check against a SCIM endpoint: scim-compliance.py BASE_URL TOKEN.

Prints one line per check and exits 1 if any check ends in ERROR or CRITICAL. Skipped checks are
printed with their reason (docs/scim.md lists why each is skipped).
"""
import sys

import httpx2
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server


def main() -> int:
    base, token = sys.argv[1], sys.argv[2]
    http = httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    results = check_server(SyncSCIMClient(http))
    failed = 0
    for r in results:
        print(f"{r.status.name:8} [{r.resource_type or '-'}] {r.title}: {r.reason or ''}")
        failed += r.status in (Status.ERROR, Status.CRITICAL)
    counts = {}
    for r in results:
        counts[r.status.name] = counts.get(r.status.name, 0) + 1
    print(f"scim2-tester: {len(results)} checks, {counts}")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
