"""`--help` texts say what the code does (the docs audit found a literal "%%", a merge check claimed beyond what it
checks, a flag described for a mode that refuses it, missing routes and defaults)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _help(*command: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "bench", *command, "--help"], capture_output=True, text=True,
                          timeout=60, env={"COLUMNS": "1000", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return " ".join(proc.stdout.split())


@pytest.mark.parametrize(("command", "present", "absent"), [
    (("data", "ccfraud"), "~0.2 % fraud-like rows", "%%"),
    (("merge",), "target kinds", "load modes or targets,"),
    (("run",), "refused on an HTTP/1.1 closed loop", "closed loop: one per -c slot"),
    ((), "KServe V2", None),
    (("serve",), "KServe V2", None),
    (("calibrate",), "default 5s", None),
    (("calibrate",), "event loop (default auto", None),
])
def test_help_says_what_the_code_does(command: tuple[str, ...], present: str, absent: str | None) -> None:
    text = _help(*command)
    assert present in text, text
    assert absent is None or absent not in text, text
