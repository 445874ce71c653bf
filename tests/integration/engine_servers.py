"""Shared helpers of the engine integration tests: a recording sink, a stop signal, the test protocol's classifier,
request-set and load-spec builders. Imported as ``from engine_servers import ...`` (pytest puts this folder on
sys.path); not a test module itself.

The test protocol: a request body is ``b"rows=N"`` (the server answers 200 with body ``N``) or ``b"bad"`` (the
server answers 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

from bench.engine.base import EngineConfig, LoadSpec, PreparedBody, RequestSet
from bench.results import Kind

__all__ = ["FakeSink", "Stop", "bodies", "check_open_loop_keeps_the_rate", "classify", "closed", "constant_rate",
           "make", "run_through_server_death", "run_with_header_refresh", "served_by_hypercorn"]


class FakeSink:
    """Collects what engines report (fine for tests; the real recorder batches into histograms)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, ...]] = []
        self.details: list[tuple[int, int, bytes]] = []
        self.drops: list[int] = []
        self.lags: list[int] = []

    def record(self, intended_ns: int, sent_ns: int, done_ns: int, kind: int, status: int, rows: int,
               bytes_out: int, bytes_in: int, server_ns: int) -> None:
        self.rows.append((intended_ns, sent_ns, done_ns, kind, status, rows, bytes_out, bytes_in, server_ns))

    def error_detail(self, kind: int, status: int, detail: bytes) -> None:
        self.details.append((kind, status, detail))

    def dropped(self, intended_ns: int) -> None:
        self.drops.append(intended_ns)

    def loop_lag(self, lag_ns: int) -> None:
        self.lags.append(lag_ns)

    def kinds(self) -> Counter[int]:
        return Counter(r[3] for r in self.rows)

    def statuses(self) -> Counter[int]:
        return Counter(r[4] for r in self.rows)


class Stop:
    def __init__(self) -> None:
        self.event = asyncio.Event()

    def is_set(self) -> bool:
        return self.event.is_set()

    async def wait(self) -> None:
        await self.event.wait()


def classify(status: int, body: bytes, rows_in: int) -> tuple[int, int, int]:
    """200 answers carry the row count; anything else is an HTTP error."""
    if status == 200:
        try:
            return (int(Kind.OK), int(body), 0)
        except ValueError:
            return (int(Kind.BAD_RESPONSE), 0, 0)
    return (int(Kind.HTTP_ERROR), 0, 0)


def bodies(*rows: int, bad: bool = False) -> list[PreparedBody]:
    """One ``rows=N`` body per row count, plus a ``bad`` body (answered 500) when asked."""
    out = [PreparedBody(b"rows=%d" % r, r) for r in rows]
    if bad:
        out.append(PreparedBody(b"bad", 7))
    return out


def closed(concurrency: int, max_requests: int = 0, seconds: float = 10.0) -> LoadSpec:
    now = time.monotonic_ns()
    return LoadSpec("closed", now, now + int(seconds * 1e9), concurrency=concurrency, max_requests=max_requests,
                    drain_s=2.0)


def constant_rate(rate: float, seconds: float, max_in_flight: int) -> LoadSpec:
    now = time.monotonic_ns()
    offsets: Iterator[int] = iter(range(0, int(seconds * 1e9), int(1e9 / rate)))
    return LoadSpec("open", now, now + int(seconds * 1e9) + 1, offsets_ns=offsets, max_in_flight=max_in_flight,
                    drain_s=1.0)


def make(engine: type, url: str, sink: FakeSink, body_list: list[PreparedBody] | None = None,
         headers: dict[str, str] | None = None, **cfg: Any) -> Any:
    """``engine`` POSTing ``body_list`` (default rows 1, 2, 3) to ``url`` with ``EngineConfig(**cfg)``."""
    rs = RequestSet(url, "POST", headers or {"Content-Type": "text/plain"}, body_list or bodies(1, 2, 3))
    return engine(EngineConfig(**cfg), rs, classify, sink)


async def run_with_header_refresh(eng: Any, sink: FakeSink, tokens: list[str]) -> None:
    """Run ``eng`` (closed loop, 2 workers; its X-Token header starts as "old"), switch the header to "new" after
    20 answers and stop 20 requests later; then check the switch. ``tokens``: the X-Token values the server saw,
    in order."""
    stop = Stop()

    async def refresh() -> None:
        deadline = time.monotonic() + 5
        while len(sink.rows) < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        eng.set_headers({"X-Token": "new"})
        n = len(tokens)
        while len(tokens) < n + 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        stop.event.set()

    task = asyncio.create_task(refresh())
    await asyncio.wait_for(eng.run(closed(2, seconds=10), stop), 20)
    await task
    assert tokens[0] == "old" and tokens[-1] == "new"
    first_new = tokens.index("new")
    assert set(tokens[first_new + 2:]) == {"new"}  # at most the in-flight requests carried the old header


async def run_through_server_death(eng: Any, sink: FakeSink, kill: Any) -> None:
    """Closed loop (4 workers, 1.5 s) against a server killed (``await kill()``) after 50 answers: the run goes
    on, counts the failed connects and ends on time, and the connect backoff keeps a dead target from making the
    engine spin (4 slots × ~0.5 s max backoff)."""

    async def kill_later() -> None:
        deadline = time.monotonic() + 5
        while len(sink.rows) < 50 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await kill()

    killer = asyncio.create_task(kill_later())
    t0 = time.monotonic()
    await asyncio.wait_for(eng.run(closed(4, seconds=1.5), Stop()), 20)
    await killer
    assert time.monotonic() - t0 < 5
    kinds = sink.kinds()
    assert kinds[Kind.OK] >= 50
    assert kinds[Kind.CONNECT_REFUSED] >= 4  # every slot kept trying, one record per attempt
    assert set(kinds) <= {Kind.OK, Kind.RESET, Kind.CONNECT_REFUSED}
    assert kinds[Kind.CONNECT_REFUSED] < 400


class LagProbe:
    """The loop's own timer lateness, sampled every ``period_ns`` alongside a run: the baseline a pacer on the same
    loop, under the same machine load, cannot beat. Timing tests bound the engine's lag relative to it (plus a
    fixed allowance) instead of by a wall-clock figure that a busy 2-core machine breaks."""

    def __init__(self, period_ns: int = 2_000_000) -> None:
        self.period_ns = period_ns
        self.lateness: list[int] = []
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0

    def start(self) -> None:
        self._next = time.monotonic_ns() + self.period_ns
        self._arm()

    def _arm(self) -> None:
        delay = max(0, self._next - time.monotonic_ns()) / 1e9
        self._handle = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        # every tick that fell due is recorded, like the sends of an open-loop schedule: a stall of the process
        # makes all the ticks due during it late, not only the one that finally ran
        now = time.monotonic_ns()
        while self._next <= now:
            self.lateness.append(now - self._next)
            self._next += self.period_ns
        self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def quantile(self, q: float) -> int:
        assert len(self.lateness) >= 100, f"probe took only {len(self.lateness)} samples"
        s = sorted(self.lateness)
        return s[min(len(s) - 1, int(len(s) * q))]


@contextlib.asynccontextmanager
async def served_by_hypercorn(app: Any, **options: Any) -> AsyncIterator[int]:
    """``app`` served by hypercorn (a third-party HTTP/1.1 + h2 stack) on a free 127.0.0.1 port, with Config
    ``options``; yields the port once it accepts connections; always shut down."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cfg = Config()
    cfg.bind = [f"127.0.0.1:{port}"]
    cfg.accesslog = None
    cfg.errorlog = None
    for k, v in options.items():
        setattr(cfg, k, v)
    shutdown = asyncio.Event()
    task = asyncio.create_task(serve(app, cfg, shutdown_trigger=shutdown.wait))  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)
        yield port
    finally:
        shutdown.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


async def check_open_loop_keeps_the_rate(eng: Any, sink: FakeSink) -> None:
    """400 req/s for 1 s: every send made (no drops on slow answers), on time (median lateness within 5 ms, or of
    the loop's own timer lateness when the machine is loaded)."""
    probe = LagProbe()
    probe.start()
    try:
        await asyncio.wait_for(eng.run(constant_rate(400, 1.0, 1000), Stop()), 20)
    finally:
        probe.stop()
    assert not sink.drops
    assert 396 <= len(sink.rows) <= 404
    lateness = sorted(r[1] - r[0] for r in sink.rows)
    assert lateness[len(lateness) // 2] < max(5_000_000, 2 * probe.quantile(0.5) + 5_000_000)
