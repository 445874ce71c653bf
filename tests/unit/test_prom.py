"""bench.prom: the Prometheus text-format reader (hypothesis round trips, refusals, folding)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.prom import PromError, Sample, fold, format_labels, parse

names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,20}", fullmatch=True)
label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,10}", fullmatch=True)
label_values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
values = st.floats(allow_nan=False) | st.integers(-10**12, 10**12).map(float)


def escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(value: float) -> str:
    return "+Inf" if value == math.inf else "-Inf" if value == -math.inf else repr(value)


@given(st.lists(st.tuples(names, st.dictionaries(label_names, label_values, max_size=3), values), max_size=8))
def test_round_trip(series: list[tuple[str, dict[str, str], float]]) -> None:
    lines = ["# HELP anything at all", "# TYPE x_total counter"]
    for name, labels, value in series:
        body = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{body}}} {render(value)}" if labels else f"{name} {render(value)}")
    types, samples = parse("\n".join(lines) + "\n")
    assert types == {"x_total": "counter"}
    assert samples == [Sample(n, tuple(sorted(lb.items())), v) for n, lb, v in series]


@pytest.mark.parametrize("text", [
    "<html><body>Not Found</body></html>",
    '{"name": "mlserver", "version": "1.7.1"}',
    "metric_without_value",
    'm{a="unterminated} 1',
    "m 1 2 3",
    "m notanumber",
    "# TYPE m sideways\nm 1",
])
def test_not_prometheus_text_is_refused(text: str) -> None:
    with pytest.raises(PromError):
        parse(text)


def test_timestamps_specials_and_escapes() -> None:
    _, samples = parse('a{p="x\\"y\\\\z\\nw"} +Inf 1700000000000\nb NaN\nc -1.5e-3\n')
    assert samples[0].labels == (("p", 'x"y\\z\nw'),) and samples[0].value == math.inf
    assert math.isnan(samples[1].value) and samples[2].value == -0.0015


MLSERVER = """\
# HELP rest_server_request_duration_seconds Request duration
# TYPE rest_server_request_duration_seconds histogram
rest_server_request_duration_seconds_bucket{le="0.005",method="POST",path="/v2/models/{m}/infer",status_code="200"} 8.0
rest_server_request_duration_seconds_bucket{le="0.01",method="POST",path="/v2/models/{m}/infer",status_code="200"} 10.0
rest_server_request_duration_seconds_bucket{le="+Inf",method="POST",path="/v2/models/{m}/infer",status_code="200"} 10.0
rest_server_request_duration_seconds_bucket{le="0.005",method="POST",path="/v2/models/{m}/infer",status_code="400"} 1.0
rest_server_request_duration_seconds_bucket{le="0.01",method="POST",path="/v2/models/{m}/infer",status_code="400"} 1.0
rest_server_request_duration_seconds_bucket{le="+Inf",method="POST",path="/v2/models/{m}/infer",status_code="400"} 1.0
rest_server_request_duration_seconds_bucket{le="0.005",method="GET",path="/v2/health/ready",status_code="200"} 5.0
rest_server_request_duration_seconds_bucket{le="0.01",method="GET",path="/v2/health/ready",status_code="200"} 5.0
rest_server_request_duration_seconds_bucket{le="+Inf",method="GET",path="/v2/health/ready",status_code="200"} 5.0
rest_server_request_duration_seconds_count{method="POST",path="/v2/models/{m}/infer",status_code="200"} 10.0
rest_server_request_duration_seconds_sum{method="POST",path="/v2/models/{m}/infer",status_code="200"} 0.03
# HELP rest_server_request_duration_seconds_created Request duration
# TYPE rest_server_request_duration_seconds_created gauge
rest_server_request_duration_seconds_created{method="POST",path="/v2/models/{m}/infer",status_code="200"} 1.7e9
# TYPE rest_server_requests_total counter
rest_server_requests_total{method="POST",status_code="200"} 10.0
# HELP rest_server_requests_created Requests
# TYPE rest_server_requests_created gauge
rest_server_requests_created{method="POST",status_code="200"} 1.7e9
# TYPE rest_server_requests_in_progress gauge
rest_server_requests_in_progress{method="POST"} 2.0
"""


def test_fold_mlserver_exposition() -> None:
    types, samples = parse(MLSERVER)
    f = fold(types, samples, path_contains="/infer")
    # infer route only (health checks left out), 2xx answers only (the 400 is not the handler's latency)
    assert f.histograms == {"rest_server_request_duration_seconds": {0.005: 8.0, 0.01: 10.0, math.inf: 10.0}}
    assert f.ok_only == {"rest_server_request_duration_seconds"}
    assert f.seen == {"rest_server_request_duration_seconds": {"/v2/models/{m}/infer", "/v2/health/ready"}}
    assert f.counters['rest_server_requests_total{method="POST",status_code="200"}'] == 10.0
    # MLServer (prometheus_client) types each *_created as a gauge of its own: a creation time, not a gauge
    assert not any("created" in k for k in (*f.counters, *f.gauges))
    assert f.gauges == {'rest_server_requests_in_progress{method="POST"}': 2.0}
    every = fold(types, samples, path_contains="")
    assert every.histograms["rest_server_request_duration_seconds"][math.inf] == 15.0


@pytest.mark.parametrize("label", ["status_code", "code", "status"])
def test_fold_keeps_2xx_series_of_a_histogram_with_a_status_label(label: str) -> None:
    text = ("# TYPE d histogram\n"
            f'd_bucket{{le="0.01",{label}="200"}} 3\nd_bucket{{le="+Inf",{label}="200"}} 4\n'
            f'd_bucket{{le="0.01",{label}="500"}} 50\nd_bucket{{le="+Inf",{label}="500"}} 50\n'
            f'd_bucket{{le="0.01",{label}="204"}} 1\nd_bucket{{le="+Inf",{label}="204"}} 1\n')
    f = fold(*parse(text))
    assert f.histograms == {"d": {0.01: 4.0, math.inf: 5.0}} and f.ok_only == {"d"}


def test_fold_histogram_without_status_label_or_only_errors() -> None:
    plain = fold(*parse('# TYPE d histogram\nd_bucket{le="0.01"} 3\nd_bucket{le="+Inf"} 4\n'))
    assert plain.histograms == {"d": {0.01: 3.0, math.inf: 4.0}} and plain.ok_only == frozenset()
    # every answer an error: the histogram exists (not "missing"), with nothing in it
    errors = fold(*parse('# TYPE d histogram\nd_bucket{le="0.01",code="503"} 3\nd_bucket{le="+Inf",code="503"} 4\n'))
    assert errors.histograms == {"d": {0.01: 0.0, math.inf: 0.0}} and errors.ok_only == {"d"}


def test_format_labels() -> None:
    assert format_labels("m", ()) == "m"
    assert format_labels("m", (("a", "1"), ("b", "2"))) == 'm{a="1",b="2"}'
