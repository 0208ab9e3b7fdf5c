#!/usr/bin/env python3
"""Where a server's CPU time goes per request, from a DWARF call-graph profile (docs/benchmarks.md).

    perf record --call-graph dwarf -F 999 -p PID -o perf.data -- sleep 8   # under h2load
    perf script -i perf.data -F comm,ip,sym,dso --no-inline | scripts/profile_breakdown.py REQUESTS

Each sample is given to the innermost frame of its stack that one of the parts below claims, so a
malloc under Cedar counts as allocation and Cedar's own work as Cedar. REQUESTS is how many requests
were answered while perf recorded (h2load's req/s times the seconds recorded); with it the table says
µs per request, from the sampling rate given as -F (FREQ, default 999).
"""
import os
import re
import sys
from collections import Counter

# (part, pattern on "symbol dso"), checked in this order on each frame from the leaf up.
PARTS = [
    ("allocation", r"\bmi_|_mi_|\bmalloc\b|\bfree\b|\brealloc\b|__rust_(alloc|dealloc|realloc)|cfree|mimalloc"),
    ("copying (memcpy/memmove)", r"__memmove|__memcpy|memcpy|memmove|__memset"),
    ("kernel (syscalls, loopback TCP, scheduling)", r"\[kernel\.kallsyms\]|\[unknown\].*kernel"),
    ("decision log (record, tracing, sink)", r"cedar_pdp::telemetry::record_|cedar_pdp::telemetry::write|"
     r"tracing_subscriber::|cedar_pdp::telemetry::sink"),
    ("metrics", r"\bmetrics::|metrics_exporter_prometheus|metrics_util"),
    ("decision id (UUIDv7)", r"\buuid::"),
    ("Cedar evaluation", r"cedar_policy_core::authorizer|cedar_policy_core::evaluator|"
     r"cedar_policy::api::Authorizer::is_authorized"),
    ("scope slicing and slice cache", r"cedar_pdp::policy::scope|moka::"),
    ("building the Cedar request (uids, context, entities, validation)",
     r"cedar_pdp::authz::prepare|cedar_pdp::policy::context|cedar_policy::api::Request::new|"
     r"cedar_policy::api::Context::|cedar_pdp::authz::parse_uid|cedar_pdp::json::"),
    ("ext_authz mapping (headers, route, principal, context)", r"cedar_pdp::grpc::ext_authz|cedar_pdp::envoy::"),
    ("JSON (serde_json)", r"serde_json::"),
    ("prost (decoding, encoding)", r"\bprost::|::decode\b|::encode\b|::merge_field|::encoded_len|envoy_types::"),
    ("Cedar (other)", r"cedar_policy"),
    ("this crate (other)", r"cedar_pdp::"),
    ("transport (tonic, h2, hyper, tower, tokio)", r"\btonic::|\bh2::|\bhyper::|\btower::|\btokio::|\bmio::|"
     r"hyper_util::|bytes::|http::|std::sys::net"),
    ("hashing", r"siphash|SipHasher|hash::|ahash|foldhash|hashbrown"),
    ("std (other)", r"\bstd::|\bcore::|\balloc::"),
]
COMPILED = [(name, re.compile(pat)) for name, pat in PARTS]


def samples(lines):
    stack = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if stack:
                yield stack
            stack = []
        elif line.startswith((" ", "\t")):
            stack.append(line.strip())
        else:
            stack = [f"thread {line.split()[0]}"] if line.split() else []
    if stack:
        yield stack


def part_of(stack):
    for frame in stack[1:]:
        for name, pat in COMPILED:
            if pat.search(frame):
                return name
    return "unattributed"


def main():
    requests = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    freq = float(os.environ.get("FREQ", "999"))
    counts = Counter(part_of(s) for s in samples(sys.stdin))
    total = sum(counts.values())
    print(f"| part | share | µs per request |\n|---|---|---|")
    for name, n in counts.most_common():
        us = f"{n / freq / requests * 1e6:.2f}" if requests else ""
        print(f"| {name} | {100 * n / total:.1f}% | {us} |")
    cpu = total / freq
    per = f"{cpu / requests * 1e6:.2f} µs per request" if requests else ""
    print(f"\n{total} samples, {cpu:.2f} CPU s; {per}")


if __name__ == "__main__":
    main()
