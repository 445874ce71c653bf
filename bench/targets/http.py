"""Generic HTTP target for ad-hoc runs (``bench run --url --body``): judged by status code alone.

Nothing is known about the answer's shape, so a 2xx counts every row sent as answered. The rows a request sends
are counted when the body is a format bench reads (``counted_rows``); otherwise they are unknown and the report
says so (``extra.rows = "not counted"``): rows/s is then shown as missing, not as req/s or 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from bench.results import ERROR_DETAIL_BYTES, Classifier, Kind, PreparedBody
from bench.targets import Request, SectionRules, Target

if TYPE_CHECKING:
    from bench.scenario import Scenario, TargetConfig

__all__ = ["ROWS_NOT_COUNTED", "TARGET", "HttpTarget", "classify", "counted_rows", "make_classifier"]

ROWS_NOT_COUNTED: Mapping[str, str] = MappingProxyType({"rows": "not counted"})  # extra: rows unknown
_ARROW_FILE, _ARROW_STREAM = b"ARROW1", b"\xff\xff\xff\xff"

_OK, _HTTP, _LIMITED = int(Kind.OK), int(Kind.HTTP_ERROR), int(Kind.RATE_LIMITED)


def classify(status: int, body: bytes, rows_in: int) -> tuple[int, int, int]:
    """2xx → ok (rows out = rows in), 429 → rate_limited, anything else → http_error."""
    if 200 <= status < 300:
        return _OK, rows_in, 0
    return (_LIMITED if status == 429 else _HTTP), 0, 0


def make_classifier() -> Classifier:
    return classify


def counted_rows(body: bytes) -> int | None:
    """The rows ``body`` sends, when it is a format bench reads; None when unknown.

    JSON: an array (pandas records or values: its length), an object with a ``data`` array (pandas split) or
    with ``inputs`` whose first shape starts with the rows (Open Inference Protocol / KServe V2); Arrow IPC, file
    or stream: its rows. Anything else (a protobuf, an image, another JSON shape) is not guessed at.
    """
    head = body[:8].lstrip()
    if head.startswith((b"[", b"{")):
        import orjson

        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if isinstance(doc, list):
            return len(doc)
        if isinstance(doc, dict):
            if isinstance(doc.get("data"), list) and isinstance(doc.get("columns"), list):
                return len(doc["data"])
            inputs = doc.get("inputs")
            if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
                shape = inputs[0].get("shape")
                if isinstance(shape, list) and shape and isinstance(shape[0], int) and shape[0] >= 0:
                    return shape[0]
        return None
    if body.startswith((_ARROW_FILE, _ARROW_STREAM)):
        import pyarrow as pa

        try:
            reader = pa.ipc.open_file(body) if body.startswith(_ARROW_FILE) else pa.ipc.open_stream(body)
            return int(reader.read_all().num_rows)
        except (pa.ArrowInvalid, OSError):
            return None
    return None


@dataclass(frozen=True, slots=True)
class HttpConfig:
    body: bytes  # the body file, read once
    rows: int | None  # counted_rows(body)


class HttpTarget(Target):
    """Any HTTP endpoint: one body file sent as is, judged by status code."""

    kind = "http"
    rules = SectionRules(embeddable=False, needs_body=True)

    def config(self, sc: Scenario) -> HttpConfig:
        assert sc.data.body is not None  # the scenario reader requires it (rules.needs_body)
        body = sc.data.body.read_bytes()
        return HttpConfig(body, counted_rows(body))

    def bodies(self, sc: Scenario, config: HttpConfig) -> list[PreparedBody]:
        return [PreparedBody(body=config.body, rows=config.rows or 0)]

    def report_extras(self, config: HttpConfig) -> Mapping[str, Any]:
        return ROWS_NOT_COUNTED if config.rows is None else {}

    def request(self, target: TargetConfig, url: str, config: Any) -> Request:
        return Request(url=url, headers={"Content-Type": "application/octet-stream"}, classify=classify,
                       answer_bytes=ERROR_DETAIL_BYTES)  # judged by status: keep only an error's evidence


TARGET = HttpTarget()
