"""Wallaroo as users have it, through the real `bench run` CLI against the embedded emulator: two tokens (inference
and the MLOps user's), the public Keycloak client, preflight against today's deployment status, older installs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.ipc as ipc
import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "ccfraud_1k.df.json"
PASSWORD = "pw-for-ana-42"
SECRET = "api-secret-77"

BASE = f"""
name = "wallaroo-platform"
[target]
kind = "wallaroo"
url = "embedded"
[data]
path = "{DATA}"
rows_per_request = 10
[load]
concurrency = 4
duration = "{{duration}}"
[wallaroo]
api_url = "embedded"
poll_interval = "100ms"
wait = "5m"
"""


def run(tmp_path: Path, extra: str, duration: str = "2s") -> tuple[subprocess.CompletedProcess[str], Path, float]:
    scenario = tmp_path / "s.toml"
    scenario.write_text(BASE.format(duration=duration) + extra)
    out = tmp_path / "r.arrow"
    env = {**os.environ, "BENCH_USER_PASSWORD": PASSWORD, "BENCH_API_SECRET": SECRET}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(scenario), "--out", str(out), "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    return proc, out, time.monotonic() - t0


def counters(path: Path) -> dict[str, int]:
    table = ipc.open_file(str(path)).read_all()
    return {r["name"]: int(r["count"]) for r in table.to_pylist() if r["section"] == "counter"}


USER_AUTH = """
[auth]
kind = "password"
username = "ana"
password_env = "BENCH_USER_PASSWORD"
refresh_at = 0.5
"""
STRICT = """
[emulator]
require_token = true
mlops_user_token = true
token_ttl_s = 1.5
latency_ms = 2.0
"""


@pytest.mark.slow  # over 5 s of real processes: in CI's slow step, not the default run
def test_two_tokens_through_the_public_client_refresh_on_their_own_with_no_errors(tmp_path: Path) -> None:
    # [auth] names no client secret: the SDK's public sdk-client; the MLOps user's token is its own source
    proc, out, _ = run(tmp_path, USER_AUTH + STRICT, duration="5s")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["requests"] > 50 and summary["errors"] == 0, summary["errors_by_kind"]
    c = counters(out)
    assert c.get("token_refresh", 0) >= 3, c
    assert c.get("mlops_token_refresh", 0) >= 3, c
    assert c.get("token_refresh_failed", 0) == 0 and c.get("mlops_token_refresh_failed", 0) == 0
    assert PASSWORD not in proc.stdout + proc.stderr


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_service_account_inference_token_with_a_separate_mlops_user_token(tmp_path: Path) -> None:
    auth = """
[auth]
kind = "client_credentials"
client_secret_env = "BENCH_API_SECRET"
[wallaroo.auth]
kind = "password"
username = "ana"
password_env = "BENCH_USER_PASSWORD"
refresh_at = 0.5
"""
    proc, out, _ = run(tmp_path, auth + STRICT, duration="4s")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["errors"] == 0
    c = counters(out)
    assert c.get("token_refresh", 0) >= 3 and c.get("mlops_token_refresh", 0) >= 3, c
    assert SECRET not in proc.stdout + proc.stderr


def test_a_service_account_token_alone_is_refused_by_the_mlops_api_fast(tmp_path: Path) -> None:
    auth = '\n[auth]\nkind = "client_credentials"\nclient_secret_env = "BENCH_API_SECRET"\n'
    proc, _, elapsed = run(tmp_path, auth + STRICT)
    assert proc.returncode == 3, proc.stderr
    assert "403" in proc.stderr and "user token" in proc.stderr
    assert elapsed < 30


def test_preflight_against_a_deployment_in_error_exits_3_within_5_s_with_the_reason(tmp_path: Path) -> None:
    emulator = '\n[emulator]\ndeployment_status = "Error"\nengine_info = true\n'
    scenario = tmp_path / "s.toml"
    scenario.write_text(BASE.format(duration="2s") + emulator)
    # the emulator is up before the clock starts: the 5 s are the preflight's, not the emulator's start
    from bench.emulator.config import EmulatorConfig
    from bench.emulator.embedded import EmbeddedEmulator

    with EmbeddedEmulator(EmulatorConfig(deployment_status="Error", engine_info=True)) as emu:
        real = scenario.read_text().replace('url = "embedded"', f'url = "{emu.wallaroo_url}"', 1)
        real = real.replace('api_url = "embedded"', f'api_url = "{emu.base_url}"').replace(emulator, "")
        scenario.write_text(real)
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "bench", "run", str(scenario), "--out",
                               str(tmp_path / "r.arrow"), "--json"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
        elapsed = time.monotonic() - t0
    assert proc.returncode == 3, proc.stderr
    assert elapsed < 5.0, elapsed
    assert "is Error" in proc.stderr and "back-off restarting failed container" in proc.stderr
    assert "CrashLoopBackOff" in proc.stderr  # the engine's status, read from today's `info` fields


def test_a_wrong_deployment_name_answered_400_fails_fast(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(BASE.format(duration="2s").replace('wait = "5m"', 'wait = "5m"\ndeployment = "nope-9"')
                        + '\n[emulator]\nunknown_deployment_status = 400\n')
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(scenario), "--out", str(tmp_path / "r.arrow")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 3, proc.stderr
    assert "HTTP 400" in proc.stderr and "nope-9" in proc.stderr
    assert elapsed < 30  # no 5-minute wait (the emulator's start is inside this figure)


def test_legacy_url_and_one_object_answer_run_clean_with_the_right_rows(tmp_path: Path) -> None:
    proc, out, _ = run(tmp_path, '\n[emulator]\nlegacy_infer = true\nlatency_ms = 2.0\n')
    assert proc.returncode == 0, proc.stderr
    assert "infer/ccfraud-1 is" not in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["requests"] > 20 and summary["errors"] == 0, summary["errors_by_kind"]
    totals = [r for r in ipc.open_file(str(out)).read_all().to_pylist()
              if r["section"] == "total" and r["phase"] == "measured"]
    assert len(totals) == 1 and totals[0]["ok"] == totals[0]["requests"]
    # the data set has 1001 rows: 100 requests of 10 and one of 1, sent in order; rows come from each answer's dim
    sizes = [10] * 100 + [1]
    n = int(totals[0]["requests"])
    assert int(totals[0]["rows"]) == sum(sizes[i % len(sizes)] for i in range(n)), totals
