"""Piped output (CI logs) through the real CLI: nothing a user must read is ellipsised or broken across lines.

rich falls back to 80 columns without a terminal; bench uses $COLUMNS when set, else 160 (bench.report.console).
The subprocesses here have stdout piped and no $COLUMNS, as on a CI runner.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report.console import PIPE_WIDTH

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["--set", 'load.duration="1s"', "--set", 'load.warmup="0.2s"', "-q"]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GITHUB_STEP_SUMMARY", "COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=90, env=env, stdin=subprocess.DEVNULL)


def _whole(out: str) -> None:
    assert "…" not in out, out
    assert all(len(line) <= PIPE_WIDTH for line in out.splitlines()), out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    d = tmp_path_factory.mktemp("piped")
    out = {}
    for name, latency in (("base", "5"), ("slow", "60")):
        path = d / f"{name}.arrow"
        proc = bench("run", "scenarios/quickstart.toml", *SHORT, "--set", f"emulator.latency_ms={latency}",
                     "--out", str(path))
        assert proc.returncode == 0, proc.stderr
        out[name] = (path, proc)
    return out


def test_compare_piped_shows_verdicts_and_notes_whole(runs: dict[str, tuple[Path, subprocess.CompletedProcess[str]]]
                                                      ) -> None:
    proc = bench("compare", str(runs["base"][0]), str(runs["slow"][0]))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    _whole(proc.stdout)
    rows = {ln.split()[0]: ln.split() for ln in proc.stdout.splitlines() if ln.split()[:1] in (["p50"], ["p90"])}
    assert rows["p50"][-1] == "REGRESSION" and rows["p90"][-1] == "ok", proc.stdout
    # a 1 s run has too few windows for the noise test: the note saying so is one line, not broken at 80 columns
    note = next(ln for ln in proc.stdout.splitlines() if ln.startswith("note:"))
    assert note.rstrip().endswith("verdict"), proc.stdout
    assert next(ln for ln in proc.stdout.splitlines() if ln.startswith("regression:")).count("p50 +") == 1


def test_run_and_report_piped_keep_lines_whole(runs: dict[str, tuple[Path, subprocess.CompletedProcess[str]]]
                                               ) -> None:
    path, run = runs["base"]
    _whole(run.stdout)
    assert any(ln.startswith("accounting: sent ") and ln.rstrip().endswith("(holds)") for ln in run.stdout.splitlines())
    proc = bench("report", str(path))
    assert proc.returncode == 0, proc.stderr
    _whole(proc.stdout)
    load = next(ln for ln in proc.stdout.splitlines() if ln.startswith("load: "))
    assert load.rstrip().endswith("processes=1"), proc.stdout  # the whole load line (over 80 columns) on one line

