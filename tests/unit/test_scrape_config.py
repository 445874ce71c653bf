"""``[server_metrics]`` validation: the latency histogram's unit, from ``latency_unit`` or the metric's name."""

from __future__ import annotations

import pytest

from bench.errors import InputError
from bench.scrape import config_from_mapping

URL = "http://127.0.0.1:8082/metrics"


@pytest.mark.parametrize(("metric", "unit"), [
    (None, "s"),  # MLServer's rest_server_request_duration_seconds
    ("nv_inference_compute_infer_duration_ms", "ms"),
    ("request_latency_milliseconds", "ms"),
    ("ts_inference_latency_microseconds", "us"),
    ("handler_us", "us"),
    ("http_request_duration", "s"),
])
def test_unit_from_the_metric_name(metric: str | None, unit: str) -> None:
    d = {"url": URL} | ({"latency_metric": metric} if metric else {})
    assert config_from_mapping(d, "x.toml", embedded=False).latency_unit == unit


def test_latency_unit_overrides_the_name() -> None:
    cfg = config_from_mapping({"url": URL, "latency_metric": "lat_ms", "latency_unit": "us"}, "x.toml",
                              embedded=False)
    assert cfg.latency_unit == "us"


def test_bad_latency_unit_names_the_key() -> None:
    with pytest.raises(InputError) as err:
        config_from_mapping({"url": URL, "latency_unit": "seconds"}, "x.toml", embedded=False)
    text = str(err.value)
    assert "x.toml" in text and "server_metrics.latency_unit" in text and "s, ms, us" in text
