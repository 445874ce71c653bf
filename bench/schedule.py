"""Intended send times for open-loop load: pure generators of offsets in ns from the start of a phase.

Each offset is computed from its index (never by adding periods), so rounding never accumulates into drift.
Offsets are drawn in numpy blocks, keeping the per-send cost far below the engine's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import count

import numpy as np

__all__ = ["constant_offsets", "poisson_offsets", "ramp_offsets"]

_NS = 1_000_000_000
_BLOCK = 8192


def _check_rate(rate: float, name: str = "rate") -> float:
    value = float(rate)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {rate!r}")
    return value


def constant_offsets(rate: float, *, first: int = 0, step: int = 1) -> Iterator[int]:
    """Request k at round(k * 1e9 / rate) ns: 0, 1/rate, 2/rate, … (endless); only k = first, first + step, …
    (worker ``first`` of ``step`` processes: together they send exactly the one-process schedule)."""
    r = _check_rate(rate)
    for k in count(first, _BLOCK * step):
        # in numpy blocks (the same IEEE operations as ``round(k * _NS / r)``: k * 1e9 rounded once, divided,
        # rounded half to even): ~0.1 µs less per send than a Python expression per offset
        ks = np.arange(k, k + _BLOCK * step, step, dtype=np.float64)
        yield from np.rint(ks * _NS / r).astype(np.int64).tolist()


def poisson_offsets(rate: float, seed: int) -> Iterator[int]:
    """A Poisson process of the given mean rate: exponential inter-arrivals from a seeded generator (endless).

    The first send is one inter-arrival after the start. The running sum is kept in float64 ns, exact to well
    below 1 ns for days of offsets.
    """
    r = _check_rate(rate)
    rng = np.random.default_rng(seed)
    scale = _NS / r
    t = 0.0
    while True:
        times = np.cumsum(rng.exponential(scale, _BLOCK)) + t
        t = float(times[-1])
        yield from np.rint(times).astype(np.int64).tolist()


def ramp_offsets(stages: Sequence[tuple[float, float]], start_rate: float = 0.0, *, first: int = 0,
                 step: int = 1) -> Iterator[int]:
    """Piecewise-linear rate, k6 ``ramping-arrival-rate`` style: each ``(duration_s, target_rate)`` stage moves
    the rate linearly from where the previous stage ended (``start_rate`` for the first) to ``target_rate``.

    Send k happens when the integral of the rate reaches k (k = 0, 1, …): so a constant stage matches
    ``constant_offsets``, and a stage of rate 0 is a pause. Times lie in [0, total duration); the generator
    ends after the last stage. A zero-duration stage makes the rate jump. Only sends k = first, first + step, …
    are yielded (as ``constant_offsets``).
    """
    if not stages:
        raise ValueError("ramp needs at least one (duration_s, target_rate) stage")
    r0 = float(start_rate)
    if not math.isfinite(r0) or r0 < 0:
        raise ValueError(f"start_rate must be a finite number >= 0, got {start_rate!r}")
    plan: list[tuple[float, float, float]] = []  # (duration_s, rate at start, rate at end)
    for i, stage in enumerate(stages):
        if len(stage) != 2:
            raise ValueError(f"stage {i}: expected (duration_s, target_rate), got {stage!r}")
        duration, target = float(stage[0]), float(stage[1])
        if not math.isfinite(duration) or duration < 0:
            raise ValueError(f"stage {i}: duration must be a finite number >= 0, got {stage[0]!r}")
        if not math.isfinite(target) or target < 0:
            raise ValueError(f"stage {i}: target rate must be a finite number >= 0, got {stage[1]!r}")
        plan.append((duration, r0, target))
        r0 = target
    if sum(d for d, _, _ in plan) <= 0:
        raise ValueError("ramp stages must last longer than 0 s in total")
    return _ramp(plan, first, step)


def _ramp(plan: list[tuple[float, float, float]], first: int, step: int) -> Iterator[int]:
    t0 = 0.0  # stage start, s
    done = 0.0  # integral of the rate up to the stage start (requests)
    k = 0  # next request index
    for duration, ra, rb in plan:
        if duration == 0:
            continue
        area = (ra + rb) * duration / 2
        end = done + area
        # Indices k with done <= k < end fall in this stage; solve a*tau^2 + b*tau = k - done for tau with
        # the cancellation-free root 2m / (b + sqrt(b^2 + 4am)) (valid for rising, falling and flat rates).
        a = (rb - ra) / (2 * duration)
        b = ra
        while k < end:
            ks = np.arange(k, min(math.ceil(end), k + _BLOCK), dtype=np.float64)
            ks = ks[ks < end]
            if ks.size == 0:
                break
            k += int(ks.size)
            if step > 1:
                ks = ks[ks.astype(np.int64) % step == first]
            m = ks - done
            with np.errstate(all="ignore"):  # tiny durations make a huge; the clamps below settle it
                root = np.sqrt(np.maximum(b * b + 4 * a * m, 0.0))
                denom = b + root
                tau = np.where(m > 0, 2 * m / np.where(denom > 0, denom, 1.0), 0.0)
            tau = np.clip(np.nan_to_num(tau, nan=0.0), 0.0, duration)
            yield from np.rint((t0 + tau) * _NS).astype(np.int64).tolist()
        t0 += duration
        done = end
