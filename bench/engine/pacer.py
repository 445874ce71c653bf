"""Open-loop pacing without spinning: a precise alarm the event loop watches like a socket.

Why: loop timers are too coarse for sub-millisecond schedules (uvloop rounds timers to the nearest millisecond; the
default asyncio loop rounds epoll timeouts up to the next one), and re-arming with ``call_soon`` until a send is due
makes the loop poll epoll with a zero timeout on every turn — a whole core at any rate above ~700 req/s. Here the
loop sleeps in epoll until the kernel says the next send is due:

- ``TimerFdWaker`` (Linux): a ``timerfd`` on CLOCK_MONOTONIC (the clock of ``time.monotonic_ns``) armed with an
  absolute deadline; the kernel's hrtimer wakes epoll within tens of µs and no thread or GIL is involved. Re-arming
  clears its readiness, so the wake costs no ``read``.
- ``ThreadWaker`` (elsewhere): a thread that waits on a condition until the deadline (the GIL is released while it
  waits) and writes one byte to a socketpair the loop reads.

``Pacer`` is the loop side: it sends everything due (intended ≤ now) in one batch, then arms the waker for the
next intended time — or, when sends are closer than 0.5 ms, no sooner than ``COALESCE_NS`` from now: on a VM each
alarm costs ~25 µs of CPU (arming and firing a timer trap to the hypervisor), which was most of open loop's cost.
The engine's completion path calls ``Pacer.run_due`` too when a connection frees up and a send is due, so at high
rates most sends leave from answers, not alarms.

Spinning, when the loop is busy anyway: above ~60 % of a core (``pacing = "auto"``) each sleep in epoll and each
alarm cost more than they save (on this VM an open loop spent 10.8 µs per request against the closed loop's 7.9,
in wake-ups that each read a few answers), and coalesced alarms leave sends up to ``COALESCE_NS`` late. Then the
pacer re-queues itself with ``call_soon`` instead: the loop polls epoll without sleeping, answers are read as they
come and sends leave µs after their time. The time it spends spinning with nothing to do is counted
(``spin_idle_ns``) and left out of the run's CPU figure, so a spinning run is not judged generator-bound for the CPU
it burns waiting. An idle turn yields the CPU (``sched_yield``): another process that wants this core, such as
an emulator or a server on the same host, runs first. Below ~30 % busy the pacer goes back to sleeping.
``pacing = "spin"`` / ``"sleep"`` force either.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from time import process_time_ns
from typing import Literal, Protocol

from bench.engine.base import EngineConfig

__all__ = [
    "Dispatchable",
    "Pacer",
    "Sweepable",
    "Sweeper",
    "ThreadWaker",
    "TimerFdWaker",
    "Waker",
    "estimate_rate",
    "make_waker",
    "sleep_until",
]

_NEVER = 1 << 62
_sched_yield: Callable[[], None] = getattr(os, "sched_yield", lambda: None)  # POSIX only
MAX_BATCH = 256  # sends per batch: a late pacer yields to the loop so answers can free connections


class Dispatchable(Protocol):
    """What the pacer needs from an engine. ``_seq`` (requests taken on) and ``_inflight`` change whenever the
    engine sends or completes a request: a spinning pacer that sees neither change between two of its turns
    counts the time between them as idle."""

    _seq: int
    _inflight: int

    def may_issue(self, now: int) -> bool:
        """False once the run stops issuing (deadline, stop signal, max_requests); may begin the stop."""

    def dispatch(self, intended: int) -> None:
        """Start (or drop) the request due at ``intended``."""

    def dispatched(self) -> None:
        """End of a batch of ``dispatch`` calls (an engine that buffers writes flushes here)."""

    def open_finished(self) -> None:
        """The schedule has no more sends."""


class Sweepable(Protocol):
    """What the read-timeout sweeper needs from an engine."""

    @property
    def config(self) -> EngineConfig: ...

    def sweep(self, now: int) -> None: ...


class Waker(Protocol):
    """A one-shot alarm: ``fd`` turns readable at ``deadline_ns`` (time.monotonic_ns clock)."""

    fd: int

    def arm(self, deadline_ns: int) -> None: ...

    def disarm(self) -> None: ...

    def acknowledge(self) -> None:
        """Called by the loop when ``fd`` was readable, before it re-arms or disarms."""

    def close(self) -> None: ...


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1


class TimerFdWaker:
    """Linux timerfd through libc (``os.timerfd_*`` only exists from Python 3.13)."""

    __slots__ = ("_ref", "_settime", "_spec", "fd")

    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise OSError("timerfd is Linux-only")
        libc = ctypes.CDLL(None, use_errno=True)
        create = libc.timerfd_create
        create.argtypes = [ctypes.c_int, ctypes.c_int]
        create.restype = ctypes.c_int
        settime = libc.timerfd_settime
        settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
        settime.restype = ctypes.c_int
        fd = create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.fd = fd
        self._settime: Callable[..., int] = settime
        self._spec = _Itimerspec()
        self._ref = ctypes.byref(self._spec)

    def arm(self, deadline_ns: int) -> None:
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(max(1, deadline_ns), 1_000_000_000)
        if self._settime(self.fd, _TFD_TIMER_ABSTIME, self._ref, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def disarm(self) -> None:
        value = self._spec.it_value
        value.tv_sec = value.tv_nsec = 0
        self._settime(self.fd, 0, self._ref, None)

    def acknowledge(self) -> None:
        """Nothing to read: the re-arm or disarm that follows clears the expiration."""

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ThreadWaker:
    """Portable fallback: a waiting thread writes one byte to a socketpair when the deadline passes."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self.fd = self._r.fileno()
        self._cond = threading.Condition()
        self._deadline = _NEVER
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="bench-pacer", daemon=True)
        self._thread.start()

    def arm(self, deadline_ns: int) -> None:
        with self._cond:
            self._deadline = deadline_ns
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = _NEVER

    def acknowledge(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._r.recv(4096):
                pass

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=1.0)
        self._r.close()
        self._w.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    wait = self._deadline - time.monotonic_ns()
                    if wait <= 0:
                        break
                    self._cond.wait(None if self._deadline == _NEVER else wait / 1e9)
                if self._closed:
                    return
                self._deadline = _NEVER
            with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
                self._w.send(b"\0")


def make_waker() -> Waker:
    """The timerfd waker where the OS has one, else the thread waker."""
    try:
        return TimerFdWaker()
    except (OSError, AttributeError):
        return ThreadWaker()


def estimate_rate(offsets: Iterator[int], window_ns: int = 100_000_000,
                  max_items: int = 1000) -> tuple[float, Iterator[int]]:
    """Sends per second at the start of a schedule, and an iterator that still yields every offset.

    Peeks at most ``max_items`` offsets or ``window_ns`` of schedule (0.0 when the schedule is empty).
    """
    head: list[int] = []
    for off in offsets:
        head.append(off)
        if len(head) >= max_items or off - head[0] >= window_ns:
            break
    rest = itertools.chain(head, offsets)
    if len(head) < 2:
        return (float(len(head)), rest)
    span = head[-1] - head[0]
    rate = (len(head) - 1) * 1e9 / span if span > 0 else math.inf
    return (rate, rest)


WAKE_EARLY_NS = 60_000  # the alarm rings this long before a send is due (see Pacer._on_wake) ...
WAKE_EARLY_MIN_GAP_NS = 500_000  # ... when sends are this far apart: waiting out ≤ 60 µs then costs ≤ 12 % CPU
COALESCE_NS = 200_000  # closer sends: the alarm rings at most once per this long, and sends what is due then
Pacing = Literal["auto", "sleep", "spin"]
SPIN_WINDOW_NS = 100_000_000  # pacing "auto" judges the loop's busy share over windows this long ...
SPIN_ON_BUSY = 0.6  # ... and starts spinning when it was at least this busy while sending coalesced batches
SPIN_OFF_BUSY = 0.3  # ... and sleeps again when it was busy less than this (without the idle spinning)


class Pacer:
    """Loop side of the open-loop schedule: batch-send what is due, then sleep on the waker until the next send.

    ``next_ns`` is the intended time of the next send (a very large number once the schedule is over).
    ``eager_ns`` is when the engine's completion path should call ``run_due`` (``now >= pacer.eager_ns``, one
    comparison): ``next_ns`` while sends are far apart (the alarm rings ahead of each, so a completion that finds
    one due sends it on time), never while they are close: then sends leave in the coalesced alarm's batches, so
    answers come back in bursts the loop reads in few wake-ups; sending one request per completion spread the
    traffic into one wake-up per answer and cost ~15 % more CPU per request at 60-80 k req/s.
    """

    __slots__ = ("_armed", "_cpu", "_cpu0", "_done", "_eng", "_gap", "_idle0", "_judge_ns", "_last", "_loop",
                 "_mark_inflight", "_mark_seq", "_offsets", "_pacing", "_released", "_seq0", "_spin_from", "_start",
                 "_waker", "_wall0", "eager_ns", "late_ns", "next_ns", "spin_idle_ns", "spin_ns", "spinning", "wakes")

    def __init__(self, eng: Dispatchable, loop: asyncio.AbstractEventLoop, start_ns: int,
                 offsets: Iterator[int], waker: Waker | None = None, pacing: Pacing = "auto",
                 cpu_ns: Callable[[], int] = process_time_ns) -> None:
        self._eng, self._loop, self._start = eng, loop, start_ns
        self._pacing = pacing
        self._cpu = cpu_ns  # process CPU time (injectable: the switch's arithmetic is tested on simulated clocks)
        self._offsets: Callable[[], int] = offsets.__next__
        self._waker = waker if waker is not None else make_waker()
        self._armed = -1  # deadline of the pending alarm, -1 when none is pending
        self._gap = WAKE_EARLY_MIN_GAP_NS  # spacing of the last sends: picks precise or coalesced alarms
        self._done = False
        self._released = False
        self.next_ns = -1
        self.eager_ns = -1
        self.wakes = 0  # alarms that fired (for tests and profiling)
        self.late_ns = 0  # how late the last batch started its oldest due send (see run_due)
        self.spinning = False
        self.spin_ns = 0  # time spent spinning (added when a spell ends)
        self.spin_idle_ns = 0  # of which the loop had nothing else to do
        self._spin_from = 0
        self._last = 0  # when the spinner last ran
        self._mark_seq = self._mark_inflight = -1
        self._judge_ns = _NEVER  # next busy-share judgement (pacing "auto": set by start)
        self._wall0 = self._cpu0 = self._idle0 = self._seq0 = 0

    def start(self) -> None:
        self._loop.add_reader(self._waker.fd, self._on_wake)
        if not self._pull():
            return
        now = time.monotonic_ns()
        if self._pacing == "auto":
            self._window(now, self._cpu())
        if self._pacing == "spin":
            self._begin_spin(now)
        else:
            self._loop.call_soon(self._kick)

    def stop(self) -> None:
        """Stop pacing and release the waker (idempotent)."""
        self._done = True
        self._end_spin(time.monotonic_ns())
        self.next_ns = self.eager_ns = _NEVER
        if not self._released:
            self._released = True
            self._loop.remove_reader(self._waker.fd)
            self._waker.close()

    def _pull(self) -> bool:
        try:
            self.next_ns = self._start + self._offsets()
        except StopIteration:
            self._finish()
            self._eng.open_finished()
            return False
        return True

    def _finish(self) -> None:
        self._done = True
        self._end_spin(time.monotonic_ns())
        self.next_ns = self.eager_ns = _NEVER
        if self._armed >= 0:
            self._armed = -1
            self._waker.disarm()

    def _kick(self) -> None:
        self.run_due(time.monotonic_ns())

    def _on_wake(self) -> None:
        self.wakes += 1
        self._waker.acknowledge()
        now = time.monotonic_ns()
        self._armed = -1  # fired: the next arm must reach the kernel even for the same deadline
        due = self.next_ns
        if 0 < due - now <= WAKE_EARLY_NS:
            # the alarm fires WAKE_EARLY_NS ahead: the wake-up path (epoll, callback) costs tens of µs, so
            # waiting out the rest here sends on time instead of that much late (never early)
            while now < due:
                now = time.monotonic_ns()
        self.run_due(now)

    def run_due(self, now: int) -> None:
        """Send the requests due at or before ``now`` (one batch of at most MAX_BATCH), then arm the alarm for the
        next one. ``now`` is not re-read inside a batch: a pacer that has fallen behind must not keep the loop
        from reading answers (which free connections) while ever more sends fall due."""
        if self._done:
            return
        eng = self._eng
        nxt = self.next_ns
        # how late the oldest due send is being started: the loop's own lag (alarms fire on time and completions
        # call in as they come), whichever path got here; the engine grows its pool only while this is small
        self.late_ns = now - nxt if nxt <= now else 0
        prev = nxt
        sent = 0
        if nxt <= now:
            may_issue, dispatch, offsets, start = eng.may_issue, eng.dispatch, self._offsets, self._start
            while nxt <= now and sent < MAX_BATCH:
                if not may_issue(nxt):
                    self._finish()
                    break
                dispatch(nxt)
                sent += 1
                prev = nxt
                try:  # _pull, inlined: this loop runs once per send
                    nxt = self.next_ns = start + offsets()
                except StopIteration:
                    self._finish()
                    eng.open_finished()
                    break
        if sent:
            eng.dispatched()
        if self._done:
            return
        if sent:
            self._gap = nxt - prev
        if now >= self._judge_ns:
            self._judge(now)
        if self.spinning:
            return  # the spinner sends what falls due; no alarm
        self.eager_ns = nxt if self._gap >= WAKE_EARLY_MIN_GAP_NS else _NEVER
        # Close sends: every alarm (arm + sleep + wake) costs ~25 µs of CPU on a VM (reprogramming the timer traps
        # to the hypervisor), so then the alarm rings at most every COALESCE_NS and sends all that is due; the lag
        # this adds (< COALESCE_NS) is measured, and latency still counts from the intended time.
        if nxt <= now:
            target = nxt  # a full batch and more is due: carry on as soon as the loop has read what arrived
        elif self._gap >= WAKE_EARLY_MIN_GAP_NS:
            target = nxt - WAKE_EARLY_NS
        else:
            target = max(nxt, now + COALESCE_NS)
        armed = self._armed
        if armed < 0 or target < armed:
            # an alarm still pending for an earlier time is kept: re-arming costs as much as the wake it saves
            self._armed = target
            self._waker.arm(target)

    # -- spinning (see the module docstring) -----------------------------------------------------------
    def _window(self, now: int, cpu: int) -> None:
        self._judge_ns = now + SPIN_WINDOW_NS
        self._wall0, self._cpu0, self._idle0, self._seq0 = now, cpu, self.spin_idle_ns, self._eng._seq

    def _judge(self, now: int) -> None:
        """Pacing "auto", once per SPIN_WINDOW_NS: spin while the loop is busy and sends are close (on average
        over the window: one gap of a Poisson schedule says little), else sleep."""
        wall, cpu = now - self._wall0, self._cpu()
        busy = (cpu - self._cpu0 - (self.spin_idle_ns - self._idle0)) / wall if wall > 0 else 0.0
        close = wall < COALESCE_NS * (self._eng._seq - self._seq0)
        if not self.spinning and busy >= SPIN_ON_BUSY and close:
            self._begin_spin(now)
        elif self.spinning and (busy < SPIN_OFF_BUSY or not close):
            self._end_spin(now)
            self._armed = -1
            self._loop.call_soon(self._kick)  # back to alarms: the next run_due arms one
        self._window(now, cpu)

    def _begin_spin(self, now: int) -> None:
        self.spinning = True
        self.eager_ns = _NEVER  # the spinner sends on time: completions need not
        self._spin_from = self._last = now
        self._mark_seq = -1
        self._armed = -1
        self._waker.disarm()  # also clears an expiry just read: a fired timerfd stays readable until re-armed
        self._loop.call_soon(self._spin)

    def _end_spin(self, now: int) -> None:
        if self.spinning:
            self.spinning = False
            self.spin_ns += max(0, now - self._spin_from)

    def _spin(self) -> None:
        """One turn of the spinning loop: send what is due, count the turn idle if nothing happened since the
        last one, and come back after the loop has polled its sockets once more."""
        if not self.spinning:
            return
        now = time.monotonic_ns()
        eng = self._eng
        seq, inflight = eng._seq, eng._inflight
        if seq == self._mark_seq and inflight == self._mark_inflight:
            self.spin_idle_ns += now - self._last
            _sched_yield()  # polite: a process waiting for this CPU (an emulator, a server) runs first
        self._last = now
        if now >= self.next_ns or now >= self._judge_ns:
            self.run_due(now)
            if not self.spinning:
                return
            seq, inflight = eng._seq, eng._inflight
        self._mark_seq, self._mark_inflight = seq, inflight
        self._loop.call_soon(self._spin)


class Sweeper:
    """Read timeouts: one periodic pass over the connections instead of one timer per request."""

    __slots__ = ("_eng", "_handle", "_interval", "_loop")

    def __init__(self, eng: Sweepable, loop: asyncio.AbstractEventLoop) -> None:
        self._eng, self._loop = eng, loop
        self._interval = min(0.1, max(0.005, eng.config.read_timeout_s / 10))
        self._handle: asyncio.TimerHandle | None = loop.call_later(self._interval, self._tick)

    def _tick(self) -> None:
        self._eng.sweep(time.monotonic_ns())
        self._handle = self._loop.call_later(self._interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def sleep_until(deadline_ns: int) -> None:
    """Sleep until time.monotonic_ns() >= deadline_ns: never early (uvloop rounds timers to the nearest ms,
    so a plain sleep can wake up to 0.5 ms before the deadline; the rest is yielded away)."""
    delay = (deadline_ns - time.monotonic_ns()) / 1e9
    if delay > 0.002:
        await asyncio.sleep(delay - 0.001)
    while time.monotonic_ns() < deadline_ns:
        await asyncio.sleep(0)
