"""`bench merge` through the real CLI on reports of real runs: the merged report is judged on the merged data,
never by the first part's verdicts, and a part that did not count its sends makes the run's sends unknown
(not a "lost requests" mismatch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report.reader import read_report
from bench.report.writer import write_report

ROOT = Path(__file__).resolve().parents[2]
OPEN = ["--rate", "40", "--duration", "1.5s", "--warmup", "0s", "-q"]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=90, env={**clean, "COLUMNS": "160"})


def run(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return bench("run", "scenarios/quickstart.toml", *OPEN, "--set", "slo.error_rate=0.2", *extra,
                 "--out", str(out))


@pytest.mark.slow  # over 5 s of real processes: in CI's slow step, not the default run
def test_merged_report_carries_its_own_slo_verdict_not_the_first_parts(tmp_path: Path) -> None:
    good, bad, merged = tmp_path / "good.arrow", tmp_path / "bad.arrow", tmp_path / "merged.arrow"
    first = run(good)
    assert first.returncode == 0 and "SLO: passed" in first.stdout, first.stdout + first.stderr
    second = run(bad, "--set", "emulator.error_rate=1.0")  # every answer a 500: nothing succeeded
    assert second.returncode == 3, second.stdout + second.stderr
    proc = bench("merge", str(good), str(bad), "-o", str(merged))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = read_report(merged)
    slo = report.meta.extra["slo"]
    assert slo["passed"] is False  # about half of the merged requests failed: error_rate 0.2 is broken
    assert [o["key"] for o in slo["objectives"] if not o["passed"]] == ["error_rate"]
    assert 0.3 < slo["objectives"][0]["measured"] < 0.7
    shown = bench("report", str(merged), "--markdown", str(tmp_path / "m.md"))
    assert shown.returncode == 0 and "SLO: FAILED" in shown.stdout and "SLO: passed" not in shown.stdout
    acc = report.meta.extra["accounting"]  # the merged run's own, not the first part's
    assert acc["holds"] and acc["sent"] == acc["ok"] + acc["errors"] + acc["in_flight_at_end"]
    assert acc["errors"] > 0 and acc["ok"] > 0


@pytest.mark.slow  # over 5 s of real processes: in CI's slow step, not the default run
def test_a_part_without_a_send_count_leaves_the_merged_sends_unknown(tmp_path: Path) -> None:
    a, b, merged = tmp_path / "a.arrow", tmp_path / "b.arrow", tmp_path / "merged.arrow"
    for out in (a, b):
        proc = run(out)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    part = read_report(b)  # as a worker lost mid-run leaves it: its streamed data, no count of its sends
    del part.run.counters["sent"]
    write_report(b, part)
    proc = bench("merge", str(a), str(b), "-o", str(merged))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = read_report(merged)
    assert "sent" not in report.run.counters and "accounting" not in report.meta.extra
    shown = bench("report", str(merged))
    assert shown.returncode == 0, shown.stderr
    assert "MISMATCH" not in shown.stdout and "accounting:" not in shown.stdout



@pytest.mark.slow  # over 5 s of real processes: in CI's slow step, not the default run
def test_merge_into_a_bad_out_path_is_one_line_exit_2(tmp_path: Path) -> None:
    a, b = tmp_path / "a.arrow", tmp_path / "b.arrow"
    for out in (a, b):
        proc = run(out)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    for bad in (tmp_path, tmp_path / "missing" / "m.arrow"):  # a directory; a folder that does not exist
        proc = bench("merge", str(a), str(b), "-o", str(bad))
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "--out" in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_merge_onto_one_of_its_inputs_is_refused_and_the_input_kept(tmp_path: Path) -> None:
    """`bench merge a.arrow b.arrow -o b.arrow` overwrote b's own report with the merge (a run's data lost)."""
    a, b = tmp_path / "a.arrow", tmp_path / "b.arrow"
    proc = run(a)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    b.write_bytes(a.read_bytes())  # the same run twice: --force merges it anyway, the case a typo meets
    before = b.read_bytes()
    for out in (b, tmp_path / "." / "b.arrow"):
        proc = bench("merge", str(a), str(b), "-o", str(out), "--force")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "--out" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
        assert b.read_bytes() == before
