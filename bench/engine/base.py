"""The engines' side of the contracts between the runner, the engines, the targets and the recorder.

The runner builds a ``RequestSet`` (pre-encoded bodies + headers, from a target and a payload), a
``LoadSpec`` (how load is applied) and a ``ResultSink`` (the recorder), then calls ``Engine.run``. The engine
owns the hot loop; it calls ``classify`` once per answer and ``sink.record`` once per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from bench.headers import header_value_problem, host_value_problem, reserved_header_problem

# the contracts live in the leaf bench.results (the recorder and the targets use them without the engines)
from bench.results import Classifier, LoadSpec, PreparedBody, RequestSet, ResultSink, StopSignal

__all__ = ["Classifier", "Engine", "EngineConfig", "LoadSpec", "PreparedBody", "RequestBuildError", "RequestSet",
           "ResultSink", "StopSignal", "check_header"]


class RequestBuildError(ValueError):
    """The engine cannot put the request on the wire (e.g. a header that is not one line of ASCII text): a local
    fault, the same for every request, so the run ends with it (the runner reports it in one line) instead of
    counting each request as failed. Never carries a header's value (it may be a credential)."""


def check_header(name: str, value: str) -> None:
    """Raise RequestBuildError unless ``name: value`` can be sent as is by every engine (printable ASCII; httpx
    encodes header values as ASCII, HTTP/1.1 and HPACK as bytes), is not one the engines set themselves
    (Content-Length, Connection, …) and, for Host, is a host[:port]. The scenario reader refuses such headers up
    front; this keeps a value that arrives another way (a token refreshed mid-run) from breaking an engine."""
    if not (name.isascii() and name.isprintable()):
        problem = "its name holds a line break, a control or a non-ASCII character"
    elif reserved := reserved_header_problem(name):
        raise RequestBuildError(f"header {name!r}: {reserved}")
    else:
        problem = header_value_problem(value) or ""
        if not problem and name.lower() == "host" and host_value_problem(value):
            problem = "not a host or host:port"
    if problem:
        raise RequestBuildError(f"header {name.encode('ascii', 'replace').decode()!r}: {problem} (not shown)")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    kind: Literal["auto", "fast", "httpx"] = "auto"
    http2: bool = False
    connections: int = 0  # HTTP/2: connections (0 = 1); HTTP/1.1 open loop: the most (0 = up to max_in_flight)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    verify_tls: bool = True
    ca_bundle: str | None = None
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    pacing: Literal["auto", "sleep", "spin"] = "auto"  # open loop: see bench.engine.pacer
    max_body_bytes: int = 16 * 1024 * 1024
    extra: Mapping[str, object] = field(default_factory=dict)


class Engine(Protocol):
    """An engine instance serves one run. Constructed as ``EngineClass(config, requests, classify, sink)``."""

    abandoned: int  # requests taken on and still unanswered when the run ended (the runner records them)
    spin_ns: int  # open loop: time the pacer spun instead of sleeping in epoll (0: it never did) ...
    spin_idle_ns: int  # ... of which it had nothing else to do: CPU burnt waiting, not the run's CPU use
    resent: dict[str, int]  # requests sent a second time, by run counter (bench.results.RESENT_*; {}: none)

    @property
    def connections_opened(self) -> int | None:
        """Connects attempted during the run (None: the engine does not count them)."""

    @property
    def waited_at_cap(self) -> int:
        """HTTP/1.1 open loop: sends that found all ``EngineConfig.connections`` busy and waited for one."""

    @property
    def sent(self) -> int:
        """Requests taken on (every one ends recorded once or counted in ``abandoned``)."""

    def set_headers(self, headers: Mapping[str, str]) -> None:
        """Replace/add request headers (e.g. a refreshed token) without pausing load."""

    def watch_headers(self, names: Iterable[str], hook: Callable[[int, dict[str, str]], None] | None) -> None:
        """Before ``run``: call ``hook(status, {name: value})`` with the answer headers named in ``names``
        (``x-ratelimit-*`` is a prefix) once per final answer; ``None`` (the default) costs nothing per request.
        See ``bench.engine.common.HeaderWatch``."""

    async def run(self, load: LoadSpec, stop: StopSignal) -> None:
        """Apply the load until stopped; every request ends in exactly one sink.record or sink.dropped."""
