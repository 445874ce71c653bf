"""Recorder: phases, outcomes, series, errors, progress, raw log and flat memory."""

from __future__ import annotations

import gc
import math
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.engine.base import ResultSink
from bench.recorder import MAX_ERROR_SAMPLES, Recorder
from bench.report.model import MEASURED, WARMUP, Histogram, value_from_index
from bench.results import Kind

S = 1_000_000_000
MS = 1_000_000


class FakeClock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def test_phases_outcomes_and_totals() -> None:
    start = 10 * S
    rec = Recorder(start, start + S, batch=7)
    # warm-up: 3 ok; measured: 5 ok (10 ms latency, 4 ms service) + 2 errors (503, refused)
    for i in range(3):
        t = start + i * MS
        rec.record(t, t, t + 2 * MS, Kind.OK, 200, 10, 100, 50, 0)
    for i in range(5):
        t = start + S + i * 100 * MS
        rec.record(t, t + 6 * MS, t + 10 * MS, Kind.OK, 200, 10, 100, 50, 3 * MS)
    rec.record(start + 2 * S, start + 2 * S, start + 2 * S + MS, Kind.HTTP_ERROR, 503, 10, 100, 20, 0)
    rec.record(start + 2 * S, start + 2 * S, start + 2 * S + MS, Kind.CONNECT_REFUSED, 0, 10, 0, 0, 0)
    rec.dropped(start + 2 * S + 5)
    run = rec.finish(start + 3 * S, partial=False)
    m, w = run.total(MEASURED), run.total(WARMUP)
    assert (w.requests, w.ok, w.errors, w.rows) == (3, 3, 0, 30)
    assert (m.requests, m.ok, m.errors, m.rows, m.dropped) == (7, 5, 2, 50, 1)
    assert m.bytes_in == 5 * 50 + 20
    lat = run.histogram("latency", MEASURED, "ok")
    svc = run.histogram("service", MEASURED, "ok")
    assert (lat.total, lat.min_us, lat.max_us) == (5, 10_000, 10_000)
    assert (svc.min_us, svc.max_us) == (4_000, 4_000)
    assert run.histogram("latency", MEASURED, "error").total == 2
    assert run.histogram("latency", MEASURED).total == 7  # 'all' merges ok + error
    assert run.histogram("schedule_lag", MEASURED).max_us == 6_000
    assert run.histogram("server", MEASURED).total == 5
    assert run.errors_by_kind() == {"connect_refused": 1, "http_error:503": 1}
    assert run.duration_s() == pytest.approx(2.0)
    assert run.rps() == pytest.approx(3.0)  # 6 answers in 2 s: the refused connection got none
    assert [p.name for p in run.phases] == [WARMUP, MEASURED]


def test_series_by_done_second_with_latency_histograms() -> None:
    start = 0
    rec = Recorder(start, start, batch=3)
    for sec, n in ((0, 4), (1, 2), (5, 3)):
        for i in range(n):
            t = sec * S + i * MS
            rec.record(t, t, t + (i + 1) * MS, Kind.OK, 200, 2, 10, 10, 0)
    rec.record(5 * S, 5 * S, 5 * S + MS, Kind.READ_TIMEOUT, 0, 2, 10, 0, 0)
    rec.dropped(7 * S)
    run = rec.finish(8 * S, partial=False)
    s = run.series
    assert s.second.tolist() == [0, 1, 5, 7]
    assert s.requests.tolist() == [4, 2, 4, 0]
    assert s.errors.tolist() == [0, 0, 1, 0]
    assert s.rows.tolist() == [8, 4, 6, 0]
    assert s.dropped.tolist() == [0, 0, 0, 1]
    assert [s.histogram(i).total for i in range(len(s))] == [4, 2, 3, 0]
    # per-second histograms are stored encoded: their max is exact to HDR precision (0.1 %)
    max_ms = s.latency_percentiles_ms()["max_ms"].tolist()
    assert max_ms[:3] == pytest.approx([4.0, 2.0, 3.0], rel=1e-3) and math.isnan(max_ms[3])  # second 7: no answer
    assert int(s.requests.sum()) == run.total(MEASURED).requests


def test_late_answer_reopens_an_encoded_second() -> None:
    rec = Recorder(0, 0, batch=1)
    rec.record(0, 0, MS, Kind.OK, 200, 1, 1, 1, 0)
    rec.record(10 * S, 10 * S, 10 * S + MS, Kind.OK, 200, 1, 1, 1, 0)  # closes second 0
    rec.record(0, 0, 2 * MS, Kind.OK, 200, 1, 1, 1, 0)  # late, for second 0
    run = rec.finish(11 * S, partial=False)
    assert run.series.histogram(0).total == 2


def test_error_samples_bounded_distinct_and_redacted() -> None:
    rec = Recorder(0, 0)
    for i in range(100):
        rec.error_detail(Kind.HTTP_ERROR, 500, f"boom {i % 50}".encode())
    rec.error_detail(Kind.HTTP_ERROR, 401, b"Authorization: Bearer sekrit123")
    rec.error_detail(Kind.HTTP_ERROR, 500, b"boom 0")
    run = rec.finish(S, partial=False)
    assert len(run.error_samples) == MAX_ERROR_SAMPLES
    assert run.error_samples[0].detail == "boom 0" and run.error_samples[0].count == 3
    rec2 = Recorder(0, 0)
    rec2.error_detail(Kind.HTTP_ERROR, 401, b'Authorization: Bearer sekrit123 {"token": "abc"}')
    detail = rec2.finish(S, partial=False).error_samples[0].detail
    assert "sekrit123" not in detail and "abc" not in detail


def test_a_named_value_given_its_request_s_intended_time_is_in_that_request_s_phase() -> None:
    clock = FakeClock(3 * S)  # both recorded after warm-up ended (at 1 s)
    rec = Recorder(0, S, clock=clock)
    rec.record_named("batch_e2e", 5 * MS, S - 1)  # a warm-up request collected late
    rec.record_named("batch_e2e", 7 * MS, S)
    run = rec.finish(4 * S, partial=False)
    assert (run.histogram("batch_e2e", WARMUP).total, run.histogram("batch_e2e", WARMUP).max_us) == (1, 5000)
    assert (run.histogram("batch_e2e", MEASURED).total, run.histogram("batch_e2e", MEASURED).max_us) == (1, 7000)


def test_named_counters_gauges_and_loop_lag() -> None:
    clock = FakeClock(0)
    rec = Recorder(0, S, clock=clock)
    rec.record_named("batch_e2e", 5 * MS)
    clock.t = 2 * S + 1
    rec.record_named("batch_e2e", 7 * MS)
    rec.gauge("ratelimit_remaining", 10)
    rec.gauge("ratelimit_remaining", 9)
    rec.loop_lag(3 * MS)
    rec.count("token_refresh")
    rec.count("token_refresh", 2)
    run = rec.finish(3 * S, partial=True)
    assert run.histogram("batch_e2e", WARMUP).max_us == 5000
    assert run.histogram("batch_e2e", MEASURED).max_us == 7000
    assert run.gauges == {"ratelimit_remaining": {2: 9.0}}
    assert run.counters == {"token_refresh": 3}
    assert run.histogram("loop_lag", MEASURED).total == 1
    assert run.partial


def test_progress_reports_recent_rate_and_p99() -> None:
    clock = FakeClock(0)
    rec = Recorder(0, 0, clock=clock)
    for i in range(3000):  # 1000/s for 3 s, 5 ms latency
        t = i * MS
        rec.record(t, t, t + 5 * MS, Kind.OK if i % 10 else Kind.RESET, 0, 1, 1, 1, 0)
    clock.t = 3 * S
    p = rec.progress()
    assert p.requests == 3000 and p.errors == 300
    assert p.elapsed_s == pytest.approx(3.0)
    assert 900 < p.recent_rps < 1100
    assert p.recent_p99_ms == pytest.approx(5.0, rel=0.01)
    assert (p.rps, p.p99_ms) == (p.recent_rps, p.recent_p99_ms)
    rec.record(0, 0, MS, Kind.HTTP_ERROR, 401, 1, 1, 1, 0)
    assert rec.status_count(401) == 1 and rec.status_count(503) == 0


def test_raw_log_streams_every_request(tmp_path: Path) -> None:
    import pyarrow.ipc

    raw = tmp_path / "raw.arrows"
    rec = Recorder(0, 0, raw_path=raw, batch=100)
    for i in range(1050):
        rec.record(i, i + 1, i + 2000, Kind.OK, 200, 1, 1, 1, 0)
    run = rec.finish(S, partial=False)
    assert run.raw_path == raw
    table = pyarrow.ipc.open_stream(str(raw)).read_all()
    assert table.num_rows == 1050
    assert table.column("done_ns").to_pylist()[:2] == [2000, 2001]


def test_close_releases_the_raw_log_of_a_run_that_never_finished(tmp_path: Path) -> None:
    """A run that fails after records were folded closes the raw log (a valid stream of what was folded)."""
    import pyarrow.ipc

    raw = tmp_path / "raw.arrows"
    rec = Recorder(0, 0, raw_path=raw, batch=100)
    for i in range(250):
        rec.record(i, i + 1, i + 2000, Kind.OK, 200, 1, 1, 1, 0)
    assert rec._raw_writer is not None
    rec.close()
    rec.close()  # idempotent: finish (or the run's cleanup) may close again
    assert rec._raw_writer is None
    assert pyarrow.ipc.open_stream(str(raw)).read_all().num_rows == 200  # two folds of 100; 50 never folded


def test_record_is_cheap() -> None:
    start = time.monotonic_ns()
    rec = Recorder(start, start)
    n = 200_000
    t0 = time.perf_counter()
    r = rec.record
    for i in range(n):
        t = start + i * 10_000
        r(t, t, t + 1_000_000, 0, 200, 10, 100, 10, 0)
    per = (time.perf_counter() - t0) / n
    assert per < 10e-6  # generous for CI; ~0.6 µs measured on the dev box (see report)


@pytest.mark.slow  # 1.2 M records, ~5 s: a soak in miniature, in CI's slow step
def test_memory_stays_flat_over_millions_of_records() -> None:
    start = 0
    rec = Recorder(start, start)
    rng = np.random.default_rng(0)
    lat = (rng.integers(100_000, 50_000_000, 10_000)).tolist()
    r = rec.record

    def run(n: int, base: int) -> None:
        for i in range(n):
            t = base + i * 5_000  # 200k/s of intended times
            r(t, t, t + lat[i % 10_000], 0, 200, 1, 1, 1, 0)

    run(200_000, 0)  # warm every structure (histograms allocated, series grown)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    run(1_000_000, 1 * S)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    # 1 M records would need > 100 MB if kept; allow a few MB (per-second series, encoded seconds).
    assert after - before < 4_000_000
    assert rec.finish(20 * S, partial=False).total(MEASURED).requests == 1_200_000


def test_is_a_result_sink_and_ignores_stragglers() -> None:
    rec = Recorder(0, 0, batch=1)
    sink: ResultSink = rec
    sink.record(0, 0, MS, Kind.OK, 200, 1, 1, 1, 0)
    run = rec.finish(S, partial=False)
    sink.record(0, 0, MS, Kind.OK, 200, 1, 1, 1, 0)  # after finish: ignored, no exception
    assert run.total(MEASURED).requests == 1


# -- memory: no per-second garbage (RSS crept +15 % over 10 min before; see docs/performance.md, memory) ------------

def _hdrh_encode(h: Histogram) -> str:
    """What Histogram.encode returned when it went through an hdrh object (the reference format)."""
    import ctypes

    from hdrh.histogram import HdrHistogram

    ref = HdrHistogram(1, 3_600_000_000, 3)
    if h.total:
        view = np.ctypeslib.as_array(ctypes.cast(ref.counts, ctypes.POINTER(ctypes.c_uint64)),
                                     shape=(len(h.counts),))
        view[:] = h.counts.astype(np.uint64)
        ref.total_count, ref.min_value, ref.max_value = h.total, h.min_us, h.max_us
    encoded: bytes = ref.encode()
    return encoded.decode("ascii")


_values = st.lists(st.one_of(st.integers(0, 5), st.integers(0, 100_000), st.integers(0, 3_600_000_000)),
                   min_size=0, max_size=300)


@settings(max_examples=300, deadline=None)
@given(values=_values, scale=st.one_of(st.integers(1, 1 << 40), st.integers(1 << 52, 1 << 53)))
def test_encoding_is_byte_identical_to_hdrh_and_round_trips(values: list[int], scale: int) -> None:
    from hdrh.histogram import HdrHistogram

    h = Histogram()
    h.record_us(np.array(values, dtype=np.int64))
    h.counts *= scale  # multi-byte varints; the upper range needs 9-byte ones (decoded by hdrh)
    h.total *= scale
    enc = h.encode()
    assert enc == _hdrh_encode(h)
    back = Histogram.decode(enc, min_us=h.min_us, max_us=h.max_us)
    assert back == h
    ref = HdrHistogram.decode(enc.encode("ascii"))  # bucket-bound min/max agree with the reference library
    plain = Histogram.decode(enc)
    assert plain.total == ref.total_count
    if h.total:
        assert (plain.min_us, plain.max_us) == (ref.get_min_value(), ref.get_max_value())


def test_decode_of_a_normal_encoding_needs_no_hdrh_object(monkeypatch: pytest.MonkeyPatch) -> None:
    from hdrh.histogram import HdrHistogram

    h = Histogram()
    h.record_us(np.array([0, 1, 5, 900, 70_000, 3_600_000_000], dtype=np.int64))
    enc = h.encode()

    def boom(*_: object) -> None:
        raise AssertionError("hdrh decode used")

    monkeypatch.setattr(HdrHistogram, "decode", boom)
    assert Histogram.decode(enc, min_us=0, max_us=3_600_000_000) == h


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(0, 10_000_000), min_size=1, max_size=300),
       ps=st.lists(st.floats(0, 100), min_size=1, max_size=5))
def test_percentiles_match_dense_cumsum(values: list[int], ps: list[float]) -> None:
    h = Histogram()
    h.record_us(np.array(values, dtype=np.int64))
    cum = np.cumsum(h.counts)
    for p in ps:
        idx = int(np.searchsorted(cum, max(int(p * h.total / 100 + 0.5), 1)))
        low, width = value_from_index(np.array([idx], dtype=np.int64))
        dense = min(max(int(low[0]) + (int(width[0]) - 1 if p > 0 else 0), h.min_us), h.max_us)
        assert h.percentile_us(p) == dense
        assert h.percentiles_ms((p,))[p] == dense / 1000.0


def test_open_seconds_are_recycled_and_reopen_still_exact() -> None:
    rec = Recorder(0, 0, batch=1)
    for sec in range(50):
        rec.record(sec * S, sec * S, sec * S + (sec + 1) * MS, Kind.OK, 200, 1, 1, 1, 0)
    rec.record(2 * S, 2 * S, 2 * S + 7 * MS, Kind.OK, 200, 1, 1, 1, 0)  # late: reopens encoded second 2
    run = rec.finish(51 * S, partial=False)
    hs = [run.series.histogram(i) for i in range(len(run.series))]
    assert [h.total for h in hs] == [1, 1, 2] + [1] * 47  # recycled histograms start empty
    assert [h.max_us for h in hs[:4]] == pytest.approx([1000, 2000, 7000, 4000], rel=1e-3)  # HDR precision


@pytest.mark.slow  # 600 simulated seconds, ~4 s: a soak in miniature, in CI's slow step
def test_memory_flat_over_a_long_simulated_run_without_gc() -> None:
    """600 simulated seconds the way `bench run` drives the recorder (progress 2x/s, loop lag 10x/s).

    The cyclic GC is off: garbage that only it can free (hdrh objects hold a cycle) would pile up. Between
    the end of the first quarter and the end, only the closed seconds' encodings may grow (~1 KB/s).
    """
    import psutil

    rate, secs = 200, 600
    clock = FakeClock(0)
    rec = Recorder(0, 0, clock=clock)
    lat = np.random.default_rng(0).lognormal(np.log(2e6), 0.6, 4096).astype(np.int64).tolist()
    proc = psutil.Process()
    marks: dict[int, tuple[int, int]] = {}
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        r, k, step = rec.record, 0, S // rate
        for sec in range(secs):
            for half in (0, 1):
                base = sec * S + half * (S // 2)
                for i in range(rate // 2):
                    t = base + i * step
                    r(t, t + 20_000, t + lat[k % 4096], Kind.OK, 200, 1, 5657, 300, 0)
                    k += 1
                for _ in range(5):
                    rec.loop_lag(50_000)
                clock.t = base + S // 2
                rec.progress()
            if sec in (secs // 4, secs - 1):
                marks[sec] = (tracemalloc.get_traced_memory()[0], proc.memory_info().rss)
    finally:
        tracemalloc.stop()
        gc.enable()
    (traced_q, rss_q), (traced_end, rss_end) = marks[secs // 4], marks[secs - 1]
    span = secs - 1 - secs // 4
    assert traced_end - traced_q < span * 3_000, (traced_q, traced_end)  # before the fix: ~190 KB/s
    assert rss_end - rss_q < 20 * 1024 * 1024, (rss_q, rss_end)
    assert rec.finish(secs * S, partial=False).total(MEASURED).requests == rate * secs


_rec = st.tuples(st.integers(0, 6 * S), st.integers(0, 3 * MS), st.integers(0, 2 * S),
                 st.sampled_from([int(Kind.OK), int(Kind.OK), int(Kind.HTTP_ERROR), int(Kind.RESET)]),
                 st.integers(0, 100), st.integers(0, 9000), st.integers(0, 9000), st.sampled_from([0, 0, 4000]))


@settings(max_examples=60, deadline=None)
@given(records=st.lists(_rec, min_size=1, max_size=300), batch=st.integers(1, 64))
def test_folding_in_small_batches_equals_one_big_fold(records: list[tuple[int, ...]], batch: int) -> None:
    """Small batches mostly fall within one second (the recorder's fast path); one big batch spans seconds
    (the general path): both must give the same histograms, totals and per-second series."""
    start = 100 * S
    recs = sorted(records)

    def run(b: int) -> object:
        rec = Recorder(start, start + S, batch=b)
        for intended, svc_lag, latency, kind, rows, b_out, b_in, server in recs:
            t = start + intended
            sent = t + svc_lag
            rec.record(t, sent, sent + latency, kind, 200 if kind == Kind.OK else 503, rows, b_out, b_in, server)
        data = rec.finish(start + 10 * S, partial=False)
        return ({k: (h.total, h.min_us, h.max_us, h.counts.tobytes()) for k, h in data.histograms.items()},
                {k: str(v) for k, v in data.totals.items()}, data.errors, data.series.hdr,
                [getattr(data.series, c).tolist() for c in ("second", "requests", "errors", "rows", "bytes_out",
                                                            "bytes_in")])

    assert run(batch) == run(10_000)


def test_requests_that_got_no_answer_count_in_neither_throughput_nor_the_answers_span() -> None:
    """A read timeout lands on the send schedule (sent + timeout), so counting it as an answer made an endpoint
    that answered half of 50 req/s "achieve" all 50 (a capacity sweep's saturation check then passed)."""
    rec = Recorder(0, 0, batch=16)
    for i in range(100):  # 2 s at 50 req/s; every other request times out after 300 ms
        t = i * 20 * MS
        if i % 2:
            rec.record(t, t, t + 300 * MS, Kind.READ_TIMEOUT, 0, 1, 10, 0, 0)
        else:
            rec.record(t, t, t + 10 * MS, Kind.OK, 200, 1, 10, 20, 0)
    run = rec.finish(2 * S, partial=False)
    assert run.total(MEASURED).requests == 100 and run.answered(MEASURED) == 50
    assert run.done_span[MEASURED] == pytest.approx((0.010, 1.970))  # the last answer, not the last timeout
    assert run.rps() == pytest.approx(25.0)
    assert run.sent_rps() == pytest.approx(50.0)
