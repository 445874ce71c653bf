"""Summary keys and counts, the rich rendering, and the generator-bound verdict."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from test_report_helpers import MS, S, make_report, make_run

from bench.recorder import Recorder
from bench.report.summary import render_summary, summarize
from bench.report.verdict import POOL_ADVICE, apply_verdict, generator_bound
from bench.report.writer import write_report
from bench.results import Kind

KEYS = {"requests", "errors", "rps", "rows_per_s", "latency_ms", "service_ms", "errors_by_kind",
        "generator_bound", "report"}


def test_summary_keys_and_counts_match_histograms(tmp_path: Path) -> None:
    run = make_run()
    report = make_report(run)
    write_report(tmp_path / "r.arrow", report)
    s = summarize(report)
    assert s.keys() >= KEYS
    for view in ("latency_ms", "service_ms"):
        assert set(s[view]) == {"p50", "p90", "p99", "p999", "max"}
        assert s[view]["p50"] <= s[view]["p90"] <= s[view]["p99"] <= s[view]["p999"] <= s[view]["max"]
    measured = [h.total for k, h in run.histograms.items() if k.metric == "latency" and k.phase == "measured"]
    assert s["requests"] == sum(measured)
    assert s["errors"] == sum(s["errors_by_kind"].values()) == run.histogram("latency", "measured", "error").total
    assert s["errors_by_kind"] == {"http_error:503": s["errors"]}
    # req/s: the window's answers per second, no faster than they came back (make_run's own times)
    i = np.arange(2000)
    lat = (np.random.default_rng(0).exponential(5.0, 2000) * MS).astype(np.int64) + MS
    intended = i * 3 * S // 2000
    done = (intended + lat)[intended >= S]
    n = len(done)
    assert s["rps"] == round(min(n / 2.0, (n - 1) / ((done.max() - done.min()) / S)), 3)
    ok = int(((intended >= S) & (i % 50 != 7)).sum())
    assert s["rows_per_s"] == pytest.approx(s["rps"] * ok * 10 / n, abs=0.01)
    assert s["report"] == str(tmp_path / "r.arrow")
    assert s["warmup_requests"] + s["requests"] == 2000


def test_render_summary_shows_the_figures() -> None:
    report = make_report(make_run())
    report.meta.generator_bound = True
    report.meta.generator_bound_reasons = ["schedule lag p99 5 ms > 1 ms"]
    buf = io.StringIO()
    render_summary(report, Console(file=buf, width=120, color_system=None))
    out = buf.getvalue()
    for text in ("req/s", "rows/s", "p99.9", "http_error:503", "generator-bound", "schedule lag p99 5 ms"):
        assert text in out


def _open_loop_run(lag_ms: float, n: int) -> Recorder:
    rec = Recorder(0, 0)
    for i in range(n):
        t = i * S // n
        rec.record(t, t + int(lag_ms * 1e6), t + 2_000_000, Kind.OK, 200, 1, 1, 1, 0)
    return rec


def test_verdict_schedule_lag() -> None:
    run = _open_loop_run(5.0, 1000).finish(S, partial=False)
    bound, reasons = generator_bound(run, target_rps=1000, cpu_fraction=0.2)
    assert bound and "schedule lag" in reasons[0] and "20 % busy" in reasons[0] and "--processes" not in reasons[0]
    assert "outside it" in reasons[0]  # the loop had room: the stalls were not its load
    busy = generator_bound(run, target_rps=1000, cpu_fraction=0.95)[1][0]
    assert "95 % busy" in busy and "--processes N" in busy  # the core was full: say what keeps the schedule
    # well short of saturation a busy loop already cannot catch up after a stall (measured: 87 % busy)
    assert "--processes N" in generator_bound(run, target_rps=1000, cpu_fraction=0.75)[1][0]
    assert "--processes N" not in generator_bound(run, target_rps=1000, cpu_fraction=0.55)[1][0]
    assert "busy" not in generator_bound(run, target_rps=1000, cpu_fraction=None)[1][0]  # not measured: not said
    ok_run = _open_loop_run(0.05, 1000).finish(S, partial=False)
    assert generator_bound(ok_run, target_rps=1000, cpu_fraction=0.2) == (False, [])


def test_verdict_advises_capping_a_pool_that_grew_while_the_loop_was_busy() -> None:
    """A late, busy open loop that opened more than POOL_ADVICE connections is told to cap them (measured: a
    smaller pool kept the catch-up bursts short); not when it opened few, had room, or nobody counted."""
    run = _open_loop_run(5.0, 1000).finish(S, partial=False)
    many = generator_bound(run, target_rps=1000, cpu_fraction=0.9, connections=POOL_ADVICE + 1)[1][0]
    assert f"opened {POOL_ADVICE + 1:,} connections" in many and "--connections" in many
    for connections, busy in ((POOL_ADVICE, 0.9), (POOL_ADVICE + 1, 0.3), (None, 0.9)):
        reason = generator_bound(run, target_rps=1000, cpu_fraction=busy, connections=connections)[1][0]
        assert "--connections" not in reason, (connections, busy)
    ok_run = _open_loop_run(0.05, 1000).finish(S, partial=False)  # on schedule: nothing to advise
    assert generator_bound(ok_run, target_rps=1000, cpu_fraction=0.9, connections=1000) == (False, [])


def test_verdict_names_the_connections_cap_when_sends_waited_for_it() -> None:
    """Sends that waited because every one of the --connections N was busy: the reason names the cap (a slow
    target needs more), and no longer guesses at stalls from outside the loop."""
    run = _open_loop_run(5.0, 1000).finish(S, partial=False)
    reason = generator_bound(run, target_rps=1000, cpu_fraction=0.2, waited_at_cap=(1996, 4))[1][0]
    assert "1,996 sends waited for one of the 4 connections" in reason and "outside it" not in reason
    assert "waited" not in generator_bound(run, target_rps=1000, cpu_fraction=0.2)[1][0]
    assert "waited" not in generator_bound(run, target_rps=1000, cpu_fraction=0.2, waited_at_cap=(5, 0))[1][0]


def test_verdict_rate_short_only_when_cpu_saturated() -> None:
    run = _open_loop_run(0.05, 900).finish(S, partial=False)  # 900/s achieved, 1000/s wanted
    assert generator_bound(run, target_rps=1000, cpu_fraction=0.5) == (False, [])
    bound, reasons = generator_bound(run, target_rps=1000, cpu_fraction=0.95)
    assert bound and "target" in reasons[0]
    assert generator_bound(run, target_rps=905, cpu_fraction=0.95)[0] is False  # within 1 %


def test_verdict_dropped_sends_blame_the_generator_only_when_cpu_saturated() -> None:
    rec = _open_loop_run(0.05, 1000)
    for i in range(50):
        rec.dropped(i * S // 50)
    run = rec.finish(S, partial=False)
    assert generator_bound(run, target_rps=1050, cpu_fraction=0.5) == (False, [])  # a slow target: counted only
    bound, reasons = generator_bound(run, target_rps=1050, cpu_fraction=0.95)
    assert bound and any("50 sends dropped" in r for r in reasons)


def test_verdict_closed_loop_cpu() -> None:
    run = _open_loop_run(0.0, 100).finish(S, partial=False)
    assert generator_bound(run, target_rps=None, cpu_fraction=0.97)[0]
    assert not generator_bound(run, target_rps=None, cpu_fraction=0.3)[0]
    assert np.isfinite(run.rps())


def test_apply_verdict_stores_it_in_the_report(tmp_path: Path) -> None:
    from bench.report.reader import read_report

    report = make_report(make_run())
    assert apply_verdict(report, target_rps=None, cpu_fraction=0.99)
    back = read_report(write_report(tmp_path / "v.arrow", report))
    assert back.meta.generator_bound and back.meta.generator_bound_reasons and back.meta.cpu_fraction == 0.99
    assert summarize(back)["generator_bound"] is True


def test_fell_behind_names_requests_that_got_no_answer() -> None:
    """Answers short of sends because requests timed out is not a growing queue: the line says which it is."""
    from bench.report.summary import fell_behind_text

    base = {"rps": 25.0, "sent_rps": 50.0, "duration_s": 2.0}
    timeouts = fell_behind_text({**base, "errors_by_kind": {"read_timeout": 50, "http_error:503": 3}})
    assert timeouts is not None and "got no answer (read_timeout 50)" in timeouts and "queue" not in timeouts
    queue = fell_behind_text({**base, "errors_by_kind": {"http_error:503": 3}})
    assert queue is not None and "fell behind" in queue and "queue grew" in queue
    assert fell_behind_text({**base, "rps": 49.5, "errors_by_kind": {}}) is None
    # a closed loop's sends wait for answers: it cannot outrun the endpoint (whole UbiOps batches in the window
    # read as 750 sent against 579 back)
    assert fell_behind_text({**base, "load_mode": "closed", "errors_by_kind": {}}) is None


def test_resent_counters_are_shown_in_every_view() -> None:
    """Re-sent requests (run counters) are one line each in the terminal, Markdown and HTML views and in --json;
    a run without them shows none (an empty ``resent``, not zeros)."""
    from bench.report.html import render_html
    from bench.report.markdown import report_markdown

    report = make_report(make_run())
    assert summarize(report)["resent"] == {} and summarize(report)["resent_notes"] == []
    report.run.counters.update(resent_stale_connection=903, resent_goaway=1, resent_refused_stream=0)
    s = summarize(report)
    assert s["resent"] == {"stale_connection": 903, "goaway": 1}
    assert s["resent_notes"][0].startswith("re-sent 903 requests on a fresh connection")
    assert s["resent_notes"][1].startswith("re-sent 1 request on a new connection: the server's HTTP/2 GOAWAY")
    buf = io.StringIO()
    render_summary(report, Console(file=buf, width=400, color_system=None))
    assert "re-sent 903 requests on a fresh connection" in buf.getvalue()
    assert "Re-sent 903 requests on a fresh connection" in report_markdown(report)
    assert "Re-sent 1 request on a new connection" in render_html(report)
