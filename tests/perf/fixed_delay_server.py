"""An HTTP/1.1 server that answers every request exactly DELAY after it has fully arrived (loopback benchmarks).

    python tests/perf/fixed_delay_server.py --port 0 --delay-ms 10     # prints "listening PORT", then serves

Why not uvicorn/asyncio timers: uvloop timers have millisecond resolution and the default asyncio loop rounds its
epoll timeout up to the next millisecond, so a timer-based 10 ms answer is 10-11 ms. This is one thread with its
own epoll loop: it sleeps in epoll until ~1 ms before the earliest due answer, then polls without blocking until
the due nanosecond, so answers leave within a few µs of ``arrival + delay`` while the CPU is free.

``GET /stats`` answers at once with JSON: the server's own measured delay (send − arrival) p50/p99/max in µs and
the count since the previous ``/stats`` (which it resets) — the server's accuracy, measured separately from the
client's.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import select
import socket
import sys
import time

__all__ = ["DelayServer", "main"]

_ANSWER_BODY = b'{"outputs":[0.1]}'
_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
           + str(len(_ANSWER_BODY)).encode() + b"\r\n\r\n" + _ANSWER_BODY)
_SPIN_NS = 1_500_000  # poll without blocking when the next answer is due within this


class _Conn:
    __slots__ = ("buf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""


class DelayServer:
    """Single-threaded epoll server; one answer per request, in order, ``delay_ns`` after arrival."""

    def __init__(self, port: int, delay_ns: int) -> None:
        self.delay_ns = delay_ns
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.ep = select.epoll()
        self.ep.register(self.listener.fileno(), select.EPOLLIN)
        self.conns: dict[int, _Conn] = {}
        self.due: list[tuple[int, int, int, int]] = []  # (due_ns, seq, fd, arrival_ns)
        self.seq = 0
        self.delays_us: list[int] = []

    def serve_forever(self) -> None:
        while True:
            now = time.monotonic_ns()
            timeout = 1.0
            if self.due:
                wait = self.due[0][0] - now
                timeout = 0.0 if wait <= _SPIN_NS else (wait - _SPIN_NS) / 1e9
            for fd, _ev in self.ep.poll(timeout):
                if fd == self.listener.fileno():
                    self._accept()
                else:
                    self._read(fd)
            self._send_due()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns[sock.fileno()] = _Conn(sock)
            self.ep.register(sock.fileno(), select.EPOLLIN)

    def _close(self, fd: int) -> None:
        conn = self.conns.pop(fd, None)
        if conn is not None:
            self.ep.unregister(fd)
            conn.sock.close()

    def _read(self, fd: int) -> None:
        conn = self.conns.get(fd)
        if conn is None:
            return
        try:
            data = conn.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(fd)
            return
        if not data:
            self._close(fd)
            return
        arrival = time.monotonic_ns()
        conn.buf += data
        while True:
            end = conn.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = conn.buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            total = end + 4 + length
            if len(conn.buf) < total:
                return
            conn.buf = conn.buf[total:]
            if head.startswith("GET /stats"):
                self._write(conn, self._stats())
                continue
            self.seq += 1
            heapq.heappush(self.due, (arrival + self.delay_ns, self.seq, fd, arrival))

    def _send_due(self) -> None:
        due = self.due
        while due:
            now = time.monotonic_ns()
            if due[0][0] > now:
                return
            _when, _seq, fd, arrival = heapq.heappop(due)
            conn = self.conns.get(fd)
            if conn is None:
                continue
            self.delays_us.append((time.monotonic_ns() - arrival) // 1000)
            self._write(conn, _ANSWER)

    def _write(self, conn: _Conn, data: bytes) -> None:
        try:
            conn.sock.sendall(data)  # tiny answers: the socket buffer takes them at once
        except OSError:
            self._close(conn.sock.fileno())

    def _stats(self) -> bytes:
        values = sorted(self.delays_us)
        self.delays_us = []

        def pct(p: float) -> int:
            return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else 0

        body = json.dumps({"count": len(values), "p50_us": pct(50), "p99_us": pct(99),
                           "max_us": values[-1] if values else 0, "delay_us": self.delay_ns // 1000}).encode()
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, default=10.0)
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = ap.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    server = DelayServer(args.port, int(args.delay_ms * 1e6))
    print(f"listening {server.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
