"""The engine process of a Locust worker: bench's own engine (asyncio/uvloop), away from gevent.

``python -m bench.locust.child`` reads JSON lines on stdin -- the job, then ``{"go": EPOCH}`` or
``{"stop": true}``, and ``{"alive": true}`` heartbeats from its worker about once a second -- and writes JSON
lines on stdout: ``ready`` (scenario read and prepared), ``delta`` and ``checkpoint`` (about once a second: the
new lines of its bench.checkpoint, which the master keeps beside its report so that its ``kill -9`` is
recoverable; bench.locust.parts), then ``final`` (the path of its report file) or ``error`` (one line: why).
When stdin closes (its Locust worker died), or no heartbeat came for PARENT_SILENCE_S (its worker is frozen: SIGSTOP, a
paused container, a stalled gevent loop -- its master counts it lost after ~3 s and would never see what this
process kept sending), the load stops as on SIGTERM, so the process never outlives its parent for long. Never
imports locust.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson

__all__ = ["PARENT_SILENCE_S", "main"]

PARENT_SILENCE_S = 3.0  # no heartbeat from the worker this long: stop the load (the master's loss detection)


class _Out:
    """JSON lines on stdout, safe from the engine thread and the stdin reader. Once the worker's end of the pipe
    is gone (it was killed) nothing is sent any more, quietly: the load stops as its parent watch sees it gone
    (a BrokenPipeError raised in the engine's signal handler or progress callback was a 60-line traceback)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.broken = False

    def send(self, msg: dict[str, Any]) -> None:
        data = orjson.dumps(msg) + b"\n"
        with self._lock:
            if self.broken:
                return
            try:
                self._stream.write(data)
                self._stream.flush()
            except (OSError, ValueError):  # EPIPE; ValueError: the stream was closed
                self.broken = True


class _Pulse:
    """When the worker was last heard from (any line on stdin), monotonic; and the one stop of the load (a
    second SIGTERM would cut the engine's drain short)."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self._lock = threading.Lock()
        self._stopped = False

    def stop(self, go: dict[str, Any], ready: threading.Event) -> bool:
        """SIGTERM ourselves (a graceful stop), once; False when it was done already."""
        with self._lock:
            if self._stopped:
                return False
            self._stopped = True
        go.setdefault("stopped", True)
        ready.set()
        os.kill(os.getpid(), signal.SIGTERM)
        return True

    def beat(self) -> None:
        self.last = time.monotonic()

    def silent_s(self) -> float:
        return time.monotonic() - self.last


def _read_stdin(lines: IO[bytes], go: dict[str, Any], ready: threading.Event, pulse: _Pulse) -> None:
    """After the job: wait for go/stop; EOF (the worker is gone) or stop → SIGTERM ourselves (graceful stop)."""
    for raw in lines:
        pulse.beat()
        msg = orjson.loads(raw)
        if "go" in msg and not ready.is_set():
            go["epoch"] = float(msg["go"])
            ready.set()
        elif msg.get("stop"):
            break
    pulse.stop(go, ready)


def _watch_parent(parent: int, pulse: _Pulse, out: _Out, go: dict[str, Any], ready: threading.Event) -> None:
    """Stop the load (SIGTERM ourselves) once the worker is gone or silent: a frozen worker keeps its end of the
    pipe open, so EOF alone would let this process load the target unseen to the end."""
    while True:
        time.sleep(0.25)
        gone = os.getppid() != parent
        if gone or pulse.silent_s() > PARENT_SILENCE_S:
            if pulse.stop(go, ready):
                why = "gone" if gone else f"silent for {PARENT_SILENCE_S:g} s"
                out.send({"type": "message", "message": f"the Locust worker is {why}: stopping the load",
                          "stopped": True})
            return


class _Tail:
    """The complete lines appended to a file since the last read (the checkpoint, written by the engine)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._lock = threading.Lock()  # the engine thread reads it each second, the main thread once at the end

    def read(self) -> list[str]:
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    f.seek(self._offset)
                    data = f.read()
            except FileNotFoundError:
                return []
            end = data.rfind(b"\n")  # a line being written is sent with the next read
            if end < 0:
                return []
            self._offset += end + 1
            return [line.decode() for line in data[:end].split(b"\n") if line.strip()]


def main() -> int:
    from bench.errors import BenchError
    from bench.locust import _core
    from bench.locust.wire import delta
    from bench.scratch import scratch_dir

    parent = os.getppid()
    out = _Out(sys.stdout.buffer)
    stdin = sys.stdin.buffer
    try:
        job = orjson.loads(stdin.readline())
        prepared = _core.prepare_share(job)
        sc = prepared.scenario
    except (BenchError, OSError, ValueError, KeyError) as exc:
        out.send({"type": "error", "message": str(exc)})
        return 2
    out.send({"type": "ready"})
    go: dict[str, Any] = {}
    ready = threading.Event()
    stopping = {"sigterm": False}

    def early_stop(_sig: int, _frame: Any) -> None:  # before the engine installs its own handlers
        stopping["sigterm"] = True

    signal.signal(signal.SIGTERM, early_stop)
    pulse = _Pulse()  # from now on: the lines that queued up while preparing arrive at once
    threading.Thread(target=_read_stdin, args=(stdin, go, ready, pulse), daemon=True).start()
    threading.Thread(target=_watch_parent, args=(parent, pulse, out, go, ready), daemon=True).start()
    ready.wait()
    if "epoch" not in go or stopping["sigterm"]:
        out.send({"type": "error", "message": "stopped before the start"})
        return 130
    prev: list[Any] = [None]
    ckpt = _Tail(Path(job["out"]).with_suffix(".checkpoint")) if job.get("run_id") else None  # the worker's tmp

    def relay_checkpoint() -> None:
        lines = ckpt.read() if ckpt is not None else []
        if lines:
            out.send({"type": "checkpoint", "lines": lines})

    def on_snapshot(snap: Any) -> None:
        out.send({"type": "delta", "delta": delta(prev[0], snap)})
        prev[0] = snap
        relay_checkpoint()

    with scratch_dir("locust-child") as tmp:
        raw = Path(tmp) / "raw.arrows" if sc.report.raw else None
        try:
            report = _core.run_share(prepared, int(job["index"]), int(job["workers"]), go["epoch"], on_snapshot,
                                     raw_path=raw, message=lambda m: out.send({"type": "message", "message": m}),
                                     checkpoint=ckpt.path if ckpt is not None else None,
                                     run_id=str(job.get("run_id") or ""))
            relay_checkpoint()  # the drained share's last lines precede its report
        except BenchError as exc:
            out.send({"type": "error", "message": str(exc)})
            return exc.exit_code
        finally:
            if ckpt is not None:
                ckpt.path.unlink(missing_ok=True)
        if os.getppid() != parent:  # the Locust worker is gone: nobody will read a report
            return 130
        path = Path(job["out"])
        path.write_bytes(_core.write_report_bytes(report))
    out.send({"type": "final", "path": str(path), "partial": report.run.partial})
    return 0


if __name__ == "__main__":
    code = main()
    import contextlib

    with contextlib.suppress(OSError):  # the worker is gone: nobody reads what is left
        sys.stdout.flush()
    os._exit(code)  # not sys.exit: the stdin reader thread may still block in read() (no clean join possible)
