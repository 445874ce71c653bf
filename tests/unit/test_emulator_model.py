"""The emulator's model (deterministic, bounded, vectorised) and its config validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bench.emulator.config import EmulatorConfig, UbiOpsDeployment
from bench.emulator.embedded import config_problems, config_to_json, emulator_config_from_mapping
from bench.emulator.model import FEATURES, LogisticModel, predict
from bench.emulator.server import LISTENING_PREFIX, url_lines
from bench.errors import InputError


def _rows(n: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_t(3, size=(n, FEATURES)) * 2.0  # heavy tails like the ccfraud set


def test_model_is_deterministic_across_instances() -> None:
    x = _rows(50)
    assert np.array_equal(LogisticModel().predict(x), LogisticModel().predict(x))
    assert np.array_equal(predict(x), LogisticModel().predict(x))


def test_model_output_is_one_score_per_row_and_matches_row_by_row() -> None:
    x = _rows(200)
    scores = predict(x)
    assert scores.shape == (200,)
    one_by_one = np.array([predict(row[None, :])[0] for row in x])
    assert np.allclose(scores, one_by_one, rtol=0, atol=1e-12)


def test_model_scores_vary_with_the_input() -> None:
    scores = predict(np.random.default_rng(5).standard_normal((20_000, FEATURES)))
    assert scores.std() > 1e-3  # not a constant
    assert 0.0005 < (scores > 0.5).mean() < 0.01  # a few "fraud" rows, like the ccfraud set's ~0.2 %


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (7, FEATURES), elements=st.floats(-1e9, 1e9, allow_nan=False)))
def test_model_scores_stay_in_unit_interval_for_extreme_inputs(x: np.ndarray) -> None:
    scores = predict(x)
    assert np.all((scores >= 0.0) & (scores <= 1.0))


@pytest.mark.parametrize("shape", [(29,), (3, 28), (2, 29, 1)])
def test_model_rejects_wrong_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="29"):
        predict(np.zeros(shape))


def test_config_from_mapping_accepts_a_valid_table() -> None:
    cfg = emulator_config_from_mapping(
        {"latency_ms": 2, "replicas": 3, "error_rate": 0.1, "http2": True, "pipeline": "p",
         "users": {"alice": "pw"},
         "ubiops_deployments": [{"name": "echo", "input_type": "plain", "fields": []}]}, "s.toml")
    assert cfg.latency_ms == 2.0 and isinstance(cfg.latency_ms, float)
    assert cfg.replicas == 3 and cfg.http2 and cfg.pipeline == "p"
    assert cfg.users == (("alice", "pw"),)
    assert cfg.ubiops_deployments == (UbiOpsDeployment(name="echo", input_type="plain", fields=()),)
    typed = emulator_config_from_mapping({"ubiops_deployments": [{"fields": ["a", "b"],
                                                                   "field_types": ["int", "array_string"]}]}, "s")
    assert typed.ubiops_deployments[0].field_types == ("int", "array_string")


@pytest.mark.parametrize(("table", "key", "words"), [
    ({"latncy_ms": 1}, "emulator.latncy_ms", "unknown key"),
    ({"replicas": 2.5}, "emulator.replicas", "integer"),
    ({"replicas": True}, "emulator.replicas", "integer"),
    ({"http2": "yes"}, "emulator.http2", "true or false"),
    ({"latency_ms": "5"}, "emulator.latency_ms", "number"),
    ({"error_rate": 1.5}, "emulator.error_rate", "between 0 and 1"),
    ({"latency_ms": -1}, "emulator.latency_ms", ">= 0"),
    ({"replicas": 0}, "emulator.replicas", ">= 1"),
    ({"deployment": "a/b"}, "emulator.deployment", "'/'"),
    ({"ubiops_deployments": [{"nme": "x"}]}, "emulator.ubiops_deployments[0].nme", "unknown key"),
    ({"ubiops_unknown_id_status": 500}, "emulator.ubiops_unknown_id_status", "400 or 404"),
    ({"ubiops_deployments": [{"field_types": ["float"]}]}, "emulator.ubiops_deployments[0].field_types",
     "unknown type 'float'"),
    ({"ubiops_deployments": [{"fields": ["a", "b"], "field_types": ["int"]}]},
     "emulator.ubiops_deployments[0].field_types", "2 field(s), got 1 type(s)"),
    ({"ubiops_deployments": [{"input_type": "plain", "fields": [], "field_types": ["int"]}]},
     "emulator.ubiops_deployments[0].field_types", "plain deployment"),
    ({"users": ["admin"]}, "emulator.users", "pairs"),
])
def test_config_from_mapping_names_file_and_key(table: dict[str, object], key: str, words: str) -> None:
    with pytest.raises(InputError) as info:
        emulator_config_from_mapping(table, "scen.toml")
    assert info.value.file == "scen.toml"
    assert info.value.key == key
    assert words in info.value.problem
    assert str(info.value).startswith(f"scen.toml: {key}: ")


def test_config_json_round_trip_is_exact() -> None:
    import orjson

    cfg = dataclasses.replace(EmulatorConfig(), latency_ms=0.0, seed=9, users=(("a", "b"),), http2=True)
    assert emulator_config_from_mapping(orjson.loads(config_to_json(cfg)), "<stdin>") == cfg


def test_default_config_has_no_problems() -> None:
    assert config_problems(EmulatorConfig()) == []


def test_url_lines_start_with_the_listening_line() -> None:
    lines = url_lines(EmulatorConfig(), "::1", 8123)
    assert lines[0] == f"{LISTENING_PREFIX}http://[::1]:8123"
    assert any(line.endswith("/v1/api/pipelines/infer/ccfraud-1/ccfraud") for line in lines)
    assert any(line.endswith("/v2.1") for line in lines)


def _call(app: object, path: str) -> tuple[int, bytes]:
    """Drive an ASGI app in-process for one GET."""
    import asyncio
    from typing import Any

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": []}
    asyncio.run(app(scope, receive, send))  # type: ignore[operator]
    return sent[0]["status"], sent[1]["body"]


def test_every_platform_sub_app_is_mounted() -> None:
    """No "not available in this build" fallback: every sub-app is part of bench and always mounted."""
    from bench.emulator.app import build_app
    from bench.emulator.keycloak import KeycloakEmulator
    from bench.emulator.kserve import KServeEmulator
    from bench.emulator.mlops import MLOpsEmulator
    from bench.emulator.tokens import TokenSigner
    from bench.emulator.ubiops import UbiOpsEmulator

    app = build_app(EmulatorConfig(require_token=True))
    mounted = dict(app.routes)
    assert isinstance(mounted["/v2.1/"], UbiOpsEmulator) and isinstance(mounted["/v2/"], UbiOpsEmulator)
    assert isinstance(mounted["/auth/realms/"], KeycloakEmulator)
    assert isinstance(mounted["/v1/api/status/"], MLOpsEmulator)
    assert isinstance(mounted["/v2/models/"], KServeEmulator)
    assert isinstance(app.ctx.tokens, TokenSigner)
    assert build_app(EmulatorConfig()).ctx.tokens is None


def test_app_routes_health_and_unknown_paths() -> None:
    from bench.emulator.app import build_app

    app = build_app(EmulatorConfig())
    assert _call(app, "/health")[0] == 200
    status, body = _call(app, "/definitely/not/here")
    assert status == 404 and b'"status":"error"' in body
