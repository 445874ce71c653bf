"""Pure rules of the UbiOps emulator: the rate-limit window and the request store's list and cancel rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.emulator.asgi import HttpError
from bench.emulator.ratelimit import FixedWindowLimiter
from bench.emulator.ubiops_store import RequestStore, UbiOpsRequest

KEY = ("demo", "ccfraud", "v1")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_window_headers_and_retry_after() -> None:
    clock = Clock()
    limiter = FixedWindowLimiter(3, 60.0, clock)
    answers = [limiter.take("127.0.0.1") for _ in range(4)]
    assert [ok for ok, _ in answers] == [True, True, True, False]
    assert [dict(h)[b"x-ratelimit-remaining"] for _, h in answers] == [b"2", b"1", b"0", b"0"]
    assert b"retry-after" not in dict(answers[2][1]) and dict(answers[3][1])[b"retry-after"] == b"60"
    assert limiter.take("::1")[0] is True  # per source address
    clock.now += 59.5
    ok, headers = limiter.take("127.0.0.1")
    assert not ok and dict(headers)[b"x-ratelimit-reset"] == b"1"
    clock.now += 0.5
    assert limiter.take("127.0.0.1")[0] is True  # a new window


@given(st.lists(st.floats(min_value=0.0, max_value=5.0), max_size=60), st.integers(1, 10))
def test_limiter_never_allows_more_than_the_limit_per_window(gaps: list[float], limit: int) -> None:
    clock = Clock()
    limiter = FixedWindowLimiter(limit, 10.0, clock)
    allowed: list[float] = []
    for gap in gaps:
        clock.now += gap
        if limiter.take("a")[0]:
            allowed.append(clock.now)
    # fixed windows: a window starts at the first call after the last one ended, so any 10 s span holds at most
    # 2 × limit allowed calls, and n windows' worth of time at most n × limit
    for i, t in enumerate(allowed):
        assert sum(1 for u in allowed[i:] if u < t + 10.0) <= 2 * limit
    if allowed:
        assert len(allowed) <= limit * (int((allowed[-1] - allowed[0]) // 10.0) + 1)
    if gaps and sum(gaps[1:]) < 10.0:  # everything inside the first window: exactly min(calls, limit) allowed
        assert len(allowed) == min(len(gaps), limit)


def _request(store: RequestStore, status: str, created: float) -> UbiOpsRequest:
    req = UbiOpsRequest(KEY, {"tensor": []}, 2, 300)
    req.status, req.time_created = status, created
    store.add(req)
    return req


def test_cancel_is_truthful_per_status() -> None:
    store = RequestStore()
    pending, processing, done = (_request(store, s, 0.0) for s in ("pending", "processing", "completed"))
    other = UbiOpsRequest(("demo", "echo", "v1"), "x", 1, 300)
    store.add(other)
    assert store.cancel_many(KEY, [pending, processing, done, other]) == 2
    assert (pending.status, processing.status, done.status, other.status) == \
        ("cancelled", "cancelled_pending", "completed", "pending")
    assert store.cancel(pending) is False  # already cancelled


def test_listing_filters() -> None:
    store = RequestStore()
    t0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    reqs = [_request(store, "completed", t0 + i) for i in range(10)]
    _request(store, "pending", t0)
    ids = [r["id"] for r in store.listing(KEY, {"status": "completed", "limit": "100"})]
    assert ids == [r.id for r in reversed(reqs)]  # newest first
    assert [r["id"] for r in store.listing(KEY, {"limit": "3", "offset": "2"})] == ids[2:5]
    start = (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=3)).isoformat()
    end = "2026-01-01T00:00:05"  # naive: UTC
    window = store.listing(KEY, {"status": "completed", "start_date": start, "end_date": end})
    assert [r["id"] for r in window] == [reqs[5].id, reqs[4].id, reqs[3].id]
    assert [r["id"] for r in store.listing(KEY, {"search_id": reqs[7].id[9:20]})] == [reqs[7].id]
    assert len(store.listing(KEY, {"status": "pending"})) == 1
    assert len(store.listing(KEY, {"status": "completed,failed,cancelled", "limit": "100"})) == 10


@pytest.mark.parametrize("query", [{"status": "pending,completed"}, {"status": "done"}, {"limit": "0"},
                                   {"offset": "x"}, {"status": "pending", "search_id": "a"},
                                   {"status": "processing", "start_date": "2026-01-01"}, {"end_date": "yesterday"}])
def test_listing_rejects(query: dict[str, str]) -> None:
    with pytest.raises(HttpError) as info:
        RequestStore().listing(KEY, query)
    assert info.value.status == 400


def test_finished_requests_are_bounded() -> None:
    store = RequestStore(keep_finished=5)
    reqs = [_request(store, "completed", float(i)) for i in range(12)]
    for req in reqs:
        store.finished(req)
    assert store.get(reqs[0].id) is None and store.get(reqs[-1].id) is reqs[-1]
    assert len(store.listing(KEY, {"limit": "100"})) == 5
