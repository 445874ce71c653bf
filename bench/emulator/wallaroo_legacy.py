"""Older Wallaroo installs (the Models guide): the answer is one object per request, not one record per row.

``POST …/v1/api/pipelines/infer/{pipeline}-{id}`` (no trailing pipeline segment) answers
``[{"model_name", "model_version", "pipeline_name", "outputs": [{"Float": {"v": 1, "dim": [rows, 1],
"data": [...]}}], "elapsed", "time", "original_data", "check_failures", "shadow_data"}]``: a client counts rows
from ``dim``. The fields after ``outputs`` are cut off in the guide's example and follow the older SDK's
InferenceResult (unverified). The request may be pandas-records or the older ``{"tensor": [[…], …]}`` object.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

__all__ = ["encode_legacy", "legacy_tensors"]


def legacy_tensors(doc: Any) -> list[Any] | None:
    """The rows of an older ``{"tensor": [[…], …]}`` request; None when ``doc`` is not that shape."""
    if isinstance(doc, dict) and isinstance(doc.get("tensor"), list):
        rows: list[Any] = doc["tensor"]
        return rows
    return None


def encode_legacy(scores: npt.NDArray[np.float64], *, model_name: str, model_version: str, pipeline: str,
                  elapsed_ns: int, now_ms: int) -> bytes:
    """The one-object answer of an older engine for ``len(scores)`` rows."""
    answer = {"model_name": model_name, "model_version": model_version, "pipeline_name": pipeline,
              "outputs": [{"Float": {"v": 1, "dim": [len(scores), 1], "data": scores.astype(np.float32).tolist()}}],
              "elapsed": elapsed_ns, "time": now_ms, "original_data": None, "check_failures": [], "shadow_data": {}}
    return orjson.dumps([answer])
