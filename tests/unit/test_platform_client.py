"""Pure parts of issue 11's client side: the request budget's maths, plain / float32 bodies, the older Wallaroo
answer shape, dataset query lists, the public Keycloak client's config, preflight helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.auth import PUBLIC_CLIENT, auth_config_from_mapping, emulator_credentials
from bench.errors import InputError
from bench.preflight import deployment_from_url, preflight_config_from_mapping
from bench.results import Kind
from bench.scenario import parse_scenario
from bench.targets.ubiops import UbiOpsConfig, build_ubiops_bodies, ubiops_config_from_mapping
from bench.targets.ubiops_budget import Budget
from bench.targets.wallaroo import dataset_query, make_classifier

FILE = "s.toml"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@given(st.integers(min_value=2, max_value=5000), st.lists(st.floats(min_value=0.0, max_value=5.0), max_size=200),
       st.floats(min_value=0.0, max_value=60.0))
def test_budget_never_admits_more_than_the_limit_in_any_window(limit: int, gaps: list[float], phase: float) -> None:
    """Whatever the calls' timing and the server window's phase, a window of 60 s sees at most ``limit`` calls."""
    clock = Clock()
    budget = Budget(limit, clock=clock)
    taken: list[float] = []
    for gap in gaps:
        clock.t += gap
        while budget.try_take("collect"):
            taken.append(clock.t)
        if len(taken) > 3 * limit:
            break
    start = taken[0] - phase if taken else 0.0
    while taken and start <= taken[-1]:
        assert sum(1 for t in taken if start <= t < start + 60.0) <= limit
        start += 60.0


def test_budget_honours_retry_after_and_counts_purposes() -> None:
    clock = Clock()
    budget = Budget(60, clock=clock)
    assert budget.capacity == 6 and budget.try_take("create")
    budget.honour(10.0)
    assert budget.wait_s() == pytest.approx(10.0 + 1 / budget.rate_per_s)
    clock.t += 10.0 + 1 / budget.rate_per_s
    assert budget.try_take("collect") and not budget.try_take("collect")
    summary = budget.summary()
    assert summary["budget_create_calls"] == 1 and summary["budget_collect_calls"] == 1
    assert summary["collect_share_of_calls"] == 0.5
    assert Budget(0).wait_s() == 0.0 and Budget(0).summary()["budget_used_fraction"] is None


def test_calls_per_minute_is_read_from_the_ubiops_table() -> None:
    base = {"kind": "ubiops", "url": "embedded", "project": "p", "deployment": "d"}
    assert ubiops_config_from_mapping(base, FILE).calls_per_minute == 300
    assert ubiops_config_from_mapping(base, FILE, ubiops={"calls_per_minute": 60}).calls_per_minute == 60
    for bad in ({"calls_per_minute": -1}, {"calls_per_minute": "lots"}, {"rate": 3}):
        with pytest.raises(InputError) as info:
            ubiops_config_from_mapping(base, FILE, ubiops=bad)
        assert str(info.value).startswith(FILE) and "ubiops." in str(info.value)


def test_plain_direct_is_raw_text_batch_is_a_list_of_strings_and_float32_stays_short() -> None:
    table = pa.table({"text": ["hello", "wörld"], "x": pa.array([0.1, -1.0603298], pa.float32())})
    direct = UbiOpsConfig(project="p", deployment="d", input_type="plain", field_map={"text": "t"})
    bodies = build_ubiops_bodies(direct, table, 1)
    assert [b.body for b in bodies] == [b"hello", "wörld".encode()]
    assert direct.headers()["Content-Type"] == "text/plain"
    batch = UbiOpsConfig(project="p", deployment="d", input_type="plain", field_map={"text": "t"}, mode="batch")
    assert b"[" + b",".join(b.body for b in build_ubiops_bodies(batch, table, 1)) + b"]" == \
        orjson.dumps(["hello", "wörld"])
    assert batch.control_headers()["Content-Type"] == "application/json"
    structured = UbiOpsConfig(project="p", deployment="d", field_map={"x": "x"})
    assert [b.body for b in build_ubiops_bodies(structured, table, 1)] == [b'{"x":0.1}', b'{"x":-1.0603298}']


def _legacy(rows: int, data_len: int | None = None, wrap: bool = True) -> bytes:
    doc = {"model_name": "m", "model_version": "v", "pipeline_name": "p", "elapsed": 1234, "time": 1,
           "outputs": [{"Float": {"v": 1, "dim": [rows, 1], "data": [0.5] * (data_len or rows)}}]}
    return orjson.dumps([doc] if wrap else doc)


def test_older_one_object_answer_counts_rows_from_dim() -> None:
    classify = make_classifier("pandas-records")
    assert classify(200, _legacy(10), 10) == (Kind.OK, 10, 1234)
    assert classify(200, _legacy(1), 1) == (Kind.OK, 1, 1234)
    assert classify(200, _legacy(10, wrap=False), 10) == (Kind.OK, 10, 1234)
    assert classify(200, _legacy(9), 10)[:2] == (Kind.BAD_RESPONSE, 9)
    records = orjson.dumps([{"time": 5, "out": {"x": [1.0]}}] * 3)
    assert classify(200, records, 3)[:2] == (Kind.OK, 3)
    assert classify(200, b'[{"outputs": "nope"}]', 2)[0] == Kind.BAD_RESPONSE


def _target(**target: Any) -> Any:
    doc = {"target": {"kind": "wallaroo", "url": "embedded", **target}, "data": {"generate": 10},
           "load": {"concurrency": 1}}
    return parse_scenario(doc, file=FILE, base_dir=Path(".")).target


def test_dataset_lists_default_keeps_metadata_and_the_boolean_still_works() -> None:
    assert dataset_query(_target(), FILE) == []
    assert dataset_query(_target(dataset=["*"]), FILE) == [("dataset[]", "*")]
    assert dataset_query(_target(dataset=["out", "time"], dataset_exclude=["in"], dataset_separator="."), FILE) == [
        ("dataset[]", "out"), ("dataset[]", "time"), ("dataset.exclude[]", "in"), ("dataset.separator", ".")]
    assert ("dataset.exclude[]", "metadata") in dataset_query(_target(dataset_params=True), FILE)
    for bad, key in (({"dataset": [1]}, "target.dataset"), ({"dataset_separator": ""}, "target.dataset_separator"),
                     ({"dataset_params": True, "dataset": ["*"]}, "target.dataset")):
        with pytest.raises(InputError) as info:
            dataset_query(_target(**bad), FILE)
        assert key in str(info.value)


def test_password_grant_without_a_secret_is_the_public_sdk_client() -> None:
    cfg = auth_config_from_mapping({"kind": "password", "username": "ana", "password_env": "PW"}, FILE)
    assert cfg.client_id == PUBLIC_CLIENT and cfg.public_client and cfg.scope == "offline_access"
    creds = emulator_credentials(cfg, environ={"PW": "x"})
    assert creds == {"public_client_id": PUBLIC_CLIENT, "users": (("ana", "x"),)}
    confidential = auth_config_from_mapping({"kind": "password", "username": "ana", "password_env": "PW",
                                             "client_secret_env": "S"}, FILE)
    assert confidential.client_id == "api-client" and not confidential.public_client
    with pytest.raises(InputError) as info:
        auth_config_from_mapping({"kind": "client_credentials"}, FILE)
    assert "auth.client_secret_env" in str(info.value)


def test_wallaroo_auth_table_and_the_mlops_default() -> None:
    inference = auth_config_from_mapping({"kind": "password", "username": "u", "password_env": "PW"}, FILE)
    plain = preflight_config_from_mapping({"api_url": "https://a.example"}, FILE)
    assert plain.mlops_auth(inference) is inference  # the same user's password grant, its own source
    assert plain.mlops_auth(auth_config_from_mapping({"kind": "client_credentials", "client_secret_env": "S"},
                                                     FILE)) is None
    own = preflight_config_from_mapping({"api_url": "https://a.example", "auth": {"kind": "static",
                                                                                  "token_env": "T"}}, FILE)
    assert own.auth is not None and own.mlops_auth(inference) is own.auth
    with pytest.raises(InputError) as info:
        preflight_config_from_mapping({"api_url": "https://a.example", "auth": {"kind": "bogus"}}, FILE)
    assert "wallaroo.auth.kind" in str(info.value)


def test_deployment_from_the_older_url() -> None:
    assert deployment_from_url("https://x.example/v1/api/pipelines/infer/test1-6") == "test1-6"
    assert deployment_from_url("https://x.example/v1/api/pipelines/infer/ccfraud-1/ccfraud") == "ccfraud-1"
    assert deployment_from_url("https://x.example/v1/api/pipelines/infer") is None
