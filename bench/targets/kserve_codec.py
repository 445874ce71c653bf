"""Open Inference Protocol v2 (KServe V2 REST): the ``[target]`` config, request encoding, answer judging.

Pure functions (no sockets): the scenario's ``[target]`` table → ``KServeConfig``; an Arrow table → V2 request
bodies, each encoded once, a block at a time when the run first reaches it; an answer → (kind, rows out). Two layouts:

- ``tensor`` (default): the whole row batch as ONE input — a list column (ccfraud's fixed-size ``tensor``) or
  several scalar numeric columns stacked — shape ``[rows, width]``;
- ``columns``: one input per column (shape ``[rows]``, or ``[rows, width]`` for list columns).

Datatypes follow the Arrow types (float32 → FP32, float64 → FP64, int8..64 → INT8..64, uint8..64 →
UINT8..64, strings → BYTES, bool → BOOL; binary → BYTES with ``binary = true``) unless the scenario names one; a
named datatype that cannot hold a value (out of range, not an integer, not 0/1 for BOOL, FP16 overflow) is refused
before any body, naming the row. With ``binary = true`` the tensors go as raw little-endian
bytes after a JSON header (the binary tensor extension); the JSON header of every body is padded with spaces to
one length, bounded up front, so that the one ``Inference-Header-Content-Length`` the engines send fits them all.
V2 ``parameters`` (request level, per input, per requested output) are copied from the scenario as they are.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from bench.bodies import BLOCK, LazyBodies
from bench.errors import InputError
from bench.results import Kind, PreparedBody
from bench.secrets import header_name_problem, header_value_problem, host_value_problem, literal_header_problem
from bench.tables import TableReader
from bench.units import parse_duration

__all__ = ["DATATYPES", "HEADER_LENGTH", "BodyEncoder", "InputSpec", "KServeConfig", "Tensor", "TensorRows",
           "classify", "config_from_mapping", "encode_bodies", "lazy_bodies", "tensors_for"]

DATATYPES: dict[str, str] = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "INT64": "<i8", "INT32": "<i4",
                             "INT16": "<i2", "INT8": "<i1", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4",
                             "UINT64": "<u8", "BOOL": "|b1", "BYTES": "O"}
HEADER_LENGTH = "Inference-Header-Content-Length"
_KEYS = ("kind", "url", "model_name", "model_version", "layout", "input_name", "datatype", "shape", "inputs",
         "outputs", "binary", "headers", "ready_wait", "preflight", "token_env", "headers_env", "parameters",
         "input_parameters")
_BINARY_SIZE = "binary_data_size"  # bench sets it per binary input: never from the scenario
_DECODER = json.JSONDecoder()
_OK, _BAD, _HTTP, _LIMITED = int(Kind.OK), int(Kind.BAD_RESPONSE), int(Kind.HTTP_ERROR), int(Kind.RATE_LIMITED)


@dataclass(frozen=True, slots=True)
class InputSpec:
    """How one column (or, for the tensor layout, the whole batch) becomes a V2 input."""

    name: str
    datatype: str | None = None  # None: from the Arrow type
    shape: tuple[int, ...] | None = None  # -1 = the request's rows; None: [rows] or [rows, width]
    parameters: Mapping[str, Any] = field(default_factory=dict)  # the input's V2 parameters, sent as they are


@dataclass(frozen=True, slots=True)
class KServeConfig:
    """The validated ``[target]`` table of ``kind = "kserve"``."""

    url: str  # the server's base URL (…/v2/models/{name}/infer is appended)
    model_name: str
    model_version: str | None = None
    layout: str = "tensor"  # "tensor" | "columns"
    tensor: InputSpec | None = None  # the tensor layout's one input (name None → the column's name)
    columns: Mapping[str, InputSpec] = field(default_factory=dict)  # columns layout: per-column overrides
    outputs: tuple[str, ...] = ()  # ask for these outputs only, and expect them
    output_parameters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per requested output
    parameters: Mapping[str, Any] = field(default_factory=dict)  # the request's V2 parameters
    binary: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    ready_wait_s: float = 30.0
    preflight: bool = True

    @property
    def model_path(self) -> str:
        from urllib.parse import quote

        path = f"/v2/models/{quote(self.model_name, safe='')}"
        return path + (f"/versions/{quote(self.model_version, safe='')}" if self.model_version else "")

    def infer_url(self, base: str | None = None) -> str:
        return f"{(base or self.url).rstrip('/')}{self.model_path}/infer"


def _datatype(reader: TableReader, key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.upper() not in DATATYPES:
        raise reader.err(key, f"unknown datatype {value!r} (known: {', '.join(DATATYPES)})")
    return value.upper()


def _shape(reader: TableReader, key: str, value: object) -> tuple[int, ...] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or not value
            or not all(isinstance(d, int) and not isinstance(d, bool) and (d == -1 or d > 0) for d in value)
            or value.count(-1) > 1):
        raise reader.err(key, f"expected a list of positive integers with at most one -1 (the rows), got {value!r}")
    return tuple(value)


def _json_value_problem(value: object) -> str | None:
    """Why a TOML value cannot go into a V2 body as it is (a date has no JSON form, NaN is written null)."""
    if isinstance(value, dict):
        return next((p for p in map(_json_value_problem, value.values()) if p), None)
    if isinstance(value, list):
        return next((p for p in map(_json_value_problem, value) if p), None)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} has no JSON form"
    if not isinstance(value, str | int | float | bool):
        return f"a TOML {type(value).__name__} has no JSON form: write it as a string"
    return None


def _parameters(reader: TableReader, key: str, value: object) -> dict[str, Any]:
    """A V2 ``parameters`` object from the scenario: a table whose values JSON can carry (not binary_data_size)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise reader.err(key, f"expected a table of V2 parameters, e.g. {{ content_type = \"np\" }}, got {value!r}")
    if _BINARY_SIZE in value:
        raise reader.err(f"{key}.{_BINARY_SIZE}", "bench sets it for each binary input (binary = true)")
    for name, item in value.items():
        problem = _json_value_problem(item)
        if problem:
            raise reader.err(f"{key}.{name}", problem)
    return dict(value)


def _outputs(reader: TableReader, raw: object) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
    """``outputs = ["a", { name = "b", parameters = {...} }]`` → the names and each one's parameters."""
    if not isinstance(raw, list):
        raise reader.err("outputs", "expected a list of output names (or { name, parameters } tables)")
    names: list[str] = []
    params: dict[str, dict[str, Any]] = {}
    for i, item in enumerate(raw):
        if isinstance(item, dict):
            if set(item) - {"name", "parameters"} or not isinstance(item.get("name"), str) or not item["name"]:
                raise reader.err(f"outputs[{i}]", "expected an output name or a table { name, parameters }")
            name = item["name"]
            params[name] = _parameters(reader, f"outputs[{i}].parameters", item.get("parameters"))
        elif isinstance(item, str) and item:
            name = item
        else:
            raise reader.err(f"outputs[{i}]", f"expected an output name or a table {{ name, parameters }}, "
                                             f"got {item!r}")
        if name in names:
            raise reader.err(f"outputs[{i}]", f"output {name!r} is listed twice")
        names.append(name)
    return tuple(names), {n: p for n, p in params.items() if p}


def config_from_mapping(d: Mapping[str, Any], file: str) -> KServeConfig:
    """Validate ``[target]``; every problem is an InputError naming ``target.<key>``."""
    r = TableReader(d, file, "target").only(_KEYS)
    model = r.required_string("model_name", "the model's name on the server (…/v2/models/{model_name}/infer)")
    version = d.get("model_version")
    if version is not None and not isinstance(version, str | int):
        raise r.err("model_version", f"expected a string, got {type(version).__name__}")
    layout = d.get("layout", "tensor")
    if layout not in ("tensor", "columns"):
        raise r.err("layout", f"expected 'tensor' (one input per row batch) or 'columns' (one per column), "
                              f"got {layout!r}")
    tensor = None
    columns: dict[str, InputSpec] = {}
    if layout == "tensor":
        if "inputs" in d:
            raise r.err("inputs", "is for layout = 'columns'; the tensor layout takes input_name, datatype, shape")
        tensor = InputSpec(name=r.string("input_name") or "", datatype=_datatype(r, "datatype", d.get("datatype")),
                           shape=_shape(r, "shape", d.get("shape")),
                           parameters=_parameters(r, "input_parameters", d.get("input_parameters")))
    else:
        for key in ("input_name", "datatype", "shape", "input_parameters"):
            if key in d:
                raise r.err(key, "is for layout = 'tensor'; with columns use [target.inputs.COLUMN]")
        inputs = d.get("inputs", {})
        if not isinstance(inputs, dict):
            raise r.err("inputs", "expected a table of column = {name, datatype, shape, parameters}")
        for col, spec in inputs.items():
            if not isinstance(spec, dict) or set(spec) - {"name", "datatype", "shape", "parameters"}:
                raise r.err(f"inputs.{col}", "expected a table with name, datatype, shape and/or parameters")
            name = spec.get("name", col)
            if not isinstance(name, str) or not name:
                raise r.err(f"inputs.{col}.name", "expected a non-empty string")
            columns[col] = InputSpec(name, _datatype(r, f"inputs.{col}.datatype", spec.get("datatype")),
                                     _shape(r, f"inputs.{col}.shape", spec.get("shape")),
                                     _parameters(r, f"inputs.{col}.parameters", spec.get("parameters")))
    outputs, output_parameters = _outputs(r, d.get("outputs", []))
    parameters = _parameters(r, "parameters", d.get("parameters"))
    headers = d.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise r.err("headers", "expected a table of strings")
    if any(k.lower() == "authorization" for k in headers):
        raise r.err("headers", "do not put credentials in a scenario file; use [auth]")
    for name, value in headers.items():  # the rules of any target's [target] headers (bench.scenario)
        problem = header_name_problem(name) or literal_header_problem(name, value) or header_value_problem(value) \
            or (host_value_problem(value) if name.lower() == "host" else None)
        if problem:
            raise r.err(f"headers.{name}", problem)
    for key in ("binary", "preflight"):
        if not isinstance(d.get(key, False), bool):
            raise r.err(key, "expected true or false")
    try:
        wait = parse_duration(d.get("ready_wait", 30.0))
    except ValueError as exc:
        raise r.err("ready_wait", str(exc)) from None
    return KServeConfig(url=str(d.get("url", "embedded")), model_name=model,
                        model_version=None if version is None else str(version), layout=layout, tensor=tensor,
                        columns=columns, outputs=outputs, output_parameters=output_parameters,
                        parameters=parameters, binary=bool(d.get("binary", False)),
                        headers=dict(headers), ready_wait_s=wait, preflight=bool(d.get("preflight", True)))


@dataclass(slots=True)
class Tensor:
    """One V2 input of a whole table: name, datatype, shape with rows first, values (rows first)."""

    name: str
    datatype: str
    shape: tuple[int, ...]  # for the whole table: shape[0] == rows
    values: npt.NDArray[Any]  # shape (rows, ...) ; object array of bytes for BYTES
    parameters: Mapping[str, Any] = field(default_factory=dict)  # the input's V2 parameters from the scenario


_ARROW_DATATYPES = ((pa.types.is_float32, "FP32"), (pa.types.is_float64, "FP64"), (pa.types.is_float16, "FP16"),
                    (pa.types.is_int64, "INT64"), (pa.types.is_int32, "INT32"), (pa.types.is_int16, "INT16"),
                    (pa.types.is_int8, "INT8"), (pa.types.is_uint64, "UINT64"), (pa.types.is_uint32, "UINT32"),
                    (pa.types.is_uint16, "UINT16"), (pa.types.is_uint8, "UINT8"), (pa.types.is_boolean, "BOOL"),
                    (pa.types.is_string, "BYTES"), (pa.types.is_large_string, "BYTES"))


def _is_binary(t: pa.DataType) -> bool:
    return bool(pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t))


def _arrow_datatype(t: pa.DataType) -> str | None:
    if _is_binary(t):
        return "BYTES"
    return next((name for test, name in _ARROW_DATATYPES if test(t)), None)


def _column(col: pa.ChunkedArray, name: str, binary: bool) -> tuple[npt.NDArray[Any], str]:
    """A column as a numpy array (rows, [width]) and its V2 datatype from the Arrow type; raw bytes (a binary
    column) only when the body is ``binary`` (a JSON body carries BYTES as text)."""
    t = col.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        dt = _arrow_datatype(t.value_type)
        lengths = pc.list_value_length(col)  # in Arrow: no Python object per value (a big data set starts fast)
        widths = pc.min_max(lengths)
        if (dt is None or dt == "BYTES" or lengths.null_count
                or widths["min"].as_py() != widths["max"].as_py()):
            raise InputError(f"column {name!r}: a list column must hold numbers, every row of one length",
                             key="data")
        flat = pa.concat_arrays([c.flatten() for c in col.chunks]).to_numpy(zero_copy_only=False)
        return flat.reshape(len(col), widths["max"].as_py()), dt
    if _is_binary(t) and not binary:
        raise InputError(f"column {name!r}: a binary column (Arrow type {t}): a JSON body cannot carry raw bytes; "
                         "binary = true sends them as BYTES (or store text as a string column)", key="data")
    dt = _arrow_datatype(t)
    if dt is None:
        raise InputError(f"column {name!r}: Arrow type {t} has no V2 datatype", key="data")
    if col.null_count:
        raise InputError(f"column {name!r}: {col.null_count} null values (V2 tensors have no nulls)", key="data")
    if dt == "BYTES":
        values = [v.encode() if isinstance(v, str) else v for v in col.to_pylist()]
        return np.array(values, dtype=object), dt
    return col.to_numpy(), dt


def _refuse(values: npt.NDArray[Any], bad: npt.NDArray[np.bool_], why: Callable[[Any], str], where: str,
            key: str) -> InputError:
    """One line naming the input, the first row (0-based, the file's order) holding a value ``bad`` marks, that
    value and ``why(value)``."""
    flat_bad = bad.reshape(bad.shape[0], -1)
    row = int(np.flatnonzero(flat_bad.any(axis=1))[0])
    value = values.reshape(values.shape[0], -1)[row][flat_bad[row]][0].item()
    return InputError(f"{where}: row {row}: {value!r} {why(value)}", key=key)


def _saying(text: str) -> Callable[[Any], str]:
    """A ``_refuse`` reason that does not depend on the value."""
    return lambda _: text


def _bits_range(want: str) -> tuple[float, float]:
    """[lo, hi) of an integer datatype, as floats that are exact (powers of two)."""
    bits = np.dtype(DATATYPES[want]).itemsize * 8
    return (0.0, 2.0 ** bits) if want.startswith("U") else (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1))


def _cast(values: npt.NDArray[Any], have: str, want: str, where: str, key: str) -> npt.NDArray[Any]:
    """``values`` as ``want``, refused (naming the first bad row) when ``want`` cannot hold one of them: numpy
    would wrap integers (300 → 44 as UINT8, -5 → 2**64 - 5 as UINT64), send 1e6 as FP16 inf (JSON null), and
    make any non-zero number true."""
    if have == want:
        return values
    if (have == "BYTES") != (want == "BYTES"):
        raise InputError(f"{where}: cannot send {have} data as {want}", key=key)
    target = np.dtype(DATATYPES[want])
    if have == "BOOL":  # 0 and 1 fit every numeric datatype
        return values.astype(target)
    with np.errstate(all="ignore"):  # overflow and NaN are reported as a line below, not as numpy warnings
        if want == "BOOL":
            bad = (values != 0) & (values != 1)
            if bad.any():
                raise _refuse(values, bad, lambda _: "is not 0 or 1: cannot be sent as BOOL", where, key)
            return values.astype(target)  # every value is 0 or 1 (checked)
        if want.startswith("FP"):
            cast = values.astype(target)
            bad = np.isfinite(values) & ~np.isfinite(cast)  # too big for the narrower float: inf (JSON null)
            if bad.any():
                largest = f"{np.finfo(target).max:g}"
                raise _refuse(values, bad, lambda _: f"is out of range for {want} (largest {largest})", where, key)
            return cast
        info = np.iinfo(target)
        if have.startswith("FP"):
            lo, hi = _bits_range(want)
            bad = (np.mod(values, 1) != 0) | (values < lo) | (values >= hi)  # NaN and ±inf: not integers
        else:  # integer → integer: compared within the bounds the source's own type can hold
            source = np.iinfo(values.dtype)
            bad = ((values < values.dtype.type(max(info.min, source.min)))
                   | (values > values.dtype.type(min(info.max, source.max))))

        def why(v: Any) -> str:
            if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
                return f"is not an integer (non-integer values cannot be sent as {want})"
            return f"is out of range for {want} ({info.min} to {info.max})"

        if bad.any():
            raise _refuse(values, bad, why, where, key)
        return values.astype(target)


def _reshape(values: npt.NDArray[Any], shape: tuple[int, ...] | None, name: str, key: str) -> tuple[int, ...]:
    rows = values.shape[0]
    if shape is None:
        return tuple(values.shape)
    per_row = math.prod(d for d in shape if d != -1)
    if shape[0] != -1 or per_row * rows != values.size:
        raise InputError(f"input {name!r}: shape {list(shape)} does not fit {values.size // max(rows, 1)} values "
                         f"per row (the first dimension must be -1, the rows)", key=key)
    return (rows, *shape[1:])


def tensors_for(table: pa.Table, cfg: KServeConfig) -> list[Tensor]:
    """The table as the V2 inputs the config asks for (every row), checked before any body is encoded."""
    if table.num_rows == 0:
        raise InputError("the dataset has no rows", key="data")
    if cfg.layout == "columns":
        unknown = [c for c in cfg.columns if c not in table.column_names]
        if unknown:
            raise InputError(f"no column {unknown[0]!r} in the data (columns: {', '.join(table.column_names)})",
                             key=f"target.inputs.{unknown[0]}")
        out = []
        for col in table.column_names:
            spec = cfg.columns.get(col, InputSpec(col))
            values, dt = _column(table.column(col), col, cfg.binary)
            where = f"input {spec.name!r}" + ("" if spec.name == col else f" (column {col!r})")
            values = _cast(values, dt, spec.datatype or dt, where, f"target.inputs.{col}.datatype")
            shape = _reshape(values, spec.shape, spec.name, f"target.inputs.{col}.shape")
            out.append(Tensor(spec.name, spec.datatype or dt, shape, values.reshape(shape), spec.parameters))
        return out
    spec = cfg.tensor or InputSpec("")
    if table.num_columns == 1:
        values, dt = _column(table.column(0), table.column_names[0], cfg.binary)
        name = spec.name or table.column_names[0]
    else:
        parts = [_column(table.column(c), c, cfg.binary) for c in table.column_names]
        kinds = {dt for _, dt in parts}
        if "BYTES" in kinds or any(v.ndim != 1 for v, _ in parts):
            raise InputError("layout = 'tensor' stacks scalar numeric columns; these data need layout = 'columns'",
                             key="target.layout")
        name = spec.name or "input-0"
        values, dt = _stacked(parts, table.column_names, spec.datatype, name)
    values = _cast(values, dt, spec.datatype or dt, f"input {name!r}", "target.datatype")
    shape = _reshape(values, spec.shape, name, "target.shape")
    return [Tensor(name, spec.datatype or dt, shape, values.reshape(shape), spec.parameters)]


def _stacked(parts: list[tuple[npt.NDArray[Any], str]], columns: list[str], datatype: str | None,
             name: str) -> tuple[npt.NDArray[Any], str]:
    """Scalar columns side by side as one tensor. With a datatype asked for, each column is cast (and range-checked,
    naming it) before stacking, so nothing passes through a common type first: int64 beside uint64 or float64
    would stack as float64 and lose every integer above 2**53. Without one they stack in numpy's common type,
    refused when that cannot hold a column's integers exactly."""
    if datatype is not None:
        cast = [_cast(v, dt, datatype, f"input {name!r} (column {c!r})", "target.datatype")
                for (v, dt), c in zip(parts, columns, strict=True)]
        return np.column_stack(cast), datatype
    common = np.result_type(*(v for v, _ in parts))
    if common.kind == "f":
        exact = 2 ** (np.finfo(common).nmant + 1)  # every integer up to 2**53 in magnitude is exact in FP64
        stacked_as = _arrow_datatype(pa.from_numpy_dtype(common)) or str(common)
        for (v, dt), c in zip(parts, columns, strict=True):
            if v.dtype.kind in "iu":
                bad = (v > exact) if v.dtype.kind == "u" else ((v > exact) | (v < -exact))
                if bad.any():
                    why = (f"in column {c!r} ({dt}) cannot be held exactly by {stacked_as}, the type the columns "
                           "stack in: set target.datatype")
                    raise _refuse(v, bad, _saying(why), f"input {name!r}", "target.datatype")
    values = np.column_stack([v for v, _ in parts])
    return values, _arrow_datatype(pa.from_numpy_dtype(values.dtype)) or "FP64"


def _binary(values: npt.NDArray[Any], datatype: str) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in values.reshape(-1))
    return bytes(np.ascontiguousarray(values, dtype=DATATYPES[datatype]).tobytes())


def _json_data(values: npt.NDArray[Any], datatype: str) -> Any:
    flat = values.reshape(-1)
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") for v in flat]
    if datatype in ("FP16", "BOOL"):
        return flat.tolist()
    return np.ascontiguousarray(flat, dtype=DATATYPES[datatype])  # orjson writes numpy arrays compactly


@dataclass(frozen=True, slots=True)
class TensorRows:
    """Rows of the V2 inputs (numpy views, no copy): what ``LazyBodies`` slices a block out of."""

    tensors: tuple[Tensor, ...]

    @property
    def num_rows(self) -> int:
        return int(self.tensors[0].values.shape[0])

    def slice(self, offset: int = 0, length: int | None = None) -> TensorRows:
        stop = self.num_rows if length is None else offset + length
        return TensorRows(tuple(Tensor(t.name, t.datatype, t.shape, t.values[offset:stop], t.parameters)
                                for t in self.tensors))


def _binary_bound(t: Tensor, rows: int) -> int:
    """At least the binary size of any ``rows`` rows of ``t`` (exact for fixed-size datatypes)."""
    if t.datatype == "BYTES":  # 4-byte length prefixes plus every value: the whole table's size bounds any body
        return 4 * t.values.size + sum(map(len, t.values.reshape(-1)))
    return rows * math.prod(t.shape[1:]) * np.dtype(DATATYPES[t.datatype]).itemsize


def _input_head(t: Tensor, rows: int, binary_size: int | None) -> dict[str, Any]:
    """An input's JSON without its data: name, shape, datatype and parameters (the scenario's, then bench's
    ``binary_data_size`` for a binary body)."""
    item: dict[str, Any] = {"name": t.name, "shape": [rows, *t.shape[1:]], "datatype": t.datatype}
    params = {**t.parameters, **({_BINARY_SIZE: binary_size} if binary_size is not None else {})}
    if params:
        item["parameters"] = params
    return item


class BodyEncoder:
    """V2 request bodies of ``rows_per_request`` rows (the last of a block may be shorter) from ``TensorRows``.

    With ``binary``, every JSON header is padded with spaces to ``width`` — fixed up front from the largest
    header any body can have (the most rows, the largest binary sizes), so bodies can be encoded lazily, block by
    block, and still share the one ``Inference-Header-Content-Length`` the engines send."""

    def __init__(self, rows: TensorRows, cfg: KServeConfig, rows_per_request: int) -> None:
        if isinstance(rows_per_request, bool) or not isinstance(rows_per_request, int) or rows_per_request < 1:
            raise InputError(f"must be an integer >= 1, got {rows_per_request!r}", key="data.rows_per_request")
        self.per = rows_per_request
        self._outputs = [{"name": o, **({"parameters": dict(p)} if (p := cfg.output_parameters.get(o)) else {})}
                         for o in cfg.outputs]
        self._parameters = dict(cfg.parameters)
        self.width: int | None = None
        if cfg.binary:
            n = min(rows_per_request, rows.num_rows)
            largest = [_input_head(t, n, _binary_bound(t, n)) for t in rows.tensors]
            self.width = len(self._head(largest))

    def _head(self, inputs: list[dict[str, Any]]) -> bytes:
        request: dict[str, Any] = {"inputs": inputs}
        if self._outputs:
            request["outputs"] = self._outputs
        if self._parameters:
            request["parameters"] = self._parameters
        return orjson.dumps(request, option=orjson.OPT_SERIALIZE_NUMPY)

    def __call__(self, part: TensorRows) -> list[bytes]:
        out: list[bytes] = []
        rows = part.num_rows
        for start in range(0, rows, self.per):
            n = min(self.per, rows - start)
            inputs: list[dict[str, Any]] = []
            blob: list[bytes] = []
            for t in part.tensors:
                values = t.values[start:start + n]
                if self.width is not None:
                    raw = _binary(values, t.datatype)
                    item = _input_head(t, n, len(raw))
                    blob.append(raw)
                else:
                    item = _input_head(t, n, None)
                    item["data"] = _json_data(values, t.datatype)
                inputs.append(item)
            head = self._head(inputs)
            if self.width is not None:
                if len(head) > self.width:
                    raise AssertionError(f"binary header of {len(head)} bytes over the bound {self.width}")
                head = head.ljust(self.width) + b"".join(blob)  # JSON allows trailing spaces
            out.append(head)
        return out


def lazy_bodies(tensors: Sequence[Tensor], cfg: KServeConfig, rows_per_request: int,
                block: int = BLOCK) -> tuple[LazyBodies[TensorRows], int | None]:
    """Every request body, each encoded when the run first reaches its block (``bench.bodies.LazyBodies``), and
    the binary JSON header length (None for JSON bodies)."""
    rows = TensorRows(tuple(tensors))
    encode = BodyEncoder(rows, cfg, rows_per_request)
    return LazyBodies(rows, rows_per_request, encode, block), encode.width


def encode_bodies(tensors: Sequence[Tensor], cfg: KServeConfig, rows_per_request: int) -> tuple[list[PreparedBody],
                                                                                                 int | None]:
    """Every body now, in one pass (tests, small data); the same bytes as ``lazy_bodies`` gives."""
    rows = TensorRows(tuple(tensors))
    encode = BodyEncoder(rows, cfg, rows_per_request)
    bodies = encode(rows)
    counts = [min(rows_per_request, rows.num_rows - s) for s in range(0, rows.num_rows, rows_per_request)]
    return [PreparedBody(b, n) for b, n in zip(bodies, counts, strict=True)], encode.width


def classify(status: int, body: bytes, rows_in: int, expected: Sequence[str] = ()) -> tuple[int, int, int]:
    """(kind, rows out, 0): 2xx with valid ``outputs`` whose first dimension is the rows sent is ok; anything else
    2xx is bad_response; 429 rate_limited; other statuses http_error (the recorder samples the V2 ``error`` body).

    An output is valid when its shape is a list of non-negative integers and its values fill it: JSON ``data``
    (flat or nested), or ``binary_data_size`` bytes after the JSON header (the binary tensor extension, found
    without the ``Inference-Header-Content-Length`` header: the classifier sees the body only). A scalar output
    (shape ``[]``, one value) carries no rows; when every output is one, the answer counts the rows sent."""
    if not 200 <= status < 300:
        return (_LIMITED if status == 429 else _HTTP), 0, 0
    parsed = _answer(body)
    if parsed is None:
        return _BAD, 0, 0
    answer, blob = parsed
    outputs = answer.get("outputs")
    if not isinstance(outputs, list) or not outputs:
        return _BAD, 0, 0
    if not all(isinstance(out, dict) for out in outputs):
        return _BAD, 0, 0
    sizes = [p.get(_BINARY_SIZE) if isinstance(p := out.get("parameters"), dict) else None for out in outputs]
    if not all(n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 0) for n in sizes):
        return _BAD, 0, 0
    pad = len(blob) - sum(n for n in sizes if n is not None)  # the JSON header's trailing spaces, if any
    if pad < 0 or blob[:pad].strip(b" \t\r\n"):
        return _BAD, 0, 0
    names = set()
    rows_out = -1
    at = pad  # where the next binary output starts in ``blob``
    for out, size in zip(outputs, sizes, strict=True):
        shape, data = out.get("shape"), out.get("data")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            return _BAD, 0, 0
        if size is not None:
            if _binary_count(blob[at:at + size], out.get("datatype")) != math.prod(shape):
                return _BAD, 0, 0
            at += size
        elif data is not None and (not isinstance(data, list) or _count(data) != math.prod(shape)):
            return _BAD, 0, 0
        if shape:
            if rows_out < 0:
                rows_out = shape[0]
            elif shape[0] != rows_out:
                return _BAD, 0, 0
        names.add(out.get("name"))
    if rows_out < 0:  # scalars only: one answer for the whole request
        rows_out = rows_in
    if any(n not in names for n in expected):
        return _BAD, rows_out, 0
    return (_OK if rows_out == rows_in else _BAD), rows_out, 0


def _answer(body: bytes) -> tuple[dict[str, Any], bytes] | None:
    """The answer's JSON object and the bytes after it (padding and binary outputs; for a plain JSON answer its
    trailing whitespace), or None.

    A binary-extension answer is a JSON header (maybe padded with spaces) followed by raw bytes: orjson refuses
    the whole, so the header's end is found by the stdlib's ``raw_decode`` on a Latin-1 view (one character per
    byte: its index is the byte offset, and UTF-8 in strings stays inside them), and the header is then read
    properly by orjson."""
    try:
        answer = orjson.loads(body)
        # JSON's trailing whitespace may be binary values (bytes that are spaces); rarely any: no copy of the body
        blob = body[len(body.rstrip(b" \t\r\n")):] if body[-1:].isspace() else b""
    except orjson.JSONDecodeError:
        try:
            _, end = _DECODER.raw_decode(body.decode("latin-1"))
            answer = orjson.loads(body[:end])
        except (ValueError, orjson.JSONDecodeError):
            return None
        blob = body[end:]
    return (answer, blob) if isinstance(answer, dict) else None


def _binary_count(raw: bytes, datatype: object) -> int:
    """How many values ``raw`` holds as ``datatype`` (-1 when it is not a whole number of them)."""
    if datatype == "BYTES":
        n = pos = 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                return -1
            pos += 4 + int.from_bytes(raw[pos:pos + 4], "little")
            n += 1
        return n if pos == len(raw) else -1
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        return -1
    width = np.dtype(DATATYPES[datatype]).itemsize
    return len(raw) // width if len(raw) % width == 0 else -1


def _count(data: list[Any]) -> int:
    """Leaf values of flat or nested row-major data."""
    if not data or not isinstance(data[0], list):
        return len(data)
    return sum(_count(d) if isinstance(d, list) else 1 for d in data)
