"""The run side of 'every request accounted for': the recorder's in-flight-at-end errors, the stored
``sent = ok + errors + in flight at end`` check, the failed-run verdict, the progress line's missing p99 and the
exception-to-kind mapping of errors client libraries raise outside their own hierarchy."""

from __future__ import annotations

import io

import pytest

from bench.failures import httpx_kind, other_kind
from bench.progress import ProgressView
from bench.recorder import Recorder
from bench.report.accounting import accounting_text, request_accounting
from bench.report.model import MEASURED, WARMUP, Report, ReportMeta
from bench.results import Kind
from bench.session import failed_reason

S = 1_000_000_000
MS = 1_000_000


class Clock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def _recorder(warmup_s: float = 0.0) -> tuple[Recorder, int]:
    start = 100 * S
    return Recorder(start, start + int(warmup_s * S), batch=4, clock=Clock(start)), start


def test_in_flight_at_end_are_errors_of_kind_abandoned_in_the_phase_the_run_ended_in() -> None:
    rec, start = _recorder(warmup_s=1.0)
    for i in range(3):
        rec.record(start + i * MS, start + i * MS, start + 2 * S, Kind.OK, 200, 1, 10, 1, 0)
    rec.count("sent", 11)
    rec.abandoned(8, start + 3 * S)  # sent in the warm-up, still out at the end (3 s): the end's phase
    run = rec.finish(start + 3 * S, partial=False)
    assert run.total(MEASURED).requests == 8 and run.total(MEASURED).errors == 8
    assert run.errors_by_kind(MEASURED) == {"abandoned": 8}
    assert run.total(WARMUP).ok == 3
    assert run.counters["in_flight_at_end"] == 8
    assert run.series.errors.sum() == 8  # the per-second series sees them at the end's second
    assert run.rps(MEASURED) == 0.0  # the measured phase's 8 were never answered: not throughput
    assert not run.histogram("latency", MEASURED, "error").total  # no answer, no latency
    acc = request_accounting(run)
    assert acc == {"sent": 11, "ok": 3, "errors": 0, "in_flight_at_end": 8, "dropped": 0, "holds": True}
    assert "holds" in accounting_text(acc)


def test_a_lost_request_breaks_the_stored_check() -> None:
    rec, start = _recorder()
    rec.record(start, start, start + MS, Kind.RESET, 0, 1, 0, 0, 0)
    rec.count("sent", 3)  # two requests neither recorded nor in flight at the end
    run = rec.finish(start + S, partial=False)
    acc = request_accounting(run)
    assert acc is not None and not acc["holds"]
    assert "MISMATCH" in accounting_text(acc) and "≠" in accounting_text(acc)


def test_reports_without_a_sent_count_have_no_check() -> None:
    rec, start = _recorder()
    assert request_accounting(rec.finish(start + S, partial=False)) is None


def test_failed_reason_names_the_commonest_kind_or_the_warmup() -> None:
    rec, start = _recorder()
    for i in range(5):
        rec.record(start + i * MS, start, start + 2 * MS, Kind.RESET, 0, 1, 0, 0, 0)
    rec.record(start, start, start + 2 * MS, Kind.PROTOCOL_ERROR, 0, 1, 0, 0, 0)
    rec.abandoned(2, start + S)
    reason = failed_reason(Report(ReportMeta("x"), rec.finish(start + S, partial=False)))
    assert reason is not None and "commonest error: reset (5," in reason and "8 measured requests" in reason

    rec, start = _recorder(warmup_s=10.0)
    rec.record(start, start, start + MS, Kind.OK, 200, 1, 0, 0, 0)
    reason = failed_reason(Report(ReportMeta("x"), rec.finish(start + S, partial=False)))
    assert reason is not None and reason.startswith("nothing measured after warm-up: all 1 requests")

    rec, start = _recorder()
    rec.record(start, start, start + MS, Kind.OK, 200, 1, 0, 0, 0)
    rec.record(start, start, start + MS, Kind.RESET, 0, 1, 0, 0, 0)
    assert failed_reason(Report(ReportMeta("x"), rec.finish(start + S, partial=False))) is None

    rec, start = _recorder()
    rec.dropped(start)
    assert failed_reason(Report(ReportMeta("x"), rec.finish(start + S, partial=False))) == \
        "no request was sent (1 dropped: max_in_flight reached)"


def test_progress_shows_a_missing_p99_as_a_dash_never_zero() -> None:
    rec, start = _recorder()
    rec.record(start, start, start + MS, Kind.RESET, 0, 1, 0, 0, 0)
    snap = rec.progress()
    assert snap.p99_ms is None
    line = ProgressView(10, stream=io.StringIO(), enabled=False).line(snap)
    assert "p99        — ms" in line and "0.00 ms" not in line
    rec.record(start, start, start + 3 * MS, Kind.OK, 200, 1, 0, 0, 0)
    assert rec.progress().p99_ms is not None


def test_errors_outside_a_client_librarys_hierarchy_still_map_to_a_kind() -> None:
    # httpcore on a connection reset under it (issue 15): not an httpx.HTTPError, must not escape the engine
    assert httpx_kind(AttributeError("'NoneType' object has no attribute 'getpeername'")) == Kind.RESET
    assert other_kind(RuntimeError("weird")) == Kind.OTHER
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = ConnectionResetError()
    assert other_kind(wrapped) == Kind.RESET
    assert other_kind(ValueError("x")) == Kind.OTHER


def test_throughput_counts_answers_inside_the_window_not_requests_sent_in_it() -> None:
    """An open loop at 100/s against an endpoint that answers 50/s: every request of the window [1 s, 3 s) is in
    the latency figures, and they came back at 50 a second: that is the throughput."""
    rec, start = _recorder(warmup_s=1.0)
    for i in range(300):  # intended every 10 ms over 3 s; answer i comes back at 20 ms × (i + 1)
        t = start + i * 10 * MS
        rec.record(t, t, start + (i + 1) * 20 * MS, Kind.OK, 200, 2, 10, 1, 0)
    rec.count("sent", 300)
    run = rec.finish(start + 3 * S, partial=False)
    assert run.total(MEASURED).requests == 200 and run.sent_rps(MEASURED) == 100.0
    assert run.rps(MEASURED) == 50.0  # the window's 200 answers came back from 2.02 s to 6.00 s
    assert run.rows_per_s(MEASURED) == 100.0


def test_requests_in_flight_at_a_fractional_end_are_not_throughput() -> None:
    rec, start = _recorder(warmup_s=1.0)
    for i in range(10):
        t = start + S + i * 100 * MS
        rec.record(t, t, t + MS, Kind.OK, 200, 1, 10, 1, 0)  # 10 answers inside [1 s, 2.5 s), 0.9 s apart in all
    rec.count("sent", 14)
    rec.abandoned(4, start + 2 * S + S // 2)  # never answered
    run = rec.finish(start + 2 * S + S // 2, partial=False)
    assert run.rps(MEASURED) == 10 / 1.5  # 10 answers over the window: no faster than they were sent
    assert run.sent_rps(MEASURED) == 14 / 1.5


def test_a_latency_longer_than_the_warmup_costs_no_throughput() -> None:
    """UbiOps batch answers take about a second: with a 1-s warm-up, the window's first answers come back late
    in it, and its last ones after it. An endpoint that keeps up still did 100 a second."""
    rec, start = _recorder(warmup_s=1.0)
    for i in range(300):
        t = start + i * 10 * MS
        rec.record(t, t, t + 1500 * MS, Kind.OK, 200, 1, 10, 1, 0)
    run = rec.finish(start + 3 * S, partial=False)
    assert run.rps(MEASURED) == pytest.approx(100.0) and run.sent_rps(MEASURED) == 100.0
    assert run.done_span[MEASURED] == (2.5, 4.49)
