"""bench on Locust, measured (run by hand, not by pytest; figures go to docs/performance.md).

    python tests/perf/bench_locust.py [--duration 10] [--rounds 3]

nginx (../shared/perf/nginx-sink.conf, one worker) is pinned to CPU 0 and serves POST /infer; the 5.6 KB
pandas-records reference body; 64 connections / users. Three figures:

1. one `bench locust-worker` (its engine child included) pinned to CPU 1 vs a single-process `bench run` pinned
   to CPU 1: the ratio of their req/s (target >= 0.8);
2. the master's CPU (user+system time / wall, psutil) while 4 workers run at full speed, all pinned to CPU 1
   (the master on CPU 0 beside nginx: it only merges; target < 10 % of a core);
3. `locust` single process on CPU 1 with a bench.locust HttpUser (bench's recording on) vs Locust's own
   FastHttpUser: req/s per core (target: bench's >= FastHttpUser's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_peers

ROOT = bench_peers.ROOT
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
BENCH_USER = """
from bench.locust import HttpUser
class U(HttpUser):
    url = "http://127.0.0.1:18080/infer"
    body = {body!r}
    headers = {{"Content-Type": "application/json"}}
"""


def _bench_cmd(body: Path, d: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "bench", "run", "--url", bench_peers.H1, "--body", str(body), "-c", "64",
            "--duration", f"{d}s", "--warmup", "1s", "--json", "-q", "-o", str(out)]


def single(body: Path, d: int, tmp: Path) -> float:
    out = subprocess.run(["taskset", "-c", "1", *_bench_cmd(body, d, tmp / "single.arrow")], capture_output=True,
                         text=True, env=ENV, cwd=ROOT, timeout=120)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["rps"])


def distributed(body: Path, d: int, tmp: Path, workers: int) -> tuple[float, float]:
    """(merged req/s, master CPU as a fraction of one core over the load window)."""
    port = bench_peers.free_port()
    master = subprocess.Popen(["taskset", "-c", "0", *_bench_cmd(body, d, tmp / "dist.arrow"), "--locust-master",
                               "--expect-workers", str(workers), "--master-bind-port", str(port)],
                              stdout=subprocess.PIPE, text=True, env=ENV, cwd=ROOT, start_new_session=True)
    procs = [subprocess.Popen(["taskset", "-c", "1", sys.executable, "-m", "bench", "locust-worker",
                               "--master-port", str(port)], env=ENV, cwd=ROOT, stderr=subprocess.DEVNULL,
                              start_new_session=True) for _ in range(workers)]
    try:
        mp = psutil.Process(master.pid)
        samples: list[tuple[float, float]] = []  # (monotonic, master CPU seconds), every 0.25 s
        while master.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                samples.append((time.monotonic(), sum(mp.cpu_times()[:2])))
            time.sleep(0.25)
        out = master.stdout.read() if master.stdout else ""
        summary = json.loads(out.strip().splitlines()[-1])
        # the load window: the last `duration` seconds before the master began merging (~1 s before exit)
        end = samples[-1][0] - 1.0
        window = [s for s in samples if end - d + 0.5 <= s[0] <= end]
        cpu = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
        return float(summary["rps"]), cpu
    finally:
        for p in [master, *procs]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()



def bench_user(body: Path, d: int, tmp: Path) -> float:
    lf = tmp / "bench_user.py"
    lf.write_text(BENCH_USER.format(body=str(body)))
    out = subprocess.run(["taskset", "-c", "1", sys.executable, "-m", "locust", "-f", str(lf), "--headless",
                          "-u", "64", "-r", "64", "-t", f"{d + 2}s", "--only-summary", "--json", "--loglevel",
                          "ERROR", "--bench-report", str(tmp / "users.arrow")],
                         capture_output=True, text=True, env=ENV, cwd=tmp, timeout=120)
    entries: list[dict[str, Any]] = json.loads(out.stdout)
    reqs = sum(e["num_requests"] for e in entries)
    span = max(e["last_request_timestamp"] for e in entries) - min(e["start_time"] for e in entries)
    return reqs / span


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    rows: dict[str, list[float]] = {k: [] for k in ("single", "worker", "master_cpu_4", "rps_4", "bench_user",
                                                    "fasthttp")}
    with tempfile.TemporaryDirectory() as td, bench_peers.Nginx(Path(td)) as nginx:
        tmp = Path(td)
        body = tmp / "body.json"
        bench_peers.make_body(body)
        for r in range(a.rounds):
            rows["single"].append(single(body, a.duration, tmp))
            rps, _ = distributed(body, a.duration, tmp, 1)
            rows["worker"].append(rps)
            rps4, cpu4 = distributed(body, a.duration, tmp, 4)
            rows["rps_4"].append(rps4)
            rows["master_cpu_4"].append(cpu4)
            rows["bench_user"].append(bench_user(body, a.duration, tmp))
            rows["fasthttp"].append(bench_peers.run_locust(nginx, body, a.duration, tmp)["rps"])
            print(f"round {r + 1}: " + ", ".join(f"{k}={v[-1]:.3f}" for k, v in rows.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print("\n| figure | median | min | max |\n|---|---:|---:|---:|")
    for k, v in rows.items():
        print(f"| {k} | {med[k]:,.3f} | {min(v):,.3f} | {max(v):,.3f} |")
    print(f"\nworker / single-process bench run: {med['worker'] / med['single']:.2f}")
    print(f"master CPU with 4 workers: {med['master_cpu_4'] * 100:.1f} % of a core")
    print(f"bench.locust HttpUser / FastHttpUser req/s per core: {med['bench_user'] / med['fasthttp']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
