"""Accuracy benchmarks of `bench run` (run by hand, not by the default pytest run); prints Markdown tables.

    python tests/perf/bench_accuracy.py [open-loop|fixed-delay|processes|all] [--duration 15] [--rounds 3]

* open-loop: the ceiling from `bench calibrate --url <nginx>` (closed loop, 64 connections), then `bench run
  --rate 0.8×ceiling`; achieved rate (completions per second over the whole seconds inside the measured phase,
  from the report's series) vs target, dropped sends, schedule-lag and loop-lag p99 (report histograms).
  ``--server-work N`` gives nginx N Lua loop steps per answer, so the server sets the ceiling, not the client;
  ``--connections 0,32`` compares pool caps (`bench run --connections`; 0: the pool grows as sends need it).
* fixed-delay: `bench run --rate R` against tests/perf/fixed_delay_server.py (answers 10 ms after arrival);
  bench's p50 minus 10 ms, beside the server's own measured delay (its /stats).
* processes: `bench run -c 64 --processes N` against nginx, N = 1 and 2, pinned three ways (see docs).

Every server (nginx with a generated config on a free port, or the delay server) is pinned to CPU 0, `bench` to
CPU 1 (unless a row says otherwise); loopback only; servers are always stopped. Reports are read with pyarrow.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pyarrow.compute as pc
import pyarrow.ipc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SERVER_CPU = 0
CLIENT_CPU = 1


def nginx_conf(port: int, locations: str, *, cpu: int = SERVER_CPU, listen: str = "", main: str = "",
               http: str = "") -> str:
    """An nginx config for load tests: one worker pinned to ``cpu``, keep-alive without limits, no access log,
    temp files in the prefix; ``locations`` served on 127.0.0.1:``port`` (``listen``: e.g. " ssl http2")."""
    return f"""{main}
worker_processes 1;
worker_cpu_affinity {1 << cpu:b};
pid nginx.pid;
error_log error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    client_body_buffer_size 64k;
    client_body_temp_path body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
    {http}
    server {{
        listen 127.0.0.1:{port}{listen} backlog=4096;
        {locations}
    }}
}}
"""


def make_body(path: Path) -> int:
    """10 rows × 29 floats as pandas-records JSON (the reference payload), written inline."""
    golden = 0.6180339887498949
    rows = [{f"f{j}": round(((i * 29 + j + 1) * golden) % 1 * 100, 10) for j in range(29)} for i in range(10)]
    data = json.dumps(rows, separators=(",", ":")).encode()
    path.write_bytes(data)
    return len(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def run_nginx(prefix: Path, conf: str, port: int, cpu: int = SERVER_CPU) -> Iterator[subprocess.Popen[bytes]]:
    """nginx with ``conf`` (listening on ``port``) in ``prefix``, pinned to ``cpu``; always stopped."""
    prefix.mkdir(parents=True, exist_ok=True)
    path = prefix / "nginx.conf"
    path.write_text(conf)
    proc = subprocess.Popen(["taskset", "-c", str(cpu), "nginx", "-p", f"{prefix}/", "-c", str(path),
                             "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
        yield proc
    finally:
        _stop(proc)


LUA_MODULES = """load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;"""


@contextmanager
def nginx(tmp: Path, cpu: int = SERVER_CPU, work: int = 0) -> Iterator[str]:
    """nginx (one worker pinned to ``cpu``) on a free loopback port; yields the /infer URL. ``work`` > 0: each
    answer first reads the body and runs a Lua loop of that many steps (Debian's libnginx-mod-http-lua), so the
    server, not the client, sets the closed-loop ceiling, as a model server does."""
    port = free_port()
    main = ""
    if work:
        main = LUA_MODULES
        locations = ("location /infer { default_type application/json; content_by_lua_block { "
                     f"ngx.req.read_body() local x = 0 for i = 1, {work} do x = x + i end "
                     "ngx.print('{\"outputs\":[0.1]}') } }")
    else:
        locations = """location /infer { default_type application/json; return 200 '{"outputs":[0.1]}'; }"""
    with run_nginx(tmp / "nginx", nginx_conf(port, locations, cpu=cpu, main=main), port, cpu):
        yield f"http://127.0.0.1:{port}/infer"


def sampled_run(cmd: list[str], interval: float) -> tuple[dict[str, Any], list[tuple[float, int, int]]]:
    """A bench command printing one JSON summary, with its RSS and open file descriptors (≈ connections)
    sampled every ``interval`` s as (seconds since start, RSS bytes, fds); the process is always reaped."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    samples: list[tuple[float, int, int]] = []
    try:
        ps = psutil.Process(proc.pid)
        t0 = time.monotonic()
        while proc.poll() is None:
            try:
                samples.append((time.monotonic() - t0, ps.memory_info().rss, ps.num_fds()))
            except psutil.NoSuchProcess:
                break
            time.sleep(interval)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode not in (0, 3):  # 3 = generator-bound (with --strict): still a measurement
        raise RuntimeError(f"bench run exited {proc.returncode}: {stderr.decode()[-800:]}")
    summary: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return summary, samples


@contextmanager
def delay_server(delay_ms: float, cpu: int = SERVER_CPU) -> Iterator[str]:
    """tests/perf/fixed_delay_server.py pinned to ``cpu``; yields its base URL (http://127.0.0.1:PORT)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "fixed_delay_server.py"), "--port", str(port),
                             "--delay-ms", str(delay_ms), "--cpu", str(cpu)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def server_stats(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/stats", timeout=5) as resp:
        out: dict[str, Any] = json.loads(resp.read())
        return out


def bench_cmd(args: list[str], cpus: str | None = str(CLIENT_CPU)) -> list[str]:
    cmd = [sys.executable, "-m", "bench", *args]
    return ["taskset", "-c", cpus, *cmd] if cpus is not None else cmd


def run_json(cmd: list[str], timeout: float = 900) -> tuple[dict[str, Any], float]:
    """Run a bench command that prints one JSON object; returns it and the CPU seconds of the process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode not in (0, 3):  # 3 = generator-bound (with --strict): still a measurement
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr[-800:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result, cpu


def read_report(path: str | Path) -> dict[str, Any]:
    """Histogram rows keyed (name, phase), totals, phases and series of a bench report, via pyarrow alone."""
    reader = pyarrow.ipc.open_file(str(path))
    table = reader.read_all()
    meta = json.loads(reader.schema.metadata[b"bench.report"])

    def section(name: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = table.filter(pc.equal(table["section"], name)).to_pylist()
        return rows

    hists: dict[tuple[str, str], dict[str, Any]] = {}
    for row in section("histogram"):
        key = (row["name"], row["phase"])
        if key not in hists or row["outcome"] == "ok":
            hists[key] = row
    return {"meta": meta, "hist": hists, "total": {r["phase"]: r for r in section("total")},
            "phase": {r["name"]: r for r in section("phase")}, "series": section("series")}


def achieved_rate(report: dict[str, Any]) -> float:
    """Completions per second over the whole seconds strictly inside the measured phase (series section).

    The phase's ends are read with 1 ms of slack: an end a hair before a whole second (4.9995 for 5) emptied a
    3-s run's window, and the rate came out as nan."""
    ph = report["phase"]["measured"]
    first, last = math.floor(ph["start_s"] + 1e-3) + 1, math.ceil(ph["end_s"] - 1e-3) - 1
    seconds = [r for r in report["series"] if first <= r["second"] < last]
    span = last - first
    return sum(r["requests"] for r in seconds) / span if span > 0 else float("nan")


def med(values: list[float]) -> str:
    """'median [min–max]' for a table cell."""
    if not values:
        return "—"
    m = statistics.median(values)
    digits = 0 if abs(m) >= 100 else 1 if abs(m) >= 10 else 3
    fmt: Callable[[float], str] = lambda v: f"{v:,.{digits}f}"  # noqa: E731
    return f"{fmt(m)} [{fmt(min(values))}–{fmt(max(values))}]"


# -- (a) open-loop accuracy at 80 % of the ceiling ------------------------------------------------------------

def calibrate(url: str, body: Path, duration: int) -> dict[str, Any]:
    result, _ = run_json(bench_cmd(["calibrate", "--url", url, "--body", str(body), "--duration",
                                    f"{duration}s", "--json"]))
    return result


def open_loop_round(url: str, body: Path, rate: float, duration: int, warmup: int, out: Path,
                    pacing: str = "auto", connections: int = 0) -> dict[str, Any]:
    cap = ["--connections", str(connections)] if connections else []  # 0: the pool grows as sends need it
    summary, _ = run_json(bench_cmd(["run", "--url", url, "--body", str(body), "--rate", f"{rate:.0f}",
                                     "--duration", f"{duration}s", "--warmup", f"{warmup}s", "--json",
                                     "--quiet", "--pacing", pacing, "--out", str(out), *cap]))
    rep = read_report(out)
    achieved = achieved_rate(rep)
    lag = rep["hist"].get(("schedule_lag", "measured"), {})
    loop_lag = rep["hist"].get(("loop_lag", "measured"), {})
    return {"target": rate, "achieved": achieved, "error_pct": 100 * (achieved - rate) / rate,
            "summary_rps": summary["rps"], "dropped": summary["dropped"],
            "lag_p50": lag.get("p50_ms"), "lag_p99": lag.get("p99_ms"), "lag_max": lag.get("max_ms"),
            "loop_lag_p99": loop_lag.get("p99_ms"), "cpu_fraction": rep["meta"].get("cpu_fraction"),
            "generator_bound": summary["generator_bound"], "p50": summary["latency_ms"]["p50"], "pacing": pacing,
            "p99": summary["latency_ms"]["p99"], "connections": connections,
            "connections_opened": rep["meta"].get("extra", {}).get("connections_opened")}


def bench_open_loop(tmp: Path, body: Path, duration: int, rounds: int, fractions: tuple[float, ...] = (0.8,),
                    rate: float | None = None, calibrate_s: int = 5,
                    pacings: tuple[str, ...] = ("auto",), server_work: int = 0,
                    connections: tuple[int, ...] = (0,)) -> list[dict[str, Any]]:
    """Per round: the closed-loop ceiling (``bench calibrate``), then an open-loop run at each fraction of it with
    each pacing, interleaved. The ceiling is the lower of what calibrate achieved and its per-core figure: the
    client's limit against the plain sink, the server's with ``server_work``."""
    rows = []
    with nginx(tmp, work=server_work) as url:
        for i in range(rounds):
            if rate is None:
                cal = calibrate(url, body, calibrate_s)
                ceiling = min(cal["req_per_s"], cal["ceiling_req_per_s_per_core"])
            else:
                cal, ceiling = {}, rate / fractions[0]
            for fraction in fractions:
                for pacing, cap in itertools.product(pacings, connections):
                    row = open_loop_round(url, body, fraction * ceiling, duration, 2, tmp / f"open-{i}.arrow",
                                          pacing, cap)
                    row["ceiling"] = ceiling
                    row["fraction"] = fraction
                    row["calibrate_cpu_fraction"] = cal.get("cpu_fraction")
                    row["server_work"] = server_work
                    rows.append(row)
                    print(f"  open loop round {i + 1}: {json.dumps(row)}", file=sys.stderr)
    return rows


def print_open_loop(rows: list[dict[str, Any]]) -> None:
    print("| fraction | pacing | ceiling req/s | target req/s | achieved req/s | error % | dropped | "
          "schedule-lag p50 ms | schedule-lag p99 ms | loop-lag p99 ms | client CPU | generator_bound |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    def group(r: dict[str, Any]) -> tuple[float, str]:  # the pacing, and the connections cap when one was set
        cap = r.get("connections")
        return r["fraction"], r["pacing"] + (f", {cap} conns" if cap else "")

    for r in sorted(rows, key=group):
        print(f"| {r['fraction']:.0%} | {group(r)[1]} | {r['ceiling']:,.0f} | "
              f"{r['target']:,.0f} | {r['achieved']:,.0f} | {r['error_pct']:+.2f} | {r['dropped']:,} | "
              f"{r['lag_p50']:.3f} | {r['lag_p99']:.3f} | {r['loop_lag_p99']:.3f} | {r['cpu_fraction']:.0%} | "
              f"{r['generator_bound']} |")
    for fraction, pacing in sorted({group(r) for r in rows}):
        g = [r for r in rows if group(r) == (fraction, pacing)]
        print(f"| median | {fraction:.0%} {pacing} | | {med([r['target'] for r in g])} | "
              f"{med([r['achieved'] for r in g])} | {med([r['error_pct'] for r in g])} | | | "
              f"{med([r['lag_p99'] for r in g])} | {med([r['loop_lag_p99'] for r in g])} | | |")


# -- (b) latency overhead against a fixed 10 ms server --------------------------------------------------------

def bench_fixed_delay(tmp: Path, body: Path, duration: int, rounds: int, rate: float = 500,
                      delay_ms: float = 10.0, loop: str = "auto") -> list[dict[str, Any]]:
    rows = []
    with delay_server(delay_ms) as base:
        for i in range(rounds):
            server_stats(base)  # reset the server's own delay record
            out = tmp / f"delay-{i}.arrow"
            summary, _ = run_json(bench_cmd(["run", "--url", f"{base}/infer", "--body", str(body), "--rate",
                                             f"{rate:g}", "--duration", f"{duration}s", "--warmup", "2s",
                                             "--loop", loop, "--json", "--quiet", "--out", str(out)]))
            server = server_stats(base)
            rep = read_report(out)
            lag = rep["hist"].get(("schedule_lag", "measured"), {})
            row = {"rate": rate, "delay_ms": delay_ms, "loop": loop, "requests": summary["requests"],
                   "errors": summary["errors"], "p50": summary["latency_ms"]["p50"],
                   "p99": summary["latency_ms"]["p99"], "service_p50": summary["service_ms"]["p50"],
                   "server_p50_ms": server["p50_us"] / 1000, "server_p99_ms": server["p99_us"] / 1000,
                   "lag_p99": lag.get("p99_ms")}
            row["overhead_us"] = (row["p50"] - delay_ms) * 1000
            row["client_overhead_us"] = (row["p50"] - row["server_p50_ms"]) * 1000
            rows.append(row)
            print(f"  fixed delay round {i + 1}: {json.dumps(row)}", file=sys.stderr)
    return rows


def print_fixed_delay(rows: list[dict[str, Any]]) -> None:
    print("| loop | rate req/s | requests | bench p50 ms | p50 − 10 ms (µs) | server's own p50 ms | "
          "bench p50 − server p50 (µs) | bench p99 ms | server p99 ms | schedule-lag p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['loop']} | {r['rate']:g} | {r['requests']:,} | {r['p50']:.3f} | {r['overhead_us']:+.0f} | "
              f"{r['server_p50_ms']:.3f} | {r['client_overhead_us']:+.0f} | {r['p99']:.3f} | "
              f"{r['server_p99_ms']:.3f} | {r['lag_p99']:.3f} |")
    print(f"| median | | | {med([r['p50'] for r in rows])} | {med([r['overhead_us'] for r in rows])} | "
          f"{med([r['server_p50_ms'] for r in rows])} | {med([r['client_overhead_us'] for r in rows])} | | | |")


# -- (d) multi-process on one host ----------------------------------------------------------------------------

PROCESS_SETUPS: tuple[tuple[str, int, str | None], ...] = (  # (label, processes, CPUs for bench; None = any)
    ("1 process on CPU 1", 1, "1"),
    ("2 processes, both on CPU 1", 2, "1"),
    ("2 processes, CPU 0 + CPU 1 (CPU 0 shared with nginx)", 2, "0,1"),
)


def bench_processes(tmp: Path, body: Path, duration: int, rounds: int, connections: int = 64,
                    setups: tuple[tuple[str, int, str | None], ...] = PROCESS_SETUPS) -> list[dict[str, Any]]:
    rows = []
    with nginx(tmp) as url:
        for i in range(rounds):
            for label, n, cpus in setups:
                out = tmp / f"proc-{n}-{i}.arrow"
                summary, cpu = run_json(bench_cmd(["run", "--url", url, "--body", str(body), "-c",
                                                   str(connections), "--processes", str(n), "--duration",
                                                   f"{duration}s", "--warmup", "1s", "--json", "--quiet",
                                                   "--out", str(out)], cpus=cpus))
                rep = read_report(out)
                row = {"label": label, "processes": n, "round": i, "rps": summary["rps"],
                       "requests": summary["requests"], "errors": summary["errors"],
                       "merged_processes": rep["meta"]["load"].get("processes"),
                       "cpu_us_per_req": 1e6 * cpu / max(1, summary["requests"] + summary["warmup_requests"]),
                       "p50": summary["latency_ms"]["p50"], "p99": summary["latency_ms"]["p99"]}
                rows.append(row)
                print(f"  processes round {i + 1}: {json.dumps(row)}", file=sys.stderr)
    return rows


def print_processes(rows: list[dict[str, Any]]) -> None:
    base = statistics.median(r["rps"] for r in rows if r["label"] == PROCESS_SETUPS[0][0])
    print("| setup | req/s median [min–max] | × 1 process | p50 ms | p99 ms | client CPU µs/req (incl. start-up) |")
    print("|---|---|---|---|---|---|")
    for label, _n, _c in PROCESS_SETUPS:
        rs = [r for r in rows if r["label"] == label]
        rps = [r["rps"] for r in rs]
        print(f"| {label} | {med(rps)} | {statistics.median(rps) / base:.2f} | "
              f"{statistics.median(r['p50'] for r in rs):.3f} | {statistics.median(r['p99'] for r in rs):.3f} | "
              f"{statistics.median(r['cpu_us_per_req'] for r in rs):.1f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", default="all", choices=["open-loop", "fixed-delay", "processes", "all"])
    ap.add_argument("--duration", type=int, default=15, help="measured seconds per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=None, help="open-loop: fixed rate instead of 0.8 × calibrated")
    ap.add_argument("--fractions", default="0.8", help="open-loop: fractions of the ceiling, e.g. 0.6,0.7,0.8")
    ap.add_argument("--pacing", default="auto", help="open-loop: pacing modes to compare, e.g. auto,sleep")
    ap.add_argument("--connections", default="0",
                    help="open-loop: connection caps to compare, e.g. 0,32 (0: the pool grows as sends need it)")
    ap.add_argument("--server-work", type=int, default=0,
                    help="open-loop: Lua loop steps per answer in nginx, so the server sets the ceiling "
                         "(0: the plain sink, where the client does)")
    ap.add_argument("--delay-rate", type=float, default=500, help="fixed-delay: open-loop rate")
    ap.add_argument("--json-out", type=Path, default=None, help="also write every round's figures as JSON here")
    args = ap.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        print("note: fewer than 2 usable CPUs; server and client share one", file=sys.stderr)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as t:
        tmp = Path(t)
        body = tmp / "body.json"
        make_body(body)
        if args.what in ("open-loop", "all"):
            fractions = tuple(float(f) for f in args.fractions.split(","))
            caps = tuple(int(c) for c in args.connections.split(","))
            results["open_loop"] = rows = bench_open_loop(tmp, body, args.duration, args.rounds, fractions,
                                                          rate=args.rate, pacings=tuple(args.pacing.split(",")),
                                                          server_work=args.server_work,
                                                          connections=caps)
            print(f"\n### Open loop at {', '.join(f'{f:.0%}' for f in fractions)} of the ceiling\n")
            print_open_loop(rows)
        if args.what in ("fixed-delay", "all"):
            rows = []
            for loop in ("uvloop", "asyncio"):
                rows += bench_fixed_delay(tmp, body, args.duration, args.rounds, rate=args.delay_rate, loop=loop)
            results["fixed_delay"] = rows
            print("\n### Fixed 10 ms server\n")
            print_fixed_delay(rows)
        if args.what in ("processes", "all"):
            results["processes"] = rows = bench_processes(tmp, body, args.duration, args.rounds)
            print("\n### Multi-process on one host\n")
            print_processes(rows)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
