"""SLO validation, checking (measured vs allowed named) and the mid-run hopeless test."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from test_compare import synth_run

from bench.errors import InputError
from bench.report.model import Report, ReportMeta
from bench.report.slo import SloResult, check_slo, hopeless, slo_from_mapping


def test_valid_table() -> None:
    o = slo_from_mapping({"p99_ms": 50, "error_rate": 0.01, "min_rps": 100, "max_dropped": 0,
                          "abort_on_fail": True}, "s.toml")
    assert o.abort_on_fail
    assert [(x.key, x.limit) for x in o.objectives] == [("p99_ms", 50.0), ("error_rate", 0.01),
                                                         ("min_rps", 100.0), ("max_dropped", 0.0)]


@pytest.mark.parametrize(("table", "key"), [
    ({"p98_ms": 1}, "slo.p98_ms"), ({"p99_ms": "fast"}, "slo.p99_ms"), ({"p99_ms": True}, "slo.p99_ms"),
    ({"p99_ms": -1}, "slo.p99_ms"), ({"p99_ms": 0}, "slo.p99_ms"), ({"error_rate": 5}, "slo.error_rate"),
    ({"max_dropped": 1.5}, "slo.max_dropped"), ({"abort_on_fail": "yes"}, "slo.abort_on_fail"),
    ({"min_rps": float("nan")}, "slo.min_rps"),
])
def test_invalid_table_names_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(InputError) as exc:
        slo_from_mapping(table, "s.toml")
    assert exc.value.key == key and exc.value.file == "s.toml"


def test_check_names_broken_objectives_with_measured_and_allowed() -> None:
    run = synth_run(1, seconds=3, median_ms=10.0, error_rate=0.1)
    report = Report(ReportMeta("x"), run)
    res = check_slo(slo_from_mapping({"p50_ms": 1.0, "p99_ms": 10_000, "error_rate": 0.01,
                                      "min_rps": 1_000_000, "max_dropped": 0, "service_p99_ms": 10_000},
                                     "s.toml"), report)
    assert not res.passed
    assert {r.key for r in res.failures} == {"p50_ms", "error_rate", "min_rps"}
    text = res.render()
    assert text.startswith("SLO: FAILED (3 of 6 broken)")
    p50 = next(line for line in text.splitlines() if "p50_ms" in line)
    assert "FAIL" in p50 and "> allowed 1.000" in p50
    assert "error rate" in text and "> allowed 1 %" in text
    again = SloResult.from_dict(res.to_dict())
    assert again.passed is False and [r.key for r in again.results] == [r.key for r in res.results]


def test_check_passes_and_bounds_are_inclusive() -> None:
    run = synth_run(1, seconds=2)
    res = check_slo(slo_from_mapping({"p99_ms": 10_000, "max_dropped": 0, "error_rate": 0.0}, "s"), run)
    assert res.passed and res.render().startswith("SLO: passed")


def test_no_ok_requests_fails_latency_objective() -> None:
    run = synth_run(1, seconds=2, error_rate=1.0)
    res = check_slo(slo_from_mapping({"p99_ms": 10_000}, "s"), run)
    assert not res.passed and "not measured" in res.render()


@dataclass
class Snap:
    elapsed_s: float
    requests: int
    errors: int
    dropped: int


def test_hopeless_error_rate_only_when_dilution_is_impossible() -> None:
    o = slo_from_mapping({"error_rate": 0.01, "p99_ms": 1}, "s")
    start = Snap(1.0, 100, 0, 0)
    # 50 errors in 1000 requests; 9 s left at most 1000 req/s: best final rate 50/10000 = 0.5 % -> still possible
    assert hopeless(o, Snap(2.0, 1100, 50, 0), measured_from=start, end_s=11.0, max_rps=1000) is None
    # 200 errors: best 200/10000 = 2 % > 1 % -> hopeless
    reason = hopeless(o, Snap(2.0, 1100, 200, 0), measured_from=start, end_s=11.0, max_rps=1000)
    assert reason is not None and reason.startswith("error_rate:")
    assert hopeless(o, Snap(2.0, 1100, 200, 0), measured_from=None, end_s=11.0, max_rps=1000) is None


def test_hopeless_dropped() -> None:
    o = slo_from_mapping({"max_dropped": 3}, "s")
    start = Snap(1.0, 10, 0, 2)
    assert hopeless(o, Snap(2.0, 20, 0, 5), measured_from=start, end_s=5, max_rps=10) is None
    assert "max_dropped" in (hopeless(o, Snap(2.0, 20, 0, 6), measured_from=start, end_s=5, max_rps=10) or "")


def test_rows_objective_is_not_measured_when_rows_were_not_counted() -> None:
    """An opaque ad hoc body (extra.rows = "not counted"): min_rows_per_s fails as not measured, whatever the
    rows columns hold; the same run with counted rows is judged on its rows."""
    run = synth_run(1, seconds=2)
    objectives = slo_from_mapping({"min_rows_per_s": 1.0}, "s")
    assert check_slo(objectives, Report(ReportMeta("x"), run)).passed
    res = check_slo(objectives, Report(ReportMeta("x", extra={"rows": "not counted"}), run))
    assert not res.passed and "not measured" in res.render()
