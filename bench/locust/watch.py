"""The master's live progress from its workers' folded deltas (bench.locust.wire.LiveRun): the same figures a
single-host run shows from its recorder (bench.recorder.Progress, drawn by bench.progress), so a distributed
soak is not watched blind. Never imports locust."""

from __future__ import annotations

from collections.abc import Sequence

from bench.hdr import Histogram
from bench.locust.wire import LiveRun
from bench.recorder import Progress

__all__ = ["progress"]

_WINDOW_S = 2  # complete seconds the recent rate and p99 cover (as the recorder's ~2 s)


def progress(lives: Sequence[LiveRun], epoch: float, now: float) -> Progress:
    """The run so far: totals of every worker; the recent rate and ok p99 over each worker's last complete
    seconds (its newest second is still filling: answers keep coming for it). A p99 with no ok answer in the
    window is None (shown missing, never 0)."""
    requests = errors = dropped = recent_n = 0
    window = 0
    recent = Histogram()
    for lv in lives:
        for t in lv.totals.values():
            requests += t.requests
            errors += t.errors
            dropped += t.dropped
        if not lv.seconds:
            continue
        newest = max(lv.seconds)
        secs = range(max(0, newest - _WINDOW_S), newest)
        window = max(window, len(secs))
        for sec in secs:
            row = lv.seconds.get(sec)
            recent_n += row[0] if row else 0
            h = lv.sec_hists.get(sec)
            if h is not None and h.total:
                recent.add(h)
    return Progress(elapsed_s=max(0.0, now - epoch), recent_rps=recent_n / window if window else 0.0,
                    recent_p99_ms=recent.percentiles_ms((99,))[99] if recent.total else None,
                    requests=requests, errors=errors, dropped=dropped)
