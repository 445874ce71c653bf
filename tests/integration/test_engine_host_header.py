"""A user's Host header reaches the target on every engine (HTTP/1.1 Host, HTTP/2 ``:authority``) and, over TLS,
is the server name (SNI) and the name the certificate is checked against: how a KServe/Istio route is reached
through an ingress address. It used to be dropped silently, so such a run measured the ingress's default route."""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from engine_servers import FakeSink, Stop, bodies, closed, make, served_by_hypercorn

from bench.engine.fast import FastEngine
from bench.engine.h2 import H2Engine
from bench.engine.httpx_engine import HttpxEngine
from bench.results import Kind

pytestmark = pytest.mark.anyio

ENGINES: dict[str, tuple[type, bool]] = {
    "fast": (FastEngine, False),
    "h2": (H2Engine, True),
    "httpx-h1": (HttpxEngine, False),
    "httpx-h2": (HttpxEngine, True),
}
ROUTE = "model.default.example.com"  # no such name resolves: only the Host header can carry it
N = 4


class HostRecorder:
    """Answers ``1`` and records, per request, the HTTP version and the Host (HTTP/1.1) or :authority (HTTP/2)
    the server was given."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        hosts = [v.decode() for k, v in scope["headers"] if k in (b"host", b":authority")]
        self.seen.append((scope["http_version"], ",".join(sorted(set(hosts)))))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]})
        await send({"type": "http.response.body", "body": b"1"})


async def test_host_header_is_sent_by_every_engine() -> None:
    app = HostRecorder()
    async with served_by_hypercorn(app) as port:
        for name, (cls, http2) in ENGINES.items():
            sink = FakeSink()
            eng = make(cls, f"http://127.0.0.1:{port}/{name}", sink, bodies(1),
                       headers={"Content-Type": "text/plain", "Host": ROUTE}, http2=http2)
            await eng.run(closed(1, max_requests=N), Stop())
            assert sink.kinds() == Counter({int(Kind.OK): N}), (name, sink.details)
    assert Counter(app.seen) == Counter({("1.1", ROUTE): 2 * N, ("2", ROUTE): 2 * N})


async def test_without_a_host_header_the_url_host_is_sent() -> None:
    app = HostRecorder()
    async with served_by_hypercorn(app) as port:
        for name, (cls, http2) in ENGINES.items():
            eng = make(cls, f"http://127.0.0.1:{port}/{name}", FakeSink(), bodies(1), http2=http2)
            await eng.run(closed(1, max_requests=1), Stop())
    assert {host for _, host in app.seen} == {f"127.0.0.1:{port}"} and len(app.seen) == len(ENGINES)


async def test_over_tls_the_host_is_the_server_name_and_the_certificate_name(tmp_path: Path) -> None:
    """The server's certificate names only ROUTE (not 127.0.0.1): a request verifies only when the engine checks
    it against the Host, and the server sees ROUTE as SNI."""
    ca = trustme.CA()
    cert = ca.issue_cert(ROUTE)
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_pem.write_to_path(str(keyfile))
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    ca.cert_pem.write_to_path(str(cafile))
    sni: list[str | None] = []

    def context() -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        ctx.sni_callback = lambda _sock, name, _ctx: sni.append(name)  # type: ignore[assignment,misc]
        return ctx

    app = HostRecorder()
    async with served_by_hypercorn(app, certfile=str(certfile), keyfile=str(keyfile),
                                   create_ssl_context=context) as port:
        for name, (cls, http2) in ENGINES.items():
            sink = FakeSink()
            eng = make(cls, f"https://127.0.0.1:{port}/{name}", sink, bodies(1),
                       headers={"Content-Type": "text/plain", "Host": f"{ROUTE}:{port}"}, http2=http2,
                       ca_bundle=str(cafile))
            await eng.run(closed(1, max_requests=N), Stop())
            assert sink.kinds() == Counter({int(Kind.OK): N}), (name, sink.details)
    assert Counter(app.seen) == Counter({("1.1", f"{ROUTE}:{port}"): 2 * N, ("2", f"{ROUTE}:{port}"): 2 * N})
    assert sni and set(sni) == {ROUTE}
