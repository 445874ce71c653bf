"""Open-loop A/B of two checkouts of bench (run by hand, not by pytest): `bench run --rate` at fractions of a
closed-loop ceiling that `bench calibrate` measures at the start of each round, each checkout once per fraction,
interleaved.

    python tests/perf/bench_open_loop_ab.py ROUNDS 0.65,0.8 before:/path/to/old/checkout after:/path/to/this

Needs the nginx sink (../shared/perf/nginx-sink.conf) on CPU 0 at 127.0.0.1:18080 (or URL=...) and a body file
(BODY=..., default /tmp/body.json; bench_accuracy.make_body writes the reference one); every bench process runs
pinned to CPU 1 with PYTHONPATH set to its checkout. Prints a Markdown table; the figures come from each run's
report (achieved rate from its series, schedule lag from its histogram) and the process's own CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import achieved_rate, read_report

URL = os.environ.get("URL", "http://127.0.0.1:18080/infer")
BODY = os.environ.get("BODY", "/tmp/body.json")
OUT = "/tmp/bench-open-loop-ab.arrow"


def bench(args: list[str], tree: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["taskset", "-c", "1", sys.executable, "-m", "bench", *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": tree}, timeout=300)


def ceiling(tree: str) -> float:
    p = bench(["calibrate", "--url", URL, "--body", BODY, "--connections", "64", "--duration", "5s", "--json"], tree)
    rate = json.loads(p.stdout)["req_per_s"] if p.stdout else None
    if rate is None:  # nothing answered: no ceiling to take fractions of
        sys.exit(f"bench calibrate against {URL} measured no rate (exit {p.returncode}): {p.stderr.strip()}")
    return float(rate)


def open_loop(rate: float, tree: str) -> dict[str, Any]:
    t0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = bench(["run", "--url", URL, "--body", BODY, "--rate", str(int(rate)), "--duration", "6s", "--warmup", "2s",
               "--json", "--quiet", "--out", OUT], tree)
    t1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s = json.loads(p.stdout)
    rep = read_report(OUT)
    achieved = achieved_rate(rep)
    lag = rep["hist"].get(("schedule_lag", "measured"), {})
    cpu = (t1.ru_utime - t0.ru_utime) + (t1.ru_stime - t0.ru_stime)
    return {"err": 100 * (achieved - rate) / rate, "lag": f"{lag.get('p50_ms')} / {lag.get('p99_ms')}",
            "dropped": s["dropped"], "cpu": rep["meta"].get("cpu_fraction") or 0.0,
            "us": cpu / max(1, s["accounting"]["sent"]) * 1e6,
            "lat": f"{s['latency_ms']['p50']} / {s['latency_ms']['p99']}", "bound": s["generator_bound"]}


def _fractions(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fractions such as 0.65,0.8, got {text!r}") from None
    if not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"each fraction must be > 0, got {text!r}")
    return values


def _checkout(text: str) -> tuple[str, str]:
    name, sep, path = text.partition(":")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME:PATH (e.g. before:/path/to/checkout), got {text!r}")
    return name, path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """ROUNDS FRACTIONS NAME:PATH…, with --help (the positional reading made `--help` a traceback)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rounds", type=int, metavar="ROUNDS", help="rounds; each measures a ceiling, then runs every "
                    "fraction on every checkout")
    ap.add_argument("fractions", type=_fractions, metavar="FRACTIONS",
                    help="fractions of the ceiling to run at, e.g. 0.65,0.8")
    ap.add_argument("checkouts", type=_checkout, nargs="+", metavar="NAME:PATH",
                    help="checkouts of bench to alternate (the last one calibrates)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("ROUNDS must be >= 1")
    return args


def main() -> None:
    args = parse_args()
    rounds, fractions, trees = args.rounds, args.fractions, dict(args.checkouts)
    print("| round | ceiling | fraction | checkout | rate error % | schedule-lag p50 / p99 ms | dropped | client CPU "
          "| µs/req (whole process) | latency p50 / p99 ms | generator-bound |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in range(rounds):
        c = ceiling(list(trees.values())[-1])
        for f in fractions:
            for name, tree in trees.items():
                m = open_loop(f * c, tree)
                print(f"| {r + 1} | {c:,.0f} | {f:.0%} | {name} | {m['err']:+.2f} | {m['lag']} | {m['dropped']} "
                      f"| {m['cpu']:.0%} | {m['us']:.1f} | {m['lat']} | {m['bound']} |", flush=True)


if __name__ == "__main__":
    main()
