"""Signed, JWT-shaped tokens for the emulator: issued by the Keycloak emulator, checked by the inference routes.

HMAC-SHA256 with a random per-process key: tokens are only meaningful to the server that issued them, which is
all an emulator needs. ``verify`` is on the inference hot path, so a verified token is cached (token → expiry)
and a repeat check costs one dict lookup and one clock read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from bench.emulator.config import EmulatorConfig
from bench.emulator.context import EmulatorContext

__all__ = ["ACCESS", "EMAIL_DOMAIN", "EXPIRED", "INVALID", "MISSING", "NOT_A_USER", "OFFLINE", "REFRESH",
           "SERVICE_ACCOUNT_PREFIX", "TokenSigner", "ensure_signer"]

MISSING = "Jwt is missing"
EXPIRED = "Jwt is expired"
INVALID = "Jwt verification fails"
NOT_A_USER = "a user token is required: service-account (client_credentials) tokens are not accepted here"
SERVICE_ACCOUNT_PREFIX = "service-account-"  # Keycloak names a client's service-account user this way

ACCESS, REFRESH, OFFLINE = "Bearer", "Refresh", "Offline"  # Keycloak's ``typ`` of each kind of token
EMAIL_DOMAIN = "emulator.bench.local"  # a user's e-mail when the username is not one
_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
_CACHE_MAX = 256


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Issues and checks ``header.payload.signature`` tokens carrying ``exp``, ``iat``, ``sub``, ``typ``, ``azp``,
    ``preferred_username`` and (a user's) ``email``, as Keycloak's do: ``typ`` is ``Bearer`` for an access token,
    ``Refresh`` or ``Offline`` for a refresh token; the Wallaroo SDK reads ``email`` when it refreshes an offline
    token, so a token without it would break the SDK against the emulator.

    A token whose subject is a service account (``client_credentials``) is an inference token; any other
    subject is a user's (password grant or its refresh), which the MLOps API asks for (``verify_user``).

    ``exp``/``iat`` are epoch seconds with millisecond precision (second precision would make a 2 s token
    lifetime jitter by half its length). ``clock`` is injectable so expiry is testable without sleeping.
    """

    def __init__(self, config: EmulatorConfig, *, clock: Callable[[], float] = time.time,
                 key: bytes | None = None, refresh_ttl_s: float | None = None) -> None:
        self._config = config
        self._clock = clock
        self._key = key if key is not None else secrets.token_bytes(32)
        self.refresh_ttl_s = refresh_ttl_s if refresh_ttl_s is not None else max(1800.0, 2 * config.token_ttl_s)
        self._verified: dict[str, tuple[float, bool]] = {}  # access token -> (exp, is a user's), signature good

    @property
    def access_ttl_s(self) -> float:
        return self._config.token_ttl_s

    def issue(self, subject: str, ttl_s: float, *, client: str | None = None) -> str:
        """An access token for ``subject`` valid for ``ttl_s`` seconds, issued to ``client``."""
        return self._sign(subject, ttl_s, ACCESS, client)

    def issue_refresh(self, subject: str, *, client: str | None = None, offline: bool = False) -> str:
        """A refresh token for ``subject`` valid for ``refresh_ttl_s`` seconds (``offline``: an offline token)."""
        return self._sign(subject, self.refresh_ttl_s, OFFLINE if offline else REFRESH, client)

    def verify(self, authorization: str | None) -> str | None:
        """None when ``authorization`` is ``Bearer <valid unexpired access token>``; else the Wallaroo error text."""
        if not authorization:
            return MISSING
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return MISSING
        entry = self._verified.get(token)
        if entry is None:
            claims = self._decode(token)
            if claims is None or claims.get("typ") != ACCESS:
                return INVALID
            sub = claims.get("sub")
            entry = (float(claims["exp"]), isinstance(sub, str) and not sub.startswith(SERVICE_ACCOUNT_PREFIX))
            if len(self._verified) >= _CACHE_MAX:
                self._verified.clear()
            self._verified[token] = entry
        return EXPIRED if self._clock() >= entry[0] else None

    def verify_user(self, authorization: str | None) -> str | None:
        """As ``verify``, and the token must be a user's, not a service account's (``NOT_A_USER``)."""
        problem = self.verify(authorization)
        if problem is not None or authorization is None:
            return problem
        token = authorization.strip().partition(" ")[2].strip()
        entry = self._verified.get(token)
        return None if entry is not None and entry[1] else NOT_A_USER

    def check_refresh(self, token: str) -> str | None:
        """The subject of a valid, unexpired refresh token; None otherwise."""
        claims = self.refresh_claims(token)
        sub = claims.get("sub") if claims is not None else None
        return sub if isinstance(sub, str) else None

    def refresh_claims(self, token: str) -> dict[str, Any] | None:
        """All claims of a valid, unexpired refresh token (``azp``: its client; ``typ`` ``Offline`` for an offline
        one); None otherwise."""
        claims = self._decode(token)
        if claims is None or claims.get("typ") not in (REFRESH, OFFLINE) or self._clock() >= float(claims["exp"]):
            return None
        return claims

    def _sign(self, subject: str, ttl_s: float, typ: str, client: str | None = None) -> str:
        now = self._clock()
        claims: dict[str, Any] = {"exp": round(now + ttl_s, 3), "iat": round(now, 3), "sub": subject, "typ": typ,
                                  "jti": secrets.token_hex(8), "azp": client or self._config.client_id,
                                  "preferred_username": subject.lower()}
        if not subject.startswith(SERVICE_ACCOUNT_PREFIX):  # a service account has no e-mail address
            claims["email"] = subject.lower() if "@" in subject else f"{subject.lower()}@{EMAIL_DOMAIN}"
        signing_input = f"{_HEADER}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
        signature = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(signature)}"

    def _decode(self, token: str) -> dict[str, Any] | None:
        """Claims of a well-formed token with a good signature (expiry not checked); None otherwise."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        signing_input = f"{parts[0]}.{parts[1]}".encode()
        expected = hmac.new(self._key, signing_input, hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(expected, _unb64(parts[2])):
                return None
            claims = json.loads(_unb64(parts[1]))
        except (binascii.Error, ValueError):
            return None
        if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int | float):
            return None
        return claims


def ensure_signer(ctx: EmulatorContext) -> TokenSigner:
    """The context's signer, created (and stored) on first use so tokens can be issued with require_token off."""
    if ctx.tokens is None:
        ctx.tokens = TokenSigner(ctx.config)
    if not isinstance(ctx.tokens, TokenSigner):
        raise TypeError(f"EmulatorContext.tokens is a {type(ctx.tokens).__name__}, not a TokenSigner")
    return ctx.tokens
