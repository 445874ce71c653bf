"""Generic HTTP target for ad-hoc runs (``bench run --url --body``): judged by status code alone.

Nothing is known about the answer's shape, so a 2xx counts every row sent as answered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.results import ERROR_DETAIL_BYTES, Classifier, Kind, PreparedBody
from bench.targets import Request, SectionRules, Target

if TYPE_CHECKING:
    from bench.scenario import Scenario, TargetConfig

__all__ = ["TARGET", "HttpTarget", "classify", "make_classifier"]

_OK, _HTTP, _LIMITED = int(Kind.OK), int(Kind.HTTP_ERROR), int(Kind.RATE_LIMITED)


def classify(status: int, body: bytes, rows_in: int) -> tuple[int, int, int]:
    """2xx → ok (rows out = rows in), 429 → rate_limited, anything else → http_error."""
    if 200 <= status < 300:
        return _OK, rows_in, 0
    return (_LIMITED if status == 429 else _HTTP), 0, 0


def make_classifier() -> Classifier:
    return classify


class HttpTarget(Target):
    """Any HTTP endpoint: one body file sent as is, judged by status code."""

    kind = "http"
    rules = SectionRules(embeddable=False, needs_body=True)

    def bodies(self, sc: Scenario, config: Any) -> list[PreparedBody]:
        assert sc.data.body is not None  # the scenario reader requires it (rules.needs_body)
        return [PreparedBody(body=sc.data.body.read_bytes(), rows=1)]

    def request(self, target: TargetConfig, url: str, config: Any) -> Request:
        return Request(url=url, headers={"Content-Type": "application/octet-stream"}, classify=classify,
                       answer_bytes=ERROR_DETAIL_BYTES)  # judged by status: keep only an error's evidence


TARGET = HttpTarget()
