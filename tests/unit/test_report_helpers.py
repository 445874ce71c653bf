"""Shared builders for the report tests (no tests here; imported by the test_report_* modules)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.recorder import Recorder
from bench.report.model import Report, RunData
from bench.report.writer import make_meta
from bench.results import Kind

S = 1_000_000_000
MS = 1_000_000


def make_run(seed: int = 0, n: int = 2000, *, base_ms: float = 5.0, raw: Path | None = None,
             start_unix_ns: int | None = None) -> RunData:
    rng = np.random.default_rng(seed)
    rec = Recorder(0, S, raw_path=raw, batch=256)
    if start_unix_ns is not None:
        rec.start_unix_ns = start_unix_ns
    lat = (rng.exponential(base_ms, n) * MS).astype(np.int64) + MS
    for i in range(n):
        t = int(i * 3 * S // n)
        err = i % 50 == 7
        rec.record(t, t + 20_000, t + int(lat[i]), Kind.HTTP_ERROR if err else Kind.OK, 503 if err else 200,
                   10, 5581, 300, 0)
        if err:
            rec.error_detail(Kind.HTTP_ERROR, 503, b"pipeline not running")
    rec.count("token_refresh")
    rec.gauge("remaining", 5.0)
    return rec.finish(3 * S, partial=False)


def make_report(run: RunData, name: str = "quickstart") -> Report:
    return Report(make_meta(name, run=run, scenario_text='[target]\nurl = "embedded"\n',
                            load={"mode": "closed", "concurrency": 8}), run)
