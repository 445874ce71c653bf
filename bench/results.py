"""What a request's result is, and the contracts that carry it from the engines to the recorder.

The hot path passes kinds as small ints (``Kind``); reports and summaries use their names. HTTP error
statuses are kept beside the kind (``HTTP_ERROR`` + status) so errors are counted by kind *and* status.
One finished request is one record of ``RECORD_FIELDS`` (``ResultSink.record``'s arguments, the recorder's
buffer columns and the raw log's columns, in this order).

A leaf: the engines, the recorder, the targets and the runner import it; it imports nothing of bench.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal, Protocol

__all__ = [
    "ERROR_DETAIL_BYTES",
    "ERROR_KINDS",
    "GATE_HOLDS",
    "RECORD_FIELDS",
    "RESENT_COUNTERS",
    "RESENT_GOAWAY",
    "RESENT_REFUSED_STREAM",
    "RESENT_STALE_CONNECTION",
    "Classifier",
    "Kind",
    "LoadSpec",
    "PreparedBody",
    "RequestSet",
    "ResultSink",
    "StopSignal",
    "body_getter",
    "field_index",
    "kind_name",
]

RECORD_FIELDS = ("intended_ns", "sent_ns", "done_ns", "kind", "status", "rows", "bytes_out", "bytes_in",
                 "server_ns")


def field_index(name: str) -> int:
    """Column of ``name`` in a record (and in the recorder's buffer)."""
    return RECORD_FIELDS.index(name)


class Kind(IntEnum):
    OK = 0
    BAD_RESPONSE = 1  # 2xx but rows out != rows in, or an undecodable body
    HTTP_ERROR = 2  # non-2xx answer other than 429 (status recorded beside it)
    RATE_LIMITED = 3  # HTTP 429
    REQUEST_FAILED = 4  # UbiOps: HTTP 200 with "status": "failed"
    CONNECT_REFUSED = 5
    CONNECT_TIMEOUT = 6
    READ_TIMEOUT = 7
    RESET = 8  # connection reset / closed mid-answer
    PROTOCOL_ERROR = 9  # unparseable HTTP, HTTP/2 stream reset, ...
    TLS_ERROR = 10
    DROPPED = 11  # open loop: a send that could not start on time (max_in_flight reached); never sent
    OTHER = 12
    ABANDONED = 13  # sent, still unanswered when the run (and its drain) ended: in flight at the end
    CANCELLED = 14  # UbiOps batch: created, then cancelled before it completed
    MISSING = 15  # UbiOps batch: created, then unknown to the platform (collect of that id alone: 404)


ERROR_KINDS = frozenset(k for k in Kind if k is not Kind.OK)
UNANSWERED_KINDS = frozenset({Kind.CONNECT_REFUSED, Kind.CONNECT_TIMEOUT, Kind.READ_TIMEOUT, Kind.RESET,
                              Kind.TLS_ERROR, Kind.ABANDONED, Kind.CANCELLED, Kind.MISSING})
"""Errors where no answer came back (the client gave up, the connection failed or broke, the request was still out
at the end or never completed): they count in neither throughput nor the span of the answers. A timeout lands on
the schedule of the sends, so counting it made an endpoint answering 100 req/s "achieve" the 200 it was sent."""

_NAMES = tuple(k.name.lower() for k in Kind)


def kind_name(kind: int) -> str:
    """The report/summary name of a kind code ('ok', 'read_timeout', ...)."""
    return _NAMES[kind]


UNANSWERED_NAMES = frozenset(kind_name(k) for k in UNANSWERED_KINDS)


@dataclass(frozen=True, slots=True)
class PreparedBody:
    """One request body, encoded once before the run."""

    body: bytes
    rows: int


def body_getter(bodies: Sequence[PreparedBody]) -> Callable[[int], bytes]:
    """Body ``i`` without building every body first (``LazyBodies.body`` encodes on first use)."""
    get = getattr(bodies, "body", None)
    if callable(get):
        return get  # type: ignore[no-any-return]
    return lambda i: bodies[i].body


GATE_HOLDS = "gate_holds"  # run counter: times a send gate (a client-side rate limit) began holding sends
# Run counters of requests a lean engine sent a second time, by why (docs/exit-codes.md, "Re-sent requests"): each
# is one request (one record), never an extra one in ``sent``; the server received it twice at most.
RESENT_STALE_CONNECTION = "resent_stale_connection"  # HTTP/1.1: the kept-alive connection was closed under it
RESENT_GOAWAY = "resent_goaway"  # HTTP/2: on a stream above a GOAWAY's last_stream_id (never processed)
RESENT_REFUSED_STREAM = "resent_refused_stream"  # HTTP/2: reset with REFUSED_STREAM (never processed)
RESENT_COUNTERS = (RESENT_STALE_CONNECTION, RESENT_GOAWAY, RESENT_REFUSED_STREAM)
ERROR_DETAIL_BYTES = 512  # the evidence an error keeps of its answer (ResultSink.error_detail)

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

    def abandoned(self, n: int, at_ns: int) -> None:
        """``n`` requests still in flight when the run ended at ``at_ns``: errors of kind ``abandoned``."""

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
    not recorded by the engine; it counts them in its ``abandoned`` attribute and the runner hands that figure to
    ``sink.abandoned`` (kind ``abandoned``), so ``sent == recorded + abandoned`` (``Engine.sent``). ``drain_cut``,
    once set (a second Ctrl-C), ends the drain at once: the user gave up waiting, not the report.
    """

    mode: Literal["closed", "open"]
    start_ns: int
    end_ns: int
    concurrency: int = 1
    offsets_ns: Iterator[int] | None = None  # open loop only
    max_in_flight: int = 0
    max_requests: int = 0
    drain_s: float = 5.0
    drain_cut: StopSignal | None = None



@dataclass(slots=True)
class RequestSet:
    """Everything needed to put requests on the wire; the run cycles through ``bodies`` in order.

    ``headers`` never holds Content-Length and the like (``bench.headers``: the engines set them); a Host header
    replaces the URL's host on the wire and as the TLS server name. ``url`` is absolute
    (scheme, host, port, path and query).
    """

    url: str
    method: str
    headers: dict[str, str]
    bodies: Sequence[PreparedBody]
    # how much of each answer the classifier reads (None: all of it, up to EngineConfig.max_body_bytes). A target
    # judged by status alone keeps only ERROR_DETAIL_BYTES: a 20 MiB answer then costs no join and no memory
    answer_bytes: int | None = None
