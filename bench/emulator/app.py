"""The emulator's ASGI app: one shared context, sub-apps mounted by path prefix (no web framework).

Sub-apps for Wallaroo, UbiOps, Keycloak, the MLOps API and KServe V2 live in their own modules; every one is
part of bench (and uvicorn/hypercorn, which serve the app, are hard dependencies: docs/architecture.md).
"""

from __future__ import annotations

from bench.emulator.asgi import AsgiApp, Receive, Scope, Send, lifespan, read_body, send_json
from bench.emulator.config import EmulatorConfig
from bench.emulator.context import EmulatorContext
from bench.emulator.keycloak import KeycloakEmulator
from bench.emulator.kserve import KServeEmulator
from bench.emulator.metrics import MetricsMiddleware
from bench.emulator.mlops import MLOpsEmulator
from bench.emulator.tokens import TokenSigner
from bench.emulator.ubiops import UbiOpsEmulator
from bench.emulator.wallaroo import WallarooEmulator, error_body

__all__ = ["EmulatorApp", "build_app"]


WALLAROO_PREFIXES = ("/v1/api/pipelines", "/pipelines", "/infer", "/models")


class EmulatorApp:
    """ASGI entry point: lifespan, ``GET /health``, ``GET /metrics`` (counting every request), and prefix routing
    to the sub-apps."""

    def __init__(self, ctx: EmulatorContext) -> None:
        self.ctx = ctx
        self.wallaroo = WallarooEmulator(ctx)
        ubiops = UbiOpsEmulator(ctx)
        keycloak = KeycloakEmulator(ctx)
        mlops = MLOpsEmulator(ctx)
        kserve = KServeEmulator(ctx)
        self.routes: tuple[tuple[str, AsgiApp], ...] = (  # first match wins
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
    """The whole emulator as one ASGI callable; with ``require_token``, tokens are checked by ``TokenSigner``."""
    ctx = EmulatorContext.create(config)
    if config.require_token:
        ctx.tokens = TokenSigner(config)
    return EmulatorApp(ctx)
