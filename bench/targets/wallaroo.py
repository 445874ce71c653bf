"""Wallaroo pipeline inference (targets.md §1): URLs, headers, query parameters and the answer classifier.

The classifier runs once per answer on the hot path, so it counts rows instead of decoding answers:

- pandas-records: every record the engine writes starts with ``{"time":T,`` (T, epoch ms, is one value per
  request). That byte sequence cannot occur inside a JSON string (a quote in a string is escaped), and a record
  after the first follows a ``,`` where a nested object in value position follows a ``:``; so
  ``bytes.count(b',{"time":T,') + 1`` counts records at memory speed (~2 µs for a 10-row, 7 KB answer with
  metadata, against ~17 µs for ``len(orjson.loads(body))``; timeit, this machine). It is trusted only when it
  says exactly ``rows_in`` and the body is bracketed like a compact array of such records; anything else
  (another key order, whitespace, per-record times, a truncated body, a mismatch) falls back to the full
  parse, which then decides. The remaining blind spot — a nested *array* of objects whose first key is
  ``time`` with the very same T — would need input columns of that shape carrying the request's timestamp.
- arrow: the IPC file footer gives the row count without reading columns.
- ``metadata.elapsed`` (ns: serialisation, then one per step) of the first record is summed as the server
  time when present (the SDK's default ``dataset.exclude[]=metadata`` removes it: then 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import orjson
import pyarrow as pa
import pyarrow.ipc as ipc

from bench.errors import InputError
from bench.results import Classifier, Kind, PreparedBody
from bench.targets import Request, SectionRules, Target, read_table

if TYPE_CHECKING:
    from bench.scenario import Scenario, TargetConfig

__all__ = ["ARROW_FILE", "PANDAS_RECORDS", "TARGET", "WallarooTarget", "dataset_params", "dataset_query",
           "error_message", "error_source", "inference_url", "internal_url", "make_classifier", "request_headers",
           "with_dataset_params", "with_query"]

PANDAS_RECORDS = "application/json; format=pandas-records"
ARROW_FILE = "application/vnd.apache.arrow.file"

_OK, _BAD, _HTTP, _LIMITED = int(Kind.OK), int(Kind.BAD_RESPONSE), int(Kind.HTTP_ERROR), int(Kind.RATE_LIMITED)
_RECORD = b'{"time":'
_FIRST = b'[{"time":'
_TIME_AT = len(_FIRST)
_ELAPSED = b'elapsed":['  # matches "elapsed":[ (nested) and "metadata.elapsed":[ (separator=.)


def request_headers(fmt: Literal["pandas-records", "arrow"], token: str | None = None) -> dict[str, str]:
    """Content-Type for the format; Arrow also asks for an Arrow answer (else the engine answers JSON)."""
    if fmt == "pandas-records":
        headers = {"Content-Type": PANDAS_RECORDS}
    elif fmt == "arrow":
        headers = {"Content-Type": ARROW_FILE, "Accept": ARROW_FILE}
    else:
        raise InputError(f"unknown format {fmt!r}; expected pandas-records or arrow", key="format")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _base(base: str, key: str) -> str:
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"URL needs an http:// or https:// scheme and a host, got {base!r}", key=key)
    return base.rstrip("/")


def inference_url(base: str, deployment: str, pipeline: str) -> str:
    """External URL: ``{base}/v1/api/pipelines/infer/{deployment}/{pipeline}``.

    ``deployment`` is the deployment name with its id, as Wallaroo names it (``ccfraud-7``).
    """
    for key, value in (("deployment", deployment), ("pipeline", pipeline)):
        if not value or "/" in value:
            raise InputError(f"must be a non-empty name without '/', got {value!r}", key=key)
    return f"{_base(base, 'url')}/v1/api/pipelines/infer/{quote(deployment)}/{quote(pipeline)}"


def internal_url(deployment: str, pipeline: str, port: int = 29502) -> str:
    """In-cluster URL: ``http://engine-lb.{deployment}:29502/pipelines/{pipeline}``."""
    for key, value in (("deployment", deployment), ("pipeline", pipeline)):
        if not value or "/" in value:
            raise InputError(f"must be a non-empty name without '/', got {value!r}", key=key)
    return f"http://engine-lb.{deployment}:{port}/pipelines/{quote(pipeline)}"


def dataset_params(include: Sequence[str] = ("*",), exclude: Sequence[str] = ("metadata",),
                   separator: str | None = ".") -> list[tuple[str, str]]:
    """The SDK's ``dataset[]``, ``dataset.exclude[]`` and ``dataset.separator`` query parameters.

    Pass ``exclude=()`` to keep ``metadata`` (and with it the server-side ``elapsed`` time).
    """
    params = [("dataset[]", v) for v in include]
    params += [("dataset.exclude[]", v) for v in exclude]
    if separator is not None:
        params.append(("dataset.separator", separator))
    return params


def with_query(url: str, params: Sequence[tuple[str, str]]) -> str:
    """``url`` with ``params`` appended to any query it already has (percent-encoded like the SDK's)."""
    if not params:
        return url
    parts = urlsplit(url)
    extra = urlencode(list(params))
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def with_dataset_params(url: str, include: Sequence[str] = ("*",), exclude: Sequence[str] = ("metadata",),
                        separator: str | None = ".") -> str:
    """``url`` with the SDK's dataset query parameters (see ``dataset_params``)."""
    return with_query(url, dataset_params(include, exclude, separator))


def _json_rows(body: bytes, rows_in: int) -> int:
    """Records in a pandas-records answer, or -1 when it is not a JSON array.

    Fast path: records after the first start with ``,{"time":T,`` where T is the first record's time (one
    value per request). Nested objects in value position follow ``:``, so they are not counted; the exact T
    makes a nested array of time-first objects being miscounted as records practically impossible.
    """
    if body.startswith(_FIRST) and body.endswith(b"}]"):
        j = body.find(b",", _TIME_AT, _TIME_AT + 32)
        if j > _TIME_AT and body.count(b',{"time":' + body[_TIME_AT:j + 1]) + 1 == rows_in:
            return rows_in
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return -1
    return len(parsed) if isinstance(parsed, list) else -1


def _json_elapsed(body: bytes) -> int:
    """Sum of ``metadata.elapsed`` in the first record (searched only up to the second record), else 0."""
    end = body.find(_RECORD, _TIME_AT)
    i = body.find(_ELAPSED, 0, end if end > 0 else len(body))
    if i < 0:
        return 0
    i += len(_ELAPSED) - 1  # at the '['
    j = body.find(b"]", i)
    try:
        values = orjson.loads(body[i:j + 1]) if j > 0 else None
        return int(sum(values)) if isinstance(values, list) else 0
    except (orjson.JSONDecodeError, TypeError, ValueError, OverflowError):
        return 0


def _legacy_rows(body: bytes) -> tuple[int, int]:
    """(rows, elapsed ns) of an older install's answer — one object per request (alone or in a one-item array)
    whose ``outputs`` tensors carry ``dim`` = [rows, …]; (-1, 0) when the body is not that shape."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return -1, 0
    if isinstance(doc, list) and len(doc) == 1:
        doc = doc[0]
    if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list):
        return -1, 0
    rows = -1
    for out in doc["outputs"]:
        tensor = next(iter(out.values()), None) if isinstance(out, dict) and len(out) == 1 else None
        dim = tensor.get("dim") if isinstance(tensor, dict) else None
        if isinstance(dim, list) and dim and isinstance(dim[0], int) and not isinstance(dim[0], bool):
            rows = dim[0] if rows < 0 else min(rows, dim[0])
    elapsed = doc.get("elapsed")
    return rows, elapsed if isinstance(elapsed, int) and not isinstance(elapsed, bool) and elapsed > 0 else 0


def _classify_json(status: int, body: bytes, rows_in: int) -> tuple[int, int, int]:
    if 200 <= status < 300:
        rows = _json_rows(body, rows_in)
        if rows == rows_in and (rows != 1 or body.startswith(_FIRST)):
            return _OK, rows, _json_elapsed(body)
        if rows <= 1:  # maybe an older install's one-object answer (rows counted from dim)
            legacy, elapsed = _legacy_rows(body)
            if legacy >= 0:
                return (_OK if legacy == rows_in else _BAD), legacy, elapsed
        if rows < 0:
            return _BAD, 0, 0
        return (_OK if rows == rows_in else _BAD), rows, _json_elapsed(body)
    return (_LIMITED if status == 429 else _HTTP), 0, 0


def _classify_arrow(status: int, body: bytes, rows_in: int) -> tuple[int, int, int]:
    if not 200 <= status < 300:
        return (_LIMITED if status == 429 else _HTTP), 0, 0
    if body[:6] != b"ARROW1":
        return _BAD, 0, 0
    try:
        reader = ipc.open_file(pa.py_buffer(body))
        rows = reader.count_rows()
    except (pa.ArrowException, OSError):
        return _BAD, 0, 0
    server_ns = 0
    if rows:
        names = reader.schema.names
        if "metadata" in names or "metadata.elapsed" in names:
            server_ns = _arrow_elapsed(reader, "metadata" in names)
    return (_OK if rows == rows_in else _BAD), rows, server_ns


def _arrow_elapsed(reader: Any, nested: bool) -> int:
    """``metadata.elapsed`` of the first row: a struct field, or a flat column with ``dataset.separator=.``."""
    try:
        batch = reader.get_batch(0)
        if batch.num_rows == 0:
            return 0
        col = batch.column("metadata").field("elapsed") if nested else batch.column("metadata.elapsed")
        values = col[0].values
        return int(sum(v for v in values.to_pylist() if v is not None)) if values is not None else 0
    except (pa.ArrowException, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return 0


def make_classifier(fmt: Literal["pandas-records", "arrow"]) -> Classifier:
    """``classify(status, body, rows_in) -> (kind, rows_out, server_ns)`` for answers in ``fmt``.

    The answer format follows the request: JSON for pandas-records, Arrow when Accept asked for it.
    """
    if fmt == "pandas-records":
        return _classify_json
    if fmt == "arrow":
        return _classify_arrow
    raise InputError(f"unknown format {fmt!r}; expected pandas-records or arrow", key="format")


def _error_body(body: bytes) -> dict[str, object] | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def error_source(body: bytes) -> str | None:
    """The ``source`` of a Wallaroo error body (engine, platform, model, sidekick); None when absent."""
    parsed = _error_body(body)
    source = parsed.get("source") if parsed else None
    return source if isinstance(source, str) and source else None


def error_message(body: bytes) -> str | None:
    """The message of a Wallaroo error body: ``error`` (or ``msg`` from components that send that form)."""
    parsed = _error_body(body)
    if not parsed:
        return None
    for key in ("error", "msg"):
        value = parsed.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _format(target: TargetConfig) -> Literal["pandas-records", "arrow"]:
    return "arrow" if target.format == "arrow" else "pandas-records"


def dataset_query(target: TargetConfig, file: str) -> list[tuple[str, str]]:
    """The ``dataset[]`` / ``dataset.exclude[]`` / ``dataset.separator`` parameters a ``[target]`` asks for.

    ``dataset`` (list: the answer's columns, e.g. ["*"]), ``dataset_exclude`` (list; default none, so the answer
    keeps ``metadata`` and with it the server-side ``elapsed`` bench reports — the SDK's own default excludes it)
    and ``dataset_separator`` (e.g. "."). ``dataset_params = true`` still means the SDK's defaults (``dataset[]=*``,
    ``dataset.exclude[]=metadata``, ``dataset.separator=.``: no server time); nothing given sends nothing.
    """
    raw = target.raw
    given = [k for k in ("dataset", "dataset_exclude", "dataset_separator") if k in raw]
    if target.dataset_params:
        if given:
            raise InputError(f"give dataset_params = true (the SDK's defaults) or {given[0]}, not both; "
                             "migrate to dataset = [\"*\"], dataset_exclude = [\"metadata\"], "
                             "dataset_separator = \".\"", file=file, key=f"target.{given[0]}")
        return dataset_params()
    if not given:
        return []

    def names(key: str, default: Sequence[str]) -> list[str]:
        value = raw.get(key, list(default))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise InputError(f"expected a list of column names such as [\"*\"], got {value!r}", file=file,
                             key=f"target.{key}")
        return value

    separator = raw.get("dataset_separator")
    if separator is not None and (not isinstance(separator, str) or not separator):
        raise InputError(f"expected a separator string such as \".\", got {separator!r}", file=file,
                         key="target.dataset_separator")
    return dataset_params(names("dataset", ("*",)), names("dataset_exclude", ()), separator)


class WallarooTarget(Target):
    """A Wallaroo pipeline's inference endpoint (pandas-records JSON or Arrow IPC)."""

    kind = "wallaroo"
    rules = SectionRules(formats=("pandas-records", "arrow"))

    def config(self, sc: Scenario) -> list[tuple[str, str]]:
        return dataset_query(sc.target, sc.file)

    def bodies(self, sc: Scenario, config: Any) -> Sequence[PreparedBody]:
        from bench.payload import build_bodies

        return build_bodies(read_table(sc), sc.data.rows_per_request, _format(sc.target))

    def request(self, target: TargetConfig, url: str, config: Any) -> Request:
        fmt = _format(target)
        query = config if isinstance(config, list) else dataset_query(target, "")
        return Request(url=with_query(url, query),
                       headers=request_headers(fmt), classify=make_classifier(fmt))


TARGET = WallarooTarget()
