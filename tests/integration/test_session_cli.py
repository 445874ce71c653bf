"""The one run path through the real CLI: every shipped scenario in 1 and 2 processes gives the same accounting,
the merged raw log holds every request, and the embedded emulator serves every worker (preflight included)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.locust_cluster import ROOT, wait_for

SHORT = ["--set", 'load.duration="1s"', "--set", 'load.warmup="0.5s"']
# shipped scenarios that run without a cloud account (*.example.toml need real endpoints; a scenario whose
# target is a real local server, e.g. kserve-mlserver.toml, is tested where that server is started)
SHIPPED = sorted(p.name for p in (ROOT / "scenarios").glob("*.toml") if not p.name.endswith(".example.toml")
                 and tomllib.loads(p.read_text()).get("target", {}).get("url", "embedded") == "embedded")
EXTRA = {"capacity.toml": ["--rate", "60"]}  # its [load] is set by each capacity step


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def raw_rows(path: Path) -> int:
    from bench.report.reader import iter_raw

    return sum(b.num_rows for b in iter_raw(path))


def accounting(summary: dict[str, object]) -> dict[str, object]:
    """The shape of a run's accounting: which figures exist, which error kinds occurred."""
    return {"keys": sorted(summary), "errors_by_kind": sorted(summary["errors_by_kind"]),  # type: ignore[call-overload]
            "partial": summary["partial"]}


def test_shipped_scenarios_exist() -> None:
    assert "quickstart.toml" in SHIPPED and len(SHIPPED) >= 4


@pytest.mark.parametrize("scenario", SHIPPED)
def test_one_and_two_processes_account_alike(scenario: str, tmp_path: Path) -> None:
    shapes = []
    for processes in ("1", "2"):
        out = tmp_path / f"p{processes}.arrow"
        proc = bench("run", f"scenarios/{scenario}", *EXTRA.get(scenario, []), *SHORT, "--processes", processes,
                     "--raw", "--json", "--quiet", "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        s = json.loads(proc.stdout)
        assert s["requests"] > 0 and s["ok"] > 0
        assert s["requests"] == s["ok"] + s["errors"]
        # the raw log (merged from the workers for 2) holds every request sent, warm-up included
        assert raw_rows(out) == s["requests"] + s["warmup_requests"], (processes, s)
        shapes.append(accounting(s))
    assert shapes[0] == shapes[1]


def test_two_processes_with_embedded_preflight(tmp_path: Path) -> None:
    text = (ROOT / "scenarios" / "quickstart.toml").read_text()
    text = text.replace('"../data/', f'"{ROOT}/data/')
    text += '\n[wallaroo]\napi_url = "embedded"\nwait = "20s"\npoll_interval = "0.2s"\n'
    scenario = tmp_path / "pre.toml"
    scenario.write_text(text)
    out = tmp_path / "pre.arrow"
    proc = bench("run", str(scenario), *SHORT, "--processes", "2", "--json", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("embedded emulator at") == 1  # one emulator for both workers
    assert proc.stderr.count("is Running") == 1, proc.stderr  # the preflight ran once, in the parent
    s = json.loads(proc.stdout)
    assert s["ok"] > 0 and s["errors"] == 0
    from bench.report.reader import read_report

    report = read_report(out)
    assert report.meta.load["processes"] == 2
    assert len(report.meta.extra["merged_from"]) == 2
    assert report.meta.target["url"] == "embedded"
    assert report.meta.extra["abandoned"] == 0 and "worker" not in report.meta.extra  # the whole run's facts


def test_workers_die_with_a_killed_parent(serve_emulator: Callable[..., str], tmp_path: Path) -> None:
    import psutil

    base = serve_emulator()
    url = f"{base}/v1/api/pipelines/infer/ccfraud-1/ccfraud"
    parent = subprocess.Popen([sys.executable, "-m", "bench", "run", "--url", url, "--body",
                               str(ROOT / "data" / "ccfraud_1k.df.json"), "-c", "2", "-d", "60s", "--processes", "2",
                               "--quiet", "--out", str(tmp_path / "k.arrow")], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        me = psutil.Process(parent.pid)

        def workers() -> list[psutil.Process]:
            return [c for c in me.children() if "bench.workers" in " ".join(c.cmdline())]

        wait_for(lambda: len(workers()) == 2, 60, "two workers")
        pids = workers()
        parent.kill()  # SIGKILL: no chance to forward anything
        parent.wait(10)
        wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in pids), 30,
                  "the workers to exit after their parent died")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
