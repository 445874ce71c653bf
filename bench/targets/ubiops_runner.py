"""The UbiOps data plane: direct requests (one result per request, like an engine), and batch mode
(bench.targets.ubiops_batch) with full accounting; both report to the run's recorder.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import anyio
import httpx

from bench.failures import httpx_kind
from bench.results import Kind, LoadSpec, StopSignal
from bench.targets.ubiops import UbiOpsConfig, classify_direct, error_message_of
from bench.targets.ubiops_batch import Batch
from bench.targets.ubiops_budget import Budget
from bench.targets.ubiops_plane import (
    Flight,
    RateGate,
    UbiOpsSink,
    UbiOpsStats,
    client_for,
    drop,
    now_ns,
    pace_open_loop,
)

__all__ = ["UbiOpsSink", "UbiOpsStats", "run_ubiops"]


async def run_ubiops(cfg: UbiOpsConfig, inputs: Sequence[bytes], rows_per_input: Sequence[int] | int,
                     sink: UbiOpsSink, load: LoadSpec, stop: StopSignal) -> UbiOpsStats:
    """Apply ``load`` to a UbiOps deployment; returns the run facts.

    ``inputs`` are pre-encoded: whole direct-request bodies (mode direct) or single batch items (mode batch).
    In batch mode, ``load`` paces create calls of ``cfg.batch_size`` items (closed loop: ``concurrency``
    chunks outstanding until all their requests finish; open loop: one chunk per offset) and
    ``max_requests`` caps the number of requests created.
    """
    if not inputs:
        raise ValueError("no inputs to send")
    rows = [rows_per_input] * len(inputs) if isinstance(rows_per_input, int) else list(rows_per_input)
    if len(rows) != len(inputs):
        raise ValueError("rows_per_input must have one entry per input")
    stats = UbiOpsStats(mode=cfg.mode)
    # direct + on_rate_limit = "count" is a deliberate overload: sent on schedule, 429s counted, no budget
    budget = Budget(cfg.calls_per_minute if cfg.mode == "batch" or cfg.on_rate_limit == "backoff" else 0)
    # batch mode never spends past the server's announced window (its own calls must never cause a 429)
    gate = RateGate(sink, stats, cfg.on_rate_limit == "backoff" or cfg.mode == "batch", budget)
    try:
        if cfg.mode == "direct":
            await _Direct(cfg, inputs, rows, sink, load, stop, stats, gate).run()
        else:
            await Batch(cfg, inputs, rows, sink, load, stop, stats, gate).run()
    finally:
        stats.budget = budget.summary()
        for name, value in stats.budget.items():
            if name.endswith("_calls") and isinstance(value, int):
                sink.count(name, value)
    return stats


class _Direct:
    def __init__(self, cfg: UbiOpsConfig, inputs: Sequence[bytes], rows: list[int], sink: UbiOpsSink,
                 load: LoadSpec, stop: StopSignal, stats: UbiOpsStats, gate: RateGate) -> None:
        self.cfg, self.inputs, self.rows, self.sink = cfg, inputs, rows, sink
        self.load, self.stop, self.stats, self.gate = load, stop, stats, gate
        self.url = cfg.direct_url()
        self.next_index = 0
        self.flight = Flight()
        self.read_timeout_s = (cfg.timeout_s or 300) + 30.0

    def _take(self) -> int | None:
        if self.load.max_requests and self.next_index >= self.load.max_requests:
            return None
        i = self.next_index
        self.next_index += 1
        return i % len(self.inputs)

    async def run(self) -> None:
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._guard, outer.cancel_scope)
            async with anyio.create_task_group() as inner:
                if self.load.mode == "closed":
                    for _ in range(max(1, self.load.concurrency)):
                        inner.start_soon(self._worker)
                else:
                    inner.start_soon(self._open_loop)
            outer.cancel_scope.cancel()

    async def _guard(self, scope: anyio.CancelScope) -> None:
        """After the end (or stop), give in-flight requests drain_s, then abandon them."""
        with anyio.move_on_after(max(0.0, (self.load.end_ns - now_ns()) / 1e9)):
            await self.stop.wait()
        self.stats.interrupted = self.stop.is_set() and now_ns() < self.load.end_ns
        with anyio.move_on_after(self.load.drain_s):
            await self.flight.idle.wait()
        self.stats.abandoned = self.flight.n
        self.sink.abandoned(self.flight.n, now_ns())  # in flight at the end: errors of kind 'abandoned'
        self.sink.count("sent", self.stats.sent)
        scope.cancel()

    def _running(self) -> bool:
        return not self.stop.is_set() and now_ns() < self.load.end_ns

    async def _worker(self) -> None:
        async with client_for(self.cfg, 1, self.read_timeout_s) as client:
            while self._running():
                i = self._take()
                if i is None:
                    return
                if not await self.gate.acquire(self.stop, self.load.end_ns):
                    return
                self.flight.up()
                try:
                    await self._one(client, i, now_ns())
                finally:
                    self.flight.down()

    async def _open_loop(self) -> None:
        connections = max(1, min(self.load.max_in_flight or 64, 64))
        async with client_for(self.cfg, connections, self.read_timeout_s) as client, \
                anyio.create_task_group() as sends:

            def launch(intended: int) -> bool:
                i = self._take()
                if i is None:
                    return False
                self.flight.up()  # counted before the task starts so max_in_flight holds
                sends.start_soon(self._open_one, client, i, intended)
                return True

            await pace_open_loop(self.load, self.stop, self.flight, partial(drop, self.sink, self.stats), launch)

    async def _open_one(self, client: httpx.AsyncClient, i: int, intended: int) -> None:
        try:
            if not await self.gate.acquire(self.stop):
                drop(self.sink, self.stats, intended)
                return
            await self._one(client, i, intended)
        finally:
            self.flight.down()

    async def _one(self, client: httpx.AsyncClient, i: int, intended: int) -> None:
        """One direct request; the gate slot has been acquired by the caller."""
        body, rows_in = self.inputs[i], self.rows[i]
        sent = now_ns()
        self.stats.sent += 1
        try:
            resp = await client.post(self.url, content=body)
        except Exception as exc:  # every failure is counted by kind, never a crashed run
            done = now_ns()
            kind = httpx_kind(exc)
            self.sink.record(intended, sent, done, kind, 0, rows_in, len(body), 0, 0)
            detail = f"{type(exc).__name__}: {exc}".encode()[:512]
            self.sink.error_detail(kind, 0, detail)
            self.stats.note_error(detail)
            return
        finally:
            self.gate.release()
        done = now_ns()
        content = resp.content
        self.gate.observe(resp.headers, resp.status_code)
        kind, rows_out, server_ns = classify_direct(resp.status_code, content, rows_in)
        self.sink.record(intended, sent, done, kind, resp.status_code, rows_out, len(body), len(content),
                         server_ns)
        if kind == Kind.OK:
            self.stats.completed += 1
        else:
            if kind == Kind.REQUEST_FAILED:
                self.stats.failed += 1
            detail = error_message_of(content)
            self.sink.error_detail(kind, resp.status_code, detail)
            self.stats.note_error(detail)
