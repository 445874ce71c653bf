"""The request budget for the UbiOps requests API: one token bucket every call of a run draws from.

UbiOps limits calls to the requests endpoint group per source IP (300 a minute by default) in fixed windows;
creates, collects, gets, cancels and direct requests all count. A fixed window of ``L`` calls admits at most
``L`` in any window whatever its phase only if the client's burst ``B`` plus what it refills in one window stays
within ``L``: so the bucket holds ``B = max(1, L // 10)`` and refills ``(L - B)`` per minute. The server's own
``x-ratelimit-*`` headers still have the last word (bench.targets.ubiops_plane.RateGate); a 429 that happens anyway
(another client on the same address) empties the bucket until ``Retry-After``.

Every call names its purpose (create, collect, cancel, direct) so the report can say how much of the budget
polling used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import anyio

from bench.results import StopSignal

__all__ = ["PURPOSES", "Budget"]

PURPOSES = ("create", "collect", "cancel", "direct")


class Budget:
    """A token bucket of ``calls_per_minute`` (0: unlimited). ``clock`` returns seconds (monotonic)."""

    def __init__(self, calls_per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.calls_per_minute = calls_per_minute
        self.capacity = max(1, calls_per_minute // 10) if calls_per_minute > 0 else 0
        self.rate_per_s = max(1, calls_per_minute - self.capacity) / 60.0 if calls_per_minute > 0 else math.inf
        self._clock = clock
        self._tokens = float(self.capacity)
        self._at = clock()
        self._hold_until = 0.0  # a 429's Retry-After: no call before this
        self.used = dict.fromkeys(PURPOSES, 0)
        self.waited_s = 0.0  # time calls spent waiting for a token
        self.started = clock()

    @property
    def limited(self) -> bool:
        return self.calls_per_minute > 0

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(float(self.capacity), self._tokens + (now - self._at) * self.rate_per_s)
            self._at = now

    def wait_s(self) -> float:
        """Seconds until a call may be made (0 when one may be made now)."""
        if not self.limited:
            return 0.0
        now = self._clock()
        self._refill(now)
        need = 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate_per_s
        ready_at = max(now, self._at) + need  # after a 429 the bucket refills only from the hold's end
        return max(0.0, max(ready_at, self._hold_until) - now)

    def try_take(self, purpose: str) -> bool:
        """Take a token now if there is one."""
        if self.wait_s() > 0:
            return False
        if self.limited:
            self._tokens -= 1.0
        self.used[purpose] += 1
        return True

    async def take(self, purpose: str, stop: StopSignal | None = None, deadline: float | None = None) -> bool:
        """Wait for a token (``stop`` or the ``deadline``, in clock seconds, end the wait: False)."""
        t0 = self._clock()
        try:
            while True:
                if stop is not None and stop.is_set():
                    return False
                if self.try_take(purpose):
                    return True
                delay = self.wait_s()
                if deadline is not None:
                    left = deadline - self._clock()
                    if left <= 0:
                        return False
                    delay = min(delay, left)
                if stop is None:
                    await anyio.sleep(delay)
                else:
                    with anyio.move_on_after(delay):
                        await stop.wait()
        finally:
            self.waited_s += self._clock() - t0

    def honour(self, retry_after_s: float) -> None:
        """A 429 arrived: nothing more until ``retry_after_s`` from now, and the bucket starts empty then."""
        now = self._clock()
        self._refill(now)
        self._tokens = 0.0
        self._hold_until = max(self._hold_until, now + max(0.0, retry_after_s))
        self._at = max(self._at, self._hold_until)

    def rate_for(self, share: float) -> float:
        """Calls per second a user of ``share`` of the budget may make (inf when unlimited)."""
        return self.rate_per_s * share

    def available(self) -> float:
        """Calls the budget allowed since it was made (its burst plus what it refilled); inf when unlimited."""
        if not self.limited:
            return math.inf
        return self.capacity + (self._clock() - self.started) * self.rate_per_s

    def summary(self) -> dict[str, float | int | None]:
        """JSON-ready: the budget, the calls by purpose, and the fraction of the budget polling used."""
        total = sum(self.used.values())
        available = self.available()
        return {
            "budget_calls_per_minute": self.calls_per_minute or None,
            "budget_calls": total,
            "budget_used_fraction": round(total / available, 4) if available != math.inf and available else None,
            "budget_collect_fraction": (round(self.used["collect"] / available, 4)
                                        if available != math.inf and available else None),
            "collect_share_of_calls": round(self.used["collect"] / total, 4) if total else None,
            "budget_wait_s": round(self.waited_s, 3),
            **{f"budget_{p}_calls": n for p, n in self.used.items()},
        }
