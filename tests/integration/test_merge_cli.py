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
    return bench("run", *_run_args(out, *extra))


def _run_args(out: Path, *extra: str) -> list[str]:
    return ["scenarios/quickstart.toml", *OPEN, "--set", "slo.error_rate=0.2", *extra, "--out", str(out)]


def run_together(*runs: tuple[Path, list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Runs started at the same time, as bench merge expects (sequential runs are refused)."""
    clean = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    procs = [(args, subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**clean, "COLUMNS": "160"}))
             for args in ([sys.executable, "-m", "bench", "run", *_run_args(out, *extra)] for out, extra in runs)]
    done = []
    for args, p in procs:
        try:
            out, err = p.communicate(timeout=90)
        finally:
            p.kill()
        done.append(subprocess.CompletedProcess(args, p.returncode, out, err))
    return done


@pytest.mark.slow  # over 5 s of real processes: in CI's slow step, not the default run
def test_merged_report_carries_its_own_slo_verdict_not_the_first_parts(tmp_path: Path) -> None:
    good, bad, merged = tmp_path / "good.arrow", tmp_path / "bad.arrow", tmp_path / "merged.arrow"
    first, second = run_together((good, []), (bad, ["--set", "emulator.error_rate=1.0"]))  # bad: every answer a 500
    assert first.returncode == 0 and "SLO: passed" in first.stdout, first.stdout + first.stderr
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
    for proc in run_together((a, []), (b, [])):
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
    for proc in run_together((a, []), (b, [])):
        assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp_path / "afile").write_text("x")
    for bad in (tmp_path, tmp_path / "afile" / "sub" / "m.arrow"):  # a directory; a file where a folder must go
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


@pytest.mark.slow  # two real runs one after the other
def test_sequential_runs_are_refused_unless_forced(tmp_path: Path) -> None:
    """Two runs one after the other are not one run of twice the load: merging them reported a window as long as
    both and half their rate. Refused, one line, exit 2; --force merges and says why."""
    a, b, merged = tmp_path / "a.arrow", tmp_path / "b.arrow", tmp_path / "merged.arrow"
    for out in (a, b):
        proc = bench("run", "scenarios/quickstart.toml", "-d", "1s", "--warmup", "0s", "-q", "--out", str(out))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = bench("merge", str(a), str(b), "-o", str(merged))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not simultaneous" in lines[0] and "a.arrow 0%" in lines[0], proc.stderr
    assert not merged.exists()
    forced = bench("merge", "--force", str(a), str(b), "-o", str(merged))
    assert forced.returncode == 0, forced.stderr
    assert "merging anyway (--force): not simultaneous" in forced.stderr
    assert any("not simultaneous" in p for p in read_report(merged).meta.extra["merge_forced"])
