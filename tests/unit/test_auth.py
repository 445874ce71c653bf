"""[auth] and [wallaroo] table validation, static tokens, secret redaction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bench.auth import (
    REDACTED,
    AuthConfig,
    Redactor,
    TokenSource,
    auth_config_from_mapping,
    keycloak_token_url,
    redact,
    redact_mapping,
)
from bench.errors import InputError
from bench.preflight import deployment_from_url, preflight_config_from_mapping

FILE = "/scenarios/s.toml"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def bad(d: dict[str, Any]) -> InputError:
    with pytest.raises(InputError) as info:
        auth_config_from_mapping(d, FILE)
    assert info.value.file == FILE
    return info.value


def test_empty_is_none() -> None:
    assert auth_config_from_mapping({}, FILE) == AuthConfig()


def test_client_credentials_from_prefix_suffix() -> None:
    cfg = auth_config_from_mapping({"kind": "client_credentials", "keycloak_prefix": "acme",
                                    "keycloak_suffix": "example.ai", "client_secret_env": "KC_SECRET"}, FILE)
    assert cfg.token_url == "https://acme.keycloak.example.ai/auth/realms/master/protocol/openid-connect/token"
    assert cfg.token_url == keycloak_token_url("acme", "example.ai")
    assert cfg.client_id == "api-client" and cfg.refresh_at == 0.8 and cfg.scheme == "Bearer"


def test_password_and_options() -> None:
    cfg = auth_config_from_mapping({"kind": "password", "token_url": "http://127.0.0.1:1/t", "client_id": "sdk",
                                    "client_secret_env": "S", "username_env": "U", "password_env": "P",
                                    "refresh_at": 0.5, "timeout": "3s"}, FILE)
    assert (cfg.kind, cfg.client_id, cfg.username_env, cfg.password_env) == ("password", "sdk", "U", "P")
    assert cfg.refresh_at == 0.5 and cfg.timeout_s == 3.0


def test_embedded_may_omit_token_url() -> None:
    cfg = auth_config_from_mapping({"kind": "client_credentials", "client_secret_env": "S"}, FILE)
    assert cfg.token_url is None
    assert cfg.with_token_url("http://127.0.0.1:9/x").token_url == "http://127.0.0.1:9/x"


def test_static_file_relative_to_scenario() -> None:
    cfg = auth_config_from_mapping({"kind": "static", "token_file": "tok.txt", "scheme": "Token"}, FILE)
    assert cfg.token_file == Path("/scenarios/tok.txt") and cfg.scheme == "Token"


@pytest.mark.parametrize(("key", "hint"), [("token", "token_env"), ("client_secret", "client_secret_env"),
                                           ("password", "password_env"), ("Authorization", "token_env")])
def test_literal_secrets_refused(key: str, hint: str) -> None:
    secret = "s3cr3t-value"
    e = bad({"kind": "client_credentials", key: secret})
    assert e.key == f"auth.{key}" and hint in str(e) and secret not in str(e)


@pytest.mark.parametrize(("d", "key"), [
    ({"kind": "oauth"}, "auth.kind"),
    ({"token_env": "X"}, "auth.kind"),
    ({"kind": "static"}, "auth.token_env"),
    ({"kind": "static", "token_env": "A", "token_file": "f"}, "auth.token_env"),
    ({"kind": "static", "token_env": "not a name!"}, "auth.token_env"),
    ({"kind": "client_credentials"}, "auth.client_secret_env"),
    ({"kind": "client_credentials", "client_secret_env": "S", "token_url": "ftp://x"}, "auth.token_url"),
    ({"kind": "client_credentials", "client_secret_env": "S", "keycloak_prefix": "a"}, "auth.keycloak_suffix"),
    ({"kind": "client_credentials", "client_secret_env": "S", "client_id": "a", "client_id_env": "B"},
     "auth.client_id"),
    ({"kind": "password", "client_secret_env": "S", "password_env": "P"}, "auth.username_env"),
    ({"kind": "password", "client_secret_env": "S", "username_env": "U"}, "auth.password_env"),
    ({"kind": "client_credentials", "client_secret_env": "S", "refresh_at": 1.5}, "auth.refresh_at"),
    ({"kind": "client_credentials", "client_secret_env": "S", "refresh_at": True}, "auth.refresh_at"),
    ({"kind": "none", "token_env": "X"}, "auth.token_env"),
    ({"kind": "none", "colour": "red"}, "auth.colour"),
    ({"kind": "static", "token_env": "X", "scheme": "Bearer x"}, "auth.scheme"),
])
def test_invalid_tables(d: dict[str, Any], key: str) -> None:
    assert bad(d).key == key


def test_static_token_from_env_and_file(tmp_path: Path) -> None:
    cfg = auth_config_from_mapping({"kind": "static", "token_env": "MY_TOKEN"}, FILE)
    source = TokenSource(cfg, environ={"MY_TOKEN": " abc.def \n"})
    assert "abc.def" in source.secrets()
    with pytest.raises(InputError) as info:
        TokenSource(cfg, environ={}, file=FILE)
    assert "MY_TOKEN" in str(info.value) and info.value.key == "auth.token_env"
    (tmp_path / "t").write_text("Token ubi-123\n")
    fcfg = auth_config_from_mapping({"kind": "static", "token_file": str(tmp_path / "t"), "scheme": "Token"}, FILE)
    assert "ubi-123" in TokenSource(fcfg).secrets()[0]
    missing = auth_config_from_mapping({"kind": "static", "token_file": str(tmp_path / "nope")}, FILE)
    with pytest.raises(InputError, match="nope"):
        TokenSource(missing)


@pytest.mark.anyio
async def test_static_start_sets_header_without_doubling_scheme(tmp_path: Path) -> None:
    import anyio

    token_file = tmp_path / "t"
    token_file.write_text("Token ubi-123\n")
    cfg = auth_config_from_mapping({"kind": "static", "token_file": str(token_file), "scheme": "Token"}, FILE)
    source = TokenSource(cfg)
    seen: list[str] = []
    source.on_change(seen.append)
    async with anyio.create_task_group() as tg:
        await source.start(tg)
    assert source.authorization() == "Token ubi-123" and seen == ["Token ubi-123"]
    assert await source.refresh_now() is False  # unchanged file: nothing to do
    token_file.write_text("ubi-456")
    assert await source.refresh_now() is True and source.authorization() == "Token ubi-456"
    assert seen[-1] == "Token ubi-456"
    await source.close()


def test_missing_keycloak_env_names_variable_not_value() -> None:
    cfg = auth_config_from_mapping({"kind": "password", "token_url": "http://127.0.0.1:1/t",
                                    "client_secret_env": "S", "username_env": "U", "password_env": "PW"}, FILE)
    with pytest.raises(InputError) as info:
        TokenSource(cfg, environ={"S": "client-secret-xyz", "U": "alice"}, file=FILE)
    assert "PW" in str(info.value) and info.value.key == "auth.password_env"
    assert "client-secret-xyz" not in str(info.value)
    with pytest.raises(InputError, match="token URL"):
        TokenSource(AuthConfig(kind="client_credentials", client_secret_env="S"), environ={"S": "x"})


def test_secrets_include_basic_blob_and_encodings() -> None:
    cfg = auth_config_from_mapping({"kind": "client_credentials", "token_url": "http://127.0.0.1:1/t",
                                    "client_secret_env": "S"}, FILE)
    source = TokenSource(cfg, environ={"S": "p@ss word"})
    values = source.secrets()
    assert "p@ss word" in values and "p%40ss%20word" in values and "p%40ss+word" in values
    assert "YXBpLWNsaWVudDpwQHNzIHdvcmQ=" in values  # base64("api-client:p@ss word"), as in a Basic header
    assert "api-client" not in values  # the client id is no secret


def test_redact() -> None:
    assert redact("token abc and abcdef", ["abc", "abcdef"]) == f"token {REDACTED} and {REDACTED}"
    assert redact("nothing", []) == "nothing"
    assert Redactor(["a.b"])("a.b axb") == f"{REDACTED} axb"  # literal, not a regex


@given(st.text(), st.lists(st.text(min_size=1), max_size=4))
def test_redact_removes_every_secret(text: str, secrets: list[str]) -> None:
    assume(all("\0" not in s for s in secrets))  # "\0" stands for the replacement below
    joined = "|".join([text, *secrets, text])
    out = redact(joined, secrets)
    longest_first = sorted(secrets, key=len, reverse=True)
    # every secret that is not part of the replacement text itself is gone
    for s in longest_first:
        if s not in REDACTED and not any(s in other for other in secrets if other != s):
            assert s not in out.replace(REDACTED, "\0")


def test_redact_mapping() -> None:
    scenario = {"name": "x", "auth": {"kind": "password", "client_secret_env": "S", "token_url": "http://t"},
                "target": {"url": "http://h/?k=sekrit", "headers": {"Authorization": "Bearer abc", "X-A": "1"}},
                "emulator": {"client_secret": "emu", "token_ttl_s": 3, "require_token": True,
                             "users": [["admin", "pw"]]}}
    out = redact_mapping(scenario, ["sekrit"])
    assert out["auth"] == scenario["auth"]  # only names of where secrets live
    assert out["target"]["headers"] == {"Authorization": REDACTED, "X-A": "1"}
    assert out["target"]["url"] == f"http://h/?k={REDACTED}"
    assert out["emulator"] == {"client_secret": REDACTED, "token_ttl_s": 3, "require_token": True,
                               "users": [[REDACTED, REDACTED]]}


def test_preflight_table() -> None:
    cfg = preflight_config_from_mapping({"api_url": "https://acme.api.example.ai/", "deployment": "ccfraud-7",
                                         "wait": "2m", "poll_interval": 0.5}, FILE)
    assert cfg.enabled and cfg.api_url == "https://acme.api.example.ai" and cfg.wait_s == 120.0
    assert cfg.poll_interval_s == 0.5 and cfg.deployment == "ccfraud-7"
    assert not preflight_config_from_mapping({}, FILE).enabled
    cases: list[tuple[dict[str, Any], str]] = [
        ({"api_url": "acme"}, "wallaroo.api_url"), ({"wait": "soon"}, "wallaroo.wait"),
        ({"workspace_id": "1"}, "wallaroo.workspace_id"), ({"colour": 1}, "wallaroo.colour"),
        ({"api_url": "https://u:p@h"}, "wallaroo.api_url")]
    for d, key in cases:
        with pytest.raises(InputError) as info:
            preflight_config_from_mapping(d, FILE)
        assert info.value.key == key


def test_deployment_from_url() -> None:
    assert deployment_from_url("https://a.b/v1/api/pipelines/infer/ccfraud-7/ccfraud") == "ccfraud-7"
    assert deployment_from_url("http://127.0.0.1:8080/v1/api/pipelines/infer/x-1/y?dataset[]=*") == "x-1"
    assert deployment_from_url("http://127.0.0.1:8080/infer") is None


def test_emulator_credentials() -> None:
    from bench.auth import emulator_credentials

    cc = auth_config_from_mapping({"kind": "client_credentials", "client_secret_env": "S"}, FILE)
    assert emulator_credentials(cc, environ={"S": "x1"}) == {"client_id": "api-client", "client_secret": "x1"}
    pw = auth_config_from_mapping({"kind": "password", "client_secret_env": "S", "client_id_env": "C",
                                   "username_env": "U", "password_env": "P"}, FILE)
    env = {"S": "x1", "C": "cid", "U": "bob", "P": "pw9"}
    assert emulator_credentials(pw, environ=env) == {"client_id": "cid", "client_secret": "x1",
                                                     "users": (("bob", "pw9"),)}
    with pytest.raises(InputError, match="P is not set"):
        emulator_credentials(pw, environ={k: v for k, v in env.items() if k != "P"})
    assert emulator_credentials(AuthConfig(kind="static", token_env="T")) == {}
