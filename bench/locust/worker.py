"""`bench locust-worker`: a Locust worker whose load is bench's engine, run in a child process.

Locust brings the connection to the master (discovery, heartbeats, quit); the load runs in
``python -m bench.locust.child`` (asyncio/uvloop, no gevent), and this process relays between the two: the
master's ``bench_prepare`` / ``bench_go`` / ``bench_stop`` go to the child's stdin, the child's ready / delta /
checkpoint / final / error lines go to the master as ``bench_*`` messages. Importing this module imports locust
(gevent).
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
from bench.errors import RunInvalid
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
        for name, fn in (("bench_prepare", self._prepare), ("bench_go", self._go), ("bench_stop", self._stop)):
            self.runner.register_message(name, fn)

    def send(self, kind: str, data: dict[str, Any]) -> None:
        self.runner.send_message(kind, data)

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
                self.send("bench_final", {**ident, "report": path.read_bytes()})
                path.unlink(missing_ok=True)
                finished = True
            elif kind == "error":
                self.send("bench_error", {**ident, "message": msg["message"]})
                finished = True
            elif kind == "message":
                print(f"bench worker: {msg['message']}", file=sys.stderr, flush=True)
        code = child.wait()
        if not finished:
            self.send("bench_error", {**ident, "message": f"engine process exited with code {code} and no report"})

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
        self._write({"stop": True})
        if self.relay is not None:
            self.relay.join(timeout=15)
        self.env.events.quitting.fire(environment=self.env, reverse=True)  # type: ignore[no-untyped-call]
        self.runner.quit()

    def close(self) -> None:
        self._kill_child()
        self.tmp.cleanup()


MASTER_SILENCE_S = 5  # no heartbeat from the master (it sends one a second) this long: stop loading and quit


def run_worker(master_host: str, master_port: int) -> int:
    """Connect to the master and serve runs until it says quit (or stops answering heartbeats)."""
    import locust.runners

    # Locust's workers wait 60 s for a master that died (kill -9, lost host) and load the target all the while,
    # uncontrolled; this process is a worker and nothing else, so its runner module's limit is ours to set
    locust.runners.MASTER_HEARTBEAT_TIMEOUT = MASTER_SILENCE_S
    env = Environment(user_classes=[])
    try:
        env.create_worker_runner(master_host, master_port)
    except ConnectionError:
        raise RunInvalid(f"no Locust master answered at {master_host}:{master_port}") from None
    worker = BenchWorker(env)
    print(f"bench worker {socket.gethostname()}:{os.getpid()} connected to {master_host}:{master_port}",
          file=sys.stderr, flush=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(sig, lambda: gevent.spawn(worker.shutdown))
    try:
        assert env.runner is not None
        env.runner.greenlet.join()
    finally:
        worker.close()
    return 0
