"""A merged run with a part whose schedule lag and CPU use are unknown (taken from a checkpoint, a lost worker) is
"not judged" for generator-bound, never "no"; a part found generator-bound still makes the whole run so."""

from __future__ import annotations

from rich.console import Console

from bench.recorder import Recorder
from bench.report.model import Report, ReportMeta
from bench.report.summary import render_summary, summarize
from bench.report.verdict import NOT_JUDGED, judged, not_judged_parts
from bench.results import Kind

S = 1_000_000_000


def _report(bound: bool = False) -> Report:
    rec = Recorder(0, 0)
    for i in range(20):
        t = i * S // 20
        rec.record(t, t, t + 1_000_000, Kind.OK, 200, 1, 10, 10, 0)
    meta = ReportMeta("merged", load={"mode": "closed"}, target={"kind": "http"})
    meta.generator_bound = bound
    return Report(meta, rec.finish(S, partial=True))


def test_a_part_not_judged_makes_the_merged_run_not_judged() -> None:
    report = _report()
    assert judged(report.meta) and summarize(report)["generator_bound"] is False
    not_judged_parts(report, ["worker 1"])
    assert report.meta.extra["generator_bound_not_judged"] == ["worker 1"]
    assert not judged(report.meta) and summarize(report)["generator_bound"] is None
    console = Console(record=True, width=200)
    render_summary(report, console)
    text = console.export_text()
    assert f"generator-bound: {NOT_JUDGED}" in text and "generator-bound: no\n" not in text


def test_a_bound_part_still_makes_the_merged_run_bound() -> None:
    report = _report(bound=True)
    not_judged_parts(report, ["worker 1"])
    assert "generator_bound_not_judged" not in report.meta.extra
    assert judged(report.meta) and summarize(report)["generator_bound"] is True


def test_no_unknown_part_changes_nothing() -> None:
    report = _report()
    not_judged_parts(report, [])
    assert judged(report.meta) and "generator_bound_not_judged" not in report.meta.extra
