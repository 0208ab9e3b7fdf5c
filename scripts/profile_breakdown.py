#!/usr/bin/env python3
"""Where a server's CPU time goes per request, from a DWARF call-graph profile (docs/benchmarks.md).

    perf record --call-graph dwarf -F 999 -p PID -o perf.data -- sleep 8   # under h2load
    perf script -i perf.data -F comm,ip,sym,dso --no-inline | scripts/profile_breakdown.py REQUESTS

A sample whose leaf is an allocator or kernel frame is allocation or kernel, whoever called; any other
goes to the innermost frame of its stack that a specific part claims (Cedar's evaluation, building the
request, the decision log, prost, ...), else to the layer it runs in (this crate, Cedar, transport).
The log-writer thread is the decision log's. REQUESTS is how many requests
were answered while perf recorded (h2load's req/s times the seconds recorded); with it the table says
µs per request, from the sampling rate given as -F (FREQ, default 999).
"""
import os
import re
import sys
from collections import Counter

# Parts that own the sample when the leaf frame is theirs, whoever called.
LEAF = [
    ("allocation (mimalloc, malloc, free)", r"\bmi_|_mi_|\bmalloc\b|\bfree\b|\brealloc\b|__rust_(alloc|dealloc|realloc)|"
     r"cfree|_int_malloc|_int_free|mimalloc"),
    ("kernel (syscalls, loopback TCP, scheduling)", r"\[kernel\.kallsyms\]"),
]
# Parts by the innermost frame of theirs on the stack: the specific ones first, then the layers.
SPECIFIC = [
    ("decision log (record, tracing, sink)", r"cedar_pdp::telemetry::record_|cedar_pdp::telemetry::write|"
     r"tracing_subscriber::|cedar_pdp::telemetry::sink"),
    ("metrics", r"\bmetrics::|metrics_exporter_prometheus|metrics_util"),
    ("decision id (UUIDv7)", r"\buuid::"),
    ("Cedar evaluation", r"cedar_policy_core::authorizer|cedar_policy::api::Authorizer::is_authorized|"
     r"cedar_policy_core::evaluator"),
    ("scope slicing and slice cache", r"cedar_pdp::policy::scope|moka::"),
    ("building the Cedar request (uids, context, entities, validation)",
     r"cedar_pdp::authz::prepare|cedar_pdp::policy::context|cedar_policy::api::Request::new|"
     r"cedar_policy::api::Context::|cedar_pdp::authz::parse_uid|cedar_pdp::json::"),
    ("ext_authz mapping (headers, route, principal, context)", r"cedar_pdp::grpc::ext_authz|cedar_pdp::envoy::"),
    ("this crate's decision path (decision, entities, authz)", r"cedar_pdp::decision::|cedar_pdp::entities::|"
     r"cedar_pdp::authz::"),
    # The generated servers (tonic's routing and codec, inlined) are transport.
    ("transport (tonic, h2, hyper, tower, tokio)", r"Server<T> as tower_service::Service"),
    ("prost (decoding, encoding messages)", r"\bprost::|prost::message::Message|tonic_prost::"),
]
LAYERS = [
    ("this crate (request conversion, response, other)", r"cedar_pdp::"),
    ("Cedar (other)", r"cedar_policy"),
    ("transport (tonic, h2, hyper, tower, tokio)", r"\btonic::|\bh2::|\bhyper::|\btower::|\btokio::|\bmio::|"
     r"hyper_util::|std::sys::net|std::net|socket2"),
]
COMPILED = [[(name, re.compile(pat)) for name, pat in group] for group in (SPECIFIC, LAYERS)]
LEAF_COMPILED = [(name, re.compile(pat)) for name, pat in LEAF]


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
    if stack[0] == "thread log-writer":
        return "decision log (record, tracing, sink)"
    frames = stack[1:]
    for name, pat in LEAF_COMPILED:
        if frames and any(pat.search(f) for f in frames[:2]):
            return name
    for group in COMPILED:
        for frame in frames:
            for name, pat in group:
                if pat.search(frame):
                    return name
    return "other (std, unattributed)"


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
