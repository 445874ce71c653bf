"""The lean engines against servers that frame, close and refuse as real servers may (audit-engine findings 1, 2, 6,
7, 8): through the real CLI on loopback, bench's accounting and its re-send counters equal what the server saw.

- HTTP/1.1: a body delimited by the connection's close (HTTP/1.0, or ``Connection: close`` without a length) is a
  whole answer; a Content-Length body cut short stays a ``reset``; a request written into a kept-alive connection
  the server had closed is re-sent once on a fresh connection and counted (``resent``), a second failure is the
  error; HEAD is served by the httpx engine (``auto``) and refused with ``--engine fast``.
- HTTP/2 (h2c, the ``h2`` library): streams above a GOAWAY's last_stream_id and streams refused with
  REFUSED_STREAM are re-sent and counted.

Each server runs on its own event loop in a thread and counts what it received, on the wire.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # every case runs the CLI in a subprocess (~1-2 s each)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Counter[str]], Awaitable[None]]


@contextmanager
def serving(handler: Handler) -> Iterator[tuple[int, Counter[str]]]:
    """An asyncio server on 127.0.0.1 (free port) in a thread, calling ``handler`` per connection with a shared
    counter. When the block ends it waits (10 s at most) for the handlers to see their connections end, so the
    counts are complete, then stops, even when the test failed."""
    counts: Counter[str] = Counter()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    idle = threading.Event()
    idle.set()
    box: dict[str, Any] = {}

    async def conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        counts["connections"] += 1
        counts["open"] += 1
        idle.clear()
        try:
            await handler(r, w, counts)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()
            counts["open"] -= 1
            if not counts["open"]:
                idle.set()

    async def start() -> None:
        box["server"] = await asyncio.start_server(conn, "127.0.0.1", 0)
        ready.set()

    async def stop() -> None:
        box["server"].close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    t = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    t.start()
    assert ready.wait(10), "the test server did not start"
    try:
        yield box["server"].sockets[0].getsockname()[1], counts
        idle.wait(10)  # the client exited: its connections end, the handlers count their last reads
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


ANSWER = b'{"ok": true}'


async def read_request(r: asyncio.StreamReader, counts: Counter[str]) -> bool:
    """Read one request (head + Content-Length body); False at EOF before a request began."""
    try:
        head = await r.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return False
    counts["requests"] += 1
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await r.readexactly(length)
    return True


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)


def run_json(tmp_path: Path, port: int, *args: str) -> tuple[int, dict[str, Any], str]:
    body = tmp_path / "body.json"
    body.write_text('{"x": 1}')
    proc = bench("run", "--url", f"http://127.0.0.1:{port}/x", "--body", str(body), "--json", "-q",
                 "--out", str(tmp_path / "r.arrow"), *args)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


# -- HTTP/1.1: close-delimited and truncated bodies ------------------------------------------------------------


def answer_until_close(version: bytes, close_header: bool) -> Handler:
    """Answers one request per connection with a body delimited by closing the connection (no Content-Length)."""
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, counts: Counter[str]) -> None:
        if not await read_request(r, counts):
            return
        w.write(version + b" 200 OK\r\nContent-Type: application/json\r\n"
                + (b"Connection: close\r\n" if close_header else b"") + b"\r\n")
        await w.drain()
        w.write(ANSWER)  # (a separate write: the body may arrive in a read of its own)
        await w.drain()
        counts["answered"] += 1
    return handle


@pytest.mark.parametrize(("version", "close_header"), [(b"HTTP/1.0", False), (b"HTTP/1.1", True)],
                         ids=["http10", "http11-connection-close"])
def test_body_delimited_by_close_is_a_whole_answer(tmp_path: Path, version: bytes, close_header: bool) -> None:
    with serving(answer_until_close(version, close_header)) as (port, counts):
        rc, s, err = run_json(tmp_path, port, "-c", "2", "--requests", "40")
    assert rc == 0, err
    assert s["ok"] == s["requests"] == counts["answered"] == counts["requests"] == 40, (s, counts)
    assert s["errors"] == 0 and s["accounting"]["holds"] and s["resent"] == {}, s


def truncated(close_header: bool) -> Handler:
    """Announces 100 bytes more than it sends, then closes."""
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, counts: Counter[str]) -> None:
        if not await read_request(r, counts):
            return
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % (len(ANSWER) + 100)
                + (b"Connection: close\r\n" if close_header else b"") + b"\r\n" + ANSWER)
        await w.drain()
        counts["answered"] += 1
    return handle


@pytest.mark.parametrize("close_header", [True, False], ids=["connection-close", "keep-alive"])
def test_content_length_body_cut_short_stays_reset(tmp_path: Path, close_header: bool) -> None:
    with serving(truncated(close_header)) as (port, counts):
        rc, s, _ = run_json(tmp_path, port, "-c", "2", "--requests", "20")
    assert rc == 3 and s["ok"] == 0, s
    assert s["errors_by_kind"] == {"reset": 20} == {"reset": counts["requests"]}, (s, counts)
    assert "mid-answer" in s["top_errors"][0]["sample"], s["top_errors"]
    assert s["resent"] == {}, s  # a fresh connection's first answer: never re-sent


# -- HTTP/1.1: the server closes kept-alive connections ---------------------------------------------------------


async def answer(n: int, r: asyncio.StreamReader, w: asyncio.StreamWriter, counts: Counter[str]) -> bool:
    """Answer ``n`` requests (Content-Length, no ``Connection: close``); False when the client closed first."""
    for _ in range(n):
        if not await read_request(r, counts):
            return False
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))
        await w.drain()
        counts["answered"] += 1
    return True


def close_after(n: int) -> Handler:
    """Answers ``n`` requests per connection (Content-Length, no ``Connection: close``), then half-closes it (FIN)
    and counts a request that still arrives (written into the closing connection: never answered) as stale."""
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, counts: Counter[str]) -> None:
        if not await answer(n, r, w, counts):
            return
        w.write_eof()
        while await read_request(r, counts):  # until the client closes its side
            counts["stale"] += 1
    return handle


@pytest.mark.parametrize("load", [("-c", "3", "--requests", "90"), ("-r", "400", "-d", "1s")],
                         ids=["closed", "open"])
def test_request_on_a_connection_the_server_closed_is_resent_and_counted(tmp_path: Path,
                                                                         load: tuple[str, ...]) -> None:
    with serving(close_after(3)) as (port, counts):
        rc, s, err = run_json(tmp_path, port, *load)
    assert rc == 0, err
    assert s["errors"] == 0 and s["accounting"]["holds"], s
    # every request answered once; the ones written into a closing connection were seen, not answered, re-sent
    assert s["ok"] == s["accounting"]["sent"] == counts["answered"], (s, counts)
    assert s["resent"].get("stale_connection", 0) == counts["stale"], (s, counts)
    assert counts["requests"] == counts["answered"] + counts["stale"], counts
    if load[0] == "-c":
        assert counts["stale"] >= 20, counts  # the closed loop writes into every closing connection but the last
        assert any("re-sent" in n and "fresh connection" in n for n in s["resent_notes"]), s["resent_notes"]
        shown = bench("report", str(tmp_path / "r.arrow"))
        assert shown.returncode == 0 and f"re-sent {counts['stale']:,} requests" in shown.stdout, shown.stdout


def flaky() -> Handler:
    """Odd connections answer one request, then half-close and count the next as stale; even connections read
    their request and close without answering (the re-send fails too)."""
    seen = Counter[str]()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, counts: Counter[str]) -> None:
        seen["n"] += 1
        if seen["n"] % 2 == 0:
            if await read_request(r, counts):
                counts["dropped"] += 1
            return
        await close_after(1)(r, w, counts)
    return handle


def test_a_resent_request_that_fails_again_is_the_error(tmp_path: Path) -> None:
    with serving(flaky()) as (port, counts):
        rc, s, err = run_json(tmp_path, port, "-c", "1", "--requests", "10")
    assert rc == 0, err
    assert s["ok"] == counts["answered"] == 5 and s["errors_by_kind"] == {"reset": 5}, (s, counts)
    assert s["resent"] == {"stale_connection": 5} and counts["stale"] == counts["dropped"] == 5, (s, counts)
    assert s["accounting"]["sent"] == 10 and s["accounting"]["holds"], s


def reset_after(n: int) -> Handler:
    """Answers ``n`` requests per connection, then reads the next one and resets the connection (SO_LINGER 0: a
    TCP RST, no FIN before it), as a crashed worker or the emulator's ``reset`` fault does."""
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, counts: Counter[str]) -> None:
        if await answer(n, r, w, counts) and await read_request(r, counts):
            counts["reset"] += 1
            sock = w.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
    return handle


def test_a_kept_alive_connection_the_server_resets_is_a_reset_not_a_resend(tmp_path: Path) -> None:
    """A reset with no close before it is the target's fault (the server read the request and aborted): counted
    as ``reset``, never re-sent, so a fault is not hidden behind a second try."""
    with serving(reset_after(2)) as (port, counts):
        rc, s, err = run_json(tmp_path, port, "-c", "1", "--requests", "12")
    assert rc == 0, err
    assert counts["reset"] == 4 and counts["requests"] == 12, counts
    assert s["errors_by_kind"] == {"reset": 4} and s["ok"] == counts["answered"] == 8, (s, counts)
    assert not s["resent"], s["resent"]
    assert s["accounting"]["sent"] == 12 and s["accounting"]["holds"], s


# -- HEAD ------------------------------------------------------------------------------------------------------


async def answer_head(r: asyncio.StreamReader, w: asyncio.StreamWriter, counts: Counter[str]) -> None:
    """Answers HEAD with the Content-Length of the entity and no body, keeping the connection open."""
    while await read_request(r, counts):
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        await w.drain()
        counts["answered"] += 1


def test_head_runs_on_the_httpx_engine_and_fast_refuses_it(tmp_path: Path) -> None:
    with serving(answer_head) as (port, counts):
        rc, s, err = run_json(tmp_path, port, "--method", "HEAD", "-c", "2", "--requests", "30",
                              "--set", "engine.timeout=3")
        refused = bench("run", "--url", f"http://127.0.0.1:{port}/x", "--body", str(tmp_path / "body.json"),
                        "--method", "HEAD", "--engine", "fast", "-n", "1", "-q", "--out", str(tmp_path / "f.arrow"))
    assert rc == 0, err
    assert s["ok"] == counts["answered"] == 30 and s["errors"] == 0, (s, counts)
    assert refused.returncode == 2 and "HEAD" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr, refused.stderr


# -- HTTP/2: GOAWAY and REFUSED_STREAM ----------------------------------------------------------------------------


def h2_server(mode: str, n: int) -> Handler:
    """An h2c server (the ``h2`` library) that counts every HEADERS frame it reads off the wire. ``goaway``: after
    ``n`` answers on a connection, GOAWAY(last_stream_id = the last answered, NO_ERROR), then keeps reading
    (streams above it are counted, never answered) until the client closes; ``refuse``: every ``n``-th stream
    (server-wide) is reset with REFUSED_STREAM."""
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, counts: Counter[str]) -> None:
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        c.initiate_connection()
        w.write(c.data_to_send())
        raw, sids = b"", []
        preface = False
        answered = 0
        last = None  # set once GOAWAY went out: streams above it are never processed
        try:
            while data := await r.read(65536):
                raw += data
                if not preface:  # the client's connection preface precedes its frames
                    if len(raw) < 24:
                        continue
                    raw, preface = raw[24:], True
                while len(raw) >= 9 and len(raw) >= 9 + int.from_bytes(raw[:3], "big"):
                    size = int.from_bytes(raw[:3], "big")
                    if raw[3] == 1:  # HEADERS: a request put on the wire
                        sids.append(int.from_bytes(raw[5:9], "big") & 0x7FFFFFFF)
                    raw = raw[9 + size:]
                for ev in c.receive_data(data):
                    if isinstance(ev, h2.events.DataReceived):
                        c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    if not isinstance(ev, h2.events.StreamEnded) or (last is not None and ev.stream_id > last):
                        continue
                    counts["streams"] += 1
                    if mode == "refuse" and counts["streams"] % n == 0:
                        counts["refused"] += 1
                        c.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                        continue
                    c.send_headers(ev.stream_id, [(":status", "200"), ("content-length", str(len(ANSWER)))])
                    c.send_data(ev.stream_id, ANSWER, end_stream=True)
                    counts["answered"] += 1
                    answered += 1
                    if mode == "goaway" and answered == n:
                        last = ev.stream_id
                        c.close_connection(last_stream_id=last)
                w.write(c.data_to_send())
                await w.drain()
        finally:
            counts["headers"] += len(sids)
            counts["above_goaway"] += sum(1 for sid in sids if last is not None and sid > last)
    return handle


@pytest.mark.parametrize(("mode", "n"), [("goaway", 10), ("refuse", 7)])
def test_h2_resends_are_counted(tmp_path: Path, mode: str, n: int) -> None:
    with serving(h2_server(mode, n)) as (port, counts):
        rc, s, err = run_json(tmp_path, port, "--http2", "--connections", "1", "-c", "4", "--requests", "120")
    assert rc == 0, err
    assert s["accounting"]["holds"] and s["ok"] == counts["answered"], (s, counts)
    resent = s["resent"]
    errors = s["errors_by_kind"].get("protocol_error", 0)  # a re-sent stream refused again (not re-sent twice)
    if mode == "goaway":
        assert set(resent) == {"goaway"} and resent["goaway"] == counts["above_goaway"] > 0, (s, counts)
    else:
        assert set(resent) == {"refused_stream"} and resent["refused_stream"] + errors == counts["refused"], (
            s, counts)
        assert counts["refused"] > 0
    # the server read each request once, plus once more for each re-send
    assert counts["headers"] == s["accounting"]["sent"] + sum(resent.values()), (s, counts)
    assert any("re-sent" in line for line in s["resent_notes"]), s
