"""The hand-run benchmark scripts README.md names answer `--help` and refuse bad arguments in one line (exit 2):
`bench_open_loop_ab.py --help` was `ValueError: invalid literal for int()` with a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "perf" / "bench_open_loop_ab.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_open_loop_ab_help() -> None:
    proc = _run("--help")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith("usage:") and "ROUNDS" in proc.stdout and "NAME:PATH" in proc.stdout, proc.stdout


@pytest.mark.parametrize(("args", "word"), [(["x", "0.8", "a:/b"], "ROUNDS"), (["3", "x", "a:/b"], "FRACTIONS"),
                                            (["3", "0.8", "nopath"], "NAME:PATH"), (["3", "0.8"], "NAME:PATH")])
def test_open_loop_ab_bad_arguments_are_one_line_exit_2(args: list[str], word: str) -> None:
    proc = _run(*args)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert word in err[-1] and "error:" in err[-1], err
