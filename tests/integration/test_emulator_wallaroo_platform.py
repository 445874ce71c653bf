"""The Wallaroo emulator as today's (and older) platforms behave, over real loopback sockets.

Keycloak's two clients (public ``sdk-client``, confidential ``api-client``), the MLOps API's user token, a
deployment in ``Error``, engine fields under ``info``, and the older inference URL and answer shape. Each
emulator is a `bench serve` child process (EmbeddedEmulator), as `bench run` starts it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from bench.emulator.config import EmulatorConfig
from bench.emulator.embedded import EmbeddedEmulator
from bench.emulator.keycloak import TOKEN_PATH
from bench.emulator.model import predict
from bench.emulator.tokens import NOT_A_USER

SECRET = "emulator-secret"  # EmulatorConfig.client_secret
USER = {"username": "admin", "password": "admin"}  # EmulatorConfig.users
STATUS = "/v1/api/status/get_deployment"
EXTERNAL_URL = "/v1/api/admin/get_pipeline_external_url"


def _matrix(n: int, seed: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 29)).astype(np.float32)


def _records(matrix: np.ndarray) -> bytes:
    return orjson.dumps([{"tensor": row} for row in matrix.astype(np.float64).tolist()])


@pytest.fixture
def start() -> Iterator[Any]:
    """Start emulators with given options; every one is stopped when the test ends, pass or fail."""
    running: list[EmbeddedEmulator] = []

    def go(**options: Any) -> httpx.Client:
        emu = EmbeddedEmulator(EmulatorConfig(**{"latency_ms": 0.5, "per_row_us": 0.0, "jitter": 0.0} | options))
        emu.__enter__()
        running.append(emu)
        return httpx.Client(base_url=emu.base_url)

    try:
        yield go
    finally:
        for emu in running:
            emu.__exit__(None, None, None)


def _oauth_error(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, str(r.json()["error"])


def test_keycloak_public_and_confidential_clients(start: Any) -> None:
    http = start()
    public = http.post(TOKEN_PATH, data={"grant_type": "password", "client_id": "sdk-client",
                                         "scope": "offline_access", **USER})
    assert public.status_code == 200, public.text
    body = public.json()
    assert "offline_access" in body["scope"].split() and body["refresh_token"] and body["refresh_expires_in"] == 0
    refreshed = http.post(TOKEN_PATH, data={"grant_type": "refresh_token", "client_id": "sdk-client",
                                            "refresh_token": body["refresh_token"]})
    assert refreshed.status_code == 200 and "offline_access" in refreshed.json()["scope"].split()
    assert refreshed.json()["access_token"] != body["access_token"]
    # without offline_access: an ordinary session, scope not widened
    online = http.post(TOKEN_PATH, data={"grant_type": "password", "client_id": "sdk-client", **USER}).json()
    assert "offline_access" not in online["scope"].split() and online["refresh_expires_in"] > 0
    # a refresh token works only for the client it was issued to
    assert _oauth_error(http.post(TOKEN_PATH, data={"grant_type": "refresh_token",
                                                    "refresh_token": body["refresh_token"]},
                                  auth=("api-client", SECRET))) == (400, "invalid_grant")
    # the public client has no service account
    assert _oauth_error(http.post(TOKEN_PATH, data={"grant_type": "client_credentials",
                                                    "client_id": "sdk-client"})) == (400, "unauthorized_client")
    # the confidential client: its secret is required, by Basic auth or in the form
    for auth, extra in ((("api-client", ""), {}), (None, {"client_id": "api-client"})):
        r = http.post(TOKEN_PATH, data={"grant_type": "password", "scope": "offline_access", **USER, **extra},
                      auth=auth)
        assert _oauth_error(r) == (401, "unauthorized_client")
        assert r.json()["error_description"] == "Client secret not provided in request"
    confidential = http.post(TOKEN_PATH, data={"grant_type": "password", "scope": "offline_access", **USER},
                             auth=("api-client", SECRET))
    assert confidential.status_code == 200 and "offline_access" in confidential.json()["scope"].split()
    assert _oauth_error(http.post(TOKEN_PATH, data={"grant_type": "password", **USER},
                                  auth=("api-client", "wrong"))) == (401, "invalid_client")
    assert _oauth_error(http.post(TOKEN_PATH, data={"grant_type": "password", "client_id": "sdk-client",
                                                    "username": "admin", "password": "x"})) == (401, "invalid_grant")


def test_mlops_needs_a_user_token_inference_takes_the_inference_token(start: Any) -> None:
    http = start(require_token=True, mlops_user_token=True)
    service = http.post(TOKEN_PATH, data={"grant_type": "client_credentials"}, auth=("api-client", SECRET))
    inference = {"Authorization": f"Bearer {service.json()['access_token']}"}
    user_token = http.post(TOKEN_PATH, data={"grant_type": "password", "client_id": "sdk-client", **USER}).json()
    user = {"Authorization": f"Bearer {user_token['access_token']}"}
    denied = http.post(STATUS, json={"name": "ccfraud-1"}, headers=inference)
    assert denied.status_code == 403 and denied.json() == {"code": 403, "status": "error", "error": NOT_A_USER,
                                                           "source": "platform"}
    assert http.post(EXTERNAL_URL, json={"workspace_id": 1, "pipeline_name": "ccfraud"},
                     headers=inference).status_code == 403
    assert http.post(STATUS, json={"name": "ccfraud-1"}).status_code == 401
    ok = http.post(STATUS, json={"name": "ccfraud-1"}, headers=user)
    assert ok.status_code == 200 and ok.json()["status"] == "Running"
    url = http.post(EXTERNAL_URL, json={"workspace_id": 1, "pipeline_name": "ccfraud"}, headers=user).json()["url"]
    assert http.post(url, content=_records(_matrix(3)), headers=inference).status_code == 200
    # a refreshed user token is still a user's
    again = http.post(TOKEN_PATH, data={"grant_type": "refresh_token", "client_id": "sdk-client",
                                        "refresh_token": user_token["refresh_token"]}).json()
    assert http.post(STATUS, json={"name": "ccfraud-1"},
                     headers={"Authorization": f"Bearer {again['access_token']}"}).status_code == 200
    # without the option (now on by default) any valid token passes, as before
    lenient = start(require_token=True, mlops_user_token=False)
    token = lenient.post(TOKEN_PATH, data={"grant_type": "client_credentials"}, auth=("api-client", SECRET))
    assert lenient.post(STATUS, json={"name": "ccfraud-1"},
                        headers={"Authorization": f"Bearer {token.json()['access_token']}"}).status_code == 200


def test_deployment_in_error_with_engine_info_and_unknown_name(start: Any) -> None:
    http = start(deployment_status="Error", engine_info=True, unknown_deployment_status=500)
    r = http.post(STATUS, json={"name": "ccfraud-1"})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "Error" and body["details"]
    engine = body["engines"][0]
    assert set(engine) == {"info", "pipeline_statuses", "model_statuses"}
    assert engine["info"]["status"] == "Error" and engine["info"]["reason"] == "CrashLoopBackOff"
    assert engine["info"]["name"].startswith("engine-ccfraud-1") and "status" in body["engine_lbs"][0]["info"]
    wrong = http.post(STATUS, json={"name": "nope-9"})
    assert wrong.status_code == 500 and wrong.json()["status"] == "error" and "nope-9" in wrong.json()["error"]
    infer = http.post("/v1/api/pipelines/infer/ccfraud-1/ccfraud", content=_records(_matrix(2)))
    assert infer.status_code == 503 and "Error" in infer.json()["error"]
    later = start(deployment_status="Error", startup_s=1.5)  # fails to start: Starting, then Error
    seen: list[str] = []
    deadline = time.monotonic() + 20
    while "Error" not in seen and time.monotonic() < deadline:  # poll the condition, with a deadline
        seen.append(later.post(STATUS, json={"name": "ccfraud-1"}).json()["status"])
        time.sleep(0.05)
    assert seen[0] == "Starting" and seen[-1] == "Error" and set(seen) == {"Starting", "Error"}
    flat = start(engine_info=False)  # the older shape; a wrong name is 400 by default, as today's platform
    assert flat.post(STATUS, json={"name": "nope-9"}).status_code == 400
    engine = flat.post(STATUS, json={"name": "ccfraud-1"}).json()["engines"][0]
    assert engine["status"] == "Running" and "info" not in engine


def test_legacy_url_and_one_object_answer(start: Any) -> None:
    http = start(legacy_infer=True, deployment="ccfraud-6")
    url = http.post(EXTERNAL_URL, json={"workspace_id": 1, "pipeline_name": "ccfraud"}).json()["url"]
    assert url.endswith("/v1/api/pipelines/infer/ccfraud-6")
    matrix = _matrix(17)
    expected = predict(matrix.astype(np.float64)).astype(np.float32)
    for body in (_records(matrix), orjson.dumps({"tensor": matrix.astype(np.float64).tolist()})):
        r = http.post(url, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert isinstance(answer, list) and len(answer) == 1  # one object per request, not one per row
        only = answer[0]
        assert only["pipeline_name"] == "ccfraud" and only["model_name"] and only["elapsed"] > 0
        tensor = only["outputs"][0]["Float"]
        assert tensor["v"] == 1 and tensor["dim"] == [17, 1]
        assert np.allclose(tensor["data"], expected, rtol=1e-6)
    assert http.post("/v1/api/pipelines/infer/ccfraud-6/ccfraud", content=_records(matrix)).status_code == 404
    assert http.post("/v1/api/pipelines/infer/ccfraud-7", content=_records(matrix)).status_code == 404
    modern = start(deployment="ccfraud-6")  # the default stays the current shape: one record per row
    rows = modern.post("/v1/api/pipelines/infer/ccfraud-6/ccfraud", content=_records(matrix)).json()
    assert len(rows) == 17 and np.allclose([row["out"]["dense_1"][0] for row in rows], expected, rtol=1e-6)


def test_serve_flags_reach_the_emulator(serve_emulator: Callable[..., str]) -> None:
    base = serve_emulator("--legacy-infer", "--deployment-status", "Error", "--engine-info", "--require-token",
                          "--mlops-user-token", "--batch-cancel-status", "404", "--max-pending", "2")
    with httpx.Client(base_url=base) as http:
        service = http.post(TOKEN_PATH, data={"grant_type": "client_credentials"}, auth=("api-client", SECRET))
        denied = http.post(STATUS, json={"name": "ccfraud-1"},
                           headers={"Authorization": f"Bearer {service.json()['access_token']}"})
        assert denied.status_code == 403
        user = http.post(TOKEN_PATH, data={"grant_type": "password", "client_id": "sdk-client", **USER}).json()
        status = http.post(STATUS, json={"name": "ccfraud-1"},
                           headers={"Authorization": f"Bearer {user['access_token']}"}).json()
        assert status["status"] == "Error" and status["engines"][0]["info"]["status"] == "Error"
        url = http.post(EXTERNAL_URL, json={"workspace_id": 1, "pipeline_name": "ccfraud"},
                        headers={"Authorization": f"Bearer {user['access_token']}"}).json()["url"]
        assert url == f"{base}/v1/api/pipelines/infer/ccfraud-1"
        ubiops = {"Authorization": "Token emulator-ubiops-token"}
        deployment = "/v2.1/projects/demo/deployments/ccfraud/requests"
        assert http.post(f"{deployment}/cancel", json=[], headers=ubiops).status_code == 404
        assert http.post(f"{deployment}/batch", json=[{"tensor": [0.0] * 29}] * 3, headers=ubiops).status_code == 400
