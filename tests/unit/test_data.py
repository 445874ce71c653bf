"""bench.data: readers for every supported format, the error messages, the ccfraud generator and writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from bench.commands import data as data_command
from bench.data import CCFRAUD_FEATURES, generate_ccfraud, read_dataset, records_from_table, write_dataset
from bench.errors import InputError

REPO = Path(__file__).resolve().parents[2]


def _matrix(table: pa.Table, column: str = "tensor") -> np.ndarray:
    arr = table.column(column).combine_chunks()
    return np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(arr), -1)


@pytest.fixture(scope="module")
def small() -> pa.Table:
    return generate_ccfraud(37, 3)


def test_generate_shape_schema_and_metadata(small: pa.Table) -> None:
    assert small.num_rows == 37
    field = small.schema.field("tensor")
    assert field.type == pa.list_(pa.float32(), CCFRAUD_FEATURES)
    assert json.loads(field.metadata[b"tensor_type"]) == {"shape": [29]}


def test_generate_is_reproducible_and_seed_sensitive() -> None:
    a, b, c = generate_ccfraud(200, 7), generate_ccfraud(200, 7), generate_ccfraud(200, 8)
    assert a.equals(b)
    assert not a.equals(c)


def test_generate_statistics_look_standardised_with_heavy_tails() -> None:
    x = _matrix(generate_ccfraud(20_000, 42)).astype(np.float64)
    assert np.abs(x.mean(axis=0)).max() < 0.01
    assert np.abs(x.std(axis=0) - 1).max() < 0.05
    assert x.min() >= -32 and x.max() <= 49
    # heavy tails: far more mass beyond 5 sigma than a normal distribution (5.7e-7) would give
    assert (np.abs(x) > 5).mean() > 1e-3
    kurtosis = ((x - x.mean(axis=0)) ** 4).mean(axis=0) / x.var(axis=0) ** 2
    assert np.median(kurtosis) > 5


def test_generate_fraud_fraction() -> None:
    # fraud rows are shifted by several sigma in many features at once; count rows far from the centre
    x = _matrix(generate_ccfraud(50_000, 1)).astype(np.float64)
    far = (np.abs(x) > 2.5).sum(axis=1) >= 12
    assert 0.001 <= far.mean() <= 0.004


def test_generate_rejects_no_rows() -> None:
    with pytest.raises(InputError, match="rows"):
        generate_ccfraud(0, 1)


@pytest.mark.parametrize("name", ["d.df.json", "d.json", "d.arrow", "d.feather", "d.arrows", "d.parquet"])
def test_write_then_read_round_trip(tmp_path: Path, small: pa.Table, name: str) -> None:
    path = tmp_path / name
    write_dataset(small, path)
    back = read_dataset(path)
    assert back.num_rows == small.num_rows
    assert back.schema.field("tensor").type == pa.list_(pa.float32(), 29)
    assert back.schema.field("tensor").metadata == small.schema.field("tensor").metadata
    np.testing.assert_array_equal(_matrix(back), _matrix(small))  # float32 shortest decimals are exact


def test_arrow_file_written_is_a_file_not_a_stream(tmp_path: Path, small: pa.Table) -> None:
    write_dataset(small, tmp_path / "d.arrow")
    raw = (tmp_path / "d.arrow").read_bytes()
    assert raw[:6] == b"ARROW1"
    assert ipc.open_file(pa.py_buffer(raw)).read_all().equals(small)


def test_arrow_stream_detected_by_magic_whatever_the_extension(tmp_path: Path, small: pa.Table) -> None:
    path = tmp_path / "really_a_stream.arrow"
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, small.schema) as w:
        w.write_table(small)
    path.write_bytes(sink.getvalue().to_pybytes())
    assert read_dataset(path).equals(small)


def test_json_compact_and_float32_shortest(tmp_path: Path) -> None:
    table = pa.table({"tensor": pa.array([[0.1, -1.0603297501, 2.0]], pa.list_(pa.float32()))})
    write_dataset(table, tmp_path / "d.df.json")
    assert (tmp_path / "d.df.json").read_bytes() == b'[{"tensor":[0.1,-1.0603298,2.0]}]'


def test_json_ints_and_doubles_become_float32_tensor(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[{"tensor": [1, 2, 3], "id": 1}, {"tensor": [0.5, 2.5, -3], "id": 2}]')
    table = read_dataset(path)
    assert table.schema.field("tensor").type == pa.list_(pa.float32(), 3)
    assert table.column("id").to_pylist() == [1, 2]
    np.testing.assert_array_equal(_matrix(table), [[1, 2, 3], [0.5, 2.5, -3]])


def test_ragged_tensors_stay_variable_length(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[{"tensor": [1, 2]}, {"tensor": [3]}]')
    table = read_dataset(path)
    assert table.schema.field("tensor").type == pa.list_(pa.float32())
    assert table.column("tensor").to_pylist() == [[1.0, 2.0], [3.0]]


def test_custom_column_name(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[{"x": [1.5]}]')
    assert read_dataset(path, column="x").column("x").to_pylist() == [[1.5]]


def test_csv_json_array_strings(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('tensor\n"[1.0, 2.0]"\n"[3.0, -4.5]"\n')
    table = read_dataset(path)
    assert table.schema.field("tensor").type == pa.list_(pa.float32(), 2)
    np.testing.assert_array_equal(_matrix(table), [[1, 2], [3, -4.5]])


def test_csv_numeric_columns_are_packed(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b,c\n1,2.5,-3\n4,5,6e-1\n")
    table = read_dataset(path)
    assert table.column_names == ["tensor"]
    np.testing.assert_allclose(_matrix(table), [[1, 2.5, -3], [4, 5, 0.6]], rtol=1e-7)


def test_parquet_plain(tmp_path: Path) -> None:
    pq.write_table(pa.table({"tensor": [[1.0, 2.0]] * 3}), tmp_path / "d.parquet")
    assert read_dataset(tmp_path / "d.parquet").num_rows == 3


def _error(path: Path, column: str = "tensor") -> InputError:
    with pytest.raises(InputError) as info:
        read_dataset(path, column)
    return info.value


def test_error_missing_file(tmp_path: Path) -> None:
    err = _error(tmp_path / "nope.arrow")
    assert err.file == str(tmp_path / "nope.arrow") and "not found" in err.problem


def test_error_unknown_extension(tmp_path: Path) -> None:
    (tmp_path / "d.xlsx").write_bytes(b"x")
    err = _error(tmp_path / "d.xlsx")
    assert "'.xlsx'" in err.problem and err.file and err.file.endswith("d.xlsx")


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("d.json", b"[{", "not valid JSON"),
    ("d.json", b'{"tensor": [1]}', "array of row objects"),
    ("d.json", b"[1, 2]", "row 0"),
    ("d.json", b"[]", "no rows"),
    ("d.arrow", b"ARROW1\x00\x00garbage", "cannot decode"),
    ("d.arrows", b"\x00\x01\x02", "cannot decode"),
    ("d.parquet", b"PAR1nonsense", "cannot decode"),
])
def test_error_undecodable_or_empty(tmp_path: Path, name: str, content: bytes, needle: str) -> None:
    (tmp_path / name).write_bytes(content)
    err = _error(tmp_path / name)
    assert needle in err.problem
    assert err.file == str(tmp_path / name)
    assert "\n" not in str(err)


def test_error_missing_column_names_the_key_and_the_columns(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text('[{"features": [1]}]')
    err = _error(tmp_path / "d.json")
    assert err.key == "tensor" and "features" in err.problem


def test_error_empty_arrow_table(tmp_path: Path) -> None:
    write_dataset(generate_ccfraud(3, 1).slice(0, 0), tmp_path / "d.arrow")
    assert "no rows" in _error(tmp_path / "d.arrow").problem


def test_error_csv_without_usable_columns(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("name\nx\n")
    err = _error(tmp_path / "d.csv")
    assert err.key == "tensor" and "numeric" in err.problem
    (tmp_path / "e.csv").write_text('tensor\n"not json"\n')
    assert "JSON arrays" in _error(tmp_path / "e.csv").problem


def test_records_from_table_keeps_other_columns() -> None:
    table = pa.table({"tensor": pa.array([[1.5, 2.0]], pa.list_(pa.float32(), 2)), "name": ["a"]})
    assert records_from_table(table) == [{"tensor": [1.5, 2.0], "name": "a"}]


def test_write_unknown_extension(tmp_path: Path, small: pa.Table) -> None:
    with pytest.raises(InputError, match="unknown output extension"):
        write_dataset(small, tmp_path / "d.txt")


def test_shipped_files_match_the_documented_command(tmp_path: Path) -> None:
    expected = generate_ccfraud(1001, 42)
    for name in ("ccfraud_1k.df.json", "ccfraud_1k.arrow"):
        shipped = read_dataset(REPO / "data" / name)
        assert shipped.num_rows == 1001
        np.testing.assert_array_equal(_matrix(shipped), _matrix(expected))
    readme = (REPO / "data" / "README.md").read_text()
    assert "bench data ccfraud --rows 1001 --seed 42 --out data/ccfraud_1k.arrow" in readme


def test_bench_data_command_writes_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cli import main

    out = tmp_path / "cc.arrow"
    assert main(["data", "ccfraud", "--rows", "12", "--seed", "5", "--out", str(out)]) == 0
    assert read_dataset(out).equals(generate_ccfraud(12, 5))
    assert "12 rows" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:  # refused while parsing the flags
        main(["data", "ccfraud", "--rows", "0", "--out", str(out)])
    assert info.value.code == 2
    assert "--rows" in capsys.readouterr().err
    assert main(["data", "ccfraud", "--out", str(tmp_path / "missing" / "x.arrow")]) == 2
    assert "--out" in capsys.readouterr().err
    assert data_command.register is not None
