"""Contracts between the runner, the engines, the targets and the recorder.

The runner builds a ``RequestSet`` (pre-encoded bodies + headers, from a target and a payload), a
``LoadSpec`` (how load is applied) and a ``ResultSink`` (the recorder), then calls ``Engine.run``. The engine
owns the hot loop; it calls ``classify`` once per answer and ``sink.record`` once per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = ["Classifier", "Engine", "EngineConfig", "LoadSpec", "PreparedBody", "RequestSet", "ResultSink",
           "StopSignal"]


@dataclass(frozen=True, slots=True)
class PreparedBody:
    """One request body, encoded once before the run."""

    body: bytes
    rows: int


@dataclass(slots=True)
class RequestSet:
    """Everything needed to put requests on the wire; the run cycles through ``bodies`` in order.

    ``headers`` excludes Host/Content-Length (engines add those). ``url`` is absolute (scheme, host, port,
    path and query).
    """

    url: str
    method: str
    headers: dict[str, str]
    bodies: Sequence[PreparedBody]


# classify(status, body, rows_in) -> (kind, rows_out, server_ns). ``body`` is the whole answer body (engines
# keep at most EngineConfig.max_body_bytes of it; classify must then treat a truncated body as its own
# problem). server_ns is a server-reported processing time in ns, or 0 when the target reports none.
Classifier = Callable[[int, bytes, int], tuple[int, int, int]]


class ResultSink(Protocol):
    """The recorder as the engines see it. Called on the event loop thread; must never block."""

    def record(self, intended_ns: int, sent_ns: int, done_ns: int, kind: int, status: int, rows: int,
               bytes_out: int, bytes_in: int, server_ns: int) -> None:
        """One finished request (any outcome). Times are time.monotonic_ns(). rows = rows out (ok) or in."""

    def error_detail(self, kind: int, status: int, detail: bytes) -> None:
        """A non-ok outcome's evidence: up to 512 bytes of the answer body, or the exception text encoded.

        Engines call it for every non-ok outcome; the recorder keeps a bounded sample of distinct details.
        """

    def dropped(self, intended_ns: int) -> None:
        """Open loop: a send due at intended_ns could not start because max_in_flight was reached."""

    def loop_lag(self, lag_ns: int) -> None:
        """Event-loop lag sample (how late a timer fired)."""


class StopSignal(Protocol):
    """Set by the runner (deadline, Ctrl-C, SLO abort). Engines stop sending when it is set."""

    def is_set(self) -> bool: ...

    async def wait(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """How load is applied.

    closed: ``concurrency`` workers each send the next request as soon as the previous answer arrives
    (intended time = the moment the worker became free). open: intended send times come from ``offsets_ns``
    (an iterator of offsets from ``start_ns``, from bench.schedule); a request that cannot start because
    ``max_in_flight`` requests are outstanding is reported with sink.dropped(). The engine stops issuing when
    the stop signal is set, when time.monotonic_ns() >= ``end_ns``, or after ``max_requests`` sends (0 = no
    limit); it then waits at most ``drain_s`` for in-flight answers. Requests still unanswered after that are
    not recorded; the engine counts them in its ``abandoned`` attribute.
    """

    mode: Literal["closed", "open"]
    start_ns: int
    end_ns: int
    concurrency: int = 1
    offsets_ns: Iterator[int] | None = None  # open loop only
    max_in_flight: int = 0
    max_requests: int = 0
    drain_s: float = 5.0


@dataclass(frozen=True, slots=True)
class EngineConfig:
    kind: Literal["auto", "fast", "httpx"] = "auto"
    http2: bool = False
    connections: int = 0  # 0 = one per concurrency slot (HTTP/1.1) or 1 (HTTP/2)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    verify_tls: bool = True
    ca_bundle: str | None = None
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    max_body_bytes: int = 16 * 1024 * 1024
    extra: Mapping[str, object] = field(default_factory=dict)


class Engine(Protocol):
    """An engine instance serves one run. Constructed as ``EngineClass(config, requests, classify, sink)``."""

    abandoned: int

    def set_headers(self, headers: Mapping[str, str]) -> None:
        """Replace/add request headers (e.g. a refreshed token) without pausing load."""

    async def run(self, load: LoadSpec, stop: StopSignal) -> None:
        """Apply the load until stopped; every request ends in exactly one sink.record or sink.dropped."""
