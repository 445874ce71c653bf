"""UbiOps direct requests with rate-limit backoff on the bench engines, through the real CLI against the embedded
emulator's rate limit: every request accounted for, far fewer 429s than counting them, and `--processes 2`
sharing one request budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.report.reader import read_report

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = """
name = "ubiops-backoff"
[target]
kind = "ubiops"
url = "embedded"
project = "demo"
deployment = "ccfraud"
fields = {{ tensor = "tensor" }}
mode = "direct"
on_rate_limit = "{mode}"
[ubiops]
calls_per_minute = {budget}
[data]
generate = 50
[load]
concurrency = 4
duration = "{duration}s"
[emulator]
latency_ms = 2.0
rate_limit_per_min = {limit}
rate_limit_window_s = {window}
"""


def run(tmp_path: Path, name: str, *args: str, **values: Any) -> tuple[dict[str, Any], Any]:
    scenario = tmp_path / f"{name}.toml"
    scenario.write_text(SCENARIO.format(**values))
    out = tmp_path / f"{name}.arrow"
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(scenario), "--json", "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    acc = summary["accounting"]
    assert acc["holds"] and acc["sent"] == acc["ok"] + acc["errors"] + acc["in_flight_at_end"]
    return summary, read_report(out)


@pytest.mark.parametrize(("flags", "engine"), [([], "FastEngine"), (["--http2"], "H2Engine"),
                                               (["--engine", "httpx"], "HttpxEngine")])
def test_backoff_on_the_engines_accounts_for_everything_with_far_fewer_429s(tmp_path: Path, flags: list[str],
                                                                           engine: str) -> None:
    """20 calls a 1 s window, 4 closed-loop slots for 3 s. Backoff: the engine's send gate holds every slot once
    the window is spent (the header says reset in 1 s), so at most about one 429 a window; count mode hammers the
    limit. Both accounted exactly: on the lean engine of each protocol, and on the httpx engine."""
    common = {"budget": 0, "duration": 3, "limit": 20, "window": 1.0}
    back, back_report = run(tmp_path, "backoff", *flags, mode="backoff", **common)
    count, count_report = run(tmp_path, "count", *flags, mode="count", **common)
    assert back_report.meta.target["engine"] == engine == count_report.meta.target["engine"]
    windows = 3 + 2  # windows the run (and its start-up) can touch
    back_429 = back["errors_by_kind"].get("rate_limited:429", 0)
    assert set(back["errors_by_kind"]) <= {"rate_limited:429"} and back_429 <= windows
    assert 20 <= back["ok"] <= 20 * windows  # it went on past the first window, never past the limit
    ubiops = back_report.meta.extra["ubiops"]
    assert ubiops["on_rate_limit"] == "backoff" and ubiops["rate_limited"] == back_429
    assert ubiops["rate_limit_pauses"] >= 1 and ubiops["budget"]["budget_direct_calls"] == back["accounting"]["sent"]
    count_429 = count["errors_by_kind"].get("rate_limited:429", 0)
    assert count["ok"] <= 20 * windows and count_429 > 10 * max(1, back_429)
    assert count_report.meta.extra["ubiops"]["rate_limited"] == count_429


def test_processes_2_share_one_request_budget(tmp_path: Path) -> None:
    """--processes 2 with 120 calls a minute: each worker gets 60, so together they stay within one budget (a
    burst of 12, then 108 a minute) instead of two; the platform's limit (120 a minute) is never hit."""
    summary, report = run(tmp_path, "split", "--processes", "2", mode="backoff", budget=120, duration=8,
                          limit=120, window=60.0)
    sent = summary["accounting"]["sent"]
    bound = 12 + 108 * (8 + 2) / 60  # the whole budget over the run and its start (two budgets: ~2x this)
    assert 12 <= sent <= bound, summary
    assert summary["errors"] == 0 and summary["ok"] == sent
    assert report.meta.load["processes"] == 2


def test_open_loop_backoff_lateness_is_the_platforms_limit_not_the_harness(tmp_path: Path) -> None:
    """Open loop at 40 req/s against 20 calls a 1 s window: backoff holds sends until each reset, so they leave
    up to a second late. That lateness is the platform's rate limit (counted as gate holds and pauses), not the
    generator falling behind: the run is not flagged generator-bound for it."""
    summary, report = run(tmp_path, "open", "--rate", "40", mode="backoff", budget=0, duration=3, limit=20,
                          window=1.0)
    assert report.run.counters.get("gate_holds", 0) >= 1
    lag = report.run.histogram("schedule_lag", "measured", "all")
    assert lag.total and lag.percentiles_ms((99,))[99] > 100  # held sends really left late
    assert not summary["generator_bound"], summary["generator_bound_reasons"]
