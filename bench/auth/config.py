"""The ``[auth]`` table's typed config lives in bench.config.auth (a leaf the scenario reader imports without
pulling in httpx); re-exported here for bench.auth's users."""

from __future__ import annotations

from bench.config.auth import (
    AUTH_KINDS,
    PUBLIC_CLIENT,
    AuthConfig,
    auth_config_from_mapping,
    emulator_credentials,
    keycloak_token_url,
)

__all__ = ["AUTH_KINDS", "PUBLIC_CLIENT", "AuthConfig", "auth_config_from_mapping", "emulator_credentials",
           "keycloak_token_url"]
