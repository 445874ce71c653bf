"""The session layer in-process: target resolution, the worker hand-off, finish → exit codes, the raw merge.

Real parts: the embedded emulator runs as a real subprocess on loopback; runs are real runs over real sockets.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.errors import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_SLO
from bench.runner import EMBEDDED_PLACEHOLDER, Endpoints, RunControl
from bench.scenario import Scenario, parse_scenario
from bench.session import TOKEN_PATH, RunOptions, finish, point_at, prepare, resolved_target, run_report
from bench.workers import Share, hand_off, merge_raw, run_share

ROOT = Path(__file__).resolve().parents[2]


def scenario(tmp_path: Path, **sections: dict[str, Any]) -> Scenario:
    doc: dict[str, Any] = {"name": "t", "target": {"kind": "wallaroo", "url": "embedded"},
                           "data": {"generate": 50, "rows_per_request": 5},
                           "load": {"concurrency": 2, "duration": "0.5s"}, "emulator": {"latency_ms": 1.0}}
    for key, table in sections.items():
        doc[key] = {**doc.get(key, {}), **table}
    return parse_scenario(doc, file=str(tmp_path / "t.toml"), base_dir=tmp_path)


def test_importing_the_run_core_leaves_the_emulator_out() -> None:
    code = "import sys, bench.runner; print(sorted(m for m in sys.modules if m.startswith('bench.emulator')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_cli_help_loads_neither_the_run_path_nor_the_emulator() -> None:
    # (`bench serve` registers with the emulator's plain config dataclass; its server and apps stay unloaded)
    code = ("import sys; from bench.cli import build_parser; build_parser(); print(sorted(m for m in sys.modules "
            "if m.startswith(('bench.emulator.embedded', 'bench.emulator.app', 'bench.emulator.server', "
            "'bench.runner', 'bench.session', 'bench.workers', 'anyio', 'pyarrow'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_point_at_rewrites_every_url_that_named_the_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_ID", "bench")
    monkeypatch.setenv("T_SECRET", "s3cret")
    sc = scenario(tmp_path, wallaroo={"api_url": "embedded"},
                  auth={"kind": "client_credentials", "client_id_env": "T_ID", "client_secret_env": "T_SECRET"})
    prepared = prepare(sc)
    assert prepared.preflight_config.api_url == EMBEDDED_PLACEHOLDER
    assert prepared.emulator_config.client_secret == "s3cret"  # the emulator accepts the scenario's credentials
    ep = Endpoints(inference_url="http://127.0.0.1:9/infer", api_url="http://127.0.0.1:9",
                   token_url=f"http://127.0.0.1:9{TOKEN_PATH}")
    out = point_at(prepared, ep)
    assert out.scenario.target.url == ep.inference_url and not out.scenario.target.embedded
    assert out.preflight_config.api_url == ep.api_url
    assert out.auth_config.token_url == ep.token_url
    assert out.embedded and out.endpoints == ep
    assert prepared.scenario.target.embedded  # the input is left alone


def test_point_at_a_ubiops_emulator_carries_its_token(tmp_path: Path) -> None:
    sc = parse_scenario({"target": {"kind": "ubiops", "url": "embedded", "project": "p", "deployment": "d",
                                    "input": "structured", "fields": {"tensor": "tensor"}},
                         "data": {"generate": 10}, "load": {"concurrency": 1, "duration": "1s"}},
                        file="u.toml", base_dir=tmp_path)
    out = point_at(prepare(sc), Endpoints(inference_url="http://127.0.0.1:9", api_url="http://127.0.0.1:9",
                                          ubiops_token="tok"))
    assert out.target_config.base_url.startswith("http://127.0.0.1:9") and out.target_config.token == "tok"


def test_resolved_target_starts_one_emulator_and_stops_it(tmp_path: Path) -> None:
    messages: list[str] = []
    prepared = prepare(scenario(tmp_path, wallaroo={"api_url": "embedded"}))
    with resolved_target(prepared, messages.append) as target:
        assert target.scenario.target.url.startswith("http://127.0.0.1:")
        assert target.preflight_config.api_url != EMBEDDED_PLACEHOLDER
        assert target.endpoints is not None and target.endpoints.api_url is not None
        base = target.endpoints.api_url
        assert httpx.get(base, timeout=5).status_code < 600  # it answers over loopback
    assert [m for m in messages if m.startswith("embedded emulator at")] == [f"embedded emulator at {base}"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(base, timeout=2)


def test_resolved_target_without_the_emulator_says_its_table_is_ignored(tmp_path: Path) -> None:
    body = tmp_path / "b.bin"
    body.write_bytes(b"x")
    sc = parse_scenario({"target": {"kind": "http", "url": "http://127.0.0.1:9/x"}, "data": {"body": str(body)},
                         "load": {"concurrency": 1}, "emulator": {"replicas": 2}}, file="h.toml", base_dir=tmp_path)
    messages: list[str] = []
    prepared = prepare(sc)
    with resolved_target(prepared, messages.append) as target:
        assert target is prepared
    assert messages == ["h.toml: [emulator] ignored: target.url is not 'embedded'"]


def test_hand_off_gives_the_worker_the_same_scenario(tmp_path: Path) -> None:
    import orjson

    sc = scenario(tmp_path, load={"rate": 0.0, "concurrency": 3})
    prepared = prepare(sc)
    ep = Endpoints(inference_url="http://127.0.0.1:9/infer", api_url="http://127.0.0.1:9")
    share = hand_off(prepared, ep, worker=(1, 2), start_at_wall=12.5)
    wire = share.to_json()
    assert orjson.loads(wire)["endpoints"]["inference_url"] == ep.inference_url  # plain JSON on the wire
    again = Share.from_json(wire)
    assert again == share
    assert parse_scenario(again.doc, file=again.file, base_dir=Path(again.base_dir)) == sc


def test_run_share_runs_one_share_in_process(tmp_path: Path) -> None:
    """What a distributed worker calls: one share of a two-way run against a resolved emulator."""
    import time

    prepared = prepare(scenario(tmp_path, load={"concurrency": 2, "duration": "0.5s"}))
    with resolved_target(prepared, lambda _m: None) as target:
        assert target.endpoints is not None
        raw = tmp_path / "share.raw"
        report = run_share(hand_off(target, target.endpoints, worker=(1, 2), start_at_wall=time.time(), raw=raw))
    assert report.meta.extra["worker"] == [1, 2]
    assert report.meta.target["url"] == "embedded"
    total = report.run.total("measured").requests + report.run.total("warmup").requests
    assert total > 0
    import pyarrow.ipc

    assert pyarrow.ipc.open_stream(str(raw)).read_all().num_rows == total  # the raw log is left for the caller


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_finish_maps_outcomes_to_exit_codes(tmp_path: Path) -> None:
    opts = RunOptions(json=True, quiet=True)
    prepared = prepare(scenario(tmp_path))
    with resolved_target(prepared, lambda _m: None) as target:
        report, facts = run_report(target, RunControl(preflight=False))
        assert facts.url == "embedded"
        assert finish(opts, target, report, facts, tmp_path / "ok.arrow") == EXIT_OK
        assert (tmp_path / "ok.arrow").exists()
        assert finish(opts, target, report, replace(facts, interrupted=True), tmp_path / "i.arrow") == EXIT_INTERRUPTED
        strict = finish(replace(opts, strict=True), target, report, facts, tmp_path / "s.arrow")
        assert strict == (EXIT_INVALID if report.meta.generator_bound else EXIT_OK)
        slo = prepare(scenario(tmp_path, slo={"p50_ms": 0.001})).slo
        assert finish(opts, replace(target, slo=slo), report, facts, tmp_path / "slo.arrow") == EXIT_SLO
    closed = prepare(parse_scenario({"target": {"kind": "wallaroo", "url": f"http://127.0.0.1:{_free_port()}/x"},
                                     "data": {"generate": 10}, "load": {"concurrency": 1, "duration": "0.3s"}},
                                    file="c.toml", base_dir=tmp_path))
    report, facts = run_report(closed, RunControl(preflight=False))
    assert finish(opts, closed, report, facts, tmp_path / "c.arrow") == EXIT_INVALID  # nothing reached the target


def test_merge_raw_keeps_every_row_and_aligns_times(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.ipc

    paths = []
    for i, n in enumerate((3, 5)):
        path = tmp_path / f"{i}.raw"
        batch = pa.record_batch({"intended_ns": pa.array([10] * n, pa.int64()), "sent_ns": pa.array([11] * n),
                                 "done_ns": pa.array([20] * n), "kind": pa.array([0] * n, pa.int8())})
        with pyarrow.ipc.new_stream(str(path), batch.schema) as w:
            w.write_batch(batch)
        paths.append(path)
    with open(tmp_path / "torn.raw", "wb") as f:  # a worker killed mid-write leaves a torn stream: skipped
        f.write(b"\xff\xff")
    out = merge_raw([(paths[0], 1_000), (paths[1], 1_500), (tmp_path / "torn.raw", 0),
                     (tmp_path / "missing.raw", 0)], 1_000, tmp_path / "m.raw")
    table = pyarrow.ipc.open_stream(str(out)).read_all()
    assert table.num_rows == 8
    assert table.column("intended_ns").to_pylist() == [10] * 3 + [510] * 5
    assert table.column("done_ns").to_pylist() == [20] * 3 + [520] * 5


@pytest.mark.parametrize(("extra", "engine_path"), [({}, True), ({"on_rate_limit": "backoff"}, True),
                                                     ({"mode": "batch"}, False)])
def test_ubiops_direct_requests_run_on_an_engine(tmp_path: Path, extra: dict[str, Any], engine_path: bool) -> None:
    """Direct requests go through a bench engine whether they count 429s or back off (the rate gate is the
    engine's send gate, fed by its headers hook); batch mode stays on the UbiOps runner. Every request is
    accounted for either way."""
    target = {"kind": "ubiops", "url": "embedded", "project": "demo", "deployment": "ccfraud",
              "input": "structured", "fields": {"tensor": "tensor"}, "mode": "direct", **extra}
    sc = parse_scenario({"target": target, "data": {"generate": 40},
                         "load": {"concurrency": 2, "duration": "0.5s"}, "emulator": {"latency_ms": 1.0}},
                        file="u.toml", base_dir=tmp_path)
    with resolved_target(prepare(sc), lambda _m: None) as resolved:
        report, facts = run_report(resolved, RunControl(preflight=False))
    total = report.run.total("measured")
    assert total.requests > 0 and total.ok == total.requests
    ubiops = report.meta.extra["ubiops"]
    if engine_path:
        assert facts.engine == "FastEngine" and facts.abandoned == 0
        assert ubiops["mode"] == "direct" and ubiops["rate_limited"] == 0
        assert ("budget" in ubiops) == ("on_rate_limit" in extra)  # count mode spends no budget
    else:
        assert facts.engine is None and ubiops["mode"] == "batch"
