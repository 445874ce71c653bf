"""The ASGI plumbing every emulator sub-app needs (no web framework): body reading, JSON answers, lifespan.

Each platform keeps its own error body shape: helpers here raise :class:`HttpError` (status + message) and the
sub-app that catches it decides what the body looks like. ``read_body`` and ``send_response`` sit on the
Wallaroo inference hot path, so they do no more work per request than the code they replaced.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson

__all__ = ["JSON", "AsgiApp", "HttpError", "Message", "Receive", "Scope", "Send", "SubApp", "body_read_before_answer",
           "full_path", "header", "headers", "lifespan", "read_body", "send_json", "send_response"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Header = tuple[bytes, bytes]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = "application/json"


class HttpError(Exception):
    """A request the emulator refuses: ``status`` and a ``message``; the sub-app renders its own error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def read_body(receive: Receive, limit: int | None = None,
                    too_large: str = "Request body too large") -> bytes:
    """The whole request body (ASGI delivers it in chunks); over ``limit`` bytes raises HttpError(413, too_large).

    A disconnect ends the body early (its message has no ``body`` and no ``more_body``).
    """
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if limit is not None and len(body) > limit:
            raise HttpError(413, too_large)
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise HttpError(413, too_large)
        chunks.append(chunk)
    return b"".join(chunks)


def body_read_before_answer(app: AsgiApp) -> AsgiApp:
    """``app``, holding each answer's last message until the request body is all in (read and dropped).

    Why: the emulator answers refusals (401, 429, 413, injected 5xx) without reading the body, and hypercorn's
    HTTP/2 protocol (4.4) raises KeyError on a DATA frame for a stream it has already answered and drops the
    whole connection, failing every other request on it as "reset". An h2 client that sent HEADERS and DATA in
    separate reads saw that; a real platform behind nginx or Envoy does not close the connection then.
    """

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        body_in = False

        async def tracked() -> Message:
            nonlocal body_in
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_in = True  # the last chunk, or a disconnect
            return message

        async def answer(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                while not body_in:
                    await tracked()
            await send(message)

        await app(scope, tracked, answer)

    return wrapped


async def send_response(send: Send, status: int, body: bytes, content_type: str,
                        extra: Sequence[Header] = ()) -> None:
    """One complete response; ``extra`` headers (cache-control, x-ratelimit-*) go after the standard two."""
    head = [(b"content-type", content_type.encode("latin-1")), (b"content-length", str(len(body)).encode("ascii"))]
    if extra:
        head.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: object, extra: Sequence[Header] = ()) -> None:
    """``payload`` as a JSON response (a 204 gets an empty body, as HTTP wants)."""
    await send_response(send, status, b"" if status == 204 else orjson.dumps(payload), JSON, extra)


async def lifespan(receive: Receive, send: Send, on_shutdown: Callable[[], Awaitable[None]] | None = None) -> None:
    """Answer the ASGI lifespan protocol until shutdown, running ``on_shutdown`` first if given."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if on_shutdown is not None:
                await on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


class SubApp:
    """Base of the sub-apps that can be mounted or served alone: answers lifespan (calling ``aclose`` at
    shutdown), ignores other non-HTTP scopes, and hands HTTP requests to ``http``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await lifespan(receive, send, self.aclose)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what the app holds; nothing by default."""


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes, as ASGI servers deliver names), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def headers(scope: Scope) -> dict[str, str]:
    """All request headers as a dict with lower-case names (the last of repeated headers wins)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def full_path(scope: Scope) -> str:
    """The request path including any mount prefix, whichever way the mounting router reports it."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path if not root or path.startswith(root) else root.rstrip("/") + path
