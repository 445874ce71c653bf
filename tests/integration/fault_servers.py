"""Tiny misbehaving HTTP/1.1 servers on 127.0.0.1 for the accounting tests (not a test module).

``FaultServer(behaviour)`` serves in a thread until closed (use it as a context manager, so it is always stopped).
Behaviours, per connection: ``silent`` (accept, read, never answer), ``reset`` (read the request, then RST),
``garbage`` (read, answer bytes that are not HTTP, close), ``short`` (a Content-Length longer than the body, then
hang), ``slam`` (RST as soon as the connection is accepted, before reading), ``ok`` (answer ``200`` with body
``1`` per request, keep-alive), or ``random`` (each request draws one of those from a seeded generator — the same
seed gives the same misbehaviour).
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
from types import TracebackType

__all__ = ["BEHAVIOURS", "FaultServer"]

BEHAVIOURS = ("silent", "reset", "garbage", "short", "slam", "ok")
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Type: text/plain\r\n\r\n1"


class FaultServer:
    def __init__(self, behaviour: str, *, seed: int = 0, weights: dict[str, float] | None = None) -> None:
        self.behaviour = behaviour
        self._rng = random.Random(seed)
        self._weights = weights or {b: 1.0 for b in BEHAVIOURS}
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", 0), backlog=512)
        self._srv.settimeout(0.1)
        self.port: int = self._srv.getsockname()[1]
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.requests = 0  # requests read (a request = one recv that got bytes)
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._accept.join(5)
        with self._lock:
            held = list(self._held)
        for c in held:
            with contextlib.suppress(OSError):
                c.close()
        for t in list(self._threads):
            t.join(5)
        self._srv.close()

    def _pick(self) -> str:
        if self.behaviour != "random":
            return self.behaviour
        with self._lock:
            names = list(self._weights)
            return self._rng.choices(names, [self._weights[n] for n in names])[0]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._held.append(conn)
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        try:
            if self.behaviour == "slam" or (self.behaviour == "random" and self._pick() == "slam"):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                return
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                with self._lock:
                    self.requests += 1
                what = self._pick()
                if what in ("ok", "slam"):  # 'slam' drawn mid-connection: answer this one
                    conn.sendall(_OK)
                    continue
                if what == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    conn.close()
                    return
                if what == "garbage":
                    conn.sendall(b"\x00\xff not http at all\r\n\r\n")
                    conn.close()
                    return
                if what == "short":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n1")
                # silent / short: hold the connection, answer nothing more (until the server closes)
                self._stop.wait()
                return
        except OSError:
            return
