"""Stops and deaths that used to lose measurements or mislead, through the real CLI with real signals on loopback:

* ``--processes``: a worker killed outright (kill -9, the OOM killer) gives a merged partial report of the
  survivors' parts and its checkpoint, exit 3 — never no report and every checkpoint deleted;
* UbiOps batch: the first Ctrl-C drains (what the platform completes within drain_timeout is collected), the
  second skips the drain (the rest abandoned and cancelled);
* a signal after the report was written names it; SIGTERM exits 130 at any moment (start-up, `bench capacity`'s
  ending), and SIGHUP stops a run like SIGTERM (partial report, 130);
* capacity.json written mid-sweep claims no exit code;
* Locust: a lost worker's part makes the merged report neither "recovered" nor "interrupted", and its
  generator-bound verdict "not judged"; its orphaned engine process exits without a traceback;
* ``-q`` still says that an earlier killed run was recovered into NAME.recovered.arrow.

Every wait is on a condition with a deadline; every process started here is killed in ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.locust_cluster import ROOT, Cluster, alive, children, free_port, wait_for
from tests.integration.test_durability import (
    _assert_accounting,
    _checkpoint_lines,
    _killed_run,
    _measured_ok,
    _read_meta,
    bench,
    spawned,
)
from tests.integration.test_locust_distributed import infer_url, scenario

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform != "linux", reason="process-death signals are Linux-only")]

UBIOPS_TOKEN = "emulator-ubiops-token"  # the emulator's default UbiOps token


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    yield from spawned()


# -- #1 --processes: one worker killed outright ------------------------------------------------------------------

def test_a_worker_killed_outright_leaves_a_merged_partial_report(spawn: Callable[..., subprocess.Popen[str]],
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "p.arrow"
    proc = spawn("run", "--url", "embedded", "-c", "4", "-d", "6s", "--warmup", "0s", "-q", "--processes", "2",
                 "--out", str(out), cwd=tmp_path, tmp=tmp_path)
    ckpts = [out.with_name(f".{out.name}.w{i}.checkpoint") for i in range(2)]
    wait_for(lambda: all(_measured_ok(p) > 0 for p in ckpts) or proc.poll() is not None, 90,
             "both workers' checkpoints to hold answers")
    assert proc.poll() is None, proc.communicate()
    [victim] = [pid for pid in children(proc.pid, b"bench.workers") if
                b"part-1.arrow" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    killed_ok = _measured_ok(ckpts[1])
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 3, err
    assert "a worker process was killed: worker 1 (SIGKILL)" in err, err
    meta = _read_meta(out)
    extra: dict[str, object] = meta["extra"]  # type: ignore[assignment]
    assert meta["partial"] is True
    assert str(extra["partial_reason"]).startswith("a worker process was killed: worker 1 (SIGKILL)"), extra
    assert extra["from_checkpoints"] == [1] and extra["workers_lost"] == [{"worker": 1, "exit_code": -9}]
    assert "recovered" not in extra and extra["interrupted"] is False, extra
    assert meta["generator_bound"] or extra["generator_bound_not_judged"] == ["worker 1"], extra
    acc = _assert_accounting(meta)
    assert acc["ok"] > killed_ok  # the survivor's whole share and the killed worker's checkpoint
    assert not list(tmp_path.glob(".p.arrow*")), "checkpoints left behind a written report"
    shown = bench("report", str(out), cwd=tmp_path, tmp=tmp_path)
    assert "generator-bound: no\n" not in shown.stdout, shown.stdout


# -- #2 UbiOps batch: the first stop drains, the second does not -------------------------------------------------

def _batch_run(spawn: Callable[..., subprocess.Popen[str]], tmp: Path, base: str, out: Path,
               *extra: str) -> subprocess.Popen[str]:
    return spawn("run", str(ROOT / "scenarios" / "ubiops-batch.toml"), "--set", f'target.url="{base}/v2.1"',
                 "--set", 'load.duration="60s"', "--set", 'load.warmup="0s"', "--out", str(out), "--json", *extra,
                 cwd=tmp, tmp=tmp, env={"UBIOPS_TOKEN": UBIOPS_TOKEN})


def _platform(base: str, status: str) -> list[object]:
    r = httpx.get(f"{base}/v2.1/projects/demo/deployments/ccfraud/versions/v1/requests",
                  params={"status": status, "limit": 1000}, headers={"Authorization": f"Token {UBIOPS_TOKEN}"},
                  timeout=10)
    assert r.status_code == 200, r.text
    items: list[object] = r.json()
    return items


def _counters(path: Path) -> dict[str, int]:
    import pyarrow.ipc as ipc

    rows = ipc.open_file(str(path)).read_all().to_pylist()
    return {str(r["name"]): int(r["count"]) for r in rows if r["section"] == "counter"}


def test_a_first_stop_of_a_batch_run_collects_what_the_platform_completes(
        spawn: Callable[..., subprocess.Popen[str]], serve_emulator: Callable[..., str], tmp_path: Path) -> None:
    base = serve_emulator("--replicas", "1", "--latency-ms", "20")  # ~50 requests/s: 100 pending take ~2 s
    out = tmp_path / "b.arrow"
    proc = _batch_run(spawn, tmp_path, base, out, "--set", "target.batch_size=50")
    wait_for(lambda: bool(_platform(base, "pending")) or proc.poll() is not None, 30, "requests queued")
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Ctrl-C again to skip the drain" in stderr
    summary = json.loads(stdout)
    assert summary["partial"] is True and summary["accounting"]["holds"] is True, summary["accounting"]
    c = _counters(out)
    assert c["batch_created"] >= 50
    assert c.get("batch_abandoned", 0) == 0, c  # nothing thrown away: the drain collected every answer
    assert c["batch_completed"] == c["batch_created"], c


def test_a_second_stop_of_a_batch_run_skips_the_drain(spawn: Callable[..., subprocess.Popen[str]],
                                                      serve_emulator: Callable[..., str], tmp_path: Path) -> None:
    base = serve_emulator("--replicas", "1", "--latency-ms", "20")  # 500 pending: a 10-s drain
    out = tmp_path / "b.arrow"
    proc = _batch_run(spawn, tmp_path, base, out)
    ckpt = out.with_name(f".{out.name}.checkpoint")
    wait_for(lambda: len(_platform(base, "pending")) >= 100 or proc.poll() is not None, 30, "requests queued")
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: any(ln.get("stopping") for ln in _checkpoint_lines(ckpt)) or proc.poll() is not None, 30,
             "the load to stop")
    assert proc.poll() is None, proc.communicate()  # still draining
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 6, stderr  # not the 10 s the platform needs, nor drain_timeout's 30 s
    assert proc.returncode == 130, stderr
    assert json.loads(stdout)["accounting"]["holds"] is True
    c = _counters(out)
    assert c["batch_abandoned"] > 0, c  # still pending at the second stop ...
    assert _platform(base, "pending") == []  # ... and cancelled on the platform


# -- #3 a signal after the report is written; SIGTERM is 130 from start-up to exit ---------------------------

def test_a_signal_after_the_report_is_written_names_it(spawn: Callable[..., subprocess.Popen[str]],
                                                       tmp_path: Path) -> None:
    fifo = tmp_path / "summary.fifo"
    os.mkfifo(fifo)  # nobody reads it: appending the step summary blocks once the report is written
    out = tmp_path / "r.arrow"
    proc = spawn("run", "--url", "embedded", "-c", "2", "-d", "1s", "--warmup", "0s", "-q", "--out", str(out),
                 cwd=tmp_path, tmp=tmp_path, env={"GITHUB_STEP_SUMMARY": str(fifo)})
    wait_for(lambda: out.exists() or proc.poll() is not None, 60, "the report to be written")
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == f"bench: interrupted; the report was written: {out}", err
    assert _read_meta(out)["partial"] is False  # the run itself had ended


def test_sigterm_at_the_end_of_a_capacity_sweep_exits_130(spawn: Callable[..., subprocess.Popen[str]],
                                                          tmp_path: Path) -> None:
    fifo = tmp_path / "summary.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "cap"
    proc = spawn("capacity", str(ROOT / "scenarios" / "capacity.toml"), "--out", str(out), "--start", "40",
                 "--max", "40", "--step", "1s", "--warmup", "0s", "--quiet", cwd=tmp_path, tmp=tmp_path,
                 env={"GITHUB_STEP_SUMMARY": str(fifo)})

    def ended() -> bool:
        try:
            return json.loads((out / "capacity.json").read_text())["exit_code"] is not None
        except (FileNotFoundError, ValueError, KeyError):
            return False

    wait_for(lambda: ended() or proc.poll() is not None, 90, "the sweep's final capacity.json")
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)  # the step's event loop is long gone: SIGTERM used to end it by the signal
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err


def test_sigterm_during_start_up_exits_130(spawn: Callable[..., subprocess.Popen[str]], tmp_path: Path) -> None:
    proc = spawn("run", "--url", "embedded", "-c", "2", "-d", "30s", "-q", "--out", str(tmp_path / "r.arrow"),
                 cwd=tmp_path, tmp=tmp_path)

    def preparing() -> bool:  # pyarrow is first loaded to read the data set, before any load
        try:
            return "pyarrow" in Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:
            return False

    wait_for(lambda: preparing() or proc.poll() is not None, 60, "the run to prepare its data")
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("bench: interrupted"), err
    assert "Traceback" not in err


# -- #4 capacity.json mid-sweep ------------------------------------------------------------------------------------

def test_capacity_json_mid_sweep_claims_no_exit_code(spawn: Callable[..., subprocess.Popen[str]],
                                                     tmp_path: Path) -> None:
    out = tmp_path / "cap"
    proc = spawn("capacity", str(ROOT / "scenarios" / "capacity.toml"), "--out", str(out), "--start", "40",
                 "--step", "2s", "--warmup", "0s", "--quiet", cwd=tmp_path, tmp=tmp_path)

    def doc() -> dict[str, object] | None:
        try:
            d: dict[str, object] = json.loads((out / "capacity.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return d

    wait_for(lambda: bool((doc() or {}).get("steps")) or proc.poll() is not None, 90, "a finished step")
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)  # what a kill -9 / OOM leaves
    proc.wait(10)
    left = doc()
    assert left is not None and left["steps"]
    assert left["stop_reason"] == "running" and left["exit_code"] is None, left


# -- #8 -q keeps the recovered-leftover notice ---------------------------------------------------------------------

def test_quiet_still_says_a_killed_runs_leftover_was_recovered(spawn: Callable[..., subprocess.Popen[str]],
                                                               tmp_path: Path) -> None:
    out = tmp_path / "r.arrow"
    _killed_run(spawn, tmp_path, out)
    again = bench("run", "--url", "embedded", "-c", "2", "-d", "1s", "-q", "--out", str(out), cwd=tmp_path,
                  tmp=tmp_path)
    assert again.returncode == 0, again.stderr
    recovered = tmp_path / "r.recovered.arrow"
    assert recovered.exists()
    assert "recovered" in again.stderr and str(recovered) in again.stderr, again.stderr


# -- #9 SIGHUP is SIGTERM --------------------------------------------------------------------------------------

def test_sighup_stops_a_run_with_a_partial_report(spawn: Callable[..., subprocess.Popen[str]],
                                                  tmp_path: Path) -> None:
    out = tmp_path / "h.arrow"
    proc = spawn("run", "--url", "embedded", "-c", "2", "-d", "30s", "--warmup", "0s", "-q", "--out", str(out),
                 cwd=tmp_path, tmp=tmp_path)
    ckpt = out.with_name(f".{out.name}.checkpoint")
    wait_for(lambda: _measured_ok(ckpt) > 0 or proc.poll() is not None, 60, "answers measured")
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    meta = _read_meta(out)
    assert meta["partial"] is True
    _assert_accounting(meta)
    assert not ckpt.exists()


# -- #6 / #7 Locust: a lost worker -----------------------------------------------------------------------------

def _worker_0_killed(cluster: Cluster, serve_emulator: Callable[..., str]) -> tuple[int, str, int, int]:
    """A 2-worker Locust run whose worker with index 0 is SIGKILLed (the worker alone: its engine process finds
    its pipe broken) once its checkpoint lines reach the master: (master's exit code, its last stdout line, the
    worker's pid, its engine process's pid)."""
    base = serve_emulator("--replicas", "8", "--latency-ms", "2")
    port = free_port()
    sc = scenario(cluster.tmp, infer_url(base), 'concurrency = 4\nduration = "6s"', raw=False)
    scratch = cluster.tmp / "scratch"
    scratch.mkdir()
    master = cluster.start("master", "-m", "bench", "run", str(sc), "--locust-master", "--expect-workers", "2",
                           "--master-bind-port", str(port), "--worker-wait", "30", "--json", "-q",
                           "-o", str(cluster.tmp / "run.arrow"), stdout=subprocess.PIPE)
    workers = [cluster.worker(port, f"w{i}", env={"TMPDIR": str(scratch)}) for i in range(2)]

    def index_0() -> subprocess.Popen[bytes] | None:  # the worker whose engine checkpoints part 0
        for w in workers:
            if any(p.stat().st_size for p in scratch.glob(f"bench-locust-worker-*-{w.pid}-*/part-0.checkpoint")):
                return w
        return None

    part_0 = cluster.tmp / ".run.arrow.w0.checkpoint"  # what the master keeps of worker 0's checkpoint
    wait_for(lambda: (index_0() is not None and _measured_ok(part_0) > 0) or master.poll() is not None, 60,
             "worker 0's checkpoint lines to reach the master")
    victim = index_0()
    assert victim is not None, cluster.log(master)
    [engine] = children(victim.pid, b"bench.locust.child")
    os.kill(victim.pid, signal.SIGKILL)
    out, _ = master.communicate(timeout=90)
    return master.returncode, out.decode().strip().splitlines()[-1], victim.pid, engine


def test_a_lost_locust_worker_0_is_neither_recovered_nor_interrupted(cluster: Cluster,
                                                                    serve_emulator: Callable[..., str]) -> None:
    code, last, _, _ = _worker_0_killed(cluster, serve_emulator)
    assert code == 3, cluster.log(cluster.procs[0])
    summary = json.loads(last)
    meta = _read_meta(cluster.tmp / "run.arrow")
    extra: dict[str, object] = meta["extra"]  # type: ignore[assignment]
    assert "recovered" not in extra and extra["interrupted"] is False, extra
    assert str(summary["partial_reason"]).startswith("a worker was lost"), summary
    assert summary["generator_bound"] is not False, summary  # never a bare "no": worker 0 was not judged
    lost = [w for w in extra["locust"]["workers"] if w["state"] != "final"]  # type: ignore[index]
    assert [w["index"] for w in lost] == [0] and lost[0]["generator_bound"] is None, lost


def test_a_lost_locust_workers_engine_exits_without_a_traceback(cluster: Cluster,
                                                                serve_emulator: Callable[..., str]) -> None:
    code, _, victim, engine = _worker_0_killed(cluster, serve_emulator)
    assert code == 3, cluster.log(cluster.procs[0])
    wait_for(lambda: not alive(engine), 30, "the orphaned engine process to exit")
    log = next(cluster.log(p) for p in cluster.procs if p.pid == victim)  # the engine's stderr is its worker's
    assert "Traceback" not in log and "BrokenPipe" not in log, log[-3000:]
