"""A small HTTP/1.1 server below ASGI that owns its sockets, so the emulator can misbehave on the wire.

Used instead of uvicorn when ``faults`` are set (without ``http2``): it parses requests with httptools, runs the
emulator's ASGI app for those that get an answer, and applies the fault plan's decision at the byte level —
stall (never answer, keep the socket open), reset (SO_LINGER 0 + abort = TCP RST; also right after accept),
garbage, a Content-Length
longer than the body, chunked or trickled bodies, huge bodies, injected 5xx/429 bursts, and closing a connection
after N answers without ``Connection: close``. Answers are buffered whole (emulator answers are small), one
request at a time per connection, in order (pipelined requests wait their turn).

Not a general-purpose server: no TLS, no upgrades, no ``Expect: 100-continue``. ``serve_faults`` runs it as the
process's server; ``running_fault_server`` runs it on the caller's event loop (tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Any, cast

import httptools

from bench.emulator.asgi import AsgiApp, Message, Scope
from bench.emulator.faults import EXEMPT_PATHS, FaultPlan, FaultSpec, error_answer, pad_json

__all__ = ["FaultServer", "running_fault_server"]

Header = tuple[bytes, bytes]
_MAX_QUEUED = 32  # pipelined requests per connection before reading pauses


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def _head(status: int, headers: list[Header]) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, _reason(status))]
    lines.extend(k + b": " + v for k, v in headers)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "url")

    def __init__(self, method: str, url: bytes, headers: list[Header], body: bytes, keep_alive: bool) -> None:
        self.method, self.url, self.headers, self.body, self.keep_alive = method, url, headers, body, keep_alive


class FaultServer:
    """Serves ``app`` with ``plan``'s faults. ``received``/``on_received`` count requests parsed (before faults)."""

    def __init__(self, app: AsgiApp, plan: FaultPlan, on_received: Callable[[], None] | None = None) -> None:
        self.app, self.plan, self.on_received = app, plan, on_received
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock)

    async def close(self) -> None:
        """Stop listening and drop every connection (stalled ones included)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None


class _Connection(asyncio.Protocol):
    def __init__(self, server: FaultServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[_Request] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.poisoned = False  # stalled or lied about a length: ignore the rest of what the client sends
        self.closed = False
        self.paused = False
        self.answered = 0
        self.disconnected = asyncio.Event()
        self._url = b""
        self._headers: list[Header] = []
        self._body: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.server.connections.add(self)
        if self.server.plan.reset_on_accept():
            self.poisoned = True
            _reset(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.disconnected.set()
        self.server.connections.discard(self)
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()

    def data_received(self, data: bytes) -> None:
        if self.poisoned:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(b"upgrades are not supported")
        except httptools.HttpParserError:
            self._fail(b"malformed request")

    def eof_received(self) -> bool | None:
        return None  # close our side too once the queue is drained (the transport does it)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("ascii", "replace")
        self.queue.append(_Request(method, self._url, self._headers, b"".join(self._body),
                                   self.parser.should_keep_alive()))
        if len(self.queue) >= _MAX_QUEUED and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._work())

    # the rest
    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, why: bytes) -> None:
        if self.transport is not None and not self.closed:
            body = b'{"error":"' + why + b'"}'
            self.transport.write(_head(400, [(b"content-type", b"application/json"),
                                             (b"content-length", str(len(body)).encode()),
                                             (b"connection", b"close")]) + body)
            self.transport.close()
        self.poisoned = True

    async def _work(self) -> None:
        while self.queue and not self.closed and not self.poisoned:
            request = self.queue.popleft()
            if self.paused and len(self.queue) < _MAX_QUEUED // 2 and self.transport is not None:
                self.paused = False
                self.transport.resume_reading()
            keep_open = await self._handle(request)
            if not keep_open and self.transport is not None and not self.closed:
                self.transport.close()
                return

    async def _handle(self, request: _Request) -> bool:
        """Answer one request (or not, as the plan says); False = close the connection afterwards."""
        transport = self.transport
        assert transport is not None
        path_b, _, query = request.url.partition(b"?")
        path = path_b.decode("latin-1")
        if self.server.on_received is not None and path not in EXEMPT_PATHS:
            self.server.on_received()
        decision = self.server.plan.decide(path)
        spec = decision.spec
        name = spec.name if spec is not None else None
        if name == "stall":
            self.poisoned = True
            return True
        if name == "reset":
            _reset(transport)
            return False
        if name == "garbage" and spec is not None:
            transport.write(self.server.plan.junk(int(spec.param("bytes"))))
            return False
        if name in ("5xx", "429") and spec is not None:
            status, body, extra = error_answer(spec)
            headers = [(b"content-type", b"application/json"), *extra]
        else:
            status, headers, body = await self._run_app(request, path, query)
            if self.closed:
                return False
        keep_alive = request.keep_alive
        close_after = self.server.plan.close_after
        self.answered += 1
        if not keep_alive:
            headers.append((b"connection", b"close"))
        await self._write(status, headers, body, spec)
        if name == "bad_length":
            self.poisoned = True  # the client waits for bytes that never come
            return True
        if close_after and self.answered >= close_after:
            if self.server.plan.on_fault is not None:
                self.server.plan.on_fault("close_after")
            return False
        return keep_alive

    async def _write(self, status: int, headers: list[Header], body: bytes, spec: FaultSpec | None) -> None:
        transport = self.transport
        assert transport is not None
        name = spec.name if spec is not None else None
        if name == "huge" and spec is not None:
            ctype = next((v for k, v in headers if k == b"content-type"), b"")
            body = pad_json(body, ctype, int(spec.param("bytes")))
        if name == "chunked" and spec is not None:
            transport.write(_head(status, [*headers, (b"transfer-encoding", b"chunked")]))
            n = int(spec.param("chunks"))
            step = max(1, -(-len(body) // n))
            out = [b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step]) for i in range(0, len(body), step)]
            transport.write(b"".join(out) + b"0\r\n\r\n")
            return
        length = len(body) + (int(spec.param("extra")) if name == "bad_length" and spec is not None else 0)
        head = _head(status, [*headers, (b"content-length", str(length).encode())])
        if name != "slow" or spec is None or not body:
            transport.write(head + body)
            return
        transport.write(head)
        pieces = 10
        step = max(1, -(-len(body) // pieces))
        pause = spec.param("ms") / 1000 / pieces
        for i in range(0, len(body), step):
            await asyncio.sleep(pause)
            if self.closed:
                return
            transport.write(body[i:i + step])

    async def _run_app(self, request: _Request, path: str, query: bytes) -> tuple[int, list[Header], bytes]:
        """Run the ASGI app on one buffered request; its answer, buffered (framing headers dropped)."""
        transport = self.transport
        assert transport is not None
        peer = transport.get_extra_info("peername")
        here = transport.get_extra_info("sockname")
        scope: Scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": request.method, "scheme": "http", "path": path, "raw_path": request.url.partition(b"?")[0],
            "query_string": query, "root_path": "", "headers": request.headers,
            "client": tuple(peer[:2]) if peer else None, "server": tuple(here[:2]) if here else None,
        }
        sent_body = False

        async def receive() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await self.disconnected.wait()
            return {"type": "http.disconnect"}

        status = 500
        headers: list[Header] = []
        chunks: list[bytes] = []

        async def send(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", [])
                           if bytes(k).lower() not in (b"content-length", b"transfer-encoding", b"connection")]
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))

        try:
            await self.server.app(scope, receive, send)
        except Exception as exc:  # the app failed: answer 500 as any server would
            body = b'{"error":"internal error: %s"}' % type(exc).__name__.encode()
            return 500, [(b"content-type", b"application/json")], body
        return status, headers, b"".join(chunks)


def _reset(transport: asyncio.Transport) -> None:
    """Close with a TCP RST: linger on, zero timeout, then abort."""
    sock: Any = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


@contextlib.asynccontextmanager
async def running_fault_server(app: AsgiApp, plan: FaultPlan, sock: socket.socket,
                               on_received: Callable[[], None] | None = None) -> AsyncIterator[FaultServer]:
    """The fault server listening on ``sock`` on the running loop for the block's duration (closed after)."""
    server = FaultServer(app, plan, on_received)
    await server.start(sock)
    try:
        yield server
    finally:
        await server.close()
