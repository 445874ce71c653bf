"""compare_reports on synthetic runs: no false alarm on same-process noise, a real slowdown is caught."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.errors import InputError
from bench.recorder import Recorder
from bench.report.compare import (
    DEFAULT_THRESHOLDS,
    compare_reports,
    format_change,
    measured_windows,
    parse_thresholds,
)
from bench.report.model import RunData
from bench.results import Kind

S = 1_000_000_000


def synth_run(seed: int, *, seconds: int = 10, rps: int = 200, median_ms: float = 10.0, sigma: float = 0.25,
              error_rate: float = 0.0, warmup_s: int = 1, drift: float = 0.0) -> RunData:
    """A closed-loop-ish run: lognormal latencies, optional per-second drift (autocorrelated noise)."""
    rng = np.random.default_rng(seed)
    rec = Recorder(0, warmup_s * S, batch=512)
    level = 0.0
    for sec in range(warmup_s + seconds):
        level = 0.7 * level + drift * rng.standard_normal()  # AR(1) per-second level
        n = rps
        lat_ms = median_ms * np.exp(sigma * rng.standard_normal(n) + level)
        fail = rng.random(n) < error_rate
        for i in range(n):
            intended = sec * S + i * S // n
            done = intended + int(lat_ms[i] * 1e6)
            kind = Kind.HTTP_ERROR if fail[i] else Kind.OK
            rec.record(intended, intended, done, kind, 500 if fail[i] else 200, 10, 100, 100, 0)
    return rec.finish((warmup_s + seconds) * S, partial=False)


def test_windows_are_the_measured_seconds() -> None:
    run = synth_run(1, seconds=5)
    secs = [int(run.series.second[i]) for i in measured_windows(run)]
    assert secs == [1, 2, 3, 4, 5]  # second 0 is warm-up; second 5 holds the last answers of second 4


def test_same_process_is_not_a_regression() -> None:
    cmp = compare_reports(synth_run(1), synth_run(2))
    assert not cmp.regressed, cmp.verdict()
    assert cmp.verdict() == "no regression"
    assert cmp.base_windows >= 10 and not cmp.notes


def test_twenty_percent_slowdown_is_a_regression() -> None:
    cmp = compare_reports(synth_run(1), synth_run(2, median_ms=12.0))
    keys = {m.key for m in cmp.regressions}
    assert {"p50", "p99"} <= keys
    assert "rps" not in keys and "error_rate" not in keys
    p50 = next(m for m in cmp.metrics if m.key == "p50")
    assert p50.change == pytest.approx(0.2, abs=0.05)
    assert p50.significant and p50.ci is not None and p50.ci[0] > 0
    assert cmp.verdict().startswith("regression: p50 +")


def test_faster_is_never_a_regression() -> None:
    cmp = compare_reports(synth_run(1, median_ms=12.0), synth_run(2))
    assert not cmp.regressed


def test_beyond_threshold_but_within_noise_is_not_a_regression() -> None:
    # Heavy autocorrelated drift per second: a shift of the whole-run p50 by luck is not significant.
    base, new = synth_run(3, drift=0.4, seconds=6), synth_run(4, drift=0.4, seconds=6)
    cmp = compare_reports(base, new, {"p50": 0.0, "p99": 0.0})
    for m in cmp.metrics:
        if m.beyond_threshold and not m.regression:
            assert m.significant is False
    assert all(m.significant for m in cmp.regressions)


def test_error_rate_in_percentage_points() -> None:
    cmp = compare_reports(synth_run(1), synth_run(2, error_rate=0.05))
    er = next(m for m in cmp.metrics if m.key == "error_rate")
    assert er.change == pytest.approx(0.05, abs=0.015)
    assert er.regression and format_change(er).endswith(" pp")
    small = compare_reports(synth_run(1), synth_run(2, error_rate=0.002))
    assert not next(m for m in small.metrics if m.key == "error_rate").regression


def test_throughput_drop_is_a_regression() -> None:
    cmp = compare_reports(synth_run(1, rps=200), synth_run(2, rps=150))
    assert "rps" in {m.key for m in cmp.regressions}


def test_short_runs_fall_back_to_thresholds_and_say_so() -> None:
    cmp = compare_reports(synth_run(1, seconds=1), synth_run(2, seconds=1, median_ms=15.0))
    assert cmp.notes and "noise not judged" in cmp.notes[0]
    p50 = next(m for m in cmp.metrics if m.key == "p50")
    assert p50.significant is None and p50.regression


def test_parse_thresholds() -> None:
    t = parse_thresholds("p99=20%, rps=off,error_rate=1pp,service_p99=5%,p99.9=50%")
    assert t["p99"] == pytest.approx(0.2) and t["rps"] is None and t["error_rate"] == pytest.approx(0.01)
    assert t["p50"] == DEFAULT_THRESHOLDS["p50"] and t["service_p99"] == pytest.approx(0.05)
    assert t["p999"] == pytest.approx(0.5)
    assert parse_thresholds(None) == DEFAULT_THRESHOLDS
    for bad in ("p98=10%", "p99", "p99=ten%", "error_rate=1%", "p99=0.1", "p99=-5%"):
        with pytest.raises(InputError):
            parse_thresholds(bad)


def test_disabled_metric_never_regresses() -> None:
    cmp = compare_reports(synth_run(1), synth_run(2, median_ms=14.0), {"p50": None, "p99": None})
    assert not cmp.regressed


def test_same_distribution_false_alarm_rate_is_low() -> None:
    """Two runs of one distribution should not be called a regression. At a 99 % confidence per metric a few
    false alarms in a few hundred are expected (p99 from ~12 tail samples is noisy), so a random single pair
    (the former hypothesis property) failed CI now and then; what users need is a low false-alarm *rate*:
    over 100 pairs drawn from a fixed generator (medians 2-50 ms, spreads up to sigma 0.6), at most 2."""
    rnd = random.Random(20261130)
    alarms = []
    for _ in range(100):
        seed, median, sigma = rnd.randint(0, 10_000), rnd.uniform(2.0, 50.0), rnd.uniform(0.05, 0.6)
        base = synth_run(seed, seconds=8, rps=150, median_ms=median, sigma=sigma)
        new = synth_run(seed + 1, seconds=8, rps=150, median_ms=median, sigma=sigma)
        if compare_reports(base, new).regressed:
            alarms.append((seed, median, sigma))
    assert len(alarms) <= 2, alarms


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), median=st.floats(2.0, 50.0), sigma=st.floats(0.05, 0.4))
def test_scaled_latency_is_caught_property(seed: int, median: float, sigma: float) -> None:
    base = synth_run(seed, seconds=8, rps=150, median_ms=median, sigma=sigma)
    new = synth_run(seed + 1, seconds=8, rps=150, median_ms=median * 1.25, sigma=sigma)
    assert "p50" in {m.key for m in compare_reports(base, new).regressions}


def test_rows_not_counted_are_not_judged() -> None:
    """A run whose rows were not counted (an opaque ad hoc body) has no rows/s to compare: not judged, and said
    so — while the same runs with counted rows are compared on rows/s."""
    from bench.report.model import Report, ReportMeta

    base, new = synth_run(1, rps=200), synth_run(2, rps=150)
    counted = compare_reports(Report(ReportMeta("b"), base), Report(ReportMeta("n"), new))
    rows = next(m for m in counted.metrics if m.key == "rows_per_s")
    assert rows.base is not None and rows.new is not None and rows.change is not None
    opaque = compare_reports(Report(ReportMeta("b", extra={"rows": "not counted"}), base),
                             Report(ReportMeta("n", extra={"rows": "not counted"}), new))
    rows = next(m for m in opaque.metrics if m.key == "rows_per_s")
    assert rows.base is None and rows.new is None and not rows.regression
    assert any("rows_per_s (base and new)" in note for note in opaque.notes)
    assert "rps" in {m.key for m in opaque.regressions}


def test_a_metric_given_twice_is_refused_and_names_are_case_blind() -> None:
    with pytest.raises(InputError, match="p99 is given twice"):
        parse_thresholds("p99=10%,p99=20%")  # the last one won in silence
    assert parse_thresholds("P99=20%,RPS=off")["p99"] == pytest.approx(0.2)


def test_a_run_with_no_measured_window_has_no_rate_and_is_not_judged_on_it() -> None:
    """A run stopped inside its warm-up measured 0 s: req/s and rows/s are not 0 (−100 %) but missing ("—" in
    the terminal, Markdown and step summary), and not judged; the failed new run is still a regression."""
    from rich.console import Console

    from bench.report.markdown import comparison_markdown
    from bench.report.model import Report, ReportMeta
    from bench.report.terminal import render_comparison

    base = Report(ReportMeta("b"), synth_run(1, rps=200))
    new = Report(ReportMeta("n", extra={"failed": "nothing measured after warm-up"}), synth_run(2, seconds=0))
    cmp = compare_reports(base, new)
    for key in ("rps", "rows_per_s"):
        m = next(m for m in cmp.metrics if m.key == key)
        assert m.base is not None and m.new is None and m.change is None and not m.regression, m
    assert cmp.regressed and cmp.verdict().startswith("regression: the new run failed"), cmp.verdict()
    assert "rps" not in cmp.verdict()
    md = comparison_markdown(cmp, "b.arrow", "n.arrow")
    rps_row = next(line for line in md.splitlines() if line.startswith("| req/s"))
    assert "0.000" not in rps_row and "-100" not in rps_row and "—" in rps_row, rps_row
    console = Console(record=True, width=200)
    render_comparison(cmp, console, "b", "n")
    text = console.export_text()
    rps_line = next(line for line in text.splitlines() if line.strip().startswith("rps"))
    assert "0.000" not in rps_line and "-100" not in rps_line and "—" in rps_line, rps_line
