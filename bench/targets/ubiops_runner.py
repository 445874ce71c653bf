"""The UbiOps data plane of batch mode (bench.targets.ubiops_batch: create, collect, cancel, with full
accounting), reporting to the run's recorder. Direct requests run on a bench engine instead, with the request
budget and the rate-limit backoff as its send gate and headers hook (``attach_direct``).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench.results import LoadSpec, StopSignal
from bench.targets.ubiops import UbiOpsConfig
from bench.targets.ubiops_batch import Batch
from bench.targets.ubiops_budget import Budget
from bench.targets.ubiops_plane import RATE_HEADERS, RateGate, UbiOpsSink, UbiOpsStats

__all__ = ["UbiOpsSink", "UbiOpsStats", "attach_direct", "run_ubiops"]


async def run_ubiops(cfg: UbiOpsConfig, inputs: Sequence[bytes], rows_per_input: Sequence[int] | int,
                     sink: UbiOpsSink, load: LoadSpec, stop: StopSignal,
                     verify: ssl.SSLContext | bool = True,
                     watch_sent: Callable[[Callable[[], int]], None] | None = None) -> UbiOpsStats:
    """Apply ``load`` to a UbiOps deployment in batch mode; returns the run facts.

    ``inputs`` are pre-encoded single batch items (a ``Sequence`` that may encode on first use). ``load`` paces
    create calls of ``cfg.batch_size`` items (closed loop: ``concurrency`` chunks outstanding until all their
    requests finish; open loop: one chunk per offset) and ``max_requests`` caps the number of requests created.
    ``watch_sent`` gets how to read the items sent so far (in create calls, answered or not), for a checkpoint.
    """
    if cfg.mode != "batch":
        raise ValueError("direct requests run on a bench engine (attach_direct), not here")
    if not inputs:
        raise ValueError("no inputs to send")
    rows = [rows_per_input] * len(inputs) if isinstance(rows_per_input, int) else list(rows_per_input)
    if len(rows) != len(inputs):
        raise ValueError("rows_per_input must have one entry per input")
    stats = UbiOpsStats(mode=cfg.mode)
    budget = Budget(cfg.calls_per_minute)
    # batch mode never spends past the server's announced window (its own calls must never cause a 429)
    gate = RateGate(sink, stats, True, budget)
    try:
        batch = Batch(cfg, inputs, rows, sink, load, stop, stats, gate, verify)
        if watch_sent is not None:
            watch_sent(lambda: batch.items_sent)
        await batch.run()
    finally:
        _store_budget(stats, budget, sink)
    return stats


def attach_direct(cfg: UbiOpsConfig, engine: Any, sink: UbiOpsSink) -> Callable[[], Mapping[str, Any]]:
    """Direct requests on a bench ``engine`` (before its ``run``): its headers hook feeds the rate gate (gauges,
    ``ratelimit_429``); with ``on_rate_limit = "backoff"`` the gate is also its send gate — the request budget
    and the server's window (``x-ratelimit-*``, ``retry-after``) decide when each request may go. Returns what
    the run adds to the report's metadata (``extra.ubiops``), to be called once the engine has finished.

    The engine records every request (sent = ok + errors by kind + in flight at the end: the runner's
    accounting), so the extras hold only what the engine does not know: 429s, pauses, the budget."""
    stats = UbiOpsStats(mode="direct")
    backoff = cfg.on_rate_limit == "backoff"
    budget = Budget(cfg.calls_per_minute if backoff else 0)  # count mode: a deliberate overload, unbudgeted
    gate = RateGate(sink, stats, backoff, budget)
    engine.watch_headers(RATE_HEADERS, gate.on_headers)
    if backoff:
        gate.wake = engine.gate_sends(gate.admit)

    def finish() -> Mapping[str, Any]:
        facts: dict[str, Any] = {"mode": "direct", "on_rate_limit": cfg.on_rate_limit,
                                 "rate_limited": stats.rate_limited}
        if backoff:  # count mode neither pauses nor spends a budget: no figures for them
            _store_budget(stats, budget, sink)
            facts.update(rate_limit_pauses=stats.rate_limit_pauses,
                         rate_limit_pause_s=round(stats.rate_limit_pause_s, 3), budget=stats.budget)
        return {"ubiops": facts}

    return finish


def _store_budget(stats: UbiOpsStats, budget: Budget, sink: UbiOpsSink) -> None:
    stats.budget = budget.summary()
    for name, value in stats.budget.items():
        if name.endswith("_calls") and isinstance(value, int):
            sink.count(name, value)
