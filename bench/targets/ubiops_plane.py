"""What the UbiOps modes share: the stats and sink they report to, the rate-limit gate that follows the
x-ratelimit-* headers (the batch plane's coroutines and, for direct requests, a bench engine's send gate), and
for batch mode in-flight accounting, open-loop pacing and the httpx client.

Batch volumes are low (the requests API allows ~300 calls/min per address), so httpx is cheap enough there.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import anyio
import httpx

from bench.results import GATE_HOLDS, LoadSpec, ResultSink, StopSignal
from bench.targets.ubiops import UbiOpsConfig
from bench.targets.ubiops_budget import Budget

__all__ = ["CANCEL_DEADLINE_S", "MAX_COLLECT_CALLS_PER_TICK", "MAX_ERROR_SAMPLES", "PROBE_WAIT_NS", "RATE_HEADERS",
           "TERMINAL", "Flight", "RateGate",
           "UbiOpsSink", "UbiOpsStats", "client_for", "drop", "first_of", "header_int", "now_ns", "pace_open_loop"]


TERMINAL = frozenset({"completed", "failed", "cancelled"})
MAX_ERROR_SAMPLES = 20
MAX_COLLECT_CALLS_PER_TICK = 20  # oldest ids first; completions are roughly FIFO
CANCEL_DEADLINE_S = 90.0  # long enough to outwait one rate-limit window


class UbiOpsSink(ResultSink, Protocol):
    """The recorder as the UbiOps runner sees it: the engine sink plus named histograms, counters, gauges."""

    def record_named(self, name: str, value_ns: int, at_ns: int | None = None) -> None: ...

    def count(self, name: str, n: int = 1) -> None: ...

    def gauge(self, name: str, value: float) -> None: ...

    def abandoned(self, n: int, at_ns: int) -> None: ...


@dataclass
class UbiOpsStats:
    """Run facts for the report (``to_dict`` is JSON-ready)."""

    mode: str
    sent: int = 0  # direct: requests sent; batch: create calls sent
    created: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    abandoned: int = 0
    rate_limited: int = 0
    dropped: int = 0
    create_rejected: int = 0  # batch items in create calls that were refused (4xx/5xx/429)
    create_unknown: int = 0  # batch items whose create call broke off (they may exist unseen)
    create_abandoned: int = 0  # batch items whose create call was still out at the run's end (may exist unseen)
    collect_calls: int = 0
    cancel_calls: int = 0
    missing: int = 0  # batch ids the platform no longer knows (a collect of that id alone answered 404)
    collect_bisect_calls: int = 0  # collect calls spent isolating missing ids
    cancel_requested: int = 0  # leftovers the run asked the platform to cancel at its end
    cancel_confirmed: int = 0  # ... that the platform reported cancelled
    cancel_unconfirmed: int = 0  # ... that it could not cancel (route missing, refused, out of time, finished)
    cancel_route: str = ""  # "batch" (POST …/requests/cancel) or "patch" (per request, the older API)
    budget: dict[str, Any] = field(default_factory=dict)  # bench.targets.ubiops_budget.Budget.summary()
    rate_limit_pauses: int = 0
    rate_limit_pause_s: float = 0.0
    poll_interval_mean_s: float = 0.0  # the resolution of batch end-to-end latency
    poll_interval_max_s: float = 0.0
    interrupted: bool = False
    invariant_ok: bool = True
    error_messages: list[str] = field(default_factory=list)

    def note_error(self, detail: bytes) -> None:
        text = detail.decode("utf-8", "replace")
        if text not in self.error_messages and len(self.error_messages) < MAX_ERROR_SAMPLES:
            self.error_messages.append(text)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def now_ns() -> int:
    return time.monotonic_ns()


def header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


PROBE_WAIT_NS = 1_000_000_000  # window unknown and a call out: wait this long for its answer at most
RATE_HEADERS = ("x-ratelimit-*", "retry-after")  # what the gate reads (the engines' headers hook takes these)


class RateGate:
    """Follows the x-ratelimit-* headers. In backoff mode it holds sends while the window's remaining budget
    (minus what is already in flight) is spent, until the announced reset; in count mode it only records.

    Two faces: ``acquire`` / ``release`` for the batch plane's coroutines, and ``admit`` (with ``on_headers``
    and ``wake``) as the send gate and headers hook of a bench engine for direct requests."""

    def __init__(self, sink: UbiOpsSink, stats: UbiOpsStats, backoff: bool, budget: Budget | None = None) -> None:
        self.sink, self.stats, self.backoff = sink, stats, backoff
        self.budget = budget or Budget(0)
        self.remaining: int | None = None
        self.reset_at_ns = 0
        self.in_flight = 0
        self.wake: Callable[[], None] | None = None  # the engine's: an answer may let held sends go
        self._pause_started: int | None = None
        self._budget_held_since: int | None = None
        self._answered = anyio.Event()  # set (and replaced) on every observed answer

    def on_headers(self, status: int, headers: dict[str, str]) -> None:
        """The engines' headers hook (lower-case names; see bench.engine.common.HeaderWatch)."""
        self.observe(headers, status)

    def observe(self, headers: Mapping[str, str], status: int) -> None:
        self._answered.set()
        self._answered = anyio.Event()
        limit = header_int(headers, "x-ratelimit-limit")
        remaining = header_int(headers, "x-ratelimit-remaining")
        reset = header_int(headers, "x-ratelimit-reset")
        if limit is not None:
            self.sink.gauge("ratelimit_limit", limit)
        if remaining is not None:
            self.sink.gauge("ratelimit_remaining", remaining)
            self.remaining = remaining
        if reset is not None:
            self.sink.gauge("ratelimit_reset_s", reset)
            self.reset_at_ns = now_ns() + reset * 1_000_000_000
        if status == 429:
            self.stats.rate_limited += 1
            self.sink.count("ratelimit_429")
            self.remaining = 0
            retry_after = header_int(headers, "retry-after")
            wait_s = retry_after if retry_after is not None else reset
            if wait_s is None:  # no header: hold for a second, then probe again
                wait_s = 1
            self.reset_at_ns = max(self.reset_at_ns, now_ns() + wait_s * 1_000_000_000)
            self.budget.honour(wait_s)
        if self.wake is not None:
            self.wake()

    def _window_wait(self, now: int, in_flight: int) -> int:
        """Backoff mode: ns to hold a send for the server's window (0: it fits). Unknown budget (the start, or a
        new window): one probe at a time until an answer tells it."""
        if self.remaining is not None and now >= self.reset_at_ns:
            self.remaining = None  # a new window: budget unknown until the next answer
        if not self.backoff:
            return 0
        if self.remaining is None:
            return PROBE_WAIT_NS if in_flight > 0 else 0
        if self.remaining - in_flight > 0:
            return 0
        if self._pause_started is None:
            self._pause_started = now
            self.sink.count(GATE_HOLDS)
        return max(1_000_000, self.reset_at_ns + 20_000_000 - now)  # a little past the reset

    def _sent(self, now: int) -> None:
        """A send leaves: end the pause it waited out, if any (recorded as how long sending was held)."""
        if self._pause_started is not None:
            pause = now - self._pause_started
            self._pause_started = None
            self.sink.record_named("rate_limit_pause", pause)
            self.sink.count("rate_limit_pauses")
            self.stats.rate_limit_pauses += 1
            self.stats.rate_limit_pause_s += pause / 1e9

    def admit(self, now: int, in_flight: int) -> int:
        """The engines' send gate (``gate_sends``): 0 when a direct request may go now (its budget token taken),
        else ns until it is worth asking again (an answer wakes the engine sooner). Budget first, then window:
        no token is spent on a send the window holds."""
        wait_s = self.budget.wait_s()
        if wait_s > 0:
            if self._budget_held_since is None:
                self._budget_held_since = now
                self.sink.count(GATE_HOLDS)
            return max(1_000_000, int(wait_s * 1e9))
        wait = self._window_wait(now, in_flight)
        if wait:
            return wait
        self.budget.try_take("direct")
        if self._budget_held_since is not None:  # sending was held for the budget (wall time, not per send)
            self.budget.waited_s += (now - self._budget_held_since) / 1e9
            self._budget_held_since = None
        self._sent(now)
        return 0

    async def acquire(self, stop: StopSignal | None, until_ns: int | None = None, purpose: str = "direct") -> bool:
        """Wait for the budget's token, then (backoff mode) until a send fits in the server's window; False when
        stopped or past ``until_ns``. ``purpose`` (create, collect, cancel, direct) is what the budget counts."""
        if not await self.budget.take(purpose, stop, None if until_ns is None else until_ns / 1e9):
            return False
        stop = stop or _NEVER
        while True:
            now = now_ns()
            if stop.is_set() or (until_ns is not None and now >= until_ns):
                return False
            wait = self._window_wait(now, self.in_flight)
            if not wait:
                self._sent(now)
                self.in_flight += 1
                return True
            if until_ns is not None:
                wait = min(wait, until_ns - now)
            await first_of(stop, self._answered, wait / 1e9)

    def release(self) -> None:
        self.in_flight -= 1


class _Never:
    """A stop signal that is never set (cleanup calls that must not be stopped by the run's stop)."""

    def is_set(self) -> bool:
        return False

    async def wait(self) -> None:
        await anyio.sleep_forever()


_NEVER = _Never()


class Flight:
    """Counts outstanding work; ``idle`` is set whenever the count is zero."""

    def __init__(self) -> None:
        self.n = 0
        self.idle = anyio.Event()
        self.idle.set()

    def up(self) -> None:
        if self.n == 0:
            self.idle = anyio.Event()
        self.n += 1

    def down(self) -> None:
        self.n -= 1
        if self.n == 0:
            self.idle.set()


async def first_of(stop: StopSignal, event: anyio.Event, timeout_s: float) -> None:
    """Wait until ``event`` or ``stop`` is set, or ``timeout_s`` passes."""

    async def wait_then_cancel(wait: Any, scope: anyio.CancelScope) -> None:
        await wait()
        scope.cancel()

    with anyio.move_on_after(max(0.0, timeout_s)):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_then_cancel, stop.wait, tg.cancel_scope)
            tg.start_soon(wait_then_cancel, event.wait, tg.cancel_scope)


def drop(sink: UbiOpsSink, stats: UbiOpsStats, intended: int) -> None:
    """A send the schedule wanted but could not make (in-flight cap or rate gate): recorded as dropped."""
    sink.dropped(intended)
    stats.dropped += 1


async def pace_open_loop(load: LoadSpec, stop: StopSignal, busy: Flight, drop: Callable[[int], None],
                          launch: Callable[[int], bool]) -> None:
    """Walk an open-loop schedule: wait until each send is due (``stop`` interrupts the wait), drop one that
    finds ``busy`` at ``max_in_flight``, else ``launch(intended)``. Ends at the test's end, on stop, or when
    ``launch`` returns False (inputs used up). Shared by direct requests and batch creates."""
    assert load.offsets_ns is not None, "open loop needs offsets_ns"
    for offset in load.offsets_ns:
        intended = load.start_ns + offset
        if intended >= load.end_ns or stop.is_set():
            return
        delay = (intended - now_ns()) / 1e9
        if delay > 0:
            with anyio.move_on_after(delay):
                await stop.wait()
            if stop.is_set():
                return
        if load.max_in_flight and busy.n >= load.max_in_flight:
            drop(intended)
            continue
        if not launch(intended):
            return


def client_for(cfg: UbiOpsConfig, connections: int, verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    """The batch plane's client: the run's [engine] timeouts, so a stalled call is a timeout, not a held run."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    timeout = httpx.Timeout(connect=cfg.connect_timeout_s, read=cfg.call_timeout_s, write=cfg.call_timeout_s,
                            pool=None)
    return httpx.AsyncClient(headers=cfg.control_headers(), limits=limits, timeout=timeout, verify=verify)
