"""The lean HTTP/1.1 engine: one asyncio.Protocol per keep-alive connection, answers parsed by httptools.

Why it looks like this: per-request Python work, not the interpreter, limits a Python load generator. So the
request (head + body) is serialised to one ``bytes`` per body before the run (again only when a header such as a
token changes), answers are parsed in C (llhttp via httptools), and the hot path is transport callbacks — no
coroutine, future or timer per request. Read timeouts are found by a periodic sweep, not one timer per request.

Closed loop: ``concurrency`` slots, each owning one connection; a slot sends its next request from the callback that
completed the previous one. Open loop: the pacer (``bench.engine.pacer``) sleeps in epoll on a precise alarm (or,
while the loop is busy, spins) and sends every request that is due to an idle connection; a completion that frees a
connection also sends what is due. A warm pool is opened before the first send; beyond it connections open on demand
up to ``engine.connections`` (else ``max_in_flight``), at most ``CONNECT_CAP`` at a time — a send that finds no idle
connection waits in a FIFO backlog for the next free one (it leaves late, and its latency counts from the intended
time). A send is dropped only when ``max_in_flight`` requests are already out or waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httptools

from bench.engine.base import Classifier, EngineConfig, LoadSpec, RequestSet, ResultSink, check_header
from bench.engine.common import DEFAULT_OPEN_LIMIT, CallbackEngine, backoff_s
from bench.engine.pacer import Pacer, Sweeper, estimate_rate
from bench.engine.tls import make_ssl_context
from bench.failures import exception_kind  # re-exported: the one exception-to-kind mapping
from bench.headers import host_header as user_host
from bench.headers import sni_name
from bench.results import ERROR_DETAIL_BYTES, RESENT_STALE_CONNECTION, Kind, body_getter

__all__ = ["FastEngine", "Target", "build_wires", "exception_kind",
           "parse_target", "request_head", "wire"]

_now = time.monotonic_ns  # bound once: two reads per request on the hot path
_OK = int(Kind.OK)
_RESET = int(Kind.RESET)
_PROTOCOL = int(Kind.PROTOCOL_ERROR)
_READ_TIMEOUT = int(Kind.READ_TIMEOUT)
CONNECT_CAP = 32  # simultaneous connects in open loop: a catch-up burst must not become a connect storm
_WARM_LATENCY_S = 0.005  # assumed answer time for sizing the warm pool (x2 headroom below)
GROW_MAX_LAG_NS = 1_000_000  # open loop: the pool grows only while due sends start this promptly ...
GROW_MAX_KEPT = 64 * 1024 * 1024  # ... and answers being read hold less than this (big answers: memory stays flat)


class Target:
    """Where requests go, parsed once from ``RequestSet.url``: ``host``/``port`` are connected to; ``host_header``
    (Host, or HTTP/2 ``:authority``) and ``sni`` (the TLS server name, also the name the certificate is checked
    against) are the URL's host unless the request headers carry a Host (``parse_target``'s ``headers``)."""

    __slots__ = ("host", "host_header", "path", "port", "sni", "tls")

    def __init__(self, host: str, port: int, tls: bool, path: str, host_header: str, sni: str | None = None) -> None:
        self.host, self.port, self.tls, self.path, self.host_header = host, port, tls, path, host_header
        self.sni = host if sni is None else sni


def parse_target(url: str, headers: Mapping[str, str] | None = None) -> Target:
    """``url``'s parts; a Host in ``headers`` replaces the URL's host as Host/``:authority`` and TLS server name
    (curl ``--resolve`` style: reach the virtual host ``Host`` at the URL's address, e.g. an ingress IP)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"unsupported URL for the HTTP/1.1 engine: {url!r}")
    tls = parts.scheme == "https"
    default = 443 if tls else 80
    port = parts.port or default
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    given = user_host(headers) if headers else None
    if given:
        return Target(host, port, tls, path, given, sni_name(given))
    return Target(host, port, tls, path, host_header)


def build_wires(requests: RequestSet, target: Target, headers: Mapping[str, str]) -> list[bytes]:
    """One complete request (head + body) per prepared body, ready for ``transport.write``."""
    head = request_head(requests, target, headers)
    return [wire(head, b.body) for b in requests.bodies]


def wire(head: bytes, body: bytes) -> bytes:
    """``head`` (from ``request_head``) completed with Content-Length, and the body: one write."""
    return head + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def request_head(requests: RequestSet, target: Target, headers: Mapping[str, str]) -> bytes:
    """Request line and headers, without Content-Length and the final blank line. Host is the one in ``headers``,
    else the URL's; a header the engine sets itself (Content-Length, …) raises RequestBuildError (check_header)."""
    lines = [f"{requests.method.upper()} {target.path} HTTP/1.1", ""]
    host = None
    for name, value in headers.items():
        check_header(name, value)
        if name.lower() == "host":
            host = value.strip()
            continue
        lines.append(f"{name}: {value}")
    lines[1] = f"Host: {host or target.host_header}"
    return "\r\n".join(lines).encode("latin-1")


class _Conn(asyncio.BaseProtocol):
    """One connection with at most one request in flight. Hot-path state lives in plain slots. The subclasses below
    differ only in how answer bytes reach ``feed``."""

    __slots__ = ("body", "busy", "bytes_in", "dead", "eng", "failures", "first", "hdrs", "idx",
                 "intended", "keep", "kept", "parser", "parts", "pending", "rows_in", "sent", "transport",
                 "truncate_at")

    def __init__(self, eng: FastEngine, failures: int) -> None:
        self.eng = eng
        self.transport: asyncio.Transport | None = None
        # the first answer is parsed with its framing headers read (_FirstAnswer); None once one kept it open
        self.first: _FirstAnswer | None = _FirstAnswer(self)
        self.parser = httptools.HttpResponseParser(self.first)
        self.busy = False  # a request is assigned and not yet recorded
        self.pending = False  # assigned, waiting for the connection to open
        self.keep = True  # the last answer allows keep-alive (read in the callback: llhttp resets after)
        self.dead = False
        self.failures = failures  # consecutive failed connects of this slot (closed-loop backoff)
        self.intended = 0
        self.idx = 0  # the body of the request in flight (its size is bytes_out; a re-send writes it again)
        self.sent = 0
        self.rows_in = 0
        self.bytes_in = 0
        self.body = b""  # the first chunk of the kept prefix (most answers arrive in one)
        self.parts: list[bytes] | None = None  # every kept chunk once a second one arrives; joined once at the end
        self.kept = 0
        self.truncate_at = eng.max_body
        self.hdrs: list[tuple[bytes, bytes]] = []  # answer headers, when the engine watches them

    # -- asyncio.BaseProtocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def feed(self, data: bytes | memoryview) -> None:
        """Answer bytes as they arrive (``data_received``). A whole answer is handled (``finish``) from the
        parser's ``on_message_complete``, inside this call: no flag to test after every read."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.unparseable(exc)

    def unparseable(self, exc: httptools.HttpParserError) -> None:
        """The parser stopped: a malformed answer fails the request. bench's own callback failing is a bug: it is
        raised as itself (httptools wraps it), not counted against the target."""
        if isinstance(exc, httptools.HttpParserCallbackError) and isinstance(exc.__context__, Exception):
            raise exc.__context__
        if self.busy:
            self.eng.fail(self, _PROTOCOL, f"unparseable HTTP answer: {exc}")
        self.close()

    def eof_received(self) -> bool | None:
        self.dead = True  # (the loop calls connection_lost later: until then no send may pick this connection)
        return None  # close the transport; connection_lost reports

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        self.eng.lost(self, exc)

    # -- httptools callbacks ------------------------------------------------------------------------
    def on_body(self, body: bytes) -> None:
        """Keep at most ``truncate_at`` bytes, as chunks: copying the kept prefix per chunk was quadratic."""
        n = len(body)
        self.bytes_in += n
        kept = self.kept
        if not kept and n <= self.truncate_at:  # the common case: the first chunk, kept whole
            self.body = body
            self.kept = n
            self.eng.kept_inflight += n
            return
        room = self.truncate_at - kept
        if room <= 0:
            return
        if n > room:
            body = body[:room]
            n = room
        if not self.kept:
            self.body = body
        elif self.parts is None:
            self.parts = [self.body, body]
        else:
            self.parts.append(body)
        self.kept += n
        self.eng.kept_inflight += n

    def drop_body(self) -> None:
        self.eng.kept_inflight -= self.kept
        self.body = b""
        self.parts = None
        self.kept = 0

    def on_message_complete(self) -> None:
        self.keep = self.parser.should_keep_alive()  # (llhttp resets once this callback returns)
        self.eng.finish(self)

    def close(self) -> None:
        if self.transport is not None and not self.dead:
            self.transport.abort()


class _FirstAnswer:
    """The parser callbacks of a connection's first answer: ``_Conn``'s, plus the framing headers read.

    Why: a body without Content-Length or chunked coding (HTTP/1.0, or ``Connection: close``) ends when the server
    closes the connection (RFC 9112 6.3). httptools cannot be told about that EOF (it has no ``finish``), so the
    engine completes such an answer itself when the connection ends (``FastEngine.lost``), and only the headers
    say whether the body had a length (a Content-Length body cut short by the close stays a ``reset``). Reading
    headers costs a Python call per header, so only a connection's first answer pays it: once an answer leaves
    the connection open, the server frames its answers, and the connection gets a parser without header
    callbacks (one allocation per connection; nothing per request). A later answer of such a connection that
    is close-delimited after all is counted a ``reset`` (a server that mixes both framings on one connection).
    """

    __slots__ = ("conn", "framed", "to_eof")

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.framed = False  # this answer's headers so far carry Content-Length or Transfer-Encoding
        self.to_eof = False  # the headers are complete and the body ends with the connection

    def on_header(self, name: bytes, value: bytes) -> None:
        low = name.lower()
        if low == b"content-length" or low == b"transfer-encoding":
            self.framed = True
        if isinstance(self.conn, _WatchHeaders):
            self.conn.on_header(name, value)

    def on_headers_complete(self) -> None:
        conn = self.conn
        status = conn.parser.get_status_code()
        self.to_eof = not self.framed and status >= 200 and status not in (204, 304)
        self.framed = False  # (an interim 1xx answer comes before the final one)
        if isinstance(conn, _WatchHeaders):
            conn.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.conn.on_body(body)

    def on_message_complete(self) -> None:
        self.to_eof = False
        conn = self.conn
        final = conn.parser.get_status_code() >= 200
        conn.on_message_complete()
        if final and conn.keep and not conn.dead and conn.first is self:
            conn.first = None
            conn.parser = httptools.HttpResponseParser(conn)


# Fed to the parser of a connection that ended under a request: a parser between answers parses it as one whole
# answer; one holding part of an answer fails on it or takes it as body (see FastEngine._answer_began).
_PROBE = b"\r\nHTTP/1.1 204 X\r\n\r\n"


class _StreamConn(_Conn, asyncio.Protocol):
    """Answers arrive as a new ``bytes`` per read (the transport allocates it)."""

    __slots__ = ()
    data_received = _Conn.feed  # the same function: no extra call per read on the plaintext hot path


class _BufferConn(_Conn, asyncio.BufferedProtocol):
    """Answers are read into the engine's one read buffer (nothing allocated per read). Over TLS this matters:
    for a plain Protocol uvloop's SSL layer allocates a 256 KiB ``bytes`` per read, shrinks and frees it (mmap,
    mremap, munmap); interleaved calibrate pairs measured ~1 µs/request less with this (docs/performance.md).
    Over plain TCP it measured slightly slower, so only TLS connections use it. One buffer serves every
    connection: the transport fills it and calls ``buffer_updated`` before any other connection reads, and
    httptools copies what it keeps."""

    __slots__ = ()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.eng.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        try:  # feed's body, not a call to it: one Python call less per read on the TLS hot path
            self.parser.feed_data(self.eng.read_buffer[:nbytes])
        except httptools.HttpParserError as exc:
            self.unparseable(exc)


class _WatchHeaders:
    """Mixin: answer headers go to the engine's headers hook (``watch_headers``). Only connections of an engine
    with a hook have it, so that otherwise httptools is given no ``on_header`` callback and the hot path costs
    nothing."""

    __slots__ = ()
    hdrs: list[tuple[bytes, bytes]]
    busy: bool
    eng: FastEngine
    parser: httptools.HttpResponseParser

    def on_header(self, name: bytes, value: bytes) -> None:
        self.hdrs.append((name, value))

    def on_headers_complete(self) -> None:
        hdrs, self.hdrs = self.hdrs, []  # type: ignore[misc]  # the slot lives in _Conn
        watch = self.eng._watch
        if watch is not None and self.busy:
            watch.fire(self.parser.get_status_code(), hdrs)


class _WatchConn(_WatchHeaders, _StreamConn):
    __slots__ = ()


class _WatchBufferConn(_WatchHeaders, _BufferConn):
    __slots__ = ()


READ_BUFFER = 256 * 1024  # the shared read buffer (uvloop reads at most this much per call, too)


class FastEngine(CallbackEngine):
    """Lean HTTP/1.1 keep-alive engine (see the module docstring). Constructed by the runner per run."""

    def __init__(self, config: EngineConfig, requests: RequestSet, classify: Classifier,
                 sink: ResultSink) -> None:
        super().__init__(config, requests, classify, sink)
        self.target = parse_target(requests.url, requests.headers)
        self._headers: dict[str, str] = dict(requests.headers)
        self._nbodies = len(requests.bodies)
        self._body = body_getter(requests.bodies)
        self._head = request_head(requests, self.target, self._headers)
        # wires (head + body) are built on first use: a big data set's bodies are encoded as the run reaches them
        self._wires: list[bytes | None] = [None] * self._nbodies
        self._sizes = [0] * self._nbodies  # bytes_out counts bodies, as httpx can; set with the wire
        self._ssl = make_ssl_context(config, ["http/1.1"]) if self.target.tls else None
        self.read_buffer = memoryview(bytearray(READ_BUFFER))  # see _BufferConn
        self._conn_class: type[_Conn] | None = None  # picked when the first connection opens (after watch_headers)
        self._conns: set[_Conn] = set()
        self._idle: list[_Conn] = []
        self._backlog: deque[int] = deque()  # open loop: intended times waiting for a free connection
        self._connecting = 0
        self.kept_inflight = 0  # answer bytes kept by connections still reading (open-loop growth limit)
        self._pool_max = 0  # open loop: most connections (engine.connections when set, else max_in_flight)
        self._avg_in = 0.0  # recent answer size (moving average, open loop only)
        self.peak_connecting = 0  # most connects in progress at once (open loop; tests and diagnostics)

    # -- public ---------------------------------------------------------------------------------------
    def set_headers(self, headers: Mapping[str, str]) -> None:
        """Replace/add headers; the next request on every connection uses the rebuilt bytes."""
        merged = dict(self._headers)
        merged.update(headers)
        self._head = request_head(self.requests, self.target, merged)
        self._wires = [None] * self._nbodies
        self._headers = merged

    def _wire(self, i: int) -> bytes:
        """Build (once per body and header set) the bytes of request ``i``."""
        body = self._body(i)
        w = self._wires[i] = wire(self._head, body)
        self._sizes[i] = len(body)
        return w

    # -- lifecycle (run() is CallbackEngine's) --------------------------------------------------------
    def _prepare_open(self, load: LoadSpec, offsets: Iterator[int]) -> Iterator[int]:
        self._limit = load.max_in_flight or self.config.connections or DEFAULT_OPEN_LIMIT
        self._pool_max = min(self._limit, self.config.connections or self._limit)
        rate, offsets = estimate_rate(offsets)
        self._warm(rate)
        return offsets

    def _start_closed(self, now: int) -> None:
        for _ in range(self._slots_live):
            self._slot_next(None, now, 0)

    def _release(self) -> None:
        self._queued_at_end += len(self._backlog)  # taken on, never written: sent (in the accounting) and abandoned
        self.abandoned += len(self._backlog)
        self._backlog.clear()
        self._connecting = 0
        for conn in list(self._conns):
            if conn.busy:
                conn.busy = False
                self.abandoned += 1
            conn.close()
        self._conns.clear()
        self._idle.clear()
        self._inflight = 0

    def may_issue(self, now: int) -> bool:
        if self._stopping:
            return False
        if now >= self._end_ns or (self._max_requests and self._seq + len(self._backlog) >= self._max_requests):
            self._begin_stop()
            return False
        return True

    def dispatched(self) -> None:
        """End of a pacer batch: every write already went out (nothing buffered here)."""

    # -- sending --------------------------------------------------------------------------------------
    def _assign(self, conn: _Conn, intended: int) -> None:
        """Give ``conn`` the next request; write it now if connected, else when the connection opens."""
        i = self._seq % self._nbodies
        self._seq += 1
        self._inflight += 1
        conn.busy = True
        conn.intended = intended
        conn.rows_in = self._rows[i]
        conn.bytes_in = 0
        conn.idx = i
        if conn.kept:  # (finish and fail already dropped it: this is for an answer cut short some other way)
            conn.drop_body()
        if conn.transport is None:
            conn.pending = True
            return
        w = self._wires[i] or self._wire(i)
        conn.sent = _now()
        conn.transport.write(w)

    def _write_pending(self, conn: _Conn) -> None:
        conn.pending = False
        w = self._wires[conn.idx] or self._wire(conn.idx)
        if not conn.sent:  # (open loop: the send leaves now, late by the connect)
            conn.sent = _now()
        assert conn.transport is not None
        conn.transport.write(w)

    def _new_conn(self, failures: int) -> _Conn:
        cls = self._conn_class
        if cls is None:
            cls = self._conn_class = self._pick_conn_class()
        conn = cls(self, failures)
        self._conns.add(conn)
        assert self._loop is not None
        if self._open:
            self._connecting += 1
            self.peak_connecting = max(self.peak_connecting, self._connecting)
        task = self._loop.create_task(self._connect_counted(conn) if self._open else self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return conn

    def _pick_conn_class(self) -> type[_Conn]:
        # TLS only: over plain TCP a per-read ``bytes`` is cheap for small answers (measured: buffered reads cost
        # ~0.1-0.2 µs/request more there, the memoryview slice and two calls instead of one)
        buffered = self.target.tls
        if self._watch is None:
            return _BufferConn if buffered else _StreamConn
        return _WatchBufferConn if buffered else _WatchConn

    async def _connect_counted(self, conn: _Conn) -> None:
        """Open loop: count the connect against CONNECT_CAP; when it ends, serve the backlog."""
        try:
            await self._connect(conn)
        finally:
            self._connecting -= 1
        if not conn.dead and not conn.busy and self._backlog:
            with contextlib.suppress(ValueError):
                self._idle.remove(conn)  # a warm connection: give it the oldest waiting send
            self._assign(conn, self._backlog.popleft())
        self._grow()

    def _warm(self, rate: float) -> None:
        """Open loop: open the connections the first sends will need before ``start_ns`` (see module doc)."""
        if rate <= 0:
            return
        want = 2 * rate * _WARM_LATENCY_S
        n = min(self._pool_max, CONNECT_CAP, max(1, math.ceil(want) if math.isfinite(want) else CONNECT_CAP))
        for _ in range(n):
            self._idle.append(self._new_conn(0))

    def _may_grow(self) -> bool:
        """Open loop: room for one more connection (``engine.connections``, else ``max_in_flight``), and the loop
        keeps up with the schedule.

        A loop that starts due sends late is busy (e.g. CPU-bound on reading answers), and answers in flight that
        hold (or, at the recent answer size, will hold) GROW_MAX_KEPT bytes arrive faster than the engine takes
        them in: more connections would only hold more answers in memory and hide the harness's limit as target
        latency. Then sends wait for a free
        connection instead, leave late, and the schedule lag flags the run generator-bound.
        """
        if len(self._conns) >= self._pool_max or self._connecting >= CONNECT_CAP:
            return False
        if max(self.kept_inflight, self._inflight * min(self._avg_in, self.max_body)) > GROW_MAX_KEPT:
            return False  # the answers in flight hold (or will hold, at the recent answer size) too much
        pacer = self._pacer
        return pacer is None or pacer.late_ns <= GROW_MAX_LAG_NS

    def _grow(self) -> None:
        """Open loop: open connections for waiting sends, within max_in_flight and CONNECT_CAP."""
        backlog = self._backlog
        while backlog and self._may_grow():
            self._assign(self._new_conn(0), backlog.popleft())

    async def _connect(self, conn: _Conn) -> None:
        assert self._loop is not None
        t = self.target
        started = time.monotonic_ns()
        if conn.failures:  # the target refused us just now: don't spin hot, and don't bill the pause
            await asyncio.sleep(backoff_s(conn.failures))
            if self._stopping:
                conn.dead = True
                self._conns.discard(conn)
                if conn.busy:  # assigned while the slot backed off, never sent: not taken on after all
                    conn.busy = conn.pending = False
                    self._seq -= 1
                    self._inflight -= 1
                    self._check_drained()
                return
            started = conn.intended = time.monotonic_ns()
        self._connects += 1
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                await self._loop.create_connection(lambda: conn, t.host, t.port, ssl=self._ssl,
                                                   server_hostname=t.sni if self._ssl else None)
        except (OSError, TimeoutError, ssl.SSLError, ssl.CertificateError) as exc:
            conn.dead = True
            self._conns.discard(conn)
            if conn.busy:
                if conn.pending and not conn.sent:
                    conn.sent = started
                conn.pending = False
                self.fail(conn, exception_kind(exc, connecting=True), repr(exc) or type(exc).__name__,
                          connect_failed=True)
            return
        if conn.dead:
            return
        conn.failures = 0
        if conn.pending:
            if not self._open:
                # closed loop: the slot began its request when it began connecting; the connect (a TLS handshake
                # can take ms) is the target's time, in the service time, not lateness of the generator's
                conn.sent = started
            self._write_pending(conn)

    # -- completion -----------------------------------------------------------------------------------
    def finish(self, conn: _Conn) -> None:
        """A whole answer arrived: classify, record, and hand the connection on. The hot path."""
        done = _now()
        if not conn.busy:  # an answer nobody asked for
            conn.close()
            return
        status = conn.parser.get_status_code()
        if status < 200:  # an interim answer (103 Early Hints, an unasked-for 100): the final one follows
            return
        conn.busy = False
        kept = conn.kept  # the kept prefix as one bytes (one join per answer), reset for the next answer
        if kept:
            parts = conn.parts
            if parts is None:
                body = conn.body
            else:
                body = b"".join(parts)
                conn.parts = None
            conn.body = b""
            conn.kept = 0
            self.kept_inflight -= kept
        else:
            body = b""
        rows_in = conn.rows_in
        kind, rows_out, server_ns = self.classify(status, body, rows_in)
        self.sink.record(conn.intended, conn.sent, done, kind, status, rows_out if kind == _OK else rows_in,
                         self._sizes[conn.idx], conn.bytes_in, server_ns)
        if kind != _OK:
            self.sink.error_detail(kind, status, body[:ERROR_DETAIL_BYTES])
        self._inflight -= 1
        if not conn.keep:
            conn.close()
            if self._open:
                self._check_drained()
            else:
                self._slot_next(None, done, 0)
            return
        if self._open:
            self._avg_in += (conn.bytes_in - self._avg_in) * 0.125
            if self._backlog:  # the oldest waiting send first (it is already late)
                self._assign(conn, self._backlog.popleft())
                return
            self._idle.append(conn)
            if self._stopping:
                self._check_drained()
                return
            pacer = self._pacer
            if pacer is not None and done >= pacer.eager_ns:
                pacer.run_due(done)  # a send is due and a connection just freed up: send from here
        elif done >= self._fast_end or conn.dead:  # stopping, past the end, a request cap or a gate: _slot_next
            self._slot_next(conn, done, 0)
        else:  # _slot_next's common case, inlined: the slot sends its next request on this connection
            self._assign(conn, done)

    def _check_drained(self) -> None:
        if self._backlog:
            self._grow()
            return
        if self._inflight <= 0 and self._idle_waiter is not None and not self._idle_waiter.done():
            self._idle_waiter.set_result(None)

    def fail(self, conn: _Conn, kind: int, detail: str, connect_failed: bool = False) -> None:
        """Record a request that ended without an answer, then close/replace the connection."""
        if not conn.busy:
            return
        conn.busy = False
        conn.drop_body()
        done = time.monotonic_ns()
        sent = conn.sent or done
        conn.pending = False
        self.sink.record(conn.intended, sent, done, kind, 0, conn.rows_in,
                         0 if connect_failed else self._sizes[conn.idx], conn.bytes_in, 0)
        self.sink.error_detail(kind, 0, detail.encode("utf-8", "replace")[:ERROR_DETAIL_BYTES])
        self._inflight -= 1
        conn.close()
        if self._open:
            self._check_drained()
        else:
            self._slot_next(None, done, conn.failures + 1 if connect_failed else 0)

    def lost(self, conn: _Conn, exc: Exception | None) -> None:
        self._conns.discard(conn)
        if self._open:
            with contextlib.suppress(ValueError):
                self._idle.remove(conn)
        if not conn.busy:
            return
        first = conn.first
        if first is not None:
            if exc is None and first.to_eof:  # a body delimited by the close (see _FirstAnswer): complete now
                conn.keep = False
                self.finish(conn)
                return
        elif self._stale(conn, exc):
            self._resend(conn)
            return
        if exc is not None:
            self.fail(conn, exception_kind(exc, connecting=False), repr(exc))
        elif conn.bytes_in:
            self.fail(conn, _RESET, f"connection closed mid-answer ({conn.bytes_in:,} body bytes received)")
        else:
            self.fail(conn, _RESET, "connection closed before the answer was complete")

    def _stale(self, conn: _Conn, exc: Exception | None) -> bool:
        """``conn`` is a kept-alive connection (it completed an answer) that the server closed (EOF; or EPIPE: a
        reset that came after the server's FIN, i.e. the server had closed first) before any byte of the answer to
        its request arrived: the server closed it as the request went out (RFC 9112 9.3.1 lets a client retry;
        httpcore checks a connection before reusing it, Go's net/http retries). Only then is a request re-sent,
        once (a fresh connection does not qualify). A reset without a close before it (ECONNRESET: the server
        aborted the connection, e.g. a crashed worker or the emulator's ``reset`` fault) is the target's fault and
        stays a ``reset`` error: re-sending it would hide the fault behind a second try."""
        return ((exc is None or isinstance(exc, BrokenPipeError))
                and not conn.pending and not conn.bytes_in and not self._answer_began(conn))

    @staticmethod
    def _answer_began(conn: _Conn) -> bool:
        """Whether any byte of the current answer reached ``conn``'s parser (llhttp keeps no count): a parser
        between answers parses ``_PROBE`` as one whole answer; one that holds part of an answer fails on it or
        takes it as body. The connection is dead: its parser is not used again."""
        busy, conn.busy = conn.busy, False  # the probe's callbacks must not finish or watch the request
        try:
            conn.parser.feed_data(_PROBE)
            whole = conn.parser.get_status_code() == 204  # (204 has no body: not a 204 answer cut short)
        except httptools.HttpParserError:
            whole = False
        conn.busy = busy
        conn.drop_body()
        return not whole

    def _resend(self, old: _Conn) -> None:
        """Write ``old``'s request again on a new connection: still the same request (sent once, recorded once,
        its latency from the same intended time), counted in ``resent``."""
        self.count_resent(RESENT_STALE_CONNECTION)
        old.busy = False
        conn = self._new_conn(0)
        conn.busy = conn.pending = True
        conn.intended, conn.idx, conn.rows_in, conn.bytes_in = old.intended, old.idx, old.rows_in, 0

    def _slot_next(self, conn: _Conn | None, now: int, failures: int, admitted: bool = False) -> None:
        """Closed loop: the slot owning ``conn`` (None = needs a new connection) became free at ``now``."""
        if not self.may_issue(now):
            if conn is not None:
                self._idle.append(conn)
            self._slots_live -= 1
            if self._inflight <= 0:
                self._check_drained()
            return
        if self._gate is not None and not admitted and (self._held or self._holds(now)):
            self._held.append((conn, failures))  # the send gate holds this slot (see gate_sends)
            return
        if conn is None or conn.dead:
            conn = self._new_conn(failures)
        self._assign(conn, now)

    # -- open loop ------------------------------------------------------------------------------------
    def dispatch(self, intended: int, admitted: bool = False) -> None:
        """Open loop: start the request due at ``intended`` on an idle connection or a new one, queue it for the
        next free connection, or drop it when ``max_in_flight`` requests are out or waiting (``admitted``: a
        send the gate held and has now let go)."""
        backlog = self._backlog
        if not admitted:
            if self._inflight + len(backlog) >= self._limit:
                self.sink.dropped(intended)
                return
            if self._gate is not None and self._hold_open(intended):
                return
        if not backlog:
            idle = self._idle
            while idle:
                conn = idle.pop()
                if not conn.dead:
                    self._assign(conn, intended)
                    return
            if self._may_grow():
                self._assign(self._new_conn(0), intended)
                return
        backlog.append(intended)
        if self.config.connections and len(self._conns) >= self._pool_max:
            self.waited_at_cap += 1  # the user's cap, not the loop's own lag, kept it waiting
        if len(backlog) > 1:  # sends wait from an earlier late wake-up: grow for them if the loop caught up
            self._grow()

    def _queued(self) -> int:
        return len(self._backlog)

    def _resume(self, item: Any, now: int) -> None:
        if self._open:
            self.dispatch(item, True)
        else:
            self._slot_next(item[0], now, item[1], True)

    # -- housekeeping ---------------------------------------------------------------------------------
    def sweep(self, now: int) -> None:
        """Read timeouts (one periodic pass instead of a timer per request)."""
        limit = int(self.config.read_timeout_s * 1e9)
        for conn in list(self._conns):
            if conn.busy and not conn.pending and conn.sent and now - conn.sent > limit:
                self.fail(conn, _READ_TIMEOUT, f"no complete answer within {self.config.read_timeout_s:g} s")


# Former private names, kept for code that imported them from here.
_Sweeper = Sweeper
_Dispatcher = Pacer
