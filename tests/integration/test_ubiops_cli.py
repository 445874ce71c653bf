"""The UbiOps scenarios through the real `bench run` CLI, against the embedded and a standalone emulator."""

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
TOKEN = "Token emulator-ubiops-token"  # the emulator's default token (EmulatorConfig.ubiops_token)


def section(path: Path, name: str) -> list[dict[str, object]]:
    table = ipc.open_file(str(path)).read_all()
    return [r for r in table.to_pylist() if r["section"] == name]


def bench_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", "run", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_direct_scenario_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "d.arrow"
    proc = bench_run("scenarios/ubiops-direct.toml", "--set", 'load.duration="2s"', "--set", 'load.warmup="0s"',
                     "--json", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["requests"] >= 6 and summary["errors"] == 0  # 4/s for 2 s, under the 300/min limit


def test_batch_scenario_reports_the_three_histograms_and_accounts_for_every_request(tmp_path: Path) -> None:
    out = tmp_path / "b.arrow"
    proc = bench_run("scenarios/ubiops-batch.toml", "--set", 'load.duration="2s"', "--set", 'load.warmup="0s"',
                     "--json", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    hists = {(r["name"], r["phase"]): r["count"] for r in section(out, "histogram") if r["outcome"] == "all"}
    for name in ("batch_e2e", "queue", "processing"):
        assert int(str(hists.get((name, "measured"), 0))) > 0, name
    c = {r["name"]: int(str(r["count"])) for r in section(out, "counter")}
    assert c["batch_created"] >= 500
    assert c["batch_created"] == (c.get("batch_completed", 0) + c.get("batch_failed", 0)
                                  + c.get("batch_cancelled", 0) + c.get("batch_abandoned", 0))
    assert c.get("batch_invariant_broken", 0) == 0


def test_sigint_during_a_batch_run_cancels_what_is_pending(serve_emulator: Callable[..., str],
                                                           tmp_path: Path) -> None:
    out = tmp_path / "s.arrow"
    # one slow replica, so a batch is still pending when the run is interrupted
    base = f"{serve_emulator('--replicas', '1', '--latency-ms', '20')}/v2.1"
    env = {**os.environ, "UBIOPS_TOKEN": TOKEN.removeprefix("Token ")}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "scenarios/ubiops-batch.toml",
                             "--set", f'target.url="{base}"', "--set", 'load.duration="60s"', "--set",
                             'load.warmup="0s"', "--set", 'target.drain_timeout="1s"', "--out", str(out), "--json"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    listing = f"{base}/projects/demo/deployments/ccfraud/versions/v1/requests"
    try:
        deadline = time.monotonic() + 30
        pending: list[object] = []
        while time.monotonic() < deadline and not pending:  # wait until requests are queued on the server
            r = httpx.get(listing, params={"status": "pending", "limit": 10}, headers={"Authorization": TOKEN})
            pending = r.json() if r.status_code == 200 else []
        assert pending, "the run never created a batch"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    for status in ("pending", "processing"):
        r = httpx.get(listing, params={"status": status, "limit": 1000}, headers={"Authorization": TOKEN})
        assert r.status_code == 200
        assert r.json() == [], f"{status} requests left behind"
    assert json.loads(stdout)["partial"] is True


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_batch_timings_are_phased_like_their_requests_by_intended_time(tmp_path: Path) -> None:
    out = tmp_path / "p.arrow"
    proc = bench_run("scenarios/ubiops-batch.toml", "--set", 'load.duration="2s"', "--set", 'load.warmup="1s"',
                     "--json", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    hists = section(out, "histogram")
    for phase in ("warmup", "measured"):
        latency = sum(int(str(r["count"])) for r in hists if r["name"] == "latency" and r["phase"] == phase)
        assert latency > 0, phase
        for name in ("batch_e2e", "queue", "processing"):  # one value per request, in its request's phase
            count = sum(int(str(r["count"])) for r in hists if r["name"] == name and r["phase"] == phase)
            assert count == latency, (name, phase, count, latency)
        # created -> collected is the ok request's service time: the same values, so the same max
        e2e = next(r for r in hists if r["name"] == "batch_e2e" and r["phase"] == phase)
        service = next(r for r in hists if r["name"] == "service" and r["phase"] == phase and r["outcome"] == "ok")
        assert e2e["max_us"] == service["max_us"], phase
