"""`bench calibrate` through the real CLI against a loopback port that refuses every connection."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_calibrate_where_nothing_succeeds_exits_3_with_no_figures_made_up() -> None:
    """Every request refused: no latency, no ceiling (null / "—", never 0 or a figure of failures), exit 3."""
    with socket.socket() as s:  # a loopback port nothing listens on (bound, never listening: connects refused)
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/x"
        args = [sys.executable, "-m", "bench", "calibrate", "--url", url, "--duration", "0.3s", "--connections", "2"]
        out = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=60)
        shown = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stdout + out.stderr
    r = json.loads(out.stdout)
    assert r["requests"] > 0 and r["errors"] == r["requests"]
    assert r["p50_ms"] is None and r["p99_ms"] is None and r["ceiling_req_per_s_per_core"] is None
    assert "none of" in out.stderr and "succeeded" in out.stderr and "Traceback" not in out.stderr
    assert shown.returncode == 3, shown.stdout + shown.stderr
    assert "p50 — ms" in shown.stdout and "ceiling" in shown.stdout and "Traceback" not in shown.stderr
    assert "open loop" not in shown.stdout  # no ceiling measured: no rate advised from it


def test_calibrate_text_advises_an_open_loop_rate_from_the_measured_ceiling() -> None:
    """The text output turns the measured ceiling into the open-loop rate per process to plan for: half of it
    (docs/performance.md: above that, sends left late), computed from the same figure it prints."""
    args = [sys.executable, "-m", "bench", "calibrate", "--duration", "0.3s", "--connections", "4"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("  ")}
    ceiling = float(lines["ceiling"].split()[1].replace(",", ""))
    plan = lines["open"]
    advised = float(plan.split("at most")[1].split()[0].replace(",", ""))
    assert ceiling > 0 and abs(advised - ceiling / 2) <= 1, (ceiling, plan)
    assert "--processes" in plan
    # measured for the HTTP/1.1 engine only: no advice is made up for another
    other = subprocess.run([*args, "--engine", "httpx"], capture_output=True, text=True, timeout=60)
    assert other.returncode == 0 and "ceiling" in other.stdout and "open loop" not in other.stdout, other.stdout


def test_http2_sink_cpu_counts_the_worker_that_serves() -> None:
    """The --http2 sink is hypercorn, which serves from a child process: its CPU must be counted (the report
    said ~0.1 s for seconds of serving). Any sink spends well over 100 µs of CPU per answered request
    (hypercorn: several hundred)."""
    args = [sys.executable, "-m", "bench", "calibrate", "--http2", "--duration", "1s", "--connections", "2",
            "--streams", "8", "--json"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    r = json.loads(out.stdout)
    assert r["built_in_sink"] and r["requests"] > 100, r
    assert r["sink_cpu_s"] >= 100e-6 * r["requests"], r


@pytest.mark.slow  # the 2 s drain of real processes
@pytest.mark.parametrize("listening", [True, False], ids=["never-answers", "refused"])
def test_calibrate_without_an_answer_makes_no_rate_up_and_accounts_every_request(listening: bool) -> None:
    """A target that accepts and never answers (the kernel's backlog completes the connects) or refuses every
    connection: nothing was answered, so req/s and CPU per request are null / "—" (they were the failures' rate and
    CPU time over 1); requests still in flight at the end are counted, as `bench run` does (kind abandoned), and
    sent = ok + errors + in flight at the end holds in the JSON and the text."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        if listening:
            s.listen(16)  # never accepted: connects complete, requests go out, no answer ever comes
        url = f"http://127.0.0.1:{s.getsockname()[1]}/x"
        args = [sys.executable, "-m", "bench", "calibrate", "--url", url, "--duration", "0.3s", "--connections", "2"]
        out = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=60)
        shown = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stdout + out.stderr
    r = json.loads(out.stdout)
    assert r["req_per_s"] is None and r["cpu_us_per_req"] is None and r["ceiling_req_per_s_per_core"] is None, r
    acc = r["accounting"]
    assert acc["holds"] and acc["sent"] == acc["ok"] + acc["errors"] + acc["in_flight_at_end"] > 0, acc
    assert acc["in_flight_at_end"] == r["abandoned"] == (2 if listening else 0), r
    assert r["requests"] >= r["abandoned"] and r["errors"] == r["requests"], r
    assert shown.returncode == 3, shown.stdout + shown.stderr
    lines = {line.split()[0]: line for line in shown.stdout.splitlines() if line.startswith("  ")}
    assert "— req/s" in lines["measured"] and "— µs/req" in lines["client"], shown.stdout
    assert "(holds)" in lines["accounting"], shown.stdout
    if listening:
        assert "in flight at end 2" in lines["accounting"] and "2 of them in flight" in lines["measured"]
        assert "still in flight at the end" in shown.stderr, shown.stderr
