"""The one HDR histogram every measurement in bench uses (values in µs, 1 µs .. 1 h, 3 significant digits), so
histograms from any process or host merge exactly by adding their count arrays. ``Histogram`` keeps the dense
count array as numpy (fast batch recording, fast percentiles) and converts to/from the standard HdrHistogram V2
base64 encoding (readable by any HdrHistogram library) for storage.

A leaf: the recorder, the report and the merge all use it; it imports nothing of bench.
"""

from __future__ import annotations

import base64
import ctypes
import functools
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["HDR_HIGHEST_US", "HDR_LOWEST_US", "HDR_SIGNIFICANT_FIGURES", "Histogram", "IntArray", "counts_index",
           "value_from_index"]

HDR_LOWEST_US = 1
HDR_HIGHEST_US = 3_600_000_000  # one hour
HDR_SIGNIFICANT_FIGURES = 3

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class _Layout:
    counts_len: int
    unit_magnitude: int
    sub_half_magnitude: int  # log2(sub_bucket_count / 2)


@functools.cache
def _layout() -> _Layout:
    """The count-array layout of the fixed setting, taken from hdrh itself so the two always agree."""
    from hdrh.histogram import HdrHistogram

    h = HdrHistogram(HDR_LOWEST_US, HDR_HIGHEST_US, HDR_SIGNIFICANT_FIGURES)
    return _Layout(h.counts_len, h.unit_magnitude, h.sub_bucket_half_count_magnitude)


def _clipped(values_us: IntArray) -> IntArray:
    """``np.clip(values, 0, HDR_HIGHEST_US)`` as two ufunc calls: np.clip's Python wrapper costs ~8 µs a call,
    several times per fold (a fold blocks the event loop)."""
    out: IntArray = np.minimum(np.maximum(values_us, 0), HDR_HIGHEST_US)
    return out


def counts_index(values_us: IntArray) -> IntArray:
    """Vectorised HDR bucket index (same result as hdrh's ``_counts_index_for``) of values clipped to range."""
    lay = _layout()
    v = _clipped(values_us).astype(np.int64, copy=False)
    mask = ((1 << (lay.sub_half_magnitude + 1)) - 1) << lay.unit_magnitude
    # bit length of (v | mask): exact through float64 because every value is < 2**53.
    bit_length = np.frexp((v | mask).astype(np.float64))[1].astype(np.int64)
    bucket = bit_length - lay.unit_magnitude - (lay.sub_half_magnitude + 1)
    sub = v >> (bucket + lay.unit_magnitude)
    result: IntArray = ((bucket + 1) << lay.sub_half_magnitude) + sub - (1 << lay.sub_half_magnitude)
    return result


def value_from_index(index: IntArray) -> tuple[IntArray, IntArray]:
    """(lowest equivalent value, bucket width) of count-array indices."""
    lay = _layout()
    half = 1 << lay.sub_half_magnitude
    bucket = (index >> lay.sub_half_magnitude) - 1
    sub = (index & (half - 1)) + half
    low_bucket = bucket < 0
    sub = np.where(low_bucket, sub - half, sub)
    bucket = np.maximum(bucket, 0)
    shift = bucket + lay.unit_magnitude
    lowest: IntArray = sub << shift
    width: IntArray = np.left_shift(np.ones_like(shift), shift)
    return lowest, width


_V2_ENCODING_COOKIE = 0x1C849303 | 0x10  # HdrHistogram V2 payload cookie (word-size nibble as hdrh writes it)
_V2_COMPRESSION_COOKIE = 0x1C849304 | 0x10


def _tokens(index: IntArray, counts: IntArray, limit: int) -> IntArray:
    """The V2 count stream of counts[0:limit] given sparse buckets: each count in order, except that a run of
    n zero buckets is one token -n (hdrh writes -1 for a lone zero too) -- HdrHistogram's zero-run compression."""
    n = len(index)
    gaps = np.diff(index, prepend=-1) - 1  # zero buckets before each non-zero one
    tail = limit - (int(index[-1]) + 1 if n else 0)  # zero buckets after the last non-zero one
    out = np.empty(2 * n + 1, dtype=np.int64)
    out[0:2 * n:2] = -gaps
    out[1:2 * n:2] = counts
    out[2 * n] = -tail
    has = np.ones(2 * n + 1, dtype=bool)
    has[0:2 * n:2] = gaps > 0
    has[2 * n] = tail > 0
    result: IntArray = out[has]
    return result


def _zigzag_leb128(values: IntArray) -> bytes:
    """ZigZag + LEB128 varints as HdrHistogram writes them (at most 9 bytes; the 9th carries 8 bits)."""
    if len(values) == 0:
        return b""
    v = values.astype(np.int64)
    zz = ((v << 1) ^ (v >> 63)).view(np.uint64)
    nbytes = np.ones(len(zz), dtype=np.int64)
    for k in range(1, 9):
        longer = zz >= np.uint64(1 << (7 * k))
        if not longer.any():  # counts are small: usually done after 2-3 passes
            break
        nbytes += longer
    start = np.cumsum(nbytes) - nbytes
    out = np.zeros(int(nbytes.sum()), dtype=np.uint8)
    for j in range(9):
        m = nbytes > j
        if not m.any():
            break
        if j < 8:
            byte = (zz[m] >> np.uint64(7 * j)) & np.uint64(0x7F)
            byte |= np.where(nbytes[m] > j + 1, np.uint64(0x80), np.uint64(0))
        else:
            byte = zz[m] >> np.uint64(56)
        out[start[m] + j] = byte.astype(np.uint8)
    return out.tobytes()


def _decode_sparse(encoded: str) -> tuple[IntArray, IntArray] | None:
    """(sorted non-zero indices, their counts) of a V2 encoding with bench's settings, or None when the input
    is anything else (malformed, other settings, 9-byte varints): the caller then lets hdrh judge it."""
    try:
        raw = base64.b64decode(encoded, validate=True)
        cookie, length = struct.unpack_from(">II", raw)
        if cookie != _V2_COMPRESSION_COOKIE or length != len(raw) - 8:
            return None
        data = zlib.decompress(raw[8:])
        cookie, plen, offset, digits, low, high, ratio = struct.unpack_from(">IIIIQQd", data)
        if (cookie, offset, digits, low, high, ratio) != (_V2_ENCODING_COOKIE, 0, HDR_SIGNIFICANT_FIGURES,
                                                          HDR_LOWEST_US, HDR_HIGHEST_US, 1.0):
            return None
        b = np.frombuffer(data, dtype=np.uint8, count=plen, offset=40)
    except (ValueError, struct.error, zlib.error):
        return None
    ends = np.flatnonzero((b & 0x80) == 0)
    if plen and (len(ends) == 0 or ends[-1] != plen - 1):
        return None
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    nbytes = ends - starts + 1
    if len(nbytes) and int(nbytes.max()) > 8:  # 9-byte varints (counts >= 2**55): leave them to hdrh
        return None
    zz = np.zeros(len(ends), dtype=np.uint64)
    for j in range(8):
        m = nbytes > j
        if not m.any():
            break
        zz[m] |= (b[starts[m] + j] & np.uint8(0x7F)).astype(np.uint64) << np.uint64(7 * j)
    tok = (zz >> np.uint64(1)).astype(np.int64) ^ -(zz & np.uint64(1)).astype(np.int64)
    step = np.where(tok < 0, -tok, 1)
    pos = np.cumsum(step) - step
    nonzero = tok > 0
    index: IntArray = pos[nonzero]
    counts: IntArray = tok[nonzero]
    if len(index) and int(index[-1]) >= _layout().counts_len:
        return None
    return index, counts


class Histogram:
    """An HDR histogram of µs values with the fixed bench setting; exact min/max kept beside the counts."""

    __slots__ = ("_encoded", "_encoded_at", "counts", "max_us", "min_us", "total")

    def __init__(self) -> None:
        self.counts: IntArray = np.zeros(_layout().counts_len, dtype=np.int64)
        self.total = 0
        self.min_us = 0
        self.max_us = 0
        self._encoded = ""  # the last encode() and the (total, min, max) it was made at (see encode)
        self._encoded_at = (-1, 0, 0)

    # -- recording -------------------------------------------------------------------------------------
    def record_us(self, values_us: IntArray) -> None:
        """Record many values (µs); out-of-range values are clipped to [0, 1 h]."""
        if len(values_us) == 0:
            return
        v = _clipped(values_us)
        self.record_indices(counts_index(v), int(v.min()), int(v.max()))

    def record_indices(self, index: IntArray, vmin: int, vmax: int) -> None:
        """Record values already converted with ``counts_index`` (vmin/vmax: their exact extremes)."""
        n = len(index)
        if n == 0:
            return
        np.add.at(self.counts, index, 1)  # in place: bincount would allocate up to a dense-array temporary
        self.min_us = vmin if self.total == 0 else min(self.min_us, vmin)
        self.max_us = max(self.max_us, vmax)
        self.total += n

    def add(self, other: Histogram) -> None:
        """Exact merge: afterwards this is the histogram of both sets of values."""
        if other.total == 0:
            return
        self.counts += other.counts
        self.min_us = other.min_us if self.total == 0 else min(self.min_us, other.min_us)
        self.max_us = max(self.max_us, other.max_us)
        self.total += other.total

    def clear(self) -> None:
        """Back to empty, in place (lets a caller reuse the count array instead of allocating a new one)."""
        self.counts.fill(0)
        self.total = self.min_us = self.max_us = 0
        self._encoded_at = (-1, 0, 0)

    def copy(self) -> Histogram:
        h = Histogram()
        h.add(self)
        return h

    @classmethod
    def merged(cls, hists: Iterable[Histogram]) -> Histogram:
        out = cls()
        for h in hists:
            out.add(h)
        return out

    # -- queries ---------------------------------------------------------------------------------------
    def percentile_us(self, p: float) -> int:
        """HdrHistogram semantics: the highest value equivalent to the one at percentile p (0..100).

        The result is capped at the exact recorded max, so p100 == max.
        """
        if self.total == 0:
            return 0
        target = max(int(min(p, 100.0) * self.total / 100 + 0.5), 1)
        nz = self._nonzero()
        idx = int(nz[min(int(np.searchsorted(np.cumsum(self.counts[nz]), target)), len(nz) - 1)])
        lowest, width = value_from_index(np.array([idx], dtype=np.int64))
        value = int(lowest[0]) + int(width[0]) - 1 if p > 0 else int(lowest[0])
        return min(max(value, self.min_us), self.max_us)

    def percentiles_ms(self, ps: Sequence[float] = (50, 90, 99, 99.9)) -> dict[float, float]:
        """Several percentiles in ms with a single cumulative sum."""
        if self.total == 0:
            return {p: 0.0 for p in ps}
        # cumulative counts over the non-zero buckets only: same answer (the bucket reaching the target is
        # non-zero), without a dense temporary per call (progress asks ~2x/s).
        nz = self._nonzero()
        cum = np.cumsum(self.counts[nz])
        out: dict[float, float] = {}
        for p in ps:
            target = max(int(min(p, 100.0) * self.total / 100 + 0.5), 1)
            idx = int(nz[min(int(np.searchsorted(cum, target)), len(nz) - 1)])
            lowest, width = value_from_index(np.array([idx], dtype=np.int64))
            value = int(lowest[0]) + int(width[0]) - 1 if p > 0 else int(lowest[0])
            out[p] = min(max(value, self.min_us), self.max_us) / 1000.0
        return out

    def mean_us(self) -> float:
        """Mean using each bucket's midpoint (as HdrHistogram does)."""
        if self.total == 0:
            return 0.0
        nz = np.nonzero(self.counts)[0]
        lowest, width = value_from_index(nz.astype(np.int64))
        mid = lowest + (width >> 1)
        return float(np.dot(mid.astype(np.float64), self.counts[nz].astype(np.float64)) / self.total)

    def summary_ms(self) -> dict[str, float | int]:
        """count, min, max, mean and p50/p90/p99/p999 (ms): the columns SQL users read instead of HDR."""
        pct = self.percentiles_ms((50, 90, 99, 99.9))
        return {"count": self.total, "min_ms": self.min_us / 1000.0, "max_ms": self.max_us / 1000.0,
                "mean_ms": self.mean_us() / 1000.0, "p50_ms": pct[50], "p90_ms": pct[90],
                "p99_ms": pct[99], "p999_ms": pct[99.9]}

    # -- encoding --------------------------------------------------------------------------------------
    def encode(self) -> str:
        """Standard HdrHistogram V2 compressed encoding, base64 (any HdrHistogram library decodes it).

        Byte-identical to ``hdrh``'s ``HdrHistogram.encode`` (tested), but written here without an hdrh object:
        those hold a reference cycle, so each one's dense counts buffer waited for the cyclic GC, and a
        run that encodes a histogram every second fragmented the heap (RSS crept up for minutes).

        Kept until the histogram changes: a run's checkpoints encode each second's histogram up to three times
        and its close once more, mostly unchanged, and every encode blocks the event loop for ~0.3 ms. Every
        change adds to ``total`` (counts only grow, and ``clear`` forgets the encoding).
        """
        at = (self.total, self.min_us, self.max_us)
        if at != self._encoded_at:
            index = self._nonzero()
            self._encoded = self.encode_counts(index, self.counts[index], self.min_us, self.max_us)
            self._encoded_at = at
        return self._encoded

    def _nonzero(self) -> IntArray:
        """Indices of the non-zero buckets, scanning only up to max's bucket (the last non-zero one)."""
        if self.total == 0:
            return np.zeros(0, dtype=np.int64)
        limit = int(counts_index(np.array([self.max_us], dtype=np.int64))[0]) + 1
        nz: IntArray = np.flatnonzero(self.counts[:limit])
        return nz

    @staticmethod
    def encode_counts(index: IntArray, counts: IntArray, min_us: int, max_us: int) -> str:
        """``encode`` of the histogram whose non-zero buckets are ``counts`` at sorted ``index`` (sparse).

        Lets callers that keep sparse counts (the recorder's per-second histograms) encode without
        materialising the dense count array. ``min_us`` is unused by the format (kept for symmetry).
        """
        del min_us
        total = int(counts.sum()) if len(counts) else 0
        # hdrh encodes counts[0 : index_of(max) + 1]; an empty histogram encodes no counts at all.
        limit = int(counts_index(np.array([max_us], dtype=np.int64))[0]) + 1 if total else 0
        keep = index < limit
        varints = _zigzag_leb128(_tokens(index[keep], counts[keep], limit))
        payload = struct.pack(">IIIIQQd", _V2_ENCODING_COOKIE, len(varints), 0, HDR_SIGNIFICANT_FIGURES,
                              HDR_LOWEST_US, HDR_HIGHEST_US, 1.0) + varints
        compressed = zlib.compress(payload)
        return base64.b64encode(struct.pack(">II", _V2_COMPRESSION_COOKIE, len(compressed)) + compressed).decode(
            "ascii")

    @classmethod
    def decode(cls, encoded: str, *, min_us: int | None = None, max_us: int | None = None) -> Histogram:
        """Inverse of ``encode``; min/max are bucket bounds unless the exact values are passed.

        Raises ValueError for a malformed encoding or one made with different HDR settings.
        """
        sparse = _decode_sparse(encoded)
        if sparse is not None:  # the common case, without an hdrh object (they hold a cycle: see encode)
            out = cls()
            index, counts = sparse
            out.counts[index] = counts
            out.total = int(counts.sum())
            if out.total:
                lowest, width = value_from_index(index[[0, -1]])
                out.min_us = int(lowest[0]) if min_us is None else min_us
                out.max_us = int(lowest[1] + width[1] - 1) if max_us is None else max_us
            return out
        from hdrh.histogram import HdrHistogram  # anything unusual: hdrh validates it and raises

        try:
            h = HdrHistogram.decode(encoded.encode("ascii"))
        except Exception as exc:  # hdrh raises assorted types (TypeError, zlib.error, its own)
            raise ValueError(f"not an HdrHistogram encoding: {exc}") from exc
        if (h.lowest_trackable_value, h.highest_trackable_value, h.significant_figures) != (
                HDR_LOWEST_US, HDR_HIGHEST_US, HDR_SIGNIFICANT_FIGURES):
            raise ValueError("HDR histogram made with different settings (bench uses 1 µs .. 1 h, 3 digits)")
        out = cls()
        view = np.ctypeslib.as_array(ctypes.cast(h.counts, ctypes.POINTER(ctypes.c_uint64)),
                                     shape=(h.counts_len,))
        out.counts[:] = view.astype(np.int64)
        out.total = int(out.counts.sum())
        if out.total:
            nz = np.nonzero(out.counts)[0]
            lowest, width = value_from_index(nz[[0, -1]].astype(np.int64))
            out.min_us = int(lowest[0]) if min_us is None else min_us
            out.max_us = int(lowest[1] + width[1] - 1) if max_us is None else max_us
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (self.total, self.min_us, self.max_us) == (other.total, other.min_us, other.max_us) and bool(
            np.array_equal(self.counts, other.counts))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Histogram(total={self.total}, min_us={self.min_us}, max_us={self.max_us})"


