"""Client TLS contexts for the engines: verification on by default, and sessions resumed on reconnect.

Why resume: a server that closes keep-alive connections (nginx closes one after 1,000 requests by default, and
ingresses built on it do too) makes a load generator reconnect all run long. A full handshake costs both sides
key exchange and signatures; wrk offers the session of an earlier connection and the server resumes it (seen in
nginx's ``$ssl_session_reused`` log: wrk 256 resumed of 320 handshakes, bench 0 of 256 before this). So does
every browser and most HTTP clients that keep a session cache. Python's ``ssl`` resumes only when a session is
passed to ``wrap_bio``, which the event loops' TLS layers (uvloop's, asyncio's, anyio's for httpx) call without
one; ``ResumingContext`` passes one.
"""

from __future__ import annotations

import ssl

from bench.engine.base import EngineConfig
from bench.tlstrust import client_context

__all__ = ["ResumingContext", "make_ssl_context"]


class ResumingContext(ssl.SSLContext):
    """An ``SSLContext`` whose client connections offer the last resumable session a connection of it received.

    The donor is the most recent connection: by the time another one opens it has usually finished its handshake
    (TLS 1.2) or read the session ticket the server sends after it (TLS 1.3). A session is taken only once it can
    be resumed, so a connect storm, where the donor has not got that far, keeps offering the last good one; a
    session the server no longer accepts costs one full handshake, which then yields a fresh session.
    """

    _donor: ssl.SSLObject | None = None
    session: ssl.SSLSession | None = None  # offered by the next connection (None: a full handshake)

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        if server_side:
            return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        self._harvest()
        offer = session if session is not None else self.session
        obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, offer)
        self._donor = obj
        _direct(obj)
        return obj

    def _harvest(self) -> None:
        donor = self._donor
        if donor is None:
            return
        try:
            version = donor.version()  # None until its handshake is done
            got = donor.session if version is not None else None
        except (ValueError, ssl.SSLError):
            return
        # TLS 1.3 gives a session an id before the ticket that makes it resumable arrives; older versions can
        # also resume by id from the server's cache
        if got is not None and (got.has_ticket or (version != "TLSv1.3" and got.id)):
            self.session = got


def _direct(obj: ssl.SSLObject) -> None:
    """Give ``obj`` the C methods behind its ``read``, ``write`` and ``pending``.

    ``ssl.SSLObject``'s are Python wrappers that only pass their arguments on; the event loop's TLS layer calls
    them for every record it reads or writes (uvloop caches the bound methods once per connection), so the
    wrappers cost three Python calls per HTTPS request. The C ``read`` has no default length, and needs none:
    every TLS layer bench drives (uvloop's, asyncio's, anyio's for httpx) passes one.
    """
    inner = getattr(obj, "_sslobj", None)
    if inner is None:  # a Python whose SSLObject is built differently: keep the wrappers
        return
    obj.read = inner.read  # type: ignore[method-assign]
    obj.write = inner.write  # type: ignore[method-assign]
    obj.pending = inner.pending  # type: ignore[method-assign]


def make_ssl_context(config: EngineConfig, alpn: list[str] | None = None) -> ssl.SSLContext:
    """Verification on by default; ``ca_bundle`` is the trust root; ``verify_tls=False`` is --insecure; sessions
    resumed (``ResumingContext``)."""
    ctx = client_context(config.verify_tls, config.ca_bundle, ResumingContext)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx
