"""Serve the emulator: uvicorn (uvloop + httptools) for HTTP/1.1, hypercorn when h2c is wanted as well, and
bench.emulator.faultserver (our own HTTP/1.1 server below ASGI) when faults are injected without h2c; with h2c
the ASGI-level faults run as bench.emulator.faults.FaultMiddleware inside hypercorn.

The listening socket is bound here, before the server starts, so port 0 resolves to a real port that can be
printed — the embedded runner reads the first stdout line to learn where the emulator is.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from bench.emulator.config import EmulatorConfig

__all__ = ["LISTENING_PREFIX", "bind_socket", "serve", "url_lines"]

LISTENING_PREFIX = "bench emulator listening on "


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0 = a free port)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_lines(config: EmulatorConfig, host: str, port: int) -> list[str]:
    """What the server prints on start: the base URL first (exact prefix), then the URLs clients need."""
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}"
    proto = "HTTP/1.1 + h2c" if config.http2 else "HTTP/1.1"
    return [
        f"{LISTENING_PREFIX}{base}",
        f"  wallaroo inference (external): {base}/v1/api/pipelines/infer/{config.deployment}/{config.pipeline}",
        f"  wallaroo inference (internal): {base}/pipelines/{config.pipeline}",
        f"  wallaroo inference (edge):     {base}/infer",
        f"  ubiops api:                    {base}/v2.1",
        f"  kserve v2 inference:           {base}/v2/models/ccfraud/infer",
        f"  prometheus metrics:            {base}/metrics",
        f"  token url:                     {base}/auth/realms/master/protocol/openid-connect/token",
        f"  protocol: {proto}; capacity ~ {config.replicas} replicas, "
        f"{config.latency_ms:g} ms + {config.per_row_us:g} us/row",
        *([f"  faults (seed {config.seed}): {config.faults}"] if config.faults else []),
    ]


def _announce(config: EmulatorConfig, sock: socket.socket) -> Callable[[], None]:
    host, port = sock.getsockname()[:2]

    def announce() -> None:
        sys.stdout.write("\n".join(url_lines(config, host, port)) + "\n")
        sys.stdout.flush()

    return announce


def serve(config: EmulatorConfig, *, grace_s: float | None = None) -> None:
    """Run until SIGTERM/SIGINT. Blocks.

    ``grace_s`` bounds the graceful shutdown: requests still in flight after it are cancelled (None: the server's
    own default — uvicorn waits for them forever, hypercorn 3 s). The embedded emulator passes a short one: a
    handler that never answers (a huge ``latency_ms``, a ``stall`` fault) held its parent's run past
    duration + drain until the parent's SIGKILL, and nobody waits for those answers once the run is over.
    """
    from bench.emulator.app import build_app

    app: Callable[..., Any] = build_app(config)
    sock = bind_socket(config.host, config.port)
    announce = _announce(config, sock)
    plan = _fault_plan(config, app)
    if config.http2:
        if plan is not None:
            from bench.emulator.faults import FaultMiddleware

            app = FaultMiddleware(app, plan, _received_counter(app))
        _serve_hypercorn(app, sock, announce, grace_s)
    elif plan is not None:
        _serve_faults(app, plan, sock, announce)  # its close() drops every connection at once: no grace
    else:
        _serve_uvicorn(app, sock, announce, grace_s)


def _fault_plan(config: EmulatorConfig, app: Any) -> Any:
    """The seeded fault plan (counting into the app's metrics), or None without faults."""
    if not config.faults:
        return None
    from bench.emulator.faults import plan_from_config

    return plan_from_config(config.faults, config.seed, app.ctx.metrics.fault)


def _received_counter(app: Any) -> Callable[[], None]:
    metrics = app.ctx.metrics

    def received() -> None:
        metrics.received += 1

    return received


def _serve_faults(app: Any, plan: Any, sock: socket.socket, announce: Callable[[], None]) -> None:
    from bench.emulator.faultserver import running_fault_server

    received = _received_counter(app)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with running_fault_server(app, plan, sock, received):
            announce()
            await stop.wait()

    try:
        if _has_uvloop():
            import uvloop

            uvloop.run(main())
        else:
            asyncio.run(main())
    finally:
        sock.close()


def _serve_uvicorn(app: Callable[..., Any], sock: socket.socket, announce: Callable[[], None],
                   grace_s: float | None) -> None:
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                announce()

    loop = "uvloop" if _has_uvloop() else "asyncio"
    # uvicorn takes whole seconds: rounded down (it already gives connections 0.1 s after asking them to close)
    grace = None if grace_s is None else max(int(grace_s), 0)
    cfg = uvicorn.Config(app, loop=loop, http="httptools", access_log=False, log_level="warning",
                         lifespan="off", server_header=False, date_header=False,
                         timeout_graceful_shutdown=grace)
    try:
        _Server(cfg).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn re-raises SIGINT after its graceful shutdown: Ctrl-C is the normal way to stop a server
    finally:
        sock.close()


def _serve_hypercorn(app: Callable[..., Any], sock: socket.socket, announce: Callable[[], None],
                     grace_s: float | None) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    from bench.emulator.asgi import body_read_before_answer

    served: Callable[..., Any] = body_read_before_answer(app)

    cfg = Config()
    cfg.bind = [f"fd://{sock.detach()}"]  # hypercorn now owns the descriptor
    cfg.accesslog = None
    cfg.loglevel = "WARNING"
    # hypercorn closes a connection (HTTP/2 GOAWAY) after 1,000 requests by default; a load test's long-lived
    # connections must not see that as an endpoint fault
    cfg.keep_alive_max_requests = 2**62
    cfg.h2_max_concurrent_streams = 1000
    if grace_s is not None:
        cfg.graceful_timeout = grace_s

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.call_soon(announce)  # the socket is already listening: early connections wait in the backlog
        await hypercorn_serve(served, cfg, shutdown_trigger=stop.wait)

    if _has_uvloop():
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def _has_uvloop() -> bool:
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401

        return True
    return False
