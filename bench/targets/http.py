"""Generic HTTP target for ad-hoc runs (``bench run --url --body``): judged by status code alone.

Nothing is known about the answer's shape, so a 2xx counts every row sent as answered.
"""

from __future__ import annotations

from bench.results import Classifier, Kind

__all__ = ["classify", "make_classifier"]

_OK, _HTTP, _LIMITED = int(Kind.OK), int(Kind.HTTP_ERROR), int(Kind.RATE_LIMITED)


def classify(status: int, body: bytes, rows_in: int) -> tuple[int, int, int]:
    """2xx → ok (rows out = rows in), 429 → rate_limited, anything else → http_error."""
    if 200 <= status < 300:
        return _OK, rows_in, 0
    return (_LIMITED if status == 429 else _HTTP), 0, 0


def make_classifier() -> Classifier:
    return classify
