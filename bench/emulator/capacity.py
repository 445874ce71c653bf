"""The emulator's capacity model: `replicas` service slots, a base latency plus a per-row cost, seeded jitter.

Requests beyond the slots queue (FIFO). Capacity is therefore known: about replicas / mean service time, which
lets capacity planning be checked against ground truth.
"""

from __future__ import annotations

import math

import anyio
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
        self._slots: anyio.Semaphore | None = None  # created lazily inside the running event loop
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
        """Wait for a free slot, hold it for one service time; returns the service time in seconds."""
        if self._slots is None:
            self._slots = anyio.Semaphore(self.replicas)
        self.queued += 1
        async with self._slots:
            self.queued -= 1
            self.in_service += 1
            try:
                t = self.service_time_s(rows)
                if t > 0 and math.isfinite(t):
                    await anyio.sleep(t)
                return t
            finally:
                self.in_service -= 1
