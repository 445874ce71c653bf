"""ResumingContext with real OpenSSL handshakes in memory (MemoryBIO pairs, no sockets): which session each new
connection offers while others are still handshaking, as in an open loop's connect burst."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trustme

from bench.engine.base import EngineConfig
from bench.engine.tls import ResumingContext, make_ssl_context


class _Pair:
    """One client connection of ``client`` to ``server``, bytes carried by hand."""

    def __init__(self, client: ssl.SSLContext, server: ssl.SSLContext) -> None:
        self.c_in, self.c_out, self.s_in, self.s_out = (ssl.MemoryBIO() for _ in range(4))
        self.client = client.wrap_bio(self.c_in, self.c_out, server_hostname="127.0.0.1")
        self.server = server.wrap_bio(self.s_in, self.s_out, server_side=True)

    def _carry(self) -> None:
        self.s_in.write(self.c_out.read())
        self.c_in.write(self.s_out.read())

    def handshake(self) -> None:
        done = [False, False]
        for _ in range(20):
            for i, side in enumerate((self.client, self.server)):
                if not done[i]:
                    try:
                        side.do_handshake()
                        done[i] = True
                    except ssl.SSLWantReadError:
                        pass
                self._carry()
            if all(done):
                break
        assert all(done)
        # one answer: the client reads what the server sent after its handshake (TLS 1.3 session tickets)
        self.server.write(b"ok")
        self._carry()
        assert self.client.read(16) == b"ok"


@pytest.fixture(params=[ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def contexts(request: pytest.FixtureRequest) -> tuple[ResumingContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.maximum_version = request.param
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = make_ssl_context(EngineConfig(verify_tls=False))
    assert isinstance(client, ResumingContext)
    return client, server


def test_a_burst_of_connections_offers_the_last_resumable_session(
        contexts: tuple[ResumingContext, ssl.SSLContext]) -> None:
    client, server = contexts
    first = _Pair(client, server)
    assert client.session is None  # nothing to offer before any connection
    first.handshake()
    assert not first.client.session_reused
    # a burst: b and c open before either has shaken hands; both offer the first connection's session, and the
    # unfinished b must not replace it as the session to offer
    b = _Pair(client, server)
    c = _Pair(client, server)
    assert client.session is not None and client.session.id == first.client.session.id
    b.handshake()
    c.handshake()
    assert b.client.session_reused and c.client.session_reused


def test_a_verifying_context_is_the_default_contexts_equal() -> None:
    """Built by hand (a subclass cannot come from ``ssl.create_default_context``): verification as strict."""
    made = make_ssl_context(EngineConfig(), ["http/1.1"])
    default = ssl.create_default_context()
    assert made.verify_mode == default.verify_mode == ssl.CERT_REQUIRED
    assert made.check_hostname and made.options == default.options
    assert made.minimum_version == default.minimum_version and made.verify_flags == default.verify_flags
    assert made.get_ca_certs() == default.get_ca_certs() and made.get_ciphers() == default.get_ciphers()
    assert made.maximum_version == default.maximum_version


def test_client_connections_call_the_c_methods_and_still_carry_data(
        contexts: tuple[ResumingContext, ssl.SSLContext]) -> None:
    """The event loop's TLS layer calls read, write and pending per record: the client objects have the C methods
    (not ssl.SSLObject's Python wrappers), and data goes both ways through them, into a buffer too."""
    client, server = contexts
    pair = _Pair(client, server)
    inner = pair.client._sslobj  # type: ignore[attr-defined]
    assert (pair.client.read, pair.client.write, pair.client.pending) == (inner.read, inner.write, inner.pending)
    assert pair.server.read != pair.server._sslobj.read  # type: ignore[attr-defined]  # server side untouched
    pair.handshake()
    assert pair.client.write(b"request") == 7
    pair._carry()
    assert pair.server.read(16) == b"request"
    pair.server.write(b"answer")
    pair._carry()
    buf = bytearray(16)
    assert pair.client.pending() == 0  # nothing decrypted yet: the record is still in the incoming BIO
    read_into: Any = pair.client.read  # typeshed types read(len, buffer) as bytes; it returns the count
    assert read_into(3, buf) == 3 and bytes(buf[:3]) == b"ans"
    assert pair.client.pending() == 3
    assert pair.client.read(16) == b"wer"
