"""A real Locust master (`bench run --locust-master`) and real `bench locust-worker` processes on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bench.emulator.config import EmulatorConfig
from bench.report.model import MEASURED, Histogram
from bench.report.reader import iter_raw, read_report
from tests.integration.locust_cluster import DATA, ROOT, Cluster, free_port, served, wait_for


def scenario(tmp: Path, url: str, load: str, *, raw: bool = True) -> Path:
    path = tmp / "dist.toml"
    path.write_text(f"""name = "dist"
[target]
kind = "wallaroo"
url = "{url}"
format = "pandas-records"
[data]
path = "{DATA}"
rows_per_request = 10
[load]
{load}
[report]
raw = {"true" if raw else "false"}
""")
    return path


def infer_url(base: str) -> str:
    d = EmulatorConfig()
    return f"{base}/v1/api/pipelines/infer/{d.deployment}/{d.pipeline}"


def run_master(cluster: Cluster, sc: Path, port: int, workers: int, *extra: str) -> subprocess.Popen[bytes]:
    return cluster.start("master", "-m", "bench", "run", str(sc), "--locust-master", "--expect-workers",
                         str(workers), "--master-bind-port", str(port), "--worker-wait", "30", "--json", "-q",
                         "-o", str(cluster.tmp / "run.arrow"), *extra, stdout=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes], timeout: float = 60) -> tuple[int, dict[str, object]]:
    out, _ = proc.communicate(timeout=timeout)
    lines = out.decode().strip().splitlines()
    return proc.returncode, json.loads(lines[-1]) if lines else {}


def intended_wall_ns(part: Path) -> np.ndarray:
    """A worker's intended send instants (wall clock, ns) from its raw log."""
    start = read_report(part).run.start_unix_ns
    return np.concatenate([b.column("intended_ns").to_numpy() for b in iter_raw(part)]) + start


def live_requests(web_port: int) -> int:
    """Requests so far as Locust's web UI shows them (fed by the workers' deltas); 0 while it is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/stats/requests", timeout=2) as r:
            stats = json.loads(r.read())["stats"]
    except OSError:
        return 0
    return sum(int(e["num_requests"]) for e in stats if e["name"] == "Aggregated")


def total_requests(path: Path) -> int:
    return sum(t.requests for t in read_report(path).run.totals.values())


def raw_latency(parts: list[Path]) -> Histogram:
    """The measured ok latency histogram recomputed from the workers' own per-request logs."""
    h = Histogram()
    for part in parts:
        for b in iter_raw(part):
            intended = b.column("intended_ns").to_numpy()
            done = b.column("done_ns").to_numpy()
            ok = np.asarray(b.column("name").to_pylist()) == "ok"
            m = ok & (np.asarray(b.column("phase").to_pylist()) == MEASURED)
            h.record_us(np.maximum((done[m] - intended[m] + 500) // 1000, 0))
    return h


@pytest.mark.parametrize("load", ['concurrency = 6\nwarmup = "1s"\nduration = "2s"',
                                  'rate = 400\nwarmup = "1s"\nduration = "2s"'], ids=["closed", "open"])
def test_master_and_two_workers_merge_exactly(cluster: Cluster, serve_emulator: Callable[..., str],
                                              load: str) -> None:
    base = serve_emulator("--replicas", "8", "--latency-ms", "2")
    port = free_port()
    sc = scenario(cluster.tmp, infer_url(base), load)
    master = run_master(cluster, sc, port, 2)
    cluster.worker(port, "w0")
    cluster.worker(port, "w1")
    code, summary = finish(master)
    assert code == 0, cluster.log(master)
    report = read_report(cluster.tmp / "run.arrow")
    parts = sorted((cluster.tmp / "run.workers").glob("worker-*.arrow"))
    assert len(parts) == 2
    merged = sum(t.requests for t in report.run.totals.values())
    assert merged == sum(total_requests(p) for p in parts) == served(base) > 0  # the emulator's own count
    workers = report.meta.extra["locust"]["workers"]
    assert [w["state"] for w in workers] == ["final", "final"] and not report.run.partial
    assert not list(cluster.tmp.glob(".run.arrow*")), "the workers' checkpoints outlived the report"
    assert sum(w["requests"] for w in workers) == merged
    assert all(w["cpu_fraction"] is not None and w["generator_bound"] is not None for w in workers)
    mine = report.run.histogram("latency", MEASURED, "ok")
    union = raw_latency(parts)
    assert np.array_equal(mine.counts, union.counts)
    assert mine.percentiles_ms((50, 90, 99, 99.9)) == union.percentiles_ms((50, 90, 99, 99.9))
    if "rate" in load:
        sends = np.sort(np.concatenate([intended_wall_ns(p) for p in parts]))
        gaps_ms = np.diff(sends) / 1e6
        # one send every 1/400 s, merged: the workers' schedules interleave instead of sending in pairs (gaps of
        # ~0 and 5 ms). Each host maps the wall-clock instant to its monotonic clock; a process preempted between
        # the two clock reads (a loaded CI machine) shifts its schedule by that long, hence the tolerance.
        assert np.median(gaps_ms) == pytest.approx(2.5, abs=1.25)
        assert np.percentile(gaps_ms, 5) > 0.5
        measured = report.run.total(MEASURED)
        rate = (measured.requests + measured.dropped) / 2.0
        assert abs(rate - 400) <= 4, rate  # within 1 %: the two workers' schedules add up to the target
        assert summary["requests"] == measured.requests


def test_a_worker_killed_mid_run_is_named_and_the_run_partial(cluster: Cluster,
                                                             serve_emulator: Callable[..., str]) -> None:
    base = serve_emulator("--replicas", "8", "--latency-ms", "2")
    port = free_port()
    sc = scenario(cluster.tmp, infer_url(base), 'concurrency = 4\nduration = "6s"', raw=False)
    web = free_port()
    master = run_master(cluster, sc, port, 2, "--locust-web-port", str(web))
    survivor = cluster.worker(port, "w0")
    victim = cluster.worker(port, "w1")
    # the first deltas reached the master (the two workers send theirs together, 0.5 s after the common start)
    wait_for(lambda: live_requests(web) > 0, 30, "deltas reaching the master")
    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its engine process, no goodbye
    code, summary = finish(master)
    assert code == 3, cluster.log(master)
    assert survivor.wait(15) == 0  # it delivered its report: its run completed
    assert "lost worker" in cluster.log(master)
    report = read_report(cluster.tmp / "run.arrow")
    assert report.run.partial and summary["partial"] is True
    info = report.meta.extra["locust"]
    states = {w["index"]: w["state"] for w in info["workers"]}
    assert sorted(states.values()) == ["final", "lost"]
    lost = next(w for w in info["workers"] if w["state"] == "lost")
    assert info["lost"] == [lost["id"]]
    assert lost["id"] in cluster.log(master)
    assert lost["requests"] > 0  # its data streamed before it died is kept
    assert MEASURED in report.run.done_span  # its deltas carried its answers' span: throughput is not answers / s
    # its share comes from its checkpoint lines, which count its sends: every request is accounted for
    acc = summary["accounting"]
    assert isinstance(acc, dict) and acc["holds"] and acc["sent"] >= summary["requests"] > 0
    assert summary["partial_reason"] == f"a worker was lost: {lost['id']}"
    assert "may have sent more until about" in cluster.log(master)


def test_no_worker_arriving_exits_3_with_one_line(cluster: Cluster, serve_emulator: Callable[..., str]) -> None:
    sc = scenario(cluster.tmp, infer_url(serve_emulator()), 'concurrency = 2\nduration = "1s"')  # one each
    master = cluster.start("master", "-m", "bench", "run", str(sc), "--locust-master", "--expect-workers", "2",
                           "--master-bind-port", str(free_port()), "--worker-wait", "1", "-q")
    assert master.wait(30) == 3
    lines = [ln for ln in cluster.log(master).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("bench: error: 0 of 2 Locust worker(s) connected to 127.0.0.1:")
    assert lines[0].endswith(" within 1 s")


def test_a_worker_of_another_bench_version_is_refused(cluster: Cluster, serve_emulator: Callable[..., str]) -> None:
    other = cluster.tmp / "other"
    shutil.copytree(ROOT / "bench", other / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    init = other / "bench" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "9.9.9+'))
    port = free_port()
    sc = scenario(cluster.tmp, infer_url(serve_emulator()), 'concurrency = 1\nduration = "1s"')
    master = run_master(cluster, sc, port, 1)
    cluster.worker(port, "w0", env={"PYTHONPATH": str(other)})
    code, _ = finish(master)
    log = cluster.log(master)
    assert code == 2, log
    assert "bench version mismatch" in log and "9.9.9+" in log and "(index 0)" in log
    assert "Traceback" not in log


def _loading(cluster: Cluster, serve_emulator: Callable[..., str],
             duration_s: int) -> tuple[str, subprocess.Popen[bytes], list[subprocess.Popen[bytes]]]:
    """A master and two workers loading the emulator, once Locust's web UI shows live numbers: (emulator URL,
    master, workers)."""
    base = serve_emulator()
    port = free_port()
    sc = scenario(cluster.tmp, infer_url(base), f'concurrency = 4\nduration = "{duration_s}s"', raw=False)
    web = free_port()
    master = run_master(cluster, sc, port, 2, "--locust-web-port", str(web))
    workers = [cluster.worker(port, "w0"), cluster.worker(port, "w1")]
    wait_for(lambda: live_requests(web) > 200, 30, "live numbers in Locust's web UI")
    return base, master, workers


def test_sigterm_of_the_master_stops_the_workers_and_writes_a_partial_report(
        cluster: Cluster, serve_emulator: Callable[..., str]) -> None:
    base, master, workers = _loading(cluster, serve_emulator, 60)
    master.send_signal(signal.SIGTERM)
    code, summary = finish(master, timeout=30)
    assert code == 130, cluster.log(master)
    for w in workers:  # the master's quit ends every worker (and its engine process)
        assert w.wait(15) == 0
    at_end = served(base)
    report = read_report(cluster.tmp / "run.arrow")
    assert report.run.partial and summary["partial"] is True
    assert [w["state"] for w in report.meta.extra["locust"]["workers"]] == ["final", "final"]
    assert sum(t.requests for t in report.run.totals.values()) == at_end
    assert not list(cluster.tmp.glob(".run.arrow*")), "the workers' checkpoints outlived the report"


def test_a_master_killed_outright_leaves_no_worker_loading_the_target(
        cluster: Cluster, serve_emulator: Callable[..., str]) -> None:
    """kill -9 of the master: its workers hear no heartbeat and stop within seconds (Locust's own limit is 60 s
    of uncontrolled load), taking their engine processes with them."""
    base, master, workers = _loading(cluster, serve_emulator, 120)
    os.killpg(master.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: all(w.poll() is not None for w in workers), 20, "the workers to quit after the master died")
    assert time.monotonic() - killed_at < 15
    settled = served(base)
    time.sleep(0.5)  # measuring that nothing more arrives needs an interval; not used to synchronise
    assert served(base) == settled, "no engine process outlived its worker"


def test_a_worker_that_cannot_read_the_data_is_named_with_the_reason(cluster: Cluster,
                                                                    serve_emulator: Callable[..., str]) -> None:
    data = cluster.tmp / "rows.df.json"
    shutil.copy(DATA, data)
    sc = scenario(cluster.tmp, infer_url(serve_emulator()), 'concurrency = 1\nduration = "1s"')
    sc.write_text(sc.read_text().replace(str(DATA), data.name))  # relative to the scenario's directory
    port = free_port()
    master = cluster.start("master", "-m", "bench", "run", str(sc), "--locust-master", "--expect-workers", "1",
                           "--master-bind-port", str(port), "--worker-wait", "30")
    wait_for(lambda: "waiting for 1 worker" in cluster.log(master), 30, "the master to have read the scenario")
    data.unlink()  # the master read it; the worker (think: another host without the file) cannot
    cluster.worker(port, "w0")
    assert master.wait(60) == 2
    errors = [ln for ln in cluster.log(master).splitlines() if ln.startswith("bench: error:")]
    assert len(errors) == 1, cluster.log(master)
    assert "(index 0) on " in errors[0] and "data.path" in errors[0] and "rows.df.json" in errors[0]
    assert "Traceback" not in cluster.log(master)


def test_a_worker_stopped_on_its_side_sends_its_partial_data(cluster: Cluster,
                                                            serve_emulator: Callable[..., str]) -> None:
    base = serve_emulator()
    port = free_port()
    sc = scenario(cluster.tmp, infer_url(base), 'concurrency = 4\nduration = "3s"', raw=False)
    master = run_master(cluster, sc, port, 2)
    cluster.worker(port, "w0")
    stopped = cluster.worker(port, "w1")
    wait_for(lambda: served(base) > 500, 30, "load to flow")
    stopped.send_signal(signal.SIGTERM)  # the worker only: it stops its engine and reports
    assert stopped.wait(30) == 130  # a supervisor tells an interrupted worker from one that served a whole run
    code, _ = finish(master)
    assert code == 3, cluster.log(master)
    report = read_report(cluster.tmp / "run.arrow")
    info = report.meta.extra["locust"]
    assert sorted(w["state"] for w in info["workers"]) == ["final", "stopped"] and report.run.partial
    gone = next(w for w in info["workers"] if w["state"] == "stopped")
    assert info["lost"] == [gone["id"]] and gone["requests"] > 0
    assert sum(t.requests for t in report.run.totals.values()) == served(base)  # nothing of the stopped one lost


def test_ubiops_on_the_embedded_emulator_runs_distributed(cluster: Cluster) -> None:
    """The master's embedded emulator serves the workers, with its own UbiOps token (not from the environment)."""
    port = free_port()
    master = cluster.start("master", "-m", "bench", "run", str(ROOT / "scenarios" / "ubiops-direct.toml"),
                           "--locust-master", "--expect-workers", "2", "--master-bind-port", str(port),
                           "--worker-wait", "30", "--duration", "1s", "--warmup", "0s", "--json", "-q",
                           "-o", str(cluster.tmp / "run.arrow"), stdout=subprocess.PIPE,
                           env={"UBIOPS_TOKEN": ""})
    cluster.worker(port, "w0")
    cluster.worker(port, "w1")
    code, summary = finish(master)
    assert code == 0, cluster.log(master)
    assert summary["ok"] == summary["requests"] > 0 and summary["errors"] == 0


def test_keycloak_tokens_of_the_embedded_emulator_reach_every_worker(cluster: Cluster) -> None:
    sc = scenario(cluster.tmp, "embedded", 'concurrency = 2\nduration = "1s"', raw=False)
    sc.write_text(sc.read_text() + """
[auth]
kind = "password"
client_secret_env = "BENCH_T_SECRET"
username = "admin"
password_env = "BENCH_T_PASSWORD"
[emulator]
require_token = true
""")
    secrets = {"BENCH_T_SECRET": "s3cret-of-the-test", "BENCH_T_PASSWORD": "pw-of-the-test"}
    port = free_port()
    master = cluster.start("master", "-m", "bench", "run", str(sc), "--locust-master", "--expect-workers", "2",
                           "--master-bind-port", str(port), "--worker-wait", "30", "--json", "-q",
                           "-o", str(cluster.tmp / "run.arrow"), stdout=subprocess.PIPE, env=secrets)
    for i in range(2):  # each worker reads the secrets from its own environment
        cluster.worker(port, f"w{i}", env=secrets)
    code, summary = finish(master)
    assert code == 0, cluster.log(master)
    assert summary["ok"] == summary["requests"] > 0 and summary["errors"] == 0
    text = (cluster.tmp / "run.arrow").read_bytes().decode(errors="replace") + cluster.log(master)
    assert all(v not in text for v in secrets.values())
