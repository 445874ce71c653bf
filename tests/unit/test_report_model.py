"""HDR core: bucket indices agree with hdrh, merge is exact, encode/decode round-trips."""

from __future__ import annotations

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.report.model import HDR_HIGHEST_US, Histogram, counts_index

values = st.lists(st.integers(min_value=0, max_value=HDR_HIGHEST_US), min_size=0, max_size=300)


@given(st.lists(st.integers(min_value=0, max_value=HDR_HIGHEST_US), min_size=1, max_size=200))
def test_counts_index_matches_hdrh(vals: list[int]) -> None:
    ref = HdrHistogram(1, HDR_HIGHEST_US, 3)
    got = counts_index(np.array(vals, dtype=np.int64))
    assert got.tolist() == [ref._counts_index_for(v) for v in vals]


@given(values, values)
@settings(max_examples=60, deadline=None)
def test_merge_equals_histogram_of_union(a: list[int], b: list[int]) -> None:
    ha, hb, hu = Histogram(), Histogram(), Histogram()
    ha.record_us(np.array(a, dtype=np.int64))
    hb.record_us(np.array(b, dtype=np.int64))
    hu.record_us(np.array(a + b, dtype=np.int64))
    ha.add(hb)
    assert ha == hu
    for p in (0, 50, 90, 99, 99.9, 100):
        assert ha.percentile_us(p) == hu.percentile_us(p)


@given(values)
@settings(max_examples=60, deadline=None)
def test_encode_decode_round_trip_and_hdrh_agrees(vals: list[int]) -> None:
    h = Histogram()
    h.record_us(np.array(vals, dtype=np.int64))
    enc = h.encode()
    assert Histogram.decode(enc, min_us=h.min_us, max_us=h.max_us) == h
    other = HdrHistogram.decode(enc.encode())  # readable by the reference library
    assert other.get_total_count() == len(vals)
    if vals:
        for p in (50.0, 99.0):
            assert min(other.get_value_at_percentile(p), h.max_us) == h.percentile_us(p)


@given(st.lists(st.tuples(st.sampled_from(["record", "add", "clear", "encode"]), values), max_size=8))
@settings(max_examples=80, deadline=None)
def test_a_kept_encoding_is_never_stale(steps: list[tuple[str, list[int]]]) -> None:
    """encode() keeps its result until the histogram changes: after any mix of recording, merging, clearing and
    encoding it equals the encoding of a fresh histogram of the same values."""
    h, fresh = Histogram(), Histogram()
    for op, vals in steps:
        a = np.array(vals, dtype=np.int64)
        if op == "record":
            h.record_us(a)
            fresh.record_us(a)
        elif op == "add":
            other = Histogram()
            other.record_us(a)
            h.add(other)
            fresh.record_us(a)
        elif op == "clear":
            h.clear()
            fresh = Histogram()
        else:
            h.encode()
        assert h.encode() == fresh.encode()


def test_percentiles_match_hdrh_and_are_capped_at_max() -> None:
    rng = np.random.default_rng(1)
    vals = rng.integers(0, 5_000_000, 5000)
    h, ref = Histogram(), HdrHistogram(1, HDR_HIGHEST_US, 3)
    h.record_us(vals)
    for v in vals.tolist():
        ref.record_value(v)
    for p in (1, 50, 90, 99, 99.9):
        assert h.percentile_us(p) == min(ref.get_value_at_percentile(p), int(vals.max()))
    assert h.percentile_us(100) == int(vals.max())
    assert h.mean_us() == pytest.approx(ref.get_mean_value())


def test_out_of_range_values_are_clipped() -> None:
    h = Histogram()
    h.record_us(np.array([-5, HDR_HIGHEST_US * 10], dtype=np.int64))
    assert (h.total, h.min_us, h.max_us) == (2, 0, HDR_HIGHEST_US)


def test_decode_rejects_garbage_and_other_settings() -> None:
    with pytest.raises(ValueError):
        Histogram.decode("not base64 at all!")
    other = HdrHistogram(1, 1_000_000, 2)
    other.record_value(5)
    with pytest.raises(ValueError, match="different settings"):
        Histogram.decode(other.encode().decode())
