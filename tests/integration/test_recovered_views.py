"""A run killed with -9 and recovered from its checkpoint: what was never measured (the generator's CPU) reads
as missing in every view, never as 0 % — through the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.report.reader import read_report

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp: Path) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}, "COLUMNS": "160",
            "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)}


def test_recovered_report_shows_the_unmeasured_cpu_as_missing(tmp_path: Path) -> None:
    out = tmp_path / "r.arrow"
    ckpt = out.with_name(f".{out.name}.checkpoint")
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--url", "embedded", "-c", "2", "-d", "60s",
                             "-q", "--out", str(out)], cwd=tmp_path, env=_env(tmp_path), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (ckpt.exists() and ckpt.read_bytes().count(b"\n") >= 3):  # header + 2 ticks
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint ticks"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its embedded emulator, no goodbye
        proc.wait(10)
    rec = subprocess.run([sys.executable, "-m", "bench", "recover", str(out)], cwd=tmp_path, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=60)
    assert rec.returncode == 0, rec.stderr
    report = read_report(out)
    assert report.run.partial and report.meta.cpu_fraction is None
    html = tmp_path / "r.html"
    shown = subprocess.run([sys.executable, "-m", "bench", "report", str(out), "--html", str(html)], cwd=tmp_path,
                           env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    text = html.read_text()
    assert "generator CPU" in text and "0 % of a core" not in text
    # the generator-bound verdict was never made (no schedule lag, no CPU kept): said so, not shown as a pass
    assert "not judged (recovered from a checkpoint" in text and "not generator-bound" not in text
    md = tmp_path / "r.md"
    shown = subprocess.run([sys.executable, "-m", "bench", "report", str(out), "--markdown", str(md)], cwd=tmp_path,
                           env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "Generator-bound: not judged" in md.read_text() and "generator-bound: not judged" in shown.stdout
