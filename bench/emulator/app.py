"""The emulator's ASGI app: one shared context, sub-apps mounted by path prefix (no web framework).

Sub-apps for UbiOps, Keycloak and the MLOps API live in their own modules and are imported when the app is
built; one that is not available answers 404 for its paths instead of breaking the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable

from bench.emulator.asgi import Receive, Scope, Send, lifespan, read_body, send_json
from bench.emulator.config import EmulatorConfig
from bench.emulator.context import EmulatorContext, TokenVerifier
from bench.emulator.kserve import KServeEmulator
from bench.emulator.metrics import MetricsMiddleware
from bench.emulator.wallaroo import WallarooEmulator, error_body

__all__ = ["EmulatorApp", "build_app"]

AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WALLAROO_PREFIXES = ("/v1/api/pipelines", "/pipelines", "/infer", "/models")


class _AnyBearer:
    """Stand-in verifier when bench.emulator.tokens is not available: any non-empty Bearer token passes."""

    def issue(self, subject: str, ttl_s: float) -> str:
        return f"emulator-{subject}"

    def verify(self, authorization: str | None) -> str | None:
        if not authorization:
            return "Jwt is missing"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "Jwt verification fails"
        return None


class _Unavailable:
    """Answers 404 for the paths of a sub-app whose module is missing."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send_json(send, 404, {"error": f"{self.name} emulation is not available in this build"})


def _optional_sub_app(module: str, cls: str, ctx: EmulatorContext, label: str) -> AsgiApp:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return _Unavailable(label)
    app: AsgiApp = getattr(mod, cls)(ctx)
    return app


def _token_verifier(config: EmulatorConfig) -> TokenVerifier:
    try:
        mod = importlib.import_module("bench.emulator.tokens")
    except ModuleNotFoundError as exc:
        if exc.name != "bench.emulator.tokens":
            raise
        return _AnyBearer()
    verifier: TokenVerifier = mod.TokenSigner(config)
    return verifier


class EmulatorApp:
    """ASGI entry point: lifespan, ``GET /health``, ``GET /metrics`` (counting every request), and prefix routing
    to the sub-apps."""

    def __init__(self, ctx: EmulatorContext) -> None:
        self.ctx = ctx
        self.wallaroo = WallarooEmulator(ctx)
        ubiops = _optional_sub_app("bench.emulator.ubiops", "UbiOpsEmulator", ctx, "UbiOps")
        keycloak = _optional_sub_app("bench.emulator.keycloak", "KeycloakEmulator", ctx, "Keycloak")
        mlops = _optional_sub_app("bench.emulator.mlops", "MLOpsEmulator", ctx, "Wallaroo MLOps API")
        kserve = KServeEmulator(ctx)
        self.routes: tuple[tuple[str, AsgiApp], ...] = (
            ("/v2/health/", kserve),  # Open Inference Protocol v2; the rest of /v2/ is UbiOps
            ("/v2/models/", kserve),
            ("/v1/api/status/", mlops),
            ("/v1/api/admin/", mlops),
            ("/v2/", ubiops),
            ("/v2.1/", ubiops),
            ("/auth/realms/", keycloak),
        )
        self._counted = MetricsMiddleware(self._http, ctx.metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            return await lifespan(receive, send)
        if kind != "http":
            return None
        await self._counted(scope, receive, send)
        return None

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if any(path == p or path.startswith(p + "/") for p in WALLAROO_PREFIXES):
            return await self.wallaroo(scope, receive, send)
        for prefix, app in self.routes:
            if path.startswith(prefix):
                await app(scope, receive, send)
                return None
        if path == "/v2" and scope["method"] == "GET":
            await self.routes[0][1](scope, receive, send)  # V2 server metadata
            return None
        await read_body(receive)
        if path == "/health":
            return await send_json(send, 200, {"status": "ok", "deployment": self.ctx.deployment_status()})
        await send_json(send, 404, error_body(404, f"Not found: {path}", "platform"))


def build_app(config: EmulatorConfig) -> EmulatorApp:
    """The whole emulator as one ASGI callable; token checks use bench.emulator.tokens when present."""
    ctx = EmulatorContext.create(config)
    if config.require_token:
        ctx.tokens = _token_verifier(config)
    return EmulatorApp(ctx)
