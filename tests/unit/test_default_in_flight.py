"""The open loop's default in-flight cap, split across processes / Locust workers as an explicit one is."""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bench.runner import default_max_in_flight, load_spec
from bench.scenario import Scenario, parse_scenario


def _open_loop(rate: float) -> Scenario:
    doc = {"name": "t", "target": {"kind": "http", "url": "http://127.0.0.1:1/x"}, "data": {"body": __file__},
           "load": {"rate": rate, "duration": "1s"}}
    return parse_scenario(doc, file="t.toml", base_dir=Path(__file__).parent)


@given(rate=st.floats(0.5, 20_000), n=st.integers(1, 200))
def test_default_in_flight_shares_add_up_to_the_single_host_cap(rate: float, n: int) -> None:
    """n workers together hold at most what one host would (at least one slot each): a slow target saw 64 x n."""
    sc = _open_loop(rate)
    whole = load_spec(sc, 0).max_in_flight
    assert whole == max(64, min(4096, math.ceil(rate)))
    shares = [default_max_in_flight(sc.load, (i, n)) for i in range(n)]
    assert sum(shares) == max(whole, n) and max(shares) - min(shares) <= 1
    assert [load_spec(sc, 0, worker=(i, n)).max_in_flight for i in range(n)] == shares
