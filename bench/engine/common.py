"""What the engines share: construction from the engine contract, and the run scaffolding of the callback engines.

Why a base class and not helper calls: the lean engines' hot path (protocol callbacks, dispatch, record) stays in
the subclasses untouched; only the once-per-run lifecycle (stop signal, end timer, loop monitor, read-timeout
sweeper, pacer, drain) lives here, so a fix to it reaches ``FastEngine`` and ``H2Engine`` alike.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from bench.engine.base import Classifier, EngineConfig, LoadSpec, RequestSet, ResultSink, StopSignal
from bench.engine.loopmon import LoopMonitor
from bench.engine.pacer import Pacer, Sweeper, sleep_until

__all__ = ["DEFAULT_OPEN_LIMIT", "MAX_BACKOFF_S", "CallbackEngine", "EngineCore", "HeaderWatch", "HeadersHook",
           "SendGate", "backoff_s", "wait_drained"]

DEFAULT_OPEN_LIMIT = 1024  # open loop: max_in_flight when the load spec names none
MAX_BACKOFF_S = 0.5


def backoff_s(failures: int) -> float:
    """Pause before reconnecting after ``failures`` consecutive failed connects: don't spin on a refusing target."""
    return min(MAX_BACKOFF_S, 0.001 * 2.0 ** (failures - 1))


async def wait_drained(waits: Collection[asyncio.Future[Any]], drain_s: float, cut: StopSignal | None) -> None:
    """The drain: wait up to ``drain_s`` for every one of ``waits`` (never cancelled here), ending at once when
    ``cut`` is set (a second Ctrl-C: whoever pressed it gave up on the answers still out, not on the report)."""
    if not waits or (cut is not None and cut.is_set()):
        return
    drained = asyncio.ensure_future(asyncio.wait(waits))
    ends: list[asyncio.Future[Any]] = [drained]
    if cut is not None:
        ends.append(asyncio.ensure_future(cut.wait()))
    try:
        await asyncio.wait(ends, timeout=max(0.0, drain_s), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in ends:
            task.cancel()


HeadersHook = Callable[[int, dict[str, str]], None]
SendGate = Callable[[int, int], int]  # (now_ns, in_flight) -> 0: send now (the gate counts it); else ns to hold


class HeaderWatch:
    """Which answer headers a headers hook wants, and the hook.

    ``names``: header names, case-insensitive; a name ending in ``*`` is a prefix (``x-ratelimit-*``). The hook is
    called as ``hook(status, {name: value})`` once per final answer (status >= 200, never 1xx), when its header
    block arrives (before the body, so also for answers that fail afterwards), with lower-case names and only the
    wanted headers (an empty dict when none came); repeated headers are joined with ", " (RFC 9110 5.3).
    """

    __slots__ = ("exact", "hook", "prefixes")

    def __init__(self, names: Iterable[str], hook: HeadersHook) -> None:
        exact: set[bytes] = set()
        prefixes: list[bytes] = []
        for name in names:
            low = name.strip().lower()
            base = low[:-1] if low.endswith("*") else low
            if not base or any(c in base for c in "\r\n\0: *"):
                raise ValueError(f"headers hook: bad header name {name!r}")
            if base is low:
                exact.add(base.encode("latin-1"))
            else:
                prefixes.append(base.encode("latin-1"))
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.hook = hook

    def wants(self, low_name: bytes) -> bool:
        return low_name in self.exact or (bool(self.prefixes) and low_name.startswith(self.prefixes))

    def pick(self, headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
        """The wanted ``headers`` (raw name/value pairs, any case) as a dict of lower-case names."""
        out: dict[str, str] = {}
        for name, value in headers:
            low = name.lower()
            if self.wants(low):
                key = low.decode("latin-1")
                text = value.decode("latin-1").strip()
                out[key] = f"{out[key]}, {text}" if key in out else text
        return out

    def fire(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        if status >= 200:
            self.hook(status, self.pick(headers))


class EngineCore:
    """The ``Engine`` contract's constructor ``(config, requests, classify, sink)`` and every engine's counters."""

    def __init__(self, config: EngineConfig, requests: RequestSet, classify: Classifier,
                 sink: ResultSink) -> None:
        self.config = config
        self.requests = requests
        cap = max(0, config.max_body_bytes)  # the answer bytes kept for classify (the rest is counted, not kept)
        self.max_body = cap if requests.answer_bytes is None else min(cap, max(0, requests.answer_bytes))
        self.classify = classify
        self.sink = sink
        self.abandoned = 0
        self.spin_ns = 0  # open loop: time the pacer spun instead of sleeping (bench.engine.pacer) ...
        self.spin_idle_ns = 0  # ... and of that, time with nothing else to do (not the run's CPU use)
        if not requests.bodies:
            raise ValueError("RequestSet has no bodies")
        rows = getattr(requests.bodies, "rows", None)  # a LazyBodies knows its row counts without encoding
        self._rows = list(rows) if isinstance(rows, list) else [b.rows for b in requests.bodies]
        self._seq = 0  # requests taken on (put on the wire or waiting for a connection): see ``sent``
        self._queued_at_end = 0  # set by an engine whose queued sends were counted abandoned at the end
        self.waited_at_cap = 0  # open loop: sends that waited because the pool was at engine.connections
        self.resent: dict[str, int] = {}  # requests sent a second time, by run counter (bench.results.RESENT_*)
        self._inflight = 0
        self._stopping = False
        self._max_requests = 0
        self._end_ns = 0
        self._watch: HeaderWatch | None = None
        self._started = False

    def watch_headers(self, names: Iterable[str], hook: HeadersHook | None) -> None:
        """Call ``hook(status, headers)`` with the chosen answer headers (see ``HeaderWatch``); ``None`` removes
        it. Set before ``run``: the engines pick their per-connection parsers when connections open."""
        if self._started:
            raise RuntimeError("watch_headers must be called before run()")
        self._watch = HeaderWatch(names, hook) if hook is not None else None

    def count_resent(self, counter: str, n: int = 1) -> None:
        """``n`` requests go out a second time (why: ``counter``, a ``bench.results.RESENT_*`` name). Not new
        requests: ``sent`` and the records are unchanged; the runner stores the counts as run counters."""
        self.resent[counter] = self.resent.get(counter, 0) + n

    @property
    def sent(self) -> int:
        """Requests this engine took on (dropped sends excluded). After ``run``: every one was recorded once or
        counted in ``abandoned`` — the runner checks ``sent == recorded + abandoned`` (bench.report.accounting)."""
        return self._seq + self._queued_at_end


class CallbackEngine(EngineCore):
    """Run lifecycle of an engine driven by transport callbacks, the pacer (open loop) and the sweeper.

    A subclass provides the per-request parts — ``may_issue``, ``dispatch``, ``dispatched``, ``sweep``,
    ``_check_drained`` — and three once-per-run hooks: ``_prepare_open`` (before ``start_ns``), ``_start_closed``
    (at ``start_ns``) and ``_release`` (always, at the end: count what is abandoned, close connections).
    """

    def __init__(self, config: EngineConfig, requests: RequestSet, classify: Classifier,
                 sink: ResultSink) -> None:
        super().__init__(config, requests, classify, sink)
        self._open = False
        self._limit = 0
        self._slots_live = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle_waiter: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pacer: Pacer | None = None
        self._gate: SendGate | None = None
        self._held: deque[Any] = deque()  # sends (open loop: intended times) or slots (closed) the gate holds
        self._gate_timer: asyncio.TimerHandle | None = None
        self._wake_soon = False
        self._connects = 0  # connects attempted (connections_opened)
        self._fast_end = -1  # closed loop: until then (no request cap, no gate, not stopping) a freed slot sends again

    async def run(self, load: LoadSpec, stop: StopSignal) -> None:
        loop = asyncio.get_running_loop()
        self._started = True
        self._loop = loop
        self._end_ns = load.end_ns
        self._max_requests = load.max_requests
        self._fast_end = -1 if self._max_requests or self._gate is not None else load.end_ns
        self._open = load.mode == "open"
        monitor = LoopMonitor(self.sink.loop_lag)
        monitor.start()
        sweep = Sweeper(self, loop)
        pacer: Pacer | None = None
        stop_task = loop.create_task(stop.wait())
        stop_task.add_done_callback(lambda _t: self._begin_stop())
        self._issuing_done: asyncio.Future[None] = loop.create_future()
        end_timer = loop.call_later(max(0.0, (load.end_ns - time.monotonic_ns()) / 1e9), self._begin_stop)
        try:
            offsets: Iterator[int] | None = None
            if self._open:
                if load.offsets_ns is None:
                    raise ValueError("open loop needs LoadSpec.offsets_ns")
                offsets = self._prepare_open(load, load.offsets_ns)
            await sleep_until(load.start_ns)
            if stop.is_set():
                self._begin_stop()
            elif offsets is not None:
                pacer = self._pacer = Pacer(self, loop, load.start_ns, offsets, pacing=self.config.pacing)
                pacer.start()
            else:
                self._slots_live = max(1, load.concurrency)
                self._start_closed(time.monotonic_ns())
            await self._issuing_done
            await self._drain(load.drain_s, load.drain_cut)
        finally:
            end_timer.cancel()
            self._end_held()
            if pacer is not None:
                pacer.stop()
                self.spin_ns, self.spin_idle_ns = pacer.spin_ns, pacer.spin_idle_ns
            self._pacer = None
            sweep.stop()
            monitor.stop()
            stop_task.cancel()
            for task in list(self._tasks):
                task.cancel()
            self._release()

    @property
    def connections_opened(self) -> int:
        return self._connects

    # -- send gate (a client-side rate limit, e.g. UbiOps backoff) ------------------------------------
    def gate_sends(self, gate: SendGate | None) -> Callable[[], None]:
        """Before ``run``: ask ``gate(now_ns, in_flight)`` before every send; 0 lets it go (the gate counts it),
        a positive value holds it that many ns — a closed-loop slot waits, an open-loop send waits in order
        (counted against ``max_in_flight``; still held at the end: dropped) and leaves late, its latency counted
        from its intended time. Returns ``wake``: call it when the gate may admit sooner (e.g. from a headers
        hook); safe from any callback on the run's loop. Without a gate the hot path tests one attribute."""
        if self._started:
            raise RuntimeError("gate_sends must be called before run()")
        self._gate = gate
        return self._wake

    def _queued(self) -> int:
        """Sends taken on but not yet counted in ``_inflight`` (the fast engine's connection backlog)."""
        return 0

    def _holds(self, now: int) -> bool:
        """With a gate: True when it holds the next send (a wake-up is then armed)."""
        assert self._gate is not None
        wait = self._gate(now, self._inflight + self._queued())
        if wait <= 0:
            return False
        loop = self._loop
        if loop is not None:
            at = loop.time() + wait / 1e9
            timer = self._gate_timer
            if timer is None or timer.when() > at:
                if timer is not None:
                    timer.cancel()
                self._gate_timer = loop.call_at(at, self._release_held)
        return True

    def _hold_open(self, intended: int) -> bool:
        """Open loop with a gate: True when the send due at ``intended`` is held (or dropped: no room), in order
        behind those already held."""
        held = self._held
        if not held and not self._holds(time.monotonic_ns()):
            return False
        taken = self._inflight + self._queued() + len(held)
        if taken >= self._limit:
            self.sink.dropped(intended)
        elif not self._max_requests or self._seq + self._queued() + len(held) < self._max_requests:
            held.append(intended)  # (enough are held to reach max_requests: the rest of the schedule is moot)
        return True

    def _wake(self) -> None:
        if self._held and not self._wake_soon and not self._stopping and self._loop is not None:
            self._wake_soon = True
            self._loop.call_soon(self._release_held)

    def _release_held(self) -> None:
        """Let held sends go, oldest first, while the gate admits them."""
        self._wake_soon = False
        if self._gate_timer is not None:
            self._gate_timer.cancel()
            self._gate_timer = None
        held = self._held
        now = time.monotonic_ns()
        while held and not self._stopping and self.may_issue(now) and not self._holds(now):
            self._resume(held.popleft(), now)
        self.dispatched()

    def _end_held(self) -> None:
        """The run stops issuing: held open-loop sends are dropped (never sent), held slots end."""
        if self._gate_timer is not None:
            self._gate_timer.cancel()
            self._gate_timer = None
        held = self._held
        if self._open:
            for intended in held:
                self.sink.dropped(intended)
        else:
            self._slots_live -= len(held)
        held.clear()

    def _resume(self, item: Any, now: int) -> None:
        """Send a held item the gate has just admitted (an engine's ``dispatch`` / next-slot path, ungated)."""
        raise NotImplementedError

    # -- once-per-run hooks -------------------------------------------------------------------------
    def _prepare_open(self, load: LoadSpec, offsets: Iterator[int]) -> Iterator[int]:
        """Open loop, before ``start_ns``: set ``_limit``, warm up; returns the offsets the pacer should use."""
        raise NotImplementedError

    def _start_closed(self, now: int) -> None:
        """Closed loop, at ``start_ns``: start ``_slots_live`` workers."""
        raise NotImplementedError

    def _release(self) -> None:
        """End of the run (also on error): count unanswered requests as abandoned, close every connection."""
        raise NotImplementedError

    # -- per-request parts (the pacer's and the sweeper's view of the engine) -----------------------
    def may_issue(self, now: int) -> bool:
        raise NotImplementedError

    def dispatch(self, intended: int) -> None:
        raise NotImplementedError

    def dispatched(self) -> None:
        raise NotImplementedError

    def sweep(self, now: int) -> None:
        raise NotImplementedError

    def _check_drained(self) -> None:
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------------------------------
    def open_finished(self) -> None:
        self._begin_stop()

    def _begin_stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._fast_end = -1
            if self._held or self._gate_timer is not None:
                self._end_held()
            fut = self._issuing_done
            if not fut.done():
                fut.set_result(None)

    async def _drain(self, drain_s: float, cut: StopSignal | None = None) -> None:
        """Wait up to ``drain_s`` (or until ``cut``) for answers in flight; ``_check_drained`` resolves
        ``_idle_waiter``."""
        if self._inflight <= 0:
            return
        assert self._loop is not None
        self._idle_waiter = self._loop.create_future()
        await wait_drained([self._idle_waiter], drain_s, cut)
