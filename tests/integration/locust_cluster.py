"""Helpers for the distributed tests: real Locust master/worker processes (each in its own process group,
always killed with its children), a free loopback port, and a counting TCP proxy in front of the emulator (the
count of HTTP responses the server really sent, independent of bench's recorder)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Cluster:
    """Processes of one test; ``close`` SIGKILLs every process group (workers' engine children included)."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    def start(self, name: str, *args: str, env: dict[str, str] | None = None,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen([sys.executable, *args], cwd=self.tmp, env={**self.env, **(env or {})},
                                    stdout=stdout if stdout is not None else f, stderr=f, start_new_session=True)
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def worker(self, port: int, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self.start(name, "-m", "bench", "locust-worker", "--master-port", str(port), env=env)

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


class CountingProxy:
    """A loopback TCP proxy that counts the HTTP/1.1 responses the upstream sends back."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.responses = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            cw.close()
            return
        await asyncio.gather(self._pipe(cr, uw, count=False), self._pipe(ur, cw, count=True),
                             return_exceptions=True)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, *, count: bool) -> None:
        tail = b""
        try:
            while data := await r.read(65536):
                if count:
                    chunk = tail + data
                    self.responses += chunk.count(b"HTTP/1.1 ")
                    tail = chunk[-8:]
                w.write(data)
                await w.drain()
        finally:
            w.close()
