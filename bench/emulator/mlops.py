"""The two Wallaroo MLOps API calls a load test needs before it starts.

``POST /v1/api/status/get_deployment`` reports ``Starting`` for ``startup_s`` after the emulator starts, then
``Running`` (so preflight waiting is testable), and ``POST /v1/api/admin/get_pipeline_external_url`` builds the
inference URL from the request's own scheme and Host header (so it is right behind any port or proxy).
Both want a valid Bearer token when ``require_token`` is on; errors use the Wallaroo error body.
"""

from __future__ import annotations

import json
from typing import Any

from bench.emulator.asgi import HttpError, Receive, Scope, Send, SubApp, full_path, headers, read_body, send_json
from bench.emulator.context import EmulatorContext
from bench.emulator.tokens import ensure_signer

__all__ = ["MLOpsEmulator"]

_MAX_BODY = 64 * 1024


def _error_body(exc: HttpError) -> dict[str, object]:
    """The Wallaroo platform error shape."""
    return {"code": exc.status, "status": "error", "error": exc.message, "source": "platform"}


class MLOpsEmulator(SubApp):
    """ASGI app for ``status/get_deployment`` and ``admin/get_pipeline_external_url``.

    Mount it at ``/v1/api/status/`` and ``/v1/api/admin/`` (or serve it alone): routes are matched on the
    last two path segments, with or without the mount prefix in ``path``.
    """

    def __init__(self, ctx: EmulatorContext) -> None:
        self._ctx = ctx

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = "/".join(full_path(scope).rstrip("/").split("/")[-2:])
        request_headers = headers(scope)
        try:
            if route not in ("status/get_deployment", "admin/get_pipeline_external_url"):
                raise HttpError(404, "Not found")
            if scope["method"] != "POST":
                raise HttpError(405, "Method not allowed")
            self._check_token(request_headers.get("authorization"))
            body = _json_object(await read_body(receive, _MAX_BODY, "request body too large"))
            if route == "status/get_deployment":
                answer = self._deployment(body)
            else:
                answer = self._external_url(body, scope, request_headers)
            status = 200
        except HttpError as exc:
            status, answer = exc.status, _error_body(exc)
        await send_json(send, status, answer)

    def _check_token(self, authorization: str | None) -> None:
        if not self._ctx.config.require_token:
            return
        problem = ensure_signer(self._ctx).verify(authorization)
        if problem is not None:
            raise HttpError(401, problem)

    def _deployment(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise HttpError(400, "missing field: name")
        config = self._ctx.config
        if name != config.deployment:
            raise HttpError(404, f"Deployment not found: {name}")
        status = self._ctx.deployment_status()
        running = status == "Running"
        pipeline_status = {"pipelines": [{"id": config.pipeline, "status": status}]}
        engines: list[dict[str, Any]] = [{"ip": f"10.244.0.{10 + i}", "name": f"engine-{config.deployment}-{i}",
                    "status": "Running" if running else "Pending",
                    "reason": None if running else "ContainersNotReady", "details": [],
                    "pipeline_statuses": pipeline_status,
                    "model_statuses": {"models": [{"name": config.pipeline, "version": "emulated",
                                                   "sha": "0" * 64, "status": status}]}}
                   for i in range(max(1, min(config.replicas, 8)))]
        engine_lbs: list[dict[str, Any]] = [{"ip": "10.244.0.2", "name": f"engine-lb-{config.deployment}",
                                             "status": "Running", "reason": None, "details": []}]
        return {"status": status, "details": [], "engines": engines, "engine_lbs": engine_lbs, "sidekicks": []}

    def _external_url(self, body: dict[str, Any], scope: Scope, headers: dict[str, str]) -> dict[str, Any]:
        workspace_id, pipeline = body.get("workspace_id"), body.get("pipeline_name")
        if not isinstance(workspace_id, int) or isinstance(workspace_id, bool):
            raise HttpError(400, "missing or non-integer field: workspace_id")
        if not isinstance(pipeline, str) or not pipeline:
            raise HttpError(400, "missing field: pipeline_name")
        config = self._ctx.config
        if workspace_id != config.workspace_id:
            raise HttpError(404, f"Workspace not found: {workspace_id}")
        if pipeline != config.pipeline:
            raise HttpError(404, f"Pipeline not found: {pipeline}")
        scheme = scope.get("scheme", "http")
        host = headers.get("host")
        if not host:
            server = scope.get("server") or (config.host, config.port)
            host = f"{server[0]}:{server[1]}"
        return {"url": f"{scheme}://{host}/v1/api/pipelines/infer/{config.deployment}/{config.pipeline}"}


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise HttpError(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "request body must be a JSON object")
    return body
