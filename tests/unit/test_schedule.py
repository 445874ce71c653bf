"""bench.schedule: exact constant pacing, a statistically sound Poisson process, and k6-style ramps."""

from __future__ import annotations

import math
from itertools import islice, pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.schedule import constant_offsets, poisson_offsets, ramp_offsets


def take(it: object, n: int) -> list[int]:
    return list(islice(it, n))  # type: ignore[call-overload]


def test_constant_exact_times() -> None:
    assert take(constant_offsets(3), 5) == [0, 333_333_333, 666_666_667, 1_000_000_000, 1_333_333_333]
    assert take(constant_offsets(1000), 4) == [0, 1_000_000, 2_000_000, 3_000_000]
    assert take(constant_offsets(0.5), 3) == [0, 2_000_000_000, 4_000_000_000]


def test_constant_does_not_drift() -> None:
    offsets = take(constant_offsets(3), 3_000_001)
    assert offsets[3_000_000] == 1_000_000_000_000_000  # exactly 1e6 s after 3e6 sends at 3/s
    assert offsets[-2] == round(2_999_999 * 1e9 / 3)


@pytest.mark.parametrize("bad", [0, -1, math.inf, math.nan])
def test_rates_must_be_positive_and_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        next(constant_offsets(bad))
    with pytest.raises(ValueError, match="rate"):
        next(poisson_offsets(bad, 1))


def test_poisson_mean_rate_and_cv() -> None:
    n, rate = 200_000, 2_000.0
    offsets = np.array(take(poisson_offsets(rate, seed=11), n), dtype=np.float64)
    gaps = np.diff(np.concatenate([[0.0], offsets]))
    # The sum of n exponential gaps has relative sd 1/sqrt(n): allow 5 sigma.
    measured = n / (offsets[-1] / 1e9)
    assert abs(measured / rate - 1) < 5 / math.sqrt(n)
    # The CV of exponential gaps is 1; its estimate has sd ~ 1/sqrt(n) (sample sd of exponentials: sqrt(2/n)
    # on the variance, halved on the sd, plus the mean's): 5 sigma of about 1.2/sqrt(n).
    cv = gaps.std() / gaps.mean()
    assert abs(cv - 1) < 6 / math.sqrt(n)
    # memorylessness, roughly: P(gap > mean) = e^-1
    assert abs((gaps > gaps.mean()).mean() - math.exp(-1)) < 5 * math.sqrt(0.23 / n)


def test_poisson_seeded() -> None:
    assert take(poisson_offsets(100, 5), 10_000) == take(poisson_offsets(100, 5), 10_000)
    assert take(poisson_offsets(100, 5), 50) != take(poisson_offsets(100, 6), 50)


@settings(max_examples=30, deadline=None)
@given(rate=st.floats(0.01, 1e6), seed=st.integers(0, 2**32), n=st.integers(1, 20_000))
def test_poisson_monotonic_across_blocks(rate: float, seed: int, n: int) -> None:
    offsets = take(poisson_offsets(rate, seed), n)
    assert len(offsets) == n and offsets[0] >= 0
    assert all(b >= a for a, b in pairwise(offsets))


def test_ramp_constant_stage_matches_constant_offsets() -> None:
    assert list(ramp_offsets([(2.0, 10.0)], start_rate=10.0)) == take(constant_offsets(10.0), 20)


def test_ramp_linear_exact_times() -> None:
    # 0 -> 10/s over 2 s: rate(t) = 5t, integral 2.5 t^2 = k  =>  t_k = sqrt(k / 2.5)
    got = list(ramp_offsets([(2.0, 10.0)]))
    assert got == [round(math.sqrt(k / 2.5) * 1e9) for k in range(10)]


def test_ramp_pause_and_jump() -> None:
    # 1 s of nothing, then a jump to 4/s for 1 s (a zero-duration stage jumps the rate)
    got = list(ramp_offsets([(1.0, 0.0), (0.0, 4.0), (1.0, 4.0)]))
    assert got == [1_000_000_000, 1_250_000_000, 1_500_000_000, 1_750_000_000]


def test_ramp_down_to_zero() -> None:
    # 10/s -> 0 over 2 s: integral 10 requests, all inside [0, 2 s)
    got = list(ramp_offsets([(2.0, 0.0)], start_rate=10.0))
    assert len(got) == 10 and got[0] == 0 and got[-1] < 2_000_000_000
    gaps = np.diff(got)
    assert (gaps[1:] >= gaps[:-1] - 1).all()  # the rate falls, so gaps grow


@pytest.mark.parametrize(("stages", "start"), [([], 0.0), ([(1.0, -1.0)], 0.0), ([(-1.0, 1.0)], 0.0),
                                               ([(0.0, 5.0)], 0.0), ([(1.0, math.nan)], 0.0),
                                               ([(1.0, 1.0)], -2.0), ([(1.0, 2.0, 3.0)], 0.0)])
def test_ramp_validation(stages: list[tuple[float, float]], start: float) -> None:
    with pytest.raises(ValueError):
        ramp_offsets(stages, start_rate=start)


stages_st = st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 300.0)), min_size=1, max_size=5)


@settings(max_examples=80, deadline=None)
@given(stages=stages_st, start=st.floats(0.0, 300.0))
def test_ramp_monotonic_and_integral(stages: list[tuple[float, float]], start: float) -> None:
    total = sum(d for d, _ in stages)
    if total <= 0:
        with pytest.raises(ValueError):
            ramp_offsets(stages, start_rate=start)
        return
    offsets = list(ramp_offsets(stages, start_rate=start))
    integral, rate = 0.0, start
    for duration, target in stages:
        integral += (rate + target) * duration / 2
        rate = target
    # Send k happens when the integral reaches k, for k in [0, integral): ceil(integral) sends, ±1 for rounding
    assert abs(len(offsets) - math.ceil(integral)) <= 1
    assert all(b >= a for a, b in pairwise(offsets))
    assert all(0 <= o <= round(total * 1e9) for o in offsets)


@pytest.mark.parametrize("n", [2, 3, 7])
def test_workers_take_every_nth_send_so_together_they_send_the_one_process_schedule(n: int) -> None:
    """``--processes n``: worker i's sends are i, i + n, … of the whole schedule (constant and ramps), so the
    merged sends are exactly one process's — never n at once, nor one each where one process sends fewer."""
    whole = list(islice(constant_offsets(7.3), 20_000))
    parts = [list(islice(constant_offsets(7.3, first=i, step=n), 20_000 // n + 1)) for i in range(n)]
    assert sorted(x for p in parts for x in p)[:20_000] == whole
    stages = [(3.0, 5.0), (2.0, 100.0), (4.0, 0.0), (5.0, 40.0)]
    whole = list(ramp_offsets(stages))
    parts = [list(ramp_offsets(stages, first=i, step=n)) for i in range(n)]
    assert sorted(x for p in parts for x in p) == whole
    assert [len(p) for p in parts] == [len(whole) // n + (1 if i < len(whole) % n else 0) for i in range(n)]
