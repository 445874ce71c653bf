"""UbiOps batch against a platform whose calls stall (the emulator's `stall` fault), through the real `bench` CLI:
the run ends within duration + drain + one [engine] timeout, a stop signal ends it at once with the create call's
items in flight (`abandoned`), and a `kill -9` leaves a checkpoint whose recovery accounts for them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pyarrow.ipc as ipc
import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "emulator-ubiops-token"  # the emulator's default UbiOps token
STALL_METRIC = 'emulator_faults_injected_total{fault="stall"}'
CREATES_METRIC = ('rest_server_requests_total{method="POST",'
                  'path="/v2.1/projects/{}/deployments/{}/versions/{}/requests/batch"')


def counters(path: Path) -> dict[str, int]:
    rows = ipc.open_file(str(path)).read_all().to_pylist()
    return {str(r["name"]): int(r["count"]) for r in rows if r["section"] == "counter"}


def metric(base: str, prefix: str) -> int:
    """A counter of the fault emulator (its /metrics is never faulted), summed over the series with ``prefix``."""
    lines = httpx.get(f"{base}/metrics").text.splitlines()
    return sum(int(float(line.split()[-1])) for line in lines if line.startswith(prefix))


def stalls(base: str) -> int:
    return metric(base, STALL_METRIC)


def wait_for(cond: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start_batch_run(base: str, out: Path, *extra: str) -> subprocess.Popen[str]:
    """A long batch run against the standalone emulator at ``base`` (one create call of 250 items goes first)."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "run", "scenarios/ubiops-batch.toml", "--set", f'target.url="{base}/v2.1"',
         "--set", 'load.duration="60s"', "--set", 'load.warmup="0s"', "--out", str(out), "--json", *extra],
        cwd=ROOT, env={**os.environ, "UBIOPS_TOKEN": TOKEN}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


@pytest.mark.slow  # 2 s of load, a 1-s timeout and a 1-s drain: in CI's slow step
def test_stalled_platform_calls_end_as_read_timeouts_within_the_engine_timeout(tmp_path: Path) -> None:
    out = tmp_path / "t.arrow"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "scenarios/ubiops-batch.toml", "--set", 'load.duration="2s"',
         "--set", 'load.warmup="0s"', "--set", 'engine.timeout="1s"', "--set", 'target.drain_timeout="1s"',
         "--set", 'emulator.faults="stall:1.0"', "--out", str(out), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=90)
    wall = time.monotonic() - t0
    # 2 s of load + 1 s drain + one 1 s timeout (+ start-up); the batch client once waited 120 s per stalled call
    assert wall < 20, f"took {wall:.1f} s"
    assert proc.returncode == 3, proc.stderr  # nothing succeeded
    summary = json.loads(proc.stdout)
    assert summary["accounting"]["holds"] is True, summary["accounting"]
    assert summary["accounting"]["sent"] >= 250
    assert set(summary["errors_by_kind"]) == {"read_timeout"}, summary["errors_by_kind"]
    assert counters(out)["create_unknown"] == summary["accounting"]["sent"]


@pytest.mark.slow  # a stalled platform and a real SIGTERM, ~3 s: in CI's slow step
def test_sigterm_while_a_create_call_stalls_writes_the_partial_report_at_once(
        fault_emulator: Callable[..., str], tmp_path: Path) -> None:
    base = fault_emulator("stall:1.0")
    out = tmp_path / "s.arrow"
    proc = start_batch_run(base, out)  # [engine] timeout 30 s: the stop must not wait for it
    try:
        wait_for(lambda: stalls(base) >= 1, "the first create call to stall")
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        stdout, stderr = proc.communicate(timeout=20)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert took < 10, f"the stop took {took:.1f} s"
    summary = json.loads(stdout)
    assert summary["partial"] is True
    assert summary["errors_by_kind"] == {"abandoned": 250}  # the stalled create's items: sent, never answered
    acc = summary["accounting"]
    assert (acc["sent"], acc["in_flight_at_end"], acc["holds"]) == (250, 250, True), acc
    assert counters(out)["create_abandoned"] == 250
    assert not (tmp_path / ".s.arrow.checkpoint").exists()


@pytest.mark.slow  # a stalled platform, a SIGKILL and a recovery, ~3 s: in CI's slow step
def test_a_run_killed_while_a_create_call_stalls_recovers_with_its_items_in_flight(
        fault_emulator: Callable[..., str], tmp_path: Path) -> None:
    base = fault_emulator("stall:1.0")
    out = tmp_path / "k.arrow"
    checkpoint = tmp_path / ".k.arrow.checkpoint"
    proc = start_batch_run(base, out)
    try:
        wait_for(lambda: stalls(base) >= 1, "the first create call to stall")
        lines = len(checkpoint.read_bytes().splitlines()) if checkpoint.exists() else 0
        wait_for(lambda: len(checkpoint.read_bytes().splitlines()) > lines + 1, "a checkpoint line after the stall")
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rec = subprocess.run([sys.executable, "-m", "bench", "recover", str(out)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert rec.returncode == 0, rec.stderr
    rows = ipc.open_file(str(out)).read_all().to_pylist()
    errors = {(r["name"], r["phase"]): int(r["count"]) for r in rows if r["section"] == "error"}
    assert errors == {("abandoned", "measured"): 250}, errors  # the stalled create's items: on the wire at the kill
    extra = json.loads(next(r["text"] for r in rows if r["section"] == "meta" and r["name"] == "extra"))
    acc = extra.get("accounting")
    assert acc is not None and (acc["sent"], acc["in_flight_at_end"], acc["holds"]) == (250, 250, True), extra


def test_a_stop_while_a_create_answer_is_on_its_way_cancels_its_requests_on_the_platform(
        serve_emulator: Callable[..., str], tmp_path: Path) -> None:
    # every answer trickles in over 0.6 s; one slow replica keeps the created requests pending
    base = serve_emulator("--fault", "slow:1.0:ms=600", "--replicas", "1", "--latency-ms", "20")
    out = tmp_path / "g.arrow"
    proc = start_batch_run(base, out, "--set", 'target.drain_timeout="1s"')  # a short drain, then the cancels
    try:  # the platform has created the first chunk; its answer (the ids) is still trickling in
        wait_for(lambda: metric(base, CREATES_METRIC) >= 1, "the first create call to be answered by the app")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    listing = f"{base}/v2.1/projects/demo/deployments/ccfraud/versions/v1/requests"
    for status in ("pending", "processing"):  # the create's ids arrived in the grace: its requests were cancelled
        r = httpx.get(listing, params={"status": status, "limit": 1000}, headers={"Authorization": f"Token {TOKEN}"},
                      timeout=10)
        assert r.status_code == 200 and r.json() == [], f"{status} requests left behind"
    summary = json.loads(stdout)
    assert summary["accounting"]["holds"] is True, summary["accounting"]
    assert counters(out).get("create_abandoned", 0) == 0
