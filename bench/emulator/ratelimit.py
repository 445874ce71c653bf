"""The UbiOps API's per-source-IP rate limit: a fixed window of ``limit`` calls per ``window_s`` per endpoint group.

UbiOps counts every call to the requests endpoint group (direct and batch creates, collects, gets, lists,
cancels, deletes) against one limit per source IP, 300 a minute by default, and puts ``x-ratelimit-limit``,
``x-ratelimit-remaining`` and ``x-ratelimit-reset`` (seconds until the window resets) on every answer; a call
over the limit is answered 429, here with ``Retry-After`` too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["FixedWindowLimiter", "Header"]

Header = tuple[bytes, bytes]

_MAX_CLIENTS = 10_000


class FixedWindowLimiter:
    """Fixed windows per client address; ``clock`` is injectable so windows are testable without sleeping."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s = limit, window_s
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def take(self, client: str) -> tuple[bool, list[Header]]:
        """Count one call from ``client``: (allowed, headers for the answer; 429s also get Retry-After)."""
        now = self._clock()
        start, used = self._windows.get(client, (now, 0))
        if now - start >= self.window_s:
            start, used = now, 0
        allowed = used < self.limit
        if allowed:
            used += 1
        self._windows[client] = (start, used)
        if len(self._windows) > _MAX_CLIENTS:  # bounded: forget the oldest windows
            for k in list(self._windows)[:1000]:
                del self._windows[k]
        reset = str(max(1, math.ceil(start + self.window_s - now))).encode()
        headers = [(b"x-ratelimit-limit", str(self.limit).encode()),
                   (b"x-ratelimit-remaining", str(self.limit - used).encode()),
                   (b"x-ratelimit-reset", reset)]
        if not allowed:
            headers.append((b"retry-after", reset))
        return allowed, headers
