"""The master's progress line from its workers' folded deltas (bench.locust.watch)."""

from __future__ import annotations

import orjson
import pytest

from bench.locust.watch import progress
from bench.locust.wire import LiveRun, delta
from bench.recorder import Recorder
from bench.results import Kind

START = 1_000_000_000_000
S = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> int:
        return self.now


def worker_live(per_second: list[int], *, errors_in_second: int = -1) -> LiveRun:
    """A worker's fold after ``per_second[s]`` answers (2 ms each) in each second s, streamed once a second."""
    clock = Clock()
    rec = Recorder(START, START, clock=clock)
    live, prev = LiveRun(), None
    for sec, n in enumerate(per_second):
        for j in range(n):
            t = START + sec * S + j * (S // max(n, 1))
            clock.now = t + 2_000_000
            kind = Kind.HTTP_ERROR if sec == errors_in_second else Kind.OK
            rec.record(t, t, t + 2_000_000, kind, 200 if kind == Kind.OK else 503, 1, 10, 10, 0)
        clock.now = START + (sec + 1) * S - 1
        snap = rec.snapshot()
        live.apply(orjson.loads(orjson.dumps(delta(prev, snap))))
        prev = snap
    return live


def test_progress_adds_the_workers_and_leaves_out_their_newest_second() -> None:
    a = worker_live([100, 100, 100, 30])  # the last second is still filling when its delta leaves
    b = worker_live([50, 50, 50, 10])
    p = progress([a, b], epoch=100.0, now=103.5)
    assert p.requests == 490 and p.errors == 0 and p.elapsed_s == pytest.approx(3.5)
    assert p.recent_rps == pytest.approx(150.0)  # seconds 1 and 2 of both: (200 + 100) / 2
    assert p.recent_p99_ms == pytest.approx(2.0, rel=0.01)


def test_progress_before_any_delta_and_without_an_ok_answer_shows_p99_missing() -> None:
    empty = progress([LiveRun(), LiveRun()], epoch=100.0, now=100.2)
    assert (empty.requests, empty.recent_rps, empty.recent_p99_ms) == (0, 0.0, None)
    failing = progress([worker_live([10, 10, 1], errors_in_second=1)], epoch=0.0, now=3.0)
    assert failing.errors == 10 and failing.recent_p99_ms == pytest.approx(2.0, rel=0.01)  # second 0 was ok
    only_errors = progress([worker_live([5, 5], errors_in_second=0)], epoch=0.0, now=2.0)
    assert only_errors.recent_p99_ms is None  # no ok answer in the window: missing, never 0
