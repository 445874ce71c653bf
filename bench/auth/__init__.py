"""Credentials for the measured endpoint and the platform's API: the scenario's tables (``config``), the live
tokens (``source``: static tokens, Keycloak client-credentials / password grants, refresh) and secret scrubbing
(``redaction``). Import from here; the submodules are the implementation."""

from __future__ import annotations

from bench.auth.config import (
    AUTH_KINDS,
    PUBLIC_CLIENT,
    AuthConfig,
    auth_config_from_mapping,
    emulator_credentials,
    keycloak_token_url,
)
from bench.auth.redaction import REDACTED, Redactor, redact, redact_mapping
from bench.auth.source import TokenSource

__all__ = ["AUTH_KINDS", "PUBLIC_CLIENT", "REDACTED", "AuthConfig", "Redactor", "TokenSource",
           "auth_config_from_mapping", "emulator_credentials", "keycloak_token_url", "redact", "redact_mapping"]
