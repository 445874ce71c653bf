"""TokenSigner: issue / verify / expiry with an injected clock, tamper detection, refresh tokens."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.emulator.config import EmulatorConfig
from bench.emulator.context import EmulatorContext
from bench.emulator.tokens import EXPIRED, INVALID, MISSING, TokenSigner, ensure_signer


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, **kw: float) -> TokenSigner:
    return TokenSigner(EmulatorConfig(token_ttl_s=kw.get("ttl", 60.0)), clock=clock)


def claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    result: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return result


def test_issue_then_verify_until_expiry() -> None:
    clock = Clock()
    signer = make(clock)
    token = signer.issue("service-account-api-client", 2.0)
    assert token.count(".") == 2
    c = claims(token)
    assert c["sub"] == "service-account-api-client" and c["typ"] == "Bearer"  # Keycloak's typ of an access token
    assert c["preferred_username"] == "service-account-api-client" and "email" not in c  # no e-mail: a service
    assert c["exp"] == pytest.approx(clock.now + 2.0) and c["iat"] == pytest.approx(clock.now)
    assert signer.verify(f"Bearer {token}") is None
    assert signer.verify(f"bearer {token}") is None  # scheme is case-insensitive
    clock.now += 1.999
    assert signer.verify(f"Bearer {token}") is None
    clock.now += 0.002
    assert signer.verify(f"Bearer {token}") == EXPIRED
    assert signer.verify(f"Bearer {token}") == EXPIRED  # the cached path agrees


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic abc", "Token xyz"])
def test_missing(header: str | None) -> None:
    assert make(Clock()).verify(header) == MISSING


def test_tampered_and_foreign_tokens_fail() -> None:
    clock = Clock()
    signer, other = make(clock), make(clock)
    token = signer.issue("alice", 60)
    header, _payload, sig = token.split(".")
    forged_claims = claims(token) | {"sub": "mallory"}
    forged = base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).rstrip(b"=").decode()
    assert signer.verify(f"Bearer {header}.{forged}.{sig}") == INVALID
    assert signer.verify(f"Bearer {other.issue('alice', 60)}") == INVALID  # another process's key
    assert signer.verify("Bearer not-a-jwt") == INVALID
    assert signer.verify(f"Bearer {token}x") == INVALID
    assert signer.verify(f"Bearer {signer.issue_refresh('alice')}") == INVALID  # refresh token is no access token


def test_refresh_tokens() -> None:
    clock = Clock()
    signer = make(clock, ttl=2.0)
    assert signer.refresh_ttl_s >= 1800
    refresh = signer.issue_refresh("alice")
    assert signer.check_refresh(refresh) == "alice"
    assert signer.check_refresh(signer.issue("alice", 60)) is None  # access token is no refresh token
    assert signer.check_refresh("garbage") is None
    clock.now += signer.refresh_ttl_s
    assert signer.check_refresh(refresh) is None


def test_tokens_are_unique() -> None:
    signer = make(Clock())
    assert len({signer.issue("a", 10) for _ in range(50)}) == 50


def test_cache_is_bounded_and_still_correct() -> None:
    clock = Clock()
    signer = make(clock)
    tokens = [signer.issue(f"s{i}", 10) for i in range(600)]
    assert all(signer.verify(f"Bearer {t}") is None for t in tokens)
    clock.now += 11
    assert all(signer.verify(f"Bearer {t}") == EXPIRED for t in tokens[:5] + tokens[-5:])


@given(st.text(max_size=200))
def test_verify_never_raises(text: str) -> None:
    assert make(Clock()).verify(f"Bearer {text}") in (MISSING, INVALID)


def test_ensure_signer_creates_once() -> None:
    ctx = EmulatorContext.create(EmulatorConfig())
    assert ctx.tokens is None
    signer = ensure_signer(ctx)
    assert ctx.tokens is signer and ensure_signer(ctx) is signer


def test_claims_as_keycloak_writes_them() -> None:
    """``typ`` Bearer / Refresh / Offline, and a user's ``email`` and ``preferred_username`` (the Wallaroo SDK
    reads ``email`` when it refreshes an offline token)."""
    signer = make(Clock())
    user = claims(signer.issue("Admin", 60))
    assert user["typ"] == "Bearer" and user["preferred_username"] == "admin"
    assert user["email"] == "admin@emulator.bench.local"
    assert claims(signer.issue("alice@example.com", 60))["email"] == "alice@example.com"
    refresh, offline = signer.issue_refresh("admin"), signer.issue_refresh("admin", offline=True)
    assert claims(refresh)["typ"] == "Refresh" and claims(offline)["typ"] == "Offline"
    assert claims(offline)["email"] == "admin@emulator.bench.local"
    assert signer.check_refresh(refresh) == "admin" and signer.check_refresh(offline) == "admin"
    assert signer.verify(f"Bearer {offline}") == INVALID  # an offline token is no access token either
