"""The worker→master delta stream: folding every delta of a run gives exactly the recorder's final data."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.locust.wire import LiveRun, delta
from bench.recorder import Recorder
from bench.results import Kind

START = 1_000_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> int:
        return self.now


requests = st.lists(st.tuples(st.integers(0, 5_000_000_000),  # intended offset (ns)
                              st.integers(0, 2_000_000),  # schedule lag
                              st.integers(1_000, 900_000_000),  # service time
                              st.sampled_from([Kind.OK, Kind.OK, Kind.OK, Kind.HTTP_ERROR])),
                    min_size=1, max_size=300)


@settings(max_examples=40, deadline=None)
@given(reqs=requests, cuts=st.lists(st.integers(0, 300), max_size=6))
def test_folded_deltas_equal_the_final_data(reqs: list[tuple[int, int, int, int]], cuts: list[int]) -> None:
    clock = Clock()
    rec = Recorder(START, START + 1_000_000_000, batch=16, clock=clock)
    reqs = sorted(reqs, key=lambda r: r[0] + r[1] + r[2])
    live, prev = LiveRun(), None
    for i, (intended, lag, svc, kind) in enumerate(reqs):
        done = START + intended + lag + svc
        clock.now = done
        status = 200 if kind == Kind.OK else 503
        rec.record(START + intended, START + intended + lag, done, kind, status, 10, 100, 50, 0)
        if i in cuts:
            snap = rec.snapshot()
            live.apply(orjson.loads(orjson.dumps(delta(prev, snap))))  # as it travels (plain types only)
            prev = snap
    final = rec.finish(clock.now, partial=False)
    live.apply(orjson.loads(orjson.dumps(delta(prev, final))))
    got = live.run_data(partial=False)
    assert set(got.histograms) == set(final.histograms)
    for key, h in final.histograms.items():
        g = got.histograms[key]
        assert np.array_equal(g.counts, h.counts), key
        assert (g.total, g.min_us, g.max_us) == (h.total, h.min_us, h.max_us), key
    assert {k: vars_of(t) for k, t in got.totals.items()} == {k: vars_of(t) for k, t in final.totals.items()}
    assert got.series == final.series
    assert got.errors == final.errors
    assert got.done_span == final.done_span
    assert sum(t.requests for t in got.totals.values()) == len(reqs)


def vars_of(t: object) -> dict[str, int]:
    return {f: getattr(t, f) for f in t.__slots__}  # type: ignore[attr-defined]


def test_a_delta_without_news_is_small() -> None:
    clock = Clock()
    rec = Recorder(START, START, clock=clock)
    clock.now = START + 5_000_000
    rec.record(START, START, START + 5_000_000, Kind.OK, 200, 1, 10, 10, 0)
    a = rec.snapshot()
    b = rec.snapshot()
    d = delta(a, b)
    assert d["hists"] == {} and d["series"] == [] and d["errors"] == []


def test_a_lost_workers_fold_keeps_the_span_of_its_answers() -> None:
    """Throughput is at most (answers - 1) / their span. A worker whose two answers (0.1 s and 0.9 s into a 1 s
    window) reached the master as deltas, and which was then lost, leaves the master only their fold: that keeps
    the span (sent whole, the latest replacing the earlier), so the part's throughput is the recorder's, not
    answers / duration."""
    clock = Clock()
    rec = Recorder(START, START, clock=clock)
    live, prev = LiveRun(), None
    for done_ms in (100, 900, 1000):
        clock.now = START + done_ms * 1_000_000
        if done_ms < 1000:
            rec.record(START, START, clock.now, Kind.OK, 200, 1, 10, 10, 0)
        snap = rec.snapshot()
        live.apply(orjson.loads(orjson.dumps(delta(prev, snap))))
        prev = snap
    got = live.run_data(partial=True)
    assert got.done_span == snap.done_span == {"measured": (0.1, 0.9)}
    assert got.rps() == snap.rps() == pytest.approx(1 / 0.8)


def test_deltas_from_a_worker_without_the_span_still_fold() -> None:
    """A worker of an older bench sends no "span": its part has none, and throughput falls back to answers /
    duration (the merge then leaves the phase's span out)."""
    clock = Clock()
    rec = Recorder(START, START, clock=clock)
    clock.now = START + 900_000_000
    rec.record(START, START, START + 100_000_000, Kind.OK, 200, 1, 10, 10, 0)
    rec.record(START, START, clock.now, Kind.OK, 200, 1, 10, 10, 0)
    clock.now = START + 1_000_000_000
    old = delta(None, rec.snapshot())
    assert old.pop("span")  # what this bench sends, and an older one does not
    live = LiveRun()
    live.apply(orjson.loads(orjson.dumps(old)))
    got = live.run_data(partial=True)
    assert got.done_span == {} and got.rps() == pytest.approx(2.0)
