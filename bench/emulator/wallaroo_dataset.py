"""Which fields a Wallaroo inference answer carries: the engine's ``dataset[]`` / ``dataset.exclude[]`` /
``dataset.separator`` query parameters.

``dataset[]`` names the fields to include ("Dataset fields to include in response", the SDK's OpenAPI spec;
default ``*`` = ``time``, ``in``, ``out``, ``anomaly``, ``metadata``), a whole field or one of its sub-fields
(``metadata.elapsed``); ``dataset.exclude[]`` removes fields or sub-fields from that; ``dataset.separator=.``
flattens the answer's keys (``out.dense_1``). Honouring the selection keeps the emulator's answer size and
serialisation work what the engine's would be for a scenario that trims its answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

__all__ = ["ALL", "FIELDS", "Dataset", "parse_dataset"]

# the answer's fields and their sub-fields, in the engine's order ("time" has none)
FIELDS: dict[str, tuple[str, ...]] = {
    "time": (), "in": ("tensor",), "out": ("dense_1",), "anomaly": ("count",),
    "metadata": ("last_model", "pipeline_version", "elapsed", "dropped", "partition"),
}


@dataclass(frozen=True, slots=True)
class Dataset:
    """The fields of an answer: ``columns`` maps each included field to its included sub-fields, in order."""

    columns: tuple[tuple[str, tuple[str, ...]], ...]
    flat: bool = False

    def has(self, name: str) -> bool:
        return any(top == name for top, _ in self.columns)


ALL = Dataset(tuple(FIELDS.items()))


def parse_dataset(query_string: bytes) -> Dataset:
    """The selection a request's query string asks for (no parameters: every field, nested)."""
    if not query_string:
        return ALL
    query = parse_qs(query_string.decode("latin-1"))
    include = set(query.get("dataset[]", []) + query.get("dataset", [])) or {"*"}
    exclude = set(query.get("dataset.exclude[]", []) + query.get("dataset.exclude", []))
    columns: list[tuple[str, tuple[str, ...]]] = []
    for top, subs in FIELDS.items():
        if top in exclude:
            continue
        whole = "*" in include or top in include
        if not subs:
            if whole:
                columns.append((top, ()))
            continue
        chosen = tuple(s for s in subs if (whole or f"{top}.{s}" in include) and f"{top}.{s}" not in exclude)
        if chosen:
            columns.append((top, chosen))
    separator = (query.get("dataset.separator") or [""])[0]
    return Dataset(tuple(columns), flat=separator == ".")
