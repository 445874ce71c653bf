"""The ``[auth]`` table (and ``[wallaroo.auth]``, the MLOps user's token): which credentials, from where.

Holds variable and file names only, never secret values; literal secrets in a scenario are refused with a
pointer to the safe form. Keycloak clients come in two kinds, as on Wallaroo: the confidential ``api-client``
(its secret from ``client_secret_env``; client_credentials and password grants) and the public ``sdk-client``
the SDK logs users in with (no secret; password grant only). Password grants ask for ``scope=offline_access``
as the platform's guide does (an offline refresh token that outlives the SSO session).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.config.reader import unknown_key
from bench.errors import InputError
from bench.tables import TableReader

__all__ = ["AUTH_KINDS", "PUBLIC_CLIENT", "AuthConfig", "auth_config_from_mapping", "emulator_credentials",
           "keycloak_token_url"]

AUTH_KINDS = ("none", "static", "client_credentials", "password")
PUBLIC_CLIENT = "sdk-client"  # Wallaroo's public Keycloak client (no secret), as the SDK logs users in
CONFIDENTIAL_CLIENT = "api-client"

_KEYS = {"kind", "scheme", "token_env", "token_file", "token_url", "keycloak_prefix", "keycloak_suffix", "client_id",
         "client_id_env", "client_secret_env", "username", "username_env", "password_env", "refresh_at", "timeout",
         "scope"}
# literal secrets are refused with a pointer to the safe form
_SECRET_KEYS = {"token": "token_env or token_file", "access_token": "token_env or token_file",
                "refresh_token": "token_env or token_file", "bearer": "token_env or token_file",
                "client_secret": "client_secret_env", "secret": "client_secret_env",
                "password": "password_env", "api_key": "token_env or token_file",
                "authorization": "token_env or token_file"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def keycloak_token_url(prefix: str, suffix: str) -> str:
    """Wallaroo's Keycloak token URL for a ``https://{prefix}.{suffix}`` instance."""
    return f"https://{prefix}.keycloak.{suffix}/auth/realms/master/protocol/openid-connect/token"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """The validated ``[auth]`` table. Holds variable and file names only, never secret values."""

    kind: str = "none"  # one of AUTH_KINDS
    scheme: str = "Bearer"  # UbiOps uses "Token"
    token_env: str | None = None
    token_file: Path | None = None
    token_url: str | None = None  # None: the runner must supply one (e.g. the embedded emulator's)
    client_id: str = CONFIDENTIAL_CLIENT  # sdk-client (public) when no client_secret_env is given
    client_id_env: str | None = None
    client_secret_env: str | None = None
    username: str | None = None
    username_env: str | None = None
    password_env: str | None = None
    refresh_at: float = 0.8  # refresh when this fraction of expires_in has passed
    timeout_s: float = 10.0  # per token request
    scope: str = "offline_access"  # sent with password grants ("" sends none)

    @property
    def public_client(self) -> bool:
        """A public Keycloak client: no secret is sent (the SDK's sdk-client)."""
        return self.uses_keycloak and self.client_secret_env is None

    @property
    def uses_keycloak(self) -> bool:
        return self.kind in ("client_credentials", "password")

    def with_token_url(self, url: str) -> AuthConfig:
        return replace(self, token_url=url)


def auth_config_from_mapping(d: Mapping[str, Any], file: str, section: str = "auth") -> AuthConfig:
    """Validate a scenario ``[auth]`` table (or ``[wallaroo.auth]``); every problem is an InputError naming
    ``<section>.<key>``."""

    table = TableReader(d, file, section)
    err, string = table.err, table.string

    def env_name(key: str) -> str | None:
        value = string(key)
        if value is not None and not _ENV_NAME.match(value):
            raise err(key, "expected the NAME of an environment variable (letters, digits, _), not its value")
        return value

    for key in d:
        if key.lower() in _SECRET_KEYS:
            raise err(key, f"secrets must not be written in a scenario file; use {_SECRET_KEYS[key.lower()]} "
                      "(the name of an environment variable or file holding the value)")
        if key not in _KEYS:
            raise err(key, unknown_key(key, _KEYS))
    kind = string("kind") or ("none" if not d else None)
    if kind not in AUTH_KINDS:
        raise err("kind", f"expected one of {', '.join(AUTH_KINDS)}" + ("" if kind is None else f", got {kind!r}"))
    scheme = string("scheme") or "Bearer"
    if any(c.isspace() for c in scheme):
        raise err("scheme", "must be a single word such as 'Bearer' or 'Token'")
    refresh_at = d.get("refresh_at", 0.8)
    if isinstance(refresh_at, bool) or not isinstance(refresh_at, int | float) or not 0 < refresh_at < 1:
        raise err("refresh_at", "expected a fraction of expires_in between 0 and 1 (exclusive), e.g. 0.8")
    timeout = d.get("timeout", 10.0)
    try:
        from bench.units import parse_duration

        timeout_s = parse_duration(timeout)
    except ValueError as exc:
        raise err("timeout", str(exc)) from None
    if timeout_s <= 0:
        raise err("timeout", "must be > 0")

    token_env, token_file = env_name("token_env"), string("token_file")
    token_path = None
    if token_file is not None:
        token_path = Path(token_file).expanduser()
        if not token_path.is_absolute():
            token_path = Path(file).parent / token_path
    token_url = string("token_url")
    prefix, suffix = string("keycloak_prefix"), string("keycloak_suffix")
    client_id, client_id_env = string("client_id"), env_name("client_id_env")
    username, username_env = string("username"), env_name("username_env")
    secret_env = env_name("client_secret_env")
    scope = d.get("scope", "offline_access")
    if not isinstance(scope, str):
        raise err("scope", "expected a space-separated list of scopes, e.g. 'offline_access' ('' for none)")
    public = kind == "password" and not secret_env  # a user through the SDK's public client
    cfg = AuthConfig(kind=kind, scheme=scheme, token_env=token_env, token_file=token_path,
                     client_id=client_id or (PUBLIC_CLIENT if public else CONFIDENTIAL_CLIENT),
                     client_id_env=client_id_env, scope=scope.strip(),
                     client_secret_env=secret_env, username=username, username_env=username_env,
                     password_env=env_name("password_env"), refresh_at=float(refresh_at), timeout_s=timeout_s)

    if kind == "static":
        if (token_env is None) == (token_file is None):
            raise err("token_env", "kind = 'static' needs exactly one of token_env or token_file")
    elif kind == "none":
        extra = sorted(k for k in d if k not in ("kind", "scheme", "scope"))
        if extra:
            raise err(extra[0], "has no effect with kind = 'none'")
    else:
        if token_url is not None and (prefix or suffix):
            raise err("token_url", "give token_url or keycloak_prefix + keycloak_suffix, not both")
        if (prefix is None) != (suffix is None):
            raise err("keycloak_prefix" if prefix is None else "keycloak_suffix",
                      "keycloak_prefix and keycloak_suffix go together")
        if prefix is not None and suffix is not None:
            token_url = keycloak_token_url(prefix, suffix)
        if token_url is not None and urlsplit(token_url).scheme not in ("http", "https"):
            raise err("token_url", "expected an http:// or https:// URL")
        if client_id is not None and client_id_env is not None:
            raise err("client_id", "give client_id or client_id_env, not both")
        if cfg.client_secret_env is None and kind == "client_credentials":
            raise err("client_secret_env", "kind = 'client_credentials' needs the confidential client's secret from "
                      "an environment variable (a public client has no service account)")
        if kind == "password":
            if (username is None) == (username_env is None):
                raise err("username_env", "kind = 'password' needs exactly one of username_env or username")
            if cfg.password_env is None:
                raise err("password_env", "kind = 'password' needs password_env")
        cfg = replace(cfg, token_url=token_url)
    return cfg


def emulator_credentials(cfg: AuthConfig, *, environ: Mapping[str, str] | None = None,
                         file: str | None = None, section: str = "auth") -> dict[str, Any]:
    """EmulatorConfig overrides (client_id, client_secret, users) so an embedded emulator accepts these credentials.

    Use as ``dataclasses.replace(emulator_config, **emulator_credentials(auth_cfg))``; empty for static/none.
    Missing variables are InputErrors naming the variable (never a value).
    """
    if not cfg.uses_keycloak:
        return {}
    env = os.environ if environ is None else environ

    def need(name: str | None, key: str) -> str:
        value = env.get(name or "")
        if not value:
            raise InputError(f"environment variable {name} is not set (or empty)", file=file,
                             key=f"{section}.{key}")
        return value

    client_id = need(cfg.client_id_env, "client_id_env") if cfg.client_id_env else cfg.client_id
    out: dict[str, Any] = ({"public_client_id": client_id} if cfg.public_client else
                           {"client_id": client_id, "client_secret": need(cfg.client_secret_env, "client_secret_env")})
    if cfg.kind == "password":
        username = need(cfg.username_env, "username_env") if cfg.username_env else cfg.username or ""
        out["users"] = ((username, need(cfg.password_env, "password_env")),)
    return out


