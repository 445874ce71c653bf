"""The worker→master delta stream: folding every delta of a run gives exactly the recorder's final data."""

from __future__ import annotations

import numpy as np
import orjson
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
