"""The one mapping from a transport exception to an outcome kind, for every data plane (the lean engines, the
httpx engine, the UbiOps runner), so the same fault is counted the same way whichever path carried the request.

A leaf (stdlib + httpx, imported only when an httpx exception is classified): the engines and the targets use it.
"""

from __future__ import annotations

import ssl

from bench.results import Kind

__all__ = ["exception_kind", "httpx_kind", "other_kind"]

_RESET = int(Kind.RESET)


def exception_kind(exc: BaseException | None, connecting: bool) -> int:
    """Map a transport-level failure to a Kind code (walks the cause chain, as httpx wraps exceptions)."""
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 8:
        if isinstance(e, ssl.SSLError | ssl.CertificateError):
            return int(Kind.TLS_ERROR)
        if isinstance(e, ConnectionRefusedError):
            return int(Kind.CONNECT_REFUSED)
        if isinstance(e, TimeoutError):
            return int(Kind.CONNECT_TIMEOUT if connecting else Kind.READ_TIMEOUT)
        if isinstance(e, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
            return _RESET
        e = e.__cause__ or e.__context__
        seen += 1
    if connecting:
        return int(Kind.CONNECT_REFUSED)  # unreachable/unresolvable: the connection could not be made
    return _RESET


def httpx_kind(exc: BaseException) -> int:
    """Map an httpx/httpcore exception to a Kind code (same meaning as the lean engines' kinds).

    Any timeout other than connecting (read, write, waiting for a pooled connection) is ``read_timeout``: no
    answer came in time. A peer that disconnected or closed mid-answer is ``reset``, and so is an HTTP/2 GOAWAY
    with NO_ERROR (a graceful shutdown, e.g. nginx's keepalive_requests: no protocol was violated; the httpx
    engine re-sends what it left unprocessed, so this is only a stream it cut short). A GOAWAY with an error code
    is a ``protocol_error``.
    """
    import httpx

    if isinstance(exc, httpx.ConnectTimeout):
        return int(Kind.CONNECT_TIMEOUT)
    if isinstance(exc, httpx.TimeoutException):  # ReadTimeout, WriteTimeout, PoolTimeout
        return int(Kind.READ_TIMEOUT)
    if isinstance(exc, httpx.ConnectError):
        return exception_kind(exc, connecting=True)
    if isinstance(exc, httpx.RemoteProtocolError):
        text = str(exc).lower()
        if "disconnect" in text or "closed" in text or _graceful_goaway(text):
            return _RESET
        return int(Kind.PROTOCOL_ERROR)
    if isinstance(exc, httpx.LocalProtocolError | httpx.DecodingError):
        return int(Kind.PROTOCOL_ERROR)
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.CloseError):
        return exception_kind(exc, connecting=False)
    if isinstance(exc, OSError):
        return exception_kind(exc, connecting=False)
    if isinstance(exc, httpx.HTTPError):
        return int(Kind.OTHER)
    return other_kind(exc)


def _graceful_goaway(text: str) -> bool:
    """Whether httpcore's text of a ConnectionTerminated event (``<ConnectionTerminated error_code:0, ...>``, the
    code an int or ``ErrorCodes.NO_ERROR``) says NO_ERROR."""
    return "connectionterminated" in text and ("error_code:0," in text or "no_error" in text)


def other_kind(exc: BaseException) -> int:
    """An exception no transport mapping knows (a client library's internal error): a kind all the same.

    httpcore raises ``AttributeError: 'NoneType' object has no attribute 'getpeername'`` (and the like) when the
    peer reset the connection under it: the connection went away, so ``reset``. Anything else is ``other``.
    """
    if isinstance(exc, AttributeError | TypeError) and "NoneType" in str(exc):
        return _RESET
    kind = exception_kind(exc, connecting=False) if exc.__cause__ or exc.__context__ else int(Kind.OTHER)
    return kind if kind != _RESET or _caused_by_os_error(exc) else int(Kind.OTHER)


def _caused_by_os_error(exc: BaseException) -> bool:
    e: BaseException | None = exc
    for _ in range(8):
        if e is None:
            return False
        if isinstance(e, OSError):
            return True
        e = e.__cause__ or e.__context__
    return False
