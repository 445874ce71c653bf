"""`bench run` features that cross modules: token refresh mid-run, preflight, --processes, HTTP/2, --raw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.ipc as ipc
import pytest

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = """
name = "features"
[target]
kind = "wallaroo"
url = "embedded"
[data]
path = "{data}"
rows_per_request = 10
[load]
concurrency = 4
duration = "{duration}"
[emulator]
latency_ms = 2.0
"""


def run(tmp_path: Path, extra: str = "", *args: str, duration: str = "2s",
        env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], Path]:
    scenario = tmp_path / "s.toml"
    text = SCENARIO.format(data=ROOT / "data" / "ccfraud_1k.df.json", duration=duration)
    scenario.write_text(text + extra)
    out = tmp_path / "r.arrow"
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(scenario), "--out", str(out), "--json", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    return proc, out


def rows(path: Path, section: str) -> list[dict[str, object]]:
    table = ipc.open_file(str(path)).read_all()
    return [r for r in table.to_pylist() if r["section"] == section]


@pytest.mark.slow  # over 5 s of real processes: in CI's slow step, not the default run
def test_token_refresh_keeps_load_going_without_401(tmp_path: Path) -> None:
    extra = '\n[auth]\nkind = "client_credentials"\nclient_secret_env = "BENCH_FEATURE_SECRET"\n'
    # the acceptance run: 12 s against tokens that live 3 s
    proc, out = run(tmp_path, extra, "--set", "emulator.require_token=true", "--set", "emulator.token_ttl_s=3.0",
                    duration="12s", env={"BENCH_FEATURE_SECRET": "feature-secret-123"})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["requests"] > 100
    assert summary["errors"] == 0, summary["errors_by_kind"]  # no 401 across several token lifetimes
    counters = {r["name"]: r["count"] for r in rows(out, "counter")}
    assert counters.get("token_refresh", 0) >= 3
    assert "feature-secret-123" not in proc.stdout + proc.stderr


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_preflight_waits_for_running(tmp_path: Path) -> None:
    extra = '\n[wallaroo]\napi_url = "embedded"\nwait = "20s"\npoll_interval = "0.2s"\n'
    proc, _ = run(tmp_path, extra, "--set", "emulator.startup_s=1.5", "--quiet")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["errors"] == 0  # no 503 from a deployment still starting


def test_preflight_gives_up_with_exit_3(tmp_path: Path) -> None:
    extra = '\n[wallaroo]\napi_url = "embedded"\nwait = "0.5s"\npoll_interval = "0.1s"\n'
    proc, out = run(tmp_path, extra, "--set", "emulator.startup_s=30")
    assert proc.returncode == 3, proc.stderr
    assert "Starting" in proc.stderr
    assert not out.exists()


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_two_processes_merge_into_one_report(tmp_path: Path) -> None:
    proc, out = run(tmp_path, "", "--processes", "2", "--raw")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    meta = {r["name"]: json.loads(str(r["text"])) for r in rows(out, "meta")}
    assert meta["load"]["processes"] == 2
    assert meta["extra"]["connections_opened"] == 4  # both workers' 2 (concurrency 4 in all), not one part's
    latency = [r for r in rows(out, "histogram") if r["name"] == "latency" and r["phase"] == "measured"]
    assert sum(int(str(r["count"])) for r in latency) == summary["requests"] > 100


def test_raw_log_holds_every_request(tmp_path: Path) -> None:
    proc, out = run(tmp_path, "", "--raw")
    assert proc.returncode == 0, proc.stderr
    total = {r["phase"]: r["requests"] for r in rows(out, "total")}
    raw = rows(out, "raw")
    assert len(raw) == sum(int(str(v)) for v in total.values())
    assert all(int(str(r["done_ns"])) >= int(str(r["sent_ns"])) >= 0 for r in raw)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("engine", ["fast", "httpx"])
def test_engines_against_the_emulator(tmp_path: Path, engine: str) -> None:
    args = ["--engine", engine]
    if engine == "httpx":
        args += ["--http2", "--set", "emulator.http2=true"]
    proc, _ = run(tmp_path, "", *args)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["requests"] > 50
    assert summary["errors"] == 0


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_slo_abort_on_fail_stops_early_and_exits_1(tmp_path: Path) -> None:
    extra = "\n[slo]\nerror_rate = 0.01\nabort_on_fail = true\n"
    proc, out = run(tmp_path, extra, "--set", "emulator.error_rate=0.3", duration="60s")
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["duration_s"] < 20  # stopped long before the planned 60 s
    assert summary["slo"]["passed"] is False
    assert "error_rate" in proc.stderr  # the reason for stopping was said
    assert out.exists()


def test_spinning_pacer_is_not_counted_as_load_generation(tmp_path: Path) -> None:
    """`--pacing spin` polls the loop without sleeping, a whole core: the report says how long it spun and how much
    of that was idle, and the run's CPU figure (the generator-bound verdict's input) leaves the idle spinning out."""
    proc, out = run(tmp_path, "", "--rate", "400", "--pacing", "spin", "--quiet", duration="1s")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["errors"] == 0
    # the idle spinning never makes the verdict blame the generator's CPU (on a loaded machine sends may still
    # leave late, a schedule-lag reason of its own: not this test's subject)
    reasons = summary["generator_bound_reasons"]
    assert not any("generator CPU" in r or "lower rate per process" in r for r in reasons), reasons
    meta = {r["name"]: json.loads(str(r["text"])) for r in rows(out, "meta")}
    extra = meta["extra"]
    assert extra["pacer_spin_s"] > 0.75  # the whole 1 s schedule
    assert extra["pacer_spin_idle_s"] > extra["pacer_spin_s"] / 2  # 400 req/s leaves the loop mostly idle
    assert meta["cpu_fraction"] < 0.6, meta["cpu_fraction"]  # spinning used ~100 % of a core; most was waiting


def test_pacing_must_be_one_of_the_modes(tmp_path: Path) -> None:
    proc, out = run(tmp_path, "\n[engine]\npacing = \"busy\"\n", "--rate", "100")
    assert proc.returncode == 2
    assert "engine.pacing" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(("args", "most"), [(("--connections", "3"), 3), ((), None)])
def test_report_says_how_many_connections_an_open_loop_opened(tmp_path: Path, args: tuple[str, ...],
                                                              most: int | None) -> None:
    """`extra.connections_opened`: the connects the engine attempted. `--connections N` caps an open loop's
    pool (HTTP/1.1) at N; without it, 2,000 req/s opens a warm pool of 20 before the first send. 3 connections
    to a 2 ms server serve at most 1,500 req/s: sends wait for one (`extra.waited_at_cap`), and the verdict's
    reason names the cap."""
    proc, out = run(tmp_path, "", "--rate", "2000", "--quiet", *args, duration="1s")
    assert proc.returncode == 0, proc.stderr
    extra = {r["name"]: json.loads(str(r["text"])) for r in rows(out, "meta")}["extra"]
    opened = extra["connections_opened"]
    assert 1 <= opened <= most if most is not None else opened >= 20, opened
    reasons = " ".join(json.loads(proc.stdout)["generator_bound_reasons"])
    if most is not None:
        assert extra["waited_at_cap"] > 0 and f"one of the {most} connections" in reasons, (extra, reasons)
    else:
        assert "waited_at_cap" not in extra and "waited" not in reasons
