"""Python cost per request of the HTTP/1.1 engine's hot path, without sockets (run by hand).

    python tests/perf/bench_hotpath.py [--requests 500000] [--repeat 3]

Why: on this 2-core VM a socket benchmark's figures drift ±10 % between minutes, more than one hot-path change
is worth. Here the kernel is out of the picture: a ``FastEngine`` gets connections whose transport ``write`` is a
C no-op, and the benchmark feeds each a recorded nginx answer. What remains is the Python (and httptools, and
recorder) work per request, measured in CPU time to a few ns:

- ``minimal``: the floor — an httptools parser that writes the next request when an answer completes;
- ``closed``: the engine's closed loop (parse, classify, record into the real recorder, send the next);
- ``closed-tls``: the same through the buffered-read connection TLS uses;
- ``open``: the open loop at 100 k req/s: the pacer sends 32 due requests, 32 answers come back, repeat.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from collections.abc import Callable
from typing import Any

import httptools

from bench.engine.base import EngineConfig, PreparedBody, RequestSet
from bench.engine.fast import FastEngine, _BufferConn, _Conn, _StreamConn
from bench.engine.pacer import Pacer
from bench.recorder import Recorder
from bench.schedule import constant_offsets
from bench.targets.http import classify

ANSWER = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 06:00:00 GMT\r\n"
          b"Content-Type: application/json\r\nContent-Length: 17\r\nConnection: keep-alive\r\n\r\n"
          b'{"outputs":[0.1]}')
BODY = b'{"tensor": [' + b"0.5, " * 1100 + b"0.5]}"


class _NoWrite:
    """A transport whose ``write`` is a C function that drops its argument."""

    __slots__ = ("write",)

    def __init__(self) -> None:
        sink: collections.deque[bytes] = collections.deque(maxlen=0)
        self.write = sink.append


class _Minimal:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport = _NoWrite()
        self.done = False

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        if self.done:
            self.done = False
            self.transport.write(BODY)

    def on_message_complete(self) -> None:
        self.done = True


class _NoAlarm:
    fd = -1

    def arm(self, deadline_ns: int) -> None: ...

    def disarm(self) -> None: ...

    def acknowledge(self) -> None: ...

    def close(self) -> None: ...


def _engine(start: int, conns: int, cls: type[_Conn]) -> tuple[FastEngine, list[_Conn]]:
    rs = RequestSet("http://127.0.0.1:9/infer", "POST", {"Content-Type": "application/json"},
                    [PreparedBody(BODY, 10)])
    eng = FastEngine(EngineConfig(kind="fast", connections=0), rs, classify, Recorder(start, start))
    eng._end_ns = eng._fast_end = 1 << 62
    out = []
    for _ in range(conns):
        conn = cls(eng, 0)
        conn.transport = _NoWrite()  # type: ignore[assignment]
        eng._conns.add(conn)
        out.append(conn)
    return eng, out


def minimal(n: int) -> float:
    feed = _Minimal().data_received
    t0 = time.process_time()
    for _ in range(n):
        feed(ANSWER)
    return time.process_time() - t0


def closed(n: int, tls: bool = False) -> float:
    start = time.monotonic_ns()
    eng, (conn,) = _engine(start, 1, _BufferConn if tls else _StreamConn)
    eng._slots_live = 1
    eng._assign(conn, start)
    t0 = time.process_time()
    if tls:
        eng.read_buffer[:len(ANSWER)] = ANSWER
        updated, size = conn.buffer_updated, len(ANSWER)  # type: ignore[attr-defined]
        for _ in range(n):
            updated(size)
    else:
        feed = conn.data_received  # type: ignore[attr-defined]
        for _ in range(n):
            feed(ANSWER)
    took = time.process_time() - t0
    if eng._seq != n + 1:
        raise RuntimeError(f"the engine sent {eng._seq} requests, expected {n + 1}")
    return took


def open_loop(n: int, batch: int = 32, rate: float = 100_000.0) -> float:
    start = time.monotonic_ns()
    eng, conns = _engine(start, batch, _StreamConn)
    eng._open = True
    eng._limit = eng._pool_max = 4096
    eng._idle.extend(conns)
    pacer = Pacer(eng, None, start, constant_offsets(rate), waker=_NoAlarm(), pacing="sleep")  # type: ignore[arg-type]
    eng._pacer = pacer
    pacer._pull()  # the first intended time
    step = round(batch * 1e9 / rate)
    now = start - 1
    rounds = n // batch
    t0 = time.process_time()
    for _ in range(rounds):
        now += step
        pacer.run_due(now)
        for conn in conns:
            conn.data_received(ANSWER)  # type: ignore[attr-defined]
    took = time.process_time() - t0
    if eng._seq != rounds * batch:
        raise RuntimeError(f"the engine sent {eng._seq} requests, expected {rounds * batch}")
    return took * n / (rounds * batch)


CASES: dict[str, Callable[[int], float]] = {
    "minimal": minimal, "closed": closed, "closed-tls": lambda n: closed(n, tls=True), "open": open_loop}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=500_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    results: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.repeat):  # interleaved, like the socket benchmarks
        for name, case in CASES.items():
            results[name].append(case(args.requests) / args.requests * 1e9)
    print(f"{args.requests:,} requests x {args.repeat}, CPU ns per request: median [min-max]")
    row: dict[str, Any]
    for name, vals in results.items():
        row = {"median": statistics.median(vals), "lo": min(vals), "hi": max(vals)}
        print(f"  {name:11s} {row['median']:7.0f} [{row['lo']:.0f}-{row['hi']:.0f}]")


if __name__ == "__main__":
    main()
