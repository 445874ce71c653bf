"""Benchmark `bench`'s engines against wrk, h2load and locust in one session (run by hand, not by pytest).

    python tests/perf/bench_peers.py [--duration 10] [--rounds 3] [--locust]

nginx (../shared/perf/nginx-sink.conf, one worker) is pinned to CPU 0; every load generator runs pinned to
CPU 1 with 64 connections, POSTing a 5.6 KB pandas-records body (10 rows × 29 floats). Engine figures come
from `bench calibrate --url ... --json` (the engine with the real recorder). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / ".." / "shared" / "perf"
H1 = "http://127.0.0.1:18080/infer"
H2C = "http://127.0.0.1:18081/infer"
LOCUSTFILE = """
from locust import task
from locust.contrib.fasthttp import FastHttpUser
BODY = open({body!r}, "rb").read()
class U(FastHttpUser):
    @task
    def infer(self):
        self.client.post("/infer", data=BODY, headers={{"Content-Type": "application/json"}})
"""


def make_body(path: Path) -> int:
    """10 rows × 29 floats as pandas-records JSON (the reference payload), written inline."""
    golden = 0.6180339887498949
    rows = [{f"f{j}": round(((i * 29 + j + 1) * golden) % 1 * 100, 10) for j in range(29)} for i in range(10)]
    data = json.dumps(rows, separators=(",", ":")).encode()
    path.write_bytes(data)
    return len(data)


class Nginx:
    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nginx:
        conf = (SHARED / "nginx-sink.conf").resolve()
        self.proc = subprocess.Popen(["taskset", "-c", "0", "nginx", "-p", f"{self.prefix}/", "-c", str(conf),
                                      "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = subprocess.run(["curl", "-s", "-o", "/dev/null", "http://127.0.0.1:18080/nginx_status"])
            if status.returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError("nginx did not start (is port 18080 free?)")

    def workers(self) -> list[psutil.Process]:
        assert self.proc is not None
        children: list[psutil.Process] = psutil.Process(self.proc.pid).children()
        return children

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def timed(nginx: Nginx, cmd: list[str], env: dict[str, str] | None = None,
          timeout: float = 300) -> tuple[str, float]:
    """Run pinned to CPU 1; return stdout and the nginx worker's CPU share over the run."""
    workers = nginx.workers()
    cpu0 = sum(w.cpu_times().user + w.cpu_times().system for w in workers)
    t0 = time.monotonic()
    out = subprocess.run(["taskset", "-c", "1", *cmd], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})}, cwd=ROOT)
    wall = time.monotonic() - t0
    cpu1 = sum(w.cpu_times().user + w.cpu_times().system for w in workers)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {out.stderr[-500:]}")
    return out.stdout, (cpu1 - cpu0) / wall


def run_bench(nginx: Nginx, body: Path, d: int, http2: bool, engine: str = "auto",
              connections: int = 1) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench", "calibrate", "--json", "--duration", f"{d}s", "--body", str(body),
           "--engine", engine]
    cmd += ["--url", H2C, "--http2", "--connections", str(connections), "--streams", "64"] if http2 else ["--url", H1]
    out, ncpu = timed(nginx, cmd)
    r = json.loads(out.strip().splitlines()[-1])
    return {"rps": r["req_per_s"], "p50": r["p50_ms"], "p99": r["p99_ms"], "us": r["cpu_us_per_req"],
            "nginx": ncpu, "errors": r["errors"], "recorder": r["recorder"]}


def run_wrk(nginx: Nginx, body: Path, d: int) -> dict[str, Any]:
    cmd = ["wrk", "-t1", "-c64", f"-d{d + 2}s", "-s", str((SHARED / "wrk_post.lua").resolve()), H1]
    out, ncpu = timed(nginx, cmd, env={"BODY_FILE": str(body)})
    m = re.search(r"WRKSTAT requests=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+)", out)
    assert m, out
    reqs, dur, p50, p99 = (int(x) for x in m.groups())
    return {"rps": reqs / (dur / 1e6), "p50": p50 / 1000, "p99": p99 / 1000, "us": None, "nginx": ncpu,
            "errors": 0}


def run_h2load(nginx: Nginx, body: Path, d: int) -> dict[str, Any]:
    cmd = ["h2load", "-c1", "-m64", "-t1", "--warm-up-time=2", f"-D{d}", "-d", str(body),
           "-H", "content-type: application/json", H2C]
    out, ncpu = timed(nginx, cmd)
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    assert m, out
    return {"rps": float(m.group(1)), "p50": None, "p99": None, "us": None, "nginx": ncpu, "errors": 0}


def run_locust(nginx: Nginx, body: Path, d: int, tmp: Path) -> dict[str, Any]:
    lf = tmp / "locustfile.py"
    lf.write_text(LOCUSTFILE.format(body=str(body)))
    csv = tmp / "locust"
    cmd = ["locust", "-f", str(lf), "--headless", "-u", "64", "-r", "64", "-t", f"{d + 2}s", "--host",
           "http://127.0.0.1:18080", "--only-summary", "--csv", str(csv), "--loglevel", "ERROR"]
    _, ncpu = timed(nginx, cmd)
    import csv as csvmod

    with open(f"{csv}_stats.csv") as f:
        row = next(r for r in csvmod.DictReader(f) if r["Name"] == "Aggregated")
    return {"rps": float(row["Requests/s"]), "p50": float(row["50%"]), "p99": float(row["99%"]), "us": None,
            "nginx": ncpu, "errors": int(row["Failure Count"])}


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(rounds[0])
    for k in ("rps", "p50", "p99", "us", "nginx"):
        vals = [r[k] for r in rounds if r[k] is not None]
        out[k] = statistics.median(vals) if vals else None
    out["min"] = min(r["rps"] for r in rounds)
    out["max"] = max(r["rps"] for r in rounds)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="measured seconds per run (after 1-2 s warm-up)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--locust", action="store_true", help="also run locust FastHttpUser")
    args = ap.parse_args()
    for tool in ("nginx", "wrk", "h2load", "taskset"):
        if shutil.which(tool) is None:
            print(f"missing tool: {tool}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        body = tmp / "body.json"
        size = make_body(body)
        runs: dict[str, list[dict[str, Any]]] = {}
        with Nginx(tmp) as nginx_:
            plan: list[tuple[str, Callable[[], dict[str, Any]]]] = [
                    ("bench fast (HTTP/1.1)", lambda: run_bench(nginx_, body, args.duration, False)),
                    ("wrk -t1 (HTTP/1.1)", lambda: run_wrk(nginx_, body, args.duration)),
                    ("h2load 1 conn x 64 streams (h2c)", lambda: run_h2load(nginx_, body, args.duration)),
                    ("bench h2, 1 conn x 64 streams (h2c)",
                     lambda: run_bench(nginx_, body, args.duration, True)),
                    ("bench h2, 4 conns x 16 streams (h2c)",
                     lambda: run_bench(nginx_, body, args.duration, True, connections=4)),
                    ("bench httpx, 1 conn x 64 streams (h2c)",
                     lambda: run_bench(nginx_, body, args.duration, True, engine="httpx"))]
            if args.locust and shutil.which("locust"):
                plan.append(("locust FastHttpUser (HTTP/1.1)",
                             lambda: run_locust(nginx_, body, args.duration, tmp)))
            for rnd in range(args.rounds):
                for name, fn in plan:
                    print(f"round {rnd + 1}: {name} ...", file=sys.stderr, flush=True)
                    runs.setdefault(name, []).append(fn())
    wrk = median_of(runs["wrk -t1 (HTTP/1.1)"])["rps"]
    print(f"\nbody {size:,} B, 64 connections (HTTP/2: 1 connection x 64 streams), {args.duration} s x "
          f"{args.rounds} rounds, nginx on CPU 0, clients on CPU 1; median [min-max]\n")
    print("| tool | req/s | × wrk | p50 ms | p99 ms | client µs/req | nginx CPU |")
    print("|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        m = median_of(rs)

        def f(v: float | None, fmt: str) -> str:
            return "—" if v is None else format(v, fmt)

        print(f"| {name} | {m['rps']:,.0f} [{m['min']:,.0f}–{m['max']:,.0f}] | {m['rps'] / wrk:.2f} | "
              f"{f(m['p50'], '.2f')} | {f(m['p99'], '.2f')} | {f(m['us'], '.1f')} | {m['nginx']:.0%} |")
    rec = {str(r["recorder"]) for rs in runs.values() for r in rs if r.get("recorder")}
    print(f"\nengine recording sink: {', '.join(sorted(rec))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
