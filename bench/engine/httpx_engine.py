"""The httpx engine: HTTP/2 (h2c prior knowledge or TLS+ALPN) and an HTTP/1.1 fallback.

One ``httpx.AsyncClient`` per connection, never one pool shared by many workers: httpcore's pool bookkeeping
grows with the square of the connection count and, shared, inflates measured latency a thousandfold. With
HTTP/2 each client holds one connection and the workers assigned to it multiplex their streams over it.
Slower per request than the lean engine (a coroutine per request), but it covers what that engine does not.
Outcomes map to the same kinds as the lean engine; stream resets are a ``protocol_error``, never fatal.

``engine.timeout`` is a deadline per request (from the send, a connect it makes excluded: that has
``connect_timeout``), not httpx's read timeout. That one bounds each socket read, and over HTTP/2 a read returns
whatever frame of any stream arrives: a stalled stream on a busy connection never timed out (only once the
connection fell silent, or the drain ended it as ``abandoned``), and when it did, httpcore failed every stream
of the connection with it. So over HTTP/2 httpx's read and write timeouts are off and the deadline alone ends a
stream, which is then reset (see ``_reset_dropped_streams``). A limit left: httpcore reads a connection under
one lock, so an answer already read for one stream waits while a stalled stream holds the lock in a read, until
the next frame arrives or the stalled one's deadline: on a quiet connection with stalls, answers come late (and
rarely one reaches its own deadline first). The lean HTTP/2 engine has no such lock.

What a server did not process is written once more, and counted (``count_resent``: run counters): HTTP/2
streams a graceful GOAWAY left unprocessed, and requests past a stream limit the server lowered (httpcore, as
installed, fails both: see ``_graceful_h2`` and ``_StreamCap``). Not over HTTP/1.1 (see ``_resend``): a
request on a reused connection the server closed under it is a ``reset``, as httpx leaves it. ``--http2`` over TLS
offers only h2.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.engine.base import (
    Classifier,
    EngineConfig,
    LoadSpec,
    RequestBuildError,
    RequestSet,
    ResultSink,
    StopSignal,
    check_header,
)
from bench.engine.common import DEFAULT_OPEN_LIMIT, EngineCore, SendGate, backoff_s, wait_drained
from bench.engine.loopmon import LoopMonitor
from bench.engine.tls import make_ssl_context
from bench.failures import httpx_kind  # re-exported: the one exception-to-kind mapping
from bench.headers import host_header, sni_name
from bench.results import ERROR_DETAIL_BYTES, RESENT_GOAWAY, RESENT_REFUSED_STREAM, Kind, body_getter

__all__ = ["HttpxEngine", "httpx_kind"]

_NOT_BUILT = -1  # _one's answer when the request could not be built (not taken on, not recorded)
_CONNECT_KINDS = frozenset({int(Kind.CONNECT_REFUSED), int(Kind.CONNECT_TIMEOUT), int(Kind.TLS_ERROR)})
_READ_TIMEOUT = int(Kind.READ_TIMEOUT)
_RESET = int(Kind.RESET)
_TLS = int(Kind.TLS_ERROR)
_MCS = 0x3  # SETTINGS_MAX_CONCURRENT_STREAMS (h2 is imported only when HTTP/2 is used)
_LOCAL_MAX_STREAMS = 100  # httpcore announces (and caps its streams at) 100


class _Unprocessed(Exception):
    """A request the server retired unprocessed twice (a GOAWAY below its stream each time): one re-send only."""


class _NoH2(Exception):
    """HTTP/2 was asked over TLS and the server's handshake did not choose h2."""


def _stream_refused(exc: Exception) -> bool:
    """The server reset the stream with REFUSED_STREAM (RFC 9113 8.7: not processed)."""
    text = str(exc)
    return (isinstance(exc, httpx.RemoteProtocolError) and "StreamReset" in text
            and ("error_code:7," in text or "REFUSED_STREAM" in text))


class _StreamCap:
    """HTTP/2: the requests of one client (one connection) in flight, capped at the server's current
    SETTINGS_MAX_CONCURRENT_STREAMS, so a request beyond it waits for a stream to end instead of failing.

    httpcore's own cap only follows a limit that rises: when a later SETTINGS lowers it below the streams open, h2
    applies the new limit at once (a request past httpcore's cap then fails with ``Max outbound streams is 1, 1
    open`` before anything is written) while httpcore lowers its semaphore by acquiring slots inside the read lock,
    which waits for streams that need that lock to end (a deadlock until the deadlines). ``_graceful_h2`` keeps
    httpcore out of the lowering; this cap, fed the server's SETTINGS by the trace hook, applies it.
    """

    __slots__ = ("_waiters", "busy", "limit")

    def __init__(self) -> None:
        self.busy = 0
        self.limit = 0  # 0: none known yet (before the first SETTINGS httpcore allows 1 stream)
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def take(self) -> None:
        while self.limit and self.busy >= self.limit:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut in self._waiters:
                    self._waiters.remove(fut)
                elif fut.done() and not fut.cancelled():
                    self._wake()  # woken, then cancelled: the wake goes to the next waiter
                raise
        self.busy += 1

    def give(self) -> None:
        self.busy -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        while self._wake():  # every waiter checks the new limit again
            pass

    def _wake(self) -> bool:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return True
        return False


class _Trace:
    """httpcore trace hook of one request: its deadline stops while the request opens a connection (bounded by
    ``connect_timeout`` instead) and restarts, whole, once the connection is up (TCP, and TLS when there is);
    it counts the request's writes (headers written: a second one is a re-send, at most one), feeds the
    server's MAX_CONCURRENT_STREAMS to the client's ``_StreamCap`` and,
    HTTP/2 over TLS, refuses a handshake that did not choose h2 (httpcore would speak HTTP/1.1 instead)."""

    __slots__ = ("cap", "deadline", "h2_only", "timeout_s", "writes")

    def __init__(self, deadline: asyncio.Timeout, timeout_s: float, cap: _StreamCap | None, h2_only: bool) -> None:
        self.deadline = deadline
        self.timeout_s = timeout_s
        self.cap = cap
        self.h2_only = h2_only
        self.writes = 0

    async def __call__(self, name: str, info: Mapping[str, object]) -> None:
        if name.startswith("connection."):
            if name == "connection.connect_tcp.started":
                self.deadline.reschedule(None)
            elif name in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
                self.deadline.reschedule(asyncio.get_running_loop().time() + self.timeout_s)
                if self.h2_only and name == "connection.start_tls.complete":
                    await _require_h2(info.get("return_value"))
        elif name.endswith(".send_request_headers.started"):
            if self.writes > 1:  # httpcore re-sends a request a GOAWAY left unprocessed: once, not again
                raise _Unprocessed("not processed: the server closed two connections (GOAWAY) before this request")
        elif name.endswith(".send_request_headers.complete"):
            self.writes += 1
        elif self.cap is not None and name == "http2.receive_remote_settings.complete":
            # (a new connection keeps the last limit until its own SETTINGS: httpcore allows it 1 stream till then)
            self.cap.set_limit(_max_streams(info.get("return_value"), self.cap.limit))


async def _require_h2(stream: object) -> None:
    """Raise ``_NoH2`` (closing ``stream``) when its TLS handshake did not choose h2 in ALPN."""
    get_info = getattr(stream, "get_extra_info", None)
    ssl_object = get_info("ssl_object") if get_info is not None else None
    chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
    if chosen == "h2":
        return
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
    raise _NoH2(f"the server did not offer HTTP/2 in ALPN (no application protocol h2; it chose {chosen!r})")


def _keep_alpn(protocols: object) -> None:
    """Stands in for the engine's SSLContext.set_alpn_protocols once the engine set its own protocols."""


def _max_streams(event: object, current: int) -> int:
    """The SETTINGS_MAX_CONCURRENT_STREAMS a RemoteSettingsChanged event sets (at most httpcore's 100), or
    ``current`` when it does not change it."""
    changed = getattr(event, "changed_settings", None)
    setting = changed.get(_MCS) if isinstance(changed, dict) else None
    value = getattr(setting, "new_value", None)
    return min(value, _LOCAL_MAX_STREAMS) if isinstance(value, int) and value > 0 else current


def _reset_dropped_streams() -> None:
    """Make httpcore reset an HTTP/2 stream it lets go of before the answer ended (a request past its deadline).

    httpcore 1.0 only forgets such a stream (encode/httpcore#1022): the h2 state machine still counts it open, so
    after the server's max_concurrent_streams timed-out streams every new request on the connection failed with
    ``Max outbound streams is 100, 100 open``, and the server kept working on them. This resets the stream in h2
    when httpcore closes it (RST_STREAM CANCEL, written with the connection's next frames) -- what
    encode/httpcore#1098 proposes upstream, and what the lean engine does. Applied once per process; a no-op on
    an httpcore that changed these internals (then the engine runs as before).
    """
    try:
        from h2.errors import ErrorCodes
        from h2.exceptions import ProtocolError
        from httpcore._async.http2 import AsyncHTTP2Connection
    except ImportError:  # pragma: no cover - httpx without HTTP/2 support refuses http2=True itself
        return
    original = getattr(AsyncHTTP2Connection, "_response_closed", None)
    if original is None or getattr(original, "_bench_resets", False):
        return

    async def _response_closed(self: AsyncHTTP2Connection, stream_id: int) -> None:
        state = getattr(self, "_h2_state", None)
        stream = state.streams.get(stream_id) if state is not None else None
        if state is not None and stream is not None and not stream.closed:
            with contextlib.suppress(ProtocolError):
                state.reset_stream(stream_id, ErrorCodes.CANCEL)
        await original(self, stream_id)

    _response_closed._bench_resets = True  # type: ignore[attr-defined]
    AsyncHTTP2Connection._response_closed = _response_closed  # type: ignore[method-assign]


def _graceful_h2() -> None:
    """Make httpcore's HTTP/2 connection survive a graceful GOAWAY and a lowered MAX_CONCURRENT_STREAMS.

    A GOAWAY with NO_ERROR (nginx's keepalive_requests, a server draining) says: streams up to last_stream_id
    will be answered, later ones were not processed. h2 4 closes its whole state machine on any GOAWAY, so the
    answers still coming raise ``RECV_HEADERS in state CLOSED`` and a body being written ``SEND_DATA in state
    CLOSED``, and httpcore fails every stream still waiting with ``ConnectionTerminated``: requests the server
    answered were counted as ``protocol_error``. Patched (per connection, for NO_ERROR only): the GOAWAY leaves h2
    open, the connection takes no new request (``is_available``; one about to write its headers goes to a new
    connection, never written), streams up to last_stream_id finish normally, later ones are re-sent on a new
    connection by httpcore's pool (``ConnectionNotAvailable``, as httpcore itself does for them) -- the trace hook
    counts that write as a re-send, at most one -- and the connection closes once its last stream ends. A GOAWAY
    with an error code keeps httpcore's handling: its streams fail, an error. An answer that comes before the
    request body is all written, the stream then closed (nginx's ``return``), is read, not failed with
    ``StreamClosedError`` (RFC 9113 8.1: a client must not discard it). A SETTINGS lowering the stream limit
    no longer makes httpcore acquire its semaphore under the read lock (see ``_StreamCap``). Applied once per
    process; a no-op on an httpcore whose internals differ (then the engine runs as before).
    """
    try:
        from h2.errors import ErrorCodes
        from h2.events import ConnectionTerminated, StreamReset
        from h2.exceptions import StreamClosedError
        from httpcore._async.http2 import AsyncHTTP2Connection
        from httpcore._exceptions import ConnectionNotAvailable
        from hyperframe.frame import GoAwayFrame
    except ImportError:  # pragma: no cover - httpx without HTTP/2 support refuses http2=True itself
        return
    cls = AsyncHTTP2Connection
    names = ("_send_connection_init", "_receive_events", "_send_request_headers", "_response_closed",
             "is_available", "_receive_remote_settings_change", "_send_request_body", "_receive_stream_event",
             "_wait_for_outgoing_flow")
    orig: dict[str, Any] = {name: getattr(cls, name, None) for name in names}
    if any(f is None for f in orig.values()) or getattr(orig["is_available"], "_bench_graceful", False):
        return
    (init, receive_events, send_headers, response_closed, available, settings_change, send_body,
     receive_stream_event, _) = orig.values()

    def goaway_of(conn: AsyncHTTP2Connection) -> ConnectionTerminated | None:
        return getattr(conn, "_bench_goaway", None)

    def beyond(conn: AsyncHTTP2Connection, stream_id: int | None) -> bool:
        goaway = goaway_of(conn)
        return goaway is not None and stream_id is not None and stream_id > (goaway.last_stream_id or 0)

    def unprocessed(conn: AsyncHTTP2Connection) -> ConnectionNotAvailable:
        conn._request_count -= 1
        return ConnectionNotAvailable()

    async def _send_connection_init(self: AsyncHTTP2Connection, request: Any) -> None:
        await init(self, request)
        table = getattr(self._h2_state, "_frame_dispatch_table", None)
        if not isinstance(table, dict) or GoAwayFrame not in table:
            return
        receive_goaway = table[GoAwayFrame]

        def graceful(frame: GoAwayFrame) -> tuple[list[Any], list[Any]]:
            if frame.error_code != 0:
                return receive_goaway(frame)  # type: ignore[no-any-return]
            event = goaway_of(self)
            if event is None:
                event = ConnectionTerminated()
                event.error_code, event.last_stream_id = ErrorCodes.NO_ERROR, frame.last_stream_id
                self._bench_goaway = event  # type: ignore[attr-defined]
            else:  # a second GOAWAY (a two-step shutdown) can only lower it
                event.last_stream_id = min(event.last_stream_id or 0, frame.last_stream_id)
            for sid, queue in self._events.items():  # a stream waiting beyond it wakes (to be re-sent), not reads
                if sid > event.last_stream_id and not any(isinstance(e, StreamReset) for e in queue):
                    queue.append(_refused(StreamReset, sid))
            return [], []

        table[GoAwayFrame] = graceful

    async def _receive_events(self: AsyncHTTP2Connection, request: Any, stream_id: int | None = None) -> None:
        if beyond(self, stream_id):
            raise unprocessed(self)
        try:
            await receive_events(self, request, stream_id)
        except Exception:
            if beyond(self, stream_id):  # e.g. the server's close after its last answer, read by this stream
                raise unprocessed(self) from None
            raise

    async def _send_request_body(self: AsyncHTTP2Connection, request: Any, stream_id: int) -> None:
        try:
            await send_body(self, request, stream_id)
        except StreamClosedError:
            if self._events.get(stream_id):  # answered (or reset) before the whole body went out (RFC 9113 8.1):
                return  # read the answer (or the reset) instead of failing an answered request
            if beyond(self, stream_id):
                raise unprocessed(self) from None
            raise
        except Exception:  # e.g. the server reset the stream beyond its GOAWAY while the body went out
            if beyond(self, stream_id):
                raise unprocessed(self) from None
            raise

    async def _wait_for_outgoing_flow(self: AsyncHTTP2Connection, request: Any, stream_id: int) -> int:
        # httpcore's waits reading for any stream: an answer another stream's read took in (the server answered
        # before reading the body, its window shut) left this one reading on, until its deadline
        while True:
            if self._events.get(stream_id):
                raise StreamClosedError(stream_id)  # an answer or a reset came: stop sending (_send_request_body)
            flow = min(self._h2_state.local_flow_control_window(stream_id), self._h2_state.max_outbound_frame_size)
            if flow:
                return int(flow)
            await self._receive_events(request, stream_id)

    async def _receive_stream_event(self: AsyncHTTP2Connection, request: Any, stream_id: int) -> Any:
        try:
            return await receive_stream_event(self, request, stream_id)
        except Exception:
            if beyond(self, stream_id):
                raise unprocessed(self) from None
            raise

    async def _send_request_headers(self: AsyncHTTP2Connection, request: Any, stream_id: int) -> None:
        if goaway_of(self) is not None:
            raise unprocessed(self)  # not written: the pool sends it on a new connection
        await send_headers(self, request, stream_id)

    async def _response_closed(self: AsyncHTTP2Connection, stream_id: int) -> None:
        await response_closed(self, stream_id)
        if goaway_of(self) is not None and not self._events and not self.is_closed():
            await self.aclose()

    def is_available(self: AsyncHTTP2Connection) -> bool:
        return bool(available(self)) and goaway_of(self) is None

    async def _receive_remote_settings_change(self: AsyncHTTP2Connection, event: Any) -> None:
        if _max_streams(event, self._max_streams) < self._max_streams:
            return  # lowered: the engine's _StreamCap applies it (httpcore's acquire here deadlocks the reader)
        await settings_change(self, event)

    is_available._bench_graceful = True  # type: ignore[attr-defined]
    cls._send_connection_init = _send_connection_init  # type: ignore[method-assign]
    cls._receive_events = _receive_events  # type: ignore[method-assign]
    cls._send_request_headers = _send_request_headers  # type: ignore[method-assign]
    cls._response_closed = _response_closed  # type: ignore[method-assign]
    cls.is_available = is_available  # type: ignore[method-assign]
    cls._receive_remote_settings_change = _receive_remote_settings_change  # type: ignore[method-assign]
    cls._send_request_body = _send_request_body  # type: ignore[method-assign]
    cls._receive_stream_event = _receive_stream_event  # type: ignore[method-assign]
    cls._wait_for_outgoing_flow = _wait_for_outgoing_flow  # type: ignore[method-assign]


def _refused(cls: Any, stream_id: int) -> Any:
    """An h2 StreamReset(REFUSED_STREAM) event for ``stream_id`` (h2 4.2+ takes keyword arguments, older none)."""
    try:
        return cls(stream_id=stream_id, error_code=7, remote_reset=True)
    except TypeError:  # pragma: no cover - an older h2
        event = cls()
        event.stream_id, event.error_code, event.remote_reset = stream_id, 7, True
        return event


class HttpxEngine(EngineCore):
    """See the module docstring. Constructed as ``HttpxEngine(config, requests, classify, sink)``."""

    def __init__(self, config: EngineConfig, requests: RequestSet, classify: Classifier,
                 sink: ResultSink) -> None:
        super().__init__(config, requests, classify, sink)
        parts = urlsplit(requests.url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme: {requests.url!r}")
        self._tls = parts.scheme == "https"
        self._url = httpx.URL(requests.url)
        self._method = requests.method.upper()
        self._body = body_getter(requests.bodies)  # a LazyBodies encodes each body when the run first reaches it
        self._nbodies = len(requests.bodies)
        self._headers = self._clean(requests.headers)  # a Host in them is httpx's Host and HTTP/2 :authority ...
        host = host_header(self._headers)
        self._sni = sni_name(host) if host and self._tls else None  # ... and the TLS server name (see fast.Target)
        self._clients: list[httpx.AsyncClient] = []
        self._waiting: deque[int] = deque()  # HTTP/1.1 open loop: intended times waiting for a free connection
        # one context for all clients: httpx would load the CA store per client (tens of ms each)
        # HTTP/2 asked: h2 only, as the lean engine -- a server without it refuses the handshake ("no application
        # protocol") instead of the run silently measuring HTTP/1.1 under a report that says http2
        self._ssl = make_ssl_context(config, ["h2"] if config.http2 else ["http/1.1"])
        # httpcore sets ["http/1.1", "h2"] on the context at every connect: keep ours
        self._ssl.set_alpn_protocols = _keep_alpn  # type: ignore[method-assign,assignment]
        self._caps: dict[httpx.AsyncClient, _StreamCap] = {}  # HTTP/2: each client's streams in flight
        self._gate: SendGate | None = None
        self._gate_wake: asyncio.Event | None = None  # set by the gate's wake (and at the stop)
        self._fatal: RequestBuildError | None = None  # a request could not be built: the run ends with it
        self._timeout_s = config.read_timeout_s
        self._timeout_detail = f"no complete answer within {config.read_timeout_s:g} s".encode()
        if config.http2:
            _reset_dropped_streams()
            _graceful_h2()

    @staticmethod
    def _clean(headers: Mapping[str, str]) -> dict[str, str]:
        """The headers as sent; one the engine sets itself (Content-Length, …) raises RequestBuildError."""
        for name, value in headers.items():
            check_header(name, value)
        return dict(headers)

    def set_headers(self, headers: Mapping[str, str]) -> None:
        merged = dict(self._headers)
        merged.update(self._clean(headers))
        self._headers = merged  # swapped atomically; the next request picks it up

    def _client(self) -> httpx.AsyncClient:
        cfg = self.config
        io_s = None if cfg.http2 else cfg.read_timeout_s  # HTTP/2: the per-request deadline only (module doc)
        client = httpx.AsyncClient(
            http1=not cfg.http2, http2=cfg.http2, verify=self._ssl,
            timeout=httpx.Timeout(connect=cfg.connect_timeout_s, read=io_s, write=io_s, pool=None),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=None),
            trust_env=False, follow_redirects=False)
        self._clients.append(client)
        if cfg.http2:
            self._caps[client] = _StreamCap()
        return client

    # -- send gate (a client-side rate limit, e.g. UbiOps backoff): CallbackEngine.gate_sends' contract ----------
    def gate_sends(self, gate: SendGate | None) -> Callable[[], None]:
        """Before ``run``: the send gate, with ``CallbackEngine.gate_sends``' contract (a held slot waits, held
        open-loop sends wait in order and leave late, what is still held at the end is dropped). Returns ``wake``."""
        if self._started:
            raise RuntimeError("gate_sends must be called before run()")
        self._gate = gate
        return self._wake

    def _wake(self) -> None:
        if self._gate_wake is not None:
            self._gate_wake.set()

    async def _gate_hold(self, wait_ns: int) -> None:
        """Wait ``wait_ns`` (at most until the run's end), or less when woken."""
        assert self._gate_wake is not None
        timeout = min(wait_ns, max(0, self._end_ns - time.monotonic_ns())) / 1e9
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gate_wake.wait(), timeout)

    def _ask_gate(self) -> int:
        """0: the gate admitted a send now; else ns to hold it. Clears the wake first: a wake after this ask
        is for the next one (the loop runs nothing between the two)."""
        assert self._gate is not None and self._gate_wake is not None
        self._gate_wake.clear()
        return self._gate(time.monotonic_ns(), self._inflight)

    async def _admitted(self) -> bool:
        """Closed loop with a gate: wait until it lets this slot's send go; False when the run stopped issuing."""
        while self._may_issue(time.monotonic_ns()):
            wait = self._ask_gate()
            if wait <= 0:
                return True
            await self._gate_hold(wait)
        return False

    def _may_issue(self, now: int) -> bool:
        if self._stopping:
            return False
        if now >= self._end_ns or (self._max_requests and self._seq + len(self._waiting) >= self._max_requests):
            self._stopping = True
            return False
        return True

    @property
    def connections_opened(self) -> None:
        return None  # httpx opens them inside its clients: not counted

    async def run(self, load: LoadSpec, stop: StopSignal) -> None:
        loop = asyncio.get_running_loop()
        self._started = True
        self._end_ns = load.end_ns
        self._max_requests = load.max_requests
        monitor = LoopMonitor(self.sink.loop_lag)
        monitor.start()
        if self._gate is not None:
            self._gate_wake = asyncio.Event()
        stop_task = loop.create_task(stop.wait())
        issuing_done: asyncio.Future[None] = loop.create_future()

        def on_stop(_t: object) -> None:
            self._stopping = True
            self._wake()  # held sends and slots see the stop now
            if not issuing_done.done():
                issuing_done.set_result(None)

        stop_task.add_done_callback(on_stop)
        # closed loop: the deadline stops issuing even while every worker waits on an answer (a stalled server);
        # the drain then bounds the wait and what is still out is abandoned -- the run ends by end + drain. (The
        # open loop's dispatcher stops at the deadline by itself.)
        end_timer = loop.call_later(max(0.0, (load.end_ns - time.monotonic_ns()) / 1e9), on_stop,
                                    None) if load.mode == "closed" else None
        tasks: set[asyncio.Task[None]] = set()
        try:
            delay = (load.start_ns - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            if load.mode == "open":
                if load.offsets_ns is None:
                    raise ValueError("open loop needs LoadSpec.offsets_ns")
                dispatcher = loop.create_task(self._open(load, tasks))
                await asyncio.wait([dispatcher, issuing_done], return_when=asyncio.FIRST_COMPLETED)
                self._stopping = True
                dispatcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await dispatcher
            else:
                n = max(1, load.concurrency)
                conns = n if not self.config.http2 else max(1, min(n, self.config.connections or 1))
                clients = [self._client() for _ in range(conns)]
                for i in range(n):
                    t = loop.create_task(self._worker(clients[i % conns]))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                # a worker only ends once issuing has stopped (end_ns / max_requests); then drain the rest
                await asyncio.wait([*tasks, issuing_done], return_when=asyncio.FIRST_COMPLETED)
                self._stopping = True
            await wait_drained(list(tasks), load.drain_s, load.drain_cut)
        finally:
            for t in list(tasks):
                t.cancel()
            if tasks:
                await asyncio.wait(list(tasks))
            self._queued_at_end += len(self._waiting)  # taken on, never sent: sent (in the accounting), abandoned
            self.abandoned += len(self._waiting)
            self._waiting.clear()
            if end_timer is not None:
                end_timer.cancel()
            monitor.stop()
            stop_task.cancel()
            for client in self._clients:
                with contextlib.suppress(Exception):
                    await client.aclose()
            self._clients.clear()
        if self._fatal is not None:
            raise self._fatal

    async def _worker(self, client: httpx.AsyncClient) -> None:
        """Closed loop: one slot; the next request goes as soon as the previous answer is in."""
        intended = time.monotonic_ns()
        failures = 0
        while self._may_issue(intended):
            if self._gate is not None and not await self._admitted():
                return
            kind = await self._one(client, intended)
            if kind == _NOT_BUILT:
                return
            if kind in _CONNECT_KINDS:  # target down: back off instead of spinning, don't bill the pause
                failures += 1
                await asyncio.sleep(backoff_s(failures))
            else:
                failures = 0
            intended = time.monotonic_ns()

    async def _open(self, load: LoadSpec, tasks: set[asyncio.Task[None]]) -> None:
        assert load.offsets_ns is not None
        limit = load.max_in_flight or DEFAULT_OPEN_LIMIT
        loop = asyncio.get_running_loop()
        h2 = self.config.http2
        # HTTP/2: the connections the streams share; HTTP/1.1: one connection per request out, at most
        # engine.connections when set (then sends wait for a free one, in order, as the lean engine's do)
        n_clients = max(1, self.config.connections or 1) if h2 else min(limit, self.config.connections or limit)
        waiting = self._waiting
        idle: list[httpx.AsyncClient] = []
        held: deque[int] = deque()  # with a gate: intended times of due sends it holds, oldest first
        rr = 0

        def send(intended: int) -> None:
            nonlocal rr
            if h2:
                if len(self._clients) < n_clients:
                    client = self._client()
                else:
                    client = self._clients[rr % n_clients]
                    rr += 1
            elif idle:
                client = idle.pop()
            elif len(self._clients) < n_clients:
                client = self._client()
            else:
                waiting.append(intended)  # the next connection to come free sends it (_open_one)
                self.waited_at_cap += 1
                return
            t = loop.create_task(self._open_one(client, intended, idle, h2))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

        async def release_until(deadline_ns: int) -> None:
            """Let held sends go while the gate admits them, until ``deadline_ns`` (the next send's time)."""
            while held and not self._stopping:
                wait = self._ask_gate()
                if wait <= 0:
                    send(held.popleft())
                    continue
                left = deadline_ns - time.monotonic_ns()
                if left <= 0:
                    return
                await self._gate_hold(min(wait, left))

        try:
            for off in load.offsets_ns:
                intended = load.start_ns + off
                if not self._may_issue(intended):
                    break
                if held:
                    await release_until(intended)
                wait = (intended - time.monotonic_ns()) / 1e9
                if wait > 0:
                    await asyncio.sleep(wait)
                if self._stopping:
                    break
                if self._inflight + len(held) + len(waiting) >= limit:  # (held: 0 without a gate)
                    self.sink.dropped(intended)
                elif self._gate is not None and (held or self._ask_gate() > 0):
                    held.append(intended)  # behind those already held, or the gate holds it
                else:
                    send(intended)
            await release_until(self._end_ns)  # the schedule is over: what is held may still go until the end
        finally:
            for intended in held:  # still held when issuing stopped: never sent
                self.sink.dropped(intended)

    async def _open_one(self, client: httpx.AsyncClient, intended: int, idle: list[httpx.AsyncClient],
                        h2: bool) -> None:
        await self._one(client, intended)
        while self._waiting and not h2 and self._fatal is None:  # the oldest waiting first: it is already late
            await self._one(client, self._waiting.popleft())
        if not h2:
            idle.append(client)

    async def _one(self, client: httpx.AsyncClient, intended: int) -> int:
        """Send one request and record it; returns its kind (_NOT_BUILT: the run ends, see ``_fatal``).
        Cancelled = abandoned (not recorded)."""
        i = self._seq % self._nbodies
        body_out = self._body(i)
        try:
            request = client.build_request(self._method, self._url, content=body_out, headers=self._headers)
        except Exception as exc:  # the same for every request: end the run (see RequestBuildError), don't count
            self._fatal = RequestBuildError(f"cannot build the request: {type(exc).__name__}")
            self._stopping = True
            self._wake()
            return _NOT_BUILT
        self._seq += 1
        self._inflight += 1
        rows_in = self._rows[i]
        limit = self.max_body
        deadline = asyncio.timeout(self._timeout_s)
        cap = self._caps.get(client) if self._caps else None
        trace = _Trace(deadline, self._timeout_s, cap, self._tls and self.config.http2)
        request.extensions["trace"] = trace
        if self._sni is not None:
            request.extensions["sni_hostname"] = self._sni
        sent = time.monotonic_ns()
        held = False
        why = RESENT_GOAWAY  # a second write's reason, unless the server refused the stream
        try:
            async with deadline:
                if cap is not None:
                    await cap.take()
                    held = True
                try:
                    response = await client.send(request, stream=True)
                except (httpx.TransportError, httpx.LocalProtocolError) as exc:
                    if trace.writes > 1 or not self._resend(exc):
                        raise
                    if _stream_refused(exc):
                        why = RESENT_REFUSED_STREAM
                    if cap is not None:  # e.g. past a lowered stream limit: wait for a stream like the others
                        cap.give()
                        held = False
                        await cap.take()
                        held = True
                    response = await client.send(request, stream=True)
                watch = self._watch
                if watch is not None:
                    watch.fire(response.status_code, response.headers.raw)
                try:
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_raw():
                        if size < limit:
                            chunks.append(chunk[: limit - size])
                        size += len(chunk)
                    body = b"".join(chunks)
                    bytes_in = response.num_bytes_downloaded
                finally:
                    await response.aclose()
            done = time.monotonic_ns()
            status = response.status_code
            kind, rows_out, server_ns = self.classify(status, body, rows_in)
            self.sink.record(intended, sent, done, kind, status, rows_out if kind == 0 else rows_in,
                             len(body_out), bytes_in, server_ns)
            if kind != 0:
                self.sink.error_detail(kind, status, body[:ERROR_DETAIL_BYTES])
            return kind
        except asyncio.CancelledError:
            self.abandoned += 1
            raise
        except Exception as exc:  # any failure: a counted kind, never a lost request
            done = time.monotonic_ns()
            if deadline.expired():
                kind = _READ_TIMEOUT
                detail = self._timeout_detail
            else:
                kind = _RESET if isinstance(exc, _Unprocessed) else _TLS if isinstance(exc, _NoH2) else httpx_kind(exc)
                detail = (repr(exc) or type(exc).__name__).encode("utf-8", "replace")
            self.sink.record(intended, sent, done, kind, 0, rows_in,
                             0 if kind in _CONNECT_KINDS or not trace.writes else len(body_out), 0, 0)
            self.sink.error_detail(kind, 0, detail[:ERROR_DETAIL_BYTES])
            return kind
        finally:
            self._inflight -= 1
            if held:
                assert cap is not None
                cap.give()
            if trace.writes > 1:  # (httpcore's pool re-sends what a graceful GOAWAY left unprocessed: _graceful_h2)
                self.count_resent(why, trace.writes - 1)

    def _resend(self, exc: Exception) -> bool:
        """Whether a request that failed before its answer began was surely not processed, so it is written once
        more (counted by ``count_resent`` when it had been written). HTTP/2 only: the client's own state machine
        refused it (``LocalProtocolError``: past the server's stream limit, or the connection already shut down):
        nothing complete reached the server; or the server refused the stream (REFUSED_STREAM, RFC 9113 8.7).
        (Streams a graceful GOAWAY left unprocessed are re-sent by httpcore's pool: ``_graceful_h2``.)

        Not HTTP/1.1: a request on a reused connection that ended with no answer byte is the keep-alive race
        (the server's idle timeout closed it as the request went out) or a server that read the request and
        dropped the connection, and httpcore reports both, a clean close and a TCP reset alike, as ``Server
        disconnected without sending a response``: re-sending would hide a server's real failures (the
        emulator's ``reset`` fault), so it is a ``reset`` (docs/exit-codes.md)."""
        if not self.config.http2:
            return False
        if _stream_refused(exc):  # RST_STREAM(REFUSED_STREAM): "not processed"
            return True
        text = str(exc)
        return isinstance(exc, httpx.LocalProtocolError) and (
            "Max outbound streams" in text or "ConnectionInputs.SEND_" in text)
