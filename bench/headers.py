"""Header rules every layer shares: what a header value may hold, the headers bench sets itself, and the Host a
user gives (sent instead of the URL's host, and the TLS server name). A leaf: the scenario reader, the secrets
rules and the engines import it; it imports nothing of bench."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["header_value_problem", "host_header", "host_value_problem", "reserved_header_problem", "sni_name"]


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as an HTTP header value (``RequestSet.headers``), or None; the value itself is
    never repeated (it may be a credential). Every engine can send one line of printable ASCII (tabs allowed):
    httpx encodes header values as ASCII, HTTP/1.1 and HPACK send bytes."""
    text = value.replace("\t", " ")
    if text.isascii() and text.isprintable():  # the common case, checked in C
        return None
    for i, ch in enumerate(value):
        if " " <= ch <= "~" or ch == "\t":
            continue
        what = "a line break" if ch in "\r\n" else "a control character" if ch < "\x80" else "a non-ASCII character"
        return f"holds {what} at character {i + 1} of {len(value)}: a header value must be one line of ASCII text"
    return None


# headers bench sets itself on every request (message framing, connection management): a user's value would be
# ignored, or contradict what the engines send and break the framing (RFC 9112 6, RFC 9113 8.2.2)
_RESERVED_HEADERS = {
    "content-length": "bench sets it from each request body",
    "transfer-encoding": "bench sends every body whole, framed by Content-Length",
    "connection": "bench manages its keep-alive connections (and HTTP/2 forbids the header)",
    "keep-alive": "bench manages its keep-alive connections (and HTTP/2 forbids the header)",
    "proxy-connection": "bench manages its keep-alive connections (and HTTP/2 forbids the header)",
    "upgrade": "bench picks the protocol itself (engine.http2)",
    "http2-settings": "bench picks the protocol itself (engine.http2)",
    "te": "bench sets what its engines accept (and HTTP/2 forbids the header)",
}


def reserved_header_problem(name: str) -> str | None:
    """Why a user may not set header ``name`` (one bench sets itself, or an HTTP/2 pseudo-header), or None.

    Dropping such a header silently measured something else than asked; refusing it tells the user why."""
    name = name.strip()
    if name.startswith(":"):
        return ("an HTTP/2 pseudo-header cannot be set: bench sets :method, :scheme and :path from the target, "
                "and :authority from the URL or a Host header")
    why = _RESERVED_HEADERS.get(name.lower())
    return f"cannot be set: {why}; remove it" if why else None


def host_header(headers: Mapping[str, str]) -> str | None:
    """The user's ``Host`` header (any case), or None: the engines send it (``:authority`` over HTTP/2) instead of
    the URL's host and use it as the TLS server name, which is how a route behind an ingress address is reached."""
    for name, value in headers.items():
        if name.lower() == "host":
            return value.strip()
    return None


def host_value_problem(value: str) -> str | None:
    """Why ``value`` is not a Host header (``host`` or ``host:port``, IPv6 in brackets), or None."""
    from urllib.parse import urlsplit

    problem = f"expected host or host:port (e.g. model.example.com), got {value!r}"
    text = value.strip()
    if not text or any(c in text for c in " /?#@\\\t"):
        return problem
    try:
        parts = urlsplit("//" + text)
        port = parts.port
    except ValueError:
        return problem
    if not parts.hostname or port == 0:
        return problem
    return None


def sni_name(host: str) -> str:
    """The TLS server name of a Host header value: its host part (no port, no IPv6 brackets)."""
    from urllib.parse import urlsplit

    return urlsplit("//" + host.strip()).hostname or host.strip()
