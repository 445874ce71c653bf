"""Wallaroo pipeline inference, imitated (targets.md §1): external, internal and edge URLs, pandas-records JSON
or Arrow IPC in and out, the documented record shape and error bodies.

Every successful inference waits in the shared capacity model (``ctx.model.serve``) so the emulator's capacity
is known; scoring itself is one vectorised numpy call. The ASGI plumbing lives in bench.emulator.asgi.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from bench.emulator.asgi import Receive, Scope, Send, header, read_body, send_json, send_response
from bench.emulator.context import EmulatorContext
from bench.emulator.model import FEATURES, MODEL_NAME, MODEL_SHA, LogisticModel
from bench.emulator.wallaroo_dataset import FIELDS, Dataset, parse_dataset
from bench.emulator.wallaroo_legacy import encode_legacy, legacy_tensors

__all__ = ["ARROW_FILE", "WallarooEmulator", "error_body"]

ARROW_FILE = "application/vnd.apache.arrow.file"
JSON_RECORDS = "application/json; format=pandas-records"
EXTERNAL_PREFIX = "/v1/api/pipelines/infer/"


class BadInput(Exception):
    """A request the engine rejects with 400 (message is the error text)."""


class WallarooEmulator:
    """ASGI sub-app for the Wallaroo inference paths. Construct once per server with the shared context."""

    def __init__(self, ctx: EmulatorContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.model = LogisticModel()
        self._errors = random.Random(cfg.seed)  # error injection; separate from the capacity model's jitter
        ids = random.Random(f"wallaroo-{cfg.seed}")
        self.pipeline_version = str(uuid.UUID(int=ids.getrandbits(128), version=4))
        self.partition = f"engine-{ids.getrandbits(32):08x}-{ids.getrandbits(20):05x}"
        self.last_model = orjson.dumps({"model_name": MODEL_NAME, "model_sha": MODEL_SHA}).decode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        cfg = self.ctx.config
        if path.startswith(EXTERNAL_PREFIX):
            if method != "POST":
                return await _method_not_allowed(send)
            denied = self._auth_error(scope)
            if denied is not None:
                return await send_json(send, 401, error_body(401, denied, "platform"))
            parts = path[len(EXTERNAL_PREFIX):].strip("/").split("/")
            if cfg.legacy_infer:  # older installs: …/infer/{pipeline}-{id}, one answer object per request
                if parts != [cfg.deployment]:
                    return await send_json(send, 404, error_body(404, "Deployment not found", "platform"))
                return await self._infer(scope, receive, send, legacy=True)
            if len(parts) != 2 or parts[0] != cfg.deployment or parts[1] != cfg.pipeline:
                return await send_json(send, 404, error_body(404, "Deployment not found", "platform"))
            return await self._infer(scope, receive, send)
        if path.startswith("/pipelines/"):
            if method != "POST":
                return await _method_not_allowed(send)
            if path[len("/pipelines/"):].strip("/") != cfg.pipeline:
                return await send_json(send, 404, error_body(404, "Deployment not found", "engine"))
            return await self._infer(scope, receive, send)
        if path == "/infer":
            if method != "POST":
                return await _method_not_allowed(send)
            return await self._infer(scope, receive, send)
        if path == "/pipelines" and method == "GET":
            return await send_json(send, 200, {"pipelines": [{
                "id": cfg.pipeline, "version": self.pipeline_version, "status": self.ctx.deployment_status()}]})
        if path == "/models" and method == "GET":
            return await send_json(send, 200, {"models": [{
                "sha": MODEL_SHA, "name": MODEL_NAME, "version": self.pipeline_version,
                "status": self.ctx.deployment_status()}]})
        await send_json(send, 404, error_body(404, f"Not found: {path}", "engine"))

    def _auth_error(self, scope: Scope) -> str | None:
        """Only the external URL is behind the platform's gateway; internal and edge URLs are not."""
        if not self.ctx.config.require_token:
            return None
        authorization = header(scope, b"authorization")
        if not authorization:
            return "Jwt is missing"
        if self.ctx.tokens is None:
            return None
        return self.ctx.tokens.verify(authorization)

    async def _infer(self, scope: Scope, receive: Receive, send: Send, legacy: bool = False) -> None:
        body = await read_body(receive)
        status = self.ctx.deployment_status()
        if status != "Running":
            msg = f"resources not available: pipeline {self.ctx.config.pipeline} is {status}"
            return await send_json(send, 503, error_body(503, msg, "platform"))
        t0 = time.perf_counter_ns()
        content_type = header(scope, b"content-type") or "application/json"
        echo: list[Any] | npt.NDArray[np.float32]
        try:
            if "arrow" in content_type:
                matrix, echo = _decode_arrow(body)
            elif "json" in content_type:
                matrix, echo = _decode_records(body, legacy)
            else:
                return await send_json(send, 415, error_body(415, f"unsupported content type {content_type}",
                                                             "engine"))
        except BadInput as exc:
            return await send_json(send, 400, error_body(400, str(exc), "engine"))
        ser_ns = time.perf_counter_ns() - t0
        rate = self.ctx.config.error_rate
        if rate > 0 and self._errors.random() < rate:
            if self._errors.random() < 0.5:
                return await send_json(send, 500, error_body(500, "internal error: model step failed", "model"))
            return await send_json(send, 503, error_body(503, "resources not available", "engine"))
        t1 = time.perf_counter_ns()
        await self.ctx.model.serve(len(matrix))
        scores = self.model.predict(matrix)
        step_ns = time.perf_counter_ns() - t1
        self.ctx.metrics.model_infer(MODEL_NAME, "1", step_ns / 1e9, ok=True)
        if legacy:
            out = encode_legacy(scores, model_name=MODEL_NAME, model_version=self.pipeline_version,
                                pipeline=self.ctx.config.pipeline, elapsed_ns=ser_ns + step_ns,
                                now_ms=time.time_ns() // 1_000_000)
            return await send_response(send, 200, out, "application/json")
        ds = parse_dataset(scope.get("query_string", b""))
        now_ms = time.time_ns() // 1_000_000
        accept = header(scope, b"accept") or ""
        if ARROW_FILE in accept:
            out = self._encode_arrow(matrix, scores, now_ms, ser_ns, step_ns, ds)
            return await send_response(send, 200, out, ARROW_FILE)
        out = self._encode_records(echo, scores, now_ms, ser_ns, step_ns, ds)
        await send_response(send, 200, out, JSON_RECORDS)

    def _encode_records(self, echo: list[Any] | npt.NDArray[np.float32], scores: npt.NDArray[np.float64],
                        now_ms: int, ser_ns: int, step_ns: int, ds: Dataset) -> bytes:
        meta = {"last_model": self.last_model, "pipeline_version": self.pipeline_version,
                "elapsed": [ser_ns, step_ns], "dropped": [], "partition": self.partition}
        constant: dict[str, Any] = {"time": now_ms, "anomaly": {"count": 0}, "metadata": meta}
        flat = ds.flat
        # the selected fields in order, built once per request: a row copies this and fills in its own input
        # echo and score (``in`` and ``out`` have one sub-field each, so they are either selected whole or not)
        template: dict[str, Any] = {}
        for top, subs in ds.columns:
            value = constant.get(top)
            if not subs:
                template[top] = value
            elif flat:
                template.update({f"{top}.{sub}": None if value is None else value[sub] for sub in subs})
            else:
                template[top] = value if value is None or len(subs) == len(FIELDS[top]) \
                    else {sub: value[sub] for sub in subs}
        want_in, want_out = ds.has("in"), ds.has("out")
        records: list[dict[str, Any]] = []
        append = records.append
        for tensor, score in zip(echo, scores.tolist(), strict=True):
            rec = template.copy()
            if flat:
                if want_in:
                    rec["in.tensor"] = tensor
                if want_out:
                    rec["out.dense_1"] = [score]
            else:
                if want_in:
                    rec["in"] = {"tensor": tensor}
                if want_out:
                    rec["out"] = {"dense_1": [score]}
            append(rec)
        return orjson.dumps(records, option=orjson.OPT_SERIALIZE_NUMPY)

    def _encode_arrow(self, matrix: npt.NDArray[np.float64], scores: npt.NDArray[np.float64], now_ms: int,
                      ser_ns: int, step_ns: int, ds: Dataset) -> bytes:
        n = len(scores)
        full: dict[str, Callable[[], pa.Array]] = {
            "time": lambda: pa.array(np.full(n, now_ms, dtype=np.int64)),
            "in": lambda: pa.StructArray.from_arrays([pa.ListArray.from_arrays(
                pa.array(np.arange(0, (n + 1) * FEATURES, FEATURES, dtype=np.int32)),
                pa.array(matrix.astype(np.float32).ravel()))], names=["tensor"]),
            "out": lambda: pa.StructArray.from_arrays([pa.ListArray.from_arrays(
                pa.array(np.arange(n + 1, dtype=np.int32)), pa.array(scores.astype(np.float32)))],
                names=["dense_1"]),
            "anomaly": lambda: pa.StructArray.from_arrays([pa.array(np.zeros(n, dtype=np.uint32))], names=["count"]),
            "metadata": lambda: self._metadata_arrow(n, ser_ns, step_ns),
        }
        columns: list[pa.Array] = []
        names: list[str] = []
        for top, subs in ds.columns:
            column = full[top]()
            if subs and len(subs) < len(FIELDS[top]):
                column = pa.StructArray.from_arrays([column.field(s) for s in subs], names=list(subs))
            columns.append(column)
            names.append(top)
        table = pa.Table.from_arrays(columns, names=names)  # nothing selected: no columns (and so no rows)
        if ds.flat:
            table = table.flatten()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        return bytes(sink.getvalue().to_pybytes())

    def _metadata_arrow(self, n: int, ser_ns: int, step_ns: int) -> pa.Array:
        elapsed = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)),
                                           pa.array(np.tile(np.array([ser_ns, step_ns], dtype=np.uint64), n)))
        dropped = pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string()))
        return pa.StructArray.from_arrays(
            [pa.array([self.last_model] * n, pa.string()), pa.array([self.pipeline_version] * n, pa.string()),
             elapsed, dropped, pa.array([self.partition] * n, pa.string())],
            names=["last_model", "pipeline_version", "elapsed", "dropped", "partition"])


def _decode_records(body: bytes, legacy: bool = False) -> tuple[npt.NDArray[np.float64], list[Any]]:
    """pandas-records JSON → (n, 29) matrix, plus the tensors as sent (echoed back in ``in.tensor``).

    ``legacy`` also takes an older engine's ``{"tensor": [[…], …]}`` object."""
    try:
        rows = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"invalid JSON: {exc}") from None
    tensors_only = legacy_tensors(rows) if legacy else None
    if tensors_only is not None:
        rows = [{"tensor": t} for t in tensors_only]
    if not isinstance(rows, list):
        raise BadInput("expected a JSON array of records (pandas-records)")
    if not rows:
        raise BadInput("no rows in input")
    try:
        tensors = [row["tensor"] for row in rows]
    except (TypeError, KeyError):
        raise BadInput("schema mismatch: every record needs a 'tensor' field") from None
    try:
        matrix = np.asarray(tensors, dtype=np.float64)
    except (ValueError, TypeError):
        raise BadInput(f"schema mismatch: 'tensor' must be a list of {FEATURES} numbers") from None
    _check_matrix(matrix)
    return matrix, tensors


def _decode_arrow(body: bytes) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]:
    """Arrow IPC file with a ``tensor`` list column → (n, 29) matrix. Only the file format (magic ``ARROW1``), as
    the engine takes: an IPC stream is refused, so a hand-made stream body fails on loopback as on the platform."""
    try:
        table = pa.ipc.open_file(pa.py_buffer(body)).read_all()
    except (pa.ArrowInvalid, OSError):
        raise BadInput("body is not an Arrow IPC file (the engine takes the file format, not a stream)") from None
    if "tensor" not in table.column_names:
        raise BadInput("schema mismatch: no 'tensor' column")
    if table.num_rows == 0:
        raise BadInput("no rows in input")
    col = table.column("tensor").combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
            or pa.types.is_fixed_size_list(col.type)):
        raise BadInput(f"schema mismatch: 'tensor' must be a list of {FEATURES} numbers, not {col.type}")
    if col.null_count:
        raise BadInput("tensor values may not be null")
    lengths = pc.list_value_length(col)
    if pc.min(lengths).as_py() != FEATURES or pc.max(lengths).as_py() != FEATURES:
        raise BadInput(f"schema mismatch: 'tensor' must have {FEATURES} values")
    values = col.flatten()
    if values.null_count:
        raise BadInput("tensor values may not be null")
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise BadInput(f"schema mismatch: tensor values must be numbers, not {values.type}")
    flat = values.to_numpy(zero_copy_only=False)
    matrix = flat.astype(np.float64).reshape(len(col), FEATURES)
    _check_matrix(matrix)
    return matrix, np.ascontiguousarray(flat.astype(np.float32).reshape(len(col), FEATURES))


def _check_matrix(matrix: npt.NDArray[np.float64]) -> None:
    if matrix.ndim != 2 or matrix.shape[1] != FEATURES:
        raise BadInput(f"schema mismatch: 'tensor' must have {FEATURES} values")
    if np.isnan(matrix).any():  # JSON has no NaN: a NaN here was a null
        raise BadInput("tensor values may not be null")


def error_body(code: int, message: str, source: str) -> dict[str, object]:
    """The Wallaroo error shape."""
    return {"code": code, "status": "error", "error": message, "source": source}


async def _method_not_allowed(send: Send) -> None:
    await send_json(send, 405, error_body(405, "method not allowed", "engine"))
