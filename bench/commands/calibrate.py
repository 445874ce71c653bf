"""`bench calibrate`: this machine's own ceiling — the rate above which results describe the harness.

Runs one engine pinned to one core, closed loop, against a built-in minimal sink (a tiny asyncio server in a
subprocess pinned to another core) or a given loopback URL, with full recording, and prints req/s and client
CPU per request. 1e6 / (CPU µs per request) is the highest rate one core can drive for that engine and payload.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["default_body", "measure", "register", "serve_sink", "sink_app"]

_ANSWER = b'{"outputs":[0.1]}'
OPEN_LOOP_SHARE = 0.5  # of the closed-loop ceiling: the open-loop rate per process that kept a 1 ms schedule
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(subparsers: Any) -> None:
    from bench.commands.argtypes import duration, not_empty

    p = subparsers.add_parser("calibrate", help="measure this machine's load-generation ceiling (req/s per core)",
                              description=__doc__)
    p.add_argument("--url", type=not_empty, help="target URL (loopback only unless --allow-remote); default: a "
                   "built-in sink")
    p.add_argument("--engine", choices=("auto", "fast", "httpx"), default="auto",
                   help="auto: fast for HTTP/1.1, h2 for HTTP/2; httpx: the reference engine")
    p.add_argument("--http2", action="store_true",
                   help="HTTP/2 (the lean h2 engine, or httpx with --engine httpx; h2c for http://)")
    p.add_argument("--body", type=Path, help="request body file (default: 10 rows x 29 floats, pandas-records)")
    p.add_argument("--connections", type=_at_least_one, default=64, help="HTTP/1.1: connections = concurrency; "
                   "HTTP/2: connections the streams share")
    p.add_argument("--streams", type=_at_least_one, default=64, help="HTTP/2: concurrent streams in total")
    p.add_argument("--duration", type=duration, default="5s", help="measured time, e.g. 5s or 1m30s (default 5s, "
                   "after a 1 s warm-up)")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                   help="event loop (default auto: uvloop when installed, else asyncio)")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    p.add_argument("--ca-bundle", metavar="PEM", dest="ca_bundle",
                   help="trust this CA bundle (PEM) for an https --url, as curl's --cacert")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def default_body() -> bytes:
    """The reference payload: pandas-records JSON, 10 rows × 29 floats (≈5.6 KB)."""
    import orjson

    golden = 0.6180339887498949
    rows = [{f"f{j}": round(((i * 29 + j + 1) * golden) % 1 * 100, 10) for j in range(29)} for i in range(10)]
    data: bytes = orjson.dumps(rows)
    return data


def _cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return []


def _pin(core: int | None) -> None:
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


# -- the built-in sink ---------------------------------------------------------------------------------------
def serve_sink(core: int | None) -> None:
    """Minimal HTTP/1.1 keep-alive server (asyncio.Protocol + httptools); prints its port, serves until killed."""
    import asyncio

    import httptools

    from bench.engine.select import run_with_loop

    _pin(core)
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(_ANSWER), _ANSWER)

    class Conn(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_message_complete(self) -> None:
            self.transport.write(answer)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Conn, "127.0.0.1", 0, backlog=4096)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    run_with_loop(main, "auto")


async def sink_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI sink for --http2 (served by hypercorn, which speaks h2c): reads the body, answers 17 bytes."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"17")]})
    await send({"type": "http.response.body", "body": _ANSWER})


def _start_sink(http2: bool, core: int | None) -> tuple[subprocess.Popen[Any], str]:
    if not http2:
        code = f"from bench.commands.calibrate import serve_sink; serve_sink({core!r})"
        proc: subprocess.Popen[Any] = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                                       text=True)
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        return proc, f"http://127.0.0.1:{port}/infer"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "--worker-class", "uvloop",
           "bench.commands.calibrate:sink_app"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=(lambda: _pin(core)) if core is not None else None)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}/infer"


# -- measuring -----------------------------------------------------------------------------------------------
class _NoStop:
    def is_set(self) -> bool:
        return False

    async def wait(self) -> None:
        import asyncio

        await asyncio.Event().wait()


def measure(url: str, body: bytes, engine_kind: str, http2: bool, connections: int, duration_s: float,
            loop_kind: str, verify: bool, streams: int = 64, ca_bundle: str | None = None) -> dict[str, Any]:
    """Run closed loop at ``connections`` for a 1 s warm-up and then ``duration_s``; CPU and req/s of this process
    over the measured part only. One engine does both, so the measured part starts on open, warm connections
    (steady state, as `bench run` measures after its warm-up): a second engine spent the first ~65 ms of a 4 s
    window on 64 new TLS handshakes, ~1.6 % of it."""
    from bench.engine.base import EngineConfig, LoadSpec, PreparedBody, RequestSet
    from bench.engine.select import choose_engine, resolve_loop, run_with_loop
    from bench.report.accounting import request_accounting

    config = EngineConfig(kind=engine_kind, http2=http2, connections=connections if http2 else 0,  # type: ignore[arg-type]
                          verify_tls=verify, ca_bundle=ca_bundle, loop=loop_kind)  # type: ignore[arg-type]
    cls = choose_engine(config, url)
    requests = RequestSet(url, "POST", {"Content-Type": "application/json"}, [PreparedBody(body, 10)])

    def classify(status: int, answer: bytes, rows: int) -> tuple[int, int, int]:
        return (0 if 200 <= status < 300 else 2, rows, 0)

    result: dict[str, Any] = {}
    concurrency = max(streams, connections) if http2 else connections

    async def go() -> None:
        import asyncio

        from bench.recorder import Recorder
        from bench.rundata import MEASURED, HistKey

        start = time.monotonic_ns()
        measured_from = start + 1_000_000_000  # the warm-up: connections open, caches and the loop warm
        # the run's own recorder is the only sink (what `bench run` pays per request); the figures come from it,
        # over requests intended from measured_from on (its measured phase)
        rec = Recorder(start, measured_from)
        eng = cls(config, requests, classify, rec)
        loop = asyncio.get_running_loop()
        cpu_at: list[float] = []
        loop.call_at(loop.time() + (measured_from - time.monotonic_ns()) / 1e9,
                     lambda: cpu_at.append(time.process_time()))
        end_ns = measured_from + int(duration_s * 1e9)
        try:
            await eng.run(LoadSpec("closed", start, end_ns, concurrency=concurrency, drain_s=2), _NoStop())
        finally:  # as `bench run` does: every request taken on is recorded once or in flight at the end (abandoned)
            rec.count("sent", eng.sent)
            rec.abandoned(eng.abandoned, min(time.monotonic_ns(), end_ns))
        cpu = time.process_time() - (cpu_at[0] if cpu_at else 0.0)
        wall = (time.monotonic_ns() - measured_from) / 1e9
        data = rec.finish(time.monotonic_ns(), partial=False)
        totals = data.totals[MEASURED]
        ok_hist = data.histograms.get(HistKey("latency", MEASURED, "ok"))
        pct = ok_hist.percentiles_ms((50, 99)) if ok_hist is not None and ok_hist.total else {}
        # ok answers only; none: not measured (None), never 0
        commonest = max(data.error_samples, key=lambda e: e.count, default=None)
        result.update(p50_ms=pct.get(50), p99_ms=pct.get(99), requests=totals.requests, errors=totals.errors,
                      answered=data.answered(MEASURED), abandoned=int(data.counters.get("in_flight_at_end", 0)),
                      accounting=request_accounting(data), wall_s=wall, cpu_s=cpu,
                      recorder="bench.recorder.Recorder", engine=cls.__name__,
                      commonest_error=None if commonest is None else f"{commonest.kind}: {commonest.detail}")

    run_with_loop(go, resolve_loop(loop_kind))  # type: ignore[arg-type]
    return _per_request(result)


def _per_request(result: dict[str, Any]) -> dict[str, Any]:
    """req/s counts answers only (a failed connect or a request still in flight at the end got none), and CPU is
    per answer: with no answer, neither is a measurement (None, shown "—"), never CPU time over 1."""
    answered = result["answered"]
    result["req_per_s"] = answered / result["wall_s"] if answered else None
    result["cpu_us_per_req"] = result["cpu_s"] / answered * 1e6 if answered else None
    result["cpu_fraction"] = result["cpu_s"] / result["wall_s"]
    ok = result["requests"] - result["errors"]  # a path that only fails has no ceiling: None, never a figure
    result["ceiling_req_per_s_per_core"] = 1e6 / result["cpu_us_per_req"] if ok > 0 and answered else None
    return result


def run(args: argparse.Namespace) -> int:
    import json
    from urllib.parse import urlsplit

    from bench.config.reader import check_url
    from bench.errors import InputError
    from bench.report.accounting import accounting_text
    from bench.report.summary import num_text
    from bench.runner import fd_limit_short
    from bench.tlstrust import ca_bundle_problem

    duration = args.duration
    if args.url:
        problem = check_url(args.url)  # as `bench run` checks target.url
        if problem is not None:
            raise InputError(problem, key="--url")
        parts = urlsplit(args.url)
        if parts.hostname not in _LOOPBACK and not args.allow_remote:
            raise InputError("calibrate drives a target at full speed; only loopback URLs are allowed without "
                             "--allow-remote", key="--url")
    hard = fd_limit_short(args.connections)
    if hard is not None:  # as `bench run` refuses it: past the limit every connect fails, slowly
        raise InputError(f"{args.connections:,} connections need more than the open-file limit {hard:,} allows "
                         "(ulimit -n); lower it", key="--connections")
    ca_bundle = None
    if args.ca_bundle:  # typed on the command line: relative to where it was typed
        ca_bundle = str(Path(args.ca_bundle).expanduser().resolve())
        problem = ca_bundle_problem(ca_bundle)
        if problem is not None:
            raise InputError(problem, key="--ca-bundle")
    if args.body is not None:
        from bench.inpath import read_input

        body = read_input(args.body)
    else:
        body = default_body()
    cores = _cores()
    sink_core, engine_core = (cores[0], cores[1]) if len(cores) >= 2 else (None, None)
    proc = None
    url = args.url
    try:
        if url is None:
            proc, url = _start_sink(args.http2, sink_core)
        _pin(engine_core)
        result = measure(url, body, args.engine, args.http2, args.connections, duration, args.loop,
                         not args.insecure, args.streams, ca_bundle)
        sink_cpu = None if proc is None else _tree_cpu_s(proc.pid)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        if cores:
            os.sched_setaffinity(0, set(cores))
    result.update(url=url, body_bytes=len(body), connections=args.connections, engine_core=engine_core,
                  sink_core=sink_core, built_in_sink=args.url is None, sink_cpu_s=sink_cpu)
    failed = _failed(result)
    if args.json:
        print(json.dumps(result))
        return _verdict(failed)
    where = f" on CPU {engine_core}" if engine_core is not None else ""
    print(f"engine {result['engine']}{' HTTP/2' if args.http2 else ''}, {args.connections} connections, "
          f"body {len(body):,} B, {duration:g} s{where}; recording: {result['recorder']}")
    print(f"  measured     {num_text(result['req_per_s'], '>10,.0f')} req/s   ({result['errors']:,} errors"
          + (f", {result['abandoned']:,} of them in flight at the end" if result["abandoned"] else "") + ")")
    print(f"  latency      p50 {num_text(result['p50_ms'], '.2f')} ms, p99 {num_text(result['p99_ms'], '.2f')} ms"
          " (ok answers)")
    print(f"  client CPU   {num_text(result['cpu_us_per_req'], '>10.1f')} µs/req  ({result['cpu_fraction']:.0%} of one "
          "core)")
    if result["accounting"] is not None:
        print(f"  accounting   {accounting_text(result['accounting'])}, warm-up included")
    print(f"  ceiling      {num_text(result['ceiling_req_per_s_per_core'], '>10,.0f')} req/s per core "
          "(1e6 / CPU µs per req)")
    ceiling = result["ceiling_req_per_s_per_core"]
    if ceiling is not None and result["engine"] == "FastEngine":
        # measured with this engine only (docs/performance.md): an open loop costs ~1.2 x a closed loop per request
        # (one poll per answer); at 60-70 % of this ceiling it ran 70-88 % busy and any stall became tens of ms of
        # late sends
        print(f"  open loop    at most {ceiling * OPEN_LOOP_SHARE:,.0f} req/s per process ({OPEN_LOOP_SHARE:.0%} of "
              "the ceiling) keeps sends on time; more with --processes N")
    if sink_cpu is not None:
        print(f"  sink CPU     {sink_cpu:>10.1f} s over the whole run (warm-up included)")
    if result["cpu_fraction"] < 0.9 and ceiling is not None:
        print("  note: the client was not CPU-saturated — the target/sink limited the rate; the ceiling is "
              "estimated from CPU per request")
    return _verdict(failed)


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of the sink process and its live children: hypercorn (the --http2 sink) serves from a worker
    process it spawns, so the parent's own CPU alone was ~0.1 s however hard the worker ran."""
    import psutil

    total = 0.0
    parent = psutil.Process(pid)
    for p in (parent, *parent.children(recursive=True)):
        try:
            times = p.cpu_times()
        except psutil.Error:  # a child that exited meanwhile: its time is in the parent's children_* fields
            continue
        total += times.user + times.system
    return total


def _failed(result: dict[str, Any]) -> str | None:
    """Why the measurement describes no working request path (nothing answered ok), or None."""
    from bench.tlstrust import tls_hint

    n, errors = result["requests"], result["errors"]
    if n == 0:
        return "no request completed"
    if errors >= n and result.get("abandoned", 0) >= n:
        return f"none of {n:,} requests got an answer: all were still in flight at the end (the target did not answer)"
    if errors >= n:
        commonest = result.get("commonest_error") or ""
        hint = tls_hint(commonest)
        why = f" ({hint})" if hint is not None else ""
        return f"none of {n:,} requests succeeded{why}: the ceiling of a path that only fails is no ceiling"
    return None


def _verdict(failed: str | None) -> int:
    from bench.errors import EXIT_INVALID, EXIT_OK

    if failed is None:
        return EXIT_OK
    print(f"bench: error: calibrate: {failed}", file=sys.stderr)
    return EXIT_INVALID
