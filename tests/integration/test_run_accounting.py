"""Every request accounted for, and a failed run says so — through the real `bench run` CLI against misbehaving
servers on 127.0.0.1 (tests/integration/fault_servers.py).

Each case checks: the exit code (3: no successful answer), the one-line reason naming the commonest error kind,
the stored and summarised accounting ``sent = ok + errors + in flight at end`` (holds), and that the run ended
within duration + drain + a margin for a loaded machine (never a read timeout more).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_servers import FaultServer

from tests.integration.locust_cluster import signal_when

ROOT = Path(__file__).resolve().parents[2]
MARGIN_S = 6.0  # interpreter start, report write, a loaded 2-core machine


def bench(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
    return proc, time.monotonic() - t0


@pytest.fixture
def body(tmp_path: Path) -> Path:
    p = tmp_path / "body.json"
    p.write_text('{"x": 1}')
    return p


def _stored(path: Path) -> dict[str, object]:
    from bench.report.reader import read_report

    extra = read_report(path).meta.extra
    assert isinstance(extra, dict)
    return extra


def test_done_when_never_answering_server_exits_3_within_duration_drain(body: Path, tmp_path: Path) -> None:
    """The issue's Done-when, as written: -c 8 -d 3s against a server that never answers (default drain 5 s)."""
    with FaultServer("silent") as srv:
        out = tmp_path / "r.arrow"
        proc, took = bench("run", "--url", f"http://127.0.0.1:{srv.port}/x", "--body", str(body), "-c", "8",
                           "-d", "3s", "--out", str(out))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert took < 3 + 5 + MARGIN_S, took  # duration + drain, never a 30 s read timeout more
    lines = [ln for ln in proc.stderr.splitlines() if "run failed" in ln]
    assert len(lines) == 1 and "abandoned" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert "abandoned" in proc.stdout and "in flight at end 8" in proc.stdout, proc.stdout
    acc = _stored(out)["accounting"]
    assert acc == {"sent": 8, "ok": 0, "errors": 0, "in_flight_at_end": 8, "dropped": 0, "holds": True}, acc


CASES = [("silent", "abandoned"), ("short", "abandoned"), ("reset", "reset"), ("garbage", "protocol_error")]


@pytest.mark.parametrize("engine", ["fast", "httpx"])
@pytest.mark.parametrize(("behaviour", "kind"), CASES)
def test_a_run_with_no_ok_answer_exits_3_naming_the_commonest_kind(engine: str, behaviour: str, kind: str,
                                                                    body: Path, tmp_path: Path) -> None:
    with FaultServer(behaviour) as srv:
        proc, took = bench("run", "--url", f"http://127.0.0.1:{srv.port}/x", "--body", str(body), "-c", "8",
                           "-d", "1s", "--engine", engine, "--set", 'load.drain="1s"', "-q", "--json",
                           "--out", str(tmp_path / "r.arrow"))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert took < 1 + 1 + MARGIN_S, took
    s = json.loads(proc.stdout)
    assert s["ok"] == 0 and s["errors"] >= 8 and s["requests"] == s["errors"], s
    top = max(s["errors_by_kind"].items(), key=lambda kv: kv[1])[0]
    assert top == kind, s["errors_by_kind"]
    assert s["failed"] and kind in s["failed"] and f"commonest error: {kind}" in proc.stderr
    acc = s["accounting"]
    assert acc["holds"] and acc["sent"] == acc["ok"] + acc["errors"] + acc["in_flight_at_end"] >= 8, acc
    assert s["latency_ms"]["p99"] is None  # no ok answer: missing, never 0
    assert "Traceback" not in proc.stderr
    if behaviour == "reset":  # every view of the stored report says so, not only --json and Markdown
        html = tmp_path / "r.html"
        shown, _ = bench("report", str(tmp_path / "r.arrow"), "--html", str(html))
        assert shown.returncode == 0, shown.stderr
        assert f"run failed: {s['failed']}" in " ".join(shown.stdout.split()), shown.stdout
        assert "<b>Run failed:</b> no successful answer" in html.read_text()


def test_a_mostly_failing_run_with_some_ok_answers_exits_0_and_accounts_for_all(body: Path, tmp_path: Path) -> None:
    weights = {"ok": 6.0, "reset": 1.0, "garbage": 1.0, "silent": 0.2}
    with FaultServer("random", seed=7, weights=weights) as srv:
        proc, _ = bench("run", "--url", f"http://127.0.0.1:{srv.port}/x", "--body", str(body), "-c", "4",
                        "-d", "1s", "--set", 'load.drain="0.5s"', "-q", "--json", "--out", str(tmp_path / "r.arrow"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s = json.loads(proc.stdout)
    acc = s["accounting"]
    assert s["ok"] > 0 and s["errors"] > 0 and s["failed"] is None, s
    assert acc["holds"] and acc["sent"] == acc["ok"] + acc["errors"] + acc["in_flight_at_end"], acc
    assert acc["sent"] == s["requests"] + s["warmup_requests"], (acc, s)


def test_nothing_measured_after_warmup_exits_3(body: Path, tmp_path: Path) -> None:
    """--requests finishing inside the warm-up measured nothing: exit 3, not 'requests 0' and exit 0."""
    with FaultServer("ok") as srv:
        proc, _ = bench("run", "--url", f"http://127.0.0.1:{srv.port}/x", "--body", str(body), "-c", "2",
                        "--requests", "20", "--set", 'load.warmup="30s"', "-q", "--json",
                        "--out", str(tmp_path / "r.arrow"))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    s = json.loads(proc.stdout)
    assert s["requests"] == 0 and s["warmup_requests"] == 20, s
    assert "nothing measured after warm-up" in proc.stderr and "20 requests" in proc.stderr


def test_concurrency_beyond_the_open_file_limit_is_an_input_error(body: Path, tmp_path: Path) -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 200_000:
        pytest.skip("no finite open-file limit to exceed")
    with FaultServer("ok") as srv:
        proc, took = bench("run", "--url", f"http://127.0.0.1:{srv.port}/x", "--body", str(body),
                           "-c", str(hard), "-d", "2s", "-q", "--out", str(tmp_path / "r.arrow"))
        assert srv.requests == 0  # refused before any load
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "load.concurrency" in proc.stderr and "open-file limit" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and took < 2 + MARGIN_S


MIX = {"ok": 8.0, "reset": 1.0, "garbage": 1.0, "short": 0.3, "silent": 0.3}
MODES = {
    "closed": ["-c", "4", "-d", "1s"],
    "open": ["-r", "300", "-d", "1s"],
    "stages": ["--set", "load.concurrency=0", "--set",
               'load.stages=[{duration="0.5s", rate=100}, {duration="0.5s", rate=300}]'],
    "requests": ["-c", "4", "--requests", "150"],
    "h2-closed": ["-c", "4", "-d", "1s", "--http2"],
    "processes": ["-c", "4", "-d", "1s", "--processes", "2"],
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_and_ending_stores_an_accounting_that_holds(mode: str, body: Path, tmp_path: Path) -> None:
    """A server misbehaving at random: whatever the mode or how the run ends, sent = ok + errors + in flight."""
    with FaultServer("random", seed=3, weights=MIX) as srv:
        out = tmp_path / "r.arrow"
        proc, _ = bench("run", "--url", f"http://127.0.0.1:{srv.port}/x", "--body", str(body), *MODES[mode],
                        "--set", 'load.drain="0.5s"', "--set", 'engine.timeout="1s"', "-q", "--json",
                        "--out", str(out))
    assert "Traceback" not in proc.stderr, proc.stderr
    s = json.loads(proc.stdout)
    acc = s["accounting"]
    assert acc["holds"] and acc["sent"] > 0, acc
    assert acc["sent"] == acc["ok"] + acc["errors"] + acc["in_flight_at_end"]
    assert _stored(out)["accounting"] == acc
    if mode == "h2-closed":  # an HTTP/1.1 server: no h2 answer is ok -- a failed run, said so
        assert proc.returncode == 3 and s["ok"] == 0, proc.stderr
    else:
        assert proc.returncode == 0 and s["ok"] > 0, proc.stdout + proc.stderr
    if mode == "requests":
        assert acc["sent"] == 150


def test_sigint_against_a_silent_server_counts_the_in_flight_requests(body: Path, tmp_path: Path) -> None:
    """Ctrl-C mid-run: exit 130, a partial report whose in-flight requests are errors, and the check holds."""

    with FaultServer("silent") as srv:
        out = tmp_path / "r.arrow"
        proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--url", f"http://127.0.0.1:{srv.port}/x",
                                 "--body", str(body), "-c", "6", "-d", "60s", "--set", 'load.drain="0.5s"', "-q",
                                 "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        stdout, stderr = signal_when(proc, lambda: srv.requests >= 6, "all six requests to be out")
    assert proc.returncode == 130, stdout + stderr
    assert "in flight at end 6" in stdout and "(holds)" in stdout, stdout
    extra = _stored(out)
    assert extra["accounting"] == {"sent": 6, "ok": 0, "errors": 0, "in_flight_at_end": 6, "dropped": 0,
                                   "holds": True}
