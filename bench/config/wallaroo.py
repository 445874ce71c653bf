"""The ``[wallaroo]`` table: the MLOps API address and deployment the preflight waits on (bench.preflight runs it),
and ``[wallaroo.auth]``, the MLOps user's credentials.

``api_url = "embedded"`` names the embedded emulator's API; it is stored as ``EMBEDDED_PLACEHOLDER`` until
bench.session knows the emulator's address.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bench.config.auth import AuthConfig, auth_config_from_mapping
from bench.config.reader import unknown_key
from bench.tables import TableReader
from bench.units import format_duration, parse_duration

__all__ = ["EMBEDDED_PLACEHOLDER", "PreflightConfig", "preflight_config_from_mapping"]

EMBEDDED_PLACEHOLDER = "http://embedded.invalid"

_KEYS = ("api_url", "deployment", "workspace_id", "pipeline", "wait", "poll_interval", "timeout", "auth")


@dataclass(frozen=True, slots=True)
class PreflightConfig:
    """The validated ``[wallaroo]`` table; preflight is on when ``api_url`` is set."""

    api_url: str | None = None  # e.g. https://acme.api.example.ai (the MLOps API address)
    deployment: str | None = None  # "{deployment}-{id}"; derived from the inference URL when omitted
    workspace_id: int | None = None
    pipeline: str | None = None
    wait_s: float = 300.0  # longest wait for Running
    poll_interval_s: float = 2.0
    timeout_s: float = 10.0  # per request
    auth: AuthConfig | None = None  # [wallaroo.auth]: the MLOps user's token (default: see mlops_auth)

    @property
    def enabled(self) -> bool:
        return self.api_url is not None

    def mlops_auth(self, inference: AuthConfig | None) -> AuthConfig | None:
        """The credentials of MLOps API calls, which take a *user's* token (the platform refuses a service
        account's): ``[wallaroo.auth]`` when given, else a password grant of the same user as ``[auth]`` (its own
        token, refreshed on its own). None: send the inference token (static, client_credentials or none)."""
        if self.auth is not None:
            return self.auth
        if inference is not None and inference.kind == "password":
            return inference
        return None


def preflight_config_from_mapping(d: Mapping[str, Any], file: str) -> PreflightConfig:
    """Validate a scenario ``[wallaroo]`` table; every problem is an InputError naming ``wallaroo.<key>``."""

    table = TableReader(d, file, "wallaroo")
    err, string = table.err, table.string

    def duration(key: str, default: float, minimum: float) -> float:
        try:
            seconds = parse_duration(d.get(key, default))
        except ValueError as exc:
            raise err(key, str(exc)) from None
        if seconds < minimum:
            raise err(key, f"must be at least {format_duration(minimum)}")
        return seconds

    for key in d:
        if key not in _KEYS:
            raise err(key, unknown_key(key, _KEYS))
    api_url = string("api_url")
    if api_url == "embedded":
        api_url = EMBEDDED_PLACEHOLDER
    if api_url is not None:
        try:
            parts = urlsplit(api_url)
        except ValueError:
            raise err("api_url", "not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise err("api_url", "expected an http:// or https:// URL such as https://acme.api.example.ai")
        if parts.username or parts.password:
            raise err("api_url", "must not carry credentials; use [auth]")
    auth = None
    if "auth" in d:
        if not isinstance(d["auth"], Mapping):
            raise err("auth", "expected a table ([wallaroo.auth]) of the MLOps user's credentials")
        auth = auth_config_from_mapping(d["auth"], file, "wallaroo.auth")
    workspace_id = d.get("workspace_id")
    if workspace_id is not None and (isinstance(workspace_id, bool) or not isinstance(workspace_id, int)
                                     or workspace_id < 0):
        raise err("workspace_id", "expected a workspace id (a non-negative integer)")
    return PreflightConfig(api_url=api_url.rstrip("/") if api_url else None, deployment=string("deployment"),
                           workspace_id=workspace_id, pipeline=string("pipeline"),
                           wait_s=duration("wait", 300.0, 0.0), poll_interval_s=duration("poll_interval", 2.0, 0.01),
                           timeout_s=duration("timeout", 10.0, 0.01), auth=auth)
