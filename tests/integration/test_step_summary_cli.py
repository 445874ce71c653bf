"""`bench run` and `bench capacity` append their Markdown to $GITHUB_STEP_SUMMARY (as report/compare do), through
the real CLI: on success, on a failed SLO gate (exit 1) and on a failed run (exit 3), once per run with
--processes, once per sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["--set", 'load.duration="1s"', "--set", 'load.warmup="0.2s"']


def bench(*args: str, summary: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(summary), "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=90, env=env)


def test_passing_run_appends_markdown_and_keeps_json_stdout_clean(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    proc = bench("run", "scenarios/quickstart.toml", *SHORT, "--json", "--out", str(tmp_path / "q.arrow"),
                 summary=summary)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)  # the summary file's notice goes to stderr, never into the JSON
    text = summary.read_text()
    assert text.startswith("earlier step\n### bench run: quickstart\n"), text  # appended, not replaced
    assert f"| {s['requests']:,} |" in text and "Run failed" not in text


def test_failed_slo_with_processes_appends_once(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    proc = bench("run", "scenarios/quickstart.toml", *SHORT, "--processes", "2", "--set", "slo.p99_ms=0.001", "-q",
                 "--out", str(tmp_path / "p.arrow"), summary=summary)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    text = summary.read_text()
    assert text.count("### bench run:") == 1, text  # the parent's merged report only, not one per worker
    assert "**SLO: FAILED**" in text and "processes" in text


def test_failed_run_appends_markdown_saying_why(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    proc = bench("run", "scenarios/quickstart.toml", *SHORT, "--set", "emulator.error_rate=1.0", "-q",
                 "--out", str(tmp_path / "f.arrow"), summary=summary)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    text = summary.read_text()
    assert text.count("### bench run:") == 1 and "> **Run failed:** no successful answer" in text, text
    assert "**Errors by kind**" in text


def test_unwritable_summary_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    summary = tmp_path / "missing-dir" / "summary.md"
    proc = bench("run", "scenarios/quickstart.toml", *SHORT, "-q", "--out", str(tmp_path / "w.arrow"),
                 summary=summary)
    assert proc.returncode == 0, proc.stderr
    assert "warning: cannot append to $GITHUB_STEP_SUMMARY" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "w.arrow").exists()


def test_capacity_appends_its_sweep(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    proc = bench("capacity", "scenarios/capacity.toml", "--concurrency", "1", "--step", "1s", "--warmup", "0s",
                 "--quiet", "--out", str(tmp_path / "cap"), summary=summary)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = summary.read_text()
    assert text.startswith("### bench capacity: capacity") and text.count("### bench") == 1, text  # not per step
    assert "| step | offered |" in text
    printed = [ln.strip() for ln in proc.stdout.splitlines() if ln.startswith(("highest load", "emulator model"))]
    assert len(printed) == 2, proc.stdout  # the sweep's verdict and the model's capacity, as printed ...
    for line in printed:
        assert f"- {line}" in text, (line, text)  # ... are in the summary too
