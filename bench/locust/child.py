"""The engine process of a Locust worker: bench's own engine (asyncio/uvloop), away from gevent.

``python -m bench.locust.child`` reads JSON lines on stdin -- the job, then ``{"go": EPOCH}`` or
``{"stop": true}`` -- and writes JSON lines on stdout: ``ready`` (scenario read and prepared), ``delta``
(about once a second), then ``final`` (the path of its report file) or ``error`` (one line: why). When stdin
closes (its Locust worker died) the load stops as on SIGTERM, so the process never outlives its parent for
long. Never imports locust.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

import orjson

__all__ = ["main"]


class _Out:
    """JSON lines on stdout, safe from the engine thread and the stdin reader."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, msg: dict[str, Any]) -> None:
        data = orjson.dumps(msg) + b"\n"
        with self._lock:
            self._stream.write(data)
            self._stream.flush()


def _read_stdin(lines: IO[bytes], go: dict[str, Any], ready: threading.Event) -> None:
    """After the job: wait for go/stop; EOF (the worker is gone) or stop → SIGTERM ourselves (graceful stop)."""
    for raw in lines:
        msg = orjson.loads(raw)
        if "go" in msg and not ready.is_set():
            go["epoch"] = float(msg["go"])
            ready.set()
        elif msg.get("stop"):
            break
    go.setdefault("stopped", True)
    ready.set()
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> int:
    from bench.errors import BenchError
    from bench.locust import _core
    from bench.locust.wire import delta

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
    threading.Thread(target=_read_stdin, args=(stdin, go, ready), daemon=True).start()
    ready.wait()
    if "epoch" not in go or stopping["sigterm"]:
        out.send({"type": "error", "message": "stopped before the start"})
        return 130
    prev: list[Any] = [None]

    def on_snapshot(snap: Any) -> None:
        out.send({"type": "delta", "delta": delta(prev[0], snap)})
        prev[0] = snap

    with tempfile.TemporaryDirectory(prefix="bench-locust-child-") as tmp:
        raw = Path(tmp) / "raw.arrows" if sc.report.raw else None
        try:
            report = _core.run_share(prepared, int(job["index"]), int(job["workers"]), go["epoch"], on_snapshot,
                                     raw_path=raw, message=lambda m: out.send({"type": "message", "message": m}))
        except BenchError as exc:
            out.send({"type": "error", "message": str(exc)})
            return exc.exit_code
        if os.getppid() != parent:  # the Locust worker is gone: nobody will read a report
            return 130
        path = Path(job["out"])
        path.write_bytes(_core.write_report_bytes(report))
    out.send({"type": "final", "path": str(path), "partial": report.run.partial})
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # not sys.exit: the stdin reader thread may still block in read() (no clean join possible)
