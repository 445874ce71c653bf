"""The emulator's capacity model: `replicas` service slots, a base latency plus a per-row cost, seeded jitter.

Requests beyond the slots queue (FIFO). Capacity is therefore known: about replicas / mean service time, which
lets capacity planning be checked against ground truth.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque

import numpy as np

__all__ = ["ServiceModel"]


class ServiceModel:
    def __init__(self, replicas: int, latency_ms: float, per_row_us: float, jitter: float, seed: int) -> None:
        if replicas < 1:
            raise ValueError("replicas must be >= 1")
        self.replicas = replicas
        self.latency_s = latency_ms / 1000.0
        self.per_row_s = per_row_us / 1e6
        self.jitter = jitter
        self._rng = np.random.default_rng(seed)
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._jitter_pool: list[float] = []
        self.in_service = 0
        self.queued = 0

    def mean_service_s(self, rows: int) -> float:
        """Expected service time for a request of `rows` rows (the jitter has mean 1)."""
        return self.latency_s + self.per_row_s * rows

    def capacity_rps(self, rows: int) -> float:
        """Ground-truth saturation throughput in requests/s for requests of `rows` rows."""
        return self.replicas / self.mean_service_s(rows)

    def _draw_jitter(self) -> float:
        if self.jitter <= 0:
            return 1.0
        if not self._jitter_pool:
            sigma = self.jitter
            # lognormal with mean 1: mu = -sigma^2 / 2
            self._jitter_pool = list(self._rng.lognormal(-sigma * sigma / 2, sigma, 4096))
        return self._jitter_pool.pop()

    def service_time_s(self, rows: int) -> float:
        return max(0.0, self.mean_service_s(rows) * self._draw_jitter())

    async def serve(self, rows: int) -> float:
        """Wait for a free slot (FIFO), hold it for one service time; returns the service time in seconds.

        A free slot is taken without yielding to the event loop: the emulator's own overhead stays small next
        to the service times it models.
        """
        if self.in_service < self.replicas and not self._waiters:
            self.in_service += 1
        else:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            self.queued += 1
            try:
                await waiter  # the releasing request hands its slot over (in_service unchanged)
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # the slot was handed to us just as we were cancelled
                else:
                    self._waiters.remove(waiter)
                raise
            finally:
                self.queued -= 1
        try:
            t = self.service_time_s(rows)
            if t > 0 and math.isfinite(t):
                await _sleep_precisely(t)
            return t
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_service -= 1


async def _sleep_precisely(t: float) -> None:
    """Sleep t seconds. uvloop rounds timers to the nearest millisecond (unbiased for jittered times, but
    0.4 ms becomes 0): sub-2 ms times finish by yielding until the deadline."""
    if t >= 0.002:
        await asyncio.sleep(t)
        return
    deadline = time.perf_counter() + t
    if t > 0.0015:
        await asyncio.sleep(0.001)
    while time.perf_counter() < deadline:
        await asyncio.sleep(0)
