"""Big answers and big data sets (run by hand; issue 14's linear-cost targets).

    python tests/perf/bench_big.py answers [--size-mib 20] [--rounds 3]
    python tests/perf/bench_big.py dataset [--rows 1000000]

answers: nginx (generated config, free loopback port, CPU 0) serves a ``size``-MiB static answer to POST; curl
(CPU 1) and `bench run -c 1` per engine (CPU 1) fetch it. Prints p50 of each and bench ÷ curl (target ≤ 1.2),
then `bench run -r 200` with the bench process's RSS sampled every 0.5 s (target: flat) and the run's
generator-bound verdict (the answers exceed what one core can take in, so the run must say so).

dataset: writes a ``rows``-row ccfraud Arrow file, then times `bench.payload.build_bodies` (pandas-records, one
row per request) in a fresh process and samples its peak RSS (targets: ≤ 3 s, peak RSS ≤ 2 × the file).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from bench_accuracy import ROOT, bench_cmd, free_port, med, nginx_conf, run_json, run_nginx, sampled_run

MB = 1024 * 1024


@contextmanager
def big_nginx(tmp: Path, size: int) -> Iterator[str]:
    """nginx answering any method on /big.json with ``size`` bytes of JSON; yields the URL."""
    prefix = tmp / "nginx-big"
    root = prefix / "www"
    root.mkdir(parents=True, exist_ok=True)
    row = b'{"a":[0.1234567,0.7654321,0.5]},'
    payload = bytearray(b'{"outputs":[')
    payload += row * ((size - 20) // len(row))
    payload[-1:] = b"]}"
    (root / "big.json").write_bytes(bytes(payload))
    for p in (tmp, prefix, root, root / "big.json"):  # a root-started nginx's worker runs as nobody
        p.chmod(0o755)
    port = free_port()
    conf = nginx_conf(port, f"root {root};\n        location = /big.json {{ error_page 405 =200 $uri; }}",
                      http="sendfile on;")
    with run_nginx(prefix, conf, port):
        yield f"http://127.0.0.1:{port}/big.json"


def curl_p50(url: str, body: Path, n: int) -> float:
    """Median of curl's own ``time_total`` (no process start-up) over ``n`` POSTs, in ms."""
    times = []
    for _ in range(n):
        out = subprocess.run(["taskset", "-c", "1", "curl", "-sf", "-o", "/dev/null", "-w", "%{time_total}",
                              "-X", "POST", "--data-binary", f"@{body}", url], capture_output=True, text=True,
                             check=True)
        times.append(float(out.stdout) * 1000)
    return statistics.median(times)


def bench_p50(url: str, body: Path, engine: str, seconds: int) -> float:
    summary, _ = run_json(bench_cmd(["run", "--url", url, "--body", str(body), "-c", "1", "--duration",
                                     f"{seconds}s", "--warmup", "1s", "--engine", engine, "--json", "--quiet",
                                     "--out", str(body.parent / f"c1-{engine}.arrow")]))
    if summary["errors"]:
        raise RuntimeError(f"{engine}: {summary['errors']} errors {summary['errors_by_kind']}")
    return float(summary["latency_ms"]["p50"])


def rss_run(url: str, body: Path, rate: float, seconds: int) -> dict[str, Any]:
    """`bench run -r RATE` with the process's RSS sampled every 0.5 s."""
    cmd = bench_cmd(["run", "--url", url, "--body", str(body), "--rate", f"{rate:g}", "--duration", f"{seconds}s",
                     "--warmup", "0s", "--json", "--quiet", "--out", str(body.parent / "r200.arrow")])
    s, samples = sampled_run(cmd, 0.5)
    steady = [r / MB for t, r, _ in samples if t >= 3]
    return {"rss_first_mb": steady[0] if steady else float("nan"), "rss_max_mb": max(steady, default=float("nan")),
            "rss_last_mb": steady[-1] if steady else float("nan"), "requests": s["requests"], "rps": s["rps"],
            "errors": s["errors"], "dropped": s["dropped"], "p50_ms": s["latency_ms"]["p50"],
            "generator_bound": s["generator_bound"], "reasons": s["generator_bound_reasons"]}


def answers(size_mib: int, rounds: int, rate: float, seconds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        body = tmp / "req.json"
        body.write_bytes(b'[{"tensor":[1.0,2.0]}]')
        res: dict[str, list[float]] = {"curl": [], "fast": [], "httpx": []}
        with big_nginx(tmp, size_mib * MB) as url:
            for _ in range(rounds):  # interleaved rounds
                res["curl"].append(curl_p50(url, body, 15))
                res["fast"].append(bench_p50(url, body, "fast", seconds))
                res["httpx"].append(bench_p50(url, body, "httpx", seconds))
            rss = rss_run(url, body, rate, 2 * seconds)
    return {"p50_ms": res, "rss": rss}


DATASET_CODE = """
import json, sys, time, psutil
t = time.perf_counter()
from bench.data import read_dataset
from bench.payload import build_bodies
calls = []
b = build_bodies(read_dataset(sys.argv[1]), 1, 'pandas-records', progress=lambda done, total: calls.append(done))
ready = time.perf_counter() - t
ready_rss = psutil.Process().memory_info().rss
t = time.perf_counter()
total = sum(len(b.body(i)) for i in range(len(b)))
print(json.dumps({"ready_s": ready, "ready_rss": ready_rss, "progress_calls": len(calls),
                  "all_s": time.perf_counter() - t, "bodies": len(b), "body_bytes": total}))
"""


def dataset(rows: int) -> dict[str, Any]:
    """Ready time and RSS (build_bodies returns), then the cost of encoding every body (a run that sends all)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "big.arrow"
        subprocess.run([sys.executable, "-c", "from bench.data import generate_ccfraud, write_dataset; "
                        f"write_dataset(generate_ccfraud({rows}, 1), {str(path)!r})"], check=True, cwd=ROOT)
        size = path.stat().st_size
        proc = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", DATASET_CODE, str(path)],
                                stdout=subprocess.PIPE, cwd=ROOT)
        ps = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            try:
                peak = max(peak, ps.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
        out, _ = proc.communicate()
        r = json.loads(out)
    return {"file_mb": round(size / MB, 1), "ready_s": round(r["ready_s"], 2),
            "ready_rss_mb": round(r["ready_rss"] / MB, 1), "ready_rss_over_file": round(r["ready_rss"] / size, 2),
            "encode_all_s": round(r["all_s"], 2), "bodies": r["bodies"], "body_mb": round(r["body_bytes"] / MB, 1),
            "peak_rss_mb_after_all": round(peak / MB, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("answers")
    a.add_argument("--size-mib", type=int, default=20)
    a.add_argument("--rounds", type=int, default=3)
    a.add_argument("--rate", type=float, default=200)
    a.add_argument("--seconds", type=int, default=5)
    d = sub.add_parser("dataset")
    d.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    if args.what == "answers":
        r = answers(args.size_mib, args.rounds, args.rate, args.seconds)
        curl = statistics.median(r["p50_ms"]["curl"])
        print(f"| client ({args.size_mib} MiB answer, -c 1) | p50 ms, median [min–max] of {args.rounds} | × curl |")
        print("|---|---|---|")
        for name, vals in r["p50_ms"].items():
            print(f"| {name} | {med(vals)} | {statistics.median(vals) / curl:.2f} |")
        print(json.dumps(r["rss"]))
    else:
        print(json.dumps(dataset(args.rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
