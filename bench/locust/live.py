"""Live aggregates of a distributed bench run in Locust's stats (its web UI): fed from the workers' deltas,
never per request. Locust keeps response times in whole milliseconds (coarser above 100 ms); bench's report
keeps the exact HDR histograms, so these numbers are for watching a run, not for its results."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from locust.stats import StatsEntry

from bench.report.model import value_from_index

__all__ = ["feed"]


def _locust_ms(ms: float) -> int:
    """Locust's own bucketing of a response time (StatsEntry._log_response_time)."""
    if ms < 100:
        return round(ms)
    return int(round(ms, -1) if ms < 1000 else round(ms, -2))


def feed(stats: Any, delta: dict[str, Any], name: str = "bench", method: str = "POST") -> None:
    """Add one worker delta's requests (latency from intended time, measured and warm-up) to ``stats``."""
    part = StatsEntry(stats, name, method)
    for key, hd in delta["hists"].items():
        metric, _phase, outcome = key.split("|")
        if metric != "latency" or not hd["i"]:
            continue
        lowest, width = value_from_index(np.asarray(hd["i"], dtype=np.int64))
        mid_ms = (lowest + width // 2) / 1000.0
        for ms, n in zip(mid_ms.tolist(), hd["c"], strict=True):
            bucket = _locust_ms(ms)
            part.response_times[bucket] = part.response_times.get(bucket, 0) + int(n)
            part.total_response_time += ms * n
            part.num_requests += int(n)
            if outcome == "error":
                part.num_failures += int(n)
        lo, hi = hd["min"] / 1000.0, hd["max"] / 1000.0
        part.min_response_time = lo if part.min_response_time is None else min(part.min_response_time, lo)
        part.max_response_time = max(part.max_response_time, hi)
    if not part.num_requests:
        return
    base_ns = int(delta["start_unix_ns"])
    base_s = base_ns // 1_000_000_000
    for sec, cols, _hd in delta["series"]:
        if cols[0]:
            part.num_reqs_per_sec[base_s + int(sec)] = int(cols[0])
        if cols[1]:
            part.num_fail_per_sec[base_s + int(sec)] = int(cols[1])
    # when the newest answer of the delta came (deltas arrive ~1 s late; Locust's req/s divides the requests by
    # the time from the start to this): else its rates run low
    last = [float(hi) for _lo, hi in delta.get("span", {}).values()]
    part.last_request_timestamp = base_ns / 1e9 + max(last) if last else time.time()
    stats.get(name, method).extend(part)
    stats.total.extend(part)
