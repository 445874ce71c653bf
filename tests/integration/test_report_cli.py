"""`bench report` and `[slo]` gates through the real CLI, on reports of real short quickstart runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["--set", 'load.duration="2s"', "--set", 'load.warmup="0.5s"']


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=90, env={**clean, "COLUMNS": "160", **(env or {})})


@pytest.fixture(scope="module")
def passing_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """One real run with an SLO that can be met (its report is reused by the view tests)."""
    out = tmp_path_factory.mktemp("report") / "q.arrow"
    proc = bench("run", "scenarios/quickstart.toml", *SHORT, "--set", "slo.p99_ms=10000",
                 "--set", "slo.error_rate=0.5", "-q", "--out", str(out))
    yield out, proc


def test_slo_that_can_be_met_exits_0(passing_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, proc = passing_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SLO: passed" in proc.stdout


def test_slo_that_cannot_be_met_exits_1_naming_it(tmp_path: Path) -> None:
    out = tmp_path / "fail.arrow"
    proc = bench("run", "scenarios/quickstart.toml", *SHORT, "--set", "slo.p99_ms=0.001",
                 "--set", "slo.p50_ms=10000", "-q", "--out", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "SLO: FAILED (1 of 2 broken)" in proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if "FAIL " in ln)
    assert "p99_ms" in line and "> allowed 0.001" in line
    assert out.exists()  # the report is written even when the gate fails
    shown = bench("report", str(out))
    assert shown.returncode == 0 and "SLO: FAILED" in shown.stdout


def test_bad_slo_key_is_an_input_error(tmp_path: Path) -> None:
    proc = bench("run", "scenarios/quickstart.toml", *SHORT, "--set", "slo.p98_ms=5", "-q",
                 "--out", str(tmp_path / "x.arrow"))
    assert proc.returncode == 2
    assert "slo.p98_ms" in proc.stderr and "Traceback" not in proc.stderr


def test_report_writes_html_markdown_and_step_summary(
        passing_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    report, _ = passing_run
    summary = tmp_path / "step_summary.md"
    summary.write_text("# earlier step\n")
    html, md = tmp_path / "out" / "r.html", tmp_path / "r.md"
    proc = bench("report", str(report), "--html", str(html), "--markdown", str(md),
                 env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert proc.returncode == 0, proc.stderr
    assert "from intended time" in proc.stdout and "SLO: passed" in proc.stdout
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "quickstart" in page and page.count("<svg") >= 5
    assert "<script" not in page and 'data-points="' in page
    text = md.read_text()
    assert text.startswith("### bench run: quickstart") and "**SLO: passed**" in text
    assert summary.read_text() == "# earlier step\n" + text


def test_report_without_flags_prints_only(passing_run: tuple[Path, subprocess.CompletedProcess[str]],
                                          tmp_path: Path) -> None:
    proc = bench("report", str(passing_run[0]))
    assert proc.returncode == 0 and "req/s" in proc.stdout


def test_report_bad_input_exits_2(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.arrow"
    bogus.write_bytes(b"not arrow")
    for path in (bogus, tmp_path / "missing.arrow"):
        proc = bench("report", str(path))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_nothing_measured_shows_rates_as_missing_not_zero(tmp_path: Path) -> None:
    """Every request fell in the warm-up: the measured window lasted 0 s, so req/s, rows/s and a min_rps objective
    are not measured (null / —), never 0; the run still fails (exit 3) and so does the objective."""
    import json

    out = tmp_path / "nm.arrow"
    proc = bench("run", "scenarios/quickstart.toml", "--requests", "5", "--set", 'load.warmup="5s"',
                 "--set", "slo.min_rps=1", "--set", "slo.min_rows_per_s=1", "-q", "--json", "--out", str(out))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    s = json.loads(proc.stdout)
    assert s["requests"] == 0 and s["warmup_requests"] == 5
    assert s["rps"] is None and s["rows_per_s"] is None
    objectives = {o["key"]: o for o in s["slo"]["objectives"]}
    for key in ("min_rps", "min_rows_per_s"):
        assert objectives[key]["measured"] is None and objectives[key]["passed"] is False
        assert "not measured" in objectives[key]["text"]
    md = tmp_path / "nm.md"
    shown = bench("report", str(out), "--markdown", str(md))
    assert shown.returncode == 0, shown.stderr
    head = next(ln for ln in shown.stdout.splitlines() if ln.startswith("req/s"))
    assert "—" in head and "0.0" not in head, head
    row = md.read_text().split("| requests |", 1)[1].splitlines()[2]  # the headline table's figures
    assert row.count("—") >= 2, row


@pytest.mark.parametrize("flag", ["--html", "--markdown"])
def test_a_view_written_over_its_own_report_is_refused(passing_run: tuple[Path, subprocess.CompletedProcess[str]],
                                                       tmp_path: Path, flag: str) -> None:
    """`bench report r.arrow --html r.arrow` replaced the run's report with its HTML page."""
    report = tmp_path / "r.arrow"
    report.write_bytes(passing_run[0].read_bytes())
    before = report.read_bytes()
    proc = bench("report", str(report), flag, str(report))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert report.read_bytes() == before


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_report_json_is_what_bench_run_json_printed(tmp_path: Path) -> None:
    """A stored run, read back by CI without re-running: the same JSON object, alone on stdout."""
    import json

    out = tmp_path / "j.arrow"
    run = bench("run", "scenarios/quickstart.toml", *SHORT, "--set", "slo.p99_ms=10000", "--json", "--out", str(out))
    assert run.returncode == 0, run.stderr
    shown = bench("report", str(out), "--json")
    assert shown.returncode == 0, shown.stderr
    stored = json.loads(shown.stdout)
    assert stored == json.loads(run.stdout) and stored["slo"]["passed"] is True
