"""Credentials for the measured endpoint and the platform's API: the ``[auth]`` table's config (``bench.config.auth``,
a leaf the scenario reader imports without httpx; re-exported here), the live tokens (``source``: static tokens,
Keycloak client-credentials / password grants, refresh) and secret scrubbing (``redaction``). Import from here."""

from __future__ import annotations

from bench.auth.redaction import REDACTED, Redactor, redact, redact_mapping
from bench.auth.source import TokenSource
from bench.config.auth import (
    AUTH_KINDS,
    PUBLIC_CLIENT,
    AuthConfig,
    auth_config_from_mapping,
    emulator_credentials,
    keycloak_token_url,
)

__all__ = ["AUTH_KINDS", "PUBLIC_CLIENT", "REDACTED", "AuthConfig", "Redactor", "TokenSource",
           "auth_config_from_mapping", "emulator_credentials", "keycloak_token_url", "redact", "redact_mapping"]
