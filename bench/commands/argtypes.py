"""Shared argparse ``type=`` validators: a bad port, seed or wait is refused while parsing (one line naming the
flag, exit 2) instead of crashing deep in a socket, numpy or a wait loop that never ends."""

from __future__ import annotations

import argparse
import math

__all__ = ["MAX_SEED", "duration", "listen_port", "not_empty", "port", "seed"]

MAX_SEED = 2**32 - 1  # as the scenario's load.seed and data.seed


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def port(text: str) -> int:
    """A port to connect to: 1..65535."""
    value = _integer(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port 1..65535, got {value}")
    return value


def listen_port(text: str) -> int:
    """A port to listen on, where 0 has a meaning of its own (a free port, or off): 0..65535."""
    value = _integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port 0..65535, got {value}")
    return value


def seed(text: str) -> int:
    """A random seed: 0..2**32-1 (numpy refuses negative seeds with a traceback)."""
    value = _integer(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be 0..{MAX_SEED}, got {value}")
    return value


def duration(text: str) -> float:
    """A duration as the scenario's ('5s', '1m30s', '2h', or bare seconds): finite, > 0 and at most a week (nan or
    inf waited forever, a negative one failed only later)."""
    from bench.config.reader import MAX_DURATION_S
    from bench.units import parse_duration

    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None and not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"must be a finite duration > 0, got {text!r}")
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    if seconds > MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_DURATION_S:g} s, got {seconds:g} s")
    return seconds


def not_empty(text: str) -> str:
    """A path or URL that must be given: '' (an unset shell variable) silently fell back to a default path, or
    was taken for no --url at all."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text
