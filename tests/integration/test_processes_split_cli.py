"""`--processes N` through the real CLI: the load is split exactly (no process with a share of 0, which meant no
request limit and a default client), more processes than the load splits into — or than the 1,024 limit — is
refused at once (exit 2, one line naming --processes and what it can have), low open-loop rates add up to the
one-process schedule."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.report.reader import read_report

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["scenarios/quickstart.toml", "--warmup", "0s", "-q"]


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _refused(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--processes" in lines[0], (proc.returncode, proc.stderr)
    assert all(w in lines[0] for w in words), lines[0]
    assert "embedded emulator" not in proc.stderr  # before any load


def test_more_processes_than_the_load_splits_into_is_refused(tmp_path: Path) -> None:
    out = str(tmp_path / "r.arrow")
    # -n 2 over 3 processes ran one with no request limit: 344 requests over the whole -d, not 2
    _refused(bench("run", *QUICK, "-c", "3", "-n", "2", "-d", "20s", "--processes", "3", "-o", out),
             "load.requests", "at most 2")
    # -c 1 over 3 processes ran 3 clients while the report said concurrency 1
    _refused(bench("run", *QUICK, "-c", "1", "-d", "20s", "--processes", "3", "-o", out),
             "load.concurrency", "at most 1")
    started = time.monotonic()  # had no bound: 10,000 interpreters and a start 1 + 0.2·N s ahead
    _refused(bench("run", *QUICK, "--rate", "50", "-d", "1s", "--processes", "10000", "-o", out, timeout=15),
             "at most 1,024")
    assert time.monotonic() - started < 10
    assert not (tmp_path / "r.arrow").exists()


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_shares_add_up_to_what_was_asked(tmp_path: Path) -> None:
    closed, opened = tmp_path / "closed.arrow", tmp_path / "open.arrow"
    proc = bench("run", *QUICK, "-c", "3", "-n", "5", "-d", "20s", "--processes", "2", "-o", str(closed))
    assert proc.returncode == 0, proc.stderr
    report = read_report(closed)
    assert report.run.total().requests == 5  # 3 + 2, never a share without a limit
    assert report.meta.load["concurrency"] == 3 and report.meta.load["processes"] == 2
    # 2 req/s for 1 s is sends at 0 and 0.5 s; three processes at 2/3 req/s each sent one at 0 s (3 at once)
    proc = bench("run", *QUICK, "--rate", "2", "-d", "1s", "--processes", "3", "--raw", "-o", str(opened))
    assert proc.returncode == 0, proc.stderr
    report = read_report(opened)
    assert report.run.total().requests == 2 and report.meta.load["processes"] == 3
    intended = sorted(_raw_intended(opened))
    assert len(intended) == 2 and abs((intended[1] - intended[0]) / 1e9 - 0.5) < 0.05, intended


def _raw_intended(path: Path) -> list[int]:
    import pyarrow.compute as pc
    import pyarrow.ipc

    table = pyarrow.ipc.open_file(str(path)).read_all()
    return [int(v) for v in table.filter(pc.equal(table["section"], "raw"))["intended_ns"].to_pylist()]
