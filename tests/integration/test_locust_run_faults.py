"""A distributed run's faults and controls, with a real Locust master (`bench run --locust-master`) and real
`bench locust-worker` processes on loopback: the preflight on the master, a frozen worker, Locust's web UI,
Ctrl-C before the load, workers beyond --expect-workers and workers without a master."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.locust_cluster import Cluster, alive, children, free_port, scenario_copy, served, wait_for
from tests.integration.test_locust_distributed import finish, infer_url, live_requests, scenario


def master(cluster: Cluster, sc: Path, port: int, workers: int, *extra: str) -> subprocess.Popen[bytes]:
    """A master that talks (no -q): its notes and progress lines are what some tests check."""
    return cluster.start("master", "-m", "bench", "run", str(sc), "--locust-master", "--expect-workers",
                         str(workers), "--master-bind-port", str(port), "--worker-wait", "30", "--json",
                         "-o", str(cluster.tmp / "run.arrow"), *extra, stdout=subprocess.PIPE)


@pytest.mark.slow  # a real run of a few seconds: in CI's slow step
def test_the_master_runs_the_preflight_before_any_worker(cluster: Cluster) -> None:
    """A KServe model name the (embedded) server does not have: refused with the single-host run's one line and
    exit 2, without waiting for a worker (before, every worker sent its whole share as 404s)."""
    sc = scenario_copy("kserve.toml", cluster.tmp / "ks.toml", ('model_name = "ccfraud"', 'model_name = "nosuch"'))

    def errors(text: str) -> list[str]:  # each run starts its own emulator: its port aside
        return [re.sub(r"127\.0\.0\.1:\d+", "HOST", ln) for ln in text.splitlines() if ln.startswith("bench: error")]

    single = subprocess.run([sys.executable, "-m", "bench", "run", str(sc), "-q", "-o", str(cluster.tmp / "s.arrow")],
                            capture_output=True, text=True, cwd=cluster.tmp, env=cluster.env, timeout=60)
    assert single.returncode == 2 and "model 'nosuch' version '1' not found" in single.stderr, single.stderr
    proc = cluster.start("master", "-m", "bench", "run", str(sc), "--locust-master", "--master-bind-port",
                         str(free_port()), "-q", "-o", str(cluster.tmp / "run.arrow"))
    assert proc.wait(60) == 2
    assert errors(cluster.log(proc)) == errors(single.stderr) and len(errors(single.stderr)) == 1
    assert "Traceback" not in cluster.log(proc)


@pytest.mark.slow  # ~15 s of real processes
def test_a_frozen_worker_stops_loading_and_the_master_says_until_when(cluster: Cluster,
                                                                     serve_emulator: Callable[..., str]) -> None:
    """SIGSTOP of a worker (a paused container): the master drops it after ~3 s, and its engine process, which
    the freeze does not stop, stops its load too instead of loading the target unseen to the end."""
    base = serve_emulator()
    port = free_port()
    sc = scenario(cluster.tmp, infer_url(base), 'concurrency = 2\nduration = "12s"', raw=False)
    proc = master(cluster, sc, port, 2)
    cluster.worker(port, "w0")
    frozen = cluster.worker(port, "w1")
    wait_for(lambda: served(base) > 200, 30, "load to flow")
    engine = children(frozen.pid, b"bench.locust.child")
    assert len(engine) == 1
    os.kill(frozen.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        wait_for(lambda: not alive(engine[0]), 15, "the frozen worker's engine to stop its load")
        assert time.monotonic() - frozen_at < 8  # the run still had seconds to go
        wait_for(lambda: "may have kept sending until about" in cluster.log(proc), 15, "the master's note")
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    code, summary = finish(proc)
    log = cluster.log(proc)
    assert code == 3, log
    assert "progress: measuring" in log  # the run's progress on the master's terminal
    assert summary["partial_reason"].startswith("a worker was lost: ")
    assert frozen.wait(30) == 3  # it lost its master mid-run: not a completed run
    assert "Traceback" not in cluster.log(frozen)


def _ui(web: int, path: str, form: dict[str, str] | None = None) -> Any:
    data = "&".join(f"{k}={v}" for k, v in form.items()).encode() if form is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{web}{path}", data=data, method="POST" if form is not None
                                 else "GET")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.slow  # ~8 s of real processes
def test_the_web_ui_shows_the_run_and_its_stop_stops_it(cluster: Cluster,
                                                       serve_emulator: Callable[..., str]) -> None:
    base = serve_emulator("--replicas", "4", "--latency-ms", "5")
    port, web = free_port(), free_port()
    sc = scenario(cluster.tmp, infer_url(base), 'concurrency = 4\nduration = "60s"', raw=False)
    proc = master(cluster, sc, port, 2, "--locust-web-port", str(web), "-q")
    cluster.worker(port, "w0")
    cluster.worker(port, "w1")
    wait_for(lambda: live_requests(web) > 0, 30, "live numbers in the web UI")
    started = time.monotonic()
    wait_for(lambda: time.monotonic() - started > 3, 10, "three seconds of load")  # a rate needs an interval
    stats = _ui(web, "/stats/requests")
    assert stats["state"] == "running"
    swarm = _ui(web, "/swarm", {"user_count": "5", "spawn_rate": "5"})
    assert swarm["success"] is False and "starts by itself" in swarm["message"]
    assert _ui(web, "/stop", {})["success"] is True
    code, summary = finish(proc)
    log = cluster.log(proc)
    assert code == 130 and summary["partial"] is True, log
    assert "Traceback" not in log
    # the UI's rate counts from the start instant (it counted the wait for workers too: 3-10x too low)
    assert stats["total_rps"] == pytest.approx(summary["rps"], rel=0.25)


@pytest.mark.slow  # a data set generated twice, ~6 s
def test_ctrl_c_while_workers_prepare_is_one_line_and_leaves_nothing(cluster: Cluster,
                                                                     serve_emulator: Callable[..., str]) -> None:
    sc = cluster.tmp / "gen.toml"
    sc.write_text(f"""name = "gen"
[target]
kind = "wallaroo"
url = "{infer_url(serve_emulator())}"
[data]
generate = 2000000
rows_per_request = 10
[load]
concurrency = 1
duration = "1s"
""")
    port = free_port()
    proc = master(cluster, sc, port, 1, "-q")
    worker = cluster.worker(port, "w0")
    manifest = cluster.tmp / ".run.arrow.checkpoint"
    wait_for(manifest.exists, 60, "the run's checkpoint manifest (the worker preparing)")
    proc.send_signal(signal.SIGINT)
    code, _ = finish(proc)
    assert code == 130
    assert cluster.log(proc).splitlines() == ["bench: interrupted"]
    assert not list(cluster.tmp.glob(".run.arrow*")), "a manifest of a run that never started"
    assert worker.wait(30) == 3  # no run completed


@pytest.mark.slow  # ~7 s: the worker's first note comes after 5 s
def test_extra_workers_and_a_worker_without_master_say_so(cluster: Cluster,
                                                          serve_emulator: Callable[..., str]) -> None:
    lonely = cluster.worker(free_port(), "lonely")
    port = free_port()
    workers = [cluster.worker(port, "w0"), cluster.worker(port, "w1")]  # before their master: they wait for it
    sc = scenario(cluster.tmp, infer_url(serve_emulator()), 'concurrency = 1\nduration = "1s"', raw=False)
    proc = master(cluster, sc, port, 1)
    code, _ = finish(proc)
    log = cluster.log(proc)
    assert code == 0, log
    assert log.count("connected beyond --expect-workers 1: it stays idle") == 1, log
    assert sorted(w.wait(30) for w in workers) == [0, 3]  # the idle one served no run
    wait_for(lambda: "no Locust master answered at 127.0.0.1:" in cluster.log(lonely), 15, "the lonely worker's note")
    assert lonely.poll() is None
