"""The two Wallaroo MLOps API calls a load test needs before it starts.

``POST /v1/api/status/get_deployment`` reports ``Starting`` for ``startup_s`` after the emulator starts, then
``Running`` (so preflight waiting is testable), or the configured ``deployment_status`` (``Error`` with a reason);
``engine_info`` nests the engine fields under ``info`` as today's platform does, and a wrong deployment name is
answered with ``unknown_deployment_status`` (404, or 400/500 as today's platform). ``POST
/v1/api/admin/get_pipeline_external_url`` builds the inference URL from the request's own scheme and Host header
(so it is right behind any port or proxy), in the older one-segment form with ``legacy_infer``.
Both want a valid Bearer token when ``require_token`` is on — a *user's* token (password grant, not a service
account's) with ``mlops_user_token``, as on the platform; errors use the Wallaroo error body.
"""

from __future__ import annotations

import json
from typing import Any

from bench.emulator.asgi import HttpError, Receive, Scope, Send, SubApp, full_path, headers, read_body, send_json
from bench.emulator.context import EmulatorContext
from bench.emulator.tokens import NOT_A_USER, ensure_signer

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
        signer = ensure_signer(self._ctx)
        if not self._ctx.config.mlops_user_token:
            problem = signer.verify(authorization)
        else:
            problem = signer.verify_user(authorization)
            if problem == NOT_A_USER:
                raise HttpError(403, problem)
        if problem is not None:
            raise HttpError(401, problem)

    def _deployment(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise HttpError(400, "missing field: name")
        config = self._ctx.config
        if name != config.deployment:
            code = config.unknown_deployment_status
            if code == 404:
                raise HttpError(404, f"Deployment not found: {name}")
            raise HttpError(code, f"Failed to get deployment status: no deployment named {name!r}")
        status = self._ctx.deployment_status()
        engine_status, reason, details = _ENGINE_STATES.get(status, _ENGINE_STATES["Starting"])
        pipeline_status = {"pipelines": [{"id": config.pipeline, "status": status}]}
        engines = [_engine(config.engine_info, {"ip": f"10.244.0.{10 + i}", "name": f"engine-{config.deployment}-{i}",
                                                "status": engine_status, "reason": reason, "details": details},
                           pipeline_statuses=pipeline_status,
                           model_statuses={"models": [{"name": config.pipeline, "version": "emulated",
                                                       "sha": "0" * 64, "status": status}]})
                   for i in range(max(1, min(config.replicas, 8)))]
        engine_lbs = [_engine(config.engine_info, {"ip": "10.244.0.2", "name": f"engine-lb-{config.deployment}",
                                                   "status": "Running", "reason": None, "details": []})]
        return {"status": status, "details": list(details), "engines": engines, "engine_lbs": engine_lbs,
                "sidekicks": []}

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
        if config.legacy_infer:  # older installs: no trailing pipeline segment
            return {"url": f"{scheme}://{host}/v1/api/pipelines/infer/{config.deployment}"}
        return {"url": f"{scheme}://{host}/v1/api/pipelines/infer/{config.deployment}/{config.pipeline}"}


# deployment status -> (engine status, reason, details)
_ENGINE_STATES: dict[str, tuple[str, str | None, list[str]]] = {
    "Running": ("Running", None, []),
    "Starting": ("Pending", "ContainersNotReady", []),
    "Error": ("Error", "CrashLoopBackOff", ["back-off restarting failed container: the model step failed to load"]),
}


def _engine(info: bool, fields: dict[str, Any], **rest: Any) -> dict[str, Any]:
    """One engine (or engine LB) entry: its own fields flat, or under ``info`` as today's platform has them."""
    return {"info": fields, **rest} if info else {**fields, **rest}


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise HttpError(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "request body must be a JSON object")
    return body
