"""Mistakes on the command line are bad input like any other: one line on stderr, exit 2 (not argparse's usage
block), naming the command and the argument."""

from __future__ import annotations

import pytest

from bench.cli import main


@pytest.mark.parametrize(("argv", "words"), [
    (["run", "-c", "abc", "s.toml"], ("bench run", "--concurrency", "'abc'")),
    (["run", "s.toml", "-d"], ("bench run", "--duration")),
    (["capacity", "s.toml", "--target-rps", "many"], ("bench capacity", "--target-rps")),
    (["serve", "--port", "http"], ("bench serve", "--port")),
    (["run", "s.toml", "--no-such-flag"], ("unrecognized arguments", "--no-such-flag")),
    (["frobnicate"], ("invalid choice", "frobnicate")),
])
def test_usage_error_is_one_line_exit_2(argv: list[str], words: tuple[str, ...],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "usage:" not in captured.err and captured.out == ""
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize(("argv", "dest", "value"), [
    (["calibrate", "--duration", "2h"], "duration", 7200.0),  # calibrate's own parser knew no 'h' and no '1m30s'
    (["calibrate", "--duration", "1m30s"], "duration", 90.0),
    (["calibrate"], "duration", 5.0),
    (["run", "s.toml", "--worker-wait", "2m"], "worker_wait", 120.0),
    (["run", "s.toml", "--locust-web-port", "0"], "locust_web_port", 0),
    (["data", "ccfraud", "--rows", "1000000", "--seed", "4294967295", "--out", "x.arrow"], "seed", 2**32 - 1),
])
def test_shared_flag_types_accept_what_the_scenario_accepts(argv: list[str], dest: str, value: object) -> None:
    from bench.cli import build_parser

    assert getattr(build_parser().parse_args(argv), dest) == value


@pytest.mark.parametrize("value", ["-3s", "-1", "-0.5", "-1m30s"])
def test_a_negative_value_is_a_value_not_an_option(value: str) -> None:
    """`-d -3s` was "expected one argument" (argparse took `-3s` for an option): now the value reaches its check,
    which says what is wrong with it (load.duration: must be >= 0)."""
    from bench.cli import build_parser

    assert build_parser().parse_args(["run", "s.toml", "-d", value]).duration == value
