"""The emulator's Prometheus exposition: valid text format, cumulative histograms, bounded route labels."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_text import parse

from bench.emulator.metrics import BUCKETS, Metrics, MetricsMiddleware, route_template


@pytest.mark.parametrize(("path", "template"), [
    ("/v2/models/ccfraud/infer", "/v2/models/{}/infer"),
    ("/v2/models/ccfraud/versions/1/infer", "/v2/models/{}/versions/{}/infer"),
    ("/v1/api/pipelines/infer/ccfraud-1/ccfraud", "/v1/api/pipelines/infer/{}/{}"),
    ("/v2.1/projects/demo/deployments/ccfraud/versions/v1/requests",
     "/v2.1/projects/{}/deployments/{}/versions/{}/requests"),
    ("/", "/"),
])
def test_route_templates(path: str, template: str) -> None:
    assert route_template(path) == template


@given(st.lists(st.text(alphabet="abc/{}\"\\\n", max_size=30), max_size=20))
def test_any_paths_give_a_parseable_exposition_with_bounded_depth(paths: list[str]) -> None:
    m = Metrics()
    for p in paths:
        key = ("GET", m.template("/" + p))
        m.started(key)
        m.finished(key, 200, 0.001)
        assert m.template("/" + p).count("/") <= 11
    families = parse(m.render().decode())
    total = sum(v for _, _, v in families["rest_server_requests_total"].samples)
    assert total == len(paths)


def test_histogram_buckets_count_observations_cumulatively() -> None:
    m = Metrics()
    observations = [0.0001, 0.003, 0.003, 0.02, 0.6, 42.0]
    for s in observations:
        m.model_infer("ccfraud", "1", s, ok=True)
    m.model_failed("ccfraud", "1")
    fam = parse(m.render().decode())["model_infer_request_duration_seconds"]
    buckets = {lab["le"]: v for name, lab, v in fam.samples if name.endswith("_bucket")}
    for bound in BUCKETS:
        key = str(int(bound)) if bound == int(bound) else repr(bound)
        assert buckets[key] == sum(1 for o in observations if o <= bound)
    assert buckets["+Inf"] == len(observations)
    total = next(v for name, _, v in fam.samples if name.endswith("_sum"))
    assert total == pytest.approx(sum(observations))
    fams = parse(m.render().decode())
    assert fams["model_infer_request_success_total"].samples[0][2] == 6
    assert fams["model_infer_request_failure_total"].samples[0][2] == 1


async def _call(app: Any, path: str, method: str = "GET") -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "path": path, "method": method, "headers": []}, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_middleware_counts_status_in_progress_and_cancellation() -> None:
    m = Metrics()
    gate = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/wait":
            await gate.wait()
        status = 404 if scope["path"] == "/missing" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    mw = MetricsMiddleware(app, m)

    async def main() -> None:
        assert (await _call(mw, "/ok"))[0] == 200
        assert (await _call(mw, "/missing"))[0] == 404
        task = asyncio.create_task(_call(mw, "/wait"))
        await asyncio.sleep(0)
        assert m.in_progress[("GET", "/{}")] == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        status, body = await _call(mw, "/metrics")
        assert status == 200
        fams = parse(body.decode())
        counts = {lab["status_code"]: v for _, lab, v in fams["rest_server_requests_total"].samples}
        assert counts == {"200": 1, "404": 1, "499": 1}
        assert all(v == 0 for _, _, v in fams["rest_server_requests_in_progress"].samples)
        durations = fams["rest_server_request_duration_seconds"]
        count = {lab["status_code"]: v for n, lab, v in durations.samples if n.endswith("_count")}
        assert count == {"200": 1, "404": 1, "499": 1}  # by status, as MLServer's (a server view keeps the 2xx)
        assert not math.isnan(sum(v for _, _, v in durations.samples))

    asyncio.run(main())


def test_counter_help_and_type_lines_name_the_sample_as_prometheus_client_does() -> None:
    """In the 0.0.4 text format prometheus_client (so MLServer) writes ``# TYPE rest_server_requests_total counter``
    above ``rest_server_requests_total{…}`` (checked with prometheus_client 0.26 in MLServer's venv). The emulator
    wrote the bare name (OpenMetrics' style), under which a strict 0.0.4 reader took the samples for untyped."""
    m = Metrics()
    m.started(("POST", "/infer"))
    m.finished(("POST", "/infer"), 200, 0.001)
    m.model_infer("ccfraud", "1", 0.001, ok=True)
    text = m.render().decode()
    for name in ("rest_server_requests_total", "model_infer_request_success_total",
                 "model_infer_request_failure_total", "emulator_requests_received_total",
                 "emulator_faults_injected_total"):
        assert f"\n# TYPE {name} counter\n" in text and f"# HELP {name} " in text, name
        assert f"# TYPE {name.removesuffix('_total')} " not in text, name
    types = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}
    samples = {line.split("{")[0].split()[0] for line in text.splitlines() if line and not line.startswith("#")}
    for sample in samples:  # every sample's family is typed by its own name, or its histogram's
        family = sample if sample in types else sample.rsplit("_", 1)[0]
        assert family in types, sample
