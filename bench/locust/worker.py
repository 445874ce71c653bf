"""`bench locust-worker`: a Locust worker whose load is bench's engine, run in a child process.

Locust brings the connection to the master (discovery, heartbeats, quit); the load runs in
``python -m bench.locust.child`` (asyncio/uvloop, no gevent), and this process relays between the two: the
master's ``bench_prepare`` / ``bench_go`` / ``bench_stop`` go to the child's stdin, the child's ready / delta /
checkpoint / final / error lines go to the master as ``bench_*`` messages; a heartbeat goes to the child about
once a second, so that a frozen worker's child stops its load (bench.locust.child). Exit codes: 0 once it
delivered a run's report, 130 after Ctrl-C / SIGTERM, 3 when the master vanished mid-run, the engine died, or
the master ended without a run for it. Importing this module imports locust (gevent).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import gevent
import orjson
from locust.env import Environment

from bench import __version__
from bench.errors import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, RunInvalid
from bench.scratch import scratch_dir

__all__ = ["BenchWorker", "run_worker"]


class BenchWorker:
    """The worker side of one distributed run at a time."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.runner: Any = cast(Any, env.runner)
        self.child: subprocess.Popen[bytes] | None = None
        self.relay: Any = None  # the greenlet relaying the child's lines
        self.tmp = scratch_dir("locust-worker")
        self.delivered = 0  # runs whose report (or error) reached the master
        self.running = False  # a run's engine is working (prepared, loading or draining)
        self.failure = ""  # why a run failed on this side (the engine died, a report unreadable)
        self.signalled = False  # Ctrl-C / SIGTERM
        self.pulse = gevent.spawn(self._heartbeats)
        for name, fn in (("bench_prepare", self._prepare), ("bench_go", self._go), ("bench_stop", self._stop)):
            self.runner.register_message(name, fn)

    def send(self, kind: str, data: dict[str, Any]) -> None:
        try:
            self.runner.send_message(kind, data)
        except Exception as exc:  # the master is gone (its socket closed): nobody to tell
            print(f"bench worker: could not reach the master: {exc}", file=sys.stderr, flush=True)

    def _heartbeats(self) -> None:
        """The child stops its load when these stop (this process frozen or stalled): bench.locust.child."""
        while True:
            self._write({"alive": True})
            gevent.sleep(1.0)

    def outcome(self, mid_run: bool) -> int:
        """This process's exit code (module doc); ``mid_run``: its engine was still working when the connection to
        the master ended (the master vanished: Locust's heartbeat timeout)."""
        if self.signalled:
            return EXIT_INTERRUPTED
        if self.failure or mid_run or not self.delivered:
            why = self.failure or ("the connection to the master ended mid-run (it went away, or this worker was "
                                   "frozen)" if mid_run else "the master ended without a run for this worker")
            print(f"bench worker: {why}", file=sys.stderr, flush=True)
            return EXIT_INVALID
        return EXIT_OK

    def _prepare(self, environment: Environment, msg: Any) -> None:
        job = dict(msg.data)
        ident = {"host": socket.gethostname(), "pid": os.getpid()}
        if job.get("bench_version") != __version__:
            self.send("bench_error", {**ident, "refused": True,
                                      "message": f"bench version mismatch: this worker runs bench {__version__}, "
                                                 f"the master {job.get('bench_version')}"})
            return
        self._kill_child()
        out = Path(self.tmp.name) / f"part-{job['index']}.arrow"
        job["out"] = str(out)
        self.child = subprocess.Popen([sys.executable, "-m", "bench.locust.child"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, bufsize=0)
        self.running, self.failure = True, ""
        self._write({k: job.get(k) for k in ("scenario", "endpoints", "index", "workers", "out", "run_id")})
        self.relay = gevent.spawn(self._relay, self.child, ident)

    def _go(self, environment: Environment, msg: Any) -> None:
        self._write({"go": float(msg.data["epoch"])})

    def _stop(self, environment: Environment, msg: Any) -> None:
        self._write({"stop": True})

    def _write(self, msg: dict[str, Any]) -> None:
        child = self.child
        if child is not None and child.stdin is not None and child.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                child.stdin.write(orjson.dumps(msg) + b"\n")

    def _relay(self, child: subprocess.Popen[bytes], ident: dict[str, Any]) -> None:
        """The child's lines → bench_* messages to the master (runs as a greenlet; pipe reads are cooperative)."""
        assert child.stdout is not None
        finished = False
        for line in child.stdout:
            msg = orjson.loads(line)
            kind = msg["type"]
            if kind == "ready":
                self.send("bench_ready", {**ident, "time": time.time()})  # lets the master estimate clock offset
            elif kind == "delta":
                self.send("bench_delta", msg["delta"])
            elif kind == "checkpoint":  # the master keeps them beside its report (bench.locust.parts)
                self.send("bench_checkpoint", {"lines": msg["lines"]})
            elif kind == "final":
                path = Path(msg["path"])
                finished = True
                try:
                    data = path.read_bytes()
                except OSError as exc:  # the scratch dir went away under it (this process is quitting)
                    self.failure = f"the engine's report could not be read: {exc.strerror}"
                    continue
                self.send("bench_final", {**ident, "report": data})
                path.unlink(missing_ok=True)
                self.delivered += 1
            elif kind == "error":
                self.send("bench_error", {**ident, "message": msg["message"]})
                finished = True
                self.failure = f"the run failed here: {msg['message']}"
            elif kind == "message":
                print(f"bench worker: {msg['message']}", file=sys.stderr, flush=True)
                if msg.get("stopped"):  # this process was frozen or stalled: the master counted it lost
                    self.failure = f"the engine stopped its load on its own ({msg['message']})"
        code = child.wait()
        if not finished:
            self.failure = f"engine process exited with code {code} and no report"
            self.send("bench_error", {**ident, "message": self.failure})
        if child is self.child:
            self.running = False

    def _kill_child(self) -> None:
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        with contextlib.suppress(OSError):
            if child.stdin is not None:
                child.stdin.close()  # EOF: the child stops its load as on SIGTERM
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def shutdown(self) -> None:
        """Ctrl-C / SIGTERM: the child stops its load and its partial report still reaches the master, then
        the master is told this worker quits."""
        self.signalled = True
        self._write({"stop": True})
        if self.relay is not None:
            self.relay.join(timeout=15)
        self.env.events.quitting.fire(environment=self.env, reverse=True)  # type: ignore[no-untyped-call]
        self.runner.quit()

    def close(self) -> None:
        """The child stopped (its drained share relayed, if anyone listens), then the scratch dir removed: the
        relay reads the child's report from it."""
        self.pulse.kill()
        self._kill_child()
        if self.relay is not None:
            self.relay.join(timeout=15)
        self.tmp.cleanup()


MASTER_SILENCE_S = 5  # no heartbeat from the master (it sends one a second) this long: stop loading and quit


def run_worker(master_host: str, master_port: int) -> int:
    """Connect to the master and serve runs until it says quit (or stops answering heartbeats)."""
    import locust.runners

    # Locust's workers wait 60 s for a master that died (kill -9, lost host) and load the target all the while,
    # uncontrolled; this process is a worker and nothing else, so its runner module's limit is ours to set
    locust.runners.MASTER_HEARTBEAT_TIMEOUT = MASTER_SILENCE_S
    env = Environment(user_classes=[])
    notice = gevent.spawn(_no_master_yet, master_host, master_port)
    try:
        env.create_worker_runner(master_host, master_port)  # blocks until a master answers (Locust retries 300 s)
    except ConnectionError:
        raise RunInvalid(f"no Locust master answered at {master_host}:{master_port}") from None
    finally:
        notice.kill()
    worker = BenchWorker(env)
    print(f"bench worker {socket.gethostname()}:{os.getpid()} connected to {master_host}:{master_port}",
          file=sys.stderr, flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(sig, lambda: gevent.spawn(worker.shutdown))
    mid_run = False
    try:
        assert env.runner is not None
        env.runner.greenlet.join()
    finally:
        mid_run = worker.running
        worker.close()
    return worker.outcome(mid_run)


NO_MASTER_NOTE_S = (5.0, 30.0)  # the first note that no master answers yet, then one every so often


def _no_master_yet(host: str, port: int) -> None:
    """A worker started before its master (or pointed at the wrong one) says so instead of waiting in silence."""
    first, every = NO_MASTER_NOTE_S
    waited = first
    while True:
        gevent.sleep(every if waited > first else first)
        print(f"bench worker: no Locust master answered at {host}:{port} after {waited:.0f} s: still waiting (is "
              "`bench run --locust-master` running there, on this port?)", file=sys.stderr, flush=True)
        waited += every
