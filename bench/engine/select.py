"""Pick the engine class and the event loop for a run (the runner calls these; engines never do)."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from bench.engine.base import EngineConfig

__all__ = ["anyio_backend_options", "choose_engine", "loop_factory", "resolve_loop", "run_with_loop"]

T = TypeVar("T")
LoopKind = Literal["auto", "asyncio", "uvloop"]


def choose_engine(config: EngineConfig, url: str, method: str = "POST") -> type:
    """``auto``/``fast``: the lean engines for http(s) (HTTP/1.1, or HTTP/2 with ``http2``); httpx otherwise.

    ``httpx`` stays selectable for HTTP/2 as the reference implementation. ``auto`` picks httpx for a HEAD
    request over HTTP/1.1: the lean engine's parser (httptools) cannot be told that an answer to HEAD has no
    body, and would wait for the one its Content-Length announces (the scenario reader refuses ``fast`` + HEAD).
    """
    kind = config.kind
    scheme = url.split(":", 1)[0].lower()
    if kind == "auto":
        lean = scheme in ("http", "https") and (config.http2 or method.upper() != "HEAD")
        kind = "fast" if lean else "httpx"
    if kind == "fast":
        if config.http2:
            from bench.engine.h2 import H2Engine
            return H2Engine
        from bench.engine.fast import FastEngine
        return FastEngine
    if kind == "httpx":
        from bench.engine.httpx_engine import HttpxEngine
        return HttpxEngine
    raise ValueError(f"unknown engine {kind!r}")


def resolve_loop(loop_kind: LoopKind) -> Literal["asyncio", "uvloop"]:
    """``auto`` means uvloop when importable (about 3x the asyncio loop's throughput here)."""
    if loop_kind == "auto":
        return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    if loop_kind == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ValueError("--loop uvloop: uvloop is not installed")
    return loop_kind


def loop_factory(loop_kind: LoopKind) -> Callable[[], asyncio.AbstractEventLoop]:
    if resolve_loop(loop_kind) == "uvloop":
        import uvloop
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_with_loop(coro_fn: Callable[[], Awaitable[T]], loop_kind: LoopKind = "auto") -> T:
    """Run ``coro_fn()`` to completion on a fresh loop of the chosen kind."""

    async def main() -> T:
        return await coro_fn()

    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        return runner.run(main())


def anyio_backend_options(loop_kind: LoopKind = "auto") -> dict[str, object]:
    """For ``anyio.run(fn, backend="asyncio", backend_options=...)``."""
    return {"use_uvloop": resolve_loop(loop_kind) == "uvloop"}
