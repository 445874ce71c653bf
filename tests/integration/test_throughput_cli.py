"""req/s is throughput: the measured window's answers at the rate they came back. An open loop above the
endpoint's capacity sends more than that, and every view says the endpoint fell behind; a latency longer than
the warm-up (UbiOps batch) costs nothing. The real CLI, the embedded emulator on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.ipc as ipc
import pytest

from bench.report.reader import read_report

ROOT = Path(__file__).resolve().parents[2]

# one slot of 20 ms: ~50 answers a second, whatever the load
SCENARIO = """name = "behind"
[target]
url = "embedded"
[data]
generate = 50
[load]
{load}
duration = "2s"
warmup = "1s"
[emulator]
replicas = 1
latency_ms = 20.0
per_row_us = 0.0
jitter = 0.0
"""


def run(tmp_path: Path, load: str, *args: str) -> tuple[dict[str, object], str, Path]:
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO.format(load=load))
    out = tmp_path / "r.arrow"
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(scenario), "--out", str(out), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode in (0, 3), proc.stderr[-2000:]
    summary = json.loads(proc.stdout) if "--json" in args else {}
    return summary, proc.stdout, out


def series_answers_per_s(path: Path) -> float:
    """Answers done in the whole seconds 1 and 2 (the measured window [1 s, 3 s)), read with pyarrow alone."""
    rows = ipc.open_file(str(path)).read_all().to_pylist()
    return sum(int(r["requests"]) for r in rows if r["section"] == "series" and r["second"] in (1, 2)) / 2.0


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_an_open_loop_above_capacity_reports_answers_not_sends(tmp_path: Path) -> None:
    s, _, out = run(tmp_path, "rate = 150\nmax_in_flight = 1000", "--json")
    rps, sent = float(s["rps"]), float(s["sent_rps"])  # type: ignore[arg-type]
    assert sent > 140  # every request of the window was taken on (none dropped at this cap) ...
    assert 35 < rps < 60  # ... but one 20 ms slot answers ~50 a second
    assert rps == pytest.approx(series_answers_per_s(out), rel=0.1)  # the per-second series says the same
    assert not s["dropped"]
    md = tmp_path / "r.md"
    proc = subprocess.run([sys.executable, "-m", "bench", "report", str(out), "--markdown", str(md)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    for text in (proc.stdout, md.read_text()):
        assert "fell behind" in text and f"{sent:,.1f} req/s sent" in text and f"{rps:,.1f} answers/s" in text


@pytest.mark.slow  # real runs of several seconds: in CI's slow step (the open-loop case above stays in the default)
def test_a_closed_loop_sends_what_comes_back(tmp_path: Path) -> None:
    s, _, out = run(tmp_path, "concurrency = 2", "--json")
    rps, sent = float(s["rps"]), float(s["sent_rps"])  # type: ignore[arg-type]
    assert 35 < rps < 60 and abs(rps - sent) <= 2.0  # two clients in flight at each edge of a 2-s window
    assert rps == pytest.approx(series_answers_per_s(out), rel=0.1)
    _, text, _ = run(tmp_path, "concurrency = 2")
    assert "fell behind" not in text and "req/s" in text


@pytest.mark.slow  # a real UbiOps batch run: in CI's slow step (unit tests cover the arithmetic)
def test_answers_slower_than_the_warmup_cost_no_throughput(tmp_path: Path) -> None:
    """UbiOps batch: each request is answered ~0.9 s after its create call, longer than the 0.5-s warm-up, so
    the window's last answers come after it; the endpoint kept up all the same."""
    out = tmp_path / "b.arrow"
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "scenarios/ubiops-batch.toml", "--set",
                           "load.duration=2s", "--set", "load.warmup=0.5s", "--json", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads(proc.stdout)
    # against the lower of the window's sends and the endpoint's own rate (every answer of the run, from the first
    # to the last): a closed loop of 250-item batches sends whole batches, 5 or 6 in the window by phase (625 or
    # 750 a second) while answers came back at ~580-640 a second (on a loaded machine 6 fell in the window and
    # rps 579 < 0.97 × 750 failed this test although the endpoint kept up); on a slow machine only 3 batches fell
    # in the window (375 a second) while the endpoint answered at ~670 a second. Counting only the answers done
    # inside the window (the old bug) gave ~0.9 of the rate.
    run = read_report(out).run
    spans = run.done_span.values()
    first, last = min(lo for lo, _ in spans), max(hi for _, hi in spans)
    answers = sum(run.answered(ph) for ph in run.done_span)
    sent_per_s = s["requests"] / s["duration_s"]
    assert run.answered("measured") == s["requests"], (s, run.answered("measured"))  # every one came back
    assert s["rps"] >= 0.95 * min(sent_per_s, (answers - 1) / (last - first)) > 0, (s, answers, first, last)
    shown = subprocess.run([sys.executable, "-m", "bench", "report", str(out)], capture_output=True, text=True,
                           cwd=ROOT, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert shown.returncode == 0 and "req/s" in shown.stdout and "fell behind" not in shown.stdout, shown.stdout


@pytest.mark.slow  # a real run of several seconds: in CI's slow step
def test_requests_that_time_out_are_not_throughput(tmp_path: Path) -> None:
    """Half the requests stall past the client's 0.3-s timeout: req/s is the answers that came back (~30 of 60
    sent a second), and the line says requests got no answer rather than that a queue grew."""
    scenario = tmp_path / "t.toml"
    scenario.write_text(SCENARIO.replace("replicas = 1", "replicas = 8\nfaults = \"stall:0.5\"\nseed = 11")
                        .format(load="rate = 60\nmax_in_flight = 1000")
                        + "[engine]\ntimeout = \"0.3s\"\n")
    out = tmp_path / "t.arrow"
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(scenario), "--out", str(out), "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads(proc.stdout)
    timeouts = s["errors_by_kind"].get("read_timeout", 0)
    assert 30 < timeouts < 90 and s["sent_rps"] > 55, s  # ~half of the 120 measured requests
    answers = s["requests"] - timeouts
    assert s["rps"] == pytest.approx(answers / s["duration_s"], rel=0.1), s  # timeouts are not answers
    assert s["rps"] < 0.8 * s["sent_rps"], s
    shown = subprocess.run([sys.executable, "-m", "bench", "report", str(out)], capture_output=True, text=True,
                           cwd=ROOT, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "got no answer (read_timeout" in shown.stdout and "queue grew" not in shown.stdout, shown.stdout
