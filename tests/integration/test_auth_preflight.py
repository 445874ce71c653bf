"""Keycloak + MLOps emulator routes, TokenSource refresh and Wallaroo preflight, over real loopback sockets."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote_plus

import anyio
import httpx
import pytest

from bench.auth import TokenSource, auth_config_from_mapping
from bench.emulator.config import EmulatorConfig
from bench.emulator.context import EmulatorContext
from bench.emulator.keycloak import TOKEN_PATH, KeycloakEmulator
from bench.emulator.mlops import MLOpsEmulator
from bench.emulator.tokens import EXPIRED, TokenSigner
from bench.errors import RunInvalid
from bench.preflight import PreflightConfig, run_preflight
from tests.integration.locust_cluster import served_asgi

SECRET = "kc-Secret-4f9e2b"
PASSWORD = "pw-Alice-77c1"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Emulator:
    """The token + MLOps sub-apps behind one tiny router, recording every token grant and able to fail on demand."""

    ctx: EmulatorContext
    grants: list[str] = field(default_factory=list)
    fail_token_requests: bool = False

    def __post_init__(self) -> None:
        self.keycloak = KeycloakEmulator(self.ctx)
        self.mlops = MLOpsEmulator(self.ctx)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"].startswith("/auth/realms/"):
            body = b""

            async def recording_receive() -> Message:
                nonlocal body
                message = await receive()
                body += message.get("body", b"")
                return message

            if self.fail_token_requests:
                await send({"type": "http.response.start", "status": 503, "headers": []})
                await send({"type": "http.response.body", "body": b"unavailable"})
                self.grants.append("failed")
                return
            await self.keycloak(scope, recording_receive, send)
            self.grants.append(parse_qs(body.decode()).get("grant_type", ["?"])[0])
        elif scope["path"].startswith("/v1/api/"):
            await self.mlops(scope, receive, send)
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})


@contextmanager
def emulator(**config: Any) -> Iterator[tuple[str, Emulator]]:
    settings: dict[str, Any] = {"client_secret": SECRET, "users": (("alice", PASSWORD),)} | config
    ctx = EmulatorContext.create(EmulatorConfig(**settings))
    if ctx.config.require_token:
        ctx.tokens = TokenSigner(ctx.config)
    app = Emulator(ctx)
    with served_asgi(app) as url:
        yield url, app


def token_source(url: str, kind: str = "client_credentials", secret: str = SECRET, refresh_at: float = 0.8,
                 count: Callable[[str, int], None] | None = None) -> TokenSource:
    table: dict[str, Any] = {"kind": kind, "token_url": url + TOKEN_PATH, "client_secret_env": "KC_SECRET",
                             "refresh_at": refresh_at}
    if kind == "password":
        table |= {"username": "alice", "password_env": "KC_PASSWORD"}
    return TokenSource(auth_config_from_mapping(table, "s.toml"), count=count,
                       environ={"KC_SECRET": secret, "KC_PASSWORD": PASSWORD})


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await anyio.sleep(0.02)


# -- Keycloak emulator ------------------------------------------------------------------------------------------


def test_keycloak_grants_and_errors() -> None:
    with emulator(token_ttl_s=120) as (url, app), httpx.Client(base_url=url) as http:
        good = (app.ctx.config.client_id, SECRET)
        r = http.post(TOKEN_PATH, data={"grant_type": "client_credentials"}, auth=good)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] == 120 and "refresh_token" not in body
        signer = app.ctx.tokens  # created on demand although require_token is off
        assert isinstance(signer, TokenSigner) and signer.verify(f"Bearer {body['access_token']}") is None

        r = http.post(TOKEN_PATH, data={"grant_type": "password", "username": "alice", "password": PASSWORD},
                      auth=good)
        assert r.status_code == 200 and r.json()["refresh_token"] and r.json()["refresh_expires_in"] > 0
        refresh = r.json()["refresh_token"]
        r = http.post(TOKEN_PATH, data={"grant_type": "refresh_token", "refresh_token": refresh}, auth=good)
        assert r.status_code == 200 and signer.verify(f"Bearer {r.json()['access_token']}") is None
        # client_secret_post works too
        r = http.post(TOKEN_PATH, data={"grant_type": "client_credentials", "client_id": "api-client",
                                        "client_secret": SECRET})
        assert r.status_code == 200

        def error(data: dict[str, str], auth: tuple[str, str] | None = good) -> tuple[int, str]:
            response = http.post(TOKEN_PATH, data=data, auth=auth or httpx.USE_CLIENT_DEFAULT)
            assert SECRET not in response.text and PASSWORD not in response.text
            return response.status_code, response.json()["error"]

        assert error({"grant_type": "client_credentials"}, ("api-client", "wrong")) == (401, "invalid_client")
        assert error({"grant_type": "client_credentials"}, ("other", SECRET)) == (401, "invalid_client")
        assert error({"grant_type": "client_credentials"}, None) == (401, "invalid_client")
        assert error({"grant_type": "password", "username": "alice", "password": "x"}) == (401, "invalid_grant")
        assert error({"grant_type": "refresh_token", "refresh_token": "bogus"}) == (400, "invalid_grant")
        assert error({"grant_type": "refresh_token", "refresh_token": body["access_token"]}) == (400, "invalid_grant")
        assert error({"grant_type": "authorization_code"}) == (400, "unsupported_grant_type")
        assert error({}) == (400, "invalid_request")
        assert http.get(TOKEN_PATH).status_code == 405
        assert http.post("/auth/realms/other/protocol/openid-connect/token", auth=good).status_code == 404


# -- MLOps emulator ---------------------------------------------------------------------------------------------


def test_mlops_status_starting_then_running() -> None:
    # the older platform's shape: flat engine fields, 404 for a wrong name (today's is the default: see
    # test_emulator_wallaroo_platform)
    with emulator(startup_s=0.6, deployment="ccfraud-7", engine_info=False, unknown_deployment_status=404) as (
            url, _app), httpx.Client(base_url=url) as http:
        first = http.post("/v1/api/status/get_deployment", json={"name": "ccfraud-7"})
        assert first.status_code == 200 and first.json()["status"] == "Starting"
        assert first.json()["engines"][0]["status"] == "Pending" and first.json()["sidekicks"] == []
        deadline = time.monotonic() + 5
        while (status := http.post("/v1/api/status/get_deployment", json={"name": "ccfraud-7"}).json())[
                "status"] != "Running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert status["engines"][0]["status"] == "Running" and status["engine_lbs"]
        missing = http.post("/v1/api/status/get_deployment", json={"name": "nope-1"})
        assert missing.status_code == 404 and missing.json()["status"] == "error"
        assert http.post("/v1/api/status/get_deployment", content=b"[").status_code == 400


def test_mlops_external_url_and_token_check() -> None:
    # any valid token on MLOps routes, as older emulators (the user-token rule: test_emulator_wallaroo_platform)
    with emulator(require_token=True, workspace_id=5, pipeline="fraud", deployment="fraud-3",
                  mlops_user_token=False) as (url, _app), httpx.Client(base_url=url) as http:
        route = "/v1/api/admin/get_pipeline_external_url"
        body = {"workspace_id": 5, "pipeline_name": "fraud"}
        denied = http.post(route, json=body)
        assert denied.status_code == 401 and denied.json() == {"code": 401, "status": "error",
                                                               "error": "Jwt is missing", "source": "platform"}
        token = http.post(TOKEN_PATH, data={"grant_type": "client_credentials"}, auth=("api-client", SECRET))
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        ok = http.post(route, json=body, headers=headers)
        assert ok.status_code == 200
        assert ok.json() == {"url": f"{url}/v1/api/pipelines/infer/fraud-3/fraud"}
        assert http.post(route, json={"workspace_id": 6, "pipeline_name": "fraud"}, headers=headers).status_code == 404
        assert http.post(route, json={"workspace_id": "5"}, headers=headers).status_code == 400
        assert http.post("/v1/api/status/get_deployment", json={"name": "fraud-3"}).status_code == 401


# -- TokenSource ------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_token_source_refreshes_ahead_of_expiry() -> None:
    counts: dict[str, int] = {}

    def count(name: str, n: int) -> None:
        counts[name] = counts.get(name, 0) + n

    with emulator(require_token=True, token_ttl_s=2) as (url, app):
        source = token_source(url, refresh_at=0.25, count=count)
        seen: list[str] = []
        source.on_change(seen.append)
        async with anyio.create_task_group() as tg:
            await source.start(tg)
            assert source.authorization().startswith("Bearer ") and seen == [source.authorization()]
            await wait_for(lambda: counts.get("token_refresh", 0) >= 3)
            await source.close()
        assert app.ctx.tokens is not None
        assert all(app.ctx.tokens.verify(h) in (None, EXPIRED) for h in seen)
        assert app.ctx.tokens.verify(source.authorization()) is None
        assert len(set(seen)) == len(seen) >= 4 and source.refreshes == counts["token_refresh"]
        assert set(app.grants) == {"client_credentials"} and "token_refresh_failed" not in counts
        secrets = source.secrets()
        assert SECRET in secrets and all(h.split(" ", 1)[1] in secrets for h in seen)


@pytest.mark.anyio
async def test_password_flow_uses_refresh_grant_and_refresh_now_coalesces() -> None:
    with emulator(require_token=True, token_ttl_s=60) as (url, app):
        source = token_source(url, kind="password")
        async with anyio.create_task_group() as tg:
            await source.start(tg)
            first = source.authorization()
            assert app.grants == ["password"]
            results: list[bool] = []

            async def ask() -> None:
                results.append(await source.refresh_now())

            async with anyio.create_task_group() as burst:
                for _ in range(10):
                    burst.start_soon(ask)
            assert results == [True] * 10 and app.grants == ["password", "refresh_token"]
            assert source.authorization() != first
            assert await source.refresh_now(seen=first) is True  # stale 401: already refreshed, no request
            assert app.grants == ["password", "refresh_token"]
            for _ in range(5):  # fire and forget from sync code (a result callback): one request in all
                source.refresh_now(seen=source.authorization())
            await wait_for(lambda: len(app.grants) == 3)
            assert app.grants[-1] == "refresh_token"
            await anyio.sleep(0.2)  # a window for (wrong) extra requests to show up
            assert len(app.grants) == 3
            await source.close()


ODD_SECRET = "kc+Se%2Fcret 4f%9e"  # '+', '%' (one a valid escape, one not) and a space


def test_keycloak_form_decodes_the_basic_credentials() -> None:
    """RFC 6749 §2.3.1: the client id and secret are form-encoded before Basic, and Keycloak decodes them: the
    encoded secret is accepted, the raw one (its '+' read as a space, its %2F as '/') is not."""
    with emulator(client_secret=ODD_SECRET) as (url, _app), httpx.Client(base_url=url) as http:
        encoded = (quote_plus("api-client", safe=""), quote_plus(ODD_SECRET, safe=""))
        r = http.post(TOKEN_PATH, data={"grant_type": "client_credentials"}, auth=encoded)
        assert r.status_code == 200, r.text
        raw = http.post(TOKEN_PATH, data={"grant_type": "client_credentials"}, auth=("api-client", ODD_SECRET))
        assert raw.status_code == 401 and raw.json()["error"] == "invalid_client"
        assert ODD_SECRET not in raw.text


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["client_credentials", "password"])
async def test_a_secret_with_plus_and_percent_gets_a_token(kind: str) -> None:
    """bench form-encodes the pair before Basic, so a secret holding '+' or '%' works against Keycloak (it was
    sent raw and refused with 401 invalid_client)."""
    with emulator(client_secret=ODD_SECRET) as (url, app):
        source = token_source(url, kind, secret=ODD_SECRET)
        assert await source.refresh_now() is True and source.authorization().startswith("Bearer ")
        assert app.grants == [kind]
        assert base64.b64encode(f"api-client:{quote_plus(ODD_SECRET, safe='')}".encode()).decode() \
            in source.secrets()  # the Basic blob as sent is scrubbed from reports too
        await source.close()


@pytest.mark.anyio
async def test_default_token_url_and_refresh_before_start() -> None:
    with emulator() as (url, app):
        cfg = auth_config_from_mapping({"kind": "client_credentials", "client_secret_env": "S"}, "s.toml")
        source = TokenSource(cfg, environ={"S": SECRET}, default_token_url=url + TOKEN_PATH)
        assert await source.refresh_now() is True and source.authorization().startswith("Bearer ")
        assert app.grants == ["client_credentials"]
        await source.close()


@pytest.mark.anyio
async def test_failed_refresh_keeps_old_token_and_retries() -> None:
    counts: dict[str, int] = {}

    def count(name: str, n: int) -> None:
        counts[name] = counts.get(name, 0) + n

    with emulator(require_token=True, token_ttl_s=2) as (url, app):
        source = token_source(url, refresh_at=0.2, count=count)
        async with anyio.create_task_group() as tg:
            await source.start(tg)
            held = source.authorization()
            app.fail_token_requests = True
            await wait_for(lambda: counts.get("token_refresh_failed", 0) >= 2)
            assert source.authorization() == held and "token_refresh" not in counts
            assert source.last_error is not None and "503" in source.last_error and url in source.last_error
            app.fail_token_requests = False
            await wait_for(lambda: counts.get("token_refresh", 0) >= 1)
            assert source.authorization() != held
            await source.close()


@pytest.mark.anyio
async def test_first_token_failure_is_run_invalid_without_secret() -> None:
    with emulator() as (url, _app):
        source = token_source(url, secret="wrong-Secret-123")
        async with anyio.create_task_group() as tg:
            with pytest.raises(RunInvalid) as info:
                await source.start(tg)
        message = str(info.value)
        assert "401" in message and url + TOKEN_PATH in message and "invalid_client" in message
        assert "wrong-Secret-123" not in message and SECRET not in message
        await source.close()
    # nothing listening: still a clean RunInvalid naming the URL
    source = token_source(url)
    async with anyio.create_task_group() as tg:
        with pytest.raises(RunInvalid, match=r"127\.0\.0\.1"):
            await source.start(tg)
    await source.close()


@pytest.mark.anyio
async def test_unsendable_access_token_is_run_invalid_without_the_token() -> None:
    """A token endpoint whose access_token cannot be a header value (a line break inside) is a failed fetch:
    a clean RunInvalid naming the endpoint, not an engine crashing on the header (nor the token shown)."""
    token = "tok-Line1\ntok-Line2"

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = json.dumps({"access_token": token, "expires_in": 60, "token_type": "Bearer"}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    with served_asgi(app) as url:
        source = token_source(url)
        async with anyio.create_task_group() as tg:
            with pytest.raises(RunInvalid) as info:
                await source.start(tg)
        await source.close()
    message = str(info.value)
    assert url + TOKEN_PATH in message and "line break" in message
    assert "tok-Line1" not in message and "tok-Line2" not in message


# -- preflight --------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_preflight_waits_for_running_and_resolves_url() -> None:
    with emulator(require_token=True, startup_s=0.8, workspace_id=3, deployment="ccfraud-9") as (url, _app):
        source = token_source(url, kind="password")  # the MLOps API takes a user's token
        async with anyio.create_task_group() as tg:
            await source.start(tg)
            lines: list[str] = []
            cfg = PreflightConfig(api_url=url, workspace_id=3, pipeline="ccfraud", wait_s=10, poll_interval_s=0.1)
            resolved = await run_preflight(cfg, source.authorization, progress=lines.append)
            assert resolved == f"{url}/v1/api/pipelines/infer/ccfraud-9/ccfraud"
            assert any("Starting" in line for line in lines) and lines[-1].endswith("is Running")
            # with a URL given: nothing to resolve, deployment taken from the URL
            again = await run_preflight(PreflightConfig(api_url=url, poll_interval_s=0.1), source.authorization,
                                        progress=lines.append, target_url=resolved)
            assert again is None
            await source.close()


@pytest.mark.anyio
async def test_preflight_gives_up_with_status_and_engines() -> None:
    with emulator(startup_s=60, deployment="ccfraud-2") as (url, _app):
        lines: list[str] = []
        cfg = PreflightConfig(api_url=url, deployment="ccfraud-2", wait_s=0.3, poll_interval_s=0.1)
        started = time.monotonic()
        with pytest.raises(RunInvalid) as info:
            await run_preflight(cfg, lambda: "", progress=lines.append, target_url="http://x/infer")
        assert time.monotonic() - started < 3
        message = str(info.value)
        assert "Starting" in message and "engine-ccfraud-2-0 Pending (ContainersNotReady)" in message
        assert info.value.exit_code == 3 and lines and all("Starting" in line for line in lines)
        with pytest.raises(RunInvalid, match="HTTP 400"):  # today's answer for a wrong name; no waiting
            await run_preflight(PreflightConfig(api_url=url, deployment="nope-1", wait_s=1), lambda: "",
                                progress=lines.append, target_url="http://x/infer")


@pytest.mark.anyio
async def test_preflight_rejected_token_is_run_invalid() -> None:
    with emulator(require_token=True) as (url, _app):
        cfg = PreflightConfig(api_url=url, deployment="ccfraud-1", wait_s=1, poll_interval_s=0.1)
        with pytest.raises(RunInvalid, match="401: Jwt verification fails"):
            await run_preflight(cfg, lambda: "Bearer a.b.c", progress=lambda _line: None, target_url="http://x/i")
