"""Scenario loading: typed values, overrides, and one-line errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.errors import InputError
from bench.scenario import load_scenario
from bench.units import parse_duration

BASE = """
name = "t"
[target]
kind = "wallaroo"
url = "http://127.0.0.1:9/v1/api/pipelines/infer/ccfraud-1/ccfraud"
[data]
path = "rows.json"
rows_per_request = 10
[load]
concurrency = 4
duration = "3s"
warmup = "500ms"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "rows.json").write_text('[{"tensor": [1.0]}]')
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


def test_valid_scenario_is_typed(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, BASE))
    assert sc.name == "t"
    assert sc.load.mode == "closed" and sc.load.concurrency == 4
    assert sc.load.duration_s == 3.0 and sc.load.warmup_s == 0.5
    assert sc.data.rows_per_request == 10
    assert sc.data.path == tmp_path / "rows.json"


def test_overrides_change_values_and_types(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, BASE), ["load.concurrency=16", 'load.duration="1m"', "name=other"])
    assert sc.load.concurrency == 16
    assert sc.load.duration_s == 60.0
    assert sc.name == "other"


@pytest.mark.parametrize(("override", "rate", "stages"), [
    ("load.rate=50", 50.0, ()),
    ("load.stages=[{duration = '2s', rate = 10}]", 0.0, ((2.0, 10.0),)),
])
def test_set_of_another_load_mode_replaces_the_files_as_the_flags_do(tmp_path: Path, override: str, rate: float,
                                                                     stages: tuple[tuple[float, float], ...]) -> None:
    """README: every key can be overridden with --set; on a closed-loop file, --set load.rate is an open loop."""
    sc = load_scenario(write(tmp_path, BASE), [override])
    assert sc.load.mode == "open" and sc.load.concurrency == 0
    assert sc.load.rate == rate and sc.load.stages == stages


def test_set_of_concurrency_turns_an_open_loop_closed_and_two_modes_in_set_still_conflict(tmp_path: Path) -> None:
    opened = BASE.replace("concurrency = 4", 'rate = 20.0\narrival = "poisson"')
    sc = load_scenario(write(tmp_path, opened), ["load.concurrency=3"])
    assert sc.load.mode == "closed" and sc.load.concurrency == 3 and sc.load.rate == 0.0
    assert sc.load.arrival == "constant"
    with pytest.raises(InputError, match="exclusive"):
        load_scenario(write(tmp_path, BASE), ["load.rate=50", "load.concurrency=2"])


@pytest.mark.parametrize(
    ("patch", "key", "words"),
    [
        (("[load]", "[load]\nbogus = 1"), "load.bogus", "unknown key"),
        (("concurrency = 4", "rate = -5.0"), "load.rate", ">= 0"),
        (('path = "rows.json"', 'path = "missing.json"'), "data.path", "not found"),
        (('url = "http://127.0.0.1:9/v1/api/pipelines/infer/ccfraud-1/ccfraud"', 'url = "127.0.0.1:9/x"'),
         "target.url", "scheme"),
        (("concurrency = 4", "concurrency = 4\nrate = 10.0"), "load.rate", "exclusive"),
        (("concurrency = 4", "concurrency = 4\nstages = [{duration = '1s', rate = 5}]"), "load.stages",
         "load.concurrency and load.stages are exclusive"),
        (('duration = "3s"', 'duration = "three"'), "load.duration", "duration"),
        (('kind = "wallaroo"', 'kind = "triton"'), "target.kind", "one of"),
        (("concurrency = 4", 'concurrency = "4"'), "load.concurrency", "integer"),
    ],
)
def test_errors_name_file_key_and_problem(tmp_path: Path, patch: tuple[str, str], key: str, words: str) -> None:
    path = write(tmp_path, BASE.replace(*patch))
    with pytest.raises(InputError) as info:
        load_scenario(path)
    message = str(info.value)
    assert str(path) in message
    assert key in message
    assert words in message
    assert "\n" not in message


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_scenario(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(InputError, match="not valid TOML"):
        load_scenario(bad)


def test_credentials_in_headers_are_refused(tmp_path: Path) -> None:
    text = BASE.replace("[data]", '[target.headers]\nAuthorization = "Bearer abc"\n[data]')
    with pytest.raises(InputError, match="credentials"):
        load_scenario(write(tmp_path, text))


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h"]))
def test_parse_duration_units(n: int, unit: str) -> None:
    factor = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    assert parse_duration(f"{n}{unit}") == pytest.approx(n * factor)


def test_parse_duration_compound_and_errors() -> None:
    assert parse_duration("1m30s") == 90.0
    assert parse_duration(2.5) == 2.5
    for bad in ("10 parsecs", "-1s", "", True):
        with pytest.raises(ValueError):
            parse_duration(bad)
    for negative in ("-1s", "-1m30s", "-0.5"):  # a negative duration is called that, not "cannot read"
        with pytest.raises(ValueError, match=f"must be .*>= 0, got '{negative}'"):
            parse_duration(negative)


OPEN = (BASE.replace("concurrency = 4", 'rate = 20.0\narrival = "poisson"\nmax_in_flight = 32')
        + '[engine]\npacing = "spin"\n')


@pytest.mark.parametrize(("patch", "key", "value"), [
    (("concurrency = 4", 'concurrency = 4\narrival = "poisson"'), "load.arrival", "'poisson'"),
    (("concurrency = 4", "concurrency = 4\nmax_in_flight = 64"), "load.max_in_flight", "64"),
    (("[load]", '[engine]\npacing = "spin"\n[load]'), "engine.pacing", "'spin'"),
])
def test_open_loop_keys_on_a_closed_loop_are_refused(tmp_path: Path, patch: tuple[str, str], key: str,
                                                     value: str) -> None:
    """A closed loop would ignore them: the run would not be the test asked for."""
    path = write(tmp_path, BASE.replace(*patch))
    with pytest.raises(InputError) as info:
        load_scenario(path)
    assert info.value.key == key and info.value.file == str(path)
    assert value in str(info.value) and "open loop (load.rate or load.stages) only" in str(info.value)
    assert "load.concurrency = 4" in str(info.value) and "\n" not in str(info.value)


def test_open_loop_keys_at_their_neutral_value_are_accepted_on_a_closed_loop(tmp_path: Path) -> None:
    text = BASE.replace("concurrency = 4", 'concurrency = 4\narrival = "constant"\nmax_in_flight = 0')
    sc = load_scenario(write(tmp_path, text + '[engine]\npacing = "auto"\n'))
    assert sc.load.mode == "closed" and sc.load.arrival == "constant" and sc.engine.pacing == "auto"


def test_set_of_concurrency_on_an_open_loop_file_drops_its_open_loop_keys(tmp_path: Path) -> None:
    """The user's switch to a closed loop replaces the file's open loop with everything that shaped it."""
    sc = load_scenario(write(tmp_path, OPEN), ["load.concurrency=3"])
    assert sc.load.mode == "closed" and sc.load.concurrency == 3
    assert (sc.load.arrival, sc.load.max_in_flight, sc.engine.pacing) == ("constant", 0, "auto")
    assert "arrival" not in sc.source["load"] and "pacing" not in sc.source["engine"]
    assert load_scenario(write(tmp_path, OPEN)).load.max_in_flight == 32  # the file alone is an open loop


def test_set_of_concurrency_with_an_open_loop_key_in_set_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_scenario(write(tmp_path, OPEN), ["load.concurrency=3", 'load.arrival="poisson"'])
    assert info.value.key == "load.arrival"


def test_set_of_concurrency_on_a_closed_loop_file_keeps_its_contradiction(tmp_path: Path) -> None:
    """A file that is a closed loop with an open-loop key is refused as written; --set of N does not hide it."""
    path = write(tmp_path, BASE.replace("concurrency = 4", "concurrency = 4\nmax_in_flight = 64"))
    with pytest.raises(InputError) as info:
        load_scenario(path, ["load.concurrency=16"])
    assert info.value.key == "load.max_in_flight" and "load.concurrency = 16" in str(info.value)


@pytest.mark.parametrize(("patch", "key", "words"), [
    (("concurrency = 4", "rate = 0"), "load.rate", "must be > 0"),
    (("concurrency = 4", "rate = 0.0"), "load.rate", "must be > 0"),
    (("concurrency = 4", "concurrency = 0"), "load.concurrency", "must be >= 1"),
    (("concurrency = 4", "stages = []"), "load.stages", "must not be empty"),
    (("concurrency = 4", "stages = [{duration = '1s', rate = 0}, {duration = '2s', rate = 0.0}]"), "load.stages",
     "every stage's rate is 0"),
    (("concurrency = 4", "stages = [{duration = '1s', rate = -1}]"), "load.stages[0].rate", ">= 0"),
])
def test_a_zero_load_names_the_key_that_set_it(tmp_path: Path, patch: tuple[str, str], key: str, words: str) -> None:
    """rate = 0 was reported as a load.concurrency problem; an all-zero ramp ran and sent nothing (exit 3)."""
    with pytest.raises(InputError) as info:
        load_scenario(write(tmp_path, BASE.replace(*patch)))
    assert info.value.key == key and words in str(info.value)


def test_a_pause_stage_and_rate_0_beside_concurrency_are_still_accepted(tmp_path: Path) -> None:
    ramp = "stages = [{duration = '1s', rate = 0}, {duration = '1s', rate = 20}]"
    assert load_scenario(write(tmp_path, BASE.replace("concurrency = 4", ramp))).load.stages == ((1.0, 0.0),
                                                                                                 (1.0, 20.0))
    assert load_scenario(write(tmp_path, BASE.replace("concurrency = 4", "concurrency = 4\nrate = 0"))).load.mode \
        == "closed"


@pytest.mark.parametrize(("override", "key"), [("load.rate=0", "load.rate"), ("load.stages=[]", "load.stages")])
def test_set_of_a_zero_load_mode_on_a_closed_loop_file_is_refused_not_ignored(tmp_path: Path, override: str,
                                                                             key: str) -> None:
    """--set load.rate=0 on a closed-loop file ran the file's closed loop."""
    with pytest.raises(InputError) as info:
        load_scenario(write(tmp_path, BASE), [override])
    assert info.value.key == key
