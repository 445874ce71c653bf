"""Helpers for the real-process tests: real Locust master/worker processes (each in its own process group,
always killed with its children), a free loopback port, a wait on a condition with a deadline, a signal sent to a
running `bench` once it is ready, a shipped scenario copied with edits, an ASGI app served on loopback, and the
emulator's own count of the requests it served (its /metrics: independent of bench's recorder), /proc
checks of which processes are alive, and a standard-library HTTP server serving in a thread (``serving``). Import as
``from tests.integration.locust_cluster import ...``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "ccfraud_1k.df.json"


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie — exited, not yet reaped by its parent — counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def children(pid: int, cmdline_has: bytes = b"") -> list[int]:
    """Direct children of ``pid`` whose command line contains ``cmdline_has`` (from /proc: no psutil needed)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes() if cmdline_has else b""
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and cmdline_has in cmdline:
            out.append(int(entry.name))
    return out


S = TypeVar("S", bound=ThreadingHTTPServer)


@contextlib.contextmanager
def serving(server: S) -> Iterator[S]:
    """``server`` (bound to 127.0.0.1) serving in a thread; always shut down and closed, even when a test fails."""
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class _Recording(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]]  # set per server by recording_target

    def do_POST(self) -> None:
        self.seen.append((self.path, str(self.headers.get("Host"))))
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def recording_target() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """A loopback target answering every POST ``200 {}``: its URL, and the (path, Host) of each request it got."""
    seen: list[tuple[str, str]] = []
    handler = type("Handler", (_Recording,), {"seen": seen})
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/infer", seen


class EchoingTarget(ThreadingHTTPServer):
    """A loopback target that answers every ``echo_every``-th POST with a 500 echoing the bare credential it got
    (where no redaction pattern finds it, as a careless server might), the others with 200; counts what it
    answered. Serve it with ``serving``."""

    daemon_threads = True

    def __init__(self, echo_every: int = 1) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.echo_every = echo_every
        self.lock = threading.Lock()
        self.answered = 0
        self.url = f"http://127.0.0.1:{self.server_address[1]}/infer"


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EchoingTarget

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.answered += 1
            n = self.server.answered
        if n % self.server.echo_every:
            status, body = 200, b'{"ok": true}'
        else:
            credential = str(self.headers.get("Authorization")).split()[-1]  # bare: no "Bearer" for a pattern
            status, body = 500, f"denied: unknown credential {credential} for this model".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served_asgi(app: Any) -> Iterator[str]:
    """Serve an ASGI ``app`` (built in the test: an emulator part, a gateway in front of it) with uvicorn on a free
    127.0.0.1 port in a thread; yields the base URL; always stopped."""
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "test server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def scenario_copy(shipped: str, dest: Path, *edits: tuple[str, str]) -> Path:
    """The shipped ``scenarios/<shipped>`` written to ``dest``, data paths made absolute and each (old, new) text
    edit applied once (an edit whose old text is missing fails the test: the scenario changed under it)."""
    text = (ROOT / "scenarios" / shipped).read_text().replace("../data/", f"{ROOT}/data/")
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    dest.write_text(text)
    return dest


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``cond`` until true; AssertionError naming ``what`` after ``timeout_s`` (never a bare sleep)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def signal_when(proc: subprocess.Popen[str], ready: Callable[[], bool], what: str, *, timeout_s: float = 30,
                sig: int = signal.SIGINT) -> tuple[str, str]:
    """Send ``sig`` to the running ``proc`` once ``ready()`` (``what``, for the timeout message); its (stdout,
    stderr). ``proc`` is killed and reaped whatever happens."""
    try:
        wait_for(lambda: ready() or proc.poll() is not None, timeout_s, what)
        assert proc.poll() is None, f"exited {proc.returncode} before {what}"
        proc.send_signal(sig)
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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


def served(base_url: str) -> int:
    """Inference requests the emulator answered, by its own count (GET /metrics, rest_server_requests_total)."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("rest_server_requests_total{") and 'method="POST"' in line and "/infer" in line)
