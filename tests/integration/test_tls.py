"""TLS through both engines against a loopback HTTPS server with a trustme certificate."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from bench.engine.base import EngineConfig, LoadSpec, PreparedBody, RequestSet
from bench.engine.fast import FastEngine
from bench.engine.httpx_engine import HttpxEngine
from bench.results import Kind

pytestmark = pytest.mark.anyio


class Sink:
    def __init__(self) -> None:
        self.kinds: list[int] = []
        self.details: list[bytes] = []

    def record(self, intended_ns: int, sent_ns: int, done_ns: int, kind: int, status: int, rows: int,
               bytes_out: int, bytes_in: int, server_ns: int) -> None:
        self.kinds.append(kind)

    def error_detail(self, kind: int, status: int, detail: bytes) -> None:
        self.details.append(detail)

    def dropped(self, intended_ns: int) -> None:
        raise AssertionError("closed loop never drops")

    def loop_lag(self, lag_ns: int) -> None:
        pass


class Stop:
    def is_set(self) -> bool:
        return False

    async def wait(self) -> None:
        await asyncio.Event().wait()


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def https_port(ca: trustme.CA) -> AsyncIterator[int]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    server = await asyncio.start_server(_handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def classify(status: int, body: bytes, rows: int) -> tuple[int, int, int]:
    return (0 if status == 200 else int(Kind.HTTP_ERROR), rows, 0)


async def _run(engine: type, port: int, **cfg: object) -> Sink:
    sink = Sink()
    rs = RequestSet(f"https://127.0.0.1:{port}/x", "POST", {}, [PreparedBody(b"abc", 1)])
    eng = engine(EngineConfig(connect_timeout_s=2.0, **cfg), rs, classify, sink)  # type: ignore[arg-type]
    now = time.monotonic_ns()
    await asyncio.wait_for(eng.run(LoadSpec("closed", now, now + 10**10, concurrency=2, max_requests=10,
                                            drain_s=1.0), Stop()), 20)
    return sink


@pytest.mark.parametrize("engine", [FastEngine, HttpxEngine])
async def test_untrusted_certificate_is_a_tls_error(engine: type, https_port: int) -> None:
    sink = await _run(engine, https_port)
    assert sink.kinds and set(sink.kinds) == {Kind.TLS_ERROR}
    assert any(b"CERTIFICATE_VERIFY_FAILED" in d or b"certificate verify failed" in d for d in sink.details)


@pytest.mark.parametrize("engine", [FastEngine, HttpxEngine])
async def test_insecure_succeeds(engine: type, https_port: int) -> None:
    sink = await _run(engine, https_port, verify_tls=False)
    assert sink.kinds == [Kind.OK] * 10


@pytest.mark.parametrize("engine", [FastEngine, HttpxEngine])
async def test_ca_bundle_succeeds(engine: type, https_port: int, ca: trustme.CA, tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    sink = await _run(engine, https_port, ca_bundle=str(bundle))
    assert sink.kinds == [Kind.OK] * 10
