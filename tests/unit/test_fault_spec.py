"""The emulator's fault spec (string and table forms, errors) and the seeded fault plan (pure functions)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.emulator.config import EmulatorConfig
from bench.emulator.embedded import config_problems, config_to_json, emulator_config_from_mapping
from bench.emulator.faults import (
    FAULTS,
    FaultPlan,
    FaultSpecError,
    canonical_faults,
    fault_problem,
    pad_json,
    parse_faults,
)
from bench.errors import InputError

PROBABILITY_FAULTS = [n for n in FAULTS if n not in ("close_after", "accept_reset")]


@st.composite
def specs(draw: st.DrawFn) -> str:
    names = draw(st.lists(st.sampled_from(PROBABILITY_FAULTS), unique=True, max_size=5))
    budget = 1.0
    items = []
    for name in names:
        p = draw(st.floats(0, budget / 2, allow_nan=False))
        budget -= p
        params = {k: draw(st.integers(1, 5000)) for k in FAULTS[name][0] if draw(st.booleans())}
        if name == "5xx" and "status" in params:
            params["status"] = draw(st.integers(500, 599))
        items.append(":".join([name, repr(p), *(f"{k}={v}" for k, v in params.items())]))
    if draw(st.booleans()):
        items.append(f"close_after:{draw(st.integers(1, 1000))}")
    return ",".join(items)


@given(specs())
def test_canonical_form_round_trips(spec: str) -> None:
    canonical = canonical_faults(spec)
    assert canonical_faults(canonical) == canonical
    assert parse_faults(canonical) == parse_faults(spec)


def test_table_form_equals_string_form() -> None:
    table = {"stall": 0.01, "5xx": {"p": 0.02, "burst": 20, "status": 502}, "close_after": {"n": 100},
             "huge": {"p": 0.1, "bytes": 1048576}}
    assert canonical_faults(table) == canonical_faults(
        "stall:0.01,5xx:0.02:burst=20:status=502,close_after:100,huge:0.1:bytes=1048576")


@pytest.mark.parametrize(("spec", "words"), [
    ("nope:0.1", ["unknown fault 'nope'", "known:"]),
    ("stall", ["expected name:value"]),
    ("stall:x", ["'x' is not a number"]),
    ("stall:nan", ["finite"]),
    ("stall:1.5", ["between 0 and 1"]),
    ("stall:0.6,reset:0.6", ["add up to 1.2"]),
    ("stall:0.1,stall:0.2", ["more than once"]),
    ("5xx:0.1:status=404", ["500..599"]),
    ("5xx:0.1:burst=0", ["burst must be >= 1"]),
    ("slow:0.1:speed=3", ["unknown parameter 'speed'", "known: ms"]),
    ("slow:0.1:ms", ["expected key=value"]),
    ("close_after:0", ["count >= 1"]),
    ("close_after:2.5", ["count >= 1"]),
])
def test_bad_specs_give_one_line_naming_the_item(spec: str, words: list[str]) -> None:
    with pytest.raises(FaultSpecError) as info:
        parse_faults(spec)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(("table", "word"), [
    ({"stall": "often"}, "must be a number or a table"),
    ({"5xx": {"burst": 3}}, "table needs 'p'"),
    ({"5xx": {"p": True}}, "must be a number"),
    ({"close_after": {"p": 3}}, "table needs 'n'"),
])
def test_bad_tables(table: dict[str, object], word: str) -> None:
    with pytest.raises(FaultSpecError, match=word):
        canonical_faults(table)


def test_scenario_table_errors_name_the_key() -> None:
    config = emulator_config_from_mapping({"faults": {"stall": 0.01, "reset": 0.02}}, "s.toml")
    assert config.faults == "stall:0.01,reset:0.02"
    with pytest.raises(InputError) as info:
        emulator_config_from_mapping({"faults": "stall:2"}, "s.toml")
    assert "emulator.faults" in str(info.value) and "s.toml" in str(info.value)
    with pytest.raises(InputError, match=r"emulator\.faults"):
        emulator_config_from_mapping({"faults": 3}, "s.toml")
    with pytest.raises(InputError, match=r"HTTP/1\.1 fault server"):
        emulator_config_from_mapping({"faults": "garbage:0.1", "http2": True}, "s.toml")


def test_config_json_round_trip_keeps_faults() -> None:
    import orjson

    config = EmulatorConfig(faults=canonical_faults("stall:0.01,close_after:7"), seed=9)
    again = emulator_config_from_mapping(orjson.loads(config_to_json(config)), "<stdin>")
    assert again == config
    assert config_problems(config) == []


def test_http2_takes_only_the_asgi_subset() -> None:
    assert fault_problem("stall:0.1,5xx:0.1,429:0.1,slow:0.1,huge:0.1,chunked:0.1", http2=True) is None
    for wire in ("reset:0.1", "garbage:0.1", "bad_length:0.1", "close_after:3", "accept_reset:0.1"):
        problem = fault_problem(wire, http2=True)
        assert problem is not None and wire.split(":")[0] in problem
        assert fault_problem(wire, http2=False) is None


def _decisions(plan: FaultPlan, n: int) -> list[str | None]:
    return [plan.decide("/infer").fault for _ in range(n)]


def test_same_seed_same_decisions_other_seed_other_decisions() -> None:
    faults = parse_faults("stall:0.05,reset:0.05,5xx:0.02:burst=3,slow:0.1")
    a = _decisions(FaultPlan(faults, seed=7), 2000)
    assert a == _decisions(FaultPlan(faults, seed=7), 2000)
    assert a != _decisions(FaultPlan(faults, seed=8), 2000)


def test_frequencies_follow_the_probabilities() -> None:
    plan = FaultPlan(parse_faults("stall:0.1,garbage:0.2,chunked:0.3"), seed=1)
    counts = Counter(_decisions(plan, 20000))
    assert counts["stall"] / 20000 == pytest.approx(0.1, abs=0.01)
    assert counts["garbage"] / 20000 == pytest.approx(0.2, abs=0.015)
    assert counts["chunked"] / 20000 == pytest.approx(0.3, abs=0.015)
    assert counts[None] / 20000 == pytest.approx(0.4, abs=0.015)


def test_bursts_run_their_length_and_are_counted() -> None:
    seen: list[str] = []
    plan = FaultPlan(parse_faults("429:0.01:burst=7"), seed=3, on_fault=seen.append)
    decisions = _decisions(plan, 5000)
    starts = [i for i, d in enumerate(decisions) if d == "429" and (i == 0 or decisions[i - 1] != "429")]
    assert starts
    for i in starts:
        run = decisions[i:i + 7]
        assert run == ["429"] * len(run)  # a burst is never cut short (the last one may end with the list)
    assert len(seen) == decisions.count("429")


def test_exempt_paths_are_never_faulted_and_draw_nothing() -> None:
    faults = parse_faults("stall:0.5")
    plan, twin = FaultPlan(faults, seed=2), FaultPlan(faults, seed=2)
    assert all(plan.decide(p).fault is None for p in ["/metrics", "/health"] * 50)
    assert _decisions(plan, 200) == _decisions(twin, 200)


def test_accept_reset_draws_per_connection() -> None:
    seen: list[str] = []
    plan = FaultPlan(parse_faults("accept_reset:0.25"), seed=4, on_fault=seen.append)
    hits = sum(plan.reset_on_accept() for _ in range(8000))
    assert hits / 8000 == pytest.approx(0.25, abs=0.02)
    assert seen == ["accept_reset"] * hits
    assert not FaultPlan(parse_faults("stall:0.1"), seed=4).reset_on_accept()
    spared = FaultPlan(parse_faults("accept_reset:1:spare=2"), seed=4)
    assert [spared.reset_on_accept() for _ in range(4)] == [False, False, True, True]


@given(st.binary(max_size=100), st.integers(0, 300))
def test_pad_json_only_pads_json_and_keeps_it_valid(body: bytes, size: int) -> None:
    padded = pad_json(body, b"application/json", size)
    assert padded.startswith(body) and len(padded) == max(len(body), size)
    assert padded[len(body):].strip() == b""
    assert pad_json(body, b"application/vnd.apache.arrow.file", size) == body
