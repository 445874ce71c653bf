"""bench.targets.ubiops: scenario validation, URLs, encoders and direct-answer classification."""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.errors import InputError
from bench.results import Kind
from bench.targets.ubiops import (
    UbiOpsConfig,
    authorization_value,
    batch_body,
    build_ubiops_bodies,
    classify_direct,
    encode_plain,
    encode_structured,
    error_message_of,
    may_concern_ids,
    mentions_a_request,
    ubiops_config_from_mapping,
)

ENV = {"UBIOPS_TOKEN": "abc123"}
BASE = {"kind": "ubiops", "url": "https://api.ubiops.com/v2.1", "project": "p", "deployment": "d",
        "token_env": "UBIOPS_TOKEN"}


def parse(**kw: Any) -> UbiOpsConfig:
    return ubiops_config_from_mapping({**BASE, **kw}, "s.toml", environ=ENV)


def error(**kw: Any) -> InputError:
    with pytest.raises(InputError) as info:
        ubiops_config_from_mapping({**BASE, **kw}, "s.toml", environ=ENV)
    assert info.value.file == "s.toml"
    return info.value


def test_defaults_and_full_table() -> None:
    cfg = parse()
    assert (cfg.mode, cfg.input_type, cfg.timeout_s, cfg.batch_size, cfg.on_rate_limit) == (
        "direct", "structured", None, 250, "count")
    cfg = parse(version="v2", input="plain", fields={"text": "input"}, timeout="2m", mode="batch",
                batch_size=100, poll_interval="250ms", drain_timeout="30s", on_rate_limit="backoff")
    assert cfg.timeout_s == 120 and cfg.poll_interval_s == 0.25 and cfg.drain_timeout_s == 30
    assert cfg.field_map == {"text": "input"} and cfg.version == "v2" and cfg.token == "abc123"


@pytest.mark.parametrize(("kw", "key", "words"), [
    ({"project": None}, "target.project", "required"),
    ({"timeout": 5}, "target.timeout", "10–3600"),
    ({"timeout": 4000}, "target.timeout", "10–3600"),
    ({"timeout": 260000, "mode": "batch"}, "target.timeout", "259200"),
    ({"batch_size": 251}, "target.batch_size", "between 1 and 250"),
    ({"mode": "async"}, "target.mode", "'direct'"),
    ({"input": "json"}, "target.input", "'plain'"),
    ({"on_rate_limit": "retry"}, "target.on_rate_limit", "'backoff'"),
    ({"url": "ftp://x/v2.1"}, "target.url", "http"),
    ({"url": "https://api.ubiops.com/v3"}, "target.url", "/v2.1"),
    ({"fields": {"a": 3}}, "target.fields.a", "field name"),
    ({"colour": "red"}, "target.colour", "unknown key"),
    ({"token_env": "NOPE_NOT_SET"}, "target.token_env", "NOPE_NOT_SET"),
    ({"token_env": None}, "target.token_env", "required"),
    ({"poll_interval": "soon"}, "target.poll_interval", "duration"),
])
def test_validation_errors_name_the_key(kw: dict[str, Any], key: str, words: str) -> None:
    table = {k: v for k, v in {**BASE, **kw}.items() if v is not None}
    with pytest.raises(InputError) as info:
        ubiops_config_from_mapping(table, "s.toml", environ=ENV)
    assert info.value.key == key and words in info.value.problem


def test_token_value_never_in_errors_or_repr() -> None:
    cfg = parse()
    assert "abc123" not in repr(cfg)
    exc = error(timeout=1)
    assert "abc123" not in str(exc)


def test_embedded_needs_no_token_until_with_endpoint() -> None:
    cfg = ubiops_config_from_mapping({"kind": "ubiops", "url": "embedded", "project": "demo",
                                      "deployment": "ccfraud", "token_env": "UNSET_VAR"}, "s.toml", environ={})
    assert cfg.base_url == "embedded" and cfg.token == ""
    live = cfg.with_endpoint("http://127.0.0.1:9000", "Token t")
    assert live.base_url == "http://127.0.0.1:9000/v2.1"
    assert live.headers()["Authorization"] == "Token t"


@pytest.mark.parametrize(("raw", "sent"), [("abc", "Token abc"), ("Token abc", "Token abc"),
                                           ("token  abc ", "Token abc")])
def test_authorization_value(raw: str, sent: str) -> None:
    assert authorization_value(raw) == sent


def test_paths_default_and_versioned() -> None:
    cfg = UbiOpsConfig(project="my proj", deployment="dep", base_url="https://h/v2", timeout_s=60)
    root = "https://h/v2/projects/my%20proj/deployments/dep/requests"
    assert cfg.direct_url() == root + "?timeout=60"
    assert cfg.batch_url() == root + "/batch?timeout=60"
    assert (cfg.collect_url(), cfg.cancel_url(), cfg.delete_url()) == (
        root + "/collect", root + "/cancel", root + "/delete")
    assert cfg.request_url("x/y", metadata_only=True) == root + "/x%2Fy?metadata_only=true"
    assert cfg.list_url("pending", 10, 0) == root + "?status=pending&limit=10&offset=0"
    v = UbiOpsConfig(project="p", deployment="d", base_url="https://h/v2.1", version="v1")
    assert v.direct_url() == "https://h/v2.1/projects/p/deployments/d/versions/v1/requests"


def test_encoders() -> None:
    rows = [{"tensor": [1.0, 2.0], "id": 1}, {"tensor": [3.0], "id": 2}]
    assert orjson.loads(encode_structured(rows[:1], {"tensor": "input"})) == {"input": [1.0, 2.0]}
    assert orjson.loads(encode_structured(rows, {})) == rows
    assert orjson.loads(encode_plain(rows[:1], {"id": "x"})) == "1"
    assert orjson.loads(orjson.loads(encode_plain(rows, {}))) == rows
    assert orjson.loads(batch_body([b'{"a":1}', b'"s"'])) == [{"a": 1}, "s"]


VALUES = st.floats(allow_nan=False, allow_infinity=False) | st.text()


@given(st.lists(st.dictionaries(st.text(min_size=1, max_size=5), VALUES, max_size=4), min_size=1, max_size=5))
def test_structured_round_trip(rows: list[dict[str, Any]]) -> None:
    decoded = orjson.loads(encode_structured(rows, {}))
    assert decoded == (rows[0] if len(rows) == 1 else rows)


def test_build_bodies_direct_batch_and_errors() -> None:
    table = pa.table({"tensor": [[0.5] * 3] * 5})
    direct = build_ubiops_bodies(parse(fields={"tensor": "x"}), table, 2)
    assert [b.rows for b in direct] == [2, 2, 1]
    assert orjson.loads(direct[0].body) == [{"x": [0.5] * 3}] * 2
    batch = build_ubiops_bodies(parse(mode="batch"), table, 1)
    assert len(batch) == 5 and orjson.loads(batch[0].body) == {"tensor": [0.5] * 3}
    with pytest.raises(InputError, match="one object"):
        build_ubiops_bodies(parse(mode="batch"), table, 2)
    with pytest.raises(InputError) as info:
        build_ubiops_bodies(parse(fields={"nope": "x"}), table, 1)
    assert info.value.key == "target.fields.nope"


@pytest.mark.parametrize(("mode", "per"), [("direct", 3), ("batch", 1)])
def test_bodies_are_encoded_on_first_use_and_match_the_eager_encoding(mode: str, per: int) -> None:
    """A big data set starts at once: only the first block is encoded up front; any body asked for later is the
    same bytes as encoding its rows directly (block boundaries change nothing)."""
    from bench.bodies import BLOCK
    from bench.data import generate_ccfraud, records_from_table
    from bench.targets.ubiops_target import _Inputs

    table = generate_ccfraud(BLOCK * per * 40 + 7, 3)
    cfg = parse(mode=mode)
    bodies = build_ubiops_bodies(cfg, table, per)
    n = (table.num_rows + per - 1) // per
    assert len(bodies) == n and getattr(bodies, "encoded", None) == BLOCK
    for k in (0, BLOCK - 1, BLOCK, 17 * BLOCK + 5, n - 1):
        rows = records_from_table(table.slice(k * per, per))
        assert bodies[k].rows == len(rows)
        assert bodies[k].body == encode_structured(rows, {})  # a batch item: the one object
    assert getattr(bodies, "encoded", 0) <= 4 * BLOCK  # four blocks touched, not the data set
    inputs = _Inputs(bodies)
    assert len(inputs) == n and inputs[-1] == bodies[n - 1].body and inputs[1:3] == [bodies[1].body, bodies[2].body]


@pytest.mark.parametrize(("status", "body", "kind"), [
    (200, b'{"status":"completed","result":{"dense_1":[0.1]}}', Kind.OK),
    (200, b'{"status":"failed","error_message":"boom"}', Kind.REQUEST_FAILED),
    (200, b'{"status":"processing"}', Kind.BAD_RESPONSE),
    (200, b"not json", Kind.BAD_RESPONSE),
    (200, b"[1]", Kind.BAD_RESPONSE),
    (429, b'{"error":"slow down"}', Kind.RATE_LIMITED),
    (401, b'{"error":"no"}', Kind.HTTP_ERROR),
    (503, b"", Kind.HTTP_ERROR),
])
def test_classify_direct(status: int, body: bytes, kind: Kind) -> None:
    assert classify_direct(status, body, 3) == (kind, 3, 0)


def test_error_message_of() -> None:
    assert error_message_of(b'{"status":"failed","error_message":"boom"}') == b"boom"
    assert error_message_of(b'{"error":"bad token"}') == b"bad token"
    assert error_message_of(b"x" * 600) == b"x" * 512


@pytest.mark.parametrize("name", ["ubiops-direct", "ubiops-batch", "ubiops-real.example"])
def test_shipped_scenarios_validate(name: str) -> None:
    import tomllib
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scenarios" / f"{name}.toml"
    doc = tomllib.loads(path.read_text())
    cfg = ubiops_config_from_mapping(doc["target"], str(path), environ=ENV)
    assert cfg.project and cfg.deployment and cfg.field_map
    assert doc["data"]["rows_per_request"] == 1


@given(st.integers(1, 100_000), st.integers(1, 64))
def test_budget_shares_sum_to_the_budget(total: int, n: int) -> None:
    """--processes n: worker k gets its part of calls_per_minute; the parts sum exactly to the whole and differ
    by at most one; a budget smaller than n cannot be split (0 would mean no budget) and says so."""
    from bench.targets.ubiops_target import budget_share

    cfg = UbiOpsConfig(project="p", deployment="d", token="t", mode="batch", calls_per_minute=total)
    if total < n and n > 1:
        with pytest.raises(InputError) as info:
            budget_share(cfg, (0, n), "s.toml")
        assert info.value.key == "ubiops.calls_per_minute" and info.value.file == "s.toml"
        return
    parts = [budget_share(cfg, (k, n), "s.toml") for k in range(n)]
    if n == 1:
        assert parts == [None]
        return
    ints = [p for p in parts if p is not None]
    assert len(ints) == n and sum(ints) == total and min(ints) >= 1 and max(ints) - min(ints) <= 1


def test_budget_share_leaves_unbudgeted_runs_alone() -> None:
    from bench.targets.ubiops_target import budget_share

    count = UbiOpsConfig(project="p", deployment="d", token="t", calls_per_minute=1)  # direct, count: no budget
    assert budget_share(count, (1, 4), "s.toml") is None
    off = UbiOpsConfig(project="p", deployment="d", token="t", mode="batch", calls_per_minute=0)
    assert budget_share(off, (1, 4), "s.toml") is None
    backoff = UbiOpsConfig(project="p", deployment="d", token="t", on_rate_limit="backoff", calls_per_minute=7)
    assert [budget_share(backoff, (k, 3), "s.toml") for k in range(3)] == [3, 2, 2]


def test_which_refusals_may_concern_the_ids_and_which_are_about_a_request() -> None:
    assert [s for s in (400, 401, 403, 404, 405, 407, 408, 409, 422, 429, 500) if may_concern_ids(s)] == [
        400, 404, 409, 422]
    ids = ["2f909aeb-5c7e", "85711124-54db"]
    assert mentions_a_request(b'{"error": "Request \'85711124-54db\' not found"}', ids)
    assert mentions_a_request(b'{"error_message": "One of the given deployment requests does not exist"}', ids)
    assert mentions_a_request(b'{"error": "no such id: 2f909aeb-5c7e"}', ids)
    assert not mentions_a_request(b'{"error": "Not found."}', ids)  # a missing route
    assert not mentions_a_request(b'{"detail": "The requested resource was not found"}', ids)
