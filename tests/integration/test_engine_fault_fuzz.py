"""The engines against a server that misbehaves at random (hypothesis picks the mix and the seed): every request
an engine takes on ends recorded exactly once (with a known kind) or counted as in flight at the end, and the run
ends within its duration + drain + one read timeout. A request lost on the way (an exception escaping an engine,
as httpx's ``AttributeError: ... 'getpeername'`` on a reset did) breaks ``sent == recorded + abandoned``.

Short in the default run (a few examples); ``-m soak`` runs many more.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
from engine_servers import FakeSink, Stop, bodies, classify
from fault_servers import BEHAVIOURS, FaultServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.engine.base import EngineConfig, LoadSpec, RequestSet
from bench.engine.fast import FastEngine
from bench.engine.h2 import H2Engine
from bench.engine.httpx_engine import HttpxEngine
from bench.results import Kind

RUN_S, DRAIN_S, READ_TIMEOUT_S = 0.4, 0.3, 0.5
MARGIN_S = 3.0  # a loaded 2-core machine
EXAMPLES = int(os.environ.get("BENCH_FUZZ_EXAMPLES", "8"))
ENGINES: dict[str, tuple[type, dict[str, Any]]] = {
    "fast": (FastEngine, {}), "httpx": (HttpxEngine, {"kind": "httpx"}),
    "h2": (H2Engine, {"http2": True}),  # an HTTP/1.1 server: every answer is a protocol error, none lost
}


def _spec(mode: str) -> LoadSpec:
    now = time.monotonic_ns() + 5_000_000
    end = now + int(RUN_S * 1e9)
    if mode == "closed":
        return LoadSpec("closed", now, end, concurrency=4, drain_s=DRAIN_S)
    offsets = iter(range(0, int(RUN_S * 1e9), 2_000_000))  # 500/s
    return LoadSpec("open", now, end, offsets_ns=offsets, max_in_flight=16, drain_s=DRAIN_S)


def _check(engine: str, mode: str, seed: int, weights: list[float]) -> None:
    cls, cfg = ENGINES[engine]
    mix = {b: w + 0.01 for b, w in zip(BEHAVIOURS, weights, strict=True)}
    with FaultServer("random", seed=seed, weights=mix) as srv:
        sink = FakeSink()
        eng = cls(EngineConfig(read_timeout_s=READ_TIMEOUT_S, connect_timeout_s=1.0, **cfg),
                  RequestSet(f"http://127.0.0.1:{srv.port}/x", "POST", {}, bodies(1)), classify, sink)
        t0 = time.monotonic()
        asyncio.run(asyncio.wait_for(eng.run(_spec(mode), Stop()), 30))
        took = time.monotonic() - t0
    assert eng.sent == len(sink.rows) + eng.abandoned, (eng.sent, len(sink.rows), eng.abandoned, sink.kinds())
    assert eng.sent > 0
    assert set(sink.kinds()) <= {int(k) for k in Kind}, sink.kinds()
    assert took < RUN_S + DRAIN_S + READ_TIMEOUT_S + MARGIN_S, took


_given = given(engine=st.sampled_from(sorted(ENGINES)), mode=st.sampled_from(["closed", "open"]),
               seed=st.integers(0, 2**16), weights=st.lists(st.floats(0.0, 1.0), min_size=len(BEHAVIOURS),
                                                            max_size=len(BEHAVIOURS)))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@_given
def test_every_request_taken_on_is_recorded_once_or_in_flight_at_end(engine: str, mode: str, seed: int,
                                                                     weights: list[float]) -> None:
    _check(engine, mode, seed, weights)


@pytest.mark.soak
@pytest.mark.timeout(900)  # 200 examples of up to ~1 s each: longer than the default 120 s for one test
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@_given
def test_every_request_accounted_for_long(engine: str, mode: str, seed: int, weights: list[float]) -> None:
    _check(engine, mode, seed, weights)


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_each_fault_alone_keeps_the_invariant(engine: str, behaviour: str) -> None:
    weights = [1.0 if b == behaviour else 0.0 for b in BEHAVIOURS]
    _check(engine, "closed", 1, [w * 100 for w in weights])
