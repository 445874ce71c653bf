"""Generator-health inputs: event-loop lag sampling and process CPU use.

A load generator that cannot keep its own schedule reports its queueing as the target's latency. The runner
turns these samples into the ``generator_bound`` verdict; here we only measure, cheaply (one timer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["CpuMeter", "LoopMonitor", "cpu_fraction"]


class LoopMonitor:
    """Calls ``report(lag_ns)`` every ``interval_s`` with how late the timer fired.

    A timer that fires late means callbacks (our hot path) hogged the loop for that long.
    """

    __slots__ = ("_due_ns", "_handle", "_interval_ns", "_interval_s", "_loop", "_report")

    def __init__(self, report: Callable[[int], None], interval_s: float = 0.1) -> None:
        self._report = report
        self._interval_s = interval_s
        self._interval_ns = int(interval_s * 1e9)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due_ns = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._due_ns = time.monotonic_ns() + self._interval_ns
        self._handle = self._loop.call_later(self._interval_s, self._fire)

    def _fire(self) -> None:
        now = time.monotonic_ns()
        self._report(max(0, now - self._due_ns))
        assert self._loop is not None
        self._due_ns = now + self._interval_ns
        self._handle = self._loop.call_later(self._interval_s, self._fire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class CpuMeter:
    """Process CPU time over wall time since the last ``start``/``fraction`` (1.0 = one core saturated)."""

    __slots__ = ("_cpu", "_cpu0", "_wall", "_wall0")

    def __init__(self, cpu: Callable[[], float] = time.process_time,
                 wall: Callable[[], float] = time.monotonic) -> None:
        # the clocks are injectable so the arithmetic is testable exactly, whatever the machine's load
        self._cpu, self._wall = cpu, wall
        self._cpu0 = cpu()
        self._wall0 = wall()

    def fraction(self, reset: bool = True) -> float:
        cpu, wall = self._cpu(), self._wall()
        dw = wall - self._wall0
        frac = (cpu - self._cpu0) / dw if dw > 0 else 0.0
        if reset:
            self._cpu0, self._wall0 = cpu, wall
        return frac


def cpu_fraction(cpu0: float, wall0: float) -> float:
    """CPU share of one core used since (``time.process_time()``, ``time.monotonic()``) = (cpu0, wall0)."""
    dw = time.monotonic() - wall0
    return (time.process_time() - cpu0) / dw if dw > 0 else 0.0
