"""The one scenario reader: every section typed once, one-line errors naming file and key, no drift between the
typed fields and the stored document."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.config.auth import AuthConfig
from bench.config.capacity import CapacityConfig
from bench.config.reader import check_url, safe_url
from bench.config.slo import SloObjectives
from bench.config.wallaroo import EMBEDDED_PLACEHOLDER, PreflightConfig
from bench.errors import InputError
from bench.scenario import load_scenario
from bench.sweep import step_scenario

BASE = """
name = "t"
[target]
url = "http://127.0.0.1:9/v1/api/pipelines/infer/ccfraud-1/ccfraud"
[data]
path = "rows.json"
[load]
rate = 50.0
arrival = "poisson"
seed = 7
duration = "3s"
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    (tmp_path / "rows.json").write_text('[{"tensor": [1.0]}]')
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(path: Path, overrides: tuple[str, ...] = ()) -> InputError:
    with pytest.raises(InputError) as info:
        load_scenario(path, overrides)
    return info.value


def test_every_section_is_typed(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, BASE + """
[auth]
kind = "static"
token_env = "MY_TOKEN"
[wallaroo]
api_url = "http://127.0.0.1:9"
wait = "5s"
[slo]
p99_ms = 50
error_rate = 0.01
[capacity]
start = 10
max = 100
precision = "5%"
step = "4s"
"""))
    assert isinstance(sc.auth, AuthConfig) and sc.auth.kind == "static" and sc.auth.token_env == "MY_TOKEN"
    assert isinstance(sc.wallaroo, PreflightConfig) and sc.wallaroo.wait_s == 5.0
    assert isinstance(sc.slo, SloObjectives) and {o.key for o in sc.slo.objectives} == {"p99_ms", "error_rate"}
    assert sc.capacity == CapacityConfig(start=10.0, max=100.0, step_s=4.0, precision=0.05)
    assert not hasattr(sc, "tables")


def test_absent_sections_are_none(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, BASE))
    assert (sc.auth, sc.wallaroo, sc.slo, sc.capacity) == (None, None, None, None)
    assert sc.emulator == {}


def test_wallaroo_embedded_api_needs_embedded_target(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, BASE + '[wallaroo]\napi_url = "embedded"\n'))
    assert err.key == "wallaroo.api_url" and "target.url = 'embedded'" in err.problem
    sc = load_scenario(write(tmp_path, BASE.replace('url = "http://127.0.0.1:9/v1/api/pipelines/infer/ccfraud-1/'
                                                     'ccfraud"', 'url = "embedded"')
                             + '[wallaroo]\napi_url = "embedded"\n'))
    assert sc.wallaroo is not None and sc.wallaroo.api_url == EMBEDDED_PLACEHOLDER


@pytest.mark.parametrize(("extra", "key", "words"), [
    ('[load]\nconcurrancy = 3\n', None, None),  # a TOML error (the table is defined twice) - checked below
    ('[slo]\np99ms = 5\n', "slo.p99ms", "did you mean 'p99_ms'"),
    ('[auth]\nknd = "static"\n', "auth.knd", "did you mean 'kind'"),
    ('[wallaroo]\napi_ur = "http://127.0.0.1:9"\n', "wallaroo.api_ur", "did you mean 'api_url'"),
    ('[capacity]\nstrat = 3\n', "capacity.strat", "did you mean 'start'"),
    ('[capacity]\nprecision = 2\n', "capacity.precision", "between 0 and 100"),
    ('[capacity]\nstart = 9\nmax = 3\n', "capacity.start", "above max"),
    ('[engine]\nknd = "fast"\n', "engine.knd", "did you mean 'kind'"),
    ('[engine]\nkind = "fsat"\n', "engine.kind", "did you mean 'fast'"),
    ('[reprot]\nraw = true\n', "reprot", "did you mean 'report'"),
])
def test_unknown_keys_name_the_key_with_a_suggestion(tmp_path: Path, extra: str, key: str | None,
                                                      words: str | None) -> None:
    err = error_of(write(tmp_path, BASE + extra))
    assert err.file is not None and err.file.endswith("s.toml")
    if key is None:
        assert "not valid TOML" in err.problem
        return
    assert err.key == key
    assert words is not None and words in err.problem
    assert "\n" not in str(err)


@pytest.mark.parametrize(("override", "key", "words"), [
    ("load.rate=1e12", "load.rate", "<="),
    ("load.rate=nan", "load.rate", "finite"),
    ("load.rate=inf", "load.rate", "finite"),
    ("load.rate=-1.0", "load.rate", ">= 0"),
    ('load.rate="fast"', "load.rate", "expected a number"),
    ("load.processes=0", "load.processes", ">= 1"),
    ("load.processes=100000", "load.processes", "<="),
    ("load.seed=-3", "load.seed", ">= 0"),
    ('load.duration="10 fortnights"', "load.duration", "duration"),
    ('load.duration="9999h"', "load.duration", "at most"),
    ('load.arrival="poison"', "load.arrival", "did you mean 'poisson'"),
    ("data.rows_per_request=0", "data.rows_per_request", ">= 1"),
    ('data.column=""', "data.column", "non-empty"),
    ('engine.timeout="0s"', "engine.timeout", "> 0"),
    ("engine.connections=true", "engine.connections", "expected an integer"),
    ('target.method="PO ST"', "target.method", "HTTP method"),
    ('target.url="http://[::1/ok"', "target.url", "not a valid URL"),
    ('target.url="ftp://127.0.0.1/x"', "target.url", "http or https"),
    ('target.url="127.0.0.1:9/x"', "target.url", "http"),
    ('target.url="http://127.0.0.1:99999/"', "target.url", "Port out of range"),
    ('target.url="http:///nohost"', "target.url", "no host"),
    ('target.token_env="abc123secretvalue-xyz"', "target.token_env", "NAME of an environment variable"),
    ('name=""', "name", "non-empty"),
    ("target=3", "target", "expected a table"),
])
def test_bad_values_are_one_line_naming_the_key(tmp_path: Path, override: str, key: str, words: str) -> None:
    err = error_of(write(tmp_path, BASE), (override,))
    assert err.key == key, str(err)
    assert words in err.problem, str(err)
    assert "\n" not in str(err)


def test_header_injection_and_bad_names_are_refused(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, BASE + '[target.headers]\n"X-A" = "v\\r\\nX-B: 1"\n'))
    assert err.key == "target.headers.X-A" and "line breaks" in err.problem
    err = error_of(write(tmp_path, BASE + '[target.headers]\n"X A" = "v"\n'))
    assert err.key == "target.headers.X A" and "header name" in err.problem


@pytest.mark.parametrize("value", ["caf\\u00e9", "a\\u2615", "bell\\u0007"])
def test_header_values_the_engines_cannot_send_are_refused(tmp_path: Path, value: str) -> None:
    """A non-ASCII or control character in a literal header crashed the lean engine with a traceback and made
    the httpx engine fail every request (as 'other', tens of thousands a second)."""
    err = error_of(write(tmp_path, BASE + f'[target.headers]\n"X-Note" = "{value}"\n'))
    assert err.key == "target.headers.X-Note" and "ASCII" in err.problem, str(err)
    sc = load_scenario(write(tmp_path, BASE + '[target.headers]\n"X-Note" = "tab\\tand ~ fine"\n'))
    assert sc.target.headers["X-Note"] == "tab\tand ~ fine"


def test_non_utf8_scenario_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "latin1.toml"
    p.write_bytes(b'name = "x"\n# caf\xe9\n')
    err = error_of(p)
    assert "not UTF-8" in err.problem and "line 2" in err.problem and err.file == str(p)


def test_directory_and_missing_file(tmp_path: Path) -> None:
    assert "directory" in error_of(tmp_path).problem
    assert "not found" in error_of(tmp_path / "nope.toml").problem


def test_url_problems_never_echo_credentials() -> None:
    assert check_url("http://127.0.0.1:8080/x") is None
    assert check_url("https://[::1]:8443/v2") is None
    problem = check_url("ftp://alice:hunter2@127.0.0.1/x?api_key=sekrit")
    assert problem is not None and "hunter2" not in problem and "sekrit" not in problem
    assert "hunter2" not in (check_url("http://alice:hunter2@[::1/x") or "")
    assert safe_url("http://a:b@127.0.0.1/p?q=1") == "http://…@127.0.0.1/p?…"


def test_revised_reparses_so_typed_and_document_agree(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, BASE + "[slo]\np99_ms = 20\n"))
    step = step_scenario(sc, 123.0, duration_s=4.0, warmup_s=1.0)
    assert step.load.rate == 123.0 and step.load.duration_s == 4.0 and step.load.warmup_s == 1.0
    assert step.load.arrival == "poisson" and step.load.seed == 7  # kept from the file
    assert step.source["load"]["rate"] == 123.0 and step.source["load"]["duration"] == "4s"
    assert step.slo == sc.slo  # other sections parsed again from the same document
    assert sc.source["load"]["rate"] == 50.0  # the original is untouched
    with pytest.raises(InputError) as info:
        sc.revised({"load.rate": -1.0})
    assert info.value.key == "load.rate"


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.integers(10_000_001, 10**15),
                 st.floats(10_000_000.0, 1e15, exclude_min=True, allow_nan=False, allow_infinity=False)))
def test_a_number_over_its_limit_shows_both_exactly(value: float) -> None:
    """`load.rate = 10000001` said "must be <= 1e+07, got 1e+07" (both rounded by :g): the value read as allowed.
    Both numbers are shown as they are (grouped), so the one given reads back as the value, above the limit."""
    from bench.config.reader import Table

    with pytest.raises(InputError) as exc:
        Table({"rate": value}, "s.toml", "load.").number("rate", 0.0, maximum=1e7)
    limit, got = str(exc.value).split("must be <= ")[1].split(", got ")
    assert float(limit.replace(",", "")) == 1e7 and limit == "10,000,000"
    assert float(got.replace(",", "")) == value, (got, value)
    assert got != limit
