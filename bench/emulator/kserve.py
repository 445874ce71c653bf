"""Open Inference Protocol v2 (KServe V2 REST), imitated on the emulator's shared capacity model.

Routes (``{v}`` optional as ``/versions/{v}``): ``GET /v2``, ``GET /v2/health/live``, ``GET /v2/health/ready``,
``GET /v2/models/{name}[/versions/{v}]`` (metadata), ``GET …/ready``, ``POST …/infer``. Two models:

- ``ccfraud`` (version ``1``): one input ``tensor`` [-1, 29] FP32 (any numeric datatype is cast, like MLServer)
  → one output ``dense_1`` [-1, 1] FP32, the emulator's logistic model. NaN/inf inputs are refused.
- ``echo`` (version ``1``): any inputs of any datatype (BYTES included) with a common first dimension, answered
  back unchanged, for testing encoders.

Tensors come as JSON ``data`` (flat or nested row-major) or, with the binary tensor extension
(``Inference-Header-Content-Length``), as raw little-endian bytes (BYTES: 4-byte length-prefixed elements).
Outputs are binary when the request asks (``parameters.binary_data_output`` or per-output ``binary_data``);
other ``parameters`` (request, input, output) are accepted as long as they are objects. Bad
tensors get ``400 {"error": "..."}``, unknown models 404. Service time is ``ctx.model.serve(rows)``.
"""

from __future__ import annotations

import math
import random
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import orjson

from bench.emulator.asgi import HttpError, Receive, Scope, Send, SubApp, header, read_body, send_json, send_response
from bench.emulator.context import EmulatorContext
from bench.emulator.model import FEATURES, MODEL_NAME, LogisticModel

__all__ = ["DTYPES", "KServeEmulator", "Tensor", "decode_request"]

MAX_BODY = 64 * 1024 * 1024
VERSION = "1"
HEADER_LENGTH = b"inference-header-content-length"
DTYPES: dict[str, str] = {
    "BOOL": "|b1", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
    "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}
INPUT, OUTPUT = "tensor", "dense_1"


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    values: npt.NDArray[Any]  # flat; object dtype of bytes for BYTES
    binary: bool = False  # answer this one as binary (outputs only)


def _bad(message: str) -> HttpError:
    return HttpError(400, message)


def _shape(raw: object, name: str) -> list[int]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                            for d in raw):
        raise _bad(f"input '{name}': shape must be a list of non-negative integers, got {raw!r}")
    return raw


def _json_values(data: object, datatype: str, name: str) -> npt.NDArray[Any]:
    if not isinstance(data, list):
        raise _bad(f"input '{name}': data must be a list")
    if datatype == "BYTES":
        flat = _flatten(data)
        if not all(isinstance(v, str) for v in flat):
            raise _bad(f"input '{name}': BYTES data must be strings")
        return np.array([v.encode() for v in flat], dtype=object)
    try:
        arr = np.asarray(data)
    except ValueError:
        raise _bad(f"input '{name}': data is ragged (rows of different lengths)") from None
    kind = arr.dtype.kind
    if kind == "O" or kind in "US":
        raise _bad(f"input '{name}': data holds non-numbers (null, strings or ragged rows) for {datatype}")
    if datatype == "BOOL":
        if kind != "b":
            raise _bad(f"input '{name}': datatype BOOL needs true/false values")
    elif kind == "b":
        raise _bad(f"input '{name}': true/false values for datatype {datatype}")
    elif datatype.startswith(("INT", "UINT")) and kind == "f":
        if not all(isinstance(v, int) for v in _flatten(data)):  # (numpy makes [0, 2**63] float64: ints only)
            raise _bad(f"input '{name}': non-integer values for datatype {datatype}")
        arr = np.array(data, dtype=object)
    target = np.dtype(DTYPES[datatype])
    out_of_range = _bad(f"input '{name}': values out of range for {datatype}")
    if target.kind in "iu" and arr.size:  # numpy's cast would wrap 300 to 44 as INT8 without a word
        info = np.iinfo(target)
        if int(arr.min()) < info.min or int(arr.max()) > info.max:
            raise out_of_range
    try:
        with np.errstate(over="ignore"):
            values = arr.astype(target).reshape(-1)
    except OverflowError:
        raise out_of_range from None
    if target.kind == "f" and not np.isfinite(values).all() and np.isfinite(arr.astype(np.float64)).all():
        raise out_of_range  # 1e6 as FP16 is inf
    return values


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _binary_values(chunk: bytes, datatype: str, name: str) -> npt.NDArray[Any]:
    if datatype != "BYTES":
        width = np.dtype(DTYPES[datatype]).itemsize
        if len(chunk) % width:
            raise _bad(f"input '{name}': {len(chunk)} binary bytes is not a whole number of {datatype} values")
        return np.frombuffer(chunk, dtype=DTYPES[datatype])
    items: list[bytes] = []
    pos = 0
    while pos < len(chunk):
        if pos + 4 > len(chunk):
            raise _bad(f"input '{name}': truncated BYTES length prefix")
        (n,) = struct.unpack_from("<I", chunk, pos)
        pos += 4
        if pos + n > len(chunk):
            raise _bad(f"input '{name}': BYTES element longer than the binary data")
        items.append(chunk[pos:pos + n])
        pos += n
    return np.array(items, dtype=object)


def _parameters(item: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """``item``'s V2 ``parameters``: absent or an object (the protocol's ``$parameters``), else 400."""
    params = item.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise _bad(f"{where}: 'parameters' must be an object, got {type(params).__name__}")
    return params


def decode_request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], list[Tensor]]:
    """The request's JSON object and its input tensors (values checked against datatype and shape)."""
    raw = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise _bad("Inference-Header-Content-Length must be an integer") from None
        if not 0 <= n <= len(body):
            raise _bad(f"Inference-Header-Content-Length {n} is outside the body ({len(body)} bytes)")
        body, raw = body[:n], body[n:]
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"invalid JSON: {exc}") from None
    if not isinstance(req, dict):
        raise _bad("the request must be a JSON object")
    _parameters(req, "the request")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("'inputs' must be a non-empty list")
    tensors: list[Tensor] = []
    offset = 0
    for i, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise _bad(f"inputs[{i}] must be an object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"inputs[{i}]: 'name' must be a non-empty string")
        datatype = item.get("datatype")
        if datatype != "BYTES" and datatype not in DTYPES:
            raise _bad(f"input '{name}': unknown datatype {datatype!r}")
        shape = _shape(item.get("shape"), name)
        size = _parameters(item, f"input '{name}'").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(raw):
                raise _bad(f"input '{name}': binary_data_size {size!r} is outside the binary data")
            values = _binary_values(raw[offset:offset + size], datatype, name)
            offset += size
        elif "data" in item:
            values = _json_values(item["data"], datatype, name)
        else:
            raise _bad(f"input '{name}': no 'data' and no binary_data_size")
        expected = math.prod(shape)
        if values.size != expected:
            raise _bad(f"input '{name}': shape {shape} needs {expected} values, got {values.size}")
        tensors.append(Tensor(name, datatype, shape, values))
    if offset != len(raw):
        raise _bad(f"{len(raw) - offset} binary bytes left over after the inputs")
    return req, tensors


class _Model:
    name: ClassVar[str] = ""
    inputs: ClassVar[list[dict[str, Any]]] = []
    outputs: ClassVar[list[dict[str, Any]]] = []

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "versions": [VERSION], "platform": "bench-emulator",
                "inputs": self.inputs, "outputs": self.outputs}

    def rows(self, tensors: list[Tensor]) -> int:
        raise NotImplementedError

    def run(self, tensors: list[Tensor]) -> list[Tensor]:
        raise NotImplementedError

    def output_names(self, tensors: list[Tensor]) -> list[str]:
        return [str(o["name"]) for o in self.outputs]


class _CCFraud(_Model):
    name = MODEL_NAME
    inputs: ClassVar[list[dict[str, Any]]] = [{"name": INPUT, "datatype": "FP32", "shape": [-1, FEATURES]}]
    outputs: ClassVar[list[dict[str, Any]]] = [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, 1]}]

    def __init__(self) -> None:
        self.model = LogisticModel()

    def rows(self, tensors: list[Tensor]) -> int:
        if len(tensors) != 1 or tensors[0].name != INPUT:
            got = ", ".join(repr(t.name) for t in tensors)
            raise _bad(f"model {self.name} takes one input '{INPUT}', got {got}")
        t = tensors[0]
        if t.datatype in ("BYTES", "BOOL"):
            raise _bad(f"input '{INPUT}': datatype mismatch: model expects FP32, got {t.datatype}")
        if len(t.shape) != 2 or t.shape[1] != FEATURES or t.shape[0] < 1:
            raise _bad(f"input '{INPUT}': shape mismatch: model expects [-1, {FEATURES}], got {t.shape}")
        if not np.isfinite(t.values.astype(np.float64)).all():
            raise _bad(f"input '{INPUT}': NaN or infinite values")
        return t.shape[0]

    def run(self, tensors: list[Tensor]) -> list[Tensor]:
        t = tensors[0]
        scores = self.model.predict(t.values.astype(np.float64).reshape(t.shape))
        return [Tensor(OUTPUT, "FP32", [len(scores), 1], scores.astype(np.float32))]


class _Echo(_Model):
    name = "echo"
    inputs: ClassVar[list[dict[str, Any]]] = [{"name": "*", "datatype": "*", "shape": [-1]}]
    outputs: ClassVar[list[dict[str, Any]]] = [{"name": "*", "datatype": "*", "shape": [-1]}]

    def rows(self, tensors: list[Tensor]) -> int:
        firsts = {t.shape[0] if t.shape else 1 for t in tensors}
        if len(firsts) != 1:
            raise _bad(f"inputs of model echo must share their first dimension, got {sorted(firsts)}")
        return firsts.pop()

    def run(self, tensors: list[Tensor]) -> list[Tensor]:
        return [Tensor(t.name, t.datatype, t.shape, t.values) for t in tensors]

    def output_names(self, tensors: list[Tensor]) -> list[str]:
        return [t.name for t in tensors]


def _to_json(t: Tensor) -> list[Any]:
    if t.datatype == "BYTES":
        return [v.decode("utf-8", "replace") for v in t.values]
    out: list[Any] = t.values.tolist()
    return out


def _to_binary(t: Tensor) -> bytes:
    if t.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in t.values)
    return bytes(np.ascontiguousarray(t.values, dtype=DTYPES[t.datatype]).tobytes())


class KServeEmulator(SubApp):
    """ASGI sub-app for the V2 paths; construct once per server with the shared context."""

    def __init__(self, ctx: EmulatorContext) -> None:
        self.ctx = ctx
        self.models: dict[str, _Model] = {m.name: m for m in (_CCFraud(), _Echo())}
        self._errors = random.Random(f"kserve-{ctx.config.seed}")
        self._ids = 0

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._route(scope, receive, send)
        except HttpError as exc:
            await send_json(send, exc.status, {"error": exc.message})

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"].rstrip("/")
        method: str = scope["method"]
        parts = path.split("/")[2:]  # after "/v2"
        if method == "POST" and parts and parts[-1] == "infer":
            return await self._infer(scope, receive, send, parts[:-1])
        await read_body(receive)
        if method != "GET":
            raise HttpError(405, f"method {method} not allowed on {path}")
        ready = self.ctx.deployment_status() == "Running"
        if not parts:
            return await send_json(send, 200, {"name": "bench-emulator", "version": "0.1.0",
                                               "extensions": ["binary_tensor_data"]})
        if parts == ["health", "live"]:
            return await send_json(send, 200, {"live": True})
        if parts == ["health", "ready"]:
            return await send_json(send, 200 if ready else 400, {"ready": ready})
        if parts[-1] == "ready":
            self._model(parts[:-1])
            return await send_json(send, 200 if ready else 400, {"name": parts[1], "ready": ready})
        model = self._model(parts)
        await send_json(send, 200, model.metadata())

    def _model(self, parts: list[str]) -> _Model:
        """``models/{name}`` or ``models/{name}/versions/{v}`` → the model (404 when unknown)."""
        if len(parts) not in (2, 4) or parts[0] != "models" or (len(parts) == 4 and parts[2] != "versions"):
            raise HttpError(404, f"not found: /v2/{'/'.join(parts)}")
        model = self.models.get(parts[1])
        if model is None:
            raise HttpError(404, f"model {parts[1]!r} not found (known: {', '.join(self.models)})")
        if len(parts) == 4 and parts[3] != VERSION:
            raise HttpError(404, f"model {parts[1]!r} has no version {parts[3]!r} (known: {VERSION})")
        return model

    async def _infer(self, scope: Scope, receive: Receive, send: Send, parts: list[str]) -> None:
        body = await read_body(receive, MAX_BODY)
        model = self._model(parts)
        metrics = self.ctx.metrics
        if self.ctx.deployment_status() != "Running":
            metrics.model_failed(model.name, VERSION)
            raise HttpError(503, f"model {model.name} is not ready")
        try:
            req, tensors = decode_request(body, header(scope, HEADER_LENGTH))
            rows = model.rows(tensors)
            wanted = _requested_outputs(req)
            if wanted is not None:
                names = model.output_names(tensors)
                unknown = [n for n in wanted if n not in names]
                if unknown:
                    raise _bad(f"unknown output {unknown[0]!r} (model {model.name} has {', '.join(names)})")
        except HttpError:
            metrics.model_failed(model.name, VERSION)
            raise
        rate = self.ctx.config.error_rate
        if rate > 0 and self._errors.random() < rate:
            metrics.model_failed(model.name, VERSION)
            raise HttpError(500, f"model {model.name} failed (injected error)")
        t0 = time.perf_counter()
        await self.ctx.model.serve(rows)
        outputs = model.run(tensors)
        metrics.model_infer(model.name, VERSION, time.perf_counter() - t0, ok=True)
        if wanted is not None:
            outputs = [t for t in outputs if t.name in wanted]
        binary_all = _flag(req.get("parameters"), "binary_data_output")
        for t in outputs:
            t.binary = binary_all or (wanted is not None and wanted[t.name])
        self._ids += 1
        rid = req.get("id")
        answer: dict[str, Any] = {"model_name": model.name, "model_version": VERSION,
                                  "id": rid if isinstance(rid, str) else str(self._ids), "outputs": []}
        blobs: list[bytes] = []
        for t in outputs:
            out: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
            if t.binary:
                blob = _to_binary(t)
                out["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                out["data"] = _to_json(t)
            answer["outputs"].append(out)
        head = orjson.dumps(answer)
        if not blobs:
            return await send_response(send, 200, head, "application/json")
        await send_response(send, 200, head + b"".join(blobs), "application/octet-stream",
                            [(HEADER_LENGTH, str(len(head)).encode())])


def _flag(params: object, key: str) -> bool:
    return isinstance(params, Mapping) and params.get(key) is True


def _requested_outputs(req: Mapping[str, Any]) -> dict[str, bool] | None:
    """name → binary wanted, for the request's ``outputs`` (None = all outputs, as JSON unless asked)."""
    raw = req.get("outputs")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _bad("'outputs' must be a list")
    wanted: dict[str, bool] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _bad(f"outputs[{i}] must be an object with a 'name'")
        wanted[item["name"]] = _flag(_parameters(item, f"output '{item['name']}'"), "binary_data")
    return wanted
