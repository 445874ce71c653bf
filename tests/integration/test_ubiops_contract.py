"""Contract tests: the official ``ubiops`` Python client against a real `bench serve` process on loopback.

What the client sends (a plain input as a raw text/plain body, ``[]`` with ``?status=`` for cancel-all, file
downloads for a request's input and output) and what it parses (its models validate required fields and types)
is the contract; these tests drive every deployment-request call bench relies on through it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import ubiops  # the official client: in the test extra, so CI runs these tests (never skips them)

from bench.emulator.config import EmulatorConfig
from bench.emulator.embedded import EmbeddedEmulator
from bench.emulator.ubiops import timeout_message

# ubiops 4.x deprecates `result`, `request_data` and `success` on request details (the input/output routes and
# `status` replace them); the platform still sends them, and so does the emulator
pytestmark = pytest.mark.filterwarnings("ignore:.* is deprecated:DeprecationWarning")

TOKEN = "Token emulator-ubiops-token"  # the emulator's default (EmulatorConfig.ubiops_token)
ROW = {"tensor": [0.1 * i for i in range(29)]}
P, D, V = "demo", "ccfraud", "v1"


def core_api(base: str, token: str = TOKEN, *, auto_retry: bool = False) -> Any:
    config = ubiops.Configuration(host=f"{base}/v2.1", api_key={"Authorization": token})
    config.auto_retry_rate_limiting = auto_retry
    return ubiops.CoreApi(ubiops.ApiClient(config))


def until(cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def collect_until_finished(api: Any, ids: list[str], version: str | None = None) -> list[Any]:
    got: list[Any] = []

    def done() -> bool:
        nonlocal got
        got = (api.deployment_version_requests_batch_get(P, D, V, ids) if version
               else api.deployment_requests_batch_get(P, D, ids))
        return all(r.status in ("completed", "failed", "cancelled") for r in got)

    until(done)
    return got


def status_of(exc_info: pytest.ExceptionInfo[Any]) -> int:
    return int(exc_info.value.status)


@pytest.fixture
def api(serve_emulator: Callable[..., str]) -> Iterator[Any]:
    client = core_api(serve_emulator("--latency-ms", "1", "--jitter", "0"))
    yield client
    client.api_client.close()


@pytest.fixture
def embedded() -> Iterator[Callable[..., Any]]:
    """An emulator with non-default options: `bench serve --config-stdin` in a child process, always stopped."""
    started: list[EmbeddedEmulator] = []

    def start(**options: Any) -> Any:
        emu = EmbeddedEmulator(EmulatorConfig(**{"latency_ms": 1.0, "jitter": 0.0} | options))
        emu.__enter__()
        started.append(emu)
        return emu

    try:
        yield start
    finally:
        for emu in started:
            emu.__exit__(None, None, None)


def test_direct_structured_plain_and_version_routes(api: Any) -> None:
    r = api.deployment_requests_create(P, D, ROW, timeout=60)
    assert r.status == "completed" and r.success is True and r.timeout == 60
    assert isinstance(r.result["dense_1"][0], float) and 0.0 <= r.result["dense_1"][0] <= 1.0
    plain = api.deployment_requests_create(P, "echo", "hello, plain world")  # sent as a raw text/plain body
    assert plain.status == "completed" and plain.result == "hello, plain world"
    v = api.deployment_version_requests_create(P, D, V, ROW)
    assert v.status == "completed" and v.version == V and v.result == r.result



def test_a_failed_direct_request_is_http_200_with_status_failed(serve_emulator: Callable[..., str]) -> None:
    api = core_api(serve_emulator("--latency-ms", "1", "--jitter", "0", "--error-rate", "1"))
    failed = api.deployment_requests_create(P, D, ROW)  # the deployment's code failed: HTTP 200, status failed
    assert failed.status == "failed" and failed.success is False and failed.result is None
    assert failed.error_message


def test_faulty_inputs_are_refused_whole_before_anything_is_created(api: Any) -> None:
    """A missing input field or a value of the wrong type: the create call is refused (400, the message in the
    body's "error"), direct or batch, and one faulty item denies the whole batch."""
    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: api.deployment_requests_create(P, D, {"other": 1}), "Missing input field(s): tensor"),
        (lambda: api.deployment_requests_create(P, D, {"tensor": "abc"}), "must be of type array_double, got string"),
        (lambda: api.deployment_version_requests_create(P, D, V, {"tensor": [1, "x"]}), "array_double"),
        (lambda: api.deployment_requests_create(P, D, [ROW, {"tensor": None}]), "Request 2 of 2"),
        (lambda: api.batch_deployment_requests_create(P, D, [ROW, {"wrong": 1}]),
         "Request 2 of 2: missing input field(s): tensor"),
        (lambda: api.batch_deployment_version_requests_create(P, D, V, [{"tensor": [True] * 29}]), "got array"),
    ]
    for call, words in cases:
        with pytest.raises(ubiops.ApiException) as info:
            call()
        assert status_of(info) == 400 and words in info.value.get_body_message(), info.value.get_body_message()
    for status in ("pending", "processing", "completed", "failed"):  # nothing was created, not even the good items
        assert api.deployment_requests_list(P, D, status=status, limit=100) == []


def test_batch_create_collect_get_input_output(api: Any) -> None:
    created = api.batch_deployment_requests_create(P, D, [ROW] * 30, timeout=600)
    assert len(created) == 30 and {c.status for c in created} == {"pending"}
    assert all(c.time_created.tzinfo is not None for c in created)  # parsed as an aware datetime
    ids = [c.id for c in created]
    got = collect_until_finished(api, ids)
    assert sorted(g.id for g in got) == sorted(ids)
    assert {g.status for g in got} == {"completed"} and all(g.result["dense_1"] for g in got)
    assert all(g.time_started <= g.time_completed for g in got)
    one = api.deployment_requests_get(P, D, ids[0])
    assert one.request_data == ROW and one.result == next(g.result for g in got if g.id == ids[0])
    meta = api.deployment_requests_get(P, D, ids[0], metadata_only=True)
    assert meta.result is None and meta.status == "completed"
    assert api.deployment_requests_input_get(P, D, ids[0]).json() == ROW
    assert api.deployment_requests_output_get(P, D, ids[0]).json() == one.result
    # plain inputs through batch, and the version routes
    plain = api.batch_deployment_requests_create(P, "echo", ["a", "b", "c"])
    until(lambda: all(t.status == "completed" for t in api.deployment_requests_batch_get(
        P, "echo", [c.id for c in plain])))
    texts = api.deployment_requests_batch_get(P, "echo", [c.id for c in plain])
    assert sorted(t.result for t in texts) == ["a", "b", "c"]
    assert api.deployment_requests_input_get(P, "echo", plain[0].id).text == "a"
    assert api.deployment_requests_output_get(P, "echo", plain[0].id).text == "a"
    vcreated = api.batch_deployment_version_requests_create(P, D, V, [ROW] * 3)
    vids = [c.id for c in vcreated]
    assert {g.status for g in collect_until_finished(api, vids, version=V)} == {"completed"}
    assert api.deployment_version_requests_get(P, D, vids[0], V).status == "completed"
    assert api.deployment_version_requests_input_get(P, D, vids[0], V).json() == ROW


def test_list_with_filters(api: Any) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    ids = [c.id for c in api.batch_deployment_requests_create(P, D, [ROW] * 12)]
    collect_until_finished(api, ids)
    listed = api.deployment_requests_list(P, D, status="completed", limit=100)
    assert {x.id for x in listed} >= set(ids) and all(x.status == "completed" for x in listed)
    page = api.deployment_requests_list(P, D, status="completed", limit=5, offset=2)
    assert [x.id for x in page] == [x.id for x in listed[2:7]]
    assert [x.id for x in api.deployment_requests_list(P, D, status="completed", search_id=ids[3][:13])] \
        == [ids[3]]
    after = datetime.now(UTC) + timedelta(seconds=1)
    window = api.deployment_requests_list(P, D, status="completed", limit=100, start_date=before.isoformat(),
                                          end_date=after.isoformat())
    assert {x.id for x in window} == set(ids)
    assert api.deployment_requests_list(P, D, status="completed", start_date=after.isoformat()) == []
    assert api.deployment_requests_list(P, D, status="completed", end_date=before.isoformat()) == []
    with pytest.raises(ubiops.ApiException) as info:  # date filters are for finished requests only
        api.deployment_requests_list(P, D, status="pending", search_id="x")
    assert status_of(info) == 400
    with pytest.raises(ubiops.ApiException) as info:
        api.deployment_requests_list(P, D, status="pending,completed")
    assert status_of(info) == 400
    assert api.deployment_version_requests_list(P, D, V, status="completed", limit=3)[0].version == V


def test_cancel_counts_only_what_it_cancelled_and_delete(serve_emulator: Callable[..., str]) -> None:
    api = core_api(serve_emulator("--latency-ms", "1000", "--replicas", "1", "--jitter", "0"))
    done_id = api.deployment_requests_create(P, D, ROW).id  # direct: completed before the cancel
    ids = [c.id for c in api.batch_deployment_requests_create(P, D, [ROW] * 6)]
    until(lambda: api.deployment_requests_get(P, D, ids[0], metadata_only=True).status == "processing")
    answer = api.deployment_requests_batch_cancel(P, D, [done_id, *ids[:4]])
    assert answer == {"cancelled": 4}  # 1 processing → cancelled_pending, 3 pending → cancelled; not the done one
    assert api.deployment_requests_get(P, D, done_id).status == "completed"
    patched = api.deployment_requests_update(P, D, ids[4], {"status": "cancelled"})
    assert patched["status"] == "cancelled"
    assert api.deployment_requests_batch_cancel(P, D, [], status="pending") == {"cancelled": 1}  # ids[5]
    got = collect_until_finished(api, ids)
    assert {g.status for g in got} == {"cancelled"}
    with pytest.raises(ubiops.ApiException) as info:
        api.deployment_requests_update(P, D, done_id, {"status": "completed"})
    assert status_of(info) == 400
    api.deployment_requests_delete(P, D, ids[0])
    with pytest.raises(ubiops.ApiException) as info:
        api.deployment_requests_get(P, D, ids[0])
    assert status_of(info) == 404
    with pytest.raises(ubiops.ApiException) as info:  # one unknown id: nothing deleted
        api.deployment_requests_batch_delete(P, D, [ids[1], ids[0]])
    assert status_of(info) == 404
    assert api.deployment_requests_batch_delete(P, D, ids[1:3]) == {"deleted": 2}
    api.deployment_version_requests_delete(P, D, ids[3], V)
    with pytest.raises(ubiops.ApiException) as info:
        api.deployment_requests_batch_get(P, D, ids[3:5])
    assert status_of(info) == 404


def test_errors_the_client_expects(api: Any, serve_emulator: Callable[..., str]) -> None:
    cases: list[tuple[Callable[[], Any], int]] = [
        (lambda: api.deployment_requests_create(P, "nope", ROW), 404),
        (lambda: api.deployment_version_requests_create(P, D, "v9", ROW), 404),
        (lambda: api.deployment_requests_get(P, D, "00000000-0000-4000-8000-000000000000"), 404),
        (lambda: api.batch_deployment_requests_create(P, D, [ROW] * 251), 400),
        (lambda: api.deployment_requests_batch_get(P, D, ["x"] * 251), 400),
        (lambda: api.batch_deployment_requests_create(P, D, [ROW, "not an object"]), 400),
        (lambda: api.deployment_requests_create(P, D, ROW, timeout=5), 400),
        (lambda: api.deployment_requests_create(P, "echo", {"not": "plain"}), 400),
    ]
    for call, status in cases:
        with pytest.raises(ubiops.ApiException) as info:
            call()
        assert status_of(info) == status
        assert info.value.get_body_message()  # the client finds the message in the body's "error"
    base = api.api_client.configuration.host.removesuffix("/v2.1")
    with pytest.raises(ubiops.ApiException) as info:
        core_api(base, "Token wrong").deployment_requests_create(P, D, ROW)
    assert status_of(info) == 401 and info.value.get_body_message() == "Invalid token."
    # the client's default host ends in /v2: both prefixes are served
    v2 = ubiops.CoreApi(ubiops.ApiClient(ubiops.Configuration(host=f"{base}/v2", api_key={"Authorization": TOKEN})))
    assert v2.deployment_requests_create(P, D, ROW).status == "completed"


@pytest.mark.slow  # seconds of real processes: in CI's slow step, out of the default run
def test_rate_limit_429_headers_and_the_clients_own_retry(embedded: Callable[..., Any]) -> None:
    emu = embedded(rate_limit_per_min=4, rate_limit_window_s=3.0)
    api = core_api(emu.base_url)
    ids = [c.id for c in api.batch_deployment_requests_create(P, D, [ROW] * 2)]  # 1
    api.deployment_requests_batch_get(P, D, ids)  # 2: collects count
    api.deployment_requests_get(P, D, ids[0])  # 3: gets count
    api.deployment_requests_batch_cancel(P, D, ids)  # 4: cancels count
    headers = api.api_client.last_response.headers
    assert headers["x-ratelimit-limit"] == "4" and headers["x-ratelimit-remaining"] == "0"
    with pytest.raises(ubiops.ApiException) as info:
        api.deployment_requests_create(P, D, ROW)
    assert status_of(info) == 429
    reset = int(info.value.headers["x-ratelimit-reset"])
    assert 1 <= reset <= 3 and info.value.headers["retry-after"] == str(reset)
    # the official client sleeps x-ratelimit-reset + 1 s and retries: the call then succeeds
    retrying = core_api(emu.base_url, auto_retry=True)
    started = time.monotonic()
    assert retrying.deployment_requests_create(P, D, ROW).status == "completed"
    assert time.monotonic() - started >= 1.0


def test_pending_cap_timeouts_and_missing_batch_cancel(embedded: Callable[..., Any]) -> None:
    emu = embedded(latency_ms=1500.0, replicas=1, ubiops_max_pending=3, ubiops_batch_cancel_status=405)
    api = core_api(emu.base_url)
    with pytest.raises(ubiops.ApiException) as info:  # over the cap: the whole batch is refused
        api.batch_deployment_requests_create(P, D, [ROW] * 4)
    assert status_of(info) == 400 and "maximum queue size" in info.value.get_body_message()
    ids = [c.id for c in api.batch_deployment_requests_create(P, D, [ROW] * 3, timeout=1)]
    with pytest.raises(ubiops.ApiException) as info:
        api.batch_deployment_requests_create(P, D, [ROW])
    assert status_of(info) == 400
    with pytest.raises(ubiops.ApiException) as info:  # an older API: no batch cancel route
        api.deployment_requests_batch_cancel(P, D, ids[1:])
    assert status_of(info) == 405
    for request_id in ids[1:]:  # the per-request PATCH still cancels
        assert api.deployment_requests_update(P, D, request_id, {"status": "cancelled"})["status"] == "cancelled"
    first = collect_until_finished(api, ids[:1])[0]  # 1.5 s of service against a 1 s timeout
    assert first.status == "failed" and first.error_message == timeout_message(1)
    assert first.time_completed - first.time_started >= timedelta(seconds=0.9)
    assert api.batch_deployment_requests_create(P, D, [ROW] * 3)  # room again once they finished
