"""`bench capacity` without an SLO derives its default latency limit from a measured p50 only: a first step where
every request failed has none, so it is judged on errors alone (never "p99 ≤ 1 ms" made up from a missing p50)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_default_latency_limit_from_a_step_without_an_ok_answer(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "capacity", "scenarios/quickstart.toml", "--concurrency", "1",
                           "--step", "1s", "--warmup", "0s", "--set", "emulator.error_rate=1.0", "--json", "--quiet",
                           "--out", str(tmp_path / "sweep")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr  # nothing succeeded: never a pass, a failed sweep
    result = json.loads(proc.stdout)
    (step,) = result["steps"]
    assert step["verdict"] == "fail" and step["p50_ms"] is None and step["error_rate"] == 1.0
    assert result["slo"] is None  # no latency limit was derived
    assert not any("p99_ms" in r for r in step["reasons"]), step["reasons"]
    assert any(r.startswith("error_rate") for r in step["reasons"]), step["reasons"]
    assert result["message"].startswith("run failed: no level had a successful answer"), result["message"]
