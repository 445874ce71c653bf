"""Wallaroo preflight: wait until the deployment is Running, and resolve the inference URL if not given.

A test started while the pipeline is still ``Starting`` measures 503s, not the endpoint; so when the scenario
gives the MLOps API address, ``run_preflight`` polls ``status/get_deployment`` (a progress line per poll) and
gives up with exit 3 (RunInvalid) after ``wait``, naming the status and the engines' states.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import httpx

from bench.config.wallaroo import PreflightConfig, preflight_config_from_mapping
from bench.errors import InputError, RunInvalid
from bench.tlstrust import tls_hint, untrusted
from bench.units import format_duration

if TYPE_CHECKING:
    pass

__all__ = ["PreflightConfig", "deployment_from_url", "preflight_config_from_mapping", "run_preflight"]

def deployment_from_url(url: str) -> str | None:
    """The ``{deployment}-{id}`` part of ``…/v1/api/pipelines/infer/{deployment}-{id}/{pipeline}`` (or of an older
    install's ``…/v1/api/pipelines/infer/{pipeline}-{id}``), if present."""
    parts = [p for p in urlsplit(url).path.split("/") if p]
    for i in range(len(parts) - 1):  # older installs: …/pipelines/infer/{pipeline}-{id}, no trailing segment
        if parts[i] == "infer" and i >= 1 and parts[i - 1] == "pipelines":
            return parts[i + 1]
    return None


async def run_preflight(cfg: PreflightConfig, authorization: Callable[[], str], *,
                        progress: Callable[[str], None], target_url: str | None = None,
                        client: httpx.AsyncClient | None = None, verify: ssl.SSLContext | bool = True) -> str | None:
    """Wait for the deployment to be Running; return the resolved inference URL when one had to be looked up.

    ``authorization()`` gives the current header value ("" for none). ``target_url``: the scenario's
    inference URL, if it has one. Returns None when preflight is off or the URL was already known.
    Raises RunInvalid (exit 3) on timeout, unknown deployment, refused credentials or an unreachable API,
    and InputError when there is neither a URL nor workspace_id + pipeline to find the deployment by.
    """
    if not cfg.enabled:
        return None
    owned = client is None
    http = client or httpx.AsyncClient(timeout=cfg.timeout_s, verify=verify)
    try:
        resolved = None
        if not target_url:
            if cfg.workspace_id is None or cfg.pipeline is None:
                raise InputError("without a target URL, preflight needs workspace_id and pipeline to resolve it",
                                 key="wallaroo.workspace_id")
            resolved = await _external_url(http, cfg, authorization)
            progress(f"preflight: pipeline {cfg.pipeline} is served at {resolved}")
        deployment = cfg.deployment or deployment_from_url(resolved or target_url or "")
        if deployment is None:
            raise InputError("cannot tell the deployment name from the target URL; set it as 'name-id'",
                             key="wallaroo.deployment")
        await _wait_running(http, cfg, deployment, authorization, progress)
        return resolved
    finally:
        if owned:
            await http.aclose()


async def _call(http: httpx.AsyncClient, cfg: PreflightConfig, route: str, body: dict[str, Any],
                authorization: Callable[[], str]) -> dict[str, Any]:
    """POST one MLOps API call. Retryable trouble raises _Transient; permanent trouble raises RunInvalid."""
    assert cfg.api_url is not None
    url = f"{cfg.api_url}/v1/api/{route}"
    header = authorization()
    headers = {"Authorization": header} if header else {}
    try:
        response = await http.post(url, json=body, headers=headers, timeout=cfg.timeout_s)
    except httpx.HTTPError as exc:
        if untrusted(str(exc)):  # waiting will not change it
            raise RunInvalid(f"preflight: {url}: {tls_hint(str(exc), insecure=False)}") from None
        raise _Transient(f"{url} unreachable ({type(exc).__name__})") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    message = answer.get("error") or answer.get("msg") if isinstance(answer, dict) else None
    detail = f": {message}" if isinstance(message, str) and message else ""
    if 400 <= response.status_code < 600 and response.status_code not in _GATEWAY:
        # a wrong name (today's platform: 400 or 500), refused credentials: waiting will not change it
        raise RunInvalid(f"preflight: {url} answered HTTP {response.status_code}{detail}")
    if response.status_code != 200 or not isinstance(answer, dict):
        raise _Transient(f"{url} answered HTTP {response.status_code}{detail}")
    return answer


async def _external_url(http: httpx.AsyncClient, cfg: PreflightConfig, authorization: Callable[[], str]) -> str:
    deadline = time.monotonic() + max(cfg.wait_s, cfg.timeout_s)
    while True:
        try:
            answer = await _call(http, cfg, "admin/get_pipeline_external_url",
                                 {"workspace_id": cfg.workspace_id, "pipeline_name": cfg.pipeline}, authorization)
        except _Transient as exc:
            if time.monotonic() + cfg.poll_interval_s > deadline:
                raise RunInvalid(f"preflight: cannot resolve the pipeline URL: {exc}") from None
            await anyio.sleep(cfg.poll_interval_s)
            continue
        url = answer.get("url")
        if not isinstance(url, str) or not url:
            raise RunInvalid(f"preflight: get_pipeline_external_url answered without a url for pipeline "
                             f"{cfg.pipeline!r} in workspace {cfg.workspace_id}")
        return url


async def _wait_running(http: httpx.AsyncClient, cfg: PreflightConfig, deployment: str,
                        authorization: Callable[[], str], progress: Callable[[str], None]) -> None:
    started = time.monotonic()
    deadline = started + cfg.wait_s
    while True:
        elapsed = time.monotonic() - started
        try:
            answer = await _call(http, cfg, "status/get_deployment", {"name": deployment}, authorization)
            status = str(answer.get("status", "unknown"))
            summary = _engines(answer)
        except _Transient as exc:
            status, summary = "unknown", str(exc)
            answer = {}
        if status == "Running":
            progress(f"preflight: deployment {deployment} is Running")
            return
        if status.lower() not in _STARTING:  # Error (or anything but starting): waiting will not make it Running
            reason = _reason(answer)
            raise RunInvalid(f"preflight: deployment {deployment} is {status}"
                             + (f": {reason}" if reason else "") + (f"; {summary}" if summary else ""))
        progress(f"preflight: deployment {deployment} is {status}; waiting "
                 f"({format_duration(round(elapsed))} of {format_duration(cfg.wait_s)})")
        if time.monotonic() + cfg.poll_interval_s > deadline:
            raise RunInvalid(f"preflight: deployment {deployment} is {status}, not Running, after waiting "
                             f"{format_duration(cfg.wait_s)}" + (f"; {summary}" if summary else ""))
        await anyio.sleep(cfg.poll_interval_s)


def _engines(answer: Mapping[str, Any]) -> str:
    """'engines: name Pending (ContainersNotReady), …; engine_lbs: …' from a get_deployment answer."""
    parts = []
    for key in ("engines", "engine_lbs", "sidekicks"):
        items = answer.get(key)
        if not isinstance(items, list) or not items:
            continue
        described = []
        for raw in items[:8]:
            item = _fields(raw)
            if item is None:
                continue
            text = f"{item.get('name', '?')} {item.get('status', '?')}"
            if item.get("reason"):
                text += f" ({item['reason']})"
            described.append(text)
        if len(items) > 8:
            described.append(f"… {len(items) - 8} more")
        parts.append(f"{key}: {', '.join(described)}")
    return "; ".join(parts)


_GATEWAY = (429, 502, 503, 504)  # the API's front door is busy or restarting: worth another poll
_STARTING = frozenset({"starting", "pending", "deploying", "creating", "unknown"})  # worth waiting through


def _fields(item: Any) -> Mapping[str, Any] | None:
    """An engine entry's own fields: under ``info`` on today's platform, flat on older ones."""
    if not isinstance(item, Mapping):
        return None
    info = item.get("info")
    return {**item, **info} if isinstance(info, Mapping) else item


def _reason(answer: Mapping[str, Any]) -> str:
    """The platform's reason a deployment failed: its ``details``, else the first engine's details/reason."""
    details = answer.get("details")
    if isinstance(details, list) and details:
        return "; ".join(str(d) for d in details[:3])
    for raw in answer.get("engines") or ():
        item = _fields(raw)
        if item is None:
            continue
        d = item.get("details")
        if isinstance(d, list) and d:
            return "; ".join(str(x) for x in d[:3])
        if item.get("reason"):
            return str(item["reason"])
    return ""


class _Transient(Exception):
    pass
