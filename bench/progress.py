"""Live progress on stderr: a rich status line on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["ProgressView"]


class ProgressView:
    """Call ``update(snapshot)`` often; it decides what and when to print. ``close()`` clears the live line.

    A snapshot is the recorder's Progress (elapsed_s, rps, p99_ms or None, requests, errors); ``total_s`` is the
    planned run time (warm-up + duration) for the remaining-time figure.
    """

    def __init__(self, total_s: float, *, warmup_s: float = 0.0, stream: TextIO | None = None,
                 plain_every_s: float = 5.0, enabled: bool = True) -> None:
        self.total_s = total_s
        self.warmup_s = warmup_s
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.plain_every_s = plain_every_s
        self._last_plain = 0.0
        self._live: Any = None
        if enabled and self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            self._live = Live("", console=Console(file=self.stream), refresh_per_second=4, transient=True)
            self._live.start()

    def line(self, p: Any) -> str:
        elapsed = float(getattr(p, "elapsed_s", 0.0))
        remaining = max(0.0, self.total_s - elapsed)
        phase = "warm-up  " if elapsed < self.warmup_s else "measuring"
        p99 = getattr(p, "p99_ms", None)  # None: no ok answer in the window -- shown missing, never 0
        p99_text = f"{p99:8.2f} ms" if p99 is not None else f"{'—':>8} ms"
        return (f"{phase} {elapsed:6.1f}s elapsed, {remaining:5.1f}s left | {getattr(p, 'rps', 0.0):9.1f} req/s | "
                f"p99 {p99_text} | {getattr(p, 'requests', 0)} requests, "
                f"{getattr(p, 'errors', 0)} errors")

    def update(self, p: Any) -> None:
        if not self.enabled:
            return
        if self._live is not None:
            self._live.update(self.line(p))
            return
        now = time.monotonic()
        if now - self._last_plain >= self.plain_every_s:
            self._last_plain = now
            print("progress: " + self.line(p).strip(), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text)
        else:
            print(f"bench: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
