"""Fuzzing bad input (hypothesis): the scenario reader (generated documents, mutated shipped scenarios), every
data reader (generated and mutated files of each format, plus the read-time tensor checks), and the answer
classifiers. Bad input is an InputError (one line, exit 2 through the CLI); nothing else may escape, and a
classifier never raises and always returns a known kind.

Short in the default run; the long versions are marked ``fuzz`` (opt-in: ``pytest -m fuzz``).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.data import read_dataset, write_dataset
from bench.datacheck import check_tensors
from bench.errors import InputError
from bench.payload import build_bodies
from bench.results import Kind
from bench.scenario import SECTIONS, load_scenario, parse_scenario
from bench.targets import http as http_target
from bench.targets import wallaroo as wallaroo_target
from bench.targets.kserve_codec import classify as classify_kserve
from bench.targets.ubiops import classify_direct

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "scenarios").glob("*.toml"))
SHORT = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))

# --- strategies -------------------------------------------------------------------------------------------------

KNOWN_KEYS = ["kind", "url", "format", "method", "headers", "token_env", "dataset_params", "path", "column",
              "rows_per_request", "generate", "seed", "body", "concurrency", "rate", "arrival", "stages",
              "max_in_flight", "duration", "warmup", "requests", "processes", "drain", "http2", "connections",
              "timeout", "connect_timeout", "insecure", "ca_bundle", "loop", "dir", "raw", "api_url", "wait",
              "p99_ms", "error_rate", "abort_on_fail", "start", "max", "step", "precision", "replicas",
              "latency_ms", "scheme", "token_file", "refresh_at", "deployment", "poll_interval"]
WEIRD_TEXT = ["", " ", "embedded", "http://[::1/ok", "http://127.0.0.1:9/x", "ftp://127.0.0.1/", "10s", "-1s",
              "1e999", "nan", "poisson", "fast", "httpx", "arrow", "pandas-records", "ubiops", "http", "wallaroo",
              "rows.json", "\x00", "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace"), "5%",
              "http://a:b@127.0.0.1/", "GET", "x" * 300]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(WEIRD_TEXT), st.text(max_size=12),
    st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 1, 1)), st.dates())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=6), inner,
                                                 max_size=4)), max_leaves=12)
tables = st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), values, max_size=6)
documents = st.dictionaries(st.sampled_from([*SECTIONS, "name", "description"]) | st.text(max_size=8),
                            tables | values, max_size=7)


def _one_line_input_error(call: Callable[[], Any]) -> Any:
    """``call()``'s result, or None when it raised an InputError whose message is one line."""
    try:
        return call()
    except InputError as exc:
        text = str(exc)
        assert text and "\n" not in text, repr(text)
        return None


def _mutate(data: bytes, edits: list[tuple[int, int, int]], cut: int | None) -> bytes:
    """Byte flips/inserts/deletes at positions (mod length), then an optional truncation."""
    buf = bytearray(data)
    for op, pos, byte in edits:
        if not buf:
            break
        i = pos % len(buf)
        if op == 0:
            buf[i] = byte
        elif op == 1:
            buf.insert(i, byte)
        else:
            del buf[i]
    if cut is not None and buf:
        del buf[cut % len(buf):]
    return bytes(buf)


edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2**31), st.integers(0, 255)), max_size=8)
cuts = st.none() | st.integers(0, 2**31)

# --- the scenario reader ----------------------------------------------------------------------------------------


def _scenario_property(tmp_path: Path, doc: dict[str, Any]) -> None:
    (tmp_path / "rows.json").write_text('[{"tensor": [1.0, 2.0]}]')
    sc = _one_line_input_error(lambda: parse_scenario(doc, file="fuzz.toml", base_dir=tmp_path))
    if sc is not None and sc.data.generate_rows <= 2000:
        from bench.session import prepare

        _one_line_input_error(lambda: prepare(sc))  # every section's config, bodies, [emulator] for "embedded"


@SHORT
@given(doc=documents)
def test_generated_documents(tmp_path: Path, doc: dict[str, Any]) -> None:
    _scenario_property(tmp_path, doc)


@SHORT
@given(section=st.sampled_from(["target", "data", "load", "engine", "report", "auth", "wallaroo", "slo",
                                "capacity", "emulator"]), table=tables)
def test_generated_sections_on_a_valid_base(tmp_path: Path, section: str, table: dict[str, Any]) -> None:
    base: dict[str, Any] = {"target": {"url": "embedded"}, "load": {"concurrency": 1, "duration": "1s"}}
    _scenario_property(tmp_path, {**base, section: table})


def _mutated_scenario_property(tmp_path: Path, index: int, ed: list[tuple[int, int, int]], cut: int | None) -> None:
    original = SHIPPED[index % len(SHIPPED)]
    path = original.parent / f".fuzz-{original.name}"  # beside the original: its relative data paths still resolve
    try:
        path.write_bytes(_mutate(original.read_bytes(), ed, cut))
        _one_line_input_error(lambda: load_scenario(path))
    finally:
        path.unlink(missing_ok=True)


@SHORT
@given(index=st.integers(0, 100), ed=edits, cut=cuts)
def test_mutated_shipped_scenarios(tmp_path: Path, index: int, ed: list[tuple[int, int, int]],
                                   cut: int | None) -> None:
    _mutated_scenario_property(tmp_path, index, ed, cut)


@SHORT
@given(overrides=st.lists(st.tuples(st.sampled_from([f"{s}.{k}" for s in ("load", "engine", "data", "target")
                                                      for k in KNOWN_KEYS[:30]]),
                                    st.sampled_from(["1", "-1", "0", "1e400", "nan", "inf", "true", '"x"', "[1]",
                                                     "{a=1}", "99999999999999999999", '"10s"', "", "="])),
                          max_size=4))
def test_set_overrides(overrides: list[tuple[str, str]]) -> None:
    _one_line_input_error(lambda: load_scenario(ROOT / "scenarios" / "quickstart.toml",
                                                [f"{k}={v}" for k, v in overrides]))


# --- data readers -------------------------------------------------------------------------------------------------

SUFFIXES = [".df.json", ".arrow", ".arrows", ".feather", ".parquet", ".csv"]
cells = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-1000, 1000))
rows_of_tensors = st.lists(st.one_of(st.lists(cells, min_size=0, max_size=4), st.none()), min_size=1, max_size=6)


def _read_property(path: Path) -> None:
    table = _one_line_input_error(lambda: read_dataset(path, "tensor"))
    if table is None:
        return
    ok = _one_line_input_error(lambda: check_tensors(table, "tensor", str(path)) or True)
    if ok:  # what passes the checks encodes
        build_bodies(table, 2, "pandas-records")


def _mutated_data_property(tmp_path: Path, rows: list[list[float] | None], suffix: str,
                           ed: list[tuple[int, int, int]], cut: int | None) -> None:
    good = tmp_path / f"good{suffix}"
    if suffix == ".csv":
        good.write_text("tensor\n" + "".join(f'"{json.dumps(r)}"\n' for r in rows))
    else:
        try:
            write_dataset(pa.table({"tensor": pa.array(rows, type=pa.list_(pa.float64()))}), good)
        except InputError:
            return
    _read_property(good)
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(_mutate(good.read_bytes(), ed, cut))
    _read_property(bad)


@SHORT
@given(rows=rows_of_tensors, suffix=st.sampled_from(SUFFIXES), ed=edits, cut=cuts)
def test_mutated_data_files(tmp_path: Path, rows: list[list[float] | None], suffix: str,
                            ed: list[tuple[int, int, int]], cut: int | None) -> None:
    _mutated_data_property(tmp_path, rows, suffix, ed, cut)


@pytest.mark.fuzz
@pytest.mark.timeout(1800)
@LONG
@given(rows=rows_of_tensors, suffix=st.sampled_from(SUFFIXES), ed=edits, cut=cuts)
def test_mutated_data_files_long(tmp_path: Path, rows: list[list[float] | None], suffix: str,
                                 ed: list[tuple[int, int, int]], cut: int | None) -> None:
    _mutated_data_property(tmp_path, rows, suffix, ed, cut)


def test_arrow_file_with_damaged_offsets_is_an_input_error(tmp_path: Path) -> None:
    """Found by the long fuzz: one changed byte gave list offsets past the buffer; IPC reading accepted the file
    and normalising it raised ArrowIndexError."""
    _mutated_data_property(tmp_path, [[], None], ".arrow", [(0, 2888, 1)], None)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False)
                           | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                        max_size=3), max_leaves=10)


@SHORT
@given(doc=st.lists(st.dictionaries(st.sampled_from(["tensor", "x"]), json_values, max_size=2), max_size=5)
       | json_values)
@example(doc=[{"tensor": [None, 16777217]}])  # an int float32 cannot hold, in a ragged/null tensor: ArrowInvalid
def test_generated_json_records(tmp_path: Path, doc: Any) -> None:
    path = tmp_path / "d.df.json"
    path.write_text(json.dumps(doc))
    _read_property(path)


@SHORT
@given(data=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_as_data(tmp_path: Path, data: bytes, suffix: str) -> None:
    _bytes_property(tmp_path, data, suffix)


def _bytes_property(tmp_path: Path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"r{suffix}"
    path.write_bytes(data)
    _read_property(path)


@pytest.mark.parametrize(("rows", "row", "words"), [
    ([[1.0, 2.0], [1.0, math.nan]], 1, "NaN"),
    ([[1.0, math.inf]], 0, "inf"),
    ([[1.0, 2.0], None], 1, "null"),
    ([[1.0, 2.0], [1.0, None]], 1, "null value inside"),
    ([[1.0, 2.0], [1.0, 2.0], [3.0]], 2, "ragged"),
    ([[], []], 0, "empty tensor"),
])
@pytest.mark.parametrize("suffix", [".arrow", ".parquet"])
def test_bad_tensors_name_file_column_and_row(tmp_path: Path, rows: list[Any], row: int, words: str,
                                              suffix: str) -> None:
    path = tmp_path / f"d{suffix}"
    write_dataset(pa.table({"tensor": pa.array(rows, type=pa.list_(pa.float32()))}), path)
    with pytest.raises(InputError) as info:
        check_tensors(read_dataset(path, "tensor"), "tensor", str(path))
    err = info.value
    assert err.file == str(path) and err.key == "tensor"
    assert err.problem.startswith(f"row {row}:") and words in err.problem, err.problem


def test_nan_passes_for_arrow_bodies_only(tmp_path: Path) -> None:
    table = pa.table({"tensor": pa.array([[1.0, math.nan]], type=pa.list_(pa.float32()))})
    check_tensors(table, "tensor", "f", json_body=False)  # an Arrow body can carry NaN ("missing" to some models)
    with pytest.raises(InputError):
        check_tensors(table, "tensor", "f")


# --- answer classifiers -----------------------------------------------------------------------------------------

CLASSIFIERS = {"wallaroo-json": wallaroo_target.make_classifier("pandas-records"),
               "wallaroo-arrow": wallaroo_target.make_classifier("arrow"),
               "http": http_target.make_classifier(), "ubiops-direct": classify_direct,
               "kserve": classify_kserve, "kserve-named": lambda s, b, r: classify_kserve(s, b, r, ("out",))}
KINDS = {int(k) for k in Kind}


def _arrow_answer(rows: int) -> bytes:
    sink = io.BytesIO()
    table = pa.table({"out": pa.array([[0.5]] * rows), "metadata": pa.array([{"elapsed": [1, 2]}] * rows)})
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


answers = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda r, e, c: _mutate(_arrow_answer(r), e, c), st.integers(0, 3), edits, cuts),
    st.builds(lambda v, e, c: _mutate(json.dumps(v).encode(), e, c), json_values, edits, cuts),
    st.sampled_from([b'[{"out": [1]}]', b'{"status": "completed", "result": {"x": 1}}', b'{"status": "failed"}',
                     b'[{"time": 1, "metadata": {"elapsed": [1e400]}}]', b'{"result": null}', b"ARROW1"]))


def _classifier_property(name: str, status: int, body: bytes, rows_in: int) -> None:
    kind, rows_out, server_ns = CLASSIFIERS[name](status, body, rows_in)
    assert kind in KINDS and kind != Kind.DROPPED
    assert isinstance(rows_out, int) and rows_out >= 0
    assert isinstance(server_ns, int) and server_ns >= 0
    if not 200 <= status < 300:
        assert kind != Kind.OK


@SHORT
@given(name=st.sampled_from(sorted(CLASSIFIERS)), status=st.integers(0, 999), body=answers,
       rows_in=st.integers(0, 1000))
def test_classifiers_never_raise(name: str, status: int, body: bytes, rows_in: int) -> None:
    _classifier_property(name, status, body, rows_in)


def test_arrow_answer_with_a_damaged_metadata_buffer_is_classified() -> None:
    """Found by the long fuzz: a valid-looking Arrow answer whose buffers point past its end made pyarrow raise
    OSError while reading ``metadata.elapsed`` (the classifier let it escape into the engine)."""
    body = _mutate(_arrow_answer(1), [(0, 3687, 1)], None)
    _classifier_property("wallaroo-arrow", 200, body, 0)
    _classifier_property("wallaroo-arrow", 200, body, 1)


# --- the long versions (opt-in: -m fuzz) ------------------------------------------------------------------------


@pytest.mark.fuzz
@pytest.mark.timeout(1800)
@LONG
@given(doc=documents)
def test_generated_documents_long(tmp_path: Path, doc: dict[str, Any]) -> None:
    _scenario_property(tmp_path, doc)


@pytest.mark.fuzz
@pytest.mark.timeout(1800)
@LONG
@given(index=st.integers(0, 100), ed=edits, cut=cuts)
def test_mutated_shipped_scenarios_long(tmp_path: Path, index: int, ed: list[tuple[int, int, int]],
                                        cut: int | None) -> None:
    _mutated_scenario_property(tmp_path, index, ed, cut)


@pytest.mark.fuzz
@pytest.mark.timeout(1800)
@LONG
@given(data=st.binary(max_size=2000), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_as_data_long(tmp_path: Path, data: bytes, suffix: str) -> None:
    _bytes_property(tmp_path, data, suffix)


@pytest.mark.fuzz
@pytest.mark.timeout(1800)
@LONG
@given(name=st.sampled_from(sorted(CLASSIFIERS)), status=st.integers(0, 999), body=answers,
       rows_in=st.integers(0, 1000))
def test_classifiers_never_raise_long(name: str, status: int, body: bytes, rows_in: int) -> None:
    _classifier_property(name, status, body, rows_in)
