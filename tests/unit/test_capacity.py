"""The capacity search strategy, the step judge, the replica plan and the flag parsers (pure functions)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.capacity import (
    CapacitySearch,
    Failure,
    StepMeasure,
    Verdict,
    judge_step,
    parse_precision,
    parse_slo_flag,
    plan_replicas,
    start_from_probe,
)
from bench.errors import InputError
from bench.scenario import parse_scenario
from bench.sweep import PROBE_S, probe_scenario, step_scenario

rates = st.floats(min_value=0.1, max_value=1e5, allow_nan=False, allow_infinity=False)
precisions = st.floats(min_value=0.005, max_value=0.5)


def run_threshold(search: CapacitySearch, threshold: float) -> CapacitySearch:
    """An ideal endpoint: every rate up to the threshold passes, every rate above fails."""
    for rate in search:
        search.record(rate, "pass" if rate <= threshold else "fail")
    return search


@settings(max_examples=300, deadline=None)
@given(start=rates, threshold=rates, precision=precisions)
def test_ideal_endpoint_is_bracketed_to_the_precision(start: float, threshold: float, precision: float) -> None:
    s = run_threshold(CapacitySearch(start, precision=precision), threshold)
    if start > threshold:
        assert s.stop_reason == "lowest_failed"
        assert s.last_pass is None and s.first_fail == start and len(s.history) == 1
        return
    assert s.stop_reason == "bracketed"
    assert s.last_pass is not None and s.first_fail is not None
    assert s.last_pass <= threshold < s.first_fail  # the true boundary lies inside the bracket
    assert s.first_fail - s.last_pass <= precision * s.first_fail
    # geometric growth reaches the threshold in log2 steps, bisection narrows in log2(1 / precision) more
    growth = math.floor(math.log2(threshold / start)) + 2
    assert len(s.history) <= growth + math.ceil(math.log2(1 / precision)) + 1


@settings(max_examples=200, deadline=None)
@given(start=rates, ratio=st.floats(min_value=1.0, max_value=1e3), threshold=rates, precision=precisions)
def test_max_rate_caps_growth(start: float, ratio: float, threshold: float, precision: float) -> None:
    max_rate = start * ratio
    s = run_threshold(CapacitySearch(start, max_rate=max_rate, precision=precision), threshold)
    assert all(rate <= max_rate for rate, _ in s.history)
    if threshold >= max_rate:
        assert s.stop_reason == "max_rate" and s.last_pass == max_rate and s.first_fail is None
    elif start <= threshold:
        assert s.stop_reason == "bracketed"


verdicts = st.lists(st.sampled_from(["pass", "fail", "harness"]), min_size=0, max_size=80)


@settings(max_examples=300, deadline=None)
@given(start=rates, precision=precisions, script=verdicts)
def test_any_verdict_sequence_terminates_with_a_consistent_bracket(start: float, precision: float,
                                                                   script: list[Verdict]) -> None:
    """A noisy endpoint (verdicts not monotone in the rate) still ends the search, and never inverts the bracket."""
    s = CapacitySearch(start, precision=precision, max_steps=40)
    answers = iter(script)
    for rate in s:
        s.record(rate, next(answers, "pass"))
        if s.last_pass is not None and s.first_fail is not None:
            assert s.last_pass < s.first_fail
    assert s.done and len(s.history) <= 40
    passes = [r for r, v in s.history if v == "pass"]
    fails = [r for r, v in s.history if v == "fail"]
    assert s.last_pass == (max(passes) if passes else None)
    assert s.first_fail == (min(fails) if fails else None)
    if s.stop_reason == "bracketed":
        assert s.within_precision()
    if s.history and s.history[-1][1] == "harness":
        assert s.stop_reason == "harness"


def test_harness_verdict_stops_growth() -> None:
    s = CapacitySearch(10)
    assert s.next_rate() == 10
    s.record(10, "pass")
    assert s.next_rate() == 20
    s.record(20, "harness")
    assert s.done and s.stop_reason == "harness" and s.next_rate() is None
    assert s.last_pass == 10 and s.first_fail is None


def test_bisection_rates_are_midpoints() -> None:
    s = CapacitySearch(25, precision=0.1)
    seen = []
    for rate in s:
        seen.append(rate)
        s.record(rate, "pass" if rate <= 80 else "fail")
    assert seen == [25, 50, 100, 75, 87.5, 81.25]
    assert (s.last_pass, s.first_fail, s.stop_reason) == (75, 81.25, "bracketed")


def test_misuse_is_refused() -> None:
    s = CapacitySearch(10)
    rate = s.next_rate()
    assert rate == 10
    with pytest.raises(RuntimeError):
        s.next_rate()  # the verdict for 10 is still missing
    with pytest.raises(RuntimeError):
        s.record(11, "pass")
    with pytest.raises(RuntimeError):
        for _ in CapacitySearch(5):
            break_without_record = True
            assert break_without_record
    for bad in ({"start": 0}, {"start": 10, "max_rate": 5}, {"start": 10, "precision": 1.5},
                {"start": 1, "factor": 1.0}):
        with pytest.raises(ValueError):
            CapacitySearch(**bad)


def measure(**kw: object) -> StepMeasure:
    base: dict[str, object] = {"target_rps": 100.0, "achieved_rps": 100.0, "window_s": 5.0, "requests": 500,
                               "error_rate": 0.0, "dropped": 0}
    base.update(kw)
    return StepMeasure(**base)  # type: ignore[arg-type]


P99 = Failure("p99_ms", 50.0, "p99_ms: latency p99 80 > allowed 50 ms")


def test_judge_pass_and_plain_failures() -> None:
    assert judge_step(measure(), [], max_error_rate=0.01) == ("pass", [])
    verdict, why = judge_step(measure(), [P99], max_error_rate=0.01)
    assert verdict == "fail" and why == [P99.text]
    verdict, why = judge_step(measure(achieved_rps=90.0), [], max_error_rate=0.01)
    assert verdict == "fail" and "saturated" in why[0]
    verdict, why = judge_step(measure(dropped=3), [], max_error_rate=0.01)
    assert verdict == "fail" and "dropped" in why[0]
    verdict, why = judge_step(measure(error_rate=0.05), [], max_error_rate=0.01)
    assert verdict == "fail" and "errors" in why[0]


def test_judge_tolerates_the_jitter_of_a_low_rate() -> None:
    """At 5 req/s over 3 s, one request short is 93 % of the target, but no sign of saturation."""
    assert judge_step(measure(target_rps=5.0, achieved_rps=14 / 3, window_s=3.0, requests=15), [],
                      max_error_rate=0.01)[0] == "pass"
    assert judge_step(measure(target_rps=100.0, achieved_rps=96.5, window_s=5.0), [],
                      max_error_rate=0.01)[0] == "fail"


def test_judge_generator_bound_steps() -> None:
    lag = {"generator_bound": True, "generator_bound_reasons": ("schedule lag p99 3 ms > 1 ms",)}
    verdict, why = judge_step(measure(**lag), [], max_error_rate=0.01)
    assert verdict == "pass" and "stands" in why[-1]  # late sends only add latency
    # latency over the limit, but the endpoint's own service time is within it: the harness may explain it
    verdict, why = judge_step(measure(**lag, service_ms={"p99_ms": 30.0}), [P99], max_error_rate=0.01)
    assert verdict == "harness" and "no verdict" in why[-1]
    # the service time alone breaks the limit: the endpoint failed, harness or not
    verdict, _ = judge_step(measure(**lag, service_ms={"p99_ms": 70.0}), [P99], max_error_rate=0.01)
    assert verdict == "fail"
    # completions short while the generator still had CPU: the endpoint; with a saturated CPU: the harness
    assert judge_step(measure(**lag, achieved_rps=80.0), [], max_error_rate=0.01)[0] == "fail"
    assert judge_step(measure(**lag, achieved_rps=80.0, cpu_saturated=True), [], max_error_rate=0.01)[0] == "harness"


@settings(max_examples=300, deadline=None)
@given(target=rates, capacity=rates, replicas=st.integers(min_value=1, max_value=64))
def test_replica_plan_is_the_smallest_that_covers_the_target(target: float, capacity: float, replicas: int) -> None:
    plan = plan_replicas(target, capacity, replicas)
    per = capacity / replicas
    assert plan.replicas_needed >= 1
    assert plan.replicas_needed * per >= target * (1 - 1e-9)
    assert plan.replicas_needed == 1 or (plan.replicas_needed - 1) * per < target
    assert 0 < plan.utilisation <= 1 + 1e-9
    assert "linear" in plan.note()


def test_replica_plan_example() -> None:
    plan = plan_replicas(350, 94, 2)  # 47 req/s per replica
    assert plan.replicas_needed == 8 and plan.per_replica_rps == 47
    with pytest.raises(ValueError):
        plan_replicas(100, 0, 2)


def test_start_from_probe() -> None:
    assert start_from_probe(47.0) == 23.5
    assert start_from_probe(0.0) == 0.5  # never zero


def test_parsers() -> None:
    assert parse_slo_flag("p99_ms=50, error_rate=0.01") == {"p99_ms": 50.0, "error_rate": 0.01}
    for bad in ("", "p99_ms", "p99_ms=fast"):
        with pytest.raises(InputError):
            parse_slo_flag(bad)
    assert parse_precision("5%") == pytest.approx(0.05)
    assert parse_precision("0.1") == pytest.approx(0.1)
    assert parse_precision(0.2) == pytest.approx(0.2)
    for bad_p in ("0%", "100%", "150%", "abc", "-1"):
        with pytest.raises(InputError):
            parse_precision(bad_p)


def test_step_scenario_replaces_the_load(tmp_path: Path) -> None:
    doc = {"name": "s", "target": {"url": "embedded"}, "data": {"generate": 10},
           "load": {"rate": 8.0, "duration": "1m", "requests": 100, "arrival": "poisson", "seed": 7}}
    sc = parse_scenario(doc, file="s.toml", base_dir=tmp_path)
    step = step_scenario(sc, 123.5, duration_s=3.0, warmup_s=1.0)
    load = step.load
    assert load.mode == "open" and load.rate == 123.5 and load.concurrency == 0
    assert (load.duration_s, load.warmup_s, load.requests) == (3.0, 1.0, 0)
    assert load.arrival == "poisson" and load.seed == 7  # the arrival process is the scenario's
    assert step.source["load"] == {"arrival": "poisson", "seed": 7, "rate": 123.5, "duration": "3s", "warmup": "1s"}
    assert sc.load.rate == 8.0 and sc.load.duration_s == 60.0  # the original is untouched


def test_probe_is_a_closed_loop_without_the_steps_open_loop_keys(tmp_path: Path) -> None:
    """The probe (one closed-loop client) leaves out arrival, max_in_flight and pacing, which a closed loop refuses;
    the rate steps keep them."""
    doc = {"name": "s", "target": {"url": "embedded"}, "data": {"generate": 10}, "engine": {"pacing": "spin"},
           "load": {"rate": 1.0, "arrival": "poisson", "max_in_flight": 16, "seed": 7}}
    sc = parse_scenario(doc, file="s.toml", base_dir=tmp_path)
    probe = probe_scenario(sc)
    assert probe.load.mode == "closed" and probe.load.concurrency == 1 and probe.load.duration_s == PROBE_S
    assert probe.load.seed == 7 and probe.engine.pacing == "auto" and probe.load.max_in_flight == 0
    step = step_scenario(sc, 50.0, duration_s=3.0, warmup_s=1.0)
    assert (step.load.arrival, step.load.max_in_flight, step.engine.pacing) == ("poisson", 16, "spin")


@pytest.mark.parametrize(("http2", "kept"), [(False, 0), (True, 4)])
def test_probe_drops_engine_connections_over_http1_only(tmp_path: Path, http2: bool, kept: int) -> None:
    """An HTTP/1.1 closed loop refuses engine.connections (one connection per client), so the probe leaves it
    out; an HTTP/2 closed loop shares that many connections, so there the probe keeps it. The steps keep it."""
    doc = {"name": "s", "target": {"url": "embedded"}, "data": {"generate": 10},
           "engine": {"connections": 4, "http2": http2}, "load": {"rate": 1.0}}
    sc = parse_scenario(doc, file="s.toml", base_dir=tmp_path)
    probe = probe_scenario(sc)
    assert (probe.load.mode, probe.engine.connections, probe.engine.http2) == ("closed", kept, http2)
    assert step_scenario(sc, 50.0, duration_s=3.0, warmup_s=1.0).engine.connections == 4


def test_model_capacity_reads_row_counts_without_encoding_bodies() -> None:
    """`bench capacity`'s ground truth needs the mean rows per request: a lazy data set must not be encoded for it."""
    from types import SimpleNamespace

    import pyarrow as pa

    from bench.bodies import LazyBodies
    from bench.commands.capacity import _model_capacity
    from bench.emulator.config import EmulatorConfig

    def never(part: pa.Table) -> list[bytes]:
        raise AssertionError("a body was encoded")

    bodies = LazyBodies(pa.table({"x": list(range(25))}), 10, never)  # rows 10, 10, 5
    cfg = EmulatorConfig(replicas=4, latency_ms=5.0, per_row_us=20.0)
    got = _model_capacity(SimpleNamespace(emulator_config=cfg, bodies=bodies))
    assert got == pytest.approx(4 / (0.005 + 20e-6 * 25 / 3))
    assert bodies.encoded == 0
