"""Summarises a bench-e2e.sh run: medians of req/s and latency percentiles, with sanity checks."""
import pathlib
import re
import statistics
import sys

out = pathlib.Path(sys.argv[1])


def parse(txt: pathlib.Path) -> dict:
    text = txt.read_text()
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", text).group(1))
    done, ok, failed, errored = map(int, re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text).groups())
    data = int(re.search(r"\((\d+)\) data", text).group(1))
    frame = int((out / (txt.name.split(".")[0] + ".frame")).read_text())
    # Every response must be one whole verified gRPC answer, never an error (trailers-only, no DATA).
    # h2load's DATA total includes the warm-up's responses, its request counts do not.
    if failed or errored or ok != done or data % frame != 0 or data // frame < ok:
        raise SystemExit(f"{txt}: {ok}/{done} ok, {failed} failed, {errored} errored, data {data} vs {ok} x {frame}")
    durations = sorted(int(line.split("\t")[2]) for line in txt.with_suffix(".tsv").read_text().splitlines() if line)
    pct = lambda p: durations[min(len(durations) - 1, int(p * len(durations)))] / 1000.0
    return {"rps": rps, "p50": pct(0.50), "p99": pct(0.99)}


runs: dict = {}
for txt in sorted(out.glob("*.txt")):
    target, level, _round = txt.name.split(".")[:3]
    runs.setdefault((target, level), []).append(parse(txt))

med = {k: {m: statistics.median(r[m] for r in v) for m in ("rps", "p50", "p99")} for k, v in runs.items()}
ceiling = med[("noop", "sat")]["rps"]
print(f"| target | level | runs | req/s (median) | x no-op | p50 ms | p99 ms |")
print(f"|---|---|---|---|---|---|---|")
for (target, level), m in sorted(med.items(), key=lambda kv: (kv[0][1] != "sat", kv[0][0])):
    n = len(runs[(target, level)])
    ratio = m["rps"] / ceiling if level == "sat" and target != "batch100" else float("nan")
    print(f"| {target} | {level} | {n} | {m['rps']:,.0f} | {ratio:.2f} | {m['p50']:.2f} | {m['p99']:.2f} |")
if ("batch100", "sat") in med:
    print(f"\nBatchCheck(100): {med[('batch100', 'sat')]['rps'] * 100:,.0f} decisions/s")
if ("check", "lat") in med and ("noop", "lat") in med:
    print(f"p99 at -c4 -m10: check / noop = {med[('check', 'lat')]['p99'] / med[('noop', 'lat')]['p99']:.2f}")

# The ratios, round by round (saturation), and their median.
PAIRS = [("check", "noop"), ("check-log", "check"), ("check-default", "check"), ("ext-authz", "check"),
         ("ext-authz-jwt", "check")]
print("\n| ratio (saturation) | per round | median |\n|---|---|---|")
for a, b in PAIRS:
    if (a, "sat") in runs and (b, "sat") in runs:
        ratios = [x["rps"] / y["rps"] for x, y in zip(runs[(a, "sat")], runs[(b, "sat")])]
        print(f"| {a} / {b} | {', '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(ratios):.2f} |")
if ("check", "lat") in runs and ("noop", "lat") in runs:
    ratios = [x["p99"] / y["p99"] for x, y in zip(runs[("check", "lat")], runs[("noop", "lat")])]
    print(f"| p99 at -c4 -m10, check / noop | {', '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(ratios):.2f} |")
