"""The lean h2 engine against a real nginx speaking h2c (prior knowledge), skipped when nginx is not installed.

nginx is a strict, widely deployed HTTP/2 peer with its own habits: it limits concurrent streams, sends WINDOW_UPDATE
as it reads bodies, answers with `return` before reading the request body and then resets the stream (NO_ERROR),
and closes the connection with GOAWAY after `http2_max_requests` streams (nginx 1.22: `keepalive_requests`).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_servers import FakeSink, Stop, closed

from bench.engine.base import EngineConfig, PreparedBody, RequestSet
from bench.engine.h2 import H2Engine, _Conn
from bench.results import Kind

pytestmark = [pytest.mark.anyio, pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")]

CONF = """
worker_processes 1;
pid nginx.pid;
error_log error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
    client_max_body_size 4m;
    keepalive_requests {max_requests};
    server {{
        listen 127.0.0.1:{port} http2;
        http2_max_concurrent_streams 8;
        location /infer {{ default_type application/json; return 200 '{{"outputs":[0.1]}}'; }}
        location /missing {{ return 404; }}
    }}
}}
"""


@pytest.fixture
def nginx_h2c(tmp_path: Path) -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    (tmp_path / "nginx.conf").write_text(CONF.format(port=port, max_requests=250))
    proc = subprocess.Popen(["nginx", "-p", f"{tmp_path}/", "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def classify(status: int, body: bytes, rows_in: int) -> tuple[int, int, int]:
    ok = status == 200 and body == b'{"outputs":[0.1]}'
    return (int(Kind.OK) if ok else int(Kind.HTTP_ERROR), rows_in, 0)


def engine(port: int, path: str, sink: FakeSink, size: int = 100) -> H2Engine:
    rs = RequestSet(f"http://127.0.0.1:{port}{path}", "POST", {"Content-Type": "application/json"},
                    [PreparedBody(b"x" * size, 1)])
    return H2Engine(EngineConfig(http2=True, connections=1), rs, classify, sink)


def track_streams(eng: H2Engine) -> list[int]:
    """Record the most streams open at once on any connection (wraps the engine's stream start)."""
    peak = [0]
    start = eng._start

    def counting(conn: _Conn, st: object) -> None:
        start(conn, st)  # type: ignore[arg-type]
        peak[0] = max(peak[0], len(conn.streams))

    eng._start = counting  # type: ignore[method-assign]
    return peak


@pytest.mark.parametrize("size", [5_657, 200_000])
async def test_nginx_h2c_limits_windows_resets_and_goaway(nginx_h2c: int, size: int) -> None:
    """32 workers on one connection against nginx's 8-stream limit; bodies below and far above the 64 KiB
    windows; nginx answers before reading the body and resets the stream; GOAWAY every 250 streams. Every
    request ends answered, nothing is lost or double-counted."""
    sink = FakeSink()
    eng = engine(nginx_h2c, "/infer", sink, size)
    peak = track_streams(eng)
    await asyncio.wait_for(eng.run(closed(32, max_requests=1200), Stop()), 60)
    assert sink.kinds() == {Kind.OK: 1200}
    assert eng.abandoned == 0
    assert {r[4] for r in sink.rows} == {200} and {r[6] for r in sink.rows} == {size}
    assert peak[0] == 8  # the server's max_concurrent_streams, reached and never exceeded


async def test_nginx_h2c_error_status_is_counted(nginx_h2c: int) -> None:
    sink = FakeSink()
    eng = engine(nginx_h2c, "/missing", sink)
    await asyncio.wait_for(eng.run(closed(4, max_requests=40), Stop()), 30)
    assert len(sink.rows) == 40 and {r[4] for r in sink.rows} == {404}
    assert Kind.OK not in sink.kinds()
