"""Memory over a long open-loop run of the real `bench run` (run by hand; 10 minutes by default).

    python tests/perf/bench_soak.py [--duration 600] [--rate 2000] [--interval 5]

nginx (generated config, free loopback port) on CPU 0, `bench run --rate R` on CPU 1; the bench process's RSS is
sampled every ``interval`` seconds with psutil. Prints the samples' min/max, the mean of the first and the last
minute of load, the drift between them, and the run's summary. Target: flat within ±10 %, under 250 MB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_accuracy import bench_cmd, make_body, nginx, read_report, sampled_run

MB = 1024 * 1024


def soak(duration: int, rate: float, interval: float, tmp: Path) -> dict[str, Any]:
    body = tmp / "body.json"
    make_body(body)
    out = tmp / "soak.arrow"
    with nginx(tmp) as url:
        cmd = bench_cmd(["run", "--url", url, "--body", str(body), "--rate", f"{rate:g}", "--duration",
                         f"{duration}s", "--warmup", "0s", "--json", "--quiet", "--out", str(out)])
        summary, sampled = sampled_run(cmd, interval)
    samples = [(t, rss) for t, rss, _ in sampled]
    fds = [(t, n) for t, _, n in sampled]  # open file descriptors ≈ connections (explains RSS steps)
    rep = read_report(out)
    return {"samples": samples, "fds": fds, "summary": summary, "cpu_fraction": rep["meta"].get("cpu_fraction"),
            "lag_p99": rep["hist"].get(("schedule_lag", "measured"), {}).get("p99_ms")}


def describe(result: dict[str, Any], duration: int) -> dict[str, Any]:
    """Load starts ~1-2 s after the process (imports); 'first minute' = samples in [10 s, 70 s)."""
    samples = result["samples"]
    rss = [r for _, r in samples]
    first = [r for t, r in samples if 10 <= t < 70]
    last = [r for t, r in samples if duration - 60 <= t < duration]
    first_mb = statistics.mean(first) / MB if first else float("nan")
    last_mb = statistics.mean(last) / MB if last else float("nan")
    s = result["summary"]
    return {"samples": len(rss), "min_mb": min(rss) / MB, "max_mb": max(rss) / MB, "first_min_mb": first_mb,
            "last_min_mb": last_mb, "drift_pct": 100 * (last_mb - first_mb) / first_mb,
            "steady_min_mb": min(r for t, r in samples if t >= 10) / MB,
            "steady_max_mb": max(r for t, r in samples if t >= 10) / MB,
            "fds_first": next((n for t, n in result["fds"] if t >= 10), 0), "fds_max": max(n for _, n in result["fds"]),
            "requests": s["requests"], "rps": s["rps"], "errors": s["errors"], "dropped": s["dropped"],
            "p99_ms": s["latency_ms"]["p99"], "lag_p99_ms": result["lag_p99"], "cpu_fraction": result["cpu_fraction"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=600)
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as t:
        result = soak(args.duration, args.rate, args.interval, Path(t))
    d = describe(result, args.duration)
    print("| duration s | rate req/s | requests | RSS min MB | RSS max MB | steady (≥10 s) min–max MB | "
          "first-minute mean MB | last-minute mean MB | drift % | p99 ms | schedule-lag p99 ms | client CPU | "
          "open fds at 10 s / max |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.duration} | {d['rps']:,.1f} | {d['requests']:,} | {d['min_mb']:.1f} | {d['max_mb']:.1f} | "
          f"{d['steady_min_mb']:.1f}–{d['steady_max_mb']:.1f} | {d['first_min_mb']:.1f} | {d['last_min_mb']:.1f} | "
          f"{d['drift_pct']:+.1f} | {d['p99_ms']:.3f} | {d['lag_p99_ms']:.3f} | {d['cpu_fraction']:.0%} | "
          f"{d['fds_first']} / {d['fds_max']} |")
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({"describe": d, "samples": result["samples"], "fds": result["fds"]},
                                             indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
