"""The httpx engine against servers that retire connections or limit streams, as real servers do.

Each server here counts what it received and what it answered, and each test compares bench's accounting with
those counts: a graceful HTTP/2 GOAWAY (nginx's keepalive_requests) and a SETTINGS lowering the stream limit used
to turn answered and never-sent requests into ``protocol_error``; an HTTP/1.1 server closing a kept-alive
connection as the next request arrived turned it into ``reset``; ``--http2`` over TLS ran HTTP/1.1 against a
server without h2 under a report saying http2; and every certificate failure was blamed on the trust store.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest
import trustme
from engine_servers import FakeSink, Stop, closed
from hyperframe.frame import GoAwayFrame

from bench.engine.base import EngineConfig, PreparedBody, RequestSet
from bench.engine.httpx_engine import HttpxEngine
from bench.results import Kind

ROOT = Path(__file__).resolve().parents[2]
ANSWER = b'{"ok": true}'


# -- an h2c server that counts -----------------------------------------------------------------------------------
class CountingH2:
    """h2c server. ``goaway_after``: after N answers on a connection, GOAWAY(last = highest stream it took on,
    ``goaway_code``), answer the streams up to it, leave later ones unprocessed, then close. ``lower_to``: a second
    SETTINGS frame lowers MAX_CONCURRENT_STREAMS to it (the first one says h2's default 100); ``peak`` is the most
    streams open at once after the client acknowledged it. ``early``: answer each request as its headers arrive
    and reset the stream (NO_ERROR) without reading the body, as nginx's ``return 200`` does. ``refuse_first``:
    refuse the first N streams (RST_STREAM REFUSED_STREAM: not processed, counted in ``refused``)."""

    def __init__(self, goaway_after: int = 0, goaway_code: int = 0, lower_to: int = 0, early: bool = False,
                 refuse_first: int = 0) -> None:
        self.goaway_after, self.goaway_code, self.lower_to, self.early = goaway_after, goaway_code, lower_to, early
        self.refuse_first, self.refused = refuse_first, 0
        self.connections = self.received = self.answered = self.unprocessed = self.violations = self.peak = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[_H2Conn] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _H2Conn(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for c in list(self._conns):
                c.transport.abort()
            await self._server.wait_closed()
            self._server = None


class _H2Conn(asyncio.Protocol):
    def __init__(self, srv: CountingH2) -> None:
        self.srv = srv
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.transport: asyncio.Transport
        self.pending: set[int] = set()
        self.answered = self.last = self.max_sid = 0
        self.acked = not srv.lower_to
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.srv.connections += 1
        self.srv._conns.add(self)
        self.h2.initiate_connection()
        if self.srv.lower_to:
            self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.srv.lower_to})
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.srv._conns.discard(self)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.transport.is_closing() and not self.eof:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:  # e.g. more streams than it allowed
            self.srv.violations += 1
            self.transport.abort()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived) and ev.stream_id:
                self.srv.received += 1
                if self.srv.received <= self.srv.refuse_first:
                    self.srv.refused += 1
                    self.h2.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                    continue
                if self.last:
                    self.srv.unprocessed += 1  # above the GOAWAY's last_stream_id
                    continue
                self.pending.add(ev.stream_id)
                self.max_sid = ev.stream_id
                if self.acked:
                    self.srv.peak = max(self.srv.peak, len(self.pending))
                if self.srv.early:
                    self.answer(ev.stream_id)
                    self.h2.reset_stream(ev.stream_id, h2.errors.ErrorCodes.NO_ERROR)
            elif isinstance(ev, h2.events.RemoteSettingsChanged | h2.events.SettingsAcknowledged):
                self.acked = self.acked or isinstance(ev, h2.events.SettingsAcknowledged)
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id and ev.flow_controlled_length:
                if self.srv.early:  # the connection's window only: the stream's stays shut, its body unread
                    self.h2.increment_flow_control_window(ev.flow_controlled_length)
                    continue
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in self.pending:
                self.answer(ev.stream_id or 0)
        self.flush()

    def answer(self, sid: int) -> None:
        self.pending.discard(sid)
        self.h2.send_headers(sid, [(":status", "200"), ("content-length", str(len(ANSWER)))])
        self.h2.send_data(sid, ANSWER, end_stream=True)
        self.answered += 1
        self.srv.answered += 1
        self.flush()
        if self.srv.goaway_after and not self.last and self.answered >= self.srv.goaway_after:
            self.last = self.max_sid  # written around h2, which would refuse to answer anything after its GOAWAY
            for s in [s for s in self.pending if s > self.last]:
                self.pending.discard(s)
                self.srv.unprocessed += 1
            frame = GoAwayFrame(0)
            frame.last_stream_id, frame.error_code = self.last, self.srv.goaway_code
            self.transport.write(frame.serialize())
        if self.last and not self.pending and self.transport.can_write_eof():
            self.eof = True  # half-close: a full close with unread streams would reset the answers just written
            self.transport.write_eof()


# -- an HTTP/1.1 server that closes a kept-alive connection as the next request arrives --------------------------
class StaleCloser:
    """Answers the first request of each connection (keep-alive, no ``Connection: close``); a later request on it
    is read and dropped unanswered with the connection: closed (FIN), or ``reset`` (TCP RST). ``ssl_ctx``: serve
    TLS."""

    def __init__(self, ssl_ctx: ssl.SSLContext | None = None, reset: bool = False) -> None:
        self.ssl_ctx, self.reset = ssl_ctx, reset
        self.connections = self.received = self.answered = self.dropped = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_ctx)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        on_conn = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.received += 1
                on_conn += 1
                if on_conn > 1:  # read in full (else the close would be a TCP reset), never processed
                    self.dropped += 1
                    if self.reset:
                        writer.transport.abort()
                    return
                self.answered += 1  # (counted as written: the test may stop the server before drain returns)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(ANSWER), ANSWER))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


class _Server(Protocol):
    port: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def url(srv: _Server) -> str:
    return f"http://127.0.0.1:{srv.port}/infer"


@contextlib.asynccontextmanager
async def serving(srv: _Server) -> AsyncIterator[_Server]:
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@contextlib.contextmanager
def in_thread(srv: _Server) -> Iterator[_Server]:
    """``srv`` on its own event loop in a thread, for tests that run the bench CLI (a blocking subprocess)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    done: asyncio.Event | None = None
    failed: list[BaseException] = []

    async def main() -> None:
        nonlocal done
        done = asyncio.Event()
        try:
            await srv.start()
        except BaseException as exc:
            failed.append(exc)
            ready.set()
            raise
        ready.set()
        try:
            await done.wait()
        finally:
            await srv.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(10), "the server did not start"
        if failed:
            raise failed[0]
        yield srv
    finally:
        if done is not None:
            loop.call_soon_threadsafe(done.set)
        thread.join(10)
        loop.close()


# -- the engine alone ---------------------------------------------------------------------------------------------
def ok_if_200(status: int, body: bytes, rows_in: int) -> tuple[int, int, int]:
    return (int(Kind.OK) if status == 200 and body == ANSWER else int(Kind.HTTP_ERROR)), rows_in, 0


async def run_engine(target: str, n: int, concurrency: int, body: bytes = b'{"x": 1}',
                     **cfg: Any) -> tuple[HttpxEngine, dict[int, int], list[bytes]]:
    """``n`` requests in a closed loop; the engine, its outcomes by kind, and its error details."""
    sink = FakeSink()
    requests = RequestSet(target, "POST", {"Content-Type": "application/json"}, [PreparedBody(body, 1)])
    eng = HttpxEngine(EngineConfig(read_timeout_s=10.0, **cfg), requests, ok_if_200, sink)
    await asyncio.wait_for(eng.run(closed(concurrency, max_requests=n, seconds=30), Stop()), 60)
    return eng, dict(sink.kinds()), [d[2] for d in sink.details]


@pytest.mark.anyio
async def test_graceful_goaway_loses_no_answer_and_resends_the_unprocessed_once() -> None:
    """nginx's keepalive_requests: GOAWAY(NO_ERROR) after N answers. Every request the server answered is ok, the
    streams it left unprocessed went out once more on a new connection, and bench counts exactly those."""
    async with serving(CountingH2(goaway_after=20)) as srv:
        eng, kinds, details = await run_engine(url(srv), 240, 8, http2=True, connections=1)
    assert isinstance(srv, CountingH2)
    assert kinds == {Kind.OK: 240}, details[:3]
    assert srv.answered == 240 and srv.connections >= 240 // 28
    assert srv.unprocessed > 0, "streams arrived after the GOAWAY"
    assert eng.resent == {"resent_goaway": srv.unprocessed} and srv.received == eng.sent + srv.unprocessed
    assert eng.abandoned == 0


@pytest.mark.anyio
async def test_goaway_with_an_error_code_stays_an_error_and_the_counts_hold() -> None:
    async with serving(CountingH2(goaway_after=20, goaway_code=2)) as srv:  # INTERNAL_ERROR
        eng, kinds, _ = await run_engine(url(srv), 120, 8, http2=True, connections=1)
    assert isinstance(srv, CountingH2)
    errors = sum(n for k, n in kinds.items() if k != Kind.OK)
    assert errors > 0 and Kind.HTTP_ERROR not in kinds
    assert sum(kinds.values()) == eng.sent == 120
    assert srv.received == eng.sent + sum(eng.resent.values())  # every write bench made is one the server saw


@pytest.mark.anyio
async def test_a_lowered_stream_limit_is_waited_for_not_a_protocol_error() -> None:
    """A second SETTINGS lowers MAX_CONCURRENT_STREAMS to 1 while 8 workers share the connection: httpcore
    failed the streams past it (``Max outbound streams is 1, 1 open``) and deadlocked lowering its own cap."""
    async with serving(CountingH2(lower_to=1)) as srv:
        eng, kinds, details = await run_engine(url(srv), 150, 8, http2=True, connections=1)
    assert isinstance(srv, CountingH2)
    assert kinds == {Kind.OK: 150}, details[:3]
    assert srv.received == srv.answered == 150 and srv.violations == 0
    assert srv.peak == 1 and eng.resent == {}


@pytest.mark.anyio
async def test_a_lowered_stream_limit_and_goaways_together() -> None:
    async with serving(CountingH2(lower_to=2, goaway_after=15)) as srv:
        eng, kinds, details = await run_engine(url(srv), 150, 8, http2=True, connections=1)
    assert isinstance(srv, CountingH2)
    assert kinds == {Kind.OK: 150}, details[:3]
    assert srv.answered == 150 and srv.received == 150 + sum(eng.resent.values()) and srv.peak <= 2


@pytest.mark.anyio
async def test_refused_streams_are_resent_once_and_counted() -> None:
    """RST_STREAM(REFUSED_STREAM) says the stream was not processed (RFC 9113 8.7): re-sent once, counted (3
    refused of 4 opened at once: the re-sends come after them, and are not refused again)."""
    async with serving(CountingH2(refuse_first=3)) as srv:
        eng, kinds, details = await run_engine(url(srv), 100, 4, http2=True, connections=1)
    assert isinstance(srv, CountingH2)
    assert kinds == {Kind.OK: 100}, details[:3]
    assert eng.resent == {"resent_refused_stream": srv.refused} and srv.refused == 3
    assert srv.received == eng.sent + 3


@pytest.mark.anyio
async def test_an_answer_before_the_whole_body_is_read_not_a_protocol_error() -> None:
    """The server answers at the headers and resets the stream (NO_ERROR) while the body (larger than the flow
    window it never opens) is still going out: httpcore failed the answered request (``StreamClosedError``)."""
    async with serving(CountingH2(early=True)) as srv:
        eng, kinds, details = await run_engine(url(srv), 20, 2, body=b"x" * 200_000, http2=True, connections=1)
    assert isinstance(srv, CountingH2)
    assert kinds == {Kind.OK: 20}, details[:3]
    assert srv.received == srv.answered == 20 and eng.resent == {}


@pytest.mark.anyio
@pytest.mark.parametrize("reset", [False, True])
async def test_http1_a_reused_connection_closed_under_the_request_is_a_reset_never_resent(reset: bool) -> None:
    """The keep-alive race's shape: the server drops a kept-alive connection under the next request, with a
    clean close or a TCP reset. httpx does not retry it and httpcore reports both alike, so bench cannot tell the
    race from a server that read the request and failed it: a counted ``reset``, never re-sent (hiding the
    emulator's ``reset`` fault); the server's count equals bench's ``sent``."""
    async with serving(StaleCloser(reset=reset)) as srv:
        eng, kinds, _ = await run_engine(url(srv), 40, 2)
    assert isinstance(srv, StaleCloser)
    assert kinds.get(Kind.RESET, 0) == srv.dropped > 0 and kinds[Kind.OK] == srv.answered
    assert eng.resent == {} and srv.received == eng.sent == 40


# -- through the CLI ----------------------------------------------------------------------------------------------
def bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    body = tmp_path / "b.json"
    body.write_text('{"x": 1}')
    return subprocess.run([sys.executable, "-m", "bench", "run", "--body", str(body), "--warmup", "0s", *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.slow  # a real bench process: seconds
def test_cli_graceful_goaway_counts_match_the_server_and_resends_are_shown(tmp_path: Path) -> None:
    out = tmp_path / "r.arrow"
    with in_thread(CountingH2(goaway_after=20)) as srv:
        proc = bench(tmp_path, "--url", f"http://127.0.0.1:{srv.port}/infer", "--http2", "--engine", "httpx",
                     "--connections", "1", "-c", "8", "-n", "200", "-d", "30s", "--json", "--quiet", "--out", str(out))
    assert isinstance(srv, CountingH2)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    acc = summary["accounting"]
    assert acc["sent"] == acc["ok"] == srv.answered == 200 and acc["errors"] == 0 and acc["holds"], acc
    # (a GOAWAY may find no stream above it open: then nothing is re-sent; the engine test forces some)
    resent = summary["resent"].get("goaway", 0)
    assert resent == srv.unprocessed and set(summary["resent"]) <= {"goaway"}, (summary["resent"], vars(srv))
    assert srv.received == 200 + resent, vars(srv)
    shown = subprocess.run([sys.executable, "-m", "bench", "report", str(out)], capture_output=True, text=True,
                           timeout=60, cwd=tmp_path)
    assert shown.returncode == 0 and (f"re-sent {resent:,} request" in shown.stdout) == (resent > 0), shown.stdout


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def _server_ctx(ca: trustme.CA, tmp_path: Path, *names: str, alpn: list[str] | None = None,
                expired: bool = False) -> ssl.SSLContext:
    now = datetime.datetime.now(datetime.UTC)
    dates = {"not_before": now - datetime.timedelta(days=30), "not_after": now - datetime.timedelta(days=1)}
    cert = ca.issue_cert(*names, **(dates if expired else {}))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return ctx


@pytest.mark.slow  # a real bench process: seconds
def test_cli_http2_over_tls_refuses_a_server_without_h2_and_says_so(ca: trustme.CA, tmp_path: Path) -> None:
    """The httpx engine offered h2 and http/1.1 and silently measured HTTP/1.1; now, as the lean engine, it
    offers h2 only: nothing is sent, exit 3, and the line names ALPN, not the certificate (which is trusted)."""
    ctx = _server_ctx(ca, tmp_path, "127.0.0.1", alpn=["http/1.1"])
    with in_thread(StaleCloser(ctx)) as srv:
        proc = bench(tmp_path, "--url", f"https://127.0.0.1:{srv.port}/infer", "--http2", "--engine", "httpx",
                     "--ca-bundle", str(tmp_path / "ca.pem"), "-c", "2", "-d", "1s", "--quiet",
                     "--out", str(tmp_path / "r.arrow"))
    assert isinstance(srv, StaleCloser)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "did not offer HTTP/2 in ALPN" in last and "--ca-bundle" not in last, proc.stderr
    assert srv.received == 0 and "Traceback" not in proc.stderr


@pytest.mark.slow  # a real bench process: seconds
@pytest.mark.parametrize(("names", "expired", "says"), [(("wrong.example",), False, "mismatch"),
                                                        (("127.0.0.1",), True, "has expired")])
def test_cli_tls_hint_names_the_verify_reason_even_with_a_ca_bundle(
        ca: trustme.CA, tmp_path: Path, names: tuple[str, ...], expired: bool, says: str) -> None:
    """A certificate for another name, or an expired one, signed by the CA given with --ca-bundle: the hint
    blamed the trust store ("give its CA with --ca-bundle") although the CA was given."""
    ctx = _server_ctx(ca, tmp_path, *names, expired=expired)
    with in_thread(StaleCloser(ctx)) as srv:
        proc = bench(tmp_path, "--url", f"https://127.0.0.1:{srv.port}/infer", "--ca-bundle",
                     str(tmp_path / "ca.pem"), "-c", "1", "-d", "1s", "--quiet", "--out", str(tmp_path / "r.arrow"))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert says in last and "give its CA" not in last, proc.stderr
